//! Two real processes stream through both rings of one channel in a sealed
//! memfd, with the blocking signalling rules over eventfds.
//!
//! Owns the cross-process stream test: the parent (the host end) creates the
//! memory, both rings and four eventfds (data-ready and space-ready for each
//! ring), and re-executes this test binary as the child (the guest end) with
//! its end of a `SOCK_SEQPACKET` socket inherited. Over that socket the parent
//! passes the memfd and the eventfds; then, concurrently, the child streams
//! into the guest-to-host ring while the parent streams into the host-to-guest
//! ring, each in random-sized writes and reads, through the `send`/`receive`
//! harness of `vmbus-ring` (shared source, not a copy). A wait that times out
//! is a lost wake-up and fails. The child reports its checksums over the
//! socket; the parent compares byte counts and checksums of both directions.
//! A failing parent kills and reaps the child; a child whose parent dies is
//! killed by the kernel (`PR_SET_PDEATHSIG`); a side whose peer exits while it
//! waits fails at once instead of after the lost-wake-up timeout.
//!
//! Runs without the libtest harness (see Cargo.toml) so that the child role
//! is chosen before any test machinery starts. An argument that is not a flag
//! selects the cases whose name contains it.

#[path = "../../vmbus-ring/tests/common/stream.rs"]
mod stream;

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hvsock_shm::{
    recv_with_fds, ring_pair, send_with_fds, EventFd, Mapping, SharedMemory, SharedRingMem,
    PAGE_SIZE,
};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::FdFlags;
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use stream::{receive, send, Checksum, LOST_WAKEUP};
use vmbus_ring::layout::{
    FEATURE_PENDING_SEND_SIZE, GUEST_MAX_SEND_DATA, MAX_RECV_DATA, MAX_RECV_PACKET,
};
use vmbus_ring::{init_control_page, PipeReader, PipeWriter, RingReader, RingWriter};

/// Set in the child: `<socket fd>:<case name>`.
const CHILD_ENV: &str = "HVSOCK_RING_STREAM_CHILD";

/// Seeds of the two streams (data and write sizes) and of the read sizes.
const UP_SEED: u64 = 0x6e57_0001;
const DOWN_SEED: u64 = 0x4057_0002;
const PARENT_READ_SEED: u64 = 11;
const CHILD_READ_SEED: u64 = 13;

/// One geometry and traffic shape; both directions run at once.
struct Case {
    name: &'static str,
    /// Pages of each ring, control page included (6 = the seed's 20 KiB data).
    ring_pages: usize,
    /// Largest packet data the guest (child) and the host (parent) send.
    guest_max_send: usize,
    host_max_send: usize,
    /// Largest single write and read of the stream harness.
    max_write: usize,
    max_read: usize,
    /// Bytes sent in each direction, with optimisations.
    release_bytes: u64,
}

impl Case {
    /// The byte-wise checksum is slow without optimisations: move less.
    fn bytes(&self) -> u64 {
        if cfg!(debug_assertions) {
            self.release_bytes / 64
        } else {
            self.release_bytes
        }
    }
}

const CASES: &[Case] = &[
    Case {
        name: "both_directions_one_gib",
        ring_pages: 16,
        guest_max_send: GUEST_MAX_SEND_DATA,
        host_max_send: MAX_RECV_DATA,
        max_write: 70_000,
        max_read: 70_000,
        release_bytes: 1 << 30,
    },
    Case {
        name: "seed_geometry_six_page_rings",
        ring_pages: 6,
        guest_max_send: GUEST_MAX_SEND_DATA,
        host_max_send: GUEST_MAX_SEND_DATA,
        max_write: 70_000,
        max_read: 10_000,
        release_bytes: 256 << 20,
    },
    Case {
        name: "sixty_four_page_rings",
        ring_pages: 64,
        guest_max_send: GUEST_MAX_SEND_DATA,
        host_max_send: MAX_RECV_DATA,
        max_write: 1 << 20,
        max_read: 100_000,
        release_bytes: 256 << 20,
    },
];

fn main() {
    if let Ok(role) = std::env::var(CHILD_ENV) {
        let (fd, name) = role.split_once(':').expect("fd:case");
        child(fd.parse().expect("a descriptor number"), find(name));
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filter = args.iter().find(|a| !a.starts_with('-'));
    let selected: Vec<&Case> = CASES
        .iter()
        .filter(|c| filter.map_or(true, |f| c.name.contains(f.as_str())))
        .collect();
    if args.iter().any(|a| a == "--list") {
        for case in &selected {
            println!("{}: test", case.name);
        }
        return;
    }
    println!("\nrunning {} tests", selected.len());
    for case in &selected {
        print!("test {} ... ", case.name);
        let start = Instant::now();
        parent(case);
        println!("ok ({:.1} s)", start.elapsed().as_secs_f64());
    }
    println!(
        "\ntest result: ok. {} passed; 0 failed; 0 ignored; 0 measured; {} filtered out\n",
        selected.len(),
        CASES.len() - selected.len()
    );
}

fn find(name: &str) -> &'static Case {
    CASES.iter().find(|c| c.name == name).expect("a known case")
}

