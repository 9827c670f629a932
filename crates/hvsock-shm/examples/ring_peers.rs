//! `ring_peers`: throughput of one ring in a sealed memfd between two
//! processes, the Rust counterpart of the C baseline's `peers ring` and
//! `peers ringb` (`shared/baseline/peers.c`), with the same arguments and the
//! same output line, so that `scripts/ring-vs-c.sh` can run both alternately.
//!
//! ```text
//! ring_peers ring  DATA_KIB PAYLOAD_BYTES TOTAL_MIB   both ends spin
//! ring_peers ringb DATA_KIB PAYLOAD_BYTES TOTAL_MIB   both ends sleep on eventfds
//! ```
//!
//! The parent is the reader and does the timing; the writer is this same
//! binary re-executed (forking a Rust process is not safe once threads may
//! exist), which receives the memfd and the two eventfds over an inherited
//! `SOCK_SEQPACKET` socket. The writer sends `ceil(TOTAL / PAYLOAD)` whole
//! packets of exactly PAYLOAD data bytes through `PipeWriter`, committing each
//! one; the reader drains them through `PipeReader` into a PAYLOAD-sized
//! buffer and commits once per batch (every packet one load of `write_index`
//! showed), as peers.c does. Unlike peers.c, the reader validates every
//! descriptor and pipe header and the writer keeps the seed's FIN reserve.
//!
//! Blocking mode follows the VMBus rules as peers.c's `ringb` does: the
//! reader keeps interrupts masked while it works and unmasks and re-checks
//! before sleeping; the writer publishes a pending send size only when the
//! ring is full, re-checks, sleeps, and clears it; each side signals only when
//! a commit says so. Owns nothing but this program.

use std::error::Error;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Child, Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hvsock_shm::{recv_with_fds, send_with_fds, EventFd, Mapping, SharedMemory, SharedRingMem};
use rustix::io::FdFlags;
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use vmbus_ring::layout::{
    round_up8, FEATURE_PENDING_SEND_SIZE, MAX_RECV_DATA, MAX_RECV_PACKET, PAGE_SIZE,
    WRITABLE_RESERVE,
};
use vmbus_ring::pipe::writable;
use vmbus_ring::{init_control_page, PipeReader, PipeWriter, RingReader, RingWriter};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// Set in the re-executed writer: the number of its end of the socket.
const CHILD_ENV: &str = "RING_PEERS_CHILD_FD";

/// A sleep longer than this is a lost wake-up: fail instead of hanging.
const LOST_WAKEUP: Duration = Duration::from_secs(20);

const USAGE: &str = "usage: ring_peers ring|ringb DATA_KIB PAYLOAD_BYTES TOTAL_MIB";

#[derive(Debug, Clone, Copy)]
struct Params {
    blocking: bool,
    data_kib: usize,
    payload: usize,
    total_mib: usize,
}

impl Params {
    fn parse(args: &[String]) -> Result<Self> {
        let [mode, data_kib, payload, total_mib] = args else {
            return Err(USAGE.into());
        };
        let blocking = match mode.as_str() {
            "ring" => false,
            "ringb" => true,
            _ => return Err(USAGE.into()),
        };
        let params = Self {
            blocking,
            data_kib: data_kib.parse()?,
            payload: payload.parse()?,
            total_mib: total_mib.parse()?,
        };
        let data = params.data_len();
        if data == 0 || data % PAGE_SIZE != 0 {
            return Err(
                format!("DATA_KIB must be a non-zero multiple of 4, not {data_kib}").into(),
            );
        }
        if params.payload == 0 || params.payload > MAX_RECV_DATA {
            return Err(format!("PAYLOAD_BYTES must be 1 to {MAX_RECV_DATA}").into());
        }
        // The most an empty ring lets the pipe writer put in one packet.
        if params.payload > writable(data as u32) {
            return Err(format!(
                "a {}-byte packet does not fit a {data_kib} KiB ring (with the FIN reserve)",
                params.payload
            )
            .into());
        }
        Ok(params)
    }

    fn data_len(&self) -> usize {
        self.data_kib << 10
    }

    fn total(&self) -> u64 {
        (self.total_mib as u64) << 20
    }

    /// Packets the writer sends: the reader stops once it has `total` bytes.
    fn packets(&self) -> u64 {
        self.total().div_ceil(self.payload as u64)
    }

