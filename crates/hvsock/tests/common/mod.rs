//! Helpers shared by the hostile-peer, fault and soak tests: a daemon in a
//! temporary directory, raw guest and host clients that speak the control
//! protocol by hand and own (or map) a channel's rings, the raw end of a
//! signal link ([`RawLink`]: one per pair of processes, see `vmbus::ext`,
//! "Signals"), a fake host that a real guest endpoint connects to, a
//! hand-made ring writer that can write anything and an honest one
//! ([`RawStream`]), resource counters from `/proc/self` and a small seeded
//! random generator.
//!
//! Each test binary uses a different part of this module.
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hvsock::Guest;
use hvsock_shm::{
    recv_with_fds, ring_pair, send_with_fds, signal_pair, Mapping, SharedMemory, SharedRingMem,
    SignalReceiver, SignalSender, PAGE_SIZE,
};
use rustix::net::sockopt::{set_socket_timeout, Timeout};
use vmbus::daemon::{control, vm_socket_path, Daemon, DaemonConfig, ShutdownHandle};
use vmbus::ext::{
    encode_ext, Datagram, ExtEvent, ExtRequest, RingLayout, GUEST_TO_HOST_FLAGS,
    HOST_TO_GUEST_FLAGS, LINK_BITMAP_BYTES, LINK_FLAGS_BYTES,
};
use vmbus::messages::{
    HvsockParams, InitiateContact, OpenChannel, HVSOCK_PARAMS_VERSION_RS5, PIPE_MODE_BYTE,
    VERSION_WIN10_V5,
};
use vmbus::{Gpadl, Guid, Message, OfferChannel, TlConnectRequest, VersionResponse};
use vmbus_ring::layout::{
    FEATURE_PENDING_SEND_SIZE, GUEST_MAX_SEND_DATA, MAX_RECV_DATA, MAX_RECV_PACKET,
};
use vmbus_ring::{init_control_page, PipeReader, PipeWriter, RingReader, RingWriter};

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

// ---- signal links --------------------------------------------------------

/// Which side of a signal link a raw client plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkSide {
    Guest,
    Host,
}

/// Words in each bitmap of a link.
pub const LINK_WORDS: u32 = (LINK_BITMAP_BYTES / 4) as u32;

/// A host connection as the daemon announced it: its id, the ring memfd,
/// the layout, the relid and the signal link.
pub struct HostConnection {
    pub conn: u64,
    pub fds: Vec<OwnedFd>,
    pub layout: RingLayout,
    pub relid: u32,
    pub link: u64,
}

/// One end of a signal link (`vmbus::ext`, "Signals"), as a raw client
/// holds it: the two bitmaps, the socket end we wait on and the one we
/// signal.
#[derive(Debug)]
pub struct RawLink {
    pub id: u64,
    pub flags: Mapping,
    /// Signalled by the peer; we wait on it.
    pub wait: SignalReceiver,
    /// We signal on it; the peer waits on its other end.
    pub signal: SignalSender,
    pub side: LinkSide,
}

impl RawLink {
    /// The link of an `ExtEvent::Link` from the daemon. Checks its
    /// descriptors as a correct endpoint must: three of them, a sealed flags
    /// memfd of `LINK_FLAGS_BYTES`, two Unix stream socket ends.
    #[track_caller]
    pub fn from_fds(id: u64, side: LinkSide, fds: Vec<OwnedFd>) -> RawLink {
        let n = fds.len();
        let Ok([flags, wait, signal]) = <[OwnedFd; 3]>::try_from(fds) else {
            panic!("link {id} came with {n} descriptors, not 3")
        };
        let memory = SharedMemory::from_fd(flags, LINK_FLAGS_BYTES).expect("a sealed flags memfd");
        RawLink {
            id,
            flags: Mapping::new(&memory).unwrap(),
            wait: SignalReceiver::from_fd(wait).expect("a socket end to wait on"),
            signal: SignalSender::from_fd(signal).expect("a socket end to signal on"),
            side,
        }
    }

