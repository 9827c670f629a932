//! Passing file descriptors over Unix sockets (`SCM_RIGHTS`).
//!
//! Owns [`send_with_fds`] and [`recv_with_fds`]: one message with the
//! descriptors that travel with it, over `SOCK_SEQPACKET` (message
//! boundaries kept) or `SOCK_STREAM` sockets. It does not know which
//! descriptors mean what; the `vmbus` crate's messages say that.
//!
//! Received descriptors are close-on-exec from the moment they exist
//! (`MSG_CMSG_CLOEXEC`), so a concurrent `exec` elsewhere in the process
//! cannot leak them. Whenever a message is refused, every descriptor that
//! came with it is closed before returning: a peer must not be able to fill
//! our descriptor table by sending descriptors we do not take.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::io::Errno;
use rustix::net::{
    self, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use crate::Error;

/// The most descriptors Linux passes in one message (`SCM_MAX_FD`).
pub const MAX_FDS_PER_MESSAGE: usize = 253;

/// Sends `bytes` and, with them, duplicates of `fds` over a connected Unix
/// socket; returns how many bytes were sent.
///
/// On a `SOCK_SEQPACKET` socket the message is sent whole or not at all; on
/// `SOCK_STREAM` fewer bytes than asked may be sent (the descriptors go with
/// the first of them). Descriptors need at least one byte to travel with
/// ([`Error::EmptyMessageWithFds`]), so a receiver never mistakes a message
/// for end-of-stream. A closed peer gives an `EPIPE` error, not `SIGPIPE`.
/// Blocks if the socket is blocking and its buffer is full.
pub fn send_with_fds(
    socket: impl AsFd,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<usize, Error> {
    if fds.len() > MAX_FDS_PER_MESSAGE {
        return Err(Error::TooManyFds {
            count: fds.len(),
            max: MAX_FDS_PER_MESSAGE,
        });
    }
    if bytes.is_empty() && !fds.is_empty() {
        return Err(Error::EmptyMessageWithFds);
    }
    let mut space = if fds.is_empty() {
        Vec::new()
    } else {
        vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))]
    };
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        // Cannot happen: the buffer was sized for exactly this message.
        return Err(Error::TooManyFds {
            count: fds.len(),
            max: MAX_FDS_PER_MESSAGE,
        });
    }
    let iov = [IoSlice::new(bytes)];
    loop {
        match net::sendmsg(&socket, &iov, &mut control, SendFlags::NOSIGNAL) {
            Ok(sent) => return Ok(sent),
            // Interrupted before anything was sent: nothing to undo.
            Err(Errno::INTR) => continue,
            Err(errno) => {
                return Err(Error::os(
                    "sending a message with file descriptors (sendmsg)",
                    "the peer may have closed its socket",
                )(errno))
            }
        }
    }
}

/// Receives one message into `buf` and the descriptors that came with it, at
/// most `max_fds` of them (capped at [`MAX_FDS_PER_MESSAGE`]); returns the
/// number of bytes and the descriptors.
///
/// `(0, [])` means the peer closed the socket (or, on `SOCK_SEQPACKET`, sent
/// an empty message, which [`send_with_fds`] never does). Refuses, closing
/// every descriptor that arrived with the message, when more than `max_fds`
/// came ([`Error::FdsTruncated`]) or, on `SOCK_SEQPACKET`, when the message
/// was longer than `buf` ([`Error::MessageTruncated`]; the rest of it is
/// lost). Blocks if the socket is blocking and nothing has arrived.
pub fn recv_with_fds(
    socket: impl AsFd,
    buf: &mut [u8],
    max_fds: usize,
) -> Result<(usize, Vec<OwnedFd>), Error> {
    let received = recv_message(socket, buf, max_fds)?;
    match received.fds_lost {
        Some(received_fds) => Err(Error::FdsTruncated {
            max: max_fds.min(MAX_FDS_PER_MESSAGE),
            received: received_fds,
        }),
        None => Ok((received.len, received.fds)),
    }
}

