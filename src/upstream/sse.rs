//! Parsing one upstream `chat.completion.chunk` into [`Delta`]s.

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

/// Parses the `data:` of one SSE event. An `{"error":…}` object is an upstream failure.
pub fn parse_chunk(data: &str) -> Result<Vec<Delta>, UpstreamError> {
    let chunk: Value = serde_json::from_str(data)
        .map_err(|e| UpstreamError::Decode(format!("chunk is not JSON: {e}")))?;
    if let Some(error) = chunk.get("error") {
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("unknown error");
        return Err(UpstreamError::Status {
            status: 502,
            body: format!("error in stream: {message}"),
        });
    }
    let mut out = Vec::new();
    let Some(choice) = chunk
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
    else {
        return Ok(out); // usage-only or keep-alive chunk
    };
    if let Some(delta) = choice.get("delta") {
        if let Some(text) = delta.get("content").and_then(Value::as_str) {
            if !text.is_empty() {
                out.push(Delta::Text(text.to_owned()));
            }
        }
        if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
            out.extend(calls.iter().cloned().map(Delta::ToolCall));
        }
    }
    if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
        out.push(Delta::Finish(FinishReason::parse(reason)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_tool_and_finish_deltas_are_parsed() {
        let text = r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}]}"#;
        assert_eq!(parse_chunk(text).unwrap(), vec![Delta::Text("Hi".into())]);
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
    }

    #[test]
    fn errors_in_the_stream_and_garbage_are_failures() {
        assert!(parse_chunk(r#"{"error":{"message":"overloaded"}}"#).is_err());
        assert!(parse_chunk("not json").is_err());
    }
}
