//! Wire layouts and sizes: the packet descriptor, the hv_sock pipe header,
//! the trailer, and the arithmetic of indices in a circular data area.
//!
//! Pure functions and plain data; nothing here touches ring memory.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Every data area is a whole number of 4 KiB pages (a VMBus page is always
/// 4096 bytes, whatever the OS page size).
pub const PAGE_SIZE: usize = 4096;

/// Size of the packet descriptor that starts every packet.
pub const DESCRIPTOR_SIZE: usize = 16;

/// Size of the trailer after every packet (the packet's start index << 32).
pub const TRAILER_SIZE: usize = 8;

/// Size of the hv_sock pipe header that starts every in-band payload.
pub const PIPE_HEADER_SIZE: usize = 8;

/// Packet type of in-band data, the only type hv_sock uses.
pub const PACKET_TYPE_DATA_INBAND: u16 = 6;

/// Descriptor flag: the sender wants a completion packet.
pub const PACKET_FLAG_COMPLETION_REQUESTED: u16 = 1;

/// Pipe packet type of stream data (and of the FIN, with no data).
pub const PIPE_TYPE_DATA: u32 = 1;

/// Largest data size a guest sends per packet (the seed's send buffer: 4096 - 8).
pub const GUEST_MAX_SEND_DATA: usize = 4088;

/// Largest data size any side accepts per packet (Linux `HVS_MTU_SIZE`).
pub const MAX_RECV_DATA: usize = 16384;

/// Largest packet in the ring a hv_sock reader accepts, trailer included
/// (`HVS_PKT_LEN(16384)`).
pub const MAX_RECV_PACKET: usize = hvs_packet_len(MAX_RECV_DATA);

/// The seed's `pending_send_sz`: room for one maximal guest packet.
pub const SEED_PENDING_SEND_SIZE: u32 = hvs_packet_len(GUEST_MAX_SEND_DATA) as u32;

/// Room the seed keeps free so that a FIN can always follow the last data
/// packet: `HVS_PKT_LEN(1) + HVS_PKT_LEN(0)`.
pub const WRITABLE_RESERVE: usize = hvs_packet_len(1) + hvs_packet_len(0);

/// Feature bit 0 of the control page: the pending-send-size protocol is used.
pub const FEATURE_PENDING_SEND_SIZE: u32 = 1;

/// The 16-byte packet descriptor, as it is on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct PacketDescriptor {
    /// Packet type (6 = in-band data).
    pub packet_type: U16,
    /// Offset of the payload from the packet start, in units of 8 bytes.
    pub offset8: U16,
    /// Length of descriptor + payload + padding, in units of 8 bytes (trailer excluded).
    pub len8: U16,
    /// Flags (bit 0 = completion requested).
    pub flags: U16,
    /// Transaction id (0 for hv_sock).
    pub transaction_id: U64,
}

/// The hv_sock pipe header at the start of an in-band payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct PipeHeader {
    /// Pipe packet type (1 = data).
    pub pkt_type: U32,
    /// Stream bytes that follow the header (0 = FIN).
    pub data_size: U32,
}

impl PipeHeader {
    /// The header of a data packet carrying `data_size` bytes (0 for a FIN).
    pub fn data(data_size: u32) -> Self {
        Self {
            pkt_type: PIPE_TYPE_DATA.into(),
            data_size: data_size.into(),
        }
    }
}

/// Bytes an hv_sock packet carrying `data` stream bytes takes in the ring:
/// descriptor, pipe header, data rounded up to 8, trailer (`HVS_PKT_LEN`).
pub const fn hvs_packet_len(data: usize) -> usize {
    DESCRIPTOR_SIZE + PIPE_HEADER_SIZE + round_up8(data) + TRAILER_SIZE
}

/// Bytes a packet with a payload of `payload` bytes (after the 16-byte
/// descriptor) takes in the ring, padding and trailer included.
pub const fn packet_len(payload: usize) -> usize {
    round_up8(DESCRIPTOR_SIZE + payload) + TRAILER_SIZE
}

/// `n` rounded up to a multiple of 8.
pub const fn round_up8(n: usize) -> usize {
    (n + 7) & !7
}

/// Bytes from index `from` forward to index `to` in a data area of `size`
/// bytes; both indices must be below `size`.
pub const fn distance(from: u32, to: u32, size: u32) -> u32 {
    if to >= from {
        to - from
    } else {
        size - from + to
    }
}

/// Bytes written but not yet read, for write index `w` and read index `r`.
pub const fn used(w: u32, r: u32, size: u32) -> u32 {
    distance(r, w, size)
}

/// Bytes not holding unread data (`size - used`); a writer may add a packet of
/// `n` bytes only if `free > n`, since a completely full ring would read as empty.
pub const fn free(w: u32, r: u32, size: u32) -> u32 {
    size - used(w, r, size)
}

/// Index `i` moved forward by `n` bytes; `n` must not exceed `size`.
pub const fn advance(i: u32, n: u32, size: u32) -> u32 {
    let sum = i as u64 + n as u64;
    if sum >= size as u64 {
        (sum - size as u64) as u32
    } else {
        sum as u32
    }
}

/// Why a data-area size cannot hold a ring.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GeometryError {
    /// The data area is empty or not a multiple of 4096 bytes.
    #[error("a ring data area must be a non-zero multiple of 4096 bytes, not {0}")]
    NotPageMultiple(usize),
    /// The data area does not fit the 32-bit indices.
    #[error("a ring data area of {0} bytes is too large for 32-bit ring indices")]
    TooLarge(usize),
}

/// Checks that `data_len` is a usable data-area size and returns it as u32.
pub fn check_data_len(data_len: usize) -> Result<u32, GeometryError> {
    if data_len == 0 || data_len % PAGE_SIZE != 0 {
        return Err(GeometryError::NotPageMultiple(data_len));
    }
    // Indices are u32 and `advance` adds up to one data size to an index.
    u32::try_from(data_len)
        .ok()
        .filter(|&n| n <= 1 << 31)
        .ok_or(GeometryError::TooLarge(data_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_sizes_match_the_seed() {
        assert_eq!(hvs_packet_len(0), 32);
        assert_eq!(hvs_packet_len(1), 40);
        assert_eq!(hvs_packet_len(5), 40);
        assert_eq!(hvs_packet_len(4088), 4120);
        assert_eq!(MAX_RECV_PACKET, 16416);
        assert_eq!(SEED_PENDING_SEND_SIZE, 0x1018);
        assert_eq!(WRITABLE_RESERVE, 72);
        assert_eq!(packet_len(8 + 5), 40);
        assert_eq!(std::mem::size_of::<PacketDescriptor>(), DESCRIPTOR_SIZE);
        assert_eq!(std::mem::size_of::<PipeHeader>(), PIPE_HEADER_SIZE);
    }

    #[test]
    fn index_arithmetic_wraps() {
        assert_eq!(used(24, 24544, 24576), 56);
        assert_eq!(free(24, 24544, 24576), 24576 - 56);
        assert_eq!(used(40, 40, 24576), 0);
        assert_eq!(advance(24544, 56, 24576), 24);
        assert_eq!(advance(0, 24576, 24576), 0);
    }

    #[test]
    fn geometry_is_checked() {
        assert_eq!(check_data_len(20480), Ok(20480));
        assert_eq!(check_data_len(0), Err(GeometryError::NotPageMultiple(0)));
        assert_eq!(
            check_data_len(4097),
            Err(GeometryError::NotPageMultiple(4097))
        );
        assert!(check_data_len(1 << 32).is_err());
    }
}
