//! The blocking API, shaped like `std::net`: [`Guest`] and [`Host`] (a
//! process's connection to the host, in either role), [`VsockListener`] /
//! [`VsockStream`] for guests, [`HvListener`] / [`HvStream`] for the host.
//!
//! Every operation is a non-blocking attempt on the channel
//! ([`ChannelIo`](crate::channel::ChannelIo)) plus a wait; the tokio API is
//! built on the same attempts.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use vmbus::ext::Partition;
use vmbus::Guid;

use crate::addr::{HvAddr, VsockAddr, VMADDR_CID_ANY, VMADDR_CID_HOST};
use crate::channel::{ChannelIo, Wait};
use crate::endpoint::{
    ChannelKey, Endpoint, Ends, ListenerShared, Ready, Role, DEFAULT_RING_PAGES,
};
use crate::error::err;

/// How long a guest's connect waits by default (the vsock default).
pub const DEFAULT_GUEST_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a host's connect waits by default.
pub const DEFAULT_HOST_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The listen backlog when none is given.
pub const DEFAULT_BACKLOG: usize = 128;

/// Connects to a host socket; errors say what to do (start the host,
/// another user's host).
fn connect_socket(path: &Path) -> io::Result<OwnedFd> {
    vmbus::daemon::control::connect(path).map_err(daemon_error)
}

/// A host error as an I/O error of the kind programs expect.
fn daemon_error(e: vmbus::daemon::DaemonError) -> io::Error {
    use vmbus::daemon::DaemonError;
    let kind = match &e {
        DaemonError::NotRunning { .. } => io::ErrorKind::NotFound,
        DaemonError::PermissionDenied { .. } => io::ErrorKind::PermissionDenied,
        DaemonError::Stopped => io::ErrorKind::NotConnected,
        _ => io::ErrorKind::Other,
    };
    err(kind, e.to_string())
}

/// Options for a connection: its rings and how long to wait.
#[derive(Debug, Clone, Copy)]
pub struct ConnectOptions {
    /// Give up after this long.
    pub timeout: Duration,
    /// Pages of the guest → host and host → guest rings, control page
    /// included (6 to 64; a guest decides, the host takes what it gets).
    pub ring_pages: (u32, u32),
}

impl ConnectOptions {
    /// The seed's geometry: 6-page rings.
    pub fn seed() -> Self {
        Self {
            ring_pages: (
                crate::endpoint::SEED_RING_PAGES,
                crate::endpoint::SEED_RING_PAGES,
            ),
            ..Self::default()
        }
    }
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_GUEST_CONNECT_TIMEOUT,
            ring_pages: (DEFAULT_RING_PAGES, DEFAULT_RING_PAGES),
        }
    }
}

/// A process's connection to the host as a guest of one VM.
#[derive(Debug, Clone)]
pub struct Guest {
    ep: Endpoint,
    vm: String,
}

impl Guest {
    /// Joins VM `vm` through the running `hvsock host` at its default socket.
    pub fn connect_daemon(vm: &str) -> io::Result<Guest> {
        Self::connect_daemon_at(vmbus::daemon::default_socket_path(), vm)
    }

    /// Joins VM `vm` through the `hvsock host` whose host socket is
    /// `host_socket` (VM sockets sit next to it).
    pub fn connect_daemon_at(host_socket: impl AsRef<Path>, vm: &str) -> io::Result<Guest> {
        let path = vmbus::daemon::vm_socket_path(host_socket.as_ref(), vm);
        if !path.exists() && host_socket.as_ref().exists() {
            return Err(err(
                io::ErrorKind::NotFound,
                format!(
                    "the hvsock host has no VM named {vm:?} (add it with `hvsock vm add {vm}`)"
                ),
            ));
        }
        Self::from_socket(connect_socket(&path)?, vm)
    }

    /// Joins VM `vm` of an embedded host.
    pub fn embedded(host: &vmbus::daemon::EmbeddedHost, vm: &str) -> io::Result<Guest> {
        let id = host.vm_id(vm).ok_or_else(|| {
            err(
                io::ErrorKind::NotFound,
                format!("the embedded host has no VM named {vm:?}"),
            )
        })?;
        Self::from_socket(
            host.connect(Partition::Vm(id)).map_err(io::Error::other)?,
            vm,
        )
    }

    fn from_socket(sock: OwnedFd, vm: &str) -> io::Result<Guest> {
        Ok(Guest {
            ep: Endpoint::start(sock, Role::Guest)?,
            vm: vm.to_owned(),
        })
    }

    /// The VM this process is a guest of.
    pub fn vm(&self) -> &str {
        &self.vm
    }

