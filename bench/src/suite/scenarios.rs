//! The scenarios of the standard suite and of its CI smoke version.

use std::time::Duration;

use serde::Serialize;

use crate::load::{DEFAULT_MAX_IN_FLIGHT, LoadMode, WorkloadSpec};
use crate::mock::MockConfig;

/// What a scenario is for; targets are evaluated against scenarios by role, not by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Time to first token at concurrency 1.
    TtftSingle,
    /// Time to first token under open-loop load.
    TtftOpen,
    /// Closed-loop throughput under moderate concurrency.
    Throughput,
    /// One step of the paced-stream ramp.
    PacedStep,
    /// The paced-stream step the stream-count and RSS targets are judged at.
    PacedTarget,
}

/// One scenario: a load shape plus the mock upstream's behaviour while it runs.
#[derive(Clone, Debug, Serialize)]
pub struct Scenario {
    /// Unique name, e.g. `ttft-c1`.
    pub name: String,
    /// What the scenario measures.
    pub role: Role,
    /// Closed or open loop.
    pub mode: LoadMode,
    /// Measurement window.
    #[serde(serialize_with = "as_secs")]
    pub duration: Duration,
    /// Unrecorded warm-up.
    #[serde(serialize_with = "as_secs")]
    pub warmup: Duration,
    /// The mock's default stream while the scenario runs.
    #[serde(serialize_with = "mock_summary")]
    pub mock: MockConfig,
    /// Expected content-chunk gap (paced scenarios).
    #[serde(serialize_with = "as_optional_ms")]
    pub pacing: Option<Duration>,
    /// The request bodies.
    pub workload: WorkloadSpec,
}

/// Stream of 16 tokens with no delay: what is measured is the gateway's own overhead.
fn instant_stream() -> MockConfig {
    MockConfig {
        ttft: Duration::ZERO,
        inter_token: Duration::ZERO,
        tokens: 16,
        token: "Hello ".to_owned(),
    }
}

/// `tokens` tokens, `pace` apart, like a model speaking at a steady rate.
fn paced_stream(tokens: usize, pace: Duration) -> MockConfig {
    MockConfig {
        ttft: Duration::ZERO,
        inter_token: pace,
        tokens,
        token: "word ".to_owned(),
    }
}

fn closed(concurrency: usize) -> LoadMode {
    LoadMode::Closed { concurrency }
}

fn open(rate: f64) -> LoadMode {
    LoadMode::Open {
        rate,
        max_in_flight: DEFAULT_MAX_IN_FLIGHT,
    }
}

fn latency(name: String, role: Role, mode: LoadMode, secs: (f64, f64)) -> Scenario {
    Scenario {
        name,
        role,
        mode,
        duration: Duration::from_secs_f64(secs.0),
        warmup: Duration::from_secs_f64(secs.1),
        mock: instant_stream(),
        pacing: None,
        workload: WorkloadSpec::default(),
    }
}

fn paced(concurrency: usize, role: Role, tokens: usize, secs: (f64, f64)) -> Scenario {
    let pace = Duration::from_millis(20);
    Scenario {
        name: format!("paced-c{concurrency}"),
        role,
        mode: closed(concurrency),
        duration: Duration::from_secs_f64(secs.0),
        warmup: Duration::from_secs_f64(secs.1),
        mock: paced_stream(tokens, pace),
        pacing: Some(pace),
        workload: WorkloadSpec::default(),
    }
}

/// The standard suite (about two minutes per target on a 2-core machine).
pub fn standard() -> Vec<Scenario> {
    let mut scenarios = vec![
        latency("ttft-c1".into(), Role::TtftSingle, closed(1), (20.0, 3.0)),
        latency(
            "open-500rps".into(),
            Role::TtftOpen,
            open(500.0),
            (20.0, 3.0),
        ),
        latency(
            "closed-c32".into(),
            Role::Throughput,
            closed(32),
            (10.0, 2.0),
        ),
    ];
    for concurrency in [250, 500, 1_000, 1_500, 2_000] {
        let (role, secs) = if concurrency == 1_000 {
            (Role::PacedTarget, (20.0, 3.0))
        } else {
            (Role::PacedStep, (8.0, 3.0))
        };
        scenarios.push(paced(concurrency, role, 64, secs));
    }
    scenarios
}

/// The CI smoke version: every scenario kind, a second or two each, low counts.
pub fn smoke() -> Vec<Scenario> {
    vec![
        latency("ttft-c1".into(), Role::TtftSingle, closed(1), (1.0, 0.2)),
        latency("open-50rps".into(), Role::TtftOpen, open(50.0), (1.0, 0.2)),
        latency("closed-c4".into(), Role::Throughput, closed(4), (1.0, 0.2)),
        paced(10, Role::PacedStep, 10, (1.0, 0.3)),
        paced(20, Role::PacedTarget, 10, (1.5, 0.3)),
    ]
}

/// The interleaved comparison of the two upstream APIs (`redial-bench suite` with both
/// providers): one request to each of the direct OpenAI and Messages endpoints and to a redial
/// on each API in turn, at concurrency 1, once per mock setting.
#[derive(Clone, Debug, Serialize)]
pub struct ProviderComparison {
    /// Name, e.g. `providers-c1`.
    pub name: String,
    /// Measurement window.
    #[serde(serialize_with = "as_secs")]
    pub duration: Duration,
    /// Unrecorded warm-up.
    #[serde(serialize_with = "as_secs")]
    pub warmup: Duration,
    /// The mock's stream while it runs.
    #[serde(serialize_with = "mock_summary")]
    pub mock: MockConfig,
    /// The random pause before each request (see `InterleaveConfig::phase_jitter`).
    #[serde(serialize_with = "as_secs")]
    pub phase_jitter: Duration,
    /// How redial speaks to the mock.
    pub upstream_http: UpstreamHttp,
}

