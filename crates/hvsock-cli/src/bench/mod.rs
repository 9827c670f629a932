//! `hvsock bench`: hvsock next to a Unix stream socket and TCP over
//! loopback, in the same run, with the same sizes, the two ends in separate
//! processes.
//!
//! Owns the plan of measurements, running them (alternating transports,
//! repeating, taking medians), the table, the JSON document and the plot.
//! The bench process is always the host end (hvsock) or the server (Unix
//! socket, TCP); the other end is this binary re-executed as `hvsock bench
//! --peer JOB` (see [`peer`]), a guest of a VM of an `hvsock host` daemon
//! that the bench starts. The embedded-host rows are the exception: an
//! embedded host serves only its own process, so there both ends are
//! threads of the bench process (labelled `via: embedded-threads`).

mod floor;
mod peer;
mod plot;
mod sys;
mod transport;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hvsock::{Guid, Host, HvAddr, HvStream};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Map, Value};
use vmbus::daemon::EmbeddedHost;

use peer::{ChanCtl, Job, StdioCtl, Work};
use transport::{Conn, Listener, Reach, Stream};

/// Arguments of `hvsock bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Print one JSON document (machine and results) instead of the table.
    #[arg(long)]
    json: bool,

    /// Small sizes, one run each: finishes in well under a minute.
    #[arg(long)]
    quick: bool,

    /// Run only this case.
    #[arg(long, value_enum, value_name = "CASE")]
    only: Option<Case>,

    /// Runs of each measurement (alternating transports); the table shows
    /// medians. Default: 3, or 1 with --quick.
    #[arg(long, value_name = "N")]
    runs: Option<usize>,

    /// Also draw throughput against write size for the three transports
    /// into this PNG file.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,

    /// The baseline's peers.c, to compare busy-poll throughput with its
    /// minimal spinning ring (compiled with `cc -O2`; default: found at
    /// ../shared/baseline/peers.c from here or from the repository).
    #[arg(long, value_name = "FILE")]
    peers_c: Option<PathBuf>,

    /// Throughput write sizes to measure instead of 64, 4K, 64K and 1M
    /// (repeatable; suffixes K, M).
    #[arg(long = "write-size", value_name = "SIZE", value_parser = crate::demo::parse_size)]
    write_sizes: Vec<u64>,

    /// Measure only these transports (repeatable: hvsock, uds, tcp, c-ring,
    /// futex: the wake-up floor of the 1-byte round trip); the ratios need uds.
    #[arg(long = "transport", value_name = "NAME")]
    transports: Vec<String>,

    /// Measure only this mode (repeatable: blocking, busy-poll). The C ring
    /// runs with busy-poll.
    #[arg(long = "mode", value_name = "MODE", value_parser = ["blocking", "busy-poll"])]
    modes: Vec<String>,

    /// Also write the JSON document to this file (with the table on stdout).
    #[arg(long, value_name = "FILE")]
    save: Option<PathBuf>,

    /// Skip the C ring comparison.
    #[arg(long)]
    no_c_ring: bool,

    /// Internal: run as the peer end of one measurement.
    #[arg(long, hide = true, value_name = "JOB")]
    peer: Option<String>,
}

/// The cases of the bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Case {
    /// One stream of 1 GiB at write sizes 64 B .. 1 MiB.
    Throughput,
    /// Ping-pong of 1 B and 4 KiB: median, p99, p99.9.
    Rtt,
    /// Connect, 1 byte each way, close: connections per second.
    Setup,
    /// 1 .. 10,000 connections open at once: memory, descriptors, throughput.
    Connections,
}

/// The VM the peers join.
const VM: &str = "bench";

/// Which transport a measurement uses, and through what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum T {
    Uds,
    Tcp,
    /// hvsock, the host a separate `hvsock host` process.
    Daemon,
    /// hvsock on an embedded host, both ends threads of this process.
    Embedded,
}

impl T {
    fn transport(self) -> &'static str {
        match self {
            T::Uds => "uds",
            T::Tcp => "tcp",
            T::Daemon | T::Embedded => "hvsock",
        }
    }

    fn via(self) -> &'static str {
        match self {
            T::Uds | T::Tcp => "kernel",
            T::Daemon => "daemon",
            T::Embedded => "embedded-threads",
        }
    }
}

/// Which way the bytes go (or who connects, for set-up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// Guest to host (hvsock); client to server for the sockets.
    G2h,
    /// Host to guest.
    H2g,
}

/// One measurement configuration.
#[derive(Debug, Clone, Copy)]
enum Plan {
    Tput {
        t: T,
        dir: Dir,
        pages: Option<u32>,
        ws: usize,
        busy: bool,
    },
    CRing {
        dir: Dir,
        pages: u32,
        ws: usize,
    },
    Rtt {
        t: T,
        pages: Option<u32>,
        size: usize,
        busy: bool,
    },
    /// The wake-up floor (see `floor`): 1-byte round trips' reference.
    Floor {
        busy: bool,
    },
    Setup {
        t: T,
        dir: Dir,
        pages: Option<u32>,
    },
    Conns {
        t: T,
        n: usize,
    },
}

/// What identifies a result row.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    case: &'static str,
    transport: &'static str,
    via: &'static str,
    mode: &'static str,
    direction: &'static str,
    write_size: Option<u64>,
    ring_pages: Option<u32>,
    connections: Option<u64>,
}

fn mode(busy: bool) -> &'static str {
    if busy {
        "busy-poll"
    } else {
        "blocking"
    }
}

fn direction(t: T, dir: Dir) -> &'static str {
    match (t, dir) {
        (T::Uds | T::Tcp, _) => "c2s",
        (_, Dir::G2h) => "g2h",
        (_, Dir::H2g) => "h2g",
    }
}

