//! Blocking helpers for administration tools (`hvsock vm`, `hvsock stat`)
//! and tests: connect to a host socket with errors a person understands,
//! send one extension request and read its answer.
//!
//! Owns only that round trip. Long-lived clients (sockets, listeners) are
//! the `hvsock` crate's business.

use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::io::Errno;
use rustix::net::{self, AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use super::DaemonError;
use crate::ext::{encode_ext, Datagram, ExtEvent, ExtRequest, MAX_DATAGRAM};

/// Connects to the socket at `path` (blocking, close-on-exec).
///
/// No socket or nobody listening gives [`DaemonError::NotRunning`]; a
/// socket of another user gives [`DaemonError::PermissionDenied`].
pub fn connect(path: &Path) -> Result<OwnedFd, DaemonError> {
    let addr = SocketAddrUnix::new(path).map_err(DaemonError::io(format!(
        "socket path {} is too long",
        path.display()
    )))?;
    let fd = net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(DaemonError::io("creating a Unix socket"))?;
    match net::connect(&fd, &addr) {
        Ok(()) => Ok(fd),
        Err(Errno::NOENT) | Err(Errno::CONNREFUSED) | Err(Errno::NOTDIR) => {
            Err(DaemonError::NotRunning {
                path: path.to_path_buf(),
            })
        }
        Err(Errno::ACCESS) | Err(Errno::PERM) => Err(DaemonError::PermissionDenied {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(DaemonError::io(format!("connecting to {}", path.display()))(e)),
    }
}

/// Sends `request` on `socket` and waits for the next event.
pub fn request(socket: &OwnedFd, request: &ExtRequest) -> Result<ExtEvent, DaemonError> {
    hvsock_shm::send_with_fds(socket, &encode_ext(request), &[])?;
    receive(socket)
}

/// Waits for the next event on `socket`.
pub fn receive(socket: &OwnedFd) -> Result<ExtEvent, DaemonError> {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let (n, _fds) = hvsock_shm::recv_with_fds(socket, &mut buf, 3)?;
    if n == 0 {
        return Err(DaemonError::Protocol(
            "the host closed the connection".into(),
        ));
    }
    match Datagram::<ExtEvent>::decode(&buf[..n]) {
        Ok(Datagram::Ext(event)) => Ok(event),
        Ok(Datagram::Vmbus(m)) => Err(DaemonError::Protocol(format!(
            "a VMBus message ({}) on the host socket",
            m.message_type()
        ))),
        Err(e) => Err(DaemonError::Protocol(e.to_string())),
    }
}
