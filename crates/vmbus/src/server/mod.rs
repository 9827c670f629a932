//! The emulated Hyper-V host as a sans-I/O state machine: the VMBus server
//! that guest processes speak to, and the socket provider that host
//! processes use (PROTOCOL.md 6, obligations in 6.8).
//!
//! Owns: the VM registry (names, ids, CIDs), the connected clients and their
//! partitions, VMBus version negotiation per guest client, relid allocation,
//! offers, GPADL validation, open/close/rescind, TL connect requests, host
//! and guest listener tables, offer timeouts, the administration requests,
//! and which signal link joins which pair of processes (ids and lifetimes;
//! see [`crate::ext`], "Signals"). Does not own: sockets, threads, clocks or
//! file-descriptor I/O (the [`daemon`](crate::daemon) drives it, and creates
//! a link's descriptors on [`Action::CreateLink`]), nor anything about stream
//! bytes or signals: after a channel is open the two endpoint processes
//! share its rings and its link and the server never looks at them (except
//! the driver, for `hvsock stat`).
//!
//! # How a driver calls it
//!
//! 1. [`Server::handle`] for each [`Input`]: a client connected (with the
//!    partition of the socket it connected to, never taken from a message),
//!    a datagram with the descriptors that came with it, a client gone.
//! 2. [`Server::handle_timeout`] whenever [`Server::next_timeout`] has
//!    passed (calling it early is harmless).
//! 3. After either, [`Server::poll_action`] until it returns `None`, and
//!    perform each [`Action`] in order.
//!
//! Every input is taken with an explicit `now`; nothing here reads a clock.
//! No input makes the server panic: anything a client sends that breaks the
//! protocol ends in [`Action::Disconnect`] for that client (with the reason),
//! or in a refusal status where the protocol has one, and every other client
//! carries on.
//!
//! # Relids and identifiers
//!
//! Relids are unique across the whole server (lowest free, from 1, never
//! above [`MAX_RELID`], so that every channel has a bit in its link's
//! bitmaps), so a relid names one channel in `hvsock stat` and in
//! [`Action::Stat`]. A relid becomes free only when its guest releases it
//! (RELID_RELEASED), or at once when the guest process is gone, unloads
//! VMBus or its VM is removed; when none is free a connect is refused.
//! Connection ids (`conn` in the extension protocol) and link ids are never
//! reused.
//!
//! # Links
//!
//! The first channel that opens between a guest process and a host process
//! creates their link: [`Action::CreateLink`], queued before any message
//! that names it. Later channels between the same two reuse it. It lasts
//! until either process goes away; the other is then sent
//! [`ExtEvent::LinkClosed`], after the ends of their channels.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ext::{
    encode_ext, ChannelInfo, ConnectFailure, Datagram, ExtEvent, ExtRequest, Partition,
    ProcessInfo, RingLayout, StatReport, VmInfo, MAX_RELID,
};
use crate::messages::{
    Gpadl, GpadlAssembler, GpadlBody, GpadlHeader, Guid, HvsockParams, Message, OfferChannel,
    OpenChannel, TlConnectRequest, TlConnectResult, VersionResponse, VersionResponseExt,
    CONNECTION_STATE_SUCCESSFUL, HVSOCK_PARAMS_VERSION_RS5, MESSAGE_CONNECTION_ID, PAGE_SIZE,
    PIPE_MODE_BYTE, STATUS_CONNECTION_REFUSED, STATUS_SUCCESS, STATUS_UNSUCCESSFUL, VERSION_COPPER,
    VERSION_WIN10, VERSION_WIN10_V4_1, VERSION_WIN10_V5, VERSION_WIN10_V5_3,
};

#[cfg(test)]
mod tests;

/// Identifies one connected client (one socket). Chosen by the driver,
/// unique among live clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub u64);

/// What the driver knows about a client from its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientInfo {
    /// The partition of the socket it connected to.
    pub partition: Partition,
    /// Its pid (SO_PEERCRED).
    pub pid: u32,
    /// Its uid (SO_PEERCRED).
    pub uid: u32,
}

/// Something that happened on the sockets.
#[derive(Debug)]
pub enum Input {
    /// A client connected.
    Connected {
        /// Its id, new.
        client: ClientId,
        /// Its partition and credentials.
        info: ClientInfo,
    },
    /// A client sent a datagram, with these descriptors.
    Datagram {
        /// The sender.
        client: ClientId,
        /// The datagram.
        bytes: Vec<u8>,
        /// The descriptors that came with it (SCM_RIGHTS).
        fds: Vec<OwnedFd>,
    },
    /// A client closed its socket or died.
    Gone {
        /// The client.
        client: ClientId,
    },
}

/// Something the driver must do.
#[derive(Debug)]
pub enum Action {
    /// Send a datagram, with duplicates of these descriptors.
    Send {
        /// The recipient.
        client: ClientId,
        /// The datagram.
        bytes: Vec<u8>,
        /// Descriptors to pass along (SCM_RIGHTS).
        fds: Vec<Arc<OwnedFd>>,
    },
    /// Drop a client that broke the protocol (log the reason). The server
    /// has already forgotten it; no [`Input::Gone`] is needed (one is
    /// ignored).
    Disconnect {
        /// The client.
        client: ClientId,
        /// Why, for the log.
        reason: String,
    },
    /// A VM was added: create its socket.
    VmAdded {
        /// The VM.
        vm: VmInfo,
    },
    /// A VM was removed: remove its socket.
    VmRemoved {
        /// Its name.
        name: String,
        /// Its id.
        id: Guid,
    },
    /// A new signal link between a guest process and a host process (see
    /// [`crate::ext`], "Signals"). The driver creates, in this order:
    ///
    /// * a sealed memfd of [`LINK_FLAGS_BYTES`](crate::ext::LINK_FLAGS_BYTES),
    ///   zeroed (both bitmaps clear);
    /// * eventfd A, non-blocking: the guest waits on it;
    /// * eventfd B, non-blocking: the host process waits on it;
    ///
    /// then sends [`ExtEvent::Link`] with this `link` to the guest with fds
    /// `[memfd, A, B]` and to the host process with `[memfd, B, A]` (always
    /// flags, the one the receiver waits on, the one it signals), both
    /// before performing the next action: the messages that follow name the
    /// link and must come after it. Then it drops its own copies: the host
    /// keeps no descriptor per link.
    ///
    /// If the descriptors cannot be created, the driver logs a warning and
    /// sends nothing. The server does not hear of it: channels between the
    /// two processes open on the host's side, but both endpoints fail them
    /// because the link is unknown to them, until one of the processes
    /// reconnects (a new pair gets a new link).
    CreateLink {
        /// The link's id (from 1, never reused).
        link: u64,
        /// The guest process: its socket gets the fds `[memfd, A, B]`.
        guest: ClientId,
        /// The host process: its socket gets the fds `[memfd, B, A]`.
        host: ClientId,
    },
    /// A `Stat` request: fill in ring fill levels and byte counters from the
    /// memfds, then send [`ExtEvent::Stat`] to the client.
    Stat {
        /// The requester.
        client: ClientId,
        /// The report, without fill levels and byte counters.
        report: StatReport,
        /// Each open channel's relid (as in [`ChannelInfo::relid`]), memfd
        /// and ring layout.
        rings: Vec<(u32, Arc<OwnedFd>, RingLayout)>,
    },
}

/// Tunables of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConfig {
    /// How long an offer may stay unopened before it is rescinded (30 s, as
    /// Linux's comments say Windows waits).
    pub offer_timeout: Duration,
    /// Newest VMBus version accepted.
    pub max_version: u32,
    /// Oldest VMBus version accepted (never below 4.0, hv_sock's minimum).
    pub min_version: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            offer_timeout: Duration::from_secs(30),
            max_version: VERSION_WIN10_V5_3,
            min_version: VERSION_WIN10,
        }
    }
}

