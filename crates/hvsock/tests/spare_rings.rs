//! Spare rings: a guest endpoint makes the next offer's ring memory ahead
//! (after an open is sent), in the geometry it last used, and takes it for
//! an offer only if the geometry matches (`endpoint.rs`, `guest_offer` and
//! `make_spare_rings`). What must hold whatever the spare does:
//!
//! - every connection gets its own fresh memory, never another
//!   connection's: zeroed data areas, ring indices and byte counters at
//!   zero, a memfd never seen before, nothing of an earlier connection's
//!   stream showing up;
//! - every connection gets the ring geometry it asked for, not the spare's;
//! - connections one after another neither leak nor grow descriptors or
//!   ring mappings.
//!
//! The host daemon runs in a child process (as in `descriptors.rs`), so
//! that `/proc/self` counts only the endpoints of this process. The host
//! side is either a real host endpoint (`Host`) or a raw one
//! ([`RawHost`]) that receives the ring memfd and looks at the memory
//! exactly as the guest handed it over.

mod common;

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use common::*;
use hvsock::{
    ConnectOptions, Guest, Guid, Host, HvAddr, HvListener, HvStream, VsockAddr, VsockListener,
    VsockStream,
};
use hvsock_shm::PAGE_SIZE;
use vmbus::ext::{ExtRequest, RingLayout, BYTES_WRITTEN_OFFSET};

// ---- the daemon, in a child process ---------------------------------------

const ROLE: &str = "HVSOCK_SPARE_RINGS_DAEMON";

/// The entry point of the daemon child; does nothing in a normal run.
#[test]
fn daemon_child() {
    daemon_child_entry(ROLE);
}

fn options(pages: (u32, u32)) -> ConnectOptions {
    ConnectOptions {
        timeout: HANG,
        ring_pages: pages,
    }
}

fn set_timeouts(s: &(impl TimeoutsExt + ?Sized)) {
    s.timeouts(HANG);
}

/// Both stream types: read and write timeouts, non-blocking mode.
trait TimeoutsExt {
    fn timeouts(&self, d: Duration);
    fn nonblocking(&self, on: bool);
}

macro_rules! timeouts_ext {
    ($t:ty) => {
        impl TimeoutsExt for $t {
            fn timeouts(&self, d: Duration) {
                self.set_read_timeout(Some(d)).unwrap();
                self.set_write_timeout(Some(d)).unwrap();
            }
            fn nonblocking(&self, on: bool) {
                self.set_nonblocking(on).unwrap();
            }
        }
    };
}
timeouts_ext!(VsockStream);
timeouts_ext!(HvStream);

// ---- the raw host's view of a guest's rings ---------------------------------

/// A connection as the raw host sees it: its id, the memfd's inode and
/// size as received, and the rings mapped.
struct Viewed {
    conn: u64,
    inode: u64,
    size: u64,
    rings: Rings,
}

/// Maps the ring memfd of a connection after noting its inode and size.
#[track_caller]
fn view(
    host: &RawHost,
    conn: u64,
    fds: Vec<OwnedFd>,
    layout: RingLayout,
    relid: u32,
    link: u64,
) -> Viewed {
    let [memfd]: [OwnedFd; 1] = fds.try_into().expect("a connection carries one memfd");
    let stat = rustix::fs::fstat(&memfd).unwrap();
    let link = host.links.get(&link).cloned().expect("the link came first");
    Viewed {
        conn,
        inode: stat.st_ino,
        size: stat.st_size as u64,
        rings: host_rings(memfd, layout, link, relid),
    }
}

/// The next guest connection to a raw host's listener.
#[track_caller]
fn raw_incoming(host: &mut RawHost) -> Viewed {
    let c = host.next_incoming();
    view(host, c.conn, c.fds, c.layout, c.relid, c.link)
}

/// A raw host's connection to a guest's listener on `port`.
#[track_caller]
fn raw_connect(host: &mut RawHost, port: u32, request: u64) -> Viewed {
    let c = host.request_connect("alpha", port, request);
    view(host, c.conn, c.fds, c.layout, c.relid, c.link)
}

