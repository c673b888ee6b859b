//! axum handlers with extractor patterns; axum requires `Send` handler futures.

#![deny(warnings)]

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use lockattr::{distributed_lock, Locker};
use serde::Deserialize;

#[derive(Clone)]
pub struct App {
    locker: Locker,
    shard: u8,
}

#[derive(Deserialize)]
pub struct Join {
    name: String,
}

#[derive(Deserialize)]
pub struct Opts {
    region: String,
}

pub enum AppError {
    Busy,
    Internal,
}

impl From<lockattr::Error> for AppError {
    fn from(e: lockattr::Error) -> Self {
        match e {
            lockattr::Error::Timeout { .. } => AppError::Busy,
            _ => AppError::Internal,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match self {
            AppError::Busy => StatusCode::CONFLICT.into_response(),
            AppError::Internal => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        }
    }
}

#[distributed_lock(key = "party:<party_id>:<app.shard>:<opts.region>", wait = "2s", locker = app.locker)]
async fn join(
    State(app): State<App>,
    Path(party_id): Path<i64>,
    Query(opts): Query<Opts>,
    Json(body): Json<Join>,
) -> Result<Json<String>, AppError> {
    Ok(Json(format!("{} joined {party_id}", body.name)))
}

#[distributed_lock(key = "pair:<a>:<b>", locker = state.locker)]
async fn pair(
    State(state): State<App>,
    Path((a, b)): Path<(u32, u32)>,
) -> Result<String, AppError> {
    Ok((a + b).to_string())
}

fn main() {
    // Building the router type-checks that the handlers are valid axum handlers (their futures
    // are `Send`); it needs no Redis.
    let _routes: Router<App> = Router::new()
        .route("/parties/{party_id}/join", post(join))
        .route("/pair/{a}/{b}", post(pair));
}
