//! The data plane of one connection: two rings in shared memory and the
//! channel's bit in its signal link, with hv_sock's stream rules on top
//! (FIN, shutdown, the end of the channel), for either side of the channel.
//!
//! Owns reading, writing, peeking, shutting down and waiting. Knows nothing
//! of how the channel was set up or will be torn down (the endpoint does
//! that); it learns that the peer is gone through [`ChannelIo::mark_gone`].

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use hvsock_shm::{ring_pair, EventFd, Mapping};
use vmbus::ext::{RingLayout, BYTES_WRITTEN_OFFSET};
use vmbus_ring::layout::{
    hvs_packet_len, GUEST_MAX_SEND_DATA, MAX_RECV_DATA, MAX_RECV_PACKET, PAGE_SIZE,
    SEED_PENDING_SEND_SIZE,
};
use vmbus_ring::{PipeReader, PipeWriteError, PipeWriter, RingReader, RingWriter, WriteError};

use crate::doorbell::{Doorbell, Link, Signal};
use crate::error::{corrupt, err, shm_io};

type Mem = hvsock_shm::SharedRingMem;

/// Which end of the channel this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// Writes the guest → host ring (at page 0), reads the other.
    Guest,
    /// Writes the host → guest ring, reads the guest → host one.
    Host,
}

/// Why the peer is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Gone {
    /// The channel was withdrawn (rescinded or revoked); `reason` says why.
    Closed(String),
}

#[derive(Debug)]
struct Tx {
    writer: PipeWriter<Mem>,
    shut: bool,
    bytes: u64,
    /// The `pending_send_sz` we ask for whenever we may sleep on a full ring.
    pending: u32,
    /// `pending_send_sz` is 0 because we spin on a full ring (busy-poll): the
    /// reader need not signal the room it frees.
    spinning: bool,
}

#[derive(Debug)]
struct Rx {
    reader: PipeReader<Mem>,
    shut: bool,
    /// `interrupt_mask` is set because we spin on an empty ring (busy-poll):
    /// the writer need not signal its packets.
    spinning: bool,
}

/// What a failed attempt at a read or write leads to, which decides what it
/// tells the peer before it gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// Another attempt at once (busy-poll): the peer is told not to signal
    /// us (the reader masks interrupts, the writer withdraws its
    /// `pending_send_sz`), and there is no re-check, since nobody sleeps.
    Spin,
    /// Sleeping, or `WouldBlock` for a caller who will wait on the
    /// readiness descriptor: the peer is asked to signal, then the ring is
    /// re-checked (fenced), so that a signal cannot be missed.
    Final,
}