/// One message as [`recv_message`] received it.
#[derive(Debug)]
pub struct Received {
    /// Bytes of the message in the buffer.
    pub len: usize,
    /// The descriptors that came with it (none if [`fds_lost`](Self::fds_lost)).
    pub fds: Vec<OwnedFd>,
    /// `Some(n)` when the message's descriptors did not all arrive: more
    /// than allowed were sent, or this process is out of descriptors
    /// (`RLIMIT_NOFILE`: the kernel drops those it cannot install). The `n`
    /// that did arrive were closed. The bytes are intact.
    pub fds_lost: Option<usize>,
}

/// Like [`recv_with_fds`], but a message whose descriptors were cut is
/// returned (its bytes intact, no descriptors, [`Received::fds_lost`] set)
/// instead of refused, so that the receiver can fail just what that message
/// was for: a process out of descriptors then refuses one request instead
/// of dropping a connection.
pub fn recv_message(socket: impl AsFd, buf: &mut [u8], max_fds: usize) -> Result<Received, Error> {
    let max_fds = max_fds.min(MAX_FDS_PER_MESSAGE);
    let buf_len = buf.len();
    let raw = recv_raw(socket, buf, max_fds)?;
    // Dropping `raw.fds` on the way out closes them.
    if raw.truncated {
        return Err(Error::MessageTruncated {
            buf_len,
            received_fds: raw.fds.len(),
        });
    }
    // The kernel sets CTRUNC when the descriptors did not fit; it closes the
    // ones it could not deliver. Control space is rounded up to 8 bytes, so a
    // few more than `max_fds` may fit without CTRUNC: refuse those too.
    let mut fds = raw.fds;
    let fds_lost = (raw.fds_cut || fds.len() > max_fds).then(|| {
        let arrived = fds.len();
        fds.clear();
        arrived
    });
    Ok(Received {
        len: raw.len,
        fds,
        fds_lost,
    })
}

/// One message as [`recv_raw`] received it, with no policy applied.
#[derive(Debug)]
pub struct RawReceived {
    /// Bytes of the message in the buffer.
    pub len: usize,
    /// Every descriptor that arrived, whatever else went wrong: the caller
    /// decides where they are closed.
    pub fds: Vec<OwnedFd>,
    /// The message was longer than the buffer (`SOCK_SEQPACKET`); the rest
    /// of it is lost.
    pub truncated: bool,
    /// Not every descriptor sent arrived (no room in the control buffer, or
    /// none left in this process); the kernel closed the others.
    pub fds_cut: bool,
}

