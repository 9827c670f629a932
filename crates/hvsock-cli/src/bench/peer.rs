//! The far end of each measurement: a separate process (`hvsock bench
//! --peer JOB`, talking JSON lines on stdin/stdout) or, for the embedded
//! host, a thread talking through channels. It connects (or, for
//! host-initiated set-up, listens) and does its half of the work; it
//! reports its CPU time and, where the bench process cannot see it, its
//! own timing and memory.

use std::io::{BufRead, Read, Write};
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hvsock::Guest;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use vmbus::daemon::EmbeddedHost;

use super::floor::Floor;
use super::sys;
use super::transport::{Conn, PeerSide, Reach, Stream};

/// What the peer does.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "work", rename_all = "kebab-case")]
pub enum Work {
    /// One stream of `total` bytes; the peer writes (in `write_size` writes)
    /// or reads.
    Throughput {
        /// The peer is the writer.
        peer_writes: bool,
        /// Bytes per write call.
        write_size: usize,
        /// Bytes in all.
        total: u64,
        /// The writer stops early after this many seconds (then the figure
        /// is from the bytes that moved).
        cap_s: f64,
    },
    /// The peer echoes `rounds` messages of `size` bytes.
    Rtt {
        /// Message size.
        size: usize,
        /// Round trips.
        rounds: usize,
    },
    /// The peer answers `rounds` pings of the wake-up floor (`floor`), through
    /// the shared page of [`Reach::Memfd`].
    Floor {
        /// Round trips.
        rounds: usize,
    },
    /// The peer connects `count` times: 1 byte each way, close; it times it.
    SetupConnect {
        /// Connections.
        count: usize,
    },
    /// The peer (an hvsock guest) listens and serves `count` connections
    /// from the host.
    SetupAccept {
        /// Connections.
        count: usize,
    },
    /// The peer opens `count` connections, reports, then on "go" writes
    /// `per_conn` bytes on each, `chunk` at a time, round robin.
    Connections {
        /// Connections to hold open.
        count: usize,
        /// Bytes per connection.
        per_conn: u64,
        /// Bytes per write.
        chunk: usize,
    },
}

/// One measurement, as handed to the peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// What to do.
    pub work: Work,
    /// How to reach the bench process.
    pub reach: Reach,
    /// Busy-poll mode.
    pub busy: bool,
}

/// The peer's line to the bench process.
pub trait Ctl {
    /// Sends a report.
    fn send(&mut self, value: Value);
    /// Waits for a command ("go").
    fn recv(&mut self) -> anyhow::Result<String>;
}

/// A peer process: commands on stdin, reports on stdout.
pub struct StdioCtl;

impl Ctl for StdioCtl {
    fn send(&mut self, value: Value) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{value}");
        let _ = out.flush();
    }

    fn recv(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        if std::io::stdin().lock().read_line(&mut line)? == 0 {
            bail!("the bench process went away");
        }
        Ok(line.trim().to_string())
    }
}

/// A peer thread: channels both ways.
pub struct ChanCtl {
    /// Reports.
    pub tx: Sender<Value>,
    /// Commands.
    pub rx: Receiver<String>,
}

impl Ctl for ChanCtl {
    fn send(&mut self, value: Value) {
        let _ = self.tx.send(value);
    }

    fn recv(&mut self) -> anyhow::Result<String> {
        self.rx.recv().context("the bench thread went away")
    }
}

/// Runs `job`, reporting through `ctl`; errors are reported too.
pub fn run(job: &Job, ctl: &mut dyn Ctl, embedded: Option<&EmbeddedHost>) -> anyhow::Result<()> {
    let result = work(job, ctl, embedded);
    if let Err(e) = &result {
        ctl.send(json!({ "error": format!("{e:#}") }));
    }
    result
}

fn side(reach: &Reach, embedded: Option<&EmbeddedHost>) -> anyhow::Result<PeerSide> {
    Ok(match reach {
        Reach::Uds { path } => PeerSide::Uds(path.clone()),
        Reach::Tcp { port } => PeerSide::Tcp(*port),
        Reach::Daemon {
            socket,
            vm,
            port,
            pages,
        } => PeerSide::Guest(
            Guest::connect_daemon_at(socket, vm).context("joining the VM through the daemon")?,
            *port,
            *pages,
        ),
        Reach::Embedded { vm, port, pages } => {
            let host = embedded.context("no embedded host in this process")?;
            PeerSide::Guest(Guest::embedded(host, vm)?, *port, *pages)
        }
        Reach::Memfd { .. } => bail!("a shared page is not a stream to connect to"),
    })
}

