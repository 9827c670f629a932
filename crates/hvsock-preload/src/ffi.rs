//! The interposed C symbols. Each checks whether the call concerns an
//! AF_VSOCK socket of the shim; if not (or if the shim itself is calling),
//! it goes straight to the C library's definition (RTLD_NEXT). Otherwise it
//! turns raw pointers into slices and calls [`crate::shim`].
//!
//! Variadic C functions (`ioctl`, `fcntl`, `fcntl64`) are defined with their
//! one optional argument as a machine word: on the Linux ABIs (x86-64,
//! AArch64, RISC-V) variadic integer and pointer arguments travel in the
//! same registers as fixed ones, so this reads what the caller passed.

use std::ffi::{c_int, c_ulong, c_void};
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::Arc;

use libc::{msghdr, size_t, sockaddr, socklen_t, ssize_t};

use crate::inside::{is_inside, Inside};
use crate::libc_next as next;
use crate::libc_next::set_errno;
use crate::shim::{self, OptValue, Res};
use crate::sock::{self, Sock, VmAddr, AF_VSOCK, SOCKADDR_VM_LEN};

/// Returns `-1` with `errno` set, or the value.
fn ret(r: Res<c_int>) -> c_int {
    match r {
        Ok(v) => v,
        Err(e) => {
            set_errno(e);
            -1
        }
    }
}

/// A descriptor number the program passed, as a borrowed fd.
fn borrow(fd: RawFd) -> Option<BorrowedFd<'static>> {
    if fd < 0 {
        return None;
    }
    // SAFETY: the program passed `fd` to a socket call and keeps it open for
    // the duration of that call; the shim uses it only within the call.
    // A number that is not open makes the syscalls fail with EBADF, which
    // is no memory-safety concern.
    Some(unsafe { BorrowedFd::borrow_raw(fd) })
}

/// The shim's socket behind `fd`, unless the shim itself is calling.
fn ours(fd: RawFd) -> Option<(Arc<Sock>, BorrowedFd<'static>)> {
    if is_inside() || !sock::contains(fd) {
        return None;
    }
    let _inside = Inside::enter();
    let b = borrow(fd)?;
    sock::lookup(b).map(|s| (s, b))
}

/// Copies `addr` into the caller's `sockaddr` buffer (truncating as the
/// kernel does) and stores the full length.
///
/// # Safety
/// `out` and `len` are the caller's pointers from a getsockname-style call:
/// `len` null or valid, `out` valid for `*len` bytes.
unsafe fn write_addr(addr: VmAddr, out: *mut sockaddr, len: *mut socklen_t) -> Res<()> {
    if out.is_null() || len.is_null() {
        return Err(libc::EFAULT);
    }
    // SAFETY: `len` is non-null and the caller's.
    let have = unsafe { *len } as usize;
    let bytes = addr.to_bytes();
    let n = have.min(SOCKADDR_VM_LEN);
    // SAFETY: `out` is valid for `have` >= `n` bytes; `bytes` has 16 >= n.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), out.cast::<u8>(), n);
        *len = SOCKADDR_VM_LEN as socklen_t;
    }
    Ok(())
}

/// The caller's `sockaddr` as a byte slice.
///
/// # Safety
/// `addr` is valid for `len` bytes or null.
unsafe fn addr_bytes<'a>(addr: *const sockaddr, len: socklen_t) -> Res<&'a [u8]> {
    if addr.is_null() {
        return Err(libc::EFAULT);
    }
    // SAFETY: the caller promises `len` readable bytes at `addr`.
    Ok(unsafe { std::slice::from_raw_parts(addr.cast::<u8>(), len as usize) })
}

/// `socket(2)`.
///
/// # Safety
/// Called by C code with C arguments.
#[no_mangle]
pub unsafe extern "C" fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
    if domain != AF_VSOCK || is_inside() {
        // SAFETY: the arguments are the caller's, passed on.
        return unsafe { next::socket(domain, ty, protocol) };
    }
    let _inside = Inside::enter();
    ret(shim::socket(ty, protocol))
}

/// `socketpair(2)`: AF_VSOCK has none (EOPNOTSUPP, as Linux).
///
/// # Safety
/// Called by C code with C arguments.
#[no_mangle]
pub unsafe extern "C" fn socketpair(
    domain: c_int,
    ty: c_int,
    protocol: c_int,
    sv: *mut c_int,
) -> c_int {
    if domain != AF_VSOCK || is_inside() {
        // SAFETY: the arguments are the caller's, passed on.
        return unsafe { next::socketpair(domain, ty, protocol, sv) };
    }
    ret(Err(libc::EOPNOTSUPP))
}

