//! Vapi server messages, `{"message":{"type":…,"call":{…}}}`: docs/protocols/vapi-elevenlabs.md §2.
//!
//! Both the documented locations (`artifact.*`, `analysis.summary`, `startedAt`/`endedAt`) and
//! the older top-level ones (`transcript`, `messages`, `recordingUrl`, `summary`,
//! `durationMs`/`durationSeconds`/`durationMinutes`) are read; the documented one wins.

use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::event::{ParseError, dedupe_key, verdict};
use super::json::{
    collect_strings, f64_at, first_array, first_str, i64_at, object_at, rfc3339_at, span_ms, str_at,
};
use super::signature::{SignatureError, VapiAuthHeaders, header, verify_vapi};
use crate::platforms::{CallEnd, EventKind, Platform, PlatformAnalysisData, WebhookEvent};

const END_OF_CALL_REPORT: &str = "end-of-call-report";
const STATUS_UPDATE: &str = "status-update";

/// Checks a Vapi server message's `X-Vapi-Secret`, or its `x-signature` and `x-timestamp`
/// ([`verify_vapi`]).
pub(super) fn verify(
    headers: &HeaderMap,
    body: &[u8],
    secret: &str,
    now: DateTime<Utc>,
) -> Result<(), SignatureError> {
    let auth = VapiAuthHeaders {
        x_vapi_secret: header(headers, "x-vapi-secret").map(str::to_owned),
        signature: header(headers, "x-signature").map(str::to_owned),
        timestamp: header(headers, "x-timestamp").map(str::to_owned),
    };
    verify_vapi(&auth, body, secret, now.timestamp_millis())
}

/// Normalises a Vapi server message.
pub(super) fn parse(root: &Value) -> Result<WebhookEvent, ParseError> {
    let msg = object_at(root, "/message").ok_or(ParseError::MissingEnvelope("message"))?;
    let event_type = str_at(msg, "/type").ok_or(ParseError::MissingEnvelope("message.type"))?;
    let status = str_at(msg, "/status").filter(|_| event_type == STATUS_UPDATE);
    let kind = classify(&event_type, status.as_deref());
    let call_key = first_str(msg, &["/call/id", "/call/callId"]);
    let dedupe_key = vapi_dedupe_key(
        msg,
        &event_type,
        kind,
        status.as_deref(),
        call_key.as_deref(),
    );
    Ok(WebhookEvent {
        platform: Platform::Vapi,
        kind,
        caller_number: first_str(msg, &["/customer/number", "/call/customer/number"]),
        assistant_id: first_str(msg, &["/call/assistantId", "/assistant/id"]),
        ended: (kind == EventKind::CallEnded).then(|| call_end(msg)),
        analysis: (event_type == END_OF_CALL_REPORT)
            .then(|| analysis(msg))
            .flatten(),
        call_key,
        dedupe_key,
        event_type,
    })
}

fn classify(event_type: &str, status: Option<&str>) -> EventKind {
    match (event_type, status) {
        (END_OF_CALL_REPORT, _) | (STATUS_UPDATE, Some("ended")) => EventKind::CallEnded,
        (STATUS_UPDATE, Some("in-progress")) => EventKind::CallStarted,
        _ => EventKind::Other,
    }
}

/// `vapi:{type}:{call}`; `status-update` inserts the status, and informational messages (which
/// repeat within a call: `conversation-update`, `speech-update`, `tool-calls`…) append their
/// `timestamp` so that distinct messages do not collapse into one.
fn vapi_dedupe_key(
    msg: &Value,
    event_type: &str,
    kind: EventKind,
    status: Option<&str>,
    call_key: Option<&str>,
) -> String {
    if event_type == STATUS_UPDATE {
        return dedupe_key(Platform::Vapi, event_type, &[status, call_key]);
    }
    let timestamp = i64_at(msg, "/timestamp").map(|t| t.to_string());
    match (kind, timestamp.as_deref()) {
        (EventKind::Other, Some(ts)) => {
            dedupe_key(Platform::Vapi, event_type, &[call_key, Some(ts)])
        }
        _ => dedupe_key(Platform::Vapi, event_type, &[call_key]),
    }
}

fn call_end(msg: &Value) -> CallEnd {
    let started_at = rfc3339_at(msg, "/startedAt").or_else(|| rfc3339_at(msg, "/call/startedAt"));
    let ended_at = rfc3339_at(msg, "/endedAt").or_else(|| rfc3339_at(msg, "/call/endedAt"));
    CallEnd {
        ended_reason: first_str(msg, &["/endedReason", "/call/endedReason"]),
        duration_ms: span_ms(started_at, ended_at).or_else(|| legacy_duration_ms(msg)),
        started_at,
        ended_at,
        cost: f64_at(msg, "/cost").or_else(|| f64_at(msg, "/call/cost")),
        transcript: first_str(msg, &["/artifact/transcript", "/transcript"]),
        messages: first_array(msg, &["/artifact/messages", "/messages"]),
        recording_urls: recording_urls(msg),
        platform_summary: summary(msg),
    }
}

