//! The writing side of one ring: packets in, `write_index` out.
//!
//! Owns the writer's private cursor, the two-phase write (packets are written
//! against a private cursor and published together by [`RingWriter::commit`]),
//! the never-full rule and the writer's half of the signalling rules. Does not
//! signal: `commit` says whether the reader must be signalled.

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use zerocopy::IntoBytes;

use crate::error::{Corruption, IndexField, WriteError};
use crate::index::{check_index, check_moved_index, Health};
use crate::layout::{
    advance, check_data_len, distance, free, round_up8, GeometryError, PacketDescriptor,
    DESCRIPTOR_SIZE, TRAILER_SIZE,
};
use crate::mem::{word, RingMem};

/// A first payload part up to this size is copied with the descriptor.
const SMALL_PART: usize = 16;

/// The writer of one ring.
///
/// The writer owns `write_index` and `pending_send_sz`; it reads the peer's
/// `read_index` and `interrupt_mask`, validating the index on every load.
#[derive(Debug)]
pub struct RingWriter<M> {
    mem: M,
    size: u32,
    /// End of the last packet written, published or not.
    write: u32,
    /// `write_index` as last published.
    published: u32,
    /// `read_index` as last loaded (validated).
    read: u32,
    health: Health,
}

impl<M: RingMem> RingWriter<M> {
    /// Attaches a writer to a ring, starting from the indices in its control page.
    ///
    /// Fails if the data area is not a usable size or an index in the control
    /// page is invalid.
    pub fn new(mem: M) -> Result<Self, AttachError> {
        let size = check_data_len(mem.data_len())?;
        let write = mem.load_control(word::WRITE_INDEX, Acquire);
        check_index(IndexField::WriteIndex, write, size)?;
        let read = mem.load_control(word::READ_INDEX, Acquire);
        check_index(IndexField::ReadIndex, read, size)?;
        Ok(Self {
            mem,
            size,
            write,
            published: write,
            read,
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

    /// Free bytes as of the last load of `read_index`, counting packets written
    /// but not yet committed as used.
    pub fn cached_free(&self) -> u32 {
        free(self.write, self.read, self.size)
    }

    /// Free bytes now: reloads the peer's `read_index`.
    pub fn free(&mut self) -> Result<u32, Corruption> {
        self.health.check()?;
        self.load_read_index()?;
        Ok(self.cached_free())
    }

    /// Bytes published but not yet released by the reader, as of the last load.
    pub fn cached_unread(&self) -> u32 {
        distance(self.read, self.published, self.size)
    }

    /// Writes one packet after the last one written, without publishing it.
    ///
    /// The payload is the concatenation of `parts` (for hv_sock: the pipe
    /// header and the data), copied straight into the ring. Padding is zeroed
    /// and the trailer written. The packet becomes visible to the reader only
    /// at the next [`commit`](Self::commit).
    pub fn write_packet(
        &mut self,
        packet_type: u16,
        flags: u16,
        transaction_id: u64,
        parts: &[&[u8]],
    ) -> Result<(), WriteError> {
        self.health.check()?;
        let payload: usize = parts.iter().map(|p| p.len()).sum();
        let body = round_up8(DESCRIPTOR_SIZE + payload);
        let needed = body + TRAILER_SIZE;
        let len8 = u16::try_from(body / 8).ok();
        let (Some(len8), true) = (len8, needed < self.size as usize) else {
            return Err(WriteError::TooLarge {
                needed,
                data_size: self.size,
            });
        };
        let needed = needed as u32;
        // Reload the reader's index only when the cached one says no: the
        // reader only ever frees space, so a stale index errs on the safe side.
        if self.cached_free() <= needed {
            self.load_read_index()?;
            let free = self.cached_free();
            if free <= needed {
                return Err(WriteError::Full { needed, free });
            }
        }
        let start = self.write;
        let descriptor = PacketDescriptor {
            packet_type: packet_type.into(),
            offset8: ((DESCRIPTOR_SIZE / 8) as u16).into(),
            len8: len8.into(),
            flags: flags.into(),
            transaction_id: transaction_id.into(),
        };
        // Three copies per packet rather than five: the descriptor with a
        // small first part (hv_sock's 8-byte pipe header), the bulk, then
        // padding and trailer together. Each copy into shared memory has a
        // fixed cost that shows at 4 KiB packets.
        let mut head = [0u8; DESCRIPTOR_SIZE + SMALL_PART];
        head[..DESCRIPTOR_SIZE].copy_from_slice(descriptor.as_bytes());
        let mut head_len = DESCRIPTOR_SIZE;
        let mut rest = parts;
        if let Some((first, others)) = parts.split_first() {
            if first.len() <= SMALL_PART {
                head[DESCRIPTOR_SIZE..DESCRIPTOR_SIZE + first.len()].copy_from_slice(first);
                head_len += first.len();
                rest = others;
            }
        }
        let mut at = self.copy_in(start, &head[..head_len]);
        for part in rest {
            at = self.copy_in(at, part);
        }
        let padding = body - DESCRIPTOR_SIZE - payload;
        let mut tail = [0u8; 8 + TRAILER_SIZE];
        let trailer = u64::from(start) << 32;
        tail[padding..padding + TRAILER_SIZE].copy_from_slice(&trailer.to_le_bytes());
        self.write = self.copy_in(at, &tail[..padding + TRAILER_SIZE]);
        Ok(())
    }

    /// Publishes every packet written since the last commit.
    ///
    /// Returns whether the reader must be signalled: it has not masked
    /// interrupts and the ring was empty before these packets (the reader had
    /// released everything published before).
    #[must_use = "when true, the reader must be signalled"]
    pub fn commit(&mut self) -> Result<bool, Corruption> {
        self.health.check()?;
        if self.write == self.published {
            return Ok(false);
        }
        let before = self.published;
        // Release: the packet bytes are visible before the index that covers
        // them. The fence orders this store before the loads of the mask and
        // read index (store->load): without it the reader could unmask and
        // re-check an empty ring while we read a stale mask, and both sleep.
        self.mem
            .store_control(word::WRITE_INDEX, self.write, Release);
        self.published = self.write;
        self.mem.full_fence();
        let masked = self.mem.load_control(word::INTERRUPT_MASK, Relaxed) != 0;
        self.load_read_index()?;
        Ok(!masked && self.read == before)
    }

    /// Publishes every packet written since the last commit, for a reader
    /// that polls and never sleeps: a release store of `write_index` and
    /// nothing else (no fence, no signal decision). A reader that may sleep
    /// needs [`commit`](Self::commit).
    pub fn publish(&mut self) -> Result<(), Corruption> {
        self.health.check()?;
        if self.write != self.published {
            self.mem
                .store_control(word::WRITE_INDEX, self.write, Release);
            self.published = self.write;
        }
        Ok(())
    }

    /// Drops every packet written since the last commit.
    pub fn revert(&mut self) {
        self.write = self.published;
    }

    /// Publishes `pending_send_sz`: the reader signals once more than `bytes`
    /// are free (0 = not waiting). hv_sock guests set it once, permanently.
    pub fn set_pending_send_size(&self, bytes: u32) {
        // Relaxed: `space_after_arming` fences before it re-checks.
        self.mem
            .store_control(word::PENDING_SEND_SIZE, bytes & !7, Relaxed);
    }

    /// The second half of "arm, then re-check before sleeping": after
    /// `pending_send_sz` is published, reloads `read_index` and returns
    /// whether more than `needed` bytes are free now (then do not sleep).
    pub fn space_after_arming(&mut self, needed: u32) -> Result<bool, Corruption> {
        self.health.check()?;
        // Orders the store of pending_send_sz before this load of
        // read_index; the reader fences between its store of read_index and
        // its load of pending_send_sz. One of us sees the other.
        self.mem.full_fence();
        self.load_read_index()?;
        Ok(self.cached_free() > needed)
    }

    /// Copies `bytes` into the data area at `at`, wrapping at its end, and
    /// returns the index just past them.
    fn copy_in(&self, at: u32, bytes: &[u8]) -> u32 {
        let to_end = (self.size - at) as usize;
        if bytes.len() <= to_end {
            self.mem.write_data(at as usize, bytes);
        } else {
            let (first, second) = bytes.split_at(to_end);
            self.mem.write_data(at as usize, first);
            self.mem.write_data(0, second);
        }
        advance(at, bytes.len() as u32, self.size)
    }

    /// Loads and validates the peer's `read_index`: in range, aligned, and
    /// moved only forward, no further than what was published.
    ///
    /// Acquire: the reader's copies out of the space it released happen
    /// before we overwrite that space.
    fn load_read_index(&mut self) -> Result<(), Corruption> {
        let value = self.mem.load_control(word::READ_INDEX, Acquire);
        let allowed = distance(self.read, self.published, self.size);
        let checked =
            check_moved_index(IndexField::ReadIndex, value, self.size, self.read, allowed);
        match checked {
            Ok(value) => {
                self.read = value;
                Ok(())
            }
            Err(corruption) => Err(self.health.poison(corruption)),
        }
    }
}

/// Why a ring could not be attached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    /// The data area has an unusable size.
    #[error(transparent)]
    Geometry(#[from] GeometryError),
    /// The control page holds an invalid index.
    #[error(transparent)]
    Corrupt(#[from] Corruption),
}

/// Prepares a fresh ring, as the guest does before opening a channel: zeroes
/// the control page and sets `feature_bits`.
pub fn init_control_page<M: RingMem>(mem: &M, feature_bits: u32) {
    for i in 0..crate::mem::CONTROL_WORDS {
        mem.store_control(i, 0, Relaxed);
    }
    // Release: the zeroed page is visible to whoever learns of the ring after
    // this store.
    mem.store_control(
        word::FEATURE_BITS,
        feature_bits,
        std::sync::atomic::Ordering::Release,
    );
}
