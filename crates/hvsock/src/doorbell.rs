//! Signals between this process and its peers, VMBus-style: one *link* per
//! peer process (a signal socket each way and two bitmaps with a bit per
//! relid, see [`vmbus::ext`]'s "Signals"), however many channels the two
//! share.
//!
//! Owns the links of one endpoint, the per-channel [`Signal`]s, and who
//! waits on the links' signal sockets. Knows nothing of rings or streams: a
//! channel rings its link ([`Link::ring`]) when the ring rules say the peer
//! must be woken, and waits on its [`Signal`] ([`Doorbell::wait`]).
//!
//! One thread at a time (the *poller*) sleeps for the peers' signals. With
//! one link whose peer wakes by futex (the usual case: a guest process and
//! its host), it sleeps in `futex_waitv` on the link's futex word and a
//! private kick word, the cheapest wake-up there is (see [`vmbus::ext`]'s
//! "Waking a sleeping side"). Otherwise the links' receiving sockets sit in
//! one epoll set, edge-triggered (each send by a peer is one event), and
//! the poller waits in `epoll_wait` and drains the sockets of the links
//! that fired (so that their buffers never fill). Either way it tells the
//! peers how to wake it before it sleeps and looks at the bits once more,
//! takes the bits, bumps the generation of each channel named, and wakes
//! the threads parked for those channels. A thread waiting for a channel
//! becomes the poller when nobody is; when a poller leaves (its own channel
//! fired), it hands the role to a parked thread. A process that only waits
//! in one thread thus sleeps in `futex_waitv` or `epoll_wait` itself and
//! pays no extra context switch.
//! Async tasks and callers of a stream's readiness descriptor have no thread
//! waiting for them, so for them a background thread takes the poller role
//! whenever no application thread holds it.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::task::Waker;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hvsock_shm::{EventFd, Mapping, SharedMemory, SignalReceiver, SignalSender};
use rustix::event::epoll;
use rustix::thread::futex;
use vmbus::ext::{
    GUEST_TO_HOST_FLAGS, GUEST_WAKE_AREA, HOST_TO_GUEST_FLAGS, HOST_WAKE_AREA, LINK_FLAGS_BYTES,
    MAX_RELID, WAKE_BY_FUTEX, WAKE_BY_SOCKET, WAKE_FEATURES, WAKE_FEATURE_FUTEX, WAKE_FUTEX,
    WAKE_NOT_NEEDED, WAKE_STATE,
};

use crate::channel::Side;
use crate::error::{err, shm_io};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The signal path to one peer process.
#[derive(Debug)]
pub(crate) struct Link {
    id: u64,
    flags: Mapping,
    /// Byte offset of the bitmap we set (the peer takes it).
    outgoing_bits: usize,
    /// Byte offset of the bitmap the peer sets (we take it).
    incoming_bits: usize,
    /// Byte offset of our wake area (how we want to be woken).
    own_wake: usize,
    /// Byte offset of the peer's wake area.
    peer_wake: usize,
    /// Signalled by the peer; we wait on it.
    incoming: SignalReceiver,
    /// We signal it; the peer waits on its other end.
    outgoing: SignalSender,
    /// Its peer passed descriptors: a reaper thread owns the receiving
    /// socket now, and we never drain it again.
    reaped: AtomicBool,
}

impl Link {
    /// A link whose descriptors came from the host: the flags memfd, the
    /// socket end we wait on, the one we signal. Validates all three.
    pub(crate) fn from_fds(id: u64, side: Side, fds: Vec<OwnedFd>) -> io::Result<Self> {
        let [flags, incoming, outgoing]: [OwnedFd; 3] = fds.try_into().map_err(|fds: Vec<_>| {
            err(
                io::ErrorKind::InvalidData,
                format!(
                    "the host sent {} file descriptors for signal link {id}, not 3 \
                     (is the host daemon from another version of hvsock?)",
                    fds.len()
                ),
            )
        })?;
        let memory = SharedMemory::from_fd(flags, LINK_FLAGS_BYTES).map_err(|e| {
            err(
                io::ErrorKind::InvalidData,
                format!(
                    "the host's memory for signal link {id} is unusable: {e} (is the host \
                     daemon from another version of hvsock?)"
                ),
            )
        })?;
        Ok(Self::new(
            id,
            side,
            Mapping::new(&memory).map_err(shm_io)?,
            SignalReceiver::from_fd(incoming).map_err(shm_io)?,
            SignalSender::from_fd(outgoing).map_err(shm_io)?,
        ))
    }