/// `durationMs`, `durationSeconds` or `durationMinutes` of older or mirrored payloads.
fn legacy_duration_ms(msg: &Value) -> Option<i64> {
    let scaled = |pointer: &str, factor: f64| f64_at(msg, pointer).map(|n| (n * factor).round());
    let ms = scaled("/durationMs", 1.0)
        .or_else(|| scaled("/durationSeconds", 1000.0))
        .or_else(|| scaled("/durationMinutes", 60_000.0))?;
    (ms >= 0.0).then_some(ms as i64)
}

/// `recordingUrl`, `stereoRecordingUrl` (from `artifact`, else top level) and the
/// `artifact.recording` object as sent.
fn recording_urls(msg: &Value) -> Value {
    let mut urls = collect_strings(
        msg,
        &[
            ("recordingUrl", "/recordingUrl"),
            ("stereoRecordingUrl", "/stereoRecordingUrl"),
            ("recordingUrl", "/artifact/recordingUrl"),
            ("stereoRecordingUrl", "/artifact/stereoRecordingUrl"),
        ],
    );
    if let Some(recording) = object_at(msg, "/artifact/recording") {
        urls.insert("recording".to_owned(), recording.clone());
    }
    Value::Object(urls)
}

fn summary(msg: &Value) -> Option<String> {
    first_str(msg, &["/analysis/summary", "/summary"])
}

/// `analysis` (summary, `successEvaluation` when it is a pass/fail verdict) or a legacy
/// top-level `summary`.
fn analysis(msg: &Value) -> Option<PlatformAnalysisData> {
    let raw = object_at(msg, "/analysis");
    let summary = summary(msg);
    if raw.is_none() && summary.is_none() {
        return None;
    }
    Some(PlatformAnalysisData {
        summary,
        sentiment: None,
        successful: raw.and_then(success_evaluation),
        raw: raw.cloned().unwrap_or(Value::Null),
    })
}

