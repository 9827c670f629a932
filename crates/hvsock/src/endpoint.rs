//! A process's connection to the emulated host, in either role, and the
//! thread that serves it.
//!
//! Owns the control socket, the guest's VMBus client and what hv_sock builds
//! on it (matching offers to connecting sockets and listeners, preparing
//! rings, the 8-second close), the host process's side of the extension
//! protocol (listen, connect, close), listener queues, and what happens when
//! the host goes away. The data plane of each connection is
//! [`ChannelIo`](crate::channel::ChannelIo); the public types are in
//! [`crate::blocking`].
//!
//! Application threads call in (listen, connect, release), the control
//! thread handles what the host sends; both work on one [`State`] under one
//! lock, and messages are sent while it is held, so their order is the order
//! of the state changes.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hvsock_shm::EventFd;
use vmbus::client::{Event as ClientEvent, GuestClient, Output};
use vmbus::ext::{encode_ext, ConnectFailure, Datagram, ExtEvent, ExtRequest, RingLayout};
use vmbus::messages::VERSION_WIN10_V5;
use vmbus::Guid;

use crate::addr::EphemeralPorts;
use crate::channel::{host_io, ChannelIo, Gone, PreparedRings, Side};
use crate::doorbell::{Doorbell, Link};
use crate::error::{err, shm_io};
use crate::wait::Waiter;

#[cfg(test)]
mod tests;

/// How long a closed guest connection waits for the host's rescind before
/// tearing the channel down itself (the seed's delayed close).
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(8);

/// How long bring-up (version negotiation) may take.
const CONTACT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request the host answers at once (listen) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Ring pages (control page included) the seed uses, and hosts before
/// VMBus 5.0 require.
pub const SEED_RING_PAGES: u32 = 6;

/// Largest ring later kernels make (64 pages).
pub const MAX_RING_PAGES: u32 = 64;

/// Default ring size: as later Linux kernels size rings from the default
/// socket buffer (212992 bytes = 52 pages).
pub const DEFAULT_RING_PAGES: u32 = 52;

/// Which side of the VMBus this process is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Role {
    /// A guest of the named VM.
    Guest,
    /// The root partition.
    Host,
}

/// Which channel a stream is, for release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ChannelKey {
    /// A guest's channel, by relid.
    Relid(u32),
    /// A host process's connection id.
    Conn(u64),
}

/// The two ends' addresses, in the form of the role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ends {
    /// Our service id (guest: our port's GUID).
    pub(crate) local: Guid,
    /// The peer's service id.
    pub(crate) peer: Guid,
    /// The VM (host role) or ZERO (guest role: the peer is the host).
    pub(crate) vm_id: Guid,
}

/// A connection ready to be handed to the application.
#[derive(Debug)]
pub(crate) struct Ready {
    pub(crate) io: Arc<ChannelIo>,
    pub(crate) key: ChannelKey,
    pub(crate) ends: Ends,
}

/// A listener's queue of connections not yet accepted.
#[derive(Debug)]
pub(crate) struct ListenerShared {
    queue: Mutex<VecDeque<Ready>>,
    backlog: usize,
    /// Signalled per queued connection and when the listener dies.
    pub(crate) waiter: Waiter,
    closed: Mutex<Option<String>>,
}

