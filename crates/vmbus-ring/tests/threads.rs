//! Two threads stream through one ring with the blocking signalling rules:
//! no lost, reordered or duplicated byte, and no lost wake-up (a wait that
//! times out fails the test).

mod common;

use std::sync::Arc;

use common::stream::{receive, send, Event, LOST_WAKEUP};
use vmbus_ring::layout::{GUEST_MAX_SEND_DATA, MAX_RECV_DATA, MAX_RECV_PACKET};
use vmbus_ring::{init_control_page, HeapRingMem, PipeReader, PipeWriter, RingReader, RingWriter};

/// 1 GiB with optimisations (the README's test command); less in debug builds,
/// where the byte-wise heap memory is slow.
fn volume() -> u64 {
    if cfg!(debug_assertions) {
        64 << 20
    } else {
        1 << 30
    }
}

fn stream(data_size: usize, max_send: usize, max_write: usize, max_read: usize, total: u64) {
    let mem = Arc::new(HeapRingMem::new(data_size));
    init_control_page(&*mem, 1);
    let data_ready = Arc::new(Event::default());
    let space_ready = Arc::new(Event::default());
    let sender = {
        let (mem, data_ready, space_ready) = (mem.clone(), data_ready.clone(), space_ready.clone());
        std::thread::spawn(move || {
            let mut writer = PipeWriter::new(RingWriter::new(&*mem).unwrap(), max_send as u32);
            send(
                &mut writer,
                total,
                max_write,
                42,
                || data_ready.signal(),
                || space_ready.wait(LOST_WAKEUP),
            )
        })
    };
    let mut reader = PipeReader::new(
        RingReader::new(&*mem, MAX_RECV_PACKET as u32).unwrap(),
        MAX_RECV_DATA as u32,
    );
    let received = receive(
        &mut reader,
        max_read,
        7,
        || space_ready.signal(),
        || data_ready.wait(LOST_WAKEUP),
    );
    let sent = sender.join().unwrap();
    assert_eq!(received.bytes, total);
    assert_eq!(received, sent, "the stream arrived damaged");
}

#[test]
fn seed_ring_one_gib_random_sizes() {
    stream(20480, GUEST_MAX_SEND_DATA, 70_000, 70_000, volume());
}

#[test]
fn large_ring_host_sized_packets() {
    stream(256 << 10, MAX_RECV_DATA, 1 << 20, 100_000, volume() / 4);
}

#[test]
fn tiny_ring_tiny_writes_and_reads() {
    // One data page: the ring is full all the time and wraps constantly.
    stream(4096, GUEST_MAX_SEND_DATA, 300, 17, volume() / 64);
}
