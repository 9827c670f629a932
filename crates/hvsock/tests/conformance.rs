//! A conformance suite for hvsock streams, after the stream cases of Linux's
//! `tools/testing/vsock`: connecting to nothing, listen/accept in both
//! directions, many clients, half-close, closing while the peer reads or
//! writes, big transfers with checksums at random sizes, readiness,
//! timeouts and non-blocking operation, ring geometries, backlog. Runs
//! against an embedded host and against a host daemon on real sockets.

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use hvsock::{
    ConnectOptions, Guest, Guid, Host, HvAddr, HvListener, HvStream, VsockAddr, VsockListener,
    VsockStream,
};
use vmbus::daemon::{Daemon, DaemonConfig, EmbeddedHost, ShutdownHandle};

/// Which host the suite runs against.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// In this process, over socket pairs.
    Embedded,
    /// `hvsock host`'s daemon on real sockets in a temporary directory.
    Daemon,
}

enum Backing {
    Embedded(Option<EmbeddedHost>),
    Daemon {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
        stop: ShutdownHandle,
        thread: Option<std::thread::JoinHandle<()>>,
    },
}

/// A host with VM "alpha", a guest of it and a host process.
struct World {
    guest: Guest,
    root: Host,
    vm: Guid,
    backing: Backing,
}

fn world(kind: Kind) -> World {
    let (backing, vm) = match kind {
        Kind::Embedded => {
            let host = EmbeddedHost::start(&[("alpha", None)]).expect("start an embedded host");
            let vm = host.vm_id("alpha").expect("alpha exists");
            (Backing::Embedded(Some(host)), vm)
        }
        Kind::Daemon => {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("hv").join("host.sock");
            let mut config = DaemonConfig::new(&path);
            config.vms.push(("alpha".into(), None));
            let daemon = Daemon::bind(config).expect("bind the daemon");
            let vm = daemon.vms()[0].0.id;
            let stop = daemon.shutdown_handle();
            let thread = std::thread::spawn(move || daemon.run().expect("the daemon runs"));
            (
                Backing::Daemon {
                    _dir: dir,
                    path,
                    stop,
                    thread: Some(thread),
                },
                vm,
            )
        }
    };
    let (guest, root) = match &backing {
        Backing::Embedded(host) => {
            let host = host.as_ref().unwrap();
            (
                Guest::embedded(host, "alpha").expect("join alpha"),
                Host::embedded(host).expect("join as the host"),
            )
        }
        Backing::Daemon { path, .. } => (
            Guest::connect_daemon_at(path, "alpha").expect("join alpha"),
            Host::connect_daemon_at(path).expect("join as the host"),
        ),
    };
    World {
        guest,
        root,
        vm,
        backing,
    }
}

impl World {
    /// Another process of VM alpha.
    fn another_guest(&self) -> Guest {
        match &self.backing {
            Backing::Embedded(host) => Guest::embedded(host.as_ref().unwrap(), "alpha").unwrap(),
            Backing::Daemon { path, .. } => Guest::connect_daemon_at(path, "alpha").unwrap(),
        }
    }

    /// Stops the host (the daemon, or the embedded host's thread).
    fn stop_host(&mut self) {
        match &mut self.backing {
            Backing::Embedded(host) => drop(host.take()),
            Backing::Daemon { stop, thread, .. } => {
                stop.shutdown();
                if let Some(thread) = thread.take() {
                    thread.join().unwrap();
                }
            }
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop_host();
    }
}

/// Runs each scenario against both kinds of host.
macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(#[test] fn $name() { super::$name(super::world(super::Kind::Embedded)) })*
        }
        mod daemon {
            $(#[test] fn $name() { super::$name(super::world(super::Kind::Daemon)) })*
        }
    };
}

scenarios!(
    connecting_to_nothing_is_refused_promptly,
    guest_connects_to_a_host_listener_and_both_talk,
    host_connects_to_a_guest_listener_and_both_talk,
    half_close_each_direction_independently,
    closing_while_the_peer_reads_ends_its_read,
    closing_while_the_peer_writes_fails_its_writes,
    big_transfers_at_random_sizes_both_directions_and_geometries,
    many_clients_at_once,
    nonblocking_reads_and_accepts_and_readiness,
    read_timeouts_expire,
    peek_then_read,
    a_full_backlog_refuses_and_a_closed_listener_is_gone,
    the_same_port_cannot_be_listened_on_twice,
    try_clone_shares_the_stream_and_closes_with_the_last_handle,
    the_host_going_away_resets_streams_and_fails_new_operations,
    tokio_streams_in_both_roles,
    tokio_refusals_half_close_and_big_transfers,
);