    fn new(
        id: u64,
        side: Side,
        flags: Mapping,
        incoming: SignalReceiver,
        outgoing: SignalSender,
    ) -> Self {
        let (outgoing_bits, incoming_bits, own_wake, peer_wake) = match side {
            Side::Guest => (
                GUEST_TO_HOST_FLAGS,
                HOST_TO_GUEST_FLAGS,
                GUEST_WAKE_AREA,
                HOST_WAKE_AREA,
            ),
            Side::Host => (
                HOST_TO_GUEST_FLAGS,
                GUEST_TO_HOST_FLAGS,
                HOST_WAKE_AREA,
                GUEST_WAKE_AREA,
            ),
        };
        let link = Self {
            id,
            flags,
            outgoing_bits,
            incoming_bits,
            own_wake,
            peer_wake,
            incoming,
            outgoing,
            reaped: AtomicBool::new(false),
        };
        link.offer_futex_wakes(true);
        link
    }

    /// Tells the peer whether we wake it by futex when it asks (see
    /// [`vmbus::ext`]'s "Waking a sleeping side").
    fn offer_futex_wakes(&self, offer: bool) {
        if let Some(features) = self.wake_word(self.own_wake, WAKE_FEATURES) {
            if offer {
                features.fetch_or(WAKE_FEATURE_FUTEX, Ordering::SeqCst);
            } else {
                features.fetch_and(!WAKE_FEATURE_FUTEX, Ordering::SeqCst);
            }
        }
    }

    /// Whether the peer wakes us by futex when we ask.
    fn peer_wakes_by_futex(&self) -> bool {
        self.wake_word(self.peer_wake, WAKE_FEATURES)
            .is_some_and(|w| w.load(Ordering::SeqCst) & WAKE_FEATURE_FUTEX != 0)
    }

    /// Tells the peer how to wake us from now on.
    fn announce(&self, state: u32) {
        if let Some(word) = self.wake_word(self.own_wake, WAKE_STATE) {
            word.store(state, Ordering::SeqCst);
        }
    }

    /// The futex word we sleep on (the peer may write it too).
    fn own_futex(&self) -> Option<&std::sync::atomic::AtomicU32> {
        self.wake_word(self.own_wake, WAKE_FUTEX)
    }

    /// A word of a wake area. The flags memfd was checked to be
    /// `LINK_FLAGS_BYTES` long, so this is never `None` in practice.
    fn wake_word(&self, area: usize, field: usize) -> Option<&std::sync::atomic::AtomicU32> {
        self.flags.atomic_u32(area + field).ok()
    }

    /// Wakes the peer the way it asked: nothing while it is awake (it looks
    /// at its bits before it sleeps), its futex, or its socket.
    fn wake_peer(&self) -> Result<(), String> {
        let state = self
            .wake_word(self.peer_wake, WAKE_STATE)
            .map_or(WAKE_BY_SOCKET, |w| w.load(Ordering::SeqCst));
        match state {
            WAKE_NOT_NEEDED => Ok(()),
            WAKE_BY_FUTEX => match self.wake_word(self.peer_wake, WAKE_FUTEX) {
                Some(word) => wake_futex(word, futex::Flags::empty()),
                None => Ok(()),
            },
            _ => self.outgoing.signal().map_err(|e| e.to_string()),
        }
    }

    /// Both ends of a new link in this process (the guest's, the host's), as
    /// the host daemon makes them; for tests that build channels without a
    /// host.
    #[cfg(test)]
    pub(crate) fn pair(id: u64) -> io::Result<(Self, Self)> {
        let memory = SharedMemory::create("hvsock-link", LINK_FLAGS_BYTES).map_err(shm_io)?;
        let (guest_waits, host_signals) = hvsock_shm::signal_pair().map_err(shm_io)?;
        let (host_waits, guest_signals) = hvsock_shm::signal_pair().map_err(shm_io)?;
        let guest = Self::new(
            id,
            Side::Guest,
            Mapping::new(&memory).map_err(shm_io)?,
            guest_waits,
            guest_signals,
        );
        let host = Self::new(
            id,
            Side::Host,
            Mapping::new(&memory).map_err(shm_io)?,
            host_waits,
            host_signals,
        );
        Ok((guest, host))
    }

