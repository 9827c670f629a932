//! The three transports behind one stream type: a Unix stream socket, TCP
//! over loopback, and hvsock (either end of a channel), with the same
//! blocking and busy-poll modes, and how each end reaches the other.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use hvsock::{
    ConnectOptions, Guest, Guid, Host, HvAddr, HvListener, HvStream, VsockAddr, VsockListener,
    VsockStream,
};
use serde::{Deserialize, Serialize};

/// How long an hvsock end spins before it sleeps in busy-poll mode: long
/// enough that a peer on another CPU always answers within it.
pub const SPIN: Duration = Duration::from_millis(20);

/// Where the peer process finds the bench process (and, for hvsock, the
/// host and the ring geometry to ask for).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Reach {
    /// A Unix stream socket listening at `path`.
    Uds {
        /// The socket's path.
        path: PathBuf,
    },
    /// TCP on 127.0.0.1.
    Tcp {
        /// The listening port.
        port: u16,
    },
    /// hvsock through the `hvsock host` daemon at `socket`; the peer is a
    /// guest of `vm`.
    Daemon {
        /// The host socket.
        socket: PathBuf,
        /// The VM the peer joins.
        vm: String,
        /// The vsock port on the host (or, when the peer listens, its own).
        port: u32,
        /// Pages of each ring, control page included.
        pages: u32,
    },
    /// The wake-up floor's shared page, at this `/proc` path of the bench
    /// process's descriptor.
    Memfd {
        /// The path.
        path: PathBuf,
    },
    /// hvsock through an embedded host in this process (the peer is a thread).
    Embedded {
        /// The VM the peer joins.
        vm: String,
        /// As for `Daemon`.
        port: u32,
        /// As for `Daemon`.
        pages: u32,
    },
}

/// Connect options for `pages`-page rings.
pub fn options(pages: u32) -> ConnectOptions {
    ConnectOptions {
        timeout: Duration::from_secs(10),
        ring_pages: (pages, pages),
    }
}

/// One end of a connection of any transport.
#[derive(Debug)]
pub enum Stream {
    /// A Unix stream socket.
    Unix(UnixStream),
    /// TCP.
    Tcp(TcpStream),
    /// The host end of an hvsock channel.
    Hv(HvStream),
    /// The guest end of an hvsock channel.
    Vsock(VsockStream),
}

impl Stream {
    fn io_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
            Stream::Hv(s) => s.read(buf),
            Stream::Vsock(s) => s.read(buf),
        }
    }

    fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.shutdown(Shutdown::Write),
            Stream::Tcp(s) => s.shutdown(Shutdown::Write),
            Stream::Hv(s) => s.shutdown(Shutdown::Write),
            Stream::Vsock(s) => s.shutdown(Shutdown::Write),
        }
    }

    fn io_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
            Stream::Hv(s) => s.write(buf),
            Stream::Vsock(s) => s.write(buf),
        }
    }
}

/// A stream in blocking or busy-poll mode. Busy-poll is the transport's
/// own spin for hvsock (`set_busy_poll`), and a non-blocking socket retried
/// at once on `WouldBlock` for the kernel sockets.
#[derive(Debug)]
pub struct Conn {
    stream: Stream,
    spin: bool,
}

impl Conn {
    /// Wraps `stream`, setting its mode (and `TCP_NODELAY` for TCP).
    pub fn new(stream: Stream, busy: bool) -> io::Result<Conn> {
        let mut spin = false;
        match &stream {
            Stream::Unix(s) => {
                s.set_nonblocking(busy)?;
                spin = busy;
            }
            Stream::Tcp(s) => {
                s.set_nodelay(true)?;
                s.set_nonblocking(busy)?;
                spin = busy;
            }
            Stream::Hv(s) => s.set_busy_poll(busy.then_some(SPIN)),
            Stream::Vsock(s) => s.set_busy_poll(busy.then_some(SPIN)),
        }
        Ok(Conn { stream, spin })
    }
}