/// `bind(2)`.
///
/// # Safety
/// Called by C code with C arguments.
#[no_mangle]
pub unsafe extern "C" fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let Some((s, _)) = ours(fd) else {
        // SAFETY: the arguments are the caller's, passed on.
        return unsafe { next::bind(fd, addr, len) };
    };
    let _inside = Inside::enter();
    // SAFETY: the caller's address and its length.
    ret(unsafe { addr_bytes(addr, len) }
        .and_then(|a| shim::bind(&s, a))
        .map(|()| 0))
}

/// `listen(2)`.
///
/// # Safety
/// Called by C code with C arguments.
#[no_mangle]
pub unsafe extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    let Some((s, _)) = ours(fd) else {
        // SAFETY: the arguments are the caller's, passed on.
        return unsafe { next::listen(fd, backlog) };
    };
    let _inside = Inside::enter();
    ret(shim::listen(&s, backlog).map(|()| 0))
}

/// `accept4(2)`.
///
/// # Safety
/// Called by C code with C arguments.
#[no_mangle]
pub unsafe extern "C" fn accept4(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    let Some((s, b)) = ours(fd) else {
        // SAFETY: the arguments are the caller's, passed on.
        return unsafe { next::accept4(fd, addr, len, flags) };
    };
    let _inside = Inside::enter();
    ret(shim::accept(&s, b, flags).and_then(|(new, peer)| {
        if !addr.is_null() {
            // SAFETY: the caller's address buffer and its length.
            unsafe { write_addr(peer, addr, len) }?;
        }
        Ok(new)
    }))
}

/// `accept(2)`.
///
/// # Safety
/// Called by C code with C arguments.
#[no_mangle]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    if ours(fd).is_none() {
        // SAFETY: the arguments are the caller's, passed on.
        return unsafe { next::accept(fd, addr, len) };
    }
    // SAFETY: the same arguments, for the same contract.
    unsafe { accept4(fd, addr, len, 0) }
}

/// `connect(2)`.
///
/// # Safety
/// Called by C code with C arguments.
#[no_mangle]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let Some((s, b)) = ours(fd) else {
        // SAFETY: the arguments are the caller's, passed on.
        return unsafe { next::connect(fd, addr, len) };
    };
    let _inside = Inside::enter();
    // SAFETY: the caller's address and its length.
    ret(unsafe { addr_bytes(addr, len) }
        .and_then(|a| shim::connect(&s, b, a))
        .map(|()| 0))
}

/// `getsockname(2)`.
///
/// # Safety
/// Called by C code with C arguments.
#[no_mangle]
pub unsafe extern "C" fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    let Some((s, _)) = ours(fd) else {
        // SAFETY: the arguments are the caller's, passed on.
        return unsafe { next::getsockname(fd, addr, len) };
    };
    let _inside = Inside::enter();
    // SAFETY: the caller's address buffer and its length.
    ret(unsafe { write_addr(shim::local_addr(&s), addr, len) }.map(|()| 0))
}

/// `getpeername(2)`.
///
/// # Safety
/// Called by C code with C arguments.
#[no_mangle]
pub unsafe extern "C" fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    let Some((s, _)) = ours(fd) else {
        // SAFETY: the arguments are the caller's, passed on.
        return unsafe { next::getpeername(fd, addr, len) };
    };
    let _inside = Inside::enter();
    ret(shim::peer_addr(&s).and_then(|peer| {
        // SAFETY: the caller's address buffer and its length.
        unsafe { write_addr(peer, addr, len) }.map(|()| 0)
    }))
}

/// `getsockopt(2)`.
///
/// # Safety
/// Called by C code with C arguments.
#[no_mangle]
pub unsafe extern "C" fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> c_int {
    let Some((s, _)) = ours(fd) else {
        // SAFETY: the arguments are the caller's, passed on.
        return unsafe { next::getsockopt(fd, level, name, val, len) };
    };
    let _inside = Inside::enter();
    match shim::getsockopt(&s, level, name) {
        // SAFETY: the arguments are the caller's, passed on.
        Ok(OptValue::Kernel) => unsafe { next::getsockopt(fd, level, name, val, len) },
        Ok(OptValue::Value(v)) => {
            if val.is_null() || len.is_null() {
                return ret(Err(libc::EFAULT));
            }
            // SAFETY: `len` is the caller's non-null length pointer.
            let have = unsafe { *len } as i32;
            if have < 0 {
                return ret(Err(libc::EINVAL));
            }
            // AF_VSOCK options need room for the whole value, as the kernel
            // insists (socket-level ints are truncated instead).
            if level == AF_VSOCK && (have as usize) < v.len() {
                return ret(Err(libc::EINVAL));
            }
            let n = (have as usize).min(v.len());
            // SAFETY: `val` is valid for `have` >= `n` bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(v.as_ptr(), val.cast::<u8>(), n);
                *len = n as socklen_t;
            }
            0
        }
        Err(e) => ret(Err(e)),
    }
}

