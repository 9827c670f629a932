//! The doorbell on its own: two ends of a link in one process, each with its
//! own doorbell, as two processes would have them.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::*;

fn in_secs(s: u64) -> Option<Instant> {
    Some(Instant::now() + Duration::from_secs(s))
}

fn link_pair() -> (Arc<Link>, Arc<Link>) {
    let (guest, host) = Link::pair(9).unwrap();
    (Arc::new(guest), Arc::new(host))
}

/// A doorbell serving the host end of link 9: the guest's end (to ring
/// with), the doorbell, and the link as the doorbell holds it.
fn served_link() -> (Arc<Link>, Arc<Doorbell>, Arc<Link>) {
    let (guest, host) = Link::pair(9).unwrap();
    let bell = Doorbell::new().unwrap();
    bell.add_link(host).unwrap();
    let link = bell.link(9).unwrap();
    (Arc::new(guest), bell, link)
}

#[test]
fn ringing_sets_the_bit_and_signals_only_while_it_is_clear() {
    let (guest, host) = link_pair();
    guest.ring(70).unwrap();
    guest.ring(70).unwrap();
    // One signal for two rings: the bit was still set the second time.
    assert!(host.incoming.drain().unwrap());
    assert!(!host.incoming.drain().unwrap());
    assert_eq!(host.take(70 / 32), 1 << (70 % 32));
    assert_eq!(host.take(70 / 32), 0, "taking clears the word");
    // Cleared: the next ring signals again.
    guest.ring(70).unwrap();
    assert!(host.incoming.drain().unwrap());
    // The two directions use different bitmaps.
    assert_eq!(guest.take(70 / 32), 0);
}

#[test]
fn relids_without_a_bit_are_refused() {
    let (guest, _host) = link_pair();
    assert!(guest.ring(MAX_RELID).is_ok());
    assert!(guest.ring(MAX_RELID + 1).is_err());
    let bell = Doorbell::new().unwrap();
    assert!(bell.register(&guest, MAX_RELID + 1).is_err());
}

#[test]
fn a_ring_wakes_the_channel_named_and_no_other() {
    let (guest, bell, link) = served_link();
    let a = bell.register(&link, 3).unwrap();
    let b = bell.register(&link, 40).unwrap();
    let (seen_a, seen_b) = (a.generation(), b.generation());
    guest.ring(40).unwrap();
    // A waits in vain (its bit is not set) but takes B's signal on the way
    // (once it has polled: a waiter preempted past its deadline has not).
    let started = Instant::now();
    while b.generation() == seen_b {
        assert!(!bell
            .wait(&a, seen_a, Some(Instant::now() + Duration::from_millis(50)))
            .unwrap());
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "B's signal was never taken and fired"
        );
    }
    guest.ring(3).unwrap();
    assert!(bell.wait(&a, seen_a, in_secs(20)).unwrap());
}

#[test]
fn each_of_many_waiting_threads_is_woken_by_its_own_channel() {
    let (guest, bell, link) = served_link();
    let relids = [1u32, 2, 33, 64, 65, 1000];
    let threads: Vec<_> = relids
        .iter()
        .map(|&relid| {
            let signal = bell.register(&link, relid).unwrap();
            let seen = signal.generation();
            let bell = bell.clone();
            thread::spawn(move || bell.wait(&signal, seen, in_secs(20)).unwrap())
        })
        .collect();
    thread::sleep(Duration::from_millis(50));
    // One at a time: each wake-up hands the poller role to another thread.
    for (relid, thread) in relids.iter().zip(threads) {
        guest.ring(*relid).unwrap();
        assert!(
            thread.join().unwrap(),
            "relid {relid}'s waiter was not woken"
        );
    }
}

