//! [`RingMem`] for a ring that lives in a shared mapping.
//!
//! Owns [`SharedRingMem`] (one ring: a 4 KiB control page at a page-aligned
//! offset, then its data area) and [`ring_pair`] (the two rings of a VMBus
//! channel's GPADL, laid out as in `PROTOCOL.md` section 2.1). It checks that
//! a ring fits its mapping; it does not know what the control words mean or
//! validate the values the peer stores in them: that is `vmbus-ring`'s job.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use vmbus_ring::mem::{RingMem, CONTROL_PAGE_SIZE, CONTROL_WORDS};

use crate::{Error, Mapping, PAGE_SIZE};

/// One ring inside a [`Mapping`]: the control page at
/// [`control_offset`](Self::control_offset), the data area right after it.
///
/// Cheap to build; several rings may share one mapping through the `Arc`.
#[derive(Debug, Clone)]
pub struct SharedRingMem {
    mapping: Arc<Mapping>,
    control_offset: usize,
    data_len: usize,
}

impl SharedRingMem {
    /// A ring whose control page starts at byte `control_offset` of
    /// `mapping`, followed by a data area of `data_len` bytes.
    ///
    /// Both must be multiples of 4096, `data_len` non-zero, and the whole ring
    /// (`4096 + data_len` bytes) must lie inside the mapping; otherwise
    /// [`Error::BadRingLayout`].
    pub fn new(
        mapping: Arc<Mapping>,
        control_offset: usize,
        data_len: usize,
    ) -> Result<Self, Error> {
        let bad = |hint| Error::BadRingLayout {
            control_offset,
            data_len,
            mapping_len: mapping.len(),
            hint,
        };
        if control_offset % PAGE_SIZE != 0 {
            return Err(bad("the control page must start on a 4096-byte boundary"));
        }
        if data_len == 0 || data_len % PAGE_SIZE != 0 {
            return Err(bad(
                "the data area must be a non-zero multiple of 4096 bytes",
            ));
        }
        let end = control_offset
            .checked_add(CONTROL_PAGE_SIZE)
            .and_then(|v| v.checked_add(data_len));
        match end {
            Some(end) if end <= mapping.len() => {}
            _ => return Err(bad("the ring must end inside the mapping")),
        }
        Ok(Self {
            mapping,
            control_offset,
            data_len,
        })
    }

    /// Byte offset of the control page in the mapping.
    pub fn control_offset(&self) -> usize {
        self.control_offset
    }

    /// The mapping the ring lives in.
    pub fn mapping(&self) -> &Arc<Mapping> {
        &self.mapping
    }

    fn data_offset(&self) -> usize {
        self.control_offset + CONTROL_PAGE_SIZE
    }

    /// Panics unless `len` bytes at `offset` lie in the data area. A failure
    /// is a bug in the ring code (the trait's callers promise this), never a
    /// consequence of peer input; checking anyway keeps a buggy caller from
    /// writing into the other ring or out of the mapping.
    #[inline]
    #[track_caller]
    fn check_data(&self, offset: usize, len: usize) {
        assert!(
            offset <= self.data_len && len <= self.data_len - offset,
            "ring data access of {len} bytes at {offset} outside the {}-byte data area",
            self.data_len
        );
    }

    #[inline]
    #[track_caller]
    fn control_word_offset(&self, word: usize) -> usize {
        assert!(word < CONTROL_WORDS, "control word {word} out of range");
        self.control_offset + word * 4
    }
}

impl RingMem for SharedRingMem {
    fn data_len(&self) -> usize {
        self.data_len
    }

    #[inline]
    fn load_control(&self, word: usize, order: Ordering) -> u32 {
        let offset = self.control_word_offset(word);
        // SAFETY: `new` checked the control page lies inside the mapping and
        // is page-aligned; `offset` is a 4-aligned word within it.
        unsafe { self.mapping.atomic_u32_unchecked(offset) }.load(order)
    }

    #[inline]
    fn store_control(&self, word: usize, value: u32, order: Ordering) {
        let offset = self.control_word_offset(word);
        // SAFETY: as in `load_control`.
        unsafe { self.mapping.atomic_u32_unchecked(offset) }.store(value, order)
    }

    #[inline]
    fn read_data(&self, offset: usize, dst: &mut [u8]) {
        self.check_data(offset, dst.len());
        // SAFETY: the range is inside the data area (just checked), which
        // `new` checked lies inside the mapping.
        unsafe {
            self.mapping
                .read_unchecked(self.data_offset() + offset, dst)
        }
    }

