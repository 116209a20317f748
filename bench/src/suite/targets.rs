//! The performance targets and their evaluation against a suite's runs.
//!
//! "Added" latency is redial's percentile minus the direct-to-mock percentile of the same
//! scenario and upstream API (a difference of percentiles, not a percentile of differences:
//! requests are not paired). A `<store>+anthropic` run is compared with the direct run against
//! the mock's Messages endpoint.

use serde::Serialize;

use super::scenarios::Role;
use super::{RunRecord, TargetKind};
use crate::load::{LoadMode, LoadReport};

/// Added inter-chunk gap allowed at a clean paced step, p99 (ms).
const GAP_P99_MS: f64 = 1.0;

/// A target: what is measured, in which scenario, and the threshold.
struct Spec {
    id: &'static str,
    what: &'static str,
    /// The scenario the measure comes from, named in the description.
    role: Role,
    comparison: Comparison,
    threshold: f64,
    unit: &'static str,
    measure: fn(&Measures<'_>) -> Option<f64>,
}

/// The targets of the issue, in the order they are reported.
const SPECS: [Spec; 6] = [
    Spec {
        id: "added_ttft_p50_c1",
        what: "added TTFT p50",
        role: Role::TtftSingle,
        comparison: Comparison::AtMost,
        threshold: 0.5,
        unit: "ms",
        measure: |m| m.added(Role::TtftSingle, |r| r.ttft.p50_ms),
    },
    Spec {
        id: "added_ttft_p99_c1",
        what: "added TTFT p99",
        role: Role::TtftSingle,
        comparison: Comparison::AtMost,
        threshold: 2.0,
        unit: "ms",
        measure: |m| m.added(Role::TtftSingle, |r| r.ttft.p99_ms),
    },
    Spec {
        id: "added_ttft_p99_open",
        what: "added TTFT p99",
        role: Role::TtftOpen,
        comparison: Comparison::AtMost,
        threshold: 5.0,
        unit: "ms",
        measure: |m| m.added(Role::TtftOpen, |r| r.ttft.p99_ms),
    },
    Spec {
        id: "added_gap_p99_paced",
        what: "added inter-chunk gap p99",
        role: Role::PacedTarget,
        comparison: Comparison::AtMost,
        threshold: GAP_P99_MS,
        unit: "ms",
        measure: |m| m.added(Role::PacedTarget, |r| r.gap.p99_ms),
    },
    Spec {
        id: "clean_paced_streams",
        what: "most concurrent paced streams with no stall, no error and added gap p99 ≤ 1 ms",
        role: Role::PacedStep,
        comparison: Comparison::AtLeast,
        threshold: 1_000.0,
        unit: "streams",
        measure: |m| m.max_clean_concurrency(),
    },
    Spec {
        id: "rss_paced",
        what: "redial peak RSS",
        role: Role::PacedTarget,
        comparison: Comparison::AtMost,
        threshold: 100.0,
        unit: "MB",
        measure: |m| {
            let run = m.redial(Role::PacedTarget)?;
            run.rss_peak_bytes.map(|bytes| bytes as f64 / 1e6)
        },
    },
];

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

/// The runs of one store, and the direct runs they are compared with.
struct Measures<'a> {
    runs: &'a [RunRecord],
    store: &'a str,
}

