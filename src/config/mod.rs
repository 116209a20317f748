//! Configuration: the [`Settings`] tree and how it is loaded.
//!
//! Precedence, highest first: command-line flag, environment (`REDIAL_<SECTION>__<KEY>`, then the
//! conventional `DATABASE_URL` and `OPENAI_API_KEY`), the TOML file (`--config` / `REDIAL_CONFIG`),
//! built-in defaults. Unknown keys and bad values are rejected with a message naming the key and
//! where it came from. Every key is documented in `config.example.toml`.

mod load;
mod operator;
mod secret;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use load::{ConfigError, Override, load};
pub use operator::{AdminKey, DEFAULT_ADMIN_KEY_NAME, RetentionSettings};
pub use secret::{DatabaseUrl, Secret, redact_url_password};

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// HTTP listener and access control.
    pub server: ServerSettings,
    /// Where state is kept.
    pub database: DatabaseSettings,
    /// The default (OpenAI-compatible) LLM provider, and how every upstream is called.
    pub upstream: UpstreamSettings,
    /// More providers, addressed by writing a model as `provider/model`.
    pub providers: Vec<ProviderSettings>,
    /// Prices per model (as written in the configuration or the request), for the cost of calls.
    pub prices: BTreeMap<String, PriceSettings>,
    /// Caller memory and the state summary.
    pub memory: MemorySettings,
    /// Post-call analysis.
    pub analysis: AnalysisSettings,
    /// Platform webhook secrets.
    pub webhooks: WebhookSettings,
    /// Per-assistant scripts; `id = "default"` applies to assistants not listed.
    pub assistants: Vec<AssistantSettings>,
    /// Bounds on what one request may make redial store.
    pub limits: LimitSettings,
    /// How long collected data is kept.
    pub retention: RetentionSettings,
}

impl Settings {
    /// The script of `assistant_id`: its own entry, else the `default` entry, else an empty
    /// script with the built-in filler.
    pub fn assistant(&self, assistant_id: &str) -> &AssistantSettings {
        static BUILT_IN: std::sync::OnceLock<AssistantSettings> = std::sync::OnceLock::new();
        self.assistants
            .iter()
            .find(|a| a.id == assistant_id)
            .or_else(|| self.assistants.iter().find(|a| a.id == DEFAULT_ASSISTANT))
            .unwrap_or_else(|| BUILT_IN.get_or_init(AssistantSettings::default))
    }

    /// Every model the configuration names, in order and without repeats: the upstream's model,
    /// fallbacks and escalation model, each assistant's, and the analysis model.
    pub fn configured_models(&self) -> Vec<&str> {
        let upstream = &self.upstream;
        let mut all: Vec<&str> = Vec::new();
        let candidates = std::iter::once(upstream.model.as_str())
            .chain(upstream.fallback_models.iter().map(String::as_str))
            .chain(std::iter::once(upstream.escalation_model.as_str()))
            .chain(self.assistants.iter().flat_map(|a| {
                std::iter::once(a.model.as_str())
                    .chain(a.fallback_models.iter().map(String::as_str))
                    .chain(std::iter::once(a.escalation_model.as_str()))
            }))
            .chain(std::iter::once(self.analysis.model.as_str()));
        for model in candidates {
            if !model.is_empty() && !all.contains(&model) {
                all.push(model);
            }
        }
        all
    }
}

