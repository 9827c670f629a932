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
//!   mapped can SIGBUS.
//! - OPENCHANNEL carries no descriptors (signals travel over the host's
//!   per-pair links): one that comes with any, of any kind, drops that guest
//!   process only, before anything opens.
//!
//! Hostile signal links (bad link descriptors, unknown link ids, floods of
//! the link's eventfd and bitmaps) are in `hostile_signals.rs`.

mod common;

use std::io::ErrorKind;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use common::*;
use hvsock::{Guest, Guid, Host, HvAddr, HvListener, VsockAddr, VsockListener, VsockStream};
use hvsock_shm::{recv_with_fds, send_with_fds, EventFd, Mapping, SharedMemory, PAGE_SIZE};
use rustix::net::sockopt::{set_socket_timeout, Timeout};
use vmbus::ext::{encode_ext, Datagram, ExtEvent, ExtRequest, EXT_MESSAGE_TYPE};
use vmbus::{Gpadl, Message};

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
    let (first, fds) = next_guest_vmbus(&conn);
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
        let (m, _) = next_guest_vmbus(&conn);
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

/// The datagrams the daemon sends `fd` until it closes it; fails if it
/// does not close it within [`HANG`].
#[track_caller]
fn until_dropped(fd: &OwnedFd, what: &str) -> Vec<Datagram<ExtEvent>> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + HANG;
    let mut buf = vec![0u8; vmbus::ext::MAX_DATAGRAM];
    loop {
        assert!(
            Instant::now() < deadline,
            "{what}: the daemon kept the guest; it sent {seen:?}"
        );
        match recv_with_fds(fd, &mut buf, 4) {
            Ok((0, _)) => return seen,
            Ok((n, _)) => seen.push(Datagram::decode(&buf[..n]).unwrap()),
            Err(hvsock_shm::Error::Os { source, .. }) => match source.kind() {
                ErrorKind::WouldBlock => {}
                // A reset is as good as a close.
                ErrorKind::ConnectionReset => return seen,
                _ => panic!("{what}: {source}"),
            },
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// OPENCHANNEL carries no descriptor (signals travel over the link the
/// host makes for each pair of processes): one that comes with any is a
/// guest of another protocol or a hostile one, and the daemon drops it
/// before anything opens. The host process never hears of the channel, and
/// other guests of the VM, raw or real, go on.
#[test]
fn openchannel_with_descriptors_drops_that_guest_only() {
    let d = TestDaemon::start(&["alpha"]);
    let root = Host::connect_daemon_at(&d.socket).unwrap();
    let listener = HvListener::bind(&root, HvAddr::from_vsock_port(Guid::ZERO, 7100)).unwrap();
    listener.set_nonblocking(true).unwrap();
    // Bystanders: a real guest process and a raw one, each with a stream to
    // the same host process.
    let guest = Guest::connect_daemon_at(&d.socket, "alpha").unwrap();
    let by_listener = HvListener::bind(&root, HvAddr::from_vsock_port(Guid::ZERO, 7101)).unwrap();
    let mut by_guest = VsockStream::connect(&guest, VsockAddr::new(2, 7101)).unwrap();
    let (mut by_host, _) = by_listener.accept().unwrap();
    by_guest.set_read_timeout(Some(HANG)).unwrap();
    by_host.set_read_timeout(Some(HANG)).unwrap();
    let mut raw_by = RawGuest::contact(&d.vm_socket("alpha"));
    let relid = raw_by.tl_connect(0x5fff, 7101);
    let raw_by_rings = raw_by.open(relid, 12);
    let mut raw_by_stream = raw_by_rings.stream();
    let (mut raw_by_host, _) = by_listener.accept().unwrap();
    raw_by_host.set_read_timeout(Some(HANG)).unwrap();

    type Make = fn() -> Vec<OwnedFd>;
    let kinds: [(&str, Make); 6] = [
        ("two eventfds, as the older protocol sent", || {
            vec![
                EventFd::new().unwrap().into_fd(),
                EventFd::new().unwrap().into_fd(),
            ]
        }),
        ("one eventfd", || vec![EventFd::new().unwrap().into_fd()]),
        ("two memfds", || {
            let a = SharedMemory::create("a", PAGE_SIZE).unwrap().into_fd();
            let b = SharedMemory::create("b", PAGE_SIZE).unwrap().into_fd();
            vec![a, b]
        }),
        ("a non-blocking socket pair", || {
            use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
            let (a, b) = socketpair(
                AddressFamily::UNIX,
                SocketType::STREAM,
                SocketFlags::NONBLOCK,
                None,
            )
            .unwrap();
            vec![a, b]
        }),
        ("blocking eventfds", || {
            let a = rustix::event::eventfd(0, rustix::event::EventfdFlags::empty()).unwrap();
            let b = rustix::event::eventfd(0, rustix::event::EventfdFlags::empty()).unwrap();
            vec![a, b]
        }),
        ("three descriptors (a whole link's worth)", || {
            vec![
                SharedMemory::create("flags", vmbus::ext::LINK_FLAGS_BYTES)
                    .unwrap()
                    .into_fd(),
                EventFd::new().unwrap().into_fd(),
                EventFd::new().unwrap().into_fd(),
            ]
        }),
    ];
    for (i, (what, make)) in kinds.iter().enumerate() {
        let mut g = RawGuest::contact(&d.vm_socket("alpha"));
        let relid = g.tl_connect(0x6000 + i as u32, 7100);
        let (_rings, handle) = g.gpadl(relid, 12);
        let fds = make();
        let borrowed: Vec<&dyn std::os::fd::AsFd> =
            fds.iter().map(|f| f as &dyn std::os::fd::AsFd).collect();
        send_vmbus(&g.sock, &open_channel(relid, handle, 6), &borrowed);
        let seen = until_dropped(&g.sock, what);
        for datagram in &seen {
            assert!(
                !matches!(
                    datagram,
                    Datagram::Vmbus(Message::OpenChannelResult { status: 0, .. })
                        | Datagram::Ext(ExtEvent::Link { .. } | ExtEvent::ChannelLink { .. })
                ),
                "{what}: the channel opened: {seen:?}"
            );
        }
        // The host process never hears of it.
        std::thread::sleep(Duration::from_millis(50));
        match listener.accept() {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Ok(_) => panic!("{what}: the host process got the connection"),
            Err(e) => panic!("{what}: the listener failed: {e}"),
        }
        assert_moves_data(&mut by_guest, &mut by_host, what);
        assert_raw_moves_data(&mut raw_by_stream, &mut raw_by_host, what);
    }
    // A proper OPENCHANNEL, without descriptors, still opens.
    let mut g = RawGuest::contact(&d.vm_socket("alpha"));
    let relid = g.tl_connect(0x6100, 7100);
    let rings = g.open(relid, 12);
    let mut stream = rings.stream();
    listener.set_nonblocking(false).unwrap();
    let (mut h, _) = listener.accept().unwrap();
    h.set_read_timeout(Some(HANG)).unwrap();
    assert_raw_moves_data(&mut stream, &mut h, "a proper open");
    // The raw bystander shares its link with nobody: a second raw guest
    // process got a link of its own.
    assert_ne!(
        rings.link.id, raw_by_rings.link.id,
        "two guest processes share a link"
    );
}

/// A descriptor whose last close waits `linger`: a TCP socket (over
/// loopback) with `SO_LINGER` and unacknowledged data, its peer never
/// reading. Returns it and the peer, which must stay open meanwhile.
fn slow_to_close(linger: Duration) -> (OwnedFd, std::net::TcpStream) {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    rustix::net::sockopt::set_socket_linger(&client, Some(linger)).unwrap();
    client.set_nonblocking(true).unwrap();
    let chunk = vec![0u8; 1 << 16];
    while client.write(&chunk).is_ok() {}
    (OwnedFd::from(client), server)
}

/// Whether a new client gets its answer from the daemon within `within`
/// (the daemon's loop serves every client in turn).
fn daemon_answers(daemon: &TestDaemon, within: Duration) -> bool {
    let started = Instant::now();
    let host = Host::connect_daemon_at(&daemon.socket);
    host.is_ok() && started.elapsed() < within
}

#[test]
fn descriptors_a_client_passes_are_never_closed_in_the_daemons_loop() {
    // Their last close would wait a minute: the daemon must not wait with
    // it, whether the datagram is nonsense, carries too many descriptors,
    // or its client is gone before the daemon reads it.
    let linger = Duration::from_secs(60);
    let daemon = TestDaemon::start(&["alpha"]);
    let mut peers = Vec::new();
    let cases: [(&str, usize, bool); 3] = [
        ("a nonsense datagram with one", 1, false),
        ("a datagram with more than the daemon takes", 5, false),
        ("a datagram from a client that left at once", 1, true),
    ];
    for (what, count, leave) in cases {
        let raw = RawHost::connect(&daemon.socket);
        let mut fds = Vec::new();
        for _ in 0..count {
            let (fd, peer) = slow_to_close(linger);
            fds.push(fd);
            peers.push(peer);
        }
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        send_with_fds(&raw.sock, b"nonsense", &borrowed).unwrap();
        drop(fds);
        if leave {
            drop(raw);
        } else {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            daemon_answers(&daemon, Duration::from_secs(20)),
            "{what}: the daemon's loop waited for a descriptor's close"
        );
    }
}
