//! Interleaved comparison: several targets measured in one closed loop at concurrency 1, one
//! request to each in turn, so that whatever else a shared machine is doing (another process,
//! a noisy neighbour, frequency changes) falls on all of them alike.
//!
//! Sequential runs of a few seconds each cannot tell apart two gateways whose medians differ by
//! a few microseconds: the machine drifts by more than that between runs. Here every *round*
//! sends one request to each target, back to back, in a random order drawn afresh each round, so
//! no target always goes first or always follows the same other target. Differences are then estimated with a percentile bootstrap over
//! rounds (resampling whole rounds keeps each round's targets together), which gives a 95 %
//! confidence interval for:
//!
//! - the time a target **adds** over a baseline (`subject − baseline` at a percentile, e.g.
//!   redial's TTFT p50 minus the mock's own);
//! - the **difference between two such additions** (e.g. what redial adds in front of an
//!   Anthropic upstream minus what it adds in front of an OpenAI-compatible one).

use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use tokio::time::Instant;

use super::probe::{self, Outcome, Target};
use super::stats::{Percentiles, Recorder};
use super::workload::{Workload, WorkloadSpec};
use super::{Counts, h2c_client, http_client};

/// Bootstrap resamples behind each confidence interval.
const RESAMPLES: usize = 2_000;
/// Seed of the resampling, so the same samples always give the same interval.
const SEED: u64 = 0x5eed_ab1e;

/// One target of an interleaved run.
#[derive(Clone, Debug)]
pub struct Arm {
    /// Name in the report, e.g. `direct` or `redial-anthropic`.
    pub label: String,
    /// Where its requests go.
    pub target: Target,
    /// Reach it over cleartext HTTP/2 (prior knowledge) instead of HTTP/1.1: a direct
    /// baseline for a gateway that speaks HTTP/2 upstream, as to the hosted APIs.
    pub h2c: bool,
}

/// "`subject` adds over `baseline`": both are arm labels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Addition {
    /// The arm measured through the gateway.
    pub subject: String,
    /// The arm that goes straight to the same upstream.
    pub baseline: String,
}

/// An interleaved run.
#[derive(Clone, Debug)]
pub struct InterleaveConfig {
    /// Name of the run in the report.
    pub label: String,
    /// The targets, sent one request each per round.
    pub arms: Vec<Arm>,
    /// The additions to estimate. Every addition after the first is also compared with the
    /// first one.
    pub additions: Vec<Addition>,
    /// Length of the measurement window.
    pub duration: Duration,
    /// Rounds before the window, not recorded.
    pub warmup: Duration,
    /// The request bodies (each arm has its own calls, of this shape).
    pub workload: WorkloadSpec,
    /// Before each request, a pause drawn uniformly below this (precise: a blocking thread's
    /// sleep, not a timer tick), not counted in its latency. For a mock with a time to first
    /// token: its timer fires on 1 ms ticks, and in a closed loop each request starts at a
    /// fixed offset from the tick the last one ended on, so a target that is a few
    /// microseconds slower to reach the mock can cross a tick and seem a whole tick slower.
    /// A random phase gives every target the same overshoot. Zero: no pause.
    pub phase_jitter: Duration,
}

/// A statistic with its 95 % bootstrap confidence interval, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Estimate {
    /// On the samples as measured.
    pub ms: f64,
    /// 2.5th percentile of the resampled statistic.
    pub low_ms: f64,
    /// 97.5th percentile of the resampled statistic.
    pub high_ms: f64,
}

/// What one arm measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ArmReport {
    /// The arm's label.
    pub label: String,
    /// Its URL.
    pub url: String,
    /// What happened to its requests in the window.
    pub counts: Counts,
    /// Its time to first content token.
    pub ttft: Percentiles,
    /// redial's `mem` + `prompt` from `Server-Timing` (empty for the mock).
    pub gateway: Percentiles,
}

/// What a subject adds over its baseline, in time to first token.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AdditionReport {
    /// The subject arm.
    pub subject: String,
    /// The baseline arm.
    pub baseline: String,
    /// `p50(subject) − p50(baseline)`.
    pub p50: Estimate,
    /// `p99(subject) − p99(baseline)`.
    pub p99: Estimate,
}

