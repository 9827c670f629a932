//! A hostile peer scribbling on a channel's rings while a real stream on the
//! other side reads and writes (PROTOCOL.md 2.10).
//!
//! The hostile side speaks the control protocol by hand against a daemon on
//! real sockets: as a guest it makes its own memfd and rings, opens the
//! channel and writes whatever it likes into the guest → host ring while an
//! [`HvStream`] reads; as a host it maps the memfd the daemon hands it and
//! writes into the host → guest ring while a [`VsockStream`] reads. Every
//! attack must end the victim's reads (or writes) with `ConnectionReset` and
//! a message naming the broken field, within a bounded time; the victim's
//! other connection in the same process, and the daemon, must keep moving
//! data.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

use common::*;
use hvsock::{
    Guest, Guid, Host, HvAddr, HvListener, HvStream, VsockAddr, VsockListener, VsockStream,
};
use vmbus::Message;

/// Something that reads and writes, either kind of victim stream.
trait Stream: Read + Write {
    fn set_timeouts(&self, d: Duration);
}

impl Stream for HvStream {
    fn set_timeouts(&self, d: Duration) {
        self.set_read_timeout(Some(d)).unwrap();
        self.set_write_timeout(Some(d)).unwrap();
    }
}

impl Stream for VsockStream {
    fn set_timeouts(&self, d: Duration) {
        self.set_read_timeout(Some(d)).unwrap();
        self.set_write_timeout(Some(d)).unwrap();
    }
}

/// What the hostile side does, and what the victim's error must say.
struct Attack {
    name: &'static str,
    /// Writes the hostile contents (and may drive the victim first).
    run: fn(&Rings, &mut dyn Stream),
    /// The victim writes (until it fails) instead of reading.
    victim_writes: bool,
    /// Fragments the victim's error message must contain.
    expect: &'static [&'static str],
}