    /// The link's id, as the host named it.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Wakes the peer for channel `relid`: sets its bit and, only if the bit
    /// was clear (a set bit means a signal is on its way or not yet taken),
    /// wakes the peer the way it asked (nothing while it is awake, its
    /// futex, or its signal socket). Never blocks.
    pub(crate) fn ring(&self, relid: u32) -> io::Result<()> {
        let word = self.word(self.outgoing_bits, relid / 32)?;
        let bit = 1u32 << (relid % 32);
        // SeqCst: our ring stores happen before the bit (release), and the
        // peer's swap of the word (acquire) therefore sees them.
        if word.fetch_or(bit, Ordering::SeqCst) & bit == 0 {
            if let Err(e) = self.wake_peer() {
                // Not the caller's failure: its packets are in the ring and
                // published. The bit is cleared again so that the next ring
                // tries to send (a set bit would silence every later one);
                // the peer still finds the packets at its next look.
                word.fetch_and(!bit, Ordering::SeqCst);
                tracing::warn!(link = self.id, relid, "cannot wake the peer: {e}");
            }
        }
        Ok(())
    }

    /// Takes (clears) the bits of the peer's bitmap word `index`.
    fn take(&self, index: u32) -> u32 {
        // A load first: most words are 0, and a swap is a locked
        // instruction on a line the peer writes.
        self.word(self.incoming_bits, index).map_or(0, |w| {
            if w.load(Ordering::SeqCst) == 0 {
                0
            } else {
                w.swap(0, Ordering::SeqCst)
            }
        })
    }

    fn word(&self, bitmap: usize, index: u32) -> io::Result<&std::sync::atomic::AtomicU32> {
        if index > MAX_RELID / 32 {
            return Err(err(
                io::ErrorKind::InvalidInput,
                format!("relid {} has no bit in a signal link", index * 32),
            ));
        }
        self.flags
            .atomic_u32(bitmap + 4 * index as usize)
            .map_err(shm_io)
    }
}

/// Moves `word` on and wakes everyone sleeping on it: all, not one, so that
/// a peer that waits on our word too cannot take the wake-up meant for us.
fn wake_futex(word: &std::sync::atomic::AtomicU32, flags: futex::Flags) -> Result<(), String> {
    word.fetch_add(1, Ordering::SeqCst);
    futex::wake(word, flags, i32::MAX as u32)
        .map(drop)
        .map_err(|e| format!("FUTEX_WAKE: {e}"))
}

/// One channel's wake-ups: a generation that moves each time the peer (or
/// this process) signals the channel, and whoever waits for it.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    generation: AtomicU64,
    /// Threads parked for this signal (changed under the doorbell's lock).
    parked: AtomicUsize,
    wakers: Mutex<Vec<Waker>>,
    /// A descriptor made readable on each signal, made on first demand.
    readiness: OnceLock<EventFd>,
}

impl Signal {
    /// The current generation: take it before checking a condition, and
    /// pass it to [`Doorbell::wait`].
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn fire(&self) {
        let mut wakers = Vec::new();
        self.fire_later(&mut wakers);
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Fires, but leaves the wakers in `wakers`, to be woken once the
    /// doorbell's lock is released (a waker is foreign code).
    fn fire_later(&self, wakers: &mut Vec<Waker>) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        wakers.append(&mut lock(&self.wakers));
        if let Some(readiness) = self.readiness.get() {
            let _ = readiness.signal();
        }
    }

    /// Registers `waker` to be woken by the next signal.
    pub(crate) fn register(&self, waker: &Waker) {
        let mut wakers = lock(&self.wakers);
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
    }