fn work(job: &Job, ctl: &mut dyn Ctl, embedded: Option<&EmbeddedHost>) -> anyhow::Result<()> {
    if let (Work::Floor { rounds }, Reach::Memfd { path }) = (&job.work, &job.reach) {
        let floor = Floor::open(path, job.busy)?;
        ctl.send(json!({ "ready": true }));
        let cpu = sys::cpu_seconds();
        floor.echo(*rounds)?;
        ctl.send(json!({ "done": true, "cpu_s": sys::cpu_seconds() - cpu }));
        return Ok(());
    }
    let side = side(&job.reach, embedded)?;
    match job.work {
        Work::Throughput {
            peer_writes,
            write_size,
            total,
            cap_s,
        } => {
            let mut c = Conn::new(side.connect().context("connecting")?, job.busy)?;
            let cpu = sys::cpu_seconds();
            if peer_writes {
                let mut go = [0u8; 1];
                c.read_exact(&mut go)?;
                write_stream(&mut c, write_size, total, Duration::from_secs_f64(cap_s))?;
                c.read_exact(&mut go)?;
            } else {
                c.write_all(&[1])?;
                read_stream(&mut c, write_size)?;
                c.write_all(&[2])?;
            }
            ctl.send(json!({ "done": true, "cpu_s": sys::cpu_seconds() - cpu }));
        }
        Work::Rtt { size, rounds } => {
            let mut c = Conn::new(side.connect().context("connecting")?, job.busy)?;
            let mut buf = vec![0u8; size];
            let cpu = sys::cpu_seconds();
            for _ in 0..rounds {
                c.read_exact(&mut buf)?;
                c.write_all(&buf)?;
            }
            ctl.send(json!({ "done": true, "cpu_s": sys::cpu_seconds() - cpu }));
        }
        Work::Floor { .. } => bail!("the wake-up floor needs its shared page"),
        Work::SetupConnect { count } => {
            let cpu = sys::cpu_seconds();
            let cycles = connect_cycles(count, |i| {
                Conn::new(
                    side.connect()
                        .with_context(|| format!("connection {}", i + 1))?,
                    false,
                )
                .map_err(Into::into)
            })?;
            let mut done = cycles.to_json();
            done["done"] = json!(true);
            done["cpu_s"] = json!(sys::cpu_seconds() - cpu);
            ctl.send(done);
        }
        Work::SetupAccept { count } => {
            let listener = side.listen(1024).context("listening in the guest")?;
            ctl.send(json!({ "listening": true }));
            let cpu = sys::cpu_seconds();
            for _ in 0..count {
                let (s, _) = listener.accept()?;
                serve_one(Conn::new(Stream::Vsock(s), false)?)?;
            }
            ctl.send(json!({ "done": true, "cpu_s": sys::cpu_seconds() - cpu }));
        }
        Work::Connections {
            count,
            per_conn,
            chunk,
        } => {
            let fds0 = sys::fd_count(None).unwrap_or(0);
            let rss0 = sys::rss_kib(None).unwrap_or(0);
            let mut conns = Vec::with_capacity(count);
            let mut error = None;
            for _ in 0..count {
                match side.connect() {
                    Ok(s) => conns.push(Conn::new(s, false)?),
                    Err(e) => {
                        error = Some(format!("connection {}: {e}", conns.len() + 1));
                        break;
                    }
                }
            }
            let fds = sys::fd_count(None).unwrap_or(0).saturating_sub(fds0);
            let rss = sys::rss_kib(None).unwrap_or(0).saturating_sub(rss0);
            ctl.send(json!({
                "connected": conns.len(), "fds": fds, "rss_kib": rss, "error": error,
            }));
            if ctl.recv()? != "go" {
                return Ok(());
            }
            let cpu = sys::cpu_seconds();
            let data = vec![5u8; chunk];
            let rounds = per_conn.div_ceil(chunk as u64);
            for _ in 0..rounds {
                for c in &mut conns {
                    c.write_all(&data)?;
                }
            }
            // The memory after the data moved (rings touched).
            let rss_after = sys::rss_kib(None).unwrap_or(0).saturating_sub(rss0);
            // Wait until the bench process has read it all before closing.
            let _ = ctl.recv()?;
            ctl.send(
                json!({ "done": true, "cpu_s": sys::cpu_seconds() - cpu, "rss_kib": rss_after }),
            );
        }
    }
    Ok(())
}