/// Asserts that the memory the guest handed over is what it asked for:
/// `pages` (guest → host, host → guest) in the layout and in the memfd's
/// size.
#[track_caller]
fn assert_geometry(v: &Viewed, pages: (u32, u32), tag: &str) {
    let wanted = RingLayout {
        total_pages: pages.0 + pages.1,
        guest_to_host_pages: pages.0,
    };
    assert_eq!(
        (
            v.rings.layout.total_pages,
            v.rings.layout.guest_to_host_pages
        ),
        (wanted.total_pages, wanted.guest_to_host_pages),
        "{tag}: the guest asked for rings of {pages:?} pages (layout: total, guest to host)"
    );
    assert_eq!(
        v.size,
        u64::from(wanted.total_pages) * PAGE_SIZE as u64,
        "{tag}: the memfd's size is not that of {pages:?} pages"
    );
}

/// Asserts that both rings are as a fresh guest makes them: write and read
/// indices 0, byte counter 0, data area all zero.
#[track_caller]
fn assert_fresh(v: &Viewed, tag: &str) {
    let r = &v.rings;
    for (name, ring) in [("guest to host", r.rx), ("host to guest", r.tx)] {
        assert_eq!(r.word(ring, 0), 0, "{tag}: {name} write index");
        assert_eq!(r.word(ring, 4), 0, "{tag}: {name} read index");
        let mut counter = [0u8; 8];
        r.mapping
            .read(ring.control + BYTES_WRITTEN_OFFSET, &mut counter)
            .unwrap();
        assert_eq!(u64::from_le_bytes(counter), 0, "{tag}: {name} byte counter");
        let mut data = vec![0u8; ring.data_size as usize];
        r.mapping.read(ring.control + PAGE_SIZE, &mut data).unwrap();
        if let Some(at) = data.iter().position(|&b| b != 0) {
            panic!(
                "{tag}: the {name} data area of a new connection is not zeroed: byte {at} is \
                 {:#04x} (memory of an earlier connection?)",
                data[at]
            );
        }
    }
}

/// Writes all of `data` on a raw stream, waiting on its link.
#[track_caller]
fn raw_write_all(raw: &mut RawStream, data: &[u8], tag: &str) {
    let deadline = Instant::now() + HANG;
    let mut sent = 0;
    while sent < data.len() {
        sent += raw.try_write(&data[sent..]);
        if sent < data.len() {
            assert!(
                Instant::now() < deadline,
                "{tag}: the raw host cannot write"
            );
            raw.link.wait(Duration::from_millis(10));
        }
    }
}

/// Reads exactly `len` bytes from a raw stream, waiting on its link.
#[track_caller]
fn raw_read_exact(raw: &mut RawStream, len: usize, tag: &str) -> Vec<u8> {
    let deadline = Instant::now() + HANG;
    let mut got = Vec::with_capacity(len);
    let mut chunk = vec![0u8; 4096];
    while got.len() < len {
        let want = (len - got.len()).min(chunk.len());
        match raw.try_read(&mut chunk[..want]) {
            Some(0) => panic!("{tag}: the raw host saw the end of the stream"),
            Some(n) => got.extend_from_slice(&chunk[..n]),
            None => {
                assert!(
                    Instant::now() < deadline,
                    "{tag}: nothing came to the raw host"
                );
                raw.link.wait(Duration::from_millis(10));
            }
        }
    }
    got
}

/// `len` bytes that say which connection and direction they belong to.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v
}

/// Bytes moved each way on each connection of the raw-host tests; smaller
/// than the smallest ring used with them, so that a write never waits for
/// the other side.
const RAW_KIB: usize = 6 * 1024;

/// Bytes left unread in each ring when a connection closes.
const STALE: usize = 777;

