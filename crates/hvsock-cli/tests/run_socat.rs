//! socat, unmodified, over hvsock through `hvsock run`: a forking
//! `VSOCK-LISTEN` in each role, `VSOCK-CONNECT` from the other, 100 MiB
//! with checksums, half-close (the listener answers only after the
//! client's end of stream), and Linux's errors for nobody listening and
//! for impossible CIDs.

mod run_support;

use std::process::Stdio;
use std::time::Duration;

use run_support::{require, sha256, write_data, Daemon};

const MIB: usize = 1024 * 1024;
const LIMIT: Duration = Duration::from_secs(120);

/// Sends `file` with `socat -t 60 - VSOCK-CONNECT:cid:port` and returns
/// what came back.
fn socat_send(
    d: &Daemon,
    vm: Option<&str>,
    cid: u32,
    port: u32,
    file: &std::path::Path,
) -> Vec<u8> {
    let target = format!("VSOCK-CONNECT:{cid}:{port}");
    let out = run_support::Guard(
        d.run(vm, "socat", &["-t", "60", "-", &target])
            .stdin(std::fs::File::open(file).unwrap())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
    .wait_output(LIMIT);
    assert!(
        out.status.success(),
        "socat client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn guest_listens_with_fork_host_connects_twice_half_close_100_mib() {
    require("socat");
    require("sha256sum");
    let d = Daemon::start(&["alpha"]);
    let data = d.dir.path().join("data");
    write_data(&data, 100 * MIB, 7);
    let expected = sha256(&data);
    // The service hashes everything it reads and answers after the end of
    // the stream: the client's half-close is what makes it answer.
    let _server = d.spawn(
        Some("alpha"),
        "socat",
        &["VSOCK-LISTEN:5000,fork", "SYSTEM:sha256sum"],
    );
    d.wait_listening(5000);
    let cid = d.cid("alpha");
    for _ in 0..2 {
        let answer = socat_send(&d, None, cid, 5000, &data);
        let answer = String::from_utf8_lossy(&answer);
        assert_eq!(
            answer.get(..64),
            Some(expected.as_str()),
            "answer {answer:?}"
        );
    }
}

#[test]
fn host_listens_with_fork_guest_echoes_100_mib() {
    require("socat");
    require("sha256sum");
    let d = Daemon::start(&["alpha"]);
    let data = d.dir.path().join("data");
    write_data(&data, 100 * MIB, 11);
    let _server = d.spawn(None, "socat", &["VSOCK-LISTEN:6000,fork", "EXEC:cat"]);
    d.wait_listening(6000);
    let echoed = socat_send(&d, Some("alpha"), 2, 6000, &data);
    let back = d.dir.path().join("back");
    std::fs::write(&back, &echoed).unwrap();
    assert_eq!(echoed.len(), 100 * MIB);
    assert_eq!(sha256(&back), sha256(&data));
}

/// Runs a socat client that must fail; returns its stderr.
fn socat_fails(d: &Daemon, vm: Option<&str>, target: &str) -> String {
    let out = d
        .run(vm, "socat", &["-", target])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "socat {target} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn errors_are_linux_errors_and_reported_at_once() {
    require("socat");
    let d = Daemon::start(&["alpha"]);
    let cid = d.cid("alpha");
    // Nobody listening: refused at once, both ways.
    let e = socat_fails(&d, Some("alpha"), "VSOCK-CONNECT:2:7000");
    assert!(e.contains("Connection refused"), "{e}");
    let e = socat_fails(&d, None, &format!("VSOCK-CONNECT:{cid}:7000"));
    assert!(e.contains("Connection refused"), "{e}");
    // A guest reaches only the host.
    let e = socat_fails(&d, Some("alpha"), "VSOCK-CONNECT:5:7000");
    assert!(e.contains("Network is unreachable"), "{e}");
    // No VM has that CID.
    let e = socat_fails(&d, None, &format!("VSOCK-CONNECT:{}:7000", cid + 100));
    assert!(e.contains("No such device"), "{e}");
    // A listening port is taken.
    let _server = d.spawn(Some("alpha"), "socat", &["VSOCK-LISTEN:7001", "EXEC:cat"]);
    d.wait_listening(7001);
    let e = socat_fails(&d, Some("alpha"), "VSOCK-LISTEN:7001");
    assert!(e.contains("Address already in use"), "{e}");
}

/// `socat -t 0 -u` exits as soon as it has written the last byte: the shim
/// must forward what is still in the socketpair (and send the FIN) before
/// the process, and its relay thread, are gone.
#[test]
fn a_writer_that_exits_at_once_loses_nothing() {
    require("socat");
    require("sha256sum");
    let d = Daemon::start(&["alpha"]);
    let data = d.dir.path().join("data");
    write_data(&data, 100 * MIB, 13);
    let out = d.dir.path().join("out");
    let create = format!("CREATE:{}", out.display());
    let server = d.spawn(
        Some("alpha"),
        "socat",
        &["-u", "VSOCK-LISTEN:9000", &create],
    );
    d.wait_listening(9000);
    let cid = d.cid("alpha");
    let target = format!("VSOCK-CONNECT:{cid}:9000");
    let client = run_support::Guard(
        d.run(None, "socat", &["-t", "0", "-u", "-", &target])
            .stdin(std::fs::File::open(&data).unwrap())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
    .wait_output(LIMIT);
    assert!(
        client.status.success(),
        "{}",
        String::from_utf8_lossy(&client.stderr)
    );
    let server = server.wait_output(LIMIT);
    assert!(
        server.status.success(),
        "{}",
        String::from_utf8_lossy(&server.stderr)
    );
    assert_eq!(sha256(&out), sha256(&data));
}
