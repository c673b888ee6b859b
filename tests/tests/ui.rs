//! Compile-time behaviour of `#[distributed_lock]`: every case in `ui/pass` must compile (and its
//! `main` run), every case in `ui/fail` must fail with exactly the checked-in `.stderr`.
//!
//! After an intended change to a diagnostic, regenerate the expected output with
//! `TRYBUILD=overwrite cargo test -p lockattr-tests --test ui`, then read every changed `.stderr`
//! before committing it: it is the user-facing message.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("ui/pass/*.rs");
    cases.compile_fail("ui/fail/*.rs");
}
