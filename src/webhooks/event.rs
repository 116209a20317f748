//! One normalised shape for the webhooks of every platform, and [`parse`], which builds it from
//! a raw body.
//!
//! Parsing is lenient: unknown fields are ignored, and an optional field that is absent, `null`
//! or of the wrong type is treated as absent. Only a body that is not JSON, or that lacks the
//! platform's envelope (the event type), is an error.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;

use super::{elevenlabs, retell, vapi};
use crate::storage::Platform;

/// A platform webhook, normalised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEvent {
    /// The platform that sent it.
    pub platform: Platform,
    /// The platform's own type string, e.g. `end-of-call-report`, `call_ended`,
    /// `post_call_transcription`.
    pub event_type: String,
    /// What the event means for a call session.
    pub kind: EventKind,
    /// The platform's call id: Vapi `message.call.id`, Retell `call_id`, ElevenLabs
    /// `conversation_id`.
    pub call_key: Option<String>,
    /// The caller's number as sent (not normalised to E.164).
    pub caller_number: Option<String>,
    /// The platform's assistant / agent id.
    pub assistant_id: Option<String>,
    /// End-of-call data, for [`EventKind::CallEnded`] and Retell's `call_analyzed`.
    pub ended: Option<CallEnd>,
    /// The platform's own post-call analysis, when it sent one.
    pub analysis: Option<PlatformAnalysisData>,
    /// The idempotency key for storing the event, `"{platform}:{event_type}:{call_key or -}"`.
    /// Vapi `status-update` inserts the status (`vapi:status-update:ended:<id>`), and any other
    /// Vapi informational message appends its `timestamp` (see the module docs of `webhooks`).
    pub dedupe_key: String,
}

/// What an event means for a call session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The call connected (Vapi `status-update` `in-progress`, Retell `call_started`).
    CallStarted,
    /// The call is over (Vapi `end-of-call-report` or `status-update` `ended`, Retell
    /// `call_ended`, ElevenLabs `post_call_transcription`).
    CallEnded,
    /// The platform's analysis of an ended call (Retell `call_analyzed`).
    PlatformAnalysis,
    /// Anything else: informational, stored but not acted on.
    Other,
}

/// What a platform reports about an ended call. Every field is optional: platforms omit them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallEnd {
    /// Why the call ended (Vapi `endedReason`, Retell `disconnection_reason`, ElevenLabs
    /// `termination_reason`).
    pub ended_reason: Option<String>,
    /// When the call started.
    pub started_at: Option<DateTime<Utc>>,
    /// When the call ended.
    pub ended_at: Option<DateTime<Utc>>,
    /// How long it lasted, in milliseconds.
    pub duration_ms: Option<i64>,
    /// The call's cost: USD for Vapi (`cost`) and Retell (`call_cost.combined_cost`, converted
    /// from cents); ElevenLabs `metadata.cost` as sent, which is in credits, not currency.
    pub cost: Option<f64>,
    /// The transcript as readable text.
    pub transcript: Option<String>,
    /// The platform's structured transcript (an array in its own shape).
    pub messages: Option<Value>,
    /// The recording URLs found, keyed by the platform's own field names; `{}` when none.
    pub recording_urls: Value,
    /// The platform's summary of the call.
    pub platform_summary: Option<String>,
}

impl Default for CallEnd {
    fn default() -> Self {
        Self {
            ended_reason: None,
            started_at: None,
            ended_at: None,
            duration_ms: None,
            cost: None,
            transcript: None,
            messages: None,
            recording_urls: Value::Object(Map::new()),
            platform_summary: None,
        }
    }
}

/// A platform's own analysis of a call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlatformAnalysisData {
    /// The call summary.
    pub summary: Option<String>,
    /// The caller's sentiment as the platform words it (Retell: `Positive`, `Negative`, …).
    pub sentiment: Option<String>,
    /// Whether the platform judged the call successful; `None` when it did not say or said
    /// "unknown".
    pub successful: Option<bool>,
    /// The platform's analysis object as received (`null` when only a summary was found).
    pub raw: Value,
}

/// Why a webhook body could not be parsed (answer 400).
#[derive(Debug, Error)]
pub enum ParseError {
    /// The body is not JSON.
    #[error("webhook body is not valid JSON")]
    NotJson(#[source] serde_json::Error),
    /// The body is JSON but lacks the platform's envelope; names the missing field.
    #[error("webhook body has no `{0}`")]
    MissingEnvelope(&'static str),
    /// The platform sends no webhooks that redial understands.
    #[error("no webhook format is defined for platform `{0}`")]
    UnsupportedPlatform(Platform),
}

/// Parses and normalises a webhook body of `platform`. Call it after the signature checks.
pub fn parse(platform: Platform, body: &[u8]) -> Result<WebhookEvent, ParseError> {
    let root: Value = serde_json::from_slice(body).map_err(ParseError::NotJson)?;
    match platform {
        Platform::Vapi => vapi::parse(&root),
        Platform::Retell => retell::parse(&root),
        Platform::ElevenLabs => elevenlabs::parse(&root),
        Platform::Generic => Err(ParseError::UnsupportedPlatform(platform)),
    }
}

/// `"{platform}:{segment}:{segment}…"`, with `-` for an absent call key.
pub(super) fn dedupe_key(platform: Platform, event_type: &str, rest: &[Option<&str>]) -> String {
    let mut key = format!("{platform}:{event_type}");
    for segment in rest {
        key.push(':');
        key.push_str(segment.unwrap_or("-"));
    }
    key
}

/// The success flag of a string verdict: `true`/`success` → true, `false`/`failure` → false.
pub(super) fn verdict(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "success" | "successful" | "pass" => Some(true),
        "false" | "failure" | "failed" | "fail" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn dedupe_key_uses_a_dash_for_absent_segments() {
        assert_eq!(
            dedupe_key(Platform::Retell, "call_ended", &[Some("abc")]),
            "retell:call_ended:abc"
        );
        assert_eq!(
            dedupe_key(Platform::Vapi, "status-update", &[None, None]),
            "vapi:status-update:-:-"
        );
    }

    #[test]
    fn verdicts() {
        assert_eq!(verdict("True"), Some(true));
        assert_eq!(verdict("success"), Some(true));
        assert_eq!(verdict("failure"), Some(false));
        assert_eq!(verdict("unknown"), None);
        assert_eq!(verdict("8"), None);
    }

    #[test]
    fn error_messages_do_not_echo_the_body() {
        let error = parse(Platform::Vapi, b"{\"secret\": ").err();
        let text = error.map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(text, "webhook body is not valid JSON");
    }
}
