//! A silence timer: ready once a given time has passed without activity, and cheap to keep up to
//! date on a hot path. It is set once and moved only when it fires early, so marking activity is
//! a clock read, not a timer reset. The upstream's idle timeout and the SSE heartbeat use it.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Ready once `limit` has passed since the last [`Silence::heard`].
#[derive(Debug)]
pub struct Silence {
    sleep: Pin<Box<Sleep>>,
    last: Instant,
    limit: Duration,
}

impl Silence {
    /// A silence that starts now.
    pub fn new(limit: Duration) -> Self {
        let now = Instant::now();
        Self {
            sleep: Box::pin(tokio::time::sleep_until(now + limit)),
            last: now,
            limit,
        }
    }

    /// Activity now: the silence starts over.
    pub fn heard(&mut self) {
        self.last = Instant::now();
    }

    /// Ready once `limit` has passed since the last activity (it stays ready until
    /// [`Silence::heard`]).
    pub fn poll_elapsed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            ready!(self.sleep.as_mut().poll(cx));
            let due = self.last + self.limit;
            if Instant::now() >= due {
                return Poll::Ready(());
            }
            // Activity since it was set: wait for the rest of the silence.
            self.sleep.as_mut().reset(due);
        }
    }
}