/// One addition minus another (the first of the run), in time to first token.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ContrastReport {
    /// `subject − baseline` of this addition.
    pub addition: String,
    /// `subject − baseline` of the addition it is compared with.
    pub against: String,
    /// Difference of the two additions at the median.
    pub p50: Estimate,
    /// Difference of the two additions at the 99th percentile.
    pub p99: Estimate,
    /// `more` when the whole interval is above zero, `less` when it is below, `no difference
    /// resolved` when it spans zero.
    pub verdict: &'static str,
}

/// The result of an interleaved run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InterleaveReport {
    /// Name of the run.
    pub label: String,
    /// Length of the measurement window, seconds.
    pub duration_secs: f64,
    /// Warm-up before the window, seconds.
    pub warmup_secs: f64,
    /// The traffic shape.
    pub workload: WorkloadSpec,
    /// Rounds in the window in which every arm's request succeeded: the bootstrap's samples.
    pub complete_rounds: usize,
    /// Rounds in the window in which some arm's request failed (left out of the estimates).
    pub incomplete_rounds: usize,
    /// Bootstrap resamples behind each interval.
    pub resamples: usize,
    /// Per arm.
    pub arms: Vec<ArmReport>,
    /// Per addition.
    pub additions: Vec<AdditionReport>,
    /// Every addition after the first, against the first.
    pub contrasts: Vec<ContrastReport>,
}

impl InterleaveReport {
    /// Problems that make the run invalid: an arm with no success, or any failed request.
    pub fn hard_failures(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for arm in &self.arms {
            if arm.counts.ok == 0 {
                problems.push(format!("{}: no successful request", arm.label));
            }
            let errors = arm.counts.errors();
            if errors > 0 {
                problems.push(format!(
                    "{}: {errors} failed requests ({:?})",
                    arm.label, arm.counts
                ));
            }
        }
        problems
    }
}

/// Runs the arms in rounds until the window closes, then estimates the additions.
pub async fn run(config: InterleaveConfig) -> anyhow::Result<InterleaveReport> {
    let positions = check(&config)?;
    let client = http_client()?;
    let h2c = h2c_client()?;
    let arms = config.arms.len();
    let workloads: Vec<Workload> = (0..arms)
        .map(|_| Workload::new(config.workload.clone()))
        .collect();
    let mut recorders = (0..arms)
        .map(|_| Recorder::new())
        .collect::<anyhow::Result<Vec<_>>>()?;
    let start = Instant::now();
    let measure_from = start + config.warmup;
    let stop_at = measure_from + config.duration;
    // ttft[arm][round], microseconds, of the complete rounds in the window.
    let mut ttft: Vec<Vec<u32>> = vec![Vec::new(); arms];
    let mut incomplete = 0;
    let mut outcomes: Vec<Outcome> = vec![Outcome::default(); arms];
    let mut order: Vec<usize> = (0..arms).collect();
    let mut rng = fastrand::Rng::with_seed(SEED);
    loop {
        let round_start = Instant::now();
        if round_start >= stop_at {
            break;
        }
        // A fresh order every round: no target always goes first, or always follows the same
        // one (a request right after a gateway's finds the machine busy with that gateway's
        // writes, or awake; a fixed rotation gave the target after a gateway 0.02 ms).
        rng.shuffle(&mut order);
        for &arm in &order {
            let workload = &workloads[arm];
            let conversation = workload.checkout();
            let target = &config.arms[arm].target;
            let body = workload.body(target.api, &conversation);
            if !config.phase_jitter.is_zero() {
                let max = u64::try_from(config.phase_jitter.as_nanos()).unwrap_or(u64::MAX);
                let pause = Duration::from_nanos(rng.u64(..max));
                tokio::task::spawn_blocking(move || std::thread::sleep(pause))
                    .await
                    .context("pausing before a request")?;
            }
            let sent = Instant::now();
            let client = if config.arms[arm].h2c { &h2c } else { &client };
            outcomes[arm] = probe::send(client, target, body, sent, None).await;
            workload.checkin(conversation);
        }
        if round_start < measure_from {
            continue;
        }
        for (recorder, outcome) in recorders.iter_mut().zip(&outcomes) {
            recorder.record(outcome);
        }
        let times: Option<Vec<u32>> = outcomes
            .iter()
            .map(|o| o.failure.is_none().then_some(o.ttft?).map(as_us))
            .collect();
        match times {
            Some(times) => ttft.iter_mut().zip(times).for_each(|(t, v)| t.push(v)),
            None => incomplete += 1,
        }
    }
    let arm_reports = config
        .arms
        .iter()
        .zip(&recorders)
        .map(|(arm, recorder)| {
            let summary = recorder.summary();
            ArmReport {
                label: arm.label.clone(),
                url: arm.target.url.clone(),
                counts: summary.counts,
                ttft: summary.ttft,
                gateway: summary.gateway,
            }
        })
        .collect();
    let estimates = Estimates::new(&ttft);
    let additions: Vec<AdditionReport> = config
        .additions
        .iter()
        .zip(&positions)
        .map(|(addition, &(s, b))| AdditionReport {
            subject: addition.subject.clone(),
            baseline: addition.baseline.clone(),
            p50: estimates.estimate(0.5, |q| q[s] - q[b]),
            p99: estimates.estimate(0.99, |q| q[s] - q[b]),
        })
        .collect();
    let contrasts = positions
        .iter()
        .zip(&config.additions)
        .skip(1)
        .map(|(&(s, b), addition)| {
            let (s0, b0) = positions[0];
            let first = &config.additions[0];
            let p50 = estimates.estimate(0.5, |q| (q[s] - q[b]) - (q[s0] - q[b0]));
            ContrastReport {
                addition: format!("{} − {}", addition.subject, addition.baseline),
                against: format!("{} − {}", first.subject, first.baseline),
                p50,
                p99: estimates.estimate(0.99, |q| (q[s] - q[b]) - (q[s0] - q[b0])),
                verdict: verdict(&p50),
            }
        })
        .collect();
    Ok(InterleaveReport {
        label: config.label,
        duration_secs: config.duration.as_secs_f64(),
        warmup_secs: config.warmup.as_secs_f64(),
        workload: config.workload,
        complete_rounds: ttft.first().map_or(0, Vec::len),
        incomplete_rounds: incomplete,
        resamples: RESAMPLES,
        arms: arm_reports,
        additions,
        contrasts,
    })
}

