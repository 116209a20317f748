//! Command-line definitions of `redial-bench` (clap derive only).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum as _};
use redial_bench::load::Api;
use redial_bench::suite::StoreKind;

/// Benchmarks for redial: a mock OpenAI-compatible upstream, a streaming load generator and the
/// standard suite.
#[derive(Debug, Parser)]
#[command(name = "redial-bench", version)]
pub struct Cli {
    /// Worker threads of the tokio runtime that drives the load (and the standalone mock)
    /// [default: one per CPU]. The suite's mock always runs on a thread of its own.
    #[arg(long, global = true, env = "REDIAL_BENCH_THREADS")]
    pub threads: Option<usize>,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the mock upstream until Ctrl-C.
    Mock(MockArgs),
    /// Run one load test against a chat-completions URL; prints JSON and a markdown table.
    Load(LoadArgs),
    /// Compare targets at concurrency 1, one request to each in turn, with bootstrap confidence
    /// intervals for what each adds over its baseline and for the difference of those additions.
    Compare(CompareArgs),
    /// Run the standard suite: direct vs through redial, on SQLite and Postgres.
    Suite(SuiteArgs),
    /// Run the fault benchmark: Postgres outages of several lengths under load; counts what
    /// is lost or duplicated and how long recovery takes.
    Fault(FaultArgs),
}

/// `redial-bench mock`.
#[derive(Debug, Args)]
pub struct MockArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,
    /// Time to first token, milliseconds.
    #[arg(long, default_value_t = 0.0)]
    pub ttft_ms: f64,
    /// Gap between tokens, milliseconds.
    #[arg(long, default_value_t = 0.0)]
    pub inter_token_ms: f64,
    /// Tokens per response.
    #[arg(long, default_value_t = 16)]
    pub tokens: usize,
    /// Content of each token chunk.
    #[arg(long, default_value = "Hello ")]
    pub token: String,
    /// Do not model Anthropic's prompt cache on `/v1/messages` (no hashing of the blocks a
    /// request marks `cache_control`, no cached tokens in the usage).
    #[arg(long)]
    pub no_prompt_cache: bool,
}

/// `redial-bench load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Chat-completions URL (a Messages URL, `…/v1/messages`, with `--api anthropic`).
    #[arg(long, default_value = "http://127.0.0.1:8080/v1/chat/completions")]
    pub url: String,
    /// The API of `--url`: `openai` (Chat Completions, what redial serves) or `anthropic`
    /// (Messages: e.g. the mock's endpoint, for a direct baseline).
    #[arg(long, value_enum, default_value = "openai")]
    pub api: Api,
    /// Bearer token (`x-api-key` with `--api anthropic`).
    #[arg(long, env = "REDIAL_BENCH_API_KEY")]
    pub api_key: Option<String>,
    /// Closed loop: this many concurrent streams.
    #[arg(long, conflicts_with = "rate", required_unless_present = "rate")]
    pub concurrency: Option<usize>,
    /// Open loop: this many requests per second, on a fixed schedule.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Open loop: requests over this many in flight are dropped (and counted).
    #[arg(long, default_value_t = redial_bench::load::DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,
    /// Measurement window, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Unrecorded warm-up, seconds.
    #[arg(long, default_value_t = 2.0)]
    pub warmup_secs: f64,
    /// Expected gap between content chunks, milliseconds; enables stall counting.
    #[arg(long)]
    pub pacing_ms: Option<f64>,
    /// Distinct caller numbers.
    #[arg(long, default_value_t = 1_000)]
    pub callers: u64,
    /// Turns per call.
    #[arg(long, default_value_t = 4)]
    pub turns: u32,
    /// `model` sent in every request.
    #[arg(long, default_value = "bench-model")]
    pub model: String,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 60.0)]
    pub timeout_secs: f64,
    /// Name of the run in the report.
    #[arg(long, default_value = "load")]
    pub label: String,
    /// Also write the JSON report to this file.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
}