impl ListenerShared {
    fn new(backlog: usize) -> io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            queue: Mutex::default(),
            backlog: backlog.max(1),
            waiter: Waiter::new(EventFd::new().map_err(shm_io)?),
            closed: Mutex::default(),
        }))
    }

    fn has_room(&self, opening: usize) -> bool {
        lock(&self.queue).len() + opening < self.backlog
    }

    fn push(&self, ready: Ready) {
        lock(&self.queue).push_back(ready);
        self.waiter.wake();
    }

    /// The next queued connection, if any.
    pub(crate) fn pop(&self) -> Option<Ready> {
        lock(&self.queue).pop_front()
    }

    /// Why accepting can never succeed again, if so.
    pub(crate) fn closed(&self) -> Option<String> {
        lock(&self.closed).clone()
    }

    fn close(&self, reason: &str) {
        lock(&self.closed).get_or_insert_with(|| reason.to_owned());
        self.waiter.wake();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a guest channel is doing.
#[derive(Debug)]
enum GuestChannel {
    /// GPADL and open in flight.
    Opening {
        rings: PreparedRings,
        purpose: Purpose,
        /// The signal link the host named for it (before its open result).
        link: Option<u64>,
    },
    /// Open; `released` once the application dropped it.
    Open {
        io: Arc<ChannelIo>,
        released: bool,
        rescinded: bool,
    },
    /// Torn down by us; waiting for the host.
    Closing,
}

#[derive(Debug, Clone, Copy)]
enum Purpose {
    /// A host connected to our listener on `port`; the peer is `peer`.
    Accept { port: u32, peer: Guid },
    /// Answers our connect `(local, remote)`.
    Connect { local: Guid, remote: Guid },
}

/// A guest connect in flight.
#[derive(Debug)]
struct GuestConnect {
    pages: (u32, u32),
    result: Option<io::Result<Ready>>,
}

#[derive(Debug)]
struct GuestState {
    client: GuestClient,
    version: Option<u32>,
    /// Listeners by port, with their ring size.
    listeners: HashMap<u32, (Arc<ListenerShared>, (u32, u32))>,
    listen_results: ListenResults<u32>,
    connects: HashMap<(Guid, Guid), GuestConnect>,
    channels: HashMap<u32, GuestChannel>,
    /// Released channels waiting for the host's rescind, by deadline.
    close_timers: BTreeSet<(Instant, u32)>,
    ports: EphemeralPorts,
    /// Fresh ring memory made ahead for the next offer, never shared with
    /// anyone: creating and mapping it (25-40 us) is then done while the
    /// host answers an open, not while an offer waits.
    spare_rings: Option<PreparedRings>,
    /// The geometry to make the next spare in, if one is wanted.
    spare_wanted: Option<(u32, u32)>,
    /// The geometry of the last rings taken.
    last_rings: Option<(u32, u32)>,
}

impl Default for GuestState {
    fn default() -> Self {
        Self {
            client: GuestClient::new(),
            version: None,
            listeners: HashMap::new(),
            listen_results: HashMap::new(),
            connects: HashMap::new(),
            channels: HashMap::new(),
            close_timers: BTreeSet::new(),
            ports: EphemeralPorts::new_random(),
            spare_rings: None,
            spare_wanted: None,
            last_rings: None,
        }
    }
}

#[derive(Debug, Default)]
struct HostState {
    next_request: u64,
    listeners: HashMap<(Guid, Guid), Arc<ListenerShared>>,
    listen_results: ListenResults<(Guid, Guid)>,
    connects: HashMap<u64, Option<io::Result<Ready>>>,
    conns: HashMap<u64, Arc<ChannelIo>>,
}

#[derive(Debug, Default)]
struct State {
    /// Why the control connection is gone, once it is.
    dead: Option<String>,
    /// Signal links the host sent that we refused, and why (for the errors
    /// of the channels that name them).
    refused_links: HashMap<u64, String>,
    /// The host answered us once (a guest's version, a host process's
    /// first request): a close before that is a refusal.
    contacted: bool,
    guest: GuestState,
    host: HostState,
}

#[derive(Debug)]
struct Shared {
    sock: OwnedFd,
    role: Role,
    state: Mutex<State>,
    /// Notified on every change application threads may wait for.
    changed: Condvar,
    stop: EventFd,
    /// The signal links to our peers and the channels waiting on them.
    bell: Arc<Doorbell>,
    /// Tests: how long a connect that gave up waits before it takes the
    /// lock again, to widen the window in which its channel opens.
    #[cfg(test)]
    relock_delay: std::sync::Mutex<Duration>,
}

#[derive(Debug)]
struct Handle {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.bell.stop();
        let _ = self.shared.stop.signal();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A process's connection to the host; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    handle: Arc<Handle>,
}

impl Endpoint {
    /// Serves a control socket already connected to the host, in `role`.
    /// A guest negotiates its VMBus version before this returns.
    pub(crate) fn start(sock: OwnedFd, role: Role) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            sock,
            role: role.clone(),
            state: Mutex::default(),
            changed: Condvar::new(),
            stop: EventFd::new().map_err(shm_io)?,
            bell: Doorbell::new()?,
            #[cfg(test)]
            relock_delay: std::sync::Mutex::default(),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("hvsock-control".into())
                .spawn(move || shared.serve())?
        };
        let endpoint = Self {
            handle: Arc::new(Handle {
                shared,
                thread: Some(thread),
            }),
        };
        match role {
            Role::Guest => endpoint.contact()?,
            Role::Host => endpoint.host_contact()?,
        }
        Ok(endpoint)
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    fn contact(&self) -> io::Result<()> {
        let shared = self.shared();
        let mut state = shared.lock();
        state.guest.client.start();
        shared.pump(&mut state);
        let deadline = Instant::now() + CONTACT_TIMEOUT;
        shared
            .wait_until(state, Some(deadline), |state| {
                state.guest.version.map(|_| Ok(()))
            })
            .map(|_| ())
    }

    /// Host process: one request answered before anything else, so that a
    /// host that refuses us (another user's daemon) says so at once rather
    /// than at the first listen or connect.
    fn host_contact(&self) -> io::Result<()> {
        let shared = self.shared();
        let mut state = shared.lock();
        shared.send_ext(&mut state, &ExtRequest::VmList);
        let deadline = Instant::now() + CONTACT_TIMEOUT;
        shared
            .wait_until(state, Some(deadline), |state| {
                state.contacted.then_some(Ok(()))
            })
            .map(|_| ())
    }

    /// Guest: listen on vsock `port` with `backlog` and ring `pages`.
    pub(crate) fn guest_listen(
        &self,
        port: u32,
        backlog: usize,
        pages: (u32, u32),
    ) -> io::Result<Arc<ListenerShared>> {
        let shared = self.shared();
        let mut state = shared.lock();
        shared.check_alive(&state)?;
        if state.guest.listeners.contains_key(&port) {
            return Err(err(
                io::ErrorKind::AddrInUse,
                format!("port {port} is already listening in this process"),
            ));
        }
        // Registered before asking: the host may route a connection to us
        // the moment it has answered, before this thread runs again.
        let listener = ListenerShared::new(backlog)?;
        let pages = shared.ring_pages(&state, pages);
        state
            .guest
            .listeners
            .insert(port, (listener.clone(), pages));
        shared.await_listen(
            state,
            ListenRequest {
                key: port,
                results: |state| &mut state.guest.listen_results,
                forget: |state, port| state.guest.listeners.remove(port).map(|(l, _)| l),
                listen: ExtRequest::GuestListen { port },
                unlisten: ExtRequest::GuestUnlisten { port },
                refused: |reason| err(io::ErrorKind::AddrInUse, reason),
            },
        )?;
        Ok(listener)
    }

    /// Guest: stop listening on `port`; connections not accepted are closed.
    pub(crate) fn guest_unlisten(&self, port: u32) {
        let shared = self.shared();
        let mut state = shared.lock();
        if let Some((listener, _)) = state.guest.listeners.remove(&port) {
            listener.close("the listener was closed");
            shared.send_ext(&mut state, &ExtRequest::GuestUnlisten { port });
            while let Some(ready) = listener.pop() {
                shared.give_back(&mut state, ready);
            }
        }
    }

    /// Guest: connect from an ephemeral port to host port `remote_port`.
    pub(crate) fn guest_connect(
        &self,
        remote_port: u32,
        timeout: Duration,
        pages: (u32, u32),
    ) -> io::Result<Ready> {
        let shared = self.shared();
        let mut state = shared.lock();
        shared.check_alive(&state)?;
        let local_port = allocate_port(&mut state.guest)?;
        let key = (
            Guid::from_vsock_port(local_port),
            Guid::from_vsock_port(remote_port),
        );
        let pages = shared.ring_pages(&state, pages);
        state.guest.connects.insert(
            key,
            GuestConnect {
                pages,
                result: None,
            },
        );
        if let Err(e) = state.guest.client.tl_connect(key.0, key.1) {
            state.guest.connects.remove(&key);
            return Err(err(io::ErrorKind::NotConnected, e.to_string()));
        }
        shared.pump(&mut state);
        let deadline = Instant::now().checked_add(timeout);
        let result = shared
            .wait_until(state, deadline, |state| {
                match state.guest.connects.get_mut(&key) {
                    Some(GuestConnect {
                        result: Some(_), ..
                    }) => state.guest.connects.remove(&key).and_then(|c| c.result),
                    _ => None,
                }
            })
            .map(|(_, ready)| ready);
        if result.is_err() {
            // Timed out or the host went away: a late offer finds no
            // connect and is refused. A channel that opened between our
            // timeout and this lock is given back, not dropped (it would
            // stay open, its rings mapped, for as long as the endpoint).
            shared.before_relock();
            let mut state = shared.lock();
            if let Some(GuestConnect {
                result: Some(Ok(ready)),
                ..
            }) = state.guest.connects.remove(&key)
            {
                shared.give_back(&mut state, ready);
            }
        }
        result
    }

    /// Host: listen on `service_id` for the VMs `vm_id` names.
    pub(crate) fn host_listen(
        &self,
        service_id: Guid,
        vm_id: Guid,
        backlog: usize,
    ) -> io::Result<Arc<ListenerShared>> {
        let shared = self.shared();
        let mut state = shared.lock();
        shared.check_alive(&state)?;
        let key = (service_id, vm_id);
        if state.host.listeners.contains_key(&key) {
            return Err(err(
                io::ErrorKind::AddrInUse,
                format!("service {service_id} is already listening in this process"),
            ));
        }
        // Registered before asking (see `guest_listen`).
        let listener = ListenerShared::new(backlog)?;
        state.host.listeners.insert(key, listener.clone());
        shared.await_listen(
            state,
            ListenRequest {
                key,
                results: |state| &mut state.host.listen_results,
                forget: |state, key| state.host.listeners.remove(key),
                listen: ExtRequest::HostListen { service_id, vm_id },
                unlisten: ExtRequest::HostUnlisten { service_id, vm_id },
                refused: |reason| {
                    let kind = if reason.contains("no VM") || reason.contains("unknown") {
                        io::ErrorKind::NotFound
                    } else {
                        io::ErrorKind::AddrInUse
                    };
                    err(kind, reason)
                },
            },
        )?;
        Ok(listener)
    }

    /// Host: stop listening.
    pub(crate) fn host_unlisten(&self, service_id: Guid, vm_id: Guid) {
        let shared = self.shared();
        let mut state = shared.lock();
        if let Some(listener) = state.host.listeners.remove(&(service_id, vm_id)) {
            listener.close("the listener was closed");
            shared.send_ext(&mut state, &ExtRequest::HostUnlisten { service_id, vm_id });
            while let Some(ready) = listener.pop() {
                shared.give_back(&mut state, ready);
            }
        }
    }

    /// Host: connect to `service_id` in a VM given by id or by name.
    pub(crate) fn host_connect(
        &self,
        vm_id: Guid,
        vm_name: Option<String>,
        service_id: Guid,
        timeout: Duration,
    ) -> io::Result<Ready> {
        let shared = self.shared();
        let mut state = shared.lock();
        shared.check_alive(&state)?;
        state.host.next_request += 1;
        let request = state.host.next_request;
        state.host.connects.insert(request, None);
        shared.send_ext(
            &mut state,
            &ExtRequest::HostConnect {
                request,
                vm_id,
                vm_name,
                service_id,
            },
        );
        let deadline = Instant::now().checked_add(timeout);
        let result = shared
            .wait_until(state, deadline, |state| {
                match state.host.connects.get(&request) {
                    Some(Some(_)) => state.host.connects.remove(&request).flatten(),
                    _ => None,
                }
            })
            .map(|(_, mut ready)| {
                ready.ends.peer = service_id;
                ready
            });
        if result.is_err() {
            shared.before_relock();
            let mut state = shared.lock();
            match state.host.connects.remove(&request) {
                // Still pending: the host drops it.
                Some(None) => shared.send_ext(&mut state, &ExtRequest::HostCancel { request }),
                // Connected between our timeout and this lock: the host
                // ignores a cancel by then, so the connection is closed like
                // any other.
                Some(Some(Ok(ready))) => shared.give_back(&mut state, ready),
                Some(Some(Err(_))) | None => {}
            }
        }
        result
    }

    /// The application is done with a connection (its FIN is sent): the
    /// host process closes it at once; a guest waits up to 8 seconds for the
    /// host to rescind it, in the background.
    pub(crate) fn release(&self, key: ChannelKey) {
        let shared = self.shared();
        let mut state = shared.lock();
        shared.release(&mut state, key);
    }

    /// The negotiated VMBus version (guest).
    pub(crate) fn version(&self) -> Option<u32> {
        self.shared().lock().guest.version
    }
}

