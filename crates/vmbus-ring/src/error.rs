//! What can go wrong in a ring: flow control (empty, full) kept apart from
//! corruption (the peer wrote something no correct peer writes).
//!
//! A [`Corruption`] names the field, where it was found and why it is wrong,
//! so that a log line or the ring inspector can say exactly what happened.

use std::fmt;

/// Where in the ring a bad value was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "area", content = "offset")]
pub enum Location {
    /// Byte offset in the control page.
    Control(usize),
    /// Byte offset in the data area.
    Data(usize),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Control(offset) => write!(f, "control page offset {offset:#x}"),
            Location::Data(offset) => write!(f, "data offset {offset:#x}"),
        }
    }
}

/// A control word that holds a ring index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexField {
    /// `write_index`, at control page offset 0.
    WriteIndex,
    /// `read_index`, at control page offset 4.
    ReadIndex,
}

impl IndexField {
    /// The field's name as in the protocol.
    pub fn name(self) -> &'static str {
        match self {
            IndexField::WriteIndex => "write_index",
            IndexField::ReadIndex => "read_index",
        }
    }

    /// The field's byte offset in the control page.
    pub fn offset(self) -> usize {
        match self {
            IndexField::WriteIndex => 0,
            IndexField::ReadIndex => 4,
        }
    }
}

impl fmt::Display for IndexField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The reason a value written by the peer is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum CorruptionKind {
    /// An index is not a multiple of 8.
    #[error("{field} {value:#x} is not a multiple of 8")]
    IndexUnaligned {
        /// Which index.
        field: IndexField,
        /// The value read.
        value: u32,
    },
    /// An index is not inside the data area.
    #[error("{field} {value:#x} is not below the data size {data_size:#x}")]
    IndexOutOfRange {
        /// Which index.
        field: IndexField,
        /// The value read.
        value: u32,
        /// The data area size.
        data_size: u32,
    },
    /// An index moved somewhere its owner could not have moved it: backwards,
    /// or past the other side's index.
    #[error(
        "{field} moved from {last:#x} to {value:#x}, outside the {allowed:#x} bytes it may advance by"
    )]
    IndexMoved {
        /// Which index.
        field: IndexField,
        /// The value last seen.
        last: u32,
        /// The value read now.
        value: u32,
        /// How far it could legally have moved forward.
        allowed: u32,
    },
    /// Fewer bytes are available than a descriptor and trailer need.
    #[error("only {available} bytes are available, too few for a 16-byte descriptor and an 8-byte trailer")]
    PartialPacket {
        /// Bytes between the read and write indices.
        available: u32,
    },
    /// `offset8` puts the payload inside the descriptor.
    #[error("offset8 {offset8} puts the payload inside the 16-byte descriptor (needs at least 2)")]
    DescriptorOffset {
        /// The value read.
        offset8: u16,
    },
    /// `len8` is shorter than `offset8`.
    #[error("len8 {len8} is shorter than offset8 {offset8}")]
    DescriptorLength {
        /// The packet length field.
        len8: u16,
        /// The payload offset field.
        offset8: u16,
    },
    /// The packet runs past the bytes the writer published.
    #[error(
        "a packet of {len} bytes plus its 8-byte trailer exceeds the {available} bytes available"
    )]
    PacketBeyondAvailable {
        /// `len8 * 8`.
        len: u32,
        /// Bytes between the read and write indices.
        available: u32,
    },
    /// The packet is longer than any packet this reader accepts.
    #[error("a packet of {len} bytes exceeds the largest accepted packet of {max} bytes")]
    PacketTooLong {
        /// `len8 * 8` plus the trailer.
        len: u32,
        /// The largest accepted length.
        max: u32,
    },
    /// The packet type is not in-band data.
    #[error("packet type {packet_type} is not in-band data (6)")]
    PacketType {
        /// The value read.
        packet_type: u16,
    },
    /// Unknown descriptor flags.
    #[error("packet flags {flags:#x} contain bits other than 'completion requested' (1)")]
    PacketFlags {
        /// The value read.
        flags: u16,
    },
    /// The payload cannot hold a pipe header.
    #[error("a payload of {payload} bytes cannot hold the 8-byte pipe header")]
    PipeHeaderMissing {
        /// Payload bytes in the packet.
        payload: u32,
    },
    /// The pipe packet type is not data.
    #[error("pipe pkt_type {pkt_type} is not data (1)")]
    PipeType {
        /// The value read.
        pkt_type: u32,
    },
    /// The pipe header claims more data than the packet carries.
    #[error("pipe data_size {data_size} exceeds the {room} data bytes the packet carries")]
    PipeDataBeyondPacket {
        /// The value read.
        data_size: u32,
        /// `len8 * 8 - 24`.
        room: u32,
    },
    /// The pipe header claims more data than any packet may carry.
    #[error("pipe data_size {data_size} exceeds the limit of {max} bytes per packet")]
    PipeDataTooLong {
        /// The value read.
        data_size: u32,
        /// The limit.
        max: u32,
    },
    /// A data packet followed the peer's FIN.
    #[error("a packet with {data_size} data bytes follows the FIN")]
    DataAfterFin {
        /// The value read.
        data_size: u32,
    },
}

/// The peer wrote something no correct peer writes. The ring is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[error("ring corrupt at {location}: {kind}")]
pub struct Corruption {
    /// Where the bad value is.
    pub location: Location,
    /// What is wrong with it.
    #[serde(flatten)]
    pub kind: CorruptionKind,
}

impl Corruption {
    pub(crate) fn data(offset: u32, kind: CorruptionKind) -> Self {
        Self {
            location: Location::Data(offset as usize),
            kind,
        }
    }

    pub(crate) fn index(field: IndexField, kind: CorruptionKind) -> Self {
        Self {
            location: Location::Control(field.offset()),
            kind,
        }
    }
}

/// Why a packet could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// Not enough free space now; retry once the reader has made room.
    #[error("ring full: the packet needs {needed} bytes and {free} are free (one byte more than the packet must stay free)")]
    Full {
        /// Bytes the packet takes in the ring.
        needed: u32,
        /// Bytes free now.
        free: u32,
    },
    /// The packet can never fit, whatever the reader does.
    #[error("a packet of {needed} bytes can never fit a ring with a {data_size}-byte data area")]
    TooLarge {
        /// Bytes the packet takes in the ring.
        needed: usize,
        /// The data area size.
        data_size: u32,
    },
    /// The ring is corrupt.
    #[error(transparent)]
    Corrupt(#[from] Corruption),
}
