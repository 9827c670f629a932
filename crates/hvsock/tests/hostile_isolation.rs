//! Isolation: a process of VM A cannot see, reach or open anything of VM B;
//! a process on a VM socket cannot act as the root partition; a process of
//! another uid cannot use the daemon's sockets.

mod common;

use std::io::ErrorKind;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use hvsock::{Guest, Host, HvAddr, HvStream, VsockAddr, VsockListener};
use hvsock_shm::{SharedMemory, PAGE_SIZE};
use rustix::net::sockopt::{set_socket_timeout, Timeout};
use vmbus::daemon::control;
use vmbus::ext::{Datagram, ExtEvent, ExtRequest};
use vmbus::{Gpadl, Guid, Message};

/// Whatever comes next within `within`: a datagram, `Closed`, or `Quiet`.
#[derive(Debug)]
enum Next {
    Got(Datagram<ExtEvent>),
    Closed,
    Quiet,
}

fn next_within(fd: &std::os::fd::OwnedFd, within: Duration) -> Next {
    set_socket_timeout(fd, Timeout::Recv, Some(within)).unwrap();
    let mut buf = vec![0u8; vmbus::ext::MAX_DATAGRAM];
    let next = match hvsock_shm::recv_with_fds(fd, &mut buf, 3) {
        Ok((0, _)) => Next::Closed,
        Ok((n, _)) => Next::Got(Datagram::decode(&buf[..n]).unwrap()),
        Err(_) => Next::Quiet,
    };
    set_socket_timeout(fd, Timeout::Recv, Some(HANG)).unwrap();
    next
}