/// On a connection the raw host sees: checks that it is fresh and of
/// `pages`, that its memfd is new, moves [`RAW_KIB`] each way, then leaves
/// [`STALE`] bytes unread each way and closes it. The caller keeps `v`
/// mapped, so that the memory stays allocated (its inode taken, the stale
/// bytes in it) while later connections open.
#[track_caller]
fn raw_cycle(
    host: &RawHost,
    guest_end: &mut VsockStream,
    v: &Viewed,
    pages: (u32, u32),
    inodes: &mut HashSet<u64>,
    seed: u64,
    tag: &str,
) {
    assert_geometry(v, pages, tag);
    assert_fresh(v, tag);
    assert!(
        inodes.insert(v.inode),
        "{tag}: the guest handed over a memfd (inode {}) that an earlier connection had",
        v.inode
    );
    assert_eq!(guest_end.bytes_written(), 0, "{tag}: guest byte count");
    set_timeouts(guest_end);

    let mut raw = v.rings.stream();
    let up = pattern(RAW_KIB, seed);
    guest_end.write_all(&up).unwrap();
    assert!(
        raw_read_exact(&mut raw, RAW_KIB, tag) == up,
        "{tag}: the raw host read other bytes than the guest wrote"
    );
    let down = pattern(RAW_KIB, seed ^ 0xdead_beef);
    raw_write_all(&mut raw, &down, tag);
    let mut got = vec![0u8; RAW_KIB];
    guest_end.read_exact(&mut got).unwrap();
    assert!(
        got == down,
        "{tag}: the guest read other bytes than the host wrote"
    );
    assert_eq!(guest_end.bytes_written(), RAW_KIB as u64, "{tag}");

    // Leave unread bytes in both rings: a later connection on this memory
    // would find them.
    guest_end.write_all(&[0xa5; STALE]).unwrap();
    raw_write_all(&mut raw, &[0x5a; STALE], tag);
    // Wait until the guest's bytes are visibly in the ring (so that they
    // would be there for a connection that reused it).
    let deadline = Instant::now() + HANG;
    while v.rings.word(v.rings.rx, 0) == v.rings.word(v.rings.rx, 4) {
        assert!(
            Instant::now() < deadline,
            "{tag}: the guest's last bytes never came"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    send_ext(&host.sock, &ExtRequest::HostClose { conn: v.conn });
}

#[test]
fn consecutive_guest_connects_each_get_fresh_zeroed_memory_of_their_geometry() {
    let _serial = serial();
    let daemon = ChildDaemon::start_in_temp(ROLE);
    let guest = Guest::connect_daemon_at(daemon.socket(), "alpha").unwrap();
    let mut host = RawHost::connect(daemon.socket());
    host.listen(7000);
    let mut inodes = HashSet::new();
    // Keep every view: the memory of every earlier connection stays
    // allocated, with the stale bytes in it, while the later ones open.
    let mut kept = Vec::new();
    for i in 0..6u64 {
        let pages = (10, 12);
        let tag = format!("guest connect {i}");
        let mut g =
            VsockStream::connect_with(&guest, VsockAddr::new(2, 7000), &options(pages)).unwrap();
        let v = raw_incoming(&mut host);
        raw_cycle(&host, &mut g, &v, pages, &mut inodes, 100 + i, &tag);
        drop(g);
        kept.push(v);
    }
}

#[test]
fn consecutive_host_connects_to_a_guest_listener_each_get_fresh_zeroed_memory() {
    let _serial = serial();
    let daemon = ChildDaemon::start_in_temp(ROLE);
    let guest = Guest::connect_daemon_at(daemon.socket(), "alpha").unwrap();
    let pages = (12, 9);
    let listener =
        VsockListener::bind_with(&guest, VsockAddr::new(u32::MAX, 7100), 8, &options(pages))
            .unwrap();
    let mut host = RawHost::connect(daemon.socket());
    let mut inodes = HashSet::new();
    let mut kept = Vec::new();
    for i in 0..6u64 {
        let tag = format!("host connect {i}");
        let v = raw_connect(&mut host, 7100, i + 1);
        let (mut g, _) = listener.accept().unwrap();
        raw_cycle(&host, &mut g, &v, pages, &mut inodes, 200 + i, &tag);
        drop(g);
        kept.push(v);
    }
}

// ---- real endpoints on both sides -------------------------------------------

/// A connected pair, one way or the other.
struct Pair {
    g: VsockStream,
    h: HvStream,
}

/// How a pair is made.
#[derive(Debug, Clone, Copy)]
enum Direction {
    /// The guest connects to the host's listener.
    GuestConnects,
    /// The host connects to the guest's listener.
    HostConnects,
}

/// Both endpoints and a listener each side, with the guest's listeners in
/// the geometries they were bound with.
struct Endpoints {
    guest: Guest,
    root: Host,
    host_listener: HvListener,
    host_port: u32,
    guest_listeners: Vec<((u32, u32), u32, VsockListener)>,
}

impl Endpoints {
    fn new(daemon: &ChildDaemon, host_port: u32) -> Endpoints {
        let root = Host::connect_daemon_at(daemon.socket()).unwrap();
        let guest = Guest::connect_daemon_at(daemon.socket(), "alpha").unwrap();
        let host_listener =
            HvListener::bind(&root, HvAddr::from_vsock_port(Guid::ZERO, host_port)).unwrap();
        Endpoints {
            guest,
            root,
            host_listener,
            host_port,
            guest_listeners: Vec::new(),
        }
    }

    /// The port of the guest's listener for rings of `pages`, bound now if
    /// there is none yet.
    fn listen(&mut self, pages: (u32, u32)) -> u32 {
        if let Some((_, port, _)) = self.guest_listeners.iter().find(|(p, _, _)| *p == pages) {
            return *port;
        }
        let port = self.host_port + 1 + self.guest_listeners.len() as u32;
        let listener = VsockListener::bind_with(
            &self.guest,
            VsockAddr::new(u32::MAX, port),
            8,
            &options(pages),
        )
        .unwrap();
        self.guest_listeners.push((pages, port, listener));
        port
    }

    /// A new connection with rings of `pages`, made as `direction` says.
    fn connect(&mut self, direction: Direction, pages: (u32, u32)) -> Pair {
        let (g, h) = match direction {
            Direction::GuestConnects => {
                let g = VsockStream::connect_with(
                    &self.guest,
                    VsockAddr::new(2, self.host_port),
                    &options(pages),
                )
                .unwrap();
                (g, self.host_listener.accept().unwrap().0)
            }
            Direction::HostConnects => {
                let port = self.listen(pages);
                let h = HvStream::connect_by_name(
                    &self.root,
                    "alpha",
                    Guid::from_vsock_port(port),
                    HANG,
                )
                .unwrap();
                let listener = &self
                    .guest_listeners
                    .iter()
                    .find(|(_, p, _)| *p == port)
                    .unwrap()
                    .2;
                (listener.accept().unwrap().0, h)
            }
        };
        set_timeouts(&g);
        set_timeouts(&h);
        Pair { g, h }
    }
}

/// Whether a non-blocking read finds nothing: no byte of an earlier
/// connection (or any other) is waiting on a new one.
#[track_caller]
fn assert_nothing_to_read(s: &mut (impl Read + TimeoutsExt), tag: &str) {
    s.nonblocking(true);
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("{tag}: a new connection has something to read: {other:?}"),
    }
    s.nonblocking(false);
}

/// Reads exactly `len` bytes; their checksum.
fn recv_sum(r: &mut impl Read, len: usize) -> std::io::Result<u64> {
    let mut sum = Fnv::default();
    let mut buf = vec![0u8; 8192];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        r.read_exact(&mut buf[..n])?;
        sum.update(&buf[..n]);
        left -= n;
    }
    Ok(sum.0)
}