#[test]
fn a_local_wake_reaches_a_thread_blocked_in_poll() {
    let (_guest, bell, _) = served_link();
    let signal = bell.register(&bell.link(9).unwrap(), 5).unwrap();
    let seen = signal.generation();
    let waiter = {
        let (bell, signal) = (bell.clone(), signal.clone());
        thread::spawn(move || bell.wait(&signal, seen, in_secs(20)).unwrap())
    };
    thread::sleep(Duration::from_millis(50));
    bell.wake(&signal);
    assert!(waiter.join().unwrap());
}

#[test]
fn a_link_added_while_a_thread_polls_is_polled_too() {
    let (guest1, host1) = link_pair();
    let (guest2, host2) = {
        let (g, h) = Link::pair(10).unwrap();
        (Arc::new(g), Arc::new(h))
    };
    let bell = Doorbell::new().unwrap();
    bell.add_link(Arc::try_unwrap(host1).unwrap()).unwrap();
    let first = bell.register(&bell.link(9).unwrap(), 1).unwrap();
    let seen = first.generation();
    let poller = {
        let (bell, first) = (bell.clone(), first.clone());
        thread::spawn(move || bell.wait(&first, seen, in_secs(20)).unwrap())
    };
    // The poller sleeps on the one link's futex; the second link's peer
    // wakes by socket only, which that poller would not hear.
    until(&bell, "the poller sleeps on the futex", |st| {
        st.futex_polling
    });
    guest2.offer_futex_wakes(false);
    bell.add_link(Arc::try_unwrap(host2).unwrap()).unwrap();
    let second = bell.register(&bell.link(10).unwrap(), 2).unwrap();
    let seen2 = second.generation();
    guest2.ring(2).unwrap();
    assert!(bell.wait(&second, seen2, in_secs(20)).unwrap());
    guest1.ring(1).unwrap();
    assert!(poller.join().unwrap());
}

#[test]
fn bits_of_relids_we_do_not_serve_are_dropped() {
    let (guest, bell, link) = served_link();
    let ours = bell.register(&link, 8).unwrap();
    let seen = ours.generation();
    // A peer may set any bit; the ones beside ours are taken and ignored.
    guest.ring(9).unwrap();
    assert!(!bell
        .wait(
            &ours,
            seen,
            Some(Instant::now() + Duration::from_millis(500))
        )
        .unwrap());
    assert_eq!(link.take(0), 0, "the stray bit was taken with the word");
}

#[test]
fn the_readiness_descriptor_is_readable_after_a_ring() {
    let (guest, bell, _) = served_link();
    let signal = bell.register(&bell.link(9).unwrap(), 12).unwrap();
    let fd = bell.readiness(&signal).unwrap();
    // Readable at first (a first attempt is due), then not until a ring.
    assert!(fd.try_wait().unwrap());
    assert!(!fd.wait_timeout(Duration::from_millis(30)).unwrap());
    guest.ring(12).unwrap();
    assert!(fd.wait_timeout(Duration::from_secs(20)).unwrap());
    bell.stop();
}

#[test]
fn async_wakers_are_woken_by_a_ring() {
    use std::task::Wake;
    #[derive(Default)]
    struct Flag(std::sync::Mutex<bool>, std::sync::Condvar);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            *self.0.lock().unwrap() = true;
            self.1.notify_all();
        }
    }
    let (guest, bell, _) = served_link();
    let signal = bell.register(&bell.link(9).unwrap(), 4).unwrap();
    let flag = Arc::new(Flag::default());
    signal.register(&Waker::from(flag.clone()));
    bell.ensure_poller().unwrap();
    guest.ring(4).unwrap();
    let woken = flag.0.lock().unwrap();
    let (woken, _) = flag
        .1
        .wait_timeout_while(woken, Duration::from_secs(20), |w| !*w)
        .unwrap();
    assert!(*woken, "the background poller did not wake the task");
    drop(woken);
    bell.stop();
}

#[test]
fn a_link_id_cannot_be_sent_twice() {
    let bell = Doorbell::new().unwrap();
    bell.add_link(Link::pair(3).unwrap().1).unwrap();
    let e = bell.add_link(Link::pair(3).unwrap().1).unwrap_err();
    assert!(e.to_string().contains("twice"), "{e}");
    assert!(bell.add_link(Link::pair(KICK).unwrap().1).is_err());
}

