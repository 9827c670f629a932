//! Hostile control messages and hostile descriptors.
//!
//! - Messages of every VMBus type (and the extension type, and types that do
//!   not exist) at every length from 0 to 256 bytes, sent to the daemon on a
//!   VM socket (before and after contact) and on the host socket: the daemon
//!   answers or drops that client, never anything else; an established
//!   connection keeps moving data and new ones are made.
//! - The same flood sent to a guest endpoint (an `hvsock::Guest`) by a fake
//!   host, plus an offer for a relid in use: the endpoint ignores what
//!   breaks the protocol, keeps its channel and still answers a proper offer.
//! - A GPADL whose memfd is smaller than claimed, or not sealed against
//!   shrinking, is refused; a memfd we made cannot be truncated, so nothing
//!   mapped can SIGBUS; descriptors that are not eventfds in OPENCHANNEL fail
//!   that connection only.

mod common;

use std::io::ErrorKind;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use common::*;
use hvsock::{Guest, Guid, Host, HvAddr, HvListener, VsockAddr, VsockListener, VsockStream};
use hvsock_shm::{recv_with_fds, send_with_fds, EventFd, Mapping, SharedMemory, PAGE_SIZE};
use rustix::net::sockopt::{set_socket_timeout, Timeout};
use vmbus::ext::{encode_ext, Datagram, ExtEvent, ExtRequest, EXT_MESSAGE_TYPE};
use vmbus::messages::{HvsockParams, HVSOCK_PARAMS_VERSION_RS5, PIPE_MODE_BYTE};
use vmbus::{Gpadl, Message, OfferChannel, OpenChannel, VersionResponse};

/// Message types to try: every VMBus type and a few beyond.
fn types() -> Vec<u32> {
    let mut t: Vec<u32> = (0..=26).collect();
    t.extend([EXT_MESSAGE_TYPE, 0xFFFF_FFFF, 0x8000_0000]);
    t
}

/// A datagram of type `ty` and length `len`, the rest pseudo-random.
fn garbage(rng: &mut Rng, ty: u32, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rng.fill(&mut bytes);
    let head = ty.to_le_bytes();
    let n = len.min(4);
    bytes[..n].copy_from_slice(&head[..n]);
    bytes
}

/// Sends `bytes`; a refused send means the daemon already dropped us.
fn send_raw(fd: &OwnedFd, bytes: &[u8]) -> bool {
    if bytes.is_empty() {
        // A zero-length datagram reads as end-of-stream to the receiver.
        return rustix::net::send(fd, bytes, rustix::net::SendFlags::NOSIGNAL).is_ok();
    }
    send_with_fds(fd, bytes, &[]).is_ok()
}

/// Drains what the daemon sent; `false` if it closed the connection.
fn still_open(fd: &OwnedFd) -> bool {
    set_socket_timeout(fd, Timeout::Recv, Some(Duration::from_millis(1))).unwrap();
    let mut buf = vec![0u8; vmbus::ext::MAX_DATAGRAM];
    loop {
        match recv_with_fds(fd, &mut buf, 3) {
            Ok((0, _)) => return false,
            Ok(_) => continue,
            Err(_) => return true,
        }
    }
}

#[test]
fn every_type_at_every_length_to_the_daemon() {
    let d = TestDaemon::start(&["alpha"]);
    let root = Host::connect_daemon_at(&d.socket).unwrap();
    let guest = Guest::connect_daemon_at(&d.socket, "alpha").unwrap();
    let listener = HvListener::bind(&root, HvAddr::from_vsock_port(Guid::ZERO, 7000)).unwrap();
    let mut by_guest = VsockStream::connect(&guest, VsockAddr::new(2, 7000)).unwrap();
    let (mut by_host, _) = listener.accept().unwrap();
    let mut rng = Rng::from_env("every_type_at_every_length_to_the_daemon");
    let started = Instant::now();
    let (mut sent, mut dropped) = (0usize, 0usize);
    for ty in types() {
        // Three kinds of sender: a fresh guest, a guest after contact, a
        // host process. Each keeps its connection while the daemon does.
        let mut fresh = raw_client(&d.vm_socket("alpha"));
        let mut contacted = RawGuest::contact(&d.vm_socket("alpha")).sock;
        let mut host = raw_client(&d.socket);
        for len in 0..=256usize {
            for (which, fd) in [&mut fresh, &mut contacted, &mut host]
                .into_iter()
                .enumerate()
            {
                let bytes = garbage(&mut rng, ty, len);
                sent += 1;
                if !send_raw(fd, &bytes) || !still_open(fd) {
                    dropped += 1;
                    *fd = match which {
                        0 => raw_client(&d.vm_socket("alpha")),
                        1 => RawGuest::contact(&d.vm_socket("alpha")).sock,
                        _ => raw_client(&d.socket),
                    };
                }
            }
        }
        assert_moves_data(&mut by_guest, &mut by_host, &format!("after type {ty:#x}"));
    }
    eprintln!(
        "{sent} datagrams, {dropped} senders dropped, in {:?}",
        started.elapsed()
    );
    assert!(dropped > 0, "the daemon must drop senders of garbage");
    // New connections still work, both ways.
    let mut g = VsockStream::connect(&guest, VsockAddr::new(2, 7000)).unwrap();
    let (mut h, _) = listener.accept().unwrap();
    assert_moves_data(&mut g, &mut h, "a new connection");
}