/// Checks that a new pair is fresh (nothing to read, nothing counted),
/// moves `len` seeded bytes each way at once (more than a small ring
/// holds), checks them, then leaves [`STALE`] bytes unread each way.
#[track_caller]
fn fresh_exchange(pair: &mut Pair, len: usize, seed: u64, tag: &str) {
    assert_eq!(pair.g.bytes_written(), 0, "{tag}: guest byte count");
    assert_eq!(pair.h.bytes_written(), 0, "{tag}: host byte count");
    assert_nothing_to_read(&mut pair.g, &format!("{tag} (guest end)"));
    assert_nothing_to_read(&mut pair.h, &format!("{tag} (host end)"));
    let (g, h) = (&pair.g, &pair.h);
    let (up, down) = std::thread::scope(|s| {
        let gw = s.spawn(move || send_random(&mut &*g, seed, len));
        let hw = s.spawn(move || send_random(&mut &*h, seed + 1, len));
        let gr = s.spawn(move || recv_sum(&mut &*g, len));
        let up_got = recv_sum(&mut &*h, len).expect("the host reads");
        let down_got = gr.join().unwrap().expect("the guest reads");
        let up_sent = gw.join().unwrap().expect("the guest writes");
        let down_sent = hw.join().unwrap().expect("the host writes");
        ((up_sent, up_got), (down_sent, down_got))
    });
    assert_eq!(up.0, up.1, "{tag}: guest to host, checksums");
    assert_eq!(down.0, down.1, "{tag}: host to guest, checksums");
    assert_eq!(pair.g.bytes_written(), len as u64, "{tag}");
    assert_eq!(pair.h.bytes_written(), len as u64, "{tag}");
    pair.g.write_all(&[0xa5; STALE]).unwrap();
    pair.h.write_all(&[0x5a; STALE]).unwrap();
}

