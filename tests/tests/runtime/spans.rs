//! The `lock.acquire` and `lock.held` tracing spans: their fields, their place in the trace,
//! and the outcome each way an acquisition or a critical section can end records.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockattr::{Error, Locker};
use lockattr_tests::RedisServer;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Instrument as _;
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::support::*;

/// One span as the capturing layer saw it.
#[derive(Debug, Clone, Default)]
struct Captured {
    name: String,
    parent: Option<String>,
    fields: BTreeMap<String, String>,
    closed: bool,
}

/// A layer that keeps every span: its name, its parent's name, every field recorded.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<(u64, Captured)>>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut c = Captured {
            name: attrs.metadata().name().to_owned(),
            parent: ctx
                .span(id)
                .and_then(|s| s.parent())
                .map(|p| p.name().to_owned()),
            ..Captured::default()
        };
        attrs.record(&mut Fields(&mut c.fields));
        self.0.lock().unwrap().push((id.into_u64(), c));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        let mut all = self.0.lock().unwrap();
        if let Some((_, c)) = all.iter_mut().rev().find(|(i, _)| *i == id.into_u64()) {
            values.record(&mut Fields(&mut c.fields));
        }
    }

    fn on_close(&self, id: Id, _ctx: Context<'_, S>) {
        let mut all = self.0.lock().unwrap();
        if let Some((_, c)) = all.iter_mut().rev().find(|(i, _)| *i == id.into_u64()) {
            c.closed = true;
        }
    }
}

impl Capture {
    /// Installs the layer for this thread (the tests run on a current-thread runtime, so the
    /// lock's background tasks report to it too).
    fn install() -> (Capture, tracing::subscriber::DefaultGuard) {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::registry().with(capture.clone());
        let guard = tracing::subscriber::set_default(subscriber);
        (capture, guard)
    }

    fn named(&self, name: &str) -> Vec<Captured> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, c)| c.name == name)
            .map(|(_, c)| c.clone())
            .collect()
    }

    fn only(&self, name: &str) -> Captured {
        let all = self.named(name);
        assert_eq!(all.len(), 1, "one `{name}` span: {all:#?}");
        all.into_iter().next().unwrap()
    }
}

fn field<'a>(span: &'a Captured, name: &str) -> &'a str {
    span.fields
        .get(name)
        .unwrap_or_else(|| panic!("`{}` has no field `{name}`: {span:#?}", span.name))
}

#[tokio::test]
async fn an_acquisition_and_its_critical_section_are_sibling_spans_with_their_fields() {
    let server = RedisServer::start();
    let locker = locker(&server).await;
    let (capture, _guard) = Capture::install();
    let token = async {
        let guard = locker
            .lock("order:7")
            .wait(Duration::from_secs(3))
            .await
            .unwrap();
        let token = guard.fencing_token().await.unwrap();
        guard.release().await.unwrap();
        token
    }
    .instrument(tracing::info_span!("request"))
    .await;

    let acquire = capture.only("lock.acquire");
    assert_eq!(acquire.parent.as_deref(), Some("request"));
    assert_eq!(field(&acquire, "key"), "order:7");
    assert_eq!(field(&acquire, "wait"), "3s");
    assert_eq!(field(&acquire, "outcome"), "acquired");
    // Taken by the fast path: the token is issued later, when the holder asks for it, and
    // recorded on the `lock.held` span then.
    assert_eq!(acquire.fields.get("fencing_token"), None, "{acquire:?}");
    assert!(field(&acquire, "waited").ends_with('s'), "{acquire:?}");
    assert!(acquire.closed, "the acquisition's span ends with it");

    let held = capture.only("lock.held");
    assert_eq!(
        held.parent.as_deref(),
        Some("request"),
        "the critical section follows the acquisition, it is not inside it"
    );
    assert_eq!(field(&held, "key"), "order:7");
    assert_eq!(field(&held, "fencing_token"), token.to_string());
    assert_eq!(field(&held, "outcome"), "released");
    assert!(field(&held, "held").ends_with('s'), "{held:?}");
    assert!(held.closed, "released: the span ends");
}

#[tokio::test]
async fn a_run_body_runs_inside_the_held_span() {
    let server = RedisServer::start();
    let locker = locker(&server).await;
    let (capture, _guard) = Capture::install();
    let inner_token = locker
        .lock("stock:1")
        .run(async {
            let _inner = tracing::info_span!("write_stock").entered();
            lockattr::fencing_token().await.unwrap()
        })
        .await
        .unwrap();

    let body = capture.only("write_stock");
    assert_eq!(body.parent.as_deref(), Some("lock.held"));
    let held = capture.only("lock.held");
    assert_eq!(field(&held, "fencing_token"), inner_token.to_string());
    assert_eq!(field(&held, "outcome"), "released");
    // A nested run for the same key enters at once and opens no spans of its own.
    let before = capture.named("lock.acquire").len();
    locker
        .lock("stock:1")
        .run(async {
            locker.lock("stock:1").run(async {}).await.unwrap();
        })
        .await
        .unwrap();
    assert_eq!(capture.named("lock.acquire").len(), before + 1);
}

#[tokio::test]
async fn a_timeout_a_cancelled_wait_a_loss_and_a_dropped_guard_record_their_outcomes() {
    let server = RedisServer::start();
    let holder = locker(&server).await;
    let other: Locker = locker(&server).await;
    let (capture, _guard) = Capture::install();

    // Timed out: the acquisition's outcome, and no critical section.
    let busy = holder.lock("k").await.unwrap();
    let err = other
        .lock("k")
        .wait(Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    let timed_out = capture
        .named("lock.acquire")
        .into_iter()
        .find(|s| s.fields.get("outcome").map(String::as_str) == Some("timed out"))
        .expect("a timed-out acquisition");
    assert!(timed_out.closed);
    assert!(!timed_out.fields.contains_key("fencing_token"));

    // Cancelled: the acquire future dropped while it waits.
    let cancelled = tokio::time::timeout(Duration::from_millis(100), other.lock("k")).await;
    assert!(cancelled.is_err(), "still busy");
    assert!(
        capture
            .named("lock.acquire")
            .iter()
            .any(|s| s.closed && s.fields.get("outcome").map(String::as_str) == Some("cancelled")),
        "{:#?}",
        capture.named("lock.acquire")
    );

    // Dropped: released in the background.
    drop(busy);
    assert!(
        eventually(Duration::from_secs(5), || raw(&server, "lock:{k}")
            .is_none())
        .await,
        "the dropped guard's release"
    );
    let dropped = capture.only("lock.held");
    assert_eq!(field(&dropped, "outcome"), "dropped");
    assert!(dropped.closed);

    // Lost: a fixed lease runs out while the body runs; `run` returns `Lost`.
    let lost = holder
        .lock("short")
        .lease(Duration::from_millis(200))
        .renew(false)
        .run(tokio::time::sleep(Duration::from_secs(2)))
        .await;
    assert!(matches!(lost, Err(Error::Lost { .. })), "{lost:?}");
    let held: Vec<_> = capture
        .named("lock.held")
        .into_iter()
        .filter(|s| s.fields.get("key").map(String::as_str) == Some("short"))
        .collect();
    assert_eq!(held.len(), 1, "{held:#?}");
    assert_eq!(field(&held[0], "outcome"), "lost");
    assert!(held[0].closed);
}
