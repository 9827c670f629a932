//! The wake-up floor: the cheapest round trip two processes on this machine
//! can make, measured in the same run as the transports so that their
//! round trips can be read against it.
//!
//! Two 32-bit counters in one shared memfd page, on separate cache lines,
//! one per direction. A side bumps its counter and, in blocking mode, wakes
//! the other with `FUTEX_WAKE`; it waits for the other's counter to move,
//! sleeping in `FUTEX_WAIT` (blocking) or spinning (busy-poll). No data, no
//! ring, no socket: one wake-up system call and one wait per direction,
//! which is less than any transport can do. A Unix socket round trip at
//! this figure means the machine's wake-ups, not the socket, set it.
//!
//! Owns only this measurement; the bench process pings, a peer process
//! echoes.

use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hvsock_shm::{Mapping, SharedMemory};
use rustix::io::Errno;
use rustix::thread::futex;

/// Bytes of the shared memory: one page.
pub const LEN: usize = 4096;
/// Where the bench process's counter lives (it bumps it to ping).
const PING: usize = 0;
/// Where the peer's counter lives (it bumps it to answer), a cache line on.
const PONG: usize = 64;
/// A side that sees no answer for this long gives up (the other died).
const PATIENCE: Duration = Duration::from_secs(60);

/// The shared page as one side sees it.
pub struct Floor {
    mapping: Mapping,
    busy: bool,
}

impl Floor {
    /// The bench process's side: makes the page.
    pub fn create(busy: bool) -> anyhow::Result<(Floor, SharedMemory)> {
        let memory =
            SharedMemory::create("hvsock-bench-floor", LEN).context("making the shared page")?;
        let mapping = Mapping::new(&memory).context("mapping the shared page")?;
        Ok((Floor { mapping, busy }, memory))
    }

    /// The peer's side: opens the bench process's page through `/proc`.
    pub fn open(path: &Path, busy: bool) -> anyhow::Result<Floor> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("opening the shared page at {}", path.display()))?;
        let memory = SharedMemory::from_fd(OwnedFd::from(file), LEN)
            .context("taking the bench process's shared page")?;
        let mapping = Mapping::new(&memory).context("mapping the shared page")?;
        Ok(Floor { mapping, busy })
    }

    fn word(&self, offset: usize) -> anyhow::Result<&AtomicU32> {
        self.mapping
            .atomic_u32(offset)
            .context("a counter of the shared page")
    }

    /// Bench side: `rounds` round trips; returns each one's microseconds.
    pub fn ping(&self, rounds: usize) -> anyhow::Result<Vec<f64>> {
        let (ping, pong) = (self.word(PING)?, self.word(PONG)?);
        let mut lat = Vec::with_capacity(rounds);
        let mut seen = pong.load(SeqCst);
        for _ in 0..rounds {
            let start = Instant::now();
            self.bump(ping)?;
            seen = self.wait_past(pong, seen)?;
            lat.push(start.elapsed().as_secs_f64() * 1e6);
        }
        Ok(lat)
    }

    /// Peer side: answers `rounds` pings.
    pub fn echo(&self, rounds: usize) -> anyhow::Result<()> {
        let (ping, pong) = (self.word(PING)?, self.word(PONG)?);
        let mut seen = 0;
        for _ in 0..rounds {
            seen = self.wait_past(ping, seen)?;
            self.bump(pong)?;
        }
        Ok(())
    }

    fn bump(&self, word: &AtomicU32) -> anyhow::Result<()> {
        word.fetch_add(1, SeqCst);
        if !self.busy {
            // Not FUTEX_PRIVATE: the waiter is another process.
            futex::wake(word, futex::Flags::empty(), 1).context("FUTEX_WAKE")?;
        }
        Ok(())
    }

    /// Waits until `word` is no longer `seen`; returns its new value.
    fn wait_past(&self, word: &AtomicU32, seen: u32) -> anyhow::Result<u32> {
        let started = Instant::now();
        let mut spins = 0u32;
        loop {
            let now = word.load(SeqCst);
            if now != seen {
                return Ok(now);
            }
            spins = spins.wrapping_add(1);
            // Spinning, the clock every 4096 looks; sleeping (a second at
            // most per wait), every time.
            if (!self.busy || spins % 4096 == 0) && started.elapsed() > PATIENCE {
                bail!("the other side of the wake-up floor stopped answering");
            }
            if self.busy {
                std::hint::spin_loop();
                continue;
            }
            // A timeout, so that a dead peer is noticed.
            let tick = futex::Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            };
            match futex::wait(word, futex::Flags::empty(), seen, Some(&tick)) {
                Ok(()) | Err(Errno::AGAIN | Errno::INTR | Errno::TIMEDOUT) => {}
                Err(e) => return Err(e).context("FUTEX_WAIT"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, AsRawFd};

    #[test]
    fn both_ends_count_every_round_in_both_modes() {
        for busy in [false, true] {
            let (bench, memory) = Floor::create(busy).unwrap();
            let path = format!("/proc/self/fd/{}", memory.as_fd().as_raw_fd());
            let peer = Floor::open(Path::new(&path), busy).unwrap();
            let echo = std::thread::spawn(move || peer.echo(500));
            let lat = bench.ping(500).unwrap();
            echo.join().unwrap().unwrap();
            assert_eq!(lat.len(), 500);
            assert!(lat.iter().all(|&us| us > 0.0));
            assert_eq!(bench.word(PING).unwrap().load(SeqCst), 500);
            assert_eq!(bench.word(PONG).unwrap().load(SeqCst), 500);
        }
    }
}