    /// A new link made here as the daemon makes one: our end (on `side`),
    /// and the descriptors to send the other end with its `ExtEvent::Link`
    /// (flags, the one it waits on, the one it signals).
    pub fn make(id: u64, side: LinkSide) -> (RawLink, Vec<OwnedFd>) {
        let memory = SharedMemory::create("raw-link", LINK_FLAGS_BYTES).unwrap();
        let (we_wait, they_signal) = signal_pair().unwrap();
        let (they_wait, we_signal) = signal_pair().unwrap();
        let dup = |fd: BorrowedFd<'_>| fd.try_clone_to_owned().unwrap();
        let peer = vec![
            dup(memory.as_fd()),
            they_wait.into_fd(),
            they_signal.into_fd(),
        ];
        let link = RawLink {
            id,
            flags: Mapping::new(&memory).unwrap(),
            wait: we_wait,
            signal: we_signal,
            side,
        };
        (link, peer)
    }

    /// Byte offset of the bitmap we set (the peer takes it).
    pub fn outgoing_bits(&self) -> usize {
        match self.side {
            LinkSide::Guest => GUEST_TO_HOST_FLAGS,
            LinkSide::Host => HOST_TO_GUEST_FLAGS,
        }
    }

    /// Byte offset of the bitmap the peer sets (we take it).
    pub fn incoming_bits(&self) -> usize {
        match self.side {
            LinkSide::Guest => HOST_TO_GUEST_FLAGS,
            LinkSide::Host => GUEST_TO_HOST_FLAGS,
        }
    }

    /// Word `index` of the bitmap we set.
    pub fn outgoing_word(&self, index: u32) -> &AtomicU32 {
        self.flags
            .atomic_u32(self.outgoing_bits() + 4 * index as usize)
            .unwrap()
    }

    /// Word `index` of the bitmap the peer sets.
    pub fn incoming_word(&self, index: u32) -> &AtomicU32 {
        self.flags
            .atomic_u32(self.incoming_bits() + 4 * index as usize)
            .unwrap()
    }

    /// Wakes the peer for channel `relid` as the protocol says: sets its
    /// bit, and sends on the peer's socket only if the bit was clear.
    pub fn ring(&self, relid: u32) {
        let bit = 1u32 << (relid % 32);
        if self.outgoing_word(relid / 32).fetch_or(bit, SeqCst) & bit == 0 {
            self.signal.signal().unwrap();
        }
    }

    /// Waits up to `timeout` for a signal from the peer and takes it.
    pub fn wait(&self, timeout: Duration) -> bool {
        self.wait.wait_timeout(timeout).unwrap()
    }

    /// Takes (clears) the bit of `relid` in the peer's bitmap; returns
    /// whether it was set.
    pub fn take(&self, relid: u32) -> bool {
        let bit = 1u32 << (relid % 32);
        self.incoming_word(relid / 32).fetch_and(!bit, SeqCst) & bit != 0
    }
}

