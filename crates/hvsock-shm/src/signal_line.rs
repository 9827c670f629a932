//! Signal lines: the one-way wake-up line of a signal link between two
//! processes, a pipe per direction.
//!
//! Owns [`signal_pair`], [`SignalSender`] and [`SignalReceiver`]: making a
//! line, accepting its ends from the host, sending a wake-up and taking the
//! wake-ups that arrived. It does not decide when to signal nor what a
//! wake-up means (the callers keep flags beside it).
//!
//! Why a pipe and not an eventfd: an eventfd passed to a peer is one open
//! file shared with it, so the peer can clear `O_NONBLOCK` on it (`F_SETFL`
//! acts on the shared file), fill its counter, and our next signal then
//! blocks until the peer reads, which a hostile peer never does. A pipe's
//! write end is an open file of its own that only the sender holds, so its
//! `O_NONBLOCK` is the sender's alone: a full pipe is `EAGAIN`, never a
//! wait.
//!
//! Two more rules keep a peer from hurting us through the pipe:
//! - The sender also holds a *pin*: a read end of its own pipe, never read,
//!   so that a write never finds the pipe without readers. Otherwise a peer
//!   that closed its end would make our next signal raise `SIGPIPE`, which
//!   kills a process that has not ignored it (a C program under the
//!   preload library, say). [`signal_pair`] opens the pin as a separate open
//!   file (through `/proc/self/fd`) where it can.
//! - The receiver reads with `RWF_NOWAIT` (non-blocking whatever the file
//!   flags say), since where the pin could not be made separate the sender
//!   shares the receiver's open file and could make it blocking.
//!
//! Every write is one wake-up for an edge-triggered epoll on the receiving
//! end (the kernel wakes a polled pipe's readers on every write), as an
//! eventfd write is. Unlike an eventfd a pipe is finite, so the receiver
//! [drains](SignalReceiver::drain) it on every wake-up, before it looks at
//! the flags the wake-ups are about. A write that finds the pipe full is
//! dropped: the receiver has a wake-up on its way, and drains after it.

use std::io::IoSliceMut;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::{self, PollFd, PollFlags, Timespec};
use rustix::fs::{FileType, OFlags};
use rustix::io::{Errno, ReadWriteFlags};
use rustix::pipe::PipeFlags;

use crate::Error;

/// Makes one signal line: the receiving end and the sending end (with its
/// pin).
pub fn signal_pair() -> Result<(SignalReceiver, SignalSender), Error> {
    let hint = "check that the process may open more files (RLIMIT_NOFILE)";
    let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)
        .map_err(Error::os("creating a signal pipe", hint))?;
    let pin = rustix::fs::open(
        format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&read)),
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .or_else(|_| rustix::io::fcntl_dupfd_cloexec(&read, 0))
    .map_err(Error::os("opening the pin of a signal pipe", hint))?;
    Ok((SignalReceiver { read }, SignalSender { write, pin }))
}

/// Checks that `fd` is a pipe opened for `access` (read or write only), and
/// returns its (device, inode).
fn check_pipe_end(fd: &OwnedFd, access: OFlags) -> Result<(u64, u64), Error> {
    let stat = rustix::fs::fstat(fd).map_err(|_| Error::NotASignalPipe)?;
    let flags = rustix::fs::fcntl_getfl(fd).map_err(|_| Error::NotASignalPipe)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::Fifo || flags & OFlags::RWMODE != access {
        return Err(Error::NotASignalPipe);
    }
    Ok((stat.st_dev, stat.st_ino))
}

/// Makes our own open file non-blocking (it is ours: nobody else holds it
/// once the host has sent it).
fn set_nonblocking(fd: &OwnedFd) -> Result<(), Error> {
    let flags = rustix::fs::fcntl_getfl(fd).map_err(|_| Error::NotASignalPipe)?;
    rustix::fs::fcntl_setfl(fd, flags | OFlags::NONBLOCK).map_err(Error::os(
        "making a signal pipe non-blocking (F_SETFL)",
        "the descriptor the host sent may be unusable",
    ))
}

/// The end of a signal line that wakes the peer: the pipe's write end and
/// the pin that keeps the pipe from losing its readers.
#[derive(Debug)]
pub struct SignalSender {
    write: OwnedFd,
    pin: OwnedFd,
}

impl SignalSender {
    /// Accepts a sending end received from the host: the write end of a
    /// pipe and a read end of the same pipe as its pin
    /// ([`Error::NotASignalPipe`] otherwise).
    pub fn from_fds(write: OwnedFd, pin: OwnedFd) -> Result<Self, Error> {
        let written = check_pipe_end(&write, OFlags::WRONLY)?;
        let pinned = check_pipe_end(&pin, OFlags::RDONLY)?;
        if written != pinned {
            return Err(Error::NotASignalPipe);
        }
        set_nonblocking(&write)?;
        Ok(Self { write, pin })
    }

