//! Waiting, with a deadline, for one descriptor to become readable: the
//! sleep under [`EventFd`](crate::EventFd)'s and
//! [`SignalReceiver`](crate::SignalReceiver)'s waits. Owns the deadline
//! arithmetic and the `poll`; what "readable" means is the caller's.

use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use rustix::event::{self, PollFd, PollFlags, Timespec};
use rustix::io::Errno;

use crate::Error;

/// The deadline `timeout` from now; `None` (no deadline) when it is too far
/// away to represent, which is as good as none.
pub(crate) fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// Sleeps until `fd` is readable (or hung up) or `deadline` passes.
/// Returns the events seen, or `None` once the deadline has passed. May
/// return early, with no event, on a signal delivered to this thread:
/// callers loop. `what` and `hint` make the error of a failed `poll`.
pub(crate) fn wait_readable(
    fd: BorrowedFd<'_>,
    deadline: Option<Instant>,
    what: &'static str,
    hint: &'static str,
) -> Result<Option<PollFlags>, Error> {
    let remaining = match deadline {
        Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => Some(left),
            _ => return Ok(None),
        },
        None => None,
    };
    // A timeout beyond Timespec's range is as good as no timeout.
    let timeout = remaining.and_then(|t| Timespec::try_from(t).ok());
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    match event::poll(&mut fds, timeout.as_ref()) {
        Ok(_) => Ok(Some(fds[0].revents())),
        Err(Errno::INTR) => Ok(Some(PollFlags::empty())),
        Err(errno) => Err(Error::os(what, hint)(errno)),
    }
}
