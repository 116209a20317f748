//! The HTTP error type: every failure leaves redial as OpenAI's error JSON,
//! `{"error":{"message","type","param","code"}}`, with the right status.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::storage::StoreError;

/// An error answered to an HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or invalid (400).
    #[error("{message}")]
    BadRequest {
        /// What is wrong, for the client.
        message: String,
        /// The offending parameter, when one is to blame.
        param: Option<String>,
        /// Machine-readable code.
        code: &'static str,
    },
    /// Missing or wrong credentials (401).
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated but not allowed (403).
    #[error("{0}")]
    Forbidden(String),
    /// No such route or resource (404).
    #[error("{0}")]
    NotFound(String),
    /// Wrong HTTP method for the route (405).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The request conflicts with the current state, e.g. a call in progress (409).
    #[error("{0}")]
    Conflict(String),
    /// Body larger than `server.body_limit_bytes` (413).
    #[error("the request body is larger than the configured limit (server.body_limit_bytes)")]
    PayloadTooLarge,
    /// Body not in a supported media type (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A dependency is not available (503).
    #[error("{0}")]
    Unavailable(String),
    /// Anything else (500). The message is logged, never shown.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// A 400 with `code: "invalid_request"` and no parameter.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest {
            message: message.into(),
            param: None,
            code: "invalid_request",
        }
    }

    /// A 400 that blames `param`.
    pub fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            message: message.into(),
            param: Some(param.to_owned()),
            code: "invalid_value",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `error.type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BadRequest { .. }
            | Self::NotFound(_)
            | Self::MethodNotAllowed
            | Self::Conflict(_)
            | Self::PayloadTooLarge
            | Self::UnsupportedMediaType(_) => "invalid_request_error",
            Self::Unauthorized(_) => "authentication_error",
            Self::Forbidden(_) => "permission_error",
            Self::Unavailable(_) => "service_unavailable",
            Self::Internal(_) => "server_error",
        }
    }

    /// OpenAI's `error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { code, .. } => code,
            Self::Unauthorized(_) => "invalid_api_key",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict(_) => "conflict",
            Self::PayloadTooLarge => "request_too_large",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal_error",
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        let message = match self {
            Self::Internal(_) => "internal error; the request id in the x-request-id header identifies it in the logs".to_owned(),
            other => other.to_string(),
        };
        let param = match self {
            Self::BadRequest { param, .. } => param.clone(),
            _ => None,
        };
        json!({"error": {"message": message, "type": self.kind(), "param": param, "code": self.code()}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal(e) = &self {
            tracing::error!(error = format!("{e:#}"), "internal error");
        }
        (self.status(), Json(self.body())).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::Internal(anyhow::Error::new(e).context("storage"))
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::PayloadTooLarge
        } else {
            Self::bad_request(format!(
                "could not read the request body: {}",
                rejection.body_text()
            ))
        }
    }
}
