//! What each intercepted call does to an AF_VSOCK socket, in safe Rust.
//!
//! [`crate::ffi`] turns the C arguments into descriptors, byte slices and
//! numbers and calls these functions; errors are errno values, as Linux
//! returns them. Everything that the kernel can do on the program's
//! socketpair end (read, write, poll, blocking, O_NONBLOCK, SO_RCVTIMEO,
//! SIOCINQ, MSG_PEEK, shutdown of a connected socket) is left to it.

use std::collections::BTreeSet;
use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use rustix::fs::OFlags;
use rustix::io::{Errno, FdFlags};
use rustix::net::{self, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendFlags};

use crate::relay::RECORD;
use crate::runtime::{self, check_guest_target};
use crate::sock::{self, Phase, Sock, VmAddr, AF_VSOCK, ANY, CID_HOST, DEFAULT_BUFFER};
use crate::spin::Spin;

/// errno-valued results.
pub(crate) type Res<T> = Result<T, i32>;

/// `SOL_SOCKET` options answered here.
const SO_TYPE: i32 = libc::SO_TYPE;
const SO_ERROR: i32 = libc::SO_ERROR;
const SO_DOMAIN: i32 = libc::SO_DOMAIN;
const SO_PROTOCOL: i32 = libc::SO_PROTOCOL;
const SO_ACCEPTCONN: i32 = libc::SO_ACCEPTCONN;
const SO_ZEROCOPY: i32 = 60;

/// `AF_VSOCK`-level options (`linux/vm_sockets.h`).
const SO_VM_SOCKETS_BUFFER_SIZE: i32 = 0;
const SO_VM_SOCKETS_BUFFER_MIN_SIZE: i32 = 1;
const SO_VM_SOCKETS_BUFFER_MAX_SIZE: i32 = 2;
const SO_VM_SOCKETS_CONNECT_TIMEOUT_OLD: i32 = 6;
const SO_VM_SOCKETS_CONNECT_TIMEOUT_NEW: i32 = 8;

/// `IOCTL_VM_SOCKETS_GET_LOCAL_CID`: `_IO(7, 0xb9)`.
pub(crate) const IOCTL_VM_SOCKETS_GET_LOCAL_CID: std::ffi::c_ulong = 0x7b9;

/// `MSG_ZEROCOPY`.
pub(crate) const MSG_ZEROCOPY: i32 = 0x400_0000;

/// Ports bound by sockets of this process (EADDRINUSE before listen).
static BOUND: Spin<BTreeSet<u32>> = Spin::new(BTreeSet::new());

impl Drop for Sock {
    fn drop(&mut self) {
        let bound = self.state().bound;
        if let Some(addr) = bound {
            BOUND.with(|b| b.remove(&addr.port));
        }
    }
}

fn errno(e: Errno) -> i32 {
    e.raw_os_error()
}

/// `socket(AF_VSOCK, ty, protocol)`.
pub(crate) fn socket(ty: i32, protocol: i32) -> Res<RawFd> {
    let flags = ty & (libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC);
    let base = ty & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC);
    if protocol != 0 && protocol != AF_VSOCK {
        return Err(libc::EPROTONOSUPPORT);
    }
    let seqpacket = match base {
        libc::SOCK_STREAM => false,
        libc::SOCK_SEQPACKET => true,
        // Datagrams need a datagram transport, which hv_sock is not.
        libc::SOCK_DGRAM => return Err(libc::ENODEV),
        _ => return Err(libc::ESOCKTNOSUPPORT),
    };
    let (app, relay) = net::socketpair(
        net::AddressFamily::UNIX,
        net::SocketType::STREAM,
        net::SocketFlags::CLOEXEC,
        None,
    )
    .map_err(errno)?;
    if flags & libc::SOCK_CLOEXEC == 0 {
        rustix::io::fcntl_setfd(&app, FdFlags::empty()).map_err(errno)?;
    }
    if flags & libc::SOCK_NONBLOCK != 0 {
        rustix::fs::fcntl_setfl(&app, OFlags::NONBLOCK).map_err(errno)?;
    }
    let key = sock::key_of(app.as_fd()).ok_or(libc::ENOTSOCK)?;
    let sock = Arc::new(Sock::new(key, seqpacket, Some(relay), Phase::Unconnected));
    let raw = app.into_raw_fd();
    sock::insert(raw, sock);
    Ok(raw)
}

/// The local CID, connecting to the host if needed.
fn local_cid() -> Res<u32> {
    match runtime::configured_vm() {
        None => Ok(CID_HOST),
        Some(_) => runtime::get()
            .map(|rt| rt.local_cid())
            .map_err(|_| libc::ENODEV),
    }
}

