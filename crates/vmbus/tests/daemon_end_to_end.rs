//! The daemon over real sockets in a temporary directory: raw guest and
//! host clients speaking VMBus and the extension protocol by hand, shared
//! memory seen from both sides, the signal link of a pair of processes (its
//! flags memfd shared, its signal sockets crossed), revocation and link closing
//! when a guest's socket closes, 1,000 channels at once, SO_PEERCRED
//! refusal, stale and live sockets, and the embedded host.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hvsock_shm::{
    recv_with_fds, send_with_fds, EventFd, Mapping, SharedMemory, SignalReceiver, SignalSender,
    PAGE_SIZE,
};
use rustix::net::sockopt::{set_socket_timeout, Timeout};
use vmbus::daemon::{
    control, vm_socket_path, Daemon, DaemonConfig, DaemonError, EmbeddedHost, ShutdownHandle,
};
use vmbus::ext::{
    encode_ext, ConnectFailure, Datagram, ExtEvent, ExtRequest, Partition, BYTES_WRITTEN_OFFSET,
    GUEST_TO_HOST_FLAGS, HOST_TO_GUEST_FLAGS, LINK_FLAGS_BYTES,
};
use vmbus::messages::{InitiateContact, OpenChannel, VERSION_WIN10_V5};
use vmbus::{Gpadl, Guid, Message};

const PORT: u32 = 5000;

/// A daemon on a background thread; shut down and joined on drop.
struct Running {
    dir: tempfile::TempDir,
    socket: PathBuf,
    handle: ShutdownHandle,
    thread: Option<JoinHandle<Result<(), DaemonError>>>,
}

impl Running {
    fn start(vms: &[&str]) -> Running {
        Self::start_with(vms, None)
    }

    fn start_with(vms: &[&str], allowed_uids: Option<Vec<u32>>) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("run").join("host.sock");
        let mut config = DaemonConfig::new(&socket);
        config.vms = vms.iter().map(|n| (n.to_string(), None)).collect();
        config.allowed_uids = allowed_uids;
        let daemon = Daemon::bind(config).unwrap();
        let handle = daemon.shutdown_handle();
        let thread = std::thread::spawn(move || daemon.run());
        Running {
            dir,
            socket,
            handle,
            thread: Some(thread),
        }
    }

    fn stop(&mut self) {
        self.handle.shutdown();
        if let Some(t) = self.thread.take() {
            t.join().unwrap().unwrap();
        }
    }

    fn vm_socket(&self, name: &str) -> PathBuf {
        vm_socket_path(&self.socket, name)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.handle.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn client(path: &Path) -> OwnedFd {
    let fd = control::connect(path).unwrap();
    set_socket_timeout(&fd, Timeout::Recv, Some(Duration::from_secs(10))).unwrap();
    fd
}

fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, limit);
}

fn send_vmbus(fd: &OwnedFd, message: Message, fds: &[&dyn AsFd]) {
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    send_with_fds(fd, &message.encode(), &borrowed).unwrap();
}

fn send_ext(fd: &OwnedFd, request: &ExtRequest) {
    send_with_fds(fd, &encode_ext(request), &[]).unwrap();
}

#[track_caller]
fn recv(fd: &OwnedFd) -> (Datagram<ExtEvent>, Vec<OwnedFd>) {
    let mut buf = vec![0u8; vmbus::ext::MAX_DATAGRAM];
    let (n, fds) = recv_with_fds(fd, &mut buf, 3).expect("a datagram");
    assert!(n > 0, "the daemon closed the connection");
    (Datagram::decode(&buf[..n]).unwrap(), fds)
}

#[track_caller]
fn recv_vmbus(fd: &OwnedFd) -> Message {
    match recv(fd) {
        (Datagram::Vmbus(m), fds) if fds.is_empty() => m,
        other => panic!("expected a VMBus message, got {other:?}"),
    }
}

#[track_caller]
fn recv_event(fd: &OwnedFd) -> (ExtEvent, Vec<OwnedFd>) {
    match recv(fd) {
        (Datagram::Ext(e), fds) => (e, fds),
        other => panic!("expected an event, got {other:?}"),
    }
}

