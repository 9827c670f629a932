//! Errors of message decoding ([`DecodeError`]) and of the field checks that
//! GPADL messages carry ([`FieldError`]).

use super::consts::MessageType;

/// Why a byte string is not a valid channel message.
///
/// Every variant names the message type it concerns (when the type is
/// known), and field errors name the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than the 8-byte message header.
    #[error("channel message of {len} bytes is shorter than the 8-byte header")]
    TooShort {
        /// Length of the input.
        len: usize,
    },
    /// Longer than the 240-byte maximum of a channel message.
    #[error("channel message of {len} bytes exceeds the 240-byte maximum")]
    TooLong {
        /// Length of the input.
        len: usize,
    },
    /// A type number that VMBus does not define (or 0, `INVALID`).
    #[error("unknown channel message type {msgtype}")]
    UnknownType {
        /// The `msgtype` word.
        msgtype: u32,
    },
    /// A VMBus message type that hv_sock does not use (MODIFYCHANNEL, the
    /// reserved-channel and pause/resume messages).
    #[error("{ty} is not supported")]
    Unsupported {
        /// The message type.
        ty: MessageType,
    },
    /// A length that this message type never has.
    #[error("{ty} message has {len} bytes; expected {expected}")]
    Length {
        /// The message type.
        ty: MessageType,
        /// Length of the input.
        len: usize,
        /// The accepted lengths, in words.
        expected: &'static str,
    },
    /// A field whose value is inconsistent with the message or its other
    /// fields.
    #[error("{ty} field `{field}`: {reason}")]
    Field {
        /// The message type.
        ty: MessageType,
        /// The field's name (as in PROTOCOL.md 5.5).
        field: &'static str,
        /// What is wrong with it.
        reason: FieldError,
    },
}

impl DecodeError {
    /// The message type the error concerns, if the type word was known.
    pub fn message_type(&self) -> Option<MessageType> {
        match self {
            DecodeError::TooShort { .. }
            | DecodeError::TooLong { .. }
            | DecodeError::UnknownType { .. } => None,
            DecodeError::Unsupported { ty }
            | DecodeError::Length { ty, .. }
            | DecodeError::Field { ty, .. } => Some(*ty),
        }
    }

    pub(crate) fn field(ty: MessageType, reason: FieldError) -> DecodeError {
        DecodeError::Field {
            ty,
            field: reason.field(),
            reason,
        }
    }
}

/// An inconsistent field of a GPADL message (PROTOCOL.md 5.5).
///
/// Returned by [`GpadlHeader::new`](super::GpadlHeader::new) and
/// [`GpadlBody::new`](super::GpadlBody::new), and inside
/// [`DecodeError::Field`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// Only single-range GPADLs are supported (hv_sock rings and every
    /// guest we know of use one range).
    #[error("rangecount is {rangecount}; only single-range GPADLs (rangecount 1) are supported")]
    RangeCount {
        /// The value received.
        rangecount: u16,
    },
    /// `range_buflen` must be `8 + 8 * pages` for at least one page.
    #[error("range_buflen {range_buflen} is not 8 + 8*pages with at least one page")]
    RangeBufLen {
        /// The value received.
        range_buflen: u16,
    },
    /// The header must carry as many page numbers as fit: all of them, or
    /// 26 when there are more.
    #[error("header carries {carried} page numbers; the range has {total} pages, so it must carry {expected}")]
    HeaderPages {
        /// Page numbers present in the header.
        carried: usize,
        /// Pages in the range according to `range_buflen`.
        total: usize,
        /// Page numbers the header must carry.
        expected: usize,
    },
    /// The byte range must start in the first page and end in the last one.
    #[error("byte_offset {byte_offset} + byte_count {byte_count} does not end in the last of {pages} pages (offset must be < 4096)")]
    ByteRange {
        /// Offset of the data in the first page.
        byte_offset: u32,
        /// Length of the data.
        byte_count: u32,
        /// Pages in the range.
        pages: usize,
    },
    /// A GPADL_BODY carries 1 to 28 page numbers.
    #[error("a GPADL_BODY carries 1 to 28 page numbers, not {carried}")]
    BodyPages {
        /// Page numbers given.
        carried: usize,
    },
}

impl FieldError {
    /// The name of the field the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            FieldError::RangeCount { .. } => "rangecount",
            FieldError::RangeBufLen { .. } => "range_buflen",
            FieldError::HeaderPages { .. } | FieldError::BodyPages { .. } => "pfns",
            FieldError::ByteRange { .. } => "byte_count",
        }
    }
}
