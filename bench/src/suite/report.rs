//! The suite's markdown report: targets, added latency per store, every run, redial processes.

use std::fmt::Write as _;

use super::targets::{Comparison, direct_run};
use super::{RunRecord, SuiteResults, TargetKind, TargetResult};
use crate::report::{Row, dash, megabytes, runs_table};

/// The whole report as markdown.
pub fn markdown(results: &SuiteResults) -> String {
    let mut doc = String::new();
    let _ = writeln!(doc, "# redial benchmark: {} suite\n", results.suite);
    doc.push_str(&machine_line(results));
    if results.suite == "smoke" {
        doc.push_str(
            "\n> Smoke run: scenarios are shrunk to seconds and low counts; target verdicts \
             below are not meaningful.\n",
        );
    }
    doc.push_str("\n## Targets\n\n");
    doc.push_str(&targets_table(&results.targets));
    doc.push_str(
        "\n## Added by redial (redial percentile − direct percentile of the same upstream API)\n\n",
    );
    doc.push_str(&added_table(&results.runs));
    if !results.provider_comparisons.is_empty() {
        doc.push_str(
            "\n## The two upstream APIs interleaved (concurrency 1, one request to each target in \
             turn)\n\n",
        );
        for comparison in &results.provider_comparisons {
            doc.push_str(&crate::load::interleave::markdown(&comparison.report));
            doc.push('\n');
        }
    }
    doc.push_str("\n## All runs\n\n");
    doc.push_str(&all_runs(&results.runs));
    doc.push_str("\n## redial processes\n\n");
    doc.push_str(&processes_table(results));
    if !results.hard_failures.is_empty() {
        doc.push_str("\n## Hard failures\n\n");
        for failure in &results.hard_failures {
            // Continuation lines (e.g. a log tail) stay inside the list item.
            let _ = writeln!(doc, "- {}", failure.replace('\n', "\n  "));
        }
    }
    doc
}

fn machine_line(results: &SuiteResults) -> String {
    let machine = &results.machine;
    let memory = machine.memory_bytes.map_or_else(dash, |b| {
        format!("{:.1} GiB", b as f64 / f64::from(1 << 30))
    });
    format!(
        "Machine: {} CPUs ({}), {memory} RAM, kernel {}, open-file limit {}.\n",
        machine.cpus,
        machine.cpu_model.as_deref().unwrap_or("unknown CPU"),
        machine.kernel.as_deref().unwrap_or("unknown"),
        machine
            .open_files_limit
            .map_or_else(dash, |n| n.to_string()),
    )
}

fn targets_table(targets: &[TargetResult]) -> String {
    if targets.is_empty() {
        return "No redial runs, so no targets were judged.\n".to_owned();
    }
    let mut table =
        String::from("| target | store | threshold | measured | result |\n|---|---|--:|--:|---|\n");
    for target in targets {
        let sign = match target.comparison {
            Comparison::AtMost => "≤",
            Comparison::AtLeast => "≥",
        };
        let measured = target
            .measured
            .map_or_else(dash, |v| format!("{v:.3} {}", target.unit));
        let verdict = match target.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "not measured",
        };
        let _ = writeln!(
            table,
            "| {} | {} | {sign} {} {} | {measured} | {verdict} |",
            target.description, target.store, target.threshold, target.unit,
        );
    }
    table
}

fn added_table(runs: &[RunRecord]) -> String {
    let mut table = String::from(
        "| scenario | store | TTFT p50 | TTFT p99 | gap p99 | stalls | RSS peak MB | mem+prompt p50 | mem+prompt p99 | cached mem p50 | cache hits |\n\
         |---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for redial in runs.iter().filter(|r| r.kind == TargetKind::Redial) {
        let Some(direct) = direct_run(runs, redial) else {
            continue;
        };
        let (r, d) = (&redial.report, &direct.report);
        let delta = |has: bool, a: f64, b: f64| {
            if has {
                format!("{:+.3}", a - b)
            } else {
                dash()
            }
        };
        let has_ttft = r.ttft.count > 0 && d.ttft.count > 0;
        let has_gap = r.gap.count > 0 && d.gap.count > 0;
        let gateway = |q: f64| {
            if r.gateway.count > 0 {
                format!("{q:.3}")
            } else {
                dash()
            }
        };
        let cached = &r.memory_cached;
        let (cached_p50, hits) = if cached.count > 0 {
            let share = cached.count as f64 * 100.0 / r.counts.ok.max(1) as f64;
            (format!("{:.3}", cached.p50_ms), format!("{share:.0} %"))
        } else {
            (dash(), dash())
        };
        let _ = writeln!(
            table,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {cached_p50} | {hits} |",
            redial.scenario,
            redial.store.as_deref().unwrap_or_default(),
            delta(has_ttft, r.ttft.p50_ms, d.ttft.p50_ms),
            delta(has_ttft, r.ttft.p99_ms, d.ttft.p99_ms),
            delta(has_gap, r.gap.p99_ms, d.gap.p99_ms),
            r.counts.stall_events,
            redial.rss_peak_bytes.map_or_else(dash, megabytes),
            gateway(r.gateway.p50_ms),
            gateway(r.gateway.p99_ms),
        );
    }
    table
}

fn all_runs(runs: &[RunRecord]) -> String {
    let targets: Vec<String> = runs.iter().map(RunRecord::target_name).collect();
    let rows: Vec<Row<'_>> = runs
        .iter()
        .zip(&targets)
        .map(|(run, target)| Row {
            target,
            report: &run.report,
            rss_peak_bytes: run.rss_peak_bytes,
            server_cpu_cores: run.cpu.redial_cores,
            bench_cpu_cores: run.cpu.bench_cores,
        })
        .collect();
    runs_table(&rows)
}

fn processes_table(results: &SuiteResults) -> String {
    if results.redial.is_empty() {
        return "No redial process ran the scenarios.\n".to_owned();
    }
    let mut table = String::from(
        "| store | startup ms | RSS after MB | peak RSS (VmHWM) MB | exit |\n|---|--:|--:|--:|---|\n",
    );
    for process in &results.redial {
        let memory = process.memory_after;
        let _ = writeln!(
            table,
            "| {} | {} | {} | {} | {} |",
            process.store,
            process.startup_ms,
            memory.map_or_else(dash, |m| megabytes(m.rss_bytes)),
            memory.map_or_else(dash, |m| megabytes(m.peak_rss_bytes)),
            process.exit,
        );
    }
    table
}