/// One connection's rings and signals.
#[derive(Debug)]
pub(crate) struct ChannelIo {
    tx: Mutex<Tx>,
    rx: Mutex<Rx>,
    /// Rung (with our relid) to wake the peer.
    link: Arc<Link>,
    relid: u32,
    /// Where we wait for the peer's signals.
    bell: Arc<Doorbell>,
    /// Fired by the peer's signals (and by us, to wake our own waiters).
    signal: Arc<Signal>,
    /// Set once; read on every attempt, without a lock.
    gone: OnceLock<Gone>,
    mapping: Arc<Mapping>,
    /// Where the count of bytes we wrote lives (informational, for stat).
    counter_offset: usize,
    /// Where the data area of the ring we read starts in the mapping.
    rx_data_offset: usize,
    /// Spin this long (nanoseconds) before sleeping; 0 = never spin.
    busy_poll: AtomicU64,
    /// Bytes a write puts in the ring before it publishes them.
    tx_chunk: usize,
    /// Bytes a read copies out before it publishes the room.
    rx_chunk: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ChannelIo {
    /// Attaches to the rings of a channel whose signals travel on `link`
    /// with bit `relid`, waiting on `bell`.
    pub(crate) fn new(
        side: Side,
        mapping: Arc<Mapping>,
        layout: RingLayout,
        bell: &Arc<Doorbell>,
        link: Arc<Link>,
        relid: u32,
    ) -> io::Result<Self> {
        let g2h = layout.guest_to_host_pages as usize;
        let h2g = (layout.total_pages - layout.guest_to_host_pages) as usize;
        let pair = ring_pair(mapping.clone(), g2h, h2g).map_err(shm_io)?;
        let (tx_mem, rx_mem, max_send, tx_offset) = match side {
            Side::Guest => (
                pair.guest_to_host,
                pair.host_to_guest,
                GUEST_MAX_SEND_DATA,
                0,
            ),
            Side::Host => (
                pair.host_to_guest,
                pair.guest_to_host,
                MAX_RECV_DATA,
                g2h * PAGE_SIZE,
            ),
        };
        let rx_data_offset = rx_mem.control_offset() + PAGE_SIZE;
        let attach = |e: vmbus_ring::AttachError| {
            err(
                io::ErrorKind::InvalidData,
                format!("cannot use the channel's rings: {e}"),
            )
        };
        let writer = RingWriter::new(tx_mem).map_err(attach)?;
        // The seed's rule: ask for room for one maximal packet and keep
        // asking whenever we may sleep (clearing it raced with the reader in
        // Linux before 2019; here only a spinning writer withdraws it, and
        // asks again, fenced and re-checked, before it sleeps). A ring too
        // small for one is asked for less.
        let pending = match side {
            Side::Guest => SEED_PENDING_SEND_SIZE,
            Side::Host => hvs_packet_len(MAX_RECV_DATA) as u32,
        }
        .min(writer.data_size() - 8);
        writer.set_pending_send_size(pending);
        let reader = RingReader::new(rx_mem, MAX_RECV_PACKET as u32).map_err(attach)?;
        let (tx_chunk, rx_chunk) = commit_chunks(
            writer.data_size() as usize,
            max_send,
            reader.data_size() as usize,
        );
        let signal = bell.register(&link, relid)?;
        Ok(Self {
            tx: Mutex::new(Tx {
                writer: PipeWriter::new(writer, max_send as u32),
                shut: false,
                bytes: 0,
                pending,
                spinning: false,
            }),
            rx: Mutex::new(Rx {
                reader: PipeReader::new(reader, MAX_RECV_DATA as u32),
                shut: false,
                spinning: false,
            }),
            link,
            relid,
            bell: bell.clone(),
            signal,
            gone: OnceLock::new(),
            mapping,
            counter_offset: tx_offset + BYTES_WRITTEN_OFFSET,
            rx_data_offset,
            busy_poll: AtomicU64::new(0),
            tx_chunk,
            rx_chunk,
        })
    }

    /// A descriptor that becomes readable when the peer signals (data or
    /// space), made on first use. Edge-triggered: read or write until
    /// `WouldBlock` first.
    pub(crate) fn readiness(&self) -> io::Result<&EventFd> {
        self.bell.readiness(&self.signal)
    }

    /// Wakes `waker` on the next signal for this channel (data, space, the
    /// end). Take [`ChannelIo::generation`] before the attempt that failed,
    /// and give up waiting if it moved.
    pub(crate) fn register_waker(&self, waker: &std::task::Waker) -> io::Result<()> {
        self.signal.register(waker);
        // Nobody else may be polling for the peer's signals.
        self.bell.ensure_poller()
    }

    /// How many times this channel was signalled so far.
    pub(crate) fn generation(&self) -> u64 {
        self.signal.generation()
    }

    /// Spin for up to `spin` before sleeping (busy-poll), or never.
    pub(crate) fn set_busy_poll(&self, spin: Option<Duration>) {
        let nanos = spin.map_or(0, |d| d.as_nanos().min(u128::from(u64::MAX)) as u64);
        self.busy_poll.store(nanos, Relaxed);
    }

    /// Wakes everyone waiting on this channel, to re-check.
    pub(crate) fn wake(&self) {
        self.bell.wake(&self.signal);
    }

    /// The peer is gone: wakes everyone waiting on this channel.
    pub(crate) fn mark_gone(&self, gone: Gone) {
        // The first reason stays.
        let _ = self.gone.set(gone);
        self.wake();
    }

    /// The peer broke the ring protocol: the whole connection is reset.
    /// Marks the peer gone, so that the other direction fails too instead
    /// of going on with a peer that wrote nonsense, and says what it broke.
    fn reset(&self, c: vmbus_ring::Corruption) -> io::Error {
        self.mark_gone(Gone::Closed(format!(
            "the peer broke the ring protocol ({c})"
        )));
        corrupt(c)
    }

    fn gone(&self) -> Option<Gone> {
        self.gone.get().cloned()
    }

    fn signal_peer(&self) -> io::Result<()> {
        self.link.ring(self.relid)
    }

    /// Reads stream bytes; `Ok(0)` is the end of the stream.
    pub(crate) fn read(&self, buf: &mut [u8], opts: Wait) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.wait_for(opts, |this, how| this.try_read(buf, false, how))
    }

