//! The VMBus channel messages hv_sock needs, encoded and decoded byte-exact
//! (PROTOCOL.md 5): the [`Message`] enum, its codec, the [`Guid`] type, the
//! protocol constants and GPADL splitting and reassembly.
//!
//! # How strict decoding is
//!
//! [`Message::decode`] never panics. It accepts a message only if:
//!
//! - it is 8 to 240 bytes long and its type is one of the [`Message`]
//!   variants (other types give [`DecodeError::UnknownType`] or, for VMBus
//!   types hv_sock does not use, [`DecodeError::Unsupported`]);
//! - its length is **exactly** one of the lengths its type has (for example
//!   OPENCHANNEL 148 or 156, VERSION_RESPONSE 16, 20 or 40; GPADL messages
//!   `28 + 8n` / `16 + 8n`). Linux only checks a per-type minimum and ignores
//!   trailing bytes; we know of no sender that appends any, and an exact
//!   length means no byte of the input goes unread or unreproduced, which
//!   keeps `decode(encode(m)) == m` for every message decode accepts;
//! - its GPADL fields are consistent (one range, `range_buflen` matching the
//!   page count, the header carrying as many page numbers as fit, the byte
//!   range ending in the last page; see [`FieldError`]).
//!
//! Padding and reserved fields (the header's bytes 4..8, the offer's
//! reserved words, ...) are written as zero and **ignored** on decode, as
//! every implementation we studied does; flags read as `bool` take bit 0
//! (or any non-zero byte for byte-sized booleans). So `encode(decode(b))`
//! equals `b` except for those bits, and a second decode gives the same
//! message.

mod channel;
mod connection;
mod consts;
mod error;
mod gpadl;
mod guid;
mod wire;

pub use channel::{
    HvsockParams, OfferChannel, OpenChannel, OpenChannelGuestSignal, USER_DEFINED_SIZE,
};
pub use connection::{
    InitiateContact, TlConnectRequest, TlConnectResult, VersionResponse, VersionResponseExt,
};
pub use consts::*;
pub use error::{DecodeError, FieldError};
pub use gpadl::{Gpadl, GpadlAssembler, GpadlBody, GpadlError, GpadlHeader};
pub use guid::{Guid, ParseGuidError};

use wire::{get_u32, put_u32};

/// One VMBus channel message, as hv_sock uses them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Message {
    /// OFFERCHANNEL (1), host → guest, 196 bytes.
    OfferChannel(OfferChannel),
    /// RESCIND_CHANNELOFFER (2), host → guest, 12 bytes.
    RescindChannelOffer {
        /// The withdrawn channel (offset 8).
        child_relid: u32,
    },
    /// REQUESTOFFERS (3), guest → host, 8 bytes.
    RequestOffers,
    /// ALLOFFERS_DELIVERED (4), host → guest, 8 bytes.
    AllOffersDelivered,
    /// OPENCHANNEL (5), guest → host, 148 or 156 bytes.
    OpenChannel(OpenChannel),
    /// OPENCHANNEL_RESULT (6), host → guest, 20 bytes.
    OpenChannelResult {
        /// The channel (offset 8).
        child_relid: u32,
        /// The `openid` of the request (offset 12).
        openid: u32,
        /// NTSTATUS (offset 16), 0 = success.
        status: u32,
    },
    /// CLOSECHANNEL (7), guest → host, 12 bytes.
    CloseChannel {
        /// The channel (offset 8).
        child_relid: u32,
    },
    /// GPADL_HEADER (8), guest → host, `28 + 8n` bytes.
    GpadlHeader(GpadlHeader),
    /// GPADL_BODY (9), guest → host, `16 + 8n` bytes.
    GpadlBody(GpadlBody),
    /// GPADL_CREATED (10), host → guest, 20 bytes.
    GpadlCreated {
        /// The channel (offset 8).
        child_relid: u32,
        /// The GPADL handle (offset 12).
        gpadl: u32,
        /// NTSTATUS (offset 16), 0 = success.
        creation_status: u32,
    },
    /// GPADL_TEARDOWN (11), guest → host, 16 bytes.
    GpadlTeardown {
        /// The channel (offset 8).
        child_relid: u32,
        /// The GPADL handle (offset 12).
        gpadl: u32,
    },
    /// GPADL_TORNDOWN (12), host → guest, 12 bytes.
    GpadlTorndown {
        /// The GPADL handle (offset 8).
        gpadl: u32,
    },
    /// RELID_RELEASED (13), guest → host, 12 bytes.
    RelidReleased {
        /// The channel (offset 8).
        child_relid: u32,
    },
    /// INITIATE_CONTACT (14), guest → host, 40 or 56 bytes.
    InitiateContact(InitiateContact),
    /// VERSION_RESPONSE (15), host → guest, 16, 20 or 40 bytes.
    VersionResponse(VersionResponse),
    /// UNLOAD (16), guest → host, 8 bytes.
    Unload,
    /// UNLOAD_RESPONSE (17), host → guest, 8 bytes.
    UnloadResponse,
    /// TL_CONNECT_REQUEST (21), guest → host, 40 or 56 bytes.
    TlConnectRequest(TlConnectRequest),
    /// TL_CONNECT_RESULT (23), host → guest, 44 bytes.
    TlConnectResult(TlConnectResult),
}

