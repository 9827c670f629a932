//! Throughput of one ring in shared memory, both ends spinning.
//!
//! Owns the ring benchmark: one `PipeWriter` and one `PipeReader` on a ring
//! in a sealed memfd mapping (`hvsock_shm::SharedRingMem`), (a) in two threads
//! of this process and (b) in two processes (the writer is this bench binary
//! re-executed, given the memfd over an inherited socket). No eventfds: the
//! writer retries while the ring is full, the reader polls while it is empty.
//! The writer puts whole packets of exactly the payload size and commits each
//! one; the reader reads one packet's data at a time and commits once per
//! batch (every packet one load of `write_index` showed), as a stream would.
//! One criterion iteration is one packet, so the throughput is stream bytes.
//!
//! For each data area (20 KiB, the seed's; 256 KiB) and payload (64 B,
//! 4088 B, 16 KiB) that fits, it also times a plain `memcpy` of the same
//! bytes into a buffer of the data area's size, in the same run, as the
//! reference a single copy can reach.
//!
//! `cargo bench -p vmbus-ring --bench ring`; has its own `main` (see
//! Cargo.toml) so that the re-executed child picks its role before criterion
//! starts.

use std::hint::{black_box, spin_loop};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Child, Command};
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use hvsock_shm::{recv_with_fds, send_with_fds, Mapping, SharedMemory, SharedRingMem};
use rustix::io::FdFlags;
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use vmbus_ring::layout::{round_up8, MAX_RECV_DATA, MAX_RECV_PACKET, PAGE_SIZE};
use vmbus_ring::pipe::writable;
use vmbus_ring::{init_control_page, PipeReader, PipeWriter, RingMem, RingReader, RingWriter};

/// Set in the re-executed writer: `<socket fd>:<data bytes>:<payload bytes>`.
const CHILD_ENV: &str = "VMBUS_RING_BENCH_WRITER";

const DATA_SIZES: [usize; 2] = [20 << 10, 256 << 10];
const PAYLOADS: [usize; 3] = [64, 4088, 16384];

fn main() {
    if let Ok(role) = std::env::var(CHILD_ENV) {
        child_writer(&role);
        return;
    }
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    bench_all(&mut c);
    c.final_summary();
}

fn label(data: usize, payload: usize) -> String {
    format!("{}KiB/{payload}B", data >> 10)
}

fn bench_all(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring");
    for data in DATA_SIZES {
        for payload in PAYLOADS {
            // A packet the pipe writer cannot put in an empty ring.
            if payload > writable(data as u32) || payload > MAX_RECV_DATA {
                continue;
            }
            group.throughput(Throughput::BytesDecimal(payload as u64));
            let id = label(data, payload);
            group.bench_function(BenchmarkId::new("memcpy", &id), |b| {
                let src = vec![3u8; payload];
                let mut dst = vec![0u8; data];
                let stride = round_up8(payload) + 32;
                let mut at = 0;
                b.iter(|| {
                    if at + payload > data {
                        at = 0;
                    }
                    dst[at..at + payload].copy_from_slice(black_box(&src));
                    black_box(&mut dst);
                    at += stride;
                });
            });
            group.bench_function(BenchmarkId::new("threads", &id), |b| {
                let mut pair = ThreadPair::new(data, payload);
                b.iter_custom(|packets| pair.reader.run(packets));
            });
            group.bench_function(BenchmarkId::new("processes", &id), |b| {
                let mut pair = ProcessPair::new(data, payload);
                b.iter_custom(|packets| pair.reader.run(packets));
            });
        }
    }
    group.finish();
}

/// A zeroed ring of `data` bytes in a fresh memfd, followed by one page for
/// the bench's own [`Orders`]; returns the memory too, to send it.
fn new_ring(data: usize) -> (SharedMemory, SharedRingMem) {
    let mem = SharedMemory::create("ring-bench", mem_len(data)).expect("memfd");
    let ring = map_ring(&mem, data);
    // No pending-send-size feature: nobody sleeps.
    init_control_page(&ring, 0);
    (mem, ring)
}