fn host_listen(w: &World, port: u32) -> HvListener {
    HvListener::bind(&w.root, HvAddr::from_vsock_port(Guid::ZERO, port)).unwrap()
}

fn guest_connect(w: &World, port: u32) -> VsockStream {
    VsockStream::connect(&w.guest, VsockAddr::new(2, port)).unwrap()
}

fn guest_listen(w: &World, port: u32) -> VsockListener {
    VsockListener::bind(&w.guest, VsockAddr::new(u32::MAX, port)).unwrap()
}

fn host_connect(w: &World, port: u32) -> HvStream {
    HvStream::connect(&w.root, HvAddr::from_vsock_port(w.vm, port)).unwrap()
}

/// A guest-initiated pair: (guest end, host end).
fn guest_to_host(w: &World, port: u32) -> (VsockStream, HvStream) {
    let listener = host_listen(w, port);
    let guest = guest_connect(w, port);
    let (host, _) = listener.accept().unwrap();
    (guest, host)
}

/// A host-initiated pair: (host end, guest end).
fn host_to_guest(w: &World, port: u32) -> (HvStream, VsockStream) {
    let listener = guest_listen(w, port);
    let host = host_connect(w, port);
    let (guest, _) = listener.accept().unwrap();
    (host, guest)
}

fn connecting_to_nothing_is_refused_promptly(w: World) {
    let started = Instant::now();
    let e = VsockStream::connect(&w.guest, VsockAddr::new(2, 9999)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    let e = HvStream::connect(&w.root, HvAddr::from_vsock_port(w.vm, 9999)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    // "Promptly": well before any connect timeout would have fired.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let e = HvStream::connect(
        &w.root,
        HvAddr::from_vsock_port(Guid::from_vsock_port(77), 1),
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let e = VsockStream::connect(&w.guest, VsockAddr::new(5, 1)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AddrNotAvailable, "{e}");
}

fn guest_connects_to_a_host_listener_and_both_talk(w: World) {
    let (mut guest, mut host) = guest_to_host(&w, 5000);
    guest.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    host.write_all(b"pong").unwrap();
    guest.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
    assert_eq!(guest.peer_addr().unwrap(), VsockAddr::new(2, 5000));
    assert_eq!(host.peer_addr().unwrap().vm_id, w.vm);
    assert_eq!(
        host.peer_addr().unwrap().service_id.data1(),
        guest.local_addr().unwrap().port
    );
}

fn host_connects_to_a_guest_listener_and_both_talk(w: World) {
    let (mut host, mut guest) = host_to_guest(&w, 6000);
    host.write_all(b"hello guest").unwrap();
    let mut buf = [0u8; 11];
    guest.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello guest");
    guest.write_all(b"hi").unwrap();
    let mut buf = [0u8; 2];
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hi");
    assert_eq!(guest.local_addr().unwrap().port, 6000);
    assert_eq!(guest.peer_addr().unwrap().cid, 2);
}

fn half_close_each_direction_independently(w: World) {
    for host_first in [false, true] {
        let (mut a, mut b): (Box<dyn ReadWrite>, Box<dyn ReadWrite>) = if host_first {
            let (h, g) = host_to_guest(&w, 6100);
            (Box::new(h), Box::new(g))
        } else {
            let (g, h) = guest_to_host(&w, 6200);
            (Box::new(g), Box::new(h))
        };
        a.write_all(b"request").unwrap();
        a.shutdown_write();
        let mut got = Vec::new();
        b.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"request", "EOF after all data");
        assert_eq!(a.write(b"x").unwrap_err().kind(), ErrorKind::BrokenPipe);
        // The other direction is still open.
        b.write_all(b"response").unwrap();
        b.shutdown_write();
        let mut got = Vec::new();
        a.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"response");
    }
}