/// What [`connect_cycles`] measured: the whole time, and the median of
/// each phase of a cycle.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cycles {
    pub elapsed_s: f64,
    /// `connect` returning a usable stream.
    pub connect_us: f64,
    /// One byte each way on the new stream.
    pub exchange_us: f64,
    /// Dropping the stream (the close the caller waits for).
    pub close_us: f64,
}

impl Cycles {
    pub fn to_json(self) -> Value {
        json!({
            "elapsed_s": self.elapsed_s,
            "connect_us": self.connect_us,
            "exchange_us": self.exchange_us,
            "close_us": self.close_us,
        })
    }

    /// Read back from a peer's report; `None` if the time is missing.
    pub fn from_json(v: &Value) -> Option<Cycles> {
        let f = |k: &str| v.get(k).and_then(Value::as_f64);
        Some(Cycles {
            elapsed_s: f("elapsed_s")?,
            connect_us: f("connect_us").unwrap_or(f64::NAN),
            exchange_us: f("exchange_us").unwrap_or(f64::NAN),
            close_us: f("close_us").unwrap_or(f64::NAN),
        })
    }
}

/// The set-up case's client side: `count` times connect (with
/// `connect(i)`), write one byte, read the echo, close. Times each phase,
/// so that the rate can be taken apart.
pub fn connect_cycles(
    count: usize,
    mut connect: impl FnMut(usize) -> anyhow::Result<Conn>,
) -> anyhow::Result<Cycles> {
    let mut phases: [Vec<f64>; 3] = std::array::from_fn(|_| Vec::with_capacity(count));
    let mut byte = [0u8; 1];
    let start = Instant::now();
    for i in 0..count {
        let t0 = Instant::now();
        let mut c = connect(i)?;
        let t1 = Instant::now();
        c.write_all(&[7])?;
        c.read_exact(&mut byte)?;
        let t2 = Instant::now();
        drop(c);
        let t3 = Instant::now();
        for (phase, d) in phases.iter_mut().zip([t1 - t0, t2 - t1, t3 - t2]) {
            phase.push(d.as_secs_f64() * 1e6);
        }
    }
    let elapsed_s = start.elapsed().as_secs_f64();
    // The same median as the runs' (the mean of the middle two of an even
    // count).
    let [connect_us, exchange_us, close_us] = phases.map(super::median);
    Ok(Cycles {
        elapsed_s,
        connect_us,
        exchange_us,
        close_us,
    })
}

/// One set-up round on the accepting side: 1 byte in, 1 byte out, then the
/// end of the stream.
pub fn serve_one(mut c: Conn) -> anyhow::Result<()> {
    let mut byte = [0u8; 1];
    c.read_exact(&mut byte)?;
    c.write_all(&byte)?;
    let mut rest = [0u8; 16];
    while c.read(&mut rest)? != 0 {}
    Ok(())
}

/// Writes `total` bytes in `write_size` writes, or fewer if `cap` passes
/// first, then the end of the stream; returns the bytes written.
pub fn write_stream(
    c: &mut Conn,
    write_size: usize,
    total: u64,
    cap: Duration,
) -> std::io::Result<u64> {
    let data = vec![0x5au8; write_size];
    let start = Instant::now();
    let mut sent = 0u64;
    let mut writes = 0u32;
    while sent < total {
        let n = (total - sent).min(write_size as u64) as usize;
        c.write_all(&data[..n])?;
        sent += n as u64;
        writes = writes.wrapping_add(1);
        if writes % 64 == 0 && start.elapsed() > cap {
            break;
        }
    }
    c.shutdown_write()?;
    Ok(sent)
}

/// Reads to the end of the stream, with reads of at least 64 KiB (as
/// `peers tput`); returns the bytes read.
pub fn read_stream(c: &mut Conn, write_size: usize) -> std::io::Result<u64> {
    let mut buf = vec![0u8; write_size.max(64 << 10)];
    let mut got = 0u64;
    loop {
        let n = c.read(&mut buf)?;
        if n == 0 {
            return Ok(got);
        }
        got += n as u64;
    }
}