/// The arms' positions of each addition; an error names a label that is not an arm.
fn check(config: &InterleaveConfig) -> anyhow::Result<Vec<(usize, usize)>> {
    anyhow::ensure!(!config.arms.is_empty(), "no targets to compare");
    let labels: Vec<&str> = config.arms.iter().map(|a| a.label.as_str()).collect();
    for (i, label) in labels.iter().enumerate() {
        anyhow::ensure!(
            !labels[..i].contains(label),
            "two targets are labelled {label:?}"
        );
    }
    let position = |label: &str| {
        labels
            .iter()
            .position(|l| *l == label)
            .with_context(|| format!("{label:?} is not a target (targets: {labels:?})"))
    };
    config
        .additions
        .iter()
        .map(|a| Ok((position(&a.subject)?, position(&a.baseline)?)))
        .collect()
}

fn verdict(estimate: &Estimate) -> &'static str {
    if estimate.low_ms > 0.0 {
        "more"
    } else if estimate.high_ms < 0.0 {
        "less"
    } else {
        "no difference resolved"
    }
}

/// Percentiles of the arms over rounds, as measured and resampled.
struct Estimates<'a> {
    /// `ttft[arm][round]`, microseconds.
    ttft: &'a [Vec<u32>],
    /// Round indices of each resample.
    resamples: Vec<Vec<u32>>,
}

impl<'a> Estimates<'a> {
    fn new(ttft: &'a [Vec<u32>]) -> Self {
        let rounds = ttft.first().map_or(0, Vec::len);
        let mut rng = fastrand::Rng::with_seed(SEED);
        let resamples = match rounds {
            0 => Vec::new(),
            _ => (0..RESAMPLES)
                .map(|_| {
                    (0..rounds)
                        .map(|_| rng.u32(..u32::try_from(rounds).unwrap_or(u32::MAX)))
                        .collect()
                })
                .collect(),
        };
        Self { ttft, resamples }
    }

