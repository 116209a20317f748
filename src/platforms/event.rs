//! What a platform reports about a call, in one shape for every platform: [`WebhookEvent`].
//! Each platform's parser (`webhooks/<name>.rs`) builds it from that platform's body; the job
//! queue carries it (serialised) to the post-call work.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::identity::Identity;
use super::platform::Platform;

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

impl WebhookEvent {
    /// The identity of the call the event names, for finding or creating its session; `None`
    /// when it names no call.
    pub fn identity(&self, default_region: &str) -> Option<Identity> {
        let call_key = self.call_key.clone()?;
        Some(Identity::of_call(
            self.platform,
            call_key,
            self.caller_number.as_deref(),
            self.assistant_id.clone(),
            default_region,
        ))
    }
}