/// Why a VM cannot be added or removed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VmError {
    /// The name has characters other than letters, digits, `-`, `_`, `.`,
    /// or is empty or longer than 64 bytes.
    #[error("invalid VM name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.'")]
    InvalidName {
        /// The name.
        name: String,
    },
    /// Another VM has that name.
    #[error("a VM named {name} already exists")]
    NameInUse {
        /// The name.
        name: String,
    },
    /// Another VM has that id.
    #[error("VM id {id} is already used by VM {name}")]
    IdInUse {
        /// The id.
        id: Guid,
        /// The VM that has it.
        name: String,
    },
    /// The id is one of the well-known Hyper-V ids, not a VM's.
    #[error("{id} is a well-known Hyper-V id (ZERO, BROADCAST, CHILDREN, LOOPBACK, PARENT, SILOHOST), not a VM id")]
    ReservedId {
        /// The id.
        id: Guid,
    },
    /// No VM has that name.
    #[error("no VM named {name}")]
    NoSuchVm {
        /// The name.
        name: String,
    },
}

/// Longest VM name.
pub const MAX_VM_NAME: usize = 64;

/// First port of the host endpoint ids of host-initiated connections.
pub const FIRST_HOST_PORT: u32 = 0x8000_0000;

/// The id [`Server::add_vm`] gives a VM named `name` when none is given:
/// stable across runs (a hash of the name), with the RFC 9562 "custom"
/// version (8) and variant bits set.
pub fn derived_vm_id(name: &str) -> Guid {
    let mut out = [0u8; 16];
    for (half, salt) in [(0usize, b"hvsock-vm-a:"), (1, b"hvsock-vm-b:")] {
        // FNV-1a, 64 bits, over salt and name.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in salt.iter().chain(name.as_bytes()) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        out[half * 8..half * 8 + 8].copy_from_slice(&h.to_le_bytes());
    }
    // Data3 is little-endian at bytes 6..8: its high nibble is byte 7's.
    out[7] = (out[7] & 0x0f) | 0x80;
    out[8] = (out[8] & 0x3f) | 0x80;
    Guid::from_bytes(out)
}

fn valid_vm_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_VM_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn is_reserved_id(id: Guid) -> bool {
    [
        Guid::ZERO,
        Guid::BROADCAST,
        Guid::CHILDREN,
        Guid::LOOPBACK,
        Guid::PARENT,
        Guid::SILOHOST,
    ]
    .contains(&id)
}

#[derive(Debug, Clone)]
struct Vm {
    name: String,
    id: Guid,
    cid: u32,
}

/// A guest client's VMBus session.
#[derive(Debug)]
struct GuestSession {
    vm: Guid,
    /// The agreed version, once INITIATE_CONTACT succeeded.
    version: Option<u32>,
    assembler: GpadlAssembler,
    /// Memfds of GPADLs still waiting for bodies: handle → (relid, memfd).
    pending_fds: HashMap<u32, (u32, OwnedFd)>,
    /// Created GPADLs: handle → relid.
    gpadls: HashMap<u32, u32>,
}

#[derive(Debug)]
struct Client {
    info: ClientInfo,
    /// `Some` for clients of a VM socket.
    guest: Option<GuestSession>,
}

/// Who asked for a channel.
#[derive(Debug, Clone, Copy)]
enum Origin {
    /// A guest's TL_CONNECT_REQUEST, routed to this host listener.
    Guest {
        listener: ClientId,
        listener_vm_id: Guid,
    },
    /// A host process's `HostConnect`.
    Host {
        requester: ClientId,
        request: u64,
        host_port: u32,
    },
}

impl Origin {
    fn host_client(&self) -> ClientId {
        match *self {
            Origin::Guest { listener, .. } => listener,
            Origin::Host { requester, .. } => requester,
        }
    }
}

/// A channel's state (PROTOCOL.md 6.1/6.2 from the host's side).
#[derive(Debug, Clone, Copy)]
enum ChannelState {
    /// Offered to the guest, not open yet (a GPADL may exist).
    Offered { deadline: Instant },
    /// Open: both endpoints have the rings.
    Open { conn: u64, layout: RingLayout },
    /// Rescinded: waiting for the guest's RELID_RELEASED.
    Rescinded,
}

#[derive(Debug)]
struct RingGpadl {
    handle: u32,
    pages: u32,
    memfd: Arc<OwnedFd>,
}

#[derive(Debug)]
struct Channel {
    vm: Guid,
    guest: ClientId,
    origin: Origin,
    if_type: Guid,
    if_instance: Guid,
    state: ChannelState,
    gpadl: Option<RingGpadl>,
    /// Why the guest's last OPENCHANNEL was refused, for the host process
    /// if the guest then gives the offer back.
    open_refused: Option<String>,
}

/// The emulated host. See the module docs for how to drive it.
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    vms: BTreeMap<String, Vm>,
    clients: HashMap<ClientId, Client>,
    channels: BTreeMap<u32, Channel>,
    /// Freed relids below `next_relid`.
    free_relids: BTreeSet<u32>,
    next_relid: u32,
    /// Deadlines of offered channels.
    deadlines: BTreeSet<(Instant, u32)>,
    /// Open channels by connection id.
    conns: HashMap<u64, u32>,
    next_conn: u64,
    /// Ports of host endpoint ids in use.
    host_ports: HashSet<u32>,
    next_host_port: u32,
    /// Host connects in progress: (client, request) → relid.
    host_connects: HashMap<(ClientId, u64), u32>,
    /// (service, VM filter) → listening host process.
    host_listeners: HashMap<(Guid, Guid), ClientId>,
    /// (VM, port) → listening guest process.
    guest_listeners: HashMap<(Guid, u32), ClientId>,
    /// Signal links: (guest process, host process) → link id.
    links: HashMap<(ClientId, ClientId), u64>,
    next_link: u64,
    /// The largest relid handed out: [`MAX_RELID`]; tests lower it to reach
    /// the limit cheaply.
    max_relid: u32,
    actions: VecDeque<Action>,
}

