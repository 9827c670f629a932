//! The process's connection to the hvsock host, made on first use: the role
//! (guest of a VM, or the root partition), the endpoint of the `hvsock`
//! library, CIDs, and the relay thread.
//!
//! Configuration comes from the environment `hvsock run` sets:
//! `HVSOCK_PRELOAD_SOCKET` (the host socket; default: the library's
//! default path) and `HVSOCK_PRELOAD_VM` (guest of that VM; unset: host
//! role). A forked child makes its own connection on first use: the
//! parent's threads do not exist in it.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hvsock::{
    ConnectOptions, Guest, Guid, Host, HvAddr, HvListener, HvStream, VsockAddr, VsockListener,
    VsockStream,
};
use vmbus::ext::{ExtEvent, ExtRequest, VmInfo};

use crate::relay::Relay;
use crate::sock::{VmAddr, ANY, CID_HOST};
use crate::spin::Spin;

/// Environment variable: the host socket.
pub const ENV_SOCKET: &str = "HVSOCK_PRELOAD_SOCKET";
/// Environment variable: the VM whose guest the process is.
pub const ENV_VM: &str = "HVSOCK_PRELOAD_VM";

/// The process's side of the VMBus.
#[derive(Debug)]
pub(crate) enum Side {
    /// A guest of a VM, whose CID is `cid`.
    Guest { guest: Guest, cid: u32 },
    /// The root partition.
    Host(Host),
}

/// The process's connection to the host.
#[derive(Debug)]
pub(crate) struct Runtime {
    pid: u32,
    socket: PathBuf,
    pub(crate) side: Side,
    pub(crate) relay: Relay,
    /// Host role: VM id → CID, refreshed when an id is missing.
    vms: std::sync::Mutex<Vec<VmInfo>>,
}

static RUNTIME: Spin<Option<Arc<Runtime>>> = Spin::new(None);

/// The configured role: `Some(vm)` for a guest.
pub(crate) fn configured_vm() -> Option<String> {
    std::env::var(ENV_VM).ok().filter(|v| !v.is_empty())
}

fn configured_socket() -> PathBuf {
    std::env::var_os(ENV_SOCKET)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(vmbus::daemon::default_socket_path)
}

/// The runtime, connecting on first use (and again in a forked child).
pub(crate) fn get() -> io::Result<Arc<Runtime>> {
    let pid = std::process::id();
    RUNTIME.with(|slot| {
        if let Some(rt) = slot.as_ref() {
            if rt.pid == pid {
                return Ok(rt.clone());
            }
            // Inherited across fork: its threads are not here, so it must
            // never be dropped (dropping joins them).
            if let Some(old) = slot.take() {
                std::mem::forget(old);
            }
        }
        let rt = Arc::new(crate::libc_next::with_signals_blocked(start)?);
        *slot = Some(rt.clone());
        Ok(rt)
    })
}

fn start() -> io::Result<Runtime> {
    let socket = configured_socket();
    let side = match configured_vm() {
        Some(vm) => {
            let guest = Guest::connect_daemon_at(&socket, &vm)?;
            let vm_socket = vmbus::daemon::vm_socket_path(&socket, &vm);
            let cid = list_vms(&vm_socket)?
                .into_iter()
                .find(|v| v.name == vm)
                .map_or(ANY, |v| v.cid);
            Side::Guest { guest, cid }
        }
        None => Side::Host(Host::connect_daemon_at(&socket)?),
    };
    Ok(Runtime {
        pid: std::process::id(),
        socket,
        side,
        relay: Relay::start()?,
        vms: std::sync::Mutex::new(Vec::new()),
    })
}

fn list_vms(path: &std::path::Path) -> io::Result<Vec<VmInfo>> {
    let sock = vmbus::daemon::control::connect(path).map_err(io::Error::other)?;
    match vmbus::daemon::control::request(&sock, &ExtRequest::VmList) {
        Ok(ExtEvent::VmList { vms }) => Ok(vms),
        Ok(other) => Err(io::Error::other(format!("unexpected answer {other:?}"))),
        Err(e) => Err(io::Error::other(e)),
    }
}

/// A connected stream of either role.
#[derive(Debug)]
pub(crate) enum AnyStream {
    Guest(VsockStream),
    Host(HvStream),
}

/// A listener of either role.
#[derive(Debug)]
pub(crate) enum AnyListener {
    Guest(VsockListener),
    Host(HvListener),
}

impl Runtime {
    /// Our CID: the VM's in a guest, the host's (2) in the root partition.
    pub(crate) fn local_cid(&self) -> u32 {
        match &self.side {
            Side::Guest { cid, .. } => *cid,
            Side::Host(_) => CID_HOST,
        }
    }

    /// Host role: the VMs, fresh from the host.
    fn refresh_vms(&self) -> io::Result<Vec<VmInfo>> {
        let vms = list_vms(&self.socket)?;
        *self.vms.lock().unwrap_or_else(|e| e.into_inner()) = vms.clone();
        Ok(vms)
    }

    /// Host role: the CID of VM `id` (ANY if unknown).
    pub(crate) fn cid_of(&self, id: Guid) -> u32 {
        let find = |vms: &[VmInfo]| vms.iter().find(|v| v.id == id).map(|v| v.cid);
        if let Some(cid) = find(&self.vms.lock().unwrap_or_else(|e| e.into_inner())) {
            return cid;
        }
        self.refresh_vms()
            .ok()
            .and_then(|vms| find(&vms))
            .unwrap_or(ANY)
    }

