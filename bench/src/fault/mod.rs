//! The fault benchmark: how redial rides out a Postgres outage under load.
//!
//! For each outage length, on a fresh Postgres database: starts redial with its database URL
//! pointing at a cuttable TCP [`Proxy`](crate::proxy::Proxy) and a journal directory of its own,
//! runs paced Vapi-shaped calls (see [`callers`]), warms up, cuts the proxy for the outage,
//! restores it, keeps the load running until `GET /readyz` answers 200 with
//! `journal_backlog: 0`, stops the load and counts from the database what is stored against
//! what the callers were answered (see [`tally`]). Writes `results.json` and `results.md`.

pub mod callers;
pub mod report;
pub mod tally;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::load::Percentiles;
use crate::mock::{MockConfig, MockUpstream};
use crate::proxy::{Proxy, try_postgres_addr};
use crate::suite::{Machine, PreparedStore, RedialProcess, RedialSettings, StoreKind};
pub use callers::{LoadShape, Phase};
pub use report::markdown;
pub use tally::Tally;

/// Default outage lengths, seconds.
pub const DEFAULT_OUTAGES: [u64; 5] = [3, 13, 20, 36, 60];
/// How often `/readyz` and `/metrics` are polled.
const POLL: Duration = Duration::from_millis(100);
/// Recovery may take this long plus the outage's own length before the run gives up.
const RECOVERY_GRACE: Duration = Duration::from_secs(60);
/// After the load stops, how long to wait for the last writes to land.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);

/// How the fault benchmark runs.
#[derive(Clone, Debug)]
pub struct FaultOptions {
    /// The redial binary.
    pub redial_bin: PathBuf,
    /// Postgres server to create each run's database on.
    pub postgres_url: String,
    /// Directory for `results.json`, `results.md`, configs, journals and logs.
    pub out: PathBuf,
    /// Outage lengths, one run each.
    pub outages: Vec<Duration>,
    /// Load before the cut (the first fifth, at most 2 s, is not part of the baseline).
    pub warmup: Duration,
    /// The load.
    pub shape: LoadShape,
}

impl FaultOptions {
    /// The standard shape: 20 callers, one turn each every 400 ms (50 turns/s), 6-turn calls.
    pub fn standard_shape() -> LoadShape {
        LoadShape {
            callers: 20,
            turn_interval: Duration::from_millis(400),
            turns_per_call: 6,
        }
    }
}

/// One outage's figures.
#[derive(Clone, Debug, Serialize)]
pub struct OutageRun {
    /// Outage length, seconds.
    pub outage_secs: f64,
    /// Turns that failed (error, bad status, wrong or incomplete reply).
    pub turns_failed: u64,
    /// The first failures, verbatim.
    pub failures: Vec<String>,
    /// Stored versus answered.
    pub tally: Tally,
    /// Time to first token while the database was up (after the first part of the warm-up).
    pub ttft_normal: Percentiles,
    /// Time to first token while the proxy was cut.
    pub ttft_outage: Percentiles,
    /// Time to first token from the restore until the backlog was replayed.
    pub ttft_recovery: Percentiles,
    /// `/readyz` status in the middle of the outage (503 expected).
    pub readyz_during_outage: Option<u16>,
    /// From the restore to `/readyz` 200 with `journal_backlog` 0, milliseconds; `None` when
    /// that did not happen within the cap.
    pub recovered_ms: Option<u64>,
    /// Highest `redial_journal_backlog` seen on `/metrics`.
    pub peak_journal_backlog: Option<u64>,
    /// Records the journal gave up on (lines of its `rejected.log`). Nothing in this workload
    /// should be rejected (a hard failure); such a record is lost unless a later write carried
    /// it again (a call's later turns carry its history).
    pub journal_rejected: u64,
    /// The first rejection's reason, if any.
    pub first_rejection: Option<String>,
    /// redial's log file.
    pub log: String,
    /// How redial exited after SIGTERM.
    pub exit: String,
}

/// Everything a fault benchmark produced; serialized as `results.json`.
#[derive(Clone, Debug, Serialize)]
pub struct FaultResults {
    /// The redial binary.
    pub binary: String,
    /// The machine.
    pub machine: Machine,
    /// Concurrent callers.
    pub callers: usize,
    /// Offered turns per second.
    pub turns_per_sec: f64,
    /// Warm-up before each cut, seconds.
    pub warmup_secs: f64,
    /// One per outage length.
    pub runs: Vec<OutageRun>,
    /// Lost or duplicated rows, failed turns, no recovery, runs that could not be set up.
    pub hard_failures: Vec<String>,
}