#[test]
fn a_vm_cannot_see_reach_or_use_another_vm() {
    let d = TestDaemon::start(&["alpha", "beta"]);
    let alpha = vmbus::server::derived_vm_id("alpha");
    let beta = vmbus::server::derived_vm_id("beta");
    let root = Host::connect_daemon_at(&d.socket).unwrap();

    // B listens on 5000, with a real guest endpoint; so does a raw guest of
    // B (to see any offer that reaches B).
    let guest_b = Guest::connect_daemon_at(&d.socket, "beta").unwrap();
    let listener_b = VsockListener::bind(&guest_b, VsockAddr::new(u32::MAX, 5000)).unwrap();
    let mut raw_b = RawGuest::contact(&d.vm_socket("beta"));
    send_ext(&raw_b.sock, &ExtRequest::GuestListen { port: 5001 });
    let (event, _) = recv_event(&raw_b.sock);
    assert!(
        matches!(event, ExtEvent::GuestListenResult { error: None, .. }),
        "{event:?}"
    );

    // A process of A reaches none of B's listeners: its connect to port
    // 5000 goes to the host, where no one listens.
    let raw_a = RawGuest::contact(&d.vm_socket("alpha"));
    send_vmbus(
        &raw_a.sock,
        &Message::TlConnectRequest(vmbus::TlConnectRequest {
            guest_endpoint_id: Guid::from_vsock_port(0x4444),
            host_service_id: Guid::from_vsock_port(5000),
            silo_id: None,
        }),
        &[],
    );
    assert!(
        matches!(recv_vmbus(&raw_a.sock), Message::TlConnectResult(r) if r.status != 0),
        "A's connect must be refused"
    );
    let guest_a = Guest::connect_daemon_at(&d.socket, "alpha").unwrap();
    let e = hvsock::VsockStream::connect(&guest_a, VsockAddr::new(2, 5000)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");

    // A's offers never reach B: the host connects to A's 5001, which only
    // B listens on, and to A's 5000: refused; B hears nothing.
    for port in [5000, 5001] {
        let e = HvStream::connect(&root, HvAddr::from_vsock_port(alpha, port)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    }
    assert!(
        matches!(
            next_within(&raw_b.sock, Duration::from_millis(300)),
            Next::Quiet
        ),
        "B must hear nothing of connections to A"
    );

    // VmList from A shows A only (or is refused); never B.
    send_ext(&raw_a.sock, &ExtRequest::VmList);
    match recv_event(&raw_a.sock).0 {
        ExtEvent::VmList { vms } => {
            assert!(vms.iter().all(|vm| vm.name == "alpha"), "{vms:?}");
        }
        ExtEvent::Refused { .. } => {}
        other => panic!("{other:?}"),
    }

    // B opens a channel (the host connects to B's 5001, the raw guest
    // opens it); A then tries every message that names a relid on it.
    let connecting = std::thread::spawn({
        let root = root.clone();
        move || HvStream::connect(&root, HvAddr::from_vsock_port(beta, 5001))
    });
    let relid_b = match raw_b.next_vmbus() {
        Message::OfferChannel(offer) => offer.child_relid,
        other => panic!("{other:?}"),
    };
    let rings_b = raw_b.open(relid_b, 12);
    let mut from_host = connecting.join().unwrap().expect("the host reaches B");
    let memory = SharedMemory::create("a", 12 * PAGE_SIZE).unwrap();
    let attempts: Vec<(Message, bool)> = vec![
        (
            Message::CloseChannel {
                child_relid: relid_b,
            },
            false,
        ),
        (
            Message::GpadlTeardown {
                child_relid: relid_b,
                gpadl: 0x100,
            },
            false,
        ),
        (
            Gpadl::ring(relid_b, 0x999, (0..12).collect())
                .to_messages()
                .unwrap()[0]
                .clone(),
            true,
        ),
        (open_channel(relid_b, 0x100, 6), false),
        (
            Message::RelidReleased {
                child_relid: relid_b,
            },
            false,
        ),
    ];
    for (message, with_memfd) in attempts {
        let mut a = RawGuest::contact(&d.vm_socket("alpha"));
        if with_memfd {
            send_vmbus(&a.sock, &message, &[&memory]);
        } else {
            send_vmbus(&a.sock, &message, &[]);
        }
        match next_within(&a.sock, Duration::from_millis(300)) {
            Next::Closed | Next::Quiet => {}
            Next::Got(Datagram::Vmbus(Message::GpadlCreated {
                creation_status, ..
            })) => assert_ne!(creation_status, 0),
            Next::Got(Datagram::Vmbus(Message::OpenChannelResult { status, .. })) => {
                assert_ne!(status, 0)
            }
            Next::Got(other) => panic!("A's {message:?} on B's relid got {other:?}"),
        }
        a.sock = raw_client(&d.vm_socket("alpha"));
    }
    // B's channel is untouched: data still flows, B was told nothing.
    from_host.set_read_timeout(Some(HANG)).unwrap();
    std::io::Write::write_all(&mut from_host, b"to B").unwrap();
    rings_b.append_data(b"from B");
    rings_b.signal();
    let mut buf = [0u8; 6];
    std::io::Read::read_exact(&mut from_host, &mut buf).unwrap();
    assert_eq!(&buf, b"from B");
    assert!(
        matches!(
            next_within(&raw_b.sock, Duration::from_millis(200)),
            Next::Quiet
        ),
        "B's channel must not be closed or rescinded"
    );
    drop(listener_b);
}

#[test]
fn a_vm_socket_cannot_act_as_the_root_partition() {
    let d = TestDaemon::start(&["alpha"]);
    let admin = raw_client(&d.socket);
    let requests = [
        ExtRequest::HostListen {
            service_id: Guid::from_vsock_port(80),
            vm_id: Guid::ZERO,
        },
        ExtRequest::HostConnect {
            request: 1,
            vm_id: Guid::ZERO,
            vm_name: Some("alpha".into()),
            service_id: Guid::from_vsock_port(80),
        },
        ExtRequest::HostCancel { request: 1 },
        ExtRequest::HostClose { conn: 1 },
        ExtRequest::VmAdd {
            name: "evil".into(),
            id: None,
        },
        ExtRequest::VmRemove {
            name: "alpha".into(),
        },
        ExtRequest::Stat,
    ];
    for request in requests {
        let g = RawGuest::contact(&d.vm_socket("alpha"));
        send_ext(&g.sock, &request);
        match next_within(&g.sock, Duration::from_millis(500)) {
            Next::Closed | Next::Quiet => {}
            Next::Got(Datagram::Ext(ExtEvent::Refused { .. })) => {}
            Next::Got(Datagram::Ext(ExtEvent::HostListenResult { error: Some(_), .. }))
            | Next::Got(Datagram::Ext(ExtEvent::HostConnectFailed { .. }))
            | Next::Got(Datagram::Ext(ExtEvent::VmResult { vm: None, .. })) => {}
            Next::Got(other) => panic!("a guest's {request:?} was answered with {other:?}"),
        }
    }
    // Nothing happened: the VMs are as they were, no one listens on 80.
    let ExtEvent::VmList { vms } = control::request(&admin, &ExtRequest::VmList).unwrap() else {
        panic!()
    };
    assert_eq!(
        vms.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
        ["alpha"]
    );
    let guest = Guest::connect_daemon_at(&d.socket, "alpha").unwrap();
    let e = hvsock::VsockStream::connect(&guest, VsockAddr::new(2, 80)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
}

#[test]
fn another_uid_cannot_use_the_daemon_sockets() {
    // The knob: a daemon that accepts only some other uid refuses us.
    let me = rustix::process::getuid().as_raw();
    let other = if me == 4242 { 4243 } else { 4242 };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hv").join("host.sock");
    let d = TestDaemon::start_at(dir, socket, &["alpha"], Some(vec![other]));
    // Both kinds of endpoint hear the refusal at once, and say why.
    for error in [
        Host::connect_daemon_at(&d.socket).map(|_| ()).unwrap_err(),
        Guest::connect_daemon_at(&d.socket, "alpha")
            .map(|_| ())
            .unwrap_err(),
    ] {
        assert_eq!(error.kind(), std::io::ErrorKind::NotConnected, "{error}");
        assert!(
            error.to_string().contains("users it was started for"),
            "{error}"
        );
    }
    drop(d);

    // A real process of another uid, when we can make one (root + setpriv).
    if !rustix::process::getuid().is_root()
        || Command::new("setpriv").arg("--version").output().is_err()
    {
        eprintln!("skipping the setpriv part: not root or no setpriv");
        return;
    }
    let d = TestDaemon::start(&["alpha"]);
    let probe = |path: &std::path::Path| -> String {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", "uid_probe", "--nocapture", "--test-threads=1"])
            .env("HVSOCK_UID_PROBE", path)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .expect("run setpriv");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find_map(|l| l.find("PROBE ").map(|at| l[at + 6..].to_owned()))
            .unwrap_or_else(|| format!("no answer: {text}"))
    };
    // The directory (0700) keeps it out.
    let answer = probe(&d.socket);
    assert!(answer.starts_with("connect failed"), "{answer}");
    // Even with the directory and socket opened up, SO_PEERCRED does.
    use std::os::unix::fs::PermissionsExt;
    let open = std::fs::Permissions::from_mode(0o777);
    std::fs::set_permissions(d.socket.parent().unwrap(), open.clone()).unwrap();
    std::fs::set_permissions(&d.socket, open.clone()).unwrap();
    std::fs::set_permissions(d.vm_socket("alpha"), open).unwrap();
    for path in [d.socket.clone(), d.vm_socket("alpha")] {
        let answer = probe(&path);
        assert!(
            answer == "closed"
                || answer.starts_with("connect failed")
                || answer.starts_with("error"),
            "uid 65534 on {}: {answer}",
            path.display()
        );
    }
}

/// Run as uid 65534 by the test above: tries the socket, prints `PROBE`
/// and what happened.
#[test]
fn uid_probe() {
    let Ok(path) = std::env::var("HVSOCK_UID_PROBE") else {
        return;
    };
    let answer = match control::connect(std::path::Path::new(&path)) {
        Err(e) => format!("connect failed: {e}"),
        Ok(fd) => {
            set_socket_timeout(&fd, Timeout::Recv, Some(HANG)).unwrap();
            let _ =
                hvsock_shm::send_with_fds(&fd, &vmbus::ext::encode_ext(&ExtRequest::VmList), &[]);
            let mut buf = vec![0u8; vmbus::ext::MAX_DATAGRAM];
            match hvsock_shm::recv_with_fds(&fd, &mut buf, 3) {
                Ok((0, _)) => "closed".to_string(),
                Ok((n, _)) => format!("answered {:?}", String::from_utf8_lossy(&buf[..n])),
                Err(e) => format!("error {e}"),
            }
        }
    };
    println!("PROBE {answer}");
    std::process::exit(0);
}