trait ReadWrite: Read + Write {
    fn shutdown_write(&self);
}
impl ReadWrite for VsockStream {
    fn shutdown_write(&self) {
        self.shutdown(Shutdown::Write).unwrap();
    }
}
impl ReadWrite for HvStream {
    fn shutdown_write(&self) {
        self.shutdown(Shutdown::Write).unwrap();
    }
}

fn closing_while_the_peer_reads_ends_its_read(w: World) {
    let (guest, host) = guest_to_host(&w, 6300);
    let reader = std::thread::spawn(move || {
        let mut host = host;
        let mut buf = Vec::new();
        host.read_to_end(&mut buf).map(|_| buf)
    });
    std::thread::sleep(Duration::from_millis(50));
    (&guest).write_all(b"bye").unwrap();
    drop(guest);
    assert_eq!(reader.join().unwrap().unwrap(), b"bye");

    let (host, guest) = host_to_guest(&w, 6400);
    let reader = std::thread::spawn(move || {
        let mut guest = guest;
        let mut buf = Vec::new();
        guest.read_to_end(&mut buf).map(|_| buf)
    });
    std::thread::sleep(Duration::from_millis(50));
    drop(host);
    assert_eq!(reader.join().unwrap().unwrap(), b"");
}

fn closing_while_the_peer_writes_fails_its_writes(w: World) {
    let (guest, host) = guest_to_host(&w, 6500);
    let writer = std::thread::spawn(move || {
        let mut guest = guest;
        let chunk = vec![0u8; 65536];
        loop {
            if let Err(e) = guest.write_all(&chunk) {
                return e;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(50));
    drop(host);
    let e = writer.join().unwrap();
    assert!(
        matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset),
        "{e}"
    );
}

/// Moves `total` bytes each way at random write and read sizes up to
/// `max`, checking every byte.
fn transfer<A, B>(mut a: A, mut b: B, total: usize, max: usize, seed: u64)
where
    A: Read + Write + Send + 'static,
    B: Read + Write + Send + 'static,
    for<'x> &'x A: Read + Write,
    for<'x> &'x B: Read + Write,
{
    let data = pattern(total, seed);
    let expected = data.clone();
    let send = std::thread::spawn(move || {
        let mut rng = seed;
        let mut at = 0;
        while at < data.len() {
            let n = (1 + next(&mut rng) as usize % max).min(data.len() - at);
            a.write_all(&data[at..at + n]).unwrap();
            at += n;
        }
        a
    });
    let mut rng = seed ^ 0xabc;
    let mut got = vec![0u8; total];
    let mut at = 0;
    while at < total {
        let n = (1 + next(&mut rng) as usize % max).min(total - at);
        let read = b.read(&mut got[at..at + n]).unwrap();
        assert!(read > 0, "early end of stream at {at}");
        at += read;
    }
    send.join().unwrap();
    assert!(got == expected, "the stream arrived damaged");
}

fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len).map(|_| next(&mut state) as u8).collect()
}

fn big_transfers_at_random_sizes_both_directions_and_geometries(w: World) {
    let total = if cfg!(debug_assertions) {
        8 << 20
    } else {
        64 << 20
    };
    let (g, h) = guest_to_host(&w, 7000);
    transfer(g, h, total, 1 << 20, 1);
    let (g, h) = guest_to_host(&w, 7001);
    transfer(h, g, total, 1 << 20, 2);
    let (h, g) = host_to_guest(&w, 7002);
    transfer(h, g, total, 4096, 3);
    let (h, g) = host_to_guest(&w, 7003);
    transfer(g, h, total, 100, 4);
    // The seed's 6-page rings.
    let listener = host_listen(&w, 7004);
    let g = VsockStream::connect_with(&w.guest, VsockAddr::new(2, 7004), &ConnectOptions::seed())
        .unwrap();
    let (h, _) = listener.accept().unwrap();
    transfer(g, h, total / 4, 1 << 20, 5);
}

