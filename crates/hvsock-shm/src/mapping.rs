//! A shared, writable mapping of a sealed memfd, and safe access to it.
//!
//! Owns [`Mapping`]: `mmap`/`munmap`, bounds-checked copies in and out, and
//! atomic views of 32-bit words. It never creates `&[u8]` or `&mut [u8]` into
//! the mapping: the peer may write any byte at any moment, and a Rust
//! reference promises that no one does (see the safety notes of rustix's
//! `mmap`). What the bytes mean is the callers' business.
//!
//! Concurrent access model: control words are shared only through atomics.
//! Plain copies ([`Mapping::read`], [`Mapping::write`]) may race with a
//! hostile peer; in that case the bytes copied are unspecified but every copy
//! stays inside the mapping, and whatever was copied out is private memory
//! that the caller validates. Cooperating users (the ring protocol) never copy
//! bytes that the other side is writing at the same time.

use std::ptr::{self, NonNull};
use std::sync::atomic::AtomicU32;

use rustix::mm::{self, MapFlags, ProtFlags};

use crate::{Error, SharedMemory};

/// `len` bytes of a [`SharedMemory`], mapped shared and writable; unmapped
/// on drop.
///
/// Send and Sync: all access goes through copies and atomics, never through
/// references to the bytes, so any number of threads may use it at once.
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is process-wide memory, not tied to a thread; `Mapping`
// only exposes copies and atomic views of it, which are valid from any thread.
unsafe impl Send for Mapping {}

// SAFETY: every method takes `&self` and accesses the memory through copies
// with raw pointers or through atomics, never through `&mut` aliasing; the
// bytes are already shared with another process, so sharing them between
// threads adds no new kind of access.
unsafe impl Sync for Mapping {}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping")
            .field("addr", &self.ptr)
            .field("len", &self.len)
            .finish()
    }
}

impl Mapping {
    /// Maps all of `memory` (its [`len`](SharedMemory::len)), shared,
    /// readable and writable.
    ///
    /// The mapping stays valid after `memory` is dropped (the kernel keeps the
    /// file alive while it is mapped). `memory` is sealed against shrinking
    /// and at least `len` bytes long, so no access to the mapping can fault.
    pub fn new(memory: &SharedMemory) -> Result<Self, Error> {
        let len = memory.len();
        // SAFETY: a null address lets the kernel choose an unused range, so no
        // existing memory (and no Rust reference) is affected; the length and
        // offset lie within the file, which `SharedMemory` guarantees is at
        // least `len` bytes and cannot shrink.
        let addr = unsafe {
            mm::mmap(
                ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                memory,
                0,
            )
        }
        .map_err(Error::os(
            "mapping shared memory (mmap)",
            "check the address-space limit (RLIMIT_AS) and that the memfd was opened read-write",
        ))?;
        let Some(ptr) = NonNull::new(addr.cast::<u8>()) else {
            // Only possible with vm.mmap_min_addr = 0; a null pointer cannot
            // back Rust accesses, so give the range back and fail.
            // SAFETY: the range is exactly what mmap just returned and nothing
            // refers to it yet.
            let _ = unsafe { mm::munmap(addr, len) };
            return Err(Error::Os {
                action: "mapping shared memory (mmap)",
                hint: "the kernel placed it at address 0, which cannot be used; raise vm.mmap_min_addr",
                source: std::io::Error::other("mapped at address 0"),
            });
        };
        Ok(Self { ptr, len })
    }

