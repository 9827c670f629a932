//! Socket paths and files: where the host socket is by default, where VM
//! sockets go, creating the directory (0700) and sockets (0600), replacing
//! stale sockets, refusing to start over a live daemon, removing everything
//! on shutdown.
//!
//! Owns the filesystem side only; accepting and serving connections is the
//! event loop's job.

use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::io::Errno;
use rustix::net::{self, AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use super::DaemonError;

/// The host socket path when none is given: `$HVSOCK_SOCKET`, else
/// `$XDG_RUNTIME_DIR/hvsock/host.sock`, else `/tmp/hvsock-<uid>/host.sock`.
pub fn default_socket_path() -> PathBuf {
    if let Some(path) = std::env::var_os("HVSOCK_SOCKET").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        return PathBuf::from(dir).join("hvsock").join("host.sock");
    }
    let uid = rustix::process::getuid().as_raw();
    PathBuf::from(format!("/tmp/hvsock-{uid}/host.sock"))
}

/// The socket of VM `vm_name`, next to the host socket:
/// `DIR/vm-NAME.sock`.
pub fn vm_socket_path(host_socket: &Path, vm_name: &str) -> PathBuf {
    let dir = host_socket
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    dir.join(format!("vm-{vm_name}.sock"))
}

/// The daemon's directory and its host socket; removes what it created on
/// drop.
#[derive(Debug)]
pub(crate) struct SocketDir {
    host: PathBuf,
    created_dir: Option<PathBuf>,
    /// The listening host socket, taken by the loop.
    listener: Option<OwnedFd>,
    /// Socket files to remove at the end.
    files: Vec<PathBuf>,
}

impl SocketDir {
    /// Creates the directory if needed and binds the host socket.
    pub(crate) fn create(host: &Path) -> Result<SocketDir, DaemonError> {
        let dir = host
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let created_dir = if dir.exists() {
            None
        } else {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|source| DaemonError::Io {
                    action: format!("creating the socket directory {}", dir.display()),
                    source,
                })?;
            Some(dir)
        };
        let mut this = SocketDir {
            host: host.to_path_buf(),
            created_dir,
            listener: None,
            files: Vec::new(),
        };
        check_not_running(host)?;
        this.listener = Some(this.bind(host)?);
        Ok(this)
    }

    /// The host socket's path.
    pub(crate) fn host_path(&self) -> &Path {
        &self.host
    }

    /// The host socket's listening descriptor (once).
    pub(crate) fn take_listener(&mut self) -> Option<OwnedFd> {
        self.listener.take()
    }

    /// Binds a VM's socket (replacing any file left there: the host socket
    /// is ours, so nobody else serves this directory).
    pub(crate) fn bind_vm(&mut self, name: &str) -> Result<(OwnedFd, PathBuf), DaemonError> {
        let path = vm_socket_path(&self.host, name);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_socket() => {
                let _ = std::fs::remove_file(&path);
            }
            Ok(_) => return Err(DaemonError::NotASocket { path }),
            Err(_) => {}
        }
        let fd = self.bind(&path)?;
        Ok((fd, path))
    }

    /// Removes a VM's socket file.
    pub(crate) fn remove(&mut self, path: &Path) {
        let _ = std::fs::remove_file(path);
        self.files.retain(|p| p != path);
    }

    fn bind(&mut self, path: &Path) -> Result<OwnedFd, DaemonError> {
        let addr = SocketAddrUnix::new(path).map_err(DaemonError::io(format!(
            "socket path {} is too long (at most 107 bytes)",
            path.display()
        )))?;
        let fd = net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .map_err(DaemonError::io("creating a Unix socket"))?;
        net::bind(&fd, &addr).map_err(DaemonError::io(format!("binding {}", path.display())))?;
        self.files.push(path.to_path_buf());
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| DaemonError::Io {
                action: format!("making {} private (chmod 0600)", path.display()),
                source,
            },
        )?;
        net::listen(&fd, 128)
            .map_err(DaemonError::io(format!("listening on {}", path.display())))?;
        Ok(fd)
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        for path in self.files.drain(..) {
            let _ = std::fs::remove_file(&path);
        }
        if let Some(dir) = &self.created_dir {
            // Only if empty: never remove what someone else put there.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Fails if a daemon answers on `path`; removes a stale socket.
fn check_not_running(path: &Path) -> Result<(), DaemonError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(_) => return Ok(()),
    };
    if !meta.file_type().is_socket() {
        return Err(DaemonError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    match probe(path) {
        Ok(()) => Err(DaemonError::AlreadyRunning {
            path: path.to_path_buf(),
        }),
        Err(Errno::CONNREFUSED) | Err(Errno::NOENT) => {
            tracing::info!("replacing the stale socket {}", path.display());
            std::fs::remove_file(path).map_err(|source| DaemonError::Io {
                action: format!("removing the stale socket {}", path.display()),
                source,
            })
        }
        Err(errno) => Err(DaemonError::io(format!("probing {}", path.display()))(
            errno,
        )),
    }
}

/// Connects to `path` and hangs up.
fn probe(path: &Path) -> Result<(), Errno> {
    let addr = SocketAddrUnix::new(path)?;
    let fd = net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    net::connect(&fd, &addr)
}
