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

#[test]
fn ringing_sets_the_bit_and_signals_only_while_it_is_clear() {
    let (guest, host) = link_pair();
    guest.ring(70).unwrap();
    guest.ring(70).unwrap();
    // One signal for two rings: the bit was still set the second time.
    assert!(host.incoming.try_wait().unwrap());
    assert!(!host.incoming.try_wait().unwrap());
    assert_eq!(host.take(70 / 32), 1 << (70 % 32));
    assert_eq!(host.take(70 / 32), 0, "taking clears the word");
    // Cleared: the next ring signals again.
    guest.ring(70).unwrap();
    assert!(host.incoming.try_wait().unwrap());
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
    let (guest, host) = link_pair();
    let bell = Doorbell::new().unwrap();
    bell.add_link(Arc::try_unwrap(host).unwrap()).unwrap();
    let link = bell.link(9).unwrap();
    let a = bell.register(&link, 3).unwrap();
    let b = bell.register(&link, 40).unwrap();
    let (seen_a, seen_b) = (a.generation(), b.generation());
    guest.ring(40).unwrap();
    // A waits in vain (its bit is not set) but takes B's signal on the way.
    assert!(!bell
        .wait(&a, seen_a, Some(Instant::now() + Duration::from_millis(50)))
        .unwrap());
    assert_ne!(b.generation(), seen_b, "B's signal was taken and fired");
    guest.ring(3).unwrap();
    assert!(bell.wait(&a, seen_a, in_secs(20)).unwrap());
}

#[test]
fn each_of_many_waiting_threads_is_woken_by_its_own_channel() {
    let (guest, host) = link_pair();
    let bell = Doorbell::new().unwrap();
    bell.add_link(Arc::try_unwrap(host).unwrap()).unwrap();
    let link = bell.link(9).unwrap();
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
    let (_guest, host) = link_pair();
    let bell = Doorbell::new().unwrap();
    bell.add_link(Arc::try_unwrap(host).unwrap()).unwrap();
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
    thread::sleep(Duration::from_millis(50));
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
    let (guest, host) = link_pair();
    let bell = Doorbell::new().unwrap();
    bell.add_link(Arc::try_unwrap(host).unwrap()).unwrap();
    let link = bell.link(9).unwrap();
    let ours = bell.register(&link, 8).unwrap();
    let seen = ours.generation();
    // A peer may set any bit; the ones beside ours are taken and ignored.
    guest.ring(9).unwrap();
    assert!(!bell
        .wait(
            &ours,
            seen,
            Some(Instant::now() + Duration::from_millis(30))
        )
        .unwrap());
    assert_eq!(link.take(0), 0, "the stray bit was taken with the word");
}

#[test]
fn the_readiness_descriptor_is_readable_after_a_ring() {
    let (guest, host) = link_pair();
    let bell = Doorbell::new().unwrap();
    bell.add_link(Arc::try_unwrap(host).unwrap()).unwrap();
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
    let (guest, host) = link_pair();
    let bell = Doorbell::new().unwrap();
    bell.add_link(Arc::try_unwrap(host).unwrap()).unwrap();
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
    let (_guest, host) = link_pair();
    let bell = Doorbell::new().unwrap();
    bell.add_link(Arc::try_unwrap(host).unwrap()).unwrap();
    let link = bell.link(9).unwrap();
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
    let (guest, host) = link_pair();
    let bell = Doorbell::new().unwrap();
    bell.add_link(Arc::try_unwrap(host).unwrap()).unwrap();
    let link = bell.link(9).unwrap();
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
    let (guest, host) = link_pair();
    let bell = Doorbell::new().unwrap();
    bell.add_link(Arc::try_unwrap(host).unwrap()).unwrap();
    let link = bell.link(9).unwrap();
    let old = bell.register(&link, 7).unwrap();
    bell.unregister(9, 7, &old);
    guest.ring(7).unwrap(); // for the old channel, taken by nobody
    let new = bell.register(&link, 7).unwrap();
    let seen = new.generation();
    guest.ring(7).unwrap();
    assert!(bell.wait(&new, seen, in_secs(20)).unwrap());
}
