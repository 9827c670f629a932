//! Faults: processes killed with SIGKILL at random points, the daemon
//! restarted, slow readers and paused processes.
//!
//! Child processes are this test binary run again with `HVSOCK_FAULT_ROLE`
//! naming what to do (see [`fault_child`]): a guest or host process that
//! connects and streams seeded bytes, a reader that prints its checksum,
//! or the daemon itself. The parent is the survivor; every wait it makes
//! is bounded, and it counts its descriptors and mappings before and after.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use hvsock::{
    Guest, Guid, Host, HvAddr, HvListener, HvStream, VsockAddr, VsockListener, VsockStream,
};
use rustix::process::{kill_process, Pid, Signal};
use vmbus::daemon::{Daemon, DaemonConfig};

/// How long a survivor may take to learn that its peer died (the issue's
/// bound).
const SURVIVOR_BOUND: Duration = Duration::from_secs(1);

const ROLE: &str = "HVSOCK_FAULT_ROLE";

// ---- the child side -----------------------------------------------------

/// The entry point of child processes; does nothing in a normal test run.
#[test]
fn fault_child() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} unset"));
    let socket = PathBuf::from(env("HVSOCK_FAULT_SOCKET"));
    let num = |k: &str| env(k).parse::<u64>().unwrap();
    match role.as_str() {
        "daemon" => {
            let mut config = DaemonConfig::new(&socket);
            config.vms.push(("alpha".into(), None));
            let daemon = Daemon::bind(config).expect("bind");
            println!("READY");
            std::io::stdout().flush().unwrap();
            daemon.run().expect("run");
        }
        "guest-writer" | "host-writer" => {
            let port = num("HVSOCK_FAULT_PORT") as u32;
            let mut stream: Box<dyn ReadWriteShut> = if role == "guest-writer" {
                let guest = Guest::connect_daemon_at(&socket, "alpha").unwrap();
                let s = VsockStream::connect(&guest, VsockAddr::new(2, port)).unwrap();
                std::mem::forget(guest);
                Box::new(s)
            } else {
                let host = Host::connect_daemon_at(&socket).unwrap();
                let vm = vmbus::server::derived_vm_id("alpha");
                let s = HvStream::connect(&host, HvAddr::from_vsock_port(vm, port)).unwrap();
                std::mem::forget(host);
                Box::new(s)
            };
            send_random(
                &mut stream,
                num("HVSOCK_FAULT_SEED"),
                num("HVSOCK_FAULT_BYTES") as usize,
            )
            .unwrap();
            stream.shut_write();
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest);
        }
        "guest-reader" => {
            let port = num("HVSOCK_FAULT_PORT") as u32;
            let guest = Guest::connect_daemon_at(&socket, "alpha").unwrap();
            let mut s = VsockStream::connect(&guest, VsockAddr::new(2, port)).unwrap();
            println!("CONNECTED");
            std::io::stdout().flush().unwrap();
            let (n, sum) = recv_all(&mut s).unwrap();
            println!("SUM {n} {sum}");
            std::io::stdout().flush().unwrap();
        }
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

trait ReadWriteShut: Read + Write {
    fn shut_write(&self);
}

impl ReadWriteShut for VsockStream {
    fn shut_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

impl ReadWriteShut for HvStream {
    fn shut_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

/// A child process, killed and reaped on drop.
struct Kid(Child);

impl Kid {
    fn spawn(role: &str, socket: &Path, vars: &[(&str, String)]) -> Kid {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "fault_child", "--nocapture", "--test-threads=1"])
            .env(ROLE, role)
            .env("HVSOCK_FAULT_SOCKET", socket)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in vars {
            cmd.env(k, v);
        }
        Kid(cmd.spawn().expect("spawn a child"))
    }

    fn pid(&self) -> Pid {
        Pid::from_child(&self.0)
    }