    /// Takes a pending readiness signal, so that a caller polling the
    /// readiness descriptor is woken by the next one.
    pub(crate) fn drain_readiness(&self) -> io::Result<()> {
        if let Some(readiness) = self.readiness.get() {
            readiness.try_wait().map_err(shm_io)?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct LinkEntry {
    link: Arc<Link>,
    /// Channels by relid (more than one only while a released relid's old
    /// stream lingers beside its new channel).
    channels: HashMap<u32, Vec<Arc<Signal>>>,
    /// Bitmap words in use, with how many channels use each.
    words: BTreeMap<u32, usize>,
    /// The peer is gone; the entry goes with its last channel.
    closed: bool,
}

impl LinkEntry {
    /// Whether the peer set a bit of a channel we serve.
    fn has_bits(&self) -> bool {
        self.words.keys().any(|&index| {
            self.link
                .word(self.link.incoming_bits, index)
                .is_ok_and(|w| w.load(Ordering::SeqCst) != 0)
        })
    }

    fn new(link: Arc<Link>) -> Self {
        Self {
            link,
            channels: HashMap::new(),
            words: BTreeMap::new(),
            closed: false,
        }
    }
}

/// How the poller sleeps (see [`Doorbell::prepare_sleep`]).
#[derive(Debug)]
enum Sleep {
    /// On the futex of the one link, with what its word and the local kick
    /// word held before the announcement.
    Futex {
        link: Arc<Link>,
        futex_seen: u32,
        kick_seen: u32,
    },
    /// In epoll, on every link's socket and the kick.
    Epoll,
}

/// What a sleep returned.
enum Fired<'e> {
    /// No events: the caller looks at the bits (futex, or no sleep).
    Nothing,
    /// Epoll's events.
    Events(&'e mut [epoll::Event]),
}

/// The epoll data of the kick (link ids are counted up from 1).
const KICK: u64 = u64::MAX;

/// Events taken from epoll at once; more simply wait for the next call.
const EVENTS_AT_ONCE: usize = 32;

#[derive(Debug, Default)]
struct BellState {
    links: HashMap<u64, LinkEntry>,
    /// A thread polls (sleeps in `epoll_wait` or on a futex).
    polling: bool,
    /// ... on the futex of the one link (then kicks go to `local_kick`).
    futex_polling: bool,
    /// Threads parked on the condition variable.
    parked: usize,
    background: Option<JoinHandle<()>>,
}

/// The links of one endpoint and the channels that wait on them.
#[derive(Debug)]
pub(crate) struct Doorbell {
    /// The links' receiving sockets and the kick, edge-triggered.
    epoll: OwnedFd,
    /// Interrupts a poller in `epoll_wait`: a local wake-up, the end.
    kick: EventFd,
    /// Interrupts a poller on a futex: a private futex word, out of the
    /// peer's reach.
    local_kick: std::sync::atomic::AtomicU32,
    /// `futex_waitv` works here (Linux 5.16+, not refused by a sandbox).
    futex_works: AtomicBool,
    /// Tests: `futex_waitv` fails as on a kernel without it.
    #[cfg(test)]
    refuse_futex: AtomicBool,
    state: Mutex<BellState>,
    parked: Condvar,
    /// The background poller's own signal, fired only to stop it.
    background: Arc<Signal>,
    stopping: AtomicBool,
}

impl Doorbell {
    pub(crate) fn new() -> io::Result<Arc<Self>> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let kick = EventFd::new().map_err(shm_io)?;
        Self::watch(&epoll, &kick, KICK)?;
        Ok(Arc::new(Self {
            epoll,
            kick,
            local_kick: Default::default(),
            futex_works: AtomicBool::new(true),
            #[cfg(test)]
            refuse_futex: AtomicBool::new(false),
            state: Mutex::default(),
            parked: Condvar::new(),
            background: Arc::default(),
            stopping: AtomicBool::new(false),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, BellState> {
        lock(&self.state)
    }

    /// Edge-triggered: every write to an eventfd or send on a socket is one
    /// event. The kick (ours alone) is never read, its counter only grows
    /// (2^64 - 1 writes are far away); a link's socket is drained by the
    /// poller on each of its events, since its buffer is finite.
    fn watch(epoll: &OwnedFd, event: &impl AsFd, data: u64) -> io::Result<()> {
        epoll::add(
            epoll,
            event,
            epoll::EventData::new_u64(data),
            epoll::EventFlags::IN | epoll::EventFlags::ET,
        )?;
        Ok(())
    }

    /// Adds a link the host announced. A link id seen before is refused
    /// (the host never reuses ids, so only a confused host sends one).
    pub(crate) fn add_link(&self, link: Link) -> io::Result<()> {
        if link.id == KICK {
            return Err(err(
                io::ErrorKind::InvalidData,
                "signal link id u64::MAX is reserved",
            ));
        }
        let mut st = self.lock();
        if st.links.contains_key(&link.id) {
            return Err(err(
                io::ErrorKind::InvalidData,
                format!("the host sent signal link {} twice", link.id),
            ));
        }
        Self::watch(&self.epoll, &link.incoming, link.id)?;
        st.links.insert(link.id, LinkEntry::new(Arc::new(link)));
        // A poller on the first link's futex would not hear this one.
        self.kick_poller(&st);
        Ok(())
    }

    /// Interrupts the poller, if any, wherever it sleeps.
    fn kick_poller(&self, st: &BellState) {
        if !st.polling {
            return;
        }
        if st.futex_polling {
            let _ = wake_futex(&self.local_kick, futex::Flags::PRIVATE);
        } else {
            let _ = self.kick.signal();
        }
    }

    /// Stops listening to a link whose peer attached descriptors to a
    /// wake-up (only where the kernel cannot refuse them, before 6.16): its
    /// socket leaves the epoll set, and a thread of its own takes and
    /// closes what the peer sends, so that whatever those closes wait for
    /// never holds up this thread or the doorbell. The peer's channels get
    /// no more wake-ups; everyone else's are untouched.
    fn stop_listening(&self, link: &Link) {
        if link.reaped.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::warn!(
            link = link.id,
            "a peer attached file descriptors to a wake-up on its signal link, which the \
             protocol never does; its channels are no longer woken"
        );
        let _ = epoll::delete(&self.epoll, &link.incoming);
        if let Err(e) = link.incoming.reap_on_a_thread() {
            tracing::warn!(link = link.id, "{e}");
        }
    }

    fn forget(&self, st: &mut BellState, id: u64) {
        if let Some(entry) = st.links.remove(&id) {
            let _ = epoll::delete(&self.epoll, &entry.link.incoming);
        }
    }

    /// Forgets a link whose peer is gone, once its last channel goes (their
    /// last signals may still be on the way).
    pub(crate) fn remove_link(&self, id: u64) {
        let mut st = self.lock();
        match st.links.get_mut(&id) {
            Some(entry) if entry.channels.is_empty() => self.forget(&mut st, id),
            Some(entry) => entry.closed = true,
            None => {}
        }
    }

    /// The link `id`, if the host announced it and its peer is not gone.
    pub(crate) fn link(&self, id: u64) -> Option<Arc<Link>> {
        self.lock()
            .links
            .get(&id)
            .filter(|e| !e.closed)
            .map(|e| e.link.clone())
    }

    /// Registers channel `relid` on `link` and returns its signal.
    pub(crate) fn register(&self, link: &Arc<Link>, relid: u32) -> io::Result<Arc<Signal>> {
        if relid > MAX_RELID {
            return Err(err(
                io::ErrorKind::InvalidData,
                format!("the host gave relid {relid}, above the largest a link can signal ({MAX_RELID})"),
            ));
        }
        let signal = Arc::new(Signal::default());
        let mut st = self.lock();
        let new_link = !st.links.contains_key(&link.id);
        let entry = match st.links.entry(link.id) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                // A link its peer left (or one made without the host, in tests).
                Self::watch(&self.epoll, &link.incoming, link.id)?;
                entry.insert(LinkEntry::new(link.clone()))
            }
        };
        entry
            .channels
            .entry(relid)
            .or_default()
            .push(signal.clone());
        *entry.words.entry(relid / 32).or_default() += 1;
        // The peer may have rung this relid before we served it (it writes
        // as soon as the channel is open, and we learn of the channel a
        // message later), or a channel that had it before left its bit set.
        // A set bit silences the peer's next rings (they find it set), and
        // nobody took it, so take it now; the channels it names, the new
        // one included, look at their rings once more.
        let mut wakers = Vec::new();
        if Self::take_word(entry, relid / 32, &mut wakers) {
            self.parked.notify_all();
        }
        if new_link {
            // A poller on another link's futex would not hear this one.
            self.kick_poller(&st);
        }
        drop(st);
        wakers.into_iter().for_each(Waker::wake);
        Ok(signal)
    }

    /// Forgets a channel's signal.
    pub(crate) fn unregister(&self, link: u64, relid: u32, signal: &Arc<Signal>) {
        let mut st = self.lock();
        let Some(entry) = st.links.get_mut(&link) else {
            return;
        };
        let Some(signals) = entry.channels.get_mut(&relid) else {
            return;
        };
        let before = signals.len();
        signals.retain(|s| !Arc::ptr_eq(s, signal));
        if signals.len() == before {
            return;
        }
        if signals.is_empty() {
            entry.channels.remove(&relid);
        }
        if let Some(count) = entry.words.get_mut(&(relid / 32)) {
            *count -= 1;
            if *count == 0 {
                entry.words.remove(&(relid / 32));
            }
        }
        if entry.closed && entry.channels.is_empty() {
            self.forget(&mut st, link);
        }
    }

    /// Wakes whoever waits for `signal` without a signal from the peer (the
    /// channel was closed, shut down, or a new waiter needs a first look).
    pub(crate) fn wake(&self, signal: &Signal) {
        signal.fire();
        let st = self.lock();
        if signal.parked.load(Ordering::Relaxed) > 0 {
            self.parked.notify_all();
        }
        // The poller may be the thread waiting for this signal.
        self.kick_poller(&st);
    }

    /// Sleeps until `signal` moved past generation `seen`, or until
    /// `deadline`. Returns false on timeout.
    pub(crate) fn wait(
        &self,
        signal: &Signal,
        seen: u64,
        deadline: Option<Instant>,
    ) -> io::Result<bool> {
        let mut st = self.lock();
        loop {
            if signal.generation() != seen {
                self.pass_on(&st);
                return Ok(true);
            }
            let remaining = match deadline {
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => {
                        self.pass_on(&st);
                        return Ok(false);
                    }
                },
                None => None,
            };
            if st.polling {
                st.parked += 1;
                signal.parked.fetch_add(1, Ordering::Relaxed);
                st = match remaining {
                    Some(left) => {
                        self.parked
                            .wait_timeout(st, left)
                            .unwrap_or_else(|e| e.into_inner())
                            .0
                    }
                    None => self.parked.wait(st).unwrap_or_else(|e| e.into_inner()),
                };
                st.parked -= 1;
                signal.parked.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            st.polling = true;
            let sleep = self.prepare_sleep(&mut st);
            // The look after announcing how to wake us: the bits of peers
            // that saw us awake and therefore sent nothing.
            let mut wakers = Vec::new();
            let mut wake_parked = false;
            for entry in st.links.values() {
                if matches!(sleep, Sleep::Epoll) && entry.has_bits() {
                    // Their bytes too, as after an event: a socket is only
                    // ever left with the bytes of bits not yet taken.
                    self.drain(&entry.link);
                }
                wake_parked |= Self::take_signals(entry, &mut wakers);
            }
            if wake_parked {
                self.parked.notify_all();
            }
            let ours_fired = signal.generation() != seen;
            drop(st);
            wakers.drain(..).for_each(Waker::wake);
            let mut events = [MaybeUninit::<epoll::Event>::uninit(); EVENTS_AT_ONCE];
            let polled = match sleep {
                _ if ours_fired => Ok(Fired::Nothing),
                Sleep::Epoll => self.poll_links(&mut events, remaining).map(Fired::Events),
                Sleep::Futex {
                    ref link,
                    futex_seen,
                    kick_seen,
                } => {
                    self.sleep_on_futex(link, futex_seen, kick_seen, remaining);
                    Ok(Fired::Nothing)
                }
            };
            st = self.lock();
            st.polling = false;
            st.futex_polling = false;
            let mut wake_parked = false;
            if let Sleep::Futex { link, .. } = &sleep {
                link.announce(WAKE_NOT_NEEDED);
                if let Some(entry) = st.links.get(&link.id) {
                    wake_parked |= Self::take_signals(entry, &mut wakers);
                }
            }
            if let Ok(Fired::Events(fired)) = &polled {
                for event in fired.iter() {
                    let id = event.data.u64();
                    if let Some(entry) = st.links.get(&id) {
                        // Drained first: a send that finds the buffer full
                        // is dropped, and its bit is then taken below.
                        self.drain(&entry.link);
                        wake_parked |= Self::take_signals(entry, &mut wakers);
                    }
                }
            }
            if wake_parked {
                self.parked.notify_all();
            }
            if !wakers.is_empty() {
                drop(st);
                wakers.into_iter().for_each(Waker::wake);
                st = self.lock();
            }
            // Leaving (here, or at the top of the loop: our signal fired or
            // the deadline passed), someone must poll in our place.
            if let Err(e) = polled {
                self.pass_on(&st);
                return Err(e);
            }
        }
    }

    /// Decides how the poller sleeps this time and tells the peers: on the
    /// futex of the one link when its peer wakes by futex (the cheapest
    /// wake-up), else on every link's socket and the kick, in epoll.
    fn prepare_sleep(&self, st: &mut BellState) -> Sleep {
        let only = match st.links.len() {
            1 => st.links.values().next(),
            _ => None,
        };
        if let Some(entry) = only.filter(|_| self.futex_works.load(Ordering::Relaxed)) {
            let link = &entry.link;
            if let (true, Some(word)) = (link.peer_wakes_by_futex(), link.own_futex()) {
                // Read before the announcement: a wake-up after it moves
                // the word past what we read, and the wait returns at once.
                let futex_seen = word.load(Ordering::SeqCst);
                let kick_seen = self.local_kick.load(Ordering::SeqCst);
                link.announce(WAKE_BY_FUTEX);
                st.futex_polling = true;
                return Sleep::Futex {
                    link: link.clone(),
                    futex_seen,
                    kick_seen,
                };
            }
        }
        for entry in st.links.values() {
            entry.link.announce(WAKE_BY_SOCKET);
        }
        Sleep::Epoll
    }

    /// Sleeps on `link`'s futex word (which the peer may also write) and
    /// our private kick word, until either moves from what was read, or
    /// `timeout`. Any failure other than those is taken as "futexes do
    /// not work here" (an old kernel, a sandbox): from then on the poller
    /// sleeps in epoll.
    fn sleep_on_futex(
        &self,
        link: &Link,
        futex_seen: u32,
        kick_seen: u32,
        timeout: Option<Duration>,
    ) {
        let Some(word) = link.own_futex() else {
            return;
        };
        let mut waiters = [futex::Wait::new(), futex::Wait::new()];
        // Shared, not private: the peer process wakes it.
        waiters[0].uaddr = futex::WaitPtr::new(word.as_ptr().cast());
        waiters[0].val = u64::from(futex_seen);
        waiters[0].flags = futex::WaitFlags::SIZE_U32;
        waiters[1].uaddr = futex::WaitPtr::new(self.local_kick.as_ptr().cast());
        waiters[1].val = u64::from(kick_seen);
        waiters[1].flags = futex::WaitFlags::SIZE_U32 | futex::WaitFlags::PRIVATE;
        // futex_waitv's timeout is a point on the monotonic clock.
        // A day at most per call, as in `poll_links`: callers loop.
        let deadline = timeout.and_then(|t| {
            let t = futex::Timespec::try_from(t.min(Duration::from_secs(86_400))).ok()?;
            rustix::time::clock_gettime(rustix::time::ClockId::Monotonic).checked_add(t)
        });
        #[cfg(test)]
        let refused = self.refuse_futex.load(Ordering::Relaxed);
        #[cfg(not(test))]
        let refused = false;
        let slept = if refused {
            Err(rustix::io::Errno::NOSYS)
        } else {
            futex::waitv(
                &waiters,
                futex::WaitvFlags::empty(),
                deadline.as_ref(),
                futex::ClockId::Monotonic,
            )
        };
        match slept {
            Ok(_)
            | Err(
                rustix::io::Errno::AGAIN | rustix::io::Errno::INTR | rustix::io::Errno::TIMEDOUT,
            ) => {}
            Err(e) => {
                tracing::debug!("futex_waitv failed ({e}); waiting on the signal sockets instead");
                self.futex_works.store(false, Ordering::Relaxed);
            }
        }
    }

    /// Empties a link's socket of the bytes its peer sent (unless a reaper
    /// owns it).
    fn drain(&self, link: &Link) {
        if link.reaped.load(Ordering::SeqCst) {
            return;
        }
        match link.incoming.drain() {
            Ok(_) => {}
            Err(hvsock_shm::Error::PeerPassedDescriptors) => self.stop_listening(link),
            Err(e) => tracing::debug!(link = link.id, "cannot drain a signal socket: {e}"),
        }
    }

    /// A thread leaving `wait` may have been handed the poller role (by a
    /// `notify_one`): if nobody polls and someone is parked, wake one.
    fn pass_on(&self, st: &BellState) {
        if !st.polling && st.parked > 0 {
            self.parked.notify_one();
        }
    }

    /// Waits for the links' and the kick's events.
    fn poll_links<'e>(
        &self,
        events: &'e mut [MaybeUninit<epoll::Event>],
        timeout: Option<Duration>,
    ) -> io::Result<&'e mut [epoll::Event]> {
        // Rounded up to whole milliseconds (epoll_wait's unit), so that a
        // short remainder sleeps instead of spinning.
        let timespec = timeout.and_then(|t| {
            // A day at most per call: callers loop until their deadline.
            let ms = t.as_nanos().div_ceil(1_000_000).min(86_400_000) as u64;
            rustix::event::Timespec::try_from(Duration::from_millis(ms)).ok()
        });
        match epoll::wait(&self.epoll, events, timespec.as_ref()) {
            Ok((fired, _)) => Ok(fired),
            Err(rustix::io::Errno::INTR) => Ok(&mut []),
            Err(e) => Err(io::Error::from(e)),
        }
    }

    /// Takes the bits of every channel of a link and fires their signals.
    /// Returns whether a parked thread waits for one of them.
    fn take_signals(entry: &LinkEntry, wakers: &mut Vec<Waker>) -> bool {
        let mut wake_parked = false;
        for &index in entry.words.keys() {
            wake_parked |= Self::take_word(entry, index, wakers);
        }
        wake_parked
    }

    /// Takes the bits of word `index` and fires the channels named.
    fn take_word(entry: &LinkEntry, index: u32, wakers: &mut Vec<Waker>) -> bool {
        let mut wake_parked = false;
        let mut bits = entry.link.take(index);
        while bits != 0 {
            let bit = bits.trailing_zeros();
            bits &= bits - 1;
            // Bits of relids that are not ours are dropped: a peer may set
            // any bit of its bitmap.
            for signal in entry
                .channels
                .get(&(index * 32 + bit))
                .into_iter()
                .flatten()
            {
                signal.fire_later(wakers);
                wake_parked |= signal.parked.load(Ordering::Relaxed) > 0;
            }
        }
        wake_parked
    }

    /// Makes sure someone polls the links even when no application thread
    /// waits (async tasks, readiness descriptors).
    pub(crate) fn ensure_poller(self: &Arc<Self>) -> io::Result<()> {
        let mut st = self.lock();
        if st.background.is_some() || self.stopping.load(Ordering::Acquire) {
            return Ok(());
        }
        let bell = self.clone();
        st.background = Some(
            std::thread::Builder::new()
                .name("hvsock-signals".into())
                .spawn(move || bell.poll_in_background())?,
        );
        Ok(())
    }

    fn poll_in_background(&self) {
        loop {
            // The generation first: stop() sets `stopping` before it fires
            // the signal, so either we see `stopping` or the wait sees the
            // generation move.
            let seen = self.background.generation();
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            if let Err(e) = self.wait(&self.background, seen, None) {
                tracing::warn!("the signal poller stopped: {e}");
                // The next task or descriptor that needs one starts another.
                self.lock().background = None;
                return;
            }
        }
    }

    /// The readiness descriptor of `signal`, made on first use; it also
    /// starts the background poller, as nobody else waits for it.
    pub(crate) fn readiness<'s>(self: &Arc<Self>, signal: &'s Signal) -> io::Result<&'s EventFd> {
        if signal.readiness.get().is_none() {
            let event = EventFd::new().map_err(shm_io)?;
            // Signalled once: data or space may be there already.
            let _ = event.signal();
            let _ = signal.readiness.set(event);
        }
        self.ensure_poller()?;
        Ok(signal.readiness.get().expect("set above"))
    }

    /// Stops the background poller (the endpoint is going away).
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.wake(&self.background);
        let thread = self.lock().background.take();
        if let Some(thread) = thread {
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

#[cfg(test)]
mod tests;