    /// Connects to `addr`, blocking up to `timeout`. Errors are errno values
    /// as Linux gives them.
    pub(crate) fn connect(
        &self,
        addr: VmAddr,
        timeout: Duration,
        ring_pages: u32,
    ) -> Result<(AnyStream, VmAddr, VmAddr), i32> {
        let timeout = timeout.max(Duration::from_millis(1));
        match &self.side {
            Side::Guest { guest, cid } => {
                check_guest_target(addr.cid)?;
                let options = ConnectOptions {
                    timeout,
                    ring_pages: (ring_pages, ring_pages),
                };
                let s =
                    VsockStream::connect_with(guest, VsockAddr::new(CID_HOST, addr.port), &options)
                        .map_err(|e| errno_of(&e))?;
                let local = s.local_addr().map_err(|e| errno_of(&e))?;
                let peer = s.peer_addr().map_err(|e| errno_of(&e))?;
                Ok((
                    AnyStream::Guest(s),
                    VmAddr {
                        cid: *cid,
                        port: local.port,
                    },
                    VmAddr {
                        cid: CID_HOST,
                        port: peer.port,
                    },
                ))
            }
            Side::Host(host) => {
                if addr.cid <= CID_HOST || addr.cid == ANY {
                    return Err(libc::ENETUNREACH);
                }
                let vm = self
                    .refresh_vms()
                    .map_err(|_| libc::ENODEV)?
                    .into_iter()
                    .find(|v| v.cid == addr.cid)
                    .ok_or(libc::ENODEV)?;
                let s = HvStream::connect_timeout(
                    host,
                    HvAddr::from_vsock_port(vm.id, addr.port),
                    timeout,
                )
                .map_err(|e| errno_of(&e))?;
                let local = s.local_addr().map_err(|e| errno_of(&e))?;
                Ok((
                    AnyStream::Host(s),
                    VmAddr {
                        cid: CID_HOST,
                        port: local.service_id.data1(),
                    },
                    addr,
                ))
            }
        }
    }

    /// Listens on `port` with `backlog`.
    pub(crate) fn listen(
        &self,
        port: u32,
        backlog: usize,
        ring_pages: u32,
    ) -> Result<AnyListener, i32> {
        let listener = match &self.side {
            Side::Guest { guest, .. } => {
                let options = ConnectOptions {
                    ring_pages: (ring_pages, ring_pages),
                    ..ConnectOptions::default()
                };
                let l =
                    VsockListener::bind_with(guest, VsockAddr::new(ANY, port), backlog, &options)
                        .map_err(|e| errno_of(&e))?;
                l.set_nonblocking(true).map_err(|e| errno_of(&e))?;
                AnyListener::Guest(l)
            }
            Side::Host(host) => {
                let l = HvListener::bind_with_backlog(
                    host,
                    HvAddr::from_vsock_port(Guid::ZERO, port),
                    backlog,
                )
                .map_err(|e| errno_of(&e))?;
                l.set_nonblocking(true).map_err(|e| errno_of(&e))?;
                AnyListener::Host(l)
            }
        };
        Ok(listener)
    }
}

/// Which remote CIDs a guest can reach: the host (2) or ANY; the local
/// transport (1) does not exist here (ENODEV); anything else is
/// unreachable, as hv_sock's `stream_allow` refuses it.
pub(crate) fn check_guest_target(cid: u32) -> Result<(), i32> {
    match cid {
        CID_HOST | ANY => Ok(()),
        1 => Err(libc::ENODEV),
        _ => Err(libc::ENETUNREACH),
    }
}

/// An `io::Error` from the library as the errno Linux would give.
pub(crate) fn errno_of(e: &io::Error) -> i32 {
    if let Some(raw) = e.raw_os_error() {
        return raw;
    }
    use io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => libc::ECONNREFUSED,
        K::ConnectionReset => libc::ECONNRESET,
        K::ConnectionAborted => libc::ECONNABORTED,
        K::NotFound => libc::ENODEV,
        K::AddrInUse => libc::EADDRINUSE,
        K::AddrNotAvailable => libc::EADDRNOTAVAIL,
        K::TimedOut => libc::ETIMEDOUT,
        K::WouldBlock => libc::EAGAIN,
        K::BrokenPipe => libc::EPIPE,
        K::NotConnected => libc::ENOTCONN,
        K::InvalidInput => libc::EINVAL,
        K::PermissionDenied => libc::EACCES,
        K::Interrupted => libc::EINTR,
        _ => libc::EIO,
    }
}

/// Ring pages for a vsock buffer size, as later kernels size rings from the
/// socket buffer: one control page plus the data pages, 6 to 64.
pub(crate) fn ring_pages_for(buffer: u64) -> u32 {
    let data_pages = buffer.div_ceil(4096);
    (data_pages + 1).clamp(
        u64::from(hvsock::SEED_RING_PAGES),
        u64::from(hvsock::MAX_RING_PAGES),
    ) as u32
}

/// At exit: lets the relay forward what the program wrote before the
/// process (and with it the relay thread) ends.
pub(crate) fn flush_at_exit() {
    let pid = std::process::id();
    let rt = RUNTIME.with(|slot| slot.as_ref().filter(|rt| rt.pid == pid).cloned());
    if let Some(rt) = rt {
        rt.relay.flush(EXIT_FLUSH_LIMIT);
    }
}

/// How long the exit may wait for the relay (a peer that stopped reading
/// cannot hold the program forever).
const EXIT_FLUSH_LIMIT: Duration = Duration::from_secs(10);

/// Fork handlers: the runtime slot is held across `fork`.
pub(crate) fn fork_prepare() {
    RUNTIME.acquire();
}

/// After `fork`, in parent and child.
pub(crate) fn fork_release() {
    RUNTIME.release();
}
