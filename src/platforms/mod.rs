//! Platform adapters: who is calling, on which call, for which assistant.
//!
//! Each platform carries identity differently (the README's "Pointing your platform at redial"
//! and "Who is a caller"; docs/protocols/). Adapters only translate; they know nothing of storage.

pub mod phone;

use axum::http::HeaderMap;
use serde_json::Value;
use uuid::Uuid;

use crate::openai::ChatRequest;
use crate::storage::Platform;

/// Generic clients (and ElevenLabs through `request_headers`) name the call with this header.
pub const CALL_ID_HEADER: &str = "x-call-id";
/// The caller: a phone number, or any other stable id of the person (an app's user id).
pub const CALLER_ID_HEADER: &str = "x-caller-id";
/// The assistant or agent id.
pub const ASSISTANT_ID_HEADER: &str = "x-assistant-id";

/// Who is calling, on which call, for which assistant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The platform.
    pub platform: Platform,
    /// The call key; a request without one gets a fresh `req-…` key (a per-request session).
    pub call_key: String,
    /// Whether `call_key` was minted for this request alone.
    pub ephemeral: bool,
    /// The caller's key ([`phone::caller_key`]): an E.164 number, or `id:<id>` for any other
    /// caller id.
    pub caller: Option<String>,
    /// The assistant id (`""` when unknown).
    pub assistant_id: String,
}

impl Identity {
    /// Whether the platform is a voice platform (always answered with SSE).
    pub fn is_voice(&self) -> bool {
        matches!(
            self.platform,
            Platform::Vapi | Platform::ElevenLabs | Platform::Retell
        )
    }
}

/// An id longer than `limits.max_id_bytes`: the request is refused (400) before anything is
/// stored or sent upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` is {len} bytes long; ids are at most {limit} bytes (limits.max_id_bytes)")]
pub struct IdTooLong {
    /// Where the id came from: a header (`X-Call-Id`…) or a body field (`call.id`…).
    pub field: &'static str,
    /// Its length, in bytes.
    pub len: usize,
    /// The limit, in bytes.
    pub limit: usize,
}

/// An id and where it came from.
type Sourced = Option<(&'static str, String)>;

/// Extracts identity from an OpenAI-compatible request. Every id it reads (call, caller,
/// assistant) must be at most `max_id_bytes` long, so that a client cannot make redial store or
/// index arbitrary amounts of text under a key.
pub fn identify(
    headers: &HeaderMap,
    request: &ChatRequest,
    default_region: &str,
    max_id_bytes: usize,
) -> Result<Identity, IdTooLong> {
    let header = |name: &'static str, field: &'static str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(|v| (field, v.to_owned()))
    };
    let (platform, call_key, raw_caller, assistant) = if let Some(call) = request.extra.get("call")
    {
        vapi(request, call)
    } else if request.extra.contains_key("elevenlabs_extra_body")
        || request.extra.contains_key("user_id")
    {
        let (call_key, caller, assistant) = elevenlabs(request);
        (
            Platform::ElevenLabs,
            header(CALL_ID_HEADER, "X-Call-Id").or(call_key),
            header(CALLER_ID_HEADER, "X-Caller-Id").or(caller),
            header(ASSISTANT_ID_HEADER, "X-Assistant-Id").or(assistant),
        )
    } else {
        let caller = header(CALLER_ID_HEADER, "X-Caller-Id")
            .or_else(|| request.user.clone().map(|u| ("user", u)));
        (
            Platform::Generic,
            header(CALL_ID_HEADER, "X-Call-Id"),
            caller,
            header(ASSISTANT_ID_HEADER, "X-Assistant-Id"),
        )
    };
    for (field, value) in [&call_key, &raw_caller, &assistant].into_iter().flatten() {
        if value.len() > max_id_bytes {
            return Err(IdTooLong {
                field,
                len: value.len(),
                limit: max_id_bytes,
            });
        }
    }
    let ephemeral = call_key.is_none();
    Ok(Identity {
        platform,
        call_key: call_key.map_or_else(|| format!("req-{}", Uuid::now_v7().simple()), |(_, k)| k),
        ephemeral,
        caller: raw_caller.and_then(|(_, raw)| phone::caller_key(&raw, default_region)),
        assistant_id: assistant.map(|(_, a)| a).unwrap_or_default(),
    })
}

