//! Liveness, readiness and metrics.

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::error::ApiError;
use crate::state::AppState;

/// How long readiness waits for the store.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /healthz`, `GET /readyz`, `GET /metrics`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// The process is alive.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// The store answers, writes are not failing, the outage journal's backlog is below
/// `database.journal_ready_max`, and the process is not shutting down.
async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    if state.shutdown.is_cancelled() {
        return Err(ApiError::Unavailable("shutting down".into()));
    }
    if let Err(reason) = state.engine.journal().readiness() {
        return Err(ApiError::Unavailable(reason));
    }
    match tokio::time::timeout(READY_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => Ok(Json(json!({
            "status": "ready",
            "store": state.store.backend(),
            "journal_backlog": state.engine.journal().backlog(),
        }))),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: store ping failed");
            Err(ApiError::Unavailable(format!(
                "{} store is not reachable",
                state.store.backend()
            )))
        }
        Err(_) => Err(ApiError::Unavailable(format!(
            "{} store did not answer within {READY_TIMEOUT:?}",
            state.store.backend()
        ))),
    }
}

/// Prometheus text format (admin keys only: see [`crate::http::access`]).
async fn metrics(State(state): State<AppState>) -> Response {
    metrics::counter!("redial_log_lines_dropped_total")
        .absolute(crate::telemetry::dropped_lines() as u64);
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
