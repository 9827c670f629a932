//! Helpers shared by the hostile-peer, fault and soak tests: a daemon in a
//! temporary directory, raw guest and host clients that speak the control
//! protocol by hand and own (or map) a channel's rings, a hand-made ring
//! writer that can write anything, resource counters from `/proc/self` and a
//! small seeded random generator.
//!
//! Each test binary uses a different part of this module.
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hvsock_shm::{recv_with_fds, send_with_fds, EventFd, Mapping, SharedMemory, PAGE_SIZE};
use rustix::net::sockopt::{set_socket_timeout, Timeout};
use vmbus::daemon::{control, vm_socket_path, Daemon, DaemonConfig, ShutdownHandle};
use vmbus::ext::{encode_ext, Datagram, ExtEvent, ExtRequest, RingLayout};
use vmbus::messages::{InitiateContact, OpenChannel, VERSION_WIN10_V5};
use vmbus::{Gpadl, Guid, Message, TlConnectRequest};

/// How long anything that should take milliseconds may take before a test
/// calls it a hang.
pub const HANG: Duration = Duration::from_secs(5);

// ---- the daemon --------------------------------------------------------

/// A daemon on a background thread in a temporary directory; shut down and
/// joined on drop.
pub struct TestDaemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    handle: ShutdownHandle,
    thread: Option<JoinHandle<()>>,
}

impl TestDaemon {
    /// A daemon with these VMs.
    pub fn start(vms: &[&str]) -> TestDaemon {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let socket = dir.path().join("hv").join("host.sock");
        Self::start_at(dir, socket, vms, None)
    }

    /// A daemon at `socket` (inside `dir`, which it keeps).
    pub fn start_at(
        dir: tempfile::TempDir,
        socket: PathBuf,
        vms: &[&str],
        allowed_uids: Option<Vec<u32>>,
    ) -> TestDaemon {
        let mut config = DaemonConfig::new(&socket);
        config.vms = vms.iter().map(|n| (n.to_string(), None)).collect();
        config.allowed_uids = allowed_uids;
        let daemon = Daemon::bind(config).expect("bind the daemon");
        let handle = daemon.shutdown_handle();
        let thread = std::thread::spawn(move || daemon.run().expect("the daemon runs"));
        TestDaemon {
            dir,
            socket,
            handle,
            thread: Some(thread),
        }
    }

    /// The socket of VM `name`.
    pub fn vm_socket(&self, name: &str) -> PathBuf {
        vm_socket_path(&self.socket, name)
    }