    /// The writer's pending send size while it sleeps: once more than this
    /// is free, a whole packet of `payload` bytes is writable.
    fn pending_send_size(&self) -> u32 {
        (round_up8(self.payload) + WRITABLE_RESERVE) as u32
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = Params::parse(&args).and_then(|params| match std::env::var(CHILD_ENV) {
        Ok(fd) => writer(params, fd.parse()?),
        Err(_) => reader(params, &args),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ring_peers: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Kills and reaps the writer unless it was waited for, so that no process
/// outlives a failed run.
struct Reaper(Option<Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The parent: sets up the ring, starts the writer, reads and times.
fn reader(params: Params, args: &[String]) -> Result<()> {
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    // Only the writer's end survives exec; this process has no other thread
    // that could spawn a process while it is inheritable.
    rustix::io::fcntl_setfd(&theirs, FdFlags::empty())?;
    let child = Command::new(std::env::current_exe()?)
        .args(args)
        .env(CHILD_ENV, theirs.as_raw_fd().to_string())
        .spawn()?;
    let mut reaper = Reaper(Some(child));
    drop(theirs);

    let mem = SharedMemory::create("ring-peers", PAGE_SIZE + params.data_len())?;
    let ring = SharedRingMem::new(Arc::new(Mapping::new(&mem)?), 0, params.data_len())?;
    init_control_page(&ring, FEATURE_PENDING_SEND_SIZE);
    let data_ready = EventFd::new()?;
    let space_ready = EventFd::new()?;
    send_with_fds(
        &ours,
        b"setup",
        &[mem.as_fd(), data_ready.as_fd(), space_ready.as_fd()],
    )?;
    drop(mem);
    let mut reader = PipeReader::new(
        RingReader::new(ring, MAX_RECV_PACKET as u32)?,
        MAX_RECV_DATA as u32,
    );
    expect_message(&ours, b"ready")?;

    let total = params.total();
    let mut buf = vec![0u8; params.payload];
    let mut got = 0u64;
    let (mut signals, mut sleeps) = (0u64, 0u64);
    if params.blocking {
        reader.ring().mask();
    }
    let start = Instant::now();
    send_with_fds(&ours, b"go", &[])?;
    while got < total {
        let n = reader.read(&mut buf)?;
        got += n as u64;
        // End of a batch: everything the last load of write_index showed is
        // consumed (the next read reloads it).
        if reader.ring().cached_available() == 0 {
            if !params.blocking {
                // Both ends poll: publish without the fence and the
                // pending-send-size check that a sleeping writer needs.
                reader.ring_mut().publish()?;
            } else if reader.commit()? {
                signals += 1;
                space_ready.signal()?;
            }
            if n == 0 && params.blocking {
                if reader.ring_mut().unmask()? == 0 {
                    sleeps += 1;
                    if !data_ready.wait_timeout(LOST_WAKEUP)? {
                        return Err("lost wake-up: the reader slept on an empty ring".into());
                    }
                }
                reader.ring().mask();
            }
        }
    }
    let elapsed = start.elapsed();
    let child = reaper.0.take().ok_or("the writer was already reaped")?;
    let status = child.wait_with_output()?.status;
    if !status.success() {
        return Err(format!("the writer failed: {status}").into());
    }
    if std::env::var_os("PEERS_VERBOSE").is_some() {
        eprintln!("reader: {signals} signals, {sleeps} sleeps");
    }
    println!(
        "{} data={}KiB payload={}: {:.2} GB/s",
        if params.blocking { "ringb" } else { "ring" },
        params.data_kib,
        params.payload,
        got as f64 / elapsed.as_secs_f64() / 1e9
    );
    Ok(())
}

/// The re-executed child: maps the ring and writes `packets()` packets.
fn writer(params: Params, fd: RawFd) -> Result<()> {
    // SAFETY: the parent cleared CLOEXEC on this one descriptor so that it
    // reaches us and put its number in the environment; nothing else in this
    // process knows or owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    rustix::io::fcntl_setfd(&sock, FdFlags::CLOEXEC)?;
    // If the reader dies, do not spin on forever.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;

    let mut msg = [0u8; 16];
    let (n, mut fds) = recv_with_fds(&sock, &mut msg, 3)?;
    if &msg[..n] != b"setup" || fds.len() != 3 {
        return Err("unexpected setup message".into());
    }
    let space_ready = EventFd::from_fd(fds.pop().ok_or("fd")?)?;
    let data_ready = EventFd::from_fd(fds.pop().ok_or("fd")?)?;
    let mem = SharedMemory::from_fd(fds.pop().ok_or("fd")?, PAGE_SIZE + params.data_len())?;
    let ring = SharedRingMem::new(Arc::new(Mapping::new(&mem)?), 0, params.data_len())?;
    let mut writer = PipeWriter::new(RingWriter::new(ring)?, params.payload as u32);
    let src: Vec<u8> = (0..params.payload).map(|i| (i * 7 + 3) as u8).collect();
    let pending = params.pending_send_size();
    let (mut signals, mut sleeps) = (0u64, 0u64);
    send_with_fds(&sock, b"ready", &[])?;
    expect_message(&sock, b"go")?;

    for _ in 0..params.packets() {
        // Whole packets only: wait until one of exactly `payload` bytes fits
        // (PipeWriter::write would otherwise split the data).
        if writer.cached_writable() < params.payload {
            while writer.writable()? < params.payload {
                if !params.blocking {
                    std::hint::spin_loop();
                    continue;
                }
                // Arm, then re-check before sleeping.
                writer.ring().set_pending_send_size(pending);
                if !writer.ring_mut().space_after_arming(pending)? {
                    sleeps += 1;
                    if !space_ready.wait_timeout(LOST_WAKEUP)? {
                        return Err("lost wake-up: the writer slept on a full ring".into());
                    }
                }
                writer.ring().set_pending_send_size(0);
            }
        }
        let written = writer.write(&src)?;
        debug_assert_eq!(written, params.payload);
        if !params.blocking {
            writer.ring_mut().publish()?;
        } else if writer.commit()? {
            signals += 1;
            data_ready.signal()?;
        }
    }
    if std::env::var_os("PEERS_VERBOSE").is_some() {
        eprintln!("writer: {signals} signals, {sleeps} sleeps");
    }
    Ok(())
}

fn expect_message(sock: impl AsFd, expected: &[u8]) -> Result<()> {
    let mut msg = [0u8; 16];
    let (n, _) = recv_with_fds(sock, &mut msg, 0)?;
    if &msg[..n] != expected {
        return Err(format!(
            "expected {:?}, got {:?}",
            String::from_utf8_lossy(expected),
            String::from_utf8_lossy(&msg[..n])
        )
        .into());
    }
    Ok(())
}
