//! Anthropic Messages (`POST {base_url}/messages`, `anthropic-version: 2023-06-01`, `x-api-key`),
//! natively: the system prompt as `system` blocks, tools as `tool_use` / `tool_result` blocks
//! (arguments streamed as `input_json_delta`), stop reasons, in-stream `error` events, usage with
//! prompt-cache reads, and prompt caching of the static prefix. The wire format of this provider
//! lives here only.
//!
//! **Prompt caching.** Anthropic caches a prompt prefix up to a block marked
//! `cache_control: {"type": "ephemeral"}`, in the order tools → system → messages. The tool
//! definitions and the leading system instructions (the assistant's prompt) do not change during
//! a call, so the last tool and the last static system block are marked; redial's per-call
//! summary, which changes as answers are confirmed, is a system block after the mark. From a
//! call's second turn on, the prefix is read from the cache.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value, json};

use super::UpstreamError;
use super::types::{Completion, Event, Params, Request, Tool, ToolCallDelta, ToolChoice, Usage};
use crate::openai::{ChatMessage, Content, FinishReason, Role};

/// The API version redial speaks.
pub const API_VERSION: &str = "2023-06-01";

/// Every request parameter this provider forwards, by its OpenAI name (the README lists them
/// with their mapping).
pub const FORWARDED: &[&str] = &[
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "tool_choice",
    "parallel_tool_calls",
    "user",
    "service_tier",
];

/// Said as the first user turn of a conversation that begins with the agent: the Messages API
/// wants a conversation to start with the user.
const CALL_STARTS: &str = "(the call connects)";

const EPHEMERAL: &str = "ephemeral";

/// The request body. `max_tokens` is required by the API: the request's own bound, else
/// `default_max_tokens`. The tools' schemas are borrowed, not copied, and the body is
/// serialised from this struct rather than through a `serde_json::Value` tree.
pub(super) fn body<'a>(model: &'a str, request: &Request<'a>, default_max_tokens: u64) -> Body<'a> {
    let messages = request.messages;
    let split = messages
        .iter()
        .position(|m| !m.is_instruction())
        .unwrap_or(messages.len());
    let mut system: Vec<Block<'a>> = messages[..split]
        .iter()
        .filter_map(|message| text_block(text(message)))
        .collect();
    if let Some(Block::Text { cache_control, .. }) = system.last_mut() {
        *cache_control = Some(CacheControl { kind: EPHEMERAL });
    }
    if let Some(summary) = request.summary.filter(|s| !s.trim().is_empty()) {
        system.push(Block::Text {
            text: Cow::Borrowed(summary),
            cache_control: None,
        });
    }
    let mut params = Map::new();
    set_params(
        &mut params,
        request.params,
        !request.tools.is_empty(),
        default_max_tokens,
    );
    Body {
        model,
        system,
        messages: conversation(&messages[split..]),
        tools: request.tools,
        stream: request.stream,
        params,
    }
}

/// A Messages request body (see [`body`]).
#[derive(Serialize)]
pub(super) struct Body<'a> {
    model: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    system: Vec<Block<'a>>,
    messages: Vec<Turn<'a>>,
    #[serde(skip_serializing_if = "<[Tool]>::is_empty", serialize_with = "tools")]
    tools: &'a [Tool],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    /// `max_tokens` and the mapped parameters, by name.
    #[serde(flatten)]
    params: Map<String, Value>,
}

/// The tools, the last one marked as the end of the cacheable prefix.
fn tools<S: Serializer>(tools: &&[Tool], serializer: S) -> Result<S::Ok, S::Error> {
    let last = tools.len().saturating_sub(1);
    serializer.collect_seq(tools.iter().enumerate().map(|(i, tool)| WireTool {
        name: &tool.name,
        description: tool.description.as_deref(),
        input_schema: tool.parameters.as_deref().unwrap_or(&EMPTY_SCHEMA),
        cache_control: (i == last).then_some(CacheControl { kind: EPHEMERAL }),
    }))
}

