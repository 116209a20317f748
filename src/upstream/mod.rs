//! The upstream LLM providers behind one typed boundary: the engine, the Retell transport and
//! analysis hand [`LlmClient`] a typed [`Request`] and read a typed [`Event`] stream (text, tool-call
//! fragments, finish, usage; errors as [`UpstreamError`]). Each provider's wire format lives in its
//! own module ([`openai`], [`anthropic`]); adding a provider is one module, a [`ProviderKind`]
//! variant, and its arms in [`Wire`].
//!
//! A model written `name/model`, where `name` is a configured `[[providers]]` entry, goes to that
//! provider as `model`; any other model goes to `[upstream]` (an OpenAI-compatible API), as it is.

pub mod anthropic;
mod clients;
pub mod openai;
mod types;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use eventsource_stream2::Eventsource;
use futures_util::{Stream, StreamExt};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{HttpVersion, ProviderKind, ProviderSettings, Secret, Settings};
use crate::silence::Silence;

use clients::{Clients, Lease};

pub use types::{
    Completion, Event, KNOWN_PARAMS, ParamError, Params, Request, Tool, ToolCallDelta, ToolChoice,
    Usage,
};
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
    /// Whether another model (or a retry) may succeed: connect errors, timeouts, 408, 429, 5xx
    /// (Anthropic's 529 overloaded included).
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
            } => Some(
                "check upstream.api_key (or OPENAI_API_KEY), or the api_key of the model's \
                 [[providers]] entry",
            ),
            Self::Status { status: 404, .. } => Some(
                "check the model name (upstream.model, the assistant's model, or the \
                 request's `model`) and its provider",
            ),
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

/// The wire format of a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    OpenAi,
    Anthropic,
}

/// One configured provider.
#[derive(Debug)]
struct Provider {
    name: String,
    wire: Wire,
    url: reqwest::Url,
    /// Authentication and configured headers (values marked sensitive).
    headers: HeaderMap,
    max_tokens: u64,
    stream_usage: bool,
    /// The pooled clients of the provider's HTTP version (shared by every provider that speaks
    /// the same one).
    http: Arc<Clients>,
}

/// The provider name of the `[upstream]` section: of models without a configured prefix, and
/// the prefix that sends a model to it as it is (`upstream/meta-llama/…`). Reserved.
pub const DEFAULT_PROVIDER: &str = "upstream";

/// Client for every configured provider: a set of pooled HTTP clients per HTTP version in use
/// (TCP_NODELAY, rustls; see `clients`), the providers, and how a model name picks one.
#[derive(Debug, Clone)]
pub struct LlmClient {
    /// `[upstream]` first, then `[[providers]]` in order.
    providers: Arc<[Provider]>,
    idle_timeout: Duration,
}

/// An open streaming response.
pub struct UpstreamStream {
    events: EventStream,
    decoder: Decoder,
    /// The idle timeout: the silence since the last event.
    idle: Silence,
    finished: bool,
    /// The stream's place on its HTTP client, held until the stream is dropped.
    _lease: Lease,
}

type EventStream =
    Pin<Box<dyn Stream<Item = Result<eventsource_stream2::Event, String>> + Send + 'static>>;

/// The per-stream state of a provider's parser.
enum Decoder {
    OpenAi,
    Anthropic(anthropic::Decoder),
}

impl LlmClient {
    /// Builds the providers of `settings` and a pooled client for each HTTP version they use.
    pub fn new(settings: &Settings) -> Result<Self, UpstreamError> {
        let upstream = &settings.upstream;
        let default = ProviderSettings {
            name: DEFAULT_PROVIDER.to_owned(),
            kind: ProviderKind::Openai,
            base_url: upstream.base_url.clone(),
            api_key: upstream.api_key.clone(),
            headers: Default::default(),
            max_tokens: 1024,
            stream_usage: upstream.stream_usage,
            http: upstream.http,
        };
        let mut sets: Vec<Arc<Clients>> = Vec::new();
        let mut client_for = |version: HttpVersion| {
            if let Some(set) = sets.iter().find(|set| set.version() == version) {
                return Ok(Arc::clone(set));
            }
            let set = Arc::new(Clients::new(
                version,
                Duration::from_millis(upstream.connect_timeout_ms),
                upstream.http2_streams_per_connection,
            )?);
            sets.push(Arc::clone(&set));
            Ok(set)
        };
        let providers = std::iter::once(&default)
            .chain(&settings.providers)
            .map(|provider| Provider::new(provider, client_for(provider.http)?))
            .collect::<Result<Vec<_>, UpstreamError>>()?;
        Ok(Self {
            providers: providers.into(),
            idle_timeout: Duration::from_millis(upstream.stream_idle_timeout_ms),
        })
    }