/// Fails unless `b.len()` is one of `allowed`.
pub(crate) fn expect_len(
    ty: MessageType,
    b: &[u8],
    allowed: &[usize],
    expected: &'static str,
) -> Result<(), DecodeError> {
    if allowed.contains(&b.len()) {
        Ok(())
    } else {
        Err(DecodeError::Length {
            ty,
            len: b.len(),
            expected,
        })
    }
}

/// Reads the u32 at offset 8 of a 12-byte message.
fn decode_u32_at_8(ty: MessageType, b: &[u8]) -> Result<u32, DecodeError> {
    expect_len(ty, b, &[12], "exactly 12")?;
    Ok(get_u32(b, 8))
}

/// Reads the two u32s at offsets 8 and 12 of a 16-byte message.
fn decode_2u32(ty: MessageType, b: &[u8]) -> Result<(u32, u32), DecodeError> {
    expect_len(ty, b, &[16], "exactly 16")?;
    Ok((get_u32(b, 8), get_u32(b, 12)))
}

/// Reads the three u32s at offsets 8, 12 and 16 of a 20-byte message.
fn decode_3u32(ty: MessageType, b: &[u8]) -> Result<(u32, u32, u32), DecodeError> {
    expect_len(ty, b, &[20], "exactly 20")?;
    Ok((get_u32(b, 8), get_u32(b, 12), get_u32(b, 16)))
}

impl Message {
    /// The message's type number.
    pub fn message_type(&self) -> MessageType {
        match self {
            Message::OfferChannel(_) => MessageType::OFFERCHANNEL,
            Message::RescindChannelOffer { .. } => MessageType::RESCIND_CHANNELOFFER,
            Message::RequestOffers => MessageType::REQUESTOFFERS,
            Message::AllOffersDelivered => MessageType::ALLOFFERS_DELIVERED,
            Message::OpenChannel(_) => MessageType::OPENCHANNEL,
            Message::OpenChannelResult { .. } => MessageType::OPENCHANNEL_RESULT,
            Message::CloseChannel { .. } => MessageType::CLOSECHANNEL,
            Message::GpadlHeader(_) => MessageType::GPADL_HEADER,
            Message::GpadlBody(_) => MessageType::GPADL_BODY,
            Message::GpadlCreated { .. } => MessageType::GPADL_CREATED,
            Message::GpadlTeardown { .. } => MessageType::GPADL_TEARDOWN,
            Message::GpadlTorndown { .. } => MessageType::GPADL_TORNDOWN,
            Message::RelidReleased { .. } => MessageType::RELID_RELEASED,
            Message::InitiateContact(_) => MessageType::INITIATE_CONTACT,
            Message::VersionResponse(_) => MessageType::VERSION_RESPONSE,
            Message::Unload => MessageType::UNLOAD,
            Message::UnloadResponse => MessageType::UNLOAD_RESPONSE,
            Message::TlConnectRequest(_) => MessageType::TL_CONNECT_REQUEST,
            Message::TlConnectResult(_) => MessageType::TL_CONNECT_RESULT,
        }
    }

