//! `hvsock hybrid` driven as existing tools drive Firecracker's hybrid
//! vsock socket: python3's socket module and socat (`UNIX-CONNECT:`).
//! Covered: split CONNECT lines, bytes after the newline, a service GUID,
//! distinct host ports for live connections, over-long and malformed lines,
//! no listener, the 2-second line deadline, a hundred connect-and-close
//! followed by a CONNECT that still works, and a guest connecting to host
//! port P reaching the Unix socket PATH_P (present at start, created later,
//! and refused when absent).

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{hvsock, ok, run_with_input, stderr_of, Daemon, Proc, PATIENCE};

/// A host with VM alpha, an echo service on port 5000 in alpha, and the
/// hybrid front on `<dir>/alpha.vsock`.
struct Setup {
    host: Daemon,
    _echo: Proc,
    front: Proc,
    path: PathBuf,
}

impl Setup {
    /// `before`: host ports whose PATH_P socket exists before the front
    /// starts (each served by an upper-casing echo thread).
    fn start(before: &[u32]) -> Setup {
        let host = Daemon::start(&["alpha"]);
        let echo = host.listen(&["--vm", "alpha", "--max", "16", "--exec", "cat", "5000"]);
        let path = host.path("alpha.vsock");
        for &port in before {
            serve_upper(&port_path(&path, port));
        }
        let mut cmd = hvsock();
        cmd.args(["hybrid", "--vm", "alpha", "--socket"])
            .arg(&path)
            .arg("--host-socket")
            .arg(&host.socket);
        let mut front = Proc::spawn(cmd);
        front.wait_for_stderr("listening on");
        // The front binds its host ports for PATH_P on its own thread:
        // wait until the host lists them before a guest connects to one.
        for &port in before {
            wait_host_listening(&host, port);
        }
        Setup {
            host,
            _echo: echo,
            front,
            path,
        }
    }

    /// Runs a python3 client script with the front's path as argv[1];
    /// returns its stdout.
    fn python(&self, script: &str) -> String {
        let mut cmd = Command::new("python3");
        cmd.arg("-c").arg(script).arg(&self.path);
        let out = run_with_input(cmd, b"");
        String::from_utf8(ok(&out)).unwrap()
    }
}

/// Waits (at most 30 s) until the host has a listener on the service of
/// vsock port `port`.
fn wait_host_listening(host: &Daemon, port: u32) {
    let service = format!("{port:08x}-facb-11e6-bd58-64006a7986d3");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = host.cmd(&["stat", "--json"]).output().unwrap();
        if String::from_utf8_lossy(&out.stdout).contains(&service) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the front never listened on host port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn port_path(base: &Path, port: u32) -> PathBuf {
    PathBuf::from(format!("{}_{port}", base.display()))
}

/// A Unix echo server that upper-cases, on `path`.
fn serve_upper(path: &Path) {
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let mut s = s.unwrap();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                s.read_to_end(&mut got).unwrap();
                s.write_all(&got.to_ascii_uppercase()).unwrap();
            });
        }
    });
}

/// Python helpers every script starts with: `conn()` opens the front's
/// socket (a 30 s timeout guards against hangs), `drain(s)` reads to EOF.
const PRELUDE: &str = r#"
import socket, sys, time
def conn():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(sys.argv[1])
    return s
def drain(s):
    data = b""
    while True:
        d = s.recv(65536)
        if not d:
            return data
        data += d
"#;

fn script(body: &str) -> String {
    format!("{PRELUDE}\n{body}")
}

/// Splits `OK <n>\n<rest>`; checks n is a Firecracker host port (>= 2^30).
#[track_caller]
fn split_ok(text: &str) -> (u32, String) {
    let rest = text
        .strip_prefix("OK ")
        .unwrap_or_else(|| panic!("{text:?}"));
    let (n, rest) = rest.split_once('\n').unwrap();
    let n: u32 = n.parse().unwrap();
    assert!(n >= 1 << 30, "host port {n} below 2^30");
    (n, rest.to_string())
}

