//! Signal sockets: the one-way wake-up line of a signal link between two
//! processes, one connected Unix stream socket pair per direction.
//!
//! Owns [`signal_pair`], [`SignalSender`] and [`SignalReceiver`]: making a
//! line, accepting an end from a peer, sending a wake-up and taking the
//! wake-ups that arrived. It does not decide when to signal nor what a
//! wake-up means (the callers keep flags beside it).
//!
//! Why not an eventfd: an eventfd passed to a peer is one open file shared
//! with it, so the peer can clear `O_NONBLOCK` on it (`F_SETFL` acts on the
//! shared file), fill its counter, and our next signal then blocks until the
//! peer reads, which a hostile peer never does. The two ends of a socket
//! pair are two open files: the peer holds only the receiving end, and a
//! send with `MSG_DONTWAIT` cannot block whatever anyone does to the file
//! flags. `MSG_NOSIGNAL` keeps a peer that closed its end from killing us
//! with `SIGPIPE`.
//!
//! Every send is one wake-up for an edge-triggered epoll on the receiving
//! end, like an eventfd write; unlike an eventfd the socket's buffer is
//! finite, so the receiver [drains](SignalReceiver::drain) it on every
//! wake-up, before it looks at the flags the wake-ups are about. A send that
//! finds the buffer full is dropped: the receiver has unread wake-ups, and it
//! looks at the flags after it drains them.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::{self, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

use crate::Error;

/// Makes one signal line: the receiving end and the sending end.
pub fn signal_pair() -> Result<(SignalReceiver, SignalSender), Error> {
    let (receiving, sending) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .map_err(Error::os(
        "creating a signal socket pair",
        "check that the process may open more files (RLIMIT_NOFILE)",
    ))?;
    // The sending end never reads, the receiving end never sends: shut the
    // unused directions so that neither side can queue bytes nobody takes.
    let _ = rustix::net::shutdown(&receiving, rustix::net::Shutdown::Write);
    let _ = rustix::net::shutdown(&sending, rustix::net::Shutdown::Read);
    Ok((
        SignalReceiver { fd: receiving },
        SignalSender { fd: sending },
    ))
}

/// Refuses a descriptor that is not a Unix stream socket.
fn check_signal_socket(fd: &OwnedFd) -> Result<(), Error> {
    let domain = rustix::net::sockopt::socket_domain(fd);
    let kind = rustix::net::sockopt::socket_type(fd);
    match (domain, kind) {
        (Ok(AddressFamily::UNIX), Ok(SocketType::STREAM)) => Ok(()),
        _ => Err(Error::NotASignalSocket),
    }
}

/// The end of a signal line that wakes the peer.
#[derive(Debug)]
pub struct SignalSender {
    fd: OwnedFd,
}