/// The schema of a tool that declares none: no arguments.
static EMPTY_SCHEMA: LazyLock<Value> =
    LazyLock::new(|| json!({"type": "object", "properties": {}}));

#[derive(Serialize)]
struct WireTool<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    input_schema: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_control: Option<CacheControl>,
}

#[derive(Serialize)]
struct CacheControl {
    #[serde(rename = "type")]
    kind: &'static str,
}

/// The messages after the leading instructions, as alternating user / assistant turns: tool
/// results become `tool_result` blocks of a user turn, an assistant's tool calls `tool_use`
/// blocks, later system notes user text; consecutive turns of one role are merged.
fn conversation(messages: &[ChatMessage]) -> Vec<Turn<'_>> {
    let mut turns: Vec<Turn<'_>> = Vec::with_capacity(messages.len() + 1);
    for message in messages {
        let (role, blocks) = match message.role {
            Role::Assistant => ("assistant", assistant_blocks(message)),
            Role::Tool => {
                let id = message.tool_call_id.as_deref().unwrap_or("");
                let block = Block::ToolResult {
                    tool_use_id: tool_id(id),
                    content: text(message),
                };
                ("user", vec![block])
            }
            Role::User | Role::System | Role::Developer => {
                ("user", text_block(text(message)).into_iter().collect())
            }
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some(last) if last.role == role => last.content.extend(blocks),
            _ => turns.push(Turn {
                role,
                content: blocks,
            }),
        }
    }
    if turns.first().is_some_and(|turn| turn.role == "assistant") {
        let opening = Block::Text {
            text: Cow::Borrowed(CALL_STARTS),
            cache_control: None,
        };
        turns.insert(
            0,
            Turn {
                role: "user",
                content: vec![opening],
            },
        );
    }
    turns
}

fn assistant_blocks(message: &ChatMessage) -> Vec<Block<'_>> {
    let mut blocks: Vec<Block<'_>> = text_block(text(message)).into_iter().collect();
    for call in message.tool_calls.iter().flatten() {
        let input = serde_json::from_str::<Value>(&call.function.arguments)
            .ok()
            .filter(Value::is_object)
            .unwrap_or_else(|| Value::Object(Map::new()));
        blocks.push(Block::ToolUse {
            id: tool_id(&call.id),
            name: &call.function.name,
            input,
        });
    }
    blocks
}

/// A message's text, borrowed when it is a plain string.
fn text(message: &ChatMessage) -> Cow<'_, str> {
    match &message.content {
        Some(Content::Text(text)) => Cow::Borrowed(text),
        _ => Cow::Owned(message.text_content()),
    }
}

/// A text block; the API refuses empty ones.
fn text_block(text: Cow<'_, str>) -> Option<Block<'_>> {
    (!text.trim().is_empty()).then_some(Block::Text {
        text,
        cache_control: None,
    })
}

/// One turn of the conversation.
#[derive(Serialize)]
struct Turn<'a> {
    role: &'static str,
    content: Vec<Block<'a>>,
}

/// A content block (of a turn, or of `system`).
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Text {
        text: Cow<'a, str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<CacheControl>,
    },
    ToolUse {
        id: Cow<'a, str>,
        name: &'a str,
        input: Value,
    },
    ToolResult {
        tool_use_id: Cow<'a, str>,
        content: Cow<'a, str>,
    },
}

/// Tool-use ids may hold only letters, digits, `_` and `-`; other characters become `_` (the
/// same on the call and its result, so they still match).
fn tool_id(id: &str) -> Cow<'_, str> {
    if !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Cow::Borrowed(id);
    }
    let cleaned: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Cow::Owned(if cleaned.is_empty() {
        "toolu_redial".to_owned()
    } else {
        cleaned
    })
}