#[test]
fn consecutive_real_connections_both_ways_are_fresh_and_move_data() {
    let _serial = serial();
    let daemon = ChildDaemon::start_in_temp(ROLE);
    let mut ends = Endpoints::new(&daemon, 7200);
    for i in 0..4u64 {
        for (d, direction) in [Direction::GuestConnects, Direction::HostConnects]
            .into_iter()
            .enumerate()
        {
            let tag = format!("{direction:?} {i}");
            let mut pair = ends.connect(direction, (6, 8));
            // 48 KiB each way: more than twice what these rings hold.
            fresh_exchange(&mut pair, 48 * 1024, 1000 + 10 * i + d as u64, &tag);
        }
    }
}

// ---- geometry -----------------------------------------------------------

/// What fits in the ring `writer` writes while nobody reads it: written
/// non-blocking until `WouldBlock`.
fn fill(writer: &mut (impl Write + TimeoutsExt)) -> usize {
    writer.nonblocking(true);
    // Large writes, so that packets are as large as the writer makes them
    // and their headers a small part of the ring.
    let chunk = vec![0x33u8; 64 * 1024];
    let mut total = 0;
    loop {
        match writer.write(&chunk) {
            Ok(n) => total += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("filling a ring: {e}"),
        }
        assert!(total < 1 << 20, "a ring took more than 1 MiB");
    }
    writer.nonblocking(false);
    total
}

/// Asserts that what fit in a ring (see [`fill`]) is what a ring of `pages`
/// pages holds: its data area (`pages - 1` pages) less packet headers, so
/// more than `pages - 2` pages.
#[track_caller]
fn assert_holds(fit: usize, pages: u32, tag: &str) {
    let data = (pages as usize - 1) * PAGE_SIZE;
    assert!(
        fit <= data && fit > data - PAGE_SIZE,
        "{tag}: {fit} bytes fit in a ring that should be {pages} pages ({data} bytes of data)"
    );
}

