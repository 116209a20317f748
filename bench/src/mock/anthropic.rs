//! The mock's Anthropic Messages endpoint (`POST /v1/messages`): the same [`Behavior`]s as the
//! OpenAI endpoint, rendered as Messages streaming events (`message_start`, `ping`,
//! `content_block_start` / `content_block_delta` (`text_delta`, `input_json_delta`) /
//! `content_block_stop`, `message_delta` with the stop reason and usage, `message_stop`) or one
//! `message` JSON.
//!
//! It checks what the real API refuses (the `anthropic-version` header, `max_tokens`, only
//! `user` and `assistant` turns starting with `user`, every `tool_result` answering an earlier
//! `tool_use`, non-empty text blocks) and answers such requests 400, so a test sees a request
//! Anthropic would reject. It also models prompt caching: the prompt up to the last block
//! marked `cache_control` is reported as written to the cache the first time it is seen and as
//! read from it afterwards.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::render::{Frame, JsonPlan, StreamPlan, Tail, split_fragments};
use super::script::Behavior;

/// What the renderer needs to know about the request being answered.
#[derive(Clone, Debug)]
pub(crate) struct MessagesContext {
    /// The requested model, echoed back.
    pub model: String,
    /// Input tokens not read from or written to the cache.
    pub input_tokens: u64,
    /// Input tokens read from the cache.
    pub cache_read: u64,
    /// Input tokens written to the cache.
    pub cache_write: u64,
    /// Sequence number of the first tool call in this reply (`toolu_<n>`).
    pub first_call_id: u64,
}

/// Why a request would be refused by the real API.
pub(crate) fn invalid(headers: &axum::http::HeaderMap, request: &Value) -> Option<String> {
    if headers.get("anthropic-version").is_none() {
        return Some("anthropic-version: header is required".into());
    }
    if !request["max_tokens"].is_u64() {
        return Some("max_tokens: Field required".into());
    }
    let Some(messages) = request["messages"].as_array() else {
        return Some("messages: Field required".into());
    };
    if messages.first().map(|m| &m["role"]) != Some(&json!("user")) {
        return Some("messages: the first message must use the \"user\" role".into());
    }
    let mut tool_uses = HashSet::new();
    for (i, message) in messages.iter().enumerate() {
        let role = message["role"].as_str().unwrap_or("");
        if role != "user" && role != "assistant" {
            return Some(format!(
                "messages.{i}.role: must be user or assistant, not {role:?}"
            ));
        }
        let blocks = match &message["content"] {
            Value::String(text) if !text.is_empty() => continue,
            Value::Array(blocks) if !blocks.is_empty() => blocks,
            _ => return Some(format!("messages.{i}.content: must not be empty")),
        };
        for block in blocks {
            match block["type"].as_str() {
                Some("text") if block["text"].as_str().is_some_and(|t| !t.trim().is_empty()) => {}
                Some("text") => {
                    return Some(format!(
                        "messages.{i}: text content blocks must be non-empty"
                    ));
                }
                Some("tool_use") => {
                    tool_uses.insert(block["id"].as_str().unwrap_or("").to_owned());
                }
                Some("tool_result") => {
                    let id = block["tool_use_id"].as_str().unwrap_or("");
                    if !tool_uses.contains(id) {
                        return Some(format!(
                            "messages.{i}: tool_result {id:?} has no tool_use before it"
                        ));
                    }
                }
                other => return Some(format!("messages.{i}: unknown block type {other:?}")),
            }
        }
    }
    None
}

