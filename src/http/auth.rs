//! Bearer tokens and platform keys (which route needs which key: [`super::access`]).

use std::net::SocketAddr;

use axum::http::HeaderMap;
use subtle::ConstantTimeEq;

use crate::config::Secret;
use crate::error::ApiError;

/// Whether the `Authorization: Bearer` token equals one of `keys`. Each comparison is constant
/// time, and every key is compared, so timing reveals neither the key nor which one matched.
pub fn bearer_matches(headers: &HeaderMap, keys: &[Secret]) -> bool {
    let Some(token) = bearer_token(headers) else {
        return false;
    };
    token_matches(token, keys)
}

/// Whether `token` equals one of `keys` (constant time per key, all keys compared).
pub fn token_matches(token: &str, keys: &[Secret]) -> bool {
    keys.iter().fold(false, |found, key| {
        let equal: bool = token.as_bytes().ct_eq(key.expose().as_bytes()).into();
        found | (equal && !key.is_empty())
    })
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Checks a platform's credential: with `keys` configured, `token` must be one of them; in dev
/// mode (no keys) only loopback peers are served. `how` tells the client where the key goes.
pub fn authorize(
    keys: &[Secret],
    peer: SocketAddr,
    token: Option<&str>,
    how: &str,
) -> Result<(), ApiError> {
    if keys.is_empty() {
        if peer.ip().is_loopback() {
            return Ok(());
        }
        return Err(ApiError::Forbidden(
            "redial is in dev mode (no server.api_keys) and serves loopback clients only".into(),
        ));
    }
    match token {
        None => Err(ApiError::Unauthorized(format!("missing API key: {how}"))),
        Some(token) if token_matches(token, keys) => Ok(()),
        Some(_) => Err(ApiError::Unauthorized("incorrect API key".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(axum::http::header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn bearer_tokens_match_any_configured_key_only() {
        let keys = [Secret::new("alpha"), Secret::new("beta")];
        assert!(bearer_matches(&headers("Bearer beta"), &keys));
        assert!(bearer_matches(&headers("bearer alpha"), &keys));
        assert!(!bearer_matches(&headers("Bearer gamma"), &keys));
        assert!(!bearer_matches(&headers("Bearer alph"), &keys));
        assert!(!bearer_matches(&headers("Basic alpha"), &keys));
        assert!(!bearer_matches(&HeaderMap::new(), &keys));
        assert!(!token_matches("", &[Secret::default()]));
    }
}