/// Control page, data area, orders page.
fn mem_len(data: usize) -> usize {
    PAGE_SIZE + data + PAGE_SIZE
}

fn map_ring(mem: &SharedMemory, data: usize) -> SharedRingMem {
    SharedRingMem::new(Arc::new(Mapping::new(mem).expect("mmap")), 0, data).expect("ring layout")
}

/// How the reader tells the writer to write `n` packets and learns that it
/// has: three words in the page after the ring, both sides spinning. Blocking
/// on a channel or socket between iterations would let the scheduler wake the
/// writer on the reader's CPU, where two spinning ends starve each other.
struct Orders {
    map: Arc<Mapping>,
    base: usize,
}

impl Orders {
    const SEQ: usize = 0;
    const PACKETS: usize = 1;
    const DONE: usize = 2;

    fn new(ring: &SharedRingMem) -> Self {
        Self {
            map: ring.mapping().clone(),
            base: PAGE_SIZE + ring.data_len(),
        }
    }

    fn word(&self, index: usize) -> &AtomicU32 {
        self.map
            .atomic_u32(self.base + 4 * index)
            .expect("orders page")
    }

    /// Reader: orders `packets` packets (0 = stop); returns the order number.
    fn order(&self, packets: u32) -> u32 {
        self.word(Self::PACKETS).store(packets, Relaxed);
        self.word(Self::SEQ).fetch_add(1, Release).wrapping_add(1)
    }

    /// Reader: waits until the writer has finished order `seq`.
    fn wait_done(&self, seq: u32) {
        while self.word(Self::DONE).load(Acquire) != seq {
            spin_loop();
        }
    }

    /// Writer: waits for the order after `last`; returns its number and
    /// packet count.
    fn next(&self, last: u32) -> (u32, u32) {
        let mut spins = 0u32;
        loop {
            let seq = self.word(Self::SEQ).load(Acquire);
            if seq != last {
                return (seq, self.word(Self::PACKETS).load(Relaxed));
            }
            spins = spins.wrapping_add(1);
            if spins % 1024 == 0 {
                // Between benchmarks the reader may be busy for a while.
                std::thread::yield_now();
            } else {
                spin_loop();
            }
        }
    }

    /// Writer: reports order `seq` done.
    fn done(&self, seq: u32) {
        self.word(Self::DONE).store(seq, Release);
    }
}

/// The writing end: obeys orders until it is ordered to write 0 packets.
fn serve_orders(ring: SharedRingMem, payload: usize) {
    let orders = Orders::new(&ring);
    let mut writer = PipeWriter::new(RingWriter::new(ring).expect("writer"), payload as u32);
    let src = vec![5u8; payload];
    let mut last = 0;
    loop {
        let (seq, packets) = orders.next(last);
        last = seq;
        if packets == 0 {
            return;
        }
        write_packets(&mut writer, &src, u64::from(packets));
        orders.done(seq);
    }
}

/// Writes `packets` packets of exactly `src.len()` data bytes, spinning while
/// the ring is full, committing each.
fn write_packets(writer: &mut PipeWriter<SharedRingMem>, src: &[u8], packets: u64) {
    for _ in 0..packets {
        // Whole packets only (PipeWriter::write would split the data).
        if writer.cached_writable() < src.len() {
            while writer.writable().expect("read_index") < src.len() {
                spin_loop();
            }
        }
        let written = writer.write(src).expect("write");
        assert_eq!(written, src.len());
        // Nobody sleeps: publish without the fence and signal decision.
        writer.ring_mut().publish().expect("publish");
    }
}

/// The reading end, kept across criterion's calls, and the orders.
struct Reader {
    reader: PipeReader<SharedRingMem>,
    buf: Vec<u8>,
    orders: Orders,
}