// ---- a fake host against a guest endpoint -------------------------------

/// A listening socket standing in for a VM's socket: the guest endpoint
/// connects to it and we play the host.
struct FakeHost {
    _dir: tempfile::TempDir,
    host_socket: std::path::PathBuf,
    listener: OwnedFd,
}

impl FakeHost {
    fn new() -> FakeHost {
        use rustix::net::{bind, listen, socket, AddressFamily, SocketAddrUnix, SocketType};
        let dir = tempfile::tempdir().unwrap();
        let host_socket = dir.path().join("host.sock");
        // Guest::connect_daemon_at refuses a missing VM only if the host
        // socket exists; create neither, just the VM socket.
        let vm = vmbus::daemon::vm_socket_path(&host_socket, "alpha");
        let listener = socket(AddressFamily::UNIX, SocketType::SEQPACKET, None).unwrap();
        bind(&listener, &SocketAddrUnix::new(&vm).unwrap()).unwrap();
        listen(&listener, 8).unwrap();
        FakeHost {
            _dir: dir,
            host_socket,
            listener,
        }
    }

    /// Starts a guest endpoint (on a thread, since it waits for our
    /// answers) and plays the host's side of contact.
    fn guest(&self) -> (Guest, OwnedFd) {
        let path = self.host_socket.clone();
        let joining = std::thread::spawn(move || Guest::connect_daemon_at(&path, "alpha"));
        let conn = rustix::net::accept(&self.listener).unwrap();
        set_socket_timeout(&conn, Timeout::Recv, Some(HANG)).unwrap();
        loop {
            match recv_request(&conn).expect("the guest hung up") {
                (Datagram::Vmbus(Message::InitiateContact(_)), _) => {
                    send_vmbus(
                        &conn,
                        &Message::VersionResponse(VersionResponse {
                            version_supported: true,
                            connection_state: 0,
                            msg_conn_id: 4,
                            ext: vmbus::VersionResponseExt::None,
                        }),
                        &[],
                    );
                }
                (Datagram::Vmbus(Message::RequestOffers), _) => {
                    send_vmbus(&conn, &Message::AllOffersDelivered, &[]);
                    break;
                }
                other => panic!("unexpected during contact: {other:?}"),
            }
        }
        (joining.join().unwrap().expect("the guest joins"), conn)
    }
}

fn offer(relid: u32, port: u32, host_endpoint: u32) -> Message {
    Message::OfferChannel(OfferChannel::hvsock(
        relid,
        Guid::from_vsock_port(port),
        Guid::from_vsock_port(host_endpoint),
        &HvsockParams {
            pipe_mode: PIPE_MODE_BYTE,
            is_for_guest_accept: true,
            is_for_guest_container: false,
            version: HVSOCK_PARAMS_VERSION_RS5,
            silo_id: Guid::ZERO,
        },
    ))
}

/// The next datagram from the guest endpoint, or `None` if it hung up.
#[track_caller]
fn recv_request(conn: &OwnedFd) -> Option<(Datagram<ExtRequest>, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; vmbus::ext::MAX_DATAGRAM];
    let (n, fds) = recv_with_fds(conn, &mut buf, 3).expect("a datagram within the timeout");
    if n == 0 {
        return None;
    }
    Some((
        Datagram::decode(&buf[..n]).expect("a decodable request"),
        fds,
    ))
}

/// The next VMBus message from the guest, skipping extension requests.
#[track_caller]
fn next_vmbus(conn: &OwnedFd) -> (Message, Vec<OwnedFd>) {
    loop {
        match recv_request(conn).expect("the guest hung up") {
            (Datagram::Vmbus(m), fds) => return (m, fds),
            (Datagram::Ext(_), _) => continue,
        }
    }
}