fn many_clients_at_once(w: World) {
    let listener = host_listen(&w, 7100);
    let server = std::thread::spawn(move || {
        let mut threads = Vec::new();
        for _ in 0..50 {
            let (stream, _) = listener.accept().unwrap();
            threads.push(std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = Vec::new();
                (&stream).read_to_end(&mut buf).unwrap();
                stream.write_all(&buf).unwrap();
            }));
        }
        for t in threads {
            t.join().unwrap();
        }
    });
    let clients: Vec<_> = (0..50u64)
        .map(|i| {
            let guest = w.guest.clone();
            std::thread::spawn(move || {
                let mut s = VsockStream::connect(&guest, VsockAddr::new(2, 7100)).unwrap();
                let data = pattern(10_000 + i as usize * 100, i);
                s.write_all(&data).unwrap();
                s.shutdown(Shutdown::Write).unwrap();
                let mut back = Vec::new();
                s.read_to_end(&mut back).unwrap();
                assert!(back == data);
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    server.join().unwrap();
}

fn nonblocking_reads_and_accepts_and_readiness(w: World) {
    use rustix::event::{poll, PollFd, PollFlags};
    let listener = host_listen(&w, 7200);
    listener.set_nonblocking(true).unwrap();
    assert_eq!(listener.accept().unwrap_err().kind(), ErrorKind::WouldBlock);
    let mut g = guest_connect(&w, 7200);
    let mut fds = [PollFd::new(&listener, PollFlags::IN)];
    poll(&mut fds, None).unwrap();
    let (mut h, _) = listener.accept().unwrap();
    h.set_nonblocking(true).unwrap();
    let ready = h.readiness_fd().unwrap().try_clone_to_owned().unwrap();
    let mut buf = [0u8; 16];
    // The attempt takes the first readiness signal (a new descriptor is
    // readable once); after it nothing is pending until the peer writes.
    assert_eq!(h.read(&mut buf).unwrap_err().kind(), ErrorKind::WouldBlock);
    let mut fds = [PollFd::new(&ready, PollFlags::IN)];
    assert_eq!(
        poll(&mut fds, Some(&rustix::event::Timespec::default())).unwrap(),
        0
    );
    g.write_all(b"wake").unwrap();
    let mut fds = [PollFd::new(&ready, PollFlags::IN)];
    poll(&mut fds, None).unwrap();
    assert_eq!(h.read(&mut buf).unwrap(), 4);
    assert_eq!(h.read(&mut buf).unwrap_err().kind(), ErrorKind::WouldBlock);
}

fn read_timeouts_expire(w: World) {
    let (g, _h) = guest_to_host(&w, 7300);
    g.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let e = (&g).read(&mut [0u8; 4]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TimedOut);
    assert!(g.set_read_timeout(Some(Duration::ZERO)).is_err());
    // As a socket's: shared by clones, read back as set, each direction its own.
    let clone = g.try_clone().unwrap();
    assert_eq!(
        clone.read_timeout().unwrap(),
        Some(Duration::from_millis(50))
    );
    assert_eq!(clone.write_timeout().unwrap(), None);
    clone
        .set_write_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    assert_eq!(g.write_timeout().unwrap(), Some(Duration::from_secs(3)));
    g.set_read_timeout(None).unwrap();
    assert_eq!(clone.read_timeout().unwrap(), None);
    assert_eq!(g.write_timeout().unwrap(), Some(Duration::from_secs(3)));
}

fn peek_then_read(w: World) {
    let (mut h, g) = host_to_guest(&w, 7400);
    h.write_all(b"peekaboo").unwrap();
    let mut buf = [0u8; 4];
    assert_eq!(g.peek(&mut buf).unwrap(), 4);
    assert_eq!(&buf, b"peek");
    let mut all = [0u8; 8];
    (&g).read_exact(&mut all).unwrap();
    assert_eq!(&all, b"peekaboo");
}

fn a_full_backlog_refuses_and_a_closed_listener_is_gone(w: World) {
    let listener = VsockListener::bind_with(
        &w.guest,
        VsockAddr::new(u32::MAX, 7500),
        2,
        &ConnectOptions::default(),
    )
    .unwrap();
    let _a = host_connect(&w, 7500);
    let _b = host_connect(&w, 7500);
    let e = HvStream::connect(&w.root, HvAddr::from_vsock_port(w.vm, 7500)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    listener.accept().unwrap();
    let _c = host_connect(&w, 7500);
    drop(listener);
    let e = HvStream::connect(&w.root, HvAddr::from_vsock_port(w.vm, 7500)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
}

fn the_same_port_cannot_be_listened_on_twice(w: World) {
    let _l = guest_listen(&w, 7600);
    let e = VsockListener::bind(&w.guest, VsockAddr::new(u32::MAX, 7600)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AddrInUse);
    let other = w.another_guest();
    let e = VsockListener::bind(&other, VsockAddr::new(u32::MAX, 7600)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AddrInUse, "another process of the VM");
    let _h = host_listen(&w, 7600);
    let e = HvListener::bind(&w.root, HvAddr::from_vsock_port(Guid::ZERO, 7600)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AddrInUse);
}

fn try_clone_shares_the_stream_and_closes_with_the_last_handle(w: World) {
    let (g, mut h) = guest_to_host(&w, 7700);
    let g2 = g.try_clone().unwrap();
    drop(g);
    (&g2).write_all(b"still here").unwrap();
    drop(g2);
    let mut got = Vec::new();
    h.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"still here");
}

fn the_host_going_away_resets_streams_and_fails_new_operations(mut w: World) {
    let listener = host_listen(&w, 8000);
    let g = guest_connect(&w, 8000);
    let (_h, _) = listener.accept().unwrap();
    w.stop_host();
    let e = (&g).read(&mut [0u8; 4]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
    let e = VsockStream::connect(&w.guest, VsockAddr::new(2, 8000)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotConnected, "{e}");
}

fn tokio_streams_in_both_roles(w: World) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Guest connects to the host; echo through split halves.
        let listener =
            hvsock::tokio::HvListener::bind(&w.root, HvAddr::from_vsock_port(Guid::ZERO, 9000))
                .await
                .unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (mut r, mut wr) = stream.into_split();
            tokio::io::copy(&mut r, &mut wr).await.unwrap();
            wr.shutdown().await.unwrap();
        });
        let mut s = hvsock::tokio::VsockStream::connect(&w.guest, VsockAddr::new(2, 9000))
            .await
            .unwrap();
        let data = pattern(3 << 20, 9);
        let (mut r, mut wr) = s.split();
        let expected = data.clone();
        let writer = tokio::spawn(async move {
            wr.write_all(&data).await.unwrap();
            wr.shutdown().await.unwrap();
        });
        let mut back = Vec::new();
        r.read_to_end(&mut back).await.unwrap();
        writer.await.unwrap();
        server.await.unwrap();
        assert!(back == expected);

        // Host connects to the guest.
        let listener = hvsock::tokio::VsockListener::bind(&w.guest, VsockAddr::new(u32::MAX, 9001))
            .await
            .unwrap();
        let vm = w.vm;
        let root = w.root.clone();
        let client = tokio::spawn(async move {
            let mut s = hvsock::tokio::HvStream::connect(&root, HvAddr::from_vsock_port(vm, 9001))
                .await
                .unwrap();
            s.write_all(b"async hello").await.unwrap();
            s.shutdown().await.unwrap();
            let mut reply = Vec::new();
            s.read_to_end(&mut reply).await.unwrap();
            reply
        });
        let (mut g, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        g.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"async hello");
        g.write_all(b"async reply").await.unwrap();
        g.shutdown().await.unwrap();
        drop(g);
        assert_eq!(client.await.unwrap(), b"async reply");
    });
}

