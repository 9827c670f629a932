//! The hv_sock byte pipe on top of a ring: data packets with the 8-byte pipe
//! header, the zero-length FIN, partial reads across packets, and the seed's
//! writable-space rule that always keeps room for the FIN.
//!
//! Owns framing only. Connection state (who may write when, close timers,
//! rescind) belongs to the `hvsock` crate.

use zerocopy::{FromBytes, IntoBytes};

use crate::error::{Corruption, CorruptionKind, WriteError};
use crate::layout::{
    PipeHeader, PACKET_TYPE_DATA_INBAND, PIPE_HEADER_SIZE, PIPE_TYPE_DATA, WRITABLE_RESERVE,
};
use crate::mem::RingMem;
use crate::reader::{Packet, RingReader};
use crate::writer::RingWriter;

/// Copies the pipe header of `packet` out of the ring and validates it
/// against the packet's length and `max_data`; returns the data size.
pub fn read_pipe_header<M: RingMem>(
    ring: &RingReader<M>,
    packet: &Packet,
    max_data: u32,
) -> Result<u32, Corruption> {
    let bad = |kind| Corruption {
        location: crate::error::Location::Data(packet.start as usize),
        kind,
    };
    let mut raw = [0u8; PIPE_HEADER_SIZE];
    if ring.read_payload(packet, 0, &mut raw) < PIPE_HEADER_SIZE {
        return Err(bad(CorruptionKind::PipeHeaderMissing {
            payload: packet.payload_len,
        }));
    }
    let header = PipeHeader::read_from_bytes(&raw)
        .unwrap_or_else(|_| unreachable!("pipe header buffer has the header's size"));
    let pkt_type = header.pkt_type.get();
    if pkt_type != PIPE_TYPE_DATA {
        return Err(bad(CorruptionKind::PipeType { pkt_type }));
    }
    let data_size = header.data_size.get();
    let room = packet.payload_len - PIPE_HEADER_SIZE as u32;
    if data_size > room {
        return Err(bad(CorruptionKind::PipeDataBeyondPacket {
            data_size,
            room,
        }));
    }
    if data_size > max_data {
        return Err(bad(CorruptionKind::PipeDataTooLong {
            data_size,
            max: max_data,
        }));
    }
    Ok(data_size)
}

/// Unread stream bytes in the data area: `(offset, len)` pieces, the second
/// one present when the bytes wrap around the end of the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataSpan {
    /// The first piece.
    pub first: (u32, u32),
    /// The piece after the wrap, if any.
    pub second: Option<(u32, u32)>,
}

impl DataSpan {
    /// Bytes in the span.
    pub fn len(&self) -> u32 {
        self.first.1 + self.second.map_or(0, |s| s.1)
    }

    /// Whether the span is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The data packet being read: how much of it is left.
#[derive(Debug, Clone, Copy)]
struct Partial {
    packet: Packet,
    data_size: u32,
    consumed: u32,
}

/// Reads the hv_sock byte stream out of a ring.
#[derive(Debug)]
pub struct PipeReader<M> {
    ring: RingReader<M>,
    max_data: u32,
    current: Option<Partial>,
    fin: bool,
}

impl<M: RingMem> PipeReader<M> {
    /// A pipe reader accepting packets of at most `max_data` data bytes
    /// (hv_sock: [`MAX_RECV_DATA`](crate::layout::MAX_RECV_DATA)).
    pub fn new(ring: RingReader<M>, max_data: u32) -> Self {
        Self {
            ring,
            max_data,
            current: None,
            fin: false,
        }
    }

    /// The underlying ring reader.
    pub fn ring(&self) -> &RingReader<M> {
        &self.ring
    }

    /// The underlying ring reader, for the signalling calls (mask, unmask,
    /// available).
    pub fn ring_mut(&mut self) -> &mut RingReader<M> {
        &mut self.ring
    }

    /// Whether the peer's FIN has been read: once the data before it is
    /// read, the stream is at its end.
    pub fn fin_received(&self) -> bool {
        self.fin
    }

