//! What redial knows about each voice platform: which platforms there are ([`Platform`]), how
//! each names the call, the caller and the assistant on the chat path ([`identify`]), and what
//! its webhooks report, normalised ([`WebhookEvent`]). One builder, [`Identity::of_call`], turns
//! the ids a platform sent into an [`Identity`], whether they came in a chat request, on a Retell
//! connection or in a webhook; [`phone`] turns a caller id into a caller key.
//!
//! The README's "Pointing your platform at redial" and "Who is a caller" describe what each
//! platform sends, docs/protocols/ the wire details. This module only translates: it imports
//! neither storage nor the HTTP layer (storage imports [`Platform`] from here).
//!
//! # Adding a platform
//!
//! 1. A variant of [`Platform`] (`platform.rs`), with its stored spelling.
//! 2. `platforms/<name>.rs`: a `claim` that recognises the platform's chat requests and reads
//!    their ids, and its line in [`identify`] below (a platform with its own transport, like
//!    Retell's WebSocket, builds its identity with [`Identity::of_call`] there instead).
//! 3. `webhooks/<name>.rs` (signature check on the raw body, and `parse` into a
//!    [`WebhookEvent`]) and its entry in the table of `webhooks/mod.rs`, which also names the
//!    config key of its secret (`[webhooks]` in `config/mod.rs`, README, `config.example.toml`).
//!
//! Nothing else changes: the route `/webhooks/{platform}`, storage, the job queue and the
//! analysis take the platform as data.

mod elevenlabs;
mod event;
mod identity;
pub mod phone;
mod platform;
mod vapi;

use axum::http::HeaderMap;

pub use event::{CallEnd, EventKind, PlatformAnalysisData, WebhookEvent};
pub use identity::{ASSISTANT_ID_HEADER, CALL_ID_HEADER, CALLER_ID_HEADER, IdTooLong, Identity};
pub use platform::{Platform, UnknownPlatform};

use crate::openai::ChatRequest;
use identity::Claim;

/// Extracts identity from an OpenAI-compatible request: Vapi's when the body carries a `call`
/// object, ElevenLabs' when it carries `elevenlabs_extra_body` or `user_id`, else a generic
/// client's (the `X-…-Id` headers, `user` as the caller). Every id it reads must be at most
/// `max_id_bytes` long ([`IdTooLong`] otherwise).
pub fn identify(
    headers: &HeaderMap,
    request: &ChatRequest,
    default_region: &str,
    max_id_bytes: usize,
) -> Result<Identity, IdTooLong> {
    let (platform, claim) = if let Some(claim) = vapi::claim(request) {
        (Platform::Vapi, claim)
    } else if let Some(claim) = elevenlabs::claim(headers, request) {
        (Platform::ElevenLabs, claim)
    } else {
        (Platform::Generic, generic(headers, request))
    };
    Identity::claimed(platform, claim, default_region, max_id_bytes)
}

/// Any other OpenAI-compatible client: the headers, and `user` as the caller without
/// `X-Caller-Id`.
fn generic(headers: &HeaderMap, request: &ChatRequest) -> Claim {
    let user = Claim {
        caller: request.user.clone().map(|u| ("user", u)),
        ..Claim::default()
    };
    Claim::from_headers(headers).or(user)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

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
