//! The C library's own versions of the functions the shim interposes, found
//! with `dlsym(RTLD_NEXT, ..)`, and the two libc calls the shim makes that
//! rustix does not offer safely (a thread's signal mask).
//!
//! Owns every `dlsym` and every call through a looked-up pointer. A pointer
//! is looked up once and cached; a symbol the C library lacks (`fcntl64` on
//! an old glibc) makes the call fail with `ENOSYS`.

use std::ffi::{c_int, c_void, CStr};
use std::sync::atomic::{AtomicUsize, Ordering};

use libc::{msghdr, size_t, sockaddr, socklen_t, ssize_t};

/// A cached `dlsym(RTLD_NEXT, name)`: 0 not looked up yet, 1 missing.
struct Next {
    name: &'static CStr,
    addr: AtomicUsize,
}

impl Next {
    const fn new(name: &'static CStr) -> Self {
        Self {
            name,
            addr: AtomicUsize::new(0),
        }
    }

    /// The next definition's address, or `None` if there is none.
    fn get(&self) -> Option<usize> {
        // Relaxed: the value is a pure function of the name; racing
        // look-ups store the same address.
        let cached = self.addr.load(Ordering::Relaxed);
        let addr = if cached == 0 {
            // SAFETY: `name` is a NUL-terminated string; RTLD_NEXT is a valid
            // pseudo-handle for a shared object that was loaded normally.
            let found = unsafe { libc::dlsym(libc::RTLD_NEXT, self.name.as_ptr()) } as usize;
            let found = if found == 0 { 1 } else { found };
            self.addr.store(found, Ordering::Relaxed);
            found
        } else {
            cached
        };
        (addr != 1).then_some(addr)
    }
}

fn enosys() -> c_int {
    set_errno(libc::ENOSYS);
    -1
}

/// Sets the calling thread's `errno`.
pub(crate) fn set_errno(errno: c_int) {
    // SAFETY: `__errno_location` returns a valid pointer to this thread's
    // errno for the thread's whole life.
    unsafe { *libc::__errno_location() = errno };
}