impl Server {
    /// A server with no VMs and no clients.
    pub fn new(config: ServerConfig) -> Self {
        Server {
            config,
            vms: BTreeMap::new(),
            clients: HashMap::new(),
            channels: BTreeMap::new(),
            free_relids: BTreeSet::new(),
            next_relid: 1,
            deadlines: BTreeSet::new(),
            conns: HashMap::new(),
            next_conn: 1,
            host_ports: HashSet::new(),
            next_host_port: FIRST_HOST_PORT,
            host_connects: HashMap::new(),
            host_listeners: HashMap::new(),
            guest_listeners: HashMap::new(),
            links: HashMap::new(),
            next_link: 1,
            max_relid: MAX_RELID,
            actions: VecDeque::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Adds a VM (id derived from the name when `None`, see
    /// [`derived_vm_id`]) and queues [`Action::VmAdded`].
    pub fn add_vm(&mut self, name: &str, id: Option<Guid>) -> Result<VmInfo, VmError> {
        if !valid_vm_name(name) {
            return Err(VmError::InvalidName { name: name.into() });
        }
        if self.vms.contains_key(name) {
            return Err(VmError::NameInUse { name: name.into() });
        }
        let id = id.unwrap_or_else(|| derived_vm_id(name));
        if is_reserved_id(id) {
            return Err(VmError::ReservedId { id });
        }
        if let Some(other) = self.vms.values().find(|vm| vm.id == id) {
            return Err(VmError::IdInUse {
                id,
                name: other.name.clone(),
            });
        }
        let used: HashSet<u32> = self.vms.values().map(|vm| vm.cid).collect();
        // At most as many CIDs are used as VMs exist, so one is free.
        let cid = (3..).find(|c| !used.contains(c)).unwrap_or(u32::MAX);
        let vm = Vm {
            name: name.into(),
            id,
            cid,
        };
        self.vms.insert(name.into(), vm);
        let info = self.vm_info_by_id(id).expect("just inserted");
        tracing::info!(vm = name, %id, cid, "VM added");
        self.actions.push_back(Action::VmAdded { vm: info.clone() });
        Ok(info)
    }

    /// Removes a VM: its channels end (host processes are told), its
    /// processes are disconnected, listeners filtering on it are dropped;
    /// queues [`Action::VmRemoved`].
    pub fn remove_vm(&mut self, name: &str) -> Result<VmInfo, VmError> {
        let Some(vm) = self.vms.get(name).cloned() else {
            return Err(VmError::NoSuchVm { name: name.into() });
        };
        let info = self.vm_info_by_id(vm.id).expect("the VM exists");
        let reason = format!("VM {name} was removed");
        let relids: Vec<u32> = self
            .channels
            .iter()
            .filter(|(_, ch)| ch.vm == vm.id)
            .map(|(r, _)| *r)
            .collect();
        for relid in relids {
            self.notify_host_end(relid, ConnectFailure::Refused, &reason);
            self.free_channel(relid);
        }
        let mut guests: Vec<ClientId> = self
            .clients
            .iter()
            .filter(|(_, c)| c.info.partition == Partition::Vm(vm.id))
            .map(|(id, _)| *id)
            .collect();
        guests.sort();
        for client in guests {
            self.disconnect(client, reason.clone());
        }
        self.host_listeners
            .retain(|(_, filter), _| *filter != vm.id);
        self.vms.remove(name);
        tracing::info!(vm = name, id = %vm.id, "VM removed");
        self.actions.push_back(Action::VmRemoved {
            name: vm.name,
            id: vm.id,
        });
        Ok(info)
    }

    /// The VMs, sorted by name.
    pub fn vms(&self) -> Vec<VmInfo> {
        self.vms
            .values()
            .filter_map(|vm| self.vm_info_by_id(vm.id))
            .collect()
    }

    /// The VM with this id.
    pub fn vm_by_id(&self, id: Guid) -> Option<VmInfo> {
        self.vm_info_by_id(id)
    }

    /// The VM with this name.
    pub fn vm_by_name(&self, name: &str) -> Option<VmInfo> {
        self.vms.get(name).and_then(|vm| self.vm_info_by_id(vm.id))
    }

    /// Number of channels the server knows (offered, open or rescinded and
    /// not yet released).
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Number of connected clients.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Takes one input.
    pub fn handle(&mut self, now: Instant, input: Input) {
        match input {
            Input::Connected { client, info } => self.connected(client, info),
            Input::Datagram { client, bytes, fds } => self.datagram(now, client, &bytes, fds),
            Input::Gone { client } => {
                if self.clients.contains_key(&client) {
                    tracing::info!(client = client.0, "client gone");
                    self.remove_client(client);
                }
            }
        }
    }

    /// Rescinds every offer whose deadline is at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(deadline, relid)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.remove(&(deadline, relid));
            let offered = matches!(
                self.channels.get(&relid).map(|ch| ch.state),
                Some(ChannelState::Offered { deadline: d }) if d == deadline
            );
            if offered {
                let reason = format!(
                    "the guest did not open the channel within {} s",
                    self.config.offer_timeout.as_secs_f64()
                );
                tracing::info!(relid, "offer timed out");
                self.notify_host_end(relid, ConnectFailure::TimedOut, &reason);
                self.rescind(relid);
            }
        }
    }

    /// When [`Server::handle_timeout`] next has something to do.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.deadlines.first().map(|(deadline, _)| *deadline)
    }

    /// The next action to perform, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    // ---- clients ----

    fn connected(&mut self, client: ClientId, info: ClientInfo) {
        if self.clients.contains_key(&client) {
            self.disconnect(client, "the driver reused a live client id".into());
            return;
        }
        let guest = match info.partition {
            Partition::Root => None,
            Partition::Vm(id) => {
                if self.vm_info_by_id(id).is_none() {
                    self.actions.push_back(Action::Disconnect {
                        client,
                        reason: format!("no VM has id {id}"),
                    });
                    return;
                }
                Some(GuestSession {
                    vm: id,
                    version: None,
                    assembler: GpadlAssembler::new(),
                    pending_fds: HashMap::new(),
                    gpadls: HashMap::new(),
                })
            }
        };
        tracing::info!(client = client.0, pid = info.pid, partition = ?info.partition, "client connected");
        self.clients.insert(client, Client { info, guest });
    }

    /// Forgets a client and queues [`Action::Disconnect`].
    fn disconnect(&mut self, client: ClientId, reason: String) {
        if !self.clients.contains_key(&client) {
            return;
        }
        tracing::warn!(client = client.0, "disconnecting client: {reason}");
        self.remove_client(client);
        self.actions
            .push_back(Action::Disconnect { client, reason });
    }

    /// Everything that happens when a client goes away.
    fn remove_client(&mut self, client: ClientId) {
        let Some(gone) = self.clients.remove(&client) else {
            return;
        };
        self.host_listeners.retain(|_, c| *c != client);
        self.guest_listeners.retain(|_, c| *c != client);
        let relids: Vec<u32> = self
            .channels
            .iter()
            .filter(|(_, ch)| ch.guest == client || ch.origin.host_client() == client)
            .map(|(r, _)| *r)
            .collect();
        let why = if gone.guest.is_some() {
            "the guest process is gone"
        } else {
            "the host process is gone"
        };
        for relid in relids {
            let Some(ch) = self.channels.get(&relid) else {
                continue;
            };
            if ch.guest == client {
                // The guest's relids die with it.
                self.notify_host_end(relid, ConnectFailure::Refused, why);
                self.free_channel(relid);
            } else {
                self.rescind(relid);
            }
        }
        self.host_connects.retain(|(c, _), _| *c != client);
        self.close_links(client);
    }

    /// Drops every link `client` is part of and tells the other process of
    /// each. Runs after the client's channels have ended, so that nothing
    /// names a link after its LinkClosed.
    fn close_links(&mut self, client: ClientId) {
        let mut closed: Vec<(u64, ClientId)> = self
            .links
            .iter()
            .filter_map(|(&(guest, host), &link)| {
                if guest == client {
                    Some((link, host))
                } else if host == client {
                    Some((link, guest))
                } else {
                    None
                }
            })
            .collect();
        if closed.is_empty() {
            return;
        }
        self.links
            .retain(|(guest, host), _| *guest != client && *host != client);
        // Link order, not the map's, so that the actions are reproducible.
        closed.sort_unstable();
        for (link, other) in closed {
            tracing::debug!(link, client = client.0, other = other.0, "link closed");
            self.send_event(other, &ExtEvent::LinkClosed { link }, Vec::new());
        }
    }

    /// The link between `guest` and `host`, created (and
    /// [`Action::CreateLink`] queued) if they have none yet.
    fn link_for(&mut self, guest: ClientId, host: ClientId) -> u64 {
        if let Some(&link) = self.links.get(&(guest, host)) {
            return link;
        }
        let link = self.next_link;
        self.next_link += 1;
        self.links.insert((guest, host), link);
        tracing::debug!(link, guest = guest.0, host = host.0, "link created");
        self.actions
            .push_back(Action::CreateLink { link, guest, host });
        link
    }