/// ElevenLabs without header mappings: the dynamic variables the client passed in
/// `elevenlabs_extra_body` (`system__conversation_id`, `system__caller_id`, `system__agent_id`,
/// at its top level or under `dynamic_variables`), and `user_id` — the end user's id the client
/// started the conversation with — as the caller when no caller id is given.
fn elevenlabs(request: &ChatRequest) -> (Sourced, Sourced, Sourced) {
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
    (call_key, caller, assistant)
}

/// Vapi: `call.id`, `customer.number` or `call.customer.number`, `call.assistantId` or
/// `assistant.id`.
fn vapi(request: &ChatRequest, call: &Value) -> (Platform, Sourced, Sourced, Sourced) {
    let text = |field: &'static str, v: Option<&Value>| {
        v.and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(|s| (field, s.to_owned()))
    };
    let call_key = text("call.id", call.get("id"));
    let caller = text(
        "customer.number",
        request.extra.get("customer").and_then(|c| c.get("number")),
    )
    .or_else(|| text("call.customer.number", call.pointer("/customer/number")));
    let assistant = text("call.assistantId", call.get("assistantId")).or_else(|| {
        text(
            "assistant.id",
            request.extra.get("assistant").and_then(|a| a.get("id")),
        )
    });
    (Platform::Vapi, call_key, caller, assistant)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(body: Value) -> ChatRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn vapi_identity_comes_from_the_call_and_customer_objects() {
        let r = request(
            json!({"messages": [], "call": {"id": "c-1", "assistantId": "as-1", "customer": {"number": "+1 415 555 0123"}}}),
        );
        let id = identify(&HeaderMap::new(), &r, "US", 256).unwrap();
        assert_eq!(id.platform, Platform::Vapi);
        assert_eq!(id.call_key, "c-1");
        assert_eq!(id.caller.as_deref(), Some("+14155550123"));
        assert_eq!(id.assistant_id, "as-1");
        assert!(id.is_voice() && !id.ephemeral);
        let r = request(
            json!({"messages": [], "call": {"id": "c-1"}, "customer": {"number": "(415) 555-0123"}}),
        );
        assert_eq!(
            identify(&HeaderMap::new(), &r, "US", 256)
                .unwrap()
                .caller
                .as_deref(),
            Some("+14155550123")
        );
    }

    #[test]
    fn elevenlabs_and_generic_identity_come_from_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(CALL_ID_HEADER, "conv_1".parse().unwrap());
        headers.insert(CALLER_ID_HEADER, "+14155550123".parse().unwrap());
        headers.insert(ASSISTANT_ID_HEADER, "agent_1".parse().unwrap());
        let r = request(json!({"messages": [], "user_id": "u"}));
        let id = identify(&headers, &r, "US", 256).unwrap();
        assert_eq!(
            (id.platform, id.call_key.as_str(), id.assistant_id.as_str()),
            (Platform::ElevenLabs, "conv_1", "agent_1")
        );
        let r = request(json!({"messages": [], "user": "415-555-0123"}));
        let id = identify(&HeaderMap::new(), &r, "US", 256).unwrap();
        assert_eq!(id.platform, Platform::Generic);
        assert_eq!(id.caller.as_deref(), Some("+14155550123"));
        assert!(id.ephemeral && id.call_key.starts_with("req-"));
        assert!(!id.is_voice());
    }

    #[test]
    fn elevenlabs_identity_comes_from_the_body_without_header_mappings() {
        let r = request(
            json!({"messages": [], "user_id": "user-7", "elevenlabs_extra_body": {
            "dynamic_variables": {"system__caller_id": "+1 415 555 0123",
                                  "system__conversation_id": "conv_9", "system__agent_id": "agent_2"}}}),
        );
        let id = identify(&HeaderMap::new(), &r, "US", 256).unwrap();
        assert_eq!(id.platform, Platform::ElevenLabs);
        assert_eq!(id.caller.as_deref(), Some("+14155550123"));
        assert_eq!(
            (id.call_key.as_str(), id.assistant_id.as_str()),
            ("conv_9", "agent_2")
        );
        // Without a caller id, `user_id` names the caller; headers win over the body.
        let r = request(json!({"messages": [], "user_id": "user-7"}));
        let id = identify(&HeaderMap::new(), &r, "US", 256).unwrap();
        assert_eq!(id.caller.as_deref(), Some("id:user-7"));
        let mut headers = HeaderMap::new();
        headers.insert(CALLER_ID_HEADER, "+14155550199".parse().unwrap());
        let id = identify(&headers, &r, "US", 256).unwrap();
        assert_eq!(id.caller.as_deref(), Some("+14155550199"));
        let r = request(json!({"messages": [], "user_id": "", "elevenlabs_extra_body": {}}));
        let id = identify(&HeaderMap::new(), &r, "US", 256).unwrap();
        assert_eq!((id.platform, id.caller), (Platform::ElevenLabs, None));
    }

    #[test]
    fn a_caller_id_that_is_not_a_number_is_a_caller_of_its_own() {
        let mut headers = HeaderMap::new();
        headers.insert(CALLER_ID_HEADER, "user-42".parse().unwrap());
        let r = request(json!({"messages": []}));
        let id = identify(&headers, &r, "US", 256).unwrap();
        assert_eq!(id.caller.as_deref(), Some("id:user-42"));
        let r = request(json!({"messages": [], "user": "user-42"}));
        let id = identify(&HeaderMap::new(), &r, "US", 256).unwrap();
        assert_eq!(id.caller.as_deref(), Some("id:user-42"));
    }

    #[test]
    fn ids_over_the_limit_are_refused_naming_their_source() {
        let long = "9".repeat(17);
        let r = request(json!({"messages": [], "call": {"id": long}}));
        assert_eq!(
            identify(&HeaderMap::new(), &r, "US", 16),
            Err(IdTooLong {
                field: "call.id",
                len: 17,
                limit: 16
            })
        );
        let r = request(json!({"messages": [], "call": {"id": "c"}, "customer": {"number": long}}));
        let err = identify(&HeaderMap::new(), &r, "US", 16).unwrap_err();
        assert_eq!(err.field, "customer.number");
        assert!(err.to_string().contains("limits.max_id_bytes"), "{err}");
        let r = request(json!({"messages": [], "call": {"id": "c"}, "assistant": {"id": long}}));
        assert_eq!(
            identify(&HeaderMap::new(), &r, "US", 16).unwrap_err().field,
            "assistant.id"
        );
        for (header, field) in [
            (CALL_ID_HEADER, "X-Call-Id"),
            (CALLER_ID_HEADER, "X-Caller-Id"),
            (ASSISTANT_ID_HEADER, "X-Assistant-Id"),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(header, long.parse().unwrap());
            let r = request(json!({"messages": []}));
            assert_eq!(identify(&headers, &r, "US", 16).unwrap_err().field, field);
        }
        let r = request(json!({"messages": [], "user": long}));
        assert_eq!(
            identify(&HeaderMap::new(), &r, "US", 16).unwrap_err().field,
            "user"
        );
        // At the limit is fine.
        let r = request(json!({"messages": [], "call": {"id": "9".repeat(16)}}));
        assert!(identify(&HeaderMap::new(), &r, "US", 16).is_ok());
    }
}