impl Conn {
    /// Sends the end of the stream (FIN for hvsock).
    pub fn shutdown_write(&self) -> io::Result<()> {
        self.stream.shutdown_write()
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.stream.io_read(buf) {
                Err(e) if self.spin && e.kind() == io::ErrorKind::WouldBlock => {
                    std::hint::spin_loop()
                }
                other => return other,
            }
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match self.stream.io_write(buf) {
                Err(e) if self.spin && e.kind() == io::ErrorKind::WouldBlock => {
                    std::hint::spin_loop()
                }
                other => return other,
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The bench process's listening end.
#[derive(Debug)]
pub enum Listener {
    /// A Unix stream socket (the path is removed on drop).
    Unix(UnixListener, PathBuf),
    /// TCP on loopback.
    Tcp(TcpListener),
    /// The host listening on a vsock port for every VM.
    Hv(HvListener),
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Listener {
    /// Listens at `path`.
    pub fn unix(path: PathBuf) -> io::Result<Listener> {
        let _ = std::fs::remove_file(&path);
        Ok(Listener::Unix(UnixListener::bind(&path)?, path))
    }

    /// Listens on an ephemeral loopback port.
    pub fn tcp() -> io::Result<Listener> {
        Ok(Listener::Tcp(TcpListener::bind("127.0.0.1:0")?))
    }

    /// The host listens on vsock port `port`, for all VMs.
    pub fn hv(host: &Host, port: u32, backlog: usize) -> io::Result<Listener> {
        Ok(Listener::Hv(HvListener::bind_with_backlog(
            host,
            HvAddr::from_vsock_port(Guid::ZERO, port),
            backlog,
        )?))
    }

    /// The TCP port, for [`Reach::Tcp`].
    pub fn tcp_port(&self) -> Option<u16> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok().map(|a| a.port()),
            _ => None,
        }
    }

    /// Makes `accept` non-blocking (then wait on [`AsFd`] for readiness).
    pub fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Listener::Unix(l, _) => l.set_nonblocking(true),
            Listener::Tcp(l) => l.set_nonblocking(true),
            Listener::Hv(l) => l.set_nonblocking(true),
        }
    }

    /// Accepts one connection (`WouldBlock` in non-blocking mode).
    pub fn accept(&self) -> io::Result<Stream> {
        Ok(match self {
            Listener::Unix(l, _) => {
                let s = l.accept()?.0;
                s.set_nonblocking(false)?;
                Stream::Unix(s)
            }
            Listener::Tcp(l) => {
                let s = l.accept()?.0;
                s.set_nonblocking(false)?;
                Stream::Tcp(s)
            }
            Listener::Hv(l) => Stream::Hv(l.accept()?.0),
        })
    }

    /// Accepts within `timeout`: `None` when nothing came (the listener must
    /// be non-blocking).
    pub fn accept_within(&self, timeout: Duration) -> io::Result<Option<Stream>> {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        loop {
            match self.accept() {
                Ok(s) => return Ok(Some(s)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            let mut fds = [PollFd::new(self, PollFlags::IN)];
            let timeout = Timespec::try_from(timeout).unwrap_or(Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            });
            if poll(&mut fds, Some(&timeout))? == 0 {
                // One last try: hvsock's readiness is edge-triggered.
                return match self.accept() {
                    Ok(s) => Ok(Some(s)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                    Err(e) => Err(e),
                };
            }
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Unix(l, _) => l.as_fd(),
            Listener::Tcp(l) => l.as_fd(),
            Listener::Hv(l) => l.as_fd(),
        }
    }
}

/// The peer's side of a transport: how it connects or listens.
#[derive(Debug)]
pub enum PeerSide {
    /// Unix socket client.
    Uds(PathBuf),
    /// TCP client.
    Tcp(u16),
    /// An hvsock guest, with the port and ring pages to use.
    Guest(Guest, u32, u32),
}

impl PeerSide {
    /// Connects to the bench process.
    pub fn connect(&self) -> io::Result<Stream> {
        Ok(match self {
            PeerSide::Uds(path) => Stream::Unix(UnixStream::connect(path)?),
            PeerSide::Tcp(port) => Stream::Tcp(TcpStream::connect(("127.0.0.1", *port))?),
            PeerSide::Guest(guest, port, pages) => Stream::Vsock(VsockStream::connect_with(
                guest,
                VsockAddr::new(2, *port),
                &options(*pages),
            )?),
        })
    }

    /// For hvsock: listens as the guest (the host connects).
    pub fn listen(&self, backlog: usize) -> io::Result<VsockListener> {
        match self {
            PeerSide::Guest(guest, port, pages) => VsockListener::bind_with(
                guest,
                VsockAddr::new(u32::MAX, *port),
                backlog,
                &options(*pages),
            ),
            _ => Err(io::Error::other("only an hvsock guest listens")),
        }
    }
}
