//! Sleeping until the peer signals, for any number of local threads that
//! share one incoming eventfd.
//!
//! A channel has one signal per direction, so a stream's reader (waiting for
//! data) and its writer (waiting for space) wait on the same eventfd, and
//! reading an eventfd consumes the signal. If each waiter read it, one could
//! consume the signal meant for the other and leave it asleep. So only one
//! thread at a time polls the eventfd; when it wakes it bumps a generation
//! number and wakes every other local waiter, and each re-checks its own
//! condition. A waiter passes the generation it saw *before* checking its
//! condition, so a wake-up between its check and its sleep is never lost.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

use hvsock_shm::EventFd;

#[derive(Debug, Default)]
struct WaitState {
    /// A thread is blocked in the eventfd.
    polling: bool,
    /// Signals taken from the eventfd so far.
    generation: u64,
}

/// The waiting side of an incoming eventfd.
#[derive(Debug)]
pub(crate) struct Waiter {
    event: EventFd,
    state: Mutex<WaitState>,
    cond: Condvar,
}

impl Waiter {
    pub(crate) fn new(event: EventFd) -> Self {
        Self {
            event,
            state: Mutex::default(),
            cond: Condvar::new(),
        }
    }

    /// The eventfd, for callers that poll it themselves (edge-triggered
    /// readiness; see [`Waiter::drain`]).
    pub(crate) fn event(&self) -> &EventFd {
        &self.event
    }

    fn lock(&self) -> MutexGuard<'_, WaitState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current generation: take it before checking a condition, and pass
    /// it to [`Waiter::wait`].
    pub(crate) fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Takes a pending signal without blocking, so that a caller polling the
    /// eventfd itself is woken by the next one.
    pub(crate) fn drain(&self) -> std::io::Result<()> {
        if self.event.try_wait().map_err(crate::error::shm_io)? {
            self.lock().generation += 1;
            self.cond.notify_all();
        }
        Ok(())
    }

    /// Wakes the waiters without a signal from the peer (the channel was
    /// rescinded, the endpoint is going away).
    pub(crate) fn wake(&self) {
        // Signalling our own eventfd reaches a thread blocked in it as well
        // as the next one to wait.
        let _ = self.event.signal();
    }

    /// Sleeps until something happened since generation `seen`, or until
    /// `deadline`. Returns false on timeout.
    pub(crate) fn wait(&self, seen: u64, deadline: Option<Instant>) -> std::io::Result<bool> {
        let mut state = self.lock();
        loop {
            if state.generation != seen {
                return Ok(true);
            }
            let remaining = match deadline {
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Ok(false),
                },
                None => None,
            };
            if state.polling {
                state = match remaining {
                    Some(left) => {
                        self.cond
                            .wait_timeout(state, left)
                            .unwrap_or_else(|e| e.into_inner())
                            .0
                    }
                    None => self.cond.wait(state).unwrap_or_else(|e| e.into_inner()),
                };
                continue;
            }
            state.polling = true;
            drop(state);
            let woke = match remaining {
                Some(left) => self.event.wait_timeout(left),
                None => self.event.wait().map(|()| true),
            };
            state = self.lock();
            state.polling = false;
            if matches!(woke, Ok(true)) {
                state.generation += 1;
            }
            // Whether we woke or timed out, another waiter may now poll.
            self.cond.notify_all();
            woke.map_err(crate::error::shm_io)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn one_signal_wakes_every_local_waiter() {
        let waiter = Arc::new(Waiter::new(EventFd::new().unwrap()));
        let seen = waiter.generation();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let waiter = waiter.clone();
                std::thread::spawn(move || {
                    waiter
                        .wait(seen, Some(Instant::now() + Duration::from_secs(20)))
                        .unwrap()
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        waiter.wake();
        for t in threads {
            assert!(t.join().unwrap(), "a waiter missed the wake-up");
        }
    }

    #[test]
    fn a_signal_taken_before_the_wait_is_not_lost() {
        let waiter = Waiter::new(EventFd::new().unwrap());
        let seen = waiter.generation();
        waiter.wake();
        // Another thread (here: us) drains the signal between the caller's
        // check and its sleep.
        waiter.drain().unwrap();
        assert!(waiter.wait(seen, Some(Instant::now())).unwrap());
    }

    #[test]
    fn times_out_without_a_signal() {
        let waiter = Waiter::new(EventFd::new().unwrap());
        let seen = waiter.generation();
        let start = Instant::now();
        assert!(!waiter
            .wait(seen, Some(start + Duration::from_millis(30)))
            .unwrap());
        assert!(start.elapsed() >= Duration::from_millis(30));
    }
}
