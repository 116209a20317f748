//! Turns a [`Behavior`] into wire bytes: a timed list of SSE frames for streaming requests, or one
//! `chat.completion` JSON for non-streaming ones. Pure functions, no I/O.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::script::Behavior;

/// The `id` of every completion the mock produces.
const COMPLETION_ID: &str = "chatcmpl-mock";
/// The SSE frame that ends a stream.
const DONE_FRAME: &[u8] = b"data: [DONE]\n\n";
/// Longest tool-call argument fragment streamed in one delta.
const MAX_FRAGMENT_CHARS: usize = 16;

/// What the renderer needs to know about the request being answered.
#[derive(Clone, Debug)]
pub(crate) struct ReplyContext {
    /// The `model` the request asked for, echoed in every chunk.
    pub model: String,
    /// Whether the request set `stream_options.include_usage`.
    pub include_usage: bool,
    /// Rough prompt size reported in `usage`.
    pub prompt_tokens: u64,
    /// Sequence number of the first tool call in this reply (`call_<n>`).
    pub first_call_id: u64,
}

/// One SSE frame and how long to wait after the previous frame before sending it.
#[derive(Clone, Debug)]
pub(crate) struct Frame {
    pub delay: Duration,
    pub bytes: Bytes,
}

/// What happens after the last frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tail {
    /// End the body normally.
    End,
    /// Keep the body (and the connection) open forever.
    Hang,
    /// Fail the body so the server aborts the connection mid-response.
    Cut,
}

/// A streaming reply: frames in order, then the tail.
#[derive(Clone, Debug)]
pub(crate) struct StreamPlan {
    pub frames: Vec<Frame>,
    pub tail: Tail,
}

/// A non-streaming reply: wait `delay`, then send `body` (or hang / cut after the headers).
#[derive(Clone, Debug)]
pub(crate) struct JsonPlan {
    pub delay: Duration,
    pub body: Option<Value>,
    pub tail: Tail,
}

/// Builds the SSE frames of one streamed reply, putting `role` on the first delta.
struct ChunkWriter<'a> {
    ctx: &'a ReplyContext,
    created: u64,
    frames: Vec<Frame>,
    role_sent: bool,
    completion_tokens: u64,
    /// The last content frame rendered after the role was sent, reused while the text repeats
    /// (a paced stream of one token is then rendered once, not once per frame).
    last_content: Option<(String, Bytes)>,
}

impl<'a> ChunkWriter<'a> {
    fn new(ctx: &'a ReplyContext) -> Self {
        Self {
            ctx,
            created: unix_now(),
            frames: Vec::new(),
            role_sent: false,
            completion_tokens: 0,
            last_content: None,
        }
    }

    fn delta(&mut self, delay: Duration, mut delta: Map<String, Value>) {
        if !self.role_sent {
            delta.insert("role".to_owned(), json!("assistant"));
            self.role_sent = true;
        }
        self.completion_tokens += 1;
        self.push_chunk(delay, Value::Object(delta), Value::Null);
    }

    fn content(&mut self, delay: Duration, text: &str) {
        if let Some((last, bytes)) = &self.last_content
            && self.role_sent
            && last == text
        {
            let bytes = bytes.clone();
            self.completion_tokens += 1;
            self.frames.push(Frame { delay, bytes });
            return;
        }
        let mut delta = Map::new();
        delta.insert("content".to_owned(), json!(text));
        let cacheable = self.role_sent;
        self.delta(delay, delta);
        if let (true, Some(frame)) = (cacheable, self.frames.last()) {
            self.last_content = Some((text.to_owned(), frame.bytes.clone()));
        }
    }

    fn tool_call(&mut self, index: usize, id: u64, name: &str, arguments: &str) {
        let head = json!([{
            "index": index,
            "id": format!("call_{id}"),
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }]);
        self.delta(Duration::ZERO, single("tool_calls", head));
        for fragment in split_fragments(arguments) {
            let part = json!([{"index": index, "function": {"arguments": fragment}}]);
            self.delta(Duration::ZERO, single("tool_calls", part));
        }
    }

    fn finish(mut self, reason: &str) -> Vec<Frame> {
        self.push_chunk(Duration::ZERO, json!({}), json!(reason));
        if self.ctx.include_usage {
            let usage = usage(self.ctx.prompt_tokens, self.completion_tokens);
            let chunk = self.envelope(json!([]), Some(usage));
            self.push_frame(Duration::ZERO, &chunk);
        }
        self.frames.push(Frame {
            delay: Duration::ZERO,
            bytes: Bytes::from_static(DONE_FRAME),
        });
        self.frames
    }

    fn push_chunk(&mut self, delay: Duration, delta: Value, finish_reason: Value) {
        let choices = json!([{"index": 0, "delta": delta, "finish_reason": finish_reason}]);
        let chunk = self.envelope(choices, None);
        self.push_frame(delay, &chunk);
    }

    fn envelope(&self, choices: Value, usage: Option<Value>) -> Value {
        let mut chunk = json!({
            "id": COMPLETION_ID,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.ctx.model,
            "choices": choices,
        });
        if let (Some(usage), Some(map)) = (usage, chunk.as_object_mut()) {
            map.insert("usage".to_owned(), usage);
        }
        chunk
    }

    fn push_frame(&mut self, delay: Duration, chunk: &Value) {
        let bytes = Bytes::from(format!("data: {chunk}\n\n"));
        self.frames.push(Frame { delay, bytes });
    }
}