/// Whether the peer closed `fd` within `within`.
fn closed_within(fd: &OwnedFd, within: Duration) -> bool {
    set_socket_timeout(fd, Timeout::Recv, Some(within)).unwrap();
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        match recv_with_fds(fd, &mut buf, 3) {
            Ok((0, _)) => return true,
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
    false
}

/// A guest process of a VM: VMBus agreed, listening on [`PORT`].
fn guest(path: &Path) -> OwnedFd {
    let g = client(path);
    send_vmbus(
        &g,
        Message::InitiateContact(InitiateContact {
            vmbus_version_requested: VERSION_WIN10_V5,
            target_vcpu: 0,
            interrupt_page_or_target_info: InitiateContact::target_info(2, 0, 0),
            parent_to_child_monitor_page_gpa: 0,
            child_to_parent_monitor_page_gpa: 0,
            client_id: None,
        }),
        &[],
    );
    let Message::VersionResponse(r) = recv_vmbus(&g) else {
        panic!("expected VERSION_RESPONSE")
    };
    assert!(r.version_supported);
    send_ext(&g, &ExtRequest::GuestListen { port: PORT });
    assert!(matches!(
        recv_event(&g).0,
        ExtEvent::GuestListenResult { error: None, .. }
    ));
    g
}

fn host_connect(host: &OwnedFd, request: u64) {
    send_ext(
        host,
        &ExtRequest::HostConnect {
            request,
            vm_id: Guid::ZERO,
            vm_name: Some("alpha".into()),
            service_id: Guid::from_vsock_port(PORT),
        },
    );
}

/// A link as one of its two processes received it.
struct Link {
    id: u64,
    flags: Mapping,
    /// The socket end this process waits on.
    wait: SignalReceiver,
    /// The socket end this process signals on.
    signal: SignalSender,
}

/// Checks an [`ExtEvent::Link`] and its three descriptors.
#[track_caller]
fn link_from(event: ExtEvent, mut fds: Vec<OwnedFd>) -> Link {
    let ExtEvent::Link { link } = event else {
        panic!("expected a Link, got {event:?}")
    };
    assert_eq!(fds.len(), 3, "Link carries [flags, wait, signal]");
    let signal = SignalSender::from_fd(fds.pop().unwrap()).unwrap();
    let wait = SignalReceiver::from_fd(fds.pop().unwrap()).unwrap();
    // from_fd checks the seals; the bitmaps start clear.
    let flags = SharedMemory::from_fd(fds.pop().unwrap(), LINK_FLAGS_BYTES).unwrap();
    let flags = Mapping::new(&flags).unwrap();
    let mut bytes = vec![1u8; LINK_FLAGS_BYTES];
    flags.read(0, &mut bytes).unwrap();
    assert!(bytes.iter().all(|b| *b == 0));
    Link {
        id: link,
        flags,
        wait,
        signal,
    }
}

/// The two ends of one link, seen by the guest and by the host process,
/// share the flags and have their signal sockets crossed.
fn check_link_between(guest: &Link, host: &Link) {
    assert_eq!(guest.id, host.id);
    guest
        .flags
        .write(GUEST_TO_HOST_FLAGS, &1u32.to_le_bytes())
        .unwrap();
    let mut word = [0u8; 4];
    host.flags.read(GUEST_TO_HOST_FLAGS, &mut word).unwrap();
    assert_eq!(u32::from_le_bytes(word), 1);
    host.flags
        .write(HOST_TO_GUEST_FLAGS + 4, &2u32.to_le_bytes())
        .unwrap();
    guest
        .flags
        .read(HOST_TO_GUEST_FLAGS + 4, &mut word)
        .unwrap();
    assert_eq!(u32::from_le_bytes(word), 2);
    // What the guest signals, the host waits on, and not the guest itself.
    guest.signal.signal().unwrap();
    assert!(host.wait.wait_timeout(Duration::from_secs(1)).unwrap());
    assert!(!guest.wait.drain().unwrap());
    host.signal.signal().unwrap();
    assert!(guest.wait.wait_timeout(Duration::from_secs(1)).unwrap());
    assert!(!host.wait.drain().unwrap());
}

/// What the guest got from opening a channel.
struct Accepted {
    relid: u32,
    mem: SharedMemory,
    /// The link named by ChannelLink.
    link: u64,
    /// The link itself, when this was the first channel of the pair.
    new_link: Option<Link>,
}

/// The guest's side of an open after OPENCHANNEL: a Link if the pair is
/// new, ChannelLink, then the successful OPENCHANNEL_RESULT.
#[track_caller]
fn recv_open_result(g: &OwnedFd, relid: u32) -> (u64, Option<Link>) {
    let (mut event, mut fds) = recv_event(g);
    let mut new_link = None;
    if matches!(event, ExtEvent::Link { .. }) {
        new_link = Some(link_from(event, fds));
        (event, fds) = recv_event(g);
    }
    assert!(fds.is_empty());
    let ExtEvent::ChannelLink { relid: r, link } = event else {
        panic!("expected ChannelLink, got {event:?}")
    };
    assert_eq!(r, relid);
    if let Some(l) = &new_link {
        assert_eq!(l.id, link);
    }
    assert_eq!(
        recv_vmbus(g),
        Message::OpenChannelResult {
            child_relid: relid,
            openid: relid,
            status: 0
        }
    );
    (link, new_link)
}

/// The guest accepts an offer: rings of `pages` pages split in half.
fn accept_offer(g: &OwnedFd, pages: u32, handle: u32) -> Accepted {
    let Message::OfferChannel(offer) = recv_vmbus(g) else {
        panic!("expected an offer")
    };
    assert!(offer.hvsock_params().unwrap().is_for_guest_accept);
    assert_eq!(offer.if_type, Guid::from_vsock_port(PORT));
    let relid = offer.child_relid;
    let mem = SharedMemory::create("guest-rings", pages as usize * PAGE_SIZE).unwrap();
    let gpadl = Gpadl::ring(relid, handle, (0..u64::from(pages)).collect());
    let (header, bodies) = gpadl.split().unwrap();
    send_vmbus(g, Message::GpadlHeader(header), &[&mem]);
    for body in bodies {
        send_vmbus(g, Message::GpadlBody(body), &[]);
    }
    assert_eq!(
        recv_vmbus(g),
        Message::GpadlCreated {
            child_relid: relid,
            gpadl: handle,
            creation_status: 0
        }
    );
    send_vmbus(
        g,
        Message::OpenChannel(OpenChannel {
            child_relid: relid,
            openid: relid,
            ringbuffer_gpadlhandle: handle,
            target_vp: 0,
            downstream_ringbuffer_pageoffset: pages / 2,
            userdata: [0; 120],
            guest_signal: None,
        }),
        &[],
    );
    let (link, new_link) = recv_open_result(g, relid);
    Accepted {
        relid,
        mem,
        link,
        new_link,
    }
}

#[test]
fn host_connects_to_a_guest_and_both_share_the_rings() {
    let mut d = Running::start(&["alpha"]);
    assert!(d.socket.exists() && d.vm_socket("alpha").exists());
    let g = guest(&d.vm_socket("alpha"));
    let host = client(&d.socket);
    host_connect(&host, 1);
    let Accepted {
        relid,
        mem: guest_mem,
        link,
        new_link,
    } = accept_offer(&g, 12, 0xE1E10);
    let guest_link = new_link.expect("the pair's first channel brings a Link");
    // The host process hears of the link before the channel that names it.
    let (event, fds) = recv_event(&host);
    let host_link = link_from(event, fds);
    let (event, mut fds) = recv_event(&host);
    let ExtEvent::HostConnected {
        request,
        conn,
        relid: host_relid,
        link: host_link_id,
        layout,
        ..
    } = event
    else {
        panic!("{event:?}")
    };
    assert_eq!(request, 1);
    assert_eq!((host_relid, host_link_id), (relid, link));
    assert_eq!((layout.total_pages, layout.guest_to_host_pages), (12, 6));
    assert_eq!(fds.len(), 1, "only the rings' memfd");
    let host_mem = SharedMemory::from_fd(fds.pop().unwrap(), 12 * PAGE_SIZE).unwrap();

    // Bytes written on one side are read on the other, both ways.
    let (gm, hm) = (
        Mapping::new(&guest_mem).unwrap(),
        Mapping::new(&host_mem).unwrap(),
    );
    gm.write(PAGE_SIZE, b"guest to host").unwrap();
    let mut buf = [0u8; 13];
    hm.read(PAGE_SIZE, &mut buf).unwrap();
    assert_eq!(&buf, b"guest to host");
    hm.write(7 * PAGE_SIZE, b"host to guest").unwrap();
    gm.read(7 * PAGE_SIZE, &mut buf).unwrap();
    assert_eq!(&buf, b"host to guest");
    // Signals travel over the link: shared flags, crossed signal sockets.
    check_link_between(&guest_link, &host_link);
    // A second channel of the pair reuses the link: no new Link.
    host_connect(&host, 2);
    let second = accept_offer(&g, 4, 0xE1E11);
    assert!(second.new_link.is_none());
    assert_eq!(second.link, link);
    let (event, fds) = recv_event(&host);
    assert!(
        matches!(event, ExtEvent::HostConnected { request: 2, link: l, .. } if l == link),
        "{event:?}"
    );
    assert_eq!(fds.len(), 1);

    // Stat sees the channel, its fill levels and counters.
    gm.write(0, &48u32.to_le_bytes()).unwrap();
    gm.write(BYTES_WRITTEN_OFFSET, &40u64.to_le_bytes())
        .unwrap();
    let ExtEvent::Stat { report } = control::request(&host, &ExtRequest::Stat).unwrap() else {
        panic!()
    };
    let ch = report.channels.iter().find(|c| c.relid == relid).unwrap();
    assert_eq!(ch.state, "open");
    assert_eq!(ch.guest_to_host_fill, Some((48, 5 * PAGE_SIZE as u32)));
    assert_eq!(ch.guest_bytes, Some(40));
    assert_eq!(ch.host_to_guest_fill, Some((0, 5 * PAGE_SIZE as u32)));
    assert_eq!(report.vms[0].name, "alpha");
    assert_eq!(report.processes.len(), 2);

    // The guest process dies (its socket closes): the host hears at once,
    // channels first, then the link.
    let started = Instant::now();
    drop(g);
    let (event, _) = recv_event(&host);
    assert!(
        matches!(event, ExtEvent::HostRevoked { conn: c, .. } if c == conn),
        "{event:?}"
    );
    assert!(matches!(recv_event(&host).0, ExtEvent::HostRevoked { .. }));
    assert_eq!(recv_event(&host).0, ExtEvent::LinkClosed { link });
    assert!(started.elapsed() < Duration::from_secs(1));

    d.stop();
    assert!(!d.socket.exists(), "shutdown removes the host socket");
    assert!(!d.vm_socket("alpha").exists());
    assert!(
        !d.socket.parent().unwrap().exists(),
        "and the directory it created"
    );
}

#[test]
fn guest_connects_to_a_host_listener() {
    let d = Running::start(&["alpha"]);
    let host = client(&d.socket);
    send_ext(
        &host,
        &ExtRequest::HostListen {
            service_id: Guid::from_vsock_port(80),
            vm_id: Guid::ZERO,
        },
    );
    assert!(matches!(
        recv_event(&host).0,
        ExtEvent::HostListenResult { error: None, .. }
    ));
    let g = guest(&d.vm_socket("alpha"));
    // A refused connect first (nobody on port 81).
    send_vmbus(
        &g,
        Message::TlConnectRequest(vmbus::TlConnectRequest {
            guest_endpoint_id: Guid::from_vsock_port(1025),
            host_service_id: Guid::from_vsock_port(81),
            silo_id: None,
        }),
        &[],
    );
    assert!(matches!(recv_vmbus(&g), Message::TlConnectResult(r) if r.status == 0xC000_0236));
    send_vmbus(
        &g,
        Message::TlConnectRequest(vmbus::TlConnectRequest {
            guest_endpoint_id: Guid::from_vsock_port(1025),
            host_service_id: Guid::from_vsock_port(80),
            silo_id: None,
        }),
        &[],
    );
    let Message::OfferChannel(offer) = recv_vmbus(&g) else {
        panic!()
    };
    assert!(!offer.hvsock_params().unwrap().is_for_guest_accept);
    let relid = offer.child_relid;
    let mem = SharedMemory::create("g", 8 * PAGE_SIZE).unwrap();
    send_vmbus(
        &g,
        Gpadl::ring(relid, 7, (0..8).collect())
            .to_messages()
            .unwrap()[0]
            .clone(),
        &[&mem],
    );
    assert!(matches!(
        recv_vmbus(&g),
        Message::GpadlCreated {
            creation_status: 0,
            ..
        }
    ));
    send_vmbus(
        &g,
        Message::OpenChannel(OpenChannel {
            child_relid: relid,
            openid: relid,
            ringbuffer_gpadlhandle: 7,
            target_vp: 0,
            downstream_ringbuffer_pageoffset: 4,
            userdata: [0; 120],
            guest_signal: None,
        }),
        &[],
    );
    let (link, guest_link) = recv_open_result(&g, relid);
    let guest_link = guest_link.expect("the pair's first channel brings a Link");
    let (event, fds) = recv_event(&host);
    let host_link = link_from(event, fds);
    check_link_between(&guest_link, &host_link);
    let (event, fds) = recv_event(&host);
    let ExtEvent::HostIncoming {
        conn,
        endpoint_id,
        relid: host_relid,
        link: host_link_id,
        ..
    } = event
    else {
        panic!("{event:?}")
    };
    assert_eq!(endpoint_id, Guid::from_vsock_port(1025));
    assert_eq!((host_relid, host_link_id), (relid, link));
    assert_eq!(fds.len(), 1);
    // The host closes: the guest gets the rescind, tears down, releases.
    send_ext(&host, &ExtRequest::HostClose { conn });
    assert_eq!(
        recv_vmbus(&g),
        Message::RescindChannelOffer { child_relid: relid }
    );
    send_vmbus(&g, Message::CloseChannel { child_relid: relid }, &[]);
    send_vmbus(
        &g,
        Message::GpadlTeardown {
            child_relid: relid,
            gpadl: 7,
        },
        &[],
    );
    assert_eq!(recv_vmbus(&g), Message::GpadlTorndown { gpadl: 7 });
    send_vmbus(&g, Message::RelidReleased { child_relid: relid }, &[]);
    let ExtEvent::Stat { report } = control::request(&host, &ExtRequest::Stat).unwrap() else {
        panic!()
    };
    assert!(report.channels.is_empty());
    // The host process leaves: the guest hears its link is closed.
    drop(host);
    assert_eq!(recv_event(&g).0, ExtEvent::LinkClosed { link });
}

#[test]
fn an_openchannel_with_eventfds_is_refused_with_a_reason() {
    let d = Running::start(&["alpha"]);
    let g = guest(&d.vm_socket("alpha"));
    let host = client(&d.socket);
    host_connect(&host, 1);
    let Message::OfferChannel(offer) = recv_vmbus(&g) else {
        panic!()
    };
    let (a, b) = (EventFd::new().unwrap(), EventFd::new().unwrap());
    // The older protocol's OPENCHANNEL: it gets to the server (which says
    // why in the daemon's log) and the guest is dropped.
    send_vmbus(
        &g,
        Message::OpenChannel(OpenChannel {
            child_relid: offer.child_relid,
            openid: offer.child_relid,
            ringbuffer_gpadlhandle: 7,
            target_vp: 0,
            downstream_ringbuffer_pageoffset: 4,
            userdata: [0; 120],
            guest_signal: None,
        }),
        &[&a, &b],
    );
    assert!(closed_within(&g, Duration::from_secs(5)));
    assert!(matches!(
        recv_event(&host).0,
        ExtEvent::HostConnectFailed {
            request: 1,
            failure: ConnectFailure::Refused,
            ..
        }
    ));
}

#[test]
fn a_thousand_channels_through_the_daemon() {
    raise_fd_limit();
    let d = Running::start(&["alpha"]);
    let g = guest(&d.vm_socket("alpha"));
    let host = client(&d.socket);
    let mut conns = std::collections::HashSet::new();
    for i in 0..1000u32 {
        host_connect(&host, u64::from(i));
        // The guest keeps nothing: the daemon and the host hold the rings.
        let accepted = accept_offer(&g, 4, 0x1000 + i);
        // One link for the pair, whatever the number of channels.
        assert_eq!(accepted.new_link.is_some(), i == 0, "channel {i}");
        if i == 0 {
            let (event, fds) = recv_event(&host);
            link_from(event, fds);
        }
        let (event, fds) = recv_event(&host);
        let ExtEvent::HostConnected { conn, link, .. } = event else {
            panic!("channel {i}: {event:?}")
        };
        assert_eq!(link, accepted.link);
        assert_eq!(fds.len(), 1);
        assert!(conns.insert(conn));
    }
    let ExtEvent::Stat { report } = control::request(&host, &ExtRequest::Stat).unwrap() else {
        panic!()
    };
    assert_eq!(
        report.channels.iter().filter(|c| c.state == "open").count(),
        1000
    );
    drop(g);
    for _ in 0..1000 {
        assert!(matches!(recv_event(&host).0, ExtEvent::HostRevoked { .. }));
    }
    assert!(matches!(recv_event(&host).0, ExtEvent::LinkClosed { .. }));
}

#[test]
fn garbage_disconnects_only_its_sender() {
    let d = Running::start(&["alpha"]);
    let good = client(&d.socket);
    let bad = client(&d.socket);
    send_with_fds(&bad, b"\x01\x02\x03 not a message", &[]).unwrap();
    assert!(closed_within(&bad, Duration::from_secs(5)));
    let bad_guest = client(&d.vm_socket("alpha"));
    send_vmbus(&bad_guest, Message::RequestOffers, &[]);
    assert!(closed_within(&bad_guest, Duration::from_secs(5)));
    let ExtEvent::VmList { vms } = control::request(&good, &ExtRequest::VmList).unwrap() else {
        panic!()
    };
    assert_eq!(vms.len(), 1);
    assert_eq!(vms[0].cid, 3);
}

#[test]
fn peers_of_another_uid_are_refused() {
    // The daemon may accept only a uid that is not ours (root included).
    let me = rustix::process::getuid().as_raw();
    let other = if me == 4242 { 4243 } else { 4242 };
    let d = Running::start_with(&["alpha"], Some(vec![other]));
    let fd = client(&d.socket);
    assert!(
        closed_within(&fd, Duration::from_secs(5)),
        "the daemon must close the connection"
    );
    let fd = client(&d.socket);
    assert!(control::request(&fd, &ExtRequest::VmList).is_err());
}

#[test]
fn a_live_daemon_blocks_a_second_one_and_a_stale_socket_is_replaced() {
    let mut d = Running::start(&[]);
    let second = Daemon::bind(DaemonConfig::new(&d.socket));
    let err = second.unwrap_err();
    assert!(matches!(err, DaemonError::AlreadyRunning { .. }), "{err}");
    assert!(err.to_string().contains("a host is already running at"));
    d.stop();

    // A socket file nobody listens on, as a killed daemon leaves it.
    let stale = d.dir.path().join("stale.sock");
    {
        let fd = rustix::net::socket(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::SEQPACKET,
            None,
        )
        .unwrap();
        rustix::net::bind(&fd, &rustix::net::SocketAddrUnix::new(&stale).unwrap()).unwrap();
    }
    assert!(stale.exists());
    let daemon = Daemon::bind(DaemonConfig::new(&stale)).unwrap();
    drop(daemon);
    assert!(
        !stale.exists(),
        "dropping an unrun daemon removes its socket"
    );
    // Not a socket: refused.
    let file = d.dir.path().join("file.sock");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(
        Daemon::bind(DaemonConfig::new(&file)),
        Err(DaemonError::NotASocket { .. })
    ));
    // And a client with no daemon gets the friendly error.
    let err = control::connect(&d.socket).unwrap_err();
    assert!(
        err.to_string().contains("start one with `hvsock host`"),
        "{err}"
    );
}

