//! The attribute adds no warning of its own to a one-line body (issue 14), and hides none of
//! the user's: the redundant inner braces below are reported exactly as they would be without
//! the attribute, and only they are.

#![deny(unused_braces)]

use lockattr::distributed_lock;

#[rustfmt::skip]
#[distributed_lock(key = "k:<id>")]
pub async fn redundant(id: u8) -> Result<u8, lockattr::Error> { { Ok(id) } }

#[rustfmt::skip]
#[distributed_lock(key = "k:<id>")]
pub async fn clean(id: u8) -> Result<u8, lockattr::Error> { Ok(id) }

fn main() {}
