//! Tool calls assembled from an upstream's streamed fragments.

use serde_json::{Value, json};

use crate::openai::{FunctionCall, ToolCall};

/// Tool calls assembled from streamed fragments, by index.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ToolCalls(Vec<Value>);

impl ToolCalls {
    /// Adds one streamed fragment.
    pub fn push(&mut self, fragment: &Value) {
        let index = fragment.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
        while self.0.len() <= index {
            self.0.push(
                json!({"id": "", "type": "function", "function": {"name": "", "arguments": ""}}),
            );
        }
        let call = &mut self.0[index];
        if let Some(id) = fragment.get("id").and_then(Value::as_str) {
            call["id"] = json!(id);
        }
        let function = fragment.get("function");
        if let Some(name) = function.and_then(|f| f.get("name")).and_then(Value::as_str) {
            call["function"]["name"] = json!(name);
        }
        if let Some(args) = function
            .and_then(|f| f.get("arguments"))
            .and_then(Value::as_str)
        {
            let joined = format!(
                "{}{args}",
                call["function"]["arguments"].as_str().unwrap_or("")
            );
            call["function"]["arguments"] = json!(joined);
        }
    }

    /// Whether no call was made.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The complete calls, in OpenAI's `message.tool_calls` shape.
    pub fn calls(&self) -> &[Value] {
        &self.0
    }

    /// The complete calls as typed tool calls (ids minted for calls that had none).
    pub(crate) fn into_calls(self) -> Vec<ToolCall> {
        self.0
            .into_iter()
            .enumerate()
            .map(|(i, call)| ToolCall {
                id: call["id"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .map_or_else(|| format!("call_redial_{i}"), str::to_owned),
                kind: "function".into(),
                function: FunctionCall {
                    name: call["function"]["name"].as_str().unwrap_or("").to_owned(),
                    arguments: call["function"]["arguments"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned(),
                },
            })
            .collect()
    }
}
