//! The simulator's findings per call and in total, as JSON and as markdown tables.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::scenario::PlatformKind;

/// What one call showed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CallReport {
    /// The scenario.
    pub scenario: String,
    /// The platform it was played as.
    pub platform: Option<PlatformKind>,
    /// Repetition number, from 1.
    pub repetition: u32,
    /// The call's name in the scenario.
    pub call: String,
    /// The platform's call id.
    pub call_id: String,
    /// Request-response exchanges played (a platform tool's follow-up counts as one).
    pub turns: u32,
    /// Exchanges whose stream ended with nothing spoken (simulated hang-ups and kills excluded).
    pub silent_turns: u32,
    /// Confirmed answers offered again as the next question (counted once per turn and field).
    pub reasked_answers: u32,
    /// Greetings after the first (a Retell reconnect greeted again).
    pub repeated_greetings: u32,
    /// 1 when the call was expected to resume an earlier one and was started over.
    pub missed_resumptions: u32,
    /// 1 when a call that should stand alone (e.g. a concurrent call) was treated as a resumption.
    pub wrong_resumptions: u32,
    /// Scripted upstream replies redial never asked for (drained after the turn).
    pub unused_replies: u32,
    /// Time to the first spoken token minus the upstream's own ([`super::scenario::TurnSpec::own_ttft`]),
    /// per turn where it is known, ms (0 when a filler was heard before the upstream spoke).
    pub ttft_overhead_ms: Vec<f64>,
    /// What went wrong, in words.
    pub problems: Vec<String>,
}

impl CallReport {
    /// Whether the call shows any of the counted faults.
    pub fn failed(&self) -> bool {
        self.silent_turns
            + self.reasked_answers
            + self.repeated_greetings
            + self.missed_resumptions
            + self.wrong_resumptions
            > 0
            || self.problems.iter().any(|p| p.starts_with("error"))
    }
}

/// Totals over calls.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Totals {
    /// Calls played.
    pub calls: u32,
    /// Calls with a counted fault or an error.
    pub failed_calls: u32,
    /// See [`CallReport`].
    pub turns: u32,
    /// See [`CallReport`].
    pub silent_turns: u32,
    /// See [`CallReport`].
    pub reasked_answers: u32,
    /// See [`CallReport`].
    pub repeated_greetings: u32,
    /// See [`CallReport`].
    pub missed_resumptions: u32,
    /// See [`CallReport`].
    pub wrong_resumptions: u32,
    /// See [`CallReport`].
    pub unused_replies: u32,
    /// Median of every turn's time-to-first-token overhead, ms.
    pub ttft_overhead_p50_ms: Option<f64>,
    /// 95th percentile of the same, ms.
    pub ttft_overhead_p95_ms: Option<f64>,
    /// Largest of the same, ms.
    pub ttft_overhead_max_ms: Option<f64>,
}

impl Totals {
    /// Sums `calls`.
    pub fn of<'a>(calls: impl IntoIterator<Item = &'a CallReport>) -> Self {
        let mut totals = Self::default();
        let mut overheads = Vec::new();
        for call in calls {
            totals.calls += 1;
            totals.failed_calls += u32::from(call.failed());
            totals.turns += call.turns;
            totals.silent_turns += call.silent_turns;
            totals.reasked_answers += call.reasked_answers;
            totals.repeated_greetings += call.repeated_greetings;
            totals.missed_resumptions += call.missed_resumptions;
            totals.wrong_resumptions += call.wrong_resumptions;
            totals.unused_replies += call.unused_replies;
            overheads.extend(call.ttft_overhead_ms.iter().copied());
        }
        overheads.sort_by(f64::total_cmp);
        totals.ttft_overhead_p50_ms = percentile(&overheads, 0.50);
        totals.ttft_overhead_p95_ms = percentile(&overheads, 0.95);
        totals.ttft_overhead_max_ms = overheads.last().copied();
        totals
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// The whole run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Every call, in the order played.
    pub calls: Vec<CallReport>,
    /// Over all calls.
    pub totals: Totals,
}