    fn send_message(&mut self, client: ClientId, message: &Message) {
        tracing::debug!(client = client.0, "send {}", message.message_type());
        self.send(client, message.encode(), Vec::new());
    }

    fn send_event(&mut self, client: ClientId, event: &ExtEvent, fds: Vec<Arc<OwnedFd>>) {
        tracing::debug!(client = client.0, ?event, "send event");
        self.send(client, encode_ext(event), fds);
    }

    fn send(&mut self, client: ClientId, bytes: Vec<u8>, fds: Vec<Arc<OwnedFd>>) {
        // Nothing goes to clients that are gone.
        if self.clients.contains_key(&client) {
            self.actions.push_back(Action::Send { client, bytes, fds });
        }
    }

    fn datagram(&mut self, now: Instant, client: ClientId, bytes: &[u8], fds: Vec<OwnedFd>) {
        let Some(c) = self.clients.get(&client) else {
            // A datagram that crossed the client's disconnection.
            return;
        };
        let is_guest = c.guest.is_some();
        let decoded = match Datagram::<ExtRequest>::decode(bytes) {
            Ok(d) => d,
            Err(e) => {
                self.disconnect(client, format!("undecodable datagram: {e}"));
                return;
            }
        };
        match decoded {
            Datagram::Vmbus(message) if is_guest => self.vmbus(now, client, message, fds),
            Datagram::Vmbus(message) => self.disconnect(
                client,
                format!(
                    "a host-socket client sent the VMBus message {}; only guests speak VMBus",
                    message.message_type()
                ),
            ),
            Datagram::Ext(request) => {
                if !fds.is_empty() {
                    self.disconnect(
                        client,
                        format!(
                            "extension request {} came with {} file descriptors; none belong to it",
                            request_name(&request),
                            fds.len()
                        ),
                    );
                    return;
                }
                tracing::debug!(client = client.0, ?request, "request");
                if is_guest {
                    self.guest_request(client, request);
                } else {
                    self.host_request(now, client, request);
                }
            }
        }
    }

    // ---- VMBus (guest clients) ----

    fn session(&mut self, client: ClientId) -> Option<&mut GuestSession> {
        self.clients.get_mut(&client).and_then(|c| c.guest.as_mut())
    }

    fn vmbus(&mut self, now: Instant, client: ClientId, message: Message, mut fds: Vec<OwnedFd>) {
        let ty = message.message_type();
        tracing::debug!(client = client.0, "received {ty}");
        let expected = match message {
            Message::GpadlHeader(_) => 1,
            _ => 0,
        };
        if fds.len() != expected {
            // OPENCHANNEL carried two eventfds in an older version of this
            // protocol: say where signals went, for a client built against it.
            let hint = if matches!(message, Message::OpenChannel(_)) {
                " (signals travel over the link the host creates for each pair of processes, not with OPENCHANNEL)"
            } else {
                ""
            };
            self.disconnect(
                client,
                format!(
                    "{ty} came with {} file descriptors; it must carry {expected}{hint}",
                    fds.len()
                ),
            );
            return;
        }
        let Some(session) = self.session(client) else {
            return;
        };
        let version = session.version;
        match message {
            Message::InitiateContact(ic) => {
                if let Some(v) = version {
                    self.disconnect(
                        client,
                        format!("INITIATE_CONTACT after version {v:#x} was agreed"),
                    );
                    return;
                }
                self.initiate_contact(client, ic.vmbus_version_requested);
            }
            _ if version.is_none() => self.disconnect(
                client,
                format!("{ty} before a VMBus version was agreed (INITIATE_CONTACT comes first)"),
            ),
            Message::RequestOffers => {
                self.send_message(client, &Message::AllOffersDelivered);
                let features = vec![crate::ext::FEATURE_PIPELINED_OPEN.to_string()];
                self.send_event(client, &ExtEvent::HostFeatures { features }, Vec::new());
            }
            Message::Unload => self.unload(client),
            Message::TlConnectRequest(request) => {
                self.tl_connect(now, client, version.unwrap_or(0), request)
            }
            Message::GpadlHeader(header) => {
                // `expected` above guarantees exactly one.
                if let Some(fd) = fds.pop() {
                    self.gpadl_header(client, &header, fd);
                }
            }
            Message::GpadlBody(body) => self.gpadl_body(client, &body),
            Message::GpadlTeardown { child_relid, gpadl } => {
                self.gpadl_teardown(client, child_relid, gpadl)
            }
            Message::OpenChannel(open) => self.open_channel(client, &open),
            Message::CloseChannel { child_relid } => self.close_channel(client, child_relid),
            Message::RelidReleased { child_relid } => self.relid_released(client, child_relid),
            other => self.disconnect(
                client,
                format!(
                    "{} is a host-to-guest message; a guest must not send it",
                    other.message_type()
                ),
            ),
        }
    }

    fn initiate_contact(&mut self, client: ClientId, requested: u32) {
        let min = self.config.min_version.max(VERSION_WIN10);
        let accepted = (min..=self.config.max_version).contains(&requested);
        let response = VersionResponse {
            version_supported: accepted,
            connection_state: CONNECTION_STATE_SUCCESSFUL,
            msg_conn_id: if accepted && requested >= VERSION_WIN10_V5 {
                MESSAGE_CONNECTION_ID
            } else {
                0
            },
            ext: if accepted && requested >= VERSION_COPPER {
                VersionResponseExt::Features {
                    supported_features: 0,
                }
            } else {
                VersionResponseExt::None
            },
        };
        if accepted {
            tracing::info!(client = client.0, "VMBus version {requested:#x} agreed");
            if let Some(session) = self.session(client) {
                session.version = Some(requested);
            }
        } else {
            tracing::debug!(client = client.0, "VMBus version {requested:#x} refused");
        }
        self.send_message(client, &Message::VersionResponse(response));
    }

    fn unload(&mut self, client: ClientId) {
        let relids: Vec<u32> = self
            .channels
            .iter()
            .filter(|(_, ch)| ch.guest == client)
            .map(|(r, _)| *r)
            .collect();
        for relid in relids {
            self.notify_host_end(relid, ConnectFailure::Refused, "the guest unloaded VMBus");
            let rescinded = matches!(
                self.channels.get(&relid).map(|c| c.state),
                Some(ChannelState::Rescinded)
            );
            if !rescinded {
                self.send_message(client, &Message::RescindChannelOffer { child_relid: relid });
            }
            self.free_channel(relid);
        }
        if let Some(session) = self.session(client) {
            session.version = None;
            session.assembler = GpadlAssembler::new();
            session.pending_fds.clear();
            session.gpadls.clear();
        }
        tracing::info!(client = client.0, "guest unloaded VMBus");
        self.send_message(client, &Message::UnloadResponse);
    }