/// Declares a cached RTLD_NEXT symbol and a function calling through it
/// with the C signature given. Every argument is passed on untouched, so
/// the caller's contract (valid pointers, lengths) is the C function's.
macro_rules! next_fn {
    ($(#[$doc:meta])* $name:ident = $sym:literal: fn($($arg:ident: $ty:ty),*) -> $ret:ty, $fail:expr) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// The arguments must satisfy the C library function's contract.
        pub(crate) unsafe fn $name($($arg: $ty),*) -> $ret {
            static NEXT: Next = Next::new($sym);
            match NEXT.get() {
                Some(addr) => {
                    // SAFETY: `addr` is the C library's definition of this very
                    // symbol, whose C signature is the one spelt here.
                    let f: unsafe extern "C" fn($($ty),*) -> $ret = unsafe { std::mem::transmute(addr) };
                    // SAFETY: the caller upholds the function's contract.
                    unsafe { f($($arg),*) }
                }
                None => $fail,
            }
        }
    };
}

next_fn!(
    /// libc `socket`.
    socket = c"socket": fn(domain: c_int, ty: c_int, protocol: c_int) -> c_int, enosys()
);
next_fn!(
    /// libc `socketpair`.
    socketpair = c"socketpair": fn(domain: c_int, ty: c_int, protocol: c_int, sv: *mut c_int) -> c_int, enosys()
);
next_fn!(
    /// libc `bind`.
    bind = c"bind": fn(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int, enosys()
);
next_fn!(
    /// libc `listen`.
    listen = c"listen": fn(fd: c_int, backlog: c_int) -> c_int, enosys()
);
next_fn!(
    /// libc `accept`.
    accept = c"accept": fn(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int, enosys()
);
next_fn!(
    /// libc `accept4`.
    accept4 = c"accept4": fn(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int, enosys()
);
next_fn!(
    /// libc `connect`.
    connect = c"connect": fn(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int, enosys()
);
next_fn!(
    /// libc `getsockname`.
    getsockname = c"getsockname": fn(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int, enosys()
);
next_fn!(
    /// libc `getpeername`.
    getpeername = c"getpeername": fn(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int, enosys()
);
next_fn!(
    /// libc `getsockopt`.
    getsockopt = c"getsockopt": fn(fd: c_int, level: c_int, name: c_int, val: *mut c_void, len: *mut socklen_t) -> c_int, enosys()
);
next_fn!(
    /// libc `setsockopt`.
    setsockopt = c"setsockopt": fn(fd: c_int, level: c_int, name: c_int, val: *const c_void, len: socklen_t) -> c_int, enosys()
);
next_fn!(
    /// libc `ioctl`, with its one variadic argument as a machine word (how
    /// the Linux ABIs pass it).
    ioctl = c"ioctl": fn(fd: c_int, request: libc::c_ulong, arg: usize) -> c_int, enosys()
);
next_fn!(
    /// libc `shutdown`.
    shutdown = c"shutdown": fn(fd: c_int, how: c_int) -> c_int, enosys()
);
next_fn!(
    /// libc `close`.
    close = c"close": fn(fd: c_int) -> c_int, enosys()
);
next_fn!(
    /// libc `dup`.
    dup = c"dup": fn(fd: c_int) -> c_int, enosys()
);
next_fn!(
    /// libc `dup2`.
    dup2 = c"dup2": fn(old: c_int, new: c_int) -> c_int, enosys()
);
next_fn!(
    /// libc `dup3`.
    dup3 = c"dup3": fn(old: c_int, new: c_int, flags: c_int) -> c_int, enosys()
);
next_fn!(
    /// libc `fcntl`, the variadic argument as a machine word.
    fcntl = c"fcntl": fn(fd: c_int, cmd: c_int, arg: usize) -> c_int, enosys()
);
next_fn!(
    /// libc `fcntl64` (glibc 2.28 and later), the variadic argument as a
    /// machine word.
    fcntl64 = c"fcntl64": fn(fd: c_int, cmd: c_int, arg: usize) -> c_int, enosys()
);
next_fn!(
    /// libc `send`.
    send = c"send": fn(fd: c_int, buf: *const c_void, len: size_t, flags: c_int) -> ssize_t, enosys() as ssize_t
);
next_fn!(
    /// libc `sendto`.
    sendto = c"sendto": fn(fd: c_int, buf: *const c_void, len: size_t, flags: c_int, addr: *const sockaddr, alen: socklen_t) -> ssize_t, enosys() as ssize_t
);
next_fn!(
    /// libc `sendmsg`.
    sendmsg = c"sendmsg": fn(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t, enosys() as ssize_t
);
next_fn!(
    /// libc `recv`.
    recv = c"recv": fn(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int) -> ssize_t, enosys() as ssize_t
);
next_fn!(
    /// libc `recvfrom`.
    recvfrom = c"recvfrom": fn(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int, addr: *mut sockaddr, alen: *mut socklen_t) -> ssize_t, enosys() as ssize_t
);
next_fn!(
    /// libc `recvmsg`.
    recvmsg = c"recvmsg": fn(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t, enosys() as ssize_t
);

/// Runs `f` with every signal blocked in the calling thread, so that the
/// threads it starts inherit a full mask (the shim's threads never run a
/// program's signal handlers and are not interrupted by signal floods).
pub(crate) fn with_signals_blocked<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: sigset_t is plain data; an all-zero value is a valid argument
    // for sigfillset/pthread_sigmask to fill or overwrite.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers point to live, writable sigset_t values.
    let blocked = unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old) == 0
    };
    let result = f();
    if blocked {
        // SAFETY: `old` was filled by the successful call above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    }
    result
}

/// Registers fork handlers (prepare, in the parent after, in the child after).
pub(crate) fn register_atfork(
    prepare: unsafe extern "C" fn(),
    parent: unsafe extern "C" fn(),
    child: unsafe extern "C" fn(),
) {
    // SAFETY: the handlers are `extern "C"` functions that live as long as
    // the process (they are part of this library, which is never unloaded
    // while it is preloaded).
    unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
}

/// Registers a handler to run at `exit`.
pub(crate) fn register_atexit(handler: extern "C" fn()) {
    // SAFETY: the handler is an `extern "C"` function of this library,
    // which stays loaded until the process ends.
    unsafe { libc::atexit(handler) };
}