impl Plan {
    fn key(&self) -> Key {
        let base = Key {
            case: "",
            transport: "",
            via: "",
            mode: "blocking",
            direction: "",
            write_size: None,
            ring_pages: None,
            connections: None,
        };
        match *self {
            Plan::Tput {
                t,
                dir,
                pages,
                ws,
                busy,
            } => Key {
                case: "throughput",
                transport: t.transport(),
                via: t.via(),
                mode: mode(busy),
                direction: direction(t, dir),
                write_size: Some(ws as u64),
                ring_pages: pages,
                ..base
            },
            Plan::CRing { dir, pages, ws } => Key {
                case: "throughput",
                transport: "c-ring",
                via: "shm",
                mode: "busy-poll",
                direction: direction(T::Daemon, dir),
                write_size: Some(ws as u64),
                ring_pages: Some(pages),
                ..base
            },
            Plan::Rtt {
                t,
                pages,
                size,
                busy,
            } => Key {
                case: "rtt",
                transport: t.transport(),
                via: t.via(),
                mode: mode(busy),
                direction: "ping-pong",
                write_size: Some(size as u64),
                ring_pages: pages,
                ..base
            },
            Plan::Floor { busy } => Key {
                case: "rtt",
                transport: "futex",
                via: "shm",
                mode: mode(busy),
                direction: "ping-pong",
                write_size: Some(1),
                ..base
            },
            Plan::Setup { t, dir, pages } => Key {
                case: "setup",
                transport: t.transport(),
                via: t.via(),
                direction: direction(t, dir),
                ring_pages: pages,
                ..base
            },
            Plan::Conns { t, n } => Key {
                case: "connections",
                transport: t.transport(),
                via: t.via(),
                direction: direction(t, Dir::G2h),
                ring_pages: (t == T::Daemon).then_some(hvsock::SEED_RING_PAGES),
                connections: Some(n as u64),
                ..base
            },
        }
    }

    fn label(&self) -> String {
        let k = self.key();
        let mut s = format!("{} {} {} {}", k.case, k.transport, k.via, k.direction);
        if let Some(w) = k.write_size {
            s += &format!(" {}", size_text(w));
        }
        if let Some(p) = k.ring_pages {
            s += &format!(" {p}p");
        }
        if let Some(n) = k.connections {
            s += &format!(" x{n}");
        }
        s + " " + k.mode
    }
}

/// One run's figures: the value and named extras.
#[derive(Debug, Clone, Default)]
struct Sample {
    value: f64,
    extras: BTreeMap<&'static str, f64>,
    note: Option<String>,
}

/// Sizes and counts of a run.
#[derive(Debug, Clone)]
struct Sizes {
    write_sizes: Vec<usize>,
    total: u64,
    total_small: u64,
    rtt_rounds: usize,
    setup_count: usize,
    conn_counts: Vec<usize>,
    conn_bytes: u64,
    runs: usize,
    /// A transfer stops after this long (a busy-poll run on a loaded machine
    /// can crawl).
    cap: Duration,
}

impl Sizes {
    fn new(quick: bool, runs: Option<usize>) -> Sizes {
        if quick {
            Sizes {
                write_sizes: vec![64, 4 << 10, 64 << 10, 1 << 20],
                total: 32 << 20,
                total_small: 2 << 20,
                rtt_rounds: 2_000,
                setup_count: 200,
                conn_counts: vec![1, 64, 1024],
                conn_bytes: 16 << 20,
                runs: runs.unwrap_or(1).max(1),
                cap: Duration::from_secs(2),
            }
        } else {
            Sizes {
                write_sizes: vec![64, 4 << 10, 64 << 10, 1 << 20],
                total: 1 << 30,
                total_small: 128 << 20,
                rtt_rounds: 20_000,
                setup_count: 2_000,
                conn_counts: vec![1, 64, 1024, 10_000],
                conn_bytes: 640 << 20,
                runs: runs.unwrap_or(3).max(1),
                cap: Duration::from_secs(10),
            }
        }
    }

    /// Bytes moved at write size `ws` (64-byte writes move less: a 1 GiB
    /// stream of 64-byte writes takes minutes over TCP).
    fn total_for(&self, ws: usize) -> u64 {
        if ws < 1024 {
            self.total_small
        } else {
            self.total
        }
    }
}