#[test]
fn socket_permissions_and_vm_sockets_follow_the_vms() {
    use std::os::unix::fs::PermissionsExt;
    let d = Running::start(&["alpha"]);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(d.socket.parent().unwrap()), 0o700);
    assert_eq!(mode(&d.socket), 0o600);
    assert_eq!(mode(&d.vm_socket("alpha")), 0o600);
    let admin = client(&d.socket);
    let event = control::request(
        &admin,
        &ExtRequest::VmAdd {
            name: "beta".into(),
            id: None,
        },
    )
    .unwrap();
    assert!(
        matches!(event, ExtEvent::VmResult { vm: Some(ref vm), .. } if vm.cid == 4),
        "{event:?}"
    );
    assert!(d.vm_socket("beta").exists());
    let beta_guest = client(&d.vm_socket("beta"));
    // A guest may not administer.
    assert!(matches!(
        control::request(
            &beta_guest,
            &ExtRequest::VmRemove {
                name: "alpha".into()
            }
        )
        .unwrap(),
        ExtEvent::Refused { .. }
    ));
    let event = control::request(
        &admin,
        &ExtRequest::VmRemove {
            name: "beta".into(),
        },
    )
    .unwrap();
    assert!(matches!(event, ExtEvent::VmResult { vm: Some(_), .. }));
    assert!(!d.vm_socket("beta").exists());
    assert!(closed_within(&beta_guest, Duration::from_secs(5)));
}