/// `[[providers]]`: an LLM provider besides `[upstream]`. A model written `name/model` goes to
/// the provider called `name`; any other model to `[upstream]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSettings {
    /// What models are prefixed with (`name/model`): letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// The API it speaks.
    pub kind: ProviderKind,
    /// Base URL; empty = the kind's public API (`https://api.openai.com/v1`,
    /// `https://api.anthropic.com/v1`). `/chat/completions` (openai) or `/messages` (anthropic)
    /// is appended; a query string (Azure's `api-version`) is kept.
    #[serde(default)]
    pub base_url: String,
    /// The key: a bearer token (openai) or `x-api-key` (anthropic). Empty: `ANTHROPIC_API_KEY`
    /// for an anthropic provider, else none.
    #[serde(default)]
    pub api_key: Secret,
    /// Extra request headers (Azure's `api-key`, `anthropic-beta`, an organisation header…);
    /// values are kept secret.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Reply bound sent when the request sets none (the Messages API requires one).
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u64,
    /// Ask an openai provider for usage at the end of each stream
    /// (`stream_options.include_usage`); turn off for a server that rejects it.
    #[serde(default = "yes")]
    pub stream_usage: bool,
    /// The HTTP version spoken to the provider.
    #[serde(default)]
    pub http: HttpVersion,
}

/// The HTTP version redial speaks to a provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpVersion {
    /// HTTP/2 where TLS negotiates it (ALPN: the hosted APIs), else HTTP/1.1.
    #[default]
    Auto,
    /// HTTP/1.1 only: a connection per concurrent stream, however many streams the server
    /// would take on one HTTP/2 connection.
    Http1,
    /// HTTP/2 only, without negotiation ("prior knowledge"): cleartext HTTP/2 (h2c) on an
    /// `http://` URL, for a server or sidecar that speaks it.
    Http2,
}

fn default_max_tokens() -> u64 {
    1024
}

/// The API a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI Chat Completions, or a compatible API.
    Openai,
    /// Anthropic Messages.
    Anthropic,
}

/// `[prices."<model>"]`: what a model costs, in US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceSettings {
    /// Per million input tokens (not read from the cache).
    pub input_per_mtok: f64,
    /// Per million output tokens.
    pub output_per_mtok: f64,
    /// Per million input tokens read from the prompt cache; the input price when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_per_mtok: Option<f64>,
}

impl PriceSettings {
    /// The cost, in US dollars, of `prompt` input tokens of which `cached` came from the cache,
    /// and `completion` output tokens.
    pub fn cost(&self, prompt: u64, completion: u64, cached: u64) -> f64 {
        let cached = cached.min(prompt);
        let fresh = (prompt - cached) as f64 * self.input_per_mtok;
        let cache = cached as f64 * self.cached_input_per_mtok.unwrap_or(self.input_per_mtok);
        let output = completion as f64 * self.output_per_mtok;
        (fresh + cache + output) / 1_000_000.0
    }
}

/// `[analysis]`: the durable post-call analysis queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnalysisSettings {
    /// Model for post-call analysis; empty = `upstream.model`, else the model the call used.
    pub model: String,
    /// Concurrent analysis workers per redial instance (0 disables them on this instance).
    pub workers: u32,
    /// Attempts per job before it is marked failed.
    pub max_attempts: i32,
    /// First retry delay, in seconds; doubles on each further attempt.
    pub retry_base_secs: u64,
    /// How long a claimed job stays with its worker without a renewal, in seconds. The worker
    /// renews it every third of this while the job runs; a crashed worker's job is taken over
    /// once it runs out. At least 3 and at least 3 × `database.connect_timeout_secs`.
    pub lease_secs: u64,
    /// How often an idle worker looks for jobs, in milliseconds.
    pub poll_interval_ms: u64,
    /// Upstream timeout for one analysis request, in seconds.
    pub timeout_secs: u64,
    /// Actions the analysis may propose; must include `none`.
    pub actions: Vec<String>,
}

impl Default for AnalysisSettings {
    fn default() -> Self {
        Self {
            model: String::new(),
            workers: 2,
            max_attempts: 5,
            retry_base_secs: 5,
            lease_secs: 30,
            poll_interval_ms: 500,
            timeout_secs: 60,
            actions: vec!["call_back".into(), "send_quote".into(), "none".into()],
        }
    }
}

