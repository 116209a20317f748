//! Call-ended webhooks as each platform sends them, signed the way redial verifies them.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use super::scenario::PlatformKind;

/// The secrets the simulator signs with (and configures an owned redial with).
#[derive(Clone, Debug)]
pub struct WebhookSecrets {
    /// `webhooks.vapi_secret` (HMAC credential: `x-signature` over `"{timestamp}.{body}"`).
    pub vapi: String,
    /// `webhooks.retell_api_key`.
    pub retell: String,
    /// `webhooks.elevenlabs_secret`.
    pub elevenlabs: String,
}

impl Default for WebhookSecrets {
    fn default() -> Self {
        Self {
            vapi: "sim-vapi-secret".to_owned(),
            retell: "sim-retell-key".to_owned(),
            elevenlabs: "sim-elevenlabs-secret".to_owned(),
        }
    }
}

/// What the webhook says about the call.
#[derive(Clone, Debug)]
pub struct EndedCall<'a> {
    /// The platform's call id.
    pub call_id: &'a str,
    /// The caller's number.
    pub caller: &'a str,
    /// The assistant or agent id.
    pub assistant: &'a str,
    /// Seconds since the epoch when the call started and ended.
    pub started: u64,
    /// See `started`.
    pub ended: u64,
    /// `customer-ended-call`, `user_hangup`…, or a drop reason.
    pub dropped: bool,
}

/// A webhook ready to send: its route, body and signature headers.
pub type SignedWebhook = (&'static str, Vec<u8>, Vec<(&'static str, String)>);

/// The route, the body and the signature headers of the call-ended webhook.
pub fn call_ended(
    platform: PlatformKind,
    call: &EndedCall<'_>,
    secrets: &WebhookSecrets,
) -> anyhow::Result<SignedWebhook> {
    let body = serde_json::to_vec(&body(platform, call)).context("encoding the webhook")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the clock is before 1970")?;
    Ok(match platform {
        PlatformKind::Vapi => {
            let ts = now.as_millis().to_string();
            let signature = hmac_hex(&secrets.vapi, &[ts.as_bytes(), b".", &body])?;
            let headers = vec![("x-timestamp", ts), ("x-signature", signature)];
            ("/webhooks/vapi", body, headers)
        }
        PlatformKind::Retell => {
            let v = now.as_millis().to_string();
            let d = hmac_hex(&secrets.retell, &[&body, v.as_bytes()])?;
            let headers = vec![("x-retell-signature", format!("v={v},d={d}"))];
            ("/webhooks/retell", body, headers)
        }
        PlatformKind::Elevenlabs => {
            let t = now.as_secs().to_string();
            let v0 = hmac_hex(&secrets.elevenlabs, &[t.as_bytes(), b".", &body])?;
            let headers = vec![("elevenlabs-signature", format!("t={t},v0={v0}"))];
            ("/webhooks/elevenlabs", body, headers)
        }
    })
}

fn body(platform: PlatformKind, call: &EndedCall<'_>) -> Value {
    let seconds = call.ended.saturating_sub(call.started);
    match platform {
        PlatformKind::Vapi => {
            let reason = if call.dropped {
                "phone-call-provider-closed-websocket"
            } else {
                "customer-ended-call"
            };
            json!({"message": {
                "type": "end-of-call-report",
                "endedReason": reason,
                "call": {"id": call.call_id, "assistantId": call.assistant,
                         "customer": {"number": call.caller}},
                "customer": {"number": call.caller},
                "startedAt": iso(call.started),
                "endedAt": iso(call.ended),
                "durationSeconds": seconds,
                "artifact": {"messages": [], "transcript": ""},
                "analysis": {"summary": "Simulated call."}
            }})
        }
        PlatformKind::Retell => json!({"event": "call_ended", "call": {
            "call_id": call.call_id, "agent_id": call.assistant, "call_type": "phone_call",
            "from_number": call.caller, "to_number": "+14155550100", "direction": "inbound",
            "call_status": "ended",
            "disconnection_reason": if call.dropped { "error_llm_websocket_lost_connection" } else { "user_hangup" },
            "start_timestamp": call.started * 1000, "end_timestamp": call.ended * 1000,
            "duration_ms": seconds * 1000, "transcript": "", "transcript_object": []
        }}),
        PlatformKind::Elevenlabs => json!({
            "type": "post_call_transcription",
            "event_timestamp": call.ended,
            "data": {
                "agent_id": call.assistant,
                "conversation_id": call.call_id,
                "status": "done",
                "transcript": [],
                "metadata": {
                    "start_time_unix_secs": call.started,
                    "call_duration_secs": seconds,
                    "termination_reason": if call.dropped { "Call ended by remote party" } else { "end_call tool was called." },
                    "phone_call": {"external_number": call.caller, "agent_number": "+14155550100",
                                   "direction": "inbound", "type": "twilio"}
                },
                "analysis": {"transcript_summary": "Simulated call.", "call_successful": "success"}
            }
        }),
    }
}

/// RFC 3339 (UTC) of seconds since the epoch, without a date library: days → civil date.
fn iso(epoch_secs: u64) -> String {
    let days = (epoch_secs / 86_400) as i64;
    let rem = epoch_secs % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.000Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn hmac_hex(key: &str, parts: &[&[u8]]) -> anyhow::Result<String> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key.as_bytes()).context("an HMAC key of any length")?;
    for part in parts {
        mac.update(part);
    }
    Ok(hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_dates_are_civil_utc() {
        assert_eq!(iso(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso(1_764_505_845), "2025-11-30T12:30:45.000Z");
        assert_eq!(iso(951_782_400), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn every_platform_gets_its_route_and_signature_header() {
        let call = EndedCall {
            call_id: "c1",
            caller: "+14155550123",
            assistant: "a",
            started: 10,
            ended: 70,
            dropped: true,
        };
        let secrets = WebhookSecrets::default();
        let (route, body, headers) = call_ended(PlatformKind::Retell, &call, &secrets).unwrap();
        assert_eq!(route, "/webhooks/retell");
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["call"]["duration_ms"], 60_000);
        assert!(headers[0].1.starts_with("v="));
        let (route, _, headers) = call_ended(PlatformKind::Vapi, &call, &secrets).unwrap();
        assert_eq!((route, headers.len()), ("/webhooks/vapi", 2));
        let (route, _, headers) = call_ended(PlatformKind::Elevenlabs, &call, &secrets).unwrap();
        assert_eq!(route, "/webhooks/elevenlabs");
        assert!(headers[0].1.contains(",v0="));
    }
}
