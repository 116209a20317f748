//! The Chat Completions request as platforms send it, lenient where platforms differ.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A Chat Completions request. Unknown top-level fields (platform additions such as Vapi's `call`
/// or ElevenLabs' `elevenlabs_extra_body`, and the request parameters) land in `extra`; only the
/// parameters of [`crate::upstream::Params`] are read from it, and each provider forwards those it
/// understands.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// Requested model.
    #[serde(default)]
    pub model: Option<String>,
    /// The conversation so far.
    pub messages: Vec<ChatMessage>,
    /// Whether to stream.
    #[serde(default)]
    pub stream: Option<bool>,
    /// The platform's tools.
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    /// OpenAI's end-user id (generic clients may carry the caller in it).
    #[serde(default)]
    pub user: Option<String>,
    /// Everything else.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatRequest {
    /// Reads legacy function calling as tool calling: an assistant's `function_call` becomes a
    /// tool call with an id of its own, and a `function` message (read as `tool`) without a
    /// `tool_call_id` answers the latest such call.
    pub fn read_legacy_functions(&mut self) {
        let mut pending: Option<String> = None;
        for (i, message) in self.messages.iter_mut().enumerate() {
            if let Some(call) = message.function_call.take() {
                let id = format!("call_function_{i}");
                message
                    .tool_calls
                    .get_or_insert_with(Vec::new)
                    .push(ToolCall {
                        id: id.clone(),
                        kind: function_type(),
                        function: call,
                    });
                pending = Some(id);
            } else if message.role == Role::Tool && message.tool_call_id.is_none() {
                message.tool_call_id = Some(
                    pending
                        .take()
                        .unwrap_or_else(|| format!("call_function_{i}")),
                );
            }
        }
    }
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Platform instructions.
    System,
    /// Newer name for system instructions.
    Developer,
    /// The caller.
    User,
    /// The agent.
    Assistant,
    /// A tool's result (the legacy `function` role is read as this).
    #[serde(alias = "function")]
    Tool,
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Author.
    pub role: Role,
    /// A string, a list of content parts, or null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
    /// Optional author name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Tool calls made by an assistant message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// The call a tool message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// The legacy single function call of an assistant message; read into `tool_calls` by
    /// [`ChatRequest::read_legacy_functions`], never sent on.
    #[serde(default, skip_serializing)]
    pub function_call: Option<FunctionCall>,
}

impl ChatMessage {
    /// A message with plain text content.
    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Self {
            role,
            content: Some(Content::Text(text.into())),
            name: None,
            tool_calls: None,
            tool_call_id: None,
            function_call: None,
        }
    }

    /// The message's text: the string, or the text parts joined; `""` when null.
    pub fn text_content(&self) -> String {
        self.content.as_ref().map(Content::text).unwrap_or_default()
    }

    /// Whether this is a system or developer instruction.
    pub fn is_instruction(&self) -> bool {
        matches!(self.role, Role::System | Role::Developer)
    }
}

/// Message content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Content parts (`{"type":"text","text":…}` and others, passed through as given).
    Parts(Vec<Value>),
}

impl Content {
    /// The text of the content: the string, or every text part joined by a space.
    pub fn text(&self) -> String {
        match self {
            Self::Text(text) => text.clone(),
            Self::Parts(parts) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

/// A tool call made by the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The call id.
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    /// Name and arguments.
    pub function: FunctionCall,
}

fn function_type() -> String {
    "function".into()
}

/// The function of a tool call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    /// Tool name.
    pub name: String,
    /// Arguments as a JSON string (some platforms send an object; it is re-encoded).
    #[serde(deserialize_with = "arguments_as_string", default)]
    pub arguments: String,
}

fn arguments_as_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn vapi_body_with_platform_fields_parses_and_keeps_them_apart() {
        let body = json!({
            "model": "gpt-4o", "stream": true, "temperature": 0.5,
            "messages": [
                {"role": "system", "content": "You are Ava"},
                {"role": "developer", "content": [{"type": "text", "text": "Be brief"}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "ok"},
                {"role": "user", "content": "hi"}
            ],
            "call": {"id": "call-1"}, "customer": {"number": "+14155550123"}
        });
        let request: ChatRequest = serde_json::from_value(body).unwrap();
        assert_eq!(request.messages.len(), 5);
        assert_eq!(request.messages[1].text_content(), "Be brief");
        assert_eq!(request.messages[2].text_content(), "");
        let calls = request.messages[2].tool_calls.as_ref().unwrap();
        assert_eq!(calls[0].function.arguments, r#"{"a":1}"#);
        assert!(request.extra.contains_key("call"));
        assert!(request.extra.contains_key("temperature"));
    }

    #[test]
    fn the_legacy_function_role_is_read_as_a_tool_result() {
        let body = json!({"messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null, "function_call": {"name": "weather", "arguments": "{}"}},
            {"role": "function", "name": "weather", "content": "sunny"}
        ]});
        let mut request: ChatRequest = serde_json::from_value(body).unwrap();
        request.read_legacy_functions();
        let calls = request.messages[1].tool_calls.as_ref().unwrap();
        assert_eq!(calls[0].function.name, "weather");
        assert_eq!(request.messages[2].role, Role::Tool);
        assert_eq!(
            request.messages[2].tool_call_id.as_deref(),
            Some(calls[0].id.as_str())
        );
        let sent = serde_json::to_value(&request.messages[1]).unwrap();
        assert!(sent.get("function_call").is_none());
    }

    #[test]
    fn unknown_roles_are_rejected() {
        let body = json!({"messages": [{"role": "robot", "content": "x"}]});
        assert!(serde_json::from_value::<ChatRequest>(body).is_err());
    }
}
