//! Generic functions, `where` clauses, `impl Trait` arguments and `impl Trait` in the `Ok` type.

#![deny(warnings)]

use std::fmt::{Debug, Display};
use std::future::Future;

use lockattr::distributed_lock;

#[distributed_lock(key = "generic:<id>:<tag>")]
pub async fn generic<T, U>(id: T, tag: U) -> Result<Vec<T>, lockattr::Error>
where
    T: Display + Send + Sync + Clone,
    U: Display + Send + Sync,
{
    Ok(vec![id.clone(), id])
}

#[distributed_lock(key = "impl:<name>")]
pub async fn impl_trait_argument(
    name: impl Display + Send + Sync,
    items: impl IntoIterator<Item = u8> + Send,
) -> Result<u32, lockattr::Error> {
    Ok(items.into_iter().map(u32::from).sum())
}

#[distributed_lock(key = "opaque:<n>")]
pub async fn impl_trait_in_ok(n: u32) -> Result<impl Display + Debug + Send, lockattr::Error> {
    if n == 0 {
        return Ok(n.to_string());
    }
    Ok(format!("{n}!"))
}

#[distributed_lock(key = "nested:<n>")]
pub async fn impl_trait_nested(n: u32) -> Result<Vec<impl Display>, lockattr::Error> {
    Ok(vec![n, n + 1])
}

#[distributed_lock(key = "const:<label>")]
pub async fn const_generic<const N: usize>(
    label: &str,
    x: [u8; N],
) -> Result<usize, lockattr::Error>
where
    [u8; N]: Send,
{
    let _ = x;
    Ok(N)
}

fn assert_send<F: Future + Send>(_: &F) {}

fn main() {
    assert_send(&generic(1_u8, "a"));
    assert_send(&impl_trait_argument("n", [1u8]));
    assert_send(&impl_trait_in_ok(1));
}
