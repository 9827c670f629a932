//! The I/O driver of the emulated host: the [`Server`](crate::server::Server)
//! over Unix `SOCK_SEQPACKET` sockets, as a daemon ([`Daemon`], what
//! `hvsock host` runs) or inside one process ([`EmbeddedHost`], for tests,
//! examples and demos).
//!
//! Owns: socket paths ([`default_socket_path`], [`vm_socket_path`]), the
//! socket directory and files (created 0700/0600, stale ones replaced,
//! removed on shutdown), SO_PEERCRED checks, the epoll loop shared by both
//! forms, descriptor passing, and filling `hvsock stat` reports from the
//! rings' control pages. Does not own: any protocol rule (the server's), nor
//! the clients' side (the `hvsock` crate), except the small blocking
//! [`control`] helpers administration tools use.
//!
//! # Layout on disk
//!
//! ```text
//! DIR/              mode 0700, created if missing
//!   host.sock       mode 0600: root-partition processes
//!   vm-alpha.sock   mode 0600: processes of VM "alpha" (one per VM)
//! ```
//!
//! Which socket a process connected to is its partition; nothing in a
//! message can change it.

mod event_loop;
mod sockets;
mod stat;

pub mod control;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::ext::{Partition, VmInfo};
use crate::messages::Guid;
use crate::server::{ServerConfig, VmError};

use event_loop::{Command, Core, Waker};

pub use sockets::{default_socket_path, vm_socket_path};

/// Why the daemon or the embedded host failed.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Another daemon answers on the socket.
    #[error("a host is already running at {}; stop it first or choose another --socket", path.display())]
    AlreadyRunning {
        /// The socket.
        path: PathBuf,
    },
    /// Something that is not a socket is in the way.
    #[error("{} exists and is not a socket; remove it or choose another --socket", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Nobody listens on the socket.
    #[error("no hvsock host is running at {}; start one with `hvsock host`", path.display())]
    NotRunning {
        /// The socket.
        path: PathBuf,
    },
    /// The socket exists but we may not use it.
    #[error("permission denied connecting to {}: the host runs as another user (sockets are 0600 in a 0700 directory)", path.display())]
    PermissionDenied {
        /// The socket.
        path: PathBuf,
    },
    /// A system call failed.
    #[error("{action}: {source}")]
    Io {
        /// What we were doing, with the path involved.
        action: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Shared memory, eventfd or descriptor passing failed.
    #[error(transparent)]
    Shm(#[from] hvsock_shm::Error),
    /// A VM could not be added or removed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// No VM has that id.
    #[error("no VM has id {0}")]
    NoSuchVm(Guid),
    /// The host answered something that does not decode or fit.
    #[error("unexpected answer from the host: {0}")]
    Protocol(String),
    /// The embedded host's thread is no longer running.
    #[error("the host's event loop has stopped")]
    Stopped,
}

impl DaemonError {
    pub(crate) fn io(action: impl Into<String>) -> impl FnOnce(rustix::io::Errno) -> Self {
        let action = action.into();
        move |errno| DaemonError::Io {
            action,
            source: errno.into(),
        }
    }
}

/// How to run a [`Daemon`].
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The host socket; VM sockets go next to it.
    pub socket: PathBuf,
    /// VMs to create at start: name and optional id.
    pub vms: Vec<(String, Option<Guid>)>,
    /// The server's tunables.
    pub server: ServerConfig,
    /// Peers (SO_PEERCRED uid) allowed to connect; `None` means the
    /// daemon's own uid and root.
    pub allowed_uids: Option<Vec<u32>>,
}

impl DaemonConfig {
    /// A configuration for `socket` with no VMs and default tunables.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        DaemonConfig {
            socket: socket.into(),
            vms: Vec::new(),
            server: ServerConfig::default(),
            allowed_uids: None,
        }
    }
}

/// Stops a running [`Daemon`] from any thread (a signal handler thread,
/// a test). Cheap to clone.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    waker: Waker,
}

impl ShutdownHandle {
    /// Asks the loop to stop; it removes its sockets and returns from
    /// [`Daemon::run`]. Harmless if it already stopped.
    pub fn shutdown(&self) {
        let _ = self.waker.send(Command::Shutdown);
    }
}

/// The emulated host serving `host.sock` and one socket per VM.
#[derive(Debug)]
pub struct Daemon {
    core: Core,
    waker: Waker,
    socket: PathBuf,
}

impl Daemon {
    /// Creates the directory and sockets and the VMs of `config`.
    ///
    /// Replaces a stale socket left by a dead daemon; fails with
    /// [`DaemonError::AlreadyRunning`] if a daemon answers there.
    pub fn bind(config: DaemonConfig) -> Result<Daemon, DaemonError> {
        let allowed = config.allowed_uids.clone().unwrap_or_else(|| {
            let me = rustix::process::getuid().as_raw();
            vec![me, 0]
        });
        let dir = sockets::SocketDir::create(&config.socket)?;
        let (mut core, waker) = Core::new(config.server, Some(dir), allowed)?;
        for (name, id) in &config.vms {
            core.add_vm_now(name, *id)?;
        }
        Ok(Daemon {
            core,
            waker,
            socket: config.socket,
        })
    }

