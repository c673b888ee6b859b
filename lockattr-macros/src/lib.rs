//! The `#[distributed_lock]` attribute of the [`lockattr`](https://docs.rs/lockattr) crate.
//!
//! Do not depend on this crate directly: use `lockattr`, which re-exports the attribute and
//! provides the runtime the generated code calls (`::lockattr::__private`). The version of
//! this crate is pinned exactly by `lockattr`.
//!
//! Layout: `args` parses the attribute's arguments, `template` and `duration` are pure parsers
//! for key templates and duration literals, `check` cross-checks the arguments against the
//! function, `expand` generates the code, `diag` accumulates errors and finds "did you mean"
//! suggestions. Every error found is reported in one build, next to the unchanged function.

mod args;
mod check;
mod diag;
mod duration;
mod expand;
mod template;

use proc_macro::TokenStream;

/// *The attribute is implemented in `lockattr-macros`; use it through `lockattr`, whose
/// documentation of [`distributed_lock`](https://docs.rs/lockattr/latest/lockattr/attr.distributed_lock.html)
/// is its reference: arguments, key templates, errors, examples.*
//
// The reference lives in `lockattr/src/distributed_lock.md` and is attached to the re-export,
// where its examples are doctests that can use `lockattr`. Rustdoc shows the re-export's docs
// first and these after them, so this stays one line that reads well on both pages.
#[proc_macro_attribute]
pub fn distributed_lock(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::distributed_lock(args.into(), item.into()).into()
}