    /// The VMBus version agreed with the host.
    pub fn vmbus_version(&self) -> u32 {
        self.ep.version().unwrap_or(0)
    }
}

/// A process's connection to the host as a root-partition process.
#[derive(Debug, Clone)]
pub struct Host {
    ep: Endpoint,
}

impl Host {
    /// Connects to the running `hvsock host` at its default socket.
    pub fn connect_daemon() -> io::Result<Host> {
        Self::connect_daemon_at(vmbus::daemon::default_socket_path())
    }

    /// Connects to the `hvsock host` listening on `host_socket`.
    pub fn connect_daemon_at(host_socket: impl AsRef<Path>) -> io::Result<Host> {
        Self::from_socket(connect_socket(host_socket.as_ref())?)
    }

    /// Connects to an embedded host.
    pub fn embedded(host: &vmbus::daemon::EmbeddedHost) -> io::Result<Host> {
        Self::from_socket(host.connect(Partition::Root).map_err(daemon_error)?)
    }

    fn from_socket(sock: OwnedFd) -> io::Result<Host> {
        Ok(Host {
            ep: Endpoint::start(sock, Role::Host)?,
        })
    }
}

/// Per-stream settings, shared by its clones (as a socket's are). Atomics
/// rather than a lock: every read and write looks at them, and a lock is
/// two atomic read-modify-writes per call, each of which waits for the
/// previous write's stores to reach the reader (see BENCHMARKS.md, 64-byte
/// busy-poll writes).
#[derive(Debug, Default)]
struct Settings {
    nonblocking: AtomicBool,
    /// Nanoseconds; 0 is no timeout (a zero timeout is refused).
    read_timeout: AtomicU64,
    write_timeout: AtomicU64,
}

impl Settings {
    fn wait(&self, write: bool) -> Wait {
        let timeout = if write {
            &self.write_timeout
        } else {
            &self.read_timeout
        };
        Wait::timeout(
            self.nonblocking.load(Relaxed),
            nanos_to_timeout(timeout.load(Relaxed)),
        )
    }
}

fn nanos_to_timeout(nanos: u64) -> Option<Duration> {
    (nanos != 0).then(|| Duration::from_nanos(nanos))
}

/// What every stream is: the channel, who to tell when it is dropped.
#[derive(Debug)]
struct StreamInner {
    io: Arc<ChannelIo>,
    ep: Endpoint,
    key: ChannelKey,
    ends: Ends,
    settings: Settings,
}

impl Drop for StreamInner {
    fn drop(&mut self) {
        // Close: the FIN if not sent yet, then the channel is released in
        // the background.
        let _ = self.io.shutdown_write();
        self.ep.release(self.key);
    }
}

/// The stream core shared by guest and host streams, blocking and async.
#[derive(Debug, Clone)]
pub(crate) struct Stream(Arc<StreamInner>);

impl Stream {
    pub(crate) fn new(ep: &Endpoint, ready: Ready) -> Self {
        Stream(Arc::new(StreamInner {
            io: ready.io,
            ep: ep.clone(),
            key: ready.key,
            ends: ready.ends,
            settings: Settings::default(),
        }))
    }

    /// The channel, for the async API's non-blocking attempts.
    pub(crate) fn io(&self) -> &ChannelIo {
        &self.0.io
    }

    fn settings(&self) -> &Settings {
        &self.0.settings
    }

    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.io.read(buf, self.settings().wait(false))
    }

    fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.io.peek(buf, self.settings().wait(false))
    }

    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        self.0.io.write(buf, self.settings().wait(true))
    }

    pub(crate) fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        if matches!(how, Shutdown::Read | Shutdown::Both) {
            self.0.io.shutdown_read();
        }
        if matches!(how, Shutdown::Write | Shutdown::Both) {
            self.0.io.shutdown_write()?;
        }
        Ok(())
    }

    fn set_timeout(&self, timeout: Option<Duration>, write: bool) -> io::Result<()> {
        if timeout == Some(Duration::ZERO) {
            return Err(err(
                io::ErrorKind::InvalidInput,
                "a zero timeout is not allowed",
            ));
        }
        let s = self.settings();
        let slot = if write {
            &s.write_timeout
        } else {
            &s.read_timeout
        };
        // Past u64 nanoseconds (584 years) is as good as never.
        let nanos = timeout.map_or(0, |t| u64::try_from(t.as_nanos()).unwrap_or(u64::MAX));
        slot.store(nanos, Relaxed);
        Ok(())
    }
}

