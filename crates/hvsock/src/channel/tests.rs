//! Both ends of one channel in one process: the guest's rings in a sealed
//! memfd, the host's end built from a copy of its fd, as the daemon would
//! hand it over, each end with its own doorbell and end of one link.

use std::io::ErrorKind;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use super::*;

/// The relid the test channels use (any relid with a bit will do).
const RELID: u32 = 77;

fn pair(send_pages: u32, recv_pages: u32) -> (Arc<ChannelIo>, Arc<ChannelIo>) {
    let rings = PreparedRings::create(send_pages, recv_pages).unwrap();
    let fds = vec![rings.memfd.as_fd().try_clone_to_owned().unwrap()];
    let layout = rings.layout;
    let (guest_link, host_link) = Link::pair(1).unwrap();
    let guest = rings
        .into_guest_io(&Doorbell::new().unwrap(), Arc::new(guest_link), RELID)
        .unwrap();
    let host = host_io(
        layout,
        fds,
        &Doorbell::new().unwrap(),
        Arc::new(host_link),
        RELID,
    )
    .unwrap();
    (Arc::new(guest), Arc::new(host))
}

const BLOCK: Wait = Wait {
    nonblocking: false,
    deadline: None,
};
const NOWAIT: Wait = Wait {
    nonblocking: true,
    deadline: None,
};

fn read_to_end(io: &ChannelIo) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 7000];
    loop {
        let n = io.read(&mut buf, BLOCK).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

fn write_all(io: &ChannelIo, mut data: &[u8]) {
    while !data.is_empty() {
        let n = io.write(data, BLOCK).unwrap();
        data = &data[n..];
    }
}

#[test]
fn bytes_flow_both_ways_through_small_rings_and_end_with_the_fin() {
    let (guest, host) = pair(6, 6);
    let up: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let down: Vec<u8> = (0..2_000_000u32).map(|i| (i % 241) as u8).collect();
    let threads = [
        {
            let (guest, up) = (guest.clone(), up.clone());
            std::thread::spawn(move || {
                write_all(&guest, &up);
                guest.shutdown_write().unwrap();
                Vec::new()
            })
        },
        {
            let (host, down) = (host.clone(), down.clone());
            std::thread::spawn(move || {
                write_all(&host, &down);
                host.shutdown_write().unwrap();
                Vec::new()
            })
        },
        {
            let host = host.clone();
            std::thread::spawn(move || read_to_end(&host))
        },
        {
            let guest = guest.clone();
            std::thread::spawn(move || read_to_end(&guest))
        },
    ];
    let results: Vec<Vec<u8>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(results[2] == up, "guest -> host stream damaged");
    assert!(results[3] == down, "host -> guest stream damaged");
    assert_eq!(guest.bytes_written(), up.len() as u64);
}

#[test]
fn nonblocking_operations_would_block_and_timeouts_expire() {
    let (guest, host) = pair(6, 6);
    let mut buf = [0u8; 8];
    assert_eq!(
        host.read(&mut buf, NOWAIT).unwrap_err().kind(),
        ErrorKind::WouldBlock
    );
    let timed = Wait::timeout(false, Some(Duration::from_millis(20)));
    assert_eq!(
        host.read(&mut buf, timed).unwrap_err().kind(),
        ErrorKind::TimedOut
    );
    // Fill the guest's ring: writes then would block, and nothing is lost.
    let written = fill(&guest);
    assert!(written > 0 && written < 20480, "{written}");
    let mut got = 0;
    let mut big = vec![0u8; 100_000];
    while got < written {
        got += host.read(&mut big, BLOCK).unwrap();
    }
    assert_eq!(got, written);
}

#[test]
fn a_busy_poll_spin_ends_at_the_callers_deadline() {
    let (guest, host) = pair(6, 6);
    // Spins far longer than the timeouts below: the deadline must end them.
    host.set_busy_poll(Some(Duration::from_secs(30)));
    guest.set_busy_poll(Some(Duration::from_secs(30)));
    let started = Instant::now();
    let mut buf = [0u8; 8];
    let timed = Wait::timeout(false, Some(Duration::from_millis(20)));
    assert_eq!(
        host.read(&mut buf, timed).unwrap_err().kind(),
        ErrorKind::TimedOut
    );
    fill(&guest);
    let timed = Wait::timeout(false, Some(Duration::from_millis(20)));
    assert_eq!(
        guest.write(&[1; 64], timed).unwrap_err().kind(),
        ErrorKind::TimedOut
    );
    // Not a timing assertion: the spins were 30 s each.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the spins ran past the deadlines: {:?}",
        started.elapsed()
    );
}

