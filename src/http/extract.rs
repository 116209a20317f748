//! Extractors whose rejections are [`ApiError`]s, so that a bad request gets OpenAI's error shape
//! like every other failure.

use axum::extract::{FromRequest, Request};

use crate::error::ApiError;

/// The raw request body, whose rejections (over the size limit, unreadable) are [`ApiError`]s.
#[derive(Debug, Clone, Default)]
pub struct RawBody(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(axum::body::Bytes::from_request(request, state).await?))
    }
}
