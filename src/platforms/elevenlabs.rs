//! ElevenLabs on the chat path: the `X-Call-Id`/`X-Caller-Id`/`X-Assistant-Id` headers the
//! agent's `request_headers` map, else the dynamic variables the client passed in
//! `elevenlabs_extra_body`, and `user_id`.

use axum::http::HeaderMap;
use serde_json::Value;

use super::identity::Claim;
use crate::openai::ChatRequest;

/// The ids of an ElevenLabs request — one with `elevenlabs_extra_body` or `user_id`, `None`
/// otherwise. Headers win over the body.
pub(super) fn claim(headers: &HeaderMap, request: &ChatRequest) -> Option<Claim> {
    let from_elevenlabs = request.extra.contains_key("elevenlabs_extra_body")
        || request.extra.contains_key("user_id");
    from_elevenlabs.then(|| Claim::from_headers(headers).or(body(request)))
}

/// Without header mappings: the dynamic variables the client passed in
/// `elevenlabs_extra_body` (`system__conversation_id`, `system__caller_id`, `system__agent_id`,
/// at its top level or under `dynamic_variables`), and `user_id` — the end user's id the client
/// started the conversation with — as the caller when no caller id is given.
fn body(request: &ChatRequest) -> Claim {
    let extra = request.extra.get("elevenlabs_extra_body");
    let variable = |field: &'static str, names: &[&str]| {
        names.iter().find_map(|name| {
            let value = extra.and_then(|e| {
                e.get(*name)
                    .or_else(|| e.get("dynamic_variables").and_then(|d| d.get(*name)))
            })?;
            let text = value.as_str().map(str::trim).filter(|s| !s.is_empty())?;
            Some((field, text.to_owned()))
        })
    };
    let call_key = variable(
        "elevenlabs_extra_body.system__conversation_id",
        &["system__conversation_id", "conversation_id"],
    );
    let caller = variable(
        "elevenlabs_extra_body.system__caller_id",
        &["system__caller_id", "caller_id"],
    )
    .or_else(|| {
        let user = request.extra.get("user_id").and_then(Value::as_str)?.trim();
        (!user.is_empty()).then(|| ("user_id", user.to_owned()))
    });
    let assistant = variable(
        "elevenlabs_extra_body.system__agent_id",
        &["system__agent_id", "agent_id"],
    );
    Claim {
        call_key,
        caller,
        assistant,
    }
}