    /// The host socket.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The VMs and their sockets.
    pub fn vms(&self) -> Vec<(VmInfo, PathBuf)> {
        self.core
            .vms()
            .into_iter()
            .map(|vm| {
                let path = vm_socket_path(&self.socket, &vm.name);
                (vm, path)
            })
            .collect()
    }

    /// A handle that stops [`Daemon::run`].
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            waker: self.waker.clone(),
        }
    }

    /// Serves until [`ShutdownHandle::shutdown`], then removes the sockets
    /// (and the directory, if the daemon created it and it is empty).
    pub fn run(mut self) -> Result<(), DaemonError> {
        self.core.run()
    }
}

/// The emulated host inside this process: the same loop as the daemon, on
/// a background thread, reached through socket pairs instead of listening
/// sockets. Dropping it stops the thread; connected clients then see their
/// socket closed.
#[derive(Debug)]
pub struct EmbeddedHost {
    waker: Waker,
    thread: Option<JoinHandle<()>>,
}

impl EmbeddedHost {
    /// Starts the host with these VMs (name, optional id).
    pub fn start(vms: &[(&str, Option<Guid>)]) -> Result<EmbeddedHost, DaemonError> {
        Self::start_with(ServerConfig::default(), vms)
    }

    /// [`EmbeddedHost::start`] with other server tunables.
    pub fn start_with(
        config: ServerConfig,
        vms: &[(&str, Option<Guid>)],
    ) -> Result<EmbeddedHost, DaemonError> {
        let me = rustix::process::getuid().as_raw();
        let (mut core, waker) = Core::new(config, None, vec![me])?;
        for (name, id) in vms {
            core.add_vm_now(name, *id)?;
        }
        let thread = std::thread::Builder::new()
            .name("hvsock-embedded-host".into())
            .spawn(move || {
                if let Err(e) = core.run() {
                    tracing::error!("embedded host stopped: {e}");
                }
            })
            .map_err(|source| DaemonError::Io {
                action: "starting the embedded host's thread".into(),
                source,
            })?;
        Ok(EmbeddedHost {
            waker,
            thread: Some(thread),
        })
    }

    /// A new client in `partition`: one end of a fresh `SOCK_SEQPACKET`
    /// socket pair (blocking, close-on-exec), the other attached to the
    /// host with this process's pid.
    pub fn connect(&self, partition: Partition) -> Result<OwnedFd, DaemonError> {
        use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
        let (ours, theirs) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(DaemonError::io("creating a socket pair"))?;
        rustix::io::ioctl_fionbio(&ours, true)
            .map_err(DaemonError::io("making the host's end non-blocking"))?;
        let (reply, answer) = mpsc::channel();
        self.waker.send(Command::Attach {
            fd: ours,
            partition,
            reply,
        })?;
        answer.recv().map_err(|_| DaemonError::Stopped)??;
        Ok(theirs)
    }

    /// Adds a VM.
    pub fn add_vm(&self, name: &str, id: Option<Guid>) -> Result<VmInfo, DaemonError> {
        let (reply, answer) = mpsc::channel();
        self.waker.send(Command::AddVm {
            name: name.into(),
            id,
            reply,
        })?;
        Ok(answer.recv().map_err(|_| DaemonError::Stopped)??)
    }

    /// The VMs, as the host knows them (asked over a root connection, as
    /// `hvsock vm list` does).
    pub fn vms(&self) -> Result<Vec<VmInfo>, DaemonError> {
        let socket = self.connect(Partition::Root)?;
        match control::request(&socket, &crate::ext::ExtRequest::VmList)? {
            crate::ext::ExtEvent::VmList { vms } => Ok(vms),
            other => Err(DaemonError::Protocol(format!("{other:?}"))),
        }
    }

    /// The id of the VM named `name`, if there is one.
    pub fn vm_id(&self, name: &str) -> Option<Guid> {
        self.vms()
            .ok()?
            .into_iter()
            .find(|vm| vm.name == name)
            .map(|vm| vm.id)
    }

    /// Removes a VM (its channels end, its processes are disconnected).
    pub fn remove_vm(&self, name: &str) -> Result<VmInfo, DaemonError> {
        let (reply, answer) = mpsc::channel();
        self.waker.send(Command::RemoveVm {
            name: name.into(),
            reply,
        })?;
        Ok(answer.recv().map_err(|_| DaemonError::Stopped)??)
    }
}

impl Drop for EmbeddedHost {
    fn drop(&mut self) {
        let _ = self.waker.send(Command::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
