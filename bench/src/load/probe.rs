//! Sends one streaming chat completion and times it: first content token, `[DONE]`, and the gaps
//! between content chunks.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use reqwest::header::CONTENT_TYPE;
use tokio::time::Instant;

use crate::sse::{Payload, SseParser, classify};

/// Where and how requests are sent.
#[derive(Clone, Debug)]
pub struct Target {
    /// Full chat-completions URL, e.g. `http://127.0.0.1:8080/v1/chat/completions`.
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
    /// redial's own memory read plus prompt build, from its `Server-Timing` header (`mem` +
    /// `prompt`); `None` when the server sent no such header (the mock).
    pub gateway: Option<Duration>,
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

/// Sends `body` to `target` and reads the SSE answer to its end. Latencies count from `start`,
/// which is the intended send time in open-loop runs.
pub(crate) async fn send(
    client: &reqwest::Client,
    target: &Target,
    body: Bytes,
    start: Instant,
    stall_threshold: Option<Duration>,
) -> Outcome {
    let mut request = client
        .post(&target.url)
        .header(CONTENT_TYPE, "application/json")
        .timeout(target.timeout)
        .body(body);
    if let Some(key) = &target.api_key {
        request = request.bearer_auth(key);
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) => return Outcome::failed(transport_failure(&error, Failure::Connect)),
    };
    let gateway = response
        .headers()
        .get("server-timing")
        .and_then(|v| v.to_str().ok())
        .and_then(gateway_time);
    let status = response.status().as_u16();
    if status != 200 {
        // Drain the error body so the connection can be reused.
        let _ = response.bytes().await;
        return Outcome::failed(Failure::Status(status));
    }
    let mut outcome = read_stream(response, StreamTimer::new(start, stall_threshold)).await;
    outcome.gateway = gateway;
    outcome
}

/// `mem` + `prompt` of a `Server-Timing` header such as
/// `mem;dur=0.412;desc="memory read", prompt;dur=0.031, upstream;dur=312.5, total;dur=312.6`.
pub fn gateway_time(header: &str) -> Option<Duration> {
    let mut total_ms = None;
    for metric in header.split(',') {
        let mut parts = metric.trim().split(';');
        let name = parts.next().unwrap_or("").trim();
        if name != "mem" && name != "prompt" {
            continue;
        }
        let duration = parts.find_map(|p| p.trim().strip_prefix("dur=")?.parse::<f64>().ok());
        if let Some(ms) = duration {
            *total_ms.get_or_insert(0.0) += ms;
        }
    }
    total_ms
        .filter(|ms: &f64| ms.is_finite() && *ms >= 0.0)
        .map(|ms| Duration::from_secs_f64(ms / 1_000.0))
}

async fn read_stream(response: reqwest::Response, mut timer: StreamTimer) -> Outcome {
    let mut parser = SseParser::new();
    let mut body = response.bytes_stream();
    while let Some(item) = body.next().await {
        let bytes = match item {
            Ok(bytes) => bytes,
            Err(error) => return timer.fail(transport_failure(&error, Failure::Body)),
        };
        let arrived = Instant::now();
        parser.feed_with(&bytes, |event| timer.on_event(event, arrived));
    }
    timer.finish()
}

fn transport_failure(error: &reqwest::Error, otherwise: Failure) -> Failure {
    if error.is_timeout() {
        Failure::Timeout
    } else {
        otherwise
    }
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

    #[test]
    fn the_gateway_time_is_memory_plus_prompt_from_server_timing() {
        let header = r#"mem;dur=0.412;desc="memory read", prompt;dur=0.031;desc="prompt build", upstream;dur=312.5, total;dur=312.6"#;
        let gateway = gateway_time(header).expect("parsed");
        assert!(
            (gateway.as_secs_f64() * 1_000.0 - 0.443).abs() < 1e-6,
            "{gateway:?}"
        );
        assert_eq!(gateway_time("total;dur=3"), None);
        assert_eq!(gateway_time("mem;dur=x"), None);
    }
}