#[test]
fn a_new_geometry_is_used_after_connections_in_another_raw_view() {
    let _serial = serial();
    let daemon = ChildDaemon::start_in_temp(ROLE);
    let guest = Guest::connect_daemon_at(daemon.socket(), "alpha").unwrap();
    let mut host = RawHost::connect(daemon.socket());
    host.listen(7300);
    let mut inodes = HashSet::new();
    let mut kept = Vec::new();
    // Twice the same geometry, so that a spare of it is made and taken;
    // then others, including the same total split the other way round.
    let sequence = [
        (8, 8),
        (8, 8),
        (20, 9),
        (9, 20),
        (9, 20),
        (8, 8),
        (6, 64),
        (64, 6),
    ];
    for (i, pages) in sequence.into_iter().enumerate() {
        let tag = format!("guest connect {i} with {pages:?} pages");
        let mut g =
            VsockStream::connect_with(&guest, VsockAddr::new(2, 7300), &options(pages)).unwrap();
        let v = raw_incoming(&mut host);
        raw_cycle(&host, &mut g, &v, pages, &mut inodes, 300 + i as u64, &tag);
        drop(g);
        kept.push(v);
    }
    // Listeners in other geometries, the last connect's spare waiting.
    for (i, pages) in [(30, 7), (7, 30), (64, 6)].into_iter().enumerate() {
        let port = 7301 + i as u32;
        let tag = format!("host connect to a listener with {pages:?} pages");
        let listener =
            VsockListener::bind_with(&guest, VsockAddr::new(u32::MAX, port), 8, &options(pages))
                .unwrap();
        for j in 0..2 {
            let v = raw_connect(&mut host, port, 10 * i as u64 + j + 1);
            let (mut g, _) = listener.accept().unwrap();
            let seed = 400 + 10 * i as u64 + j;
            raw_cycle(&host, &mut g, &v, pages, &mut inodes, seed, &tag);
            drop(g);
            kept.push(v);
        }
    }
}

#[test]
fn a_new_geometry_is_used_after_connections_in_another_real_capacity() {
    let _serial = serial();
    let daemon = ChildDaemon::start_in_temp(ROLE);
    let mut ends = Endpoints::new(&daemon, 7400);
    let sequence = [
        (Direction::GuestConnects, (6, 6)),
        (Direction::GuestConnects, (6, 6)),
        (Direction::GuestConnects, (24, 12)),
        (Direction::GuestConnects, (12, 24)),
        (Direction::HostConnects, (12, 24)),
        (Direction::HostConnects, (6, 6)),
        (Direction::HostConnects, (40, 7)),
        (Direction::GuestConnects, (6, 6)),
    ];
    for (i, (direction, pages)) in sequence.into_iter().enumerate() {
        let tag = format!("{direction:?} {i} with {pages:?} pages");
        let mut pair = ends.connect(direction, pages);
        assert_nothing_to_read(&mut pair.g, &tag);
        assert_nothing_to_read(&mut pair.h, &tag);
        let up = fill(&mut pair.g);
        let down = fill(&mut pair.h);
        eprintln!("{tag}: {up} bytes fit guest to host, {down} host to guest");
        assert_holds(up, pages.0, &format!("{tag}, guest to host"));
        assert_holds(down, pages.1, &format!("{tag}, host to guest"));
        // Drain both, so that each side sees every byte, and close.
        recv_sum(&mut pair.h, up).expect("the host drains its ring");
        recv_sum(&mut pair.g, down).expect("the guest drains its ring");
        assert_moves_data(&mut pair.g, &mut pair.h, &tag);
    }
}

// ---- many connections --------------------------------------------------

/// Connect, transfer, close cycles in [`many_cycles_neither_fail_nor_grow_descriptors`].
const CYCLES: usize = 50;

/// Cycles before the first count: the link to the host endpoint and the
/// spare are made, listeners bound.
const WARM_UP: usize = 6;

/// Descriptors (or memfd mappings) the process may hold more after
/// [`CYCLES`] than after [`WARM_UP`] cycles: whether a spare exists at the
/// moment of counting (1), and slack. One per connection would be 44.
const MAX_GROWTH: usize = 2;