    /// The provider and the provider's own model name for a model as configured or requested:
    /// `name/model` goes to the provider called `name` (`upstream/model` to `[upstream]`), any
    /// other model to `[upstream]` as it is.
    fn resolve<'m>(&self, model: &'m str) -> (&Provider, &'m str) {
        if let Some((prefix, rest)) = model.split_once('/')
            && !rest.is_empty()
            && let Some(provider) = self.providers.iter().find(|p| p.name == prefix)
        {
            return (provider, rest);
        }
        (&self.providers[0], model)
    }

    /// The name of the provider that serves `model`.
    pub fn provider_of(&self, model: &str) -> &str {
        &self.resolve(model).0.name
    }

    /// Sends a streaming request for `model` and returns once response headers arrived with a
    /// success status. The caller bounds the wait (first-token timeout).
    pub async fn open_stream(
        &self,
        model: &str,
        request: &Request<'_>,
    ) -> Result<UpstreamStream, UpstreamError> {
        let (provider, name) = self.resolve(model);
        let request = Request {
            stream: true,
            ..*request
        };
        let (response, lease) = self.send(provider, name, &request).await?;
        let events = response
            .bytes_stream()
            .eventsource()
            .map(|event| event.map_err(|e| e.to_string()));
        Ok(UpstreamStream {
            events: Box::pin(events),
            decoder: match provider.wire {
                Wire::OpenAi => Decoder::OpenAi,
                Wire::Anthropic => Decoder::Anthropic(anthropic::Decoder::default()),
            },
            idle: Silence::new(self.idle_timeout),
            finished: false,
            _lease: lease,
        })
    }

    /// Sends a non-streaming request for `model` and returns the whole reply.
    pub async fn complete(
        &self,
        model: &str,
        request: &Request<'_>,
        timeout: Duration,
    ) -> Result<Completion, UpstreamError> {
        let (provider, name) = self.resolve(model);
        let request = Request {
            stream: false,
            ..*request
        };
        let (response, _lease) = tokio::time::timeout(timeout, self.send(provider, name, &request))
            .await
            .map_err(|_| UpstreamError::Timeout("completion"))??;
        let bytes = tokio::time::timeout(timeout, response.bytes())
            .await
            .map_err(|_| UpstreamError::Timeout("completion body"))?
            .map_err(|e| UpstreamError::Transport(e.to_string()))?;
        match provider.wire {
            Wire::OpenAi => openai::parse_completion(&bytes),
            Wire::Anthropic => anthropic::parse_completion(&bytes),
        }
    }

    async fn send(
        &self,
        provider: &Provider,
        model: &str,
        request: &Request<'_>,
    ) -> Result<(reqwest::Response, Lease), UpstreamError> {
        let lease = provider.http.lease()?;
        let builder = lease
            .client()
            .post(provider.url.clone())
            .headers(provider.headers.clone());
        let builder = match provider.wire {
            Wire::OpenAi => builder.json(&openai::body(model, request, provider.stream_usage)),
            Wire::Anthropic => builder.json(&anthropic::body(model, request, provider.max_tokens)),
        };
        let response = builder.send().await.map_err(|e| {
            if e.is_timeout() {
                UpstreamError::Timeout("connect")
            } else {
                UpstreamError::Transport(error_chain(&e))
            }
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok((response, lease));
        }
        let body = response.text().await.unwrap_or_default();
        Err(UpstreamError::Status {
            status: status.as_u16(),
            body: truncate(&body, 300),
        })
    }
}

