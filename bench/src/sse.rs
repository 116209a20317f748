//! A small incremental Server-Sent Events parser and a classifier for OpenAI
//! `chat.completion.chunk` payloads, shared by the load generator and the tests; and a
//! classifier for Anthropic Messages stream events (which the load generator reads with the
//! `eventsource-stream` parser).
//!
//! Only `data:` fields matter to chat completions: comment lines (`: ping`) and other fields are
//! ignored, multi-line data is joined with `\n`, and a blank line ends an event.

use std::borrow::Cow;

use serde::Deserialize;

/// The payload that ends an OpenAI stream.
pub const DONE: &str = "[DONE]";

/// Feeds on raw body bytes (split anywhere) and yields the `data` of each complete event.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
}

impl SseParser {
    /// A parser with empty buffers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes `bytes` and returns the data of every event completed by them, in order.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut events = Vec::new();
        self.feed_with(bytes, |data| events.push(data.to_owned()));
        events
    }

    /// Consumes `bytes` and calls `on_event` with the data of every event completed by them, in
    /// order, without allocating per event (invalid UTF-8 is replaced, as in `feed`).
    pub fn feed_with(&mut self, mut bytes: &[u8], mut on_event: impl FnMut(&str)) {
        while let Some(newline) = memchr::memchr(b'\n', bytes) {
            let (line, rest) = bytes.split_at(newline);
            bytes = &rest[1..];
            if self.line.is_empty() {
                self.end_line(line, &mut on_event);
            } else {
                let mut joined = std::mem::take(&mut self.line);
                joined.extend_from_slice(line);
                self.end_line(&joined, &mut on_event);
                joined.clear();
                self.line = joined;
            }
        }
        self.line.extend_from_slice(bytes);
    }

    /// True when bytes of an unfinished event are buffered.
    pub fn has_partial_event(&self) -> bool {
        self.has_data || !self.line.is_empty()
    }

    fn end_line(&mut self, line: &[u8], on_event: &mut impl FnMut(&str)) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            self.dispatch(on_event);
        } else if let Some(value) = line.strip_prefix(b"data:") {
            let value = value.strip_prefix(b" ").unwrap_or(value);
            if self.has_data {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(value);
            self.has_data = true;
        }
    }

    fn dispatch(&mut self, on_event: &mut impl FnMut(&str)) {
        if !self.has_data {
            return;
        }
        self.has_data = false;
        match std::str::from_utf8(&self.data) {
            Ok(data) => on_event(data),
            Err(_) => on_event(&String::from_utf8_lossy(&self.data)),
        }
        self.data.clear();
    }
}

/// What one `data:` payload of a chat-completion stream carries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChunkInfo {
    /// `choices[0].delta.content` is a non-empty string.
    pub has_content: bool,
    /// The delta carries `tool_calls`.
    pub has_tool_calls: bool,
    /// `choices[0].finish_reason`, when set.
    pub finish_reason: Option<String>,
}

/// How a `data:` payload of a chat-completion stream reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// `[DONE]`.
    Done,
    /// A `chat.completion.chunk` (or anything JSON with a `choices` array).
    Chunk(ChunkInfo),
    /// Not JSON, or JSON without the chunk shape.
    Other,
}

#[derive(Deserialize)]
struct WireChunk<'a> {
    #[serde(borrow)]
    choices: Vec<WireChoice<'a>>,
}

#[derive(Deserialize)]
struct WireChoice<'a> {
    #[serde(borrow, default)]
    delta: Option<WireDelta<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireDelta<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(default)]
    tool_calls: Option<serde::de::IgnoredAny>,
}

/// Classifies one event's data.
pub fn classify(data: &str) -> Payload {
    if data.trim() == DONE {
        return Payload::Done;
    }
    let Ok(chunk) = serde_json::from_str::<WireChunk<'_>>(data) else {
        return Payload::Other;
    };
    let Some(choice) = chunk.choices.into_iter().next() else {
        return Payload::Chunk(ChunkInfo::default());
    };
    let delta = choice.delta;
    Payload::Chunk(ChunkInfo {
        has_content: delta
            .as_ref()
            .and_then(|d| d.content.as_deref())
            .is_some_and(|content| !content.is_empty()),
        has_tool_calls: delta.is_some_and(|d| d.tool_calls.is_some()),
        finish_reason: choice.finish_reason.map(Cow::into_owned),
    })
}

