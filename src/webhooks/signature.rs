//! Webhook signature verification for Retell, ElevenLabs and Vapi.
//!
//! Every function takes the **raw** request body exactly as received (re-serialised JSON never
//! verifies) and the current time as a parameter, so there is no clock inside and the window
//! checks are testable. Digests are compared in constant time. A function returns `Ok(())` only
//! when the request is authentic and fresh; its [`SignatureError`] says why not, in words that
//! are safe to answer to the client (never a secret, a digest or the expected value).
//!
//! Algorithms, as each platform documents them (docs/protocols/):
//! - Retell: `X-Retell-Signature: v=<ms>,d=<64 lowercase hex>`,
//!   `HMAC-SHA256(api_key, body ++ v)`, `|now − v| ≤ 5 min`.
//! - ElevenLabs: `ElevenLabs-Signature: t=<secs>,v0=<hex>`, `HMAC-SHA256(secret, t + "." + body)`,
//!   at most 30 min old and 5 min in the future.
//! - Vapi: `X-Vapi-Secret` equal to the secret, or the HMAC credential's defaults:
//!   `x-signature: [sha256=]<hex>` over `"{timestamp}.{body}"`, `x-timestamp` in ms or s, ±5 min.

use std::fmt;

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;

#[cfg(test)]
mod tests;

type HmacSha256 = Hmac<Sha256>;

/// Length of a hex-encoded SHA-256 digest.
const SHA256_HEX_LEN: usize = 64;

/// Retell's tolerance between the signature timestamp and now, both directions (inclusive).
pub const RETELL_TOLERANCE_MS: i64 = 5 * 60 * 1000;

/// The oldest ElevenLabs signature timestamp accepted, in seconds before now.
pub const ELEVENLABS_MAX_AGE_SECS: i64 = 30 * 60;

/// How far in the future an ElevenLabs signature timestamp may be (clock skew), in seconds.
pub const ELEVENLABS_MAX_FUTURE_SECS: i64 = 5 * 60;

/// Vapi's tolerance between `x-timestamp` and now, both directions (inclusive).
pub const VAPI_TOLERANCE_MS: i64 = 5 * 60 * 1000;

/// `x-timestamp` values below this are seconds; from it on, milliseconds. 10^11 seconds is in
/// the year 5138, and 10^11 milliseconds is March 1973, so no plausible timestamp is ambiguous.
const VAPI_MS_THRESHOLD: i64 = 100_000_000_000;

/// Why a webhook signature was rejected. The messages are safe to return to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SignatureError {
    /// No secret is configured for this platform, so nothing can be verified.
    #[error("webhook verification is not configured for this platform")]
    Unconfigured,
    /// The signature (or a header it needs, such as Vapi's timestamp) is absent or empty.
    #[error("missing webhook signature")]
    Missing,
    /// The signature header is present but not in the platform's format.
    #[error("malformed webhook signature")]
    Malformed,
    /// The signed timestamp is too old or too far in the future.
    #[error("webhook timestamp is outside the accepted window")]
    OutOfTolerance,
    /// The signature or shared secret does not match.
    #[error("webhook signature does not match")]
    Mismatch,
}

/// Verifies Retell's `X-Retell-Signature` header (docs/protocols/retell.md §3.3).
///
/// The header must match `^v=(\d+),d=([0-9a-f]{64})$` exactly (ASCII digits, lowercase hex, no
/// whitespace); `v` (Unix ms) must be within [`RETELL_TOLERANCE_MS`] of `now_ms` in either
/// direction, inclusive; the digest is `HMAC-SHA256(key = api_key, msg = body ++ v)` with `v`'s
/// digits exactly as received.
pub fn verify_retell(
    header: Option<&str>,
    body: &[u8],
    api_key: &str,
    now_ms: i64,
) -> Result<(), SignatureError> {
    require_secret(api_key)?;
    let (v, digest) = parse_retell_header(present(header)?)?;
    // `v` is all digits, so a parse failure means it overflows: certainly out of the window.
    let signed_ms: i64 = v.parse().map_err(|_| SignatureError::OutOfTolerance)?;
    within(now_ms, signed_ms, RETELL_TOLERANCE_MS)?;
    let expected = hmac_sha256(api_key.as_bytes(), &[body, v.as_bytes()])?;
    digests_equal(&expected, &digest)
}

