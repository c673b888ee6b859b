//! The process-wide default `Locker`, used by `#[distributed_lock]` without `locker = ..`.

use std::sync::{PoisonError, RwLock};

use crate::Locker;

static DEFAULT: RwLock<Option<Locker>> = RwLock::new(None);

/// Installs `locker` as the process default, used by `#[distributed_lock]` functions that have
/// no `locker = ..` argument. Returns the previous default, if any.
///
/// ```no_run
/// # async fn demo() -> Result<(), lockattr::Error> {
/// let locker = lockattr::Locker::connect("redis://127.0.0.1:6379").await?;
/// lockattr::set_default(locker);
/// # Ok(())
/// # }
/// ```
pub fn set_default(locker: Locker) -> Option<Locker> {
    DEFAULT
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .replace(locker)
}

/// The process default installed with [`set_default`], if any.
pub fn default_locker() -> Option<Locker> {
    DEFAULT
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// Removes the process default (for tests); returns it.
pub fn clear_default() -> Option<Locker> {
    DEFAULT
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
}
