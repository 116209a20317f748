//! Building what the upstream is sent.

use serde_json::{Map, Value, json};

use crate::openai::{ChatMessage, FORWARDED_PARAMS, Role};

/// The platform's messages with the state summary inserted as one system message right after
/// the platform's own leading system/developer instructions.
pub(crate) fn with_summary(messages: &[ChatMessage], summary: Option<String>) -> Vec<ChatMessage> {
    let mut out = Vec::with_capacity(messages.len() + 1);
    let split = messages
        .iter()
        .position(|m| !m.is_instruction())
        .unwrap_or(messages.len());
    out.extend_from_slice(&messages[..split]);
    if let Some(summary) = summary {
        out.push(ChatMessage::text(Role::System, summary));
    }
    out.extend_from_slice(&messages[split..]);
    out
}

/// The upstream request body: model, messages, tools, and only the forwarded sampling
/// parameters (platform metadata never leaves redial).
pub(crate) fn upstream_body(
    model: &str,
    messages: &[ChatMessage],
    tools: &[Value],
    params: &Map<String, Value>,
    stream: bool,
) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("messages".into(), json!(messages));
    body.insert("stream".into(), json!(stream));
    if !tools.is_empty() {
        body.insert("tools".into(), Value::Array(tools.to_vec()));
    }
    for key in FORWARDED_PARAMS {
        let Some(value) = params.get(*key) else {
            continue;
        };
        // ElevenLabs sends max_tokens <= 0 for "unlimited"; upstreams reject it.
        let non_positive = value.as_f64().is_some_and(|n| n <= 0.0);
        if key.starts_with("max_") && non_positive || value.is_null() {
            continue;
        }
        if *key == "tool_choice" && tools.is_empty() {
            continue;
        }
        body.insert((*key).to_owned(), value.clone());
    }
    Value::Object(body)
}

/// Model candidates in order: the primary, then the configured fallbacks (without repeats).
pub(crate) fn candidates(primary: &str, fallbacks: &[String]) -> Vec<String> {
    let mut out = vec![primary.to_owned()];
    for model in fallbacks {
        if !model.is_empty() && !out.contains(model) {
            out.push(model.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_goes_after_the_leading_instructions() {
        let messages = vec![
            ChatMessage::text(Role::System, "sys"),
            ChatMessage::text(Role::Developer, "dev"),
            ChatMessage::text(Role::User, "hi"),
            ChatMessage::text(Role::System, "late"),
        ];
        let out = with_summary(&messages, Some("mem".into()));
        let texts: Vec<_> = out.iter().map(ChatMessage::text_content).collect();
        assert_eq!(texts, ["sys", "dev", "mem", "hi", "late"]);
        let out = with_summary(&messages[2..], Some("mem".into()));
        assert_eq!(out[0].text_content(), "mem");
        assert_eq!(with_summary(&messages, None), messages);
    }

    #[test]
    fn only_forwarded_params_reach_the_upstream() {
        let params: Map<String, Value> = serde_json::from_value(json!({
            "temperature": 0.5, "max_tokens": -1, "call": {"id": "x"}, "customer": {},
            "metadata": {}, "user_id": "u", "elevenlabs_extra_body": {}, "tool_choice": "auto"
        }))
        .unwrap();
        let body = upstream_body("m", &[], &[], &params, true);
        let keys: Vec<_> = body.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["messages", "model", "stream", "temperature"]);
    }

    #[test]
    fn fallbacks_follow_the_primary_without_repeats() {
        let fallbacks = vec![
            "b".to_owned(),
            "a".to_owned(),
            String::new(),
            "c".to_owned(),
        ];
        assert_eq!(candidates("a", &fallbacks), ["a", "b", "c"]);
    }
}