/// `successEvaluation` is a boolean, or a string whose meaning depends on the assistant's
/// rubric; only pass/fail verdicts are read, numeric or letter scores are not.
fn success_evaluation(analysis: &Value) -> Option<bool> {
    match analysis.get("successEvaluation")? {
        Value::Bool(b) => Some(*b),
        Value::String(s) => verdict(s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_body(_: Platform, body: &[u8]) -> Result<WebhookEvent, ParseError> {
        parse(&serde_json::from_slice(body).map_err(ParseError::NotJson)?)
    }

    fn fixture(body: &str) -> WebhookEvent {
        parse_body(Platform::Vapi, body.as_bytes()).unwrap()
    }

    #[test]
    fn end_of_call_report_current_shape() {
        let e = fixture(include_str!(
            "../../tests/fixtures/vapi/end-of-call-report.json"
        ));
        assert_eq!(e.event_type, "end-of-call-report");
        assert_eq!(e.kind, EventKind::CallEnded);
        assert_eq!(
            e.call_key.as_deref(),
            Some("c0a8b1e2-5d3f-4e6a-9b7c-1f2e3d4c5b6a")
        );
        assert_eq!(e.caller_number.as_deref(), Some("+14155550123"));
        assert_eq!(
            e.assistant_id.as_deref(),
            Some("5b1e7c2a-0d4f-4f3e-8a9b-2c3d4e5f6a7b")
        );
        assert_eq!(
            e.dedupe_key,
            "vapi:end-of-call-report:c0a8b1e2-5d3f-4e6a-9b7c-1f2e3d4c5b6a"
        );
        let end = e.ended.unwrap();
        assert_eq!(end.ended_reason.as_deref(), Some("customer-ended-call"));
        assert_eq!(end.duration_ms, Some(191_500));
        assert_eq!(
            end.started_at.unwrap().to_rfc3339(),
            "2026-08-20T17:00:01+00:00"
        );
        assert_eq!(end.cost, Some(0.1234));
        assert!(end.transcript.unwrap().starts_with("AI: Hi, this is Ava"));
        assert_eq!(end.messages.unwrap().as_array().map(Vec::len), Some(3));
        assert_eq!(
            end.recording_urls["recordingUrl"],
            "https://storage.vapi.ai/c0a8-mono.wav"
        );
        assert_eq!(
            end.recording_urls["stereoRecordingUrl"],
            "https://storage.vapi.ai/c0a8-stereo.wav"
        );
        assert_eq!(
            end.recording_urls["recording"]["mono"]["customerUrl"],
            "https://storage.vapi.ai/c0a8-customer.wav"
        );
        let summary = "The caller booked a cleaning for Thursday at 10am.";
        assert_eq!(end.platform_summary.as_deref(), Some(summary));
        let analysis = e.analysis.unwrap();
        assert_eq!(analysis.summary.as_deref(), Some(summary));
        assert_eq!(analysis.successful, Some(true));
        assert_eq!(analysis.sentiment, None);
        assert_eq!(analysis.raw["structuredData"]["purpose"], "cleaning");
    }

    #[test]
    fn end_of_call_report_legacy_top_level_shape() {
        let e = fixture(include_str!(
            "../../tests/fixtures/vapi/end-of-call-report-legacy.json"
        ));
        assert_eq!(e.kind, EventKind::CallEnded);
        assert_eq!(
            e.caller_number.as_deref(),
            Some("+14155550199"),
            "call.customer fallback"
        );
        assert_eq!(
            e.assistant_id.as_deref(),
            Some("asst_legacy_1"),
            "assistant.id fallback"
        );
        let end = e.ended.unwrap();
        assert_eq!(end.started_at, None);
        assert_eq!(end.duration_ms, Some(73_400), "durationSeconds fallback");
        assert_eq!(
            end.transcript.as_deref(),
            Some("AI: Hello?\nUser: Hi, I need to reschedule.")
        );
        assert_eq!(end.messages.unwrap().as_array().map(Vec::len), Some(2));
        assert_eq!(
            end.recording_urls,
            serde_json::json!({"recordingUrl": "https://storage.vapi.ai/legacy.wav"})
        );
        assert_eq!(
            end.platform_summary.as_deref(),
            Some("Caller wants to reschedule.")
        );
        assert_eq!(end.cost, None, "a string cost is ignored");
        let analysis = e.analysis.unwrap();
        assert_eq!(
            analysis.summary.as_deref(),
            Some("Caller wants to reschedule.")
        );
        assert_eq!(analysis.raw, Value::Null);
        assert_eq!(analysis.successful, None);
    }

    #[test]
    fn status_updates() {
        let started = fixture(include_str!(
            "../../tests/fixtures/vapi/status-update-in-progress.json"
        ));
        assert_eq!(started.kind, EventKind::CallStarted);
        assert_eq!(started.ended, None);
        assert_eq!(started.analysis, None);
        assert_eq!(started.caller_number.as_deref(), Some("+14155550123"));
        assert_eq!(
            started.dedupe_key,
            "vapi:status-update:in-progress:c0a8b1e2-5d3f-4e6a-9b7c-1f2e3d4c5b6a"
        );

        let ended = fixture(include_str!(
            "../../tests/fixtures/vapi/status-update-ended.json"
        ));
        assert_eq!(ended.kind, EventKind::CallEnded);
        assert_eq!(
            ended.dedupe_key,
            "vapi:status-update:ended:c0a8b1e2-5d3f-4e6a-9b7c-1f2e3d4c5b6a"
        );
        let end = ended.ended.unwrap();
        assert_eq!(
            end.ended_reason.as_deref(),
            Some("pipeline-error-custom-llm-llm-failed")
        );
        assert_eq!(end.recording_urls, serde_json::json!({}));
    }

    #[test]
    fn other_statuses_and_types_are_other() {
        let ringing = fixture(
            r#"{"message":{"type":"status-update","status":"ringing","call":{"id":"c1"}}}"#,
        );
        assert_eq!(ringing.kind, EventKind::Other);
        assert_eq!(ringing.dedupe_key, "vapi:status-update:ringing:c1");
        let no_status = fixture(r#"{"message":{"type":"status-update","call":{"id":"c1"}}}"#);
        assert_eq!(no_status.dedupe_key, "vapi:status-update:-:c1");

        let tools = fixture(include_str!("../../tests/fixtures/vapi/tool-calls.json"));
        assert_eq!(tools.kind, EventKind::Other);
        assert_eq!(
            tools.call_key.as_deref(),
            Some("c0a8b1e2-5d3f-4e6a-9b7c-1f2e3d4c5b6a")
        );
        assert_eq!(tools.ended, None);
        assert_eq!(
            tools.dedupe_key,
            "vapi:tool-calls:c0a8b1e2-5d3f-4e6a-9b7c-1f2e3d4c5b6a:1728393715369"
        );
    }

    #[test]
    fn minimal_and_mistyped_messages_parse() {
        let e = fixture(r#"{"message":{"type":"hang"}}"#);
        assert_eq!(e.call_key, None);
        assert_eq!(e.dedupe_key, "vapi:hang:-");
        let odd = fixture(
            r#"{"message":{"type":"end-of-call-report","call":{"id":7},"customer":"x","startedAt":5,
               "endedAt":"not a date","artifact":[],"analysis":"none","cost":"0.1","durationMs":-4}}"#,
        );
        let end = odd.ended.unwrap();
        assert_eq!((odd.call_key, odd.caller_number), (None, None));
        assert_eq!(
            (end.started_at, end.ended_at, end.duration_ms),
            (None, None, None)
        );
        assert_eq!((end.cost, end.transcript, end.messages), (None, None, None));
        assert_eq!(odd.analysis, None);
    }

    #[test]
    fn missing_envelope() {
        for body in [
            r#"{"type":"end-of-call-report"}"#,
            r#"{"message":{}}"#,
            r#"{"message":{"type":5}}"#,
            r#"{"message":"x"}"#,
        ] {
            assert!(
                matches!(
                    parse_body(Platform::Vapi, body.as_bytes()),
                    Err(ParseError::MissingEnvelope(_))
                ),
                "{body}"
            );
        }
    }
}
