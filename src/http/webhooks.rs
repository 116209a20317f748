//! `POST /webhooks/{vapi,retell,elevenlabs}`: call lifecycle events from the platforms.
//!
//! Signatures are verified on the raw bytes before anything is parsed; a missing or wrong one is
//! a 401 with nothing stored. An accepted event is stored raw, once per dedupe key, together
//! with its processing job in one transaction, and acknowledged at once: closing the session and
//! the analysis run from the durable queue, never on the request path.

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use chrono::Utc;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::analysis;
use crate::config::Secret;
use crate::error::ApiError;
use crate::http::RawBody;
use crate::journal::{Op, WebhookWrite, WriteError, Written};
use crate::state::AppState;
use crate::storage::{NewWebhookEvent, Platform, Recorded};
use crate::webhooks::{self, EventKind, SignatureError, VapiAuthHeaders};

/// The webhook routes (authenticated by signatures, not API keys).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/webhooks/vapi", post(vapi))
        .route("/webhooks/retell", post(retell))
        .route("/webhooks/elevenlabs", post(elevenlabs))
}

async fn vapi(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<axum::Json<Value>, ApiError> {
    let secret = &state.settings.webhooks.vapi_secret;
    let auth = VapiAuthHeaders {
        x_vapi_secret: header(&headers, "x-vapi-secret"),
        signature: header(&headers, "x-signature"),
        timestamp: header(&headers, "x-timestamp"),
    };
    let now_ms = Utc::now().timestamp_millis();
    authenticate(
        &state,
        secret,
        "webhooks.vapi_secret",
        Platform::Vapi,
        || webhooks::verify_vapi(&auth, &body, secret.expose(), now_ms),
    )?;
    accept(&state, Platform::Vapi, &body).await
}

async fn retell(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<axum::Json<Value>, ApiError> {
    let key = &state.settings.webhooks.retell_api_key;
    let signature = header(&headers, "x-retell-signature");
    let now_ms = Utc::now().timestamp_millis();
    authenticate(
        &state,
        key,
        "webhooks.retell_api_key",
        Platform::Retell,
        || webhooks::verify_retell(signature.as_deref(), &body, key.expose(), now_ms),
    )?;
    accept(&state, Platform::Retell, &body).await
}

async fn elevenlabs(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<axum::Json<Value>, ApiError> {
    let secret = &state.settings.webhooks.elevenlabs_secret;
    let signature = header(&headers, "elevenlabs-signature");
    let now_secs = Utc::now().timestamp();
    authenticate(
        &state,
        secret,
        "webhooks.elevenlabs_secret",
        Platform::ElevenLabs,
        || webhooks::verify_elevenlabs(signature.as_deref(), &body, secret.expose(), now_secs),
    )?;
    accept(&state, Platform::ElevenLabs, &body).await
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Verifies the signature. Without a configured secret the route answers 503, except in dev
/// mode, where unsigned webhooks are accepted (for local testing only).
fn authenticate(
    state: &AppState,
    secret: &Secret,
    key: &str,
    platform: Platform,
    verify: impl FnOnce() -> Result<(), SignatureError>,
) -> Result<(), ApiError> {
    if secret.is_empty() {
        if state.settings.server.dev_mode() {
            return Ok(());
        }
        return Err(ApiError::Unavailable(format!(
            "{platform} webhooks are not configured: set `{key}` to accept them"
        )));
    }
    verify().map_err(|e| {
        metrics::counter!("redial_webhooks_rejected_total", "platform" => platform.as_str())
            .increment(1);
        tracing::warn!(%platform, error = %e, "webhook signature rejected");
        ApiError::Unauthorized(format!("webhook signature rejected: {e}"))
    })
}

/// Stores the event (and its job) once, warms the session of a starting call, acknowledges.
///
/// Called only once the signature is verified on the raw bytes. Lone surrogate escapes, which
/// no parser or store accepts, are then replaced (`\ufffd`) so that a signed event is never
/// refused for them; the body is parsed and stored as repaired. Text the stores cannot hold
/// (NUL) is replaced by the storage layer.
async fn accept(
    state: &AppState,
    platform: Platform,
    body: &[u8],
) -> Result<axum::Json<Value>, ApiError> {
    let body = webhooks::replace_lone_surrogates(body);
    let event = webhooks::parse(platform, &body)
        .map_err(|e| ApiError::bad_request(format!("malformed webhook: {e}")))?;
    let payload = String::from_utf8_lossy(&body).into_owned();
    let record = NewWebhookEvent {
        event_id: Uuid::now_v7(),
        platform,
        event_type: event.event_type.clone(),
        call_key: event.call_key.clone(),
        dedupe_key: event.dedupe_key.clone(),
        payload,
        received_at: Utc::now(),
    };
    let job = analysis::job_for(&event, state.settings.analysis.max_attempts);
    let store = state.store.record_webhook(&record, job.as_ref());
    let journal = || {
        vec![Op::Webhook(WebhookWrite {
            event: record.clone(),
            job: job.clone(),
        })]
    };
    let recorded = match state.engine.journal().write(store, journal).await {
        Ok(Written::Stored(recorded)) => Some(recorded),
        // The database is away: the event is on disk and will be stored when it returns.
        Ok(Written::Journaled) => None,
        Err(WriteError::Rejected(e)) => return Err(e.into()),
        Err(e @ WriteError::Unavailable { .. }) => {
            tracing::error!(%platform, error = %e, "a webhook could be neither stored nor journaled");
            return Err(ApiError::Unavailable(
                "the database is unavailable; send the webhook again later".into(),
            ));
        }
    };
    let outcome = match recorded {
        Some(Recorded::Duplicate) => "duplicate",
        Some(Recorded::New(_)) => "accepted",
        None => "journaled",
    };
    metrics::counter!("redial_webhooks_total", "platform" => platform.as_str(), "outcome" => outcome).increment(1);
    tracing::info!(%platform, event_type = %event.event_type, outcome, "webhook");
    if recorded.is_some_and(Recorded::is_new) && event.kind == EventKind::CallStarted {
        warm_session(state, &event).await;
    }
    Ok(axum::Json(json!({})))
}

/// Creates the session of a call that just started, so its first turn finds it ready.
async fn warm_session(state: &AppState, event: &webhooks::WebhookEvent) {
    let Some(call_key) = &event.call_key else {
        return;
    };
    let identity = analysis::identity_of(event, call_key, &state.settings.memory.default_region);
    if let Err(e) = state.engine.load_call_context(&identity).await {
        tracing::warn!(error = %e, "warming the session of a started call failed");
    }
}
