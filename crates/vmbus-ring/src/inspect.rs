//! The ring inspector: decodes a ring image (control page + data area) into
//! its control fields and the packets between the read and write indices.
//!
//! Uses the same reader and validation as live rings, without publishing
//! anything, so that what it calls corrupt is exactly what a live reader
//! would reject. Owns the image format and the report; printing is the CLI's.

use std::sync::atomic::Ordering::Relaxed;

use serde::Serialize;

use crate::error::Corruption;
use crate::layout::{check_data_len, GeometryError, MAX_RECV_DATA, PAGE_SIZE, PIPE_HEADER_SIZE};
use crate::mem::{word, HeapRingMem, RingMem, CONTROL_PAGE_SIZE};
use crate::pipe::read_pipe_header;
use crate::reader::RingReader;
use crate::writer::AttachError;

/// How many data bytes of each packet the report keeps for a preview.
pub const PREVIEW_BYTES: usize = 64;

/// Why an image cannot be inspected at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// The image is shorter than a control page plus one data page.
    #[error("a ring image needs a 4096-byte control page and at least one 4096-byte data page; this one has {0} bytes")]
    TooShort(usize),
    /// The data size asked for does not match the image.
    #[error("the image holds {available} bytes after the control page, fewer than the data size {requested} asked for")]
    DataSizeMismatch {
        /// Bytes after the control page.
        available: usize,
        /// Data size requested.
        requested: usize,
    },
    /// The data size is not usable.
    #[error("{0} (pass --data-size to inspect only the first pages)")]
    Geometry(#[from] GeometryError),
}

/// The control words of a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ControlFields {
    /// Offset 0.
    pub write_index: u32,
    /// Offset 4.
    pub read_index: u32,
    /// Offset 8.
    pub interrupt_mask: u32,
    /// Offset 12.
    pub pending_send_size: u32,
    /// Offset 64.
    pub feature_bits: u32,
}

/// The hv_sock pipe header of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PipeInfo {
    /// Pipe packet type (1 = data).
    pub pkt_type: u32,
    /// Data bytes (0 = FIN).
    pub data_size: u32,
}

/// One valid packet of the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InspectedPacket {
    /// Data-area offset of the packet.
    pub offset: u32,
    /// Descriptor `type`.
    pub packet_type: u16,
    /// Descriptor `offset8`.
    pub offset8: u16,
    /// Descriptor `len8`.
    pub len8: u16,
    /// Descriptor `flags`.
    pub flags: u16,
    /// Descriptor `trans_id`.
    pub transaction_id: u64,
    /// Bytes in the ring, trailer included.
    pub total_len: u32,
    /// The pipe header.
    pub pipe: PipeInfo,
    /// The first data bytes (at most [`PREVIEW_BYTES`]).
    pub preview: Vec<u8>,
}

/// What an image holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Inspection {
    /// Size of the data area inspected.
    pub data_size: u32,
    /// The control words.
    pub control: ControlFields,
    /// Bytes between read and write index.
    pub used: u32,
    /// Every valid packet from the read index on, in order.
    pub packets: Vec<InspectedPacket>,
    /// The first problem found, after which nothing more is read.
    pub corruption: Option<Corruption>,
}

/// Inspects a ring image. `data_size` defaults to everything after the
/// control page.
pub fn inspect(image: &[u8], data_size: Option<usize>) -> Result<Inspection, ImageError> {
    if image.len() < CONTROL_PAGE_SIZE + PAGE_SIZE {
        return Err(ImageError::TooShort(image.len()));
    }
    let available = image.len() - CONTROL_PAGE_SIZE;
    let data_size = data_size.unwrap_or(available);
    if data_size > available {
        return Err(ImageError::DataSizeMismatch {
            available,
            requested: data_size,
        });
    }
    let size = check_data_len(data_size)?;
    let mem = HeapRingMem::from_image(&image[..CONTROL_PAGE_SIZE + data_size])
        .ok_or(ImageError::TooShort(image.len()))?;
    let control = ControlFields {
        write_index: mem.load_control(word::WRITE_INDEX, Relaxed),
        read_index: mem.load_control(word::READ_INDEX, Relaxed),
        interrupt_mask: mem.load_control(word::INTERRUPT_MASK, Relaxed),
        pending_send_size: mem.load_control(word::PENDING_SEND_SIZE, Relaxed),
        feature_bits: mem.load_control(word::FEATURE_BITS, Relaxed),
    };
    let mut inspection = Inspection {
        data_size: size,
        control,
        used: 0,
        packets: Vec::new(),
        corruption: None,
    };
    // Accept any packet that fits the ring; a live hv_sock reader caps it
    // at 16416 bytes, but a data size over 16 KiB is reported by the pipe
    // check below with a clearer reason.
    let mut reader = match RingReader::new(&mem, size) {
        Ok(reader) => reader,
        Err(AttachError::Corrupt(corruption)) => {
            inspection.corruption = Some(corruption);
            return Ok(inspection);
        }
        Err(AttachError::Geometry(error)) => return Err(error.into()),
    };
    inspection.used = reader.cached_available();
    if let Err(corruption) = walk(&mut reader, &mut inspection.packets) {
        inspection.corruption = Some(corruption);
    }
    Ok(inspection)
}

fn walk(
    reader: &mut RingReader<&HeapRingMem>,
    packets: &mut Vec<InspectedPacket>,
) -> Result<(), Corruption> {
    let mut fin_seen = false;
    // Stop at the write index as loaded once: an image does not change.
    while reader.cached_available() > 0 {
        let Some(packet) = reader.next_packet()? else {
            break;
        };
        let data_size = read_pipe_header(reader, &packet, MAX_RECV_DATA as u32)?;
        if fin_seen {
            return Err(Corruption {
                location: crate::error::Location::Data(packet.start as usize),
                kind: crate::error::CorruptionKind::DataAfterFin { data_size },
            });
        }
        fin_seen = data_size == 0;
        let mut preview = vec![0; (data_size as usize).min(PREVIEW_BYTES)];
        reader.read_payload(&packet, PIPE_HEADER_SIZE as u32, &mut preview);
        let d = packet.descriptor;
        packets.push(InspectedPacket {
            offset: packet.start,
            packet_type: d.packet_type.get(),
            offset8: d.offset8.get(),
            len8: d.len8.get(),
            flags: d.flags.get(),
            transaction_id: d.transaction_id.get(),
            total_len: packet.total_len,
            pipe: PipeInfo {
                pkt_type: crate::layout::PIPE_TYPE_DATA,
                data_size,
            },
            preview,
        });
        reader.consume();
    }
    Ok(())
}
