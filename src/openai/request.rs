//! The Chat Completions request as platforms send it, lenient where platforms differ.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// A Chat Completions request. Unknown top-level fields (platform additions such as Vapi's `call`
/// or ElevenLabs' `elevenlabs_extra_body`, and the request parameters) land in `extra`; only the
/// parameters of [`crate::upstream::Params`] are read from it, and each provider forwards those it
/// understands.
///
/// Read in one pass (see [`RequestVisitor`]): `#[serde(flatten)]` would first copy the whole
/// body, conversation included, into serde's intermediate tree, and every turn of a call sends
/// the whole conversation and, from Vapi, the call's objects.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// Requested model.
    pub model: Option<String>,
    /// The conversation so far.
    pub messages: Vec<ChatMessage>,
    /// Whether to stream.
    pub stream: Option<bool>,
    /// The platform's tools.
    pub tools: Option<Vec<Value>>,
    /// OpenAI's end-user id (generic clients may carry the caller in it).
    pub user: Option<String>,
    /// Everything else.
    pub extra: Map<String, Value>,
}

impl<'de> Deserialize<'de> for ChatRequest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RequestVisitor)
    }
}

/// A top-level key of a request.
enum Field {
    Model,
    Messages,
    Stream,
    Tools,
    User,
    Other(String),
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl Visitor<'_> for FieldVisitor {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Field, E> {
                Ok(match key {
                    "model" => Field::Model,
                    "messages" => Field::Messages,
                    "stream" => Field::Stream,
                    "tools" => Field::Tools,
                    "user" => Field::User,
                    other => Field::Other(other.to_owned()),
                })
            }
        }
        deserializer.deserialize_identifier(FieldVisitor)
    }
}

/// What redial reads of an object: every field (`All`), or only the named ones, each with what
/// is read of it in turn.
enum Keep {
    All,
    Only(&'static [(&'static str, Keep)]),
}

/// An assistant's model, of which redial reads the tools (for the tools Vapi announces itself).
const MODEL_TOOLS: (&str, Keep) = ("model", Keep::Only(&[("tools", Keep::All)]));

/// What redial reads of Vapi's objects (`platforms::vapi`, and the announced tools of
/// `http::chat`); the rest of them (the assistant's whole configuration, monitors, transport)
/// is skipped, not parsed into a tree. Reading another field of them means adding it here.
fn platform_object(key: &str) -> Option<&'static Keep> {
    const NUMBER: Keep = Keep::Only(&[("number", Keep::All)]);
    const CALL: Keep = Keep::Only(&[
        ("id", Keep::All),
        ("assistantId", Keep::All),
        ("customer", NUMBER),
        ("assistant", Keep::Only(&[MODEL_TOOLS])),
    ]);
    const ASSISTANT: Keep = Keep::Only(&[("id", Keep::All), MODEL_TOOLS]);
    match key {
        "call" => Some(&CALL),
        "assistant" => Some(&ASSISTANT),
        "customer" => Some(&NUMBER),
        _ => None,
    }
}

/// A JSON value with only what [`Keep`] names of its objects; any other value whole.
struct Pruned(&'static Keep);

impl<'de> de::DeserializeSeed<'de> for Pruned {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        match self.0 {
            Keep::All => Value::deserialize(deserializer),
            Keep::Only(fields) => deserializer.deserialize_any(Fields(fields)),
        }
    }
}

/// An object of which only `fields` are kept; a value that is not an object, whole.
struct Fields(&'static [(&'static str, Keep)]);

