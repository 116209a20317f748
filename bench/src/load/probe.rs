//! Sends one streaming request and times it: first content token, the end of the stream, and the
//! gaps between content chunks. An OpenAI Chat Completions stream is read with the crate's own
//! SSE parser (content in `delta.content`, ended by `[DONE]`); an Anthropic Messages stream with
//! `eventsource-stream2` (content in `text_delta`s, ended by `message_stop`).

use std::time::Duration;

use bytes::Bytes;
use eventsource_stream2::Eventsource as _;
use futures_util::StreamExt as _;
use reqwest::header::CONTENT_TYPE;
use serde::Serialize;
use tokio::time::Instant;

use crate::sse::{MessagesEvent, Payload, SseParser, classify, classify_messages};

/// The `anthropic-version` header a Messages request carries.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// The streaming API a target speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// OpenAI Chat Completions (`POST …/chat/completions`), what redial serves.
    #[default]
    Openai,
    /// Anthropic Messages (`POST …/messages`): the mock's Anthropic endpoint, for the direct
    /// baseline of the runs where redial speaks Anthropic upstream.
    Anthropic,
}

/// Where and how requests are sent.
#[derive(Clone, Debug)]
pub struct Target {
    /// Full URL, e.g. `http://127.0.0.1:8080/v1/chat/completions` (or `…/v1/messages`).
    pub url: String,
    /// Sent as `Authorization: Bearer <key>` (OpenAI) or `x-api-key` (Anthropic) when set.
    pub api_key: Option<String>,
    /// Limit on one whole request, body included.
    pub timeout: Duration,
    /// The API of `url`: how the request is authenticated and the stream read.
    pub api: Api,
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
    /// The body ended without `[DONE]` (`message_stop`), or with an in-stream `error` event.
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
    /// Time to `data: [DONE]` (`message_stop`).
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
    /// redial's memory read (`mem`) when its `Server-Timing` says the memory came from the
    /// call cache (`desc="memory read: call cache"`): a later turn that read nothing from the
    /// database.
    pub cached_memory: Option<Duration>,
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
    match (target.api, &target.api_key) {
        (Api::Openai, Some(key)) => request = request.bearer_auth(key),
        (Api::Openai, None) => {}
        (Api::Anthropic, key) => {
            request = request.header("anthropic-version", ANTHROPIC_VERSION);
            if let Some(key) = key {
                request = request.header("x-api-key", key);
            }
        }
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) => return Outcome::failed(transport_failure(&error, Failure::Connect)),
    };
    let timing = response
        .headers()
        .get("server-timing")
        .and_then(|v| v.to_str().ok());
    let gateway = timing.and_then(gateway_time);
    let cached_memory = timing.and_then(cached_memory_time);
    let status = response.status().as_u16();
    if status != 200 {
        // Drain the error body so the connection can be reused.
        let _ = response.bytes().await;
        return Outcome::failed(Failure::Status(status));
    }
    let timer = StreamTimer::new(start, stall_threshold);
    let mut outcome = match target.api {
        Api::Openai => read_stream(response, timer).await,
        Api::Anthropic => read_messages(response, timer).await,
    };
    outcome.gateway = gateway;
    outcome.cached_memory = cached_memory;
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

/// The `mem` duration of a `Server-Timing` header whose memory came from redial's call cache
/// (`mem;dur=0.004;desc="memory read: call cache"`); `None` for any other read.
pub fn cached_memory_time(header: &str) -> Option<Duration> {
    header.split(',').find_map(|metric| {
        let mut parts = metric.trim().split(';');
        if parts.next()?.trim() != "mem" {
            return None;
        }
        let (mut ms, mut cached) = (None, false);
        for part in parts {
            let part = part.trim();
            if let Some(value) = part.strip_prefix("dur=") {
                ms = value.parse::<f64>().ok();
            } else if let Some(desc) = part.strip_prefix("desc=") {
                cached = desc.contains("call cache");
            }
        }
        let ms = ms.filter(|ms| cached && ms.is_finite() && *ms >= 0.0)?;
        Some(Duration::from_secs_f64(ms / 1_000.0))
    })
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

/// Reads a Messages stream: each event by name, as `eventsource-stream2` parses it.
async fn read_messages(response: reqwest::Response, mut timer: StreamTimer) -> Outcome {
    let mut events = response.bytes_stream().eventsource();
    while let Some(item) = events.next().await {
        let event = match item {
            Ok(event) => event,
            Err(error) => {
                let failure = error
                    .as_transport()
                    .map_or(Failure::Body, |e| transport_failure(e, Failure::Body));
                return timer.fail(failure);
            }
        };
        let arrived = Instant::now();
        match classify_messages(&event.event, &event.data) {
            MessagesEvent::Text => timer.on_content(arrived),
            MessagesEvent::Stop => timer.on_done(arrived),
            MessagesEvent::Error => return timer.fail(Failure::NoDone),
            MessagesEvent::Other => {}
        }
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
            Payload::Done => self.on_done(arrived),
            Payload::Chunk(chunk) if chunk.has_content => self.on_content(arrived),
            Payload::Chunk(_) | Payload::Other => {}
        }
    }

    fn on_done(&mut self, arrived: Instant) {
        self.outcome.done.get_or_insert(arrived - self.start);
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
    fn the_cached_memory_time_is_the_mem_of_a_call_cache_read_only() {
        let cached =
            "mem;dur=0.004;desc=\"memory read: call cache\", prompt;dur=0.031, total;dur=1";
        let read = cached_memory_time(cached).expect("parsed");
        assert!(
            (read.as_secs_f64() * 1_000.0 - 0.004).abs() < 1e-9,
            "{read:?}"
        );
        let database = "mem;dur=0.412;desc=\"memory read\", prompt;dur=0.031, total;dur=1";
        assert_eq!(cached_memory_time(database), None);
        assert_eq!(cached_memory_time("total;dur=3"), None);
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