impl Measures<'_> {
    /// The store's run of the scenario with `role`.
    fn redial(&self, role: Role) -> Option<&RunRecord> {
        self.runs
            .iter()
            .find(|r| r.role == role && r.store.as_deref() == Some(self.store))
    }

    /// The direct run of the same scenario and upstream API as `redial`.
    fn direct(&self, redial: &RunRecord) -> Option<&RunRecord> {
        direct_run(self.runs, redial)
    }

    /// `measure(redial) − measure(direct)` for the scenario with `role`.
    fn added(&self, role: Role, measure: fn(&LoadReport) -> f64) -> Option<f64> {
        let redial = self.redial(role)?;
        let direct = self.direct(redial)?;
        Some(measure(&redial.report) - measure(&direct.report))
    }

    /// The highest paced step whose redial run had no stall, no error and an added gap p99
    /// within [`GAP_P99_MS`] (`Some(0.0)` when paced steps ran but none was clean).
    fn max_clean_concurrency(&self) -> Option<f64> {
        let steps: Vec<&RunRecord> = self
            .runs
            .iter()
            .filter(|r| matches!(r.role, Role::PacedStep | Role::PacedTarget))
            .filter(|r| r.store.as_deref() == Some(self.store))
            .collect();
        if steps.is_empty() {
            return None;
        }
        let clean = steps.into_iter().filter_map(|redial| {
            let direct = self.direct(redial)?;
            let counts = &redial.report.counts;
            let added_gap = redial.report.gap.p99_ms - direct.report.gap.p99_ms;
            let clean = counts.stall_events == 0
                && counts.errors() == 0
                && counts.ok > 0
                && added_gap <= GAP_P99_MS;
            clean.then(|| concurrency(&redial.report))
        });
        Some(clean.fold(0.0, f64::max))
    }

    /// The scenario name(s) a target is judged in, for its description.
    fn scenario_of(&self, role: Role) -> String {
        match role {
            Role::PacedStep => "paced ramp".to_owned(),
            _ => self
                .redial(role)
                .map_or_else(|| "not run".to_owned(), |r| r.scenario.clone()),
        }
    }
}

/// The direct run `redial` is compared with: the same scenario, straight to the mock's endpoint
/// of the API redial spoke upstream.
pub(super) fn direct_run<'a>(runs: &'a [RunRecord], redial: &RunRecord) -> Option<&'a RunRecord> {
    runs.iter().find(|r| {
        r.kind == TargetKind::Direct
            && r.scenario == redial.scenario
            && r.provider == redial.provider
    })
}

/// Evaluates every target for every store that has runs.
pub fn evaluate(runs: &[RunRecord], stores: &[String]) -> Vec<TargetResult> {
    stores
        .iter()
        .flat_map(|store| {
            let measures = Measures { runs, store };
            SPECS.iter().map(move |spec| judge(spec, &measures))
        })
        .collect()
}

fn judge(spec: &Spec, measures: &Measures<'_>) -> TargetResult {
    let measured = (spec.measure)(measures);
    TargetResult {
        id: spec.id,
        description: format!("{} ({})", spec.what, measures.scenario_of(spec.role)),
        store: measures.store.to_owned(),
        comparison: spec.comparison,
        threshold: spec.threshold,
        unit: spec.unit,
        measured,
        met: measured.map(|value| match spec.comparison {
            Comparison::AtMost => value <= spec.threshold,
            Comparison::AtLeast => value >= spec.threshold,
        }),
    }
}

