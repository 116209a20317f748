//! The upstream LLM client: one pooled HTTP client for any OpenAI-compatible API, streaming
//! responses parsed incrementally into [`Delta`]s.

mod sse;

use std::pin::Pin;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::{Stream, StreamExt};
use serde_json::Value;

use crate::config::{Secret, UpstreamSettings};

pub use sse::{Delta, parse_chunk};

/// How an upstream call failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream answered with an error status.
    #[error("upstream answered HTTP {status}: {body}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The start of the response body.
        body: String,
    },
    /// No answer in time.
    #[error("upstream timed out ({0})")]
    Timeout(&'static str),
    /// Connection failed or broke.
    #[error("upstream connection failed: {0}")]
    Transport(String),
    /// The upstream sent something that is not a Chat Completions stream.
    #[error("upstream sent an unreadable response: {0}")]
    Decode(String),
}

impl UpstreamError {
    /// Whether another model (or a retry) may succeed: connect errors, timeouts, 408, 429, 5xx.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Status { status, .. } => matches!(status, 408 | 409 | 429) || *status >= 500,
            Self::Timeout(_) | Self::Transport(_) => true,
            Self::Decode(_) => false,
        }
    }

    /// The HTTP status a non-voice client is answered with: the upstream's own error status as
    /// it gave it (a wrong key is a 401, an unknown model a 404, a rate limit a 429, an outage
    /// a 5xx), 504 when it did not answer in time, and 502 when it could not be reached or
    /// answered something unreadable.
    pub fn client_status(&self) -> u16 {
        match self {
            Self::Status { status, .. } if *status >= 400 => *status,
            Self::Timeout(_) => 504,
            Self::Status { .. } | Self::Transport(_) | Self::Decode(_) => 502,
        }
    }

    /// Where an operator should look, for the errors a configuration causes.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Self::Status {
                status: 401 | 403, ..
            } => Some("check upstream.api_key (or OPENAI_API_KEY)"),
            Self::Status { status: 404, .. } => {
                Some("check the model name (upstream.model or the request's `model`)")
            }
            _ => None,
        }
    }

    /// Low-cardinality label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Status { status: 429, .. } => "rate_limited",
            Self::Status { status, .. } if *status >= 500 => "server_error",
            Self::Status { .. } => "client_error",
            Self::Timeout(_) => "timeout",
            Self::Transport(_) => "transport",
            Self::Decode(_) => "decode",
        }
    }
}

/// Client for one OpenAI-compatible upstream.
#[derive(Debug, Clone)]
pub struct LlmClient {
    http: reqwest::Client,
    url: String,
    api_key: Secret,
    idle_timeout: Duration,
}

type EventStream =
    Pin<Box<dyn Stream<Item = Result<eventsource_stream::Event, String>> + Send + 'static>>;

/// An open streaming response.
pub struct UpstreamStream {
    events: EventStream,
    idle_timeout: Duration,
    finished: bool,
}

impl LlmClient {
    /// Builds the pooled client (TCP_NODELAY, connect timeout, rustls).
    pub fn new(settings: &UpstreamSettings) -> Result<Self, UpstreamError> {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_millis(settings.connect_timeout_ms))
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .user_agent(concat!("redial/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| UpstreamError::Transport(e.to_string()))?;
        Ok(Self {
            http,
            url: format!(
                "{}/chat/completions",
                settings.base_url.trim_end_matches('/')
            ),
            api_key: settings.api_key.clone(),
            idle_timeout: Duration::from_millis(settings.stream_idle_timeout_ms),
        })
    }

    /// Sends a streaming request and returns once response headers arrived with a success
    /// status. The caller bounds the wait (first-token timeout).
    pub async fn open_stream(&self, body: &Value) -> Result<UpstreamStream, UpstreamError> {
        let response = self.send(body).await?;
        let events = response
            .bytes_stream()
            .eventsource()
            .map(|event| event.map_err(|e| e.to_string()));
        Ok(UpstreamStream {
            events: Box::pin(events),
            idle_timeout: self.idle_timeout,
            finished: false,
        })
    }

    /// Sends a non-streaming request and returns the parsed `chat.completion`.
    pub async fn complete(&self, body: &Value, timeout: Duration) -> Result<Value, UpstreamError> {
        let response = tokio::time::timeout(timeout, self.send(body))
            .await
            .map_err(|_| UpstreamError::Timeout("completion"))??;
        let bytes = tokio::time::timeout(timeout, response.bytes())
            .await
            .map_err(|_| UpstreamError::Timeout("completion body"))?
            .map_err(|e| UpstreamError::Transport(e.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| UpstreamError::Decode(e.to_string()))
    }

    async fn send(&self, body: &Value) -> Result<reqwest::Response, UpstreamError> {
        let mut request = self.http.post(&self.url).json(body);
        if !self.api_key.is_empty() {
            request = request.bearer_auth(self.api_key.expose());
        }
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                UpstreamError::Timeout("connect")
            } else {
                UpstreamError::Transport(error_chain(&e))
            }
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        Err(UpstreamError::Status {
            status: status.as_u16(),
            body: truncate(&body, 300),
        })
    }
}

impl UpstreamStream {
    /// The next batch of deltas; `None` once the stream finished (`[DONE]` or a finish reason
    /// followed by the end of the body). A body that ends before either is an error, as is a
    /// silence longer than the idle timeout.
    pub async fn next(&mut self) -> Option<Result<Vec<Delta>, UpstreamError>> {
        loop {
            let event = match tokio::time::timeout(self.idle_timeout, self.events.next()).await {
                Err(_) => return Some(Err(UpstreamError::Timeout("between chunks"))),
                Ok(None) if self.finished => return None,
                Ok(None) => {
                    return Some(Err(UpstreamError::Transport(
                        "stream ended before [DONE]".into(),
                    )));
                }
                Ok(Some(Err(e))) => return Some(Err(UpstreamError::Transport(e))),
                Ok(Some(Ok(event))) => event,
            };
            let data = event.data.trim();
            if data.is_empty() {
                continue;
            }
            if data == "[DONE]" {
                self.finished = true;
                return None;
            }
            let deltas = match parse_chunk(data) {
                Ok(deltas) => deltas,
                Err(e) => return Some(Err(e)),
            };
            if deltas.iter().any(|d| matches!(d, Delta::Finish(_))) {
                self.finished = true;
            }
            if !deltas.is_empty() {
                return Some(Ok(deltas));
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        out.push_str(": ");
        out.push_str(&inner.to_string());
        source = inner.source();
    }
    out
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}
