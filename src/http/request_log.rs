//! The request log: one line per request ("finished processing request"), written when its
//! response has been sent — the body's last frame, or the client hanging up — not when its
//! headers are ready.
//!
//! A streamed reply's headers go out with its first token, so a line written then (tower-http's
//! `on_response`) sits between the upstream's first token and the caller: it is formatted and
//! the log writer's thread woken before the first byte is written. Written at the end, the line
//! is off that path, and it can say how long the whole response took and whether the client
//! stayed for all of it, which for a stream is what an operator wants to know.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::time::Instant;

/// Runs the request and wraps its response body so that the request's line is written once the
/// body is done with. Runs inside the request's `http` span, which the line belongs to.
pub async fn log_requests(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let response = next.run(request).await;
    let span = tracing::Span::current();
    let status = response.status();
    let headers_after = started.elapsed();
    response.map(|inner| {
        let line = Line {
            span,
            status,
            started,
            headers_after,
            complete: false,
        };
        Body::new(LoggedBody::new(inner, line))
    })
}

/// What the line says, written when it drops.
struct Line {
    span: tracing::Span,
    status: StatusCode,
    started: Instant,
    headers_after: Duration,
    /// The body reached its end (as opposed to being dropped early: the client went away).
    complete: bool,
}

impl Drop for Line {
    fn drop(&mut self) {
        let ms = |d: Duration| d.as_secs_f64() * 1_000.0;
        tracing::info!(
            parent: &self.span,
            status = self.status.as_u16(),
            latency_ms = ms(self.headers_after),
            duration_ms = ms(self.started.elapsed()),
            complete = self.complete,
            "finished processing request"
        );
    }
}

/// A response body that carries its request's [`Line`].
struct LoggedBody {
    inner: Body,
    line: Line,
}

impl LoggedBody {
    fn new(inner: Body, mut line: Line) -> Self {
        // An empty body (a 204, say) is never polled: it is complete as it stands.
        line.complete = http_body::Body::is_end_stream(&inner);
        Self { inner, line }
    }
}

impl http_body::Body for LoggedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || this.inner.is_end_stream() {
            this.line.complete = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt as _;
    use http_body::Body as _;

    use super::*;

    async fn next_frame(body: &mut LoggedBody) -> Option<Result<Frame<Bytes>, axum::Error>> {
        std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
    }

    #[tokio::test]
    async fn a_body_read_to_its_end_is_complete_and_one_dropped_early_is_not() {
        let line = || Line {
            span: tracing::Span::none(),
            status: StatusCode::OK,
            started: Instant::now(),
            headers_after: Duration::ZERO,
            complete: false,
        };
        let mut read = LoggedBody::new(Body::from("hello"), line());
        let frame = next_frame(&mut read).await.expect("a frame").expect("data");
        assert_eq!(frame.into_data().ok(), Some(Bytes::from("hello")));
        assert!(
            read.line.complete,
            "a full body is complete after its one frame"
        );

        let stream = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from("a"))])
            .chain(futures_util::stream::pending());
        let mut cut = LoggedBody::new(Body::from_stream(stream), line());
        let first = next_frame(&mut cut).await.expect("a frame").expect("data");
        assert_eq!(first.into_data().ok(), Some(Bytes::from("a")));
        assert!(!cut.is_end_stream());
        assert!(!cut.line.complete, "a stream cut short is not complete");
    }

    #[test]
    fn an_empty_body_is_complete_without_being_read_and_a_full_one_is_not() {
        let line = || Line {
            span: tracing::Span::none(),
            status: StatusCode::NO_CONTENT,
            started: Instant::now(),
            headers_after: Duration::ZERO,
            complete: false,
        };
        assert!(LoggedBody::new(Body::empty(), line()).line.complete);
        assert!(!LoggedBody::new(Body::from("hello"), line()).line.complete);
    }
}