    /// Stops the daemon and waits for its thread; returns the directory.
    pub fn stop(mut self) -> tempfile::TempDir {
        self.handle.shutdown();
        if let Some(t) = self.thread.take() {
            t.join().expect("the daemon thread");
        }
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::mem::replace(&mut self.dir, dir)
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        self.handle.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---- raw control clients -----------------------------------------------

/// Connects to a control socket, with a receive timeout of [`HANG`].
pub fn raw_client(path: &Path) -> OwnedFd {
    let fd = control::connect(path).expect("connect to the daemon");
    set_socket_timeout(&fd, Timeout::Recv, Some(HANG)).unwrap();
    fd
}

pub fn send_vmbus(fd: &OwnedFd, message: &Message, fds: &[&dyn AsFd]) {
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    send_with_fds(fd, &message.encode(), &borrowed).expect("send a VMBus message");
}

pub fn send_ext(fd: &OwnedFd, request: &ExtRequest) {
    send_with_fds(fd, &encode_ext(request), &[]).expect("send a request");
}

/// The next datagram, or `None` if the peer closed the socket; fails after
/// [`HANG`].
#[track_caller]
pub fn recv(fd: &OwnedFd) -> Option<(Datagram<ExtEvent>, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; vmbus::ext::MAX_DATAGRAM];
    let (n, fds) = recv_with_fds(fd, &mut buf, 3).expect("a datagram within the timeout");
    if n == 0 {
        return None;
    }
    Some((
        Datagram::decode(&buf[..n]).expect("a decodable datagram"),
        fds,
    ))
}

#[track_caller]
pub fn recv_vmbus(fd: &OwnedFd) -> Message {
    match recv(fd) {
        Some((Datagram::Vmbus(m), _)) => m,
        other => panic!("expected a VMBus message, got {other:?}"),
    }
}

#[track_caller]
pub fn recv_event(fd: &OwnedFd) -> (ExtEvent, Vec<OwnedFd>) {
    match recv(fd) {
        Some((Datagram::Ext(e), fds)) => (e, fds),
        other => panic!("expected an event, got {other:?}"),
    }
}

/// Whether the peer closed `fd` within `within` (other datagrams are
/// skipped).
pub fn closed_within(fd: &OwnedFd, within: Duration) -> bool {
    set_socket_timeout(fd, Timeout::Recv, Some(within)).unwrap();
    let mut buf = vec![0u8; vmbus::ext::MAX_DATAGRAM];
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

/// A guest process of a VM speaking VMBus by hand: contact made.
pub struct RawGuest {
    pub sock: OwnedFd,
    next_gpadl: u32,
}

impl RawGuest {
    pub fn contact(vm_socket: &Path) -> RawGuest {
        let sock = raw_client(vm_socket);
        send_vmbus(
            &sock,
            &Message::InitiateContact(InitiateContact {
                vmbus_version_requested: VERSION_WIN10_V5,
                target_vcpu: 0,
                interrupt_page_or_target_info: InitiateContact::target_info(2, 0, 0),
                parent_to_child_monitor_page_gpa: 0,
                child_to_parent_monitor_page_gpa: 0,
                client_id: None,
            }),
            &[],
        );
        let Message::VersionResponse(r) = recv_vmbus(&sock) else {
            panic!("expected VERSION_RESPONSE")
        };
        assert!(r.version_supported);
        RawGuest {
            sock,
            next_gpadl: 0x100,
        }
    }

    /// Connects from guest port `local` to the host service at vsock port
    /// `port`; returns the offer's relid.
    pub fn tl_connect(&mut self, local: u32, port: u32) -> u32 {
        send_vmbus(
            &self.sock,
            &Message::TlConnectRequest(TlConnectRequest {
                guest_endpoint_id: Guid::from_vsock_port(local),
                host_service_id: Guid::from_vsock_port(port),
                silo_id: None,
            }),
            &[],
        );
        match recv_vmbus(&self.sock) {
            Message::OfferChannel(offer) => offer.child_relid,
            other => panic!("expected an offer, got {other:?}"),
        }
    }

    /// Opens channel `relid` on our own rings: `pages` pages, half each way.
    pub fn open(&mut self, relid: u32, pages: u32) -> Rings {
        let memory = SharedMemory::create("hostile-guest", pages as usize * PAGE_SIZE).unwrap();
        let handle = self.next_gpadl;
        self.next_gpadl += 1;
        for (i, m) in Gpadl::ring(relid, handle, (0..u64::from(pages)).collect())
            .to_messages()
            .unwrap()
            .iter()
            .enumerate()
        {
            if i == 0 {
                send_vmbus(&self.sock, m, &[&memory]);
            } else {
                send_vmbus(&self.sock, m, &[]);
            }
        }
        assert!(matches!(
            recv_vmbus(&self.sock),
            Message::GpadlCreated {
                creation_status: 0,
                ..
            }
        ));
        let (g2h, h2g) = (EventFd::new().unwrap(), EventFd::new().unwrap());
        send_vmbus(
            &self.sock,
            &Message::OpenChannel(OpenChannel {
                child_relid: relid,
                openid: relid,
                ringbuffer_gpadlhandle: handle,
                target_vp: 0,
                downstream_ringbuffer_pageoffset: pages / 2,
                userdata: [0; 120],
                guest_signal: None,
            }),
            &[&g2h, &h2g],
        );
        assert!(matches!(
            recv_vmbus(&self.sock),
            Message::OpenChannelResult { status: 0, .. }
        ));
        let mapping = Arc::new(Mapping::new(&memory).unwrap());
        let half = pages as usize / 2;
        Rings {
            mapping,
            tx: Ring::new(0, half),
            rx: Ring::new(half * PAGE_SIZE, pages as usize - half),
            to_peer: g2h,
            from_peer: h2g,
        }
    }
}

/// A host process speaking the extension protocol by hand.
pub struct RawHost {
    pub sock: OwnedFd,
}

impl RawHost {
    pub fn connect(host_socket: &Path) -> RawHost {
        RawHost {
            sock: raw_client(host_socket),
        }
    }

    /// Listens on vsock port `port` of every VM.
    pub fn listen(&self, port: u32) {
        send_ext(
            &self.sock,
            &ExtRequest::HostListen {
                service_id: Guid::from_vsock_port(port),
                vm_id: Guid::ZERO,
            },
        );
        let (event, _) = recv_event(&self.sock);
        assert!(
            matches!(event, ExtEvent::HostListenResult { error: None, .. }),
            "{event:?}"
        );
    }

    /// Takes the next incoming connection: its id and its rings, mapped.
    pub fn incoming(&self) -> (u64, Rings) {
        let (event, mut fds) = recv_event(&self.sock);
        let ExtEvent::HostIncoming { conn, layout, .. } = event else {
            panic!("expected HostIncoming, got {event:?}")
        };
        assert_eq!(fds.len(), 3);
        let h2g = EventFd::from_fd(fds.pop().unwrap()).unwrap();
        let g2h = EventFd::from_fd(fds.pop().unwrap()).unwrap();
        (conn, host_rings(fds.pop().unwrap(), layout, g2h, h2g))
    }
}

/// The host's view of a channel's rings.
pub fn host_rings(memfd: OwnedFd, layout: RingLayout, g2h: EventFd, h2g: EventFd) -> Rings {
    let total = layout.total_pages as usize;
    let up = layout.guest_to_host_pages as usize;
    let memory = SharedMemory::from_fd(memfd, total * PAGE_SIZE).unwrap();
    Rings {
        mapping: Arc::new(Mapping::new(&memory).unwrap()),
        tx: Ring::new(up * PAGE_SIZE, total - up),
        rx: Ring::new(0, up),
        to_peer: h2g,
        from_peer: g2h,
    }
}

// ---- a ring writer that writes anything ---------------------------------

/// One ring inside a mapping.
#[derive(Debug, Clone, Copy)]
pub struct Ring {
    /// Offset of its control page in the mapping.
    pub control: usize,
    /// Size of its data area.
    pub data_size: u32,
}

impl Ring {
    fn new(control: usize, pages: usize) -> Ring {
        Ring {
            control,
            data_size: ((pages - 1) * PAGE_SIZE) as u32,
        }
    }
}

/// Both rings of a channel as one side sees them, with raw access.
pub struct Rings {
    pub mapping: Arc<Mapping>,
    /// The ring this side writes.
    pub tx: Ring,
    /// The ring this side reads.
    pub rx: Ring,
    /// Signalled to wake the peer.
    pub to_peer: EventFd,
    /// Signalled by the peer.
    pub from_peer: EventFd,
}

impl Rings {
    pub fn word(&self, ring: Ring, offset: usize) -> u32 {
        self.mapping
            .atomic_u32(ring.control + offset)
            .unwrap()
            .load(SeqCst)
    }

    pub fn set_word(&self, ring: Ring, offset: usize, value: u32) {
        self.mapping
            .atomic_u32(ring.control + offset)
            .unwrap()
            .store(value, SeqCst);
    }

    /// Writes `bytes` at the write index of the ring we write (wrapping) and
    /// moves the write index past them, as a writer would; no checks.
    pub fn append(&self, bytes: &[u8]) {
        let ring = self.tx;
        let start = self.word(ring, 0);
        let data = ring.control + PAGE_SIZE;
        for (i, b) in bytes.iter().enumerate() {
            let at = (start as usize + i) % ring.data_size as usize;
            self.mapping.write(data + at, &[*b]).unwrap();
        }
        let end = (start as u64 + bytes.len() as u64) % u64::from(ring.data_size);
        self.set_word(ring, 0, end as u32);
    }

    /// Appends a whole packet (descriptor fields as given, then `payload`,
    /// padding and a trailer), as a correct writer would if the fields are.
    pub fn append_packet(&self, ty: u16, offset8: u16, len8: u16, flags: u16, payload: &[u8]) {
        let start = self.word(self.tx, 0);
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&ty.to_le_bytes());
        bytes.extend_from_slice(&offset8.to_le_bytes());
        bytes.extend_from_slice(&len8.to_le_bytes());
        bytes.extend_from_slice(&flags.to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes());
        bytes.extend_from_slice(payload);
        bytes.resize(bytes.len().next_multiple_of(8), 0);
        bytes.extend_from_slice(&(u64::from(start) << 32).to_le_bytes());
        self.append(&bytes);
    }

    /// Appends an hv_sock data packet carrying `data` (a FIN if empty),
    /// with pipe `data_size` as given.
    pub fn append_pipe(&self, pkt_type: u32, data_size: u32, data: &[u8]) {
        let mut payload = Vec::new();
        payload.extend_from_slice(&pkt_type.to_le_bytes());
        payload.extend_from_slice(&data_size.to_le_bytes());
        payload.extend_from_slice(data);
        let len8 = (16 + payload.len()).div_ceil(8) as u16;
        self.append_packet(6, 2, len8, 0, &payload);
    }

    /// Appends a correct data packet.
    pub fn append_data(&self, data: &[u8]) {
        self.append_pipe(1, data.len() as u32, data);
    }

    pub fn signal(&self) {
        self.to_peer.signal().unwrap();
    }
}

// ---- resources ---------------------------------------------------------

/// Open descriptors of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Mappings of this process.
pub fn maps_count() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

/// Mappings of this process whose name contains `needle`.
pub fn maps_matching(needle: &str) -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// Resident set size of this process, in KiB.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Waits (up to [`HANG`]) until `f` returns a value `ok` accepts; returns the
/// last value either way.
pub fn settle<T: Copy>(mut f: impl FnMut() -> T, ok: impl Fn(T) -> bool) -> T {
    let deadline = Instant::now() + HANG;
    loop {
        let v = f();
        if ok(v) || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---- data --------------------------------------------------------------

/// SplitMix64: a small seeded generator, so that a failure can be replayed
/// from the seed a test prints.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// A seed from `HVSOCK_TEST_SEED`, else from the clock; printed.
    pub fn from_env(what: &str) -> Rng {
        let seed = std::env::var("HVSOCK_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{what}: HVSOCK_TEST_SEED={seed}");
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// FNV-1a, 64-bit: a checksum for streamed bytes.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Sends `len` seeded bytes on `w`, then returns their checksum.
pub fn send_random(w: &mut impl Write, seed: u64, len: usize) -> std::io::Result<u64> {
    let mut rng = Rng::new(seed);
    let mut sum = Fnv::default();
    let mut buf = vec![0u8; 8192];
    let mut left = len;
    while left > 0 {
        let n = left.min(1 + rng.below(buf.len() as u64) as usize);
        rng.fill(&mut buf[..n]);
        w.write_all(&buf[..n])?;
        sum.update(&buf[..n]);
        left -= n;
    }
    Ok(sum.0)
}

/// Reads to EOF; returns the byte count and checksum.
pub fn recv_all(r: &mut impl Read) -> std::io::Result<(usize, u64)> {
    let mut sum = Fnv::default();
    let mut buf = vec![0u8; 16384];
    let mut total = 0;
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok((total, sum.0)),
            Ok(n) => {
                sum.update(&buf[..n]);
                total += n;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Asserts that `a` and `b` (two ends of one connection) move bytes both
/// ways: a short exchange, checked.
#[track_caller]
pub fn assert_moves_data(a: &mut (impl Read + Write), b: &mut (impl Read + Write), tag: &str) {
    let msg = format!("still alive: {tag}");
    a.write_all(msg.as_bytes()).expect("write a -> b");
    let mut buf = vec![0u8; msg.len()];
    b.read_exact(&mut buf).expect("read a -> b");
    assert_eq!(buf, msg.as_bytes());
    b.write_all(msg.as_bytes()).expect("write b -> a");
    a.read_exact(&mut buf).expect("read b -> a");
    assert_eq!(buf, msg.as_bytes());
}
