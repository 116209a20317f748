//! The performance targets and their evaluation against a suite's runs.
//!
//! "Added" latency is redial's percentile minus the direct-to-mock percentile of the same
//! scenario (a difference of percentiles, not a percentile of differences: requests are not
//! paired).

use serde::Serialize;

use super::scenarios::Role;
use super::{RunRecord, TargetKind};
use crate::load::{LoadMode, LoadReport};
use crate::report::load_label;

/// Added time to first token at concurrency 1, p50 (ms).
const TTFT_C1_P50_MS: f64 = 0.5;
/// Added time to first token at concurrency 1, p99 (ms).
const TTFT_C1_P99_MS: f64 = 2.0;
/// Added time to first token under open-loop load, p99 (ms).
const TTFT_OPEN_P99_MS: f64 = 5.0;
/// Added inter-chunk gap at the target stream count, p99 (ms).
const GAP_P99_MS: f64 = 1.0;
/// Concurrent paced streams that must run without stalls.
const CLEAN_STREAMS: f64 = 1_000.0;
/// Resident memory at the target stream count (decimal megabytes).
const RSS_MB: f64 = 100.0;

/// Whether smaller or larger measurements are better.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Comparison {
    /// Met when measured ≤ threshold.
    #[serde(rename = "<=")]
    AtMost,
    /// Met when measured ≥ threshold.
    #[serde(rename = ">=")]
    AtLeast,
}

/// One target, judged for one store.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TargetResult {
    /// Stable identifier, e.g. `added_ttft_p99_c1`.
    pub id: &'static str,
    /// What is measured.
    pub description: String,
    /// The store redial ran on.
    pub store: String,
    /// Direction of the comparison.
    pub comparison: Comparison,
    /// The threshold.
    pub threshold: f64,
    /// Unit of `threshold` and `measured`.
    pub unit: &'static str,
    /// The measurement, if the runs it needs exist.
    pub measured: Option<f64>,
    /// `Some(true)` met, `Some(false)` missed, `None` not measured.
    pub met: Option<bool>,
}

impl TargetResult {
    fn judge(mut self, measured: Option<f64>) -> Self {
        self.met = measured.map(|value| match self.comparison {
            Comparison::AtMost => value <= self.threshold,
            Comparison::AtLeast => value >= self.threshold,
        });
        self.measured = measured;
        self
    }
}

/// The runs of one store next to the direct baseline.
struct Pair<'a> {
    direct: &'a LoadReport,
    redial: &'a RunRecord,
}

/// Evaluates every target for every store that has runs.
pub fn evaluate(runs: &[RunRecord], stores: &[String]) -> Vec<TargetResult> {
    stores
        .iter()
        .flat_map(|store| evaluate_store(runs, store))
        .collect()
}

fn evaluate_store(runs: &[RunRecord], store: &str) -> Vec<TargetResult> {
    let pair = |role| find_pair(runs, store, role);
    let single = pair(Role::TtftSingle);
    let open = pair(Role::TtftOpen);
    let paced = pair(Role::PacedTarget);
    let target = |id, description: String, comparison, threshold, unit| TargetResult {
        id,
        description,
        store: store.to_owned(),
        comparison,
        threshold,
        unit,
        measured: None,
        met: None,
    };
    let open_rate = open
        .as_ref()
        .map_or(String::new(), |p| load_label(&p.direct.mode));
    let paced_label = paced
        .as_ref()
        .map_or(String::new(), |p| load_label(&p.direct.mode));
    vec![
        target(
            "added_ttft_p50_c1",
            "added TTFT p50, concurrency 1".into(),
            Comparison::AtMost,
            TTFT_C1_P50_MS,
            "ms",
        )
        .judge(
            single
                .as_ref()
                .map(|p| p.redial.report.ttft.p50_ms - p.direct.ttft.p50_ms),
        ),
        target(
            "added_ttft_p99_c1",
            "added TTFT p99, concurrency 1".into(),
            Comparison::AtMost,
            TTFT_C1_P99_MS,
            "ms",
        )
        .judge(
            single
                .as_ref()
                .map(|p| p.redial.report.ttft.p99_ms - p.direct.ttft.p99_ms),
        ),
        target(
            "added_ttft_p99_open",
            format!("added TTFT p99, open loop {open_rate}"),
            Comparison::AtMost,
            TTFT_OPEN_P99_MS,
            "ms",
        )
        .judge(
            open.as_ref()
                .map(|p| p.redial.report.ttft.p99_ms - p.direct.ttft.p99_ms),
        ),
        target(
            "added_gap_p99_paced",
            format!("added inter-chunk gap p99, paced {paced_label}"),
            Comparison::AtMost,
            GAP_P99_MS,
            "ms",
        )
        .judge(
            paced
                .as_ref()
                .map(|p| p.redial.report.gap.p99_ms - p.direct.gap.p99_ms),
        ),
        target(
            "clean_paced_streams",
            "concurrent paced streams without stalls or errors, added gap p99 within target".into(),
            Comparison::AtLeast,
            CLEAN_STREAMS,
            "streams",
        )
        .judge(max_clean_concurrency(runs, store)),
        target(
            "rss_paced",
            format!("redial peak RSS during paced {paced_label}"),
            Comparison::AtMost,
            RSS_MB,
            "MB",
        )
        .judge(
            paced
                .as_ref()
                .and_then(|p| p.redial.rss_peak_bytes)
                .map(|b| b as f64 / 1e6),
        ),
    ]
}

fn find_pair<'a>(runs: &'a [RunRecord], store: &str, role: Role) -> Option<Pair<'a>> {
    let redial = runs
        .iter()
        .find(|r| r.role == role && r.store.as_deref() == Some(store))?;
    let direct = runs
        .iter()
        .find(|r| r.kind == TargetKind::Direct && r.scenario == redial.scenario)?;
    Some(Pair {
        direct: &direct.report,
        redial,
    })
}

/// The highest paced step whose redial run had no stall, no error and an added gap p99 within
/// target (`Some(0.0)` when paced steps ran but none was clean).
fn max_clean_concurrency(runs: &[RunRecord], store: &str) -> Option<f64> {
    let paced = |r: &&RunRecord| matches!(r.role, Role::PacedStep | Role::PacedTarget);
    let mut steps = runs
        .iter()
        .filter(paced)
        .filter(|r| r.store.as_deref() == Some(store))
        .peekable();
    steps.peek()?;
    let clean = steps.filter_map(|redial| {
        let direct = runs
            .iter()
            .find(|r| r.kind == TargetKind::Direct && r.scenario == redial.scenario)?;
        let report = &redial.report;
        let added_gap = report.gap.p99_ms - direct.report.gap.p99_ms;
        let clean = report.counts.stall_events == 0
            && report.counts.errors() == 0
            && report.counts.ok > 0
            && added_gap <= GAP_P99_MS;
        clean.then(|| concurrency(report))
    });
    Some(clean.fold(0.0, f64::max))
}

fn concurrency(report: &LoadReport) -> f64 {
    match report.mode {
        LoadMode::Closed { concurrency } => concurrency as f64,
        LoadMode::Open { .. } => 0.0,
    }
}