impl SignalSender {
    /// Accepts a sending end received from the host: it must be a Unix
    /// stream socket ([`Error::NotASignalSocket`] otherwise). Its file
    /// flags do not matter: every send is non-blocking by itself.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, Error> {
        check_signal_socket(&fd)?;
        Ok(Self { fd })
    }

    /// Wakes the receiver. Never blocks. A full buffer (the receiver has
    /// wake-ups it has not taken yet) and a receiver that is gone (its
    /// process learns of nothing more) are not errors.
    pub fn signal(&self) -> Result<(), Error> {
        loop {
            match rustix::net::send(&self.fd, &[1], SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
                Ok(_) | Err(Errno::AGAIN) | Err(Errno::PIPE) | Err(Errno::CONNRESET) => {
                    return Ok(())
                }
                Err(Errno::INTR) => continue,
                Err(errno) => {
                    return Err(Error::os(
                        "signalling a peer (send on its signal socket)",
                        "the descriptor the host sent may be unusable",
                    )(errno))
                }
            }
        }
    }

    /// Gives up the wrapper and returns the descriptor (to pass it on).
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for SignalSender {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The end of a signal line that a process waits on (readable when woken).
#[derive(Debug)]
pub struct SignalReceiver {
    fd: OwnedFd,
}

/// Bytes one read of a drain takes.
const DRAIN_CHUNK: usize = 16 << 10;

/// Reads a drain makes before it leaves the rest for the next wake-up: a
/// sender that keeps sending cannot keep a drain going for ever. Together
/// (512 KiB) they take more than a socket holds (the sender's buffer is at
/// most `net.core.wmem_max`, 208 KiB by default), so a drain empties the
/// socket unless the sender refills it meanwhile. That matters: a stream
/// socket frees a sent buffer only once it is read whole, and while the
/// sender's buffer is full its sends are dropped without a wake-up.
const DRAIN_READS: usize = 32;

impl SignalReceiver {
    /// Accepts a receiving end received from the host: it must be a Unix
    /// stream socket ([`Error::NotASignalSocket`] otherwise). Its file
    /// flags do not matter: every receive is non-blocking by itself.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, Error> {
        check_signal_socket(&fd)?;
        Ok(Self { fd })
    }

    /// Takes the wake-ups that arrived, without blocking; `true` if there
    /// were any. Call it on every wake-up, before looking at what woke you,
    /// so that the buffer never fills while you sleep.
    pub fn drain(&self) -> Result<bool, Error> {
        // Uninitialised: the bytes are thrown away, and zeroing 16 KiB on
        // every wake-up cost more than the read.
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); DRAIN_CHUNK];
        let mut any = false;
        for _ in 0..DRAIN_READS {
            match rustix::net::recv(&self.fd, &mut buf, RecvFlags::DONTWAIT) {
                // The sender is gone: nothing more will come.
                Ok((_, 0)) => return Ok(any),
                Ok((_, n)) => {
                    any = true;
                    if n < buf.len() {
                        return Ok(true);
                    }
                }
                Err(Errno::AGAIN) => return Ok(any),
                Err(Errno::INTR) => continue,
                Err(errno) => {
                    return Err(Error::os(
                        "taking wake-ups from a signal socket (recv)",
                        "the descriptor the host sent may be unusable",
                    )(errno))
                }
            }
        }
        Ok(any)
    }

    /// Waits up to `timeout` for a wake-up and takes it (with any others
    /// that arrived): `true` if there was one. For a process that waits on
    /// this one socket alone; a process that serves many links waits for
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
            let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
            match event::poll(&mut fds, timeout.as_ref()) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(errno) => {
                    return Err(Error::os(
                        "waiting on a signal socket (poll)",
                        "the descriptor the host sent may be unusable",
                    )(errno))
                }
            }
            // The sender is gone: what it sent last is all there will be
            // (poll would report the hang-up at once from now on).
            if fds[0].revents().contains(PollFlags::HUP) {
                return self.drain();
            }
        }
    }

    /// Gives up the wrapper and returns the descriptor (to pass it on).
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for SignalReceiver {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
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
        rustix::fs::fcntl_setfl(&rx, rustix::fs::OFlags::empty()).unwrap();
        rustix::fs::fcntl_setfl(&tx, rustix::fs::OFlags::empty()).unwrap();
        // Far more than the socket buffer holds: the sends past it are
        // dropped, not waited for.
        for _ in 0..100_000 {
            tx.signal().unwrap();
        }
        assert!(rx.drain().unwrap());
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
    fn a_last_wake_up_that_arrives_with_the_hang_up_is_taken() {
        for _ in 0..20 {
            let (rx, tx) = signal_pair().unwrap();
            let waiter = std::thread::spawn(move || rx.wait_timeout(Duration::from_secs(30)));
            // Most often the waiter is in poll by now, and wakes to both.
            std::thread::sleep(Duration::from_millis(5));
            tx.signal().unwrap();
            drop(tx);
            assert!(waiter.join().unwrap().unwrap(), "the last wake-up was lost");
        }
    }

    #[test]
    fn a_drain_empties_a_socket_a_flood_filled() {
        let (rx, tx) = signal_pair().unwrap();
        while rustix::net::send(&tx, &[7u8; 64 << 10], SendFlags::DONTWAIT).is_ok() {}
        assert!(rx.drain().unwrap());
        assert_eq!(rustix::io::ioctl_fionread(&rx).unwrap(), 0);
        // And the sender's buffer is free again: its next signal is sent.
        tx.signal().unwrap();
        assert_eq!(rustix::io::ioctl_fionread(&rx).unwrap(), 1);
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
    fn ends_that_are_not_unix_stream_sockets_are_refused() {
        let eventfd = crate::EventFd::new().unwrap().into_fd();
        assert!(matches!(
            SignalSender::from_fd(eventfd),
            Err(Error::NotASignalSocket)
        ));
        let (a, _b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        assert!(matches!(
            SignalReceiver::from_fd(a),
            Err(Error::NotASignalSocket)
        ));
        let (rx, tx) = signal_pair().unwrap();
        SignalReceiver::from_fd(rx.into_fd()).unwrap();
        SignalSender::from_fd(tx.into_fd()).unwrap();
    }
}
