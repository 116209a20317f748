//! OpenAI-compatible Chat Completions (`POST {base_url}/chat/completions`): OpenAI, Azure OpenAI,
//! Gemini's and Groq's OpenAI endpoints, vLLM, Ollama, LiteLLM… The wire format of this provider
//! lives here only.
//!
//! Chunk parsing runs for every token of every stream, so a chunk is deserialised into borrowed,
//! typed fields (no intermediate `serde_json::Value` tree).

use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde::ser::SerializeSeq;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value, json};

use super::UpstreamError;
use super::types::{Completion, Event, Params, Request, Tool, ToolCallDelta, ToolChoice, Usage};
use crate::openai::{ChatMessage, FinishReason};

/// Every parameter this provider forwards, by name (the README lists them).
pub const FORWARDED: &[&str] = &[
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "logit_bias",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "reasoning_effort",
    "user",
    "metadata",
    "store",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
    "verbosity",
];

/// The request body, serialised straight from the request: the conversation and the tools'
/// schemas are borrowed, not copied into a `serde_json::Value` tree first (deep-cloning every
/// schema was a quarter of building a turn's upstream request). `stream_usage` asks for the
/// usage chunk at the end of a stream (`stream_options.include_usage`).
pub(super) fn body<'a>(model: &'a str, request: &Request<'a>, stream_usage: bool) -> Body<'a> {
    let mut params = Map::new();
    set_params(&mut params, request.params, !request.tools.is_empty());
    Body {
        model,
        messages: Messages {
            messages: request.messages,
            summary: request.summary,
        },
        stream: request.stream,
        stream_options: (request.stream && stream_usage).then_some(StreamOptions {
            include_usage: true,
        }),
        tools: request.tools,
        params,
    }
}

/// A Chat Completions request body (see [`body`]).
#[derive(Serialize)]
pub(super) struct Body<'a> {
    model: &'a str,
    messages: Messages<'a>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "<[Tool]>::is_empty", serialize_with = "tools")]
    tools: &'a [Tool],
    /// The forwarded parameters, by name.
    #[serde(flatten)]
    params: Map<String, Value>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// The platform's messages with the summary as one system message right after the leading
/// system/developer instructions (so the instructions stay a stable prefix for prompt caching).
struct Messages<'a> {
    messages: &'a [ChatMessage],
    summary: Option<&'a str>,
}

impl Serialize for Messages<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let split = self
            .messages
            .iter()
            .position(|m| !m.is_instruction())
            .unwrap_or(self.messages.len());
        let (instructions, conversation) = self.messages.split_at(split);
        let len = self.messages.len() + usize::from(self.summary.is_some());
        let mut seq = serializer.serialize_seq(Some(len))?;
        for message in instructions {
            seq.serialize_element(message)?;
        }
        if let Some(summary) = self.summary {
            seq.serialize_element(&SystemNote {
                role: "system",
                content: summary,
            })?;
        }
        for message in conversation {
            seq.serialize_element(message)?;
        }
        seq.end()
    }
}

#[derive(Serialize)]
struct SystemNote<'a> {
    role: &'static str,
    content: &'a str,
}

/// The tools as function tools.
fn tools<S: Serializer>(tools: &&[Tool], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(tools.iter().map(|tool| FunctionTool {
        kind: "function",
        function: FunctionDef {
            name: &tool.name,
            description: tool.description.as_deref(),
            parameters: tool.parameters.as_deref(),
            strict: tool.strict,
        },
    }))
}

#[derive(Serialize)]
struct FunctionTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionDef<'a>,
}

#[derive(Serialize)]
struct FunctionDef<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    strict: Option<bool>,
}