/// `[webhooks]`: per-platform webhook secrets. A platform without one has its webhook route
/// answer 503, except in dev mode, where webhooks are accepted unsigned.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// Vapi: the `X-Vapi-Secret` value, or the HMAC credential's secret key.
    pub vapi_secret: Secret,
    /// Retell: the workspace's webhook API key.
    pub retell_api_key: Secret,
    /// ElevenLabs: the webhook's HMAC secret.
    pub elevenlabs_secret: Secret,
}

/// The assistant id whose script applies to assistants not listed.
pub const DEFAULT_ASSISTANT: &str = "default";

/// The placeholder of a greeting that stands for the caller's name.
pub const NAME_PLACEHOLDER: &str = "{name}";

/// `[[assistants]]`: what an assistant must collect, how it opens a call, and how it sounds
/// while tools run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssistantSettings {
    /// The platform's assistant or agent id; `default` for every assistant not listed.
    pub id: String,
    /// Spoken while a platform tool runs, when the model said nothing before calling it: to
    /// voice platforms only, and not before a tool the platform announces itself. Empty = off.
    #[serde(default = "default_filler")]
    pub filler: String,
    /// The system prompt of platforms that send none (Retell); empty = none.
    #[serde(default)]
    pub system_prompt: String,
    /// What the agent says first on platforms where redial opens the call (Retell); `{name}`
    /// becomes the caller's known name. Empty = let the caller speak first.
    #[serde(default)]
    pub greeting: String,
    /// Said instead of a `greeting` with `{name}` when the caller's name is unknown. Empty = the
    /// greeting with the placeholder (and the space or comma before it) removed.
    #[serde(default)]
    pub greeting_unknown: String,
    /// The scripted fields, in the order they should be asked.
    #[serde(default)]
    pub fields: Vec<FieldSettings>,
    /// The model that answers this assistant's calls (may be `provider/model`); empty =
    /// `upstream.model`, else the request's model.
    #[serde(default)]
    pub model: String,
    /// Tried in order when the model fails before its first token; empty =
    /// `upstream.fallback_models`. May cross providers.
    #[serde(default)]
    pub fallback_models: Vec<String>,
    /// Answers from a resumed call's second attempt on; empty = `upstream.escalation_model`.
    #[serde(default)]
    pub escalation_model: String,
}

impl Default for AssistantSettings {
    fn default() -> Self {
        Self {
            id: DEFAULT_ASSISTANT.into(),
            filler: default_filler(),
            system_prompt: String::new(),
            greeting: String::new(),
            greeting_unknown: String::new(),
            fields: Vec::new(),
            model: String::new(),
            fallback_models: Vec::new(),
            escalation_model: String::new(),
        }
    }
}

impl AssistantSettings {
    /// Names of the required fields.
    pub fn required_fields(&self) -> Vec<String> {
        self.fields
            .iter()
            .filter(|f| f.required)
            .map(|f| f.name.clone())
            .collect()
    }

    /// The scripted field called `name`.
    pub fn field(&self, name: &str) -> Option<&FieldSettings> {
        self.fields.iter().find(|f| f.name == name)
    }
}

fn default_filler() -> String {
    "One moment, please.".into()
}

/// `[[assistants.fields]]`: one question of a script.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSettings {
    /// Field name, as the model passes it to `record_answer`.
    pub name: String,
    /// The question, quoted to the model exactly as written.
    pub question: String,
    /// Whether the call is complete only once this field is confirmed.
    #[serde(default = "yes")]
    pub required: bool,
    /// What a valid answer looks like (shown to the model in the tool description).
    #[serde(default)]
    pub description: String,
}

fn yes() -> bool {
    true
}