    fn tl_connect(&mut self, now: Instant, client: ClientId, version: u32, req: TlConnectRequest) {
        let Some(vm) = self.session(client).map(|s| s.vm) else {
            return;
        };
        let endpoint_busy = self.channels.values().any(|ch| {
            ch.vm == vm
                && matches!(ch.origin, Origin::Guest { .. })
                && ch.if_instance == req.guest_endpoint_id
                && !matches!(ch.state, ChannelState::Rescinded)
        });
        let listener = [vm, Guid::ZERO, Guid::CHILDREN]
            .into_iter()
            .find_map(|filter| {
                self.host_listeners
                    .get(&(req.host_service_id, filter))
                    .map(|c| (*c, filter))
            });
        let accepted = match listener {
            _ if endpoint_busy => Err("the guest endpoint is already connected".to_string()),
            None => Err("no host process listens on that service".to_string()),
            Some(listener) => match self.alloc_relid() {
                Some(relid) => Ok((listener, relid)),
                None => Err(self.no_relid_reason()),
            },
        };
        let ((listener, listener_vm_id), relid) = match accepted {
            Ok(ok) => ok,
            Err(why) => {
                tracing::info!(
                    client = client.0,
                    service = %req.host_service_id,
                    endpoint = %req.guest_endpoint_id,
                    "guest connect refused: {why}"
                );
                // TL_CONNECT_RESULT exists from 4.1 on; older guests time out.
                if version >= VERSION_WIN10_V4_1 {
                    self.send_message(
                        client,
                        &Message::TlConnectResult(TlConnectResult {
                            endpoint_id: req.guest_endpoint_id,
                            service_id: req.host_service_id,
                            status: STATUS_CONNECTION_REFUSED,
                        }),
                    );
                }
                return;
            }
        };
        self.offer(
            now,
            relid,
            Channel {
                vm,
                guest: client,
                origin: Origin::Guest {
                    listener,
                    listener_vm_id,
                },
                if_type: req.host_service_id,
                if_instance: req.guest_endpoint_id,
                state: ChannelState::Rescinded,
                gpadl: None,
                open_refused: None,
            },
        );
    }

    /// Records a channel as offered and sends its OFFERCHANNEL.
    fn offer(&mut self, now: Instant, relid: u32, mut channel: Channel) {
        let deadline = now + self.config.offer_timeout;
        channel.state = ChannelState::Offered { deadline };
        let params = HvsockParams {
            pipe_mode: PIPE_MODE_BYTE,
            is_for_guest_accept: matches!(channel.origin, Origin::Host { .. }),
            is_for_guest_container: false,
            version: HVSOCK_PARAMS_VERSION_RS5,
            silo_id: Guid::ZERO,
        };
        let offer = OfferChannel::hvsock(relid, channel.if_type, channel.if_instance, &params);
        let guest = channel.guest;
        tracing::debug!(
            relid,
            guest = guest.0,
            if_type = %channel.if_type,
            if_instance = %channel.if_instance,
            from_host = params.is_for_guest_accept,
            "channel offered"
        );
        self.channels.insert(relid, channel);
        self.deadlines.insert((deadline, relid));
        self.send_message(guest, &Message::OfferChannel(offer));
    }

    /// The lowest free relid, or `None` when all of `1..=max_relid` are
    /// taken (a relid above [`MAX_RELID`] would have no bit in a link's
    /// bitmaps).
    fn alloc_relid(&mut self) -> Option<u32> {
        if let Some(relid) = self.free_relids.pop_first() {
            return Some(relid);
        }
        let relid = self.next_relid;
        if relid > self.max_relid {
            return None;
        }
        self.next_relid += 1;
        Some(relid)
    }

    /// Why [`Server::alloc_relid`] found nothing, for logs and refusals.
    fn no_relid_reason(&self) -> String {
        format!(
            "no relid is free: all {} channels the host can hold are in use",
            self.max_relid
        )
    }

    fn gpadl_header(&mut self, client: ClientId, header: &GpadlHeader, fd: OwnedFd) {
        let Some(session) = self.session(client) else {
            return;
        };
        // Refused now, not when the last body comes: the event loop holds
        // its own copy of any other kind of descriptor only while this
        // datagram is handled, and a descriptor parked here and dropped
        // later (a socket lingering on close) would be closed for the last
        // time on the loop's thread, stalling every VM.
        if !hvsock_shm::is_memfd(&fd) {
            tracing::warn!(
                client = client.0,
                "GPADL {:#x} refused: its descriptor is not a memfd",
                header.gpadl()
            );
            self.gpadl_created(client, header.child_relid(), header.gpadl(), false);
            return;
        }
        match session.assembler.header(header) {
            Ok(Some(gpadl)) => self.gpadl_complete(client, gpadl, fd),
            Ok(None) => {
                session
                    .pending_fds
                    .insert(header.gpadl(), (header.child_relid(), fd));
            }
            Err(e) => {
                tracing::warn!(client = client.0, "GPADL refused: {e}");
                self.gpadl_created(client, header.child_relid(), header.gpadl(), false);
            }
        }
    }

    fn gpadl_body(&mut self, client: ClientId, body: &GpadlBody) {
        let Some(session) = self.session(client) else {
            return;
        };
        match session.assembler.body(body) {
            Ok(None) => {}
            Ok(Some(gpadl)) => {
                if let Some((_, fd)) = session.pending_fds.remove(&gpadl.gpadl) {
                    self.gpadl_complete(client, gpadl, fd);
                }
            }
            Err(e) => {
                // The GPADL in progress (if any) is dropped with its memfd.
                // A body for an unknown handle can follow a header that was
                // refused at once; it is ignored.
                let dropped = session.pending_fds.remove(&body.gpadl());
                tracing::warn!(client = client.0, "GPADL_BODY refused: {e}");
                if let Some((relid, _)) = dropped {
                    self.gpadl_created(client, relid, body.gpadl(), false);
                }
            }
        }
    }

    fn gpadl_created(&mut self, client: ClientId, child_relid: u32, gpadl: u32, ok: bool) {
        self.send_message(
            client,
            &Message::GpadlCreated {
                child_relid,
                gpadl,
                creation_status: if ok {
                    STATUS_SUCCESS
                } else {
                    STATUS_UNSUCCESSFUL
                },
            },
        );
    }

    fn gpadl_complete(&mut self, client: ClientId, gpadl: Gpadl, fd: OwnedFd) {
        let (relid, handle) = (gpadl.child_relid, gpadl.gpadl);
        match self.check_gpadl(client, &gpadl, fd) {
            Ok((pages, memfd)) => {
                if let Some(ch) = self.channels.get_mut(&relid) {
                    ch.gpadl = Some(RingGpadl {
                        handle,
                        pages,
                        memfd: Arc::new(memfd),
                    });
                }
                if let Some(session) = self.session(client) {
                    session.gpadls.insert(handle, relid);
                }
                tracing::debug!(
                    client = client.0,
                    relid,
                    "GPADL {handle:#x} created, {pages} pages"
                );
                self.gpadl_created(client, relid, handle, true);
            }
            Err(why) => {
                tracing::warn!(client = client.0, relid, "GPADL {handle:#x} refused: {why}");
                self.gpadl_created(client, relid, handle, false);
            }
        }
    }

    /// Validates a complete GPADL and its memfd; returns pages and memfd.
    fn check_gpadl(
        &mut self,
        client: ClientId,
        gpadl: &Gpadl,
        fd: OwnedFd,
    ) -> Result<(u32, OwnedFd), String> {
        let relid = gpadl.child_relid;
        let ch = self
            .channels
            .get(&relid)
            .filter(|ch| ch.guest == client)
            .ok_or_else(|| format!("relid {relid} is not offered to this guest"))?;
        if !matches!(ch.state, ChannelState::Offered { .. }) {
            return Err(format!("channel {relid} is rescinded or already open"));
        }
        if ch.gpadl.is_some() {
            return Err(format!("channel {relid} already has a GPADL"));
        }
        let in_use = self
            .clients
            .get(&client)
            .and_then(|c| c.guest.as_ref())
            .is_some_and(|s| s.gpadls.contains_key(&gpadl.gpadl));
        if in_use {
            return Err(format!("handle {:#x} is already in use", gpadl.gpadl));
        }
        let pages = gpadl.pfns.len();
        if gpadl.byte_offset != 0 || u64::from(gpadl.byte_count) != (pages * PAGE_SIZE) as u64 {
            return Err(format!(
                "the range must start at offset 0 and cover whole pages ({} bytes at {} for {pages} pages)",
                gpadl.byte_count, gpadl.byte_offset
            ));
        }
        if let Some((i, pfn)) = gpadl
            .pfns
            .iter()
            .enumerate()
            .find(|(i, pfn)| **pfn != *i as u64)
        {
            return Err(format!(
                "page {i} has PFN {pfn:#x}; page i of the memfd must be PFN i"
            ));
        }
        let memory = hvsock_shm::SharedMemory::from_fd(fd, pages * PAGE_SIZE)
            .map_err(|e| format!("the memfd is unusable: {e}"))?;
        let pages = u32::try_from(pages).map_err(|_| "too many pages".to_string())?;
        Ok((pages, memory.into_fd()))
    }

