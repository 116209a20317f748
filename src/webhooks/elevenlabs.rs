//! ElevenLabs post-call webhooks: `{"type":…,"event_timestamp":…,"data":{…}}`
//! (docs/protocols/vapi-elevenlabs.md §3.5). `post_call_transcription`'s `data` is shaped like GET
//! conversation; `post_call_audio` and `call_initiation_failure` are stored as `Other`.

use axum::http::HeaderMap;
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;

use super::event::{ParseError, dedupe_key, verdict};
use super::json::{f64_at, first_array, first_str, i64_at, object_at, str_at};
use super::signature::{SignatureError, header, verify_elevenlabs};
use crate::platforms::{CallEnd, EventKind, Platform, PlatformAnalysisData, WebhookEvent};

static NO_DATA: Value = Value::Null;

/// Checks an ElevenLabs webhook's `ElevenLabs-Signature` ([`verify_elevenlabs`]).
pub(super) fn verify(
    headers: &HeaderMap,
    body: &[u8],
    secret: &str,
    now: DateTime<Utc>,
) -> Result<(), SignatureError> {
    let signature = header(headers, "elevenlabs-signature");
    verify_elevenlabs(signature, body, secret, now.timestamp())
}

/// Normalises an ElevenLabs post-call webhook.
pub(super) fn parse(root: &Value) -> Result<WebhookEvent, ParseError> {
    let event_type = str_at(root, "/type").ok_or(ParseError::MissingEnvelope("type"))?;
    let data = object_at(root, "/data").unwrap_or(&NO_DATA);
    let kind = match event_type.as_str() {
        "post_call_transcription" => EventKind::CallEnded,
        _ => EventKind::Other,
    };
    let call_key = str_at(data, "/conversation_id");
    Ok(WebhookEvent {
        platform: Platform::ElevenLabs,
        kind,
        caller_number: first_str(
            data,
            &[
                "/metadata/phone_call/external_number",
                "/conversation_initiation_client_data/dynamic_variables/system__caller_id",
            ],
        ),
        assistant_id: str_at(data, "/agent_id"),
        ended: (kind == EventKind::CallEnded).then(|| call_end(data)),
        analysis: analysis(data),
        dedupe_key: dedupe_key(Platform::ElevenLabs, &event_type, &[call_key.as_deref()]),
        call_key,
        event_type,
    })
}

fn call_end(data: &Value) -> CallEnd {
    let started_at = i64_at(data, "/metadata/start_time_unix_secs")
        .and_then(|secs| DateTime::from_timestamp(secs, 0));
    let duration_ms = f64_at(data, "/metadata/call_duration_secs")
        .filter(|secs| *secs >= 0.0)
        .map(|secs| (secs * 1000.0).round() as i64);
    let ended_at = match (started_at, duration_ms) {
        (Some(start), Some(ms)) => start.checked_add_signed(TimeDelta::milliseconds(ms)),
        _ => None,
    };
    let messages = first_array(data, &["/transcript"]);
    CallEnd {
        ended_reason: str_at(data, "/metadata/termination_reason"),
        started_at,
        ended_at,
        duration_ms,
        cost: f64_at(data, "/metadata/cost"),
        transcript: messages.as_ref().and_then(readable_transcript),
        messages,
        recording_urls: Value::Object(serde_json::Map::new()),
        platform_summary: str_at(data, "/analysis/transcript_summary"),
    }
}