impl Report {
    /// A report of `calls` with their totals.
    pub fn new(calls: Vec<CallReport>) -> Self {
        let totals = Totals::of(&calls);
        Self { calls, totals }
    }

    /// JSON, pretty-printed.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// Totals, one row per scenario and platform, then every call with a problem.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let t = &self.totals;
        let _ = writeln!(
            out,
            "| calls | failed calls | turns | silent turns | re-asked answers | repeated greetings | missed resumptions | wrong resumptions | unused replies | TTFT overhead p50 / p95 / max (ms) |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n\
             | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            t.calls,
            t.failed_calls,
            t.turns,
            t.silent_turns,
            t.reasked_answers,
            t.repeated_greetings,
            t.missed_resumptions,
            t.wrong_resumptions,
            t.unused_replies,
            overhead(t),
        );
        let mut groups: BTreeMap<(String, &str), Vec<&CallReport>> = BTreeMap::new();
        for call in &self.calls {
            let platform = call.platform.map_or("?", PlatformKind::as_str);
            groups
                .entry((call.scenario.clone(), platform))
                .or_default()
                .push(call);
        }
        out.push_str(
            "| scenario | platform | calls | failed | turns | silent | re-asked | greetings+ | missed resume | wrong resume | TTFT overhead p50 / p95 / max (ms) |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
        );
        for ((scenario, platform), calls) in &groups {
            let g = Totals::of(calls.iter().copied());
            let _ = writeln!(
                out,
                "| {scenario} | {platform} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                g.calls,
                g.failed_calls,
                g.turns,
                g.silent_turns,
                g.reasked_answers,
                g.repeated_greetings,
                g.missed_resumptions,
                g.wrong_resumptions,
                overhead(&g),
            );
        }
        let failed: Vec<&CallReport> = self.calls.iter().filter(|c| c.failed()).collect();
        if !failed.is_empty() {
            out.push_str("\nCalls with problems:\n\n");
            for call in failed {
                let platform = call.platform.map_or("?", PlatformKind::as_str);
                let _ = writeln!(
                    out,
                    "- {} / {platform} #{} call {}: {}",
                    call.scenario,
                    call.repetition,
                    call.call,
                    call.problems.join("; ")
                );
            }
        }
        out
    }
}

fn overhead(t: &Totals) -> String {
    match (
        t.ttft_overhead_p50_ms,
        t.ttft_overhead_p95_ms,
        t.ttft_overhead_max_ms,
    ) {
        (Some(p50), Some(p95), Some(max)) => format!("{p50:.1} / {p95:.1} / {max:.1}"),
        _ => "–".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_calls_and_take_percentiles() {
        let a = CallReport {
            scenario: "s".into(),
            platform: Some(PlatformKind::Vapi),
            turns: 3,
            silent_turns: 1,
            ttft_overhead_ms: vec![1.0, 2.0],
            problems: vec!["turn 1 was silent".into()],
            ..CallReport::default()
        };
        let b = CallReport {
            scenario: "s".into(),
            platform: Some(PlatformKind::Retell),
            turns: 2,
            reasked_answers: 2,
            ttft_overhead_ms: vec![3.0, 10.0],
            ..CallReport::default()
        };
        let c = CallReport {
            turns: 1,
            ..CallReport::default()
        };
        let report = Report::new(vec![a, b, c]);
        let t = &report.totals;
        assert_eq!((t.calls, t.failed_calls, t.turns), (3, 2, 6));
        assert_eq!((t.silent_turns, t.reasked_answers), (1, 2));
        assert_eq!(t.ttft_overhead_p50_ms, Some(2.0));
        assert_eq!(t.ttft_overhead_max_ms, Some(10.0));
        let markdown = report.to_markdown();
        assert!(
            markdown.contains("| s | vapi | 1 | 1 | 3 | 1 |"),
            "{markdown}"
        );
        assert!(markdown.contains("turn 1 was silent"));
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["totals"]["reasked_answers"], 2);
    }
}