#[test]
fn peek_does_not_consume() {
    let (guest, host) = pair(6, 6);
    write_all(&guest, b"hello world");
    let mut buf = [0u8; 5];
    assert_eq!(host.peek(&mut buf, BLOCK).unwrap(), 5);
    assert_eq!(&buf, b"hello");
    let mut all = [0u8; 64];
    assert_eq!(host.read(&mut all, BLOCK).unwrap(), 11);
    assert_eq!(&all[..11], b"hello world");
}

#[test]
fn shutdown_write_sends_one_fin_and_refuses_writes() {
    let (guest, host) = pair(6, 6);
    write_all(&guest, b"last words");
    guest.shutdown_write().unwrap();
    guest.shutdown_write().unwrap();
    assert_eq!(
        guest.write(b"x", BLOCK).unwrap_err().kind(),
        ErrorKind::BrokenPipe
    );
    assert_eq!(read_to_end(&host), b"last words");
    // The other direction still works.
    write_all(&host, b"reply");
    let mut buf = [0u8; 16];
    assert_eq!(guest.read(&mut buf, BLOCK).unwrap(), 5);
}

#[test]
fn a_peer_gone_after_its_fin_is_an_end_of_stream_and_before_it_a_reset() {
    let (guest, host) = pair(6, 6);
    write_all(&guest, b"data");
    guest.shutdown_write().unwrap();
    host.mark_gone(Gone::Closed("the channel was rescinded".into()));
    assert_eq!(read_to_end(&host), b"data");

    let (guest, host) = pair(6, 6);
    write_all(&guest, b"partial");
    host.mark_gone(Gone::Closed("the guest process died".into()));
    let mut buf = [0u8; 64];
    assert_eq!(
        host.read(&mut buf, BLOCK).unwrap(),
        7,
        "data before the end first"
    );
    let e = host.read(&mut buf, BLOCK).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionReset);
    assert!(e.to_string().contains("the guest process died"), "{e}");
    assert_eq!(
        host.write(b"x", BLOCK).unwrap_err().kind(),
        ErrorKind::BrokenPipe
    );
}

#[test]
fn a_blocked_reader_is_woken_when_the_peer_goes() {
    let (_guest, host) = pair(6, 6);
    let reader = {
        let host = host.clone();
        std::thread::spawn(move || host.read(&mut [0u8; 8], BLOCK))
    };
    std::thread::sleep(Duration::from_millis(50));
    host.mark_gone(Gone::Closed("rescinded".into()));
    assert_eq!(
        reader.join().unwrap().unwrap_err().kind(),
        ErrorKind::ConnectionReset
    );
}

#[test]
fn a_malformed_packet_resets_the_connection() {
    let (guest, host) = pair(6, 6);
    write_all(&guest, b"hello");
    // The guest lies in its pipe header: 16384 bytes in a 40-byte packet.
    guest
        .mapping
        .write(4096 + 20, &16384u32.to_le_bytes())
        .unwrap();
    let e = host.read(&mut [0u8; 64], BLOCK).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionReset);
    assert!(e.to_string().contains("data_size 16384"), "{e}");
}

#[test]
fn memfds_that_are_not_sealed_are_refused() {
    let rings = PreparedRings::create(6, 6).unwrap();
    let file = std::fs::File::open("/dev/null").unwrap();
    let (_, host_link) = Link::pair(1).unwrap();
    let bell = Doorbell::new().unwrap();
    let e = host_io(
        rings.layout,
        vec![file.into()],
        &bell,
        Arc::new(host_link),
        RELID,
    )
    .unwrap_err();
    assert!(e.to_string().contains("memfd"), "{e}");
}

#[test]
fn busy_polling_readers_get_the_same_bytes() {
    let (guest, host) = pair(6, 6);
    host.set_busy_poll(Some(Duration::from_millis(5)));
    let data: Vec<u8> = (0..500_000u32).map(|i| i as u8).collect();
    let writer = {
        let (guest, data) = (guest.clone(), data.clone());
        std::thread::spawn(move || {
            write_all(&guest, &data);
            guest.shutdown_write().unwrap();
        })
    };
    assert!(read_to_end(&host) == data);
    writer.join().unwrap();
}

