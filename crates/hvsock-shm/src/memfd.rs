//! Sealed memfds: memory that can be shared with another process and that the
//! other process cannot take away.
//!
//! Owns [`SharedMemory`]: creating a memfd and sealing its size, and checking
//! a memfd received from a peer before anything maps it. Mapping it is
//! [`Mapping`](crate::Mapping)'s job; sending it is
//! [`send_with_fds`](crate::send_with_fds)'s.
//!
//! Why seals: a `MAP_SHARED` mapping of a file that someone shrinks raises
//! `SIGBUS` on the next access of a page past the new end. A peer holding the
//! same memfd could do that at any moment, so every memfd we map must carry
//! `F_SEAL_SHRINK`, which no one can remove once it is set.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{self, MemfdFlags, SealFlags};

use crate::{Error, PAGE_SIZE};

/// A memfd whose size can no longer shrink, ready to be mapped or sent.
///
/// The size is a non-zero multiple of [`PAGE_SIZE`]. The descriptor is
/// close-on-exec.
#[derive(Debug)]
pub struct SharedMemory {
    fd: OwnedFd,
    len: usize,
}

impl SharedMemory {
    /// Creates a zeroed memfd of `len` bytes and seals it against shrinking,
    /// growing and further sealing.
    ///
    /// `name` only labels the memfd in `/proc/<pid>/fd` and `/proc/<pid>/maps`
    /// (it need not be unique, and must not contain a NUL byte). `len` must be
    /// a non-zero multiple of 4096.
    pub fn create(name: &str, len: usize) -> Result<Self, Error> {
        check_len(len as u64)?;
        let fd = fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).map_err(
            Error::os(
                "creating a memfd (memfd_create)",
                "check that the name has no NUL byte and that the process may open more files",
            ),
        )?;
        fs::ftruncate(&fd, len as u64).map_err(Error::os(
            "sizing the memfd (ftruncate)",
            "check the memory limits of the process (RLIMIT_FSIZE, cgroup memory)",
        ))?;
        // F_SEAL_SEAL as well, so that no one holding the fd can add
        // F_SEAL_WRITE later and turn our writes into errors.
        fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL).map_err(
            Error::os(
                "sealing the memfd (F_ADD_SEALS)",
                "the kernel must support memfd seals (Linux 3.17 or later)",
            ),
        )?;
        Ok(Self { fd, len })
    }

    /// Accepts a memfd received from a peer that announced it as
    /// `expected_len` bytes long.
    ///
    /// Refuses it unless it is a memfd sealed against shrinking
    /// ([`Error::NotAMemfd`], [`Error::NotSealed`]), not sealed against writes
    /// ([`Error::WriteSealed`]), and a whole number of pages of at least
    /// `expected_len` bytes ([`Error::BadLength`], [`Error::TooSmall`]).
    /// `expected_len` itself must be a non-zero multiple of 4096. Only the
    /// first `expected_len` bytes are used: a larger memfd is accepted but
    /// [`len`](Self::len) is `expected_len`, so nothing maps memory the peer
    /// did not announce.
    pub fn from_fd(fd: OwnedFd, expected_len: usize) -> Result<Self, Error> {
        check_len(expected_len as u64)?;
        // Seals before size: once F_SEAL_SHRINK is seen it cannot be removed,
        // so the size read afterwards can only stay or grow.
        let seals = fs::fcntl_get_seals(&fd).map_err(|errno| Error::NotAMemfd {
            source: errno.into(),
        })?;
        if !seals.contains(SealFlags::SHRINK) {
            return Err(Error::NotSealed {
                seals: seals.bits(),
            });
        }
        if seals.intersects(SealFlags::WRITE | SealFlags::FUTURE_WRITE) {
            return Err(Error::WriteSealed {
                seals: seals.bits(),
            });
        }
        let stat = fs::fstat(&fd).map_err(Error::os(
            "reading the size of a received memfd (fstat)",
            "the descriptor the peer sent may be unusable",
        ))?;
        // A negative size cannot happen for a memfd; treat it as empty.
        let actual = u64::try_from(stat.st_size).unwrap_or(0);
        check_len(actual)?;
        if actual < expected_len as u64 {
            return Err(Error::TooSmall {
                actual,
                expected: expected_len,
            });
        }
        Ok(Self {
            fd,
            len: expected_len,
        })
    }

    /// The number of bytes that are mapped and shared.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`: shared memory is at least one page.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The seals the memfd carries now.
    pub fn seals(&self) -> Result<SealFlags, Error> {
        fs::fcntl_get_seals(&self.fd).map_err(Error::os(
            "reading memfd seals (F_GET_SEALS)",
            "the memfd should support seals; this is unexpected",
        ))
    }

    /// Gives up the wrapper and returns the descriptor.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for SharedMemory {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn check_len(len: u64) -> Result<(), Error> {
    if len == 0 || len % PAGE_SIZE as u64 != 0 || usize::try_from(len).is_err() {
        return Err(Error::BadLength { len });
    }
    Ok(())
}