/// Receives one message and every descriptor that arrived with it (room for
/// `max_fds`, capped at [`MAX_FDS_PER_MESSAGE`], and a few more the control
/// buffer's rounding allows), refusing nothing: for a receiver that must
/// choose where a peer's descriptors are closed (a close can wait, for a
/// socket that lingers), even those of a message it refuses.
/// [`recv_message`] and [`recv_with_fds`] are this with a policy.
pub fn recv_raw(socket: impl AsFd, buf: &mut [u8], max_fds: usize) -> Result<RawReceived, Error> {
    let max_fds = max_fds.min(MAX_FDS_PER_MESSAGE);
    // Headroom for RecvAncillaryBuffer aligning the start of the buffer to a
    // cmsghdr.
    let align = std::mem::align_of::<u64>();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(max_fds)) + align];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = loop {
        match net::recvmsg(&socket, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
            Ok(msg) => break msg,
            // Interrupted before anything was received: nothing to undo.
            Err(Errno::INTR) => continue,
            Err(errno) => {
                return Err(Error::os(
                    "receiving a message with file descriptors (recvmsg)",
                    "check that the descriptor is a connected Unix socket",
                )(errno))
            }
        }
    };
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    Ok(RawReceived {
        len: msg.bytes,
        fds,
        truncated: msg.flags.contains(ReturnFlags::TRUNC),
        fds_cut: msg.flags.contains(ReturnFlags::CTRUNC),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventFd, Mapping, SharedMemory, PAGE_SIZE};
    use rustix::net::{AddressFamily, SocketFlags, SocketType};

    fn pair(kind: SocketType) -> (OwnedFd, OwnedFd) {
        net::socketpair(AddressFamily::UNIX, kind, SocketFlags::CLOEXEC, None).unwrap()
    }

    /// A non-blocking socket pair: we keep one end and pass the other. Once
    /// every copy of the passed end is closed, reading ours returns end of
    /// file instead of `EAGAIN`; that is how a test sees that a descriptor was
    /// closed and not leaked.
    fn probe() -> (OwnedFd, OwnedFd) {
        net::socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .unwrap()
    }

    fn peer_closed(ours: &OwnedFd) -> bool {
        let mut b = [0u8; 1];
        matches!(rustix::io::read(ours, &mut b), Ok(0))
    }

    #[test]
    fn memfd_and_eventfd_travel_over_seqpacket_and_work() {
        let (a, b) = pair(SocketType::SEQPACKET);
        let mem = SharedMemory::create("pass", 2 * PAGE_SIZE).unwrap();
        let sender_map = Mapping::new(&mem).unwrap();
        let doorbell = EventFd::new().unwrap();

        let sent = send_with_fds(&a, b"open", &[mem.as_fd(), doorbell.as_fd()]).unwrap();
        assert_eq!(sent, 4);
        drop(mem);

        let mut buf = [0u8; 64];
        let (n, mut fds) = recv_with_fds(&b, &mut buf, 4).unwrap();
        assert_eq!(&buf[..n], b"open");
        assert_eq!(fds.len(), 2);
        for fd in &fds {
            assert!(rustix::io::fcntl_getfd(fd)
                .unwrap()
                .contains(rustix::io::FdFlags::CLOEXEC));
        }
        let their_doorbell = EventFd::from_fd(fds.pop().unwrap()).unwrap();
        let their_mem = SharedMemory::from_fd(fds.pop().unwrap(), 2 * PAGE_SIZE).unwrap();
        let their_map = Mapping::new(&their_mem).unwrap();

        their_map
            .write(PAGE_SIZE + 10, b"from the other side")
            .unwrap();
        their_doorbell.signal().unwrap();
        assert!(doorbell
            .wait_timeout(std::time::Duration::from_secs(10))
            .unwrap());
        let mut got = [0u8; 19];
        sender_map.read(PAGE_SIZE + 10, &mut got).unwrap();
        assert_eq!(&got, b"from the other side");
    }

    #[test]
    fn messages_without_fds_and_end_of_stream() {
        let (a, b) = pair(SocketType::SEQPACKET);
        assert_eq!(send_with_fds(&a, b"plain", &[]).unwrap(), 5);
        let mut buf = [0u8; 16];
        let (n, fds) = recv_with_fds(&b, &mut buf, 0).unwrap();
        assert_eq!((&buf[..n], fds.len()), (&b"plain"[..], 0));
        drop(a);
        let (n, fds) = recv_with_fds(&b, &mut buf, 4).unwrap();
        assert_eq!((n, fds.len()), (0, 0));
    }

    #[test]
    fn fds_travel_over_stream_sockets() {
        let (a, b) = pair(SocketType::STREAM);
        let e = EventFd::new().unwrap();
        send_with_fds(&a, b"x", &[e.as_fd()]).unwrap();
        let mut buf = [0u8; 8];
        let (n, mut fds) = recv_with_fds(&b, &mut buf, 1).unwrap();
        assert_eq!((n, fds.len()), (1, 1));
        EventFd::from_fd(fds.pop().unwrap())
            .unwrap()
            .signal()
            .unwrap();
        assert!(e.try_wait().unwrap());
    }

    #[test]
    fn too_many_fds_are_refused_and_closed() {
        let (a, b) = pair(SocketType::SEQPACKET);
        let probes: Vec<_> = (0..4).map(|_| probe()).collect();
        let theirs: Vec<_> = probes.iter().map(|(_, t)| t.as_fd()).collect();
        send_with_fds(&a, b"fds", &theirs).unwrap();
        drop(theirs);
        let ours: Vec<_> = probes.into_iter().map(|(ours, _theirs)| ours).collect();
        assert!(
            ours.iter().all(|o| !peer_closed(o)),
            "in flight, still open"
        );

        let mut buf = [0u8; 8];
        // One fd allowed: the control space has room for two, the kernel
        // truncates the rest; both paths must end in an error.
        match recv_with_fds(&b, &mut buf, 1) {
            Err(Error::FdsTruncated { max: 1, received }) => assert!(received >= 1),
            other => panic!("expected FdsTruncated, got {other:?}"),
        }
        assert!(
            ours.iter().all(peer_closed),
            "every passed descriptor was closed"
        );
    }

    #[test]
    fn exact_extra_fd_within_padding_is_refused() {
        // cmsg space for one fd has room for a second; it must not slip in.
        let (a, b) = pair(SocketType::SEQPACKET);
        let (p1, t1) = probe();
        let (p2, t2) = probe();
        send_with_fds(&a, b"two", &[t1.as_fd(), t2.as_fd()]).unwrap();
        drop((t1, t2));
        let mut buf = [0u8; 8];
        assert!(matches!(
            recv_with_fds(&b, &mut buf, 1),
            Err(Error::FdsTruncated { max: 1, .. })
        ));
        assert!(peer_closed(&p1) && peer_closed(&p2));
    }

    #[test]
    fn a_message_whose_fds_were_cut_keeps_its_bytes() {
        let (a, b) = pair(SocketType::SEQPACKET);
        let (p1, t1) = probe();
        let (p2, t2) = probe();
        send_with_fds(&a, b"hello", &[t1.as_fd(), t2.as_fd()]).unwrap();
        drop((t1, t2));
        let mut buf = [0u8; 8];
        let received = recv_message(&b, &mut buf, 1).unwrap();
        assert_eq!(&buf[..received.len], b"hello");
        assert!(received.fds.is_empty());
        assert!(received.fds_lost.is_some_and(|n| n >= 1));
        assert!(peer_closed(&p1) && peer_closed(&p2));
        // The socket goes on: the next message is whole.
        let (_p3, t3) = probe();
        send_with_fds(&a, b"next", &[t3.as_fd()]).unwrap();
        let received = recv_message(&b, &mut buf, 1).unwrap();
        assert_eq!(&buf[..received.len], b"next");
        assert_eq!((received.fds.len(), received.fds_lost), (1, None));
    }

    #[test]
    fn a_cut_datagram_is_refused_and_its_fds_closed() {
        let (a, b) = pair(SocketType::SEQPACKET);
        let (p, t) = probe();
        send_with_fds(&a, &[7; 100], &[t.as_fd()]).unwrap();
        drop(t);
        let mut buf = [0u8; 10];
        assert!(matches!(
            recv_with_fds(&b, &mut buf, 1),
            Err(Error::MessageTruncated {
                buf_len: 10,
                received_fds: 1
            })
        ));
        assert!(peer_closed(&p));
    }

    #[test]
    fn send_refuses_fds_without_bytes_and_too_many_fds() {
        let (a, _b) = pair(SocketType::SEQPACKET);
        let e = EventFd::new().unwrap();
        assert!(matches!(
            send_with_fds(&a, b"", &[e.as_fd()]),
            Err(Error::EmptyMessageWithFds)
        ));
        let many = vec![e.as_fd(); MAX_FDS_PER_MESSAGE + 1];
        assert!(matches!(
            send_with_fds(&a, b"x", &many),
            Err(Error::TooManyFds {
                count: 254,
                max: 253
            })
        ));
    }

    #[test]
    fn sending_to_a_closed_peer_is_an_error_not_a_signal() {
        let (a, b) = pair(SocketType::SEQPACKET);
        drop(b);
        assert!(matches!(
            send_with_fds(&a, b"x", &[]),
            Err(Error::Os { .. })
        ));
    }
}