/// The context of a reply: token counts (with the cache modelled in `seen`, the hashes of the
/// prefixes cached so far) and the model. The cached prefix is the tools and the system blocks
/// up to the last one marked `cache_control` (where redial marks them); it is hashed without
/// the marks. Tokens are estimated at four bytes each, as the OpenAI endpoint does.
///
/// `seen` is `None` when the cache model is off (`MockUpstream::set_prompt_cache`): nothing is
/// hashed and nothing is read from or written to the cache.
pub(crate) fn context(
    request: &Value,
    body_len: usize,
    seen: Option<&mut HashSet<[u8; 32]>>,
    first_call_id: u64,
) -> MessagesContext {
    let total = (body_len as u64).div_ceil(4);
    let Some(seen) = seen else {
        return MessagesContext {
            model: request["model"].as_str().unwrap_or_default().to_owned(),
            input_tokens: total,
            cache_read: 0,
            cache_write: 0,
            first_call_id,
        };
    };
    let mut hasher = Sha256::new();
    let mut prefix_bytes = 0usize;
    let mut marked = false;
    let blocks = request["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(request["system"].as_array().into_iter().flatten());
    let mut pending = Vec::new();
    for block in blocks {
        pending.push(block);
        if block.get("cache_control").is_some() {
            for part in pending.drain(..) {
                prefix_bytes += hash_unmarked(part, &mut hasher);
            }
            marked = true;
        }
    }
    let prefix = (prefix_bytes as u64).div_ceil(4).min(total);
    let (cache_read, cache_write) = if marked {
        let key: [u8; 32] = hasher.finalize().into();
        if seen.insert(key) {
            (0, prefix)
        } else {
            (prefix, 0)
        }
    } else {
        (0, 0)
    };
    MessagesContext {
        model: request["model"].as_str().unwrap_or_default().to_owned(),
        input_tokens: total - cache_read - cache_write,
        cache_read,
        cache_write,
        first_call_id,
    }
}

/// Feeds a block to `hasher` as its JSON without the `cache_control` mark, serialised straight
/// into the hasher (no copy of the block): the mock's own cost per request stays small next to
/// what it measures. Returns the bytes hashed.
fn hash_unmarked(block: &Value, hasher: &mut Sha256) -> usize {
    let mut sink = HashSink { hasher, bytes: 0 };
    let written = match block.as_object() {
        Some(map) => map
            .iter()
            .filter(|(key, _)| *key != "cache_control")
            .try_for_each(|(key, value)| {
                serde_json::to_writer(&mut sink, key)?;
                serde_json::to_writer(&mut sink, value)
            }),
        None => serde_json::to_writer(&mut sink, block),
    };
    // Writing into a hasher cannot fail; a value that cannot be serialised hashes as far as it got.
    drop(written);
    sink.bytes
}

/// An `io::Write` into a SHA-256 hasher that counts the bytes.
struct HashSink<'a> {
    hasher: &'a mut Sha256,
    bytes: usize,
}

impl std::io::Write for HashSink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.hasher.update(buf);
        self.bytes += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct EventWriter<'a> {
    ctx: &'a MessagesContext,
    frames: Vec<Frame>,
    block: u64,
    output_tokens: u64,
}

impl<'a> EventWriter<'a> {
    fn new(ctx: &'a MessagesContext) -> Self {
        let mut writer = Self {
            ctx,
            frames: Vec::new(),
            block: 0,
            output_tokens: 0,
        };
        writer.event(
            Duration::ZERO,
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": "msg_mock", "type": "message", "role": "assistant", "content": [],
                "model": ctx.model, "stop_reason": null, "stop_sequence": null,
                "usage": writer.usage(1),
            }}),
        );
        writer.event(Duration::ZERO, "ping", &json!({"type": "ping"}));
        writer
    }

    fn usage(&self, output: u64) -> Value {
        json!({
            "input_tokens": self.ctx.input_tokens,
            "cache_read_input_tokens": self.ctx.cache_read,
            "cache_creation_input_tokens": self.ctx.cache_write,
            "output_tokens": output,
        })
    }

    fn event(&mut self, delay: Duration, name: &str, data: &Value) {
        let bytes = Bytes::from(format!("event: {name}\ndata: {data}\n\n"));
        self.frames.push(Frame { delay, bytes });
    }

    fn text_block(&mut self, delays: impl IntoIterator<Item = (Duration, String)>) {
        let index = self.block;
        let mut delays = delays.into_iter().peekable();
        let first_delay = delays.peek().map_or(Duration::ZERO, |(d, _)| *d);
        self.event(
            first_delay,
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}),
        );
        for (i, (delay, text)) in delays.enumerate() {
            let delay = if i == 0 { Duration::ZERO } else { delay };
            self.output_tokens += 1;
            self.event(
                delay,
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}),
            );
        }
        self.block += 1;
    }

    fn stop_block(&mut self) {
        let index = self.block.saturating_sub(1);
        self.event(
            Duration::ZERO,
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        );
    }

    fn tool_use(&mut self, id: u64, name: &str, arguments: &str) {
        let index = self.block;
        self.event(
            Duration::ZERO,
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": {
                "type": "tool_use", "id": format!("toolu_{id}"), "name": name, "input": {}}}),
        );
        for fragment in split_fragments(arguments) {
            self.output_tokens += 1;
            self.event(
                Duration::ZERO,
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": fragment}}),
            );
        }
        self.block += 1;
        self.stop_block();
    }

    fn finish(mut self, stop_reason: &str) -> Vec<Frame> {
        let usage = json!({"output_tokens": self.output_tokens.max(1)});
        self.event(
            Duration::ZERO,
            "message_delta",
            &json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": usage}),
        );
        self.event(
            Duration::ZERO,
            "message_stop",
            &json!({"type": "message_stop"}),
        );
        self.frames
    }
}

