//! The HTTP surface: routes and middleware. Handlers live one file per route group; they
//! extract, call one function, and map the result.

pub mod access;
pub mod admin;
pub mod auth;
mod chat;
mod extract;
mod health;
mod request_log;
pub mod retell;
mod sse;
mod webhooks;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::{Router, middleware};
use tower::ServiceBuilder;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;

/// The request id header, set on every request that lacks one and echoed on every response.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole application router.
pub fn router(state: AppState) -> Router {
    router_with(state, Router::new())
}

/// The application router with `extra` routes merged in (for embedding and tests). Every
/// route, `extra` included, sits behind [`access::gate`]: a path its table does not list needs
/// an admin key.
pub fn router_with(state: AppState, extra: Router<AppState>) -> Router {
    let body_limit = state.settings.server.body_limit_bytes;
    let traced = Router::new()
        .merge(chat::router())
        .merge(retell::router())
        .merge(webhooks::router())
        .merge(admin::router())
        .merge(extra)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Inside the trace layer, so the line belongs to the request's span; written when the
        // response is done, not as its headers (and a stream's first token) go out.
        .layer(middleware::from_fn(request_log::log_requests))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(make_span)
                .on_response(()),
        );
    // Probes are not traced per request (they would drown the log); they still get request ids.
    let probes = health::router();
    Router::new()
        .merge(traced)
        .merge(probes)
        .layer(middleware::from_fn_with_state(state.clone(), access::gate))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestV7))
                .layer(PropagateRequestIdLayer::new(REQUEST_ID)),
        )
        .with_state(state)
}

fn make_span(request: &Request) -> tracing::Span {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("-", |p| p.as_str());
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    tracing::info_span!("http", method = %request.method(), route, request_id)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Request ids are UUIDv7: unique and sortable by time.
#[derive(Clone, Copy)]
struct MakeRequestV7;

impl MakeRequestId for MakeRequestV7 {
    fn make_request_id<B>(&mut self, _request: &axum::http::Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&Uuid::now_v7().to_string())
            .ok()
            .map(RequestId::new)
    }
}