#[test]
fn a_fake_host_cannot_break_a_guest_endpoint() {
    let fake = FakeHost::new();
    let (guest, conn) = fake.guest();
    // The guest listens on 5000 (answer its request).
    let g = guest.clone();
    let listening =
        std::thread::spawn(move || VsockListener::bind(&g, VsockAddr::new(u32::MAX, 5000)));
    match recv_request(&conn).unwrap() {
        (Datagram::Ext(ExtRequest::GuestListen { port: 5000 }), _) => {}
        other => panic!("expected GuestListen, got {other:?}"),
    }
    send_with_fds(
        &conn,
        &encode_ext(&ExtEvent::GuestListenResult {
            port: 5000,
            error: None,
        }),
        &[],
    )
    .unwrap();
    let _listener = listening.join().unwrap().expect("the guest listens");

    // An offer, and the same relid offered again while in use.
    send_vmbus(&conn, &offer(7, 5000, 0x9000), &[]);
    let (first, fds) = next_vmbus(&conn);
    assert!(
        matches!(first, Message::GpadlHeader(ref h) if h.child_relid() == 7),
        "{first:?}"
    );
    assert_eq!(fds.len(), 1, "the GPADL header carries the memfd");
    // Drain the rest of that GPADL (bodies, if any).
    send_vmbus(&conn, &offer(7, 5000, 0x9001), &[]);

    // Every type at every length.
    let mut rng = Rng::from_env("a_fake_host_cannot_break_a_guest_endpoint");
    for ty in types() {
        for len in 1..=256usize {
            let bytes = garbage(&mut rng, ty, len);
            // Offers would be answered; keep them out of the flood (the
            // relid-in-use case above covers offers).
            if ty == 1 {
                continue;
            }
            send_with_fds(&conn, &bytes, &[]).expect("the guest endpoint is still there");
        }
    }
    // The endpoint still answers a proper offer for a new relid.
    send_vmbus(&conn, &offer(8, 5000, 0x9002), &[]);
    let deadline = Instant::now() + HANG;
    loop {
        assert!(Instant::now() < deadline, "no GPADL for relid 8");
        let (m, _) = next_vmbus(&conn);
        if let Message::GpadlHeader(h) = &m {
            if h.child_relid() == 8 {
                break;
            }
        }
    }
    drop(guest);
}

// ---- memfds and eventfds ------------------------------------------------

/// Offers a channel to a raw guest (through the host listener on 7100)
/// and returns the relid.
fn offered(guest: &mut RawGuest, local: u32) -> u32 {
    guest.tl_connect(local, 7100)
}

/// Sends a GPADL of `pages` pages with `memfd`; returns the answer, or
/// `None` if the daemon dropped the guest.
fn gpadl_with(guest: &RawGuest, relid: u32, pages: u32, memfd: &OwnedFd) -> Option<Message> {
    for (i, m) in Gpadl::ring(relid, 0x77, (0..u64::from(pages)).collect())
        .to_messages()
        .unwrap()
        .iter()
        .enumerate()
    {
        let fds: Vec<&dyn std::os::fd::AsFd> = if i == 0 { vec![memfd] } else { vec![] };
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        if send_with_fds(&guest.sock, &m.encode(), &borrowed).is_err() {
            return None;
        }
    }
    match recv(&guest.sock) {
        Some((Datagram::Vmbus(m), _)) => Some(m),
        None => None,
        other => panic!("{other:?}"),
    }
}

fn assert_refused(answer: Option<Message>, what: &str) {
    match answer {
        None => {}
        Some(Message::GpadlCreated {
            creation_status, ..
        }) => assert_ne!(creation_status, 0, "{what} was accepted"),
        Some(other) => panic!("{what}: unexpected {other:?}"),
    }
}