    /// Copies stream bytes without consuming them (MSG_PEEK); waits for data
    /// like a read.
    pub(crate) fn peek(&self, buf: &mut [u8], opts: Wait) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.wait_for(opts, |this, how| this.try_read(buf, true, how))
    }

    /// Moves up to `max` stream bytes from the ring straight to `fd` with
    /// `write(2)`: the kernel reads them out of shared memory, with no copy
    /// in this process. Returns the bytes moved; `Ok(0)` is the end of the
    /// stream (or `max == 0`). Waits for data like a read; a non-blocking
    /// `fd` that cannot take more gives `WouldBlock`.
    pub(crate) fn read_to_fd(
        &self,
        fd: BorrowedFd<'_>,
        max: usize,
        opts: Wait,
    ) -> io::Result<usize> {
        if max == 0 {
            return Ok(0);
        }
        self.wait_for(opts, |this, how| this.try_read_to_fd(fd, max, how))
    }

    fn try_read_to_fd(
        &self,
        fd: BorrowedFd<'_>,
        max: usize,
        how: Attempt,
    ) -> io::Result<Option<usize>> {
        self.try_receive(how, |this, reader| {
            let Some(span) = reader.data_span().map_err(|c| this.reset(c))? else {
                return Ok(0);
            };
            let mut moved = 0usize;
            for (offset, len) in [Some(span.first), span.second].into_iter().flatten() {
                let len = (len as usize).min(max - moved);
                if len == 0 {
                    break;
                }
                let at = this.rx_data_offset + offset as usize;
                match this.mapping.write_to_fd(at, len, fd) {
                    Ok(n) => {
                        moved += n;
                        if n < len {
                            break;
                        }
                    }
                    // Bytes already moved count; the error shows next time.
                    Err(_) if moved > 0 => break,
                    Err(e) => return Err(e),
                }
            }
            reader.consume_data(moved as u32);
            Ok(moved)
        })
    }

    /// Writes some of `buf`; returns how much.
    pub(crate) fn write(&self, buf: &[u8], opts: Wait) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.wait_for(opts, |this, how| this.try_write(buf, how))
    }

    /// Runs `attempt` until it has an answer, spinning or sleeping between
    /// attempts as the options and the busy-poll setting say.
    fn wait_for<T>(
        &self,
        opts: Wait,
        mut attempt: impl FnMut(&Self, Attempt) -> io::Result<Option<T>>,
    ) -> io::Result<T> {
        let spin = Duration::from_nanos(self.busy_poll.load(Relaxed));
        // Read only once an attempt failed: a read or write that succeeds at
        // once (small writes at full speed) never looks at the clock.
        let mut started: Option<Instant> = None;
        let mut spins = 0u32;
        loop {
            if opts.nonblocking {
                // Take the pending signal first, so that a caller who polls
                // the readiness fd is woken by the next one.
                self.signal.drain_readiness()?;
            }
            let seen = self.signal.generation();
            // Reading the clock costs more than an attempt; look at it once
            // every 256 spins. A spin ends when its time is up or when the
            // caller's deadline passed (the final attempt then finds the
            // deadline gone and times out, instead of spinning on).
            let how = if opts.nonblocking || spin.is_zero() {
                Attempt::Final
            } else if spins % 256 != 0 {
                Attempt::Spin
            } else {
                match started {
                    None => Attempt::Spin,
                    Some(t) => {
                        let now = Instant::now();
                        if now.duration_since(t) >= spin || opts.deadline.is_some_and(|d| now >= d)
                        {
                            Attempt::Final
                        } else {
                            Attempt::Spin
                        }
                    }
                }
            };
            if let Some(done) = attempt(self, how)? {
                return Ok(done);
            }
            if opts.nonblocking {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            if how == Attempt::Spin {
                spins = spins.wrapping_add(1);
                started.get_or_insert_with(Instant::now);
                std::hint::spin_loop();
                continue;
            }
            if !self.bell.wait(&self.signal, seen, opts.deadline)? {
                return Err(err(
                    io::ErrorKind::TimedOut,
                    "timed out waiting for the peer",
                ));
            }
        }
    }

    fn try_read(&self, buf: &mut [u8], peek: bool, how: Attempt) -> io::Result<Option<usize>> {
        self.try_receive(how, |this, reader| {
            if peek {
                return reader.peek(buf).map_err(|c| this.reset(c));
            }
            // A large read frees the ring a piece at a time, so that a
            // writer waiting for room starts refilling while we copy the
            // rest (one commit at the end would leave it asleep until the
            // whole ring is drained: half the throughput at 1 MiB reads).
            let mut total = 0;
            for chunk in buf.chunks_mut(this.rx_chunk) {
                if total > 0 && reader.commit().map_err(|c| this.reset(c))? {
                    this.signal_peer()?;
                }
                let n = reader.read(chunk).map_err(|c| this.reset(c))?;
                total += n;
                if n < chunk.len() {
                    break;
                }
            }
            Ok(total)
        })
    }

    /// One receiving attempt: `take` moves bytes out of the ring; then the
    /// read index is published (signalling the writer if it waits for
    /// space). `Some(0)` is the end of the stream, `None` "nothing yet".
    fn try_receive(
        &self,
        how: Attempt,
        take: impl FnMut(&Self, &mut PipeReader<Mem>) -> io::Result<usize>,
    ) -> io::Result<Option<usize>> {
        let mut rx = lock(&self.rx);
        let got = self.receive(&mut rx, how, take);
        // A spinner that got bytes leaves no mask behind: another thread of
        // ours may sleep or wait on the readiness descriptor, having
        // unmasked before our spin masked again, and the writer would not
        // signal it. Unmasked and re-checked (fenced), so that whatever the
        // writer published unsignalled is seen, and handed on.
        if rx.spinning && matches!(got, Ok(Some(_))) {
            // A broken ring found here resets the connection (the next call
            // says so); the bytes already taken are still this call's.
            let more = self.ask_for_data(&mut rx).unwrap_or(0);
            if more > 0 || rx.reader.partial_bytes() > 0 {
                drop(rx);
                self.wake();
            }
        }
        got
    }

    /// Asks the writer to signal again (unmasks, if a spin masked) and
    /// re-checks: `available` (and `unmask`) fence after our stores,
    /// pairing with the writer's fence between publishing and loading the
    /// mask and read_index. Returns the bytes available.
    fn ask_for_data(&self, rx: &mut Rx) -> io::Result<u32> {
        let ring = rx.reader.ring_mut();
        if std::mem::take(&mut rx.spinning) {
            ring.unmask()
        } else {
            ring.available()
        }
        .map_err(|c| self.reset(c))
    }

    fn receive(
        &self,
        rx: &mut Rx,
        how: Attempt,
        mut take: impl FnMut(&Self, &mut PipeReader<Mem>) -> io::Result<usize>,
    ) -> io::Result<Option<usize>> {
        if rx.shut {
            return Ok(Some(0));
        }
        // Looked at before the ring: once the peer is gone, everything it
        // will ever have written is in the ring already.
        let gone = self.gone();
        loop {
            let n = take(self, &mut rx.reader)?;
            if rx.reader.commit().map_err(|c| self.reset(c))? {
                self.signal_peer()?;
            }
            if n > 0 {
                return Ok(Some(n));
            }
            if rx.reader.fin_received() {
                return Ok(Some(0));
            }
            if let Some(Gone::Closed(reason)) = &gone {
                return Err(err(
                    io::ErrorKind::ConnectionReset,
                    format!("connection reset: {reason} before the peer finished sending"),
                ));
            }
            if how == Attempt::Spin {
                // We look again at once; the writer's signals would only
                // cost both of us a system call each.
                if !rx.spinning {
                    rx.reader.ring().mask();
                    rx.spinning = true;
                }
                return Ok(None);
            }
            // The re-check before sleeping.
            if self.ask_for_data(rx)? == 0 {
                return Ok(None);
            }
        }
    }

    fn try_write(&self, buf: &[u8], how: Attempt) -> io::Result<Option<usize>> {
        let mut tx = lock(&self.tx);
        let wrote = self.send(&mut tx, buf, how);
        // As in `try_receive`: a spinner that wrote asks for room again
        // (pending_send_sz), re-checks, and hands on room it sees to
        // another thread of ours that may be asleep.
        // As there: a broken ring resets the connection, and the bytes
        // already published are still reported.
        if tx.spinning
            && matches!(wrote, Ok(Some(_)))
            && self.ask_for_room(&mut tx).unwrap_or(false)
        {
            drop(tx);
            self.wake();
        }
        wrote
    }

    /// Asks the reader to signal room again (restores `pending_send_sz`,
    /// if a spin withdrew it) and re-checks: the fence after that store,
    /// then `read_index` reloaded. Returns whether there is room to write.
    fn ask_for_room(&self, tx: &mut Tx) -> io::Result<bool> {
        if std::mem::take(&mut tx.spinning) {
            tx.writer.ring().set_pending_send_size(tx.pending);
        }
        tx.writer
            .ring_mut()
            .space_after_arming(0)
            .map_err(|c| self.reset(c))?;
        Ok(tx.writer.cached_writable() > 0)
    }

    fn send(&self, tx: &mut Tx, buf: &[u8], how: Attempt) -> io::Result<Option<usize>> {
        if tx.shut {
            return Err(err(
                io::ErrorKind::BrokenPipe,
                "the stream is shut down for writing",
            ));
        }
        if let Some(Gone::Closed(reason)) = self.gone() {
            return Err(err(
                io::ErrorKind::BrokenPipe,
                format!("the peer is gone: {reason}"),
            ));
        }
        loop {
            // A large write is published a piece at a time, so that the
            // reader starts copying while we fill the rest of the ring (one
            // commit at the end would show it nothing until the ring is
            // full: half the throughput at 1 MiB writes).
            let mut n = 0;
            for chunk in buf.chunks(self.tx_chunk) {
                let wrote = tx.writer.write(chunk).map_err(|e| match e {
                    PipeWriteError::Ring(WriteError::Corrupt(c)) => self.reset(c),
                    other => write_error(other),
                })?;
                if wrote > 0 && tx.writer.commit().map_err(|c| self.reset(c))? {
                    self.signal_peer()?;
                }
                n += wrote;
                if wrote < chunk.len() {
                    break;
                }
            }
            if n > 0 {
                tx.bytes += n as u64;
                // Informational only; a failure to update it changes nothing.
                let _ = self
                    .mapping
                    .write(self.counter_offset, &tx.bytes.to_le_bytes());
                return Ok(Some(n));
            }
            // Full.
            if how == Attempt::Spin {
                // We look again at once; the reader's signals would only
                // cost both of us a system call each.
                if !tx.spinning {
                    tx.writer.ring().set_pending_send_size(0);
                    tx.spinning = true;
                }
                return Ok(None);
            }
            // The re-check before sleeping.
            if !self.ask_for_room(tx)? {
                return Ok(None);
            }
        }
    }

    /// Sends the FIN (once) and refuses further writes.
    pub(crate) fn shutdown_write(&self) -> io::Result<()> {
        self.send_fin(true)
    }

    /// Puts the FIN in the ring without waking the peer, for a channel that
    /// is being closed at once: the close wakes the peer (it is told the
    /// channel is gone and then reads up to the FIN). Used where a lock is
    /// held that other channels need: a wake-up can be a system call, and
    /// the close tells the peer anyway.
    pub(crate) fn shutdown_write_for_close(&self) -> io::Result<()> {
        self.send_fin(false)
    }

    fn send_fin(&self, signal: bool) -> io::Result<()> {
        let mut tx = lock(&self.tx);
        tx.shut = true;
        if tx.writer.fin_sent() || self.gone().is_some() {
            return Ok(());
        }
        tx.writer.write_fin().map_err(|e| match e {
            WriteError::Corrupt(c) => self.reset(c),
            other => err(
                io::ErrorKind::ConnectionReset,
                format!("cannot send the end of stream: {other}"),
            ),
        })?;
        if tx.writer.commit().map_err(|c| self.reset(c))? && signal {
            self.signal_peer()?;
        }
        Ok(())
    }

    /// Refuses further reads (they return end of stream); sends nothing.
    pub(crate) fn shutdown_read(&self) {
        lock(&self.rx).shut = true;
        self.wake();
    }

    /// Stream bytes written so far.
    pub(crate) fn bytes_written(&self) -> u64 {
        lock(&self.tx).bytes
    }
}