/// The streaming reply for `behavior`. `Status` and `Stall` are handled before rendering and
/// give an empty plan.
pub(crate) fn stream_plan(behavior: &Behavior, ctx: &ReplyContext) -> StreamPlan {
    let mut writer = ChunkWriter::new(ctx);
    match behavior {
        Behavior::Text { chunks, ttft, gap } => {
            for (i, chunk) in chunks.iter().enumerate() {
                writer.content(if i == 0 { *ttft } else { *gap }, chunk);
            }
            if chunks.is_empty() {
                writer.delta(*ttft, Map::new());
            }
            done(writer.finish("stop"))
        }
        Behavior::ToolCalls { text_before, calls } => {
            if let Some(text) = text_before {
                writer.content(Duration::ZERO, text);
            }
            for (index, (name, arguments)) in calls.iter().enumerate() {
                let id = ctx.first_call_id + index as u64;
                writer.tool_call(index, id, name, arguments);
            }
            done(writer.finish("tool_calls"))
        }
        Behavior::StallAfter { chunks } => partial(writer, chunks, Tail::Hang),
        Behavior::CutAfter { chunks } => partial(writer, chunks, Tail::Cut),
        Behavior::Status { .. } | Behavior::Stall => done(Vec::new()),
    }
}

/// The non-streaming reply for `behavior`.
pub(crate) fn json_plan(behavior: &Behavior, ctx: &ReplyContext) -> JsonPlan {
    match behavior {
        Behavior::Text { chunks, ttft, gap } => {
            let gaps = u32::try_from(chunks.len().saturating_sub(1)).unwrap_or(u32::MAX);
            let message = json!({"role": "assistant", "content": chunks.concat()});
            let body = completion(ctx, message, "stop", chunks.len() as u64);
            JsonPlan {
                delay: *ttft + gap.saturating_mul(gaps),
                body: Some(body),
                tail: Tail::End,
            }
        }
        Behavior::ToolCalls { text_before, calls } => {
            let message = tool_call_message(ctx, text_before.as_deref(), calls);
            let body = completion(ctx, message, "tool_calls", calls.len() as u64);
            JsonPlan {
                delay: Duration::ZERO,
                body: Some(body),
                tail: Tail::End,
            }
        }
        Behavior::StallAfter { .. } => headers_only(Tail::Hang),
        Behavior::CutAfter { .. } => headers_only(Tail::Cut),
        Behavior::Status { .. } | Behavior::Stall => headers_only(Tail::End),
    }
}

fn done(frames: Vec<Frame>) -> StreamPlan {
    StreamPlan {
        frames,
        tail: Tail::End,
    }
}

fn partial(mut writer: ChunkWriter<'_>, chunks: &[String], tail: Tail) -> StreamPlan {
    for chunk in chunks {
        writer.content(Duration::ZERO, chunk);
    }
    StreamPlan {
        frames: writer.frames,
        tail,
    }
}

fn headers_only(tail: Tail) -> JsonPlan {
    JsonPlan {
        delay: Duration::ZERO,
        body: None,
        tail,
    }
}

fn tool_call_message(ctx: &ReplyContext, text: Option<&str>, calls: &[(String, String)]) -> Value {
    let tool_calls: Vec<Value> = calls
        .iter()
        .enumerate()
        .map(|(index, (name, arguments))| {
            json!({
                "id": format!("call_{}", ctx.first_call_id + index as u64),
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            })
        })
        .collect();
    json!({"role": "assistant", "content": text, "tool_calls": tool_calls})
}

fn completion(ctx: &ReplyContext, message: Value, finish_reason: &str, tokens: u64) -> Value {
    json!({
        "id": COMPLETION_ID,
        "object": "chat.completion",
        "created": unix_now(),
        "model": ctx.model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": usage(ctx.prompt_tokens, tokens),
    })
}

fn usage(prompt_tokens: u64, completion_tokens: u64) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

fn single(key: &str, value: Value) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert(key.to_owned(), value);
    map
}

/// Splits tool-call arguments into at least two fragments of at most [`MAX_FRAGMENT_CHARS`]
/// characters (empty fragments pad arguments shorter than two characters).
pub(crate) fn split_fragments(arguments: &str) -> Vec<String> {
    let chars: Vec<char> = arguments.chars().collect();
    let pieces = chars.len().div_ceil(MAX_FRAGMENT_CHARS).max(2);
    let size = chars.len().div_ceil(pieces).max(1);
    let mut fragments: Vec<String> = chars.chunks(size).map(String::from_iter).collect();
    while fragments.len() < 2 {
        fragments.push(String::new());
    }
    fragments
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_split_into_at_least_two_fragments_that_rejoin() {
        for args in [
            "",
            "{",
            "{}",
            r#"{"date":"2026-09-01","time":"10:00","name":"Zoë"}"#,
        ] {
            let fragments = split_fragments(args);
            assert!(fragments.len() >= 2, "{args}: {fragments:?}");
            assert_eq!(fragments.concat(), args);
            assert!(
                fragments
                    .iter()
                    .all(|f| f.chars().count() <= MAX_FRAGMENT_CHARS)
            );
        }
    }

    #[test]
    fn non_streamed_text_waits_for_the_whole_stream() {
        let ctx = ReplyContext {
            model: "m".to_owned(),
            include_usage: false,
            prompt_tokens: 3,
            first_call_id: 0,
        };
        let behavior = Behavior::Text {
            chunks: vec!["a".into(), "b".into(), "c".into()],
            ttft: Duration::from_millis(10),
            gap: Duration::from_millis(5),
        };
        let plan = json_plan(&behavior, &ctx);
        assert_eq!(plan.delay, Duration::from_millis(20));
        let body = plan.body.expect("body");
        assert_eq!(body["choices"][0]["message"]["content"], "abc");
        assert_eq!(body["usage"]["total_tokens"], 6);
    }
}