/// A control word of the ring `io` reads (`rx`) or writes.
fn control_word(io: &ChannelIo, rx: bool, word: usize) -> u32 {
    use vmbus_ring::RingMem;
    if rx {
        lock(&io.rx).reader.ring().mem().load_control(word, Relaxed)
    } else {
        lock(&io.tx).writer.ring().mem().load_control(word, Relaxed)
    }
}

/// Fills `io`'s sending ring (writes then would block); returns the bytes
/// written.
fn fill(io: &ChannelIo) -> usize {
    let chunk = vec![1u8; 100_000];
    let mut written = 0;
    loop {
        match io.write(&chunk, NOWAIT) {
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return written,
            Err(e) => panic!("{e}"),
        }
    }
}

/// Waits (up to 20 s) until `cond` holds.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

const WITHIN_20S: fn() -> Wait = || Wait::timeout(false, Some(Duration::from_secs(20)));

#[test]
fn a_spinning_reader_masks_the_writers_signals_and_unmasks_before_it_sleeps() {
    use vmbus_ring::mem::word::INTERRUPT_MASK;
    let (guest, host) = pair(6, 6);
    host.set_busy_poll(Some(Duration::from_secs(1)));
    assert_eq!(control_word(&host, true, INTERRUPT_MASK), 0);
    let reader = {
        let host = host.clone();
        std::thread::spawn(move || host.read(&mut [0u8; 8], WITHIN_20S()).unwrap())
    };
    eventually("the spinning reader masks", || {
        control_word(&host, true, INTERRUPT_MASK) == 1
    });
    // The spin ends: the reader unmasks before it sleeps, and a packet
    // written now must wake it.
    eventually("the reader unmasks to sleep", || {
        control_word(&host, true, INTERRUPT_MASK) == 0
    });
    assert_eq!(guest.write(b"x", BLOCK).unwrap(), 1);
    assert_eq!(reader.join().unwrap(), 1);
}

#[test]
fn a_spinning_writer_withdraws_its_pending_send_size_and_asks_again_before_it_sleeps() {
    use vmbus_ring::mem::word::PENDING_SEND_SIZE;
    let (guest, host) = pair(6, 6);
    let asked = control_word(&guest, false, PENDING_SEND_SIZE);
    assert!(asked > 0);
    guest.set_busy_poll(Some(Duration::from_secs(1)));
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let writer = {
        let (guest, data) = (guest.clone(), data.clone());
        std::thread::spawn(move || {
            let mut rest = &data[..];
            while !rest.is_empty() {
                rest = &rest[guest.write(rest, WITHIN_20S()).unwrap()..];
            }
            guest.shutdown_write().unwrap();
        })
    };
    eventually(
        "the writer spinning on a full ring withdraws its request",
        || control_word(&guest, false, PENDING_SEND_SIZE) == 0,
    );
    eventually("the writer asks again to sleep", || {
        control_word(&guest, false, PENDING_SEND_SIZE) == asked
    });
    // Only the reader's signals can wake the writer now.
    let mut got = Vec::new();
    let mut buf = vec![0u8; 7000];
    loop {
        let n = host.read(&mut buf, WITHIN_20S()).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got == data);
    writer.join().unwrap();
}

#[test]
fn after_a_spin_the_readiness_descriptor_fires_for_the_next_bytes() {
    use vmbus_ring::mem::word::INTERRUPT_MASK;
    let (guest, host) = pair(6, 6);
    host.set_busy_poll(Some(Duration::from_secs(20)));
    let readiness = host.readiness().unwrap();
    let reader = {
        let host = host.clone();
        std::thread::spawn(move || host.read(&mut [0u8; 8], WITHIN_20S()).unwrap())
    };
    eventually("the spinning reader masks", || {
        control_word(&host, true, INTERRUPT_MASK) == 1
    });
    assert_eq!(guest.write(b"x", BLOCK).unwrap(), 1);
    assert_eq!(reader.join().unwrap(), 1);
    // A spinner leaves no mask behind (another thread of ours may wait).
    assert_eq!(control_word(&host, true, INTERRUPT_MASK), 0);
    let e = host.read(&mut [0u8; 8], NOWAIT).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WouldBlock);
    assert_eq!(control_word(&host, true, INTERRUPT_MASK), 0);
    assert_eq!(guest.write(b"y", BLOCK).unwrap(), 1);
    assert!(
        readiness.wait_timeout(Duration::from_secs(20)).unwrap(),
        "the writer did not signal a reader that said it would wait"
    );
}