/// Every set parameter, under its own name. `tool_choice` and `parallel_tool_calls` only with
/// tools (OpenAI rejects them without); `metadata` only with `store: true` (OpenAI accepts it
/// only for stored completions — and a voice platform's `metadata` is its own call data).
fn set_params(body: &mut Map<String, Value>, params: &Params, with_tools: bool) {
    let mut set = |key: &str, value: Value| {
        body.insert(key.to_owned(), value);
    };
    let Params {
        temperature,
        top_p,
        max_tokens,
        max_completion_tokens,
        stop,
        presence_penalty,
        frequency_penalty,
        seed,
        logit_bias,
        tool_choice,
        parallel_tool_calls,
        response_format,
        reasoning_effort,
        user,
        metadata,
        store,
        service_tier,
        prompt_cache_key,
        safety_identifier,
        verbosity,
    } = params;
    let numbers = [
        ("temperature", temperature),
        ("top_p", top_p),
        ("presence_penalty", presence_penalty),
        ("frequency_penalty", frequency_penalty),
    ];
    for (key, value) in numbers {
        if let Some(v) = value {
            set(key, json!(v));
        }
    }
    if let Some(v) = max_tokens {
        set("max_tokens", json!(v));
    }
    if let Some(v) = max_completion_tokens {
        set("max_completion_tokens", json!(v));
    }
    if !stop.is_empty() {
        set("stop", json!(stop));
    }
    if let Some(v) = seed {
        set("seed", json!(v));
    }
    if let Some(v) = logit_bias {
        set("logit_bias", Value::Object(v.clone()));
    }
    if with_tools {
        if let Some(choice) = tool_choice {
            set(
                "tool_choice",
                match choice {
                    ToolChoice::Auto => json!("auto"),
                    ToolChoice::None => json!("none"),
                    ToolChoice::Required => json!("required"),
                    ToolChoice::Function(name) => {
                        json!({"type": "function", "function": {"name": name}})
                    }
                },
            );
        }
        if let Some(v) = parallel_tool_calls {
            set("parallel_tool_calls", json!(v));
        }
    }
    if let Some(v) = response_format {
        set("response_format", v.clone());
    }
    let strings = [
        ("reasoning_effort", reasoning_effort),
        ("user", user),
        ("service_tier", service_tier),
        ("prompt_cache_key", prompt_cache_key),
        ("safety_identifier", safety_identifier),
        ("verbosity", verbosity),
    ];
    for (key, value) in strings {
        if let Some(v) = value {
            set(key, json!(v));
        }
    }
    if let Some(v) = store {
        set("store", json!(v));
    }
    if let (Some(true), Some(metadata)) = (store, metadata) {
        set("metadata", Value::Object(metadata.clone()));
    }
}

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    choices: Vec<Choice<'a>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<StreamError>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default, borrow)]
    delta: Option<ChunkDelta<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ChunkDelta<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolDelta>>,
    #[serde(default, rename = "role")]
    _role: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct WireToolDelta {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<WireFunction>,
}

#[derive(Deserialize)]
struct WireFunction {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

impl From<WireUsage> for Usage {
    fn from(usage: WireUsage) -> Self {
        Self {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            cached_tokens: usage
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
        }
    }
}

#[derive(Deserialize)]
struct StreamError {
    #[serde(default)]
    message: Option<String>,
}

/// What one SSE event meant.
pub(super) enum Parsed {
    /// Events (possibly none: a keep-alive).
    Events(Vec<Event>),
    /// `[DONE]`.
    Done,
}

/// Parses the `data:` of one SSE event. An `{"error":…}` object is an upstream failure.
pub(super) fn parse_event(data: &str) -> Result<Parsed, UpstreamError> {
    if data == "[DONE]" {
        return Ok(Parsed::Done);
    }
    parse_chunk(data).map(Parsed::Events)
}

/// Parses one `chat.completion.chunk`.
pub fn parse_chunk(data: &str) -> Result<Vec<Event>, UpstreamError> {
    let chunk: Chunk<'_> = serde_json::from_str(data)
        .map_err(|e| UpstreamError::Decode(format!("chunk is not a completion chunk: {e}")))?;
    if let Some(error) = chunk.error {
        let message = error.message.unwrap_or_else(|| "unknown error".into());
        return Err(UpstreamError::Status {
            status: 502,
            body: format!("error in stream: {message}"),
        });
    }
    let mut out = Vec::new();
    if let Some(choice) = chunk.choices.into_iter().next() {
        if let Some(delta) = choice.delta {
            if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                out.push(Event::Text(text.into_owned()));
            }
            out.extend(delta.tool_calls.into_iter().flatten().map(|call| {
                let (name, arguments) = call
                    .function
                    .map_or((None, None), |f| (f.name, f.arguments));
                Event::ToolCall(ToolCallDelta {
                    index: call.index,
                    id: call.id,
                    name,
                    arguments: arguments.unwrap_or_default(),
                })
            }));
        }
        if let Some(reason) = choice.finish_reason {
            out.push(Event::Finish(FinishReason::parse(&reason)));
        }
    }
    if let Some(usage) = chunk.usage {
        out.push(Event::Usage(usage.into()));
    }
    Ok(out)
}

