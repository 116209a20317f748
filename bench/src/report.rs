//! Markdown rendering of load reports. Times are milliseconds with microsecond precision.

use std::fmt::Write as _;

use crate::load::{LoadMode, LoadReport, Percentiles};

/// One row of a runs table.
#[derive(Clone, Copy, Debug)]
pub struct Row<'a> {
    /// Where the requests went, e.g. `direct` or `redial/sqlite`.
    pub target: &'a str,
    /// The run.
    pub report: &'a LoadReport,
    /// Peak RSS of the server under test during the run, bytes.
    pub rss_peak_bytes: Option<u64>,
    /// CPU of the server under test during the run, cores.
    pub server_cpu_cores: Option<f64>,
    /// CPU of the benchmark process (load generator and mock) during the run, cores.
    pub bench_cpu_cores: Option<f64>,
}

const HEADER: &str = "| run | target | load | ok | errors | stalls | req/s | TTFT p50 | p90 | p99 \
    | p99.9 | max | [DONE] p50 | p99 | gap p50 | gap p99 | gap max | RSS peak MB | CPU redial | CPU bench |\n\
    |---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n";

/// A markdown table with one row per run.
pub fn runs_table(rows: &[Row<'_>]) -> String {
    let mut table = String::from(HEADER);
    for row in rows {
        let report = row.report;
        let counts = &report.counts;
        let cells = [
            report.label.clone(),
            row.target.to_owned(),
            load_label(&report.mode),
            counts.ok.to_string(),
            counts.errors().to_string(),
            counts.stall_events.to_string(),
            format!("{:.1}", report.throughput_rps),
            ms(&report.ttft, report.ttft.p50_ms),
            ms(&report.ttft, report.ttft.p90_ms),
            ms(&report.ttft, report.ttft.p99_ms),
            ms(&report.ttft, report.ttft.p999_ms),
            ms(&report.ttft, report.ttft.max_ms),
            ms(&report.done, report.done.p50_ms),
            ms(&report.done, report.done.p99_ms),
            ms(&report.gap, report.gap.p50_ms),
            ms(&report.gap, report.gap.p99_ms),
            ms(&report.gap, report.gap.max_ms),
            row.rss_peak_bytes.map_or_else(dash, megabytes),
            row.server_cpu_cores.map_or_else(dash, cores),
            row.bench_cpu_cores.map_or_else(dash, cores),
        ];
        // Writing to a String cannot fail.
        let _ = writeln!(table, "| {} |", cells.join(" | "));
    }
    table
}

/// `c32` for closed loop, `500 req/s` for open loop.
pub fn load_label(mode: &LoadMode) -> String {
    match mode {
        LoadMode::Closed { concurrency } => format!("c{concurrency}"),
        LoadMode::Open { rate, .. } => format!("{rate} req/s"),
    }
}

/// A value in ms with three decimals, or a dash when the measure has no samples.
fn ms(percentiles: &Percentiles, value: f64) -> String {
    if percentiles.count == 0 {
        dash()
    } else {
        format!("{value:.3}")
    }
}

/// Bytes as decimal megabytes with one decimal.
pub fn megabytes(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1e6)
}

/// CPU use in cores, two decimals.
pub fn cores(cores: f64) -> String {
    format!("{cores:.2}")
}

/// The placeholder for a missing value.
pub fn dash() -> String {
    "–".to_owned()
}
