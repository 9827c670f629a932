//! `hvsock listen` and `hvsock connect` as real processes against a host
//! daemon in a temporary directory: data both ways with half-close in both
//! roles, exit codes (0 done, 1 refused or reset), `--exec`, `-k` one
//! client after another and `--max` clients at once, and `--progress`
//! staying quiet when stderr is not a terminal.

mod common;

use std::io::{Read, Write};

use common::{checksum, data, ok, read_exact_patiently, run_with_input, stderr_of, Daemon, Proc};

/// Writes `bytes` on a thread (pipes and rings are smaller than the data),
/// then closes the pipe: the end of stdin.
fn write_and_close(
    mut pipe: std::process::ChildStdin,
    bytes: &[u8],
) -> std::thread::JoinHandle<()> {
    let bytes = bytes.to_vec();
    std::thread::spawn(move || pipe.write_all(&bytes).unwrap())
}

/// The half-close exchange: the connecting side sends `first` and closes
/// its stdin (FIN); the listening side reads all of it while its own
/// direction is still open, then answers `second` and closes. Both exit 0.
fn half_close_exchange(mut listener: Proc, mut connector: Proc, first: &[u8], second: &[u8]) {
    let writer = write_and_close(connector.child.stdin.take().unwrap(), first);
    let l_out = listener.child.stdout.take().unwrap();
    let (mut l_out, got) = read_exact_patiently(l_out, first.len());
    assert_eq!(checksum(&got), checksum(first));

    // The other direction is still open after the FIN.
    writer.join().unwrap();
    let writer = write_and_close(listener.child.stdin.take().unwrap(), second);
    let c_out = connector.child.stdout.take().unwrap();
    let (mut c_out, got) = read_exact_patiently(c_out, second.len());
    assert_eq!(checksum(&got), checksum(second));
    writer.join().unwrap();

    // Each side's output ends with the peer's FIN, and nothing more came.
    let mut rest = Vec::new();
    c_out.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    l_out.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    let _ = connector.drain_stderr();
    let _ = listener.drain_stderr();
    assert!(connector.wait().success());
    assert!(listener.wait().success());
}

#[test]
fn guest_listens_host_connects_with_half_close_both_ways() {
    let host = Daemon::start(&["alpha"]);
    let listener = host.listen(&["--vm", "alpha", "5000"]);
    let connector = Proc::spawn(host.cmd(&["connect", "alpha:5000"]));
    half_close_exchange(listener, connector, &data(1, 300_000), &data(2, 200_000));
}

#[test]
fn host_listens_guest_connects_with_half_close_both_ways() {
    let host = Daemon::start(&["alpha"]);
    let listener = host.listen(&["alpha:0x1389"]);
    let connector = Proc::spawn(host.cmd(&["connect", "--vm", "alpha", "5001"]));
    half_close_exchange(listener, connector, b"to the host\n", &data(3, 100_000));
}

#[test]
fn a_host_listener_for_every_vm_takes_a_guest_of_any_vm() {
    let host = Daemon::start(&["alpha", "beta"]);
    let listener = host.listen(&["5002"]);
    let connector = Proc::spawn(host.cmd(&["connect", "--vm", "beta", "2:5002"]));
    half_close_exchange(listener, connector, b"from beta", b"hello beta");
}

#[test]
fn nobody_listening_is_refused_with_exit_code_1_in_both_roles() {
    let host = Daemon::start(&["alpha"]);
    let out = run_with_input(host.cmd(&["connect", "alpha:5999"]), b"");
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("5999"), "{}", stderr_of(&out));

    let out = run_with_input(host.cmd(&["connect", "--vm", "alpha", "5999"]), b"");
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("refused"), "{}", stderr_of(&out));
}