#[derive(Deserialize)]
struct WireCompletion {
    #[serde(default)]
    choices: Vec<WireCompletionChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireCompletionChoice {
    #[serde(default)]
    message: Option<WireMessage>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Option<String>,
}

/// Parses a `chat.completion`.
pub(super) fn parse_completion(bytes: &[u8]) -> Result<Completion, UpstreamError> {
    let reply: WireCompletion = serde_json::from_slice(bytes)
        .map_err(|e| UpstreamError::Decode(format!("not a chat.completion: {e}")))?;
    let choice = reply.choices.into_iter().next();
    let (text, finish) = choice.map_or((String::new(), None), |c| {
        (
            c.message.and_then(|m| m.content).unwrap_or_default(),
            c.finish_reason.map(|r| FinishReason::parse(&r)),
        )
    });
    Ok(Completion {
        text,
        finish,
        usage: reply.usage.map(Usage::from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::Role;

    #[test]
    fn text_tool_finish_and_usage_events_are_parsed() {
        let text = r#"{"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi \"you\"\n"},"finish_reason":null}]}"#;
        assert_eq!(
            parse_chunk(text).unwrap(),
            vec![Event::Text("Hi \"you\"\n".into())]
        );
        let tool = r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"c","type":"function","function":{"name":"f","arguments":""}}]}}]}"#;
        assert_eq!(
            parse_chunk(tool).unwrap(),
            vec![Event::ToolCall(ToolCallDelta {
                index: 1,
                id: Some("c".into()),
                name: Some("f".into()),
                arguments: String::new(),
            })]
        );
        let finish = r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#;
        assert_eq!(
            parse_chunk(finish).unwrap(),
            vec![Event::Finish(FinishReason::ToolCalls)]
        );
        let usage = r#"{"choices":[],"usage":{"prompt_tokens":30,"completion_tokens":4,"total_tokens":34,"prompt_tokens_details":{"cached_tokens":12}}}"#;
        assert_eq!(
            parse_chunk(usage).unwrap(),
            vec![Event::Usage(Usage {
                prompt_tokens: 30,
                completion_tokens: 4,
                cached_tokens: 12
            })]
        );
        assert!(
            parse_chunk(r#"{"choices":[{"delta":{"content":null}}],"usage":null}"#)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn errors_in_the_stream_and_garbage_are_failures() {
        assert!(parse_chunk(r#"{"error":{"message":"overloaded"}}"#).is_err());
        assert!(parse_chunk("not json").is_err());
    }

    #[test]
    fn the_body_carries_clean_tools_the_summary_after_the_instructions_and_usage_options() {
        let messages = vec![
            ChatMessage::text(Role::System, "sys"),
            ChatMessage::text(Role::Developer, "dev"),
            ChatMessage::text(Role::User, "hi"),
            ChatMessage::text(Role::System, "late"),
        ];
        let tools = vec![Tool {
            name: "f".into(),
            description: None,
            parameters: Some(std::sync::Arc::new(json!({"type": "object"}))),
            strict: None,
        }];
        let params = Params {
            temperature: Some(0.2),
            tool_choice: Some(ToolChoice::Required),
            user: Some("u".into()),
            prompt_cache_key: Some("k".into()),
            service_tier: Some("flex".into()),
            metadata: Some(Map::new()),
            ..Params::default()
        };
        let request = Request {
            messages: &messages,
            summary: Some("mem"),
            tools: &tools,
            params: &params,
            stream: true,
        };
        let body = serde_json::to_value(body("m", &request, true)).unwrap();
        let texts: Vec<_> = body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["content"].as_str().unwrap())
            .collect();
        assert_eq!(texts, ["sys", "dev", "mem", "hi", "late"]);
        assert_eq!(
            body["tools"],
            json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])
        );
        assert_eq!(body["stream_options"], json!({"include_usage": true}));
        assert_eq!(body["tool_choice"], "required");
        assert_eq!(body["user"], "u");
        assert_eq!(body["prompt_cache_key"], "k");
        assert_eq!(body["service_tier"], "flex");
        assert!(body.get("metadata").is_none(), "metadata only with store");
        let no_tools = Request {
            tools: &[],
            ..request
        };
        let no_tools = serde_json::to_value(super::body("m", &no_tools, false)).unwrap();
        assert!(no_tools.get("tool_choice").is_none());
        assert!(no_tools.get("tools").is_none());
        assert!(
            no_tools.get("stream_options").is_none(),
            "usage asked only when configured"
        );
    }
}
