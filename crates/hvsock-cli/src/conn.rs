//! One byte stream, or one listener, of any kind the relay commands move
//! data between: hvsock in either role, TCP and Unix sockets.
//!
//! Owns [`Conn`] and [`Listener`], thin enums that give every kind the same
//! `Read`/`Write` through a shared reference (so two threads can pump the
//! two directions of one stream) and the same `shutdown`.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};

use hvsock::{HvListener, HvStream, VsockListener, VsockStream};

/// A connected byte stream.
#[derive(Debug)]
pub enum Conn {
    /// A host process's hvsock stream.
    Hv(HvStream),
    /// A guest's hvsock stream.
    Vsock(VsockStream),
    /// TCP.
    Tcp(TcpStream),
    /// A Unix stream socket.
    Unix(UnixStream),
}

impl Conn {
    /// Shuts down reading, writing (the FIN: the peer reads the end of the
    /// stream) or both.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Conn::Hv(s) => s.shutdown(how),
            Conn::Vsock(s) => s.shutdown(how),
            Conn::Tcp(s) => s.shutdown(how),
            Conn::Unix(s) => s.shutdown(how),
        }
    }
}

impl Read for &Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match *self {
            Conn::Hv(s) => (&*s).read(buf),
            Conn::Vsock(s) => (&*s).read(buf),
            Conn::Tcp(s) => (&*s).read(buf),
            Conn::Unix(s) => (&*s).read(buf),
        }
    }
}

impl Write for &Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match *self {
            Conn::Hv(s) => (&*s).write(buf),
            Conn::Vsock(s) => (&*s).write(buf),
            Conn::Tcp(s) => (&*s).write(buf),
            Conn::Unix(s) => (&*s).write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A listener.
#[derive(Debug)]
pub enum Listener {
    /// A host process listening on a service.
    Hv(HvListener),
    /// A guest listening on a vsock port.
    Vsock(VsockListener),
    /// TCP.
    Tcp(TcpListener),
    /// A Unix stream socket.
    Unix(UnixListener),
}

impl Listener {
    /// Waits for a connection; returns it and a description of the peer.
    pub fn accept(&self) -> io::Result<(Conn, String)> {
        Ok(match self {
            Listener::Hv(l) => {
                let (s, peer) = l.accept()?;
                (Conn::Hv(s), peer.to_string())
            }
            Listener::Vsock(l) => {
                let (s, peer) = l.accept()?;
                (Conn::Vsock(s), peer.to_string())
            }
            Listener::Tcp(l) => {
                let (s, peer) = l.accept()?;
                (Conn::Tcp(s), peer.to_string())
            }
            Listener::Unix(l) => {
                let (s, _) = l.accept()?;
                (Conn::Unix(s), "a Unix socket client".to_string())
            }
        })
    }
}
