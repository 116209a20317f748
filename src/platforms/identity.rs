//! [`Identity`]: who is calling, on which call, for which assistant — and the one place that
//! builds it ([`Identity::of_call`]), whatever carried the ids: a chat request, a Retell
//! connection or a webhook.

use axum::http::HeaderMap;
use uuid::Uuid;

use super::phone;
use super::platform::Platform;

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
    /// The identity of a call the platform named: `raw_caller` as the platform sent it (a
    /// number in any format, a SIP URI, an app's user id) becomes its caller key, read in
    /// `default_region` (`memory.default_region`); an unknown assistant is `""`.
    pub fn of_call(
        platform: Platform,
        call_key: String,
        raw_caller: Option<&str>,
        assistant_id: Option<String>,
        default_region: &str,
    ) -> Self {
        Self {
            platform,
            call_key,
            ephemeral: false,
            caller: raw_caller.and_then(|raw| phone::caller_key(raw, default_region)),
            assistant_id: assistant_id.unwrap_or_default(),
        }
    }

    /// The identity a chat request [`Claim`]s. Every id it claims must be at most
    /// `max_id_bytes` long, so that a client cannot make redial store or index arbitrary
    /// amounts of text under a key; a request that names no call gets a fresh `req-…` key.
    pub(super) fn claimed(
        platform: Platform,
        claim: Claim,
        default_region: &str,
        max_id_bytes: usize,
    ) -> Result<Self, IdTooLong> {
        for (field, value) in [&claim.call_key, &claim.caller, &claim.assistant]
            .into_iter()
            .flatten()
        {
            if value.len() > max_id_bytes {
                return Err(IdTooLong {
                    field,
                    len: value.len(),
                    limit: max_id_bytes,
                });
            }
        }
        let (call_key, ephemeral) = match claim.call_key {
            Some((_, key)) => (key, false),
            None => (format!("req-{}", Uuid::now_v7().simple()), true),
        };
        let caller = claim.caller.as_ref().map(|(_, raw)| raw.as_str());
        let assistant = claim.assistant.map(|(_, id)| id);
        Ok(Self {
            ephemeral,
            ..Self::of_call(platform, call_key, caller, assistant, default_region)
        })
    }

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

/// An id as a request carried it, and where it came from (named in [`IdTooLong`]).
pub(super) type Sourced = Option<(&'static str, String)>;

/// The raw ids a chat request carries, before they are checked and normalised.
#[derive(Debug, Default)]
pub(super) struct Claim {
    /// The call id.
    pub call_key: Sourced,
    /// The caller id, as sent.
    pub caller: Sourced,
    /// The assistant or agent id.
    pub assistant: Sourced,
}

impl Claim {
    /// The `X-Call-Id`, `X-Caller-Id` and `X-Assistant-Id` headers.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        Self {
            call_key: header(headers, CALL_ID_HEADER, "X-Call-Id"),
            caller: header(headers, CALLER_ID_HEADER, "X-Caller-Id"),
            assistant: header(headers, ASSISTANT_ID_HEADER, "X-Assistant-Id"),
        }
    }

    /// Each id of `self`, or `other`'s where `self` has none.
    pub fn or(self, other: Self) -> Self {
        Self {
            call_key: self.call_key.or(other.call_key),
            caller: self.caller.or(other.caller),
            assistant: self.assistant.or(other.assistant),
        }
    }
}

/// A header's trimmed, non-empty value.
fn header(headers: &HeaderMap, name: &str, field: &'static str) -> Sourced {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(|v| (field, v.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_call_gets_a_caller_key_and_no_assistant_is_empty() {
        let id = Identity::of_call(
            Platform::Retell,
            "call-1".into(),
            Some("(415) 555-0123"),
            None,
            "US",
        );
        assert_eq!(id.caller.as_deref(), Some("+14155550123"));
        assert_eq!((id.assistant_id.as_str(), id.ephemeral), ("", false));
        let id = Identity::of_call(
            Platform::Vapi,
            "c".into(),
            Some("user-9"),
            Some("a".into()),
            "US",
        );
        assert_eq!(id.caller.as_deref(), Some("id:user-9"));
        let id = Identity::of_call(Platform::Vapi, "c".into(), Some("anonymous"), None, "US");
        assert_eq!(id.caller, None);
    }
}