/// Runs `hvsock bench`.
pub fn run(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    if let Some(job) = &args.peer {
        let job: Job = serde_json::from_str(job).context("reading the peer's job")?;
        sys::raise_fd_limit();
        peer::run(&job, &mut StdioCtl, None)?;
        return Ok(ExitCode::SUCCESS);
    }
    let nofile = sys::raise_fd_limit();
    let mut machine = sys::Machine::describe(nofile);
    let mut sizes = Sizes::new(args.quick, args.runs);
    if !args.write_sizes.is_empty() {
        sizes.write_sizes = args
            .write_sizes
            .iter()
            .map(|&n| n.max(1) as usize)
            .collect();
    }
    let mut env = Env::start(args)?;
    let cases: Vec<Case> = match args.only {
        Some(case) => vec![case],
        None => vec![Case::Throughput, Case::Rtt, Case::Setup, Case::Connections],
    };
    let mut plans: Vec<(Vec<Plan>, usize)> = Vec::new();
    for case in &cases {
        let mut list = plan(*case, &sizes, env.c_ring.is_some());
        if !args.transports.is_empty() {
            list.retain(|p| args.transports.iter().any(|t| t == p.key().transport));
        }
        if !args.modes.is_empty() {
            list.retain(|p| args.modes.iter().any(|m| m == p.key().mode));
        }
        // Memory and descriptors do not need repeating, and 10,000
        // connections take long: the connections case runs once.
        let rounds = if *case == Case::Connections {
            1
        } else {
            sizes.runs
        };
        plans.push((list, rounds));
    }
    let steps: usize = plans.iter().map(|(l, r)| l.len() * r).sum();
    if steps == 0 {
        bail!(
            "nothing to measure: --only, --transport and --mode together leave no \
             measurement (set-up and connections run only in blocking mode, the C ring \
             only in busy-poll throughput)"
        );
    }
    let bar = ProgressBar::with_draw_target(Some(steps as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut rows: Vec<(Key, Vec<Sample>)> = Vec::new();
    for (list, rounds) in &plans {
        for round in 0..*rounds {
            for p in list {
                bar.set_message(format!("{} (run {}/{})", p.label(), round + 1, rounds));
                let sample = match env.measure(p, &sizes) {
                    Ok(s) => s,
                    Err(e) => Sample {
                        value: f64::NAN,
                        note: Some(format!("{e:#}")),
                        ..Sample::default()
                    },
                };
                let key = p.key();
                match rows.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, v)) => v.push(sample),
                    None => rows.push((key, vec![sample])),
                }
                bar.inc(1);
                // Let the previous connections' teardown finish.
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    bar.finish_and_clear();
    drop(env);
    machine.load_end = sys::loads();
    let results = summarize(&rows);
    if let Some(path) = &args.plot {
        draw_plot(path, &results, &machine)?;
    }
    let doc = json!({
            "machine": machine,
            "config": {
                "quick": args.quick,
                "runs": sizes.runs,
                "bytes": sizes.total,
                "bytes_64b_writes": sizes.total_small,
                "rtt_rounds": sizes.rtt_rounds,
                "setup_connections": sizes.setup_count,
                "connections_bytes": sizes.conn_bytes,
                "busy_poll_spin_us": transport::SPIN.as_micros() as u64,
                "transfer_cap_s": sizes.cap.as_secs(),
            },
            "results": results,
    });
    if let Some(path) = &args.save {
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print_table(&results, &machine, &sizes);
    }
    Ok(ExitCode::SUCCESS)
}

/// The measurements of `case`, in the order they alternate.
fn plan(case: Case, sizes: &Sizes, c_ring: bool) -> Vec<Plan> {
    let seed = hvsock::SEED_RING_PAGES;
    let default = hvsock::DEFAULT_RING_PAGES;
    let mut v = Vec::new();
    match case {
        Case::Throughput => {
            for &ws in &sizes.write_sizes {
                for busy in [false, true] {
                    v.push(Plan::Tput {
                        t: T::Uds,
                        dir: Dir::G2h,
                        pages: None,
                        ws,
                        busy,
                    });
                    v.push(Plan::Tput {
                        t: T::Tcp,
                        dir: Dir::G2h,
                        pages: None,
                        ws,
                        busy,
                    });
                    for pages in [default, seed] {
                        for dir in [Dir::G2h, Dir::H2g] {
                            v.push(Plan::Tput {
                                t: T::Daemon,
                                dir,
                                pages: Some(pages),
                                ws,
                                busy,
                            });
                            if busy && c_ring {
                                v.push(Plan::CRing { dir, pages, ws });
                            }
                        }
                    }
                    for dir in [Dir::G2h, Dir::H2g] {
                        v.push(Plan::Tput {
                            t: T::Embedded,
                            dir,
                            pages: Some(default),
                            ws,
                            busy,
                        });
                    }
                }
            }
        }
        Case::Rtt => {
            for size in [1, 4096] {
                for busy in [false, true] {
                    for t in [T::Uds, T::Tcp, T::Daemon, T::Embedded] {
                        let pages = matches!(t, T::Daemon | T::Embedded).then_some(default);
                        v.push(Plan::Rtt {
                            t,
                            pages,
                            size,
                            busy,
                        });
                    }
                    if size == 1 {
                        v.push(Plan::Floor { busy });
                    }
                }
            }
        }
        Case::Setup => {
            v.push(Plan::Setup {
                t: T::Uds,
                dir: Dir::G2h,
                pages: None,
            });
            v.push(Plan::Setup {
                t: T::Tcp,
                dir: Dir::G2h,
                pages: None,
            });
            for pages in [default, seed] {
                for dir in [Dir::G2h, Dir::H2g] {
                    v.push(Plan::Setup {
                        t: T::Daemon,
                        dir,
                        pages: Some(pages),
                    });
                }
            }
        }
        Case::Connections => {
            for &n in &sizes.conn_counts {
                for t in [T::Uds, T::Tcp, T::Daemon] {
                    v.push(Plan::Conns { t, n });
                }
            }
        }
    }
    v
}

/// The far end of one measurement: a process or a thread.
struct Peer {
    rx: Receiver<Value>,
    cmd: Option<Cmd>,
    child: Option<Child>,
    thread: Option<JoinHandle<()>>,
}

enum Cmd {
    Pipe(ChildStdin),
    Chan(Sender<String>),
}

impl Peer {
    fn send(&mut self, text: &str) -> anyhow::Result<()> {
        match &mut self.cmd {
            Some(Cmd::Pipe(stdin)) => {
                writeln!(stdin, "{text}")?;
                stdin.flush()?;
            }
            Some(Cmd::Chan(tx)) => tx.send(text.into())?,
            None => bail!("the peer is finished"),
        }
        Ok(())
    }

    /// The peer's next report within `timeout`: `Ok(None)` on timeout, an
    /// error if the peer failed or went away.
    fn next_within(&mut self, timeout: Duration) -> anyhow::Result<Option<Value>> {
        match self.rx.recv_timeout(timeout) {
            Ok(v) => match v.get("error").and_then(Value::as_str) {
                Some(e) if v.get("connected").is_none() => bail!("peer: {e}"),
                _ => Ok(Some(v)),
            },
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.as_mut().and_then(|c| c.wait().ok());
                bail!("the peer ended without a report ({status:?})")
            }
        }
    }

    /// The next report, waiting up to 5 minutes.
    fn next(&mut self) -> anyhow::Result<Value> {
        self.next_within(Duration::from_secs(300))?
            .context("the peer did not answer within 5 minutes")
    }

    fn finish(mut self) -> anyhow::Result<()> {
        self.cmd = None;
        if let Some(mut child) = self.child.take() {
            let status = child.wait()?;
            if !status.success() {
                bail!("the peer exited with {status}");
            }
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        Ok(())
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.cmd = None;
        if let Some(mut child) = self.child.take() {
            // Our own child, by its handle: never left running.
            if !matches!(child.try_wait(), Ok(Some(_))) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// What lives for the whole run: the daemon, the embedded host, the host
/// handles, the peers' binary and the C ring.
struct Env {
    dir: PathBuf,
    socket: PathBuf,
    daemon: Option<Child>,
    /// Dropped before the daemon stops (else it warns that the host went away).
    host: Option<Host>,
    vm_id: Guid,
    embedded: Arc<EmbeddedHost>,
    embedded_host: Option<Host>,
    exe: PathBuf,
    next_port: u32,
    c_ring: Option<PathBuf>,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.host = None;
        self.embedded_host = None;
        if let Some(mut daemon) = self.daemon.take() {
            // SIGTERM would let it remove its sockets; the directory goes
            // below anyway, so a kill of our own child is enough.
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Env {
    fn start(args: &BenchArgs) -> anyhow::Result<Env> {
        let exe = std::env::current_exe().context("finding the hvsock binary")?;
        let dir = std::env::temp_dir().join(format!("hvsock-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let socket = dir.join("host.sock");
        let mut daemon = Command::new(&exe)
            .arg("host")
            .arg("--socket")
            .arg(&socket)
            .arg("--vm")
            .arg(VM)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting `hvsock host`")?;
        let vm_socket = vmbus::daemon::vm_socket_path(&socket, VM);
        let started = Instant::now();
        while !(socket.exists() && vm_socket.exists()) {
            if let Some(status) = daemon.try_wait()? {
                bail!("`hvsock host` exited at start: {status}");
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = daemon.kill();
                bail!("`hvsock host` did not create {}", socket.display());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let host = Host::connect_daemon_at(&socket).context("connecting to the daemon")?;
        let control = vmbus::daemon::control::connect(&socket)?;
        let vm_id =
            match vmbus::daemon::control::request(&control, &vmbus::ext::ExtRequest::VmList)? {
                vmbus::ext::ExtEvent::VmList { vms } => vms
                    .into_iter()
                    .find(|vm| vm.name == VM)
                    .map(|vm| vm.id)
                    .context("the daemon has no bench VM")?,
                other => bail!("unexpected answer to VmList: {other:?}"),
            };
        let embedded = Arc::new(EmbeddedHost::start(&[(VM, None)])?);
        let embedded_host = Host::embedded(&embedded)?;
        let c_ring = if args.no_c_ring {
            None
        } else {
            build_c_ring(args.peers_c.as_deref(), &exe, &dir)
        };
        Ok(Env {
            dir,
            socket,
            daemon: Some(daemon),
            host: Some(host),
            vm_id,
            embedded,
            embedded_host: Some(embedded_host),
            exe,
            next_port: 20_000,
            c_ring,
        })
    }

    fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    fn port(&mut self) -> u32 {
        self.next_port += 1;
        self.next_port
    }

    /// A listener of transport `t` and how the peer reaches it.
    fn listen(
        &mut self,
        t: T,
        pages: Option<u32>,
        backlog: usize,
    ) -> anyhow::Result<(Listener, Reach)> {
        let pages = pages.unwrap_or(hvsock::DEFAULT_RING_PAGES);
        let port = self.port();
        let (listener, reach) = match t {
            T::Uds => {
                let path = self.dir.join(format!("uds-{port}.sock"));
                (Listener::unix(path.clone())?, Reach::Uds { path })
            }
            T::Tcp => {
                let l = Listener::tcp()?;
                let port = l.tcp_port().context("tcp port")?;
                (l, Reach::Tcp { port })
            }
            T::Daemon => (
                Listener::hv(self.host.as_ref().context("no host")?, port, backlog)?,
                self.reach(t, port, pages),
            ),
            T::Embedded => (
                Listener::hv(
                    self.embedded_host.as_ref().context("no host")?,
                    port,
                    backlog,
                )?,
                self.reach(t, port, pages),
            ),
        };
        listener.set_nonblocking()?;
        Ok((listener, reach))
    }

    fn reach(&self, t: T, port: u32, pages: u32) -> Reach {
        match t {
            T::Embedded => Reach::Embedded {
                vm: VM.into(),
                port,
                pages,
            },
            _ => Reach::Daemon {
                socket: self.socket.clone(),
                vm: VM.into(),
                port,
                pages,
            },
        }
    }

    /// Starts the peer of `job`: a process, or a thread for the embedded host.
    fn spawn(&self, job: &Job) -> anyhow::Result<Peer> {
        let (tx, rx) = mpsc::channel();
        if matches!(job.reach, Reach::Embedded { .. }) {
            let (ctx, crx) = mpsc::channel();
            let host = self.embedded.clone();
            let job = job.clone();
            let thread = std::thread::Builder::new()
                .name("bench-peer".into())
                .spawn(move || {
                    let mut ctl = ChanCtl { tx, rx: crx };
                    let _ = peer::run(&job, &mut ctl, Some(&host));
                })?;
            return Ok(Peer {
                rx,
                cmd: Some(Cmd::Chan(ctx)),
                child: None,
                thread: Some(thread),
            });
        }
        let mut child = Command::new(&self.exe)
            .arg("bench")
            .arg("--peer")
            .arg(serde_json::to_string(job)?)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the peer process")?;
        let stdout = child.stdout.take().context("peer stdout")?;
        let stdin = child.stdin.take().context("peer stdin")?;
        let thread = std::thread::Builder::new()
            .name("bench-peer-reports".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        if tx.send(v).is_err() {
                            break;
                        }
                    }
                }
            })?;
        Ok(Peer {
            rx,
            cmd: Some(Cmd::Pipe(stdin)),
            child: Some(child),
            thread: Some(thread),
        })
    }

    /// Accepts the peer's connection, failing if the peer fails first.
    fn accept(&self, listener: &Listener, peer: &mut Peer) -> anyhow::Result<Stream> {
        let started = Instant::now();
        loop {
            if let Some(s) = listener.accept_within(Duration::from_millis(100))? {
                return Ok(s);
            }
            if let Some(v) = peer.next_within(Duration::ZERO)? {
                bail!("unexpected report from the peer: {v}");
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("the peer did not connect within 60 s");
            }
        }
    }

    fn measure(&mut self, p: &Plan, sizes: &Sizes) -> anyhow::Result<Sample> {
        match *p {
            Plan::Tput {
                t,
                dir,
                pages,
                ws,
                busy,
            } => self.throughput(t, dir, pages, ws, busy, sizes),
            Plan::CRing { dir, pages, ws } => self.c_ring(dir, pages, ws, sizes.total_for(ws)),
            Plan::Rtt {
                t,
                pages,
                size,
                busy,
            } => self.rtt(t, pages, size, busy, sizes.rtt_rounds),
            Plan::Floor { busy } => self.floor(busy, sizes.rtt_rounds),
            Plan::Setup { t, dir, pages } => self.setup(t, dir, pages, sizes.setup_count),
            Plan::Conns { t, n } => self.connections(t, n, sizes.conn_bytes),
        }
    }

    fn throughput(
        &mut self,
        t: T,
        dir: Dir,
        pages: Option<u32>,
        ws: usize,
        busy: bool,
        sizes: &Sizes,
    ) -> anyhow::Result<Sample> {
        let (total, cap) = (sizes.total_for(ws), sizes.cap);
        let (listener, reach) = self.listen(t, pages, 16)?;
        // The guest is the peer: it writes guest to host; the sockets'
        // client writes too.
        let peer_writes = dir == Dir::G2h || matches!(t, T::Uds | T::Tcp);
        let job = Job {
            work: Work::Throughput {
                peer_writes,
                write_size: ws,
                total,
                cap_s: cap.as_secs_f64(),
            },
            reach,
            busy,
        };
        let mut peer = self.spawn(&job)?;
        let mut c = Conn::new(self.accept(&listener, &mut peer)?, busy)?;
        let cpu0 = sys::cpu_seconds();
        let (secs, moved);
        if peer_writes {
            let start = Instant::now();
            c.write_all(&[1])?;
            moved = peer::read_stream(&mut c, ws)?;
            secs = start.elapsed().as_secs_f64();
            c.write_all(&[2])?;
        } else {
            let mut go = [0u8; 1];
            c.read_exact(&mut go)?;
            let start = Instant::now();
            moved = peer::write_stream(&mut c, ws, total, cap)?;
            c.read_exact(&mut go)?;
            secs = start.elapsed().as_secs_f64();
        }
        let cpu_here = sys::cpu_seconds() - cpu0;
        let done = peer.next()?;
        drop(c);
        peer.finish()?;
        let gib = moved as f64 / (1u64 << 30) as f64;
        let mut s = Sample {
            value: moved as f64 / secs / 1e9,
            ..Sample::default()
        };
        s.extras.insert("bytes", moved as f64);
        if moved < total {
            s.note = Some(format!(
                "stopped after {:.0} s with {} MiB of {} MiB moved",
                secs,
                moved >> 20,
                total >> 20
            ));
        }
        if t == T::Embedded {
            // Both ends and the host are threads of this process.
            s.extras.insert("cpu_s_per_gib", cpu_here / gib);
        } else {
            let cpu_peer = done
                .get("cpu_s")
                .and_then(Value::as_f64)
                .unwrap_or(f64::NAN);
            let (w, r) = if peer_writes {
                (cpu_peer, cpu_here)
            } else {
                (cpu_here, cpu_peer)
            };
            s.extras.insert("cpu_writer_s_per_gib", w / gib);
            s.extras.insert("cpu_reader_s_per_gib", r / gib);
            s.extras.insert("cpu_s_per_gib", (w + r) / gib);
        }
        Ok(s)
    }

    fn c_ring(&mut self, dir: Dir, pages: u32, ws: usize, total: u64) -> anyhow::Result<Sample> {
        let exe = self.c_ring.clone().context("no C ring")?;
        // The same geometry: data area = pages minus the control page; the
        // payload per packet as hvsock sends it in that direction.
        let data_kib = (pages as usize - 1) * 4;
        let max_payload = match dir {
            Dir::G2h => 4088,
            Dir::H2g => 16384,
        };
        let payload = ws.min(max_payload);
        let mib = (total >> 20).max(1);
        let out = Command::new(&exe)
            .args([
                "ring".to_string(),
                data_kib.to_string(),
                payload.to_string(),
                mib.to_string(),
            ])
            .stderr(Stdio::null())
            .output()
            .context("running peers ring")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let gbs = text
            .split_whitespace()
            .rev()
            .nth(1)
            .and_then(|v| v.parse::<f64>().ok())
            .with_context(|| format!("peers ring printed {text:?}"))?;
        let mut s = Sample {
            value: gbs,
            ..Sample::default()
        };
        s.extras.insert("payload", payload as f64);
        Ok(s)
    }

    fn rtt(
        &mut self,
        t: T,
        pages: Option<u32>,
        size: usize,
        busy: bool,
        rounds: usize,
    ) -> anyhow::Result<Sample> {
        const WARMUP: usize = 200;
        let (listener, reach) = self.listen(t, pages, 16)?;
        let job = Job {
            work: Work::Rtt {
                size,
                rounds: rounds + WARMUP,
            },
            reach,
            busy,
        };
        let mut peer = self.spawn(&job)?;
        let mut c = Conn::new(self.accept(&listener, &mut peer)?, busy)?;
        let mut buf = vec![3u8; size];
        let mut lat = Vec::with_capacity(rounds);
        let mut cpu0 = 0.0;
        for i in 0..rounds + WARMUP {
            if i == WARMUP {
                cpu0 = sys::cpu_seconds();
            }
            let start = Instant::now();
            c.write_all(&buf)?;
            c.read_exact(&mut buf)?;
            if i >= WARMUP {
                lat.push(start.elapsed().as_secs_f64() * 1e6);
            }
        }
        let cpu_here = sys::cpu_seconds() - cpu0;
        let done = peer.next()?;
        drop(c);
        peer.finish()?;
        let mut s = latency_sample(lat);
        let cpu_peer = if t == T::Embedded {
            0.0
        } else {
            done.get("cpu_s")
                .and_then(Value::as_f64)
                .unwrap_or(f64::NAN)
        };
        s.extras.insert(
            "cpu_us_per_rtt",
            (cpu_here + cpu_peer) / rounds as f64 * 1e6,
        );
        Ok(s)
    }

    /// The wake-up floor: a peer process echoes futex pings through a
    /// shared page (see `floor`).
    fn floor(&mut self, busy: bool, rounds: usize) -> anyhow::Result<Sample> {
        const WARMUP: usize = 200;
        let (floor, memory) = floor::Floor::create(busy)?;
        let job = Job {
            work: Work::Floor {
                rounds: rounds + WARMUP,
            },
            reach: Reach::Memfd {
                path: PathBuf::from(format!(
                    "/proc/{}/fd/{}",
                    std::process::id(),
                    memory.as_fd().as_raw_fd()
                )),
            },
            busy,
        };
        let mut peer = self.spawn(&job)?;
        let ready = peer.next()?;
        if ready.get("ready").is_none() {
            bail!("unexpected report from the peer: {ready}");
        }
        let cpu0 = sys::cpu_seconds();
        let mut lat = floor.ping(rounds + WARMUP)?;
        let cpu_here = sys::cpu_seconds() - cpu0;
        let done = peer.next()?;
        peer.finish()?;
        lat.drain(..WARMUP);
        let mut s = latency_sample(lat);
        let cpu_peer = done
            .get("cpu_s")
            .and_then(Value::as_f64)
            .unwrap_or(f64::NAN);
        s.extras.insert(
            "cpu_us_per_rtt",
            (cpu_here + cpu_peer) / (rounds + WARMUP) as f64 * 1e6,
        );
        Ok(s)
    }

    fn setup(
        &mut self,
        t: T,
        dir: Dir,
        pages: Option<u32>,
        count: usize,
    ) -> anyhow::Result<Sample> {
        let daemon_cpu0 = self.daemon_pid().and_then(sys::proc_cpu_seconds);
        let cpu0 = sys::cpu_seconds();
        let (cycles, cpu_peer) = if dir == Dir::H2g && t == T::Daemon {
            // The guest listens; the host (us) connects.
            let port = self.port();
            let job = Job {
                work: Work::SetupAccept { count },
                reach: self.reach(t, port, pages.unwrap_or(hvsock::DEFAULT_RING_PAGES)),
                busy: false,
            };
            let mut peer = self.spawn(&job)?;
            let v = peer.next()?;
            if v.get("listening").is_none() {
                bail!("unexpected report from the peer: {v}");
            }
            let addr = HvAddr::from_vsock_port(self.vm_id, port);
            let host = self.host.as_ref().context("no host")?;
            let cycles = peer::connect_cycles(count, |i| {
                let s = HvStream::connect_timeout(host, addr, Duration::from_secs(10))
                    .with_context(|| format!("connection {}", i + 1))?;
                Ok(Conn::new(Stream::Hv(s), false)?)
            })?;
            let done = peer.next()?;
            peer.finish()?;
            (cycles, done.get("cpu_s").and_then(Value::as_f64))
        } else {
            let (listener, reach) = self.listen(t, pages, 1024)?;
            let job = Job {
                work: Work::SetupConnect { count },
                reach,
                busy: false,
            };
            let mut peer = self.spawn(&job)?;
            for _ in 0..count {
                let s = self.accept(&listener, &mut peer)?;
                peer::serve_one(Conn::new(s, false)?)?;
            }
            let done = peer.next()?;
            peer.finish()?;
            let cycles = peer::Cycles::from_json(&done).context("the peer sent no time")?;
            (cycles, done.get("cpu_s").and_then(Value::as_f64))
        };
        let cpu_here = sys::cpu_seconds() - cpu0;
        let mut s = Sample {
            value: count as f64 / cycles.elapsed_s,
            ..Sample::default()
        };
        s.extras.insert("connect_us", cycles.connect_us);
        s.extras.insert("exchange_us", cycles.exchange_us);
        s.extras.insert("close_us", cycles.close_us);
        let per = |cpu: f64| cpu / count as f64 * 1e6;
        s.extras.insert("cpu_us_per_conn_bench", per(cpu_here));
        s.extras
            .insert("cpu_us_per_conn_peer", per(cpu_peer.unwrap_or(f64::NAN)));
        if matches!(t, T::Daemon) {
            if let (Some(a), Some(b)) = (
                daemon_cpu0,
                self.daemon_pid().and_then(sys::proc_cpu_seconds),
            ) {
                s.extras.insert("cpu_us_per_conn_daemon", per(b - a));
            }
        }
        Ok(s)
    }

    fn connections(&mut self, t: T, n: usize, bytes: u64) -> anyhow::Result<Sample> {
        const CHUNK: usize = 4096;
        let per_conn =
            (bytes / n as u64).clamp(CHUNK as u64, 1 << 20) / CHUNK as u64 * CHUNK as u64;
        let pages = hvsock::SEED_RING_PAGES;
        let daemon = if t == T::Daemon {
            self.daemon_pid()
        } else {
            None
        };
        let (listener, reach) = self.listen(t, Some(pages), n.max(16))?;
        let fds0 = sys::fd_count(None).unwrap_or(0);
        let rss0 = sys::rss_kib(None).unwrap_or(0);
        let dfds0 = daemon.and_then(|p| sys::fd_count(Some(p)));
        let drss0 = daemon.and_then(|p| sys::rss_kib(Some(p)));
        let job = Job {
            work: Work::Connections {
                count: n,
                per_conn,
                chunk: CHUNK,
            },
            reach,
            busy: false,
        };
        let mut peer = self.spawn(&job)?;
        let mut conns = Vec::with_capacity(n);
        let mut report: Option<Value> = None;
        let started = Instant::now();
        // A failure while connecting ends the case, but what was reached
        // (connections, descriptors, memory) is still reported.
        let mut failure: Option<String> = None;
        loop {
            if let Some(k) = report
                .as_ref()
                .and_then(|r| r.get("connected"))
                .and_then(Value::as_u64)
            {
                if conns.len() as u64 >= k {
                    break;
                }
            }
            let wait = Duration::from_millis(if report.is_some() { 100 } else { 1 });
            match listener.accept_within(wait) {
                Ok(Some(s)) => conns.push(Conn::new(s, false)?),
                Ok(None) if report.is_some() && started.elapsed() > Duration::from_secs(600) => {
                    failure = Some(format!(
                        "the peer connected {n} times, {} accepted",
                        conns.len()
                    ));
                    break;
                }
                Ok(None) => {}
                Err(e) => {
                    failure = Some(format!("accepting connection {}: {e}", conns.len() + 1));
                    break;
                }
            }
            if report.is_none() && (conns.len() % 64 == 0 || started.elapsed().as_secs() > 0) {
                match peer.next_within(Duration::ZERO) {
                    Ok(r) => report = r,
                    Err(e) => {
                        failure = Some(format!("{e:#}"));
                        break;
                    }
                }
            }
        }
        let report = report.unwrap_or_default();
        let reached = conns.len();
        let held = |v: Option<u64>, v0: Option<u64>| match (v, v0) {
            (Some(a), Some(b)) if reached > 0 => a.saturating_sub(b) as f64 / reached as f64,
            _ => f64::NAN,
        };
        let mut s = Sample::default();
        let e = &mut s.extras;
        e.insert("reached", reached as f64);
        e.insert("fds_per_conn_bench", held(sys::fd_count(None), Some(fds0)));
        e.insert(
            "fds_per_conn_peer",
            report.get("fds").and_then(Value::as_u64).unwrap_or(0) as f64 / reached.max(1) as f64,
        );
        if daemon.is_some() {
            e.insert(
                "fds_per_conn_daemon",
                held(daemon.and_then(|p| sys::fd_count(Some(p))), dfds0),
            );
            e.insert(
                "ring_kib_per_conn",
                (2 * pages as usize * 4096 / 1024) as f64,
            );
        }
        if let Some(failure) = failure {
            s.value = f64::NAN;
            s.note = Some(format!("stopped at {reached} connections: {failure}"));
            return Ok(s);
        }
        // Move the data: round robin, `CHUNK` at a time, every connection.
        peer.send("go")?;
        let start = Instant::now();
        let mut buf = vec![0u8; CHUNK];
        for _ in 0..per_conn / CHUNK as u64 {
            for c in &mut conns {
                c.read_exact(&mut buf)?;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        e.insert(
            "rss_kib_per_conn_bench",
            held(sys::rss_kib(None), Some(rss0)),
        );
        if daemon.is_some() {
            e.insert(
                "rss_kib_per_conn_daemon",
                held(daemon.and_then(|p| sys::rss_kib(Some(p))), drss0),
            );
        }
        peer.send("end")?;
        let done = peer.next()?;
        e.insert(
            "rss_kib_per_conn_peer",
            done.get("rss_kib").and_then(Value::as_u64).unwrap_or(0) as f64 / reached.max(1) as f64,
        );
        e.insert("bytes_per_conn", per_conn as f64);
        drop(conns);
        peer.finish()?;
        s.value = (per_conn * reached as u64) as f64 / secs / 1e9;
        if let Some(err) = report.get("error").and_then(Value::as_str) {
            s.note = Some(format!("stopped at {reached}: {err}"));
        }
        Ok(s)
    }
}

/// Compiles the baseline's peers.c, if it can be found.
fn build_c_ring(given: Option<&Path>, exe: &Path, dir: &Path) -> Option<PathBuf> {
    let source = match given {
        Some(p) => p.to_path_buf(),
        None => {
            let mut candidates = vec![PathBuf::from("../shared/baseline/peers.c")];
            // target/release/hvsock -> the repository -> ../shared
            if let Some(repo) = exe.ancestors().nth(3) {
                candidates.push(repo.join("../shared/baseline/peers.c"));
            }
            candidates.into_iter().find(|p| p.exists())?
        }
    };
    std::fs::create_dir_all(dir).ok()?;
    let out = dir.join("peers");
    let ok = Command::new("cc")
        .arg("-O2")
        .arg("-o")
        .arg(&out)
        .arg(&source)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(out)
}

/// A round-trip sample from the latencies (microseconds): the median, and
/// p50, p99, p99.9 and the mean as extras.
fn latency_sample(mut lat: Vec<f64>) -> Sample {
    lat.sort_by(f64::total_cmp);
    let at = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    let mut s = Sample {
        value: at(0.5),
        ..Sample::default()
    };
    s.extras.insert("p50", at(0.5));
    s.extras.insert("p99", at(0.99));
    s.extras.insert("p999", at(0.999));
    s.extras
        .insert("mean", lat.iter().sum::<f64>() / lat.len() as f64);
    s
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn unit(case: &str) -> &'static str {
    match case {
        "rtt" => "us",
        "setup" => "conn/s",
        _ => "GB/s",
    }
}

/// Rounds to 4 significant digits, for a readable document.
fn round4(x: f64) -> Value {
    if !x.is_finite() {
        return Value::Null;
    }
    if x == 0.0 {
        return json!(0.0);
    }
    let digits = 3 - x.abs().log10().floor() as i32;
    let scale = 10f64.powi(digits.max(0));
    json!((x * scale).round() / scale)
}

/// One flat object per row: medians over the runs, the ratio to the Unix
/// socket (and, for busy-poll hvsock, to the C ring of the same geometry).
fn summarize(rows: &[(Key, Vec<Sample>)]) -> Vec<Value> {
    let med: Vec<f64> = rows
        .iter()
        .map(|(_, v)| median(v.iter().map(|s| s.value).collect()))
        .collect();
    let find = |pred: &dyn Fn(&Key) -> bool| rows.iter().position(|(k, _)| pred(k));
    let mut out = Vec::new();
    for (i, (k, samples)) in rows.iter().enumerate() {
        let mut o = Map::new();
        o.insert("case".into(), json!(k.case));
        o.insert("transport".into(), json!(k.transport));
        o.insert("via".into(), json!(k.via));
        o.insert("mode".into(), json!(k.mode));
        o.insert("direction".into(), json!(k.direction));
        o.insert("write_size".into(), json!(k.write_size));
        o.insert("ring_pages".into(), json!(k.ring_pages));
        if k.case == "connections" {
            o.insert("connections".into(), json!(k.connections));
        }
        o.insert("value".into(), round4(med[i]));
        o.insert("unit".into(), json!(unit(k.case)));
        let uds = find(&|u: &Key| {
            u.transport == "uds"
                && u.case == k.case
                && u.mode == k.mode
                && u.write_size == k.write_size
                && u.connections == k.connections
        });
        let ratio = uds.map(|u| med[i] / med[u]).unwrap_or(f64::NAN);
        o.insert("ratio_uds".into(), round4(ratio));
        if k.mode == "busy-poll" && k.transport != "uds" {
            // Against the ordinary (blocking) Unix socket, as the targets
            // compare busy-poll latency.
            if let Some(u) = find(&|u: &Key| {
                u.transport == "uds"
                    && u.case == k.case
                    && u.mode == "blocking"
                    && u.write_size == k.write_size
            }) {
                o.insert("ratio_uds_blocking".into(), round4(med[i] / med[u]));
            }
        }
        if k.transport == "hvsock" && k.mode == "busy-poll" && k.case == "throughput" {
            if let Some(c) = find(&|c: &Key| {
                c.transport == "c-ring"
                    && c.direction == k.direction
                    && c.ring_pages == k.ring_pages
                    && c.write_size == k.write_size
            }) {
                o.insert("ratio_c_ring".into(), round4(med[i] / med[c]));
            }
        }
        o.insert("runs".into(), json!(samples.len()));
        let mut names: Vec<&'static str> = samples
            .iter()
            .flat_map(|s| s.extras.keys().copied())
            .collect();
        names.sort();
        names.dedup();
        for name in names {
            let v = median(
                samples
                    .iter()
                    .filter_map(|s| s.extras.get(name).copied())
                    .collect(),
            );
            o.insert(name.into(), round4(v));
        }
        if let Some(note) = samples.iter().find_map(|s| s.note.clone()) {
            o.insert("note".into(), json!(note));
        }
        out.push(Value::Object(o));
    }
    out
}

fn size_text(b: u64) -> String {
    match b {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}M", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{}K", b >> 10),
        b => format!("{b}"),
    }
}

fn num(v: Option<&Value>) -> f64 {
    v.and_then(Value::as_f64).unwrap_or(f64::NAN)
}

fn fmt(x: f64) -> String {
    if !x.is_finite() {
        "-".into()
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// The table: one section per case, values and ratios to the Unix socket.
fn print_table(results: &[Value], machine: &sys::Machine, sizes: &Sizes) {
    println!(
        "hvsock bench: {} ({} cores), kernel {}, load {:.2} -> {:.2}, {} run(s), medians",
        machine.cpu,
        machine.cores,
        machine.kernel,
        machine.load_start[0],
        machine.load_end[0],
        sizes.runs
    );
    let s = |r: &Value, k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let opt = |r: &Value, k: &str| match r.get(k).and_then(Value::as_u64) {
        Some(v) => v.to_string(),
        None => "-".into(),
    };
    for case in ["throughput", "rtt", "setup", "connections"] {
        let rows: Vec<&Value> = results.iter().filter(|r| s(r, "case") == case).collect();
        if rows.is_empty() {
            continue;
        }
        println!();
        let extra_head = match case {
            "throughput" => "| cpu s/GiB (writer+reader) | x C ring |",
            "rtt" => "| p99 us | p99.9 us | cpu us/rtt | x UDS blocking |",
            "setup" => "| connect, exchange, close us (p50) | cpu us/conn (bench, peer, daemon) |",
            _ => "| reached | fds/conn (bench, peer, daemon) | RSS KiB/conn (bench, peer, daemon) | ring KiB/conn |",
        };
        println!(
            "| {case} | transport | via | mode | dir | size | pages | value | unit | x UDS {extra_head}"
        );
        let cols = 10 + extra_head.matches('|').count() - 1;
        println!("{}", "|---".repeat(cols) + "|");
        for r in rows {
            let size = r
                .get("write_size")
                .and_then(Value::as_u64)
                .map(size_text)
                .or_else(|| {
                    r.get("connections")
                        .and_then(Value::as_u64)
                        .map(|n| format!("x{n}"))
                })
                .unwrap_or_else(|| "-".into());
            let extra = match case {
                "throughput" => format!(
                    "| {} | {} |",
                    fmt(num(r.get("cpu_s_per_gib"))),
                    fmt(num(r.get("ratio_c_ring")))
                ),
                "rtt" => format!(
                    "| {} | {} | {} | {} |",
                    fmt(num(r.get("p99"))),
                    fmt(num(r.get("p999"))),
                    fmt(num(r.get("cpu_us_per_rtt"))),
                    fmt(num(r.get("ratio_uds_blocking")))
                ),
                "setup" => format!(
                    "| {}, {}, {} | {}, {}, {} |",
                    fmt(num(r.get("connect_us"))),
                    fmt(num(r.get("exchange_us"))),
                    fmt(num(r.get("close_us"))),
                    fmt(num(r.get("cpu_us_per_conn_bench"))),
                    fmt(num(r.get("cpu_us_per_conn_peer"))),
                    fmt(num(r.get("cpu_us_per_conn_daemon")))
                ),
                _ => format!(
                    "| {} | {}, {}, {} | {}, {}, {} | {} |",
                    fmt(num(r.get("reached"))),
                    fmt(num(r.get("fds_per_conn_bench"))),
                    fmt(num(r.get("fds_per_conn_peer"))),
                    fmt(num(r.get("fds_per_conn_daemon"))),
                    fmt(num(r.get("rss_kib_per_conn_bench"))),
                    fmt(num(r.get("rss_kib_per_conn_peer"))),
                    fmt(num(r.get("rss_kib_per_conn_daemon"))),
                    fmt(num(r.get("ring_kib_per_conn"))),
                ),
            };
            println!(
                "| | {} | {} | {} | {} | {} | {} | {} | {} | {} {extra}",
                s(r, "transport"),
                s(r, "via"),
                s(r, "mode"),
                s(r, "direction"),
                size,
                opt(r, "ring_pages"),
                fmt(num(r.get("value"))),
                s(r, "unit"),
                fmt(num(r.get("ratio_uds"))),
            );
            if let Some(note) = r.get("note").and_then(Value::as_str) {
                println!("|   | note: {note} |");
            }
        }
    }
}

/// A plotted line: transport, via, direction, ring pages, label.
type Line = (
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<u64>,
    &'static str,
);

/// Throughput against write size, blocking and busy-poll panels.
fn draw_plot(path: &Path, results: &[Value], machine: &sys::Machine) -> anyhow::Result<()> {
    let mut panels = Vec::new();
    for m in ["blocking", "busy-poll"] {
        let mut series: Vec<plot::Series> = Vec::new();
        let lines: [Line; 7] = [
            (
                "hvsock",
                "daemon",
                Some("g2h"),
                Some(52),
                "hvsock g2h, 52 pages",
            ),
            (
                "hvsock",
                "daemon",
                Some("h2g"),
                Some(52),
                "hvsock h2g, 52 pages",
            ),
            (
                "hvsock",
                "daemon",
                Some("g2h"),
                Some(6),
                "hvsock g2h, 6 pages (seed)",
            ),
            (
                "hvsock",
                "daemon",
                Some("h2g"),
                Some(6),
                "hvsock h2g, 6 pages (seed)",
            ),
            ("uds", "kernel", None, None, "Unix stream socket"),
            ("tcp", "kernel", None, None, "TCP loopback"),
            (
                "c-ring",
                "shm",
                Some("g2h"),
                Some(52),
                "C spinning ring, 204 KiB, g2h packets",
            ),
        ];
        for (transport, via, dir, pages, label) in lines {
            let pts: Vec<(f64, f64)> = results
                .iter()
                .filter(|r| {
                    r["case"] == "throughput"
                        && r["mode"] == m
                        && r["transport"] == transport
                        && r["via"] == via
                        && dir.map_or(true, |d| r["direction"] == d)
                        && pages.map_or(true, |p| r["ring_pages"].as_u64() == Some(p))
                })
                .filter_map(|r| Some((r["write_size"].as_f64()?, r["value"].as_f64()?)))
                .collect();
            if !pts.is_empty() {
                series.push((label.to_string(), pts));
            }
        }
        if !series.is_empty() {
            panels.push((format!("{m} mode"), series));
        }
    }
    if panels.is_empty() {
        bail!("no throughput results to plot (run the throughput case)");
    }
    let title = format!(
        "hvsock vs Unix socket vs TCP: throughput ({} cores, kernel {})",
        machine.cores, machine.kernel
    );
    plot::draw(path, &title, &panels)
}
