//! Hostile signal links (`vmbus::ext`, "Signals: one link per pair of
//! processes").
//!
//! - A fake host hands a real guest endpoint a link with bad descriptors
//!   (too few, an unsealed or too small flags memfd, eventfds or /dev/zero
//!   where socket ends belong, a socket as the flags) and opens a channel
//!   on it: that connect fails
//!   with an error that names the link, the channel is given back, and the
//!   next connection, on a good link, moves data.
//! - A peer names a link it never sent (ChannelLink, HostIncoming,
//!   HostConnected) or one it closed: that connection fails cleanly and is
//!   handed back; the endpoint goes on.
//! - A raw peer floods its link (its socket filled nonstop, every bit of the
//!   bitmap it writes set, relids it does not own included) while a real
//!   endpoint streams with it on two channels: checksums match both ways,
//!   and once the flood stops nothing keeps the endpoint awake.
//! - A hostile guest of VM A floods its own link and clears the bits the
//!   host sets for it; the host process's connections with VM B, raw and
//!   real, are not disturbed: links join exactly two processes.
//!
//! (OPENCHANNEL sent with descriptors is in `hostile_control.rs`.)

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use hvsock::{Guest, Guid, Host, HvAddr, HvListener, HvStream, VsockAddr, VsockStream};
use hvsock_shm::{
    ring_pair, send_with_fds, signal_pair, EventFd, Mapping, SharedMemory, PAGE_SIZE,
};
use rustix::net::sockopt::{set_socket_timeout, Timeout};
use vmbus::ext::{
    encode_ext, Datagram, ExtEvent, ExtRequest, RingLayout, LINK_BITMAP_BYTES, LINK_FLAGS_BYTES,
};
use vmbus::{GpadlAssembler, Message};
use vmbus_ring::init_control_page;
use vmbus_ring::layout::FEATURE_PENDING_SEND_SIZE;

/// The longest any test here may run a transfer before calling it a stall.
const STALL: Duration = Duration::from_secs(10);

fn send_event(conn: &OwnedFd, event: &ExtEvent, fds: &[&dyn AsFd]) {
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    send_with_fds(conn, &encode_ext(event), &borrowed).expect("send an event");
}

// ---- a fake host opening guest connects -----------------------------------

/// A guest connect as the fake host sees it, up to the guest's OPENCHANNEL.
struct Opening {
    relid: u32,
    memfd: OwnedFd,
    layout: RingLayout,
}

/// Plays the host for the guest's next connect to `port`, up to its
/// OPENCHANNEL: offers `relid` and creates its GPADL. Messages of earlier
/// channels the guest is giving back (CLOSECHANNEL, GPADL_TEARDOWN) are
/// skipped.
#[track_caller]
fn fake_until_open(conn: &OwnedFd, relid: u32, port: u32) -> Opening {
    let request = loop {
        match next_guest_vmbus(conn) {
            (Message::TlConnectRequest(request), _) => break request,
            (Message::CloseChannel { .. } | Message::GpadlTeardown { .. }, _) => continue,
            (other, _) => panic!("expected TL_CONNECT_REQUEST, got {other:?}"),
        }
    };
    assert_eq!(request.host_service_id, Guid::from_vsock_port(port));
    send_vmbus(
        conn,
        &hvsock_offer(
            relid,
            request.host_service_id,
            request.guest_endpoint_id,
            false,
        ),
        &[],
    );
    let mut assembler = GpadlAssembler::new();
    let mut memfd = None;
    let gpadl = loop {
        let (message, mut fds) = next_guest_vmbus(conn);
        if let Message::GpadlHeader(h) = &message {
            assert_eq!(h.child_relid(), relid);
            assert_eq!(fds.len(), 1, "GPADL_HEADER carries the ring memfd");
            memfd = fds.pop();
        }
        if let Some(gpadl) = assembler.feed(&message).expect("a valid GPADL") {
            break gpadl;
        }
    };
    send_vmbus(
        conn,
        &Message::GpadlCreated {
            child_relid: relid,
            gpadl: gpadl.gpadl,
            creation_status: 0,
        },
        &[],
    );
    let (message, fds) = next_guest_vmbus(conn);
    let Message::OpenChannel(open) = message else {
        panic!("expected OPENCHANNEL, got {message:?}")
    };
    assert_eq!(open.child_relid, relid);
    assert!(fds.is_empty(), "OPENCHANNEL carries no descriptor");
    Opening {
        relid,
        memfd: memfd.expect("a memfd"),
        layout: RingLayout {
            total_pages: gpadl.pfns.len() as u32,
            guest_to_host_pages: open.downstream_ringbuffer_pageoffset,
        },
    }
}

/// Answers an OPENCHANNEL with success.
fn open_succeeded(conn: &OwnedFd, relid: u32) {
    send_vmbus(
        conn,
        &Message::OpenChannelResult {
            child_relid: relid,
            openid: relid,
            status: 0,
        },
        &[],
    );
}

/// Waits for the guest to give `relid` back (CLOSECHANNEL).
#[track_caller]
fn expect_closed(conn: &OwnedFd, relid: u32, what: &str) {
    let deadline = Instant::now() + HANG;
    loop {
        assert!(
            Instant::now() < deadline,
            "{what}: the guest kept channel {relid}"
        );
        match next_guest_vmbus(conn) {
            (Message::CloseChannel { child_relid }, _) if child_relid == relid => return,
            (Message::GpadlTeardown { .. }, _) => {}
            (other, _) => panic!("{what}: expected CLOSECHANNEL of {relid}, got {other:?}"),
        }
    }
}

