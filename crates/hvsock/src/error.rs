//! How errors of the layers below become `std::io::Error`s with the kinds
//! programs expect from sockets, and messages that say what happened and
//! what to do.

use std::io;

/// A shared-memory error as an I/O error.
pub(crate) fn shm_io(error: hvsock_shm::Error) -> io::Error {
    io::Error::other(error)
}

/// The peer wrote something no correct peer writes: the connection is reset.
pub(crate) fn corrupt(error: vmbus_ring::Corruption) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        format!("connection reset: the peer broke the ring protocol ({error})"),
    )
}

/// An error of kind `kind` with `message`.
pub(crate) fn err(kind: io::ErrorKind, message: impl Into<String>) -> io::Error {
    io::Error::new(kind, message.into())
}