/// `"agent: …\nuser: …"` from the transcript entries that carry spoken text (tool-only turns
/// have a `null` message and are skipped).
fn readable_transcript(transcript: &Value) -> Option<String> {
    let lines: Vec<String> = transcript
        .as_array()?
        .iter()
        .filter_map(|turn| {
            let role = str_at(turn, "/role")?;
            let message = str_at(turn, "/message")?;
            Some(format!("{role}: {}", message.trim()))
        })
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

/// `data.analysis`: `transcript_summary`, and `call_successful` `success`/`failure` (`unknown`
/// reads as not said).
fn analysis(data: &Value) -> Option<PlatformAnalysisData> {
    let raw = object_at(data, "/analysis")?;
    Some(PlatformAnalysisData {
        summary: str_at(raw, "/transcript_summary"),
        sentiment: None,
        successful: str_at(raw, "/call_successful").and_then(|v| verdict(&v)),
        raw: raw.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_body(_: Platform, body: &[u8]) -> Result<WebhookEvent, ParseError> {
        parse(&serde_json::from_slice(body).map_err(ParseError::NotJson)?)
    }

    fn fixture(body: &str) -> WebhookEvent {
        parse_body(Platform::ElevenLabs, body.as_bytes()).unwrap()
    }

    #[test]
    fn post_call_transcription() {
        let e = fixture(include_str!(
            "../../tests/fixtures/elevenlabs/post_call_transcription.json"
        ));
        assert_eq!(e.kind, EventKind::CallEnded);
        assert_eq!(
            e.call_key.as_deref(),
            Some("conv_01jzq8r5x4e9v3k2m7n6p5t4s3")
        );
        assert_eq!(
            e.assistant_id.as_deref(),
            Some("agent_01jzq7w2a1b2c3d4e5f6g7h8j9")
        );
        assert_eq!(e.caller_number.as_deref(), Some("+14155550123"));
        assert_eq!(
            e.dedupe_key,
            "elevenlabs:post_call_transcription:conv_01jzq8r5x4e9v3k2m7n6p5t4s3"
        );
        let end = e.ended.unwrap();
        assert_eq!(end.started_at.unwrap().timestamp(), 1_739_537_297);
        assert_eq!(end.duration_ms, Some(22_000));
        assert_eq!(end.ended_at.unwrap().timestamp(), 1_739_537_319);
        assert_eq!(
            end.ended_reason.as_deref(),
            Some("end_call tool was called.")
        );
        assert_eq!(end.cost, Some(296.0));
        assert_eq!(
            end.transcript.as_deref(),
            Some(
                "agent: Hey there Angelo. How are you?\nuser: Hey, can you tell me about ElevenLabs?\nagent: Sure! Anything else?\nuser: No, that's all, thanks."
            )
        );
        assert_eq!(end.messages.unwrap().as_array().map(Vec::len), Some(5));
        assert_eq!(end.recording_urls, serde_json::json!({}));
        let summary = "The user asked about ElevenLabs and ended the call satisfied.";
        assert_eq!(end.platform_summary.as_deref(), Some(summary));
        let a = e.analysis.unwrap();
        assert_eq!(a.summary.as_deref(), Some(summary));
        assert_eq!(a.successful, Some(true));
        assert_eq!(a.raw["call_summary_title"], "ElevenLabs questions");
    }

    #[test]
    fn post_call_audio_and_initiation_failure_are_other() {
        let audio = fixture(include_str!(
            "../../tests/fixtures/elevenlabs/post_call_audio.json"
        ));
        assert_eq!(audio.kind, EventKind::Other);
        assert_eq!(
            audio.call_key.as_deref(),
            Some("conv_01jzq8r5x4e9v3k2m7n6p5t4s3")
        );
        assert_eq!((audio.ended, audio.analysis), (None, None));
        assert_eq!(
            audio.dedupe_key,
            "elevenlabs:post_call_audio:conv_01jzq8r5x4e9v3k2m7n6p5t4s3"
        );

        let failed = fixture(include_str!(
            "../../tests/fixtures/elevenlabs/call_initiation_failure.json"
        ));
        assert_eq!(failed.kind, EventKind::Other);
        assert_eq!(
            failed.assistant_id.as_deref(),
            Some("agent_01jzq7w2a1b2c3d4e5f6g7h8j9")
        );
        assert_eq!(failed.ended, None);
    }

    #[test]
    fn unknown_verdict_dynamic_caller_and_mistyped_fields() {
        let e = fixture(
            r#"{"type":"post_call_transcription","data":{"conversation_id":"c1",
                "conversation_initiation_client_data":{"dynamic_variables":{"system__caller_id":"+15550001111"}},
                "analysis":{"call_successful":"unknown"},
                "metadata":{"start_time_unix_secs":"soon","call_duration_secs":null,"cost":"free"},
                "transcript":[{"role":"agent","message":null,"tool_calls":[{"tool_name":"end_call"}]}]}}"#,
        );
        assert_eq!(e.caller_number.as_deref(), Some("+15550001111"));
        assert_eq!(e.analysis.unwrap().successful, None);
        let end = e.ended.unwrap();
        assert_eq!(
            (end.started_at, end.ended_at, end.duration_ms, end.cost),
            (None, None, None, None)
        );
        assert_eq!(end.transcript, None);
        assert_eq!(end.messages.unwrap().as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn failure_verdict_and_missing_data() {
        let e = fixture(
            r#"{"type":"post_call_transcription","data":{"analysis":{"call_successful":"failure"}}}"#,
        );
        assert_eq!(e.analysis.unwrap().successful, Some(false));
        let bare = fixture(r#"{"type":"post_call_transcription"}"#);
        assert_eq!(bare.dedupe_key, "elevenlabs:post_call_transcription:-");
        assert_eq!(bare.ended, Some(CallEnd::default()));
    }

    #[test]
    fn missing_type_is_an_envelope_error() {
        for body in [r#"{"data":{}}"#, r#"{"type":""}"#, r#"{"type":1}"#] {
            assert!(
                matches!(
                    parse_body(Platform::ElevenLabs, body.as_bytes()),
                    Err(ParseError::MissingEnvelope("type"))
                ),
                "{body}"
            );
        }
    }
}
