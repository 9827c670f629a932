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

use std::io::IoSliceMut;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::event::{self, PollFd, PollFlags};
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvFlags, ReturnFlags, SendFlags, SocketFlags, SocketType,
};

use crate::readable::{deadline_after, wait_readable};
use crate::{Error, MAX_FDS_PER_MESSAGE};

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
    // Before the sending end leaves this process: from then on the peer
    // cannot attach descriptors (where the kernel can refuse them).
    let guarded = !refuse_passed_descriptors(&receiving);
    Ok((
        SignalReceiver {
            fd: receiving,
            guarded,
        },
        SignalSender { fd: sending },
    ))
}

/// `SO_PASSRIGHTS` (Linux 6.16), on the architectures where it has the
/// generic value; elsewhere (`None`) every drain is guarded.
const SO_PASSRIGHTS: Option<libc::c_int> = if cfg!(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64",
    target_arch = "loongarch64"
)) {
    Some(83)
} else {
    None
};

/// Makes a peer's send with descriptors attached (`SCM_RIGHTS`) to this
/// receiving end fail with `EPERM`. A descriptor we take from a socket,
/// even one we never see (no control buffer), is closed in our thread, and
/// the peer chooses what that close does (a TCP socket with a long
/// `SO_LINGER` makes it wait that long). Returns false where the kernel
/// (before 6.16) has no such option.
fn refuse_passed_descriptors(receiving: &OwnedFd) -> bool {
    use std::os::fd::AsRawFd;
    let Some(option) = SO_PASSRIGHTS else {
        return false;
    };
    let off: libc::c_int = 0;
    // SAFETY: `receiving` is an open socket for the whole call, and the
    // option value is a c_int of the size passed, alive for the call.
    let done = unsafe {
        libc::setsockopt(
            receiving.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&off as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    done == 0
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
    /// The kernel could not refuse passed descriptors (before 6.16): a
    /// drain peeks first and never takes a message that carries some.
    guarded: bool,
}

/// Bytes one read of a drain takes (on the stack of whichever thread
/// polls, an application's among them).
const DRAIN_CHUNK: usize = 8 << 10;

/// Bytes one peek of a guarded drain looks at.
const PEEK_CHUNK: usize = 4 << 10;

/// Reads a drain makes before it leaves the rest for the next wake-up: a
/// sender that keeps sending cannot keep a drain going for ever. Together
/// (512 KiB; 256 KiB when guarded) they take more than a socket holds (the
/// sender's buffer is at most `net.core.wmem_max`, 208 KiB by default), so
/// a drain empties the
/// socket unless the sender refills it meanwhile. That matters: a stream
/// socket frees a sent buffer only once it is read whole, and while the
/// sender's buffer is full its sends are dropped without a wake-up.
const DRAIN_READS: usize = 64;

impl SignalReceiver {
    /// Accepts a receiving end received from the host: it must be a Unix
    /// stream socket ([`Error::NotASignalSocket`] otherwise). Its file
    /// flags do not matter: every receive is non-blocking by itself.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, Error> {
        check_signal_socket(&fd)?;
        let guarded = !refuse_passed_descriptors(&fd);
        Ok(Self { fd, guarded })
    }

    /// As [`from_fd`](Self::from_fd), but every drain guarded, as where the
    /// kernel cannot refuse passed descriptors (before Linux 6.16), whatever
    /// this one can do: for tests of that path on newer kernels.
    #[doc(hidden)]
    pub fn guarded_from_fd(fd: OwnedFd) -> Result<Self, Error> {
        check_signal_socket(&fd)?;
        Ok(Self { fd, guarded: true })
    }

    /// Takes the wake-ups that arrived, without blocking; `true` if there
    /// were any. Call it on every wake-up, before looking at what woke you,
    /// so that the buffer never fills while you sleep.
    pub fn drain(&self) -> Result<bool, Error> {
        // Uninitialised: the bytes are thrown away, and zeroing the buffer
        // on every wake-up cost more than the read.
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); DRAIN_CHUNK];
        let mut any = false;
        // A read shorter than it could have been found the socket empty.
        let full = if self.guarded {
            PEEK_CHUNK
        } else {
            DRAIN_CHUNK
        };
        for _ in 0..DRAIN_READS {
            let want = if self.guarded {
                match self.peek_clean()? {
                    0 => return Ok(any),
                    n => n,
                }
            } else {
                DRAIN_CHUNK
            };
            match rustix::net::recv(&self.fd, &mut buf[..want], RecvFlags::DONTWAIT) {
                // The sender is gone: nothing more will come.
                Ok((_, 0)) => return Ok(any),
                Ok((_, n)) => {
                    any = true;
                    if n < full {
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

    /// Where the kernel cannot refuse passed descriptors: looks at what is
    /// queued without taking it (a peek takes no descriptor, so no close
    /// runs here) and returns how many bytes a receive may take, 0 if none.
    /// [`Error::PeerPassedDescriptors`] if the peer attached some: leave
    /// the socket to [`reap_on_a_thread`](Self::reap_on_a_thread).
    fn peek_clean(&self) -> Result<usize, Error> {
        let mut buf = [0u8; PEEK_CHUNK];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut no_control = RecvAncillaryBuffer::default();
        loop {
            let peeked = rustix::net::recvmsg(
                &self.fd,
                &mut iov,
                &mut no_control,
                RecvFlags::PEEK | RecvFlags::DONTWAIT,
            );
            match peeked {
                Ok(msg) if msg.flags.contains(ReturnFlags::CTRUNC) => {
                    return Err(Error::PeerPassedDescriptors)
                }
                Ok(msg) => return Ok(msg.bytes),
                Err(Errno::AGAIN) => return Ok(0),
                Err(Errno::INTR) => continue,
                Err(errno) => {
                    return Err(Error::os(
                        "peeking at a signal socket (recvmsg)",
                        "the descriptor the host sent may be unusable",
                    )(errno))
                }
            }
        }
    }

    /// Hands a copy of this socket to a thread of its own that takes
    /// everything the peer sends, descriptors included, and closes it all
    /// there, until the peer closes its end; for a socket whose peer
    /// attached descriptors ([`Error::PeerPassedDescriptors`]). Stop
    /// draining it yourself: whatever those closes wait for, they wait in
    /// that thread, and once it is done nothing with a descriptor is left
    /// queued for our own close of the socket to close.
    pub fn reap_on_a_thread(&self) -> Result<(), Error> {
        let copy = self.fd.try_clone().map_err(|e| {
            Error::os(
                "copying a hostile signal socket (dup)",
                "check that the process may open more files (RLIMIT_NOFILE)",
            )(Errno::from_io_error(&e).unwrap_or(Errno::MFILE))
        })?;
        std::thread::Builder::new()
            .name("hvsock-reaper".into())
            .spawn(move || reap(copy))
            .map_err(|e| {
                Error::os(
                    "starting a thread for a hostile signal socket",
                    "check the process's thread limit",
                )(Errno::from_io_error(&e).unwrap_or(Errno::AGAIN))
            })?;
        Ok(())
    }

    /// Waits up to `timeout` for a wake-up and takes it (with any others
    /// that arrived): `true` if there was one. For a process that waits on
    /// this one socket alone; a process that serves many links waits for
    /// them together in epoll and calls [`drain`](Self::drain).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool, Error> {
        let deadline = deadline_after(timeout);
        loop {
            if self.drain()? {
                return Ok(true);
            }
            let Some(events) = wait_readable(
                self.fd.as_fd(),
                deadline,
                "waiting on a signal socket (poll)",
                "the descriptor the host sent may be unusable",
            )?
            else {
                return Ok(false);
            };
            // The sender is gone: what it sent last is all there will be
            // (poll would report the hang-up at once from now on).
            if events.contains(PollFlags::HUP) {
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

/// Takes and closes everything a hostile peer sends on `socket` until it
/// closes its end (see [`SignalReceiver::reap_on_a_thread`]).
fn reap(socket: OwnedFd) {
    let mut buf = [0u8; 4096];
    let mut space = vec![
        std::mem::MaybeUninit::uninit();
        rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))
            + std::mem::align_of::<u64>()
    ];
    loop {
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(&mut buf)];
        match rustix::net::recvmsg(&socket, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
            // The peer closed its end: nothing more can come.
            Ok(msg) if msg.bytes == 0 => return,
            // Dropping the messages closes their descriptors, here.
            Ok(_) => control.drain().for_each(drop),
            Err(Errno::AGAIN) => {
                let mut fds = [PollFd::new(&socket, PollFlags::IN)];
                let _ = event::poll(&mut fds, None);
            }
            Err(Errno::INTR) => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use rustix::event::Timespec;

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

    /// What a hostile peer can do with the sending end it holds: attach
    /// descriptors to a byte it sends.
    fn send_with_descriptors(tx: &impl AsFd, fds: &[BorrowedFd<'_>]) -> rustix::io::Result<usize> {
        use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage};
        let mut space =
            vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
        rustix::net::sendmsg(
            tx,
            &[std::io::IoSlice::new(&[1])],
            &mut control,
            SendFlags::DONTWAIT,
        )
    }

    /// A connected pair: whether one end is still open somewhere, seen
    /// from the other.
    fn pair() -> (OwnedFd, OwnedFd) {
        rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap()
    }

    /// Whether the other end of `read_end`'s pair is still open somewhere.
    fn writer_alive(read_end: &OwnedFd) -> bool {
        let mut fds = [PollFd::new(read_end, PollFlags::IN)];
        event::poll(&mut fds, Some(&Timespec::default())).unwrap();
        !fds[0].revents().contains(PollFlags::HUP)
    }

    #[test]
    fn a_peer_cannot_attach_descriptors_where_the_kernel_can_refuse_them() {
        let (rx, tx) = signal_pair().unwrap();
        if rx.guarded {
            eprintln!("this kernel cannot refuse passed descriptors (SO_PASSRIGHTS, 6.16)");
            return;
        }
        let (_read, write) = pair();
        assert_eq!(
            send_with_descriptors(&tx, &[write.as_fd()]),
            Err(Errno::PERM)
        );
        // A received end is made to refuse them too.
        let rx = SignalReceiver::from_fd(rx.into_fd()).unwrap();
        assert!(!rx.guarded);
    }

    /// A raw pair whose receiving end is guarded, as on a kernel that
    /// cannot refuse passed descriptors.
    fn guarded_pair() -> (SignalReceiver, SignalSender) {
        let (receiving, sending) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .unwrap();
        let rx = SignalReceiver {
            fd: receiving,
            guarded: true,
        };
        (rx, SignalSender { fd: sending })
    }

    #[test]
    fn a_guarded_drain_empties_a_socket_a_flood_filled() {
        let (rx, tx) = guarded_pair();
        while rustix::net::send(&tx, &[7u8; 64 << 10], SendFlags::DONTWAIT).is_ok() {}
        assert!(rx.drain().unwrap());
        assert_eq!(rustix::io::ioctl_fionread(&rx).unwrap(), 0);
    }

    #[test]
    fn a_guarded_drain_never_takes_descriptors_and_a_reaper_closes_them_elsewhere() {
        let (rx, tx) = guarded_pair();
        // Honest wake-ups are drained as ever.
        tx.signal().unwrap();
        assert!(rx.drain().unwrap());
        // A wake-up, then one with a socket's end attached.
        let (read_end, write_end) = pair();
        tx.signal().unwrap();
        send_with_descriptors(&tx, &[write_end.as_fd()]).unwrap();
        drop(write_end);
        assert!(matches!(rx.drain(), Err(Error::PeerPassedDescriptors)));
        assert!(matches!(rx.drain(), Err(Error::PeerPassedDescriptors)));
        // The descriptor was not taken (so not closed by us): it is still
        // in the socket.
        assert!(writer_alive(&read_end), "a drain took the descriptor");
        // The reaper takes it, and everything after, until the peer leaves.
        rx.reap_on_a_thread().unwrap();
        send_with_descriptors(&tx, &[read_end.as_fd()]).unwrap();
        drop(tx);
        let started = Instant::now();
        while writer_alive(&read_end) {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the reaper never closed the passed descriptor"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
