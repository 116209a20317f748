//! Deny by default: the one table saying which key class opens which route.
//!
//! Every request passes [`gate`] before routing. Its path is looked up in [`ROUTES`]; a path
//! that no entry covers needs an admin key, so a router added later without an entry here is
//! never public by accident (and never open to platform keys). The classes:
//!
//! - [`KeyClass::Public`]: `/healthz` and `/readyz`, nothing else;
//! - [`KeyClass::Platform`]: a key from `server.api_keys` as a bearer token (dev mode, no keys:
//!   loopback clients);
//! - [`KeyClass::RetellUrl`]: Retell sends no headers; its key from `server.api_keys` is in the
//!   URL and the route checks it before the upgrade;
//! - [`KeyClass::WebhookSignature`]: the platform's signature over the raw body, checked by the
//!   route before anything is parsed;
//! - [`KeyClass::Admin`]: a key from `server.admin_keys` (or `server.admin_key`, named
//!   `default`) as a bearer token. Platform keys never open these routes. In dev mode with no
//!   admin key, loopback clients are served (as `admin:loopback`); outside dev mode without an
//!   admin key configured, admin routes answer 401.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::http::auth::{authorize, bearer_token};
use crate::state::AppState;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyClass {
    /// Anyone.
    Public,
    /// A platform key as a bearer token.
    Platform,
    /// A platform key in the URL (checked by the route).
    RetellUrl,
    /// A webhook signature (checked by the route).
    WebhookSignature,
    /// An admin key as a bearer token.
    Admin,
}

/// How a table entry matches a path.
#[derive(Debug, Clone, Copy)]
pub enum PathMatch {
    /// This path exactly.
    Exact(&'static str),
    /// This path and everything below it (`/admin` covers `/admin` and `/admin/…`).
    Under(&'static str),
}

impl PathMatch {
    fn matches(self, path: &str) -> bool {
        match self {
            Self::Exact(p) => path == p,
            Self::Under(p) => path
                .strip_prefix(p)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
        }
    }
}

/// The route table. Anything not listed is [`KeyClass::Admin`].
pub const ROUTES: &[(PathMatch, KeyClass)] = &[
    (PathMatch::Exact("/healthz"), KeyClass::Public),
    (PathMatch::Exact("/readyz"), KeyClass::Public),
    (PathMatch::Exact("/v1/chat/completions"), KeyClass::Platform),
    (PathMatch::Exact("/chat/completions"), KeyClass::Platform),
    (
        PathMatch::Exact("/chat/completions/chat/completions"),
        KeyClass::Platform,
    ),
    (
        PathMatch::Exact("/v1/chat/completions/chat/completions"),
        KeyClass::Platform,
    ),
    (PathMatch::Under("/v1/models"), KeyClass::Platform),
    (PathMatch::Exact("/models"), KeyClass::Platform),
    (
        PathMatch::Under("/retell/llm-websocket"),
        KeyClass::RetellUrl,
    ),
    (PathMatch::Under("/webhooks"), KeyClass::WebhookSignature),
    (PathMatch::Exact("/metrics"), KeyClass::Admin),
    (PathMatch::Under("/admin"), KeyClass::Admin),
];

/// The key class of a path.
pub fn class_of(path: &str) -> KeyClass {
    ROUTES
        .iter()
        .find(|(m, _)| m.matches(path))
        .map_or(KeyClass::Admin, |(_, class)| *class)
}

/// The admin key that authorised a request (`loopback` in dev mode without admin keys), for
/// the audit log. Set by [`gate`] on every admin request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminName(pub String);

/// Middleware: lets a request through only with its route's key class.
pub async fn gate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    match class_of(request.uri().path()) {
        KeyClass::Public | KeyClass::RetellUrl | KeyClass::WebhookSignature => {}
        KeyClass::Platform => {
            let Some(peer) = peer else {
                return Err(ApiError::Unauthorized("unknown client address".into()));
            };
            authorize(
                &state.settings.server.api_keys,
                peer,
                bearer_token(request.headers()),
                "send it as `Authorization: Bearer <key>`",
            )?;
        }
        KeyClass::Admin => {
            let name = admin(&state, peer, bearer_token(request.headers()))?;
            request.extensions_mut().insert(AdminName(name));
        }
    }
    Ok(next.run(request).await)
}

/// The name of the admin key `token` is, or the reason it opens nothing.
fn admin(
    state: &AppState,
    peer: Option<SocketAddr>,
    token: Option<&str>,
) -> Result<String, ApiError> {
    let server = &state.settings.server;
    let keys = server.all_admin_keys();
    if keys.is_empty() {
        if server.dev_mode() && peer.is_some_and(|p| p.ip().is_loopback()) {
            return Ok("loopback".into());
        }
        return Err(ApiError::Unauthorized(
            "admin routes need a key from server.admin_keys as `Authorization: Bearer <key>`, \
             and none is configured"
                .into(),
        ));
    }
    let Some(token) = token else {
        return Err(ApiError::Unauthorized(
            "missing admin key: send one of server.admin_keys as `Authorization: Bearer <key>`"
                .into(),
        ));
    };
    // Every key is compared, each in constant time: timing tells neither the key nor which.
    let matched = keys.iter().fold(None, |found, key| {
        let equal: bool = token.as_bytes().ct_eq(key.key.expose().as_bytes()).into();
        if equal && found.is_none() {
            Some(key.name.clone())
        } else {
            found
        }
    });
    matched.ok_or_else(|| ApiError::Unauthorized("incorrect admin key".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_probes_are_public_and_unlisted_paths_need_an_admin_key() {
        assert_eq!(class_of("/healthz"), KeyClass::Public);
        assert_eq!(class_of("/readyz"), KeyClass::Public);
        assert_eq!(class_of("/healthz/x"), KeyClass::Admin);
        assert_eq!(class_of("/v1/chat/completions"), KeyClass::Platform);
        assert_eq!(class_of("/v1/models/claude/haiku"), KeyClass::Platform);
        assert_eq!(class_of("/retell/llm-websocket/k/c"), KeyClass::RetellUrl);
        assert_eq!(class_of("/webhooks/vapi"), KeyClass::WebhookSignature);
        assert_eq!(class_of("/webhooksx"), KeyClass::Admin);
        assert_eq!(class_of("/metrics"), KeyClass::Admin);
        assert_eq!(class_of("/admin/v1/calls"), KeyClass::Admin);
        assert_eq!(class_of("/anything-new"), KeyClass::Admin);
        assert_eq!(class_of("/"), KeyClass::Admin);
    }
}