/// Keeps the link events of a raw client (`Link`, `LinkClosed`) in `links`;
/// returns any other event.
#[track_caller]
fn note_link_event(
    links: &mut HashMap<u64, Arc<RawLink>>,
    side: LinkSide,
    event: ExtEvent,
    fds: Vec<OwnedFd>,
) -> Option<(ExtEvent, Vec<OwnedFd>)> {
    match event {
        ExtEvent::Link { link } => {
            assert!(!links.contains_key(&link), "link {link} was sent twice");
            links.insert(link, Arc::new(RawLink::from_fds(link, side, fds)));
            None
        }
        ExtEvent::LinkClosed { link } => {
            assert!(fds.is_empty(), "LinkClosed carries no descriptor");
            links.remove(&link);
            None
        }
        other => Some((other, fds)),
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
    recv_datagram(fd)
}

/// The next datagram of either direction's kind, or `None` if the peer
/// closed the socket; fails after [`HANG`].
#[track_caller]
fn recv_datagram<T: for<'de> serde::Deserialize<'de>>(
    fd: &OwnedFd,
) -> Option<(Datagram<T>, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; vmbus::ext::MAX_DATAGRAM];
    let (n, fds) = recv_with_fds(fd, &mut buf, 4).expect("a datagram within the timeout");
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
        match recv_with_fds(fd, &mut buf, 4) {
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
    /// The links the daemon sent us, by id.
    pub links: HashMap<u64, Arc<RawLink>>,
    /// `ChannelLink` events not yet matched with their open result: relid
    /// → link.
    pub channel_links: HashMap<u32, u64>,
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
            links: HashMap::new(),
            channel_links: HashMap::new(),
        }
    }

    /// Keeps link events; returns any other event.
    #[track_caller]
    fn note(&mut self, event: ExtEvent, fds: Vec<OwnedFd>) -> Option<(ExtEvent, Vec<OwnedFd>)> {
        match event {
            ExtEvent::ChannelLink { relid, link } => {
                assert!(fds.is_empty(), "ChannelLink carries no descriptor");
                assert!(
                    self.links.contains_key(&link),
                    "ChannelLink for relid {relid} names link {link} before its Link event"
                );
                self.channel_links.insert(relid, link);
                None
            }
            other => note_link_event(&mut self.links, LinkSide::Guest, other, fds),
        }
    }

    /// The next VMBus message. Link events on the way are kept; any other
    /// event fails the test.
    #[track_caller]
    pub fn next_vmbus(&mut self) -> Message {
        loop {
            match recv(&self.sock) {
                Some((Datagram::Vmbus(m), _)) => return m,
                Some((Datagram::Ext(e), fds)) => {
                    if let Some(other) = self.note(e, fds) {
                        panic!("expected a VMBus message, got {other:?}")
                    }
                }
                None => panic!("the daemon closed the socket"),
            }
        }
    }

    /// The next event that is not about links (those are kept).
    #[track_caller]
    pub fn next_event(&mut self) -> (ExtEvent, Vec<OwnedFd>) {
        loop {
            match recv(&self.sock) {
                Some((Datagram::Ext(e), fds)) => {
                    if let Some(other) = self.note(e, fds) {
                        return other;
                    }
                }
                other => panic!("expected an event, got {other:?}"),
            }
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
        match self.next_vmbus() {
            Message::OfferChannel(offer) => offer.child_relid,
            other => panic!("expected an offer, got {other:?}"),
        }
    }

    /// Makes `pages` pages of rings, half each way, with their control
    /// pages set up as a guest does, and describes them with a GPADL for
    /// `relid`; returns the mapping and the GPADL handle once the daemon
    /// created it.
    pub fn gpadl(&mut self, relid: u32, pages: u32) -> (Arc<Mapping>, u32) {
        let memory = SharedMemory::create("hostile-guest", pages as usize * PAGE_SIZE).unwrap();
        let mapping = Arc::new(Mapping::new(&memory).unwrap());
        let half = pages as usize / 2;
        let pair = ring_pair(mapping.clone(), half, pages as usize - half).unwrap();
        init_control_page(&pair.guest_to_host, FEATURE_PENDING_SEND_SIZE);
        init_control_page(&pair.host_to_guest, FEATURE_PENDING_SEND_SIZE);
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
        let created = self.next_vmbus();
        assert!(
            matches!(
                created,
                Message::GpadlCreated {
                    creation_status: 0,
                    ..
                }
            ),
            "{created:?}"
        );
        (mapping, handle)
    }

    /// Sends OPENCHANNEL for `relid` on GPADL `handle`, the guest → host
    /// ring being the first `downstream` pages; no descriptors, as the
    /// protocol says.
    pub fn send_open(&self, relid: u32, handle: u32, downstream: u32) {
        send_vmbus(&self.sock, &open_channel(relid, handle, downstream), &[]);
    }

    /// The result of opening `relid`: on success its link, which the
    /// daemon must have named (ChannelLink, after the link's own Link
    /// event if it is new) before the result; the status otherwise.
    #[track_caller]
    pub fn open_result(&mut self, relid: u32) -> Result<Arc<RawLink>, u32> {
        match self.next_vmbus() {
            Message::OpenChannelResult {
                child_relid,
                status,
                ..
            } => {
                assert_eq!(child_relid, relid);
                let link = self.channel_links.remove(&relid);
                if status != 0 {
                    assert_eq!(link, None, "a refused channel was given a link");
                    return Err(status);
                }
                let link = link.unwrap_or_else(|| {
                    panic!("OPENCHANNEL_RESULT of relid {relid} came without a ChannelLink first")
                });
                Ok(self.links[&link].clone())
            }
            other => panic!("expected OPENCHANNEL_RESULT, got {other:?}"),
        }
    }

    /// Opens channel `relid` on our own rings: `pages` pages, half each way.
    #[track_caller]
    pub fn open(&mut self, relid: u32, pages: u32) -> Rings {
        let (mapping, handle) = self.gpadl(relid, pages);
        self.send_open(relid, handle, pages / 2);
        let link = self.open_result(relid).expect("the channel opens");
        let layout = RingLayout {
            total_pages: pages,
            guest_to_host_pages: pages / 2,
        };
        Rings::new(mapping, layout, LinkSide::Guest, link, relid)
    }
}

