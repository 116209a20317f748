//! Retell's custom-LLM WebSocket frames (docs/protocols/retell.md §1.3–1.4).
//!
//! Parsing is lenient where Retell varies: unknown fields are ignored, roles are open strings,
//! and `update_only` transcripts are skipped unread (each request carries the full transcript
//! again). A frame that does not parse is an error for the caller to log, never fatal.

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use crate::openai::{ChatMessage, Role};

/// A frame from Retell, by `interaction_type`.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Incoming {
    /// Keepalive; echo it.
    PingPong {
        /// Retell's timestamp (ms since the epoch), echoed as received.
        timestamp: i64,
    },
    /// The call object (caller numbers, agent id), sent once after `config` asks for it.
    CallDetails(CallInfo),
    /// A transcript or turn-taking update; needs no reply.
    UpdateOnly,
    /// The agent must speak: answer under `response_id`.
    ResponseRequired(ResponseRequest),
    /// The caller has been quiet: nudge them under `response_id`.
    ReminderRequired(ResponseRequest),
}

/// Why a frame was not understood.
#[derive(Debug, thiserror::Error)]
pub(super) enum FrameError {
    /// Not JSON, or a field of the wrong type (including a missing `response_id`).
    #[error("invalid frame: {0}")]
    Json(#[from] serde_json::Error),
    /// An `interaction_type` this version does not know.
    #[error("unknown interaction_type {0:?}")]
    UnknownType(String),
}

impl FrameError {
    /// A short label for metrics.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Self::Json(_) => "invalid",
            Self::UnknownType(_) => "unknown_type",
        }
    }
}

#[derive(Deserialize)]
struct Envelope {
    interaction_type: String,
}

#[derive(Deserialize)]
struct PingPong {
    timestamp: i64,
}

#[derive(Deserialize)]
struct CallDetails {
    #[serde(default)]
    call: CallInfo,
}

/// Parses one text frame.
pub(super) fn parse(text: &str) -> Result<Incoming, FrameError> {
    let envelope: Envelope = serde_json::from_str(text)?;
    Ok(match envelope.interaction_type.as_str() {
        "ping_pong" => Incoming::PingPong {
            timestamp: serde_json::from_str::<PingPong>(text)?.timestamp,
        },
        "call_details" => Incoming::CallDetails(serde_json::from_str::<CallDetails>(text)?.call),
        "update_only" => {
            // Still a whole valid JSON value; its transcript is not needed.
            serde_json::from_str::<IgnoredAny>(text)?;
            Incoming::UpdateOnly
        }
        "response_required" => Incoming::ResponseRequired(serde_json::from_str(text)?),
        "reminder_required" => Incoming::ReminderRequired(serde_json::from_str(text)?),
        other => return Err(FrameError::UnknownType(other.to_owned())),
    })
}

/// The parts of Retell's call object redial uses.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub(super) struct CallInfo {
    /// Retell's call id (the path segment is authoritative).
    #[serde(default)]
    pub call_id: Option<String>,
    /// The agent.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// The calling number (phone calls only).
    #[serde(default)]
    pub from_number: Option<String>,
    /// The called number (phone calls only).
    #[serde(default)]
    pub to_number: Option<String>,
    /// `inbound` or `outbound` (phone calls only).
    #[serde(default)]
    pub direction: Option<String>,
}

impl CallInfo {
    /// The remote party: `to_number` on outbound calls, `from_number` otherwise.
    pub(super) fn caller_number(&self) -> Option<&str> {
        match self.direction.as_deref() {
            Some("outbound") => self.to_number.as_deref(),
            _ => self.from_number.as_deref(),
        }
    }
}

/// `response_required` / `reminder_required`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(super) struct ResponseRequest {
    /// The id the response must carry.
    pub response_id: i64,
    /// The whole transcript so far.
    #[serde(default)]
    pub transcript: Vec<Utterance>,
}

/// One utterance of Retell's transcript.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(super) struct Utterance {
    /// `agent`, `user`, or a role redial does not use (`transfer_target`, `system`…).
    pub role: String,
    /// What was said.
    #[serde(default)]
    pub content: Option<String>,
}

impl Utterance {
    /// The chat message for this utterance: agent → assistant, user → user; other roles and
    /// empty utterances have none.
    pub(super) fn to_message(&self) -> Option<ChatMessage> {
        let role = match self.role.as_str() {
            "agent" => Role::Assistant,
            "user" => Role::User,
            _ => return None,
        };
        let content = self.content.as_deref().filter(|c| !c.trim().is_empty())?;
        Some(ChatMessage::text(role, content))
    }
}

/// A frame to Retell, by `response_type`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "response_type", rename_all = "snake_case")]
pub(super) enum ServerEvent {
    /// Sent first: what this server wants from Retell.
    Config {
        /// The settings.
        config: ConnectionConfig,
    },
    /// The echo of Retell's keepalive.
    PingPong {
        /// Retell's timestamp.
        timestamp: i64,
    },
    /// Content of a response.
    Response(ResponseFrame),
    /// One of redial's tools is running (shown in Retell's transcript with tool calls).
    ToolCallInvocation {
        /// Unique per call.
        tool_call_id: String,
        /// Tool name.
        name: String,
        /// Arguments, stringified JSON.
        arguments: String,
    },
    /// The result of that tool.
    ToolCallResult {
        /// The invocation's id.
        tool_call_id: String,
        /// Result JSON.
        content: String,
        /// Whether it succeeded.
        successful: bool,
    },
}