#[test]
fn python_split_line_bytes_after_newline_and_a_service_guid() {
    let s = Setup::start(&[]);
    let out = s.python(&script(
        r#"
s = conn()
for piece in [b"conn", b"ect ", b"50", b"00\nhello ", b"after the newline"]:
    s.sendall(piece)
    time.sleep(0.05)
s.shutdown(socket.SHUT_WR)
sys.stdout.write(drain(s).decode())
"#,
    ));
    let (_, rest) = split_ok(&out);
    assert_eq!(rest, "hello after the newline");

    let out = s.python(&script(
        r#"
s = conn()
s.sendall(b"CONNECT 00001388-facb-11e6-bd58-64006a7986d3\nguid")
s.shutdown(socket.SHUT_WR)
sys.stdout.write(drain(s).decode())
"#,
    ));
    assert_eq!(split_ok(&out).1, "guid");
}

#[test]
fn python_live_connections_get_distinct_host_ports() {
    let s = Setup::start(&[]);
    let out = s.python(&script(
        r#"
a, b = conn(), conn()
a.sendall(b"CONNECT 5000\n")
b.sendall(b"CONNECT 5000\n")
def line(s):
    data = b""
    while not data.endswith(b"\n"):
        data += s.recv(1)
    return data.decode()
sys.stdout.write(line(a) + line(b))
"#,
    ));
    let (a, rest) = split_ok(&out);
    let (b, _) = split_ok(&rest);
    assert_ne!(a, b);
}

#[test]
fn python_refusals_close_with_nothing_relayed_and_the_front_keeps_serving() {
    let s = Setup::start(&[]);
    let out = s.python(&script(
        r#"
cases = {
    "over-long": b"CONNECT " + b"1" * 60,
    "over-long with newline": b"CONNECT 5000" + b" " * 40 + b"\n",
    "malformed": b"HELLO 5000\n",
    "bad port": b"CONNECT 99999999999\n",
    "no listener": b"CONNECT 5999\nlost",
    "unfinished (the 2 s deadline)": b"CONNECT 50",
}
for name, line in cases.items():
    s = conn()
    s.sendall(line)
    print(name, repr(drain(s)))
"#,
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "{out}");
    for line in lines {
        assert!(line.ends_with(" b''"), "relayed something: {line}");
    }

    // A hundred connect-and-close (some mid-line), then a normal CONNECT.
    let out = s.python(&script(
        r#"
for i in range(100):
    s = conn()
    if i % 3 == 1:
        s.sendall(b"CONN")
    elif i % 3 == 2:
        s.sendall(b"CONNECT 5000\n")
    s.close()
s = conn()
s.sendall(b"connect 5000\nstill works")
s.shutdown(socket.SHUT_WR)
sys.stdout.write(drain(s).decode())
"#,
    ));
    assert_eq!(split_ok(&out).1, "still works");
}

#[test]
fn socat_unix_connect() {
    let s = Setup::start(&[]);
    let mut cmd = Command::new("socat");
    cmd.arg("-t")
        .arg("30")
        .arg("-")
        .arg(format!("UNIX-CONNECT:{}", s.path.display()));
    let out = run_with_input(cmd, b"CONNECT 5000\nhello from socat\n");
    let out = String::from_utf8(ok(&out)).unwrap();
    assert_eq!(split_ok(&out).1, "hello from socat\n");
}

#[test]
fn a_guest_connecting_to_host_port_p_reaches_path_p() {
    let mut s = Setup::start(&[7000]);
    let connect = |port: &str| {
        run_with_input(
            s.host.cmd(&["connect", "--vm", "alpha", port]),
            b"to the host",
        )
    };
    let out = connect("7000");
    assert_eq!(ok(&out), b"TO THE HOST");

    // No PATH_7002: refused, exit code 1.
    let out = connect("7002");
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("refused"), "{}", stderr_of(&out));

    // PATH_7001 created after the front started: found by a re-scan.
    serve_upper(&port_path(&s.path, 7001));
    let deadline = Instant::now() + PATIENCE;
    loop {
        let out = connect("7001");
        if out.status.success() {
            assert_eq!(out.stdout, b"TO THE HOST");
            break;
        }
        assert!(Instant::now() < deadline, "{}", stderr_of(&out));
        std::thread::sleep(Duration::from_millis(100));
    }

    // SIGTERM removes the front's socket.
    s.front.signal(rustix::process::Signal::TERM);
    assert!(s.front.wait().success());
    assert!(!s.path.exists());
}