    /// Reads stdout lines until one starts with `prefix`; fails after
    /// [`HANG`].
    fn wait_line(&mut self, prefix: &str) -> String {
        let stdout = self.0.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        let prefix = prefix.to_owned();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            // The harness may print "test fault_child ... " first.
            let found = lines.find_map(|l| {
                l.ok()
                    .and_then(|l| l.find(&prefix).map(|at| l[at..].to_owned()))
            });
            let _ = tx.send(found);
            // Keep reading so the child never blocks on a full pipe.
            for _ in lines {}
        });
        rx.recv_timeout(HANG)
            .ok()
            .flatten()
            .expect("the child did not report in time")
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawns a daemon child at `socket` and waits until it listens.
fn daemon_child(socket: &Path) -> Kid {
    let mut kid = Kid::spawn("daemon", socket, &[]);
    kid.wait_line("READY");
    kid
}

// ---- what the survivor does ---------------------------------------------

/// What the survivor saw of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Seen {
    /// No connection arrived.
    Nothing,
    /// The stream ended with a reset (or broken pipe) after this many bytes.
    Reset,
    /// The stream ended with EOF (the child finished or died after its FIN).
    Eof,
}

/// Reads a stream to its end; the read timeout bounds each wait.
fn drain(s: &mut dyn Read) -> Seen {
    let mut buf = vec![0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Seen::Eof,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::WouldBlock => {
                panic!("the survivor waited past its bound: {e}")
            }
            Err(_) => return Seen::Reset,
        }
    }
}