fn concurrency(report: &LoadReport) -> f64 {
    match report.mode {
        LoadMode::Closed { concurrency } => concurrency as f64,
        LoadMode::Open { .. } => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{Counts, Percentiles, WorkloadSpec};
    use crate::suite::ProviderKind;

    fn report(mode: LoadMode, ttft_p50: f64, gap_p99: f64, stalls: u64) -> LoadReport {
        let latency = |p50: f64| Percentiles {
            count: 100,
            p50_ms: p50,
            p99_ms: p50 * 2.0,
            ..Percentiles::default()
        };
        LoadReport {
            label: String::new(),
            mode,
            duration_secs: 1.0,
            warmup_secs: 0.0,
            workload: WorkloadSpec::default(),
            pacing_ms: None,
            stall_threshold_ms: None,
            counts: Counts {
                sent: 100,
                ok: 100,
                stall_events: stalls,
                ..Counts::default()
            },
            throughput_rps: 100.0,
            max_in_flight: 1,
            ttft: latency(ttft_p50),
            done: latency(ttft_p50),
            gap: Percentiles {
                count: 100,
                p99_ms: gap_p99,
                ..Percentiles::default()
            },
            gateway: Percentiles::default(),
            memory_cached: Percentiles::default(),
        }
    }

    fn run(scenario: &str, role: Role, store: Option<&str>, report: LoadReport) -> RunRecord {
        RunRecord {
            scenario: scenario.to_owned(),
            role,
            kind: if store.is_some() {
                TargetKind::Redial
            } else {
                TargetKind::Direct
            },
            provider: ProviderKind::Openai,
            store: store.map(str::to_owned),
            rss_peak_bytes: store.map(|_| 80_000_000),
            cpu: crate::suite::CpuUse::default(),
            report,
        }
    }

    #[test]
    fn targets_compare_each_store_with_the_direct_run_of_the_same_scenario() {
        let c = |concurrency| LoadMode::Closed { concurrency };
        let runs = vec![
            run("ttft-c1", Role::TtftSingle, None, report(c(1), 0.2, 0.0, 0)),
            run(
                "paced-c500",
                Role::PacedStep,
                None,
                report(c(500), 1.0, 21.0, 0),
            ),
            run(
                "paced-c1000",
                Role::PacedTarget,
                None,
                report(c(1000), 1.0, 21.0, 0),
            ),
            run(
                "ttft-c1",
                Role::TtftSingle,
                Some("pg"),
                report(c(1), 0.6, 0.0, 0),
            ),
            run(
                "paced-c500",
                Role::PacedStep,
                Some("pg"),
                report(c(500), 1.0, 21.5, 0),
            ),
            run(
                "paced-c1000",
                Role::PacedTarget,
                Some("pg"),
                report(c(1000), 1.0, 21.8, 3),
            ),
        ];

        let targets = evaluate(&runs, &["pg".to_owned()]);
        let get = |id: &str| targets.iter().find(|t| t.id == id).expect(id);

        let p50 = get("added_ttft_p50_c1");
        assert!((p50.measured.expect("measured") - 0.4).abs() < 1e-9);
        assert_eq!(p50.met, Some(true));
        assert_eq!(p50.description, "added TTFT p50 (ttft-c1)");
        assert_eq!(get("added_ttft_p99_c1").met, Some(true));
        assert_eq!(
            (
                get("added_ttft_p99_open").measured,
                get("added_ttft_p99_open").met
            ),
            (None, None)
        );
        assert_eq!(get("added_gap_p99_paced").met, Some(true));
        let clean = get("clean_paced_streams");
        assert_eq!((clean.measured, clean.met), (Some(500.0), Some(false)));
        assert_eq!(get("rss_paced").measured, Some(80.0));
        assert_eq!(get("rss_paced").met, Some(true));
    }

    #[test]
    fn an_anthropic_run_is_compared_with_the_direct_run_against_the_messages_endpoint() {
        let c1 = LoadMode::Closed { concurrency: 1 };
        let anthropic = |mut run: RunRecord| {
            run.provider = ProviderKind::Anthropic;
            run
        };
        let direct = report(c1.clone(), 0.2, 0.0, 0);
        let runs = vec![
            run("ttft-c1", Role::TtftSingle, None, direct),
            anthropic(run(
                "ttft-c1",
                Role::TtftSingle,
                None,
                report(c1.clone(), 0.5, 0.0, 0),
            )),
            run(
                "ttft-c1",
                Role::TtftSingle,
                Some("pg"),
                report(c1.clone(), 0.6, 0.0, 0),
            ),
            anthropic(run(
                "ttft-c1",
                Role::TtftSingle,
                Some("pg+anthropic"),
                report(c1, 0.9, 0.0, 0),
            )),
        ];
        let stores = ["pg".to_owned(), "pg+anthropic".to_owned()];
        let targets = evaluate(&runs, &stores);
        let added = |store: &str| {
            targets
                .iter()
                .find(|t| t.id == "added_ttft_p50_c1" && t.store == store)
                .and_then(|t| t.measured)
                .expect(store)
        };
        assert!((added("pg") - 0.4).abs() < 1e-9, "{targets:?}");
        assert!((added("pg+anthropic") - 0.4).abs() < 1e-9, "{targets:?}");
        // Without its own baseline an Anthropic run is not measured against OpenAI's.
        let without: Vec<RunRecord> = runs
            .into_iter()
            .filter(|r| !(r.kind == TargetKind::Direct && r.provider == ProviderKind::Anthropic))
            .collect();
        let targets = evaluate(&without, &stores);
        let unmeasured = targets
            .iter()
            .find(|t| t.id == "added_ttft_p50_c1" && t.store == "pg+anthropic")
            .expect("judged");
        assert_eq!(unmeasured.measured, None);
    }
}
