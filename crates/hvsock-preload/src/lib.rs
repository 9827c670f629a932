//! An `LD_PRELOAD` shim that runs unmodified AF_VSOCK programs over hvsock
//! (`hvsock run [--vm NAME] -- CMD ...` starts a program with it).
//!
//! Each `socket(AF_VSOCK, SOCK_STREAM, ..)` returns one end of an AF_UNIX
//! socketpair, a real kernel descriptor: reads, writes, poll, epoll,
//! blocking, timeouts, fork, dup and exec keep their kernel semantics
//! without being intercepted. The calls that make a socket vsock (bind,
//! listen, accept, connect, names, options, a few ioctls) are interposed,
//! and one relay thread per process moves bytes between the other end of
//! each pair and its hvsock stream.
//!
//! Layout: [`ffi`] (the interposed symbols) and [`libc_next`] (the C
//! library underneath) hold the `unsafe` code, with [`spin`] (a fork-safe
//! lock); [`shim`] (what each call does), [`sock`] (per-socket state),
//! [`runtime`] (the connection to the host) and [`relay`] (the data path)
//! are safe Rust.

mod ffi;
mod inside;
mod libc_next;
mod relay;
mod runtime;
mod shim;
mod sock;
mod spin;