#[test]
fn a_closed_link_lives_until_its_last_channel_goes() {
    let (_guest, bell, link) = served_link();
    let signal = bell.register(&link, 1).unwrap();
    bell.remove_link(9);
    assert!(bell.link(9).is_none(), "no new channel may use it");
    assert!(
        bell.lock().links.contains_key(&9),
        "still watched for its channel"
    );
    bell.unregister(9, 1, &signal);
    assert!(!bell.lock().links.contains_key(&9));
}

#[test]
fn a_ring_before_the_channel_is_served_does_not_silence_later_rings() {
    let (guest, bell, link) = served_link();
    let other = bell.register(&link, 100).unwrap();
    // The peer rings relid 5 before this process has its channel: the
    // poller takes the event but not the bit (no channel serves it yet).
    guest.ring(5).unwrap();
    let seen = other.generation();
    assert!(!bell
        .wait(
            &other,
            seen,
            Some(Instant::now() + Duration::from_millis(30))
        )
        .unwrap());
    let late = bell.register(&link, 5).unwrap();
    // Registering took the stale bit, so the peer's next ring signals.
    let seen = late.generation();
    guest.ring(5).unwrap();
    assert!(
        bell.wait(&late, seen, in_secs(20)).unwrap(),
        "the ring after registration was silenced by the stale bit"
    );
}

#[test]
fn a_bit_left_by_a_departed_channel_does_not_silence_its_successor() {
    let (guest, bell, link) = served_link();
    let old = bell.register(&link, 7).unwrap();
    bell.unregister(9, 7, &old);
    guest.ring(7).unwrap(); // for the old channel, taken by nobody
    let new = bell.register(&link, 7).unwrap();
    let seen = new.generation();
    guest.ring(7).unwrap();
    assert!(bell.wait(&new, seen, in_secs(20)).unwrap());
}

