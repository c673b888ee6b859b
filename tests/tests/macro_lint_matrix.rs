//! Every shape of body an annotated function can have compiles without a warning in the
//! user's crate, under rustc's default lints and `clippy::pedantic` (issue 14).
//!
//! Some lints look at the user's own tokens: `unused_braces` fires on a block written on one
//! line and not on the same block over three lines, because it reads the spans of the braces.
//! So the one-line cases below are written on one line, and `#[rustfmt::skip]` keeps rustfmt
//! from spreading them out. They are written literally, not produced by a `macro_rules!`, which
//! would give the braces a macro span and hide exactly the warning this file is about.
//!
//! `cargo test` checks the rustc lints, `cargo clippy --workspace --all-targets -- -D warnings`
//! the Clippy ones. The test at the bottom runs every function, so none of them is only
//! compiled.

#![deny(warnings, clippy::pedantic)]

use std::time::Duration;

use async_trait::async_trait;
use lockattr::distributed_lock;
use lockattr_tests::RedisServer;

type Res<T> = Result<T, lockattr::Error>;

// One expression.

#[rustfmt::skip]
#[distributed_lock(key = "matrix:one_line:<id>", lease = "1s")]
async fn one_line(id: u8) -> Res<u8> { Ok(id) }

#[rustfmt::skip]
#[distributed_lock(key = "matrix:one_line_call:<id>")]
async fn one_line_call(id: u8) -> Res<u8> { Ok(id.wrapping_add(1)) }

#[rustfmt::skip]
#[distributed_lock(key = "matrix:one_line_if:<id>")]
async fn one_line_if(id: u8) -> Res<u8> { if id > 1 { Ok(id) } else { Ok(0) } }

#[rustfmt::skip]
#[distributed_lock(key = "matrix:one_line_match:<id>")]
async fn one_line_match(id: u8) -> Res<u8> { match id { 0 => Ok(1), n => Ok(n) } }

#[distributed_lock(key = "matrix:one_expression:<id>")]
async fn one_expression(id: u8) -> Res<u8> {
    Ok(id)
}

// Statements only, `return` only, `?` only.

#[rustfmt::skip]
#[distributed_lock(key = "matrix:one_line_statements:<id>")]
async fn one_line_statements(id: u8) -> Res<u8> { let doubled = id.wrapping_mul(2); return Ok(doubled); }

#[distributed_lock(key = "matrix:statements:<id>")]
async fn statements(id: u8) -> Res<u8> {
    let mut total = 0u8;
    for step in 0..id {
        total = total.wrapping_add(step);
    }
    return Ok(total);
}

#[rustfmt::skip]
#[distributed_lock(key = "matrix:one_line_return:<id>")]
async fn one_line_return(id: u8) -> Res<u8> { return Ok(id); }

#[rustfmt::skip]
#[distributed_lock(key = "matrix:one_line_return_expression:<id>")]
async fn one_line_return_expression(id: u8) -> Res<u8> { return Ok(id) }

#[distributed_lock(key = "matrix:early_return:<id>")]
async fn early_return(id: u8) -> Res<u8> {
    if id == 0 {
        return Ok(100);
    }
    Ok(id)
}

#[rustfmt::skip]
#[distributed_lock(key = "matrix:one_line_question_mark:<id>")]
async fn one_line_question_mark(id: u32) -> anyhow::Result<u8> { Ok(u8::try_from(id)?) }

#[rustfmt::skip]
#[distributed_lock(key = "matrix:one_line_question_mark_statement:<id>")]
async fn one_line_question_mark_statement(id: u32) -> anyhow::Result<u8> { let small = u8::try_from(id)?; Ok(small) }

#[distributed_lock(key = "matrix:question_mark:<id>")]
async fn question_mark(id: u32) -> anyhow::Result<u8> {
    let small = u8::try_from(id)?;
    Ok(small)
}

// `async` blocks, closures, nested `async` blocks.

#[rustfmt::skip]
#[distributed_lock(key = "matrix:one_line_async_block:<id>")]
async fn one_line_async_block(id: u8) -> Res<u8> { async move { Ok(id) }.await }

#[rustfmt::skip]
#[distributed_lock(key = "matrix:one_line_closure:<id>")]
async fn one_line_closure(id: u8) -> Res<u8> { let add = |x: u8| { x.wrapping_add(1) }; Ok(add(id)) }

#[distributed_lock(key = "matrix:closures_and_async_blocks:<id>")]
async fn closures_and_async_blocks(id: u8) -> Res<u8> {
    let add = |x: u8| x.wrapping_add(1);
    let inner = async move {
        let nested = async { add(id) };
        nested.await
    };
    let value = inner.await;
    let check = || -> Res<u8> { Ok(value) };
    let checked = check()?;
    let later = async move { Ok::<_, lockattr::Error>(checked) };
    later.await
}

#[distributed_lock(key = "matrix:awaits:<id>")]
async fn awaits(id: u8) -> Res<u8> {
    tokio::time::sleep(Duration::from_millis(1)).await;
    Ok(id)
}

// With `#[tracing::instrument]`, in both orders.

#[rustfmt::skip]
#[distributed_lock(key = "matrix:lock_then_span:<id>")]
#[tracing::instrument]
async fn lock_then_span(id: u8) -> Res<u8> { Ok(id) }

