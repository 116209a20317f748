//! Retell webhooks, `{"event":…,"call":{…}}` (docs/protocols/retell.md §3). Retell's demos read the
//! call object under `data`, so that key is accepted too; `call` wins when both are objects.

use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::event::{ParseError, dedupe_key};
use super::json::{
    bool_at, collect_strings, epoch_ms_at, f64_at, first_array, i64_at, object_at, span_ms, str_at,
};
use super::signature::{SignatureError, header, verify_retell};
use crate::platforms::{CallEnd, EventKind, Platform, PlatformAnalysisData, WebhookEvent};

static NO_CALL: Value = Value::Null;

/// Checks a Retell webhook's `X-Retell-Signature` ([`verify_retell`]).
pub(super) fn verify(
    headers: &HeaderMap,
    body: &[u8],
    api_key: &str,
    now: DateTime<Utc>,
) -> Result<(), SignatureError> {
    let signature = header(headers, "x-retell-signature");
    verify_retell(signature, body, api_key, now.timestamp_millis())
}

/// Normalises a Retell webhook.
pub(super) fn parse(root: &Value) -> Result<WebhookEvent, ParseError> {
    let event_type = str_at(root, "/event").ok_or(ParseError::MissingEnvelope("event"))?;
    let call = object_at(root, "/call")
        .or_else(|| object_at(root, "/data"))
        .unwrap_or(&NO_CALL);
    let kind = classify(&event_type);
    let call_key = str_at(call, "/call_id");
    let ends = matches!(kind, EventKind::CallEnded | EventKind::PlatformAnalysis);
    Ok(WebhookEvent {
        platform: Platform::Retell,
        kind,
        caller_number: caller_number(call),
        assistant_id: str_at(call, "/agent_id"),
        ended: ends.then(|| call_end(call)),
        analysis: analysis(call),
        dedupe_key: dedupe_key(Platform::Retell, &event_type, &[call_key.as_deref()]),
        call_key,
        event_type,
    })
}

fn classify(event_type: &str) -> EventKind {
    match event_type {
        "call_started" => EventKind::CallStarted,
        "call_ended" => EventKind::CallEnded,
        "call_analyzed" => EventKind::PlatformAnalysis,
        _ => EventKind::Other,
    }
}

/// The remote party: `from_number` on inbound calls (and when the direction is unknown),
/// `to_number` on outbound ones. Web calls have neither.
fn caller_number(call: &Value) -> Option<String> {
    match str_at(call, "/direction").as_deref() {
        Some("outbound") => str_at(call, "/to_number"),
        _ => str_at(call, "/from_number"),
    }
}

fn call_end(call: &Value) -> CallEnd {
    let started_at = epoch_ms_at(call, "/start_timestamp");
    let ended_at = epoch_ms_at(call, "/end_timestamp");
    CallEnd {
        ended_reason: str_at(call, "/disconnection_reason"),
        duration_ms: i64_at(call, "/duration_ms")
            .filter(|ms| *ms >= 0)
            .or_else(|| span_ms(started_at, ended_at)),
        started_at,
        ended_at,
        // `call_cost.combined_cost` is in cents.
        cost: f64_at(call, "/call_cost/combined_cost").map(|cents| cents / 100.0),
        transcript: str_at(call, "/transcript"),
        messages: first_array(call, &["/transcript_object", "/transcript_with_tool_calls"]),
        recording_urls: Value::Object(collect_strings(
            call,
            &[
                ("recording_url", "/recording_url"),
                (
                    "recording_multi_channel_url",
                    "/recording_multi_channel_url",
                ),
                ("scrubbed_recording_url", "/scrubbed_recording_url"),
                (
                    "scrubbed_recording_multi_channel_url",
                    "/scrubbed_recording_multi_channel_url",
                ),
            ],
        )),
        platform_summary: str_at(call, "/call_analysis/call_summary"),
    }
}