impl Provider {
    fn new(settings: &ProviderSettings, http: Arc<Clients>) -> Result<Self, UpstreamError> {
        let invalid = |what: String| {
            UpstreamError::Transport(format!("provider {:?}: {what}", settings.name))
        };
        let (wire, default_base, path) = match settings.kind {
            ProviderKind::Openai => (
                Wire::OpenAi,
                "https://api.openai.com/v1",
                "chat/completions",
            ),
            ProviderKind::Anthropic => {
                (Wire::Anthropic, "https://api.anthropic.com/v1", "messages")
            }
        };
        let base = if settings.base_url.is_empty() {
            default_base
        } else {
            &settings.base_url
        };
        let mut url =
            reqwest::Url::parse(base).map_err(|e| invalid(format!("base_url {base:?}: {e}")))?;
        let mut base_path = url.path().trim_end_matches('/').to_owned();
        // `https://api.anthropic.com` as the SDKs write it: the API lives under /v1.
        if wire == Wire::Anthropic && base_path.is_empty() {
            base_path.push_str("/v1");
        }
        url.set_path(&format!("{base_path}/{path}"));
        let mut headers = HeaderMap::new();
        let secret = |value: &Secret| {
            HeaderValue::from_str(value.expose())
                .map(|mut v| {
                    v.set_sensitive(true);
                    v
                })
                .map_err(|_| invalid("a header value is not valid in HTTP".into()))
        };
        if !settings.api_key.is_empty() {
            match wire {
                Wire::OpenAi => {
                    let bearer = Secret::new(format!("Bearer {}", settings.api_key.expose()));
                    headers.insert(reqwest::header::AUTHORIZATION, secret(&bearer)?);
                }
                Wire::Anthropic => {
                    headers.insert("x-api-key", secret(&settings.api_key)?);
                }
            }
        }
        if wire == Wire::Anthropic {
            headers.insert(
                "anthropic-version",
                HeaderValue::from_static(anthropic::API_VERSION),
            );
        }
        for (name, value) in &settings.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| invalid(format!("{name:?} is not a header name")))?;
            headers.insert(name, secret(value)?);
        }
        Ok(Self {
            name: settings.name.clone(),
            wire,
            url,
            headers,
            max_tokens: settings.max_tokens,
            stream_usage: settings.stream_usage,
            http,
        })
    }
}

impl UpstreamStream {
    /// The next batch of events; `None` once the stream finished (OpenAI's `[DONE]`, Anthropic's
    /// `message_stop`, or a finish followed by the end of the body). A body that ends before
    /// either is an error, as is a silence longer than the idle timeout.
    pub async fn next(&mut self) -> Option<Result<Vec<Event>, UpstreamError>> {
        loop {
            let idle = &mut self.idle;
            let next = tokio::select! {
                biased;
                next = self.events.next() => next,
                () = std::future::poll_fn(|cx| idle.poll_elapsed(cx)) => {
                    return Some(Err(UpstreamError::Timeout("between chunks")));
                }
            };
            self.idle.heard();
            let event = match next {
                None if self.finished => return None,
                None => {
                    return Some(Err(UpstreamError::Transport(
                        "stream ended before its end event".into(),
                    )));
                }
                Some(Err(e)) => return Some(Err(UpstreamError::Transport(e))),
                Some(Ok(event)) => event,
            };
            let data = event.data.trim();
            if data.is_empty() {
                continue;
            }
            let parsed = match &mut self.decoder {
                Decoder::OpenAi => openai::parse_event(data).map(|p| match p {
                    openai::Parsed::Events(events) => Some(events),
                    openai::Parsed::Done => None,
                }),
                Decoder::Anthropic(decoder) => {
                    decoder.parse_event(&event.event, data).map(|p| match p {
                        anthropic::Parsed::Events(events) => Some(events),
                        anthropic::Parsed::Done => None,
                    })
                }
            };
            let events = match parsed {
                Ok(Some(events)) => events,
                Ok(None) => {
                    self.finished = true;
                    return None;
                }
                Err(e) => return Some(Err(e)),
            };
            if events.iter().any(|e| matches!(e, Event::Finish(_))) {
                self.finished = true;
            }
            if !events.is_empty() {
                return Some(Ok(events));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProviderKind;

    #[test]
    fn a_prefix_picks_its_provider_and_upstream_takes_the_rest_as_it_is() {
        let mut settings = Settings::default();
        settings.providers.push(ProviderSettings {
            name: "claude".into(),
            kind: ProviderKind::Anthropic,
            base_url: String::new(),
            api_key: Default::default(),
            headers: Default::default(),
            max_tokens: 1024,
            stream_usage: true,
            http: HttpVersion::Auto,
        });
        let client = LlmClient::new(&settings).unwrap();
        let resolved = |model| {
            let (provider, name) = client.resolve(model);
            (provider.name.as_str(), name)
        };
        assert_eq!(resolved("claude/haiku"), ("claude", "haiku"));
        assert_eq!(resolved("gpt-4o"), (DEFAULT_PROVIDER, "gpt-4o"));
        assert_eq!(resolved("meta-llama/x"), (DEFAULT_PROVIDER, "meta-llama/x"));
        assert_eq!(
            resolved("upstream/claude/haiku"),
            (DEFAULT_PROVIDER, "claude/haiku")
        );
        assert_eq!(resolved("claude/"), (DEFAULT_PROVIDER, "claude/"));
    }
}