/// An OPENCHANNEL for `relid` on GPADL `handle`.
pub fn open_channel(relid: u32, handle: u32, downstream: u32) -> Message {
    Message::OpenChannel(OpenChannel {
        child_relid: relid,
        openid: relid,
        ringbuffer_gpadlhandle: handle,
        target_vp: 0,
        downstream_ringbuffer_pageoffset: downstream,
        userdata: [0; 120],
        guest_signal: None,
    })
}

/// A host process speaking the extension protocol by hand.
pub struct RawHost {
    pub sock: OwnedFd,
    /// The links the daemon sent us, by id.
    pub links: HashMap<u64, Arc<RawLink>>,
}

impl RawHost {
    pub fn connect(host_socket: &Path) -> RawHost {
        RawHost {
            sock: raw_client(host_socket),
            links: HashMap::new(),
        }
    }

    /// The next event that is not about links (those are kept).
    #[track_caller]
    pub fn next_event(&mut self) -> (ExtEvent, Vec<OwnedFd>) {
        loop {
            let (event, fds) = recv_event(&self.sock);
            if let Some(other) = note_link_event(&mut self.links, LinkSide::Host, event, fds) {
                return other;
            }
        }
    }

    /// Listens on vsock port `port` of every VM.
    pub fn listen(&mut self, port: u32) {
        send_ext(
            &self.sock,
            &ExtRequest::HostListen {
                service_id: Guid::from_vsock_port(port),
                vm_id: Guid::ZERO,
            },
        );
        let (event, _) = self.next_event();
        assert!(
            matches!(event, ExtEvent::HostListenResult { error: None, .. }),
            "{event:?}"
        );
    }

    /// Takes the next incoming connection: its id and its rings, mapped.
    #[track_caller]
    pub fn incoming(&mut self) -> (u64, Rings) {
        let c = self.next_incoming();
        (c.conn, self.rings(c.fds, c.layout, c.relid, c.link))
    }

    /// Takes the next incoming connection as the daemon announced it, the
    /// ring memfd unmapped.
    #[track_caller]
    pub fn next_incoming(&mut self) -> HostConnection {
        let (event, fds) = self.next_event();
        let ExtEvent::HostIncoming {
            conn,
            relid,
            link,
            layout,
            ..
        } = event
        else {
            panic!("expected HostIncoming, got {event:?}")
        };
        HostConnection {
            conn,
            fds,
            layout,
            relid,
            link,
        }
    }

    /// Connects to vsock port `port` of VM `vm` (where a guest listens):
    /// the connection's id and its rings, mapped.
    #[track_caller]
    pub fn connect_to(&mut self, vm: &str, port: u32, request: u64) -> (u64, Rings) {
        let c = self.request_connect(vm, port, request);
        (c.conn, self.rings(c.fds, c.layout, c.relid, c.link))
    }

