//! Parsing one upstream `chat.completion.chunk` into [`Delta`]s.
//!
//! This runs for every token of every stream, so the chunk is deserialised into borrowed,
//! typed fields (no intermediate `serde_json::Value` tree for the common text chunk); only
//! tool-call fragments, which are passed through as they are, become `Value`s.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

use super::UpstreamError;
use crate::openai::FinishReason;

/// One piece of an upstream stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Delta {
    /// Text to speak.
    Text(String),
    /// A tool-call fragment in OpenAI's streaming shape (`index`, and on the first fragment
    /// `id`, `type`, `function.name`; then `function.arguments` pieces).
    ToolCall(Value),
    /// The model finished.
    Finish(FinishReason),
}

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    choices: Vec<Choice<'a>>,
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
    tool_calls: Option<Vec<Value>>,
    #[serde(default, rename = "role")]
    _role: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct StreamError {
    #[serde(default)]
    message: Option<String>,
}

/// Parses the `data:` of one SSE event. An `{"error":…}` object is an upstream failure.
pub fn parse_chunk(data: &str) -> Result<Vec<Delta>, UpstreamError> {
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
    let Some(choice) = chunk.choices.into_iter().next() else {
        return Ok(out); // usage-only or keep-alive chunk
    };
    if let Some(delta) = choice.delta {
        if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
            out.push(Delta::Text(text.into_owned()));
        }
        out.extend(delta.tool_calls.into_iter().flatten().map(Delta::ToolCall));
    }
    if let Some(reason) = choice.finish_reason {
        out.push(Delta::Finish(FinishReason::parse(&reason)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_tool_and_finish_deltas_are_parsed() {
        let text = r#"{"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi \"you\"\n"},"finish_reason":null}]}"#;
        assert_eq!(
            parse_chunk(text).unwrap(),
            vec![Delta::Text("Hi \"you\"\n".into())]
        );
        let tool = r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c","type":"function","function":{"name":"f","arguments":""}}]}}]}"#;
        assert_eq!(
            parse_chunk(tool).unwrap(),
            vec![Delta::ToolCall(
                json!({"index":0,"id":"c","type":"function","function":{"name":"f","arguments":""}})
            )]
        );
        let finish = r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#;
        assert_eq!(
            parse_chunk(finish).unwrap(),
            vec![Delta::Finish(FinishReason::ToolCalls)]
        );
        assert!(
            parse_chunk(r#"{"choices":[],"usage":{"total_tokens":3}}"#)
                .unwrap()
                .is_empty()
        );
        assert!(
            parse_chunk(r#"{"choices":[{"delta":{"content":null}}]}"#)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn errors_in_the_stream_and_garbage_are_failures() {
        assert!(parse_chunk(r#"{"error":{"message":"overloaded"}}"#).is_err());
        assert!(parse_chunk("not json").is_err());
    }
}