impl Drop for ChannelIo {
    fn drop(&mut self) {
        self.bell
            .unregister(self.link.id(), self.relid, &self.signal);
    }
}

fn write_error(e: PipeWriteError) -> io::Error {
    match e {
        PipeWriteError::AfterFin => err(
            io::ErrorKind::BrokenPipe,
            "the stream is shut down for writing",
        ),
        PipeWriteError::Ring(WriteError::Corrupt(c)) => corrupt(c),
        PipeWriteError::Ring(other) => err(io::ErrorKind::Other, other.to_string()),
    }
}

/// How much a read copies out of the ring before it publishes the room it
/// freed, and a write puts in before it publishes the data (see `try_read`
/// and `try_write`), at most.
const COMMIT_CHUNK: usize = 32 * 1024;

/// The write and read commit chunks for rings of `tx_data` and `rx_data`
/// bytes, where a packet carries at most `max_send` bytes: a quarter of the
/// ring (but a write chunk at least one packet), so that on a small ring
/// (the seed's 20 KiB) the peer works on one part while we fill or drain
/// the next instead of the two taking turns over the whole ring; and a
/// write chunk is whole packets, so that a chunk boundary never cuts a
/// small packet off a full one. A chunk larger than the free room is no
/// stall: a write publishes whatever part of it fit.
fn commit_chunks(tx_data: usize, max_send: usize, rx_data: usize) -> (usize, usize) {
    let max_send = max_send.max(1);
    let tx = (COMMIT_CHUNK.min(tx_data / 4) / max_send).max(1) * max_send;
    let rx = COMMIT_CHUNK.min(rx_data / 4).max(1024);
    (tx, rx)
}