/// `[server]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Bearer tokens accepted from platforms. Empty = dev mode: loopback only.
    pub api_keys: Vec<Secret>,
    /// A single admin key (acts as the admin key named `default`); kept for older
    /// configurations, `admin_keys` names each key.
    pub admin_key: Secret,
    /// Named bearer keys for the admin API (`/admin/v1/…`) and `/metrics`.
    pub admin_keys: Vec<AdminKey>,
    /// Secret of the keyed hash (HMAC-SHA256) that erasure tombstones keep instead of the
    /// erased number; empty = erasure is refused.
    pub erasure_key: Secret,
    /// Largest accepted request body, in bytes.
    pub body_limit_bytes: usize,
    /// How long in-flight streams and background writes may take to finish on shutdown.
    pub shutdown_grace_secs: u64,
    /// Log output: `pretty` or `json`.
    pub log_format: LogFormat,
    /// A connection must deliver a complete request head within this many milliseconds of
    /// opening (or of its first byte after an idle keep-alive pause), or it is closed.
    pub header_read_timeout_ms: u64,
    /// A keep-alive connection with no request in flight is closed after this many seconds.
    pub idle_timeout_secs: u64,
    /// Most connections open at once; 0 = derived from the open-file limit.
    pub max_connections: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            api_keys: Vec::new(),
            admin_key: Secret::default(),
            admin_keys: Vec::new(),
            erasure_key: Secret::default(),
            body_limit_bytes: 2 * 1024 * 1024,
            shutdown_grace_secs: 30,
            log_format: LogFormat::Pretty,
            header_read_timeout_ms: 10_000,
            idle_timeout_secs: 75,
            max_connections: 0,
        }
    }
}

impl ServerSettings {
    /// Dev mode: no API keys configured, so only loopback clients are served.
    pub fn dev_mode(&self) -> bool {
        self.api_keys.is_empty()
    }

    /// Every admin key, `admin_key` included (as [`DEFAULT_ADMIN_KEY_NAME`]).
    pub fn all_admin_keys(&self) -> Vec<AdminKey> {
        let mut keys = self.admin_keys.clone();
        if !self.admin_key.is_empty() {
            keys.push(AdminKey {
                name: DEFAULT_ADMIN_KEY_NAME.into(),
                key: self.admin_key.clone(),
            });
        }
        keys
    }

    /// The shutdown grace period.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    /// The header read timeout.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    /// The keep-alive idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// `[database]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://FILE` (created on first start) or `postgres://…`.
    pub url: DatabaseUrl,
    /// Largest number of pooled connections.
    pub max_connections: u32,
    /// How long to wait for the database before giving up, in seconds.
    pub connect_timeout_secs: u64,
    /// Most finished turns written in one transaction by the write-behind queue.
    pub write_batch_max: usize,
    /// How long the writer waits for more turns to join a transaction once one is waiting, in
    /// milliseconds (0: write at once).
    pub write_linger_ms: u64,
    /// Turns running or waiting for their write; a turn beyond it waits for room before it
    /// starts, so memory stays bounded when the database falls behind.
    pub write_queue_capacity: usize,
    /// Longest wait for one database write before it is journaled instead, in milliseconds.
    pub write_timeout_ms: u64,
    /// Directory of the outage journal: writes the database cannot take are appended there
    /// (fsynced) and replayed in order once it answers again. Empty = no journal.
    pub journal_dir: String,
    /// Journaled writes not yet replayed past which `/readyz` answers 503.
    pub journal_ready_max: u64,
}

impl DatabaseSettings {
    /// [`DatabaseSettings::write_timeout_ms`] as a duration.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: DatabaseUrl::default(),
            max_connections: 10,
            connect_timeout_secs: 5,
            write_batch_max: 128,
            write_linger_ms: 5,
            write_queue_capacity: 8192,
            write_timeout_ms: 1000,
            journal_dir: "redial-journal".into(),
            journal_ready_max: 10_000,
        }
    }
}