    fn gpadl_teardown(&mut self, client: ClientId, relid: u32, handle: u32) {
        let Some(session) = self.session(client) else {
            return;
        };
        if session.gpadls.get(&handle) == Some(&relid) {
            session.gpadls.remove(&handle);
            if let Some(ChannelState::Open { .. }) = self.channels.get(&relid).map(|c| c.state) {
                // Tearing down the rings of an open channel closes it.
                self.notify_host_end(
                    relid,
                    ConnectFailure::Refused,
                    "the guest tore down the channel's rings",
                );
                self.rescind(relid);
            }
            if let Some(ch) = self.channels.get_mut(&relid) {
                ch.gpadl = None;
            }
        } else if session.pending_fds.get(&handle).map(|(r, _)| *r) == Some(relid) {
            session.pending_fds.remove(&handle);
            session.assembler.cancel(handle);
        } else {
            self.disconnect(
                client,
                format!(
                    "GPADL_TEARDOWN of GPADL {handle:#x} on relid {relid}, which this guest has not created"
                ),
            );
            return;
        }
        self.send_message(client, &Message::GpadlTorndown { gpadl: handle });
    }

    /// The channel `relid` if it was offered to `client`; disconnects the
    /// client otherwise.
    fn own_channel(&mut self, client: ClientId, relid: u32, what: &str) -> Option<ChannelState> {
        match self.channels.get(&relid) {
            Some(ch) if ch.guest == client => Some(ch.state),
            _ => {
                self.disconnect(
                    client,
                    format!("{what} for relid {relid}, which is not offered to this guest"),
                );
                None
            }
        }
    }

    fn open_channel(&mut self, client: ClientId, open: &OpenChannel) {
        let relid = open.child_relid;
        let Some(state) = self.own_channel(client, relid, "OPENCHANNEL") else {
            return;
        };
        let result = |status| Message::OpenChannelResult {
            child_relid: relid,
            openid: open.openid,
            status,
        };
        match state {
            ChannelState::Rescinded => {
                tracing::debug!(relid, "OPENCHANNEL after rescind ignored");
                return;
            }
            ChannelState::Open { .. } => {
                tracing::warn!(relid, "OPENCHANNEL on an open channel refused");
                self.send_message(client, &result(STATUS_UNSUCCESSFUL));
                return;
            }
            ChannelState::Offered { .. } => {}
        }
        let Some(ch) = self.channels.get(&relid) else {
            return;
        };
        let checked = match &ch.gpadl {
            None => Err("the channel has no GPADL".to_string()),
            Some(g) if g.handle != open.ringbuffer_gpadlhandle => Err(format!(
                "GPADL {:#x} is not this channel's ({:#x})",
                open.ringbuffer_gpadlhandle, g.handle
            )),
            Some(g) => {
                let split = open.downstream_ringbuffer_pageoffset;
                if split < 2 || split >= g.pages || g.pages - split < 2 {
                    Err(format!(
                        "ring split at page {split} of {} pages: each ring needs at least 2 pages",
                        g.pages
                    ))
                } else {
                    Ok((
                        RingLayout {
                            total_pages: g.pages,
                            guest_to_host_pages: split,
                        },
                        g.memfd.clone(),
                    ))
                }
            }
        };
        let (layout, memfd) = match checked {
            Ok(ok) => ok,
            Err(why) => {
                tracing::warn!(client = client.0, relid, "OPENCHANNEL refused: {why}");
                if let Some(ch) = self.channels.get_mut(&relid) {
                    ch.open_refused = Some(why);
                }
                self.send_message(client, &result(STATUS_UNSUCCESSFUL));
                return;
            }
        };
        let conn = self.next_conn;
        self.next_conn += 1;
        let Some(ch) = self.channels.get_mut(&relid) else {
            return;
        };
        if let ChannelState::Offered { deadline } = ch.state {
            self.deadlines.remove(&(deadline, relid));
        }
        ch.state = ChannelState::Open { conn, layout };
        let (vm, origin, if_type, if_instance) = (ch.vm, ch.origin, ch.if_type, ch.if_instance);
        self.conns.insert(conn, relid);
        // The link first (a CreateLink if the pair has none), then every
        // message that names it: the guest learns it before its result.
        let link = self.link_for(client, origin.host_client());
        tracing::debug!(relid, conn, link, "channel open");
        self.send_event(client, &ExtEvent::ChannelLink { relid, link }, Vec::new());
        self.send_message(client, &result(STATUS_SUCCESS));
        let fds = vec![memfd];
        match origin {
            Origin::Guest {
                listener,
                listener_vm_id,
            } => self.send_event(
                listener,
                &ExtEvent::HostIncoming {
                    conn,
                    relid,
                    link,
                    service_id: if_type,
                    listener_vm_id,
                    vm_id: vm,
                    endpoint_id: if_instance,
                    layout,
                },
                fds,
            ),
            Origin::Host {
                requester, request, ..
            } => {
                self.host_connects.remove(&(requester, request));
                self.send_event(
                    requester,
                    &ExtEvent::HostConnected {
                        request,
                        conn,
                        relid,
                        link,
                        vm_id: vm,
                        endpoint_id: if_instance,
                        layout,
                    },
                    fds,
                );
            }
        }
    }

    fn close_channel(&mut self, client: ClientId, relid: u32) {
        match self.own_channel(client, relid, "CLOSECHANNEL") {
            Some(ChannelState::Open { .. }) => {
                tracing::debug!(relid, "guest closed the channel");
                self.notify_host_end(
                    relid,
                    ConnectFailure::Refused,
                    "the guest closed the connection",
                );
                self.rescind(relid);
            }
            Some(_) => tracing::debug!(relid, "CLOSECHANNEL on a channel that is not open ignored"),
            None => {}
        }
    }

    fn relid_released(&mut self, client: ClientId, relid: u32) {
        match self.own_channel(client, relid, "RELID_RELEASED") {
            Some(ChannelState::Offered { .. }) => {
                tracing::info!(relid, "guest released an unopened offer (refused)");
                let why = match self
                    .channels
                    .get(&relid)
                    .and_then(|c| c.open_refused.as_ref())
                {
                    Some(why) => format!("the guest's open of the channel failed: {why}"),
                    None => {
                        "the guest refused the connection (no listener, or its backlog is full)"
                            .to_string()
                    }
                };
                self.notify_host_end(relid, ConnectFailure::Refused, &why);
                self.free_channel(relid);
            }
            Some(ChannelState::Open { .. }) => {
                self.notify_host_end(
                    relid,
                    ConnectFailure::Refused,
                    "the guest released the channel",
                );
                self.free_channel(relid);
            }
            Some(ChannelState::Rescinded) => {
                tracing::debug!(relid, "relid released");
                self.free_channel(relid);
            }
            None => {}
        }
    }

    // ---- channel endings ----

