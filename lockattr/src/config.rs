//! The settings of a `Locker`, checked once when it is built.

use std::time::Duration;

use crate::Error;

/// What a [`LockerBuilder`](crate::LockerBuilder) configures.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) namespace: String,
    pub(crate) default_wait: Duration,
    pub(crate) default_lease: Duration,
    pub(crate) op_timeout: Duration,
    pub(crate) handoff_limit: u32,
    /// `wait_for_replicas`: how many replicas must acknowledge, and how long Redis waits.
    pub(crate) replicas: Option<(usize, Duration)>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            namespace: "lock".to_owned(),
            default_wait: Duration::from_secs(30),
            default_lease: Duration::from_secs(30),
            op_timeout: Duration::from_secs(2),
            handoff_limit: 16,
            replicas: None,
        }
    }
}

impl Config {
    /// Checks every setting; the first one out of range is reported.
    pub(crate) fn check(&self) -> Result<(), Error> {
        crate::key::validate_namespace(&self.namespace)?;
        check_lease(self.default_lease, || "the default lease".to_owned())?;
        if self.op_timeout.is_zero() {
            return Err(Error::config("the operation timeout must not be zero"));
        }
        if let Some((n, timeout)) = self.replicas {
            if n == 0 {
                return Err(Error::config(
                    "wait_for_replicas needs at least one replica (leave it unset to not wait)",
                ));
            }
            if timeout < Duration::from_millis(1) || timeout >= self.op_timeout {
                return Err(Error::config(format!(
                    "the wait_for_replicas timeout is {timeout:?}; it must be at least 1 ms and \
                     shorter than the operation timeout ({:?})",
                    self.op_timeout
                )));
            }
        }
        Ok(())
    }
}

/// Longest lease accepted: a lease bounds how long a crashed holder blocks everyone, and
/// anything longer than this is a unit mistake, not a choice.
pub(crate) const MAX_LEASE: Duration = Duration::from_secs(366 * 24 * 3600);

/// Checks a lease: at least 1 ms (Redis's resolution), at most [`MAX_LEASE`].
/// `what` names the lease in the error message (built only when the lease is refused).
pub(crate) fn check_lease(lease: Duration, what: impl FnOnce() -> String) -> Result<(), Error> {
    if lease < Duration::from_millis(1) || lease > MAX_LEASE {
        return Err(Error::config(format!(
            "{} is {lease:?}; a lease must be between 1 ms and 366 days",
            what()
        )));
    }
    Ok(())
}

/// Milliseconds, rounded up so that a sub-millisecond lease never becomes zero.
pub(crate) fn millis(d: Duration) -> u64 {
    let ms = d.as_millis();
    let ms = if Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX)) < d {
        ms + 1
    } else {
        ms
    };
    u64::try_from(ms).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_round_up() {
        assert_eq!(millis(Duration::from_micros(1)), 1);
        assert_eq!(millis(Duration::from_millis(5)), 5);
        assert_eq!(millis(Duration::from_micros(5001)), 6);
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }

    #[test]
    fn leases_are_bounded() {
        assert!(check_lease(Duration::from_millis(1), String::new).is_ok());
        assert!(check_lease(MAX_LEASE, String::new).is_ok());
        assert!(check_lease(Duration::from_micros(999), String::new).is_err());
        assert!(
            check_lease(MAX_LEASE + Duration::from_secs(1), || "x".into())
                .unwrap_err()
                .to_string()
                .contains("x is")
        );
    }

    #[test]
    fn defaults_pass_their_own_check() {
        Config::default().check().unwrap();
        let zero = Config {
            op_timeout: Duration::ZERO,
            ..Config::default()
        };
        assert!(zero.check().is_err());
    }
}