/// Splits a Retell header into `v` (as received) and the decoded digest.
fn parse_retell_header(header: &str) -> Result<(&str, [u8; 32]), SignatureError> {
    let rest = header.strip_prefix("v=").ok_or(SignatureError::Malformed)?;
    let (v, d) = rest.split_once(",d=").ok_or(SignatureError::Malformed)?;
    let lower_hex = d.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !is_ascii_digits(v) || !lower_hex {
        return Err(SignatureError::Malformed);
    }
    Ok((v, decode_sha256_hex(d)?))
}

/// Verifies ElevenLabs' `ElevenLabs-Signature` header (docs/protocols/vapi-elevenlabs.md §3.6).
///
/// The header is split on `,`; the parts `t=<unix secs>` (exactly one) and `v0=<hex>` (one or
/// more, any order) are used and any other part is ignored. `t` must be no older than
/// [`ELEVENLABS_MAX_AGE_SECS`] and no further than [`ELEVENLABS_MAX_FUTURE_SECS`] in the
/// future; the digest is `HMAC-SHA256(key = secret, msg = t + "." + body)`. If several `v0`
/// parts are sent, any one matching suffices (the SDK keeps the last; the docs show one).
pub fn verify_elevenlabs(
    header: Option<&str>,
    body: &[u8],
    secret: &str,
    now_secs: i64,
) -> Result<(), SignatureError> {
    require_secret(secret)?;
    let parsed = parse_elevenlabs_header(present(header)?)?;
    let signed_secs: i64 = parsed
        .t
        .parse()
        .map_err(|_| SignatureError::OutOfTolerance)?;
    let oldest = now_secs.saturating_sub(ELEVENLABS_MAX_AGE_SECS);
    let newest = now_secs.saturating_add(ELEVENLABS_MAX_FUTURE_SECS);
    if signed_secs < oldest || signed_secs > newest {
        return Err(SignatureError::OutOfTolerance);
    }
    let expected = hmac_sha256(secret.as_bytes(), &[parsed.t.as_bytes(), b".", body])?;
    let matched = parsed.v0.iter().fold(false, |found, candidate| {
        found | bool::from(expected.ct_eq(candidate))
    });
    if matched {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// The parts of an ElevenLabs signature header that matter.
struct ElevenLabsHeader<'a> {
    t: &'a str,
    v0: Vec<[u8; 32]>,
}

fn parse_elevenlabs_header(header: &str) -> Result<ElevenLabsHeader<'_>, SignatureError> {
    let mut t = None;
    let mut v0 = Vec::new();
    for part in header.split(',').map(str::trim) {
        if let Some(value) = part.strip_prefix("t=") {
            if t.replace(value).is_some() || !is_ascii_digits(value) {
                return Err(SignatureError::Malformed);
            }
        } else if let Some(value) = part.strip_prefix("v0=") {
            v0.push(decode_sha256_hex(value)?);
        }
    }
    match t {
        Some(t) if !v0.is_empty() => Ok(ElevenLabsHeader { t, v0 }),
        _ => Err(SignatureError::Malformed),
    }
}

/// The headers authenticating a Vapi server message (docs/protocols/vapi-elevenlabs.md §2.5). The
/// caller fills it from `X-Vapi-Secret`, `x-signature` and `x-timestamp`. `Debug` hides the
/// shared secret.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct VapiAuthHeaders {
    /// `X-Vapi-Secret`: the legacy shared secret, sent verbatim.
    pub x_vapi_secret: Option<String>,
    /// `x-signature`: hex HMAC-SHA256, optionally prefixed `sha256=`.
    pub signature: Option<String>,
    /// `x-timestamp`: Unix time in milliseconds or seconds.
    pub timestamp: Option<String>,
}

impl fmt::Debug for VapiAuthHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VapiAuthHeaders")
            .field("x_vapi_secret", &self.x_vapi_secret.as_ref().map(|_| "***"))
            .field("signature", &self.signature)
            .field("timestamp", &self.timestamp)
            .finish()
    }
}

