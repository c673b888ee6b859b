//! Items used by the code `#[distributed_lock]` generates. Not public API: no stability
//! promise, may change in any release.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::key::KeyBuilder as Inner;
use crate::{Error, Locker};

/// Builds a key from an attribute template (values escaped, see the crate docs).
#[derive(Debug)]
pub struct KeyBuilder(Inner);

impl KeyBuilder {
    /// An empty key with room for `n` bytes.
    #[must_use]
    pub fn with_capacity(n: usize) -> Self {
        KeyBuilder(Inner::with_capacity(n))
    }

    /// Appends literal template text.
    pub fn literal(&mut self, s: &str) {
        self.0.literal(s);
    }

    /// Appends a placeholder's value, formatted with `Display`.
    pub fn value<T: core::fmt::Display + ?Sized>(&mut self, v: &T) {
        self.0.value(v);
    }
}

/// The attribute's `wait`, `lease`, `renew` and `fenced` arguments.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    wait: Option<Duration>,
    lease: Option<Duration>,
    renew: bool,
    fenced: bool,
}

impl Options {
    /// The locker's defaults, renewal on.
    #[must_use]
    pub const fn new() -> Self {
        Options {
            wait: None,
            lease: None,
            renew: true,
            fenced: false,
        }
    }

    /// Sets the wait.
    #[must_use]
    pub const fn wait(mut self, d: Duration) -> Self {
        self.wait = Some(d);
        self
    }

    /// Sets the lease.
    #[must_use]
    pub const fn lease(mut self, d: Duration) -> Self {
        self.lease = Some(d);
        self
    }

    /// Sets renewal.
    #[must_use]
    pub const fn renew(mut self, on: bool) -> Self {
        self.renew = on;
        self
    }

    /// Sets whether the fencing token comes with the acquisition.
    #[must_use]
    pub const fn fenced(mut self, on: bool) -> Self {
        self.fenced = on;
        self
    }
}

impl Default for Options {
    fn default() -> Self {
        Options::new()
    }
}

/// What `locker = <expr>` may name: a `Locker`, a reference to one, or a smart pointer to one.
#[diagnostic::on_unimplemented(
    message = "`locker = ..` must name a `lockattr::Locker`, found `{Self}`",
    label = "not a `Locker`",
    note = "pass a `Locker`, `&Locker` or `Arc<Locker>`, e.g. `locker = self.locker`"
)]
pub trait AsLocker {
    /// The locker.
    fn as_locker(&self) -> &Locker;
}

impl AsLocker for Locker {
    fn as_locker(&self) -> &Locker {
        self
    }
}

impl<T: AsLocker + ?Sized> AsLocker for &T {
    fn as_locker(&self) -> &Locker {
        (**self).as_locker()
    }
}

impl<T: AsLocker + ?Sized> AsLocker for &mut T {
    fn as_locker(&self) -> &Locker {
        (**self).as_locker()
    }
}

impl<T: AsLocker + ?Sized> AsLocker for Arc<T> {
    fn as_locker(&self) -> &Locker {
        (**self).as_locker()
    }
}

impl<T: AsLocker + ?Sized> AsLocker for Box<T> {
    fn as_locker(&self) -> &Locker {
        (**self).as_locker()
    }
}

/// The process default locker, or `Err(NotConfigured)`.
///
/// # Errors
/// [`Error::NotConfigured`] when none was installed.
pub fn default_locker() -> Result<Locker, Error> {
    crate::default_locker().ok_or(Error::NotConfigured)
}

/// Runs `fut` under the lock; see [`LockRequest::run`](crate::LockRequest::run).
///
/// # Errors
/// As [`LockRequest::run`](crate::LockRequest::run).
pub async fn run<F: Future>(
    locker: Locker,
    key: KeyBuilder,
    options: Options,
    fut: F,
) -> Result<F::Output, Error> {
    let mut req = crate::LockRequest::new(locker.core.clone(), key.0.finish())
        .renew(options.renew)
        .fenced(options.fenced);
    if let Some(w) = options.wait {
        req = req.wait(w);
    }
    if let Some(l) = options.lease {
        req = req.lease(l);
    }
    req.run(fut).await
}

/// The return types `#[distributed_lock]` accepts: `Result<T, E>` with `E: From<lockattr::Error>`.
#[diagnostic::on_unimplemented(
    message = "`#[distributed_lock]` functions must return `Result<_, E>` where `E: From<lockattr::Error>`; found `{Self}`",
    label = "this return type cannot carry a lock error",
    note = "return e.g. `Result<T, lockattr::Error>`, `anyhow::Result<T>`, or your own error type with `impl From<lockattr::Error> for MyError`"
)]
pub trait LockReturn {
    /// Converts a lock failure into the function's return value.
    fn from_lock_error(e: Error) -> Self;
}

impl<T, E: From<Error>> LockReturn for Result<T, E> {
    fn from_lock_error(e: Error) -> Self {
        Err(E::from(e))
    }
}
