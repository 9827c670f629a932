//! The VMBus ring buffer, byte-exact with Hyper-V, Linux and OpenVMM.
//!
//! This crate owns the layout of a ring (control page and data area), the
//! packet format (descriptor, payload, padding, trailer), the hv_sock pipe
//! header, and the rules for when each side must signal the other. It validates
//! everything the peer writes: indices, descriptors and pipe headers are
//! checked on every load, a violation yields a typed [`Corruption`] and marks
//! the ring broken.
//!
//! It does no I/O: it never signals, sleeps or allocates per packet. Committing
//! a write or a read returns whether the peer must be signalled, and the caller
//! does the signalling. Memory is reached through [`RingMem`]; [`HeapRingMem`]
//! is ordinary memory, the `hvsock-shm` crate provides shared mappings.
#![forbid(unsafe_code)]

pub mod mem;

pub use mem::{HeapRingMem, RingMem, CONTROL_PAGE_SIZE};
