//! Re-entrancy guard: while the shim works (in an application thread, or
//! always in its own threads), the interposed functions go straight to the
//! C library. The shim's internals, the `hvsock` library and `std` close
//! descriptors and open sockets through those same symbols.

use std::cell::Cell;

thread_local! {
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// Whether the calling thread is inside the shim.
pub(crate) fn is_inside() -> bool {
    // A thread being torn down has no locals left: treat it as inside, so
    // that it goes straight to the C library.
    INSIDE.try_with(Cell::get).unwrap_or(true)
}

/// Marks the calling thread as the shim's own for its whole life.
pub(crate) fn mark_thread() {
    INSIDE.with(|i| i.set(true));
}

/// Marks the calling thread as inside the shim until dropped.
pub(crate) struct Inside {
    was: bool,
}

impl Inside {
    pub(crate) fn enter() -> Self {
        let was = INSIDE.try_with(|i| i.replace(true)).unwrap_or(true);
        Self { was }
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        let was = self.was;
        let _ = INSIDE.try_with(|i| i.set(was));
    }
}