const ATTACKS: &[Attack] = &[
    Attack {
        name: "write index beyond the ring",
        run: |r, _| {
            r.set_word(r.tx, 0, r.tx.data_size + 8);
            r.signal();
        },
        victim_writes: false,
        expect: &["write_index", "is not below the data size"],
    },
    Attack {
        name: "write index not a multiple of 8",
        run: |r, _| {
            r.set_word(r.tx, 0, 44);
            r.signal();
        },
        victim_writes: false,
        expect: &["write_index", "not a multiple of 8"],
    },
    Attack {
        name: "fewer bytes than a descriptor",
        run: |r, _| {
            r.append(&[6, 0, 2, 0, 3, 0, 0, 0]);
            r.signal();
        },
        victim_writes: false,
        expect: &["too few for a 16-byte descriptor"],
    },
    Attack {
        name: "packet length beyond the bytes written",
        run: |r, _| {
            // A descriptor claiming 800 bytes, but only 40 written.
            r.append_packet(6, 2, 100, 0, &[1, 0, 0, 0, 1, 0, 0, 0, b'x']);
            r.signal();
        },
        victim_writes: false,
        expect: &["exceeds the", "bytes available"],
    },
    Attack {
        name: "packet longer than any legal packet",
        run: |r, _| {
            let mut payload = vec![0u8; 17000];
            payload[..8].copy_from_slice(&[1, 0, 0, 0, 8, 0, 0, 0]);
            r.append_packet(6, 2, ((16 + payload.len()) / 8) as u16, 0, &payload);
            r.signal();
        },
        victim_writes: false,
        expect: &["exceeds the largest accepted packet"],
    },
    Attack {
        name: "data offset inside the descriptor",
        run: |r, _| {
            r.append_packet(6, 1, 4, 0, &[1, 0, 0, 0, 1, 0, 0, 0, b'x']);
            r.signal();
        },
        victim_writes: false,
        expect: &["offset8 1"],
    },
    Attack {
        name: "data offset past the packet",
        run: |r, _| {
            r.append_packet(6, 9, 4, 0, &[1, 0, 0, 0, 1, 0, 0, 0, b'x']);
            r.signal();
        },
        victim_writes: false,
        expect: &["len8 4 is shorter than offset8 9"],
    },
    Attack {
        name: "pipe data_size larger than the packet",
        run: |r, _| {
            r.append_pipe(1, 4000, b"only a few bytes");
            r.signal();
        },
        victim_writes: false,
        expect: &["data_size 4000 exceeds the"],
    },
    Attack {
        name: "pipe data_size beyond the largest packet",
        run: |r, _| {
            r.append_pipe(1, 20000, &[7u8; 16]);
            r.signal();
        },
        victim_writes: false,
        expect: &["data_size 20000"],
    },
    Attack {
        name: "packet type not in-band data",
        run: |r, _| {
            r.append_packet(5, 2, 4, 0, &[1, 0, 0, 0, 1, 0, 0, 0, b'x']);
            r.signal();
        },
        victim_writes: false,
        expect: &["packet type 5"],
    },
    Attack {
        name: "unknown packet flags",
        run: |r, _| {
            r.append_packet(6, 2, 4, 0x8002, &[1, 0, 0, 0, 1, 0, 0, 0, b'x']);
            r.signal();
        },
        victim_writes: false,
        expect: &["packet flags 0x8002"],
    },
    Attack {
        name: "pipe packet type not data",
        run: |r, _| {
            r.append_pipe(2, 1, b"x");
            r.signal();
        },
        victim_writes: false,
        expect: &["pipe pkt_type 2"],
    },
    Attack {
        name: "data after the FIN",
        run: |r, _| {
            r.append_data(b"before");
            r.append_pipe(1, 0, &[]);
            r.append_data(b"after the FIN");
            r.signal();
        },
        victim_writes: false,
        expect: &["follows the FIN"],
    },
    Attack {
        name: "write index moved backwards",
        run: |r, victim| {
            r.append_data(b"first");
            r.append_data(b"second");
            r.signal();
            let mut buf = [0u8; 5];
            victim.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"first");
            // Back to the start: behind what the victim already read.
            r.set_word(r.tx, 0, 0);
            r.signal();
            // The rest of "second" may still be read from the copy made
            // before; the next read must see the move.
            let mut rest = [0u8; 6];
            let _ = victim.read(&mut rest);
        },
        victim_writes: false,
        // Behind the reader reads as a wrap over bytes never written: the
        // zeroes there are caught as a descriptor no writer writes.
        expect: &["the peer broke the ring protocol", "offset8 0"],
    },
    Attack {
        name: "read index beyond the ring",
        run: |r, _| {
            r.set_word(r.rx, 4, r.rx.data_size + 64);
            r.signal();
        },
        victim_writes: true,
        expect: &["read_index"],
    },
    Attack {
        name: "read index moved backwards",
        run: |r, victim| {
            victim.write_all(b"one").unwrap();
            victim.write_all(b"two").unwrap();
            // Consume both packets, as a reader would, then move back.
            let w = r.word(r.rx, 0);
            r.set_word(r.rx, 4, w);
            r.signal();
            victim.write_all(b"three").unwrap();
            r.set_word(r.rx, 4, 8);
            r.signal();
        },
        victim_writes: true,
        expect: &["read_index"],
    },
];

/// Drives the victim until it fails; checks the failure.
fn check_victim(attack: &Attack, rings: &Rings, victim: &mut dyn Stream) {
    victim.set_timeouts(HANG);
    let started = Instant::now();
    (attack.run)(rings, victim);
    let error = if attack.victim_writes {
        // Write until the writer must look at the read index again.
        let chunk = [0x5Au8; 4096];
        let mut written = 0usize;
        loop {
            match victim.write(&chunk) {
                Ok(n) => written += n,
                Err(e) => break e,
            }
            assert!(
                written < 64 << 20,
                "{}: 64 MiB written without noticing",
                attack.name
            );
        }
    } else {
        let mut buf = [0u8; 64];
        loop {
            match victim.read(&mut buf) {
                Ok(0) => panic!("{}: the victim saw EOF, not a reset", attack.name),
                // Data written correctly before the attack may be read.
                Ok(_) => continue,
                Err(e) => break e,
            }
        }
    };
    let elapsed = started.elapsed();
    assert!(
        elapsed < HANG,
        "{}: the victim took {elapsed:?} to notice",
        attack.name
    );
    assert_eq!(
        error.kind(),
        ErrorKind::ConnectionReset,
        "{}: {error}",
        attack.name
    );
    let text = error.to_string();
    for fragment in attack.expect {
        assert!(
            text.contains(fragment),
            "{}: the error {text:?} does not say {fragment:?}",
            attack.name
        );
    }
    // The connection stays reset: no data, no hang.
    let mut buf = [0u8; 16];
    let again = victim.read(&mut buf);
    assert!(
        matches!(again, Err(ref e) if e.kind() == ErrorKind::ConnectionReset),
        "{}: a second read gave {again:?}",
        attack.name
    );
    let again = victim.write(b"more");
    assert!(
        again.is_err(),
        "{}: a write after the reset gave {again:?}",
        attack.name
    );
}

