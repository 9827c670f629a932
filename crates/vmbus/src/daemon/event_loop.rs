//! The one event loop that drives the server, for the daemon and the
//! embedded host alike: epoll over listening sockets, client sockets and a
//! wake-up eventfd; accepts (with SO_PEERCRED checks), reads datagrams with
//! their descriptors, performs the server's actions, writes with a
//! per-client queue, and fires the server's timeouts.
//!
//! Owns the I/O only, including making the descriptors of a new signal
//! link ([`Action::CreateLink`]) and handing them to its two processes; it
//! keeps none of them once sent. Every protocol decision is the server's;
//! the loop adds two rules of its own: a client whose queue of unsent
//! datagrams grows past [`MAX_QUEUED`] (it does not read its socket) is
//! dropped, and a datagram that does not fit the receive buffer or carries
//! more than [`MAX_INCOMING_FDS`] descriptors drops its sender.
//!
//! No descriptor a client chose is ever closed for the last time in the
//! loop's thread: a close runs code the client picks (a TCP socket with a
//! long `SO_LINGER`, a file on its FUSE mount, a Unix socket full of
//! descriptors), and the loop serves every VM. The loop receives with room
//! for as many descriptors as a message can carry, so the kernel closes
//! none itself; every one that is not a memfd is copied, and the copy
//! closed on a thread of its own ([`Closer`]) after the server is done with
//! the message; a client's socket (whose queue may hold descriptors) is
//! closed there too.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use hvsock_shm::{signal_pair, EventFd, SharedMemory};
use rustix::event::epoll;
use rustix::event::Timespec;
use rustix::io::Errno;
use rustix::net::{self, SocketFlags};

use super::sockets::SocketDir;
use super::{stat, DaemonError};
use crate::ext::{encode_ext, ExtEvent, Partition, VmInfo, LINK_FLAGS_BYTES};
use crate::messages::Guid;
use crate::server::{Action, ClientId, ClientInfo, Input, Server, ServerConfig, VmError};

/// Unsent datagrams a client may have queued before it is dropped.
pub(crate) const MAX_QUEUED: usize = 16_384;

/// Largest datagram a client may send (VMBus messages are at most 240
/// bytes; extension requests are small JSON documents).
const MAX_INCOMING: usize = 64 * 1024;

/// Descriptors a client's datagram may carry. Only GPADL_HEADER carries
/// one; two still reach the server, so that an OPENCHANNEL of the older
/// protocol (with two eventfds) is refused with the server's reason rather
/// than a bare truncation.
const MAX_INCOMING_FDS: usize = 2;

/// Datagrams read from one client before others get a turn.
const READ_BATCH: usize = 64;

/// Send buffer asked for client sockets, so that large stat reports fit in
/// one datagram.
const SEND_BUFFER: usize = 4 << 20;

const WAKE_TOKEN: u64 = 0;

/// A request to the loop from another thread.
pub(crate) enum Command {
    /// Attach one end of a socket pair as a new client.
    Attach {
        fd: OwnedFd,
        partition: Partition,
        reply: mpsc::Sender<Result<(), DaemonError>>,
    },
    AddVm {
        name: String,
        id: Option<Guid>,
        reply: mpsc::Sender<Result<VmInfo, VmError>>,
    },
    RemoveVm {
        name: String,
        reply: mpsc::Sender<Result<VmInfo, VmError>>,
    },
    Shutdown,
}

/// Sends commands to the loop and wakes it.
#[derive(Debug, Clone)]
pub(crate) struct Waker {
    tx: mpsc::Sender<Command>,
    eventfd: Arc<EventFd>,
}

impl Waker {
    pub(crate) fn send(&self, command: Command) -> Result<(), DaemonError> {
        self.tx.send(command).map_err(|_| DaemonError::Stopped)?;
        self.eventfd.signal()?;
        Ok(())
    }
}

#[derive(Debug)]
struct Conn {
    fd: OwnedFd,
    pid: u32,
    out: VecDeque<(Vec<u8>, Vec<Arc<OwnedFd>>)>,
    writing: bool,
}

#[derive(Debug)]
struct Listener {
    fd: OwnedFd,
    partition: Partition,
    path: PathBuf,
}