    /// Connects to vsock port `port` of VM `vm` and returns the answer as
    /// it came, the ring memfd unmapped.
    #[track_caller]
    pub fn request_connect(&mut self, vm: &str, port: u32, request: u64) -> HostConnection {
        send_ext(
            &self.sock,
            &ExtRequest::HostConnect {
                request,
                vm_id: Guid::ZERO,
                vm_name: Some(vm.into()),
                service_id: Guid::from_vsock_port(port),
            },
        );
        let (event, fds) = self.next_event();
        let ExtEvent::HostConnected {
            request: answered,
            conn,
            relid,
            link,
            layout,
            ..
        } = event
        else {
            panic!("expected HostConnected, got {event:?}")
        };
        assert_eq!(answered, request);
        HostConnection {
            conn,
            fds,
            layout,
            relid,
            link,
        }
    }

    #[track_caller]
    fn rings(&self, fds: Vec<OwnedFd>, layout: RingLayout, relid: u32, link: u64) -> Rings {
        assert_eq!(fds.len(), 1, "a connection carries its ring memfd only");
        let link = self
            .links
            .get(&link)
            .cloned()
            .unwrap_or_else(|| panic!("a connection names link {link} before its Link event"));
        host_rings(fds.into_iter().next().unwrap(), layout, link, relid)
    }
}

/// The host's view of a channel's rings, signalled on `link` with bit
/// `relid`.
pub fn host_rings(memfd: OwnedFd, layout: RingLayout, link: Arc<RawLink>, relid: u32) -> Rings {
    let memory = SharedMemory::from_fd(memfd, layout.total_pages as usize * PAGE_SIZE).unwrap();
    let mapping = Arc::new(Mapping::new(&memory).unwrap());
    Rings::new(mapping, layout, LinkSide::Host, link, relid)
}

// ---- a fake host against a real guest endpoint ------------------------------

/// A listening socket standing in for a VM's socket: a real guest endpoint
/// (`hvsock::Guest`) connects to it and the test plays the host.
pub struct FakeHost {
    _dir: tempfile::TempDir,
    pub host_socket: PathBuf,
    listener: OwnedFd,
}