/// Waits (up to 10 s) until `f` holds of the doorbell's state.
fn until(bell: &Doorbell, what: &str, f: impl Fn(&BellState) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f(&bell.lock()) {
        assert!(Instant::now() < deadline, "never came: {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// A thread waiting for `signal` (until `deadline`), started now.
fn waiter(
    bell: &Arc<Doorbell>,
    signal: &Arc<Signal>,
    deadline: Option<Instant>,
) -> thread::JoinHandle<bool> {
    let (bell, signal) = (bell.clone(), signal.clone());
    let seen = signal.generation();
    thread::spawn(move || bell.wait(&signal, seen, deadline).unwrap())
}

#[test]
fn a_parked_thread_handed_the_poller_role_passes_it_on_if_it_leaves() {
    // The poller leaves (its channel fired) and hands its role to the first
    // parked thread; but that thread's own signal moved meanwhile (a local
    // `wake()` that fired the generation and has not yet taken the lock),
    // so it leaves too. Whoever is still parked must get the role.
    let (guest, bell, link) = served_link();
    let (p, first, second) = (
        bell.register(&link, 1).unwrap(),
        bell.register(&link, 2).unwrap(),
        bell.register(&link, 3).unwrap(),
    );
    let poller = waiter(&bell, &p, in_secs(20));
    until(&bell, "a poller", |st| st.polling);
    let first_waiter = waiter(&bell, &first, in_secs(20));
    until(&bell, "one parked thread", |st| st.parked == 1);
    let second_waiter = waiter(&bell, &second, in_secs(3));
    until(&bell, "two parked threads", |st| st.parked == 2);
    // `wake(&first)` begins: the generation moves, the lock is not taken yet.
    first.fire();
    // The poller's channel fires: it leaves and wakes one parked thread,
    // the first (condition variables wake in arrival order), which leaves.
    guest.ring(1).unwrap();
    assert!(poller.join().unwrap());
    assert!(first_waiter.join().unwrap());
    // `wake(&first)` ends: nobody is parked for `first` any more.
    bell.wake(&first);
    guest.ring(3).unwrap();
    assert!(
        second_waiter.join().unwrap(),
        "the second thread slept through its signal: nobody polled"
    );
}

#[test]
fn the_background_poller_is_not_stranded_by_a_thread_that_leaves() {
    // As above, with the background poller as the thread left parked: every
    // async task and readiness descriptor would then sleep forever.
    use std::task::Wake;
    struct Flag(std::sync::mpsc::SyncSender<()>);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            let _ = self.0.try_send(());
        }
    }
    let (guest, bell, link) = served_link();
    let (p, first, task) = (
        bell.register(&link, 1).unwrap(),
        bell.register(&link, 2).unwrap(),
        bell.register(&link, 3).unwrap(),
    );
    let poller = waiter(&bell, &p, in_secs(20));
    until(&bell, "a poller", |st| st.polling);
    let first_waiter = waiter(&bell, &first, in_secs(20));
    until(&bell, "one parked thread", |st| st.parked == 1);
    bell.ensure_poller().unwrap();
    until(&bell, "the background poller parked", |st| st.parked == 2);
    first.fire();
    guest.ring(1).unwrap();
    assert!(poller.join().unwrap());
    assert!(first_waiter.join().unwrap());
    bell.wake(&first);
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    task.register(&Waker::from(Arc::new(Flag(tx))));
    guest.ring(3).unwrap();
    assert!(
        rx.recv_timeout(Duration::from_secs(3)).is_ok(),
        "the task was not woken: the background poller sleeps, nobody polls"
    );
    bell.stop();
}

#[test]
fn stopping_right_after_the_poller_starts_does_not_hang() {
    // The background loop reads `stopping`, then the generation: a stop()
    // between the two leaves it waiting for a signal that already fired,
    // and stop() joins it forever.
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for i in 0..5_000u32 {
            let bell = Doorbell::new().unwrap();
            bell.ensure_poller().unwrap();
            // Stop at varying moments of the thread's start.
            let spin = Instant::now() + Duration::from_nanos(u64::from(i % 200) * 250);
            while Instant::now() < spin {
                std::hint::spin_loop();
            }
            bell.stop();
            let _ = tx.send(());
        }
    });
    for i in 0..5_000 {
        rx.recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| {
                panic!("stop() hung joining the background poller (iteration {i})")
            });
    }
}

#[test]
fn a_stream_dropped_by_its_own_waker_does_not_deadlock_the_doorbell() {
    // A task abandoned by its executor is kept alive only by the waker it
    // left with its stream's signal. When the signal fires, waking it drops
    // the task, hence the stream, which unregisters its channel: the
    // doorbell must not be holding its lock while it runs a waker.
    use std::task::Wake;
    struct AbandonedTask(crate::channel::ChannelIo);
    impl Wake for AbandonedTask {
        fn wake(self: Arc<Self>) {
            // The executor is gone: the task (and its stream) is dropped.
        }
    }
    let (ours, theirs) = Link::pair(9).unwrap();
    let (ours, theirs) = (Arc::new(ours), Arc::new(theirs));
    let bell = Doorbell::new().unwrap();
    let io = crate::channel::PreparedRings::create(6, 6)
        .unwrap()
        .into_guest_io(&bell, ours.clone(), 5)
        .unwrap();
    let task = Arc::new(AbandonedTask(io));
    task.0.register_waker(&Waker::from(task.clone())).unwrap();
    drop(task);
    // Another channel of the same doorbell, waited for by a thread.
    let other = bell.register(&ours, 6).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let (bell, other) = (bell.clone(), other.clone());
        let seen = other.generation();
        thread::spawn(move || {
            let _ = tx.send(bell.wait(&other, seen, in_secs(3)).unwrap());
        });
    }
    theirs.ring(5).unwrap(); // wakes (and drops) the abandoned task
    thread::sleep(Duration::from_millis(50));
    theirs.ring(6).unwrap();
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(6)).ok(),
        Some(true),
        "the other channel was never woken: the doorbell deadlocked"
    );
    bell.stop();
}

