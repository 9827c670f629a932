//! A tiny lock that survives `fork`: the prepare handler takes it, and both
//! parent and child release it afterwards, so a child never inherits it
//! held by a thread that does not exist there.
//!
//! Owns nothing else. Critical sections are a few map operations; waiting
//! threads yield.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, Ordering};

/// A spin lock around a `T`.
pub(crate) struct Spin<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: access to `value` is serialised by `locked` (acquire on lock,
// release on unlock), as for a mutex.
unsafe impl<T: Send> Sync for Spin<T> {}

impl<T> Spin<T> {
    pub(crate) const fn new(value: T) -> Self {
        Self {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Takes the lock without a guard (the fork prepare handler).
    pub(crate) fn acquire(&self) {
        // Acquire pairs with the Release in `release`: the previous holder's
        // writes are visible to us.
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::thread::yield_now();
        }
    }

    /// Releases a lock taken with [`acquire`](Self::acquire) (the fork
    /// parent and child handlers).
    pub(crate) fn release(&self) {
        // Release: our writes become visible to the next holder.
        self.locked.store(false, Ordering::Release);
    }

    /// Runs `f` with the value, under the lock. `f` must not call back into
    /// anything that takes this lock.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        self.acquire();
        struct Unlock<'a, T>(&'a Spin<T>);
        impl<T> Drop for Unlock<'_, T> {
            fn drop(&mut self) {
                self.0.release();
            }
        }
        let _unlock = Unlock(self);
        // SAFETY: we hold the lock, so no other reference to the value
        // exists until `_unlock` releases it after `f` returns.
        f(unsafe { &mut *self.value.get() })
    }
}
