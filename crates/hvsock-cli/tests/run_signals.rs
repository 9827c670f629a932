//! The shim's threads survive a signal flood: a Python client under
//! `hvsock run` moves data through its vsock socket while the test sends it
//! thousands of signals. The program's own calls see EINTR (and Python
//! retries them); the shim's relay thread blocks signals and keeps going.

mod run_support;

use std::time::Duration;

use run_support::{require, Daemon};

const SCRIPT: &str = r#"# server PORT: echo; client CID PORT: 16 MiB through the echo, with a
# SIGUSR1 handler counting what the flood delivers.
import hashlib, os, signal, socket, sys, threading

def echo(c):
    with c:
        while True:
            d = c.recv(1 << 16)
            if not d:
                return
            c.sendall(d)

def server(port):
    s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    s.bind((socket.VMADDR_CID_ANY, port))
    s.listen()
    while True:
        c, _ = s.accept()
        threading.Thread(target=echo, args=(c,), daemon=True).start()

def client(cid, port):
    got = [0]
    def on_signal(signum, frame):
        got[0] += 1
    signal.signal(signal.SIGUSR1, on_signal)
    print("ready", flush=True)
    data = os.urandom(1 << 20) * 16
    s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    s.connect((cid, port))
    def send():
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
    t = threading.Thread(target=send)
    t.start()
    h = hashlib.sha256()
    n = 0
    while True:
        d = s.recv(1 << 16)
        if not d:
            break
        h.update(d)
        n += len(d)
    t.join()
    assert n == len(data), (n, len(data))
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()
    # The flood goes on until we are gone; ignore it while exiting.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    print("signals", got[0], "all ok", flush=True)

if sys.argv[1] == "server":
    server(int(sys.argv[2]))
else:
    client(int(sys.argv[2]), int(sys.argv[3]))
"#;

#[test]
fn the_relay_survives_a_signal_flood() {
    use std::io::BufRead;
    require("python3");
    let d = Daemon::start(&["alpha"]);
    let script = d.dir.path().join("flood.py");
    std::fs::write(&script, SCRIPT).unwrap();
    let script = script.to_str().unwrap();
    let _server = d.spawn(None, "python3", &[script, "server", "7300"]);
    d.wait_listening(7300);
    let mut client = d.spawn(Some("alpha"), "python3", &[script, "client", "2", "7300"]);
    let pid = rustix::process::Pid::from_child(&client.0);
    // Flood only once the handler is installed, or the first signal kills it.
    let mut stdout = std::io::BufReader::new(client.0.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let flood = std::thread::spawn(move || {
        let mut sent = 0u64;
        while rustix::process::kill_process(pid, rustix::process::Signal::USR1).is_ok() {
            sent += 1;
            if sent % 64 == 0 {
                std::thread::yield_now();
            }
        }
        sent
    });
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let out = client.wait_output(Duration::from_secs(120));
    let sent = flood.join().unwrap();
    assert!(
        out.status.success() && rest.contains("all ok"),
        "{:?}\nstdout:\n{rest}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(sent > 1000, "only {sent} signals were sent");
    let delivered: u64 = rest
        .split_whitespace()
        .skip_while(|w| *w != "signals")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(delivered > 0, "no signal reached the program: {rest}");
}
