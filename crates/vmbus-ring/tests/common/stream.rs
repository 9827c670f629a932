//! A blocking byte stream over one ring, for tests and benchmarks: a sender
//! and a receiver that follow the signalling rules (signal only when a commit
//! says so, re-check before sleeping) and checksum what they move.
//!
//! The event type is the caller's: threads use [`Event`], processes use an
//! eventfd. A wait that times out means a lost wake-up and fails the test.
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use vmbus_ring::layout::SEED_PENDING_SEND_SIZE;
use vmbus_ring::{PipeReader, PipeWriter, RingMem};

/// How long a side may sleep before a wake-up counts as lost.
pub const LOST_WAKEUP: Duration = Duration::from_secs(20);

/// A sticky event between threads (like an eventfd in semaphore-less mode).
#[derive(Default)]
pub struct Event {
    set: Mutex<bool>,
    cond: Condvar,
}

impl Event {
    pub fn signal(&self) {
        *self.set.lock().unwrap() = true;
        self.cond.notify_one();
    }

    /// Waits for a signal; false if none came in time.
    pub fn wait(&self, timeout: Duration) -> bool {
        let guard = self.set.lock().unwrap();
        let (mut guard, _) = self
            .cond
            .wait_timeout_while(guard, timeout, |set| !*set)
            .unwrap();
        std::mem::replace(&mut *guard, false)
    }
}

/// A small deterministic generator of stream bytes and write sizes.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// A running checksum of a byte stream, independent of how it is split.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checksum {
    pub bytes: u64,
    pub hash: u64,
}

impl Checksum {
    pub fn update(&mut self, data: &[u8]) {
        for &b in data {
            // FNV-1a: order-sensitive, so reordering or loss shows.
            self.hash = (self.hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
        self.bytes += data.len() as u64;
    }
}

/// Sends `total` pseudo-random bytes in writes of random sizes up to
/// `max_write`, then the FIN. Sleeps on `wait_space` when the ring is full.
pub fn send<M: RingMem>(
    writer: &mut PipeWriter<M>,
    total: u64,
    max_write: usize,
    seed: u64,
    mut signal_reader: impl FnMut(),
    mut wait_space: impl FnMut() -> bool,
) -> Checksum {
    // The seed's rule: ask, permanently, for room for one maximal packet.
    writer.ring().set_pending_send_size(SEED_PENDING_SEND_SIZE);
    let mut sizes = XorShift(seed ^ 0x5eed);
    let mut data = XorShift(seed);
    let mut buf = vec![0u8; max_write];
    let mut sum = Checksum::default();
    let mut sent = 0u64;
    while sent < total {
        let len = (1 + sizes.next() as usize % max_write).min((total - sent) as usize);
        data.fill(&mut buf[..len]);
        sum.update(&buf[..len]);
        let mut done = 0;
        while done < len {
            let n = writer.write(&buf[done..len]).expect("write");
            done += n;
            if writer.commit().expect("commit") {
                signal_reader();
            }
            if n == 0 && writer.writable().expect("writable") == 0 {
                assert!(
                    wait_space(),
                    "lost wake-up: the writer slept on a full ring"
                );
            }
        }
        sent += len as u64;
    }
    while writer.write_fin().is_err() {
        assert!(wait_space(), "lost wake-up before the FIN");
    }
    if writer.commit().expect("commit") {
        signal_reader();
    }
    sum
}

/// Receives until the FIN in reads of random sizes up to `max_read`.
/// Sleeps on `wait_data` when the ring is empty.
pub fn receive<M: RingMem>(
    reader: &mut PipeReader<M>,
    max_read: usize,
    seed: u64,
    mut signal_writer: impl FnMut(),
    mut wait_data: impl FnMut() -> bool,
) -> Checksum {
    let mut sizes = XorShift(seed ^ 0x7ead);
    let mut buf = vec![0u8; max_read];
    let mut sum = Checksum::default();
    loop {
        let len = 1 + sizes.next() as usize % max_read;
        let n = reader.read(&mut buf[..len]).expect("read");
        sum.update(&buf[..n]);
        if n > 0 {
            continue;
        }
        if reader.commit().expect("commit") {
            signal_writer();
        }
        if reader.fin_received() {
            return sum;
        }
        // Re-check after publishing read_index: the writer signals for its
        // next packet only if it sees us caught up.
        if reader.ring_mut().available().expect("available") == 0 {
            assert!(
                wait_data(),
                "lost wake-up: the reader slept on an empty ring"
            );
        }
    }
}