/// How an operation waits.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Wait {
    /// Return `WouldBlock` instead of waiting.
    pub(crate) nonblocking: bool,
    /// Give up with `TimedOut` after this.
    pub(crate) deadline: Option<Instant>,
}

impl Wait {
    /// Blocking with an optional timeout.
    pub(crate) fn timeout(nonblocking: bool, timeout: Option<Duration>) -> Self {
        Self {
            nonblocking,
            deadline: timeout.and_then(|t| Instant::now().checked_add(t)),
        }
    }
}

/// Ring memory a guest prepares before opening a channel: it owns the
/// memory, as on Hyper-V.
#[derive(Debug)]
pub(crate) struct PreparedRings {
    pub(crate) mapping: Arc<Mapping>,
    pub(crate) memfd: Arc<std::os::fd::OwnedFd>,
    pub(crate) layout: RingLayout,
}

impl PreparedRings {
    /// Creates zeroed rings of `send_pages` and `recv_pages` pages (control
    /// pages included) in a sealed memfd, with feature bit 0 set on both.
    pub(crate) fn create(send_pages: u32, recv_pages: u32) -> io::Result<Self> {
        let total = send_pages + recv_pages;
        let memory = hvsock_shm::SharedMemory::create("hvsock-rings", total as usize * PAGE_SIZE)
            .map_err(shm_io)?;
        let mapping = Arc::new(Mapping::new(&memory).map_err(shm_io)?);
        let pair =
            ring_pair(mapping.clone(), send_pages as usize, recv_pages as usize).map_err(shm_io)?;
        vmbus_ring::init_control_page(
            &pair.guest_to_host,
            vmbus_ring::layout::FEATURE_PENDING_SEND_SIZE,
        );
        vmbus_ring::init_control_page(
            &pair.host_to_guest,
            vmbus_ring::layout::FEATURE_PENDING_SEND_SIZE,
        );
        Ok(Self {
            mapping,
            memfd: Arc::new(memory.into_fd()),
            layout: RingLayout {
                total_pages: total,
                guest_to_host_pages: send_pages,
            },
        })
    }