fn analysis(call: &Value) -> Option<PlatformAnalysisData> {
    let raw = object_at(call, "/call_analysis")?;
    Some(PlatformAnalysisData {
        summary: str_at(raw, "/call_summary"),
        sentiment: str_at(raw, "/user_sentiment"),
        successful: bool_at(raw, "/call_successful"),
        raw: raw.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_body(_: Platform, body: &[u8]) -> Result<WebhookEvent, ParseError> {
        parse(&serde_json::from_slice(body).map_err(ParseError::NotJson)?)
    }

    const CALL_ID: &str = "Jabr9TXYYJHfvl6Syypi88rdAHYHmcq6";
    const AGENT_ID: &str = "oBeDLoLOeuAbiuaMFXRtDOLriTJ5tSxD";

    fn fixture(body: &str) -> WebhookEvent {
        parse_body(Platform::Retell, body.as_bytes()).unwrap()
    }

    #[test]
    fn call_started() {
        let e = fixture(include_str!(
            "../../tests/fixtures/retell/call_started.json"
        ));
        assert_eq!(e.kind, EventKind::CallStarted);
        assert_eq!(e.call_key.as_deref(), Some(CALL_ID));
        assert_eq!(e.caller_number.as_deref(), Some("+12137771234"));
        assert_eq!(e.assistant_id.as_deref(), Some(AGENT_ID));
        assert_eq!((e.ended, e.analysis), (None, None));
        assert_eq!(e.dedupe_key, format!("retell:call_started:{CALL_ID}"));
    }

    #[test]
    fn call_ended_under_call() {
        let e = fixture(include_str!("../../tests/fixtures/retell/call_ended.json"));
        assert_eq!(e.kind, EventKind::CallEnded);
        assert_eq!(e.caller_number.as_deref(), Some("+12137771234"));
        assert_eq!(e.dedupe_key, format!("retell:call_ended:{CALL_ID}"));
        assert_eq!(e.analysis, None);
        let end = e.ended.unwrap();
        assert_eq!(end.ended_reason.as_deref(), Some("user_hangup"));
        assert_eq!(
            end.started_at.unwrap().timestamp_millis(),
            1_714_608_475_945
        );
        assert_eq!(end.ended_at.unwrap().timestamp_millis(), 1_714_608_491_736);
        assert_eq!(end.duration_ms, Some(15_791));
        assert_eq!(end.cost, Some(0.1275));
        assert!(end.transcript.unwrap().starts_with("Agent: Hi John"));
        assert_eq!(end.messages.unwrap().as_array().map(Vec::len), Some(2));
        let urls = end.recording_urls;
        assert_eq!(
            urls["recording_url"],
            "https://dxc03zgurdly9.cloudfront.net/Jabr9/recording.wav"
        );
        assert_eq!(
            urls["recording_multi_channel_url"],
            "https://dxc03zgurdly9.cloudfront.net/Jabr9/recording_multichannel.wav"
        );
        assert_eq!(urls.as_object().map(|o| o.len()), Some(2));
        assert_eq!(end.platform_summary, None);
    }

    #[test]
    fn call_ended_under_data_outbound() {
        let e = fixture(include_str!(
            "../../tests/fixtures/retell/call_ended_data.json"
        ));
        assert_eq!(e.kind, EventKind::CallEnded);
        assert_eq!(e.call_key.as_deref(), Some("call_0f5e2a9b7c"));
        assert_eq!(
            e.caller_number.as_deref(),
            Some("+14155550142"),
            "outbound: to_number"
        );
        let end = e.ended.unwrap();
        assert_eq!(
            end.duration_ms,
            Some(42_000),
            "computed from the timestamps"
        );
        assert_eq!(end.ended_reason.as_deref(), Some("agent_hangup"));
        assert_eq!(end.recording_urls, serde_json::json!({}));
        assert_eq!(end.cost, None);
    }

    #[test]
    fn call_analyzed_carries_end_and_analysis() {
        let e = fixture(include_str!(
            "../../tests/fixtures/retell/call_analyzed.json"
        ));
        assert_eq!(e.kind, EventKind::PlatformAnalysis);
        assert_eq!(e.dedupe_key, format!("retell:call_analyzed:{CALL_ID}"));
        let summary =
            "The caller booked a cleaning for Thursday at 10am and confirmed their email.";
        let end = e.ended.unwrap();
        assert_eq!(end.duration_ms, Some(15_791));
        assert_eq!(end.platform_summary.as_deref(), Some(summary));
        let a = e.analysis.unwrap();
        assert_eq!(a.summary.as_deref(), Some(summary));
        assert_eq!(a.sentiment.as_deref(), Some("Positive"));
        assert_eq!(a.successful, Some(true));
        assert_eq!(a.raw["custom_analysis_data"]["appointment_day"], "Thursday");
    }

    #[test]
    fn other_events_and_missing_fields() {
        let e = fixture(
            r#"{"event":"transcript_updated","call":{"call_id":"c1","transcript_with_tool_calls":[]}}"#,
        );
        assert_eq!(e.kind, EventKind::Other);
        assert_eq!(e.ended, None);
        assert_eq!(e.dedupe_key, "retell:transcript_updated:c1");
        let bare = fixture(r#"{"event":"call_ended"}"#);
        assert_eq!(bare.kind, EventKind::CallEnded);
        assert_eq!(bare.call_key, None);
        assert_eq!(bare.dedupe_key, "retell:call_ended:-");
        assert_eq!(bare.ended, Some(CallEnd::default()));
        let odd = fixture(
            r#"{"event":"call_ended","call":{"call_id":5,"from_number":null,"start_timestamp":"x","call_cost":12,"call_analysis":[]}}"#,
        );
        assert_eq!(
            (odd.call_key, odd.caller_number, odd.analysis),
            (None, None, None)
        );
        assert_eq!(odd.ended, Some(CallEnd::default()));
    }

    #[test]
    fn missing_event_is_an_envelope_error() {
        for body in [
            r#"{"call":{"call_id":"c1"}}"#,
            r#"{"event":null}"#,
            r#""call_ended""#,
        ] {
            assert!(
                matches!(
                    parse_body(Platform::Retell, body.as_bytes()),
                    Err(ParseError::MissingEnvelope("event"))
                ),
                "{body}"
            );
        }
    }
}
