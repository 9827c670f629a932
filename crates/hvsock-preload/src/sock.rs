//! What the shim knows about each AF_VSOCK socket it made: its phase,
//! addresses, options and pending error, and the table from descriptor
//! numbers to sockets.
//!
//! A socket is identified by the kernel object behind its descriptor (the
//! device and inode of the socketpair end the program holds), so a number
//! that was closed behind the shim's back (`close_range`, a descriptor
//! passed away) is recognised as stale and forgotten. `dup`s share one
//! [`Sock`]; a forked child has its own copy of the table.

use std::collections::BTreeMap;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::spin::Spin;

/// `AF_VSOCK`.
pub(crate) const AF_VSOCK: i32 = 40;
/// `VMADDR_CID_ANY` and `VMADDR_PORT_ANY`.
pub(crate) const ANY: u32 = u32::MAX;
/// `VMADDR_CID_HOST`.
pub(crate) const CID_HOST: u32 = 2;
/// `sizeof(struct sockaddr_vm)`.
pub(crate) const SOCKADDR_VM_LEN: usize = 16;

/// Linux's defaults for `SO_VM_SOCKETS_BUFFER_*` (256 KiB, 128 B, 256 KiB).
pub(crate) const DEFAULT_BUFFER: u64 = 256 * 1024;
const DEFAULT_BUFFER_MIN: u64 = 128;
const DEFAULT_BUFFER_MAX: u64 = 256 * 1024;
/// The vsock default connect timeout.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A socket's kernel identity: (device, inode) of the program's end.
pub(crate) type Key = (u64, u64);

/// The identity of the socket behind `fd`, if it is one.
pub(crate) fn key_of(fd: BorrowedFd<'_>) -> Option<Key> {
    let st = rustix::fs::fstat(fd).ok()?;
    (rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Socket)
        .then_some((st.st_dev, st.st_ino))
}

/// A vsock address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VmAddr {
    pub(crate) cid: u32,
    pub(crate) port: u32,
}

impl VmAddr {
    pub(crate) const ANY: VmAddr = VmAddr {
        cid: ANY,
        port: ANY,
    };

    /// `struct sockaddr_vm`, in native byte order as the kernel has it.
    pub(crate) fn to_bytes(self) -> [u8; SOCKADDR_VM_LEN] {
        let mut b = [0u8; SOCKADDR_VM_LEN];
        b[0..2].copy_from_slice(&(AF_VSOCK as u16).to_ne_bytes());
        b[4..8].copy_from_slice(&self.port.to_ne_bytes());
        b[8..12].copy_from_slice(&self.cid.to_ne_bytes());
        b
    }

    /// Parses a `struct sockaddr_vm`: `EINVAL` if short, `EAFNOSUPPORT` if
    /// of another family (as `vsock_addr_cast` does).
    pub(crate) fn from_bytes(b: &[u8]) -> Result<VmAddr, i32> {
        if b.len() < SOCKADDR_VM_LEN {
            return Err(libc::EINVAL);
        }
        let word = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        if u16::from_ne_bytes([b[0], b[1]]) != AF_VSOCK as u16 {
            return Err(libc::EAFNOSUPPORT);
        }
        Ok(VmAddr {
            port: word(4),
            cid: word(8),
        })
    }
}

/// Where a socket is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Created (maybe bound), or back here after a failed connect.
    Unconnected,
    /// A non-blocking connect is under way.
    Connecting,
    /// Connected: bytes flow through the relay.
    Connected { local: VmAddr, peer: VmAddr },
    /// Listening: connections arrive as records on the descriptor.
    Listening,
}

/// Per-socket state, shared by a socket's `dup`s.
#[derive(Debug)]
pub(crate) struct SockState {
    pub(crate) phase: Phase,
    /// The address given to `bind` (CID ANY or ours), if any.
    pub(crate) bound: Option<VmAddr>,
    /// Pending error for `SO_ERROR` (0 for none).
    pub(crate) so_error: i32,
    pub(crate) buffer_size: u64,
    pub(crate) buffer_min: u64,
    pub(crate) buffer_max: u64,
    pub(crate) connect_timeout: Duration,
}

/// An AF_VSOCK socket the shim made.
#[derive(Debug)]
pub(crate) struct Sock {
    pub(crate) key: Key,
    /// `SOCK_SEQPACKET` (which hv_sock cannot connect) rather than stream.
    pub(crate) seqpacket: bool,
    /// The shim's end of the socketpair until the relay takes it over
    /// (connect, listen).
    pub(crate) relay_end: Mutex<Option<OwnedFd>>,
    st: Mutex<SockState>,
}

impl Sock {
    pub(crate) fn new(key: Key, seqpacket: bool, relay_end: Option<OwnedFd>, phase: Phase) -> Self {
        Self {
            key,
            seqpacket,
            relay_end: Mutex::new(relay_end),
            st: Mutex::new(SockState {
                phase,
                bound: None,
                so_error: 0,
                buffer_size: DEFAULT_BUFFER,
                buffer_min: DEFAULT_BUFFER_MIN,
                buffer_max: DEFAULT_BUFFER_MAX,
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            }),
        }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, SockState> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn take_relay_end(&self) -> Option<OwnedFd> {
        self.relay_end
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    pub(crate) fn put_relay_end(&self, fd: OwnedFd) {
        *self.relay_end.lock().unwrap_or_else(|e| e.into_inner()) = Some(fd);
    }
}

/// Descriptor number → socket.
static TABLE: Spin<BTreeMap<RawFd, Arc<Sock>>> = Spin::new(BTreeMap::new());

/// The socket behind `fd`, if the shim made it and `fd` still refers to it.
pub(crate) fn lookup(fd: BorrowedFd<'_>) -> Option<Arc<Sock>> {
    use std::os::fd::AsRawFd;
    let raw = fd.as_raw_fd();
    let sock = TABLE.with(|t| t.get(&raw).cloned())?;
    if key_of(fd) == Some(sock.key) {
        return Some(sock);
    }
    // Stale: the number now names something else.
    let stale = TABLE.with(|t| {
        if t.get(&raw).is_some_and(|s| Arc::ptr_eq(s, &sock)) {
            t.remove(&raw)
        } else {
            None
        }
    });
    drop(stale);
    None
}

/// Records that `fd` names `sock`; whatever it named before is forgotten.
pub(crate) fn insert(fd: RawFd, sock: Arc<Sock>) {
    let old = TABLE.with(|t| t.insert(fd, sock));
    drop(old);
}

/// Forgets `fd` (closed or replaced). The socket's state goes when its
/// last descriptor in this process does.
pub(crate) fn remove(fd: RawFd) {
    let old = TABLE.with(|t| t.remove(&fd));
    // Dropped outside the lock: dropping may close the relay end, and close
    // is interposed.
    drop(old);
}

/// Whether `fd` is in the table (no staleness check; for fast paths).
pub(crate) fn contains(fd: RawFd) -> bool {
    TABLE.with(|t| t.contains_key(&fd))
}

/// Fork handlers: hold the table across `fork` so the child gets it whole.
pub(crate) fn fork_prepare() {
    TABLE.acquire();
}

/// After `fork`, in parent and child.
pub(crate) fn fork_release() {
    TABLE.release();
}
