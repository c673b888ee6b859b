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

/// Runs an `async fn`'s body only while this process holds a Redis lock.
///
/// ```ignore
/// use lockattr::distributed_lock;
///
/// impl PartyService {
///     #[distributed_lock(key = "party:<party_id>", wait = "100s", lease = "2s")]
///     async fn participate(&self, party_id: i64, name: String) -> Result<Participant, AppError> {
///         // Runs only while this process holds the lock `party:<party_id>`, so the
///         // read-count-insert below cannot race with another request for the same party,
///         // in this process or any other.
///         let members = self.db.count_members(party_id).await?;
///         if members >= 8 {
///             return Err(AppError::PartyFull);
///         }
///         self.db.insert_member(party_id, &name).await
///     }
/// }
///
/// // Once at startup (or pass `locker = ..`, below):
/// lockattr::set_default(lockattr::Locker::connect("redis://127.0.0.1:6379").await?);
/// ```
///
/// Before the body runs, the key is formatted from the arguments and the lock is acquired,
/// waiting up to `wait`; the body then runs under the lock, which is released on every way out
/// of it. Everything that can be checked at compile time is: the arguments, the key template
/// against the function's parameters, the durations, the return type.
///
/// # Arguments
///
/// | argument | meaning | default |
/// |---|---|---|
/// | `key = "party:<party_id>"` | the lock's name, a [key template](#key-templates) | required |
/// | `wait = "100s"` | how long to wait for a busy lock before giving up with `Error::Timeout`; `"0s"` makes a single attempt | the locker's default wait (30 s unless configured) |
/// | `lease = "2s"` | the lock's time to live in Redis: how long a crashed holder can block others. Must not be zero | the locker's default lease (30 s unless configured) |
/// | `renew = false` | whether a watchdog renews the lease (every lease/3) while the body runs. With `false` the body must finish within the lease, or it is cancelled (see [below](#what-runs-and-when)) | `true` |
/// | `locker = self.locker` | the `lockattr::Locker` to use: any expression giving a `Locker`, `&Locker`, `&mut Locker`, `Arc<Locker>` or `Box<Locker>`, evaluated before the body, with the arguments in scope (`self.locker`, `state.locker`, `locker`) | the process default, installed with `lockattr::set_default`; `Error::NotConfigured` if there is none |
///
/// `wait`, `lease` and `renew` also accept any expression of the right type (`Duration`,
/// `bool`), evaluated at run time: `wait = WAIT`, `lease = Duration::from_secs(5)`,
/// `renew = cfg!(not(test))`. String literals are validated at compile time.
///
/// ## Durations
///
/// A duration literal is one or more whole numbers, each with a unit, from the largest unit to
/// the smallest: `"250ms"`, `"30s"`, `"5m"`, `"1h"`, `"1m30s"`, `"2h15m"`. Units are `ms`,
/// `s`, `m` and `h` (locks have millisecond resolution; `d`, `us`, fractions like `"1.5s"` and
/// bare numbers are compile errors, with the fix in the message). Spaces between parts and `_`
/// in numbers are allowed (`"1m 30s"`, `"10_000ms"`). A duration that overflows a 64-bit count
/// of milliseconds is a compile error.
///
/// # Key templates
///
/// The key is a string literal. Text is copied as written; `<name>` inserts a value, formatted
/// with its `Display` implementation:
///
/// | in the template | inserts |
/// |---|---|
/// | `<party_id>` | the argument `party_id` |
/// | `<req.user.id>` | a field of an argument (any depth; tuple fields as `<pair.0>`) |
/// | `<self.shard>` | a field of `self`, in a method (`&self`, `&mut self`, `self`, `self: Arc<Self>`, ...) |
/// | `<id>` with `Path(id): Path<i64>` | a variable bound by a parameter's pattern (axum extractors, tuples, structs) |
/// | `<<` | a literal `<` (a lone `>` needs no escape) |
///
/// A placeholder must name a parameter of the function: not a local variable, a constant or a
/// generic parameter. Each value is formatted once, before the body runs, into one buffer
/// sized for the key. Its type must implement `Display`; when it does not, the error points at
/// the parameter (or, for a field, at the key).
///
/// The rendered key is namespaced and escaped by the runtime: with the default namespace `lock`,
/// `key = "party:<party_id>"` and `party_id = 42` lock the Redis key `lock:{party:42}`. In the
/// *values*, `:` is escaped too (as `%3A`, like `%`, `{`, `}` and control characters), so a
/// value cannot forge another key: `party_id = "1:2"` gives `lock:{party:1%3A2}`, never the
/// key of `"party:<a>:<b>"` with `a = 1, b = 2`. A rendered key that is empty or longer than
/// `lockattr::MAX_KEY_LEN` once escaped fails at run time with `Error::InvalidKey`.
///
/// # Return type
///
/// The function must return `Result<T, E>` where `E: From<lockattr::Error>`: `lockattr::Error`
/// itself, `anyhow::Result<T>`, `Box<dyn Error + Send + Sync>`, or your own error type with a
/// `From<lockattr::Error>` impl (or `#[from]` with `thiserror`). Aliases such as
/// `AppResult<T>` and `impl Trait` inside the `Ok` type (`Result<impl Display, E>`) are fine.
/// When the lock cannot be taken the function returns `Err(From::from(lockattr::Error::..))`
/// without running the body:
///
/// | error | when |
/// |---|---|
/// | `Timeout { key, waited }` | the lock stayed busy for the whole `wait` |
/// | `Lost { key }` | the lock was lost while the body ran; the body was cancelled |
/// | `InvalidKey { key, reason }` | the rendered key is empty or too long |
/// | `NotConfigured` | no `locker = ..` and no process default |
/// | `Redis(..)` | Redis failed or did not answer within the locker's operation timeout |
///
/// # What runs, and when
///
/// - **Release on every path.** The body is moved into a future that runs under the lock:
///   `return`, `?`, a normal end, and a panic (the guard's drop releases in the background) all
///   release the lock, and release is token-safe (it never deletes a lock someone else holds).
/// - **Cancellation.** If the caller drops the returned future (a `select!`, a `timeout`, a
///   closed HTTP connection, an aborted task), the body is dropped at its current `.await` and
///   the lock is released promptly, not left to expire with its lease. Dropped while still
///   waiting, nothing is left behind.
/// - **When the lock is lost** (the lease ran out with `renew = false`, or renewal found the key
///   expired, deleted or taken by another holder), the body is cancelled at its next `.await`
///   (so a database transaction in it is rolled back by its drop) and the function returns
///   `Err(Lost)`. Code between two `.await`s cannot be interrupted: use the fencing token for
///   writes that must never come from a stale holder.
/// - **Fencing token.** Inside the body, `lockattr::fencing_token()` returns `Some(n)`, a number
///   that grows with every acquisition of the key; pass it to storage that rejects writes
///   carrying a smaller one.
/// - **Reentrancy.** A call made from the body (same task) that needs a key this task already
///   holds on the same locker runs at once, instead of waiting for itself.
/// - **`Send`.** The returned future is `Send` whenever the body's is, so annotated functions
///   work with `tokio::spawn`, axum handlers, `#[async_trait]` and traits that require `Send`
///   futures.
///
/// The signature, visibility, attributes and docs of the function are kept exactly as written.
///
/// # Equivalent code without the attribute
///
/// The example above behaves like this hand-written version using the runtime directly (except
/// that the attribute escapes `:` in the values, which `format!` does not):
///
/// ```ignore
/// async fn participate(&self, party_id: i64, name: String) -> Result<Participant, AppError> {
///     let locker = lockattr::default_locker().ok_or(lockattr::Error::NotConfigured)?;
///     locker
///         .lock(format!("party:{party_id}"))
///         .wait(Duration::from_secs(100))
///         .lease(Duration::from_secs(2))
///         .run(async move {
///             // body: `return` and `?` leave this block, not the function
///             let members = self.db.count_members(party_id).await?;
///             // ...
///         })
///         .await? // a lock error becomes an `AppError` through `From`
/// }
/// ```
///
/// # Compile-time errors
///
/// Every mistake is reported in the same build, at the argument or token it concerns, and the
/// function is still emitted unchanged so its callers get no follow-up errors:
///
/// - an unknown argument, with a suggestion for names from other libraries (`timeout`,
///   `wait_time` → `wait`; `ttl`, `lease_time`, `expire` → `lease`; ...) and for typos;
/// - a duplicate argument, a missing `key`, a positional key (`#[distributed_lock("k")]`);
/// - a non-string `key`, a number without unit for `wait`/`lease` (`wait = 5`), a literal that
///   is not a `bool` for `renew`, a string for `locker`;
/// - an empty key, an unclosed `<`, an empty `<>`, a placeholder that is not an identifier
///   path;
/// - a placeholder naming no parameter (listing the parameters and suggesting a close one), a
///   `<self..>` placeholder in a function without `self`;
/// - an unknown or unsupported duration unit, a fraction, a negative number, units out of
///   order or repeated, a duration that overflows, a zero `lease`;
/// - a function that is not `async`, a `const fn`, a trait method declaration without a body,
///   an item that is not a function;
/// - no return type, `impl Trait` as the whole return type, or a return type that cannot
///   carry a `lockattr::Error` (`i64`, `Option<T>`, `Result<T, E>` without
///   `E: From<lockattr::Error>`), reported at the return type;
/// - a placeholder whose type does not implement `Display`, reported at the parameter; a
///   `locker = ..` that is not a `Locker`, reported at the expression.
///
/// # With other attributes
///
/// - `#[async_trait]` on the `impl`: put `#[distributed_lock]` on the methods as usual.
/// - `#[tracing::instrument]`: attributes expand from the top down, so with
///   `#[distributed_lock]` above `#[tracing::instrument]` the span also covers the wait for
///   the lock; the other order opens the span once the lock is held. Both work.
/// - axum handlers: placeholders can use variables bound by extractor patterns, and
///   `locker = state.locker` reads the locker from `State(state): State<App>`.
///
/// # Limitations
///
/// - The generated code names the runtime as `::lockattr`: depend on it under that name (a
///   renamed dependency is not supported).
/// - The attribute goes on functions with a body: on the `impl`'s method, not on a trait's
///   method declaration.
#[proc_macro_attribute]
pub fn distributed_lock(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::distributed_lock(args.into(), item.into()).into()
}