/// `setsockopt(2)`.
///
/// # Safety
/// Called by C code with C arguments.
#[no_mangle]
pub unsafe extern "C" fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *const c_void,
    len: socklen_t,
) -> c_int {
    let Some((s, _)) = ours(fd) else {
        // SAFETY: the arguments are the caller's, passed on.
        return unsafe { next::setsockopt(fd, level, name, val, len) };
    };
    let _inside = Inside::enter();
    let value: &[u8] = if val.is_null() {
        &[]
    } else {
        // SAFETY: the caller promises `len` readable bytes at `val`.
        unsafe { std::slice::from_raw_parts(val.cast::<u8>(), len as usize) }
    };
    match shim::setsockopt(&s, level, name, value) {
        Ok(true) => 0,
        // SAFETY: the arguments are the caller's, passed on.
        Ok(false) => unsafe { next::setsockopt(fd, level, name, val, len) },
        Err(e) => ret(Err(e)),
    }
}

/// `ioctl(2)`: IOCTL_VM_SOCKETS_GET_LOCAL_CID is answered here; SIOCINQ,
/// SIOCOUTQ and FIONBIO are the kernel's, on the socketpair end.
///
/// # Safety
/// Called by C code with C arguments.
#[no_mangle]
pub unsafe extern "C" fn ioctl(fd: c_int, request: c_ulong, arg: usize) -> c_int {
    if request == shim::IOCTL_VM_SOCKETS_GET_LOCAL_CID && ours(fd).is_some() {
        let _inside = Inside::enter();
        let out = arg as *mut u32;
        if out.is_null() {
            return ret(Err(libc::EFAULT));
        }
        return ret(shim::get_local_cid().map(|cid| {
            // SAFETY: for this request the argument is a pointer to an
            // unsigned int the caller owns.
            unsafe { out.write_unaligned(cid) };
            0
        }));
    }
    // SAFETY: the arguments are the caller's, passed on.
    unsafe { next::ioctl(fd, request, arg) }
}

/// `shutdown(2)`: SHUT_WR makes the relay send the FIN after the bytes
/// already written.
///
/// # Safety
/// Called by C code with C arguments.
#[no_mangle]
pub unsafe extern "C" fn shutdown(fd: c_int, how: c_int) -> c_int {
    if let Some((s, _)) = ours(fd) {
        let _inside = Inside::enter();
        if let Err(e) = shim::shutdown(&s) {
            return ret(Err(e));
        }
    }
    // SAFETY: the arguments are the caller's, passed on.
    unsafe { next::shutdown(fd, how) }
}

/// `close(2)`: the descriptor leaves the table. The relay notices when the
/// last copy of the program's end is gone (in every process).
///
/// # Safety
/// Called by C code with C arguments.
#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    if !is_inside() && sock::contains(fd) {
        let _inside = Inside::enter();
        sock::remove(fd);
    }
    // SAFETY: the arguments are the caller's, passed on.
    unsafe { next::close(fd) }
}

/// After a successful dup of `old` into `new`: `new` names what `old` does.
fn track_dup(old: c_int, new: c_int) {
    if new < 0 || is_inside() {
        return;
    }
    let _inside = Inside::enter();
    let sock = sock::contains(old)
        .then(|| borrow(old).and_then(sock::lookup))
        .flatten();
    match sock {
        Some(s) => sock::insert(new, s),
        None => {
            if sock::contains(new) {
                sock::remove(new);
            }
        }
    }
}

/// `dup(2)`.
///
/// # Safety
/// Called by C code with C arguments.
#[no_mangle]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    // SAFETY: the arguments are the caller's, passed on.
    let new = unsafe { next::dup(fd) };
    track_dup(fd, new);
    new
}

/// `dup2(2)`.
///
/// # Safety
/// Called by C code with C arguments.
#[no_mangle]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    // SAFETY: the arguments are the caller's, passed on.
    let r = unsafe { next::dup2(old, new) };
    if old != new {
        track_dup(old, r);
    }
    r
}

/// `dup3(2)`.
///
/// # Safety
/// Called by C code with C arguments.
#[no_mangle]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    // SAFETY: the arguments are the caller's, passed on.
    let r = unsafe { next::dup3(old, new, flags) };
    track_dup(old, r);
    r
}

fn after_fcntl(fd: c_int, cmd: c_int, r: c_int) -> c_int {
    if cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC {
        track_dup(fd, r);
    }
    r
}

/// `fcntl(2)`: F_DUPFD and F_DUPFD_CLOEXEC copies are tracked; everything
/// else (O_NONBLOCK, FD_CLOEXEC) is the kernel's.
///
/// # Safety
/// Called by C code with C arguments.
#[no_mangle]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    // SAFETY: the arguments are the caller's, passed on.
    let r = unsafe { next::fcntl(fd, cmd, arg) };
    after_fcntl(fd, cmd, r)
}