    /// Wakes the receiver. Never blocks. A full pipe (the receiver has
    /// wake-ups it has not taken yet) is not an error.
    pub fn signal(&self) -> Result<(), Error> {
        loop {
            match rustix::io::write(&self.write, &[1]) {
                // EPIPE cannot happen while we hold the pin; were it to,
                // the receiver is gone and needs no wake-up.
                Ok(_) | Err(Errno::AGAIN) | Err(Errno::PIPE) => return Ok(()),
                Err(Errno::INTR) => continue,
                Err(errno) => {
                    return Err(Error::os(
                        "signalling a peer (write to its signal pipe)",
                        "the descriptor the host sent may be unusable",
                    )(errno))
                }
            }
        }
    }

    /// Gives up the wrapper and returns the descriptors (to pass them on):
    /// the write end, then the pin.
    pub fn into_fds(self) -> [OwnedFd; 2] {
        [self.write, self.pin]
    }
}

impl AsFd for SignalSender {
    /// The write end.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.write.as_fd()
    }
}

/// The end of a signal line that a process waits on (readable when woken).
#[derive(Debug)]
pub struct SignalReceiver {
    read: OwnedFd,
}

/// Bytes one read of a drain takes.
const DRAIN_CHUNK: usize = 16 << 10;

/// Reads a drain makes before it leaves the rest for the next wake-up: a
/// sender that keeps writing cannot keep a drain going for ever. Together
/// (128 KiB) they take more than a pipe holds by default (64 KiB).
const DRAIN_READS: usize = 8;

impl SignalReceiver {
    /// Accepts a receiving end received from the host: the read end of a
    /// pipe ([`Error::NotASignalPipe`] otherwise).
    pub fn from_fd(read: OwnedFd) -> Result<Self, Error> {
        check_pipe_end(&read, OFlags::RDONLY)?;
        set_nonblocking(&read)?;
        Ok(Self { read })
    }

    /// Takes the wake-ups that arrived, without blocking; `true` if there
    /// were any. Call it on every wake-up, before looking at what woke you:
    /// a full pipe drops writes without waking anyone.
    pub fn drain(&self) -> Result<bool, Error> {
        let mut buf = [0u8; DRAIN_CHUNK];
        let mut any = false;
        for _ in 0..DRAIN_READS {
            match self.read_nowait(&mut buf) {
                // The sender and its pin are gone: nothing more will come.
                Ok(0) => return Ok(any),
                Ok(n) => {
                    any = true;
                    if n < buf.len() {
                        return Ok(true);
                    }
                }
                Err(Errno::AGAIN) => return Ok(any),
                Err(Errno::INTR) => continue,
                Err(errno) => {
                    return Err(Error::os(
                        "taking wake-ups from a signal pipe (read)",
                        "the descriptor the host sent may be unusable",
                    )(errno))
                }
            }
        }
        Ok(any)
    }

    /// A read that does not block whatever the file's flags say (where the
    /// kernel can do that for pipes; otherwise a read of our non-blocking
    /// file, which only a shared pin could have made blocking).
    fn read_nowait(&self, buf: &mut [u8]) -> Result<usize, Errno> {
        let nowait = {
            let mut slices = [IoSliceMut::new(&mut *buf)];
            rustix::io::preadv2(&self.read, &mut slices, u64::MAX, ReadWriteFlags::NOWAIT)
        };
        match nowait {
            Err(Errno::OPNOTSUPP) | Err(Errno::INVAL) => rustix::io::read(&self.read, buf),
            other => other,
        }
    }

    /// Waits up to `timeout` for a wake-up and takes it (with any others
    /// that arrived): `true` if there was one. For a process that waits on
    /// this one line alone; a process that serves many links waits for
    /// them together in epoll and calls [`drain`](Self::drain).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool, Error> {
        // A deadline too far away to represent is as good as none.
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if self.drain()? {
                return Ok(true);
            }
            let remaining = match deadline {
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Ok(false),
                },
                None => None,
            };
            let timeout = remaining.and_then(|t| Timespec::try_from(t).ok());
            let mut fds = [PollFd::new(&self.read, PollFlags::IN)];
            match event::poll(&mut fds, timeout.as_ref()) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(errno) => {
                    return Err(Error::os(
                        "waiting on a signal pipe (poll)",
                        "the descriptor the host sent may be unusable",
                    )(errno))
                }
            }
            // The writers are gone and everything they wrote is taken:
            // nothing will ever come (poll would report the hang-up at once).
            if fds[0].revents().contains(PollFlags::HUP) && !self.drain()? {
                return Ok(false);
            }
        }
    }

    /// Gives up the wrapper and returns the descriptor (to pass it on).
    pub fn into_fd(self) -> OwnedFd {
        self.read
    }
}