/// Defines the methods both stream types share, forwarding to [`Stream`].
macro_rules! stream_methods {
    ($name:ident) => {
        impl $name {
            /// Moves up to `max` received bytes straight from the ring to
            /// `fd` (a file, a pipe, a socket): the kernel copies them out
            /// of the shared ring with `write(2)`, so they never pass
            /// through a buffer of this process. Waits for data like a read;
            /// `Ok(0)` is the end of the stream.
            pub fn read_to_fd(&self, fd: impl AsFd, max: usize) -> io::Result<usize> {
                self.0
                     .0
                    .io
                    .read_to_fd(fd.as_fd(), max, self.0.settings().wait(false))
            }

            /// Reads without consuming (MSG_PEEK): waits for data like a read.
            pub fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
                self.0.peek(buf)
            }

            /// Shuts down reading (reads then return end of stream; nothing is
            /// sent), writing (sends the FIN once; the peer reads the end of
            /// the stream after all data), or both.
            pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
                self.0.shutdown(how)
            }

            /// Reads give up with `TimedOut` after `timeout` (`None`: never).
            pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
                self.0.set_timeout(timeout, false)
            }

            /// Writes give up with `TimedOut` after `timeout` (`None`: never).
            pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
                self.0.set_timeout(timeout, true)
            }

            /// The read timeout.
            pub fn read_timeout(&self) -> io::Result<Option<Duration>> {
                Ok(nanos_to_timeout(
                    self.0.settings().read_timeout.load(Relaxed),
                ))
            }

            /// The write timeout.
            pub fn write_timeout(&self) -> io::Result<Option<Duration>> {
                Ok(nanos_to_timeout(
                    self.0.settings().write_timeout.load(Relaxed),
                ))
            }

            /// In non-blocking mode reads and writes return `WouldBlock`
            /// instead of waiting. Wait for readiness on
            /// [`readiness_fd`](Self::readiness_fd): it is edge-triggered, so
            /// read or write until `WouldBlock` first.
            pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
                self.0.settings().nonblocking.store(nonblocking, Relaxed);
                Ok(())
            }

            /// The readiness descriptor: readable when the peer signalled
            /// (data, space, or the end of the channel). Edge-triggered: read
            /// or write until `WouldBlock` first.
            ///
            /// Made on first call (streams do not hold a descriptor each
            /// otherwise: the peer's signals for all of them arrive on one
            /// per peer process), and from then on a thread of this library
            /// watches for the peer's signals on its behalf.
            pub fn readiness_fd(&self) -> io::Result<BorrowedFd<'_>> {
                Ok(self.0 .0.io.readiness()?.as_fd())
            }

            /// Spin for up to `spin` before sleeping on the peer's signal
            /// (busy-poll, for latency at the cost of CPU); `None` never spins.
            pub fn set_busy_poll(&self, spin: Option<Duration>) {
                self.0 .0.io.set_busy_poll(spin);
            }

            /// Another handle to the same stream; settings are shared, and the
            /// stream closes when the last handle is dropped.
            pub fn try_clone(&self) -> io::Result<Self> {
                Ok(Self(self.0.clone()))
            }

            /// Stream bytes written so far.
            pub fn bytes_written(&self) -> u64 {
                self.0 .0.io.bytes_written()
            }
        }

        impl Read for $name {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.0.read(buf)
            }
        }

        impl Read for &$name {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.0.read(buf)
            }
        }

        impl Write for $name {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.write(buf)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }

        impl Write for &$name {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.write(buf)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
    };
}

/// A guest's connection to a host service, like `std::net::TcpStream`.
#[derive(Debug)]
pub struct VsockStream(pub(crate) Stream);

stream_methods!(VsockStream);

impl VsockStream {
    pub(crate) fn from_stream(stream: Stream) -> Self {
        Self(stream)
    }

    /// Connects to `addr` on the host (CID 2, or ANY) from an ephemeral port,
    /// waiting up to the default 2 seconds. Nobody listening fails promptly
    /// with `ConnectionRefused`.
    pub fn connect(guest: &Guest, addr: VsockAddr) -> io::Result<VsockStream> {
        Self::connect_with(guest, addr, &ConnectOptions::default())
    }

    /// [`connect`](Self::connect) with a timeout.
    pub fn connect_timeout(
        guest: &Guest,
        addr: VsockAddr,
        timeout: Duration,
    ) -> io::Result<VsockStream> {
        Self::connect_with(
            guest,
            addr,
            &ConnectOptions {
                timeout,
                ..ConnectOptions::default()
            },
        )
    }

