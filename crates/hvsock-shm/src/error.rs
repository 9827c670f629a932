//! The crate's error type.
//!
//! Owns only [`Error`]: what went wrong with shared memory, an eventfd or fd
//! passing, worded so that the reader knows what to do next. Mapping these to
//! `io::ErrorKind` for socket users is the `hvsock` crate's job, not this one.

use std::io;

/// Something went wrong creating, validating or using shared memory, an
/// eventfd, or passing file descriptors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A system call failed.
    #[error("{action} failed: {source}; {hint}")]
    Os {
        /// What we were doing, e.g. "creating a memfd (memfd_create)".
        action: &'static str,
        /// What the reader can check or do about it.
        hint: &'static str,
        /// The error the kernel returned.
        #[source]
        source: io::Error,
    },

    /// A shared-memory size is zero or not a whole number of pages.
    #[error("shared memory size {len} is not a non-zero multiple of 4096 bytes; round it up to whole pages")]
    BadLength {
        /// The size that was asked for or found.
        len: u64,
    },

    /// A file descriptor from a peer is not a memfd that supports seals.
    #[error("the file descriptor is not a sealable memfd ({source}); the peer must create shared memory with memfd_create(MFD_ALLOW_SEALING)")]
    NotAMemfd {
        /// The error `F_GET_SEALS` returned.
        #[source]
        source: io::Error,
    },

    /// A memfd from a peer is not sealed against shrinking, so the peer could
    /// truncate it under our mapping and kill us with `SIGBUS`.
    #[error("refused a memfd that is not sealed against shrinking (seals {seals:#x}); the peer must add F_SEAL_SHRINK before sending it")]
    NotSealed {
        /// The seals the memfd carries (`F_SEAL_*` bits).
        seals: u32,
    },

    /// A memfd from a peer is sealed against writes, so it cannot be mapped
    /// for writing as rings require.
    #[error("refused a memfd sealed against writes (seals {seals:#x}); rings need writable memory, so the peer must not add F_SEAL_WRITE or F_SEAL_FUTURE_WRITE")]
    WriteSealed {
        /// The seals the memfd carries (`F_SEAL_*` bits).
        seals: u32,
    },

    /// A memfd from a peer is smaller than the size it was announced with.
    #[error("refused a memfd of {actual} bytes where {expected} were announced; the peer sent the wrong memfd or a wrong size")]
    TooSmall {
        /// The memfd's size.
        actual: u64,
        /// The size the peer announced.
        expected: usize,
    },

    /// An access falls outside a mapping.
    #[error("{len} bytes at offset {offset} lie outside the {mapping_len}-byte mapping; the caller computed a wrong offset")]
    OutOfBounds {
        /// Start of the access, in bytes from the start of the mapping.
        offset: usize,
        /// Length of the access in bytes.
        len: usize,
        /// Length of the mapping in bytes.
        mapping_len: usize,
    },

    /// An atomic view was asked for at an offset that is not aligned for it.
    #[error("offset {offset} is not {align}-byte aligned; atomic words must be naturally aligned")]
    Misaligned {
        /// The offset asked for.
        offset: usize,
        /// The alignment required.
        align: usize,
    },

    /// A ring does not fit its mapping or is not laid out in whole pages.
    #[error("a ring with its control page at byte {control_offset} and a {data_len}-byte data area does not fit the {mapping_len}-byte mapping in whole pages; {hint}")]
    BadRingLayout {
        /// Where the control page was asked to be.
        control_offset: usize,
        /// Size of the data area asked for.
        data_len: usize,
        /// Length of the mapping.
        mapping_len: usize,
        /// Which rule was broken.
        hint: &'static str,
    },

    /// An fd that should be an eventfd is in blocking mode.
    #[error("refused an eventfd in blocking mode; create it with EventFd::new, which makes it non-blocking, so that try_wait can never block")]
    EventFdBlocking,

    /// A signal link's descriptor is not a Unix stream socket.
    #[error("refused a signal link descriptor that is not a Unix stream socket; the host must make each direction of a link with socketpair(AF_UNIX, SOCK_STREAM)")]
    NotASignalSocket,

    /// A peer attached file descriptors to a wake-up on its signal socket.
    #[error("the peer attached file descriptors to a wake-up on its signal socket, which the protocol never does; its signals are no longer listened to")]
    PeerPassedDescriptors,

    /// Reading an eventfd returned something other than its 8-byte counter.
    #[error("reading the eventfd returned {got} bytes instead of 8; the peer sent something that is not an eventfd")]
    NotAnEventFd {
        /// How many bytes the read returned.
        got: usize,
    },

    /// More file descriptors were to be sent in one message than Linux allows.
    #[error("cannot send {count} file descriptors in one message (at most {max}); split them over several messages")]
    TooManyFds {
        /// How many were asked for.
        count: usize,
        /// The limit.
        max: usize,
    },

    /// File descriptors were to be sent without any bytes to carry them.
    #[error("file descriptors need at least one byte of message to travel with; send a non-empty message")]
    EmptyMessageWithFds,

    /// A message came with more file descriptors than the receiver allowed.
    #[error("a message carried more file descriptors than the {max} allowed; the {received} that arrived were closed; the peer does not follow the protocol, or allow more")]
    FdsTruncated {
        /// The number of descriptors the receiver allowed.
        max: usize,
        /// How many arrived (and were closed).
        received: usize,
    },

    /// A datagram was longer than the receive buffer and was cut.
    #[error("a message did not fit the {buf_len}-byte receive buffer and was cut; {received_fds} file descriptors that came with it were closed; use a buffer as large as the largest message")]
    MessageTruncated {
        /// The size of the receive buffer.
        buf_len: usize,
        /// How many descriptors came with the message (and were closed).
        received_fds: usize,
    },
}

impl Error {
    /// Wraps a failed system call; used as `.map_err(Error::os("...", "..."))`.
    pub(crate) fn os(
        action: &'static str,
        hint: &'static str,
    ) -> impl FnOnce(rustix::io::Errno) -> Self {
        move |errno| Self::Os {
            action,
            hint,
            source: errno.into(),
        }
    }
}