    /// Tells the host process of `relid` that the channel ends, unless it
    /// is already rescinded (then it was told before).
    /// Open channels give HostRevoked, host connects in progress
    /// HostConnectFailed with `failure`.
    fn notify_host_end(&mut self, relid: u32, failure: ConnectFailure, reason: &str) {
        let Some(ch) = self.channels.get(&relid) else {
            return;
        };
        let (state, origin) = (ch.state, ch.origin);
        match (state, origin) {
            (ChannelState::Open { conn, .. }, _) => {
                let host = origin.host_client();
                self.send_event(
                    host,
                    &ExtEvent::HostRevoked {
                        conn,
                        reason: reason.into(),
                    },
                    Vec::new(),
                );
            }
            (
                ChannelState::Offered { .. },
                Origin::Host {
                    requester, request, ..
                },
            ) => {
                self.host_connects.remove(&(requester, request));
                self.send_event(
                    requester,
                    &ExtEvent::HostConnectFailed {
                        request,
                        failure,
                        message: reason.into(),
                    },
                    Vec::new(),
                );
            }
            _ => {}
        }
    }

    /// Rescinds a channel (RESCIND_CHANNELOFFER to its guest); the relid
    /// stays taken until the guest releases it.
    fn rescind(&mut self, relid: u32) {
        let Some(ch) = self.channels.get_mut(&relid) else {
            return;
        };
        match ch.state {
            ChannelState::Rescinded => return,
            ChannelState::Offered { deadline } => {
                self.deadlines.remove(&(deadline, relid));
            }
            ChannelState::Open { conn, .. } => {
                self.conns.remove(&conn);
            }
        }
        ch.state = ChannelState::Rescinded;
        if let Origin::Host {
            requester, request, ..
        } = ch.origin
        {
            self.host_connects.remove(&(requester, request));
        }
        let guest = ch.guest;
        tracing::debug!(relid, "channel rescinded");
        if let Some(session) = self.session(guest) {
            session.assembler.cancel_channel(relid);
            session.pending_fds.retain(|_, (r, _)| *r != relid);
        }
        self.send_message(guest, &Message::RescindChannelOffer { child_relid: relid });
    }

    /// Forgets a channel; its relid is free again.
    fn free_channel(&mut self, relid: u32) {
        let Some(ch) = self.channels.remove(&relid) else {
            return;
        };
        match ch.state {
            ChannelState::Offered { deadline } => {
                self.deadlines.remove(&(deadline, relid));
            }
            ChannelState::Open { conn, .. } => {
                self.conns.remove(&conn);
            }
            ChannelState::Rescinded => {}
        }
        if let Origin::Host {
            requester,
            request,
            host_port,
        } = ch.origin
        {
            self.host_ports.remove(&host_port);
            if self.host_connects.get(&(requester, request)) == Some(&relid) {
                self.host_connects.remove(&(requester, request));
            }
        }
        if let Some(session) = self.session(ch.guest) {
            session.assembler.cancel_channel(relid);
            session.pending_fds.retain(|_, (r, _)| *r != relid);
            session.gpadls.retain(|_, r| *r != relid);
        }
        if relid + 1 == self.next_relid {
            self.next_relid = relid;
            // Fold freed relids at the top back into the counter.
            while let Some(&last) = self.free_relids.last() {
                if last + 1 != self.next_relid {
                    break;
                }
                self.free_relids.pop_last();
                self.next_relid = last;
            }
        } else {
            self.free_relids.insert(relid);
        }
        tracing::debug!(relid, "relid free");
    }

    // ---- extension requests ----

    fn guest_request(&mut self, client: ClientId, request: ExtRequest) {
        let Some(vm) = self.session(client).map(|s| s.vm) else {
            return;
        };
        match request {
            ExtRequest::GuestListen { port } => {
                let error = match self.guest_listeners.get(&(vm, port)) {
                    Some(owner) if *owner != client => {
                        let pid = self.clients.get(owner).map_or(0, |c| c.info.pid);
                        Some(format!(
                            "vsock port {port} of this VM is in use by process {pid}"
                        ))
                    }
                    _ => {
                        self.guest_listeners.insert((vm, port), client);
                        None
                    }
                };
                self.send_event(
                    client,
                    &ExtEvent::GuestListenResult { port, error },
                    Vec::new(),
                );
            }
            ExtRequest::GuestUnlisten { port } => {
                if self.guest_listeners.get(&(vm, port)) == Some(&client) {
                    self.guest_listeners.remove(&(vm, port));
                }
            }
            ExtRequest::VmList => {
                let vms = self.vm_info_by_id(vm).into_iter().collect();
                self.send_event(client, &ExtEvent::VmList { vms }, Vec::new());
            }
            ExtRequest::VmAdd { .. } | ExtRequest::VmRemove { .. } | ExtRequest::Stat => {
                self.send_event(
                    client,
                    &ExtEvent::Refused {
                        reason: format!(
                            "{} is only allowed on the host socket, not from a VM",
                            request_name(&request)
                        ),
                    },
                    Vec::new(),
                );
            }
            ExtRequest::HostListen { .. }
            | ExtRequest::HostUnlisten { .. }
            | ExtRequest::HostConnect { .. }
            | ExtRequest::HostCancel { .. }
            | ExtRequest::HostClose { .. } => self.disconnect(
                client,
                format!(
                    "{} is a host request; a VM's process must not send it",
                    request_name(&request)
                ),
            ),
        }
    }

    fn host_request(&mut self, now: Instant, client: ClientId, request: ExtRequest) {
        match request {
            ExtRequest::HostListen { service_id, vm_id } => {
                let error = if !(vm_id == Guid::ZERO
                    || vm_id == Guid::CHILDREN
                    || self.vm_info_by_id(vm_id).is_some())
                {
                    Some(format!(
                        "no VM has id {vm_id} (listen on a VM's id, ZERO or CHILDREN)"
                    ))
                } else {
                    match self.host_listeners.get(&(service_id, vm_id)) {
                        Some(owner) if *owner != client => {
                            let pid = self.clients.get(owner).map_or(0, |c| c.info.pid);
                            Some(format!(
                                "service {service_id} for VM {vm_id} is in use by process {pid}"
                            ))
                        }
                        _ => {
                            self.host_listeners.insert((service_id, vm_id), client);
                            None
                        }
                    }
                };
                self.send_event(
                    client,
                    &ExtEvent::HostListenResult {
                        service_id,
                        vm_id,
                        error,
                    },
                    Vec::new(),
                );
            }
            ExtRequest::HostUnlisten { service_id, vm_id } => {
                if self.host_listeners.get(&(service_id, vm_id)) == Some(&client) {
                    self.host_listeners.remove(&(service_id, vm_id));
                }
            }
            ExtRequest::HostConnect {
                request,
                vm_id,
                vm_name,
                service_id,
            } => self.host_connect(now, client, request, vm_id, vm_name, service_id),
            ExtRequest::HostCancel { request } => {
                if let Some(relid) = self.host_connects.remove(&(client, request)) {
                    tracing::info!(relid, request, "host connect cancelled");
                    self.rescind(relid);
                }
            }
            ExtRequest::HostClose { conn } => {
                let relid = self.conns.get(&conn).copied();
                match relid.and_then(|r| self.channels.get(&r).map(|ch| (r, ch))) {
                    Some((relid, ch)) if ch.origin.host_client() == client => {
                        tracing::debug!(relid, conn, "host closed the connection");
                        self.rescind(relid);
                    }
                    _ => tracing::debug!(conn, "HostClose of a connection already gone"),
                }
            }
            ExtRequest::VmAdd { name, id } => {
                let event = match self.add_vm(&name, id) {
                    Ok(vm) => ExtEvent::VmResult {
                        vm: Some(vm),
                        error: None,
                    },
                    Err(e) => ExtEvent::VmResult {
                        vm: None,
                        error: Some(e.to_string()),
                    },
                };
                self.send_event(client, &event, Vec::new());
            }
            ExtRequest::VmRemove { name } => {
                let event = match self.remove_vm(&name) {
                    Ok(vm) => ExtEvent::VmResult {
                        vm: Some(vm),
                        error: None,
                    },
                    Err(e) => ExtEvent::VmResult {
                        vm: None,
                        error: Some(e.to_string()),
                    },
                };
                self.send_event(client, &event, Vec::new());
            }
            ExtRequest::VmList => {
                let vms = self.vms();
                self.send_event(client, &ExtEvent::VmList { vms }, Vec::new());
            }
            ExtRequest::Stat => {
                let (report, rings) = self.stat();
                self.actions.push_back(Action::Stat {
                    client,
                    report,
                    rings,
                });
            }
            ExtRequest::GuestListen { .. } | ExtRequest::GuestUnlisten { .. } => self.disconnect(
                client,
                format!(
                    "{} is a guest request; a host-socket client must not send it",
                    request_name(&request)
                ),
            ),
        }
    }

