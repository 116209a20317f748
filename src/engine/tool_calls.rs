//! Tool calls assembled from an upstream's streamed fragments.

use crate::openai::{FunctionCall, ToolCall};
use crate::upstream::ToolCallDelta;

/// Most tool calls one reply may make; fragments of calls past it are dropped (a reply is not
/// allowed to make redial allocate without bound).
const MAX_CALLS: usize = 64;

/// Tool calls assembled from streamed fragments, by index.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ToolCalls(Vec<ToolCall>);

impl ToolCalls {
    /// Adds one streamed fragment.
    pub fn push(&mut self, fragment: &ToolCallDelta) {
        let index = fragment.index as usize;
        if index >= MAX_CALLS {
            tracing::warn!(
                index,
                "a tool call past the {MAX_CALLS}th of one reply is dropped"
            );
            return;
        }
        while self.0.len() <= index {
            self.0.push(ToolCall {
                id: String::new(),
                kind: "function".into(),
                function: FunctionCall {
                    name: String::new(),
                    arguments: String::new(),
                },
            });
        }
        let call = &mut self.0[index];
        if let Some(id) = &fragment.id {
            call.id.clone_from(id);
        }
        if let Some(name) = &fragment.name {
            call.function.name.clone_from(name);
        }
        call.function.arguments.push_str(&fragment.arguments);
    }

    /// Whether no call was made.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The complete calls.
    pub fn calls(&self) -> &[ToolCall] {
        &self.0
    }

    /// The complete calls, with ids minted for calls that had none.
    pub(crate) fn into_calls(self) -> Vec<ToolCall> {
        self.0
            .into_iter()
            .enumerate()
            .map(|(i, mut call)| {
                if call.id.is_empty() {
                    call.id = format!("call_redial_{i}");
                }
                call
            })
            .collect()
    }
}
