//! The reading side of one ring: validated packets out, `read_index` back.
//!
//! Owns the reader's private cursor, the validation of every descriptor (on a
//! private copy, so the peer cannot change it after the check), copying
//! payload bytes straight from the ring into the caller's buffer, batching the
//! publication of `read_index`, and the reader's half of the signalling rules.
//! Does not signal: [`RingReader::commit`] says whether the writer must be.

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use zerocopy::FromBytes;

use crate::error::{Corruption, CorruptionKind, IndexField};
use crate::index::{check_index, check_moved_index, Health};
use crate::layout::{
    advance, check_data_len, distance, free, used, PacketDescriptor, DESCRIPTOR_SIZE,
    FEATURE_PENDING_SEND_SIZE, PACKET_FLAG_COMPLETION_REQUESTED, PACKET_TYPE_DATA_INBAND,
    TRAILER_SIZE,
};
use crate::mem::{word, RingMem};
use crate::writer::AttachError;

/// A packet whose descriptor has been copied out of the ring and validated.
///
/// Every length in it comes from that private copy: the peer may rewrite the
/// ring afterwards, but cannot make these lengths point outside the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    /// Data-area offset of the packet's first byte.
    pub start: u32,
    /// The validated copy of the descriptor.
    pub descriptor: PacketDescriptor,
    /// Bytes from the descriptor's end to the trailer (payload and padding).
    pub payload_len: u32,
    /// Bytes the packet takes in the ring, trailer included.
    pub total_len: u32,
}

impl Packet {
    /// Offset of the payload from the packet start.
    pub fn payload_offset(&self) -> u32 {
        u32::from(self.descriptor.offset8.get()) * 8
    }
}

/// The reader of one ring.
///
/// The reader owns `read_index` and `interrupt_mask`; it reads the peer's
/// `write_index` and `pending_send_sz`, validating the index on every load.
#[derive(Debug)]
pub struct RingReader<M> {
    mem: M,
    size: u32,
    /// Start of the first packet not yet consumed.
    read: u32,
    /// `read_index` as last published.
    published: u32,
    /// `write_index` as last loaded (validated).
    write: u32,
    /// Largest packet accepted, trailer included.
    max_packet: u32,
    /// The validated packet at `read`, until it is consumed.
    current: Option<Packet>,
    health: Health,
}

impl<M: RingMem> RingReader<M> {
    /// Attaches a reader to a ring, starting from the indices in its control
    /// page. Packets longer than `max_packet` bytes (trailer included) are
    /// rejected as corruption.
    pub fn new(mem: M, max_packet: u32) -> Result<Self, AttachError> {
        let size = check_data_len(mem.data_len())?;
        let read = mem.load_control(word::READ_INDEX, Acquire);
        check_index(IndexField::ReadIndex, read, size)?;
        let write = mem.load_control(word::WRITE_INDEX, Acquire);
        check_index(IndexField::WriteIndex, write, size)?;
        Ok(Self {
            mem,
            size,
            read,
            published: read,
            write,
            max_packet,
            current: None,
            health: Health::default(),
        })
    }

    /// The ring memory.
    pub fn mem(&self) -> &M {
        &self.mem
    }

    /// Size of the data area in bytes.
    pub fn data_size(&self) -> u32 {
        self.size
    }

    /// The corruption that broke this ring, if any.
    pub fn broken(&self) -> Option<&Corruption> {
        self.health.corruption()
    }

    /// The private read cursor: where the next packet starts.
    pub fn cursor(&self) -> u32 {
        self.read
    }

    /// Bytes written and not yet consumed, as of the last load of `write_index`.
    pub fn cached_available(&self) -> u32 {
        used(self.write, self.read, self.size)
    }

    /// Bytes written and not yet consumed: reloads the peer's `write_index`.
    ///
    /// Fences before the load, so that after a [`commit`](Self::commit) (or
    /// [`unmask`](Self::unmask)) a result of 0 means the writer will signal
    /// for its next packet: it is the re-check before sleeping.
    pub fn available(&mut self) -> Result<u32, Corruption> {
        self.health.check()?;
        // Pairs with the writer's fence between publishing write_index and
        // loading our mask and read_index.
        self.mem.full_fence();
        self.load_write_index()?;
        Ok(self.cached_available())
    }

