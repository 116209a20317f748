//! The provider-neutral request and event stream: what the engine, the Retell transport and
//! analysis hand a provider, and what every provider's stream is read back as. No wire format
//! lives here; each provider module maps these to and from its own.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::openai::{ChatMessage, FinishReason};

/// One request to a model, in any provider's terms.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The conversation. Leading system/developer messages are the static instructions.
    pub messages: &'a [ChatMessage],
    /// redial's per-call state summary: placed after the static instructions (and after the
    /// tools), so the static part is a stable, cacheable prefix.
    pub summary: Option<&'a str>,
    /// Tools offered to the model.
    pub tools: &'a [Tool],
    /// Sampling and request parameters.
    pub params: &'a Params,
    /// Stream the reply.
    pub stream: bool,
}

/// A function tool, with only the fields every provider understands. Platform additions (Vapi's
/// `server`, `async`, `messages`…) are not part of it, so they never reach an upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    /// Function name.
    pub name: String,
    /// What it does, for the model.
    pub description: Option<String>,
    /// JSON Schema of the arguments. Shared: the same tools go with every turn of a call, and
    /// redial's own are built once per process.
    pub parameters: Option<Arc<Value>>,
    /// OpenAI's strict schema adherence.
    pub strict: Option<bool>,
}

impl Tool {
    /// A tool from an OpenAI-shaped definition (`{"type": "function", "function": {...}}`).
    /// Anything else — a Vapi `transferCall` or `endCall`, a definition without a name — is left
    /// out, and each such kind is logged once per process.
    pub fn from_openai(definition: &Value) -> Option<Self> {
        let kind = definition
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("function");
        let function = definition.get("function").filter(|_| kind == "function");
        let name = function
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty());
        let (Some(function), Some(name)) = (function, name) else {
            log_left_out(kind);
            return None;
        };
        Some(Self {
            name: name.to_owned(),
            description: function
                .get("description")
                .and_then(Value::as_str)
                .map(str::to_owned),
            parameters: function
                .get("parameters")
                .filter(|p| p.is_object())
                .map(|p| Arc::new(p.clone())),
            strict: function.get("strict").and_then(Value::as_bool),
        })
    }

    /// The tools of a request's `tools` array that an upstream can take.
    pub fn from_openai_list(definitions: &[Value]) -> Vec<Self> {
        definitions.iter().filter_map(Self::from_openai).collect()
    }
}

/// Logs a tool kind redial leaves out, once per kind and process (every turn of every call
/// carries the same tools).
fn log_left_out(kind: &str) {
    static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let seen = SEEN.get_or_init(Mutex::default);
    let first = seen
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(kind.to_owned());
    metrics::counter!("redial_tools_left_out_total").increment(1);
    if first {
        tracing::info!(
            kind,
            "a tool of this type is not a function tool (or has no name): it is not sent \
             upstream (logged once per type)"
        );
    }
}

/// How the model may use tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model decides.
    Auto,
    /// No tool calls.
    None,
    /// At least one tool call.
    Required,
    /// This function.
    Function(String),
}

/// The request parameters a client may set, typed. Each provider forwards those it understands
/// (mapped where its API has an equivalent) and drops the rest; the README lists both.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params {
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    pub top_p: Option<f64>,
    /// Reply length bound (legacy name).
    pub max_tokens: Option<u64>,
    /// Reply length bound.
    pub max_completion_tokens: Option<u64>,
    /// Stop sequences.
    pub stop: Vec<String>,
    /// Presence penalty.
    pub presence_penalty: Option<f64>,
    /// Frequency penalty.
    pub frequency_penalty: Option<f64>,
    /// Sampling seed.
    pub seed: Option<i64>,
    /// Token biases.
    pub logit_bias: Option<Map<String, Value>>,
    /// Tool choice.
    pub tool_choice: Option<ToolChoice>,
    /// Whether several tool calls may come in one reply.
    pub parallel_tool_calls: Option<bool>,
    /// Structured output format.
    pub response_format: Option<Value>,
    /// Reasoning effort of reasoning models.
    pub reasoning_effort: Option<String>,
    /// The end user's id.
    pub user: Option<String>,
    /// Stored-completion metadata (OpenAI accepts it only with `store`).
    pub metadata: Option<Map<String, Value>>,
    /// Whether OpenAI stores the completion.
    pub store: Option<bool>,
    /// Processing tier.
    pub service_tier: Option<String>,
    /// Prompt-cache routing key.
    pub prompt_cache_key: Option<String>,
    /// A stable id of the end user for abuse detection.
    pub safety_identifier: Option<String>,
    /// Reply verbosity of models that support it.
    pub verbosity: Option<String>,
}