    /// The pages of the two rings: (guest to host, host to guest).
    pub(crate) fn pages(&self) -> (u32, u32) {
        let send = self.layout.guest_to_host_pages;
        (send, self.layout.total_pages - send)
    }

    /// The guest's end of channel `relid`, signalled through `link`.
    pub(crate) fn into_guest_io(
        self,
        bell: &Arc<Doorbell>,
        link: Arc<Link>,
        relid: u32,
    ) -> io::Result<ChannelIo> {
        ChannelIo::new(Side::Guest, self.mapping, self.layout, bell, link, relid)
    }
}

/// The host's end of channel `relid`, whose memfd arrived from the host
/// daemon: validates the memfd (sealed, large enough) before mapping.
pub(crate) fn host_io(
    layout: RingLayout,
    fds: Vec<std::os::fd::OwnedFd>,
    bell: &Arc<Doorbell>,
    link: Arc<Link>,
    relid: u32,
) -> io::Result<ChannelIo> {
    let [memfd]: [std::os::fd::OwnedFd; 1] = fds.try_into().map_err(|fds: Vec<_>| {
        err(
            io::ErrorKind::InvalidData,
            format!(
                "the host sent {} file descriptors for a channel, not 1",
                fds.len()
            ),
        )
    })?;
    if layout.guest_to_host_pages < 2 || layout.total_pages < layout.guest_to_host_pages + 2 {
        return Err(err(
            io::ErrorKind::InvalidData,
            format!("invalid ring layout {layout:?}"),
        ));
    }
    let memory = hvsock_shm::SharedMemory::from_fd(memfd, layout.total_pages as usize * PAGE_SIZE)
        .map_err(shm_io)?;
    let mapping = Arc::new(Mapping::new(&memory).map_err(shm_io)?);
    ChannelIo::new(Side::Host, mapping, layout, bell, link, relid)
}

#[cfg(test)]
mod tests;