#[test]
fn a_hostile_peer_cannot_make_ringing_block() {
    // The peer holds only the receiving end of the socket we signal on: it
    // can make its own file blocking and never read, and our sends still
    // never wait (they are dropped once the buffer is full).
    use std::os::fd::AsFd;
    let (ours, theirs) = link_pair();
    // The peer's file, and (as if it could reach it) ours: sends are
    // non-blocking by themselves.
    rustix::fs::fcntl_setfl(theirs.incoming.as_fd(), rustix::fs::OFlags::empty()).unwrap();
    rustix::fs::fcntl_setfl(ours.outgoing.as_fd(), rustix::fs::OFlags::empty()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        // A bit per relid, so each ring sends: far more sends than the
        // socket's buffer holds.
        let ok = (0..=MAX_RELID).all(|relid| ours.ring(relid).is_ok());
        let _ = tx.send(ok);
    });
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(60)).ok(),
        Some(true),
        "ringing blocked or failed: the peer never reads its signal socket"
    );
}

#[test]
fn a_ring_dropped_on_a_full_socket_still_wakes_its_channel() {
    // The socket fills before the host end polls (the guest rings thousands
    // of relids nobody serves, then sends more than the protocol lets it),
    // and the ring for the served channel is dropped (its bit stays set).
    // The poller drains, takes the bits, and wakes the channel; each wake-up
    // leaves the socket empty, and later rings are heard again.
    let (guest, bell, link) = served_link();
    // A peer that wakes by socket only: the poller waits in epoll.
    guest.offer_futex_wakes(false);
    let served = 3;
    let signal = bell.register(&link, served).unwrap();
    let seen = signal.generation();
    for relid in 1000..(1000 + 8 * 1024) {
        guest.ring(relid).unwrap();
    }
    let flood = rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL;
    while rustix::net::send(&guest.outgoing, &[7u8; 64 << 10], flood).is_ok() {}
    guest.ring(served).unwrap();
    let unread = || rustix::io::ioctl_fionread(&link.incoming).unwrap();
    assert!(
        bell.wait(&signal, seen, in_secs(10)).unwrap(),
        "the channel was never woken"
    );
    assert_eq!(unread(), 0, "a wake-up left the socket with bytes in it");
    for round in 0..3 {
        let seen = signal.generation();
        guest.ring(served).unwrap();
        assert!(
            bell.wait(&signal, seen, in_secs(10)).unwrap(),
            "round {round}: a ring after the drain was not heard"
        );
        assert_eq!(
            unread(),
            0,
            "round {round}: the socket was left with bytes in it"
        );
    }
    bell.stop();
}

/// The state the doorbell's end of `link` announced to its peer.
fn announced(link: &Link) -> u32 {
    link.wake_word(link.own_wake, WAKE_STATE)
        .unwrap()
        .load(Ordering::SeqCst)
}

#[test]
fn one_futex_link_is_slept_on_by_futex_and_its_peer_sends_no_byte() {
    let (guest, bell, link) = served_link();
    let signal = bell.register(&link, 3).unwrap();
    let unread = || rustix::io::ioctl_fionread(&link.incoming).unwrap();
    for round in 0..3 {
        let waiting = waiter(&bell, &signal, in_secs(20));
        until(&bell, "the poller sleeps on the futex", |st| {
            st.futex_polling
        });
        assert_eq!(announced(&link), WAKE_BY_FUTEX);
        guest.ring(3).unwrap();
        assert!(waiting.join().unwrap(), "round {round}: not woken");
        assert_eq!(unread(), 0, "round {round}: a byte was sent");
        // Awake now: the peer sets its bit and does nothing else; the next
        // wait finds the bit in its look before sleeping.
        assert_eq!(announced(&link), WAKE_NOT_NEEDED);
        let seen = signal.generation();
        guest.ring(3).unwrap();
        assert_eq!(unread(), 0);
        assert!(bell.wait(&signal, seen, in_secs(20)).unwrap());
    }
    bell.stop();
}