#[test]
fn the_embedded_host_runs_the_same_loop() {
    let host = EmbeddedHost::start(&[("alpha", None)]).unwrap();
    let alpha = vmbus::server::derived_vm_id("alpha");
    assert!(matches!(
        host.connect(Partition::Vm(Guid::from_vsock_port(1))),
        Err(DaemonError::NoSuchVm(_))
    ));
    let g = host.connect(Partition::Vm(alpha)).unwrap();
    set_socket_timeout(&g, Timeout::Recv, Some(Duration::from_secs(10))).unwrap();
    let h = host.connect(Partition::Root).unwrap();
    set_socket_timeout(&h, Timeout::Recv, Some(Duration::from_secs(10))).unwrap();
    // Reuse the raw guest: handshake and listen by hand.
    send_vmbus(
        &g,
        Message::InitiateContact(InitiateContact {
            vmbus_version_requested: VERSION_WIN10_V5,
            target_vcpu: 0,
            interrupt_page_or_target_info: 0,
            parent_to_child_monitor_page_gpa: 0,
            child_to_parent_monitor_page_gpa: 0,
            client_id: None,
        }),
        &[],
    );
    assert!(matches!(recv_vmbus(&g), Message::VersionResponse(_)));
    send_ext(&g, &ExtRequest::GuestListen { port: PORT });
    assert!(matches!(
        recv_event(&g).0,
        ExtEvent::GuestListenResult { error: None, .. }
    ));
    host_connect(&h, 9);
    let accepted = accept_offer(&g, 6, 1);
    let (event, fds) = recv_event(&h);
    check_link_between(&accepted.new_link.unwrap(), &link_from(event, fds));
    assert!(matches!(
        recv_event(&h).0,
        ExtEvent::HostConnected { request: 9, .. }
    ));
    // Unknown VM by name.
    send_ext(
        &h,
        &ExtRequest::HostConnect {
            request: 10,
            vm_id: Guid::ZERO,
            vm_name: Some("nope".into()),
            service_id: Guid::from_vsock_port(PORT),
        },
    );
    assert!(matches!(
        recv_event(&h).0,
        ExtEvent::HostConnectFailed {
            failure: ConnectFailure::NoSuchVm,
            ..
        }
    ));
    let beta = host.add_vm("beta", None).unwrap();
    assert_eq!(beta.cid, 4);
    assert!(host.add_vm("beta", None).is_err());
    host.remove_vm("beta").unwrap();
    drop(host);
    assert!(
        closed_within(&h, Duration::from_secs(5)),
        "dropping the host closes its clients"
    );
}

