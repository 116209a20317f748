//! The body of a streamed turn: Server-Sent Events written as they come, and a comment heartbeat
//! after every `interval` of silence so a platform never takes a thinking upstream for a dead
//! connection.
//!
//! Every chunk of a reply passes through here, so the body does the least it can per frame: the
//! frame is written once into one buffer, and the heartbeat is a [`Silence`] (a frame costs a
//! clock read, not a timer reset).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http_body::Frame;

use crate::silence::Silence;

/// The heartbeat comment.
const PING: &[u8] = b": ping\n\n";

/// One event whose `data:` is `data` (a single line: JSON never holds a raw line break).
pub fn data(data: &str) -> Bytes {
    line(b"data: ", data)
}

/// A comment line (`: text`), which clients ignore.
pub fn comment(text: &str) -> Bytes {
    line(b": ", text)
}

/// `field` and `value` as one line that ends the event, in one allocation.
fn line(field: &[u8], value: &str) -> Bytes {
    let mut frame = Vec::with_capacity(field.len() + value.len() + 2);
    frame.extend_from_slice(field);
    frame.extend_from_slice(value.as_bytes());
    frame.extend_from_slice(b"\n\n");
    frame.into()
}

/// An SSE response body: the frames of `frames`, with a heartbeat after each `interval` without
/// one.
pub struct SseBody {
    frames: Pin<Box<dyn Stream<Item = Bytes> + Send>>,
    heartbeat: Silence,
}

impl SseBody {
    /// A body of `frames`, each an encoded event ([`data`], [`comment`]).
    pub fn new(frames: impl Stream<Item = Bytes> + Send + 'static, interval: Duration) -> Self {
        Self {
            frames: Box::pin(frames),
            heartbeat: Silence::new(interval),
        }
    }
}

impl http_body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = this.frames.as_mut().poll_next(cx) {
            this.heartbeat.heard();
            return Poll::Ready(frame.map(|frame| Ok(Frame::data(frame))));
        }
        ready!(this.heartbeat.poll_elapsed(cx));
        this.heartbeat.heard();
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(PING)))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_one_event_or_comment_each() {
        assert_eq!(&data(r#"{"a":1}"#)[..], b"data: {\"a\":1}\n\n");
        assert_eq!(&data("[DONE]")[..], b"data: [DONE]\n\n");
        assert_eq!(
            &comment("server-timing total;dur=1.0")[..],
            b": server-timing total;dur=1.0\n\n"
        );
    }
}