    fn host_connect(
        &mut self,
        now: Instant,
        client: ClientId,
        request: u64,
        vm_id: Guid,
        vm_name: Option<String>,
        service_id: Guid,
    ) {
        let fail = |server: &mut Self, failure, message: String| {
            tracing::info!(client = client.0, request, "host connect failed: {message}");
            server.send_event(
                client,
                &ExtEvent::HostConnectFailed {
                    request,
                    failure,
                    message,
                },
                Vec::new(),
            );
        };
        if self.host_connects.contains_key(&(client, request)) {
            let message = format!("request id {request} is already in progress");
            return fail(self, ConnectFailure::Invalid, message);
        }
        let vm = match &vm_name {
            Some(name) => self.vms.get(name).map(|vm| vm.id),
            None => self.vm_info_by_id(vm_id).map(|vm| vm.id),
        };
        let Some(vm) = vm else {
            let what = vm_name.unwrap_or_else(|| vm_id.to_string());
            return fail(self, ConnectFailure::NoSuchVm, format!("no VM {what}"));
        };
        let Some(port) = service_id.vsock_port() else {
            let message = format!(
                "service {service_id} is not a vsock port's id (xxxxxxxx-facb-11e6-bd58-64006a7986d3); no guest can listen on it"
            );
            return fail(self, ConnectFailure::Refused, message);
        };
        let Some(&guest) = self.guest_listeners.get(&(vm, port)) else {
            let message = format!("no process of the VM listens on vsock port {port}");
            return fail(self, ConnectFailure::Refused, message);
        };
        let Some(host_port) = self.alloc_host_port() else {
            return fail(self, ConnectFailure::Refused, "no host port is free".into());
        };
        let Some(relid) = self.alloc_relid() else {
            let message = self.no_relid_reason();
            return fail(self, ConnectFailure::Refused, message);
        };
        self.host_ports.insert(host_port);
        self.host_connects.insert((client, request), relid);
        self.offer(
            now,
            relid,
            Channel {
                vm,
                guest,
                origin: Origin::Host {
                    requester: client,
                    request,
                    host_port,
                },
                if_type: service_id,
                if_instance: Guid::from_vsock_port(host_port),
                state: ChannelState::Rescinded,
                gpadl: None,
                open_refused: None,
            },
        );
    }

    fn alloc_host_port(&mut self) -> Option<u32> {
        let span = u32::MAX - FIRST_HOST_PORT;
        for _ in 0..=span.min(self.host_ports.len() as u32 + 1) {
            let port = self.next_host_port;
            self.next_host_port = if port == u32::MAX {
                FIRST_HOST_PORT
            } else {
                port + 1
            };
            if !self.host_ports.contains(&port) {
                return Some(port);
            }
        }
        None
    }

    // ---- reports ----

    fn vm_info_by_id(&self, id: Guid) -> Option<VmInfo> {
        let vm = self.vms.values().find(|vm| vm.id == id)?;
        let processes = self
            .clients
            .values()
            .filter(|c| c.info.partition == Partition::Vm(id))
            .count();
        let channels = self
            .channels
            .values()
            .filter(|ch| ch.vm == id && !matches!(ch.state, ChannelState::Rescinded))
            .count();
        Some(VmInfo {
            name: vm.name.clone(),
            id,
            cid: vm.cid,
            processes: u32::try_from(processes).unwrap_or(u32::MAX),
            channels: u32::try_from(channels).unwrap_or(u32::MAX),
        })
    }

    /// The report `hvsock stat` shows, without ring fill levels and byte
    /// counters, and the rings to read them from.
    pub fn stat(&self) -> (StatReport, Vec<(u32, Arc<OwnedFd>, RingLayout)>) {
        let mut clients: Vec<(&ClientId, &Client)> = self.clients.iter().collect();
        clients.sort_by_key(|(id, _)| **id);
        let processes = clients
            .into_iter()
            .map(|(id, c)| {
                let mut listening: Vec<String> = Vec::new();
                for ((service, filter), owner) in &self.host_listeners {
                    if owner == id {
                        listening.push(format!("service {service} vm {filter}"));
                    }
                }
                for ((_, port), owner) in &self.guest_listeners {
                    if owner == id {
                        listening.push(format!("port {port}"));
                    }
                }
                listening.sort();
                ProcessInfo {
                    pid: c.info.pid,
                    partition: c.info.partition,
                    listening,
                }
            })
            .collect();
        let pid = |client: ClientId| self.clients.get(&client).map_or(0, |c| c.info.pid);
        let mut rings = Vec::new();
        let channels = self
            .channels
            .iter()
            .map(|(relid, ch)| {
                let (state, layout) = match ch.state {
                    ChannelState::Offered { .. } if ch.gpadl.is_some() => ("gpadl", None),
                    ChannelState::Offered { .. } => ("offered", None),
                    ChannelState::Open { layout, .. } => ("open", Some(layout)),
                    ChannelState::Rescinded => ("rescinded", None),
                };
                if let (Some(layout), Some(g)) = (layout, &ch.gpadl) {
                    rings.push((*relid, g.memfd.clone(), layout));
                }
                let vm = self
                    .vms
                    .values()
                    .find(|vm| vm.id == ch.vm)
                    .map_or_else(String::new, |vm| vm.name.clone());
                ChannelInfo {
                    relid: *relid,
                    vm,
                    state: state.into(),
                    from_host: matches!(ch.origin, Origin::Host { .. }),
                    if_type: ch.if_type,
                    if_instance: ch.if_instance,
                    guest_pid: pid(ch.guest),
                    host_pid: pid(ch.origin.host_client()),
                    layout,
                    guest_to_host_fill: None,
                    host_to_guest_fill: None,
                    guest_bytes: None,
                    host_bytes: None,
                }
            })
            .collect();
        (
            StatReport {
                vms: self.vms(),
                processes,
                channels,
            },
            rings,
        )
    }
}

/// The `op` name of a request, for messages.
fn request_name(request: &ExtRequest) -> &'static str {
    match request {
        ExtRequest::GuestListen { .. } => "guest_listen",
        ExtRequest::GuestUnlisten { .. } => "guest_unlisten",
        ExtRequest::HostListen { .. } => "host_listen",
        ExtRequest::HostUnlisten { .. } => "host_unlisten",
        ExtRequest::HostConnect { .. } => "host_connect",
        ExtRequest::HostCancel { .. } => "host_cancel",
        ExtRequest::HostClose { .. } => "host_close",
        ExtRequest::VmAdd { .. } => "vm_add",
        ExtRequest::VmRemove { .. } => "vm_remove",
        ExtRequest::VmList => "vm_list",
        ExtRequest::Stat => "stat",
    }
}