impl FakeHost {
    pub fn new() -> FakeHost {
        use rustix::net::{bind, listen, socket, AddressFamily, SocketAddrUnix, SocketType};
        let dir = tempfile::tempdir().unwrap();
        let host_socket = dir.path().join("host.sock");
        // Guest::connect_daemon_at refuses a missing VM only if the host
        // socket exists; create neither, just the VM socket.
        let vm = vm_socket_path(&host_socket, "alpha");
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
    pub fn guest(&self) -> (Guest, OwnedFd) {
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

/// An hv_sock offer of `relid` with `if_type` and `if_instance`: for the
/// guest to accept if `for_accept` (`if_type` is then its port's GUID),
/// else the answer to the guest's connect from endpoint `if_instance` to
/// host service `if_type`.
pub fn hvsock_offer(relid: u32, if_type: Guid, if_instance: Guid, for_accept: bool) -> Message {
    Message::OfferChannel(OfferChannel::hvsock(
        relid,
        if_type,
        if_instance,
        &HvsockParams {
            pipe_mode: PIPE_MODE_BYTE,
            is_for_guest_accept: for_accept,
            is_for_guest_container: false,
            version: HVSOCK_PARAMS_VERSION_RS5,
            silo_id: Guid::ZERO,
        },
    ))
}

/// An offer for the guest to accept: a host connect to its port `port`.
pub fn offer(relid: u32, port: u32, host_endpoint: u32) -> Message {
    hvsock_offer(
        relid,
        Guid::from_vsock_port(port),
        Guid::from_vsock_port(host_endpoint),
        true,
    )
}

/// The next datagram from a real endpoint, or `None` if it hung up.
#[track_caller]
pub fn recv_request(conn: &OwnedFd) -> Option<(Datagram<ExtRequest>, Vec<OwnedFd>)> {
    recv_datagram(conn)
}

/// The next VMBus message from a real guest endpoint, skipping extension
/// requests.
#[track_caller]
pub fn next_guest_vmbus(conn: &OwnedFd) -> (Message, Vec<OwnedFd>) {
    loop {
        match recv_request(conn).expect("the guest hung up") {
            (Datagram::Vmbus(m), fds) => return (m, fds),
            (Datagram::Ext(_), _) => continue,
        }
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
    pub fn new(control: usize, pages: usize) -> Ring {
        Ring {
            control,
            data_size: ((pages - 1) * PAGE_SIZE) as u32,
        }
    }
}

/// Both rings of a channel as one side sees them, with raw access.
pub struct Rings {
    pub mapping: Arc<Mapping>,
    pub layout: RingLayout,
    /// Which side we are.
    pub side: LinkSide,
    /// The ring this side writes.
    pub tx: Ring,
    /// The ring this side reads.
    pub rx: Ring,
    /// The link that carries the channel's signals.
    pub link: Arc<RawLink>,
    /// The channel's bit in the link's bitmaps.
    pub relid: u32,
}

impl Rings {
    pub fn new(
        mapping: Arc<Mapping>,
        layout: RingLayout,
        side: LinkSide,
        link: Arc<RawLink>,
        relid: u32,
    ) -> Rings {
        let total = layout.total_pages as usize;
        let up = layout.guest_to_host_pages as usize;
        let (g2h, h2g) = (Ring::new(0, up), Ring::new(up * PAGE_SIZE, total - up));
        let (tx, rx) = match side {
            LinkSide::Guest => (g2h, h2g),
            LinkSide::Host => (h2g, g2h),
        };
        Rings {
            mapping,
            layout,
            side,
            tx,
            rx,
            link,
            relid,
        }
    }

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

    /// Signals the peer for this channel through the link.
    pub fn signal(&self) {
        self.link.ring(self.relid);
    }

    /// An honest stream on these rings.
    pub fn stream(&self) -> RawStream {
        RawStream::new(self)
    }
}

// ---- an honest peer on raw rings -----------------------------------------

/// The hv_sock byte stream on a channel's rings, written and read with the
/// ring library as a correct peer would, for raw clients whose test is about
/// something else (signals). Never waits: the caller polls.
pub struct RawStream {
    reader: PipeReader<SharedRingMem>,
    writer: PipeWriter<SharedRingMem>,
    pub link: Arc<RawLink>,
    pub relid: u32,
}

impl RawStream {
    pub fn new(rings: &Rings) -> RawStream {
        let up = rings.layout.guest_to_host_pages as usize;
        let down = rings.layout.total_pages as usize - up;
        let pair = ring_pair(rings.mapping.clone(), up, down).unwrap();
        let (tx, rx, max_send) = match rings.side {
            LinkSide::Guest => (pair.guest_to_host, pair.host_to_guest, GUEST_MAX_SEND_DATA),
            LinkSide::Host => (pair.host_to_guest, pair.guest_to_host, MAX_RECV_DATA),
        };
        RawStream {
            reader: PipeReader::new(
                RingReader::new(rx, MAX_RECV_PACKET as u32).unwrap(),
                MAX_RECV_DATA as u32,
            ),
            writer: PipeWriter::new(RingWriter::new(tx).unwrap(), max_send as u32),
            link: rings.link.clone(),
            relid: rings.relid,
        }
    }

    /// Reads what is there: `Some(0)` at the end of the stream, `None` if
    /// nothing came yet. Signals the writer when the ring rules say so.
    #[track_caller]
    pub fn try_read(&mut self, buf: &mut [u8]) -> Option<usize> {
        loop {
            let n = self
                .reader
                .read(buf)
                .expect("the peer keeps the ring rules");
            if self.reader.commit().expect("the peer keeps the ring rules") {
                self.link.ring(self.relid);
            }
            if n > 0 {
                return Some(n);
            }
            if self.reader.fin_received() {
                return Some(0);
            }
            let available = self.reader.ring_mut().available().expect("a valid ring");
            if available == 0 {
                return None;
            }
        }
    }

    /// Writes what fits of `data` now; returns how much.
    #[track_caller]
    pub fn try_write(&mut self, data: &[u8]) -> usize {
        let n = self.writer.write(data).expect("a valid ring");
        if n > 0 && self.writer.commit().expect("a valid ring") {
            self.link.ring(self.relid);
        }
        n
    }

    /// Sends the end of the stream.
    #[track_caller]
    pub fn write_fin(&mut self) {
        self.writer.write_fin().expect("room for the FIN");
        if self.writer.commit().expect("a valid ring") {
            self.link.ring(self.relid);
        }
    }
}

/// Moves a short message both ways between a raw stream and a real one:
/// raw → real, then real → raw. The real one must have its read timeout
/// set; the raw one polls, waiting on its link between tries, for at most
/// [`HANG`].
#[track_caller]
pub fn assert_raw_moves_data(raw: &mut RawStream, real: &mut (impl Read + Write), tag: &str) {
    let msg = format!("raw and real, still alive: {tag}");
    let msg = msg.as_bytes();
    let deadline = Instant::now() + HANG;
    let mut sent = 0;
    while sent < msg.len() {
        sent += raw.try_write(&msg[sent..]);
        if sent < msg.len() {
            assert!(
                Instant::now() < deadline,
                "{tag}: the raw side cannot write"
            );
            raw.link.wait(Duration::from_millis(10));
        }
    }
    let mut buf = vec![0u8; msg.len()];
    real.read_exact(&mut buf).expect("read raw -> real");
    assert_eq!(buf, msg, "{tag}");
    real.write_all(msg).expect("write real -> raw");
    let mut got = Vec::new();
    let mut chunk = [0u8; 256];
    while got.len() < msg.len() {
        match raw.try_read(&mut chunk) {
            Some(0) => panic!("{tag}: the raw side saw the end of the stream"),
            Some(n) => got.extend_from_slice(&chunk[..n]),
            None => {
                assert!(
                    Instant::now() < deadline,
                    "{tag}: nothing came to the raw side"
                );
                raw.link.wait(Duration::from_millis(10));
            }
        }
    }
    assert_eq!(got, msg, "{tag}");
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

// ---- a daemon in a child process -----------------------------------------

/// The body of a test binary's `daemon_child` test: when the environment
/// variable `role` names a socket path, runs a daemon there (serving VM
/// "alpha") until killed; otherwise (a normal test run) returns at once.
pub fn daemon_child_entry(role: &str) {
    let Ok(socket) = std::env::var(role) else {
        return;
    };
    let mut config = DaemonConfig::new(PathBuf::from(socket));
    config.vms.push(("alpha".into(), None));
    let daemon = Daemon::bind(config).expect("bind");
    println!("READY");
    std::io::stdout().flush().unwrap();
    daemon.run().expect("run");
    std::process::exit(0);
}

/// Held by each test of a binary whose tests count this process's own
/// descriptors or mappings, so that none runs at the same time as another.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A daemon in a child process (this test binary run again as its
/// `daemon_child` test, which calls [`daemon_child_entry`]), for tests that
/// count this process's own descriptors and mappings; killed and reaped on
/// drop.
pub struct ChildDaemon {
    child: std::process::Child,
    socket: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl ChildDaemon {
    /// Starts it on `socket`; `role` is the variable its `daemon_child`
    /// test reads.
    pub fn start(role: &str, socket: &Path) -> ChildDaemon {
        Self::spawn(role, socket.to_path_buf(), None)
    }

    /// Starts it in a temporary directory of its own.
    pub fn start_in_temp(role: &str) -> ChildDaemon {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("hv").join("host.sock");
        Self::spawn(role, socket, Some(dir))
    }

    fn spawn(role: &str, socket: PathBuf, dir: Option<tempfile::TempDir>) -> ChildDaemon {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "daemon_child", "--nocapture", "--test-threads=1"])
            .env(role, &socket)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the daemon");
        let stdout = child.stdout.take().unwrap();
        let daemon = ChildDaemon {
            child,
            socket,
            _dir: dir,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let ready = lines.any(|l| l.is_ok_and(|l| l.contains("READY")));
            let _ = tx.send(ready);
            // Keep reading so the child never blocks on a full pipe.
            for _ in lines {}
        });
        assert_eq!(rx.recv_timeout(HANG), Ok(true), "the daemon did not start");
        daemon
    }

    /// Its socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for ChildDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
