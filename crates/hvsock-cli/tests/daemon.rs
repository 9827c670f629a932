//! `hvsock host`, `hvsock vm` and `hvsock stat` run as real processes in a
//! temporary directory: VMs come and go with their sockets, JSON output
//! parses, SIGTERM removes the sockets, a second host is refused while the
//! first runs, garbage from a raw client drops only that client, and a
//! host killed with SIGKILL leaves a stale socket the next one replaces.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rustix::net::{self, AddressFamily, SocketAddrUnix, SocketType};
use rustix::process::{kill_process, Pid, Signal};

fn hvsock() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hvsock"));
    // Never pick up a socket from the environment by accident.
    c.env_remove("HVSOCK_SOCKET").env("HVSOCK_LOG", "warn");
    c
}

/// A running `hvsock host`, killed and reaped on drop.
struct Host {
    child: Child,
    /// Kept open: the host writes to it.
    _stdout: BufReader<std::process::ChildStdout>,
}

impl Host {
    fn start(socket: &Path, vms: &[&str]) -> Host {
        let mut cmd = hvsock();
        cmd.arg("host").arg("--socket").arg(socket);
        for vm in vms {
            cmd.arg("--vm").arg(vm);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start hvsock host");
        // The first line says where it listens, once the sockets exist.
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert!(
            line.starts_with("hvsock host listening on"),
            "unexpected first line {line:?}"
        );
        assert!(socket.exists());
        Host {
            child,
            _stdout: stdout,
        }
    }

    fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(self.child.id() as i32).unwrap();
        kill_process(pid, signal).unwrap();
    }

    /// Waits for the process to exit; `None` if it did not within 10 s.
    fn wait(&mut self) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(args: &[&str], socket: &Path) -> Output {
    hvsock()
        .args(args)
        .arg("--socket")
        .arg(socket)
        .output()
        .expect("run hvsock")
}

#[track_caller]
fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn list(socket: &Path) -> Vec<serde_json::Value> {
    let out = run(&["vm", "list", "--json"], socket);
    serde_json::from_str::<Vec<serde_json::Value>>(&ok(&out)).unwrap()
}

#[test]
fn vms_come_and_go_with_their_sockets_and_sigterm_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hv").join("host.sock");
    let mut host = Host::start(&socket, &["alpha"]);
    let alpha_sock = dir.path().join("hv").join("vm-alpha.sock");
    assert!(alpha_sock.exists());

    let vms = list(&socket);
    assert_eq!(vms.len(), 1);
    assert_eq!(vms[0]["name"], "alpha");
    assert_eq!(vms[0]["cid"], 3);
    assert_eq!(vms[0]["socket"], alpha_sock.display().to_string());

    let out = ok(&run(&["vm", "add", "beta"], &socket));
    assert!(out.contains("added VM beta"), "{out}");
    let beta_sock = dir.path().join("hv").join("vm-beta.sock");
    assert!(beta_sock.exists());
    let cids: Vec<_> = list(&socket).iter().map(|v| v["cid"].clone()).collect();
    assert_eq!(cids, [3, 4]);

    // The same through $HVSOCK_SOCKET, and a table.
    let out = hvsock()
        .args(["vm", "list"])
        .env("HVSOCK_SOCKET", &socket)
        .output()
        .unwrap();
    let table = ok(&out);
    assert!(table.contains("alpha") && table.contains("beta"), "{table}");

    let out = run(&["vm", "add", "beta"], &socket);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));

    ok(&run(&["vm", "rm", "beta"], &socket));
    assert!(!beta_sock.exists());
    let out = run(&["vm", "rm", "beta"], &socket);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no VM named beta"),
        "{out:?}"
    );

    let stat: serde_json::Value =
        serde_json::from_str(&ok(&run(&["stat", "--json"], &socket))).unwrap();
    assert_eq!(stat["vms"][0]["name"], "alpha");
    assert!(stat["channels"].as_array().unwrap().is_empty());
    assert_eq!(
        stat["processes"].as_array().unwrap().len(),
        1,
        "the stat client itself"
    );
    let text = ok(&run(&["stat"], &socket));
    assert!(
        text.contains("VMs (1)") && text.contains("Channels (0)"),
        "{text}"
    );

    host.signal(Signal::TERM);
    let status = host.wait().expect("hvsock host exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(!socket.exists());
    assert!(!alpha_sock.exists());

    let out = run(&["vm", "list"], &socket);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no hvsock host is running at") && err.contains("hvsock host"),
        "{err}"
    );
}

#[test]
fn a_second_host_on_the_same_path_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("host.sock");
    let mut first = Host::start(&socket, &[]);
    let out = hvsock()
        .arg("host")
        .arg("--socket")
        .arg(&socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "a host is already running at {}",
            socket.display()
        )),
        "{err}"
    );
    // The first is unharmed.
    assert!(list(&socket).is_empty());
    first.signal(Signal::INT);
    assert!(first.wait().expect("exits on SIGINT").success());
    assert!(!socket.exists());
}

#[test]
fn garbage_from_a_raw_client_drops_only_that_client() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("host.sock");
    let _host = Host::start(&socket, &["alpha"]);
    let raw = net::socket(AddressFamily::UNIX, SocketType::SEQPACKET, None).unwrap();
    net::connect(&raw, &SocketAddrUnix::new(&socket).unwrap()).unwrap();
    net::sockopt::set_socket_timeout(
        &raw,
        net::sockopt::Timeout::Recv,
        Some(Duration::from_secs(5)),
    )
    .unwrap();
    // A second raw client that stays well-behaved.
    let other = net::socket(AddressFamily::UNIX, SocketType::SEQPACKET, None).unwrap();
    net::connect(&other, &SocketAddrUnix::new(&socket).unwrap()).unwrap();

    net::send(&raw, b"\xde\xad\xbe\xef garbage", net::SendFlags::empty()).unwrap();
    let mut buf = [0u8; 64];
    // End of file, or a reset if the host closed with our data unread.
    match net::recv(&raw, &mut buf, net::RecvFlags::empty()) {
        Ok((0, _)) | Err(rustix::io::Errno::CONNRESET) => {}
        other => panic!("expected the host to close the socket, got {other:?}"),
    }

    // The other raw client and the CLI keep working.
    let request = vmbus::ext::encode_ext(&vmbus::ext::ExtRequest::VmList);
    net::send(&other, &request, net::SendFlags::empty()).unwrap();
    let mut answer = vec![0u8; 4096];
    let (n, _) = net::recv(&other, &mut answer, net::RecvFlags::empty()).unwrap();
    assert!(n > 8);
    let text = String::from_utf8_lossy(&answer[8..n]);
    assert!(text.contains("\"alpha\""), "{text}");
    assert_eq!(list(&socket).len(), 1);
}

#[test]
fn a_killed_host_leaves_a_stale_socket_that_the_next_replaces() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("host.sock");
    let mut first = Host::start(&socket, &["alpha"]);
    first.signal(Signal::KILL);
    assert!(first.wait().is_some());
    assert!(socket.exists(), "SIGKILL leaves the socket behind");
    let out = run(&["vm", "list"], &socket);
    assert!(!out.status.success(), "nobody answers on a stale socket");

    let _second = Host::start(&socket, &["alpha"]);
    let vms = list(&socket);
    assert_eq!(vms.len(), 1);
    assert_eq!(vms[0]["name"], "alpha");
}