/// How an Anthropic Messages stream event reads (by its `event:` name and `data`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessagesEvent {
    /// A `content_block_delta` whose `text_delta` has non-empty text.
    Text,
    /// `message_stop`: the stream is complete.
    Stop,
    /// An in-stream `error` (e.g. `overloaded_error`).
    Error,
    /// Anything else (`message_start`, `ping`, an empty or tool-input delta, …).
    Other,
}

#[derive(Deserialize)]
struct WireBlockDelta<'a> {
    #[serde(borrow)]
    delta: WireTextDelta<'a>,
}

#[derive(Deserialize)]
struct WireTextDelta<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

/// Classifies one Messages stream event.
pub fn classify_messages(event: &str, data: &str) -> MessagesEvent {
    match event {
        "message_stop" => MessagesEvent::Stop,
        "error" => MessagesEvent::Error,
        "content_block_delta" => match serde_json::from_str::<WireBlockDelta<'_>>(data) {
            Ok(WireBlockDelta { delta })
                if delta.kind == "text_delta"
                    && delta.text.as_deref().is_some_and(|t| !t.is_empty()) =>
            {
                MessagesEvent::Text
            }
            _ => MessagesEvent::Other,
        },
        _ => MessagesEvent::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_reads_and_comments_are_handled() {
        let mut parser = SseParser::new();
        let mut events = parser.feed(b": ping\n\ndata: {\"a\"");
        assert!(events.is_empty());
        events.extend(parser.feed(b":1}\r\n\r\ndata: x\ndata: y\n\ndata: [DONE]\n"));
        assert!(parser.has_partial_event());
        events.extend(parser.feed(b"\n"));
        assert_eq!(events, vec!["{\"a\":1}", "x\ny", "[DONE]"]);
        assert!(!parser.has_partial_event());
    }

    #[test]
    fn feeding_one_byte_at_a_time_gives_the_same_events() {
        let stream = b"data: {\"x\":1}\r\n\r\n: ping\n\ndata: a\ndata: b\n\ndata: [DONE]\n\n";
        let mut parser = SseParser::new();
        let events: Vec<String> = stream.iter().flat_map(|b| parser.feed(&[*b])).collect();
        assert_eq!(events, vec!["{\"x\":1}", "a\nb", "[DONE]"]);
        assert_eq!(SseParser::new().feed(stream), events);
    }

    #[test]
    fn chunks_are_classified_by_content_tools_and_finish() {
        let content = r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":"hi"},"finish_reason":null}]}"#;
        let empty = r#"{"choices":[{"index":0,"delta":{"content":""},"finish_reason":null}]}"#;
        let tools = r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0}]}}]}"#;
        let finish = r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#;
        assert!(matches!(classify(content), Payload::Chunk(c) if c.has_content));
        assert!(matches!(classify(empty), Payload::Chunk(c) if !c.has_content));
        assert!(matches!(classify(tools), Payload::Chunk(c) if c.has_tool_calls));
        assert!(
            matches!(classify(finish), Payload::Chunk(c) if c.finish_reason.as_deref() == Some("stop"))
        );
        assert_eq!(classify("[DONE]"), Payload::Done);
        assert_eq!(classify("nope"), Payload::Other);
    }

    #[test]
    fn messages_events_are_classified_by_name_and_delta() {
        let delta =
            |delta: &str| format!(r#"{{"type":"content_block_delta","index":0,"delta":{delta}}}"#);
        let text = delta(r#"{"type":"text_delta","text":"Hi \"there\""}"#);
        let empty = delta(r#"{"type":"text_delta","text":""}"#);
        let json = delta(r#"{"type":"input_json_delta","partial_json":"{\"a\""}"#);
        assert_eq!(
            classify_messages("content_block_delta", &text),
            MessagesEvent::Text
        );
        assert_eq!(
            classify_messages("content_block_delta", &empty),
            MessagesEvent::Other
        );
        assert_eq!(
            classify_messages("content_block_delta", &json),
            MessagesEvent::Other
        );
        assert_eq!(classify_messages("message_stop", "{}"), MessagesEvent::Stop);
        assert_eq!(classify_messages("error", "{}"), MessagesEvent::Error);
        assert_eq!(classify_messages("ping", "{}"), MessagesEvent::Other);
        assert_eq!(
            classify_messages("content_block_delta", "nope"),
            MessagesEvent::Other
        );
    }
}
