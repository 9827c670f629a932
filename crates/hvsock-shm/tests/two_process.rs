//! Two real processes sharing a channel's rings through a sealed memfd.
//!
//! The parent creates the memory and two eventfds, passes them to a child
//! (this same test binary, re-executed with `HVSOCK_SHM_CHILD_FD` set) over an
//! inherited `SOCK_SEQPACKET` socket, and the two exchange bytes through the
//! mapping and wake each other through the eventfds. The child also plays a
//! hostile peer and tries to truncate the memory, which the seals must stop.
//! Runs without the libtest harness (see Cargo.toml) so that the child role
//! is chosen before any test machinery starts.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hvsock_shm::{
    recv_with_fds, ring_pair, send_with_fds, EventFd, Mapping, SharedMemory, PAGE_SIZE,
};
use rustix::io::{Errno, FdFlags};
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use vmbus_ring::mem::{word, RingMem};

const CHILD_ENV: &str = "HVSOCK_SHM_CHILD_FD";
const RING_PAGES: usize = 4;
const TOTAL_LEN: usize = 2 * RING_PAGES * PAGE_SIZE;
const TIMEOUT: Duration = Duration::from_secs(20);

fn main() {
    if let Ok(fd) = std::env::var(CHILD_ENV) {
        child(fd.parse().expect("the parent passes a descriptor number"));
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        println!("two_process: test");
        return;
    }
    print!("test two_process ... ");
    parent();
    println!("ok");
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Kills and reaps the child if the parent's checks fail, so that a failing
/// test leaves no process behind.
struct Reaper(Option<Child>);

impl Reaper {
    fn wait(mut self) -> ExitStatus {
        let mut child = self.0.take().expect("waited once");
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the child did not exit within {TIMEOUT:?}");
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

fn parent() {
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .expect("socketpair");
    // The child's end alone survives exec. This binary runs no other threads
    // that could fork while it is inheritable.
    rustix::io::fcntl_setfd(&theirs, FdFlags::empty()).expect("clear CLOEXEC");
    let child = Command::new(std::env::current_exe().expect("current_exe"))
        .env(CHILD_ENV, theirs.as_raw_fd().to_string())
        .spawn()
        .expect("spawn the child");
    let reaper = Reaper(Some(child));
    drop(theirs);

    let mem = SharedMemory::create("two-process", TOTAL_LEN).expect("memfd");
    let map = Arc::new(Mapping::new(&mem).expect("mmap"));
    let rings = ring_pair(map, RING_PAGES, RING_PAGES).expect("rings");
    let to_parent = EventFd::new().expect("eventfd");
    let to_child = EventFd::new().expect("eventfd");
    send_with_fds(
        &ours,
        b"setup",
        &[mem.as_fd(), to_parent.as_fd(), to_child.as_fd()],
    )
    .expect("send the fds");
    drop(mem);

    // The child writes into the guest-to-host ring, then signals.
    assert!(
        to_parent.wait_timeout(TIMEOUT).expect("wait"),
        "the child never signalled"
    );
    let up = &rings.guest_to_host;
    let len = up.load_control(word::WRITE_INDEX, Ordering::Acquire) as usize;
    assert_eq!(len, 5000, "the child's published length");
    let mut got = vec![0; len];
    up.read_data(0, &mut got);
    assert_eq!(
        got,
        pattern(1, len),
        "the child's bytes, seen by the parent"
    );

    // And it reports what happened when it tried to truncate the memory.
    let mut report = [0u8; 64];
    let (n, fds) = recv_with_fds(&ours, &mut report, 0).expect("report");
    assert!(fds.is_empty());
    assert_eq!(&report[..n], b"truncate refused");

    // The other direction: the parent writes, the child checks and answers.
    let down = &rings.host_to_guest;
    down.write_data(0, &pattern(2, 3000));
    down.store_control(word::WRITE_INDEX, 3000, Ordering::Release);
    to_child.signal().expect("signal");
    let (n, _) = recv_with_fds(&ours, &mut report, 0).expect("answer");
    assert_eq!(&report[..n], b"parent bytes ok");

    let status = reaper.wait();
    assert!(status.success(), "child failed: {status}");
}

fn child(fd: RawFd) {
    // SAFETY: the parent cleared CLOEXEC on this one descriptor so that it
    // reaches us, and nothing else in this process knows or owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // Not inherited any further: this process spawns nothing, but a socket
    // end left open elsewhere would hide the parent's death from us.
    rustix::io::fcntl_setfd(&sock, FdFlags::CLOEXEC).expect("set CLOEXEC");

    let mut buf = [0u8; 16];
    let (n, mut fds) = recv_with_fds(&sock, &mut buf, 3).expect("receive the fds");
    assert_eq!(&buf[..n], b"setup");
    assert_eq!(fds.len(), 3);
    let to_child = EventFd::from_fd(fds.pop().unwrap()).expect("eventfd");
    let to_parent = EventFd::from_fd(fds.pop().unwrap()).expect("eventfd");
    let mem = SharedMemory::from_fd(fds.pop().unwrap(), TOTAL_LEN).expect("checked memfd");
    let map = Arc::new(Mapping::new(&mem).expect("mmap"));
    let rings = ring_pair(map, RING_PAGES, RING_PAGES).expect("rings");

    let up = &rings.guest_to_host;
    up.write_data(0, &pattern(1, 5000));
    up.store_control(word::WRITE_INDEX, 5000, Ordering::Release);
    to_parent.signal().expect("signal");

    // Play the hostile peer: the seals must keep the memory whole.
    let shrink = rustix::fs::ftruncate(&mem, 0);
    let grow = rustix::fs::ftruncate(&mem, 2 * TOTAL_LEN as u64);
    let report: &[u8] = if shrink == Err(Errno::PERM) && grow == Err(Errno::PERM) {
        b"truncate refused"
    } else {
        b"truncate allowed"
    };
    send_with_fds(&sock, report, &[]).expect("report");

    assert!(to_child.wait_timeout(TIMEOUT).expect("wait"), "no signal");
    let down = &rings.host_to_guest;
    let len = down.load_control(word::WRITE_INDEX, Ordering::Acquire) as usize;
    let mut got = vec![0; len];
    down.read_data(0, &mut got);
    let answer: &[u8] = if got == pattern(2, 3000) {
        b"parent bytes ok"
    } else {
        b"parent bytes wrong"
    };
    send_with_fds(&sock, answer, &[]).expect("answer");
}