/// The loop's state.
pub(crate) struct Core {
    server: Server,
    closer: Closer,
    epoll: OwnedFd,
    wake: Arc<EventFd>,
    commands: mpsc::Receiver<Command>,
    conns: HashMap<u64, Conn>,
    listeners: HashMap<u64, Listener>,
    /// VM id → listener token (daemon mode).
    vm_listeners: HashMap<Guid, u64>,
    next_token: u64,
    dir: Option<SocketDir>,
    allowed_uids: Vec<u32>,
    buf: Vec<u8>,
    stopping: bool,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("clients", &self.conns.len())
            .field("listeners", &self.listeners.len())
            .finish_non_exhaustive()
    }
}

/// Closes what a client may have chosen, on a thread of its own (see the
/// module docs): whatever such a close waits for, the loop does not.
struct Closer(mpsc::Sender<Box<dyn Send>>);

impl Closer {
    fn start() -> io::Result<Closer> {
        let (tx, rx) = mpsc::channel::<Box<dyn Send>>();
        std::thread::Builder::new()
            .name("hvsock-closer".into())
            .spawn(move || rx.into_iter().for_each(drop))?;
        Ok(Closer(tx))
    }

    /// Drops `thing` on the closer's thread.
    fn close(&self, thing: impl Send + 'static) {
        // The thread ends only with the loop; were it gone, closing here
        // is all that is left.
        let _ = self.0.send(Box::new(thing));
    }

    /// Copies of those of `fds` whose last close could wait: all but
    /// memfds (the only descriptors clients send the server by right; a
    /// memfd's close never waits). A descriptor that cannot be copied is
    /// left to its luck.
    fn copies_of_risky(&self, fds: &[OwnedFd]) -> Vec<OwnedFd> {
        fds.iter()
            .filter(|fd| !hvsock_shm::is_memfd(fd))
            .filter_map(|fd| fd.try_clone().ok())
            .collect()
    }
}

fn would_block(e: &hvsock_shm::Error) -> bool {
    matches!(e, hvsock_shm::Error::Os { source, .. } if source.kind() == io::ErrorKind::WouldBlock)
}