/// Connects a real guest to `port` (with a bound), on a thread.
fn connecting(guest: &Guest, port: u32) -> JoinHandle<std::io::Result<VsockStream>> {
    let guest = guest.clone();
    std::thread::spawn(move || VsockStream::connect_timeout(&guest, VsockAddr::new(2, port), HANG))
}

/// The fake host's good link with the guest, sent with the first
/// connection on it.
struct GoodLink {
    link: Option<Arc<RawLink>>,
    id: u64,
}

impl GoodLink {
    /// Opens the guest's next connect to `port` on the good link (sending
    /// the link first if the guest has not had it) and checks that it moves
    /// data both ways.
    #[track_caller]
    fn connect_and_check(&mut self, guest: &Guest, conn: &OwnedFd, relid: u32, port: u32) {
        let stream = connecting(guest, port);
        let opening = fake_until_open(conn, relid, port);
        let link = match &self.link {
            Some(link) => link.clone(),
            None => {
                let (link, fds) = RawLink::make(self.id, LinkSide::Host);
                let fds: Vec<&dyn AsFd> = fds.iter().map(|f| f as &dyn AsFd).collect();
                send_event(conn, &ExtEvent::Link { link: self.id }, &fds);
                let link = Arc::new(link);
                self.link = Some(link.clone());
                link
            }
        };
        send_event(
            conn,
            &ExtEvent::ChannelLink {
                relid,
                link: self.id,
            },
            &[],
        );
        open_succeeded(conn, relid);
        let mut stream = stream.join().unwrap().expect("a connect on a good link");
        stream.set_read_timeout(Some(HANG)).unwrap();
        let rings = host_rings(opening.memfd, opening.layout, link, opening.relid);
        assert_raw_moves_data(&mut rings.stream(), &mut stream, "a good link");
    }
}

/// A flags memfd made by hand: `len` bytes, sealed with `seals`.
fn flags_memfd(len: usize, seals: rustix::fs::SealFlags) -> OwnedFd {
    let fd = rustix::fs::memfd_create("bad-flags", rustix::fs::MemfdFlags::ALLOW_SEALING).unwrap();
    rustix::fs::ftruncate(&fd, len as u64).unwrap();
    if !seals.is_empty() {
        rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
    }
    fd
}

fn good_flags() -> OwnedFd {
    SharedMemory::create("flags", LINK_FLAGS_BYTES)
        .unwrap()
        .into_fd()
}

fn eventfd() -> OwnedFd {
    EventFd::new().unwrap().into_fd()
}

/// The end of a new signal line to wait on (nobody will signal it).
fn wait_end() -> OwnedFd {
    signal_pair().unwrap().0.into_fd()
}

/// The end of a new signal line to signal on (nobody waits on it).
fn signal_end() -> OwnedFd {
    signal_pair().unwrap().1.into_fd()
}