    /// `statistic` of the arms' `quantile`s (in microseconds), on the samples and with its 95 %
    /// interval over the resamples. All zero when there are no complete rounds.
    fn estimate(&self, quantile: f64, statistic: impl Fn(&[f64]) -> f64) -> Estimate {
        if self.resamples.is_empty() {
            return Estimate {
                ms: 0.0,
                low_ms: 0.0,
                high_ms: 0.0,
            };
        }
        let mut scratch = Vec::new();
        let measured: Vec<f64> = self
            .ttft
            .iter()
            .map(|samples| {
                scratch.clear();
                scratch.extend_from_slice(samples);
                nearest_rank(&mut scratch, quantile)
            })
            .collect();
        let mut resampled: Vec<f64> = self
            .resamples
            .iter()
            .map(|rounds| {
                let quantiles: Vec<f64> = self
                    .ttft
                    .iter()
                    .map(|samples| {
                        scratch.clear();
                        scratch.extend(rounds.iter().map(|&r| samples[r as usize]));
                        nearest_rank(&mut scratch, quantile)
                    })
                    .collect();
                statistic(&quantiles)
            })
            .collect();
        resampled.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let last = resampled.len() - 1;
            resampled[((last as f64) * q).round() as usize]
        };
        Estimate {
            ms: statistic(&measured) / 1_000.0,
            low_ms: at(0.025) / 1_000.0,
            high_ms: at(0.975) / 1_000.0,
        }
    }
}

/// The nearest-rank `quantile` of `samples` (reordered in place), in the samples' unit.
fn nearest_rank(samples: &mut [u32], quantile: f64) -> f64 {
    let rank = ((samples.len() as f64) * quantile).ceil() as usize;
    let index = rank.clamp(1, samples.len()) - 1;
    f64::from(*samples.select_nth_unstable(index).1)
}

fn as_us(duration: Duration) -> u32 {
    u32::try_from(duration.as_micros()).unwrap_or(u32::MAX)
}