#[rustfmt::skip]
#[tracing::instrument]
#[distributed_lock(key = "matrix:span_then_lock:<id>")]
async fn span_then_lock(id: u8) -> Res<u8> { Ok(id) }

#[rustfmt::skip]
#[distributed_lock(key = "matrix:lock_then_span_err:<id>")]
#[tracing::instrument(err)]
async fn lock_then_span_err(id: u8) -> Res<u8> { Ok(id) }

#[rustfmt::skip]
#[tracing::instrument(err)]
#[distributed_lock(key = "matrix:span_then_lock_err:<id>")]
async fn span_then_lock_err(id: u8) -> Res<u8> { Ok(id) }

// With `#[async_trait]`, alone and stacked with `#[tracing::instrument]` in both orders.

#[async_trait]
trait Matrix {
    async fn one_line(&self, id: u8) -> Res<u8>;
    async fn one_line_return(&self, id: u8) -> Res<u8>;
    async fn statements(&self, id: u8) -> Res<u8>;
    async fn lock_then_span(&self, id: u8) -> Res<u8>;
    async fn span_then_lock(&self, id: u8) -> Res<u8>;
}

#[derive(Debug)]
struct Service;

#[async_trait]
impl Matrix for Service {
    #[rustfmt::skip]
    #[distributed_lock(key = "matrix:trait_one_line:<id>")]
    async fn one_line(&self, id: u8) -> Res<u8> { Ok(id) }

    #[rustfmt::skip]
    #[distributed_lock(key = "matrix:trait_one_line_return:<id>")]
    async fn one_line_return(&self, id: u8) -> Res<u8> { return Ok(id); }

    #[distributed_lock(key = "matrix:trait_statements:<id>")]
    async fn statements(&self, id: u8) -> Res<u8> {
        let add = |x: u8| x.wrapping_add(1);
        let value = async { add(id) }.await;
        return Ok(value);
    }

    #[rustfmt::skip]
    #[distributed_lock(key = "matrix:trait_lock_then_span:<id>")]
    #[tracing::instrument]
    async fn lock_then_span(&self, id: u8) -> Res<u8> { Ok(id) }

    #[rustfmt::skip]
    #[tracing::instrument]
    #[distributed_lock(key = "matrix:trait_span_then_lock:<id>")]
    async fn span_then_lock(&self, id: u8) -> Res<u8> { Ok(id) }
}

// Inherent methods.

impl Service {
    #[rustfmt::skip]
    #[distributed_lock(key = "matrix:method_one_line:<id>")]
    async fn method_one_line(&self, id: u8) -> Res<u8> { Ok(id) }

    #[rustfmt::skip]
    #[distributed_lock(key = "matrix:method_one_line_self:<id>")]
    async fn method_one_line_self(self, id: u8) -> Res<(Self, u8)> { Ok((self, id)) }
}

#[tokio::test]
async fn every_shape_runs_its_body_under_the_lock() {
    let server = RedisServer::start();
    let locker = lockattr::Locker::connect(server.url()).await.unwrap();
    // The only test in this binary: nothing else sees the process default.
    lockattr::set_default(locker);

    assert_eq!(one_line(1).await.unwrap(), 1);
    assert_eq!(one_line_call(1).await.unwrap(), 2);
    assert_eq!(one_line_if(1).await.unwrap(), 0);
    assert_eq!(one_line_match(0).await.unwrap(), 1);
    assert_eq!(one_expression(4).await.unwrap(), 4);
    assert_eq!(one_line_statements(3).await.unwrap(), 6);
    assert_eq!(statements(4).await.unwrap(), 6);
    assert_eq!(one_line_return(5).await.unwrap(), 5);
    assert_eq!(one_line_return_expression(6).await.unwrap(), 6);
    assert_eq!(early_return(0).await.unwrap(), 100);
    assert_eq!(early_return(7).await.unwrap(), 7);
    assert_eq!(one_line_question_mark(8).await.unwrap(), 8);
    assert!(one_line_question_mark(256).await.is_err());
    assert_eq!(one_line_question_mark_statement(9).await.unwrap(), 9);
    assert!(one_line_question_mark_statement(300).await.is_err());
    assert_eq!(question_mark(10).await.unwrap(), 10);
    assert_eq!(one_line_async_block(11).await.unwrap(), 11);
    assert_eq!(one_line_closure(11).await.unwrap(), 12);
    assert_eq!(closures_and_async_blocks(12).await.unwrap(), 13);
    assert_eq!(awaits(13).await.unwrap(), 13);
    assert_eq!(lock_then_span(14).await.unwrap(), 14);
    assert_eq!(span_then_lock(15).await.unwrap(), 15);
    assert_eq!(lock_then_span_err(16).await.unwrap(), 16);
    assert_eq!(span_then_lock_err(17).await.unwrap(), 17);

    let service = Service;
    assert_eq!(Matrix::one_line(&service, 18).await.unwrap(), 18);
    assert_eq!(Matrix::one_line_return(&service, 19).await.unwrap(), 19);
    assert_eq!(Matrix::statements(&service, 20).await.unwrap(), 21);
    assert_eq!(Matrix::lock_then_span(&service, 22).await.unwrap(), 22);
    assert_eq!(Matrix::span_then_lock(&service, 23).await.unwrap(), 23);
    assert_eq!(service.method_one_line(24).await.unwrap(), 24);
    assert_eq!(service.method_one_line_self(25).await.unwrap().1, 25);

    lockattr::clear_default();
}