#[test]
fn a_kernel_without_futex_waitv_falls_back_to_the_sockets() {
    let (guest, bell, link) = served_link();
    bell.refuse_futex.store(true, Ordering::Relaxed);
    let signal = bell.register(&link, 3).unwrap();
    let waiting = waiter(&bell, &signal, in_secs(20));
    // One failed futex sleep, then the poller says "by socket" and sleeps
    // in epoll for good.
    until(&bell, "the poller sleeps on the sockets", |st| {
        st.polling && !st.futex_polling
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while announced(&link) != WAKE_BY_SOCKET {
        assert!(Instant::now() < deadline, "never announced: by socket");
        thread::sleep(Duration::from_millis(5));
    }
    assert!(!bell.futex_works.load(Ordering::Relaxed));
    guest.ring(3).unwrap();
    assert!(waiting.join().unwrap(), "not woken by the socket");
    // And so on, wait after wait.
    for round in 0..3 {
        let waiting = waiter(&bell, &signal, in_secs(20));
        until(&bell, "someone polls", |st| st.polling);
        assert!(!bell.lock().futex_polling, "round {round}");
        guest.ring(3).unwrap();
        assert!(waiting.join().unwrap(), "round {round}: not woken");
    }
    bell.stop();
}

#[test]
fn a_peer_that_offers_no_futex_wakes_is_waited_for_on_its_socket() {
    let (guest, bell, link) = served_link();
    guest.offer_futex_wakes(false);
    let signal = bell.register(&link, 3).unwrap();
    let waiting = waiter(&bell, &signal, in_secs(20));
    until(&bell, "someone polls", |st| st.polling);
    assert!(!bell.lock().futex_polling);
    assert_eq!(announced(&link), WAKE_BY_SOCKET);
    guest.ring(3).unwrap();
    assert!(waiting.join().unwrap());
    bell.stop();
}

#[test]
fn a_peer_waiting_on_our_futex_word_takes_none_of_our_wake_ups() {
    // The peer can wait on the word we sleep on (it is in its mapping too),
    // and keep writing it: the peer's rings still wake us (a wake-up wakes
    // every waiter), and local wake-ups go to a word of ours alone.
    let (guest, bell, link) = served_link();
    let signal = bell.register(&link, 3).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let thieves: Vec<_> = (0..2)
        .map(|_| {
            let (stop, guest) = (stop.clone(), guest.clone());
            thread::spawn(move || {
                // The same word as the peer maps it: the link's futex word,
                // reached through the guest's mapping of the flags memfd.
                let word = guest.wake_word(guest.peer_wake, WAKE_FUTEX).unwrap();
                while !stop.load(Ordering::SeqCst) {
                    let v = word.load(Ordering::SeqCst);
                    let _ = futex::wait(
                        word,
                        futex::Flags::empty(),
                        v,
                        // Long enough to stay ahead of the poller in the
                        // word's queue; short enough to end the test.
                        Some(&futex::Timespec {
                            tv_sec: 1,
                            tv_nsec: 0,
                        }),
                    );
                }
            })
        })
        .collect();
    for round in 0..20 {
        // No deadline: a wake-up the thieves took would leave it asleep.
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let (bell, signal) = (bell.clone(), signal.clone());
            let seen = signal.generation();
            thread::spawn(move || tx.send(bell.wait(&signal, seen, None).unwrap()));
        }
        until(&bell, "the poller sleeps on the futex", |st| {
            st.futex_polling
        });
        // Into the kernel's queue of the word, behind or before the thieves.
        thread::sleep(Duration::from_millis(10));
        if round % 2 == 0 {
            guest.ring(3).unwrap();
        } else {
            bell.wake(&signal);
        }
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(20)).ok(),
            Some(true),
            "round {round}: not woken"
        );
    }
    stop.store(true, Ordering::SeqCst);
    for t in thieves {
        t.join().unwrap();
    }
    bell.stop();
}