#[test]
fn bad_memfds_are_refused_and_ours_cannot_shrink() {
    let d = TestDaemon::start(&["alpha"]);
    let root = Host::connect_daemon_at(&d.socket).unwrap();
    let _listener = HvListener::bind(&root, HvAddr::from_vsock_port(Guid::ZERO, 7100)).unwrap();

    // Smaller than the GPADL claims.
    let mut g = RawGuest::contact(&d.vm_socket("alpha"));
    let relid = offered(&mut g, 0x5001);
    let small = SharedMemory::create("small", 4 * PAGE_SIZE).unwrap();
    assert_refused(
        gpadl_with(&g, relid, 12, &small.into_fd()),
        "a 4-page memfd for 12 pages",
    );

    // Not sealed against shrinking.
    let mut g = RawGuest::contact(&d.vm_socket("alpha"));
    let relid = offered(&mut g, 0x5002);
    let unsealed =
        rustix::fs::memfd_create("unsealed", rustix::fs::MemfdFlags::ALLOW_SEALING).unwrap();
    rustix::fs::ftruncate(&unsealed, 12 * PAGE_SIZE as u64).unwrap();
    assert_refused(gpadl_with(&g, relid, 12, &unsealed), "an unsealed memfd");

    // Not a memfd at all.
    let mut g = RawGuest::contact(&d.vm_socket("alpha"));
    let relid = offered(&mut g, 0x5003);
    let not_memfd: OwnedFd = EventFd::new().unwrap().into_fd();
    assert_refused(
        gpadl_with(&g, relid, 12, &not_memfd),
        "an eventfd as memory",
    );

    // Our own memfds are sealed: truncating one fails, and the mapping
    // stays readable (a shrink would SIGBUS it).
    let memory = SharedMemory::create("sealed", 4 * PAGE_SIZE).unwrap();
    let mapping = Mapping::new(&memory).unwrap();
    mapping.write(3 * PAGE_SIZE, b"last page").unwrap();
    let fd = memory.into_fd();
    let shrink = rustix::fs::ftruncate(&fd, PAGE_SIZE as u64);
    assert!(shrink.is_err(), "a sealed memfd must not shrink");
    let mut buf = [0u8; 9];
    mapping.read(3 * PAGE_SIZE, &mut buf).unwrap();
    assert_eq!(&buf, b"last page");

    // And the daemon still serves a proper connection.
    let mut g = RawGuest::contact(&d.vm_socket("alpha"));
    let relid = offered(&mut g, 0x5004);
    let _rings = g.open(relid, 12);
}

#[test]
fn descriptors_that_are_not_eventfds_fail_that_connection_only() {
    let d = TestDaemon::start(&["alpha"]);
    let root = Host::connect_daemon_at(&d.socket).unwrap();
    let listener = HvListener::bind(&root, HvAddr::from_vsock_port(Guid::ZERO, 7100)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let guest = Guest::connect_daemon_at(&d.socket, "alpha").unwrap();
    let by_listener = HvListener::bind(&root, HvAddr::from_vsock_port(Guid::ZERO, 7101)).unwrap();
    let mut by_guest = VsockStream::connect(&guest, VsockAddr::new(2, 7101)).unwrap();
    let (mut by_host, _) = by_listener.accept().unwrap();

    type MakePair = fn() -> (OwnedFd, OwnedFd);
    let kinds: [(&str, MakePair); 3] = [
        ("two memfds", || {
            let a = SharedMemory::create("a", PAGE_SIZE).unwrap().into_fd();
            let b = SharedMemory::create("b", PAGE_SIZE).unwrap().into_fd();
            (a, b)
        }),
        ("a non-blocking socket pair", || {
            use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
            socketpair(
                AddressFamily::UNIX,
                SocketType::STREAM,
                SocketFlags::NONBLOCK,
                None,
            )
            .unwrap()
        }),
        ("blocking eventfds", || {
            let a = rustix::event::eventfd(0, rustix::event::EventfdFlags::empty()).unwrap();
            let b = rustix::event::eventfd(0, rustix::event::EventfdFlags::empty()).unwrap();
            (a, b)
        }),
    ];
    for (i, (what, make)) in kinds.iter().enumerate() {
        let mut g = RawGuest::contact(&d.vm_socket("alpha"));
        let relid = g.tl_connect(0x6000 + i as u32, 7100);
        let memory = SharedMemory::create("rings", 12 * PAGE_SIZE).unwrap();
        let answer = gpadl_with(&g, relid, 12, &memory.into_fd());
        assert!(
            matches!(
                answer,
                Some(Message::GpadlCreated {
                    creation_status: 0,
                    ..
                })
            ),
            "{answer:?}"
        );
        let (a, b) = make();
        send_vmbus(
            &g.sock,
            &Message::OpenChannel(OpenChannel {
                child_relid: relid,
                openid: relid,
                ringbuffer_gpadlhandle: 0x77,
                target_vp: 0,
                downstream_ringbuffer_pageoffset: 6,
                userdata: [0; 120],
                guest_signal: None,
            }),
            &[&a, &b],
        );
        // Whatever the daemon answers, the host process must not hang on
        // this connection: either it never surfaces, or it fails at once.
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((mut s, _)) => {
                    // Nothing was written: a read would wait. Ask without
                    // waiting; neither call may hang or take us down.
                    s.set_nonblocking(true).unwrap();
                    let started = Instant::now();
                    let mut buf = [0u8; 8];
                    let r = std::io::Read::read(&mut s, &mut buf);
                    let w = std::io::Write::write(&mut s, b"x");
                    assert!(started.elapsed() < HANG, "{what}: the stream hung");
                    // A write may succeed (the ring is fine); signalling a
                    // non-eventfd must not take the process down.
                    let _ = (r, w);
                    break;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("{what}: the listener failed: {e}"),
            }
        }
        assert_moves_data(&mut by_guest, &mut by_host, what);
    }
}