/// The request parameters, by their OpenAI names, that [`Params`] holds.
pub const KNOWN_PARAMS: &[&str] = &[
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
    "metadata",
    "store",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
    "verbosity",
];

/// A request parameter with a value of the wrong type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value for `{param}`: {message}")]
pub struct ParamError {
    /// The parameter.
    pub param: String,
    /// What is wrong with it.
    pub message: String,
}

impl Params {
    /// Reads the known parameters from a request's top-level fields (`extra`) and its `user`.
    /// `null` is unset; a non-positive `max_tokens` is unset too (ElevenLabs sends `-1` for
    /// "unlimited", which upstreams reject). A value of the wrong type is an error naming it.
    /// Platform metadata such as Vapi's `metadata` object of call details is read as
    /// [`Params::metadata`] only when it is an object, and only forwarded under the rules of
    /// each provider.
    pub fn from_request(
        extra: &Map<String, Value>,
        user: Option<&str>,
    ) -> Result<Self, ParamError> {
        let get = |key: &str| extra.get(key).filter(|v| !v.is_null());
        let fail = |param: &str, expected: &str| ParamError {
            param: param.to_owned(),
            message: format!("expected {expected}"),
        };
        let number = |key: &str| -> Result<Option<f64>, ParamError> {
            get(key)
                .map(|v| v.as_f64().ok_or_else(|| fail(key, "a number")))
                .transpose()
        };
        let string = |key: &str| -> Result<Option<String>, ParamError> {
            get(key)
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| fail(key, "a string"))
                })
                .transpose()
        };
        let boolean = |key: &str| -> Result<Option<bool>, ParamError> {
            get(key)
                .map(|v| v.as_bool().ok_or_else(|| fail(key, "true or false")))
                .transpose()
        };
        let object = |key: &str| -> Result<Option<Map<String, Value>>, ParamError> {
            get(key)
                .map(|v| v.as_object().cloned().ok_or_else(|| fail(key, "an object")))
                .transpose()
        };
        let tokens = |key: &str| -> Result<Option<u64>, ParamError> {
            let Some(n) = number(key)? else {
                return Ok(None);
            };
            // Non-positive means "no limit" to some platforms.
            if n <= 0.0 {
                return Ok(None);
            }
            if n.fract() != 0.0 || n > u32::MAX as f64 {
                return Err(fail(key, "a whole number of tokens"));
            }
            Ok(Some(n as u64))
        };
        let stop = match get("stop") {
            None => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| i.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| fail("stop", "a string or an array of strings"))?,
            Some(_) => return Err(fail("stop", "a string or an array of strings")),
        };
        let tool_choice = match get("tool_choice") {
            None => None,
            Some(Value::String(s)) => Some(match s.as_str() {
                "auto" => ToolChoice::Auto,
                "none" => ToolChoice::None,
                "required" => ToolChoice::Required,
                _ => {
                    return Err(fail(
                        "tool_choice",
                        "\"auto\", \"none\", \"required\" or a function",
                    ));
                }
            }),
            Some(v) => {
                let name = v
                    .pointer("/function/name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        fail(
                            "tool_choice",
                            "\"auto\", \"none\", \"required\" or a function",
                        )
                    })?;
                Some(ToolChoice::Function(name.to_owned()))
            }
        };
        let seed = match number("seed")? {
            Some(n) if n.fract() == 0.0 => Some(n as i64),
            Some(_) => return Err(fail("seed", "an integer")),
            None => None,
        };
        let metadata = get("metadata").and_then(Value::as_object).cloned();
        let response_format = match get("response_format") {
            Some(v) if !v.is_object() => return Err(fail("response_format", "an object")),
            other => other.cloned(),
        };
        Ok(Self {
            temperature: number("temperature")?,
            top_p: number("top_p")?,
            max_tokens: tokens("max_tokens")?,
            max_completion_tokens: tokens("max_completion_tokens")?,
            stop,
            presence_penalty: number("presence_penalty")?,
            frequency_penalty: number("frequency_penalty")?,
            seed,
            logit_bias: object("logit_bias")?,
            tool_choice,
            parallel_tool_calls: boolean("parallel_tool_calls")?,
            response_format,
            reasoning_effort: string("reasoning_effort")?,
            user: user.filter(|u| !u.is_empty()).map(str::to_owned),
            metadata,
            store: boolean("store")?,
            service_tier: string("service_tier")?,
            prompt_cache_key: string("prompt_cache_key")?,
            safety_identifier: string("safety_identifier")?,
            verbosity: string("verbosity")?,
        })
    }
}