/// `[upstream]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamSettings {
    /// Base URL of an OpenAI-compatible API (`…/v1`); `/chat/completions` is appended.
    pub base_url: String,
    /// Bearer key for the upstream; `OPENAI_API_KEY` when empty.
    pub api_key: Secret,
    /// When set, replaces the model the platform asked for.
    pub model: String,
    /// Most upstream passes for redial's own tool calls in one turn.
    pub max_tool_rounds: u32,
    /// Tried in order when the upstream fails before its first token.
    pub fallback_models: Vec<String>,
    /// Used from the second attempt of a resumed call.
    pub escalation_model: String,
    /// What the caller hears when every model fails or a stream dies.
    pub apology: String,
    /// TCP/TLS connect timeout, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Longest wait for the first token of a model before trying the next, in milliseconds.
    pub first_token_timeout_ms: u64,
    /// Longest silence between two chunks once streaming, in milliseconds.
    pub stream_idle_timeout_ms: u64,
    /// Interval of SSE comment heartbeats sent to the platform while waiting, in milliseconds.
    pub heartbeat_ms: u64,
    /// Ask for usage at the end of each stream (`stream_options.include_usage`); turn off for
    /// an OpenAI-compatible server that rejects it.
    pub stream_usage: bool,
    /// The HTTP version spoken to the upstream.
    pub http: HttpVersion,
    /// Most concurrent streams redial puts on one HTTP/2 connection (every provider's) before
    /// it opens another to the same host.
    pub http2_streams_per_connection: u64,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            base_url: "https://api.openai.com/v1".into(),
            api_key: Secret::default(),
            model: String::new(),
            max_tool_rounds: 3,
            fallback_models: Vec::new(),
            escalation_model: String::new(),
            apology: "Sorry, I'm having trouble right now. Could you say that again?".into(),
            connect_timeout_ms: 2_000,
            first_token_timeout_ms: 10_000,
            stream_idle_timeout_ms: 15_000,
            heartbeat_ms: 2_000,
            stream_usage: true,
            http: HttpVersion::Auto,
            http2_streams_per_connection: 100,
        }
    }
}

/// `[memory]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemorySettings {
    /// Hard budget of the state summary, in tokens (estimated at four characters a token).
    pub summary_max_tokens: usize,
    /// Past this many milliseconds a memory read is abandoned and the turn proceeds without it.
    pub read_budget_ms: u64,
    /// How long after a call a redial from the same caller can resume it, in seconds.
    pub resume_window_secs: u64,
    /// An unfinished call with activity (a stored turn) within this many seconds is live: a new
    /// call from the same caller is a concurrent call, not a redial, and does not resume it.
    pub live_window_secs: u64,
    /// How long a Retell call whose socket closed without `end_call` may reconnect before it is
    /// marked dropped, in seconds.
    pub retell_reconnect_grace_secs: u64,
    /// Region (ISO 3166 alpha-2) for caller numbers given without a country code.
    pub default_region: String,
    /// Most calls whose memory this instance keeps between turns (0: none; every turn reads the
    /// database).
    pub cache_max_calls: usize,
    /// Most bytes (estimated) of memory this instance keeps between turns (0: none).
    pub cache_max_bytes: usize,
}

impl Default for MemorySettings {
    fn default() -> Self {
        Self {
            summary_max_tokens: 300,
            read_budget_ms: 50,
            resume_window_secs: 86_400,
            live_window_secs: 8,
            retell_reconnect_grace_secs: 5,
            default_region: "US".into(),
            cache_max_calls: 10_000,
            cache_max_bytes: 32 * 1024 * 1024,
        }
    }
}

/// `[limits]`: bounds on what one request may make redial store. A request over a bound is
/// refused with a 400 naming the field and the limit, and stores nothing; a tool value over it
/// gets the model a tool error instead (the request itself is fine).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Most messages in one chat request. Each turn resends the whole call: an hour-long voice
    /// call is some 600 to 1,000 messages, tool calls included.
    pub max_messages: usize,
    /// Longest value a tool stores (caller name, language, note; scripted answers), in bytes.
    pub max_value_bytes: usize,
    /// Longest call id, caller id or assistant id, in bytes.
    pub max_id_bytes: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_messages: 2_000,
            max_value_bytes: 4_096,
            max_id_bytes: 256,
        }
    }
}

#[cfg(test)]
mod tests;