/// The streaming reply for `behavior`. `Status` and `Stall` are handled before rendering.
pub(crate) fn stream_plan(behavior: &Behavior, ctx: &MessagesContext) -> StreamPlan {
    let mut writer = EventWriter::new(ctx);
    let timed = |chunks: &[String], ttft: Duration, gap: Duration| -> Vec<(Duration, String)> {
        chunks
            .iter()
            .enumerate()
            .map(|(i, c)| (if i == 0 { ttft } else { gap }, c.clone()))
            .collect()
    };
    match behavior {
        Behavior::Text { chunks, ttft, gap } => {
            let timed = timed(chunks, *ttft, *gap);
            if timed.is_empty() {
                writer.frames.push(Frame {
                    delay: *ttft,
                    bytes: Bytes::new(),
                });
            } else {
                writer.text_block(timed);
                writer.stop_block();
            }
            StreamPlan {
                frames: writer.finish("end_turn"),
                tail: Tail::End,
            }
        }
        Behavior::ToolCalls { text_before, calls } => {
            if let Some(text) = text_before {
                writer.text_block([(Duration::ZERO, text.clone())]);
                writer.stop_block();
            }
            for (i, (name, arguments)) in calls.iter().enumerate() {
                writer.tool_use(ctx.first_call_id + i as u64, name, arguments);
            }
            StreamPlan {
                frames: writer.finish("tool_use"),
                tail: Tail::End,
            }
        }
        Behavior::StallAfter { chunks } | Behavior::CutAfter { chunks } => {
            if !chunks.is_empty() {
                writer.text_block(timed(chunks, Duration::ZERO, Duration::ZERO));
            }
            let tail = if matches!(behavior, Behavior::StallAfter { .. }) {
                Tail::Hang
            } else {
                Tail::Cut
            };
            StreamPlan {
                frames: writer.frames,
                tail,
            }
        }
        Behavior::Status { .. } | Behavior::Stall => StreamPlan {
            frames: Vec::new(),
            tail: Tail::End,
        },
    }
}

/// The non-streaming reply for `behavior`.
pub(crate) fn json_plan(behavior: &Behavior, ctx: &MessagesContext) -> JsonPlan {
    let (content, stop_reason, output, delay) = match behavior {
        Behavior::Text { chunks, ttft, gap } => {
            let gaps = u32::try_from(chunks.len().saturating_sub(1)).unwrap_or(u32::MAX);
            (
                vec![json!({"type": "text", "text": chunks.concat()})],
                "end_turn",
                chunks.len() as u64,
                *ttft + gap.saturating_mul(gaps),
            )
        }
        Behavior::ToolCalls { text_before, calls } => {
            let mut content: Vec<Value> = text_before
                .iter()
                .map(|t| json!({"type": "text", "text": t}))
                .collect();
            for (i, (name, arguments)) in calls.iter().enumerate() {
                let input: Value = serde_json::from_str(arguments).unwrap_or_else(|_| json!({}));
                content.push(json!({"type": "tool_use", "id": format!("toolu_{}", ctx.first_call_id + i as u64), "name": name, "input": input}));
            }
            (content, "tool_use", calls.len() as u64, Duration::ZERO)
        }
        Behavior::StallAfter { .. } => return headers_only(Tail::Hang),
        Behavior::CutAfter { .. } => return headers_only(Tail::Cut),
        Behavior::Status { .. } | Behavior::Stall => return headers_only(Tail::End),
    };
    let body = json!({
        "id": "msg_mock", "type": "message", "role": "assistant", "model": ctx.model,
        "content": content, "stop_reason": stop_reason, "stop_sequence": null,
        "usage": {
            "input_tokens": ctx.input_tokens,
            "cache_read_input_tokens": ctx.cache_read,
            "cache_creation_input_tokens": ctx.cache_write,
            "output_tokens": output,
        },
    });
    JsonPlan {
        delay,
        body: Some(body),
        tail: Tail::End,
    }
}

fn headers_only(tail: Tail) -> JsonPlan {
    JsonPlan {
        delay: Duration::ZERO,
        body: None,
        tail,
    }
}

/// An error body in Anthropic's shape.
pub(crate) fn error_body(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}