#[test]
fn many_cycles_neither_fail_nor_grow_descriptors() {
    let _serial = serial();
    let daemon = ChildDaemon::start_in_temp(ROLE);
    let mut ends = Endpoints::new(&daemon, 7500);
    // Geometries in turn, each twice or more in a row, so that spares are
    // made, taken and thrown away; both directions.
    let geometries = [
        (6, 6),
        (6, 6),
        (6, 6),
        (8, 16),
        (8, 16),
        (16, 8),
        (52, 52),
        (52, 52),
    ];
    // Every listener is there from the start: each holds a descriptor.
    for pages in geometries {
        ends.listen(pages);
    }
    let mut warm = None;
    for i in 0..CYCLES {
        let direction = if i % 2 == 0 {
            Direction::GuestConnects
        } else {
            Direction::HostConnects
        };
        let pages = geometries[i % geometries.len()];
        let tag = format!("cycle {i}: {direction:?} with {pages:?} pages");
        let mut pair = ends.connect(direction, pages);
        fresh_exchange(&mut pair, 24 * 1024, 5000 + i as u64, &tag);
        drop(pair);
        if i + 1 == WARM_UP {
            // Closing is asynchronous: let the count settle.
            std::thread::sleep(Duration::from_millis(100));
            warm = Some((fd_count(), maps_matching("memfd:")));
        }
    }
    let (fds_warm, maps_warm) = warm.unwrap();
    let fds = settle(fd_count, |n| n <= fds_warm + MAX_GROWTH);
    let maps = settle(|| maps_matching("memfd:"), |n| n <= maps_warm + MAX_GROWTH);
    eprintln!(
        "after {WARM_UP} cycles: {fds_warm} descriptors, {maps_warm} memfd mappings; \
         after {CYCLES}: {fds}, {maps}"
    );
    assert!(
        fds <= fds_warm + MAX_GROWTH,
        "descriptors grew with connections: {fds_warm} after {WARM_UP} cycles, {fds} after \
         {CYCLES}"
    );
    assert!(
        maps <= maps_warm + MAX_GROWTH,
        "ring mappings grew with connections: {maps_warm} after {WARM_UP} cycles, {maps} \
         after {CYCLES}"
    );
    // Still connects, both ways.
    let mut pair = ends.connect(Direction::GuestConnects, (6, 6));
    fresh_exchange(
        &mut pair,
        8 * 1024,
        9000,
        "after the cycles, guest connects",
    );
    let mut pair = ends.connect(Direction::HostConnects, (6, 6));
    fresh_exchange(&mut pair, 8 * 1024, 9001, "after the cycles, host connects");
}

/// Ring mappings of this process (guest-made rings carry this memfd name,
/// in both ends' mappings).
fn ring_mappings() -> usize {
    maps_matching("memfd:hvsock-rings")
}

#[test]
fn a_spare_is_made_only_for_a_repeated_geometry_and_let_go_when_the_host_goes() {
    let _serial = serial();
    let daemon = ChildDaemon::start_in_temp(ROLE);
    let mut ends = Endpoints::new(&daemon, 7700);
    // Connects in alternating geometries: no spare would ever match, so
    // none is made (each would be made and thrown away, for nothing).
    for i in 0..6 {
        let pages = if i % 2 == 0 { (6, 6) } else { (8, 16) };
        let mut pair = ends.connect(Direction::GuestConnects, pages);
        fresh_exchange(&mut pair, 4096, 7000 + i, &format!("alternating {i}"));
    }
    let rings = settle(ring_mappings, |n| n == 0);
    assert_eq!(rings, 0, "rings mapped with every connection closed");
    // Two in a row in one geometry: the next one's rings are made ahead.
    for i in 0..2 {
        let mut pair = ends.connect(Direction::GuestConnects, (6, 6));
        fresh_exchange(&mut pair, 4096, 7100 + i, &format!("repeated {i}"));
    }
    let rings = settle(ring_mappings, |n| n == 1);
    assert_eq!(rings, 1, "the spare for the next connection");
    // The host goes away: the guest endpoint is dead, and its spare goes
    // with it, although the application still holds the endpoint.
    drop(daemon);
    let rings = settle(ring_mappings, |n| n == 0);
    assert_eq!(rings, 0, "the spare outlived the connection to the host");
    drop(ends);
}
