//! Model checks (loom) of the signalling rules: every interleaving of a
//! writer and a reader that sleep only as the rules allow ends with all data
//! delivered. A lost wake-up shows as a deadlock, which loom reports.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p vmbus-ring --release --test loom`.
#![cfg(loom)]

use std::sync::atomic::Ordering;

use loom::sync::atomic::AtomicU32;
use loom::sync::{Arc, Condvar, Mutex};
use vmbus_ring::layout::{MAX_RECV_DATA, MAX_RECV_PACKET, PACKET_TYPE_DATA_INBAND};
use vmbus_ring::mem::word;
use vmbus_ring::{
    init_control_page, PipeReader, PipeWriter, RingMem, RingReader, RingWriter, WriteError,
};

/// Ring memory whose control words are loom atomics. Only the words the
/// protocol uses are modelled; the data bytes live behind a plain mutex,
/// since the rules being checked are about the control words.
struct LoomMem {
    control: Vec<AtomicU32>,
    data: std::sync::Mutex<Vec<u8>>,
}

impl LoomMem {
    fn new() -> Self {
        Self {
            control: (0..=word::FEATURE_BITS)
                .map(|_| AtomicU32::new(0))
                .collect(),
            data: std::sync::Mutex::new(vec![0; 4096]),
        }
    }
}

impl RingMem for LoomMem {
    fn data_len(&self) -> usize {
        4096
    }
    fn load_control(&self, word: usize, order: Ordering) -> u32 {
        self.control.get(word).map_or(0, |w| w.load(order))
    }
    fn store_control(&self, word: usize, value: u32, order: Ordering) {
        if let Some(w) = self.control.get(word) {
            w.store(value, order);
        }
    }
    fn read_data(&self, offset: usize, dst: &mut [u8]) {
        let len = dst.len();
        dst.copy_from_slice(&self.data.lock().unwrap()[offset..offset + len]);
    }
    fn write_data(&self, offset: usize, src: &[u8]) {
        self.data.lock().unwrap()[offset..offset + src.len()].copy_from_slice(src);
    }
    fn full_fence(&self) {
        loom::sync::atomic::fence(Ordering::SeqCst);
    }
}

/// A sticky event, as an eventfd is.
#[derive(Default)]
struct Event {
    set: Mutex<bool>,
    cond: Condvar,
}

impl Event {
    fn signal(&self) {
        *self.set.lock().unwrap() = true;
        self.cond.notify_one();
    }
    fn wait(&self) {
        let mut set = self.set.lock().unwrap();
        while !*set {
            set = self.cond.wait(set).unwrap();
        }
        *set = false;
    }
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(f);
}

/// Receives `expected` bytes, sleeping only after publishing read_index and
/// re-checking an empty ring.
fn receive(mem: &LoomMem, expected: usize, data_ready: &Event, space_ready: &Event) {
    let mut reader = PipeReader::new(
        RingReader::new(mem, MAX_RECV_PACKET as u32).unwrap(),
        MAX_RECV_DATA as u32,
    );
    let mut buf = vec![0u8; 4096];
    let mut got = 0;
    while got < expected {
        let n = reader.read(&mut buf).unwrap();
        got += n;
        if reader.commit().unwrap() {
            space_ready.signal();
        }
        if n == 0 && reader.ring_mut().available().unwrap() == 0 {
            data_ready.wait();
        }
    }
    assert_eq!(got, expected);
}

#[test]
fn data_wakeups_are_never_lost() {
    model(|| {
        let mem = Arc::new(LoomMem::new());
        init_control_page(&*mem, 1);
        let data_ready = Arc::new(Event::default());
        let space_ready = Arc::new(Event::default());
        let writer = {
            let (mem, data_ready) = (mem.clone(), data_ready.clone());
            loom::thread::spawn(move || {
                let mut writer = PipeWriter::new(RingWriter::new(&*mem).unwrap(), 4088);
                for _ in 0..2 {
                    assert_eq!(writer.write(b"x").unwrap(), 1);
                    if writer.commit().unwrap() {
                        data_ready.signal();
                    }
                }
            })
        };
        receive(&mem, 2, &data_ready, &space_ready);
        writer.join().unwrap();
    });
}

#[test]
fn space_wakeups_are_never_lost_with_a_pending_send_size_set_while_blocked() {
    model(|| {
        let mem = Arc::new(LoomMem::new());
        init_control_page(&*mem, 1);
        let data_ready = Arc::new(Event::default());
        let space_ready = Arc::new(Event::default());
        let writer = {
            let (mem, data_ready, space_ready) =
                (mem.clone(), data_ready.clone(), space_ready.clone());
            loom::thread::spawn(move || {
                let mut writer = RingWriter::new(&*mem).unwrap();
                // Pipe header {1, 2000}, then 2000 bytes: a 2032-byte packet;
                // two do not fit a 4096-byte ring at once.
                let mut header = [0u8; 8];
                header[0] = 1;
                header[4..].copy_from_slice(&2000u32.to_le_bytes());
                let body = vec![7u8; 2000];
                for _ in 0..3 {
                    loop {
                        match writer.write_packet(PACKET_TYPE_DATA_INBAND, 0, 0, &[&header, &body])
                        {
                            Ok(()) => break,
                            Err(WriteError::Full { needed, .. }) => {
                                // Arm, then re-check before sleeping.
                                writer.set_pending_send_size(needed);
                                if !writer.space_after_arming(needed).unwrap() {
                                    space_ready.wait();
                                }
                                writer.set_pending_send_size(0);
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                    if writer.commit().unwrap() {
                        data_ready.signal();
                    }
                }
            })
        };
        receive(&mem, 6000, &data_ready, &space_ready);
        writer.join().unwrap();
    });
}
