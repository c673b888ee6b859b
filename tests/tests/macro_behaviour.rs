//! What `#[distributed_lock]` does at run time, against a real `redis-server` per test.
//!
//! Most tests pass their own `Locker` (`locker = self.locker` / `locker = locker`), so they can
//! run in parallel. The few that exercise the process default (`lockattr::set_default`) take
//! `DEFAULT_LOCKER` first, because the default is shared by the whole test binary.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockattr::{distributed_lock, Locker};
use lockattr_tests::RedisServer;

/// Serialises the tests that install or clear the process default locker.
static DEFAULT_LOCKER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn connect(server: &RedisServer) -> Locker {
    Locker::connect(server.url())
        .await
        .expect("connect to the test redis-server")
}

/// Whether Redis holds the lock `key` (default namespace `lock`) right now.
fn held(server: &RedisServer, key: &str) -> bool {
    server.keys().contains(&format!("lock:{{{key}}}"))
}

/// Polls `cond` every 10 ms for at most `limit`; returns whether it became true.
async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Counts how many bodies run at the same time.
#[derive(Default)]
struct Concurrency {
    inside: AtomicUsize,
    max: AtomicUsize,
    runs: AtomicUsize,
}

impl Concurrency {
    async fn visit(&self, hold: Duration) {
        let now = self.inside.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(hold).await;
        self.inside.fetch_sub(1, Ordering::SeqCst);
        self.runs.fetch_add(1, Ordering::SeqCst);
    }
}

#[derive(Debug)]
enum AppError {
    Busy { key: String },
    Lost,
    Lock(lockattr::Error),
    Parse(std::num::ParseIntError),
    Refused,
}

impl From<lockattr::Error> for AppError {
    fn from(e: lockattr::Error) -> Self {
        match e {
            lockattr::Error::Timeout { key, .. } => AppError::Busy { key },
            lockattr::Error::Lost { .. } => AppError::Lost,
            other => AppError::Lock(other),
        }
    }
}

impl From<std::num::ParseIntError> for AppError {
    fn from(e: std::num::ParseIntError) -> Self {
        AppError::Parse(e)
    }
}

struct Parties {
    locker: Locker,
    seen: Concurrency,
}