#[test]
fn a_link_with_bad_descriptors_fails_its_channels_only() {
    use rustix::fs::SealFlags;
    let fake = FakeHost::new();
    let (guest, conn) = fake.guest();
    let mut good = GoodLink { link: None, id: 1 };
    let mut relid = 10;
    good.connect_and_check(&guest, &conn, relid, 5000);

    // The control: the same kinds of descriptors, made right by hand, make
    // a link the guest takes.
    relid += 1;
    let stream = connecting(&guest, 5000);
    fake_until_open(&conn, relid, 5000);
    let fds = [good_flags(), wait_end(), signal_end()];
    let fds: Vec<&dyn AsFd> = fds.iter().map(|f| f as &dyn AsFd).collect();
    send_event(&conn, &ExtEvent::Link { link: 99 }, &fds);
    send_event(&conn, &ExtEvent::ChannelLink { relid, link: 99 }, &[]);
    open_succeeded(&conn, relid);
    drop(stream.join().unwrap().expect("a link made right by hand"));

    type Make = fn() -> Vec<OwnedFd>;
    let kinds: [(&str, Make); 11] = [
        ("no descriptors", Vec::new),
        ("only 2 descriptors", || vec![good_flags(), wait_end()]),
        ("4 descriptors", || {
            vec![good_flags(), wait_end(), signal_end(), signal_end()]
        }),
        ("an unsealed flags memfd", || {
            vec![
                flags_memfd(LINK_FLAGS_BYTES, SealFlags::empty()),
                wait_end(),
                signal_end(),
            ]
        }),
        ("a flags memfd too small", || {
            vec![
                flags_memfd(PAGE_SIZE, SealFlags::SHRINK | SealFlags::GROW),
                wait_end(),
                signal_end(),
            ]
        }),
        ("a flags memfd of the size before the wake areas", || {
            vec![
                flags_memfd(2 * LINK_BITMAP_BYTES, SealFlags::SHRINK | SealFlags::GROW),
                wait_end(),
                signal_end(),
            ]
        }),
        ("a write-sealed flags memfd", || {
            vec![
                flags_memfd(LINK_FLAGS_BYTES, SealFlags::SHRINK | SealFlags::WRITE),
                wait_end(),
                signal_end(),
            ]
        }),
        ("a socket as the flags", || {
            vec![wait_end(), wait_end(), signal_end()]
        }),
        ("an eventfd to wait on (a file the peer shares)", || {
            vec![good_flags(), eventfd(), signal_end()]
        }),
        (
            "an eventfd to signal (the peer could make it block)",
            || vec![good_flags(), wait_end(), eventfd()],
        ),
        ("/dev/zero (always readable) to wait on", || {
            use rustix::fs::{open, Mode, OFlags};
            let zero = open(
                "/dev/zero",
                OFlags::RDONLY | OFlags::NONBLOCK,
                Mode::empty(),
            )
            .unwrap();
            vec![good_flags(), zero, signal_end()]
        }),
    ];
    for (i, (what, make)) in kinds.iter().enumerate() {
        relid += 1;
        let link = 100 + i as u64;
        let port = 5001 + i as u32;
        let stream = connecting(&guest, port);
        fake_until_open(&conn, relid, port);
        let fds = make();
        let fds: Vec<&dyn AsFd> = fds.iter().map(|f| f as &dyn AsFd).collect();
        send_event(&conn, &ExtEvent::Link { link }, &fds);
        send_event(&conn, &ExtEvent::ChannelLink { relid, link }, &[]);
        let started = Instant::now();
        open_succeeded(&conn, relid);
        let error = stream
            .join()
            .unwrap()
            .expect_err(&format!("{what}: the connect succeeded"));
        assert!(
            started.elapsed() < HANG,
            "{what}: took {:?}",
            started.elapsed()
        );
        assert_eq!(
            error.kind(),
            ErrorKind::ConnectionRefused,
            "{what}: {error}"
        );
        assert!(
            error.to_string().contains("descriptors were refused"),
            "{what}: the error does not say what was wrong: {error}"
        );
        if what.contains("before the wake areas") {
            assert!(
                error.to_string().contains("another version of hvsock"),
                "{what}: the error does not point at a version mismatch: {error}"
            );
        }
        eprintln!("{what}: {error}");
        expect_closed(&conn, relid, what);
        // The guest goes on, on its good link.
        relid += 1;
        good.connect_and_check(&guest, &conn, relid, 5000);
    }
}

#[test]
fn a_guest_channel_on_an_unknown_or_missing_link_fails_cleanly() {
    let fake = FakeHost::new();
    let (guest, conn) = fake.guest();
    let mut good = GoodLink { link: None, id: 7 };
    good.connect_and_check(&guest, &conn, 1, 5000);
    let cases: [(&str, Option<u64>); 2] = [
        ("a ChannelLink naming a link never sent", Some(999)),
        ("no ChannelLink before the result", None),
    ];
    let mut relid = 1;
    for (what, named) in cases {
        relid += 1;
        let stream = connecting(&guest, 5001);
        fake_until_open(&conn, relid, 5001);
        if let Some(link) = named {
            send_event(&conn, &ExtEvent::ChannelLink { relid, link }, &[]);
        }
        open_succeeded(&conn, relid);
        let error = stream
            .join()
            .unwrap()
            .expect_err(&format!("{what}: the connect succeeded"));
        assert_eq!(
            error.kind(),
            ErrorKind::ConnectionRefused,
            "{what}: {error}"
        );
        assert!(error.to_string().contains("signal link"), "{what}: {error}");
        eprintln!("{what}: {error}");
        expect_closed(&conn, relid, what);
        relid += 1;
        good.connect_and_check(&guest, &conn, relid, 5000);
    }
    // A link the host closed is unknown from then on.
    send_event(&conn, &ExtEvent::LinkClosed { link: 7 }, &[]);
    relid += 1;
    let stream = connecting(&guest, 5002);
    fake_until_open(&conn, relid, 5002);
    send_event(&conn, &ExtEvent::ChannelLink { relid, link: 7 }, &[]);
    open_succeeded(&conn, relid);
    let error = stream
        .join()
        .unwrap()
        .expect_err("a connect on a closed link");
    assert_eq!(error.kind(), ErrorKind::ConnectionRefused, "{error}");
    expect_closed(&conn, relid, "a closed link");
    // A new link works.
    let mut fresh = GoodLink { link: None, id: 8 };
    relid += 1;
    fresh.connect_and_check(&guest, &conn, relid, 5000);
}

// ---- a fake daemon against a real host process ---------------------------

/// A listening socket standing in for the daemon's host socket: a real
/// host endpoint (`hvsock::Host`) connects to it and the test plays the
/// daemon.
struct FakeDaemon {
    _dir: tempfile::TempDir,
    socket: std::path::PathBuf,
    listener: OwnedFd,
}

impl FakeDaemon {
    fn new() -> FakeDaemon {
        use rustix::net::{bind, listen, socket, AddressFamily, SocketAddrUnix, SocketType};
        let dir = tempfile::tempdir().unwrap();
        let socket_path = dir.path().join("host.sock");
        let listener = socket(AddressFamily::UNIX, SocketType::SEQPACKET, None).unwrap();
        bind(&listener, &SocketAddrUnix::new(&socket_path).unwrap()).unwrap();
        listen(&listener, 8).unwrap();
        FakeDaemon {
            _dir: dir,
            socket: socket_path,
            listener,
        }
    }