/// The HTTP version redial speaks to the mock in a comparison; the direct baselines speak the
/// same (clients reach redial over HTTP/1.1, as the platforms do).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamHttp {
    /// redial's default on an `http://` URL (`http = "auto"`): HTTP/1.1, a connection per
    /// concurrent stream, as to a local model server.
    Http1,
    /// Cleartext HTTP/2 (`http = "http2"`): the framing of the hosted APIs, which redial
    /// reaches over HTTP/2 by ALPN, without their TLS.
    H2c,
}

impl UpstreamHttp {
    /// Short name, for file names and labels: `http1` or `h2c`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::H2c => "h2c",
        }
    }

    /// How the suite's report says it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Http1 => "HTTP/1.1",
            Self::H2c => "cleartext HTTP/2",
        }
    }

    /// The `http` key redial is started with; `None` keeps the default.
    pub fn config_value(self) -> Option<&'static str> {
        match self {
            Self::Http1 => None,
            Self::H2c => Some("http2"),
        }
    }
}

/// The comparisons of the standard suite (`smoke`: a second each):
/// - `providers-c1`: the instant stream of `ttft-c1`. The Messages stream's `message_start`
///   and `ping` then arrive together with the first text, so redial reads three more events
///   before it has anything to forward.
/// - `providers-c1-ttft2`: the first token 2 ms after the response starts, as a real model's
///   comes after `message_start` (which the API sends at once): the extra events are read
///   while the model would still be thinking. Each request starts after a random pause of up
///   to 1 ms, so the mock's 1 ms timer ticks fall alike on every target.
///
/// Both over HTTP/1.1 (redial's default on `http://`), then again as `…-h2c` with redial
/// speaking cleartext HTTP/2 to the mock: the hosted APIs' framing.
pub fn provider_comparisons(smoke: bool) -> Vec<ProviderComparison> {
    let (duration, warmup) = if smoke { (1.0, 0.2) } else { (30.0, 3.0) };
    let comparison = |name: &str, ttft_ms: u64, upstream_http| ProviderComparison {
        name: name.to_owned(),
        duration: Duration::from_secs_f64(duration),
        warmup: Duration::from_secs_f64(warmup),
        mock: MockConfig {
            ttft: Duration::from_millis(ttft_ms),
            ..instant_stream()
        },
        // The mock's timer ticks every millisecond: a random phase in front of each request
        // makes its overshoot the same for every target.
        phase_jitter: Duration::from_millis(ttft_ms.min(1)),
        upstream_http,
    };
    vec![
        comparison("providers-c1", 0, UpstreamHttp::Http1),
        comparison("providers-c1-ttft2", 2, UpstreamHttp::Http1),
        comparison("providers-c1-h2c", 0, UpstreamHttp::H2c),
        comparison("providers-c1-ttft2-h2c", 2, UpstreamHttp::H2c),
    ]
}

fn as_secs<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

fn as_optional_ms<S: serde::Serializer>(
    duration: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    duration
        .map(|d| d.as_secs_f64() * 1_000.0)
        .serialize(serializer)
}

fn mock_summary<S: serde::Serializer>(mock: &MockConfig, serializer: S) -> Result<S::Ok, S::Error> {
    serde_json::json!({
        "ttft_ms": mock.ttft.as_secs_f64() * 1_000.0,
        "inter_token_ms": mock.inter_token.as_secs_f64() * 1_000.0,
        "tokens": mock.tokens,
    })
    .serialize(serializer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_comparison_with_a_delayed_first_token_starts_requests_at_a_random_phase() {
        for smoke in [false, true] {
            let comparisons = provider_comparisons(smoke);
            assert_eq!(comparisons.len(), 4);
            for comparison in comparisons {
                let expected = match comparison.mock.ttft.is_zero() {
                    true => Duration::ZERO,
                    false => Duration::from_millis(1),
                };
                assert_eq!(comparison.phase_jitter, expected, "{}", comparison.name);
            }
        }
    }

    #[test]
    fn each_comparison_runs_over_http1_and_again_over_h2c() {
        let comparisons = provider_comparisons(false);
        for (http, suffix) in [(UpstreamHttp::Http1, ""), (UpstreamHttp::H2c, "-h2c")] {
            let names: Vec<&str> = comparisons
                .iter()
                .filter(|c| c.upstream_http == http)
                .map(|c| c.name.as_str())
                .collect();
            let expected =
                ["providers-c1", "providers-c1-ttft2"].map(|name| format!("{name}{suffix}"));
            assert_eq!(names, expected, "{http:?}");
        }
        assert_eq!(UpstreamHttp::Http1.config_value(), None, "redial's default");
        assert_eq!(UpstreamHttp::H2c.config_value(), Some("http2"));
    }

    #[test]
    fn both_suites_cover_every_role_once_except_paced_steps() {
        for scenarios in [standard(), smoke()] {
            for role in [
                Role::TtftSingle,
                Role::TtftOpen,
                Role::Throughput,
                Role::PacedTarget,
            ] {
                let count = scenarios.iter().filter(|s| s.role == role).count();
                assert_eq!(count, 1, "{role:?}");
            }
            let mut names: Vec<&str> = scenarios.iter().map(|s| s.name.as_str()).collect();
            names.dedup();
            assert_eq!(names.len(), scenarios.len());
        }
    }
}
