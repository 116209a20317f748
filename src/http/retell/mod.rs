//! `GET /retell/llm-websocket/{call_id}`: Retell's custom-LLM WebSocket (docs/protocols/retell.md
//! §1; setup: the README's "Retell"), the sibling of the SSE transport in `chat.rs`.
//!
//! Retell sends no headers, so with `server.api_keys` set the key travels in the URL: as a path
//! segment before the call id (`/retell/llm-websocket/{key}/{call_id}`, which survives however
//! Retell appends the call id) or as a `key` query parameter. A request without a valid key is
//! refused with 401 before the upgrade; in dev mode (no keys) only loopback peers are served.
//! Neither the key nor the query string is logged (spans record the route template only).

mod greeting;
mod outbox;
mod protocol;
mod respond;
mod session;

use std::net::SocketAddr;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::response::Response;
use axum::routing::get;
use serde::Deserialize;

use crate::config::Settings;
use crate::engine::has_configured_model;
use crate::error::ApiError;
use crate::http::auth;
use crate::state::AppState;

/// Largest Retell message accepted, in bytes. Every event carries the whole transcript with
/// word timings, so long calls send large frames.
pub const MAX_MESSAGE_BYTES: usize = 32 << 20;

/// Largest single WebSocket frame accepted, in bytes: the same as a message, because Retell sends
/// every event as one unfragmented frame; a smaller frame limit would cut the socket on
/// messages the message limit allows.
pub const MAX_FRAME_BYTES: usize = MAX_MESSAGE_BYTES;

/// Where the key goes, for the 401 message.
const KEY_HINT: &str = "Retell sends no headers: put the key in the URL, /retell/llm-websocket/<key>/{call_id} \
     or ?key=<key>";

/// The Retell routes. They authenticate by URL key, so they sit outside the bearer-auth layer.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/retell/llm-websocket/{call_id}", get(connect))
        .route(
            "/retell/llm-websocket/{key}/{call_id}",
            get(connect_with_key),
        )
}

#[derive(Debug, Default, Deserialize)]
struct KeyQuery {
    #[serde(default)]
    key: Option<String>,
}

/// `/retell/llm-websocket/{call_id}[?key=…]`
async fn connect(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(call_id): Path<String>,
    query: Result<Query<KeyQuery>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let key = query.ok().and_then(|Query(q)| q.key);
    accept(&state, peer, key.as_deref(), call_id, upgrade)
}

/// `/retell/llm-websocket/{key}/{call_id}`
async fn connect_with_key(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((key, call_id)): Path<(String, String)>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    accept(&state, peer, Some(&key), call_id, upgrade)
}

/// Authenticates, validates, and upgrades; the connection is then served in a task that
/// shutdown waits for.
fn accept(
    state: &AppState,
    peer: SocketAddr,
    key: Option<&str>,
    call_id: String,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    auth::authorize(&state.settings.server.api_keys, peer, key, KEY_HINT)?;
    validate_call_id(&call_id, state.settings.limits.max_id_bytes)?;
    require_model(&state.settings)?;
    let upgrade =
        upgrade.map_err(|e| ApiError::bad_request(format!("expected a WebSocket upgrade: {e}")))?;
    let state = state.clone();
    Ok(upgrade
        .max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .on_failed_upgrade(|e| tracing::warn!(error = %e, "Retell WebSocket upgrade failed"))
        .on_upgrade(move |socket| {
            let tasks = state.tasks.clone();
            tasks.track_future(session::serve(socket, state, call_id))
        }))
}

/// The call id of the URL: printable, and at most `max_id_bytes` long (Retell's are 32
/// characters; `limits.max_id_bytes`).
fn validate_call_id(call_id: &str, max_id_bytes: usize) -> Result<(), ApiError> {
    if call_id.len() > max_id_bytes {
        return Err(ApiError::BadRequest {
            message: format!(
                "`call_id` is {} bytes long; ids are at most {max_id_bytes} bytes \
                 (limits.max_id_bytes)",
                call_id.len()
            ),
            param: Some("call_id".into()),
            code: "string_above_max_length",
        });
    }
    if call_id.trim().is_empty() || call_id.chars().any(char::is_control) {
        return Err(ApiError::invalid_param(
            "call_id",
            "the call id must be printable characters",
        ));
    }
    Ok(())
}

/// Retell sends no model, so one must be configured (`upstream.model` or its fallbacks, or an
/// assistant's own). This refuses every call when none is; a call whose own agent has none is
/// refused once `call_details` name the agent (`session.rs`).
fn require_model(settings: &Settings) -> Result<(), ApiError> {
    let upstream = &settings.upstream;
    let assistants = settings
        .assistants
        .iter()
        .any(|a| has_configured_model(upstream, a));
    if !has_configured_model(upstream, settings.assistant("")) && !assistants {
        return Err(ApiError::Unavailable(
            "Retell sends no model: set `upstream.model` (or the assistant's `model`) to serve \
             Retell calls"
                .into(),
        ));
    }
    Ok(())
}