    /// Unread data bytes left in the packet being read (0 if none is started).
    pub fn partial_bytes(&self) -> u32 {
        self.current.map_or(0, |p| p.data_size - p.consumed)
    }

    /// Copies stream bytes into `buf`, across as many packets as are
    /// available, straight from the ring. Returns the bytes copied: 0 for a
    /// non-empty `buf` means nothing is available now, or, once
    /// [`fin_received`](Self::fin_received), the end of the stream.
    ///
    /// Consumed packets are released to the writer at the next
    /// [`commit`](Self::commit).
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, Corruption> {
        let mut filled = 0;
        while filled < buf.len() {
            let Some(mut partial) = self.current_or_next()? else {
                break;
            };
            let left = (partial.data_size - partial.consumed) as usize;
            let want = left.min(buf.len() - filled);
            let n = self.ring.read_payload(
                &partial.packet,
                PIPE_HEADER_SIZE as u32 + partial.consumed,
                &mut buf[filled..filled + want],
            );
            filled += n;
            partial.consumed += n as u32;
            if partial.consumed == partial.data_size {
                self.ring.consume();
                self.current = None;
            } else {
                self.current = Some(partial);
            }
        }
        Ok(filled)
    }

    /// Copies stream bytes into `buf` without consuming them (MSG_PEEK).
    /// Copies from the packet being read only, so it may return fewer bytes
    /// than are available, as a stream socket's peek may.
    pub fn peek(&mut self, buf: &mut [u8]) -> Result<usize, Corruption> {
        let Some(partial) = self.current_or_next()? else {
            return Ok(0);
        };
        self.current = Some(partial);
        let n = ((partial.data_size - partial.consumed) as usize).min(buf.len());
        Ok(self.ring.read_payload(
            &partial.packet,
            PIPE_HEADER_SIZE as u32 + partial.consumed,
            &mut buf[..n],
        ))
    }

    /// Where the unread data of the packet being read lies in the data area,
    /// without copying it: for callers that hand the bytes on in place (for
    /// example to `write(2)` straight from shared memory). FIN packets on the
    /// way are consumed as [`read`](Self::read) does. Consume with
    /// [`consume_data`](Self::consume_data).
    pub fn data_span(&mut self) -> Result<Option<DataSpan>, Corruption> {
        let Some(partial) = self.current_or_next()? else {
            return Ok(None);
        };
        self.current = Some(partial);
        let size = self.ring.data_size();
        let start = crate::layout::advance(
            partial.packet.start,
            (partial.packet.payload_offset() + PIPE_HEADER_SIZE as u32 + partial.consumed) % size,
            size,
        );
        let len = partial.data_size - partial.consumed;
        let first = len.min(size - start);
        Ok(Some(DataSpan {
            first: (start, first),
            second: (first < len).then_some((0, len - first)),
        }))
    }

    /// Consumes `n` bytes of the span [`data_span`](Self::data_span)
    /// returned (at most its length).
    pub fn consume_data(&mut self, n: u32) {
        if let Some(mut partial) = self.current.take() {
            partial.consumed += n.min(partial.data_size - partial.consumed);
            if partial.consumed == partial.data_size {
                self.ring.consume();
            } else {
                self.current = Some(partial);
            }
        }
    }

    /// Publishes the space of consumed packets; returns whether the writer
    /// must be signalled (see [`RingReader::commit`]).
    #[must_use = "when true, the writer must be signalled"]
    pub fn commit(&mut self) -> Result<bool, Corruption> {
        self.ring.commit()
    }