/// Runs every outage, writes `results.json` and `results.md` into `options.out`, and returns
/// the results. A run that cannot be set up is a hard failure; the other runs still happen.
pub async fn run(options: &FaultOptions) -> anyhow::Result<FaultResults> {
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("creating {}", options.out.display()))?;
    let mock = MockUpstream::start_isolated(([127, 0, 0, 1], 0).into(), MockConfig::default())?;
    mock.set_recording(false);
    let shape = &options.shape;
    let mut results = FaultResults {
        binary: options.redial_bin.display().to_string(),
        machine: Machine::detect(),
        callers: shape.callers,
        turns_per_sec: shape.callers as f64 / shape.turn_interval.as_secs_f64(),
        warmup_secs: options.warmup.as_secs_f64(),
        runs: Vec::new(),
        hard_failures: Vec::new(),
    };
    for &outage in &options.outages {
        eprintln!("== {} s outage", outage.as_secs_f64());
        match run_one(options, &mock, outage).await {
            Ok(run) => {
                results.hard_failures.extend(problems(&run));
                eprintln!("{}", report::table(std::slice::from_ref(&run)));
                results.runs.push(run);
            }
            Err(error) => {
                eprintln!("error: {} s outage: {error:#}", outage.as_secs_f64());
                let failure = format!("{} s outage: {error:#}", outage.as_secs_f64());
                results.hard_failures.push(failure);
            }
        }
        write_results(options, &results)?;
    }
    mock.shutdown();
    Ok(results)
}

/// What is wrong with a run: anything lost, duplicated or failed, or no recovery.
pub fn problems(run: &OutageRun) -> Vec<String> {
    let t = &run.tally;
    let name = format!("{} s outage", run.outage_secs);
    let counted = [
        ("turns failed", run.turns_failed),
        ("turns lost", t.turns_lost),
        ("answers lost", t.answers_lost),
        ("tool calls lost", t.tool_calls_lost),
        ("audit entries lost", t.audit_entries_lost),
        ("calls missing", t.calls_missing),
        ("duplicate rows", t.duplicates),
        ("calls stored out of order", t.calls_out_of_order),
        ("journal records rejected", run.journal_rejected),
    ];
    let mut problems: Vec<String> = counted
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(what, n)| format!("{name}: {n} {what}"))
        .collect();
    if run.recovered_ms.is_none() {
        problems.push(format!(
            "{name}: the journal was not replayed within the cap"
        ));
    }
    if t.turns_answered == 0 {
        problems.push(format!("{name}: no turn was answered"));
    }
    problems
}

/// One outage on a fresh database; the database is dropped afterwards, whatever happened.
async fn run_one(
    options: &FaultOptions,
    mock: &MockUpstream,
    outage: Duration,
) -> anyhow::Result<OutageRun> {
    let prepared = PreparedStore::create(StoreKind::Postgres, &options.postgres_url, &options.out)
        .await
        .context("creating the database")?;
    let outcome = run_on(options, mock, outage, prepared.url()).await;
    let cleanup = prepared.cleanup().await;
    let run = outcome?;
    cleanup.context("dropping the database")?;
    Ok(run)
}

async fn run_on(
    options: &FaultOptions,
    mock: &MockUpstream,
    outage: Duration,
    database_url: &str,
) -> anyhow::Result<OutageRun> {
    let proxy = Proxy::try_start(try_postgres_addr(database_url)?).await?;
    let name = format!("fault-{}s", outage.as_millis() as f64 / 1_000.0);
    let settings = RedialSettings {
        binary: options.redial_bin.clone(),
        database_url: proxy.try_postgres_url(database_url)?,
        upstream_base_url: mock.base_url(),
        upstream_http: None,
        workdir: options.out.clone(),
        name: name.clone(),
        extra_config: Some(format!(
            "[analysis]\nworkers = 0\n\n{}",
            callers::assistant_toml()
        )),
    };
    // A fresh journal: a previous run's leftovers would be replayed into this database.
    let journal = options.out.join(format!("journal-{name}"));
    if journal.exists() {
        std::fs::remove_dir_all(&journal)
            .with_context(|| format!("removing {}", journal.display()))?;
    }
    let client = reqwest::Client::new();
    let redial = RedialProcess::start(&settings, &client).await?;
    let log = options.out.join(format!("redial-{name}.log"));
    let measured = measure(
        options,
        mock,
        &proxy,
        &redial,
        outage,
        &client,
        database_url,
    )
    .await;
    let exit = redial.stop().await?;
    let mut run = measured?;
    run.log = log.display().to_string();
    run.exit = exit;
    (run.journal_rejected, run.first_rejection) = rejections(&journal.join("rejected.log"));
    Ok(run)
}

/// How many records the journal rejected, and the first one's reason.
fn rejections(path: &std::path::Path) -> (u64, Option<String>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let first = text.lines().next().map(|line| {
        let entry: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        entry["reason"].as_str().unwrap_or(line).to_owned()
    });
    (text.lines().count() as u64, first)
}