impl AsFd for SignalReceiver {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_arrives_and_is_drained_once() {
        let (rx, tx) = signal_pair().unwrap();
        assert!(!rx.drain().unwrap());
        tx.signal().unwrap();
        tx.signal().unwrap();
        assert!(rx.drain().unwrap());
        assert!(!rx.drain().unwrap());
    }

    #[test]
    fn signalling_never_blocks_even_when_the_receiver_made_its_file_blocking_and_never_reads() {
        let (rx, tx) = signal_pair().unwrap();
        rustix::fs::fcntl_setfl(&rx, OFlags::empty()).unwrap();
        let capacity = rustix::pipe::fcntl_getpipe_size(&rx).unwrap();
        assert!(capacity >= 4096);
        // Far more than the pipe holds: the writes past it are dropped,
        // not waited for.
        for _ in 0..(4 * capacity) {
            tx.signal().unwrap();
        }
        assert!(rx.drain().unwrap());
    }

    #[test]
    fn the_pin_is_a_separate_open_file_so_the_receivers_flags_are_its_own() {
        let (rx, tx) = signal_pair().unwrap();
        let [_, pin] = tx.into_fds();
        rustix::fs::fcntl_setfl(&pin, OFlags::empty()).unwrap();
        let flags = rustix::fs::fcntl_getfl(&rx).unwrap();
        assert!(flags.contains(OFlags::NONBLOCK), "{flags:?}");
    }

    #[test]
    fn draining_never_blocks_even_on_a_blocking_file() {
        let (rx, _tx) = signal_pair().unwrap();
        rustix::fs::fcntl_setfl(&rx, OFlags::empty()).unwrap();
        let (done, result) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(rx.drain().unwrap());
        });
        assert_eq!(result.recv_timeout(Duration::from_secs(60)), Ok(false));
    }

    #[test]
    fn a_receiver_that_is_gone_is_not_an_error() {
        let (rx, tx) = signal_pair().unwrap();
        drop(rx);
        tx.signal().unwrap();
        tx.signal().unwrap();
    }

    #[test]
    fn waiting_takes_a_wake_up_or_times_out() {
        let (rx, tx) = signal_pair().unwrap();
        assert!(!rx.wait_timeout(Duration::from_millis(20)).unwrap());
        let waiter = std::thread::spawn(move || rx.wait_timeout(Duration::from_secs(30)).unwrap());
        std::thread::sleep(Duration::from_millis(20));
        tx.signal().unwrap();
        assert!(waiter.join().unwrap());
    }

    #[test]
    fn waiting_on_a_line_whose_sender_left_returns_at_once() {
        let (rx, tx) = signal_pair().unwrap();
        drop(tx);
        let started = Instant::now();
        assert!(!rx.wait_timeout(Duration::from_secs(600)).unwrap());
        assert!(started.elapsed() < Duration::from_secs(300));
    }

    #[test]
    fn a_drain_after_the_sender_left_returns_what_was_sent() {
        let (rx, tx) = signal_pair().unwrap();
        tx.signal().unwrap();
        drop(tx);
        assert!(rx.drain().unwrap());
        assert!(!rx.drain().unwrap());
    }

    #[test]
    fn ends_that_are_not_the_right_pipe_ends_are_refused() {
        let eventfd = crate::EventFd::new().unwrap().into_fd();
        assert!(matches!(
            SignalReceiver::from_fd(eventfd),
            Err(Error::NotASignalPipe)
        ));
        let (rx, tx) = signal_pair().unwrap();
        let [write, pin] = tx.into_fds();
        // A write end where the read end belongs, and the other way round.
        let dup = |fd: &OwnedFd| fd.try_clone().unwrap();
        assert!(matches!(
            SignalReceiver::from_fd(dup(&write)),
            Err(Error::NotASignalPipe)
        ));
        assert!(matches!(
            SignalSender::from_fds(dup(&pin), dup(&write)),
            Err(Error::NotASignalPipe)
        ));
        // A pin of another pipe.
        let (other_rx, _other_tx) = signal_pair().unwrap();
        assert!(matches!(
            SignalSender::from_fds(dup(&write), other_rx.into_fd()),
            Err(Error::NotASignalPipe)
        ));
        SignalReceiver::from_fd(rx.into_fd()).unwrap();
        SignalSender::from_fds(write, pin).unwrap();
    }
}