fn mem_len(case: &Case) -> usize {
    2 * case.ring_pages * PAGE_SIZE
}

/// Kills and reaps the child unless it was waited for, so that a failing
/// test leaves no process behind.
struct Reaper(Option<Child>);

impl Reaper {
    fn wait(mut self) -> ExitStatus {
        let mut child = self.0.take().expect("waited once");
        let deadline = Instant::now() + LOST_WAKEUP;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the child did not exit within {LOST_WAKEUP:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether the process at the other end of `sock` has closed it (exited).
fn peer_gone(sock: &impl AsFd) -> bool {
    let mut fds = [PollFd::new(sock, PollFlags::empty())];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    rustix::event::poll(&mut fds, Some(&zero)).expect("poll the socket");
    fds[0].revents().contains(PollFlags::HUP)
}

/// The wait closure of the stream harness: true on a signal, false after
/// [`LOST_WAKEUP`] without one. Waits in slices so that a peer that exited
/// (crashed) fails the test now, with that cause, rather than as a lost
/// wake-up twenty seconds later.
fn wait_signal(event: &EventFd, peer: &impl AsFd) -> bool {
    let deadline = Instant::now() + LOST_WAKEUP;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if event
            .wait_timeout(left.min(Duration::from_millis(200)))
            .expect("wait on the eventfd")
        {
            return true;
        }
        if peer_gone(peer) {
            // It may have signalled just before exiting.
            assert!(
                event.try_wait().expect("read the eventfd"),
                "the peer process exited while this side waited for it"
            );
            return true;
        }
        if left.is_zero() {
            return false;
        }
    }
}

/// The four eventfds of a channel: for each ring, data-ready (to its reader)
/// and space-ready (to its writer). Separate eventfds, because each process
/// waits for both rings at once from two threads, and a shared eventfd would
/// let one thread take the other's signal.
struct Events {
    up_data: EventFd,
    up_space: EventFd,
    down_data: EventFd,
    down_space: EventFd,
}

fn encode(sums: [Checksum; 2]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let words = [sums[0].bytes, sums[0].hash, sums[1].bytes, sums[1].hash];
    for (chunk, word) in out.chunks_exact_mut(8).zip(words) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    out
}

fn decode(raw: &[u8]) -> [Checksum; 2] {
    assert_eq!(raw.len(), 32, "the child's report is four u64");
    let w = |i: usize| u64::from_le_bytes(raw[i * 8..i * 8 + 8].try_into().unwrap());
    [
        Checksum {
            bytes: w(0),
            hash: w(1),
        },
        Checksum {
            bytes: w(2),
            hash: w(3),
        },
    ]
}

/// The host end: writes the host-to-guest ring, reads the guest-to-host one.
fn parent(case: &Case) {
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .expect("socketpair");
    // The child's end alone survives exec. No other thread of this process
    // spawns anything while it is inheritable.
    rustix::io::fcntl_setfd(&theirs, FdFlags::empty()).expect("clear CLOEXEC");
    let child = Command::new(std::env::current_exe().expect("current_exe"))
        .env(CHILD_ENV, format!("{}:{}", theirs.as_raw_fd(), case.name))
        .spawn()
        .expect("spawn the child");
    let reaper = Reaper(Some(child));
    drop(theirs);
    let ours = Arc::new(ours);

    let mem = SharedMemory::create("ring-stream", mem_len(case)).expect("memfd");
    let rings = ring_pair(
        Arc::new(Mapping::new(&mem).expect("mmap")),
        case.ring_pages,
        case.ring_pages,
    )
    .expect("rings");
    init_control_page(&rings.guest_to_host, FEATURE_PENDING_SEND_SIZE);
    init_control_page(&rings.host_to_guest, FEATURE_PENDING_SEND_SIZE);
    let events = Arc::new(Events {
        up_data: EventFd::new().expect("eventfd"),
        up_space: EventFd::new().expect("eventfd"),
        down_data: EventFd::new().expect("eventfd"),
        down_space: EventFd::new().expect("eventfd"),
    });
    send_with_fds(
        &*ours,
        b"setup",
        &[
            mem.as_fd(),
            events.up_data.as_fd(),
            events.up_space.as_fd(),
            events.down_data.as_fd(),
            events.down_space.as_fd(),
        ],
    )
    .expect("send the fds");
    drop(mem);

    let total = case.bytes();
    let sender = {
        let (events, ours) = (events.clone(), ours.clone());
        let (max_send, max_write) = (case.host_max_send, case.max_write);
        let down = rings.host_to_guest.clone();
        std::thread::spawn(move || {
            let mut writer = PipeWriter::new(RingWriter::new(down).unwrap(), max_send as u32);
            send(
                &mut writer,
                total,
                max_write,
                DOWN_SEED,
                || events.down_data.signal().expect("signal"),
                || wait_signal(&events.down_space, &*ours),
            )
        })
    };
    let mut reader = PipeReader::new(
        RingReader::new(rings.guest_to_host.clone(), MAX_RECV_PACKET as u32).unwrap(),
        MAX_RECV_DATA as u32,
    );
    let received_up = receive(
        &mut reader,
        case.max_read,
        PARENT_READ_SEED,
        || events.up_space.signal().expect("signal"),
        || wait_signal(&events.up_data, &*ours),
    );
    let sent_down = sender.join().expect("the parent's sender panicked");

    let mut report = [0u8; 64];
    let (n, fds) = recv_with_fds(&*ours, &mut report, 0).expect("the child's report");
    assert!(fds.is_empty());
    assert_ne!(n, 0, "the child exited without a report");
    let [sent_up, received_down] = decode(&report[..n]);
    let status = reaper.wait();
    assert!(status.success(), "child failed: {status}");

    assert_eq!(sent_up.bytes, total, "guest-to-host bytes sent");
    assert_eq!(received_up.bytes, total, "guest-to-host bytes received");
    assert_eq!(received_up, sent_up, "the guest-to-host stream was damaged");
    assert_eq!(sent_down.bytes, total, "host-to-guest bytes sent");
    assert_eq!(received_down.bytes, total, "host-to-guest bytes received");
    assert_eq!(
        received_down, sent_down,
        "the host-to-guest stream was damaged"
    );
    // Different seeds: equal sums would mean the directions were crossed.
    assert_ne!(sent_up.hash, sent_down.hash);
}

/// The guest end: writes the guest-to-host ring, reads the host-to-guest one,
/// then reports both checksums.
fn child(fd: RawFd, case: &Case) {
    // SAFETY: the parent cleared CLOEXEC on this one descriptor so that it
    // reaches us and named it in the environment; nothing else in this
    // process knows or owns it.
    let sock = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
    rustix::io::fcntl_setfd(&*sock, FdFlags::CLOEXEC).expect("set CLOEXEC");
    // Do not outlive a parent that was killed.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .expect("PR_SET_PDEATHSIG");

    let mut buf = [0u8; 16];
    let (n, mut fds) = recv_with_fds(&*sock, &mut buf, 5).expect("receive the fds");
    assert_eq!(&buf[..n], b"setup");
    assert_eq!(fds.len(), 5);
    let mem_fd = fds.remove(0);
    let mut event = || EventFd::from_fd(fds.remove(0)).expect("eventfd");
    let events = Arc::new(Events {
        up_data: event(),
        up_space: event(),
        down_data: event(),
        down_space: event(),
    });
    let mem = SharedMemory::from_fd(mem_fd, mem_len(case)).expect("checked memfd");
    let rings = ring_pair(
        Arc::new(Mapping::new(&mem).expect("mmap")),
        case.ring_pages,
        case.ring_pages,
    )
    .expect("rings");

    let total = case.bytes();
    let sender = {
        let (events, sock) = (events.clone(), sock.clone());
        let (max_send, max_write) = (case.guest_max_send, case.max_write);
        let up: SharedRingMem = rings.guest_to_host.clone();
        std::thread::spawn(move || {
            let mut writer = PipeWriter::new(RingWriter::new(up).unwrap(), max_send as u32);
            send(
                &mut writer,
                total,
                max_write,
                UP_SEED,
                || events.up_data.signal().expect("signal"),
                || wait_signal(&events.up_space, &*sock),
            )
        })
    };
    let mut reader = PipeReader::new(
        RingReader::new(rings.host_to_guest.clone(), MAX_RECV_PACKET as u32).unwrap(),
        MAX_RECV_DATA as u32,
    );
    let received_down = receive(
        &mut reader,
        case.max_read,
        CHILD_READ_SEED,
        || events.down_space.signal().expect("signal"),
        || wait_signal(&events.down_data, &*sock),
    );
    let sent_up = sender.join().expect("the child's sender panicked");
    send_with_fds(&*sock, &encode([sent_up, received_down]), &[]).expect("report");
}
