//! The one mutex helper every module uses.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, ignoring poison.
///
/// Every critical section under the runtime's mutexes is a few assignments or one map
/// operation that cannot leave the data half-changed, so a panic elsewhere while a lock was held
/// does not make the data unusable; refusing to go on would turn one panic into a wedged locker.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
