//! What redial answers: streamed `chat.completion.chunk`s or one `chat.completion`.

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::ToolCall;
use crate::upstream::{ToolCallDelta, Usage};

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

/// Builds the chunks of one streamed completion, sharing id, creation time and model. Text
/// chunks — one per token, the hot path — are written straight into a string from a
/// precomputed prefix; the rare tool-call and finish chunks go through `serde_json`.
#[derive(Debug, Clone)]
pub struct ChunkBuilder {
    id: String,
    created: i64,
    model: String,
    role_sent: bool,
    /// `{"id":…,"object":"chat.completion.chunk","created":…,"model":…,"choices":[{"index":0,"delta":{`
    prefix: String,
}

impl ChunkBuilder {
    /// Starts a completion.
    pub fn new(id: String, created: i64, model: String) -> Self {
        let prefix = chunk_prefix(&id, created, &model);
        Self {
            id,
            created,
            model,
            role_sent: false,
            prefix,
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
        self.prefix = chunk_prefix(&self.id, self.created, &self.model);
    }

    /// A content delta, as JSON text. The first delta of the completion also carries `role`.
    pub fn content(&mut self, text: &str) -> String {
        let escaped = serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into());
        let mut out = String::with_capacity(self.prefix.len() + escaped.len() + 64);
        out.push_str(&self.prefix);
        if !self.role_sent {
            self.role_sent = true;
            out.push_str(r#""role":"assistant","#);
        }
        out.push_str(r#""content":"#);
        out.push_str(&escaped);
        out.push_str(r#"},"finish_reason":null}]}"#);
        out
    }

    /// A tool-call fragment in OpenAI's exact streaming shape (`index`; on a call's first
    /// fragment `id`, `type` and `function.name`; `function.arguments`), as JSON text.
    pub fn tool_call(&mut self, fragment: &ToolCallDelta) -> String {
        let mut call = Map::new();
        call.insert("index".into(), json!(fragment.index));
        if let Some(id) = &fragment.id {
            call.insert("id".into(), json!(id));
            call.insert("type".into(), json!("function"));
        }
        let mut function = Map::new();
        if let Some(name) = &fragment.name {
            function.insert("name".into(), json!(name));
        }
        function.insert("arguments".into(), json!(fragment.arguments));
        call.insert("function".into(), Value::Object(function));
        let delta = self.with_role(json!({"tool_calls": [call]}));
        self.chunk(&delta, None)
    }

    /// The usage chunk a client asked for with `stream_options.include_usage`: no choices, and
    /// the usage of the whole turn, as JSON text.
    pub fn usage(&self, usage: &Usage) -> String {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage_json(usage),
        })
        .to_string()
    }

    /// The final chunk: empty delta and the finish reason, as JSON text.
    pub fn finish(&mut self, reason: FinishReason) -> String {
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

    fn chunk(&self, delta: &Value, finish: Option<FinishReason>) -> String {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
        .to_string()
    }
}

fn chunk_prefix(id: &str, created: i64, model: &str) -> String {
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    format!(
        r#"{{"id":{},"object":"chat.completion.chunk","created":{created},"model":{},"choices":[{{"index":0,"delta":{{"#,
        quote(id),
        quote(model)
    )
}

/// OpenAI's `usage` object.
pub fn usage_json(usage: &Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    })
}

/// A non-streamed `chat.completion`, with the turn's usage.
pub fn completion(
    id: &str,
    created: i64,
    model: &str,
    text: &str,
    tool_calls: &[ToolCall],
    finish: FinishReason,
    usage: &Usage,
) -> Value {
    let mut message = json!({"role": "assistant", "content": text});
    if !tool_calls.is_empty() {
        message["tool_calls"] = json!(tool_calls);
    }
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": usage_json(usage),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_chunks_are_exact_openai_chunks() {
        let mut chunks = ChunkBuilder::new("chatcmpl-1".into(), 1_755_700_000, "m\"x".into());
        let first: Value = serde_json::from_str(&chunks.content("Hi \"there\"\n")).unwrap();
        assert_eq!(
            first,
            json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1_755_700_000,
                   "model": "m\"x", "choices": [{"index": 0,
                   "delta": {"role": "assistant", "content": "Hi \"there\"\n"}, "finish_reason": null}]})
        );
        chunks.set_model("other");
        let second: Value = serde_json::from_str(&chunks.content("!")).unwrap();
        assert_eq!(second["choices"][0]["delta"], json!({"content": "!"}));
        assert_eq!(second["model"], "other");
        let finish: Value = serde_json::from_str(&chunks.finish(FinishReason::Stop)).unwrap();
        assert_eq!(
            finish["choices"][0],
            json!({"index": 0, "delta": {}, "finish_reason": "stop"})
        );
    }
}
