//! What redial answers: streamed `chat.completion.chunk`s or one `chat.completion`.

use serde::Serialize;
use serde_json::{Value, json};

/// Why a completion ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// Natural end.
    Stop,
    /// The model called platform tools.
    ToolCalls,
    /// The token limit was reached.
    Length,
}

impl FinishReason {
    /// Parses an upstream `finish_reason`; unknown values count as `stop`.
    pub fn parse(value: &str) -> Self {
        match value {
            "tool_calls" | "function_call" => Self::ToolCalls,
            "length" => Self::Length,
            _ => Self::Stop,
        }
    }
}

/// Builds the chunks of one streamed completion, sharing id, creation time and model.
#[derive(Debug, Clone)]
pub struct ChunkBuilder {
    id: String,
    created: i64,
    model: String,
    role_sent: bool,
}

impl ChunkBuilder {
    /// Starts a completion.
    pub fn new(id: String, created: i64, model: String) -> Self {
        Self {
            id,
            created,
            model,
            role_sent: false,
        }
    }

    /// The completion id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The model reported to the client.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Sets the model reported from now on.
    pub fn set_model(&mut self, model: &str) {
        model.clone_into(&mut self.model);
    }

    /// A content delta. The first delta of the completion also carries `role`.
    pub fn content(&mut self, text: &str) -> Value {
        let delta = self.with_role(json!({"content": text}));
        self.chunk(&delta, None)
    }

    /// A tool-call delta, passed through in OpenAI's exact streaming shape.
    pub fn tool_call(&mut self, delta: &Value) -> Value {
        let delta = self.with_role(json!({"tool_calls": [delta]}));
        self.chunk(&delta, None)
    }

    /// The final chunk: empty delta and the finish reason.
    pub fn finish(&mut self, reason: FinishReason) -> Value {
        let delta = self.with_role(json!({}));
        self.chunk(&delta, Some(reason))
    }

    fn with_role(&mut self, mut delta: Value) -> Value {
        if !self.role_sent {
            self.role_sent = true;
            delta["role"] = json!("assistant");
        }
        delta
    }

    fn chunk(&self, delta: &Value, finish: Option<FinishReason>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
    }
}

/// A non-streamed `chat.completion`.
pub fn completion(
    id: &str,
    created: i64,
    model: &str,
    text: &str,
    tool_calls: &[Value],
    finish: FinishReason,
) -> Value {
    let mut message = json!({"role": "assistant", "content": text});
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls.to_vec());
    }
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
    })
}
