//! The memory a ring lives in, behind the [`RingMem`] trait.
//!
//! This module owns the boundary between ring logic and memory: the ring code
//! never holds a Rust reference into ring memory (the peer may rewrite it at any
//! moment, possibly from another process), it only loads and stores control
//! words atomically and copies bytes in and out of the data area.
//!
//! It provides [`HeapRingMem`], ordinary process memory for tests, the
//! inspector and embedded use. The shared-memory implementation (memfd + mmap)
//! lives in the `hvsock-shm` crate, which alone holds `unsafe` code.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Size of the control page that precedes every data area, in bytes.
pub const CONTROL_PAGE_SIZE: usize = 4096;

/// Number of 32-bit words in the control page.
pub const CONTROL_WORDS: usize = CONTROL_PAGE_SIZE / 4;

/// Indices of the control words, in 32-bit words from the start of the page.
pub mod word {
    /// `write_index`: where the writer will put its next packet (byte offset 0).
    pub const WRITE_INDEX: usize = 0;
    /// `read_index`: the first byte the reader has not released (byte offset 4).
    pub const READ_INDEX: usize = 1;
    /// `interrupt_mask`: 1 while the reader does not want signals (byte offset 8).
    pub const INTERRUPT_MASK: usize = 2;
    /// `pending_send_sz`: free bytes the blocked writer waits for (byte offset 12).
    pub const PENDING_SEND_SIZE: usize = 3;
    /// `feature_bits`: bit 0 = the pending-send-size protocol is used (byte offset 64).
    pub const FEATURE_BITS: usize = 16;
}

/// Memory holding one ring: a 4 KiB control page and a data area.
///
/// Implementations must make the control words real atomics visible to a peer
/// on another CPU (and, for shared mappings, in another process), and copy
/// bytes of the data area without creating references the peer could change
/// underneath. Data-area copies need no ordering of their own: the ring code
/// frames them with acquire/release accesses of the control words.
///
/// Callers (the ring code) guarantee `word < CONTROL_WORDS` and
/// `offset + len <= data_len()`; implementations may panic otherwise, since
/// that would be a bug in this crate, never a consequence of peer input.
pub trait RingMem {
    /// Size of the data area in bytes.
    fn data_len(&self) -> usize;

    /// Atomically loads control word `word`.
    fn load_control(&self, word: usize, order: Ordering) -> u32;

    /// Atomically stores control word `word`.
    fn store_control(&self, word: usize, value: u32, order: Ordering);

    /// Copies `dst.len()` bytes out of the data area, starting at `offset`.
    fn read_data(&self, offset: usize, dst: &mut [u8]);

    /// Copies `src` into the data area, starting at `offset`.
    fn write_data(&self, offset: usize, src: &[u8]);

    /// A full (sequentially consistent) fence between a store of one control
    /// word and a load of another. The signalling rules depend on it: without
    /// it both sides can miss each other's update and sleep. Overridden only
    /// by model checkers that need to see the fence.
    fn full_fence(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
    }
}

/// Forwards every method to the memory behind a pointer type.
macro_rules! forward_ring_mem {
    ($($ptr:ty),*) => {$(
        impl<T: RingMem + ?Sized> RingMem for $ptr {
            fn data_len(&self) -> usize {
                (**self).data_len()
            }
            fn load_control(&self, word: usize, order: Ordering) -> u32 {
                (**self).load_control(word, order)
            }
            fn store_control(&self, word: usize, value: u32, order: Ordering) {
                (**self).store_control(word, value, order)
            }
            fn read_data(&self, offset: usize, dst: &mut [u8]) {
                (**self).read_data(offset, dst)
            }
            fn write_data(&self, offset: usize, src: &[u8]) {
                (**self).write_data(offset, src)
            }
            fn full_fence(&self) {
                (**self).full_fence()
            }
        }
    )*};
}

forward_ring_mem!(&T, std::sync::Arc<T>);

/// A ring in ordinary process memory, shareable between threads.
///
/// Built from atomics only, so it needs no `unsafe`: the data area is a slice
/// of `AtomicU64` accessed with relaxed loads and stores (whole words where the
/// copy is aligned, merged words at the edges; only one writer ever stores into
/// a given data word, so the read-modify-write at the edges cannot lose bytes).
pub struct HeapRingMem {
    control: Box<[AtomicU32]>,
    data: Box<[AtomicU64]>,
    data_len: usize,
}

impl std::fmt::Debug for HeapRingMem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeapRingMem")
            .field("data_len", &self.data_len)
            .finish_non_exhaustive()
    }
}

impl HeapRingMem {
    /// A zeroed ring with a data area of `data_len` bytes.
    ///
    /// Any length is accepted here so that tests can build odd rings; the ring
    /// types reject data areas that are not a non-zero multiple of 4096.
    pub fn new(data_len: usize) -> Self {
        Self {
            control: (0..CONTROL_WORDS).map(|_| AtomicU32::new(0)).collect(),
            data: (0..data_len.div_ceil(8))
                .map(|_| AtomicU64::new(0))
                .collect(),
            data_len,
        }
    }

    /// A ring holding a copy of `image`: the control page followed by the data
    /// area. Returns `None` when the image is shorter than a control page.
    pub fn from_image(image: &[u8]) -> Option<Self> {
        let (control, data) = image.split_at_checked(CONTROL_PAGE_SIZE)?;
        let mem = Self::new(data.len());
        for (i, chunk) in control.chunks_exact(4).enumerate() {
            let value = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            mem.control[i].store(value, Ordering::Relaxed);
        }
        mem.write_data(0, data);
        Some(mem)
    }

    /// The ring as an image: the control page followed by the data area.
    pub fn to_image(&self) -> Vec<u8> {
        let mut image = Vec::with_capacity(CONTROL_PAGE_SIZE + self.data_len);
        for word in self.control.iter() {
            image.extend_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
        }
        let start = image.len();
        image.resize(start + self.data_len, 0);
        self.read_data(0, &mut image[start..]);
        image
    }
}

impl RingMem for HeapRingMem {
    fn data_len(&self) -> usize {
        self.data_len
    }

    fn load_control(&self, word: usize, order: Ordering) -> u32 {
        self.control[word].load(order)
    }

    fn store_control(&self, word: usize, value: u32, order: Ordering) {
        self.control[word].store(value, order)
    }

    fn read_data(&self, offset: usize, dst: &mut [u8]) {
        assert!(
            offset + dst.len() <= self.data_len,
            "read past the data area"
        );
        let mut done = 0;
        while done < dst.len() {
            let pos = offset + done;
            let (index, within) = (pos / 8, pos % 8);
            let n = (8 - within).min(dst.len() - done);
            let bytes = self.data[index].load(Ordering::Relaxed).to_le_bytes();
            dst[done..done + n].copy_from_slice(&bytes[within..within + n]);
            done += n;
        }
    }

    fn write_data(&self, offset: usize, src: &[u8]) {
        assert!(
            offset + src.len() <= self.data_len,
            "write past the data area"
        );
        let mut done = 0;
        while done < src.len() {
            let pos = offset + done;
            let (index, within) = (pos / 8, pos % 8);
            let n = (8 - within).min(src.len() - done);
            let word = &self.data[index];
            let mut bytes = if n == 8 {
                [0; 8]
            } else {
                word.load(Ordering::Relaxed).to_le_bytes()
            };
            bytes[within..within + n].copy_from_slice(&src[done..done + n]);
            word.store(u64::from_le_bytes(bytes), Ordering::Relaxed);
            done += n;
        }
    }
}
