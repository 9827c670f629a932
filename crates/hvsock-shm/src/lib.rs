//! Shared memory for hvsock: the project's only `unsafe` code.
//!
//! Owns sealed memfds ([`SharedMemory`]), their mappings ([`Mapping`]),
//! atomic views of shared memory, the [`vmbus_ring::RingMem`] implementation
//! for a ring inside a mapping ([`SharedRingMem`], [`ring_pair`]), eventfds
//! ([`EventFd`]), signal sockets ([`signal_pair`]) and fd passing over Unix
//! sockets ([`send_with_fds`], [`recv_with_fds`]). Knows nothing of the protocol: which rings exist, what
//! their bytes mean and when to signal are decided by the callers.
//!
//! The peer that shares this memory is not trusted. It may write any byte at
//! any moment, so this crate never hands out `&[u8]` or `&mut [u8]` into a
//! mapping: bytes are copied in and out, control words are atomics. It may try
//! to truncate the memory under our mapping (which would kill us with
//! `SIGBUS`), so memfds received from it are refused unless they are sealed
//! against shrinking.
//!
//! Linux only: memfd, seals and eventfd have no portable equivalent.

mod error;
mod eventfd;
mod fdpass;
mod mapping;
mod memfd;
mod readable;
mod ring_mem;
mod signal_socket;

pub use error::Error;
pub use eventfd::EventFd;
pub use fdpass::{
    recv_message, recv_raw, recv_with_fds, send_with_fds, RawReceived, Received,
    MAX_FDS_PER_MESSAGE,
};
pub use mapping::Mapping;
pub use memfd::{is_memfd, SharedMemory};
pub use ring_mem::{ring_pair, RingPair, SharedRingMem};
pub use signal_socket::{signal_pair, SignalReceiver, SignalSender};

/// The page size all shared-memory sizes and ring offsets are multiples of.
///
/// Hyper-V describes guest memory in 4 KiB pages whatever the CPU's page size,
/// and the ring layout (`PROTOCOL.md` section 2) is expressed in them.
pub const PAGE_SIZE: usize = 4096;