    /// The length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`: a mapping is at least one page.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies `dst.len()` bytes starting at byte `offset` of the mapping into
    /// `dst`.
    ///
    /// The bytes are whatever the mapping held during the copy; a peer writing
    /// at the same time can make them any mix of old and new.
    pub fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), Error> {
        self.check(offset, dst.len())?;
        // SAFETY: just checked that the range lies inside the mapping.
        unsafe { self.read_unchecked(offset, dst) };
        Ok(())
    }

    /// Copies `src` into the mapping starting at byte `offset`.
    pub fn write(&self, offset: usize, src: &[u8]) -> Result<(), Error> {
        self.check(offset, src.len())?;
        // SAFETY: just checked that the range lies inside the mapping.
        unsafe { self.write_unchecked(offset, src) };
        Ok(())
    }

    /// Writes the `len` bytes at byte `offset` of the mapping to `fd` with one
    /// `write(2)`: the kernel copies them straight out of the shared memory,
    /// with no copy in this process (the zero-copy path of a relay). Returns
    /// how many bytes were written; a non-blocking `fd` may give
    /// `WouldBlock`. What the peer writes into those bytes meanwhile goes
    /// out as it is: they are data, never trusted.
    pub fn write_to_fd(
        &self,
        offset: usize,
        len: usize,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> Result<usize, std::io::Error> {
        use std::os::fd::AsRawFd;
        self.check(offset, len).map_err(std::io::Error::other)?;
        loop {
            // SAFETY: the range was just checked to lie inside the mapping,
            // which stays mapped while `self` is borrowed; the kernel only
            // reads it. Passing a raw pointer creates no Rust reference to
            // bytes the peer may be changing.
            let written =
                unsafe { libc::write(fd.as_raw_fd(), self.ptr.as_ptr().add(offset).cast(), len) };
            if written >= 0 {
                return Ok(written as usize);
            }
            let error = std::io::Error::last_os_error();
            if error.kind() != std::io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }

    /// The 32-bit word at byte `offset` (which must be a multiple of 4), as an
    /// atomic shared with every other mapping of the same memory.
    ///
    /// Atomics are the one safe way to share a word with another process: the
    /// peer may store to it at any time, and loads still see whole values.
    pub fn atomic_u32(&self, offset: usize) -> Result<&AtomicU32, Error> {
        self.check(offset, 4)?;
        if offset % 4 != 0 {
            return Err(Error::Misaligned { offset, align: 4 });
        }
        // SAFETY: the word is inside the mapping and 4-byte aligned.
        Ok(unsafe { self.atomic_u32_unchecked(offset) })
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), Error> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(Error::OutOfBounds {
                offset,
                len,
                mapping_len: self.len,
            }),
        }
    }

    /// Copies bytes out of the mapping without checking bounds.
    ///
    /// # Safety
    ///
    /// `offset + dst.len()` must not exceed [`len`](Self::len) (nor overflow).
    #[inline]
    pub(crate) unsafe fn read_unchecked(&self, offset: usize, dst: &mut [u8]) {
        // SAFETY: the caller guarantees the source range is inside the
        // mapping, which is readable and lives as long as `self`; `dst` is
        // private memory, so the ranges cannot overlap. No reference to the
        // shared bytes is created, only a raw copy.
        unsafe {
            ptr::copy_nonoverlapping(self.ptr.as_ptr().add(offset), dst.as_mut_ptr(), dst.len())
        }
    }

    /// Copies bytes into the mapping without checking bounds.
    ///
    /// # Safety
    ///
    /// `offset + src.len()` must not exceed [`len`](Self::len) (nor overflow).
    #[inline]
    pub(crate) unsafe fn write_unchecked(&self, offset: usize, src: &[u8]) {
        // SAFETY: the caller guarantees the destination range is inside the
        // mapping, which is writable and lives as long as `self`; `src` is
        // private memory, so the ranges cannot overlap. Writing through a raw
        // pointer from `&self` is fine: no Rust reference to these bytes
        // exists.
        unsafe { ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().add(offset), src.len()) }
    }

    /// An atomic view of the word at `offset`, without checks.
    ///
    /// # Safety
    ///
    /// `offset` must be a multiple of 4 and `offset + 4` must not exceed
    /// [`len`](Self::len).
    #[inline]
    pub(crate) unsafe fn atomic_u32_unchecked(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: the caller guarantees the word is inside the mapping and
        // aligned (the mapping itself is page-aligned); the returned reference
        // borrows `self`, so the memory stays mapped while it lives; all
        // accesses through it are atomic, which is what `from_ptr` requires of
        // accesses that may run concurrently (the peer's included).
        unsafe { AtomicU32::from_ptr(self.ptr.as_ptr().add(offset).cast::<u32>()) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `len` describe exactly the range mmap returned;
        // every reference into it (atomic views) borrows `self`, so none
        // outlives this point.
        let result = unsafe { mm::munmap(self.ptr.as_ptr().cast(), self.len) };
        // munmap of a range we mapped cannot fail short of a kernel bug; there
        // is nothing useful to do with the error in a destructor.
        debug_assert!(result.is_ok(), "munmap failed: {result:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PAGE_SIZE;
    use std::sync::atomic::Ordering;

    #[test]
    fn second_mapping_sees_writes_of_the_first() {
        let mem = SharedMemory::create("t", 2 * PAGE_SIZE).unwrap();
        let a = Mapping::new(&mem).unwrap();
        let b = Mapping::new(&mem).unwrap();
        assert_ne!(a.ptr, b.ptr, "two distinct mappings");
        a.write(PAGE_SIZE - 3, b"across a page").unwrap();
        let mut buf = [0u8; 13];
        b.read(PAGE_SIZE - 3, &mut buf).unwrap();
        assert_eq!(&buf, b"across a page");

        a.atomic_u32(8)
            .unwrap()
            .store(0xdead_beef, Ordering::Release);
        assert_eq!(
            b.atomic_u32(8).unwrap().load(Ordering::Acquire),
            0xdead_beef
        );
        let mut word = [0u8; 4];
        b.read(8, &mut word).unwrap();
        assert_eq!(u32::from_ne_bytes(word), 0xdead_beef);
    }

    #[test]
    fn mapping_outlives_the_memfd_wrapper() {
        let mem = SharedMemory::create("t", PAGE_SIZE).unwrap();
        let map = Mapping::new(&mem).unwrap();
        let again = SharedMemory::from_fd(mem.into_fd(), PAGE_SIZE).unwrap();
        let other = Mapping::new(&again).unwrap();
        drop(again);
        map.write(0, b"still here").unwrap();
        let mut buf = [0u8; 10];
        other.read(0, &mut buf).unwrap();
        assert_eq!(&buf, b"still here");
    }

    #[test]
    fn accesses_are_bounds_checked() {
        let mem = SharedMemory::create("t", PAGE_SIZE).unwrap();
        let map = Mapping::new(&mem).unwrap();
        assert_eq!(map.len(), PAGE_SIZE);
        map.write(PAGE_SIZE - 4, &[1, 2, 3, 4]).unwrap();
        map.read(PAGE_SIZE, &mut []).unwrap();
        assert!(matches!(
            map.write(PAGE_SIZE - 3, &[1, 2, 3, 4]),
            Err(Error::OutOfBounds { offset, len: 4, mapping_len }) if offset == PAGE_SIZE - 3 && mapping_len == PAGE_SIZE
        ));
        assert!(matches!(
            map.read(usize::MAX, &mut [0; 2]),
            Err(Error::OutOfBounds { .. })
        ));
        assert!(matches!(
            map.atomic_u32(PAGE_SIZE),
            Err(Error::OutOfBounds { .. })
        ));
        assert!(matches!(
            map.atomic_u32(6),
            Err(Error::Misaligned {
                offset: 6,
                align: 4
            })
        ));
        assert_eq!(
            map.atomic_u32(PAGE_SIZE - 4)
                .unwrap()
                .load(Ordering::Relaxed),
            u32::from_ne_bytes([1, 2, 3, 4])
        );
    }

    #[test]
    fn mapping_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Mapping>();
        let mem = SharedMemory::create("t", PAGE_SIZE).unwrap();
        let map = std::sync::Arc::new(Mapping::new(&mem).unwrap());
        let threads: Vec<_> = (0..4u32)
            .map(|i| {
                let map = map.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        map.atomic_u32(0).unwrap().fetch_add(1, Ordering::Relaxed);
                    }
                    map.write(64 + i as usize * 4, &i.to_ne_bytes()).unwrap();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(map.atomic_u32(0).unwrap().load(Ordering::Relaxed), 4000);
        for i in 0..4u32 {
            let mut b = [0; 4];
            map.read(64 + i as usize * 4, &mut b).unwrap();
            assert_eq!(u32::from_ne_bytes(b), i);
        }
    }
}
