//! Platform webhooks: one table ([`PLATFORMS`]) saying, for each platform, where its secret is
//! configured, how its signature is checked and how its body is parsed; and the dispatcher
//! ([`receive`]) that `POST /webhooks/{platform}` calls with the raw body.
//!
//! A webhook's path: the entry of the URL's platform (none: 404) → its secret (unset: 503, or
//! accepted unsigned in dev mode) → its signature, checked on the raw bytes before anything
//! parses them (wrong or missing: 401, nothing stored) → lone surrogate escapes repaired
//! ([`replace_lone_surrogates`]) → parsed into a [`WebhookEvent`] (malformed: 400) → stored
//! raw, once per dedupe key, with its processing job in one transaction (or journaled while the
//! database is away; 503 when even the journal cannot take it) → acknowledged. Closing the
//! session and the analysis run later from the job queue, never on the request path.
//!
//! ```
//! use redial::platforms::{EventKind, Platform};
//! use redial::webhooks;
//!
//! let body = br#"{"event":"call_ended"}"#; // the raw bytes, never re-serialised JSON
//! let header = "v=1700000000000,d=07024cabe7dd8f6d1c6e4a8324ca92c812e6ad4a7ee506c04f7e462e3321823e";
//! let now_ms = 1_700_000_000_000;
//! webhooks::verify_retell(Some(header), body, "test-api-key", now_ms)?; // error → 401
//! let body = webhooks::replace_lone_surrogates(body); // only after the signature check
//! let event = webhooks::parse(Platform::Retell, &body)?; // error → 400
//! assert_eq!(event.kind, EventKind::CallEnded);
//! assert_eq!(event.dedupe_key, "retell:call_ended:-");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Dedupe keys are `"{platform}:{event_type}:{call_key or -}"`. Two refinements keep distinct
//! events apart: Vapi `status-update` inserts its status (`vapi:status-update:ended:<id>`), and
//! any other Vapi message that is not a lifecycle event (`conversation-update`, `tool-calls`,
//! `speech-update`…, which repeat within a call) appends its `message.timestamp`. Retell's
//! repeated `transcript_updated` keeps one key per call: only the latest matters.
//!
//! # Adding a platform
//!
//! Its `webhooks/<name>.rs` holds `verify` (the signature check, on the raw body and the
//! request headers) and `parse` (its body into a [`WebhookEvent`]); one [`Entry`] in
//! [`PLATFORMS`] wires them to the platform and its secret's config key. The route, the
//! dispatcher, storage and the job queue need no change. The rest of a new platform (its
//! [`Platform`] variant, its chat-path ids) is in `platforms/` (see its module docs).

mod elevenlabs;
mod escapes;
mod event;
mod json;
mod retell;
pub mod signature;
mod vapi;

use axum::Json;
use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::analysis;
use crate::config::{Secret, WebhookSettings};
use crate::error::ApiError;
use crate::journal::{Op, WebhookWrite, WriteError, Written};
use crate::platforms::{EventKind, Platform, WebhookEvent};
use crate::state::AppState;
use crate::storage::{NewWebhookEvent, Recorded};

pub use escapes::replace_lone_surrogates;
pub use event::ParseError;
pub use signature::{
    SignatureError, VapiAuthHeaders, verify_elevenlabs, verify_retell, verify_vapi,
};

/// A platform's signature check: the request headers, the raw body, the secret, the time now.
pub type Verify = fn(&HeaderMap, &[u8], &str, DateTime<Utc>) -> Result<(), SignatureError>;

/// How redial receives one platform's webhooks.
pub struct Entry {
    /// The platform; its stored spelling is the URL's `{platform}`.
    pub platform: Platform,
    /// The config key of the secret, named in the 503 answered while it is unset.
    pub secret_key: &'static str,
    /// Where the secret is in the settings.
    pub secret: fn(&WebhookSettings) -> &Secret,
    /// Checks the signature on the raw body (never parsed before) with the secret, at `now`.
    pub verify: Verify,
    /// Normalises a verified body (repaired of lone surrogates, read as JSON).
    pub parse: fn(&Value) -> Result<WebhookEvent, ParseError>,
}

