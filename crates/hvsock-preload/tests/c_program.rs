//! A C program of ours (`tests/c/vsock_calls.c`, compiled here with `cc`)
//! exercises every intercepted call under `hvsock run`, in both roles:
//! listen, epoll on the listener, accept4 with flags, a forked child per
//! connection echoing through dup/dup3 copies; options, ioctls, refusals,
//! the seccomp filter, blocking and non-blocking connect, peek, SIOCINQ,
//! F_DUPFD_CLOEXEC and dup2 copies, a forked writer, half-close, epoll.
//!
//! The `hvsock` binary is found next to this test's directory (cargo
//! builds it with the workspace); a daemon runs in a temporary directory.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// target/<profile>/hvsock, beside the test's deps/ directory.
fn hvsock_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = dir.join("hvsock");
    assert!(
        bin.exists() && dir.join("libhvsock_preload.so").exists(),
        "{} or the shim is missing: run `cargo build --release --workspace` (or cargo test --workspace)",
        bin.display()
    );
    bin
}

fn hvsock() -> Command {
    let mut c = Command::new(hvsock_bin());
    c.env_remove("HVSOCK_SOCKET")
        .env_remove("HVSOCK_PRELOAD")
        .env("HVSOCK_LOG", "warn");
    c
}

/// A child killed and reaped on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Compiles the C program into `dir`.
fn compile(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/vsock_calls.c");
    let out = dir.join("vsock_calls");
    let status = Command::new("cc")
        .args(["-O1", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("cc is needed (gcc)");
    assert!(status.success(), "compiling {}", src.display());
    out
}

fn vm_cid(socket: &Path) -> u32 {
    let out = hvsock()
        .args(["vm", "list", "--json", "--socket"])
        .arg(socket)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // The one VM's "cid": N.
    let at = text.find("\"cid\":").expect("vm list --json has a cid");
    text[at + 6..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn run_roles(server_vm: Option<&str>, client_vm: Option<&str>, port: u32) {
    let dir = tempfile::tempdir().unwrap();
    let program = compile(dir.path());
    let socket = dir.path().join("host.sock");
    let mut host = hvsock()
        .arg("host")
        .arg("--socket")
        .arg(&socket)
        .args(["--vm", "alpha"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut host_out = BufReader::new(host.stdout.take().unwrap());
    let _host = Guard(host);
    let mut line = String::new();
    host_out.read_line(&mut line).unwrap();
    assert!(line.starts_with("hvsock host listening on"), "{line:?}");
    let alpha = vm_cid(&socket);

    let run = |vm: Option<&str>, args: &[String]| {
        let mut c = hvsock();
        c.arg("run").arg("--socket").arg(&socket);
        if let Some(vm) = vm {
            c.args(["--vm", vm]);
        }
        c.arg("--").arg(&program).args(args);
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    };
    let mut server = run(server_vm, &["server".into(), port.to_string()])
        .spawn()
        .unwrap();
    let mut server_out = BufReader::new(server.stdout.take().unwrap());
    let _server = Guard(server);
    line.clear();
    server_out.read_line(&mut line).unwrap();
    assert_eq!(line, "listening\n", "the server did not start");

    let (peer, local, bad) = match client_vm {
        Some(_) => (2, alpha, 5),
        None => (alpha, 2, alpha + 100),
    };
    let args = ["client".to_string()]
        .into_iter()
        .chain([peer, port, local, bad].map(|n| n.to_string()))
        .collect::<Vec<_>>();
    let mut client = Guard(run(client_vm, &args).spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = client.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the C client hangs");
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    client
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    client
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        status.success() && stdout.contains("all ok"),
        "client: {status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
}

#[test]
fn c_program_guest_server_host_client() {
    run_roles(Some("alpha"), None, 7300);
}

#[test]
fn c_program_host_server_guest_client() {
    run_roles(None, Some("alpha"), 7400);
}