#[test]
fn a_peer_that_vanishes_before_its_fin_is_a_reset_with_exit_code_1() {
    let host = Daemon::start(&["alpha"]);
    let mut listener = host.listen(&["--vm", "alpha", "5003"]);
    let mut connector = Proc::spawn(host.cmd(&["connect", "alpha:5003"]));
    // Once data went through, the connection is established.
    connector
        .child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"ping")
        .unwrap();
    let l_out = listener.child.stdout.take().unwrap();
    let (_l_out, got) = read_exact_patiently(l_out, 4);
    assert_eq!(got, b"ping");
    listener.child.kill().unwrap();
    listener.wait();

    let status = connector.wait();
    let mut err = String::new();
    connector
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("reset"), "{err}");
}

#[test]
fn exec_runs_a_command_per_connection() {
    let host = Daemon::start(&["alpha"]);
    let mut listener = host.listen(&["--vm", "alpha", "--exec", "tr a-z A-Z", "5004"]);
    let out = run_with_input(host.cmd(&["connect", "alpha:5004"]), b"hello, hvsock\n");
    assert_eq!(ok(&out), b"HELLO, HVSOCK\n");
    let _ = listener.drain_stderr();
    assert!(listener.wait().success());
}

#[test]
fn keep_open_serves_clients_one_after_another() {
    let host = Daemon::start(&["alpha"]);
    let _listener = host.listen(&["--vm", "alpha", "-k", "--exec", "wc -c", "5005"]);
    for n in [0usize, 10, 100_000] {
        let out = run_with_input(host.cmd(&["connect", "alpha:5005"]), &data(n as u64, n));
        let count = String::from_utf8(ok(&out)).unwrap();
        assert_eq!(count.trim(), n.to_string());
    }

    // Without --exec: stdin is /dev/null (each client gets the FIN at once)
    // and stdout collects what every client sent.
    let mut cmd = host.cmd(&["listen", "--vm", "alpha", "-k", "5006"]);
    cmd.stdin(std::process::Stdio::null());
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut logger = Proc {
        stderr: child.stderr.take().map(std::io::BufReader::new),
        child,
    };
    logger.wait_for_stderr("listening on");
    for line in ["first\n", "second\n"] {
        let out = run_with_input(host.cmd(&["connect", "alpha:5006"]), line.as_bytes());
        assert!(ok(&out).is_empty());
    }
    let out = logger.child.stdout.take().unwrap();
    let (_, got) = read_exact_patiently(out, "first\nsecond\n".len());
    assert_eq!(got, b"first\nsecond\n");
}

#[test]
fn max_serves_clients_at_once() {
    let host = Daemon::start(&["alpha"]);
    let _listener = host.listen(&["--vm", "alpha", "--max", "4", "--exec", "cat", "5007"]);
    // Four clients connect and stay open; each gets its echo while all four
    // are still connected, which only a concurrent server can do.
    let mut clients: Vec<Proc> = (0..4)
        .map(|_| Proc::spawn(host.cmd(&["connect", "alpha:5007"])))
        .collect();
    let mut outs = Vec::new();
    for (i, client) in clients.iter_mut().enumerate() {
        let line = format!("client {i}\n");
        client
            .child
            .stdin
            .as_mut()
            .unwrap()
            .write_all(line.as_bytes())
            .unwrap();
        let out = client.child.stdout.take().unwrap();
        let (out, got) = read_exact_patiently(out, line.len());
        assert_eq!(got, line.as_bytes());
        outs.push(out);
    }
    for client in &mut clients {
        drop(client.child.stdin.take());
        let _ = client.drain_stderr();
        assert!(client.wait().success());
    }
}

#[test]
fn progress_is_quiet_when_stderr_is_not_a_terminal() {
    let host = Daemon::start(&["alpha"]);
    let _listener = host.listen(&["--vm", "alpha", "--exec", "cat", "5008"]);
    let input = data(8, 50_000);
    let out = run_with_input(
        host.cmd(&["connect", "--progress", "--size", "100K", "alpha:5008"]),
        &input,
    );
    assert_eq!(checksum(&ok(&out)), checksum(&input));
    assert!(out.stderr.is_empty(), "{}", stderr_of(&out));
}