/// The module docs of the event loop: no descriptor a client chose is
/// closed for the last time on the loop's thread. A GPADL_HEADER that needs
/// bodies used to park its descriptor in the server until the last body
/// (and check it was a memfd only then); the loop's copy went to the closer
/// at once, so the server's later drop (here when the guest goes) was the
/// last close, on the loop, for as long as a lingering socket takes.
#[test]
fn a_parked_gpadl_descriptor_is_not_closed_last_on_the_loop() {
    let d = Running::start(&["alpha"]);
    let control_client = client(&d.socket);
    let g = guest(&d.vm_socket("alpha"));
    let (tcp, _peer) = lingering_tcp_socket();

    // A header that needs bodies (relid 1, handle 9), carrying the TCP
    // socket.
    let gpadl = Gpadl::ring(1, 9, (0..64u64).collect());
    let (header, bodies) = gpadl.split().unwrap();
    assert!(!bodies.is_empty());
    send_vmbus(&g, Message::GpadlHeader(header), &[&tcp]);
    // Processed once the daemon answered what came next.
    send_vmbus(&g, Message::RequestOffers, &[]);
    // Refused at once, before its bodies: the descriptor is not a memfd.
    let mut refused = false;
    loop {
        match recv_vmbus(&g) {
            Message::AllOffersDelivered => break,
            Message::GpadlCreated {
                gpadl: 9,
                creation_status,
                ..
            } => refused = creation_status != 0,
            _ => {}
        }
    }
    assert!(
        refused,
        "a GPADL header with a socket was parked, not refused"
    );
    drop(tcp);

    // The guest goes; the server drops its session (and, before the fix,
    // the parked socket, for the last time, on the loop's thread).
    drop(g);
    std::thread::sleep(Duration::from_millis(100));
    assert_loop_answers_at_once(&control_client);
}

