//! The VMBus ring buffer, byte-exact with Hyper-V, Linux and OpenVMM.
//!
//! This crate owns the layout of a ring (control page and data area), the
//! packet format (descriptor, payload, padding, trailer), the hv_sock pipe
//! header, and the rules for when each side must signal the other. It validates
//! everything the peer writes: indices, descriptors and pipe headers are
//! checked on every load, and a violation yields a typed [`Corruption`] and
//! marks the ring broken. Flow control (empty, [`WriteError::Full`]) is kept
//! apart from corruption.
//!
//! It does no I/O: it never signals, sleeps or allocates per packet.
//! Committing a write ([`RingWriter::commit`]) or a read
//! ([`RingReader::commit`]) returns whether the peer must be signalled, and the
//! caller does the signalling. Memory is reached through [`RingMem`];
//! [`HeapRingMem`] is ordinary memory, the `hvsock-shm` crate provides shared
//! mappings.
//!
//! Layers, bottom up: [`mem`] (memory), [`layout`] (wire formats and index
//! arithmetic), [`RingWriter`] / [`RingReader`] (packets), [`pipe`] (the
//! hv_sock byte stream), [`inspect`] (ring images, for the `hvsock ring dump`
//! command).
#![forbid(unsafe_code)]

pub mod error;
#[doc(hidden)]
pub mod fuzzing;
mod index;
pub mod inspect;
pub mod layout;
pub mod mem;
pub mod pipe;
mod reader;
mod writer;

pub use error::{Corruption, CorruptionKind, IndexField, Location, WriteError};
pub use mem::{HeapRingMem, RingMem, CONTROL_PAGE_SIZE};
pub use pipe::{DataSpan, PipeReader, PipeWriteError, PipeWriter};
pub use reader::{Packet, RingReader};
pub use writer::{init_control_page, AttachError, RingWriter};