/// `fcntl64`, as `fcntl`.
///
/// # Safety
/// Called by C code with C arguments.
#[no_mangle]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    // SAFETY: the arguments are the caller's, passed on.
    let r = unsafe { next::fcntl64(fd, cmd, arg) };
    after_fcntl(fd, cmd, r)
}

/// What a send or receive with these flags gets on a shim socket instead
/// of the kernel's answer: MSG_OOB and MSG_ZEROCOPY are refused as hv_sock
/// refuses them (EOPNOTSUPP); MSG_ERRQUEUE finds the error queue empty
/// (EAGAIN) instead of blocking as a read on the socketpair would.
fn refused(fd: c_int, flags: c_int, send: bool) -> Option<c_int> {
    let bad = if send {
        libc::MSG_OOB | shim::MSG_ZEROCOPY
    } else {
        libc::MSG_OOB | libc::MSG_ERRQUEUE
    };
    if flags & bad == 0 || ours(fd).is_none() {
        return None;
    }
    if !send && flags & libc::MSG_ERRQUEUE != 0 && flags & libc::MSG_OOB == 0 {
        Some(libc::EAGAIN)
    } else {
        Some(libc::EOPNOTSUPP)
    }
}

/// `send(2)`: MSG_OOB and MSG_ZEROCOPY are refused (EOPNOTSUPP).
///
/// # Safety
/// Called by C code with C arguments.
#[no_mangle]
pub unsafe extern "C" fn send(fd: c_int, buf: *const c_void, len: size_t, flags: c_int) -> ssize_t {
    if let Some(e) = refused(fd, flags, true) {
        return ret(Err(e)) as ssize_t;
    }
    // SAFETY: the arguments are the caller's, passed on.
    unsafe { next::send(fd, buf, len, flags) }
}

/// `sendto(2)`, as `send`.
///
/// # Safety
/// Called by C code with C arguments.
#[no_mangle]
pub unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    len: size_t,
    flags: c_int,
    addr: *const sockaddr,
    alen: socklen_t,
) -> ssize_t {
    if let Some(e) = refused(fd, flags, true) {
        return ret(Err(e)) as ssize_t;
    }
    // SAFETY: the arguments are the caller's, passed on.
    unsafe { next::sendto(fd, buf, len, flags, addr, alen) }
}

/// `sendmsg(2)`, as `send`.
///
/// # Safety
/// Called by C code with C arguments.
#[no_mangle]
pub unsafe extern "C" fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
    if let Some(e) = refused(fd, flags, true) {
        return ret(Err(e)) as ssize_t;
    }
    // SAFETY: the arguments are the caller's, passed on.
    unsafe { next::sendmsg(fd, msg, flags) }
}

/// `recv(2)`: MSG_OOB is refused; MSG_PEEK is the kernel's.
///
/// # Safety
/// Called by C code with C arguments.
#[no_mangle]
pub unsafe extern "C" fn recv(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int) -> ssize_t {
    if let Some(e) = refused(fd, flags, false) {
        return ret(Err(e)) as ssize_t;
    }
    // SAFETY: the arguments are the caller's, passed on.
    unsafe { next::recv(fd, buf, len, flags) }
}

/// `recvfrom(2)`, as `recv`.
///
/// # Safety
/// Called by C code with C arguments.
#[no_mangle]
pub unsafe extern "C" fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    alen: *mut socklen_t,
) -> ssize_t {
    if let Some(e) = refused(fd, flags, false) {
        return ret(Err(e)) as ssize_t;
    }
    // SAFETY: the arguments are the caller's, passed on.
    unsafe { next::recvfrom(fd, buf, len, flags, addr, alen) }
}

/// `recvmsg(2)`, as `recv`.
///
/// # Safety
/// Called by C code with C arguments.
#[no_mangle]
pub unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
    if let Some(e) = refused(fd, flags, false) {
        return ret(Err(e)) as ssize_t;
    }
    // SAFETY: the arguments are the caller's, passed on.
    unsafe { next::recvmsg(fd, msg, flags) }
}

unsafe extern "C" fn fork_prepare() {
    crate::runtime::fork_prepare();
    crate::sock::fork_prepare();
}

unsafe extern "C" fn fork_release() {
    crate::sock::fork_release();
    crate::runtime::fork_release();
}

extern "C" fn at_exit() {
    let _inside = Inside::enter();
    crate::runtime::flush_at_exit();
}

/// Runs when the library is loaded: registers the fork and exit handlers.
extern "C" fn init() {
    next::register_atfork(fork_prepare, fork_release, fork_release);
    next::register_atexit(at_exit);
}

#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = init;