/// Verifies a Vapi server message. Either credential suffices:
/// - `X-Vapi-Secret` equal to `secret` (constant time, length not leaked), or
/// - the HMAC credential's defaults: `x-signature` = `[sha256=]hex(HMAC-SHA256(secret,
///   "{timestamp}.{body}"))` with `x-timestamp` (ms, or s when below 10^11) within
///   [`VAPI_TOLERANCE_MS`] of `now_ms`.
///
/// A wrong `X-Vapi-Secret` does not fail the request when a valid HMAC signature is present.
pub fn verify_vapi(
    headers: &VapiAuthHeaders,
    body: &[u8],
    secret: &str,
    now_ms: i64,
) -> Result<(), SignatureError> {
    require_secret(secret)?;
    let shared = non_empty(headers.x_vapi_secret.as_deref());
    if shared.is_some_and(|given| secrets_equal(given, secret)) {
        return Ok(());
    }
    match non_empty(headers.signature.as_deref()) {
        Some(signature) => verify_vapi_hmac(signature, headers, body, secret, now_ms),
        None if shared.is_some() => Err(SignatureError::Mismatch),
        None => Err(SignatureError::Missing),
    }
}

fn verify_vapi_hmac(
    signature: &str,
    headers: &VapiAuthHeaders,
    body: &[u8],
    secret: &str,
    now_ms: i64,
) -> Result<(), SignatureError> {
    let hex = signature.strip_prefix("sha256=").unwrap_or(signature);
    let given = decode_sha256_hex(hex)?;
    let timestamp = non_empty(headers.timestamp.as_deref()).ok_or(SignatureError::Missing)?;
    within(now_ms, vapi_timestamp_ms(timestamp)?, VAPI_TOLERANCE_MS)?;
    let expected = hmac_sha256(secret.as_bytes(), &[timestamp.as_bytes(), b".", body])?;
    digests_equal(&expected, &given)
}

/// Reads `x-timestamp` as milliseconds, deciding the unit by magnitude.
fn vapi_timestamp_ms(timestamp: &str) -> Result<i64, SignatureError> {
    if !is_ascii_digits(timestamp) {
        return Err(SignatureError::Malformed);
    }
    let value: i64 = timestamp
        .parse()
        .map_err(|_| SignatureError::OutOfTolerance)?;
    if value < VAPI_MS_THRESHOLD {
        Ok(value * 1000)
    } else {
        Ok(value)
    }
}

/// A request header's value, when it is text (a header that is not is treated as absent).
pub(super) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Rejects an empty secret: HMAC with an empty key, or an empty shared secret, proves nothing.
fn require_secret(secret: &str) -> Result<(), SignatureError> {
    if secret.is_empty() {
        Err(SignatureError::Unconfigured)
    } else {
        Ok(())
    }
}

/// A header that is present and not blank, returned untrimmed (Retell's format is strict).
fn present(header: Option<&str>) -> Result<&str, SignatureError> {
    header
        .filter(|h| !h.trim().is_empty())
        .ok_or(SignatureError::Missing)
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

fn is_ascii_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// `|now − signed| ≤ tolerance`, without overflow.
fn within(now: i64, signed: i64, tolerance: i64) -> Result<(), SignatureError> {
    if now.abs_diff(signed) <= tolerance.unsigned_abs() {
        Ok(())
    } else {
        Err(SignatureError::OutOfTolerance)
    }
}

/// Decodes exactly 64 hex digits (either case) into a SHA-256 digest.
fn decode_sha256_hex(hex: &str) -> Result<[u8; 32], SignatureError> {
    let mut digest = [0u8; 32];
    if hex.len() != SHA256_HEX_LEN {
        return Err(SignatureError::Malformed);
    }
    hex::decode_to_slice(hex, &mut digest).map_err(|_| SignatureError::Malformed)?;
    Ok(digest)
}

/// HMAC-SHA256 of the concatenation of `parts`.
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Result<[u8; 32], SignatureError> {
    // HMAC accepts keys of any length (long ones are hashed first), so this cannot fail.
    let mut mac =
        <HmacSha256 as Mac>::new_from_slice(key).map_err(|_| SignatureError::Unconfigured)?;
    for part in parts {
        mac.update(part);
    }
    Ok(mac.finalize().into_bytes().into())
}

fn digests_equal(expected: &[u8; 32], given: &[u8; 32]) -> Result<(), SignatureError> {
    if bool::from(expected.ct_eq(given)) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Constant-time equality of two secrets of any lengths: both are hashed first, so neither the
/// content nor the length of the expected secret shows in the timing.
fn secrets_equal(given: &str, expected: &str) -> bool {
    let given = Sha256::digest(given.as_bytes());
    let expected = Sha256::digest(expected.as_bytes());
    given.ct_eq(&expected).into()
}