/// Channels the host still knows of.
fn channels(host: &EmbeddedHost) -> usize {
    use vmbus::ext::{ExtEvent, ExtRequest};
    let socket = host.connect(vmbus::ext::Partition::Root).unwrap();
    match vmbus::daemon::control::request(&socket, &ExtRequest::Stat).unwrap() {
        ExtEvent::Stat { report } => report.channels.len(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_closed_guest_stream_is_released_after_eight_seconds_if_the_host_keeps_it() {
    let host = EmbeddedHost::start(&[("alpha", None)]).unwrap();
    let guest = Guest::embedded(&host, "alpha").unwrap();
    let root = Host::embedded(&host).unwrap();
    let listener = HvListener::bind(&root, HvAddr::from_vsock_port(Guid::ZERO, 8100)).unwrap();
    let mut g = VsockStream::connect(&guest, VsockAddr::new(2, 8100)).unwrap();
    let (mut h, _) = listener.accept().unwrap();
    g.write_all(b"last").unwrap();
    // Dropping sends the FIN and returns; the channel stays open for the
    // host, which reads everything and the end of the stream.
    drop(g);
    let mut got = Vec::new();
    h.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"last");
    assert_eq!(channels(&host), 1, "the guest waits for the host's rescind");
    // The host never closes: after 8 s the guest closes the channel itself,
    // and the host's writes fail.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match h.write(b"x") {
            Ok(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Ok(_) => panic!("the guest never released the channel"),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::BrokenPipe, "{e}");
                break;
            }
        }
    }
    drop(h);
    let deadline = Instant::now() + Duration::from_secs(10);
    while channels(&host) != 0 {
        assert!(Instant::now() < deadline, "the relid was never released");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_host_close_releases_the_channel_at_once() {
    let host = EmbeddedHost::start(&[("alpha", None)]).unwrap();
    let guest = Guest::embedded(&host, "alpha").unwrap();
    let root = Host::embedded(&host).unwrap();
    let listener = VsockListener::bind(&guest, VsockAddr::new(u32::MAX, 8200)).unwrap();
    let h = HvStream::connect(
        &root,
        HvAddr::from_vsock_port(host.vm_id("alpha").unwrap(), 8200),
    )
    .unwrap();
    let (g, _) = listener.accept().unwrap();
    drop(h);
    drop(g);
    // Rescind, close and release need only the messages to pass.
    let deadline = Instant::now() + Duration::from_secs(5);
    while channels(&host) != 0 {
        assert!(Instant::now() < deadline, "the channel was not released");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn tokio_refusals_half_close_and_big_transfers(w: World) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Connecting to nothing is refused at once, in both roles.
        let e = hvsock::tokio::VsockStream::connect(&w.guest, VsockAddr::new(2, 9100))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
        let e = hvsock::tokio::HvStream::connect(&w.root, HvAddr::from_vsock_port(w.vm, 9100))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");

        // Half-close and a big transfer at random write and read sizes, host
        // to guest; the guest answers after reading to the end.
        let listener = hvsock::tokio::VsockListener::bind(&w.guest, VsockAddr::new(u32::MAX, 9101))
            .await
            .unwrap();
        let data = pattern(6 << 20, 11);
        let expected = data.clone();
        let vm = w.vm;
        let root = w.root.clone();
        let client = tokio::spawn(async move {
            let s = hvsock::tokio::HvStream::connect(&root, HvAddr::from_vsock_port(vm, 9101))
                .await
                .unwrap();
            let (mut r, mut wr) = s.into_split();
            let mut rng = 5u64;
            let mut at = 0;
            while at < data.len() {
                let n = (1 + next(&mut rng) as usize % 300_000).min(data.len() - at);
                wr.write_all(&data[at..at + n]).await.unwrap();
                at += n;
            }
            wr.shutdown().await.unwrap();
            let mut reply = Vec::new();
            r.read_to_end(&mut reply).await.unwrap();
            reply
        });
        let (mut g, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        let mut rng = 6u64;
        loop {
            let mut buf = vec![0u8; 1 + next(&mut rng) as usize % 100_000];
            let n = g.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got == expected, "the stream arrived damaged");
        // Our direction is still open after the peer's FIN.
        g.write_all(b"done").await.unwrap();
        g.shutdown().await.unwrap();
        drop(g);
        assert_eq!(client.await.unwrap(), b"done");

        // A read that never completes is cancelled by a timeout, and the
        // stream still works afterwards.
        let listener =
            hvsock::tokio::HvListener::bind(&w.root, HvAddr::from_vsock_port(Guid::ZERO, 9102))
                .await
                .unwrap();
        let mut g = hvsock::tokio::VsockStream::connect(&w.guest, VsockAddr::new(2, 9102))
            .await
            .unwrap();
        let (mut h, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4];
        let timed_out = tokio::time::timeout(Duration::from_millis(50), h.read(&mut buf)).await;
        assert!(timed_out.is_err(), "nothing was sent");
        g.write_all(b"late").await.unwrap();
        h.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"late");
    });
}