/// A TCP socket whose last close lingers (3 s): unsent data behind a full
/// window. Returns it and its peer, which must be kept open.
fn lingering_tcp_socket() -> (std::net::TcpStream, std::net::TcpStream) {
    use rustix::net::sockopt;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    sockopt::set_socket_recv_buffer_size(&listener, 4096).unwrap();
    let tcp = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (peer, _) = listener.accept().unwrap();
    sockopt::set_socket_send_buffer_size(&tcp, 4096).unwrap();
    tcp.set_nonblocking(true).unwrap();
    let chunk = [0u8; 4096];
    let mut tries = 5;
    loop {
        match (&tcp).write(&chunk) {
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && tries > 0 => {
                tries -= 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    sockopt::set_socket_linger(&tcp, Some(Duration::from_secs(3))).unwrap();
    (tcp, peer)
}

/// The loop answers a request at once: it is not stuck in a client's
/// close (which lingers 3 s in these tests).
fn assert_loop_answers_at_once(control_client: &OwnedFd) {
    let start = Instant::now();
    let ExtEvent::VmList { .. } = control::request(control_client, &ExtRequest::VmList).unwrap()
    else {
        panic!("expected the VM list")
    };
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "the loop was stuck {took:?} in a client's close"
    );
}

/// Another route to the same: a datagram longer than the loop's receive
/// buffer (64 KiB) is cut by the kernel, with its descriptors delivered.
/// They used to be dropped right there, on the loop, before any copy was
/// made; now they go to the closer with the client.
#[test]
fn an_oversized_datagrams_descriptor_is_not_closed_last_on_the_loop() {
    let d = Running::start(&["alpha"]);
    let control_client = client(&d.socket);
    let g = client(&d.vm_socket("alpha"));
    let (tcp, _peer) = lingering_tcp_socket();
    // 100 KiB: more than the loop's buffer, less than this send buffer.
    rustix::net::sockopt::set_socket_send_buffer_size(&g, 1 << 20).unwrap();
    send_with_fds(&g, &vec![0u8; 100 * 1024], &[tcp.as_fd()]).unwrap();
    drop(tcp);
    // Received (and refused) within this pause; the request after it would
    // wait out the linger if the loop had closed the socket itself.
    std::thread::sleep(Duration::from_millis(100));
    assert_loop_answers_at_once(&control_client);
    assert!(
        closed_within(&g, Duration::from_secs(5)),
        "the client that sent it is dropped"
    );
}

/// The bodies of a header refused at once (its descriptor is not a memfd)
/// are ignored, and the guest stays connected: one failed GPADL_CREATED.
#[test]
fn bodies_of_a_refused_gpadl_header_are_ignored() {
    let d = Running::start(&["alpha"]);
    let g = guest(&d.vm_socket("alpha"));
    let not_memfd = EventFd::new().unwrap();
    let gpadl = Gpadl::ring(1, 9, (0..64u64).collect());
    let (header, bodies) = gpadl.split().unwrap();
    assert!(!bodies.is_empty());
    send_vmbus(&g, Message::GpadlHeader(header), &[&not_memfd]);
    for b in bodies {
        send_vmbus(&g, Message::GpadlBody(b), &[]);
    }
    send_vmbus(&g, Message::RequestOffers, &[]);
    let mut created = Vec::new();
    loop {
        match recv_vmbus(&g) {
            Message::AllOffersDelivered => break,
            Message::GpadlCreated {
                child_relid,
                gpadl,
                creation_status,
            } => created.push((child_relid, gpadl, creation_status)),
            _ => {}
        }
    }
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!((created[0].0, created[0].1), (1, 9));
    assert_ne!(created[0].2, 0, "the header must be refused");
}