/// The parameters the Messages API has an equivalent for: `temperature` (clamped to its 0–1
/// range), `top_p`, `max_completion_tokens` / `max_tokens` → `max_tokens`, `stop` →
/// `stop_sequences`, `tool_choice` (`required` → `any`, a function → `tool`),
/// `parallel_tool_calls: false` → `disable_parallel_tool_use`, `user` → `metadata.user_id`,
/// `service_tier` (`auto`, and `default` → `standard_only`). The rest is dropped.
fn set_params(body: &mut Map<String, Value>, params: &Params, with_tools: bool, default_max: u64) {
    let max_tokens = params
        .max_completion_tokens
        .or(params.max_tokens)
        .unwrap_or(default_max);
    body.insert("max_tokens".into(), json!(max_tokens));
    if let Some(t) = params.temperature {
        body.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
    }
    if let Some(p) = params.top_p {
        body.insert("top_p".into(), json!(p));
    }
    let stops: Vec<&String> = params
        .stop
        .iter()
        .filter(|s| !s.trim().is_empty())
        .collect();
    if !stops.is_empty() {
        body.insert("stop_sequences".into(), json!(stops));
    }
    if with_tools {
        let mut choice = match &params.tool_choice {
            None => None,
            Some(ToolChoice::Auto) => Some(json!({"type": "auto"})),
            Some(ToolChoice::None) => Some(json!({"type": "none"})),
            Some(ToolChoice::Required) => Some(json!({"type": "any"})),
            Some(ToolChoice::Function(name)) => Some(json!({"type": "tool", "name": name})),
        };
        if params.parallel_tool_calls == Some(false) {
            let choice = choice.get_or_insert_with(|| json!({"type": "auto"}));
            if choice["type"] != "none" {
                choice["disable_parallel_tool_use"] = json!(true);
            }
        }
        if let Some(choice) = choice {
            body.insert("tool_choice".into(), choice);
        }
    }
    if let Some(user) = &params.user {
        body.insert("metadata".into(), json!({"user_id": user}));
    }
    let tier = match params.service_tier.as_deref() {
        Some("auto") => Some("auto"),
        Some("default") => Some("standard_only"),
        _ => None,
    };
    if let Some(tier) = tier {
        body.insert("service_tier".into(), json!(tier));
    }
}

#[derive(Deserialize)]
struct WireEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    index: Option<u32>,
    #[serde(default, borrow)]
    delta: Option<WireDelta<'a>>,
    #[serde(default)]
    content_block: Option<WireBlock>,
    #[serde(default)]
    message: Option<WireMessage>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<WireError>,
}

#[derive(Deserialize)]
struct WireDelta<'a> {
    #[serde(default, rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    partial_json: Option<Cow<'a, str>>,
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireBlock {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    input: Option<Value>,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize, Default)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct WireError {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// Anthropic's counts as redial's: `input_tokens` excludes cached input, so the prompt is the
/// sum of fresh, cache-read and cache-written input.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    input: u64,
    output: u64,
    cache_read: u64,
    cache_write: u64,
}

impl Counts {
    fn update(&mut self, usage: &WireUsage) {
        let set = |slot: &mut u64, value: Option<u64>| {
            if let Some(v) = value {
                *slot = v;
            }
        };
        set(&mut self.input, usage.input_tokens);
        set(&mut self.output, usage.output_tokens);
        set(&mut self.cache_read, usage.cache_read_input_tokens);
        set(&mut self.cache_write, usage.cache_creation_input_tokens);
    }

    fn usage(self) -> Usage {
        Usage {
            prompt_tokens: self.input + self.cache_read + self.cache_write,
            completion_tokens: self.output,
            cached_tokens: self.cache_read,
        }
    }
}

/// The state of one stream: content block → tool-call index, and the usage so far.
#[derive(Debug, Default)]
pub(super) struct Decoder {
    tools: HashMap<u32, u32>,
    counts: Counts,
}

/// What one SSE event meant.
pub(super) enum Parsed {
    /// Events (possibly none: `ping`, `message_start`, `content_block_stop`).
    Events(Vec<Event>),
    /// `message_stop`.
    Done,
}

