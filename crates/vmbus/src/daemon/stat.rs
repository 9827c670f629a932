//! Filling a `hvsock stat` report from the rings themselves: fill levels
//! from each ring's `write_index` and `read_index`, stream byte counters
//! from [`BYTES_WRITTEN_OFFSET`] of each control page.
//!
//! Owns only reading those words. The rings are written by two untrusted
//! processes: every value is checked before use and nothing read from them
//! is ever used as an index into memory. Garbage indices give no fill level
//! (and a debug log line with the raw values).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use hvsock_shm::{Mapping, SharedMemory, PAGE_SIZE};

use crate::ext::{RingLayout, StatReport, BYTES_WRITTEN_OFFSET};

/// What one ring shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RingState {
    /// Bytes used and data-area size, when the indices are sane.
    pub fill: Option<(u32, u32)>,
    /// The writer's byte counter.
    pub bytes: u64,
}

/// Fills fill levels and byte counters into `report`.
pub(crate) fn fill(report: &mut StatReport, rings: &[(u32, Arc<OwnedFd>, RingLayout)]) {
    let index: HashMap<u32, usize> = report
        .channels
        .iter()
        .enumerate()
        .map(|(i, ch)| (ch.relid, i))
        .collect();
    for (relid, memfd, layout) in rings {
        let Some(&i) = index.get(relid) else {
            continue;
        };
        match read_rings(memfd, *layout) {
            Ok([g2h, h2g]) => {
                let ch = &mut report.channels[i];
                ch.guest_to_host_fill = g2h.fill;
                ch.host_to_guest_fill = h2g.fill;
                ch.guest_bytes = Some(g2h.bytes);
                ch.host_bytes = Some(h2g.bytes);
            }
            Err(e) => tracing::debug!(relid, "cannot read the rings: {e}"),
        }
    }
}

/// Reads both rings of a channel: guest → host, then host → guest.
pub(crate) fn read_rings(memfd: &OwnedFd, layout: RingLayout) -> Result<[RingState; 2], String> {
    let total = layout.total_pages as usize;
    let g2h = layout.guest_to_host_pages as usize;
    if g2h < 2 || total < g2h + 2 {
        return Err(format!("impossible layout {layout:?}"));
    }
    let fd = memfd.try_clone().map_err(|e| format!("dup: {e}"))?;
    let memory = SharedMemory::from_fd(fd, total * PAGE_SIZE).map_err(|e| e.to_string())?;
    let map = Mapping::new(&memory).map_err(|e| e.to_string())?;
    let ring = |first_page: usize, pages: usize| -> Result<RingState, String> {
        let control = first_page * PAGE_SIZE;
        let size = (pages - 1) * PAGE_SIZE;
        let word = |offset: usize| {
            map.atomic_u32(control + offset)
                .map(|w| w.load(Ordering::Relaxed))
                .map_err(|e| e.to_string())
        };
        let write = word(0)?;
        let read = word(4)?;
        let mut counter = [0u8; 8];
        map.read(control + BYTES_WRITTEN_OFFSET, &mut counter)
            .map_err(|e| e.to_string())?;
        Ok(RingState {
            fill: fill_level(write, read, size),
            bytes: u64::from_le_bytes(counter),
        })
    };
    Ok([ring(0, g2h)?, ring(g2h, total - g2h)?])
}

/// Bytes between `read` and `write` in a data area of `size` bytes, if
/// both are inside it and 8-aligned.
pub(crate) fn fill_level(write: u32, read: u32, size: usize) -> Option<(u32, u32)> {
    let size = u32::try_from(size).ok()?;
    let sane = |i: u32| i < size && i % 8 == 0;
    if !sane(write) || !sane(read) {
        tracing::debug!(write, read, size, "ring indices out of range");
        return None;
    }
    let used = if write >= read {
        write - read
    } else {
        size - read + write
    };
    Some((used, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_levels_wrap_and_garbage_gives_none() {
        assert_eq!(fill_level(40, 0, 8192), Some((40, 8192)));
        assert_eq!(fill_level(8, 8184, 8192), Some((16, 8192)));
        assert_eq!(fill_level(0, 0, 8192), Some((0, 8192)));
        assert_eq!(fill_level(8192, 0, 8192), None);
        assert_eq!(fill_level(3, 0, 8192), None);
        assert_eq!(fill_level(0, u32::MAX, 8192), None);
    }

    #[test]
    fn rings_are_read_from_the_memfd() {
        let mem = SharedMemory::create("stat", 6 * PAGE_SIZE).unwrap();
        let map = Mapping::new(&mem).unwrap();
        map.write(0, &48u32.to_le_bytes()).unwrap();
        map.write(4, &8u32.to_le_bytes()).unwrap();
        map.write(BYTES_WRITTEN_OFFSET, &1234u64.to_le_bytes())
            .unwrap();
        // The host -> guest ring (pages 3..6) has garbage indices.
        map.write(3 * PAGE_SIZE, &u32::MAX.to_le_bytes()).unwrap();
        map.write(3 * PAGE_SIZE + BYTES_WRITTEN_OFFSET, &7u64.to_le_bytes())
            .unwrap();
        let fd = Arc::new(mem.into_fd());
        let layout = RingLayout {
            total_pages: 6,
            guest_to_host_pages: 3,
        };
        let [g2h, h2g] = read_rings(&fd, layout).unwrap();
        assert_eq!(g2h.fill, Some((40, 8192)));
        assert_eq!(g2h.bytes, 1234);
        assert_eq!(h2g.fill, None);
        assert_eq!(h2g.bytes, 7);
        assert!(read_rings(
            &fd,
            RingLayout {
                total_pages: 3,
                guest_to_host_pages: 2
            }
        )
        .is_err());
        // A layout larger than the memfd is refused, not mapped.
        assert!(read_rings(
            &fd,
            RingLayout {
                total_pages: 600,
                guest_to_host_pages: 2
            }
        )
        .is_err());
    }
}