    /// A real host endpoint connected to us, past its first request (the
    /// VM list it asks for to know it is served).
    fn host(&self) -> (Host, OwnedFd) {
        let socket = self.socket.clone();
        let host = std::thread::spawn(move || Host::connect_daemon_at(&socket));
        let conn = rustix::net::accept(&self.listener).unwrap();
        set_socket_timeout(&conn, Timeout::Recv, Some(HANG)).unwrap();
        assert_eq!(next_request(&conn), ExtRequest::VmList);
        send_event(&conn, &ExtEvent::VmList { vms: Vec::new() }, &[]);
        let host = host.join().unwrap().expect("the host endpoint connects");
        (host, conn)
    }
}

/// The next extension request from a real endpoint.
#[track_caller]
fn next_request(conn: &OwnedFd) -> ExtRequest {
    match recv_request(conn) {
        Some((Datagram::Ext(request), _)) => request,
        other => panic!("expected a request, got {other:?}"),
    }
}

/// Rings made as a guest makes them: a sealed memfd of `pages` pages, half
/// each way, control pages set up.
fn guest_made_rings(pages: u32) -> (OwnedFd, Arc<Mapping>, RingLayout) {
    let memory = SharedMemory::create("fake-guest", pages as usize * PAGE_SIZE).unwrap();
    let mapping = Arc::new(Mapping::new(&memory).unwrap());
    let half = pages as usize / 2;
    let pair = ring_pair(mapping.clone(), half, pages as usize - half).unwrap();
    init_control_page(&pair.guest_to_host, FEATURE_PENDING_SEND_SIZE);
    init_control_page(&pair.host_to_guest, FEATURE_PENDING_SEND_SIZE);
    let layout = RingLayout {
        total_pages: pages,
        guest_to_host_pages: half as u32,
    };
    (memory.into_fd(), mapping, layout)
}

#[test]
fn a_host_connection_on_an_unknown_link_fails_cleanly() {
    let fake = FakeDaemon::new();
    let (host, conn) = fake.host();
    let vm = Guid::from_vsock_port(0xabc);
    let service = Guid::from_vsock_port(7600);
    let listening = {
        let host = host.clone();
        std::thread::spawn(move || HvListener::bind(&host, HvAddr::new(Guid::ZERO, service)))
    };
    match next_request(&conn) {
        ExtRequest::HostListen { service_id, vm_id } => {
            assert_eq!((service_id, vm_id), (service, Guid::ZERO));
        }
        other => panic!("expected HostListen, got {other:?}"),
    }
    send_event(
        &conn,
        &ExtEvent::HostListenResult {
            service_id: service,
            vm_id: Guid::ZERO,
            error: None,
        },
        &[],
    );
    let listener = listening.join().unwrap().expect("the host listens");
    listener.set_nonblocking(true).unwrap();
    let incoming = |conn_id: u64, relid: u32, link: u64, memfd: &OwnedFd, layout| {
        send_event(
            &conn,
            &ExtEvent::HostIncoming {
                conn: conn_id,
                relid,
                link,
                service_id: service,
                listener_vm_id: Guid::ZERO,
                vm_id: vm,
                endpoint_id: Guid::from_vsock_port(0x4000 + relid),
                layout,
            },
            &[memfd],
        );
    };

    // A link never sent.
    let (memfd, _mapping, layout) = guest_made_rings(12);
    incoming(1, 3, 777, &memfd, layout);
    assert_eq!(
        next_request(&conn),
        ExtRequest::HostClose { conn: 1 },
        "a connection on an unknown link is handed back"
    );
    assert_eq!(
        listener.accept().map(|_| ()).unwrap_err().kind(),
        ErrorKind::WouldBlock,
        "a connection on an unknown link reached the application"
    );

    // A good link, then a connection on it: accepted, moves data.
    let (ours, fds) = RawLink::make(5, LinkSide::Guest);
    let ours = Arc::new(ours);
    let fds: Vec<&dyn AsFd> = fds.iter().map(|f| f as &dyn AsFd).collect();
    send_event(&conn, &ExtEvent::Link { link: 5 }, &fds);
    let (memfd, mapping, layout) = guest_made_rings(12);
    incoming(2, 4, 5, &memfd, layout);
    listener.set_nonblocking(false).unwrap();
    let (mut accepted, _) = listener.accept().expect("a connection on a good link");
    accepted.set_read_timeout(Some(HANG)).unwrap();
    let rings = Rings::new(mapping, layout, LinkSide::Guest, ours.clone(), 4);
    let mut raw = rings.stream();
    assert_raw_moves_data(&mut raw, &mut accepted, "a good link");
    listener.set_nonblocking(true).unwrap();

    // The link closed: a connection naming it afterwards is handed back,
    // while the one already open keeps working.
    send_event(&conn, &ExtEvent::LinkClosed { link: 5 }, &[]);
    let (memfd, _mapping2, layout) = guest_made_rings(12);
    incoming(3, 6, 5, &memfd, layout);
    assert_eq!(next_request(&conn), ExtRequest::HostClose { conn: 3 });
    assert_eq!(
        listener.accept().map(|_| ()).unwrap_err().kind(),
        ErrorKind::WouldBlock
    );
    assert_raw_moves_data(&mut raw, &mut accepted, "after LinkClosed");

    // A host connect answered on a link never sent: the connect fails,
    // saying why (and the connection is handed back: the test below).
    let error = connect_on_unknown_link(&host, &conn, vm);
    assert!(error.to_string().contains("signal link"), "{error}");
    // The endpoint goes on.
    assert_raw_moves_data(&mut raw, &mut accepted, "at the end");
    drop(host);
}