    /// The packet being read, or the next data packet with data. FIN packets
    /// are consumed on the way and recorded; anything after a FIN is
    /// corruption.
    fn current_or_next(&mut self) -> Result<Option<Partial>, Corruption> {
        if let Some(partial) = self.current.take() {
            return Ok(Some(partial));
        }
        loop {
            let Some(packet) = self.ring.next_packet()? else {
                return Ok(None);
            };
            let data_size = read_pipe_header(&self.ring, &packet, self.max_data)?;
            if self.fin {
                return Err(Corruption {
                    location: crate::error::Location::Data(packet.start as usize),
                    kind: CorruptionKind::DataAfterFin { data_size },
                });
            }
            if data_size == 0 {
                self.fin = true;
                self.ring.consume();
                continue;
            }
            return Ok(Some(Partial {
                packet,
                data_size,
                consumed: 0,
            }));
        }
    }
}

/// Why stream bytes could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PipeWriteError {
    /// The FIN was sent: this direction is closed for good.
    #[error("the FIN was already sent; nothing more can be written in this direction")]
    AfterFin,
    /// The ring failed.
    #[error(transparent)]
    Ring(#[from] WriteError),
}

/// Writes the hv_sock byte stream into a ring.
#[derive(Debug)]
pub struct PipeWriter<M> {
    ring: RingWriter<M>,
    max_data: u32,
    fin_sent: bool,
}

impl<M: RingMem> PipeWriter<M> {
    /// A pipe writer that puts at most `max_data` bytes in one packet (guest:
    /// [`GUEST_MAX_SEND_DATA`](crate::layout::GUEST_MAX_SEND_DATA)).
    pub fn new(ring: RingWriter<M>, max_data: u32) -> Self {
        Self {
            ring,
            max_data,
            fin_sent: false,
        }
    }

    /// The underlying ring writer.
    pub fn ring(&self) -> &RingWriter<M> {
        &self.ring
    }

    /// The underlying ring writer, for the signalling calls.
    pub fn ring_mut(&mut self) -> &mut RingWriter<M> {
        &mut self.ring
    }

    /// Whether the FIN has been written.
    pub fn fin_sent(&self) -> bool {
        self.fin_sent
    }

    /// Data bytes that can be written now (the seed's rule: free space minus
    /// room for a 1-byte packet and a FIN, rounded down to 8), using the
    /// cached `read_index`.
    pub fn cached_writable(&self) -> usize {
        writable(self.ring.cached_free())
    }

    /// Data bytes that can be written now; reloads the peer's `read_index`.
    pub fn writable(&mut self) -> Result<usize, Corruption> {
        Ok(writable(self.ring.free()?))
    }

    /// Writes as much of `data` as fits, in packets of at most `max_data`
    /// bytes; returns the bytes written (0 when the ring is full). The
    /// packets become visible at the next [`commit`](Self::commit).
    pub fn write(&mut self, data: &[u8]) -> Result<usize, PipeWriteError> {
        if self.fin_sent {
            return Err(PipeWriteError::AfterFin);
        }
        let mut done = 0;
        while done < data.len() {
            let wanted = (data.len() - done).min(self.max_data as usize);
            let mut room = self.cached_writable();
            if room < wanted {
                room = self.writable().map_err(WriteError::from)?;
            }
            let n = wanted.min(room);
            if n == 0 {
                break;
            }
            let header = PipeHeader::data(n as u32);
            self.ring.write_packet(
                PACKET_TYPE_DATA_INBAND,
                0,
                0,
                &[header.as_bytes(), &data[done..done + n]],
            )?;
            done += n;
        }
        Ok(done)
    }

    /// Writes the FIN (a data packet with no data), once. Always fits when
    /// only this writer's [`write`](Self::write) filled the ring; a second
    /// call does nothing.
    pub fn write_fin(&mut self) -> Result<(), WriteError> {
        if self.fin_sent {
            return Ok(());
        }
        let header = PipeHeader::data(0);
        self.ring
            .write_packet(PACKET_TYPE_DATA_INBAND, 0, 0, &[header.as_bytes()])?;
        self.fin_sent = true;
        Ok(())
    }

    /// Publishes the packets written; returns whether the reader must be
    /// signalled (see [`RingWriter::commit`]).
    #[must_use = "when true, the reader must be signalled"]
    pub fn commit(&mut self) -> Result<bool, Corruption> {
        self.ring.commit()
    }
}

/// The seed's writable bytes for `free` free bytes in the ring.
pub fn writable(free: u32) -> usize {
    let free = free as usize;
    if free <= WRITABLE_RESERVE {
        0
    } else {
        (free - WRITABLE_RESERVE) & !7
    }
}