impl<'de> Visitor<'de> for Fields {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut kept = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            match self.0.iter().find(|(name, _)| *name == key) {
                Some((_, keep)) => {
                    kept.insert(key, map.next_value_seed(Pruned(keep))?);
                }
                None => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(kept))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Value, A::Error> {
        Value::deserialize(de::value::SeqAccessDeserializer::new(seq))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
}

/// Reads a request's fields as they come: the known ones into their types, the rest into
/// `extra`. A known field given twice is an error, as serde's derive makes it.
struct RequestVisitor;

impl<'de> Visitor<'de> for RequestVisitor {
    type Value = ChatRequest;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Chat Completions request object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ChatRequest, A::Error> {
        fn once<T, E: de::Error>(
            slot: &mut Option<T>,
            value: T,
            name: &'static str,
        ) -> Result<(), E> {
            if slot.is_some() {
                return Err(E::duplicate_field(name));
            }
            *slot = Some(value);
            Ok(())
        }
        let (mut model, mut messages, mut stream, mut tools, mut user) =
            (None, None, None, None, None);
        let mut extra = Map::new();
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Model => once(&mut model, map.next_value::<Option<String>>()?, "model")?,
                Field::Messages => {
                    once(
                        &mut messages,
                        map.next_value::<Vec<ChatMessage>>()?,
                        "messages",
                    )?;
                }
                Field::Stream => once(&mut stream, map.next_value::<Option<bool>>()?, "stream")?,
                Field::Tools => once(&mut tools, map.next_value::<Option<Vec<Value>>>()?, "tools")?,
                Field::User => once(&mut user, map.next_value::<Option<String>>()?, "user")?,
                Field::Other(key) => {
                    let value = match platform_object(&key) {
                        Some(keep) => map.next_value_seed(Pruned(keep))?,
                        None => map.next_value::<Value>()?,
                    };
                    extra.insert(key, value);
                }
            }
        }
        Ok(ChatRequest {
            model: model.flatten(),
            messages: messages.ok_or_else(|| de::Error::missing_field("messages"))?,
            stream: stream.flatten(),
            tools: tools.flatten(),
            user: user.flatten(),
            extra,
        })
    }
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
    fn nulls_are_absent_a_repeated_field_is_refused_and_only_an_object_is_a_request() {
        let request: ChatRequest = serde_json::from_value(json!({
            "model": null, "stream": null, "tools": null, "user": null,
            "messages": [{"role": "user", "content": "hi"}],
            "metadata": {"a\"b": [1, null]}, "model_extra": "kept"
        }))
        .unwrap();
        assert_eq!(
            (request.model, request.stream, request.tools, request.user),
            (None, None, None, None)
        );
        assert_eq!(request.extra["metadata"], json!({"a\"b": [1, null]}));
        assert_eq!(request.extra["model_extra"], "kept");
        assert_eq!(request.extra.len(), 2);

        let twice = r#"{"messages": [], "model": "a", "model": "b"}"#;
        let error = serde_json::from_str::<ChatRequest>(twice).unwrap_err();
        assert!(
            error.to_string().contains("duplicate field `model`"),
            "{error}"
        );
        let missing = serde_json::from_str::<ChatRequest>(r#"{"model": "a"}"#).unwrap_err();
        assert!(
            missing.to_string().contains("missing field `messages`"),
            "{missing}"
        );
        assert!(serde_json::from_str::<ChatRequest>(r#"[{"messages": []}]"#).is_err());
    }

    #[test]
    fn of_vapis_objects_only_what_redial_reads_is_kept() {
        let tool = json!({"type": "function", "function": {"name": "book"},
                          "messages": [{"type": "request-start", "content": "One moment."}]});
        let body = json!({
            "messages": [],
            "call": {
                "id": "call-1", "assistantId": "as-1", "orgId": "org", "monitor": {"listenUrl": "wss://x"},
                "customer": {"number": "+14155550123", "name": "Ann"},
                "assistant": {"name": "Ava", "voice": {"provider": "11labs"},
                              "model": {"provider": "custom-llm", "tools": [tool], "messages": [{"role": "system"}]}}
            },
            "assistant": {"id": "as-2", "firstMessage": "Hi", "model": {"tools": [], "url": "https://x"}},
            "customer": {"number": "+14155550124", "email": "a@b.c"},
            "phoneNumber": {"number": "+14155550199", "id": "pn"},
            "metadata": {"practice": "north"}
        });
        let request: ChatRequest = serde_json::from_str(&body.to_string()).unwrap();
        assert_eq!(
            request.extra["call"],
            json!({"id": "call-1", "assistantId": "as-1", "customer": {"number": "+14155550123"},
                   "assistant": {"model": {"tools": [tool]}}})
        );
        assert_eq!(
            request.extra["assistant"],
            json!({"id": "as-2", "model": {"tools": []}})
        );
        assert_eq!(request.extra["customer"], json!({"number": "+14155550124"}));
        // Everything else whole.
        assert_eq!(
            request.extra["phoneNumber"],
            json!({"number": "+14155550199", "id": "pn"})
        );
        assert_eq!(request.extra["metadata"], json!({"practice": "north"}));
        // Objects that are not objects stay as they are.
        for odd in [
            json!(7),
            json!("c"),
            json!([1, {"a": 2}]),
            json!(null),
            json!(true),
            json!(1.5),
        ] {
            let request: ChatRequest = serde_json::from_value(
                json!({"messages": [], "call": odd.clone(), "customer": odd.clone()}),
            )
            .unwrap();
            assert_eq!(
                (&request.extra["call"], &request.extra["customer"]),
                (&odd, &odd)
            );
        }
        let nested: ChatRequest = serde_json::from_value(
            json!({"messages": [], "call": {"id": 5, "customer": "x", "assistant": {"model": 3}}}),
        )
        .unwrap();
        assert_eq!(
            nested.extra["call"],
            json!({"id": 5, "customer": "x", "assistant": {"model": 3}})
        );
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
