//! The HTTP face of the party service, and the `party-service` process.
//!
//! | route | body | answers |
//! |---|---|---|
//! | `POST /parties` | `{"name": "..", "capacity": 8}` | 201 [`Party`] |
//! | `POST /parties/{id}/participants` | `{"name": ".."}` | 201 [`Participant`], 409 full, 404, 503 lock |
//! | `POST /parties/{id}/participants?lock=false` | same | the same join without the lock |
//! | `GET /parties/{id}` | | 200 [`PartyView`], 404 |
//! | `GET /health` | | 200 `ok` |
//!
//! Errors have a JSON body [`ErrorBody`](super::error::ErrorBody).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::serve::ListenerExt as _;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::db::Db;
use super::demo::redis::RedisTarget;
use super::error::AppError;
use super::service::{Participant, Party, PartyService, PartyView};

/// `POST /parties` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewParty {
    /// The party's name.
    pub name: String,
    /// How many participants it admits.
    pub capacity: i64,
}

/// `POST /parties/{id}/participants` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewParticipant {
    /// The participant's name.
    pub name: String,
}

/// `POST /parties/{id}/participants` query.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct JoinQuery {
    /// `false` runs the join without the distributed lock, to show the race.
    #[serde(default = "locked_by_default")]
    pub lock: bool,
}

fn locked_by_default() -> bool {
    true
}

/// The routes over `service`.
pub fn router(service: Arc<PartyService>) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/parties", post(create_party))
        .route("/parties/{id}", get(show_party))
        .route("/parties/{id}/participants", post(join_party))
        .with_state(service)
}

async fn create_party(
    State(service): State<Arc<PartyService>>,
    Json(body): Json<NewParty>,
) -> Result<(StatusCode, Json<Party>), AppError> {
    let party = service.create_party(body.name, body.capacity).await?;
    Ok((StatusCode::CREATED, Json(party)))
}

async fn show_party(
    State(service): State<Arc<PartyService>>,
    Path(id): Path<i64>,
) -> Result<Json<PartyView>, AppError> {
    Ok(Json(service.party(id).await?))
}

#[tracing::instrument(name = "join", skip_all, fields(party_id = party_id, lock = query.lock))]
async fn join_party(
    State(service): State<Arc<PartyService>>,
    Path(party_id): Path<i64>,
    Query(query): Query<JoinQuery>,
    Json(body): Json<NewParticipant>,
) -> Result<(StatusCode, Json<Participant>), AppError> {
    let participant = if query.lock {
        service.participate(party_id, body.name).await?
    } else {
        service.participate_unlocked(party_id, body.name).await?
    };
    Ok((StatusCode::CREATED, Json(participant)))
}

/// How a `party-service` process is configured.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Where to listen; port 0 picks a free one (printed on stdout).
    pub bind: SocketAddr,
    /// `postgres://...`, `sqlite:...` or a SQLite file path.
    pub database_url: String,
    /// The Redis holding the locks: one server or a cluster.
    pub redis: RedisTarget,
    /// Prefix of the lock keys in Redis (`<namespace>:{party:42}`).
    pub lock_namespace: String,
    /// Simulated work between the capacity check and the insert.
    pub think: Duration,
    /// Exit when stdin reaches end of file: a process started by the demo driver goes away
    /// with the driver even if the driver is killed with SIGKILL.
    pub exit_on_stdin_eof: bool,
}

/// The line `serve` prints on stdout once it accepts connections, followed by the address.
pub const LISTENING_PREFIX: &str = "party-service listening on http://";

/// Runs the service until SIGINT/SIGTERM (or stdin EOF, if configured).
///
/// Connects to the database and creates the schema, installs the process default
/// [`lockattr::Locker`] (on one Redis, or `Locker::cluster` on a Redis Cluster; which `#[distributed_lock]` on [`PartyService::participate`] uses),
/// binds, prints `party-service listening on http://<addr>` on stdout, and serves.
///
/// # Errors
/// When the database or Redis cannot be reached, or the address cannot be bound.
pub async fn serve(config: ServiceConfig) -> anyhow::Result<()> {
    let db = Db::connect(&config.database_url)
        .await
        .with_context(|| format!("connect to the database at {}", config.database_url))?;
    db.ensure_schema().await.context("create the schema")?;
    let locker = config
        .redis
        .locker()
        .namespace(&config.lock_namespace)
        .build()
        .await
        .with_context(|| format!("connect to Redis at {}", config.redis))?;
    lockattr::set_default(locker);

    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("bind {}", config.bind))?;
    let addr = listener.local_addr().context("local address")?;
    tracing::info!(
        %addr,
        database = db.kind(),
        redis = %config.redis,
        namespace = %config.lock_namespace,
        think_ms = config.think.as_millis(),
        "party-service ready"
    );
    {
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{LISTENING_PREFIX}{addr}").context("write to stdout")?;
        stdout.flush().context("flush stdout")?;
    }

    if config.exit_on_stdin_eof {
        tokio::spawn(exit_on_stdin_eof());
    }
    let service = Arc::new(PartyService::new(db.clone(), config.think));
    let listener = listener.tap_io(|tcp| {
        // Small request/response pairs: do not let Nagle hold them back.
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router(service))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serve")?;
    db.close().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}

async fn exit_on_stdin_eof() {
    use tokio::io::AsyncReadExt as _;
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    // Anything written to stdin is ignored; only EOF (or an error) matters.
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
    tracing::info!("stdin closed: the parent went away; exiting");
    std::process::exit(0);
}
