//! Shared memory for hvsock: the project's only `unsafe` code.
//!
//! Owns sealed memfds, their mappings, atomic views of shared memory (the
//! `RingMem` implementation for a shared mapping), eventfds and fd passing.
//! Knows nothing of the protocol.