impl Reader {
    fn new(ring: SharedRingMem, payload: usize) -> Self {
        Self {
            orders: Orders::new(&ring),
            reader: PipeReader::new(
                RingReader::new(ring, MAX_RECV_PACKET as u32).expect("reader"),
                MAX_RECV_DATA as u32,
            ),
            buf: vec![0; payload],
        }
    }

    /// Orders `packets` packets and reads their data, polling while the ring
    /// is empty and committing at the end of every batch; returns the time.
    fn run(&mut self, packets: u64) -> Duration {
        let start = Instant::now();
        let seq = self
            .orders
            .order(u32::try_from(packets).expect("fewer than 2^32 packets per sample"));
        let total = packets * self.buf.len() as u64;
        let mut got = 0u64;
        while got < total {
            got += self.reader.read(&mut self.buf).expect("read") as u64;
            if self.reader.ring().cached_available() == 0 {
                self.reader.ring_mut().publish().expect("publish");
            }
        }
        self.reader.ring_mut().publish().expect("publish");
        let elapsed = start.elapsed();
        black_box(&self.buf);
        self.orders.wait_done(seq);
        elapsed
    }
}

/// Writer thread and reader (the bench thread) in this process.
struct ThreadPair {
    reader: Reader,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl ThreadPair {
    fn new(data: usize, payload: usize) -> Self {
        let (_mem, ring) = new_ring(data);
        let writer_ring = ring.clone();
        let writer = std::thread::spawn(move || serve_orders(writer_ring, payload));
        Self {
            reader: Reader::new(ring, payload),
            writer: Some(writer),
        }
    }
}

impl Drop for ThreadPair {
    fn drop(&mut self) {
        self.reader.orders.order(0);
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// Writer in a child process, reader in this one.
struct ProcessPair {
    reader: Reader,
    child: Option<Child>,
}

impl ProcessPair {
    fn new(data: usize, payload: usize) -> Self {
        let (mem, ring) = new_ring(data);
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .expect("socketpair");
        // Only the child's end survives exec. Criterion runs benchmarks on
        // this one thread, and no other thread spawns processes meanwhile.
        rustix::io::fcntl_setfd(&theirs, FdFlags::empty()).expect("clear CLOEXEC");
        let child = Command::new(std::env::current_exe().expect("current_exe"))
            .env(
                CHILD_ENV,
                format!("{}:{data}:{payload}", theirs.as_raw_fd()),
            )
            .spawn()
            .expect("spawn the writer");
        let pair = Self {
            reader: Reader::new(ring, payload),
            child: Some(child),
        };
        drop(theirs);
        send_with_fds(&ours, b"setup", &[mem.as_fd()]).expect("send the memfd");
        pair
    }
}

impl Drop for ProcessPair {
    fn drop(&mut self) {
        self.reader.orders.order(0);
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The re-executed writer: receives the memfd, then obeys orders.
fn child_writer(role: &str) {
    let mut fields = role.split(':').map(|f| f.parse::<usize>().expect("number"));
    let (Some(fd), Some(data), Some(payload)) = (fields.next(), fields.next(), fields.next())
    else {
        panic!("{CHILD_ENV} is fd:data:payload");
    };
    // SAFETY: the parent cleared CLOEXEC on this one descriptor so that it
    // reaches us and named it in the environment; nothing else in this
    // process knows or owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    // Never spin on after the bench is gone.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .expect("PR_SET_PDEATHSIG");
    let mut msg = [0u8; 8];
    let (n, mut fds) = recv_with_fds(&sock, &mut msg, 1).expect("setup");
    assert_eq!((&msg[..n], fds.len()), (&b"setup"[..], 1));
    drop(sock);
    let mem = SharedMemory::from_fd(fds.remove(0), mem_len(data)).expect("memfd");
    serve_orders(map_ring(&mem, data), payload);
}