impl Parties {
    #[distributed_lock(key = "party:<party_id>", wait = "10s", locker = self.locker)]
    async fn participate(&self, party_id: u32, hold: Duration) -> Result<u32, AppError> {
        self.seen.visit(hold).await;
        Ok(party_id)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_serialises_different_keys_run_in_parallel() {
    let server = RedisServer::start();
    let parties = Arc::new(Parties {
        locker: connect(&server).await,
        seen: Concurrency::default(),
    });

    let calls: Vec<_> = (0..5)
        .map(|_| {
            let parties = Arc::clone(&parties);
            tokio::spawn(async move { parties.participate(7, Duration::from_millis(40)).await })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap(), 7);
    }
    assert_eq!(parties.seen.runs.load(Ordering::SeqCst), 5);
    assert_eq!(
        parties.seen.max.load(Ordering::SeqCst),
        1,
        "two bodies for the same key ran at the same time"
    );

    let parties = Arc::new(Parties {
        locker: parties.locker.clone(),
        seen: Concurrency::default(),
    });
    let started = Instant::now();
    let calls: Vec<_> = (0..5)
        .map(|id| {
            let parties = Arc::clone(&parties);
            tokio::spawn(async move { parties.participate(id, Duration::from_millis(300)).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert!(
        parties.seen.max.load(Ordering::SeqCst) >= 2,
        "different keys did not run in parallel"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1200),
        "5 x 300 ms on different keys took {:?}",
        started.elapsed()
    );
    assert!(!held(&server, "party:7") && !held(&server, "party:3"));
}

/// How the body of `exit` leaves.
#[derive(Clone, Copy, Debug)]
enum Exit {
    Ok,
    Err,
    EarlyReturn,
    QuestionMark,
    Panic,
}

#[distributed_lock(key = "exit:<name>", wait = "0s", locker = locker)]
async fn exit(locker: &Locker, name: &str, how: Exit) -> Result<&'static str, AppError> {
    assert!(
        lockattr::fencing_token().await.ok().is_some(),
        "the body runs under the lock"
    );
    match how {
        Exit::Ok => {}
        Exit::Err => Err(AppError::Refused)?,
        Exit::EarlyReturn => return Ok("early"),
        Exit::QuestionMark => {
            let _: u32 = "not a number".parse()?;
        }
        Exit::Panic => panic!("the body panicked on purpose"),
    }
    tokio::task::yield_now().await;
    Ok("end")
}

#[tokio::test]
async fn released_after_every_exit_path() {
    let server = RedisServer::start();
    let locker = connect(&server).await;
    for (i, how) in [
        Exit::Ok,
        Exit::Err,
        Exit::EarlyReturn,
        Exit::QuestionMark,
        Exit::Panic,
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("path{i}");
        let call = {
            let locker = locker.clone();
            let name = name.clone();
            tokio::spawn(async move { exit(&locker, &name, how).await })
        };
        let outcome = call.await;
        match how {
            Exit::Ok => assert!(matches!(outcome, Ok(Ok("end")))),
            Exit::EarlyReturn => assert!(matches!(outcome, Ok(Ok("early")))),
            Exit::Err => assert!(matches!(outcome, Ok(Err(AppError::Refused)))),
            Exit::QuestionMark => match outcome {
                Ok(Err(AppError::Parse(e))) => assert!(e.to_string().contains("invalid digit")),
                other => panic!("expected a parse error, got {other:?}"),
            },
            Exit::Panic => assert!(outcome.unwrap_err().is_panic()),
        }
        // Released in Redis (a panic releases from the guard's drop, in the background)...
        let key = format!("exit:{name}");
        assert!(
            eventually(Duration::from_secs(2), || !held(&server, &key)).await,
            "{how:?}: lock still in Redis: {:?}",
            server.keys()
        );
        // ...and a single attempt (`wait = "0s"`) gets it again. After a panic the guard's drop
        // finishes the release in a background task, which may need a moment after Redis
        // already shows the key gone; the other paths release before the call returns.
        let mut again = exit(&locker, &name, Exit::Ok).await;
        if matches!(how, Exit::Panic) {
            for _ in 0..50 {
                if !matches!(again, Err(AppError::Busy { .. })) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                again = exit(&locker, &name, Exit::Ok).await;
            }
        }
        assert!(matches!(again, Ok("end")), "{how:?}: {again:?}");
    }
}

#[distributed_lock(key = "slow:<id>", locker = locker)]
async fn slow(
    locker: &Locker,
    id: u32,
    entered: &AtomicBool,
    finished: &AtomicBool,
) -> Result<(), lockattr::Error> {
    entered.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(20)).await;
    finished.store(true, Ordering::SeqCst);
    Ok(())
}

#[tokio::test]
async fn dropping_the_callers_future_releases_the_lock() {
    let server = RedisServer::start();
    let locker = connect(&server).await;
    let entered = AtomicBool::new(false);
    let finished = AtomicBool::new(false);

    let mut call = Box::pin(slow(&locker, 1, &entered, &finished));
    // Poll the call until its body runs, then drop it (what `select!`, `timeout` and a closed
    // HTTP connection do).
    tokio::select! {
        _ = &mut call => panic!("the call should still be running"),
        entered_in_time = eventually(Duration::from_secs(2), || entered.load(Ordering::SeqCst)) => {
            assert!(entered_in_time, "the body did not start");
        }
    }
    assert!(held(&server, "slow:1"), "the body runs under the lock");
    drop(call);
    assert!(!finished.load(Ordering::SeqCst));
    // The default lease is 30 s: seeing the key go within 2 s means it was released, not expired.
    assert!(
        eventually(Duration::from_secs(2), || !held(&server, "slow:1")).await,
        "lock not released after cancellation: {:?}",
        server.keys()
    );
}

#[distributed_lock(key = "busy:<id>", wait = "150ms", locker = locker)]
async fn busy(locker: &Locker, id: u32, ran: &AtomicBool) -> Result<(), AppError> {
    ran.store(true, Ordering::SeqCst);
    Ok(())
}

#[tokio::test]
async fn wait_timeout_converts_through_from_without_running_the_body() {
    let server = RedisServer::start();
    let holder = connect(&server).await;
    let caller = connect(&server).await;
    let guard = holder.lock("busy:9").await.unwrap();

    let ran = AtomicBool::new(false);
    let started = Instant::now();
    let outcome = busy(&caller, 9, &ran).await;
    let waited = started.elapsed();
    match outcome {
        Err(AppError::Busy { key }) => assert_eq!(key, "busy:9"),
        other => panic!("expected AppError::Busy, got {other:?}"),
    }
    assert!(!ran.load(Ordering::SeqCst), "the body ran without the lock");
    assert!(
        waited >= Duration::from_millis(140) && waited < Duration::from_secs(3),
        "waited {waited:?} for a 150 ms wait"
    );

    guard.release().await.unwrap();
    busy(&caller, 9, &ran).await.unwrap();
    assert!(ran.load(Ordering::SeqCst));
}

struct User {
    name: String,
}

#[distributed_lock(key = "party:<id>:<user.name>:<<raw>", locker = locker)]
async fn rendered(
    locker: &Locker,
    server: &RedisServer,
    id: i64,
    user: &User,
) -> Result<Vec<String>, lockattr::Error> {
    Ok(server.keys())
}

#[tokio::test]
async fn the_rendered_key_is_the_documented_one() {
    let server = RedisServer::start();
    let locker = connect(&server).await;
    let plain = User { name: "ann".into() };
    let keys = rendered(&locker, &server, 42, &plain).await.unwrap();
    assert!(
        keys.contains(&"lock:{party:42:ann:<raw>}".to_owned()),
        "{keys:?}"
    );
    // In a substituted value, `:` (and `%`, braces, control characters) are escaped, so a value
    // cannot forge another key or break out of the hash tag.
    let tricky = User {
        name: "a:b{c}%".into(),
    };
    let keys = rendered(&locker, &server, -1, &tricky).await.unwrap();
    assert!(
        keys.contains(&"lock:{party:-1:a%3Ab%7Bc%7D%25:<raw>}".to_owned()),
        "{keys:?}"
    );
}

struct Service {
    locker: Locker,
}

impl Service {
    #[distributed_lock(key = "which", locker = self.locker)]
    async fn which(
        &self,
        a: &RedisServer,
        b: &RedisServer,
    ) -> Result<(bool, bool), lockattr::Error> {
        Ok((held(a, "which"), held(b, "which")))
    }
}

#[distributed_lock(key = "default:<n>", wait = "2s")]
async fn with_default(n: u32, server: &RedisServer, ran: &AtomicBool) -> Result<bool, AppError> {
    ran.store(true, Ordering::SeqCst);
    Ok(held(server, &format!("default:{n}")))
}

#[tokio::test]
async fn explicit_locker_is_used_instead_of_the_default() {
    let _default = DEFAULT_LOCKER.lock().await;
    let default_server = RedisServer::start();
    let own_server = RedisServer::start();
    lockattr::set_default(connect(&default_server).await);

    let service = Service {
        locker: connect(&own_server).await,
    };
    let (in_default, in_own) = service.which(&default_server, &own_server).await.unwrap();
    lockattr::clear_default();
    assert!(in_own, "the lock was not taken on `self.locker`'s Redis");
    assert!(
        !in_default,
        "the lock was taken on the default locker's Redis"
    );
}

#[tokio::test]
async fn the_default_locker_is_used_and_its_absence_is_an_error() {
    let _default = DEFAULT_LOCKER.lock().await;
    let server = RedisServer::start();

    lockattr::clear_default();
    let ran = AtomicBool::new(false);
    match with_default(1, &server, &ran).await {
        Err(AppError::Lock(lockattr::Error::NotConfigured)) => {}
        other => panic!("expected NotConfigured, got {other:?}"),
    }
    assert!(!ran.load(Ordering::SeqCst), "the body ran without a locker");

    lockattr::set_default(connect(&server).await);
    let outcome = with_default(1, &server, &ran).await;
    lockattr::clear_default();
    assert!(
        outcome.unwrap(),
        "the lock was not in the default locker's Redis"
    );
    assert!(ran.load(Ordering::SeqCst));
}

struct Ledger {
    locker: Locker,
}

impl Ledger {
    #[distributed_lock(key = "account:<id>", wait = "2s", locker = self.locker)]
    async fn outer(&self, id: u32) -> Result<(Option<u64>, Option<u64>), lockattr::Error> {
        let mine = lockattr::fencing_token().await.ok();
        // Same key, same task: re-enters instead of waiting 2 s for itself.
        let nested = self.inner(id).await?;
        assert_eq!(lockattr::fencing_token().await.ok(), mine);
        Ok((mine, nested))
    }

    #[distributed_lock(key = "account:<id>", wait = "2s", locker = self.locker)]
    async fn inner(&self, id: u32) -> Result<Option<u64>, lockattr::Error> {
        Ok(lockattr::fencing_token().await.ok())
    }
}

#[tokio::test]
async fn nested_calls_reenter_and_see_the_fencing_token() {
    let server = RedisServer::start();
    let ledger = Ledger {
        locker: connect(&server).await,
    };
    assert_eq!(lockattr::fencing_token().await.ok(), None);

    let started = Instant::now();
    let (outer, nested) = tokio::time::timeout(Duration::from_secs(5), ledger.outer(1))
        .await
        .expect("a nested call for a held key deadlocked")
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "re-entry waited"
    );
    let first = outer.expect("the body sees a fencing token");
    assert_eq!(
        nested,
        Some(first),
        "the nested call runs under the same lock"
    );

    // Each acquisition gets a larger token.
    let second = ledger.inner(1).await.unwrap().unwrap();
    assert!(second > first, "{second} <= {first}");
    assert_eq!(lockattr::fencing_token().await.ok(), None);
    assert!(!held(&server, "account:1"));
}

#[distributed_lock(key = "fixed:<id>", lease = "600ms", renew = false, locker = locker)]
async fn outlives_its_lease(
    locker: &Locker,
    id: u32,
    finished: &AtomicBool,
) -> Result<(), AppError> {
    tokio::time::sleep(Duration::from_secs(5)).await;
    finished.store(true, Ordering::SeqCst);
    Ok(())
}

#[distributed_lock(key = "renewed:<id>", lease = "900ms", locker = locker)]
async fn loses_its_key(
    locker: &Locker,
    id: u32,
    entered: &AtomicBool,
    finished: &AtomicBool,
) -> Result<(), AppError> {
    entered.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(5)).await;
    finished.store(true, Ordering::SeqCst);
    Ok(())
}

#[tokio::test]
async fn a_lost_lock_cancels_the_body() {
    let server = RedisServer::start();
    let locker = connect(&server).await;

    // A fixed lease that runs out under the body.
    let finished = AtomicBool::new(false);
    let started = Instant::now();
    let outcome = outlives_its_lease(&locker, 1, &finished).await;
    assert!(matches!(outcome, Err(AppError::Lost)), "{outcome:?}");
    assert!(
        !finished.load(Ordering::SeqCst),
        "the body went on without the lock"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "cancelled only after {:?}",
        started.elapsed()
    );

    // A renewed lease whose key is deleted behind the holder's back.
    let entered = AtomicBool::new(false);
    let finished = AtomicBool::new(false);
    let call = loses_its_key(&locker, 2, &entered, &finished);
    let sabotage = async {
        assert!(eventually(Duration::from_secs(2), || entered.load(Ordering::SeqCst)).await);
        let _: () = redis::cmd("DEL")
            .arg("lock:{renewed:2}")
            .query(&mut server.conn())
            .unwrap();
    };
    let started = Instant::now();
    let (outcome, ()) = tokio::join!(call, sabotage);
    assert!(matches!(outcome, Err(AppError::Lost)), "{outcome:?}");
    assert!(
        !finished.load(Ordering::SeqCst),
        "the body went on without the lock"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "cancelled only after {:?}",
        started.elapsed()
    );
}

#[async_trait::async_trait]
trait Room {
    async fn enter(&self, room: u32, hold: Duration) -> Result<(), AppError>;
}

#[async_trait::async_trait]
impl Room for Parties {
    #[distributed_lock(key = "room:<room>", wait = "10s", locker = self.locker)]
    async fn enter(&self, room: u32, hold: Duration) -> Result<(), AppError> {
        assert!(lockattr::fencing_token().await.ok().is_some());
        self.seen.visit(hold).await;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_trait_methods_are_locked_too() {
    let server = RedisServer::start();
    let parties = Arc::new(Parties {
        locker: connect(&server).await,
        seen: Concurrency::default(),
    });
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let parties = Arc::clone(&parties);
            tokio::spawn(async move { parties.enter(3, Duration::from_millis(40)).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(parties.seen.runs.load(Ordering::SeqCst), 4);
    assert_eq!(
        parties.seen.max.load(Ordering::SeqCst),
        1,
        "two bodies for the same key ran at the same time"
    );
    // And through a trait object.
    let room: Arc<dyn Room + Send + Sync> = parties;
    room.enter(3, Duration::ZERO).await.unwrap();
    assert!(!held(&server, "room:3"));
}

#[distributed_lock(key = "traced:<n>", locker = locker)]
#[tracing::instrument(skip(locker, server))]
async fn lock_then_span(
    locker: &Locker,
    server: &RedisServer,
    n: u32,
) -> Result<bool, lockattr::Error> {
    Ok(held(server, &format!("traced:{n}")))
}

#[tracing::instrument(skip(locker, server))]
#[distributed_lock(key = "traced:<n>", locker = locker)]
async fn span_then_lock(
    locker: &Locker,
    server: &RedisServer,
    n: u32,
) -> Result<bool, lockattr::Error> {
    Ok(held(server, &format!("traced:{n}")))
}

#[tokio::test]
async fn stacked_with_tracing_instrument_in_either_order() {
    let server = RedisServer::start();
    let locker = connect(&server).await;
    assert!(lock_then_span(&locker, &server, 1).await.unwrap());
    assert!(span_then_lock(&locker, &server, 2).await.unwrap());
    assert!(!held(&server, "traced:1") && !held(&server, "traced:2"));
}

/// What the body's own locker knows of the body's token before the body asks for it.
#[distributed_lock(key = "fenced:<id>", fenced = FENCED, locker = locker)]
async fn token_before_asking(locker: &Locker, id: u32) -> Result<(Option<u64>, u64), AppError> {
    let known = locker
        .inspect(&format!("fenced:{id}"))
        .await?
        .and_then(|info| info.fencing_token);
    Ok((known, lockattr::fencing_token().await?))
}

const FENCED: bool = true;

#[distributed_lock(key = "fenced:<id>", locker = locker)]
async fn unfenced_token_before_asking(
    locker: &Locker,
    id: u32,
) -> Result<(Option<u64>, u64), AppError> {
    let known = locker
        .inspect(&format!("fenced:{id}"))
        .await?
        .and_then(|info| info.fencing_token);
    Ok((known, lockattr::fencing_token().await?))
}

#[tokio::test]
async fn fenced_takes_the_token_with_the_lock() {
    let server = RedisServer::start();
    let locker = connect(&server).await;
    // `fenced = ..` (here a constant): the token came with the acquisition, before the body
    // asked, and it is the one the body gets.
    let (known, token) = token_before_asking(&locker, 1).await.unwrap();
    assert_eq!(known, Some(token));
    // Without it the uncontended lock has none until the body asks; then it is larger still.
    let (known, later) = unfenced_token_before_asking(&locker, 1).await.unwrap();
    assert_eq!(known, None);
    assert!(later > token, "{later} after {token}");
    assert!(!held(&server, "fenced:1"));
}