/// Whether `fd` is a memfd (a file whose seals can be read). The daemon's
/// rule for descriptors a client sends: only these may be kept past the
/// datagram that brought them, since their last close never waits on
/// anyone (a socket's may linger).
pub fn is_memfd(fd: impl AsFd) -> bool {
    fs::fcntl_get_seals(fd).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::io::Errno;

    fn unsealed_memfd(len: u64, flags: MemfdFlags) -> OwnedFd {
        let fd = fs::memfd_create("test", flags).unwrap();
        fs::ftruncate(&fd, len).unwrap();
        fd
    }

    #[test]
    fn create_seals_size_and_sealing() {
        let mem = SharedMemory::create("t", 2 * PAGE_SIZE).unwrap();
        assert_eq!(mem.len(), 2 * PAGE_SIZE);
        let seals = mem.seals().unwrap();
        assert!(seals.contains(SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL));
        assert_eq!(
            fs::fstat(&mem).unwrap().st_size,
            2 * PAGE_SIZE as i64,
            "ftruncate gave the memfd its size"
        );
        let fd_flags = rustix::io::fcntl_getfd(&mem).unwrap();
        assert!(fd_flags.contains(rustix::io::FdFlags::CLOEXEC));
    }

    #[test]
    fn sealed_memfd_cannot_shrink_grow_or_unseal() {
        let mem = SharedMemory::create("t", PAGE_SIZE).unwrap();
        assert_eq!(fs::ftruncate(&mem, 0), Err(Errno::PERM));
        assert_eq!(fs::ftruncate(&mem, 2 * PAGE_SIZE as u64), Err(Errno::PERM));
        assert_eq!(
            fs::fcntl_add_seals(&mem, SealFlags::WRITE),
            Err(Errno::PERM),
            "F_SEAL_SEAL forbids adding seals"
        );
        assert_eq!(fs::fstat(&mem).unwrap().st_size, PAGE_SIZE as i64);
    }

    #[test]
    fn create_rejects_bad_sizes() {
        for len in [0, 100, PAGE_SIZE + 1] {
            assert!(matches!(
                SharedMemory::create("t", len),
                Err(Error::BadLength { .. })
            ));
        }
    }

    #[test]
    fn from_fd_accepts_our_own_memfd() {
        let mem = SharedMemory::create("t", 3 * PAGE_SIZE).unwrap();
        let mem = SharedMemory::from_fd(mem.into_fd(), 2 * PAGE_SIZE).unwrap();
        assert_eq!(mem.len(), 2 * PAGE_SIZE, "only the announced size is used");
    }

    #[test]
    fn from_fd_refuses_unsealed_memfd() {
        let fd = unsealed_memfd(PAGE_SIZE as u64, MemfdFlags::ALLOW_SEALING);
        assert!(matches!(
            SharedMemory::from_fd(fd, PAGE_SIZE),
            Err(Error::NotSealed { .. })
        ));
    }

    #[test]
    fn from_fd_refuses_grow_only_seal() {
        let fd = unsealed_memfd(PAGE_SIZE as u64, MemfdFlags::ALLOW_SEALING);
        fs::fcntl_add_seals(&fd, SealFlags::GROW).unwrap();
        assert!(matches!(
            SharedMemory::from_fd(fd, PAGE_SIZE),
            Err(Error::NotSealed { .. })
        ));
    }

    #[test]
    fn from_fd_refuses_memfd_without_sealing_support() {
        // Without MFD_ALLOW_SEALING the memfd carries F_SEAL_SEAL from birth
        // and can never be sealed against shrinking.
        let fd = unsealed_memfd(PAGE_SIZE as u64, MemfdFlags::empty());
        assert!(matches!(
            SharedMemory::from_fd(fd, PAGE_SIZE),
            Err(Error::NotSealed { .. })
        ));
    }

    #[test]
    fn from_fd_refuses_too_small_memfd() {
        let mem = SharedMemory::create("t", PAGE_SIZE).unwrap();
        match SharedMemory::from_fd(mem.into_fd(), 2 * PAGE_SIZE) {
            Err(Error::TooSmall { actual, expected }) => {
                assert_eq!(actual, PAGE_SIZE as u64);
                assert_eq!(expected, 2 * PAGE_SIZE);
            }
            other => panic!("expected TooSmall, got {other:?}"),
        }
    }

    #[test]
    fn from_fd_refuses_partial_page_memfd() {
        let fd = unsealed_memfd(PAGE_SIZE as u64 + 8, MemfdFlags::ALLOW_SEALING);
        fs::fcntl_add_seals(&fd, SealFlags::SHRINK).unwrap();
        assert!(matches!(
            SharedMemory::from_fd(fd, PAGE_SIZE),
            Err(Error::BadLength { .. })
        ));
    }

    #[test]
    fn from_fd_refuses_write_sealed_memfd() {
        let fd = unsealed_memfd(PAGE_SIZE as u64, MemfdFlags::ALLOW_SEALING);
        fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::WRITE).unwrap();
        assert!(matches!(
            SharedMemory::from_fd(fd, PAGE_SIZE),
            Err(Error::WriteSealed { .. })
        ));
    }

    #[test]
    fn from_fd_refuses_other_files() {
        let fd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
        assert!(matches!(
            SharedMemory::from_fd(fd, PAGE_SIZE),
            Err(Error::NotAMemfd { .. })
        ));
    }
}