/// A port for `bind` to VMADDR_PORT_ANY: above the reserved ones, varied.
fn ephemeral_port() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    1024 + (h.finish() % u64::from(0x7fff_ffffu32 - 1024)) as u32
}

/// `bind`.
pub(crate) fn bind(sock: &Sock, addr: &[u8]) -> Res<()> {
    let addr = VmAddr::from_bytes(addr)?;
    let mut st = sock.state();
    if st.bound.is_some() || st.phase != Phase::Unconnected {
        return Err(libc::EINVAL);
    }
    if addr.cid != ANY && addr.cid != local_cid()? {
        return Err(libc::EADDRNOTAVAIL);
    }
    let port = if addr.port == ANY {
        ephemeral_port()
    } else {
        addr.port
    };
    if port < 1024 && !rustix::process::geteuid().is_root() {
        return Err(libc::EACCES);
    }
    if !BOUND.with(|b| b.insert(port)) {
        return Err(libc::EADDRINUSE);
    }
    st.bound = Some(VmAddr {
        cid: addr.cid,
        port,
    });
    Ok(())
}

fn ring_pages(buffer: u64) -> u32 {
    if buffer == DEFAULT_BUFFER {
        hvsock::DEFAULT_RING_PAGES
    } else {
        runtime::ring_pages_for(buffer)
    }
}

/// `listen`.
pub(crate) fn listen(sock: &Sock, backlog: i32) -> Res<()> {
    let (port, pages) = {
        let st = sock.state();
        match st.phase {
            Phase::Listening => return Ok(()),
            Phase::Unconnected => {}
            _ => return Err(libc::EINVAL),
        }
        let Some(bound) = st.bound else {
            return Err(libc::EINVAL);
        };
        (bound.port, ring_pages(st.buffer_size))
    };
    if sock.seqpacket {
        // hv_sock lets a SOCK_SEQPACKET socket listen; nothing ever arrives.
        sock.state().phase = Phase::Listening;
        return Ok(());
    }
    let rt = runtime::get().map_err(|_| libc::ENODEV)?;
    let relay_end = sock.take_relay_end().ok_or(libc::EINVAL)?;
    let backlog = usize::try_from(backlog).unwrap_or(0).clamp(1, 4096);
    match rt.listen(port, backlog, pages) {
        Ok(listener) => {
            sock.state().phase = Phase::Listening;
            rt.relay.add_listener(relay_end, listener, port, rt.clone());
            Ok(())
        }
        Err(e) => {
            sock.put_relay_end(relay_end);
            Err(e)
        }
    }
}

/// `accept4`: the next connection's descriptor and the peer's address.
pub(crate) fn accept(sock: &Sock, fd: BorrowedFd<'_>, flags: i32) -> Res<(RawFd, VmAddr)> {
    if flags & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) != 0 {
        return Err(libc::EINVAL);
    }
    if sock.state().phase != Phase::Listening {
        return Err(libc::EINVAL);
    }
    let mut record = [0u8; RECORD];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut recv_flags = RecvFlags::empty();
    if flags & libc::SOCK_CLOEXEC != 0 {
        recv_flags |= RecvFlags::CMSG_CLOEXEC;
    }
    let got = net::recvmsg(
        fd,
        &mut [IoSliceMut::new(&mut record)],
        &mut control,
        recv_flags,
    )
    .map_err(errno)?;
    let mut conn: Option<OwnedFd> = None;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            for fd in fds {
                conn.get_or_insert(fd);
            }
        }
    }
    if got.bytes == 0 {
        // The listener is gone (the relay closed its end).
        return Err(libc::EINVAL);
    }
    let conn = conn.ok_or(libc::ECONNABORTED)?;
    if got.bytes != RECORD {
        return Err(libc::ECONNABORTED);
    }
    let word = |i: usize| {
        u32::from_ne_bytes([
            record[i * 4],
            record[i * 4 + 1],
            record[i * 4 + 2],
            record[i * 4 + 3],
        ])
    };
    let peer = VmAddr {
        cid: word(0),
        port: word(1),
    };
    let local = VmAddr {
        cid: word(2),
        port: word(3),
    };
    if flags & libc::SOCK_NONBLOCK != 0 {
        rustix::fs::fcntl_setfl(&conn, OFlags::NONBLOCK).map_err(errno)?;
    }
    let key = sock::key_of(conn.as_fd()).ok_or(libc::ECONNABORTED)?;
    let new = Arc::new(Sock::new(
        key,
        false,
        None,
        Phase::Connected { local, peer },
    ));
    let raw = conn.into_raw_fd();
    sock::insert(raw, new);
    Ok((raw, peer))
}