#[test]
fn ends_that_keep_switching_between_spinning_and_sleeping_lose_no_wake_up() {
    // Spins so short that both ends keep masking, withdrawing, unmasking and
    // asking again; a lost signal leaves one asleep until its deadline.
    let (guest, host) = pair(6, 6);
    for io in [&guest, &host] {
        io.set_busy_poll(Some(Duration::from_micros(20)));
    }
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let pump = |from: Arc<ChannelIo>, data: Vec<u8>| {
        std::thread::spawn(move || {
            for piece in data.chunks(3001) {
                let mut rest = piece;
                while !rest.is_empty() {
                    rest = &rest[from.write(rest, WITHIN_20S()).unwrap()..];
                }
            }
            from.shutdown_write().unwrap();
        })
    };
    let drain = |to: Arc<ChannelIo>| {
        std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 1500];
            loop {
                let n = to.read(&mut buf, WITHIN_20S()).unwrap();
                if n == 0 {
                    return got;
                }
                got.extend_from_slice(&buf[..n]);
            }
        })
    };
    let threads = [
        pump(guest.clone(), data.clone()),
        pump(host.clone(), data.clone()),
    ];
    let (to_host, to_guest) = (drain(host.clone()), drain(guest.clone()));
    assert!(to_host.join().unwrap() == data);
    assert!(to_guest.join().unwrap() == data);
    for t in threads {
        t.join().unwrap();
    }
}

// Two local threads on one channel (clones of one stream), one spinning and
// one asleep: the spinner must not leave the sleeper unsignalled.

