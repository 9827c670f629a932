//! VMBus for hv_sock: channel messages (byte-exact encode and decode), the
//! host (server) and guest (client) state machines, and their drivers.
//!
//! Owns the control plane. Knows nothing of stream semantics (FIN, close
//! timers, listeners): that is the `hvsock` crate.
#![forbid(unsafe_code)]

pub mod client;
pub mod daemon;
pub mod ext;
pub mod messages;
pub mod server;

#[doc(hidden)]
pub mod fuzzing;

pub use messages::{
    DecodeError, FieldError, Gpadl, GpadlAssembler, GpadlBody, GpadlError, GpadlHeader, Guid,
    HvsockParams, InitiateContact, Message, MessageType, OfferChannel, OpenChannel,
    OpenChannelGuestSignal, ParseGuidError, TlConnectRequest, TlConnectResult, VersionResponse,
    VersionResponseExt,
};