    /// Encodes the message into `buf` and returns its length (at most
    /// [`MAX_MESSAGE_SIZE`]); bytes of `buf` past that length are left as
    /// they were.
    pub fn encode_into(&self, buf: &mut [u8; MAX_MESSAGE_SIZE]) -> usize {
        // Zero everything a message can cover, so padding and reserved
        // fields are zero whatever `buf` held.
        let len = self.encoded_len();
        buf[..len].fill(0);
        put_u32(buf, 0, self.message_type().0);
        let written = match self {
            Message::OfferChannel(m) => m.encode_into(buf),
            Message::RescindChannelOffer { child_relid }
            | Message::CloseChannel { child_relid }
            | Message::RelidReleased { child_relid } => {
                put_u32(buf, 8, *child_relid);
                12
            }
            Message::GpadlTorndown { gpadl } => {
                put_u32(buf, 8, *gpadl);
                12
            }
            Message::RequestOffers
            | Message::AllOffersDelivered
            | Message::Unload
            | Message::UnloadResponse => HEADER_SIZE,
            Message::OpenChannel(m) => m.encode_into(buf),
            Message::OpenChannelResult {
                child_relid,
                openid,
                status,
            } => {
                put_u32(buf, 8, *child_relid);
                put_u32(buf, 12, *openid);
                put_u32(buf, 16, *status);
                20
            }
            Message::GpadlHeader(m) => m.encode_into(buf),
            Message::GpadlBody(m) => m.encode_into(buf),
            Message::GpadlCreated {
                child_relid,
                gpadl,
                creation_status,
            } => {
                put_u32(buf, 8, *child_relid);
                put_u32(buf, 12, *gpadl);
                put_u32(buf, 16, *creation_status);
                20
            }
            Message::GpadlTeardown { child_relid, gpadl } => {
                put_u32(buf, 8, *child_relid);
                put_u32(buf, 12, *gpadl);
                16
            }
            Message::InitiateContact(m) => m.encode_into(buf),
            Message::VersionResponse(m) => m.encode_into(buf),
            Message::TlConnectRequest(m) => m.encode_into(buf),
            Message::TlConnectResult(m) => m.encode_into(buf),
        };
        debug_assert_eq!(written, len);
        written
    }

