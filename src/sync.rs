//! Locks as hydromesh takes them.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, taking it over from a thread that panicked while holding it. Only for state
/// that a panic cannot leave half-updated: every update under the lock is one assignment, insert
/// or removal, so a poisoned lock still holds a whole value.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
