//! Hyper-V sockets in user space: addresses, the hv_sock connection state
//! machine for guest and host, and the blocking and tokio stream APIs.
//!
//! Owns stream semantics. Knows nothing of how ring memory was shared.
#![forbid(unsafe_code)]

pub mod addr;
mod blocking;
mod channel;
mod doorbell;
mod endpoint;
mod error;
pub mod hybrid;
#[cfg(feature = "tokio")]
pub mod tokio;
mod wait;

#[doc(hidden)]
pub mod fuzzing;

pub use addr::{HostTarget, HvAddr, ServiceId, Target, VmRef, VsockAddr, WellKnownVm};
pub use blocking::{
    ConnectOptions, Guest, Host, HvListener, HvStream, VsockListener, VsockStream, DEFAULT_BACKLOG,
    DEFAULT_GUEST_CONNECT_TIMEOUT, DEFAULT_HOST_CONNECT_TIMEOUT,
};
pub use endpoint::{DEFAULT_RING_PAGES, MAX_RING_PAGES, SEED_RING_PAGES};
pub use vmbus::Guid;
