//! What the mock does with one request: the default stream ([`MockConfig`]) and the scriptable
//! per-request [`Behavior`]s.

use std::time::Duration;

/// The default behaviour of the mock when no scripted [`Behavior`] is queued for a request: after
/// `ttft`, stream `tokens` content chunks, each with content `token`, `inter_token` apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MockConfig {
    /// Time from receiving the request to the first content chunk (response headers are sent at
    /// once, as a real provider does).
    pub ttft: Duration,
    /// Gap between consecutive content chunks.
    pub inter_token: Duration,
    /// Number of content chunks.
    pub tokens: usize,
    /// The content of every chunk, e.g. `"Hello "`.
    pub token: String,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            ttft: Duration::ZERO,
            inter_token: Duration::ZERO,
            tokens: 5,
            token: "Hello ".to_owned(),
        }
    }
}

impl MockConfig {
    /// The [`Behavior::Text`] this configuration stands for.
    pub fn to_behavior(&self) -> Behavior {
        Behavior::Text {
            chunks: vec![self.token.clone(); self.tokens],
            ttft: self.ttft,
            gap: self.inter_token,
        }
    }
}

/// A scripted answer to one request, queued with [`super::MockUpstream::push`].
///
/// In non-streaming mode (`"stream": false` or no `stream` key) `Text` and `ToolCalls` wait for
/// the time the stream would have taken and answer one `chat.completion` JSON; `Status` and
/// `Stall` behave the same in both modes; `StallAfter` sends the headers and then hangs, and
/// `CutAfter` sends the headers and then cuts the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// Stream `chunks` as content deltas (the first after `ttft`, the rest `gap` apart), then a
    /// `finish_reason: "stop"` chunk, then `data: [DONE]`.
    Text {
        /// Content of each delta.
        chunks: Vec<String>,
        /// Delay before the first content delta.
        ttft: Duration,
        /// Delay between consecutive content deltas.
        gap: Duration,
    },
    /// Stream optional text, then OpenAI-style streamed tool calls: per call, a first delta with
    /// `index`, `id` (`call_<n>`, `n` counting every tool call this mock has produced, from 0),
    /// `type` and `function{name, arguments: ""}`, then the arguments in at least two fragments;
    /// then `finish_reason: "tool_calls"` and `data: [DONE]`.
    ToolCalls {
        /// Content streamed before the tool calls, if any.
        text_before: Option<String>,
        /// `(function name, arguments as a JSON string)` per call.
        calls: Vec<(String, String)>,
    },
    /// Answer at once with this HTTP status and body (`application/json` when the body parses as
    /// JSON, `text/plain` otherwise).
    Status {
        /// HTTP status code.
        code: u16,
        /// Response body.
        body: String,
    },
    /// Accept the request but never send response headers (hold for ten minutes).
    Stall,
    /// Send the headers and these content chunks, then hang without closing the connection.
    StallAfter {
        /// Content of each delta sent before hanging.
        chunks: Vec<String>,
    },
    /// Send the headers and these content chunks, then abruptly close the connection (no finish
    /// chunk, no `[DONE]`, no terminating HTTP chunk), so the client sees an incomplete body.
    CutAfter {
        /// Content of each delta sent before the cut.
        chunks: Vec<String>,
    },
}

impl Behavior {
    /// A text stream of `chunks` with no delays.
    pub fn text<I, S>(chunks: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::Text {
            chunks: chunks.into_iter().map(Into::into).collect(),
            ttft: Duration::ZERO,
            gap: Duration::ZERO,
        }
    }

    /// One tool call `name(arguments)` with no text before it.
    pub fn tool_call(name: impl Into<String>, arguments: impl Into<String>) -> Self {
        Self::ToolCalls {
            text_before: None,
            calls: vec![(name.into(), arguments.into())],
        }
    }

    /// An HTTP error with an OpenAI-shaped JSON body.
    pub fn error(code: u16, message: &str) -> Self {
        let body = serde_json::json!({
            "error": {"message": message, "type": "mock_error", "code": code}
        });
        Self::Status {
            code,
            body: body.to_string(),
        }
    }
}