    /// [`connect`](Self::connect) with options (ring size, timeout).
    pub fn connect_with(
        guest: &Guest,
        addr: VsockAddr,
        options: &ConnectOptions,
    ) -> io::Result<VsockStream> {
        if addr.cid != VMADDR_CID_HOST && addr.cid != VMADDR_CID_ANY {
            return Err(err(
                io::ErrorKind::AddrNotAvailable,
                format!(
                    "a guest can only connect to the host (CID 2), not CID {}",
                    addr.cid
                ),
            ));
        }
        let ready = guest
            .ep
            .guest_connect(addr.port, options.timeout, options.ring_pages)?;
        Ok(VsockStream(Stream::new(&guest.ep, ready)))
    }

    /// The host's address: CID 2 and the port connected to (or, for an
    /// accepted stream, the host's endpoint port).
    pub fn peer_addr(&self) -> io::Result<VsockAddr> {
        Ok(VsockAddr::new(
            VMADDR_CID_HOST,
            port_of(self.0 .0.ends.peer),
        ))
    }

    /// Our address: the local CID is reported as ANY, as hv_sock does.
    pub fn local_addr(&self) -> io::Result<VsockAddr> {
        Ok(VsockAddr::new(
            VMADDR_CID_ANY,
            port_of(self.0 .0.ends.local),
        ))
    }
}

/// The vsock port of a service id (Data1, as Linux takes it).
fn port_of(guid: Guid) -> u32 {
    guid.data1()
}

/// A host process's connection to a guest service, like `TcpStream`.
#[derive(Debug)]
pub struct HvStream(pub(crate) Stream);

stream_methods!(HvStream);

impl HvStream {
    pub(crate) fn from_stream(stream: Stream) -> Self {
        Self(stream)
    }

    /// Connects to `addr` (a VM id and a service id), waiting up to the
    /// default 10 seconds. Nobody listening fails promptly with
    /// `ConnectionRefused`; an unknown VM with `NotFound`.
    pub fn connect(host: &Host, addr: HvAddr) -> io::Result<HvStream> {
        Self::connect_timeout(host, addr, DEFAULT_HOST_CONNECT_TIMEOUT)
    }

    /// [`connect`](Self::connect) with a timeout.
    pub fn connect_timeout(host: &Host, addr: HvAddr, timeout: Duration) -> io::Result<HvStream> {
        let ready = host
            .ep
            .host_connect(addr.vm_id, None, addr.service_id, timeout)?;
        Ok(HvStream(Stream::new(&host.ep, ready)))
    }

    /// Connects to service `service_id` of the VM named `vm`.
    pub fn connect_by_name(
        host: &Host,
        vm: &str,
        service_id: Guid,
        timeout: Duration,
    ) -> io::Result<HvStream> {
        let ready = host
            .ep
            .host_connect(Guid::ZERO, Some(vm.to_owned()), service_id, timeout)?;
        Ok(HvStream(Stream::new(&host.ep, ready)))
    }

    /// The guest's address: its VM and service (for an accepted stream, the
    /// guest's endpoint id, whose Data1 is its vsock port).
    pub fn peer_addr(&self) -> io::Result<HvAddr> {
        let ends = self.0 .0.ends;
        Ok(HvAddr::new(ends.vm_id, ends.peer))
    }

    /// Our address: the host partition's own endpoint service id.
    pub fn local_addr(&self) -> io::Result<HvAddr> {
        Ok(HvAddr::new(Guid::ZERO, self.0 .0.ends.local))
    }
}

/// What both listener types share: the queue and its waiter.
#[derive(Debug)]
pub(crate) struct Listener {
    ep: Endpoint,
    pub(crate) shared: Arc<ListenerShared>,
    nonblocking: AtomicBool,
}

impl Listener {
    pub(crate) fn accept_nonblocking(&self) -> io::Result<Stream> {
        self.shared.waiter.drain()?;
        match self.shared.pop() {
            Some(ready) => Ok(Stream::new(&self.ep, ready)),
            None => match self.shared.closed() {
                Some(reason) => Err(err(io::ErrorKind::NotConnected, reason)),
                None => Err(io::ErrorKind::WouldBlock.into()),
            },
        }
    }