impl Core {
    /// A loop with no clients; with `dir`, it listens on the host socket
    /// and creates VM sockets.
    pub(crate) fn new(
        config: ServerConfig,
        mut dir: Option<SocketDir>,
        allowed_uids: Vec<u32>,
    ) -> Result<(Core, Waker), DaemonError> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)
            .map_err(DaemonError::io("creating an epoll instance"))?;
        let wake = Arc::new(EventFd::new()?);
        epoll::add(
            &epoll,
            wake.as_fd(),
            epoll::EventData::new_u64(WAKE_TOKEN),
            epoll::EventFlags::IN,
        )
        .map_err(DaemonError::io("watching the wake-up eventfd"))?;
        let (tx, commands) = mpsc::channel();
        let host_listener = dir.as_mut().and_then(|d| d.take_listener());
        let mut core = Core {
            server: Server::new(config),
            closer: Closer::start().map_err(|e| {
                DaemonError::io("starting the closer thread")(
                    rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::AGAIN),
                )
            })?,
            epoll,
            wake: wake.clone(),
            commands,
            conns: HashMap::new(),
            listeners: HashMap::new(),
            vm_listeners: HashMap::new(),
            next_token: 1,
            dir,
            allowed_uids,
            buf: vec![0; MAX_INCOMING],
            stopping: false,
        };
        if let Some(fd) = host_listener {
            let path = core
                .dir
                .as_ref()
                .map(|d| d.host_path().to_path_buf())
                .unwrap_or_default();
            tracing::info!("listening on {}", path.display());
            core.watch_listener(fd, Partition::Root, path)?;
        }
        Ok((core, Waker { tx, eventfd: wake }))
    }

    /// Adds a VM before the loop runs, failing if its socket cannot be
    /// created.
    pub(crate) fn add_vm_now(
        &mut self,
        name: &str,
        id: Option<Guid>,
    ) -> Result<VmInfo, DaemonError> {
        let vm = self.server.add_vm(name, id)?;
        while let Some(action) = self.server.poll_action() {
            if let Action::VmAdded { vm } = action {
                self.create_vm_socket(&vm)?;
            }
        }
        Ok(vm)
    }

    pub(crate) fn vms(&self) -> Vec<VmInfo> {
        self.server.vms()
    }

    fn token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    fn watch_listener(
        &mut self,
        fd: OwnedFd,
        partition: Partition,
        path: PathBuf,
    ) -> Result<u64, DaemonError> {
        let token = self.token();
        epoll::add(
            &self.epoll,
            &fd,
            epoll::EventData::new_u64(token),
            epoll::EventFlags::IN,
        )
        .map_err(DaemonError::io(format!("watching {}", path.display())))?;
        self.listeners.insert(
            token,
            Listener {
                fd,
                partition,
                path,
            },
        );
        Ok(token)
    }

    fn create_vm_socket(&mut self, vm: &VmInfo) -> Result<(), DaemonError> {
        let Some(dir) = self.dir.as_mut() else {
            return Ok(());
        };
        let (fd, path) = dir.bind_vm(&vm.name)?;
        tracing::info!(vm = vm.name, "VM socket {}", path.display());
        let token = self.watch_listener(fd, Partition::Vm(vm.id), path)?;
        self.vm_listeners.insert(vm.id, token);
        Ok(())
    }

    fn remove_vm_socket(&mut self, id: Guid) {
        if let Some(token) = self.vm_listeners.remove(&id) {
            if let Some(listener) = self.listeners.remove(&token) {
                let _ = epoll::delete(&self.epoll, &listener.fd);
                if let Some(dir) = self.dir.as_mut() {
                    dir.remove(&listener.path);
                }
            }
        }
    }

    /// Serves until a shutdown command; then drops every client and removes
    /// the sockets.
    pub(crate) fn run(&mut self) -> Result<(), DaemonError> {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(256);
        while !self.stopping {
            let timeout = self.server.next_timeout().map(|at| {
                // Round up to the next millisecond so that a wait never ends
                // just before the deadline and spins.
                let d = at.saturating_duration_since(Instant::now());
                let d = d + std::time::Duration::from_millis(1);
                Timespec {
                    tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                    tv_nsec: i64::from(d.subsec_nanos()),
                }
            });
            events.clear();
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                timeout.as_ref(),
            ) {
                Ok(_) => {}
                Err(Errno::INTR) => continue,
                Err(e) => return Err(DaemonError::io("waiting for events (epoll_wait)")(e)),
            }
            for event in &events {
                let token = event.data.u64();
                let flags = event.flags;
                if token == WAKE_TOKEN {
                    let _ = self.wake.try_wait();
                    self.commands();
                } else if self.listeners.contains_key(&token) {
                    self.accept(token);
                } else {
                    if flags.contains(epoll::EventFlags::OUT) {
                        self.flush(token);
                    }
                    if flags.intersects(
                        epoll::EventFlags::IN | epoll::EventFlags::HUP | epoll::EventFlags::ERR,
                    ) {
                        self.read(token);
                    }
                }
                self.actions();
            }
            self.server.handle_timeout(Instant::now());
            self.actions();
        }
        tracing::info!("shutting down");
        for (_, conn) in self.conns.drain() {
            drop(conn);
        }
        for (_, listener) in self.listeners.drain() {
            drop(listener);
        }
        // SocketDir's drop removes the files.
        self.dir = None;
        Ok(())
    }

    fn commands(&mut self) {
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Shutdown => self.stopping = true,
                Command::Attach {
                    fd,
                    partition,
                    reply,
                } => {
                    let result = match partition {
                        Partition::Vm(id) if self.server.vm_by_id(id).is_none() => {
                            Err(DaemonError::NoSuchVm(id))
                        }
                        _ => {
                            let pid = rustix::process::getpid().as_raw_nonzero().get() as u32;
                            let uid = rustix::process::getuid().as_raw();
                            self.attach(
                                fd,
                                ClientInfo {
                                    partition,
                                    pid,
                                    uid,
                                },
                            )
                        }
                    };
                    let _ = reply.send(result);
                }
                Command::AddVm { name, id, reply } => {
                    let _ = reply.send(self.server.add_vm(&name, id));
                }
                Command::RemoveVm { name, reply } => {
                    let _ = reply.send(self.server.remove_vm(&name));
                }
            }
            self.actions();
        }
    }

    fn attach(&mut self, fd: OwnedFd, info: ClientInfo) -> Result<(), DaemonError> {
        let token = self.token();
        let _ = net::sockopt::set_socket_send_buffer_size_force(&fd, SEND_BUFFER)
            .or_else(|_| net::sockopt::set_socket_send_buffer_size(&fd, SEND_BUFFER));
        epoll::add(
            &self.epoll,
            &fd,
            epoll::EventData::new_u64(token),
            epoll::EventFlags::IN,
        )
        .map_err(DaemonError::io("watching a client socket"))?;
        self.conns.insert(
            token,
            Conn {
                fd,
                pid: info.pid,
                out: VecDeque::new(),
                writing: false,
            },
        );
        self.server.handle(
            Instant::now(),
            Input::Connected {
                client: ClientId(token),
                info,
            },
        );
        Ok(())
    }

    fn accept(&mut self, token: u64) {
        for _ in 0..READ_BATCH {
            let Some(listener) = self.listeners.get(&token) else {
                return;
            };
            let partition = listener.partition;
            let fd = match net::accept_with(
                &listener.fd,
                SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            ) {
                Ok(fd) => fd,
                Err(Errno::AGAIN) | Err(Errno::INTR) => return,
                Err(e) => {
                    tracing::warn!("accept on {} failed: {e}", listener.path.display());
                    return;
                }
            };
            let cred = match net::sockopt::socket_peercred(&fd) {
                Ok(cred) => cred,
                Err(e) => {
                    tracing::warn!("closing a connection whose credentials are unknown: {e}");
                    continue;
                }
            };
            let uid = cred.uid.as_raw();
            let pid = cred.pid.as_raw_nonzero().get() as u32;
            if !self.allowed_uids.contains(&uid) {
                tracing::warn!(
                    pid,
                    uid,
                    "closing a connection from uid {uid}: only uids {:?} may use this host",
                    self.allowed_uids
                );
                continue;
            }
            if let Err(e) = self.attach(
                fd,
                ClientInfo {
                    partition,
                    pid,
                    uid,
                },
            ) {
                tracing::warn!("could not take a connection: {e}");
            }
            self.actions();
        }
    }

    fn read(&mut self, token: u64) {
        for _ in 0..READ_BATCH {
            let Some(conn) = self.conns.get(&token) else {
                return;
            };
            // Raw: every descriptor that arrived is ours to place, even
            // those of a datagram we refuse, so that none is closed for the
            // last time here.
            let received =
                hvsock_shm::recv_raw(&conn.fd, &mut self.buf, hvsock_shm::MAX_FDS_PER_MESSAGE);
            match received {
                Ok(r) if r.len == 0 && r.fds.is_empty() && !r.truncated => {
                    self.gone(token, "closed its socket");
                    return;
                }
                Ok(r) if r.truncated || r.fds_cut || r.fds.len() > MAX_INCOMING_FDS => {
                    let why = if r.truncated {
                        format!("sent a datagram longer than {} bytes", self.buf.len())
                    } else {
                        format!(
                            "sent a datagram with {}{} descriptors (at most \
                             {MAX_INCOMING_FDS})",
                            if r.fds_cut { "more than " } else { "" },
                            r.fds.len()
                        )
                    };
                    self.closer.close(r.fds);
                    self.gone(token, &why);
                    return;
                }
                Ok(r) => {
                    let bytes = self.buf[..r.len].to_vec();
                    let fds = r.fds;
                    // Copies of what the server may close, so that its
                    // close is not the last.
                    let last_closes = self.closer.copies_of_risky(&fds);
                    self.server.handle(
                        Instant::now(),
                        Input::Datagram {
                            client: ClientId(token),
                            bytes,
                            fds,
                        },
                    );
                    // Most datagrams carry no such descriptor, and waking
                    // the closer for nothing cost a context switch per
                    // message (half of the daemon's CPU per connection in
                    // the set-up benchmark).
                    if !last_closes.is_empty() {
                        self.closer.close(last_closes);
                    }
                    self.actions();
                }
                Err(e) if would_block(&e) => return,
                Err(e) => {
                    self.gone(token, &format!("socket error: {e}"));
                    return;
                }
            }
        }
    }

    /// A client is gone (or dropped by the loop): tell the server, close.
    fn gone(&mut self, token: u64, why: &str) {
        if let Some(conn) = self.conns.remove(&token) {
            tracing::info!(client = token, pid = conn.pid, "client {why}");
            let _ = epoll::delete(&self.epoll, &conn.fd);
            self.closer.close(conn);
        }
        self.server.handle(
            Instant::now(),
            Input::Gone {
                client: ClientId(token),
            },
        );
    }

    fn actions(&mut self) {
        while let Some(action) = self.server.poll_action() {
            match action {
                Action::Send { client, bytes, fds } => self.queue(client.0, bytes, fds),
                Action::Disconnect { client, reason } => {
                    if let Some(conn) = self.conns.remove(&client.0) {
                        tracing::warn!(client = client.0, pid = conn.pid, "disconnected: {reason}");
                        let _ = epoll::delete(&self.epoll, &conn.fd);
                        self.closer.close(conn);
                    }
                }
                Action::VmAdded { vm } => {
                    if let Err(e) = self.create_vm_socket(&vm) {
                        tracing::error!(vm = vm.name, "cannot create the VM's socket: {e}");
                    }
                }
                Action::VmRemoved { name, id } => {
                    tracing::info!(vm = name, "removing the VM's socket");
                    self.remove_vm_socket(id);
                }
                Action::Stat {
                    client,
                    mut report,
                    rings,
                } => {
                    stat::fill(&mut report, &rings);
                    self.queue(client.0, encode_ext(&ExtEvent::Stat { report }), Vec::new());
                }
                Action::CreateLink { link, guest, host } => self.create_link(link, guest, host),
            }
        }
    }

    /// Makes a link's descriptors and queues its [`ExtEvent::Link`] to both
    /// processes, ahead of anything the following actions queue. The queues
    /// hold the only copies the host has, until the datagrams are sent.
    fn create_link(&mut self, link: u64, guest: ClientId, host: ClientId) {
        let made = (|| -> Result<_, hvsock_shm::Error> {
            let flags = SharedMemory::create("hvsock-link", LINK_FLAGS_BYTES)?.into_fd();
            let (guest_waits, host_signals) = signal_pair()?;
            let (host_waits, guest_signals) = signal_pair()?;
            Ok([
                flags,
                guest_waits.into_fd(),
                guest_signals.into_fd(),
                host_waits.into_fd(),
                host_signals.into_fd(),
            ]
            .map(Arc::new))
        })();
        let [flags, guest_waits, guest_signals, host_waits, host_signals] = match made {
            Ok(fds) => fds,
            Err(e) => {
                // The endpoints fail the channels that name this link, since
                // they never learn it; the daemon and its other clients go on.
                tracing::warn!(
                    link,
                    guest = guest.0,
                    host = host.0,
                    "cannot create a signal link, its channels will fail: {e}"
                );
                return;
            }
        };
        let bytes = encode_ext(&ExtEvent::Link { link });
        // Each side gets [flags, the end it waits on, the end it signals]:
        // two socket pairs, so that neither holds the other's ends.
        self.queue(
            guest.0,
            bytes.clone(),
            vec![flags.clone(), guest_waits, guest_signals],
        );
        self.queue(host.0, bytes, vec![flags, host_waits, host_signals]);
    }

    fn queue(&mut self, token: u64, bytes: Vec<u8>, fds: Vec<Arc<OwnedFd>>) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        conn.out.push_back((bytes, fds));
        if conn.out.len() > MAX_QUEUED {
            self.gone(token, "does not read its socket; dropped");
            return;
        }
        if !conn.writing {
            self.flush(token);
        }
    }

    /// Writes queued datagrams until the socket is full.
    fn flush(&mut self, token: u64) {
        let mut failed = None;
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        while let Some((bytes, fds)) = conn.out.front() {
            let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
            match hvsock_shm::send_with_fds(&conn.fd, bytes, &borrowed) {
                Ok(_) => {
                    conn.out.pop_front();
                }
                Err(e) if would_block(&e) => break,
                Err(hvsock_shm::Error::Os { source, .. })
                    if source.raw_os_error() == Some(Errno::MSGSIZE.raw_os_error()) =>
                {
                    tracing::warn!(
                        client = token,
                        "a {}-byte answer is too large for the socket",
                        bytes.len()
                    );
                    let refusal = encode_ext(&ExtEvent::Refused {
                        reason: format!(
                            "the answer ({} bytes) is too large for the socket's send buffer",
                            bytes.len()
                        ),
                    });
                    if let Some(front) = conn.out.front_mut() {
                        *front = (refusal, Vec::new());
                    }
                }
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
        }
        if let Some(why) = failed {
            self.gone(token, &format!("cannot be written to ({why})"));
            return;
        }
        let want = !conn.out.is_empty();
        if want != conn.writing {
            conn.writing = want;
            let flags = if want {
                epoll::EventFlags::IN | epoll::EventFlags::OUT
            } else {
                epoll::EventFlags::IN
            };
            let _ = epoll::modify(
                &self.epoll,
                &conn.fd,
                epoll::EventData::new_u64(token),
                flags,
            );
        }
    }
}
