//! `hvsock bridge` as real processes: 50 concurrent connections with
//! checksums through tcp-listen → hv (host) → hv-listen (guest) → tcp, and
//! the same through unix-listen and unix; each direction half-closed on its
//! own (the echo server answers only after the client's FIN); the counters
//! on SIGUSR1 and at exit; the Unix socket removed at exit.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc;

use common::{checksum, data, Daemon, Proc, PATIENCE};
use rustix::process::Signal;

const CONNECTIONS: usize = 50;
const BYTES: usize = 100_000;

/// Serves one echo connection: read everything up to the FIN, then send
/// the checksum of what arrived followed by the data, then the FIN.
fn answer<S: Read + Write>(mut s: S, shutdown: impl FnOnce(&S)) {
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    s.write_all(&checksum(&got).to_le_bytes()).unwrap();
    s.write_all(&got).unwrap();
    shutdown(&s);
}

/// One client: send `payload`, FIN, read the answer to the end; checks the
/// checksum the server saw and the data echoed.
fn client<S: Read + Write + Send + 'static>(
    s: S,
    writer: S,
    payload: Vec<u8>,
    shutdown: impl FnOnce(&S) + Send + 'static,
) {
    let sum = checksum(&payload);
    let len = payload.len();
    let w = std::thread::spawn(move || {
        let mut writer = writer;
        writer.write_all(&payload).unwrap();
        shutdown(&writer);
        payload
    });
    let mut s = s;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    let payload = w.join().unwrap();
    assert_eq!(answer.len(), 8 + len, "short answer");
    assert_eq!(u64::from_le_bytes(answer[..8].try_into().unwrap()), sum);
    assert_eq!(checksum(&answer[8..]), checksum(&payload));
}

/// Runs `CONNECTIONS` clients at once, failing instead of hanging.
fn run_clients(spawn: impl Fn(usize) -> std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let handles: Vec<_> = (0..CONNECTIONS).map(&spawn).collect();
    std::thread::spawn(move || {
        let results: Vec<_> = handles.into_iter().map(|h| h.join().is_ok()).collect();
        let _ = tx.send(results);
    });
    let results = rx.recv_timeout(PATIENCE).expect("clients did not finish");
    assert!(results.iter().all(|ok| *ok), "a client failed: {results:?}");
}

/// Reads the counters line the bridge prints.
fn counters_line(bridge: &mut Proc) -> String {
    bridge.wait_for_stderr("connections (")
}

fn expected_counters(from: &str, to: &str) -> [String; 3] {
    [
        format!("{CONNECTIONS} connections"),
        format!("{} bytes {from} -> {to}", CONNECTIONS * BYTES),
        format!("{} bytes {to} -> {from}", CONNECTIONS * (BYTES + 8)),
    ]
}

#[test]
fn tcp_to_hv_to_tcp_with_50_concurrent_connections() {
    let host = Daemon::start(&["alpha"]);
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let echo_addr = echo.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in echo.incoming() {
            let s = s.unwrap();
            std::thread::spawn(move || answer(s, |s| s.shutdown(Shutdown::Write).unwrap()));
        }
    });

    let mut guest = Proc::spawn(host.cmd(&[
        "bridge",
        "--vm",
        "alpha",
        "hv-listen:6000",
        &format!("tcp:{echo_addr}"),
    ]));
    guest.wait_for_stderr("listening on");
    let mut front = Proc::spawn(host.cmd(&["bridge", "tcp-listen:0", "hv:alpha:6000"]));
    let line = front.wait_for_stderr("listening on");
    // "hvsock bridge: listening on tcp-listen:127.0.0.1:PORT, relaying to ..."
    let addr = line
        .split("tcp-listen:")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap()
        .to_string();

    run_clients(|i| {
        let addr = addr.clone();
        std::thread::spawn(move || {
            let s = TcpStream::connect(&addr).unwrap();
            let w = s.try_clone().unwrap();
            client(s, w, data(i as u64, BYTES), |s| {
                s.shutdown(Shutdown::Write).unwrap()
            });
        })
    });

    front.signal(Signal::USR1);
    let line = counters_line(&mut front);
    for want in expected_counters("tcp-listen:127.0.0.1:0", "hv:alpha:6000") {
        assert!(line.contains(&want), "{want:?} not in {line:?}");
    }
    front.signal(Signal::TERM);
    let line = counters_line(&mut front);
    assert!(
        line.contains(&format!("{CONNECTIONS} connections")),
        "{line}"
    );
    assert!(front.wait().success());
}

#[test]
fn unix_to_hv_to_unix_with_50_concurrent_connections() {
    let host = Daemon::start(&["alpha"]);
    let echo_path = host.path("echo.sock");
    let echo = UnixListener::bind(&echo_path).unwrap();
    std::thread::spawn(move || {
        for s in echo.incoming() {
            let s = s.unwrap();
            std::thread::spawn(move || answer(s, |s| s.shutdown(Shutdown::Write).unwrap()));
        }
    });
    let unix_to = format!("unix:{}", echo_path.display());
    let mut guest = Proc::spawn(host.cmd(&["bridge", "--vm", "alpha", "hv-listen:6001", &unix_to]));
    guest.wait_for_stderr("listening on");
    let front_path = host.path("front.sock");
    let unix_from = format!("unix-listen:{}", front_path.display());
    let mut front = Proc::spawn(host.cmd(&["bridge", &unix_from, "hv:alpha:6001"]));
    front.wait_for_stderr("listening on");

    run_clients(|i| {
        let path = front_path.clone();
        std::thread::spawn(move || {
            let s = UnixStream::connect(&path).unwrap();
            let w = s.try_clone().unwrap();
            client(s, w, data(1000 + i as u64, BYTES), |s| {
                s.shutdown(Shutdown::Write).unwrap()
            });
        })
    });

    front.signal(Signal::TERM);
    let line = counters_line(&mut front);
    for want in expected_counters(&unix_from, "hv:alpha:6001") {
        assert!(line.contains(&want), "{want:?} not in {line:?}");
    }
    assert!(front.wait().success());
    assert!(!front_path.exists(), "the bridge left its socket behind");
}

#[test]
fn a_to_address_that_refuses_closes_only_that_connection() {
    let host = Daemon::start(&["alpha"]);
    let mut front = Proc::spawn(host.cmd(&["bridge", "tcp-listen:0", "hv:alpha:6002"]));
    let line = front.wait_for_stderr("listening on");
    let addr = line
        .split("tcp-listen:")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap()
        .to_string();
    // Nobody listens on 6002 in alpha: the client sees its connection
    // closed, and the bridge says why and keeps serving.
    for _ in 0..3 {
        let mut s = TcpStream::connect(&addr).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        assert!(got.is_empty());
        let line = front.wait_for_stderr("closing the connection");
        assert!(line.contains("6002"), "{line}");
    }
}