/// The report as markdown: the arms, then the additions and contrasts with their intervals.
pub fn markdown(report: &InterleaveReport) -> String {
    let mut out = format!(
        "### {} ({} complete rounds, {} incomplete; 95 % intervals from {} bootstrap resamples)\n\n",
        report.label, report.complete_rounds, report.incomplete_rounds, report.resamples
    );
    out.push_str("| target | ok | errors | TTFT p50 ms | p90 | p99 | gateway p50 ms |\n");
    out.push_str("|---|--:|--:|--:|--:|--:|--:|\n");
    for arm in &report.arms {
        out.push_str(&format!(
            "| {} | {} | {} | {:.3} | {:.3} | {:.3} | {} |\n",
            arm.label,
            arm.counts.ok,
            arm.counts.errors(),
            arm.ttft.p50_ms,
            arm.ttft.p90_ms,
            arm.ttft.p99_ms,
            match arm.gateway.count {
                0 => "–".to_owned(),
                _ => format!("{:.3}", arm.gateway.p50_ms),
            },
        ));
    }
    let interval = |e: &Estimate| format!("{:.3} [{:.3}, {:.3}]", e.ms, e.low_ms, e.high_ms);
    if !report.additions.is_empty() {
        out.push_str("\n| added TTFT | p50 ms [95 % CI] | p99 ms [95 % CI] |\n|---|--:|--:|\n");
        for a in &report.additions {
            out.push_str(&format!(
                "| {} − {} | {} | {} |\n",
                a.subject,
                a.baseline,
                interval(&a.p50),
                interval(&a.p99)
            ));
        }
    }
    if !report.contrasts.is_empty() {
        out.push_str(
            "\n| difference of added TTFT | p50 ms [95 % CI] | p99 ms [95 % CI] | at p50 |\n\
             |---|--:|--:|---|\n",
        );
        for c in &report.contrasts {
            out.push_str(&format!(
                "| ({}) − ({}) | {} | {} | {} |\n",
                c.addition,
                c.against,
                interval(&c.p50),
                interval(&c.p99),
                c.verdict
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_picks_the_sample_at_the_rank() {
        let mut samples = [5, 1, 4, 2, 3];
        assert_eq!(nearest_rank(&mut samples, 0.5), 3.0);
        assert_eq!(nearest_rank(&mut samples, 0.99), 5.0);
        assert_eq!(nearest_rank(&mut samples, 0.0), 1.0);
    }

    #[test]
    fn a_constant_shift_is_estimated_exactly_and_its_interval_is_tight() {
        // Arm 1 is arm 0 plus 100 µs in every round; arm 2 is arm 0 plus 40 µs.
        let base: Vec<u32> = (0..500).map(|i| 1_000 + (i * 7919) % 400).collect();
        let plus = |d: u32| base.iter().map(|v| v + d).collect::<Vec<_>>();
        let ttft = vec![base.clone(), plus(100), plus(40)];
        let estimates = Estimates::new(&ttft);
        let added = estimates.estimate(0.5, |q| q[1] - q[0]);
        assert_eq!(added.ms, 0.1);
        assert_eq!((added.low_ms, added.high_ms), (0.1, 0.1));
        let contrast = estimates.estimate(0.5, |q| (q[2] - q[0]) - (q[1] - q[0]));
        assert_eq!(contrast.ms, -0.06);
        assert_eq!(verdict(&contrast), "less");
    }

    #[test]
    fn noise_without_a_shift_leaves_no_difference_resolved() {
        // Two arms drawn from the same spread, independently per round.
        let mut rng = fastrand::Rng::with_seed(7);
        let mut draw = || (0..2_000).map(|_| 900 + rng.u32(..300)).collect::<Vec<_>>();
        let ttft = vec![draw(), draw()];
        let estimates = Estimates::new(&ttft);
        let difference = estimates.estimate(0.5, |q| q[1] - q[0]);
        assert!(difference.low_ms < 0.0 && difference.high_ms > 0.0);
        assert_eq!(verdict(&difference), "no difference resolved");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_round_sends_one_request_to_each_target() {
        let mock = crate::mock::MockUpstream::start(crate::mock::MockConfig::default())
            .await
            .expect("mock");
        let target = |path: &str, api| Target {
            url: format!("{}/{path}", mock.base_url()),
            api_key: None,
            timeout: Duration::from_secs(10),
            api,
        };
        let config = InterleaveConfig {
            label: "mock".to_owned(),
            arms: vec![
                Arm {
                    label: "chat".to_owned(),
                    target: target("chat/completions", probe::Api::Openai),
                    h2c: false,
                },
                // Over cleartext HTTP/2: the mock serves both.
                Arm {
                    label: "messages".to_owned(),
                    target: target("messages", probe::Api::Anthropic),
                    h2c: true,
                },
            ],
            additions: vec![
                Addition {
                    subject: "messages".to_owned(),
                    baseline: "chat".to_owned(),
                },
                Addition {
                    subject: "chat".to_owned(),
                    baseline: "chat".to_owned(),
                },
            ],
            duration: Duration::from_millis(400),
            warmup: Duration::from_millis(100),
            workload: WorkloadSpec::default(),
            phase_jitter: Duration::from_micros(200),
        };
        let report = run(config).await.expect("run");
        mock.shutdown();
        assert!(report.hard_failures().is_empty(), "{report:#?}");
        // Each arm spoke its own HTTP version: chat HTTP/1.1, messages cleartext HTTP/2.
        let versions = mock.request_versions();
        let over = |version| versions.iter().filter(|v| **v == version).count();
        assert_eq!(over(axum::http::Version::HTTP_11), versions.len() / 2);
        assert_eq!(over(axum::http::Version::HTTP_2), versions.len() / 2);
        assert!(report.complete_rounds > 0);
        assert_eq!(report.incomplete_rounds, 0);
        for arm in &report.arms {
            assert_eq!(arm.counts.ok, report.complete_rounds as u64, "{arm:?}");
            assert_eq!(arm.ttft.count, report.complete_rounds as u64);
        }
        // An arm against itself adds exactly nothing, in every resample.
        let nothing = &report.additions[1];
        assert_eq!(
            (nothing.p50.ms, nothing.p50.low_ms, nothing.p50.high_ms),
            (0.0, 0.0, 0.0)
        );
        assert_eq!(report.contrasts.len(), 1);
        assert!(markdown(&report).contains("| (chat − chat) − (messages − chat) |"));
    }

    #[test]
    fn an_addition_must_name_targets() {
        let arm = |label: &str| Arm {
            label: label.to_owned(),
            target: Target {
                url: "http://127.0.0.1:1/v1/chat/completions".to_owned(),
                api_key: None,
                timeout: Duration::from_secs(1),
                api: probe::Api::Openai,
            },
            h2c: false,
        };
        let config = |additions| InterleaveConfig {
            label: "t".to_owned(),
            arms: vec![arm("direct"), arm("redial")],
            additions,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            workload: WorkloadSpec::default(),
            phase_jitter: Duration::ZERO,
        };
        let named = |s: &str, b: &str| Addition {
            subject: s.to_owned(),
            baseline: b.to_owned(),
        };
        let positions = check(&config(vec![named("redial", "direct")])).expect("valid");
        assert_eq!(positions, vec![(1, 0)]);
        let error = check(&config(vec![named("redial", "mock")])).expect_err("unknown label");
        assert!(error.to_string().contains("\"mock\" is not a target"));
    }
}