#[test]
fn a_reader_asleep_beside_a_spinning_one_is_woken_for_the_next_bytes() {
    use vmbus_ring::mem::word::INTERRUPT_MASK;
    let (guest, host) = pair(6, 6);
    host.set_busy_poll(Some(Duration::from_secs(20)));
    // Reader A: a blocking busy-poll read (spins up to 20 s).
    let a = {
        let host = host.clone();
        std::thread::spawn(move || host.read(&mut [0u8; 8], WITHIN_20S()).unwrap())
    };
    eventually("A masks", || control_word(&host, true, INTERRUPT_MASK) == 1);
    // Reader B (a clone in another thread) does not spin: Final at once,
    // unmasks, re-checks an empty ring and sleeps.
    host.set_busy_poll(None);
    let b = {
        let host = host.clone();
        std::thread::spawn(move || {
            host.read(
                &mut [0u8; 8],
                Wait::timeout(false, Some(Duration::from_secs(20))),
            )
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    // A's next spin attempt masked again (rx.spinning was cleared by B).
    assert_eq!(control_word(&host, true, INTERRUPT_MASK), 1, "A re-masked");
    // A takes the first byte and leaves, the mask still set.
    assert_eq!(guest.write(b"x", BLOCK).unwrap(), 1);
    assert_eq!(a.join().unwrap(), 1);
    // A second byte for B: masked, so the guest does not signal.
    assert_eq!(guest.write(b"y", BLOCK).unwrap(), 1);
    let got = b.join().unwrap();
    assert_eq!(
        got.as_ref().map_err(|e| e.kind()),
        Ok(&1),
        "reader B slept with a byte in the ring: {got:?}"
    );
}

#[test]
fn a_writer_asleep_beside_a_spinning_one_is_woken_for_the_next_room() {
    use vmbus_ring::mem::word::PENDING_SEND_SIZE;
    let (guest, host) = pair(6, 6);
    // Fill the guest's ring.
    let written = fill(&guest);
    let asked = control_word(&guest, false, PENDING_SEND_SIZE);
    assert!(asked > 0);
    guest.set_busy_poll(Some(Duration::from_secs(20)));
    // Writer A: a blocking busy-poll write of one byte.
    let a = {
        let guest = guest.clone();
        std::thread::spawn(move || guest.write(b"a", WITHIN_20S()).unwrap())
    };
    eventually("A withdraws", || {
        control_word(&guest, false, PENDING_SEND_SIZE) == 0
    });
    // Writer B (a clone in another thread) does not spin: asks again, sleeps.
    guest.set_busy_poll(None);
    let b = {
        let guest = guest.clone();
        std::thread::spawn(move || {
            guest.write(b"b", Wait::timeout(false, Some(Duration::from_secs(20))))
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        control_word(&guest, false, PENDING_SEND_SIZE),
        0,
        "A withdrew again"
    );
    // The host drains the ring: A (spinning) writes its byte and leaves;
    // no signal reaches B, as pending_send_sz is 0.
    let mut big = vec![0u8; 100_000];
    let mut got = 0;
    while got < written + 1 {
        got += host.read(&mut big, BLOCK).unwrap();
    }
    assert_eq!(a.join().unwrap(), 1);
    let r = b.join().unwrap();
    assert_eq!(
        r.as_ref().map_err(|e| e.kind()),
        Ok(&1),
        "writer B slept on an empty ring: {r:?}"
    );
}

/// Two clones busy-polling with the same setting, started 150 ms apart.
#[test]
fn two_busy_polling_readers_get_one_byte_each() {
    let (guest, host) = pair(6, 6);
    host.set_busy_poll(Some(Duration::from_millis(300)));
    let reader = |host: Arc<ChannelIo>| {
        std::thread::spawn(move || {
            host.read(
                &mut [0u8; 8],
                Wait::timeout(false, Some(Duration::from_secs(20))),
            )
            .map_err(|e| e.kind())
        })
    };
    let b = reader(host.clone()); // sleeps from ~300 ms
    std::thread::sleep(Duration::from_millis(150));
    let a = reader(host.clone()); // spins until ~450 ms
    std::thread::sleep(Duration::from_millis(230));
    assert_eq!(guest.write(b"x", BLOCK).unwrap(), 1); // ~380 ms
    std::thread::sleep(Duration::from_millis(120));
    assert_eq!(guest.write(b"y", BLOCK).unwrap(), 1); // ~500 ms
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    assert_eq!(
        (a, b),
        (Ok(1), Ok(1)),
        "one reader slept with a byte in the ring"
    );
}

/// Two clones writing to a full ring, busy-polling with the same setting,
/// started 150 ms apart.
#[test]
fn two_busy_polling_writers_write_one_byte_each() {
    let (guest, host) = pair(6, 6);
    let written = fill(&guest);
    guest.set_busy_poll(Some(Duration::from_millis(300)));
    let writer = |guest: Arc<ChannelIo>, byte: &'static [u8]| {
        std::thread::spawn(move || {
            guest
                .write(byte, Wait::timeout(false, Some(Duration::from_secs(20))))
                .map_err(|e| e.kind())
        })
    };
    let b = writer(guest.clone(), b"b"); // sleeps from ~300 ms
    std::thread::sleep(Duration::from_millis(150));
    let a = writer(guest.clone(), b"a"); // spins until ~450 ms
    std::thread::sleep(Duration::from_millis(230));
    let mut big = vec![0u8; 100_000];
    let mut got = 0;
    while got < written {
        got += host.read(&mut big, BLOCK).unwrap(); // ~380 ms: room for both
    }
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    assert_eq!((a, b), (Ok(1), Ok(1)), "a writer slept on an empty ring");
}

mod model {
    //! The two ends of a channel against a model: two byte queues, each
    //! with a flag for its FIN, driven by random non-blocking operations.

    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Write { guest: bool, len: usize },
        Read { guest: bool, len: usize },
        Peek { guest: bool, len: usize },
        ShutdownWrite { guest: bool },
    }

    fn op() -> impl Strategy<Value = Op> {
        let len = prop_oneof![1usize..64, 1usize..5000, 1usize..40_000];
        prop_oneof![
            4 => (any::<bool>(), len.clone()).prop_map(|(guest, len)| Op::Write { guest, len }),
            4 => (any::<bool>(), len.clone()).prop_map(|(guest, len)| Op::Read { guest, len }),
            1 => (any::<bool>(), len).prop_map(|(guest, len)| Op::Peek { guest, len }),
            1 => any::<bool>().prop_map(|guest| Op::ShutdownWrite { guest }),
        ]
    }

    /// One direction of the model.
    #[derive(Default)]
    struct Direction {
        bytes: VecDeque<u8>,
        fin: bool,
        next: u8,
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn both_ends_behave_like_two_queues(ops in prop::collection::vec(op(), 1..80)) {
            let (guest, host) = pair(6, 6);
            // [guest -> host, host -> guest]
            let mut model = [Direction::default(), Direction::default()];
            for op in ops {
                match op {
                    Op::Write { guest: g, len } => {
                        let (io, dir) = if g { (&guest, &mut model[0]) } else { (&host, &mut model[1]) };
                        let data: Vec<u8> = (0..len).map(|i| dir.next.wrapping_add(i as u8)).collect();
                        match io.write(&data, NOWAIT) {
                            Ok(n) => {
                                prop_assert!(!dir.fin && n > 0 && n <= len);
                                dir.bytes.extend(&data[..n]);
                                dir.next = dir.next.wrapping_add(n as u8);
                            }
                            Err(e) if e.kind() == ErrorKind::WouldBlock => prop_assert!(!dir.fin),
                            Err(e) => prop_assert!(dir.fin && e.kind() == ErrorKind::BrokenPipe, "{e}"),
                        }
                    }
                    Op::Read { guest: g, len } | Op::Peek { guest: g, len } => {
                        let peek = matches!(op, Op::Peek { .. });
                        let (io, dir) = if g { (&guest, &mut model[1]) } else { (&host, &mut model[0]) };
                        let mut buf = vec![0u8; len];
                        let result = if peek { io.peek(&mut buf, NOWAIT) } else { io.read(&mut buf, NOWAIT) };
                        match result {
                            Ok(0) => prop_assert!(dir.fin && dir.bytes.is_empty(), "early end of stream"),
                            Ok(n) => {
                                prop_assert!(n <= len && n <= dir.bytes.len());
                                prop_assert!(dir.bytes.iter().take(n).eq(buf[..n].iter()), "wrong bytes");
                                if !peek {
                                    dir.bytes.drain(..n);
                                }
                                // A read fills the buffer when the data is there.
                                prop_assert!(peek || n == len || dir.bytes.is_empty());
                            }
                            Err(e) => {
                                prop_assert_eq!(e.kind(), ErrorKind::WouldBlock);
                                prop_assert!(dir.bytes.is_empty() && !dir.fin);
                            }
                        }
                    }
                    Op::ShutdownWrite { guest: g } => {
                        let (io, dir) = if g { (&guest, &mut model[0]) } else { (&host, &mut model[1]) };
                        io.shutdown_write().unwrap();
                        dir.fin = true;
                    }
                }
            }
        }
    }
}

#[test]
fn read_to_fd_moves_bytes_straight_from_the_ring_including_across_the_wrap() {
    use std::io::Read as _;
    let (guest, host) = pair(6, 6);
    let (mut pipe_out, pipe_in) = std::os::unix::net::UnixStream::pair().unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let writer = {
        let (guest, data) = (guest.clone(), data.clone());
        std::thread::spawn(move || {
            write_all(&guest, &data);
            guest.shutdown_write().unwrap();
        })
    };
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        pipe_out.read_to_end(&mut got).unwrap();
        got
    });
    // Odd maxima so that spans are split and the 20 KiB ring wraps often.
    let mut moved = 0;
    loop {
        let n = host.read_to_fd(pipe_in.as_fd(), 3001, BLOCK).unwrap();
        if n == 0 {
            break;
        }
        moved += n;
    }
    drop(pipe_in);
    writer.join().unwrap();
    assert_eq!(moved, data.len());
    assert!(
        reader.join().unwrap() == data,
        "bytes damaged on the way to the fd"
    );
}

#[test]
fn commit_chunks_are_a_quarter_of_small_rings_and_whole_packets() {
    let page = vmbus_ring::layout::PAGE_SIZE;
    let seed_data = 5 * page;
    let default_data = 51 * page;
    // A guest on the seed's rings publishes every packet (4088 bytes) and
    // frees room every 5 KiB.
    assert_eq!(
        commit_chunks(seed_data, GUEST_MAX_SEND_DATA, seed_data),
        (GUEST_MAX_SEND_DATA, 5 * 1024)
    );
    // On the default rings: 8 whole guest packets (not 32 KiB, which would
    // cut a 64-byte packet off every chunk), and 32 KiB reads.
    assert_eq!(
        commit_chunks(default_data, GUEST_MAX_SEND_DATA, default_data),
        (8 * GUEST_MAX_SEND_DATA, 32 * 1024)
    );
    // A host's 16 KiB packets: one per chunk on the seed's rings (a quarter
    // of the ring is less than a packet), two on the default ones.
    assert_eq!(
        commit_chunks(seed_data, MAX_RECV_DATA, seed_data).0,
        MAX_RECV_DATA
    );
    assert_eq!(
        commit_chunks(default_data, MAX_RECV_DATA, default_data).0,
        2 * MAX_RECV_DATA
    );
    // Never zero, whatever the ring.
    let (tx, rx) = commit_chunks(0, 0, 0);
    assert!(tx > 0 && rx > 0);
}
