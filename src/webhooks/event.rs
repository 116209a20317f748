//! What every platform's parser shares: [`ParseError`], the dedupe key's form and pass/fail
//! verdicts.
//!
//! Parsing is lenient: unknown fields are ignored, and an optional field that is absent, `null`
//! or of the wrong type is treated as absent. Only a body that is not JSON, or that lacks the
//! platform's envelope (the event type), is an error.

use thiserror::Error;

use crate::platforms::Platform;

/// Why a webhook body could not be parsed (answer 400).
#[derive(Debug, Error)]
pub enum ParseError {
    /// The body is not JSON.
    #[error("webhook body is not valid JSON")]
    NotJson(#[source] serde_json::Error),
    /// The body is JSON but lacks the platform's envelope; names the missing field.
    #[error("webhook body has no `{0}`")]
    MissingEnvelope(&'static str),
    /// The platform sends no webhooks that redial understands.
    #[error("no webhook format is defined for platform `{0}`")]
    UnsupportedPlatform(Platform),
}

/// `"{platform}:{segment}:{segment}…"`, with `-` for an absent call key.
pub(super) fn dedupe_key(platform: Platform, event_type: &str, rest: &[Option<&str>]) -> String {
    let mut key = format!("{platform}:{event_type}");
    for segment in rest {
        key.push(':');
        key.push_str(segment.unwrap_or("-"));
    }
    key
}

/// The success flag of a string verdict: `true`/`success` → true, `false`/`failure` → false.
pub(super) fn verdict(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "success" | "successful" | "pass" => Some(true),
        "false" | "failure" | "failed" | "fail" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedupe_key_uses_a_dash_for_absent_segments() {
        assert_eq!(
            dedupe_key(Platform::Retell, "call_ended", &[Some("abc")]),
            "retell:call_ended:abc"
        );
        assert_eq!(
            dedupe_key(Platform::Vapi, "status-update", &[None, None]),
            "vapi:status-update:-:-"
        );
    }

    #[test]
    fn verdicts() {
        assert_eq!(verdict("True"), Some(true));
        assert_eq!(verdict("success"), Some(true));
        assert_eq!(verdict("failure"), Some(false));
        assert_eq!(verdict("unknown"), None);
        assert_eq!(verdict("8"), None);
    }
}