fn reaper_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim() == "hvsock-reaper")
        .count()
}

#[test]
fn a_link_left_to_its_reaper_is_not_drained_again_by_the_poller() {
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    // A good peer on link 9, and a hostile one on link 10 that attaches
    // descriptors to its wake-ups, where the receiving end is guarded (as
    // before Linux 6.16, when the kernel cannot refuse them).
    let (guest, bell, link) = served_link();
    let good = bell.register(&link, 3).unwrap();
    let memory = SharedMemory::create("hostile-link", LINK_FLAGS_BYTES).unwrap();
    let pair = || {
        socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .unwrap()
    };
    let (our_recv, hostile_send) = pair();
    let (our_send, _hostile_recv) = pair();
    let hostile = Link::new(
        10,
        Side::Host,
        Mapping::new(&memory).unwrap(),
        SignalReceiver::guarded_from_fd(our_recv).unwrap(),
        SignalSender::from_fd(our_send).unwrap(),
    );
    bell.add_link(hostile).unwrap();
    let _hostile_channel = bell.register(&bell.link(10).unwrap(), 3).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let peer = {
        let stop = stop.clone();
        let bits = Mapping::new(&memory).unwrap();
        thread::spawn(move || {
            let word = bits.atomic_u32(GUEST_TO_HOST_FLAGS).unwrap();
            let passed = EventFd::new().unwrap();
            while !stop.load(Ordering::SeqCst) {
                // Its bit stays set, and descriptors keep coming.
                word.fetch_or(1 << 3, Ordering::SeqCst);
                let _ = hvsock_shm::send_with_fds(&hostile_send, &[1], &[passed.as_fd()]);
                thread::sleep(Duration::from_micros(200));
            }
            hostile_send
        })
    };
    // The good peer's channel is waited for as usual, many times.
    for _ in 0..200 {
        let seen = good.generation();
        guest.ring(3).unwrap();
        assert!(bell.wait(&good, seen, in_secs(20)).unwrap());
        let _ = bell.wait(
            &good,
            good.generation(),
            Some(Instant::now() + Duration::from_millis(1)),
        );
    }
    let reapers = reaper_threads();
    stop.store(true, Ordering::SeqCst);
    // Its end closes: the reaper ends.
    drop(peer.join().unwrap());
    bell.stop();
    assert_eq!(
        reapers, 1,
        "one reaper for the hostile link, not one per look at its bits"
    );
}

#[test]
fn a_peer_rewriting_our_futex_word_only_makes_the_poller_loop() {
    // The peer may write the word we sleep on at will: each change sends
    // our futex wait back at once. Rings and local wake-ups still arrive,
    // and a deadline still ends a wait.
    let (guest, bell, link) = served_link();
    let signal = bell.register(&link, 3).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (stop, guest) = (stop.clone(), guest.clone());
        thread::spawn(move || {
            let word = guest.wake_word(guest.peer_wake, WAKE_FUTEX).unwrap();
            while !stop.load(Ordering::SeqCst) {
                word.fetch_add(1, Ordering::SeqCst);
                std::hint::spin_loop();
            }
        })
    };
    for round in 0..10 {
        let waiting = waiter(&bell, &signal, in_secs(20));
        thread::sleep(Duration::from_millis(5));
        if round % 2 == 0 {
            guest.ring(3).unwrap();
        } else {
            bell.wake(&signal);
        }
        assert!(waiting.join().unwrap(), "round {round}: not woken");
    }
    let seen = signal.generation();
    let started = Instant::now();
    assert!(!bell
        .wait(&signal, seen, Some(started + Duration::from_millis(100)))
        .unwrap());
    assert!(started.elapsed() >= Duration::from_millis(100));
    stop.store(true, Ordering::SeqCst);
    churn.join().unwrap();
    bell.stop();
}
