//! Moving bytes: one direction ([`pump`]), both directions of two streams
//! ([`splice`], for the bridge and the hybrid front), a stream and this
//! process's stdin/stdout ([`relay_stdio`]), and a stream and a command's
//! stdin/stdout ([`relay_exec`]).
//!
//! Half-close is the rule everywhere: when one direction reaches the end of
//! its input, the FIN goes out on its output (`shutdown(Write)`) and the
//! other direction carries on until its own end. An error in one direction
//! shuts both streams down both ways, so that neither thread waits forever.
//! Counters ([`Traffic`]) are atomics read by the progress display and the
//! bridge's SIGUSR1 report.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::conn::Conn;

/// Bytes per read.
const CHUNK: usize = 64 * 1024;

/// Counters of a relay command; `Relaxed` everywhere: they are statistics,
/// nothing is synchronised through them.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Connections accepted or made so far.
    pub connections: AtomicU64,
    /// Connections still relaying.
    pub active: AtomicU64,
    /// Bytes sent: stdin (or FROM) towards the stream (or TO).
    pub sent: AtomicU64,
    /// Bytes received: the stream (or TO) towards stdout (or FROM).
    pub received: AtomicU64,
}

impl Traffic {
    /// Counts a new connection; the guard counts its end.
    pub fn open(&self) -> ActiveGuard<'_> {
        self.connections.fetch_add(1, Relaxed);
        self.active.fetch_add(1, Relaxed);
        ActiveGuard(self)
    }
}

/// Decrements [`Traffic::active`] on drop.
#[derive(Debug)]
pub struct ActiveGuard<'a>(&'a Traffic);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

/// Copies `from` to `to` until the end of `from`, counting into `counter`.
pub fn pump(mut from: impl Read, mut to: impl Write, counter: &AtomicU64) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return to.flush(),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        counter.fetch_add(n as u64, Relaxed);
    }
}

/// Ends one direction `from` → `to`: the FIN after a clean end, or both
/// streams shut down both ways after an error.
fn end_direction(from: &Conn, to: &Conn, result: &io::Result<()>) {
    match result {
        Ok(()) => {
            let _ = to.shutdown(Shutdown::Write);
        }
        Err(_) => {
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        }
    }
}

/// Relays `a` and `b` both ways until both directions are done; `a` → `b`
/// counts as sent, `b` → `a` as received. Returns the first error.
pub fn splice(a: &Conn, b: &Conn, traffic: &Traffic) -> io::Result<()> {
    std::thread::scope(|s| {
        let forward = s.spawn(|| {
            let result = pump(a, b, &traffic.sent);
            end_direction(a, b, &result);
            result
        });
        let backward = pump(b, a, &traffic.received);
        end_direction(b, a, &backward);
        let forward = forward
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("relay panicked")));
        forward.and(backward)
    })
}

/// This process's stdin, read by one thread and handed out in chunks to
/// whichever connection relays it (one after another with `listen -k`).
#[derive(Debug)]
pub struct StdinPump {
    rx: Mutex<Receiver<Vec<u8>>>,
}

impl StdinPump {
    /// Starts the reading thread.
    pub fn start() -> Arc<StdinPump> {
        // Bounded: stdin is not read far ahead of the connection.
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(4);
        std::thread::spawn(move || {
            let mut stdin = io::stdin().lock();
            loop {
                let mut buf = vec![0u8; CHUNK];
                match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        buf.truncate(n);
                        if tx.send(buf).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::warn!("reading stdin: {e}; treating it as its end");
                        break;
                    }
                }
            }
            // Dropping `tx` is the end of stdin for every receiver.
        });
        Arc::new(StdinPump { rx: Mutex::new(rx) })
    }

    /// The next chunk, or `None` at the end of stdin or once `cancel` is set.
    fn next(&self, cancel: &AtomicBool) -> Option<Vec<u8>> {
        loop {
            if cancel.load(Relaxed) {
                return None;
            }
            let rx = self.rx.lock().unwrap_or_else(|e| e.into_inner());
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(chunk) => return Some(chunk),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }
}

/// Stdout, flushed after every write (the relay is interactive).
struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut out = io::stdout().lock();
        out.write_all(buf)?;
        out.flush()?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stdout().flush()
    }
}

/// Relays `conn` and stdin/stdout until both directions are done: stdin's
/// end sends the FIN, the peer's FIN ends the output.
pub fn relay_stdio(conn: &Conn, stdin: &StdinPump, traffic: &Traffic) -> io::Result<()> {
    let cancel = AtomicBool::new(false);
    std::thread::scope(|s| {
        let input = s.spawn(|| {
            let mut to = conn;
            while let Some(chunk) = stdin.next(&cancel) {
                to.write_all(&chunk)?;
                traffic.sent.fetch_add(chunk.len() as u64, Relaxed);
            }
            conn.shutdown(Shutdown::Write)
        });
        let output = pump(conn, Stdout, &traffic.received);
        if output.is_err() {
            cancel.store(true, Relaxed);
            let _ = conn.shutdown(Shutdown::Both);
        }
        let input = input
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("relay panicked")));
        output.and(input)
    })
}

/// Runs `sh -c command` with `conn` on its stdin and stdout until both
/// directions are done and the command has exited.
pub fn relay_exec(conn: &Conn, command: &str, traffic: &Traffic) -> io::Result<ExitStatus> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run sh -c {command:?}: {e}")))?;
    let child_in = child.stdin.take().expect("piped");
    let child_out = child.stdout.take().expect("piped");
    let result = std::thread::scope(|s| {
        let input = s.spawn(move || {
            let mut child_in = child_in;
            match pump(conn, &mut child_in, &traffic.received) {
                // The command stopped reading: the rest is discarded, as a
                // closed socket's unread data is.
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                    drop(child_in);
                    io::copy(&mut { conn }, &mut io::sink()).map(|_| ())
                }
                other => other,
            }
            // Dropping `child_in` is the command's end of input.
        });
        let output = pump(child_out, conn, &traffic.sent);
        match &output {
            Ok(()) => {
                let _ = conn.shutdown(Shutdown::Write);
            }
            Err(_) => {
                let _ = conn.shutdown(Shutdown::Both);
            }
        }
        let input = input
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("relay panicked")));
        output.and(input)
    });
    let status = child.wait()?;
    result.map(|()| status)
}