/// The `config` frame's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(super) struct ConnectionConfig {
    /// Keepalive pings both ways, and reconnects when they stop.
    pub auto_reconnect: bool,
    /// Send the call object (`call_details`).
    pub call_details: bool,
}

impl ServerEvent {
    /// The `config` redial sends on every connection.
    pub(super) fn config() -> Self {
        Self::Config {
            config: ConnectionConfig {
                auto_reconnect: true,
                call_details: true,
            },
        }
    }

    /// A `response` frame without an action.
    pub(super) fn response(response_id: i64, content: String, content_complete: bool) -> Self {
        Self::Response(ResponseFrame {
            response_id,
            content,
            content_complete,
            end_call: false,
        })
    }
}

/// One `response` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(super) struct ResponseFrame {
    /// The request this answers.
    pub response_id: i64,
    /// Text to speak (may be empty).
    pub content: String,
    /// Whether this is the response's last frame.
    pub content_complete: bool,
    /// Hang up once the response has been spoken.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub end_call: bool,
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn parse_value(value: &Value) -> Result<Incoming, FrameError> {
        parse(&value.to_string())
    }

    #[test]
    fn every_retell_event_parses_with_extra_fields_tolerated() {
        let ping = json!({"interaction_type": "ping_pong", "timestamp": 1703302407333_i64});
        assert_eq!(
            parse_value(&ping).unwrap(),
            Incoming::PingPong {
                timestamp: 1703302407333
            }
        );
        let details = json!({"interaction_type": "call_details", "call": {
            "call_type": "phone_call", "from_number": "+12137771234", "to_number": "+12137771235",
            "direction": "inbound", "call_id": "c1", "agent_id": "a1", "metadata": {}}});
        let Incoming::CallDetails(call) = parse_value(&details).unwrap() else {
            panic!("call_details")
        };
        assert_eq!(call.caller_number(), Some("+12137771234"));
        assert_eq!(call.agent_id.as_deref(), Some("a1"));
        let update = json!({"interaction_type": "update_only", "transcript": [{"role": "user",
            "content": "hi", "words": []}], "turntaking": "user_turn"});
        assert_eq!(parse_value(&update).unwrap(), Incoming::UpdateOnly);
        let request = json!({"interaction_type": "response_required", "response_id": 2,
            "transcript": [{"role": "agent", "content": "Hello", "words": [{"word": "Hello",
            "start": 0.1, "end": 0.4}]}, {"role": "transfer_target", "content": "x"},
            {"role": "user", "content": null}], "transcript_with_tool_calls": []});
        let Incoming::ResponseRequired(request) = parse_value(&request).unwrap() else {
            panic!("response_required")
        };
        assert_eq!(request.response_id, 2);
        let messages: Vec<_> = request
            .transcript
            .iter()
            .filter_map(Utterance::to_message)
            .collect();
        assert_eq!(messages, [ChatMessage::text(Role::Assistant, "Hello")]);
        let reminder = json!({"interaction_type": "reminder_required", "response_id": 3});
        assert!(matches!(
            parse_value(&reminder).unwrap(),
            Incoming::ReminderRequired(ResponseRequest { response_id: 3, .. })
        ));
    }

    #[test]
    fn outbound_calls_are_keyed_by_the_number_called() {
        let call = CallInfo {
            from_number: Some("+1".into()),
            to_number: Some("+2".into()),
            direction: Some("outbound".into()),
            ..CallInfo::default()
        };
        assert_eq!(call.caller_number(), Some("+2"));
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        for (text, kind) in [
            ("not json", "invalid"),
            (r#"{"interaction_type": "reminder_required"}"#, "invalid"),
            (
                r#"{"interaction_type": "response_required", "response_id": "1"}"#,
                "invalid",
            ),
            (r#"{"interaction_type": "ping_pong"}"#, "invalid"),
            (
                r#"{"interaction_type": "call_details", "call": 7}"#,
                "invalid",
            ),
            (r#"{"response_id": 1}"#, "invalid"),
            (r#"{"interaction_type": "dance"}"#, "unknown_type"),
        ] {
            assert_eq!(parse(text).unwrap_err().kind(), kind, "{text}");
        }
    }

    #[test]
    fn frames_serialize_as_retell_expects() {
        let json = |event: &ServerEvent| serde_json::to_value(event).unwrap();
        assert_eq!(
            json(&ServerEvent::config()),
            json!({"response_type": "config", "config": {"auto_reconnect": true,
                "call_details": true}})
        );
        assert_eq!(
            json(&ServerEvent::response(0, "Hi".into(), true)),
            json!({"response_type": "response", "response_id": 0, "content": "Hi",
                "content_complete": true})
        );
        let end = ServerEvent::Response(ResponseFrame {
            response_id: 4,
            content: String::new(),
            content_complete: true,
            end_call: true,
        });
        assert_eq!(json(&end)["end_call"], true);
        let result = ServerEvent::ToolCallResult {
            tool_call_id: "t".into(),
            content: "{}".into(),
            successful: true,
        };
        assert_eq!(
            json(&result),
            json!({"response_type": "tool_call_result", "tool_call_id": "t", "content": "{}",
                "successful": true})
        );
        assert_eq!(
            json(&ServerEvent::PingPong { timestamp: 5 }),
            json!({"response_type": "ping_pong", "timestamp": 5})
        );
    }
}