    /// The packet at the read cursor, validated, or `None` if the ring is empty.
    ///
    /// The same packet is returned until it is [consumed](Self::consume).
    pub fn next_packet(&mut self) -> Result<Option<Packet>, Corruption> {
        self.health.check()?;
        if let Some(packet) = self.current {
            return Ok(Some(packet));
        }
        if self.cached_available() == 0 {
            self.load_write_index()?;
            if self.cached_available() == 0 {
                return Ok(None);
            }
        }
        match self.validate_packet() {
            Ok(packet) => {
                self.current = Some(packet);
                Ok(Some(packet))
            }
            Err(corruption) => Err(self.health.poison(corruption)),
        }
    }

    /// Copies payload bytes of `packet`, from `offset` bytes into its payload,
    /// straight into `dst`; returns how many were copied (fewer than
    /// `dst.len()` only at the end of the payload).
    pub fn read_payload(&self, packet: &Packet, offset: u32, dst: &mut [u8]) -> usize {
        let Some(left) = packet.payload_len.checked_sub(offset) else {
            return 0;
        };
        let n = dst.len().min(left as usize);
        let at = advance(
            packet.start,
            (packet.payload_offset() + offset) % self.size,
            self.size,
        );
        self.copy_out(at, &mut dst[..n]);
        n
    }

    /// Consumes the current packet (the one [`next_packet`](Self::next_packet)
    /// returned). Its space is released to the writer at the next commit.
    pub fn consume(&mut self) {
        if let Some(packet) = self.current.take() {
            self.read = advance(self.read, packet.total_len, self.size);
        }
    }

    /// Publishes `read_index` past every consumed packet.
    ///
    /// Returns whether the writer must be signalled: it uses the pending-send
    /// protocol (feature bit 0), asked for more free bytes than it had before
    /// this commit, and has them now.
    #[must_use = "when true, the writer must be signalled"]
    pub fn commit(&mut self) -> Result<bool, Corruption> {
        self.health.check()?;
        if self.read == self.published {
            return Ok(false);
        }
        let before = self.published;
        // Release: our copies out of the space happen before the writer may
        // reuse it. The fence orders this store before the load of
        // pending_send_sz: the writer fences between arming its request and
        // re-checking read_index, so one of us sees the other.
        self.mem.store_control(word::READ_INDEX, self.read, Release);
        self.published = self.read;
        self.mem.full_fence();
        let pending = self.mem.load_control(word::PENDING_SEND_SIZE, Relaxed) & !7;
        if pending == 0
            || self.mem.load_control(word::FEATURE_BITS, Relaxed) & FEATURE_PENDING_SEND_SIZE == 0
        {
            return Ok(false);
        }
        // A request for more than can ever be free would never be satisfied;
        // treat it as a request for an empty ring.
        let pending = pending.min(self.size - 8);
        // Judge the crossing against the current write_index: a stale one
        // can make an "old" free space look larger than it was and lose the
        // wakeup (the baseline ring's first version hung this way).
        self.load_write_index()?;
        let free_before = free(self.write, before, self.size);
        let free_now = free(self.write, self.read, self.size);
        Ok(free_before <= pending && free_now > pending)
    }

    /// Publishes `read_index` past every consumed packet, for a writer that
    /// polls and never sleeps: a release store and nothing else (no fence,
    /// no pending-send-size check). A writer that may sleep needs
    /// [`commit`](Self::commit).
    pub fn publish(&mut self) -> Result<(), Corruption> {
        self.health.check()?;
        if self.read != self.published {
            self.mem.store_control(word::READ_INDEX, self.read, Release);
            self.published = self.read;
        }
        Ok(())
    }

    /// Sets `interrupt_mask`: while masked, the writer does not signal.
    pub fn mask(&self) {
        self.mem.store_control(word::INTERRUPT_MASK, 1, Relaxed);
    }