/// One piece of a model's streamed reply, whatever the provider.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Text to speak.
    Text(String),
    /// A fragment of a tool call.
    ToolCall(ToolCallDelta),
    /// The model finished.
    Finish(FinishReason),
    /// Token usage of the reply (the last one of a stream counts).
    Usage(Usage),
}

/// A fragment of a streamed tool call: the first fragment of a call carries its id and name,
/// later ones pieces of its JSON arguments.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ToolCallDelta {
    /// Which call of the reply (0, 1, …).
    pub index: u32,
    /// The call id (first fragment).
    pub id: Option<String>,
    /// The function name (first fragment).
    pub name: Option<String>,
    /// A piece of the arguments JSON.
    pub arguments: String,
}

/// Tokens one model reply used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Input tokens, cached ones included.
    pub prompt_tokens: u64,
    /// Output tokens.
    pub completion_tokens: u64,
    /// Input tokens read from the provider's prompt cache.
    pub cached_tokens: u64,
}

impl Usage {
    /// Adds another reply's usage.
    pub fn add(&mut self, other: Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.cached_tokens += other.cached_tokens;
    }

    /// Whether nothing was counted.
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

/// A whole (non-streamed) reply.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Completion {
    /// The reply text.
    pub text: String,
    /// Why it ended.
    pub finish: Option<FinishReason>,
    /// Tokens used.
    pub usage: Option<Usage>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn vapi_only_tool_keys_and_non_function_tools_are_left_out() {
        let tools = vec![
            json!({"type": "function", "async": true, "server": {"url": "https://x"},
                   "messages": [{"type": "request-start", "content": "Checking"}],
                   "function": {"name": "lookup", "description": "Find", "strict": true,
                                "parameters": {"type": "object"}, "extra": 1}}),
            json!({"type": "transferCall", "destinations": []}),
            json!({"type": "function", "function": {"description": "no name"}}),
        ];
        let clean = Tool::from_openai_list(&tools);
        assert_eq!(
            clean,
            vec![Tool {
                name: "lookup".into(),
                description: Some("Find".into()),
                parameters: Some(Arc::new(json!({"type": "object"}))),
                strict: Some(true),
            }]
        );
    }

    #[test]
    fn params_are_typed_and_wrong_types_name_the_param() {
        let extra: Map<String, Value> = serde_json::from_value(json!({
            "temperature": 0.5, "max_tokens": -1, "max_completion_tokens": 200, "stop": "END",
            "tool_choice": {"type": "function", "function": {"name": "f"}}, "seed": 7,
            "service_tier": "flex", "prompt_cache_key": "k", "metadata": {"a": "b"},
            "call": {"id": "x"}, "verbosity": null
        }))
        .unwrap();
        let params = Params::from_request(&extra, Some("u-1")).unwrap();
        assert_eq!(params.temperature, Some(0.5));
        assert_eq!(params.max_tokens, None);
        assert_eq!(params.max_completion_tokens, Some(200));
        assert_eq!(params.stop, ["END"]);
        assert_eq!(params.tool_choice, Some(ToolChoice::Function("f".into())));
        assert_eq!(params.seed, Some(7));
        assert_eq!(params.user.as_deref(), Some("u-1"));
        assert_eq!(params.service_tier.as_deref(), Some("flex"));
        assert_eq!(params.verbosity, None);
        for (key, value) in [
            ("temperature", json!("hot")),
            ("stop", json!([1])),
            ("tool_choice", json!("sometimes")),
            ("max_tokens", json!(1.5)),
            ("store", json!("yes")),
        ] {
            let extra: Map<String, Value> = [(key.to_owned(), value)].into_iter().collect();
            let error = Params::from_request(&extra, None).unwrap_err();
            assert_eq!(error.param, key);
        }
    }
}