/// Listen requests in flight: `None` until the host answers, then whether it
/// refused (and why).
type ListenResults<K> = HashMap<K, Option<Result<(), String>>>;

/// A listen request of either role, for [`Shared::await_listen`].
struct ListenRequest<K> {
    key: K,
    /// Where the host's answers for this role land.
    results: fn(&mut State) -> &mut ListenResults<K>,
    /// Removes the listener registered for `key`, if it is still there.
    forget: fn(&mut State, &K) -> Option<Arc<ListenerShared>>,
    listen: ExtRequest,
    unlisten: ExtRequest,
    /// The error for the host's refusal.
    refused: fn(String) -> io::Error,
}

impl Shared {
    /// Asks the host to route `request.key` to us (the listener is
    /// registered already, see `guest_listen`) and waits for its answer. On
    /// failure the listener is forgotten and closed, the host told to stop
    /// routing if it may have said yes after we gave up, and connections it
    /// routed meanwhile are closed.
    fn await_listen<K: Eq + std::hash::Hash + Copy>(
        &self,
        mut state: MutexGuard<'_, State>,
        request: ListenRequest<K>,
    ) -> io::Result<()> {
        let ListenRequest {
            key,
            results,
            forget,
            listen,
            unlisten,
            refused,
        } = request;
        results(&mut state).insert(key, None);
        self.send_ext(&mut state, &listen);
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let answer = self.wait_until(state, Some(deadline), |state| {
            match results(state).get(&key) {
                Some(Some(result)) => Some(Ok(result.clone())),
                _ => None,
            }
        });
        let result = match answer {
            Ok((mut state, result)) => {
                results(&mut state).remove(&key);
                // The host may have gone since it answered.
                self.check_alive(&state).and(result.map_err(refused))
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            self.before_relock();
            let mut state = self.lock();
            results(&mut state).remove(&key);
            if let Some(listener) = forget(&mut state, &key) {
                if e.kind() == io::ErrorKind::TimedOut {
                    self.send_ext(&mut state, &unlisten);
                }
                // A yes after our timeout lets connections through before
                // the unlisten arrives; nobody will accept them.
                listener.close("the listen request failed");
                while let Some(ready) = listener.pop() {
                    self.give_back(&mut state, ready);
                }
            }
        }
        result
    }

    fn who(&self) -> &'static str {
        match self.role {
            Role::Guest => "guest",
            Role::Host => "host process",
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn check_alive(&self, state: &State) -> io::Result<()> {
        match &state.dead {
            Some(reason) => Err(err(io::ErrorKind::NotConnected, reason.clone())),
            None => Ok(()),
        }
    }

    /// Ring pages to use: as asked, clamped to what the negotiated version
    /// allows (hosts before VMBus 5.0 take only the seed's 6 pages).
    fn ring_pages(&self, state: &State, pages: (u32, u32)) -> (u32, u32) {
        let clamp = |p: u32| p.clamp(SEED_RING_PAGES, MAX_RING_PAGES);
        match state.guest.version {
            Some(v) if v < VERSION_WIN10_V5 => (SEED_RING_PAGES, SEED_RING_PAGES),
            _ => (clamp(pages.0), clamp(pages.1)),
        }
    }

    /// Waits on the condition variable until `ready` gives an answer, the
    /// deadline passes, or the host goes away.
    fn wait_until<'a, T>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        deadline: Option<Instant>,
        mut ready: impl FnMut(&mut State) -> Option<io::Result<T>>,
    ) -> io::Result<(MutexGuard<'a, State>, T)>
    where
        T: Sized,
    {
        loop {
            if let Some(result) = ready(&mut state) {
                return result.map(|value| (state, value));
            }
            self.check_alive(&state)?;
            state = match deadline {
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(err(
                            io::ErrorKind::TimedOut,
                            "timed out waiting for the hvsock host",
                        ));
                    }
                    self.changed
                        .wait_timeout(state, deadline - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => self.changed.wait(state).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }

    fn send_raw(&self, state: &mut State, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
        if state.dead.is_some() {
            return;
        }
        if let Err(e) = hvsock_shm::send_with_fds(&self.sock, bytes, fds) {
            let reason = lost(
                state,
                format!("lost the connection to the hvsock host: {e}"),
            );
            self.die(state, reason);
        }
    }

    fn send_ext(&self, state: &mut State, request: &ExtRequest) {
        tracing::debug!(target: "hvsock::wire", "{} -> host  {}", self.who(), describe_request(request));
        self.send_raw(state, &encode_ext(request), &[]);
    }

    /// Performs the guest client's outputs: sends its messages, handles its
    /// events (which may queue more outputs).
    fn pump(&self, state: &mut State) {
        while let Some(output) = state.guest.client.poll_output() {
            match output {
                Output::Send { message, fds } => {
                    tracing::debug!(target: "hvsock::wire", "guest -> host  {}", describe(&message));
                    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|fd| fd.as_fd()).collect();
                    self.send_raw(state, &message.encode(), &borrowed);
                }
                Output::Event(event) => self.guest_event(state, event),
            }
        }
    }

    fn guest_event(&self, state: &mut State, event: ClientEvent) {
        tracing::debug!(?event, "guest event");
        match event {
            ClientEvent::Connected { version } => {
                state.guest.version = Some(version);
                state.contacted = true;
                self.changed.notify_all();
            }
            ClientEvent::ContactRefused => {
                self.die(
                    state,
                    "the hvsock host accepts none of our VMBus versions (4.0 to 5.3)".into(),
                );
            }
            ClientEvent::Offer(offer) => self.guest_offer(state, offer),
            ClientEvent::TlConnectRefused {
                endpoint_id,
                service_id,
                status,
            } => {
                if let Some(connect) = state.guest.connects.get_mut(&(endpoint_id, service_id)) {
                    connect.result = Some(Err(err(
                        io::ErrorKind::ConnectionRefused,
                        format!(
                            "connection refused: nothing listens on host port {} (status {status:#x})",
                            service_id.vsock_port().map_or(service_id.to_string(), |p| p.to_string())
                        ),
                    )));
                    self.changed.notify_all();
                }
            }
            ClientEvent::Opened { relid, status } => self.guest_opened(state, relid, status),
            ClientEvent::Rescinded { relid } => self.guest_rescinded(state, relid),
            ClientEvent::Released { relid } => {
                state.guest.channels.remove(&relid);
            }
        }
    }

    fn guest_offer(&self, state: &mut State, offer: vmbus::OfferChannel) {
        let relid = offer.child_relid;
        // Offers queued behind the connection's loss: nothing can open.
        if state.dead.is_some() {
            return;
        }
        let purpose = match offer.hvsock_params() {
            Some(params) if params.is_for_guest_accept => {
                let port = offer.if_type.vsock_port();
                let listening =
                    port.and_then(|port| state.guest.listeners.get(&port).map(|l| (port, l)));
                match listening {
                    Some((port, (listener, pages))) => {
                        let opening = state
                            .guest
                            .channels
                            .values()
                            .filter(|c| matches!(c, GuestChannel::Opening { purpose: Purpose::Accept { port: p, .. }, .. } if *p == port))
                            .count();
                        if listener.has_room(opening) {
                            Some((
                                Purpose::Accept {
                                    port,
                                    peer: offer.if_instance,
                                },
                                *pages,
                            ))
                        } else {
                            tracing::info!(port, "backlog full: refusing a host connection");
                            None
                        }
                    }
                    None => None,
                }
            }
            Some(_) => {
                let key = (offer.if_instance, offer.if_type);
                state
                    .guest
                    .connects
                    .get(&key)
                    .filter(|c| c.result.is_none())
                    .map(|c| {
                        (
                            Purpose::Connect {
                                local: key.0,
                                remote: key.1,
                            },
                            c.pages,
                        )
                    })
            }
            None => None,
        };
        let Some((purpose, (send, recv))) = purpose else {
            // Nobody wants it: give the relid back at once, so that the host
            // fails the connect now rather than after its timeout.
            let _ = state.guest.client.close(relid);
            return;
        };
        let rings = match state.guest.spare_rings.take() {
            Some(spare) if spare.pages() == (send, recv) => Ok(spare),
            _ => PreparedRings::create(send, recv),
        };
        // A spare only once two offers in a row asked for the same rings: a
        // process whose connects and accepts use different sizes would
        // otherwise make (and throw away) one per offer, for nothing.
        let geometry = Some((send, recv));
        if state.guest.last_rings == geometry {
            state.guest.spare_wanted = geometry;
        }
        state.guest.last_rings = geometry;
        match rings {
            Ok(rings) => {
                let opened = state
                    .guest
                    .client
                    .open(relid, rings.memfd.clone(), rings.layout);
                match opened {
                    Ok(()) => {
                        state.guest.channels.insert(
                            relid,
                            GuestChannel::Opening {
                                rings,
                                purpose,
                                link: None,
                            },
                        );
                    }
                    Err(e) => {
                        tracing::warn!(relid, "cannot open an offered channel: {e}");
                        let _ = state.guest.client.close(relid);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(relid, "cannot create ring memory: {e}");
                self.fail_purpose(state, purpose, e);
                let _ = state.guest.client.close(relid);
            }
        }
    }

    fn fail_purpose(&self, state: &mut State, purpose: Purpose, error: io::Error) {
        if let Purpose::Connect { local, remote } = purpose {
            if let Some(connect) = state.guest.connects.get_mut(&(local, remote)) {
                connect.result = Some(Err(error));
                self.changed.notify_all();
            }
        }
    }

    fn guest_opened(&self, state: &mut State, relid: u32, status: u32) {
        let Some(GuestChannel::Opening { .. }) = state.guest.channels.get(&relid) else {
            return;
        };
        let Some(GuestChannel::Opening {
            rings,
            purpose,
            link,
        }) = state.guest.channels.remove(&relid)
        else {
            return;
        };
        let io = if status == 0 {
            match link {
                Some(id) => match self.link(state, id) {
                    Ok(link) => rings.into_guest_io(&self.bell, link, relid),
                    Err(e) => Err(err(io::ErrorKind::ConnectionRefused, e.to_string())),
                },
                None => Err(err(
                    io::ErrorKind::ConnectionRefused,
                    format!("the host opened channel {relid} without naming a signal link for it"),
                )),
            }
        } else {
            Err(err(
                io::ErrorKind::ConnectionRefused,
                format!("the host refused to open the channel (status {status:#x})"),
            ))
        };
        let io = match io {
            Ok(io) => Arc::new(io),
            Err(e) => {
                self.fail_purpose(state, purpose, e);
                let _ = state.guest.client.close(relid);
                return;
            }
        };
        state.guest.channels.insert(
            relid,
            GuestChannel::Open {
                io: io.clone(),
                released: false,
                rescinded: false,
            },
        );
        let (ends, target) = match purpose {
            Purpose::Accept { port, peer } => (
                Ends {
                    local: Guid::from_vsock_port(port),
                    peer,
                    vm_id: Guid::ZERO,
                },
                Some(port),
            ),
            Purpose::Connect { local, remote } => (
                Ends {
                    local,
                    peer: remote,
                    vm_id: Guid::ZERO,
                },
                None,
            ),
        };
        let ready = Ready {
            io,
            key: ChannelKey::Relid(relid),
            ends,
        };
        match target {
            Some(port) => match state.guest.listeners.get(&port) {
                Some((listener, _)) => listener.push(ready),
                None => {
                    self.give_back(state, ready);
                }
            },
            None => {
                let key = (ends.local, ends.peer);
                match state.guest.connects.get_mut(&key) {
                    Some(connect) => {
                        connect.result = Some(Ok(ready));
                        self.changed.notify_all();
                    }
                    None => {
                        // The connect gave up while the channel opened.
                        self.give_back(state, ready);
                    }
                }
            }
        }
    }

    fn guest_rescinded(&self, state: &mut State, relid: u32) {
        match state.guest.channels.get_mut(&relid) {
            Some(GuestChannel::Opening { purpose, .. }) => {
                let purpose = *purpose;
                state.guest.channels.remove(&relid);
                self.fail_purpose(
                    state,
                    purpose,
                    err(
                        io::ErrorKind::ConnectionRefused,
                        "the host withdrew the channel while it opened",
                    ),
                );
                let _ = state.guest.client.close(relid);
            }
            Some(GuestChannel::Open {
                io,
                released,
                rescinded,
            }) => {
                *rescinded = true;
                io.mark_gone(Gone::Closed("the host closed the channel (rescind)".into()));
                if *released {
                    state.guest.channels.insert(relid, GuestChannel::Closing);
                    let _ = state.guest.client.close(relid);
                }
            }
            Some(GuestChannel::Closing) | None => {
                let _ = state.guest.client.close(relid);
            }
        }
    }

    /// Tests widen the window between a connect giving up and its taking
    /// the lock again; otherwise nothing.
    fn before_relock(&self) {
        #[cfg(test)]
        std::thread::sleep(*lock(&self.relock_delay));
    }

    /// Closes a connection nobody will be handed (a listener gone, a
    /// connect that gave up): its FIN, then the release.
    fn give_back(&self, state: &mut State, ready: Ready) {
        let _ = ready.io.shutdown_write_for_close();
        self.release(state, ready.key);
    }

    fn release(&self, state: &mut State, key: ChannelKey) {
        match key {
            // The host is gone: nobody is left to close the channel with.
            ChannelKey::Relid(relid) if state.dead.is_some() => {
                state.guest.channels.remove(&relid);
            }
            ChannelKey::Relid(relid) => {
                if let Some(GuestChannel::Open {
                    released,
                    rescinded,
                    ..
                }) = state.guest.channels.get_mut(&relid)
                {
                    *released = true;
                    if *rescinded {
                        state.guest.channels.insert(relid, GuestChannel::Closing);
                        let _ = state.guest.client.close(relid);
                        self.pump(state);
                    } else {
                        // The control thread looks at its timers at least
                        // twice a second (see `serve`).
                        state
                            .guest
                            .close_timers
                            .insert((Instant::now() + CLOSE_TIMEOUT, relid));
                    }
                }
            }
            ChannelKey::Conn(conn) => {
                if state.host.conns.remove(&conn).is_some() {
                    self.send_ext(state, &ExtRequest::HostClose { conn });
                }
            }
        }
    }

    fn fire_timers(&self, state: &mut State, now: Instant) {
        while let Some(&(deadline, relid)) = state.guest.close_timers.first() {
            if deadline > now {
                break;
            }
            state.guest.close_timers.pop_first();
            if let Some(GuestChannel::Open {
                released: true,
                rescinded: false,
                ..
            }) = state.guest.channels.get(&relid)
            {
                tracing::debug!(
                    relid,
                    "the host did not close the channel in 8 s: closing it"
                );
                state.guest.channels.insert(relid, GuestChannel::Closing);
                let _ = state.guest.client.close(relid);
            }
        }
        self.pump(state);
    }

    fn die(&self, state: &mut State, reason: String) {
        if state.dead.is_some() {
            return;
        }
        tracing::warn!("{reason}");
        for channel in state.guest.channels.values() {
            if let GuestChannel::Open { io, .. } = channel {
                io.mark_gone(Gone::Closed(reason.clone()));
            }
        }
        for io in state.host.conns.values() {
            io.mark_gone(Gone::Closed(reason.clone()));
        }
        for (listener, _) in state.guest.listeners.values() {
            listener.close(&reason);
        }
        for listener in state.host.listeners.values() {
            listener.close(&reason);
        }
        state.dead = Some(reason);
        // Nothing will open again (and no spare is made once dead): give
        // the spare's memory back now, not when the last handle goes.
        state.guest.spare_rings = None;
        // Nor will the host answer a close: rings of channels still
        // opening, closing, or released and waiting for the host are given
        // back now too (the control thread that would have timed them out
        // has ended). Open channels the application holds go when it
        // releases them (see `release`).
        state.guest.channels.retain(|_, c| {
            matches!(
                c,
                GuestChannel::Open {
                    released: false,
                    ..
                }
            )
        });
        state.guest.close_timers.clear();
        self.changed.notify_all();
    }

    /// The control thread: receives what the host sends, fires timers.
    fn serve(self: Arc<Self>) {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let mut buf = vec![0u8; vmbus::ext::MAX_DATAGRAM];
        loop {
            let timeout = {
                let state = self.lock();
                state
                    .guest
                    .close_timers
                    .first()
                    .map(|(deadline, _)| deadline.saturating_duration_since(Instant::now()))
            }
            // Timers armed by application threads after we went to sleep
            // are picked up within this tick.
            .unwrap_or(Duration::from_millis(500))
            .min(Duration::from_millis(500));
            let timespec = Timespec::try_from(timeout).ok();
            let mut fds = [
                PollFd::new(&self.sock, PollFlags::IN),
                PollFd::new(&self.stop, PollFlags::IN),
            ];
            let _ = poll(&mut fds, timespec.as_ref());
            if !fds[1].revents().is_empty() {
                return;
            }
            if !fds[0].revents().is_empty() {
                match hvsock_shm::recv_message(&self.sock, &mut buf, 4) {
                    Ok(received) if received.len == 0 => {
                        let mut state = self.lock();
                        let reason = lost(&state, "the hvsock host closed the connection".into());
                        self.die(&mut state, reason);
                        return;
                    }
                    Ok(received) => {
                        if let Some(arrived) = received.fds_lost {
                            // Most likely out of descriptors (RLIMIT_NOFILE):
                            // the message goes on without them and fails on
                            // its own (one channel refused), instead of the
                            // whole connection to the host.
                            tracing::warn!(
                                arrived,
                                "a message from the host lost its file descriptors \
                                 (is this process out of descriptors? raise `ulimit -n`)"
                            );
                        }
                        self.received(&buf[..received.len], received.fds);
                        self.make_spare_rings();
                    }
                    Err(e) => {
                        let mut state = self.lock();
                        let reason = lost(
                            &state,
                            format!("lost the connection to the hvsock host: {e}"),
                        );
                        self.die(&mut state, reason);
                        return;
                    }
                }
            }
            let mut state = self.lock();
            self.fire_timers(&mut state, Instant::now());
        }
    }

    /// Makes the next offer's rings now, outside the lock, if an offer took
    /// the spare: the host is busy with the open we just sent meanwhile.
    fn make_spare_rings(&self) {
        let wanted = {
            let mut state = self.lock();
            if state.guest.spare_rings.is_some() || state.dead.is_some() {
                return;
            }
            state.guest.spare_wanted.take()
        };
        let Some((send, recv)) = wanted else {
            return;
        };
        match PreparedRings::create(send, recv) {
            Ok(rings) => {
                let mut state = self.lock();
                if state.dead.is_none() && state.guest.spare_rings.is_none() {
                    state.guest.spare_rings = Some(rings);
                }
            }
            // The next offer tries again and reports the error.
            Err(e) => tracing::debug!("cannot make spare ring memory: {e}"),
        }
    }

    fn received(&self, bytes: &[u8], fds: Vec<OwnedFd>) {
        let mut state = self.lock();
        match Datagram::<ExtEvent>::decode(bytes) {
            Ok(Datagram::Vmbus(message)) if self.role == Role::Guest => {
                tracing::debug!(target: "hvsock::wire", "host -> guest  {}", describe(&message));
                let late_answer = matches!(
                    message,
                    vmbus::Message::GpadlCreated { .. } | vmbus::Message::OpenChannelResult { .. }
                );
                match state.guest.client.handle(message) {
                    Ok(()) => {}
                    // An answer the host sent before it saw us give a
                    // rescinded channel back: nothing broke.
                    Err(e @ vmbus::client::ClientError::UnknownRelid(_)) if late_answer => {
                        tracing::debug!("ignoring an answer for a channel already given back: {e}");
                    }
                    Err(e) => {
                        tracing::warn!("ignoring a message that breaks the VMBus protocol: {e}");
                    }
                }
                self.pump(&mut state);
            }
            Ok(Datagram::Ext(event)) => {
                tracing::debug!(target: "hvsock::wire", "host -> {}  {}", self.who(), describe_event(&event));
                self.ext_event(&mut state, event, fds);
            }
            Ok(Datagram::Vmbus(message)) => {
                tracing::warn!(?message, "ignoring a VMBus message sent to a host process");
            }
            Err(e) => tracing::warn!("ignoring an undecodable message from the host: {e}"),
        }
    }

    fn ext_event(&self, state: &mut State, event: ExtEvent, fds: Vec<OwnedFd>) {
        match event {
            ExtEvent::Link { link } => {
                let side = match self.role {
                    Role::Guest => Side::Guest,
                    Role::Host => Side::Host,
                };
                // A refused link's channels fail to open, each with its error.
                if let Err(e) =
                    Link::from_fds(link, side, fds).and_then(|new| self.bell.add_link(new))
                {
                    tracing::warn!(link, "refusing a signal link from the host: {e}");
                    state.refused_links.insert(link, e.to_string());
                }
            }
            ExtEvent::VmList { .. } if !state.contacted => {
                state.contacted = true;
                self.changed.notify_all();
            }
            ExtEvent::HostFeatures { features } if self.role == Role::Guest => {
                let pipelined = features
                    .iter()
                    .any(|f| f == vmbus::ext::FEATURE_PIPELINED_OPEN);
                state.guest.client.set_pipelined_open(pipelined);
            }
            ExtEvent::LinkClosed { link } => {
                state.refused_links.remove(&link);
                self.bell.remove_link(link);
            }
            ExtEvent::ChannelLink { relid, link } => {
                if let Some(GuestChannel::Opening { link: slot, .. }) =
                    state.guest.channels.get_mut(&relid)
                {
                    *slot = Some(link);
                }
            }
            ExtEvent::GuestListenResult { port, error } => {
                if let Some(slot) = state.guest.listen_results.get_mut(&port) {
                    *slot = Some(error.map_or(Ok(()), Err));
                    self.changed.notify_all();
                }
            }
            ExtEvent::HostListenResult {
                service_id,
                vm_id,
                error,
            } => {
                if let Some(slot) = state.host.listen_results.get_mut(&(service_id, vm_id)) {
                    *slot = Some(error.map_or(Ok(()), Err));
                    self.changed.notify_all();
                }
            }
            ExtEvent::HostConnected {
                request,
                conn,
                relid,
                link,
                vm_id,
                endpoint_id,
                layout,
            } => {
                let wanted = matches!(state.host.connects.get(&request), Some(None));
                let opened = self.host_channel(state, conn, layout, fds, relid, link);
                let result = opened.map(|io| Ready {
                    io,
                    key: ChannelKey::Conn(conn),
                    ends: Ends {
                        local: endpoint_id,
                        peer: Guid::ZERO,
                        vm_id,
                    },
                });
                match (wanted, result) {
                    (true, result) => {
                        if result.is_err() {
                            // Unusable: hand the channel back at once.
                            self.send_ext(state, &ExtRequest::HostClose { conn });
                        }
                        state.host.connects.insert(request, Some(result));
                        self.changed.notify_all();
                    }
                    (false, Ok(ready)) => self.release(state, ready.key),
                    (false, Err(_)) => self.send_ext(state, &ExtRequest::HostClose { conn }),
                }
            }
            ExtEvent::HostConnectFailed {
                request,
                failure,
                message,
            } => {
                if let Some(slot) = state.host.connects.get_mut(&request) {
                    let kind = match failure {
                        ConnectFailure::Refused => io::ErrorKind::ConnectionRefused,
                        ConnectFailure::NoSuchVm => io::ErrorKind::NotFound,
                        ConnectFailure::TimedOut => io::ErrorKind::TimedOut,
                        ConnectFailure::Invalid => io::ErrorKind::InvalidInput,
                    };
                    *slot = Some(Err(err(kind, message)));
                    self.changed.notify_all();
                }
            }
            ExtEvent::HostIncoming {
                conn,
                relid,
                link,
                service_id,
                listener_vm_id,
                vm_id,
                endpoint_id,
                layout,
            } => {
                let listener = state
                    .host
                    .listeners
                    .get(&(service_id, listener_vm_id))
                    .cloned();
                let io = match listener {
                    Some(ref listener) if listener.has_room(0) => {
                        self.host_channel(state, conn, layout, fds, relid, link)
                    }
                    _ => Err(err(io::ErrorKind::ConnectionRefused, "no room")),
                };
                match (io, listener) {
                    (Ok(io), Some(listener)) => listener.push(Ready {
                        io,
                        key: ChannelKey::Conn(conn),
                        ends: Ends {
                            local: service_id,
                            peer: endpoint_id,
                            vm_id,
                        },
                    }),
                    (Ok(_), None) => self.release(state, ChannelKey::Conn(conn)),
                    (Err(e), _) => {
                        tracing::info!(conn, "refusing an incoming connection: {e}");
                        state.host.conns.remove(&conn);
                        self.send_ext(state, &ExtRequest::HostClose { conn });
                    }
                }
            }
            ExtEvent::HostRevoked { conn, reason } => {
                if let Some(io) = state.host.conns.get(&conn) {
                    io.mark_gone(Gone::Closed(reason));
                }
            }
            ExtEvent::Refused { reason } => {
                tracing::warn!("the hvsock host refused a request: {reason}");
            }
            other => {
                tracing::debug!(?other, "unexpected event");
            }
        }
    }

    /// The signal link `id` the host named for a channel.
    fn link(&self, state: &State, id: u64) -> io::Result<Arc<Link>> {
        self.bell.link(id).ok_or_else(|| {
            let why = match state.refused_links.get(&id) {
                Some(reason) => format!("whose descriptors were refused: {reason}"),
                None => "which it never sent (or whose peer is gone)".into(),
            };
            err(
                io::ErrorKind::InvalidData,
                format!("the host named signal link {id}, {why}"),
            )
        })
    }

    /// Maps a channel the host handed over and remembers it for revokes.
    fn host_channel(
        &self,
        state: &mut State,
        conn: u64,
        layout: RingLayout,
        fds: Vec<OwnedFd>,
        relid: u32,
        link: u64,
    ) -> io::Result<Arc<ChannelIo>> {
        let link = self.link(state, link)?;
        let io = Arc::new(host_io(layout, fds, &self.bell, link, relid)?);
        state.host.conns.insert(conn, io.clone());
        Ok(io)
    }
}

/// Why the control connection ended, from what happened: an end before the
/// host ever answered is most likely a refusal.
fn lost(state: &State, what: String) -> String {
    if state.contacted {
        what
    } else {
        format!(
            "{what} before answering: the hvsock host serves only the users it was started \
             for (its own uid and root; is this process another user's?), or it is shutting down"
        )
    }
}

/// The next ephemeral port not bound by a listener of ours nor used by a
/// connect in flight (the host refuses one already used by a live channel).
fn allocate_port(guest: &mut GuestState) -> io::Result<u32> {
    let GuestState {
        ports,
        listeners,
        connects,
        ..
    } = guest;
    ports
        .allocate(|port| {
            let guid = Guid::from_vsock_port(port);
            listeners.contains_key(&port) || connects.keys().any(|(local, _)| *local == guid)
        })
        .map_err(|e| err(io::ErrorKind::AddrNotAvailable, e.to_string()))
}

/// A VMBus message in one line, for the wire log.
fn describe(message: &vmbus::Message) -> String {
    use vmbus::Message as M;
    let name = message.message_type().name().unwrap_or("?");
    match message {
        M::OfferChannel(o) => format!(
            "{name} relid {} if_type {} if_instance {}{}",
            o.child_relid,
            o.if_type,
            o.if_instance,
            if o.hvsock_params().is_some_and(|p| p.is_for_guest_accept) {
                " (connection from host)"
            } else {
                ""
            }
        ),
        M::RescindChannelOffer { child_relid }
        | M::CloseChannel { child_relid }
        | M::RelidReleased { child_relid } => format!("{name} relid {child_relid}"),
        M::OpenChannel(o) => format!(
            "{name} relid {} gpadl {:#x} downstream page offset {}",
            o.child_relid, o.ringbuffer_gpadlhandle, o.downstream_ringbuffer_pageoffset
        ),
        M::OpenChannelResult {
            child_relid,
            status,
            ..
        } => format!("{name} relid {child_relid} status {status:#x}"),
        M::GpadlHeader(h) => format!(
            "{name} relid {} gpadl {:#x} {} pages (+ memfd)",
            h.child_relid(),
            h.gpadl(),
            h.total_pages()
        ),
        M::GpadlCreated {
            child_relid,
            gpadl,
            creation_status,
        } => format!("{name} relid {child_relid} gpadl {gpadl:#x} status {creation_status:#x}"),
        M::GpadlTeardown { child_relid, gpadl } => {
            format!("{name} relid {child_relid} gpadl {gpadl:#x}")
        }
        M::GpadlTorndown { gpadl } => format!("{name} gpadl {gpadl:#x}"),
        M::InitiateContact(c) => format!("{name} version {:#x}", c.vmbus_version_requested),
        M::VersionResponse(r) => format!("{name} supported {}", r.version_supported),
        M::TlConnectRequest(r) => format!(
            "{name} guest endpoint {} -> host service {}",
            r.guest_endpoint_id, r.host_service_id
        ),
        M::TlConnectResult(r) => format!("{name} status {:#x}", r.status),
        _ => name.to_owned(),
    }
}

fn describe_request(request: &ExtRequest) -> String {
    match request {
        ExtRequest::GuestListen { port } => format!("listen on port {port}"),
        ExtRequest::GuestUnlisten { port } => format!("stop listening on port {port}"),
        ExtRequest::HostListen { service_id, vm_id } => {
            format!("listen on service {service_id} for VM {vm_id}")
        }
        ExtRequest::HostConnect {
            vm_id,
            vm_name,
            service_id,
            ..
        } => format!(
            "connect to service {service_id} in VM {}",
            vm_name.clone().unwrap_or_else(|| vm_id.to_string())
        ),
        ExtRequest::HostClose { conn } => format!("close connection {conn}"),
        ExtRequest::VmList => "list the VMs (a first request, answered if we are served)".into(),
        other => format!("{other:?}"),
    }
}

fn describe_event(event: &ExtEvent) -> String {
    match event {
        ExtEvent::HostConnected { conn, layout, .. }
        | ExtEvent::HostIncoming { conn, layout, .. } => format!(
            "connection {conn} ready: rings of {} + {} pages (+ memfd)",
            layout.guest_to_host_pages,
            layout.total_pages - layout.guest_to_host_pages
        ),
        ExtEvent::HostRevoked { conn, reason } => format!("connection {conn} revoked: {reason}"),
        ExtEvent::Link { link } => {
            format!("signal link {link} (+ flags memfd and 2 signal sockets)")
        }
        ExtEvent::ChannelLink { relid, link } => {
            format!("channel {relid} signals through link {link}")
        }
        ExtEvent::GuestListenResult { port, error } => match error {
            None => format!("listening on port {port}"),
            Some(e) => format!("cannot listen on port {port}: {e}"),
        },
        ExtEvent::HostListenResult {
            service_id, error, ..
        } => match error {
            None => format!("listening on service {service_id}"),
            Some(e) => format!("cannot listen on service {service_id}: {e}"),
        },
        ExtEvent::HostConnectFailed { message, .. } => format!("connect failed: {message}"),
        ExtEvent::VmList { vms } => {
            let names: Vec<&str> = vms.iter().map(|vm| vm.name.as_str()).collect();
            format!("VMs: {}", names.join(", "))
        }
        other => format!("{other:?}"),
    }
}
