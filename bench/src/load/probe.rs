//! Sends one streaming chat completion and times it: first content token, `[DONE]`, and the gaps
//! between content chunks.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::Response;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::client::{ExchangeError, HttpClient};
use crate::sse::{Payload, SseParser, classify};

/// Where and how requests are sent.
#[derive(Clone, Debug)]
pub struct Target {
    /// Full chat-completions URL, plain `http://`, e.g.
    /// `http://127.0.0.1:8080/v1/chat/completions`.
    pub url: String,
    /// Sent as `Authorization: Bearer <key>` when set.
    pub api_key: Option<String>,
    /// Limit on one whole request, body included.
    pub timeout: Duration,
}

/// Why a request did not succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No response: connection refused or reset before the headers.
    Connect,
    /// The client timeout expired.
    Timeout,
    /// A status other than 200.
    Status(u16),
    /// The body broke off with a transport error.
    Body,
    /// The body ended without `[DONE]`.
    NoDone,
    /// `[DONE]` came but no chunk carried content.
    NoContent,
    /// Not sent: the open-loop in-flight limit was reached.
    Dropped,
}

/// The timings of one request, measured from its (intended) start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Time to the first chunk whose `delta.content` is a non-empty string.
    pub ttft: Option<Duration>,
    /// Time to `data: [DONE]`.
    pub done: Option<Duration>,
    /// Gaps between consecutive content chunks.
    pub gaps: Vec<Duration>,
    /// Gaps longer than the stall threshold.
    pub stalls: u32,
    /// Set when the request failed.
    pub failure: Option<Failure>,
}

impl Outcome {
    /// An outcome with no timings.
    pub fn failed(failure: Failure) -> Self {
        Self {
            failure: Some(failure),
            ..Self::default()
        }
    }
}

/// Sends `body` through `client` and reads the SSE answer to its end. Latencies count from
/// `start`, which is the intended send time in open-loop runs.
pub(crate) async fn send(
    client: &HttpClient,
    body: Bytes,
    start: Instant,
    stall_threshold: Option<Duration>,
    timeout: Duration,
) -> Outcome {
    let read =
        async |response| read_response(response, StreamTimer::new(start, stall_threshold)).await;
    match tokio::time::timeout(timeout, client.post(body, read)).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(ExchangeError::Connect | ExchangeError::Request)) => {
            Outcome::failed(Failure::Connect)
        }
        Err(_) => Outcome::failed(Failure::Timeout),
    }
}

async fn read_response(response: Response<Incoming>, mut timer: StreamTimer) -> Outcome {
    let status = response.status().as_u16();
    let mut body = response.into_body();
    if status != 200 {
        // Drain the error body so the connection can be reused.
        while let Some(Ok(_)) = body.frame().await {}
        return Outcome::failed(Failure::Status(status));
    }
    let mut parser = SseParser::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return timer.fail(Failure::Body);
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let arrived = Instant::now();
        for event in parser.feed(&data) {
            timer.on_event(&event, arrived);
        }
    }
    timer.finish()
}

/// Tracks the timings of one stream as its events arrive.
#[derive(Debug)]
struct StreamTimer {
    start: Instant,
    stall_threshold: Option<Duration>,
    last_content: Option<Instant>,
    outcome: Outcome,
}

impl StreamTimer {
    fn new(start: Instant, stall_threshold: Option<Duration>) -> Self {
        Self {
            start,
            stall_threshold,
            last_content: None,
            outcome: Outcome::default(),
        }
    }

    fn on_event(&mut self, data: &str, arrived: Instant) {
        match classify(data) {
            Payload::Done => {
                self.outcome.done.get_or_insert(arrived - self.start);
            }
            Payload::Chunk(chunk) if chunk.has_content => self.on_content(arrived),
            Payload::Chunk(_) | Payload::Other => {}
        }
    }

    fn on_content(&mut self, arrived: Instant) {
        match self.last_content {
            None => self.outcome.ttft = Some(arrived - self.start),
            Some(last) => {
                let gap = arrived - last;
                if self
                    .stall_threshold
                    .is_some_and(|threshold| gap > threshold)
                {
                    self.outcome.stalls += 1;
                }
                self.outcome.gaps.push(gap);
            }
        }
        self.last_content = Some(arrived);
    }

    fn fail(mut self, failure: Failure) -> Outcome {
        self.outcome.failure = Some(failure);
        self.outcome
    }

    fn finish(mut self) -> Outcome {
        if self.outcome.done.is_none() {
            self.outcome.failure = Some(Failure::NoDone);
        } else if self.outcome.ttft.is_none() {
            self.outcome.failure = Some(Failure::NoContent);
        }
        self.outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTENT: &str =
        r#"{"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}"#;
    const ROLE: &str = r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#;

    #[test]
    fn timer_measures_first_content_gaps_stalls_and_done() {
        let start = Instant::now();
        let ms = |n| start + Duration::from_millis(n);
        let mut timer = StreamTimer::new(start, Some(Duration::from_millis(45)));
        timer.on_event(ROLE, ms(1));
        timer.on_event(CONTENT, ms(10));
        timer.on_event(CONTENT, ms(30));
        timer.on_event(CONTENT, ms(80));
        timer.on_event("[DONE]", ms(81));

        let outcome = timer.finish();
        assert_eq!(outcome.ttft, Some(Duration::from_millis(10)));
        assert_eq!(outcome.done, Some(Duration::from_millis(81)));
        let gaps = [Duration::from_millis(20), Duration::from_millis(50)];
        assert_eq!(outcome.gaps, gaps);
        assert_eq!((outcome.stalls, outcome.failure), (1, None));
    }

    #[test]
    fn streams_without_done_or_content_fail() {
        let start = Instant::now();
        let mut no_done = StreamTimer::new(start, None);
        no_done.on_event(CONTENT, start);
        assert_eq!(no_done.finish().failure, Some(Failure::NoDone));

        let mut no_content = StreamTimer::new(start, None);
        no_content.on_event(ROLE, start);
        no_content.on_event("[DONE]", start);
        assert_eq!(no_content.finish().failure, Some(Failure::NoContent));
    }
}
