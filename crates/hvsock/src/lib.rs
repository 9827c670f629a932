//! Hyper-V sockets in user space: addresses, the hv_sock connection state
//! machine for guest and host, and the blocking and tokio stream APIs.
//!
//! Owns stream semantics. Knows nothing of how ring memory was shared.
#![forbid(unsafe_code)]

pub mod addr;
pub mod hybrid;

#[doc(hidden)]
pub mod fuzzing;

pub use addr::{HostTarget, HvAddr, ServiceId, Target, VmRef, VsockAddr, WellKnownVm};
pub use vmbus::Guid;