/// Has `host` connect to VM `vm` and answers with a HostConnected naming
/// link 778, never sent: returns the connect's error.
fn connect_on_unknown_link(host: &Host, conn: &OwnedFd, vm: Guid) -> std::io::Error {
    let connecting = {
        let host = host.clone();
        std::thread::spawn(move || {
            HvStream::connect_timeout(&host, HvAddr::from_vsock_port(vm, 5000), HANG)
        })
    };
    let request = match next_request(conn) {
        ExtRequest::HostConnect { request, .. } => request,
        other => panic!("expected HostConnect, got {other:?}"),
    };
    let (memfd, _mapping, layout) = guest_made_rings(12);
    send_event(
        conn,
        &ExtEvent::HostConnected {
            request,
            conn: 4,
            relid: 8,
            link: 778,
            vm_id: vm,
            endpoint_id: Guid::from_vsock_port(0x5000),
            layout,
        },
        &[&memfd],
    );
    let started = Instant::now();
    let error = connecting
        .join()
        .unwrap()
        .expect_err("a connect on an unknown link");
    assert!(started.elapsed() < HANG);
    eprintln!("HostConnected on an unknown link: {error}");
    error
}

/// A HostConnected the host process cannot use (here: its link is unknown)
/// should be handed back (HostClose), as a HostIncoming it cannot use is;
/// otherwise the host keeps the channel open until the guest gives up.
#[test]
fn a_host_connect_answered_on_an_unknown_link_is_handed_back() {
    let fake = FakeDaemon::new();
    let (host, conn) = fake.host();
    connect_on_unknown_link(&host, &conn, Guid::from_vsock_port(0xabc));
    match next_request(&conn) {
        ExtRequest::HostClose { conn: 4 } | ExtRequest::HostCancel { .. } => {}
        other => panic!("expected the connection handed back, got {other:?}"),
    }
}

// ---- floods ---------------------------------------------------------------

/// One raw stream's half of a checked transfer: sends `len` seeded bytes
/// and a FIN, and reads to the end, checksumming both ways.
struct RawTransfer {
    stream: RawStream,
    rng: Rng,
    left: usize,
    pending: Vec<u8>,
    sent: Fnv,
    fin: bool,
    got: usize,
    got_sum: Fnv,
    eof: bool,
}

impl RawTransfer {
    fn new(stream: RawStream, seed: u64, len: usize) -> RawTransfer {
        RawTransfer {
            stream,
            rng: Rng::new(seed),
            left: len,
            pending: Vec::new(),
            sent: Fnv::default(),
            fin: false,
            got: 0,
            got_sum: Fnv::default(),
            eof: false,
        }
    }

    /// Moves what can move now; returns whether anything did.
    fn step(&mut self, buf: &mut [u8]) -> bool {
        let mut moved = false;
        loop {
            if self.pending.is_empty() && self.left > 0 {
                let n = self.left.min(1 + self.rng.below(12000) as usize);
                self.pending.resize(n, 0);
                self.rng.fill(&mut self.pending);
                self.left -= n;
            }
            if self.pending.is_empty() {
                break;
            }
            let n = self.stream.try_write(&self.pending);
            if n == 0 {
                break;
            }
            self.sent.update(&self.pending[..n]);
            self.pending.drain(..n);
            moved = true;
        }
        if self.left == 0 && self.pending.is_empty() && !self.fin {
            self.stream.write_fin();
            self.fin = true;
            moved = true;
        }
        while !self.eof {
            match self.stream.try_read(buf) {
                Some(0) => self.eof = true,
                Some(n) => {
                    self.got += n;
                    self.got_sum.update(&buf[..n]);
                }
                None => break,
            }
            moved = true;
        }
        moved
    }

    fn done(&self) -> bool {
        self.fin && self.eof
    }
}

/// Drives raw transfers on one link until all are done; fails after
/// [`STALL`].
fn pump(transfers: &mut [RawTransfer], link: &RawLink, what: &str) {
    let deadline = Instant::now() + STALL;
    let mut buf = vec![0u8; 32768];
    while !transfers.iter().all(RawTransfer::done) {
        assert!(
            Instant::now() < deadline,
            "{what}: stalled: {:?}",
            transfers
                .iter()
                .map(|t| (t.left, t.fin, t.got, t.eof))
                .collect::<Vec<_>>()
        );
        let mut moved = false;
        for t in transfers.iter_mut() {
            moved |= t.step(&mut buf);
        }
        if !moved {
            // Polls too: the peer's signals are not what this test checks.
            link.wait(Duration::from_millis(2));
        }
    }
}

/// A real stream's half of a checked transfer.
trait RealStream: Read + Write + Send + Sized + 'static {
    fn dup(&self) -> Self;
    fn shut_write(&self);
    fn set_timeouts(&self, d: Duration);
}