/// `connect`.
pub(crate) fn connect(sock: &Arc<Sock>, fd: BorrowedFd<'_>, addr: &[u8]) -> Res<()> {
    let addr = VmAddr::from_bytes(addr)?;
    let (timeout, pages) = {
        let st = sock.state();
        match st.phase {
            Phase::Connected { .. } => return Err(libc::EISCONN),
            Phase::Connecting => return Err(libc::EALREADY),
            Phase::Listening => return Err(libc::EINVAL),
            Phase::Unconnected => {}
        }
        (st.connect_timeout, ring_pages(st.buffer_size))
    };
    if runtime::configured_vm().is_some() {
        check_guest_target(addr.cid)?;
    }
    if sock.seqpacket {
        // hv_sock has no seqpacket support (`seqpacket_allow`).
        return Err(libc::ESOCKTNOSUPPORT);
    }
    let rt = runtime::get().map_err(|_| libc::ENODEV)?;
    let relay_end = sock.take_relay_end().ok_or(libc::EINVAL)?;
    let nonblocking = rustix::fs::fcntl_getfl(fd)
        .map(|f| f.contains(OFlags::NONBLOCK))
        .unwrap_or(false);
    if !nonblocking {
        return match rt.connect(addr, timeout, pages) {
            Ok((stream, local, peer)) => {
                sock.state().phase = Phase::Connected { local, peer };
                rt.relay.add_conn(relay_end, stream, Arc::downgrade(sock));
                Ok(())
            }
            Err(e) => {
                sock.put_relay_end(relay_end);
                Err(e)
            }
        };
    }
    // Non-blocking: the descriptor must not be writable until the connect
    // is over, so fill its send buffer; the filler is taken out again (by
    // the connecting thread, from the shim's end) when it is.
    let filler = fill(fd);
    sock.state().phase = Phase::Connecting;
    let sock = sock.clone();
    let spawned = crate::libc_next::with_signals_blocked(|| {
        let rt = rt.clone();
        let sock = sock.clone();
        std::thread::Builder::new()
            .name("hvsock-connect".into())
            .spawn(move || {
                crate::inside::mark_thread();
                let result = rt.connect(addr, timeout, pages);
                match result {
                    Ok((stream, local, peer)) => {
                        sock.state().phase = Phase::Connected { local, peer };
                        drain(&relay_end, filler);
                        rt.relay.add_conn(relay_end, stream, Arc::downgrade(&sock));
                    }
                    Err(e) => {
                        {
                            let mut st = sock.state();
                            st.phase = Phase::Unconnected;
                            st.so_error = e;
                        }
                        drain(&relay_end, filler);
                        sock.put_relay_end(relay_end);
                    }
                }
            })
    });
    match spawned {
        Ok(_) => Err(libc::EINPROGRESS),
        Err(_) => {
            sock.state().phase = Phase::Unconnected;
            Err(libc::ENOBUFS)
        }
    }
}

/// Fills `fd`'s send buffer with zeros until it would block; how much.
fn fill(fd: BorrowedFd<'_>) -> usize {
    let zeros = [0u8; 16384];
    let mut total = 0;
    while let Ok(n) = net::send(fd, &zeros, SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
        if n == 0 {
            break;
        }
        total += n;
    }
    total
}

/// Reads and discards `n` bytes (the filler) from the shim's end.
fn drain(fd: &OwnedFd, mut n: usize) {
    let mut buf = [0u8; 16384];
    while n > 0 {
        let want = n.min(buf.len());
        match net::recv(fd, &mut buf[..want], RecvFlags::DONTWAIT) {
            Ok((_, 0)) => return,
            Ok((_, got)) => n -= got,
            Err(Errno::INTR) => {}
            Err(_) => return,
        }
    }
}

/// `getsockname`.
pub(crate) fn local_addr(sock: &Sock) -> VmAddr {
    let st = sock.state();
    match st.phase {
        Phase::Connected { local, .. } => local,
        _ => st.bound.unwrap_or(VmAddr::ANY),
    }
}

/// `getpeername`.
pub(crate) fn peer_addr(sock: &Sock) -> Res<VmAddr> {
    match sock.state().phase {
        Phase::Connected { peer, .. } => Ok(peer),
        _ => Err(libc::ENOTCONN),
    }
}

/// A `getsockopt` answer: the value's bytes.
pub(crate) enum OptValue {
    /// Answered here.
    Value(Vec<u8>),
    /// Not ours: ask the kernel (the socketpair end).
    Kernel,
}

fn timeval_bytes(d: Duration) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&(d.as_secs() as i64).to_ne_bytes());
    v.extend_from_slice(&i64::from(d.subsec_micros()).to_ne_bytes());
    v
}

