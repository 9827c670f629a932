//! Eventfds: the doorbell each side of a channel rings when the ring rules
//! say the other side must wake up.
//!
//! Owns [`EventFd`]: creating one, accepting one from a peer, signalling and
//! waiting. It does not decide when to signal (the ring code does) and keeps
//! no count: a signal means "look at the ring", however many were sent.
//!
//! The descriptor is always non-blocking. Every wait is built on one
//! non-blocking read (`try_wait`) plus `poll`, so `try_wait` can never block
//! even when several threads wait on the same eventfd and one of them takes
//! the signal first.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::{self, EventfdFlags, PollFlags};
use rustix::fs::OFlags;
use rustix::io::Errno;

use crate::readable::{deadline_after, wait_readable};
use crate::Error;

/// A non-blocking, close-on-exec eventfd used as a wake-up signal.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// Creates an unsignalled eventfd.
    pub fn new() -> Result<Self, Error> {
        let fd = event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).map_err(
            Error::os(
                "creating an eventfd",
                "check that the process may open more files (RLIMIT_NOFILE)",
            ),
        )?;
        Ok(Self { fd })
    }

    /// Accepts an eventfd received from a peer.
    ///
    /// The descriptor must be in non-blocking mode, as [`EventFd::new`]
    /// makes it ([`Error::EventFdBlocking`] otherwise): switching it here
    /// would also switch it for the peer, which shares the open file. That it
    /// really is an eventfd shows on the first wait
    /// ([`Error::NotAnEventFd`]).
    pub fn from_fd(fd: OwnedFd) -> Result<Self, Error> {
        let flags = rustix::fs::fcntl_getfl(&fd).map_err(Error::os(
            "reading the flags of a received eventfd (F_GETFL)",
            "the descriptor the peer sent may be unusable",
        ))?;
        if !flags.contains(OFlags::NONBLOCK) {
            return Err(Error::EventFdBlocking);
        }
        Ok(Self { fd })
    }

    /// Wakes whoever waits on this eventfd (adds 1 to its counter).
    pub fn signal(&self) -> Result<(), Error> {
        loop {
            match rustix::io::write(&self.fd, &1u64.to_ne_bytes()) {
                Ok(_) => return Ok(()),
                Err(Errno::INTR) => continue,
                // The counter is at its maximum: the waiter has a signal
                // pending already, and one is all it needs.
                Err(Errno::AGAIN) => return Ok(()),
                Err(errno) => {
                    return Err(Error::os(
                        "signalling an eventfd (write)",
                        "the descriptor the peer sent may not be an eventfd",
                    )(errno))
                }
            }
        }
    }

    /// Takes a pending signal without blocking: `true` if there was one.
    ///
    /// Any number of signals sent since the last successful wait count as one.
    pub fn try_wait(&self) -> Result<bool, Error> {
        let mut counter = [0u8; 8];
        loop {
            match rustix::io::read(&self.fd, &mut counter) {
                Ok(8) => return Ok(true),
                Ok(got) => return Err(Error::NotAnEventFd { got }),
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => return Ok(false),
                Err(errno) => {
                    return Err(Error::os(
                        "reading an eventfd",
                        "the descriptor the peer sent may not be an eventfd",
                    )(errno))
                }
            }
        }
    }

    /// Blocks until a signal arrives and takes it.
    pub fn wait(&self) -> Result<(), Error> {
        while !self.try_wait()? {
            self.wait_readable(None)?;
        }
        Ok(())
    }

    /// Blocks until a signal arrives (and takes it, returning `true`) or
    /// `timeout` passes (returning `false`).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool, Error> {
        let deadline = deadline_after(timeout);
        loop {
            if self.try_wait()? {
                return Ok(true);
            }
            if self.wait_readable(deadline)?.is_none() {
                return Ok(false);
            }
        }
    }

    fn wait_readable(&self, deadline: Option<Instant>) -> Result<Option<PollFlags>, Error> {
        wait_readable(
            self.fd.as_fd(),
            deadline,
            "waiting for an eventfd (poll)",
            "the descriptor the peer sent may be unusable",
        )
    }

    /// Gives up the wrapper and returns the descriptor (e.g. to register it
    /// with an async reactor).
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn signal_then_try_wait_takes_it_once() {
        let e = EventFd::new().unwrap();
        assert!(!e.try_wait().unwrap(), "fresh eventfd is unsignalled");
        e.signal().unwrap();
        e.signal().unwrap();
        assert!(e.try_wait().unwrap());
        assert!(!e.try_wait().unwrap(), "signals coalesce into one");
    }

    #[test]
    fn wait_timeout_times_out_then_sees_a_signal() {
        let e = EventFd::new().unwrap();
        let start = Instant::now();
        assert!(!e.wait_timeout(Duration::from_millis(50)).unwrap());
        assert!(start.elapsed() >= Duration::from_millis(50));
        e.signal().unwrap();
        assert!(e.wait_timeout(Duration::from_secs(10)).unwrap());
        assert!(!e.wait_timeout(Duration::ZERO).unwrap());
    }

    #[test]
    fn wait_wakes_on_a_signal_from_another_thread() {
        let e = Arc::new(EventFd::new().unwrap());
        let signaller = {
            let e = e.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                e.signal().unwrap();
            })
        };
        assert!(e.wait_timeout(Duration::from_secs(10)).unwrap());
        signaller.join().unwrap();
        e.signal().unwrap();
        e.wait().unwrap();
        assert!(!e.try_wait().unwrap());
    }

    #[test]
    fn a_duplicate_shares_the_signal() {
        // What a peer holding the same eventfd sees.
        let e = EventFd::new().unwrap();
        let dup = EventFd::from_fd(e.as_fd().try_clone_to_owned().unwrap()).unwrap();
        dup.signal().unwrap();
        assert!(e.try_wait().unwrap());
        assert!(!dup.try_wait().unwrap());
        assert!(rustix::io::fcntl_getfd(&e)
            .unwrap()
            .contains(rustix::io::FdFlags::CLOEXEC));
    }

    #[test]
    fn from_fd_refuses_a_blocking_eventfd() {
        let fd = event::eventfd(0, EventfdFlags::CLOEXEC).unwrap();
        assert!(matches!(EventFd::from_fd(fd), Err(Error::EventFdBlocking)));
    }

    #[test]
    fn huge_timeouts_do_not_overflow() {
        let e = EventFd::new().unwrap();
        e.signal().unwrap();
        assert!(e.wait_timeout(Duration::MAX).unwrap());
    }
}