#[test]
fn a_hostile_guest_resets_only_its_connection_on_the_host() {
    let d = TestDaemon::start(&["alpha"]);
    let root = Host::connect_daemon_at(&d.socket).unwrap();
    let guest = Guest::connect_daemon_at(&d.socket, "alpha").unwrap();
    // A bystander connection of the same host process.
    let by_listener = HvListener::bind(&root, HvAddr::from_vsock_port(Guid::ZERO, 6001)).unwrap();
    let mut by_guest = VsockStream::connect(&guest, VsockAddr::new(2, 6001)).unwrap();
    let (mut by_host, _) = by_listener.accept().unwrap();
    by_guest.set_timeouts(HANG);
    by_host.set_timeouts(HANG);

    let listener = HvListener::bind(&root, HvAddr::from_vsock_port(Guid::ZERO, 6000)).unwrap();
    let mut hostile = RawGuest::contact(&d.vm_socket("alpha"));
    for (i, attack) in ATTACKS.iter().enumerate() {
        let relid = hostile.tl_connect(0x4000 + i as u32, 6000);
        let rings = hostile.open(relid, 12);
        let (mut victim, _) = listener.accept().unwrap();
        check_victim(attack, &rings, &mut victim);
        assert_moves_data(&mut by_guest, &mut by_host, attack.name);
        // The victim drops the stream: the channel is rescinded.
        drop(victim);
        assert_eq!(
            hostile.next_vmbus(),
            Message::RescindChannelOffer { child_relid: relid },
            "{}",
            attack.name
        );
    }
    // The daemon still makes new connections.
    let mut g = VsockStream::connect(&guest, VsockAddr::new(2, 6001)).unwrap();
    let (mut h, _) = by_listener.accept().unwrap();
    assert_moves_data(&mut g, &mut h, "a new connection");
}

#[test]
fn a_hostile_host_resets_only_its_connection_in_the_guest() {
    let d = TestDaemon::start(&["alpha"]);
    let root = Host::connect_daemon_at(&d.socket).unwrap();
    let guest = Guest::connect_daemon_at(&d.socket, "alpha").unwrap();
    // A bystander connection of the same guest process.
    let by_listener = VsockListener::bind(&guest, VsockAddr::new(u32::MAX, 6101)).unwrap();
    let alpha = vmbus::server::derived_vm_id("alpha");
    let mut by_host = HvStream::connect(&root, HvAddr::from_vsock_port(alpha, 6101)).unwrap();
    let (mut by_guest, _) = by_listener.accept().unwrap();
    by_guest.set_timeouts(HANG);
    by_host.set_timeouts(HANG);

    let mut hostile = RawHost::connect(&d.socket);
    hostile.listen(6100);
    for attack in ATTACKS {
        let mut victim = VsockStream::connect(&guest, VsockAddr::new(2, 6100)).unwrap();
        let (conn, rings) = hostile.incoming();
        check_victim(attack, &rings, &mut victim);
        assert_moves_data(&mut by_guest, &mut by_host, attack.name);
        drop(victim);
        drop(rings);
        send_ext(&hostile.sock, &vmbus::ext::ExtRequest::HostClose { conn });
    }
    let mut h = HvStream::connect(&root, HvAddr::from_vsock_port(alpha, 6101)).unwrap();
    let (mut g, _) = by_listener.accept().unwrap();
    assert_moves_data(&mut g, &mut h, "a new connection");
}