/// `getsockopt`.
pub(crate) fn getsockopt(sock: &Sock, level: i32, name: i32) -> Res<OptValue> {
    let int = |v: i32| Ok(OptValue::Value(v.to_ne_bytes().to_vec()));
    if level == libc::SOL_SOCKET {
        return match name {
            SO_ERROR => {
                let mut st = sock.state();
                let e = std::mem::take(&mut st.so_error);
                int(e)
            }
            SO_DOMAIN => int(AF_VSOCK),
            SO_PROTOCOL => int(0),
            SO_TYPE => int(if sock.seqpacket {
                libc::SOCK_SEQPACKET
            } else {
                libc::SOCK_STREAM
            }),
            SO_ACCEPTCONN => int(i32::from(sock.state().phase == Phase::Listening)),
            SO_ZEROCOPY => int(0),
            _ => Ok(OptValue::Kernel),
        };
    }
    if level != AF_VSOCK {
        return Err(libc::ENOPROTOOPT);
    }
    let st = sock.state();
    let u64v = |v: u64| Ok(OptValue::Value(v.to_ne_bytes().to_vec()));
    match name {
        SO_VM_SOCKETS_BUFFER_SIZE => u64v(st.buffer_size),
        SO_VM_SOCKETS_BUFFER_MIN_SIZE => u64v(st.buffer_min),
        SO_VM_SOCKETS_BUFFER_MAX_SIZE => u64v(st.buffer_max),
        SO_VM_SOCKETS_CONNECT_TIMEOUT_OLD | SO_VM_SOCKETS_CONNECT_TIMEOUT_NEW => {
            Ok(OptValue::Value(timeval_bytes(st.connect_timeout)))
        }
        _ => Err(libc::ENOPROTOOPT),
    }
}

/// `setsockopt`: `Ok(true)` when handled here, `Ok(false)` to pass on to
/// the kernel.
pub(crate) fn setsockopt(sock: &Sock, level: i32, name: i32, value: &[u8]) -> Res<bool> {
    if level == libc::SOL_SOCKET {
        return match name {
            // hv_sock cannot do zero-copy sends.
            SO_ZEROCOPY => Err(libc::EOPNOTSUPP),
            _ => Ok(false),
        };
    }
    if level != AF_VSOCK {
        return Err(libc::ENOPROTOOPT);
    }
    let u64_arg = || -> Res<u64> {
        let b: [u8; 8] = value
            .get(..8)
            .ok_or(libc::EINVAL)?
            .try_into()
            .map_err(|_| libc::EINVAL)?;
        Ok(u64::from_ne_bytes(b))
    };
    let mut st = sock.state();
    match name {
        // As vsock_update_buffer_size: the size drags the bounds along.
        SO_VM_SOCKETS_BUFFER_SIZE => {
            let v = u64_arg()?;
            st.buffer_max = st.buffer_max.max(v);
            st.buffer_min = st.buffer_min.min(v);
            st.buffer_size = v;
        }
        SO_VM_SOCKETS_BUFFER_MIN_SIZE => {
            let v = u64_arg()?;
            st.buffer_size = st.buffer_size.max(v);
            st.buffer_min = v;
        }
        SO_VM_SOCKETS_BUFFER_MAX_SIZE => {
            let v = u64_arg()?;
            st.buffer_size = st.buffer_size.min(v);
            st.buffer_max = v;
        }
        SO_VM_SOCKETS_CONNECT_TIMEOUT_OLD | SO_VM_SOCKETS_CONNECT_TIMEOUT_NEW => {
            if value.len() < 16 {
                return Err(libc::EINVAL);
            }
            let sec = i64::from_ne_bytes(value[0..8].try_into().map_err(|_| libc::EINVAL)?);
            let usec = i64::from_ne_bytes(value[8..16].try_into().map_err(|_| libc::EINVAL)?);
            if sec < 0 || !(0..1_000_000).contains(&usec) {
                return Err(libc::EDOM);
            }
            st.connect_timeout =
                Duration::from_secs(sec as u64) + Duration::from_micros(usec as u64);
        }
        _ => return Err(libc::ENOPROTOOPT),
    }
    Ok(true)
}

/// `ioctl(IOCTL_VM_SOCKETS_GET_LOCAL_CID)`.
pub(crate) fn get_local_cid() -> Res<u32> {
    local_cid()
}

/// `shutdown`: `Ok(())` to let the kernel shut the pair end down.
pub(crate) fn shutdown(sock: &Sock) -> Res<()> {
    match sock.state().phase {
        Phase::Connected { .. } | Phase::Connecting => Ok(()),
        _ => Err(libc::ENOTCONN),
    }
}