macro_rules! real_stream {
    ($t:ty) => {
        impl RealStream for $t {
            fn dup(&self) -> Self {
                self.try_clone().unwrap()
            }
            fn shut_write(&self) {
                self.shutdown(Shutdown::Write).unwrap();
            }
            fn set_timeouts(&self, d: Duration) {
                self.set_read_timeout(Some(d)).unwrap();
                self.set_write_timeout(Some(d)).unwrap();
            }
        }
    };
}
real_stream!(VsockStream);
real_stream!(HvStream);

/// Sends `len` seeded bytes and a FIN on `s` and reads it to the end, on
/// two threads; returns the checksum sent and (count, checksum) received.
fn real_transfer<S: RealStream>(s: S, seed: u64, len: usize) -> JoinHandle<(u64, (usize, u64))> {
    std::thread::spawn(move || {
        s.set_timeouts(STALL);
        let mut w = s.dup();
        let writer = std::thread::spawn(move || {
            let sum = send_random(&mut w, seed, len).expect("the real side writes");
            w.shut_write();
            sum
        });
        let mut r = s;
        let got = recv_all(&mut r).expect("the real side reads");
        (writer.join().unwrap(), got)
    })
}

/// A flood of a link from its raw end, on a thread, until dropped: every
/// bit of the bitmap we write set (every relid's, not only ours), the
/// peer's socket written nonstop (filled in one send too), and, if
/// `steal`, the bitmap the peer writes cleared.
struct Flood {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Flood {
    /// Starts the flood and waits until it is under way.
    fn start(link: Arc<RawLink>, steal: bool) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let thread = std::thread::spawn({
            let (stop, rounds) = (stop.clone(), rounds.clone());
            move || {
                while !stop.load(Relaxed) {
                    for w in 0..LINK_WORDS {
                        link.outgoing_word(w).store(u32::MAX, SeqCst);
                        if steal {
                            link.incoming_word(w).store(0, SeqCst);
                        }
                    }
                    for _ in 0..16 {
                        link.signal.signal().unwrap();
                    }
                    // As much as the socket takes, in one go: the receiver
                    // drains a bounded amount per wake-up, which must not
                    // matter.
                    let _ = rustix::net::send(
                        &link.signal,
                        &[7u8; 64 << 10],
                        rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL,
                    );
                    rounds.fetch_add(1, Relaxed);
                    std::thread::yield_now();
                }
            }
        });
        let flood = Flood {
            stop,
            rounds,
            thread: Some(thread),
        };
        let deadline = Instant::now() + HANG;
        while flood.rounds() < 100 {
            assert!(Instant::now() < deadline, "the flood does not start");
            std::thread::sleep(Duration::from_millis(1));
        }
        flood
    }

    fn rounds(&self) -> u64 {
        self.rounds.load(Relaxed)
    }