    /// Encodes the message.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = [0u8; MAX_MESSAGE_SIZE];
        let len = self.encode_into(&mut buf);
        buf[..len].to_vec()
    }

    /// Length of the encoded message.
    pub fn encoded_len(&self) -> usize {
        match self {
            Message::OfferChannel(_) => OfferChannel::LEN,
            Message::RescindChannelOffer { .. }
            | Message::CloseChannel { .. }
            | Message::RelidReleased { .. }
            | Message::GpadlTorndown { .. } => 12,
            Message::RequestOffers
            | Message::AllOffersDelivered
            | Message::Unload
            | Message::UnloadResponse => HEADER_SIZE,
            Message::OpenChannel(m) => match m.guest_signal {
                None => OpenChannel::LEN,
                Some(_) => OpenChannel::LEN_WITH_GUEST_SIGNAL,
            },
            Message::OpenChannelResult { .. } | Message::GpadlCreated { .. } => 20,
            Message::GpadlHeader(m) => GpadlHeader::FIXED_LEN + 8 * m.pfns().len(),
            Message::GpadlBody(m) => GpadlBody::FIXED_LEN + 8 * m.pfns().len(),
            Message::GpadlTeardown { .. } => 16,
            Message::InitiateContact(m) => match m.client_id {
                None => InitiateContact::LEN,
                Some(_) => InitiateContact::LEN_WITH_CLIENT_ID,
            },
            Message::VersionResponse(m) => match m.ext {
                VersionResponseExt::None => VersionResponse::LEN,
                VersionResponseExt::Features { .. } => VersionResponse::LEN_WITH_FEATURES,
                VersionResponseExt::FeaturesAndMonitorPages { .. } => {
                    VersionResponse::LEN_WITH_MONITOR_PAGES
                }
            },
            Message::TlConnectRequest(m) => match m.silo_id {
                None => TlConnectRequest::LEN,
                Some(_) => TlConnectRequest::LEN_WITH_SILO_ID,
            },
            Message::TlConnectResult(_) => TlConnectResult::LEN,
        }
    }

    /// Decodes one message. Never panics; see the module docs for what is
    /// accepted.
    pub fn decode(b: &[u8]) -> Result<Message, DecodeError> {
        if b.len() > MAX_MESSAGE_SIZE {
            return Err(DecodeError::TooLong { len: b.len() });
        }
        if b.len() < HEADER_SIZE {
            return Err(DecodeError::TooShort { len: b.len() });
        }
        let ty = MessageType(get_u32(b, 0));
        let header_only = |m: Message| expect_len(ty, b, &[HEADER_SIZE], "exactly 8").map(|()| m);
        Ok(match ty {
            MessageType::OFFERCHANNEL => Message::OfferChannel(OfferChannel::decode(b)?),
            MessageType::RESCIND_CHANNELOFFER => Message::RescindChannelOffer {
                child_relid: decode_u32_at_8(ty, b)?,
            },
            MessageType::REQUESTOFFERS => header_only(Message::RequestOffers)?,
            MessageType::ALLOFFERS_DELIVERED => header_only(Message::AllOffersDelivered)?,
            MessageType::OPENCHANNEL => Message::OpenChannel(OpenChannel::decode(b)?),
            MessageType::OPENCHANNEL_RESULT => {
                let (child_relid, openid, status) = decode_3u32(ty, b)?;
                Message::OpenChannelResult {
                    child_relid,
                    openid,
                    status,
                }
            }
            MessageType::CLOSECHANNEL => Message::CloseChannel {
                child_relid: decode_u32_at_8(ty, b)?,
            },
            MessageType::GPADL_HEADER => Message::GpadlHeader(GpadlHeader::decode(b)?),
            MessageType::GPADL_BODY => Message::GpadlBody(GpadlBody::decode(b)?),
            MessageType::GPADL_CREATED => {
                let (child_relid, gpadl, creation_status) = decode_3u32(ty, b)?;
                Message::GpadlCreated {
                    child_relid,
                    gpadl,
                    creation_status,
                }
            }
            MessageType::GPADL_TEARDOWN => {
                let (child_relid, gpadl) = decode_2u32(ty, b)?;
                Message::GpadlTeardown { child_relid, gpadl }
            }
            MessageType::GPADL_TORNDOWN => Message::GpadlTorndown {
                gpadl: decode_u32_at_8(ty, b)?,
            },
            MessageType::RELID_RELEASED => Message::RelidReleased {
                child_relid: decode_u32_at_8(ty, b)?,
            },
            MessageType::INITIATE_CONTACT => Message::InitiateContact(InitiateContact::decode(b)?),
            MessageType::VERSION_RESPONSE => Message::VersionResponse(VersionResponse::decode(b)?),
            MessageType::UNLOAD => header_only(Message::Unload)?,
            MessageType::UNLOAD_RESPONSE => header_only(Message::UnloadResponse)?,
            MessageType::TL_CONNECT_REQUEST => {
                Message::TlConnectRequest(TlConnectRequest::decode(b)?)
            }
            MessageType::TL_CONNECT_RESULT => Message::TlConnectResult(TlConnectResult::decode(b)?),
            MessageType::INVALID => return Err(DecodeError::UnknownType { msgtype: 0 }),
            other if other.name().is_some() => return Err(DecodeError::Unsupported { ty: other }),
            other => return Err(DecodeError::UnknownType { msgtype: other.0 }),
        })
    }
}
