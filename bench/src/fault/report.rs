//! Markdown rendering of the fault benchmark's results.

use std::fmt::Write as _;

use super::{FaultResults, OutageRun};
use crate::load::Percentiles;
use crate::report::dash;

const HEADER: &str = "| outage | turns answered | failed | turns lost | answers lost | duplicates \
    | TTFT p99 normal | TTFT p99 during outage | time to recover | peak journal backlog |\n\
    |--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n";

const TTFT_HEADER: &str = "| outage | normal p50 | p99 | max | outage p50 | p99 | max \
    | recovery p50 | p99 | max | /readyz during outage |\n\
    |--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n";

/// The main table: one row per outage.
pub fn table(runs: &[OutageRun]) -> String {
    let mut table = String::from(HEADER);
    for run in runs {
        let t = &run.tally;
        let cells = [
            seconds(run.outage_secs),
            t.turns_answered.to_string(),
            run.turns_failed.to_string(),
            t.turns_lost.to_string(),
            t.answers_lost.to_string(),
            t.duplicates.to_string(),
            ms(&run.ttft_normal, run.ttft_normal.p99_ms),
            ms(&run.ttft_outage, run.ttft_outage.p99_ms),
            run.recovered_ms.map_or_else(
                || "not recovered".to_owned(),
                |ms| seconds(ms as f64 / 1_000.0),
            ),
            run.peak_journal_backlog
                .map_or_else(dash, |n| n.to_string()),
        ];
        // Writing to a String cannot fail.
        let _ = writeln!(table, "| {} |", cells.join(" | "));
    }
    table
}

/// First-token times per phase, and `/readyz` during the outage.
pub fn ttft_table(runs: &[OutageRun]) -> String {
    let mut table = String::from(TTFT_HEADER);
    for run in runs {
        let mut cells = vec![seconds(run.outage_secs)];
        for p in [&run.ttft_normal, &run.ttft_outage, &run.ttft_recovery] {
            cells.extend([ms(p, p.p50_ms), ms(p, p.p99_ms), ms(p, p.max_ms)]);
        }
        cells.push(
            run.readyz_during_outage
                .map_or_else(dash, |s| s.to_string()),
        );
        let _ = writeln!(table, "| {} |", cells.join(" | "));
    }
    table
}

/// The whole report: load, both tables, the other losses, and hard failures.
pub fn markdown(results: &FaultResults) -> String {
    let mut md = format!(
        "# redial fault benchmark\n\n{} callers, {:.0} turns/s offered, {:.0} s warm-up; \
         redial `{}`; {} CPUs{}.\n\n",
        results.callers,
        results.turns_per_sec,
        results.warmup_secs,
        results.binary,
        results.machine.cpus,
        results
            .machine
            .cpu_model
            .as_deref()
            .map_or_else(String::new, |model| format!(" ({model})")),
    );
    md.push_str(&table(&results.runs));
    md.push_str("\nTime to first token (ms) per phase:\n\n");
    md.push_str(&ttft_table(&results.runs));
    md.push_str(
        "\nOther losses (tool calls, audit entries, whole calls), order, and records the journal \
         rejected (kept in its `rejected.log`, not replayed):\n\n",
    );
    for run in &results.runs {
        let t = &run.tally;
        let _ = writeln!(
            md,
            "- {}: {} tool calls lost, {} audit entries lost, {} calls missing, \
             {} calls stored out of order, {} journal records rejected{}",
            seconds(run.outage_secs),
            t.tool_calls_lost,
            t.audit_entries_lost,
            t.calls_missing,
            t.calls_out_of_order,
            run.journal_rejected,
            run.first_rejection
                .as_deref()
                .map_or_else(String::new, |reason| format!(" (first: {reason})")),
        );
    }
    md.push_str("\nHard failures: ");
    if results.hard_failures.is_empty() {
        md.push_str("none\n");
    } else {
        md.push('\n');
        for failure in &results.hard_failures {
            let _ = writeln!(md, "- {failure}");
        }
    }
    md
}

/// `3 s`, `1.25 s`.
fn seconds(secs: f64) -> String {
    if secs.fract() == 0.0 {
        format!("{secs:.0} s")
    } else {
        format!("{secs:.2} s")
    }
}

/// A latency cell: milliseconds with a decimal, or a dash without samples.
fn ms(percentiles: &Percentiles, value: f64) -> String {
    if percentiles.count == 0 {
        dash()
    } else {
        format!("{value:.1}")
    }
}