    /// Clears `interrupt_mask`, then re-checks for data: returns the bytes
    /// available. 0 means the writer will signal for its next packet, so the
    /// caller may sleep.
    pub fn unmask(&mut self) -> Result<u32, Corruption> {
        // `available` fences between this store and its load of
        // write_index: a writer that publishes concurrently either sees the
        // mask clear (and signals) or its packet is seen here.
        self.mem.store_control(word::INTERRUPT_MASK, 0, Relaxed);
        self.available()
    }

    /// Copies and validates the descriptor at the read cursor.
    fn validate_packet(&self) -> Result<Packet, Corruption> {
        let start = self.read;
        let available = self.cached_available();
        let bad = |kind| Corruption::data(start, kind);
        if (available as usize) < DESCRIPTOR_SIZE + TRAILER_SIZE {
            return Err(bad(CorruptionKind::PartialPacket { available }));
        }
        let mut raw = [0u8; DESCRIPTOR_SIZE];
        self.copy_out(start, &mut raw);
        // Infallible: the buffer has exactly the descriptor's size.
        let descriptor = PacketDescriptor::read_from_bytes(&raw)
            .unwrap_or_else(|_| unreachable!("descriptor buffer has the descriptor's size"));
        let offset8 = descriptor.offset8.get();
        let len8 = descriptor.len8.get();
        if usize::from(offset8) * 8 < DESCRIPTOR_SIZE {
            return Err(bad(CorruptionKind::DescriptorOffset { offset8 }));
        }
        if len8 < offset8 {
            return Err(bad(CorruptionKind::DescriptorLength { len8, offset8 }));
        }
        let len = u32::from(len8) * 8;
        if len + TRAILER_SIZE as u32 > available {
            return Err(bad(CorruptionKind::PacketBeyondAvailable {
                len,
                available,
            }));
        }
        if len + TRAILER_SIZE as u32 > self.max_packet {
            return Err(bad(CorruptionKind::PacketTooLong {
                len: len + TRAILER_SIZE as u32,
                max: self.max_packet,
            }));
        }
        let flags = descriptor.flags.get();
        if flags & !PACKET_FLAG_COMPLETION_REQUESTED != 0 {
            return Err(bad(CorruptionKind::PacketFlags { flags }));
        }
        let packet_type = descriptor.packet_type.get();
        if packet_type != PACKET_TYPE_DATA_INBAND {
            return Err(bad(CorruptionKind::PacketType { packet_type }));
        }
        Ok(Packet {
            start,
            descriptor,
            payload_len: len - u32::from(offset8) * 8,
            total_len: len + TRAILER_SIZE as u32,
        })
    }

    /// Copies bytes out of the data area at `at`, wrapping at its end.
    fn copy_out(&self, at: u32, dst: &mut [u8]) {
        let to_end = (self.size - at) as usize;
        if dst.len() <= to_end {
            self.mem.read_data(at as usize, dst);
        } else {
            let (first, second) = dst.split_at_mut(to_end);
            self.mem.read_data(at as usize, first);
            self.mem.read_data(0, second);
        }
    }

    /// Loads and validates the peer's `write_index`: in range, aligned, and
    /// moved only forward, never into space this reader has not released.
    ///
    /// Acquire: the packet bytes the index covers must be visible before we
    /// copy them (Linux learnt this on ARM64 in 2022).
    fn load_write_index(&mut self) -> Result<(), Corruption> {
        let value = self.mem.load_control(word::WRITE_INDEX, Acquire);
        // The writer keeps 8 bytes free at all times, counted from the
        // read_index we published.
        let allowed = self.size - 8 - distance(self.published, self.write, self.size);
        let checked = check_moved_index(
            IndexField::WriteIndex,
            value,
            self.size,
            self.write,
            allowed,
        );
        match checked {
            Ok(value) => {
                self.write = value;
                Ok(())
            }
            Err(corruption) => Err(self.health.poison(corruption)),
        }
    }
}