/// `redial-bench compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// A target, `LABEL=API,URL` (API `openai` or `anthropic`), e.g.
    /// `direct=openai,http://127.0.0.1:9000/v1/chat/completions`. Repeat for each target.
    #[arg(long = "target", required = true, value_parser = parse_arm)]
    pub targets: Vec<(String, Api, String)>,
    /// A target (label) to reach over cleartext HTTP/2 by prior knowledge instead of HTTP/1.1,
    /// e.g. a direct baseline on the mock for a redial set to `http = "http2"`. Repeat.
    #[arg(long = "h2c")]
    pub h2c: Vec<String>,
    /// What a target adds over another, `SUBJECT:BASELINE` (labels). Repeat; each one after the
    /// first is also compared with the first.
    #[arg(long = "added", value_parser = parse_addition)]
    pub additions: Vec<(String, String)>,
    /// Sent to every target as `Authorization: Bearer` (`x-api-key` for `anthropic`).
    #[arg(long, env = "REDIAL_BENCH_API_KEY")]
    pub api_key: Option<String>,
    /// Measurement window, seconds.
    #[arg(long, default_value_t = 30.0)]
    pub duration_secs: f64,
    /// Unrecorded warm-up, seconds.
    #[arg(long, default_value_t = 3.0)]
    pub warmup_secs: f64,
    /// Distinct caller numbers.
    #[arg(long, default_value_t = 1_000)]
    pub callers: u64,
    /// Turns per call.
    #[arg(long, default_value_t = 4)]
    pub turns: u32,
    /// `model` sent in every request.
    #[arg(long, default_value = "bench-model")]
    pub model: String,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 60.0)]
    pub timeout_secs: f64,
    /// Before each request, a pause drawn uniformly below this many milliseconds (not counted):
    /// use about 1 with a mock whose time to first token is not zero, so its 1 ms timer ticks
    /// fall alike on every target.
    #[arg(long, default_value_t = 0.0)]
    pub phase_jitter_ms: f64,
    /// Name of the run in the report.
    #[arg(long, default_value = "compare")]
    pub label: String,
    /// Also write the JSON report to this file.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
}

fn parse_arm(value: &str) -> Result<(String, Api, String), String> {
    let (label, rest) = value.split_once('=').ok_or("expected LABEL=API,URL")?;
    let (api, url) = rest.split_once(',').ok_or("expected LABEL=API,URL")?;
    let api = Api::from_str(api, true).map_err(|_| format!("unknown API {api:?}"))?;
    if label.is_empty() || url.is_empty() {
        return Err("expected LABEL=API,URL".to_owned());
    }
    Ok((label.to_owned(), api, url.to_owned()))
}

fn parse_addition(value: &str) -> Result<(String, String), String> {
    match value.split_once(':') {
        Some((subject, baseline)) if !subject.is_empty() && !baseline.is_empty() => {
            Ok((subject.to_owned(), baseline.to_owned()))
        }
        _ => Err("expected SUBJECT:BASELINE".to_owned()),
    }
}

/// `redial-bench suite`.
#[derive(Debug, Args)]
pub struct SuiteArgs {
    /// The redial binary [default: target/release/redial, else target/debug/redial].
    #[arg(long, env = "REDIAL_BIN")]
    pub redial_bin: Option<PathBuf>,
    /// Postgres server on which a fresh database is created (and dropped) for the run.
    #[arg(
        long,
        env = "BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub postgres_url: String,
    /// Output directory for results.json, results.md, redial configs and logs.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    /// CI smoke run: every scenario, a second or two each.
    #[arg(long)]
    pub smoke: bool,
    /// Stores to run redial on.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "sqlite,postgres"
    )]
    pub stores: Vec<StoreKind>,
    /// Upstream APIs redial speaks to the mock, each on every store: `openai` (runs labelled
    /// with the store) and `anthropic` (Messages API; runs labelled `<store>+anthropic`).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "openai,anthropic"
    )]
    pub providers: Vec<crate::suite::ProviderKind>,
    /// Measure only the direct-to-mock baseline; do not start redial.
    #[arg(long)]
    pub direct_only: bool,
    /// TOML file appended to redial's generated config (e.g. a [memory] section).
    #[arg(long)]
    pub extra_config: Option<PathBuf>,
}

/// `redial-bench fault`.
#[derive(Debug, Args)]
pub struct FaultArgs {
    /// The redial binary [default: target/release/redial, else target/debug/redial].
    #[arg(long, env = "REDIAL_BIN")]
    pub redial_bin: Option<PathBuf>,
    /// Postgres server on which a fresh database is created (and dropped) per outage.
    #[arg(
        long,
        env = "BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub postgres_url: String,
    /// Output directory for results.json, results.md, redial configs, journals and logs.
    #[arg(long, default_value = "bench-results/fault")]
    pub out: PathBuf,
    /// Outage lengths in seconds, one run each.
    #[arg(long, value_delimiter = ',', default_value = "3,13,20,36,60")]
    pub outages: Vec<f64>,
    /// Load before each cut, seconds.
    #[arg(long, default_value_t = 5.0)]
    pub warmup_secs: f64,
    /// Concurrent callers.
    #[arg(long, default_value_t = 20)]
    pub callers: usize,
    /// Turns per second offered by all callers together.
    #[arg(long, default_value_t = 50.0)]
    pub turns_per_sec: f64,
    /// CI smoke run: one 3 s outage after a 2 s warm-up (overrides --outages and
    /// --warmup-secs).
    #[arg(long)]
    pub smoke: bool,
}