/// Every platform that sends webhooks. A platform not listed (`generic`) has none: 404.
pub const PLATFORMS: [Entry; 3] = [
    Entry {
        platform: Platform::Vapi,
        secret_key: "webhooks.vapi_secret",
        secret: |w| &w.vapi_secret,
        verify: vapi::verify,
        parse: vapi::parse,
    },
    Entry {
        platform: Platform::Retell,
        secret_key: "webhooks.retell_api_key",
        secret: |w| &w.retell_api_key,
        verify: retell::verify,
        parse: retell::parse,
    },
    Entry {
        platform: Platform::ElevenLabs,
        secret_key: "webhooks.elevenlabs_secret",
        secret: |w| &w.elevenlabs_secret,
        verify: elevenlabs::verify,
        parse: elevenlabs::parse,
    },
];

/// The entry of the platform whose stored spelling is `name`.
pub fn entry(name: &str) -> Option<&'static Entry> {
    PLATFORMS.iter().find(|e| e.platform.as_str() == name)
}

/// Parses and normalises a webhook body of `platform`. Call it after the signature check.
pub fn parse(platform: Platform, body: &[u8]) -> Result<WebhookEvent, ParseError> {
    let entry = PLATFORMS
        .iter()
        .find(|e| e.platform == platform)
        .ok_or(ParseError::UnsupportedPlatform(platform))?;
    parse_with(entry, body)
}

fn parse_with(entry: &Entry, body: &[u8]) -> Result<WebhookEvent, ParseError> {
    let root: Value = serde_json::from_slice(body).map_err(ParseError::NotJson)?;
    (entry.parse)(&root)
}

/// Receives one webhook sent to `/webhooks/{platform}` (`platform` as in the URL): checks it,
/// stores it with its job once, warms the session of a starting call, acknowledges (`{}`).
pub async fn receive(
    state: &AppState,
    platform: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Json<Value>, ApiError> {
    let names = || PLATFORMS.map(|e| e.platform.as_str()).join(", ");
    let entry = entry(platform).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no such webhook platform; webhooks are received for {}",
            names()
        ))
    })?;
    authenticate(state, entry, headers, body)?;
    accept(state, entry, body).await
}

/// Verifies the signature. Without a configured secret the route answers 503, except in dev
/// mode, where unsigned webhooks are accepted (for local testing only).
fn authenticate(
    state: &AppState,
    entry: &Entry,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), ApiError> {
    let platform = entry.platform;
    let secret = (entry.secret)(&state.settings.webhooks);
    if secret.is_empty() {
        if state.settings.server.dev_mode() {
            return Ok(());
        }
        return Err(ApiError::Unavailable(format!(
            "{platform} webhooks are not configured: set `{}` to accept them",
            entry.secret_key
        )));
    }
    (entry.verify)(headers, body, secret.expose(), Utc::now()).map_err(|e| {
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
async fn accept(state: &AppState, entry: &Entry, body: &[u8]) -> Result<Json<Value>, ApiError> {
    let platform = entry.platform;
    let body = replace_lone_surrogates(body);
    let event = parse_with(entry, &body)
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
    Ok(Json(json!({})))
}

/// Creates the session of a call that just started, so its first turn finds it ready.
async fn warm_session(state: &AppState, event: &WebhookEvent) {
    let Some(identity) = event.identity(&state.settings.memory.default_region) else {
        return;
    };
    if let Err(e) = state.engine.load_call_context(&identity).await {
        tracing::warn!(error = %e, "warming the session of a started call failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_platform_but_generic_has_one_entry_named_by_its_spelling() {
        for platform in Platform::ALL {
            let found = entry(platform.as_str()).map(|e| e.platform);
            let expected = (platform != Platform::Generic).then_some(platform);
            assert_eq!(found, expected, "{platform}");
        }
        assert!(entry("Vapi").is_none() && entry("").is_none());
    }

    #[test]
    fn rejects_non_json_and_bare_values() {
        for platform in [Platform::Vapi, Platform::Retell, Platform::ElevenLabs] {
            assert!(matches!(
                parse(platform, b"not json"),
                Err(ParseError::NotJson(_))
            ));
            assert!(matches!(
                parse(platform, b"[1,2]"),
                Err(ParseError::MissingEnvelope(_))
            ));
            assert!(matches!(
                parse(platform, b"{}"),
                Err(ParseError::MissingEnvelope(_))
            ));
        }
    }

    #[test]
    fn generic_has_no_webhooks() {
        assert!(matches!(
            parse(Platform::Generic, b"{}"),
            Err(ParseError::UnsupportedPlatform(Platform::Generic))
        ));
    }

    #[test]
    fn error_messages_do_not_echo_the_body() {
        let error = parse(Platform::Vapi, b"{\"secret\": ").err();
        let text = error.map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(text, "webhook body is not valid JSON");
    }
}
