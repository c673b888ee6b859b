//! The service's error type and its HTTP mapping.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// Everything a party request can fail with.
///
/// `From<lockattr::Error>` is what lets `#[distributed_lock]` return its own failures (lock
/// timeout, lost lease, Redis unreachable) through the function's `Result`.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// No party with this id.
    #[error("party {0} does not exist")]
    NotFound(i64),
    /// The party has no room left.
    #[error("party {party_id} is full (capacity {capacity})")]
    Full {
        /// The party.
        party_id: i64,
        /// Its capacity.
        capacity: i64,
    },
    /// The request itself is wrong (empty name, negative capacity, ...).
    #[error("{0}")]
    BadRequest(String),
    /// The distributed lock could not be had, or was lost while the join ran.
    #[error(transparent)]
    Lock(#[from] lockattr::Error),
    /// The database failed.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// The JSON body of every error response: `{"error": "party_full", "message": "..."}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable, machine-readable code.
    pub error: String,
    /// A sentence for humans.
    pub message: String,
}

impl AppError {
    /// The HTTP status and the stable error code of this error.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            AppError::NotFound(_) => (StatusCode::NOT_FOUND, "party_not_found"),
            AppError::Full { .. } => (StatusCode::CONFLICT, "party_full"),
            AppError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            AppError::Lock(e) => match e {
                // Waited the whole `wait` without getting the lock: the party is busy, not
                // full; the client may retry.
                lockattr::Error::Timeout { .. } => {
                    (StatusCode::SERVICE_UNAVAILABLE, "lock_timeout")
                }
                // The lease ran out under the join, which was cancelled at its next await.
                lockattr::Error::Lost { .. } => (StatusCode::SERVICE_UNAVAILABLE, "lock_lost"),
                // Redis is unreachable: no lock, so no join.
                lockattr::Error::Redis(_) => (StatusCode::SERVICE_UNAVAILABLE, "lock_unavailable"),
                // Misconfiguration (no default locker, bad key): a bug in the service.
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "lock_error"),
            },
            AppError::Db(_) => (StatusCode::INTERNAL_SERVER_ERROR, "database_error"),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::warn!(error = %self, code, "request failed");
        }
        let body = ErrorBody {
            error: code.to_owned(),
            message: self.to_string(),
        };
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