    fn accept(&self) -> io::Result<Stream> {
        let nonblocking = self.nonblocking.load(Relaxed);
        loop {
            if nonblocking {
                self.shared.waiter.drain()?;
            }
            let seen = self.shared.waiter.generation();
            if let Some(ready) = self.shared.pop() {
                return Ok(Stream::new(&self.ep, ready));
            }
            if let Some(reason) = self.shared.closed() {
                return Err(err(io::ErrorKind::NotConnected, reason));
            }
            if nonblocking {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.shared.waiter.wait(seen, None)?;
        }
    }
}

/// A guest listening on a vsock port, like `std::net::TcpListener`.
#[derive(Debug)]
pub struct VsockListener {
    pub(crate) inner: Listener,
    port: u32,
}

impl VsockListener {
    /// Listens on `addr.port` (the CID must be ANY or unspecified: a guest
    /// listens on its own CID) with the default backlog and ring size.
    pub fn bind(guest: &Guest, addr: VsockAddr) -> io::Result<VsockListener> {
        Self::bind_with(guest, addr, DEFAULT_BACKLOG, &ConnectOptions::default())
    }

    /// [`bind`](Self::bind) with a backlog and ring size for accepted
    /// connections.
    pub fn bind_with(
        guest: &Guest,
        addr: VsockAddr,
        backlog: usize,
        options: &ConnectOptions,
    ) -> io::Result<VsockListener> {
        if addr.port == crate::addr::VMADDR_PORT_ANY {
            return Err(err(
                io::ErrorKind::InvalidInput,
                "choose a port to listen on",
            ));
        }
        let shared = guest
            .ep
            .guest_listen(addr.port, backlog, options.ring_pages)?;
        Ok(VsockListener {
            inner: Listener {
                ep: guest.ep.clone(),
                shared,
                nonblocking: AtomicBool::new(false),
            },
            port: addr.port,
        })
    }

    /// Waits for the host to connect.
    pub fn accept(&self) -> io::Result<(VsockStream, VsockAddr)> {
        let stream = VsockStream(self.inner.accept()?);
        let peer = stream.peer_addr()?;
        Ok((stream, peer))
    }

    /// An endless iterator over accepted connections.
    pub fn incoming(&self) -> impl Iterator<Item = io::Result<VsockStream>> + '_ {
        std::iter::repeat_with(|| self.accept().map(|(s, _)| s))
    }

    /// The address listened on.
    pub fn local_addr(&self) -> io::Result<VsockAddr> {
        Ok(VsockAddr::new(VMADDR_CID_ANY, self.port))
    }

    /// In non-blocking mode `accept` returns `WouldBlock` instead of waiting.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.inner.nonblocking.store(nonblocking, Relaxed);
        Ok(())
    }
}

impl Drop for VsockListener {
    fn drop(&mut self) {
        self.inner.ep.guest_unlisten(self.port);
    }
}

/// Readable when a connection is queued (edge-triggered).
impl AsFd for VsockListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.shared.waiter.event().as_fd()
    }
}

/// The host listening on a service, like `std::net::TcpListener`.
#[derive(Debug)]
pub struct HvListener {
    pub(crate) inner: Listener,
    addr: HvAddr,
}

impl HvListener {
    /// Listens on `addr.service_id` for connections from the VMs
    /// `addr.vm_id` names (a VM id, or ZERO/WILDCARD for all VMs).
    pub fn bind(host: &Host, addr: HvAddr) -> io::Result<HvListener> {
        Self::bind_with_backlog(host, addr, DEFAULT_BACKLOG)
    }

    /// [`bind`](Self::bind) with a backlog.
    pub fn bind_with_backlog(host: &Host, addr: HvAddr, backlog: usize) -> io::Result<HvListener> {
        let shared = host.ep.host_listen(addr.service_id, addr.vm_id, backlog)?;
        Ok(HvListener {
            inner: Listener {
                ep: host.ep.clone(),
                shared,
                nonblocking: AtomicBool::new(false),
            },
            addr,
        })
    }

    /// Waits for a guest to connect.
    pub fn accept(&self) -> io::Result<(HvStream, HvAddr)> {
        let stream = HvStream(self.inner.accept()?);
        let peer = stream.peer_addr()?;
        Ok((stream, peer))
    }

    /// An endless iterator over accepted connections.
    pub fn incoming(&self) -> impl Iterator<Item = io::Result<HvStream>> + '_ {
        std::iter::repeat_with(|| self.accept().map(|(s, _)| s))
    }

    /// The address listened on.
    pub fn local_addr(&self) -> io::Result<HvAddr> {
        Ok(self.addr)
    }

    /// In non-blocking mode `accept` returns `WouldBlock` instead of waiting.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.inner.nonblocking.store(nonblocking, Relaxed);
        Ok(())
    }
}

impl Drop for HvListener {
    fn drop(&mut self) {
        self.inner
            .ep
            .host_unlisten(self.addr.service_id, self.addr.vm_id);
    }
}

/// Readable when a connection is queued (edge-triggered).
impl AsFd for HvListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.shared.waiter.event().as_fd()
    }
}
