//! Locks that go on past a panic: every lock here guards state that is consistent after
//! each of its writes, so a panic elsewhere while one was held leaves nothing half-done,
//! and one panicked request must not take every later one down with it. And the thread
//! slots that striped counters share out their cache lines by. A leaf.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

thread_local! {
    /// This thread's slot, handed out in turn when it first asks.
    static SLOT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The slot the next thread is given.
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

/// A number of this thread's, the same at every call, handed out to threads in turn: a
/// striped counter takes it modulo its stripes, so that threads (a runtime's workers,
/// most of all) write lines of their own.
pub fn thread_slot() -> usize {
    SLOT.with(|slot| {
        slot.get().unwrap_or_else(|| {
            let next = NEXT_SLOT.fetch_add(1, Ordering::Relaxed);
            slot.set(Some(next));
            next
        })
    })
}

/// Locking that ignores poisoning (see the module's note).
pub trait Unpoisoned<T: ?Sized> {
    /// The guard, even after a panic in another holder.
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> Unpoisoned<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Reading and writing that ignore poisoning (see the module's note).
pub trait UnpoisonedRw<T: ?Sized> {
    /// A read guard, even after a panic in another holder.
    fn reading(&self) -> RwLockReadGuard<'_, T>;
    /// A write guard, even after a panic in another holder.
    fn writing(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T: ?Sized> UnpoisonedRw<T> for RwLock<T> {
    fn reading(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn writing(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_still_usable() {
        let lock = std::sync::Arc::new(Mutex::new(1));
        let held = lock.clone();
        let _ = std::thread::spawn(move || {
            let _guard = held.lock().unwrap();
            panic!("poisons the lock");
        })
        .join();
        assert!(lock.is_poisoned());
        *lock.locked() += 1;
        assert_eq!(*lock.locked(), 2);
    }
}
