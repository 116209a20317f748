//! `POST /webhooks/{platform}`: call lifecycle events from the platforms, authenticated by their
//! signatures (not API keys). The handler only extracts; [`crate::webhooks::receive`] checks,
//! stores and acknowledges.

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::post;
use serde_json::Value;

use super::extract::RawBody;
use crate::error::ApiError;
use crate::state::AppState;
use crate::webhooks;

/// The webhook route, one for every platform in the table of [`crate::webhooks::PLATFORMS`].
pub fn router() -> Router<AppState> {
    Router::new().route("/webhooks/{platform}", post(receive))
}

async fn receive(
    State(state): State<AppState>,
    platform: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<axum::Json<Value>, ApiError> {
    // A segment that is not UTF-8 once percent-decoded names no platform either: 404.
    let platform = platform.map(|Path(p)| p).unwrap_or_default();
    webhooks::receive(&state, &platform, &headers, &body).await
}