/// Accepts (non-blocking) until `until`, then drains what came.
fn serve_one(
    accept: &mut dyn FnMut() -> std::io::Result<Box<dyn Read + Send>>,
    until: mpsc::Receiver<Instant>,
) -> Seen {
    let mut killed_at: Option<Instant> = None;
    loop {
        match accept() {
            Ok(mut s) => return drain(&mut *s),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("accept failed: {e}"),
        }
        if killed_at.is_none() {
            killed_at = until.try_recv().ok();
        }
        if let Some(t) = killed_at {
            if t.elapsed() > SURVIVOR_BOUND {
                return Seen::Nothing;
            }
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

#[test]
fn kill_9_at_random_points_two_hundred_times() {
    let iterations: usize = std::env::var("HVSOCK_FAULT_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(210);
    let mut rng = Rng::from_env("kill_9_at_random_points_two_hundred_times");
    let dir = tempfile::tempdir().unwrap();
    // One long-lived daemon for the guest and host victims (it must keep
    // working), and a fresh daemon process for each daemon victim.
    let d = TestDaemon::start(&["alpha"]);
    let root = Host::connect_daemon_at(&d.socket).unwrap();
    let guest = Guest::connect_daemon_at(&d.socket, "alpha").unwrap();
    let hv_listener = HvListener::bind(&root, HvAddr::from_vsock_port(Guid::ZERO, 8000)).unwrap();
    hv_listener.set_nonblocking(true).unwrap();
    let vs_listener = VsockListener::bind(&guest, VsockAddr::new(u32::MAX, 8001)).unwrap();
    vs_listener.set_nonblocking(true).unwrap();
    let mut seen = std::collections::BTreeMap::<(&str, Seen), usize>::new();

    // Warm up (first connections allocate what stays allocated), then
    // count. Three connections: after two offers of one geometry a guest
    // keeps the next offer's ring memory ready (one memfd and mapping that
    // stays), which must be in the count before, as it will be after.
    for _ in 0..3 {
        let mut g = VsockStream::connect(&guest, VsockAddr::new(2, 8000)).unwrap();
        let (h, _) = loop {
            match hv_listener.accept() {
                Ok(x) => break x,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => panic!("{e}"),
            }
        };
        g.write_all(b"warm").unwrap();
        drop((g, h));
    }
    std::thread::sleep(Duration::from_millis(200));
    let (fds_before, maps_before) = (fd_count(), maps_count());
    let shm_before = maps_matching("memfd:");

    let started = Instant::now();
    for i in 0..iterations {
        let victim = ["guest", "host", "daemon"][i % 3];
        let delay = Duration::from_micros(rng.below(30_000));
        let bytes = rng.below(4 << 20).to_string();
        let seed = rng.next_u64().to_string();
        let (tx, rx) = mpsc::channel::<Instant>();
        let outcome = match victim {
            "guest" | "host" => {
                let (role, port) = if victim == "guest" {
                    ("guest-writer", 8000)
                } else {
                    ("host-writer", 8001)
                };
                let mut kid = Kid::spawn(
                    role,
                    &d.socket,
                    &[
                        ("HVSOCK_FAULT_PORT", port.to_string()),
                        ("HVSOCK_FAULT_BYTES", bytes),
                        ("HVSOCK_FAULT_SEED", seed),
                    ],
                );
                std::thread::scope(|scope| {
                    let survivor = scope.spawn(|| {
                        let mut accept: Box<dyn FnMut() -> std::io::Result<Box<dyn Read + Send>>> =
                            if victim == "guest" {
                                Box::new(|| {
                                    let (s, _) = hv_listener.accept()?;
                                    s.set_read_timeout(Some(SURVIVOR_BOUND))?;
                                    Ok(Box::new(s) as Box<dyn Read + Send>)
                                })
                            } else {
                                Box::new(|| {
                                    let (s, _) = vs_listener.accept()?;
                                    s.set_read_timeout(Some(SURVIVOR_BOUND))?;
                                    Ok(Box::new(s) as Box<dyn Read + Send>)
                                })
                            };
                        serve_one(&mut *accept, rx)
                    });
                    std::thread::sleep(delay);
                    kid.kill();
                    let _ = tx.send(Instant::now());
                    survivor.join().expect("the survivor")
                })
            }
            _ => daemon_victim(dir.path(), delay, &bytes, &seed),
        };
        *seen.entry((victim, outcome)).or_default() += 1;
    }
    eprintln!("{iterations} kills in {:?}: {seen:?}", started.elapsed());
    // Something of each kind happened: kills before, during and after.
    for victim in ["guest", "host"] {
        assert!(
            seen.keys().any(|(v, s)| *v == victim && *s == Seen::Reset),
            "no {victim} was killed mid-transfer: {seen:?}"
        );
    }

    // The long-lived daemon and endpoints still work.
    let mut g = VsockStream::connect(&guest, VsockAddr::new(2, 8000)).unwrap();
    let (mut h, _) = loop {
        match hv_listener.accept() {
            Ok(x) => break x,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("{e}"),
        }
    };
    h.set_nonblocking(false).unwrap();
    g.set_read_timeout(Some(HANG)).unwrap();
    h.set_read_timeout(Some(HANG)).unwrap();
    assert_moves_data(&mut g, &mut h, "after the kills");
    drop((g, h));

    // Nothing leaked: background releases finish within a few seconds.
    let fds = settle(fd_count, |n| n <= fds_before);
    let shm = settle(|| maps_matching("memfd:"), |n| n <= shm_before);
    // Other mappings may grow a little and stay: the allocator's per-thread
    // arenas and cached thread stacks. A leak per iteration would be
    // hundreds.
    let maps = settle(maps_count, |n| n <= maps_before + 32);
    eprintln!("fds {fds_before} -> {fds}, ring mappings {shm_before} -> {shm}, mappings {maps_before} -> {maps}");
    assert!(
        fds <= fds_before,
        "descriptors: {fds_before} before, {fds} after"
    );
    assert!(
        shm <= shm_before,
        "ring mappings: {shm_before} before, {shm} after"
    );
    assert!(
        maps <= maps_before + 32,
        "mappings: {maps_before} before, {maps} after"
    );
}

/// One iteration whose victim is the daemon: a guest and a host endpoint of
/// this process connect through a daemon child that dies at `delay`.
fn daemon_victim(dir: &Path, delay: Duration, bytes: &str, seed: &str) -> Seen {
    let socket = dir.join("killed").join("host.sock");
    let mut kid = daemon_child(&socket);
    let bytes: usize = bytes.parse().unwrap();
    let seed: u64 = seed.parse().unwrap();
    std::thread::scope(|scope| {
        let socket = &socket;
        // Each side reports when it is done; both must be done within the
        // bound after the kill.
        let host_side = scope.spawn(move || -> Seen {
            let Ok(root) = Host::connect_daemon_at(socket) else {
                return Seen::Nothing;
            };
            let Ok(l) = HvListener::bind(&root, HvAddr::from_vsock_port(Guid::ZERO, 9000)) else {
                return Seen::Nothing;
            };
            match l.accept() {
                Ok((mut s, _)) => {
                    s.set_read_timeout(Some(SURVIVOR_BOUND)).unwrap();
                    drain(&mut s)
                }
                Err(_) => Seen::Nothing,
            }
        });
        let guest_side = scope.spawn(move || {
            let Ok(guest) = Guest::connect_daemon_at(socket, "alpha") else {
                return;
            };
            // The host side may not listen yet: retry until refused no more.
            let deadline = Instant::now() + HANG;
            while Instant::now() < deadline {
                match VsockStream::connect(&guest, VsockAddr::new(2, 9000)) {
                    Ok(mut s) => {
                        s.set_write_timeout(Some(SURVIVOR_BOUND)).unwrap();
                        if send_random(&mut s, seed, bytes).is_ok() {
                            let _ = s.shutdown(Shutdown::Write);
                        }
                        return;
                    }
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                        std::thread::sleep(Duration::from_millis(1))
                    }
                    Err(_) => return,
                }
            }
        });
        std::thread::sleep(delay);
        kid.kill();
        let killed = Instant::now();
        let guest_done = guest_side.join();
        let host_seen = host_side.join().expect("the host side");
        let took = killed.elapsed();
        assert!(guest_done.is_ok(), "the guest side panicked");
        assert!(
            took < SURVIVOR_BOUND + Duration::from_millis(500),
            "the endpoints took {took:?} to notice the daemon died"
        );
        host_seen
    })
}

#[test]
fn endpoints_see_a_restarted_daemon_and_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hv").join("host.sock");
    let mut first = daemon_child(&socket);
    let root = Host::connect_daemon_at(&socket).unwrap();
    let guest = Guest::connect_daemon_at(&socket, "alpha").unwrap();
    let listener = VsockListener::bind(&guest, VsockAddr::new(u32::MAX, 8100)).unwrap();
    let vm = vmbus::server::derived_vm_id("alpha");
    let mut h = HvStream::connect(&root, HvAddr::from_vsock_port(vm, 8100)).unwrap();
    let (mut g, _) = listener.accept().unwrap();
    g.set_read_timeout(Some(HANG)).unwrap();
    h.set_read_timeout(Some(HANG)).unwrap();
    assert_moves_data(&mut g, &mut h, "before the restart");
    h.write_all(b"in flight").unwrap();

    first.kill();
    let killed = Instant::now();
    // Bytes already in the ring are still read, then the reset.
    let mut buf = [0u8; 9];
    g.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"in flight");
    let e = g.read(&mut buf).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
    let e = h.read(&mut buf).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
    assert!(h.write(b"x").is_err());
    assert!(listener.accept().is_err(), "the listener is closed too");
    assert!(
        killed.elapsed() < SURVIVOR_BOUND,
        "took {:?}",
        killed.elapsed()
    );
    // Until a new daemon is up, joining fails cleanly.
    assert!(Guest::connect_daemon_at(&socket, "alpha").is_err());

    let _second = daemon_child(&socket);
    let root = Host::connect_daemon_at(&socket).unwrap();
    let guest = Guest::connect_daemon_at(&socket, "alpha").unwrap();
    let listener = VsockListener::bind(&guest, VsockAddr::new(u32::MAX, 8100)).unwrap();
    let mut h = HvStream::connect(&root, HvAddr::from_vsock_port(vm, 8100)).unwrap();
    let (mut g, _) = listener.accept().unwrap();
    g.set_read_timeout(Some(HANG)).unwrap();
    h.set_read_timeout(Some(HANG)).unwrap();
    assert_moves_data(&mut g, &mut h, "after the restart");
}

#[test]
fn a_reader_that_stops_makes_the_writer_wait_without_growing() {
    let d = TestDaemon::start(&["alpha"]);
    let root = Host::connect_daemon_at(&d.socket).unwrap();
    let guest = Guest::connect_daemon_at(&d.socket, "alpha").unwrap();
    let listener = HvListener::bind(&root, HvAddr::from_vsock_port(Guid::ZERO, 8200)).unwrap();
    let mut g = VsockStream::connect(&guest, VsockAddr::new(2, 8200)).unwrap();
    let (mut h, _) = listener.accept().unwrap();

    // Non-blocking: the writer fills the ring, then WouldBlock, and stays
    // there however often it tries.
    g.set_nonblocking(true).unwrap();
    let mut sum = Fnv::default();
    let mut rng = Rng::new(7);
    let mut chunk = vec![0u8; 4096];
    let mut written = 0usize;
    let mut pending: Option<usize> = None;
    let rss_before = rss_kib();
    for _ in 0..20_000 {
        let n = match pending {
            Some(n) => n,
            None => {
                let n = 1 + rng.below(chunk.len() as u64) as usize;
                rng.fill(&mut chunk[..n]);
                n
            }
        };
        match g.write(&chunk[..n]) {
            Ok(k) => {
                sum.update(&chunk[..k]);
                written += k;
                // Keep the unwritten tail for next time, in order.
                chunk.copy_within(k..n, 0);
                pending = (k < n).then_some(n - k);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => pending = Some(n),
            Err(e) => panic!("{e}"),
        }
    }
    let rss_after = rss_kib();
    assert!(
        written > 0 && written < 1 << 20,
        "{written} bytes went into the ring"
    );
    assert!(
        rss_after < rss_before + 4096,
        "RSS grew from {rss_before} KiB to {rss_after} KiB while the writer was blocked"
    );
    // Blocking with a timeout: waits, then TimedOut; nothing lost.
    g.set_nonblocking(false).unwrap();
    g.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    if let Some(n) = pending.take() {
        let e = g.write(&chunk[..n]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
        pending = Some(n);
    }
    // The reader resumes: everything arrives, in order.
    let reader = std::thread::spawn(move || {
        h.set_read_timeout(Some(HANG)).unwrap();
        recv_all(&mut h).unwrap()
    });
    g.set_write_timeout(Some(HANG)).unwrap();
    if let Some(n) = pending {
        g.write_all(&chunk[..n]).unwrap();
        sum.update(&chunk[..n]);
        written += n;
    }
    g.shutdown(Shutdown::Write).unwrap();
    let (n, got) = reader.join().unwrap();
    assert_eq!((n, got), (written, sum.0));
}

#[test]
fn a_paused_process_resumes_without_loss() {
    let d = TestDaemon::start(&["alpha"]);
    let root = Host::connect_daemon_at(&d.socket).unwrap();
    let listener = HvListener::bind(&root, HvAddr::from_vsock_port(Guid::ZERO, 8300)).unwrap();
    let bytes = 32usize << 20;

    // The child writes; we stop and continue it mid-transfer.
    let mut kid = Kid::spawn(
        "guest-writer",
        &d.socket,
        &[
            ("HVSOCK_FAULT_PORT", "8300".into()),
            ("HVSOCK_FAULT_BYTES", bytes.to_string()),
            ("HVSOCK_FAULT_SEED", "99".into()),
        ],
    );
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(HANG)).unwrap();
    let mut buf = vec![0u8; 65536];
    let mut sum = Fnv::default();
    let mut got = 0usize;
    let mut stopped = false;
    loop {
        let n = s
            .read(&mut buf)
            .expect("no error while the writer is paused");
        if n == 0 {
            break;
        }
        sum.update(&buf[..n]);
        got += n;
        if !stopped && got > bytes / 3 {
            stopped = true;
            kill_process(kid.pid(), Signal::STOP).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            kill_process(kid.pid(), Signal::CONT).unwrap();
        }
    }
    let expected = send_random(&mut std::io::sink(), 99, bytes).unwrap();
    assert_eq!((got, sum.0), (bytes, expected));
    kid.kill();

    // The child reads; we stop and continue it while we write.
    let guest_listener_port = 8301;
    let mut kid = Kid::spawn(
        "guest-reader",
        &d.socket,
        &[("HVSOCK_FAULT_PORT", guest_listener_port.to_string())],
    );
    let listener = HvListener::bind(
        &root,
        HvAddr::from_vsock_port(Guid::ZERO, guest_listener_port),
    )
    .unwrap();
    let (mut s, _) = listener.accept().unwrap();
    s.set_write_timeout(Some(HANG)).unwrap();
    let pid = kid.pid();
    let pauser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        kill_process(pid, Signal::STOP).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        kill_process(pid, Signal::CONT).unwrap();
    });
    let expected = send_random(&mut s, 5, bytes).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    pauser.join().unwrap();
    let line = kid.wait_line("SUM");
    assert_eq!(line, format!("SUM {bytes} {expected}"));
}
