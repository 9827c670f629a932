//! Model-based tests: random sequences of writes, reads and commits on one
//! ring, checked against a plain queue of bytes, across wrap-around and a
//! full ring.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;

use proptest::prelude::*;
use vmbus_ring::layout::{free, MAX_RECV_DATA, MAX_RECV_PACKET};
use vmbus_ring::mem::word;
use vmbus_ring::{HeapRingMem, PipeReader, PipeWriter, RingMem, RingReader, RingWriter};

#[derive(Debug, Clone)]
enum Op {
    Write(usize),
    CommitWrite,
    Read(usize),
    Peek(usize),
    CommitRead,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0usize..20_000).prop_map(Op::Write),
        2 => Just(Op::CommitWrite),
        3 => (0usize..20_000).prop_map(Op::Read),
        1 => (0usize..100).prop_map(Op::Peek),
        2 => Just(Op::CommitRead),
    ]
}

/// What a run saw, so that tests can check the interesting states happened.
#[derive(Default)]
struct Seen {
    full: usize,
    wraps: usize,
}

fn run(data_pages: usize, max_send: u32, ops: &[Op]) -> Seen {
    let mem = HeapRingMem::new(4096 * data_pages);
    let size = mem.data_len() as u32;
    let mut writer = PipeWriter::new(RingWriter::new(&mem).unwrap(), max_send);
    let mut reader = PipeReader::new(
        RingReader::new(&mem, MAX_RECV_PACKET as u32).unwrap(),
        MAX_RECV_DATA as u32,
    );
    let mut committed = VecDeque::new();
    let mut uncommitted = Vec::new();
    let mut counter = 0u32;
    let mut seen = Seen::default();
    let mut buf = vec![0u8; 20_000];
    let mut last_write = 0;
    for op in ops {
        match *op {
            Op::Write(len) => {
                let bytes: Vec<u8> = (counter..counter + len as u32)
                    .map(|i| (i % 251) as u8)
                    .collect();
                let n = writer.write(&bytes).unwrap();
                if n < len {
                    seen.full += 1;
                    // Short only because the seed's reserve is reached.
                    assert_eq!(writer.writable().unwrap(), 0);
                }
                uncommitted.extend_from_slice(&bytes[..n]);
                counter += n as u32;
            }
            Op::CommitWrite => {
                let _ = writer.commit().unwrap();
                committed.extend(uncommitted.drain(..));
            }
            Op::Read(len) => {
                let n = reader.read(&mut buf[..len]).unwrap();
                let expected: Vec<u8> = committed.drain(..n).collect();
                assert_eq!(&buf[..n], &expected[..]);
                assert!(
                    n == len || committed.is_empty(),
                    "short read with data left"
                );
            }
            Op::Peek(len) => {
                let n = reader.peek(&mut buf[..len]).unwrap();
                assert!(n <= committed.len());
                assert!(committed.iter().take(n).eq(buf[..n].iter()));
                assert!(
                    len == 0 || committed.is_empty() || n > 0,
                    "peek found nothing"
                );
            }
            Op::CommitRead => {
                let _ = reader.commit().unwrap();
            }
        }
        let w = mem.load_control(word::WRITE_INDEX, Relaxed);
        let r = mem.load_control(word::READ_INDEX, Relaxed);
        assert!(
            free(w, r, size) >= 8,
            "the ring must never be completely full"
        );
        if w < last_write {
            seen.wraps += 1;
        }
        last_write = w;
    }
    seen
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn stream_matches_a_queue(
        pages in 1usize..6,
        max_send in prop_oneof![Just(4088u32), Just(16384u32), 1u32..200],
        ops in prop::collection::vec(op(), 1..120),
    ) {
        run(pages, max_send, &ops);
    }
}

#[test]
fn random_runs_reach_wrap_around_and_a_full_ring() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut total = Seen::default();
    for _ in 0..50 {
        let ops: Vec<Op> = (0..400)
            .map(|_| match rng.gen_range(0..10) {
                0..=2 => Op::Write(rng.gen_range(0..12_000)),
                3..=4 => Op::CommitWrite,
                5..=7 => Op::Read(rng.gen_range(0..12_000)),
                8 => Op::Peek(rng.gen_range(0..50)),
                _ => Op::CommitRead,
            })
            .collect();
        let seen = run(rng.gen_range(1..6), 4088, &ops);
        total.full += seen.full;
        total.wraps += seen.wraps;
    }
    assert!(
        total.full > 10,
        "the ring was full only {} times",
        total.full
    );
    assert!(
        total.wraps > 10,
        "the ring wrapped only {} times",
        total.wraps
    );
}