    #[inline]
    fn write_data(&self, offset: usize, src: &[u8]) {
        self.check_data(offset, src.len());
        // SAFETY: as in `read_data`.
        unsafe {
            self.mapping
                .write_unchecked(self.data_offset() + offset, src)
        }
    }
}

/// The two rings of one VMBus channel, sharing one mapping.
#[derive(Debug, Clone)]
pub struct RingPair {
    /// The ring the guest writes and the host reads ("send" from the guest's
    /// view), at page 0.
    pub guest_to_host: SharedRingMem,
    /// The ring the host writes and the guest reads, right after the first.
    pub host_to_guest: SharedRingMem,
}

/// The two rings of a channel GPADL, laid out as `PROTOCOL.md` section 2.1
/// describes: the guest-to-host ring at page 0, `guest_to_host_pages` pages
/// long, then the host-to-guest ring, `host_to_guest_pages` pages long.
///
/// Page counts include each ring's control page, so each must be at least 2;
/// the host-to-guest ring starts at page `guest_to_host_pages` (the open
/// message's `downstream_ringbuffer_pageoffset`). Both rings must fit the
/// mapping; a mapping longer than both is accepted and the rest is unused.
pub fn ring_pair(
    mapping: Arc<Mapping>,
    guest_to_host_pages: usize,
    host_to_guest_pages: usize,
) -> Result<RingPair, Error> {
    let data_len = |pages: usize, control_offset: usize| {
        pages
            .checked_sub(1)
            .and_then(|p| p.checked_mul(PAGE_SIZE))
            .ok_or(Error::BadRingLayout {
                control_offset,
                data_len: 0,
                mapping_len: mapping.len(),
                hint: "each ring needs a control page and at least one data page",
            })
    };
    let up_data = data_len(guest_to_host_pages, 0)?;
    let down_offset = guest_to_host_pages
        .checked_mul(PAGE_SIZE)
        .ok_or(Error::BadRingLayout {
            control_offset: usize::MAX,
            data_len: 0,
            mapping_len: mapping.len(),
            hint: "the ring sizes overflow",
        })?;
    let down_data = data_len(host_to_guest_pages, down_offset)?;
    Ok(RingPair {
        guest_to_host: SharedRingMem::new(mapping.clone(), 0, up_data)?,
        host_to_guest: SharedRingMem::new(mapping, down_offset, down_data)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SharedMemory;
    use vmbus_ring::mem::word;

    fn mapping(pages: usize) -> Arc<Mapping> {
        let mem = SharedMemory::create("ring", pages * PAGE_SIZE).unwrap();
        Arc::new(Mapping::new(&mem).unwrap())
    }

    #[test]
    fn control_words_and_data_round_trip_through_the_mapping() {
        let map = mapping(4);
        let ring = SharedRingMem::new(map.clone(), PAGE_SIZE, 2 * PAGE_SIZE).unwrap();
        assert_eq!(ring.data_len(), 2 * PAGE_SIZE);

        ring.store_control(word::WRITE_INDEX, 0x1234_5678, Ordering::Release);
        ring.store_control(word::FEATURE_BITS, 1, Ordering::Relaxed);
        assert_eq!(
            ring.load_control(word::WRITE_INDEX, Ordering::Acquire),
            0x1234_5678
        );
        // The words sit where PROTOCOL.md 2.2 puts them, in the mapping.
        let mut raw = [0u8; 4];
        map.read(PAGE_SIZE, &mut raw).unwrap();
        assert_eq!(u32::from_ne_bytes(raw), 0x1234_5678);
        map.read(PAGE_SIZE + 64, &mut raw).unwrap();
        assert_eq!(u32::from_ne_bytes(raw), 1);
        map.write(PAGE_SIZE + 4, &77u32.to_ne_bytes()).unwrap();
        assert_eq!(ring.load_control(word::READ_INDEX, Ordering::Acquire), 77);

        let payload: Vec<u8> = (0..=255).cycle().take(3000).collect();
        ring.write_data(2 * PAGE_SIZE - 3000, &payload);
        let mut back = vec![0; 3000];
        ring.read_data(2 * PAGE_SIZE - 3000, &mut back);
        assert_eq!(back, payload);
        let mut raw = vec![0; 3000];
        map.read(4 * PAGE_SIZE - 3000, &mut raw).unwrap();
        assert_eq!(
            raw, payload,
            "data area starts right after the control page"
        );
    }

    #[test]
    #[should_panic(expected = "outside the 4096-byte data area")]
    fn data_access_past_the_area_panics() {
        let ring = SharedRingMem::new(mapping(4), 0, PAGE_SIZE).unwrap();
        // Would land in the next page of the mapping (someone else's ring).
        ring.write_data(PAGE_SIZE - 1, &[0, 0]);
    }

    #[test]
    #[should_panic(expected = "control word 1024 out of range")]
    fn control_word_past_the_page_panics() {
        let ring = SharedRingMem::new(mapping(4), 0, PAGE_SIZE).unwrap();
        ring.load_control(CONTROL_WORDS, Ordering::Relaxed);
    }

    #[test]
    fn constructor_checks_the_layout() {
        let map = mapping(4);
        let bad = |offset, len| {
            matches!(
                SharedRingMem::new(map.clone(), offset, len),
                Err(Error::BadRingLayout { .. })
            )
        };
        assert!(SharedRingMem::new(map.clone(), 0, 3 * PAGE_SIZE).is_ok());
        assert!(SharedRingMem::new(map.clone(), 2 * PAGE_SIZE, PAGE_SIZE).is_ok());
        assert!(bad(0, 4 * PAGE_SIZE), "control page + data exceed mapping");
        assert!(bad(3 * PAGE_SIZE, PAGE_SIZE), "ring ends past the mapping");
        assert!(bad(8, PAGE_SIZE), "unaligned control page");
        assert!(bad(0, 0), "empty data area");
        assert!(bad(0, 100), "partial data page");
        assert!(bad(usize::MAX - PAGE_SIZE + 1, PAGE_SIZE), "overflow");
    }

    #[test]
    fn ring_pair_views_do_not_overlap() {
        let map = mapping(6 + 4);
        let pair = ring_pair(map.clone(), 6, 4).unwrap();
        let (up, down) = (&pair.guest_to_host, &pair.host_to_guest);
        assert_eq!(up.control_offset(), 0);
        assert_eq!(up.data_len(), 5 * PAGE_SIZE);
        assert_eq!(down.control_offset(), 6 * PAGE_SIZE);
        assert_eq!(down.data_len(), 3 * PAGE_SIZE);

        // Fill every byte of one ring and every control word; the other ring
        // must still read zeros everywhere.
        for w in 0..CONTROL_WORDS {
            up.store_control(w, u32::MAX, Ordering::Relaxed);
        }
        up.write_data(0, &vec![0xaa; up.data_len()]);
        let mut buf = vec![1; down.data_len()];
        down.read_data(0, &mut buf);
        assert!(buf.iter().all(|&b| b == 0));
        assert!((0..CONTROL_WORDS).all(|w| down.load_control(w, Ordering::Relaxed) == 0));

        for w in 0..CONTROL_WORDS {
            down.store_control(w, 7, Ordering::Relaxed);
        }
        down.write_data(0, &vec![0x55; down.data_len()]);
        let mut buf = vec![0; up.data_len()];
        up.read_data(0, &mut buf);
        assert!(buf.iter().all(|&b| b == 0xaa));
        assert!((0..CONTROL_WORDS).all(|w| up.load_control(w, Ordering::Relaxed) == u32::MAX));

        // And together they cover the mapping exactly.
        let mut all = vec![0; map.len()];
        map.read(0, &mut all).unwrap();
        assert!(all[PAGE_SIZE..6 * PAGE_SIZE].iter().all(|&b| b == 0xaa));
        assert!(all[7 * PAGE_SIZE..].iter().all(|&b| b == 0x55));
    }

    #[test]
    fn ring_pair_checks_sizes() {
        let map = mapping(8);
        assert!(ring_pair(map.clone(), 4, 4).is_ok());
        assert!(
            ring_pair(map.clone(), 2, 2).is_ok(),
            "smaller than the mapping"
        );
        for (up, down) in [(1, 4), (4, 1), (0, 4), (5, 4), (4, 5), (usize::MAX, 2)] {
            assert!(
                matches!(
                    ring_pair(map.clone(), up, down),
                    Err(Error::BadRingLayout { .. })
                ),
                "{up} + {down} pages"
            );
        }
    }
}