    /// Stops the flood; returns its rounds.
    fn stop(mut self) -> u64 {
        self.stop.store(true, Relaxed);
        self.thread
            .take()
            .unwrap()
            .join()
            .expect("the flood thread");
        self.rounds()
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// During a flood: a blocking read on a stream nobody writes to times out
/// when it should; the spurious wake-ups bring neither data nor an error.
#[track_caller]
fn assert_no_phantom_data(quiet: &mut impl Read, set_timeout: impl Fn(Duration), what: &str) {
    set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let mut buf = [0u8; 8];
    let e = quiet
        .read(&mut buf)
        .expect_err("nothing was sent, yet the read returned");
    let waited = started.elapsed();
    assert_eq!(e.kind(), ErrorKind::TimedOut, "{what}: {e}");
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "{what}: a 300 ms read timeout took {waited:?}"
    );
    set_timeout(HANG);
}

/// Held by the tests that flood or measure the process's CPU time, so that
/// one test's flood is not counted as another's spinning.
static CPU_HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn cpu_heavy() -> std::sync::MutexGuard<'static, ()> {
    CPU_HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// CPU time this process has used (user + system).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command (which may hold spaces) and its ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

/// After a flood: a blocking read on a quiet stream times out when it
/// should (neither woken into an error nor kept past its timeout), and
/// while it waits the process sleeps rather than spins.
#[track_caller]
fn assert_quiet_after_flood(quiet: &mut impl Read, set_timeout: impl Fn(Duration), what: &str) {
    // Whatever the flood left pending is taken by the first wait.
    set_timeout(Duration::from_millis(100));
    let mut buf = [0u8; 8];
    let e = quiet.read(&mut buf).expect_err("nothing was sent");
    assert_eq!(e.kind(), ErrorKind::TimedOut, "{what}: {e}");
    set_timeout(Duration::from_millis(600));
    let (cpu, started) = (cpu_time(), Instant::now());
    let e = quiet.read(&mut buf).expect_err("nothing was sent");
    let (cpu, waited) = (cpu_time() - cpu, started.elapsed());
    assert_eq!(e.kind(), ErrorKind::TimedOut, "{what}: {e}");
    assert!(
        waited >= Duration::from_millis(550) && waited < Duration::from_secs(3),
        "{what}: a 600 ms read timeout took {waited:?}"
    );
    eprintln!("{what}: {cpu:?} of CPU while waiting {waited:?}");
    assert!(
        cpu < Duration::from_millis(300),
        "{what}: the process used {cpu:?} of CPU in {waited:?} of waiting: something spins"
    );
    set_timeout(HANG);
}

const FLOOD_BYTES: usize = 8 << 20;

/// What a flood test checks, whichever side floods: `transfers` (raw) and
/// `victims` (real) are the two ends of three streams on the hostile link
/// (the hostile process holds `hostile_links` links: one), the last of which
/// nobody writes to; `bystander` a real connection of the victim process
/// with someone else. Returns the hostile link.
fn survive_a_flood<S: RealStream, B: RealStream>(
    mut transfers: Vec<RawTransfer>,
    mut victims: Vec<S>,
    hostile_links: usize,
    bystander: (&mut B, &mut (impl Read + Write)),
) -> Arc<RawLink> {
    let mut quiet = victims.pop().unwrap();
    let _quiet_raw = transfers.pop().unwrap();
    let link = transfers[0].stream.link.clone();
    assert_eq!(hostile_links, 1, "one link per pair of processes");
    assert!(transfers.iter().all(|t| t.stream.link.id == link.id));
    let (by_victim, by_peer) = bystander;
    let flood = Flood::start(link.clone(), false);
    let q = quiet.dup();
    assert_no_phantom_data(
        &mut quiet,
        |t| q.set_timeouts(t),
        "a quiet stream under the flood",
    );
    let real: Vec<_> = victims
        .into_iter()
        .enumerate()
        .map(|(i, v)| real_transfer(v, 900 + i as u64, FLOOD_BYTES))
        .collect();
    let started = Instant::now();
    pump(&mut transfers, &link, "under a flood");
    for (i, (real, raw)) in real.into_iter().zip(&transfers).enumerate() {
        let (sent, got) = real.join().expect("the real side");
        assert_eq!(raw.got, FLOOD_BYTES, "stream {i}: real -> raw count");
        assert_eq!(raw.got_sum.0, sent, "stream {i}: real -> raw checksum");
        assert_eq!(got, (FLOOD_BYTES, raw.sent.0), "stream {i}: raw -> real");
    }
    let took = started.elapsed();
    assert_moves_data(by_victim, by_peer, "the bystander under the flood");
    let rounds = flood.stop();
    eprintln!("2 streams x {FLOOD_BYTES} bytes each way in {took:?}, under {rounds} flood rounds");

    // Once the flood stops, nothing keeps the victim awake.
    let q = quiet.dup();
    assert_quiet_after_flood(&mut quiet, |t| q.set_timeouts(t), "a flooded stream");
    let b = by_victim.dup();
    assert_quiet_after_flood(by_victim, |t| b.set_timeouts(t), "the bystander");
    assert_moves_data(by_victim, by_peer, "the bystander after the flood");
    link
}

#[test]
fn a_host_process_flooding_its_link_cannot_stall_or_corrupt_a_guest() {
    let _serial = cpu_heavy();
    let d = TestDaemon::start(&["alpha"]);
    let root = Host::connect_daemon_at(&d.socket).unwrap();
    let guest = Guest::connect_daemon_at(&d.socket, "alpha").unwrap();
    // A bystander: the same guest process with a real host process.
    let by_listener = HvListener::bind(&root, HvAddr::from_vsock_port(Guid::ZERO, 7301)).unwrap();
    let (mut by_guest, mut by_host) = connected(&guest, &by_listener, 7301);

    // The hostile host process, with three streams from the guest.
    let mut hostile = RawHost::connect(&d.socket);
    hostile.listen(7300);
    let mut victims = Vec::new();
    let mut transfers = Vec::new();
    for i in 0..3u64 {
        victims.push(VsockStream::connect(&guest, VsockAddr::new(2, 7300)).unwrap());
        let (_conn, rings) = hostile.incoming();
        transfers.push(RawTransfer::new(rings.stream(), 100 + i, FLOOD_BYTES));
    }
    let links = hostile.links.len();
    let link = survive_a_flood(transfers, victims, links, (&mut by_guest, &mut by_host));
    // The guest still makes connections, to both host processes.
    let _third = VsockStream::connect(&guest, VsockAddr::new(2, 7300)).unwrap();
    let (_conn, rings) = hostile.incoming();
    assert_eq!(rings.link.id, link.id);
    let (mut g, mut h) = connected(&guest, &by_listener, 7301);
    assert_moves_data(&mut g, &mut h, "a new connection");
}

/// A new connection from `guest` to host port `port`, accepted on
/// `listener`, both ends with [`HANG`] timeouts.
fn connected(guest: &Guest, listener: &HvListener, port: u32) -> (VsockStream, HvStream) {
    let g = VsockStream::connect(guest, VsockAddr::new(2, port)).unwrap();
    let (h, _) = listener.accept().unwrap();
    g.set_timeouts(HANG);
    h.set_timeouts(HANG);
    (g, h)
}

#[test]
fn a_guest_flooding_its_link_cannot_stall_or_corrupt_a_host_process() {
    let _serial = cpu_heavy();
    let d = TestDaemon::start(&["alpha"]);
    let root = Host::connect_daemon_at(&d.socket).unwrap();
    let listener = HvListener::bind(&root, HvAddr::from_vsock_port(Guid::ZERO, 7400)).unwrap();
    // A bystander: the same host process with a real guest process.
    let guest = Guest::connect_daemon_at(&d.socket, "alpha").unwrap();
    let (mut by_guest, mut by_host) = connected(&guest, &listener, 7400);

    // The hostile guest process, with three streams to the host process.
    let mut hostile = RawGuest::contact(&d.vm_socket("alpha"));
    let mut victims = Vec::new();
    let mut transfers = Vec::new();
    for i in 0..3u32 {
        let relid = hostile.tl_connect(0x7000 + i, 7400);
        let rings = hostile.open(relid, 24);
        victims.push(listener.accept().unwrap().0);
        transfers.push(RawTransfer::new(
            rings.stream(),
            300 + u64::from(i),
            FLOOD_BYTES,
        ));
    }
    let links = hostile.links.len();
    survive_a_flood(transfers, victims, links, (&mut by_host, &mut by_guest));
    let (mut g, mut h) = connected(&guest, &listener, 7400);
    assert_moves_data(&mut g, &mut h, "a new connection");
}

#[test]
fn a_hostile_guest_of_one_vm_cannot_disturb_signals_of_another() {
    let _serial = cpu_heavy();
    let d = TestDaemon::start(&["alpha", "beta"]);
    let root = Host::connect_daemon_at(&d.socket).unwrap();
    let listener = HvListener::bind(&root, HvAddr::from_vsock_port(Guid::ZERO, 7500)).unwrap();

    // A: a raw guest of alpha with a channel to the host process.
    let mut a = RawGuest::contact(&d.vm_socket("alpha"));
    let relid_a = a.tl_connect(0x7100, 7500);
    let rings_a = a.open(relid_a, 12);
    let (_a_host, _) = listener.accept().unwrap();
    // B: a raw guest of beta, and a real one, with the same host process.
    let mut b = RawGuest::contact(&d.vm_socket("beta"));
    let relid_b = b.tl_connect(0x7101, 7500);
    let rings_b = b.open(relid_b, 12);
    let (mut b_raw_host, _) = listener.accept().unwrap();
    b_raw_host.set_read_timeout(Some(HANG)).unwrap();
    let mut b_raw = rings_b.stream();
    let guest_b = Guest::connect_daemon_at(&d.socket, "beta").unwrap();
    let b_real = VsockStream::connect(&guest_b, VsockAddr::new(2, 7500)).unwrap();
    let (b_real_host, _) = listener.accept().unwrap();

    // Links join two processes: A's is not B's, nor is its memory.
    assert_ne!(rings_a.link.id, rings_b.link.id);
    rings_a
        .link
        .outgoing_word(LINK_WORDS - 1)
        .store(0xA5A5_A5A5, SeqCst);
    assert_eq!(rings_b.link.outgoing_word(LINK_WORDS - 1).load(SeqCst), 0);
    rings_a.link.outgoing_word(LINK_WORDS - 1).store(0, SeqCst);

    // A floods its link: every bit it may set (B's relids among them), the
    // host's socket nonstop, and it clears the bits the host sets for it.
    let flood = Flood::start(rings_a.link.clone(), true);
    // Meanwhile B's real stream moves 2 MiB each way, checked, and B's raw
    // stream exchanges messages with the host process.
    let host_side = real_transfer(b_real_host, 501, FLOOD_BYTES);
    let guest_side = real_transfer(b_real, 502, FLOOD_BYTES);
    let deadline = Instant::now() + STALL;
    let mut exchanges = 0;
    while !(host_side.is_finished() && guest_side.is_finished()) {
        assert!(Instant::now() < deadline, "B's streams stalled");
        assert_raw_moves_data(
            &mut b_raw,
            &mut b_raw_host,
            "B's raw stream under A's flood",
        );
        exchanges += 1;
    }
    let (host_sent, host_got) = host_side.join().expect("the host side of B");
    let (guest_sent, guest_got) = guest_side.join().expect("B");
    assert_eq!(host_got, (FLOOD_BYTES, guest_sent), "B -> host");
    assert_eq!(guest_got, (FLOOD_BYTES, host_sent), "host -> B");
    let rounds = flood.stop();
    eprintln!("B moved its data under {rounds} rounds of A's flood ({exchanges} raw exchanges)");

    // B's bitmaps hold no bit but its own channel's: A's flood never
    // reached them.
    for w in 0..LINK_WORDS {
        let own = if w == relid_b / 32 {
            1u32 << (relid_b % 32)
        } else {
            0
        };
        let g2h = rings_b.link.outgoing_word(w).load(SeqCst);
        let h2g = rings_b.link.incoming_word(w).load(SeqCst);
        assert_eq!(
            g2h & !own,
            0,
            "word {w} of B's guest -> host bitmap: {g2h:#x}"
        );
        assert_eq!(
            h2g & !own,
            0,
            "word {w} of B's host -> guest bitmap: {h2g:#x}"
        );
    }
    assert_raw_moves_data(&mut b_raw, &mut b_raw_host, "B after A's flood");
    let b_host = b_raw_host.try_clone().unwrap();
    assert_quiet_after_flood(
        &mut b_raw_host,
        |t| b_host.set_read_timeout(Some(t)).unwrap(),
        "B's raw stream on the host",
    );
    drop(rings_a);
}
