//! The errors a new user meets first, from the real binary: no host
//! running (and how to start one), the host socket not ours (permission
//! denied), an unknown VM, an address in the wrong form (exit code 2 with
//! the accepted forms), a port already in use; plus `--help` examples and
//! shell completions for the relay commands.

mod common;

use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::process::Output;

use common::{hvsock, run_with_input, stderr_of, Daemon};

#[track_caller]
fn fails(out: &Output, code: i32, wanted: &[&str]) {
    let err = stderr_of(out);
    assert_eq!(out.status.code(), Some(code), "{err}");
    for want in wanted {
        assert!(err.contains(want), "{want:?} not in: {err}");
    }
}

#[test]
fn no_host_running_says_how_to_start_one() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nothing-here").join("host.sock");
    let socket = socket.to_str().unwrap();
    let start = format!("hvsock host --socket {socket}");
    for args in [
        &["connect", "alpha:5000"][..],
        &["connect", "--vm", "alpha", "5000"],
        &["listen", "--vm", "alpha", "5000"],
        &["listen", "5000"],
        &["bridge", "tcp-listen:0", "hv:alpha:5000"],
    ] {
        let out = run_with_input(
            hvsock().args(args).args(["--socket", socket]).clone_cmd(),
            b"",
        );
        fails(&out, 1, &["no hvsock host is running", &start]);
    }
    let vsock = dir.path().join("alpha.vsock");
    let out = run_with_input(
        hvsock()
            .args(["hybrid", "--vm", "alpha", "--socket"])
            .arg(&vsock)
            .args(["--host-socket", socket])
            .clone_cmd(),
        b"",
    );
    fails(&out, 1, &["no hvsock host is running", &start]);
}

/// `Command` builders return `&mut Command`; this takes ownership back.
trait CloneCmd {
    fn clone_cmd(&mut self) -> std::process::Command;
}

impl CloneCmd for std::process::Command {
    fn clone_cmd(&mut self) -> std::process::Command {
        let mut c = std::process::Command::new(self.get_program());
        c.args(self.get_args());
        for (k, v) in self.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c
    }
}

#[test]
fn a_host_socket_of_another_user_is_permission_denied() {
    let host = Daemon::start(&["alpha"]);
    let mut cmd = host.cmd(&["connect", "alpha:5000"]);
    let hv_dir = host.socket.parent().unwrap().to_owned();
    let root = rustix::process::geteuid().is_root();
    if root {
        // The daemon's directory is 0700: another user cannot reach it.
        cmd.uid(65534).gid(65534);
    } else {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hv_dir, std::fs::Permissions::from_mode(0o000)).unwrap();
    }
    let out = run_with_input(cmd, b"");
    if !root {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hv_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    fails(&out, 1, &["permission denied", "another user"]);
}

#[test]
fn an_unknown_vm_is_named_with_what_to_do() {
    let host = Daemon::start(&["alpha"]);
    let out = run_with_input(host.cmd(&["connect", "--vm", "nosuch", "5000"]), b"");
    fails(&out, 1, &["no VM named \"nosuch\"", "hvsock vm add nosuch"]);
    let out = run_with_input(host.cmd(&["listen", "--vm", "nosuch", "5000"]), b"");
    fails(&out, 1, &["no VM named \"nosuch\""]);
    let out = run_with_input(host.cmd(&["connect", "nosuch:5000"]), b"");
    fails(&out, 1, &["nosuch", "hvsock vm list"]);
    let out = run_with_input(host.cmd(&["listen", "nosuch:5000"]), b"");
    fails(&out, 1, &["no VM named \"nosuch\"", "its VMs: alpha"]);
    let out = run_with_input(host.cmd(&["bridge", "tcp-listen:0", "hv:nosuch:5000"]), b"");
    fails(&out, 1, &["no VM named \"nosuch\""]);
}

#[test]
fn a_bad_address_is_a_usage_error_that_shows_the_accepted_forms() {
    let host = Daemon::start(&["alpha"]);
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["connect", "5000"],
            &["VM:SERVICE", "alpha:5000", "--vm NAME"],
        ),
        (
            &["connect", "alpha:port"],
            &["invalid SERVICE", "5000", "0x1388"],
        ),
        (&["connect", "--vm", "alpha", "x:y"], &["PORT or CID:PORT"]),
        (
            &["listen", "--vm", "alpha", "alpha:5000"],
            &["vsock port", "5000"],
        ),
        (&["listen", "bad vm:5000"], &["invalid VM", "alpha"]),
        (
            &["bridge", "foo:1", "hv:alpha:1"],
            &["tcp-listen:", "hv:[VM:]SERVICE"],
        ),
        (&["bridge", "tcp-listen:0", "tcp-listen:1"], &["TO must be"]),
        (&["bridge", "tcp-listen:0", "hv:5000"], &["VM:SERVICE"]),
        (&["connect", "--timeout", "0", "alpha:5000"], &["--timeout"]),
    ];
    for (args, wanted) in cases {
        let out = run_with_input(host.cmd(args), b"");
        fails(&out, 2, wanted);
    }
}

#[test]
fn a_port_in_use_says_so() {
    let host = Daemon::start(&["alpha"]);
    let _first = host.listen(&["--vm", "alpha", "5000"]);
    let out = run_with_input(host.cmd(&["listen", "--vm", "alpha", "5000"]), b"");
    fails(&out, 1, &["in use", "choose another port"]);
    let _first = host.listen(&["alpha:5001"]);
    let out = run_with_input(host.cmd(&["listen", "alpha:5001"]), b"");
    fails(&out, 1, &["cannot listen", "choose another port"]);

    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("tcp-listen:{}", taken.local_addr().unwrap());
    let out = run_with_input(host.cmd(&["bridge", &addr, "hv:alpha:5000"]), b"");
    fails(&out, 1, &["in use", "choose another port"]);

    let path = host.path("taken.sock");
    let _taken = UnixListener::bind(&path).unwrap();
    let addr = format!("unix-listen:{}", path.display());
    let out = run_with_input(host.cmd(&["bridge", &addr, "hv:alpha:5000"]), b"");
    fails(&out, 1, &["another program is listening"]);
}

#[test]
fn every_relay_command_has_examples_and_completions_know_them() {
    for command in ["listen", "connect", "bridge", "hybrid", "completions"] {
        let out = run_with_input(hvsock().args([command, "--help"]).clone_cmd(), b"");
        let help = String::from_utf8(out.stdout).unwrap();
        assert!(out.status.success());
        assert!(help.contains("Examples:"), "{command}: {help}");
        assert!(
            help.contains(&format!("hvsock {command}")),
            "{command}: {help}"
        );
    }
    let out = run_with_input(hvsock().args(["completions", "bash"]).clone_cmd(), b"");
    let script = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    for word in [
        "listen",
        "connect",
        "bridge",
        "hybrid",
        "--keep-open",
        "--host-socket",
    ] {
        assert!(script.contains(word), "{word} not completed");
    }
    let out = run_with_input(hvsock().args(["completions", "tcsh"]).clone_cmd(), b"");
    assert_eq!(out.status.code(), Some(2));
}