/// Whether an event, by its SSE `event:` name, carries nothing the decoder reads (`ping`,
/// `content_block_stop`), so its JSON need not be parsed: a stream sends a `ping` before the
/// first text, and a `content_block_stop` after every block.
fn carries_nothing(event: &str) -> bool {
    matches!(event, "ping" | "content_block_stop")
}

impl Decoder {
    /// Reads one SSE event by its name and `data:`; events the decoder ignores are skipped
    /// unparsed.
    pub(super) fn parse_event(&mut self, name: &str, data: &str) -> Result<Parsed, UpstreamError> {
        if carries_nothing(name) {
            return Ok(Parsed::Events(Vec::new()));
        }
        self.parse(data)
    }

    /// Parses the `data:` of one SSE event. An `error` event is an upstream failure with the
    /// status the same error would have had before the stream (`overloaded_error` 529, …).
    pub(super) fn parse(&mut self, data: &str) -> Result<Parsed, UpstreamError> {
        let event: WireEvent<'_> = serde_json::from_str(data)
            .map_err(|e| UpstreamError::Decode(format!("not a Messages stream event: {e}")))?;
        let mut out = Vec::new();
        match event.kind.as_ref() {
            "message_start" => {
                if let Some(usage) = event.message.and_then(|m| m.usage) {
                    self.counts.update(&usage);
                }
            }
            "content_block_start" => {
                let index = event.index.unwrap_or(0);
                match event.content_block {
                    Some(block) if block.kind == "tool_use" => {
                        let call = self.tools.len() as u32;
                        self.tools.insert(index, call);
                        // Arguments follow as `input_json_delta`s; a non-empty `input` here
                        // (not streamed) is the whole of them.
                        let arguments = block
                            .input
                            .filter(|i| i.as_object().is_some_and(|o| !o.is_empty()))
                            .map(|i| i.to_string())
                            .unwrap_or_default();
                        out.push(Event::ToolCall(ToolCallDelta {
                            index: call,
                            id: block.id,
                            name: block.name,
                            arguments,
                        }));
                    }
                    Some(block) if block.kind == "text" => {
                        if let Some(text) = block.text.filter(|t| !t.is_empty()) {
                            out.push(Event::Text(text));
                        }
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let index = event.index.unwrap_or(0);
                if let Some(delta) = event.delta {
                    match delta.kind.as_deref() {
                        Some("text_delta") => {
                            if let Some(text) = delta.text.filter(|t| !t.is_empty()) {
                                out.push(Event::Text(text.into_owned()));
                            }
                        }
                        Some("input_json_delta") => {
                            if let (Some(&call), Some(json)) =
                                (self.tools.get(&index), delta.partial_json)
                                && !json.is_empty()
                            {
                                out.push(Event::ToolCall(ToolCallDelta {
                                    index: call,
                                    id: None,
                                    name: None,
                                    arguments: json.into_owned(),
                                }));
                            }
                        }
                        // Thinking and signature deltas are not spoken.
                        _ => {}
                    }
                }
            }
            "message_delta" => {
                if let Some(usage) = &event.usage {
                    self.counts.update(usage);
                }
                if let Some(reason) = event.delta.and_then(|d| d.stop_reason) {
                    out.push(Event::Finish(stop_reason(&reason)));
                }
                out.push(Event::Usage(self.counts.usage()));
            }
            "message_stop" => return Ok(Parsed::Done),
            "error" => return Err(stream_error(event.error)),
            // `ping`, `content_block_stop`, and event types added later.
            _ => {}
        }
        Ok(Parsed::Events(out))
    }
}

fn stop_reason(reason: &str) -> FinishReason {
    match reason {
        "tool_use" => FinishReason::ToolCalls,
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        _ => FinishReason::Stop,
    }
}

/// An `error` event as the HTTP error it stands for, so an overload before the first token falls
/// back to the next model as a 529 response would.
fn stream_error(error: Option<WireError>) -> UpstreamError {
    let (kind, message) = error.map_or((None, None), |e| (e.kind, e.message));
    let status = match kind.as_deref() {
        Some("overloaded_error") => 529,
        Some("rate_limit_error") => 429,
        Some("api_error") => 500,
        Some("timeout_error") => 504,
        Some("invalid_request_error") => 400,
        Some("authentication_error") => 401,
        Some("permission_error") => 403,
        Some("not_found_error") => 404,
        Some("request_too_large") => 413,
        _ => 502,
    };
    UpstreamError::Status {
        status,
        body: format!(
            "error in stream: {} ({})",
            message.as_deref().unwrap_or("unknown error"),
            kind.as_deref().unwrap_or("error")
        ),
    }
}

#[derive(Deserialize)]
struct WireReply {
    #[serde(default)]
    content: Vec<WireBlock>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

/// Parses a non-streamed Messages reply.
pub(super) fn parse_completion(bytes: &[u8]) -> Result<Completion, UpstreamError> {
    let reply: WireReply = serde_json::from_slice(bytes)
        .map_err(|e| UpstreamError::Decode(format!("not a Messages reply: {e}")))?;
    let text: String = reply
        .content
        .into_iter()
        .filter(|b| b.kind == "text")
        .filter_map(|b| b.text)
        .collect();
    let usage = reply.usage.map(|u| {
        let mut counts = Counts::default();
        counts.update(&u);
        counts.usage()
    });
    Ok(Completion {
        text,
        finish: reply.stop_reason.as_deref().map(stop_reason),
        usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::{FunctionCall, ToolCall};

    fn events(decoder: &mut Decoder, data: &str) -> Vec<Event> {
        match decoder.parse(data).unwrap() {
            Parsed::Events(events) => events,
            Parsed::Done => panic!("unexpected end"),
        }
    }

    #[test]
    fn only_events_the_decoder_ignores_are_skipped_unparsed() {
        assert!(carries_nothing("ping"));
        assert!(carries_nothing("content_block_stop"));
        for event in [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "message_delta",
            "message_stop",
            "error",
            "message",
        ] {
            assert!(!carries_nothing(event), "{event}");
        }
    }

    #[test]
    fn a_stream_with_text_and_a_tool_call_is_read_as_events() {
        let mut decoder = Decoder::default();
        assert!(events(&mut decoder, r#"{"type":"message_start","message":{"id":"m","type":"message","role":"assistant","content":[],"model":"claude","stop_reason":null,"usage":{"input_tokens":20,"output_tokens":1,"cache_read_input_tokens":100,"cache_creation_input_tokens":0}}}"#).is_empty());
        assert!(events(&mut decoder, r#"{"type":"ping"}"#).is_empty());
        assert!(events(&mut decoder, r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#).is_empty());
        assert_eq!(
            events(
                &mut decoder,
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"One moment"}}"#
            ),
            vec![Event::Text("One moment".into())]
        );
        assert_eq!(
            events(
                &mut decoder,
                r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"lookup","input":{}}}"#
            ),
            vec![Event::ToolCall(ToolCallDelta {
                index: 0,
                id: Some("toolu_1".into()),
                name: Some("lookup".into()),
                arguments: String::new()
            })]
        );
        assert_eq!(
            events(
                &mut decoder,
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"id\": 1}"}}"#
            ),
            vec![Event::ToolCall(ToolCallDelta {
                index: 0,
                id: None,
                name: None,
                arguments: r#"{"id": 1}"#.into()
            })]
        );
        assert!(events(&mut decoder, r#"{"type":"content_block_stop","index":1}"#).is_empty());
        assert_eq!(
            events(
                &mut decoder,
                r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":15}}"#
            ),
            vec![
                Event::Finish(FinishReason::ToolCalls),
                Event::Usage(Usage {
                    prompt_tokens: 120,
                    completion_tokens: 15,
                    cached_tokens: 100
                })
            ]
        );
        assert!(matches!(
            decoder.parse(r#"{"type":"message_stop"}"#),
            Ok(Parsed::Done)
        ));
    }

    #[test]
    fn error_events_keep_their_status() {
        let mut decoder = Decoder::default();
        let error = decoder
            .parse(r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#)
            .err()
            .unwrap();
        assert!(matches!(error, UpstreamError::Status { status: 529, .. }));
        assert!(error.is_retryable());
        assert!(decoder.parse("garbage").is_err());
    }

    #[test]
    fn the_body_caches_the_static_prefix_and_maps_tools_and_params() {
        let mut assistant = ChatMessage::text(Role::Assistant, "");
        assistant.tool_calls = Some(vec![ToolCall {
            id: "call.1".into(),
            kind: "function".into(),
            function: FunctionCall {
                name: "lookup".into(),
                arguments: r#"{"id":1}"#.into(),
            },
        }]);
        let mut result = ChatMessage::text(Role::Tool, "found");
        result.tool_call_id = Some("call.1".into());
        let messages = vec![
            ChatMessage::text(Role::System, "You are Ava"),
            ChatMessage::text(Role::Assistant, "Hi!"),
            ChatMessage::text(Role::User, "find it"),
            assistant,
            result,
            ChatMessage::text(Role::System, "be brief"),
        ];
        let tools = vec![Tool {
            name: "lookup".into(),
            description: Some("Find".into()),
            parameters: None,
            strict: Some(true),
        }];
        let params = Params {
            temperature: Some(1.5),
            max_tokens: Some(99),
            stop: vec!["END".into(), " ".into()],
            tool_choice: Some(ToolChoice::Required),
            parallel_tool_calls: Some(false),
            user: Some("caller-1".into()),
            seed: Some(3),
            service_tier: Some("default".into()),
            ..Params::default()
        };
        let request = Request {
            messages: &messages,
            summary: Some("Known caller"),
            tools: &tools,
            params: &params,
            stream: true,
        };
        let body = serde_json::to_value(body("claude", &request, 1024)).unwrap();
        assert_eq!(
            body["system"],
            json!([
                {"type": "text", "text": "You are Ava", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Known caller"}
            ])
        );
        assert_eq!(
            body["tools"],
            json!([{"name": "lookup", "description": "Find",
            "input_schema": {"type": "object", "properties": {}}, "cache_control": {"type": "ephemeral"}}])
        );
        assert_eq!(
            body["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": CALL_STARTS}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Hi!"}]},
                {"role": "user", "content": [{"type": "text", "text": "find it"}]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1", "name": "lookup", "input": {"id": 1}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "found"},
                    {"type": "text", "text": "be brief"}
                ]}
            ])
        );
        assert_eq!(body["max_tokens"], 99);
        assert_eq!(body["temperature"], 1.0);
        assert_eq!(body["stop_sequences"], json!(["END"]));
        assert_eq!(
            body["tool_choice"],
            json!({"type": "any", "disable_parallel_tool_use": true})
        );
        assert_eq!(body["metadata"], json!({"user_id": "caller-1"}));
        assert_eq!(body["service_tier"], "standard_only");
        assert_eq!(body["stream"], true);
        assert!(body.get("seed").is_none());
    }

    #[test]
    fn a_whole_reply_is_parsed() {
        let reply = br#"{"id":"m","type":"message","role":"assistant","content":[{"type":"text","text":"{\"a\":1}"}],"stop_reason":"end_turn","usage":{"input_tokens":10,"output_tokens":5}}"#;
        let completion = parse_completion(reply).unwrap();
        assert_eq!(completion.text, r#"{"a":1}"#);
        assert_eq!(completion.finish, Some(FinishReason::Stop));
        assert_eq!(
            completion.usage,
            Some(Usage {
                prompt_tokens: 10,
                completion_tokens: 5,
                cached_tokens: 0
            })
        );
    }
}