/// The load, the cut, the restore, the wait for recovery, and the count.
async fn measure(
    options: &FaultOptions,
    mock: &MockUpstream,
    proxy: &Proxy,
    redial: &RedialProcess,
    outage: Duration,
    client: &reqwest::Client,
    database_url: &str,
) -> anyhow::Result<OutageRun> {
    let base = redial.base_url();
    let backlog = BacklogMonitor::start(client.clone(), base);
    let tag = format!("f{}", outage.as_millis());
    let callers = callers::Callers::start(base, mock, &tag, &options.shape);
    let unmeasured = (options.warmup / 5).min(Duration::from_secs(2));
    tokio::time::sleep(unmeasured).await;
    callers.set(Phase::Normal);
    tokio::time::sleep(options.warmup.saturating_sub(unmeasured)).await;
    proxy.cut();
    callers.set(Phase::Outage);
    tokio::time::sleep(outage / 2).await;
    let readyz_during_outage = readyz(client, base).await.map(|(status, _)| status);
    tokio::time::sleep(outage - outage / 2).await;
    proxy.restore();
    callers.set(Phase::Recovery);
    let restored = Instant::now();
    let recovered = wait_recovered(client, base, RECOVERY_GRACE + outage).await;
    let recovered_ms =
        recovered.then(|| u64::try_from(restored.elapsed().as_millis()).unwrap_or(u64::MAX));
    let load = callers.finish().await;
    settle(client, base).await;
    let peak_journal_backlog = backlog.finish();
    let tally = tally::count(database_url, &load.calls).await?;
    let phase = |phase| percentiles(load.ttft.get(&phase).map_or(&[][..], Vec::as_slice));
    Ok(OutageRun {
        outage_secs: outage.as_secs_f64(),
        turns_failed: load.failed,
        failures: load.failures.clone(),
        tally,
        ttft_normal: phase(Phase::Normal),
        ttft_outage: phase(Phase::Outage),
        ttft_recovery: phase(Phase::Recovery),
        readyz_during_outage,
        recovered_ms,
        peak_journal_backlog,
        journal_rejected: 0,
        first_rejection: None,
        log: String::new(),
        exit: String::new(),
    })
}

/// `GET /readyz`: the status and the body's `journal_backlog`.
async fn readyz(client: &reqwest::Client, base: &str) -> Option<(u16, Option<u64>)> {
    let response = client
        .get(format!("{base}/readyz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    let body = response.bytes().await.unwrap_or_default();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    Some((status, body["journal_backlog"].as_u64()))
}

/// Polls `/readyz` until it answers 200 with `journal_backlog` 0; false after `cap`.
async fn wait_recovered(client: &reqwest::Client, base: &str, cap: Duration) -> bool {
    let deadline = Instant::now() + cap;
    while Instant::now() < deadline {
        if readyz(client, base).await == Some((200, Some(0))) {
            return true;
        }
        tokio::time::sleep(POLL).await;
    }
    false
}

/// After the load stops: waits (up to [`SETTLE_LIMIT`]) until `/readyz` is clean and then two
/// more seconds, so writes of the last turns land before the count.
async fn settle(client: &reqwest::Client, base: &str) {
    let _ = wait_recovered(client, base, SETTLE_LIMIT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = wait_recovered(client, base, SETTLE_LIMIT).await;
}

fn percentiles(samples: &[Duration]) -> Percentiles {
    let Ok(mut histogram) = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3) else {
        return Percentiles::default();
    };
    for sample in samples {
        let micros = u64::try_from(sample.as_micros()).unwrap_or(u64::MAX);
        histogram.saturating_record(micros.max(1));
    }
    Percentiles::of(&histogram)
}

/// Samples `redial_journal_backlog` from `/metrics` and keeps the highest value.
struct BacklogMonitor {
    peak: Arc<AtomicU64>,
    seen: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl BacklogMonitor {
    fn start(client: reqwest::Client, base: &str) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(AtomicBool::new(false));
        let url = format!("{base}/metrics");
        let (p, s) = (Arc::clone(&peak), Arc::clone(&seen));
        let task = tokio::spawn(async move {
            loop {
                if let Some(backlog) = scrape_backlog(&client, &url).await {
                    p.fetch_max(backlog, Ordering::Relaxed);
                    s.store(true, Ordering::Relaxed);
                }
                tokio::time::sleep(POLL).await;
            }
        });
        Self { peak, seen, task }
    }

    fn finish(self) -> Option<u64> {
        self.task.abort();
        self.seen
            .load(Ordering::Relaxed)
            .then(|| self.peak.load(Ordering::Relaxed))
    }
}

async fn scrape_backlog(client: &reqwest::Client, url: &str) -> Option<u64> {
    let response = client
        .get(url)
        .bearer_auth(crate::suite::ADMIN_KEY)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let text = response.text().await.ok()?;
    backlog_gauge(&text)
}

/// The value of `redial_journal_backlog` in Prometheus text.
pub fn backlog_gauge(metrics: &str) -> Option<u64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix("redial_journal_backlog")?;
        let value = value.strip_prefix(' ').or_else(|| {
            let labelled = value.strip_prefix('{')?;
            labelled.split_once("} ").map(|(_, v)| v)
        })?;
        value.trim().parse::<f64>().ok().map(|v| v.max(0.0) as u64)
    })
}

fn write_results(options: &FaultOptions, results: &FaultResults) -> anyhow::Result<()> {
    let json_path = options.out.join("results.json");
    let json = serde_json::to_string_pretty(results).context("serializing results")?;
    std::fs::write(&json_path, json).with_context(|| format!("writing {}", json_path.display()))?;
    let md_path = options.out.join("results.md");
    std::fs::write(&md_path, markdown(results))
        .with_context(|| format!("writing {}", md_path.display()))
}
