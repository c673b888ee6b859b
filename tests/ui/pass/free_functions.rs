//! Free functions: plain arguments, references with lifetimes, fields, `<<`, every argument.

#![deny(warnings)]

use std::fmt;
use std::time::Duration;

use lockattr::distributed_lock;

pub struct Party {
    pub id: i64,
    pub owner: Owner,
}

pub struct Owner(pub String, pub u32);

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.0, self.1)
    }
}

const WAIT: Duration = Duration::from_secs(3);

#[distributed_lock(key = "party:<party_id>", wait = "100s", lease = "2s")]
pub async fn participate(party_id: i64, name: String) -> Result<String, lockattr::Error> {
    Ok(name)
}

/// Docs and attributes stay on the function.
#[distributed_lock(key = "p:<party.id>:<party.owner>:<party.owner.1>:<<raw>")]
#[inline]
#[must_use = "the result says whether the lock was taken"]
pub async fn fields(party: &Party) -> Result<i64, lockattr::Error> {
    Ok(party.id)
}

#[distributed_lock(key = "ref:<name>:<tag>", wait = "0s", lease = "1m30s", renew = false)]
async fn references<'a, 'b: 'a>(
    name: &'a str,
    tag: &'b mut String,
) -> Result<&'a str, lockattr::Error> {
    tag.push('!');
    Ok(name)
}

#[distributed_lock(key = "runtime", wait = WAIT, lease = Duration::from_millis(1500), renew = cfg!(debug_assertions))]
async fn runtime_durations() -> Result<(), lockattr::Error> {
    Ok(())
}

#[distributed_lock(key = "global")]
async fn early_return_and_question_mark(flag: bool) -> Result<u8, lockattr::Error> {
    if flag {
        return Ok(1);
    }
    let n: u8 = "7".parse().map_err(|_| lockattr::Error::NotConfigured)?;
    Ok(n)
}

#[distributed_lock(key = "unsafe")]
async unsafe fn unsafe_fn(p: *const u8) -> Result<u8, lockattr::Error> {
    // SAFETY: the caller passes a valid pointer.
    Ok(unsafe { *p })
}

fn assert_send<F: std::future::Future + Send>(_: &F) {}

fn main() {
    let mut tag = String::new();
    let party = Party {
        id: 1,
        owner: Owner("o".into(), 2),
    };
    let futures = (
        participate(42, "x".into()),
        fields(&party),
        references("n", &mut tag),
        runtime_durations(),
        early_return_and_question_mark(true),
    );
    assert_send(&futures.0);
    assert_send(&futures.1);
    assert_send(&futures.2);
    assert_send(&futures.3);
    assert_send(&futures.4);
    let byte = 0u8;
    let _ = unsafe { unsafe_fn(&byte) };
}
