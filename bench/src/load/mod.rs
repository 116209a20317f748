//! The load generator: streaming chat completions with Vapi-shaped bodies, closed-loop (a fixed
//! number of concurrent callers, each sending its next request when the last one finishes) or
//! open-loop (requests sent on a wall-clock schedule at a fixed rate, whatever the responses do).
//!
//! Open-loop latencies are measured from each request's *intended* send time, so a stalled
//! server or an overloaded client shows up in the percentiles instead of silently delaying the
//! schedule (no coordinated omission). Only requests started inside the measurement window
//! (after the warm-up) are recorded; the run waits for them to finish.

pub mod interleave;
mod probe;
mod stats;
mod workload;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

pub use probe::{ANTHROPIC_VERSION, Api, Failure, Outcome, Target};
pub use stats::{Counts, Percentiles};
pub use workload::{Conversation, Workload, WorkloadSpec};

use stats::Recorder;

/// Default open-loop cap on requests in flight; requests over it are counted as dropped.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 5_000;

/// How requests are issued.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LoadMode {
    /// `concurrency` senders, each sending its next request when the previous one completes.
    Closed {
        /// Number of concurrent senders (streams in flight).
        concurrency: usize,
    },
    /// `rate` requests per second on a fixed schedule, regardless of completions.
    Open {
        /// Requests per second.
        rate: f64,
        /// Requests over this many in flight are not sent and count as dropped.
        max_in_flight: usize,
    },
}

/// One load run.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Name of the run in reports.
    pub label: String,
    /// Where requests go.
    pub target: Target,
    /// Closed or open loop.
    pub mode: LoadMode,
    /// Length of the measurement window.
    pub duration: Duration,
    /// Traffic before the window, not recorded. Closed-loop senders start spread over it.
    pub warmup: Duration,
    /// The request bodies.
    pub workload: WorkloadSpec,
    /// Expected gap between content chunks. When set, a gap over `2 × pacing + 5 ms` is a stall.
    pub pacing: Option<Duration>,
}

impl LoadConfig {
    /// The gap over which a stream counts as stalled, if pacing is known.
    pub fn stall_threshold(&self) -> Option<Duration> {
        self.pacing
            .map(|pacing| pacing * 2 + Duration::from_millis(5))
    }
}

/// The result of one load run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LoadReport {
    /// Name of the run.
    pub label: String,
    /// How requests were issued.
    pub mode: LoadMode,
    /// Length of the measurement window, seconds.
    pub duration_secs: f64,
    /// Warm-up before the window, seconds.
    pub warmup_secs: f64,
    /// The traffic shape.
    pub workload: WorkloadSpec,
    /// Expected content-chunk gap, if paced.
    pub pacing_ms: Option<f64>,
    /// Gap over which a stream counts as stalled, if paced.
    pub stall_threshold_ms: Option<f64>,
    /// What happened to the requests.
    pub counts: Counts,
    /// Successful streams per second of the window.
    pub throughput_rps: f64,
    /// Most requests in flight at once.
    pub max_in_flight: u64,
    /// Time to first content token.
    pub ttft: Percentiles,
    /// Time to `[DONE]` (`message_stop` for the Messages API).
    pub done: Percentiles,
    /// Gaps between consecutive content chunks.
    pub gap: Percentiles,
    /// redial's memory read plus prompt build per request (from `Server-Timing`); empty for
    /// servers that do not send it.
    #[serde(default)]
    pub gateway: Percentiles,
    /// redial's memory read (`mem`) of the requests it served from its call cache (a call's
    /// later turns); `count` is how many were.
    #[serde(default)]
    pub memory_cached: Percentiles,
}

impl LoadReport {
    /// Problems that make the run invalid (as opposed to slow): no successful request, or any
    /// error.
    pub fn hard_failures(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.counts.ok == 0 {
            problems.push(format!("{}: no successful request", self.label));
        }
        let errors = self.counts.errors();
        if errors > 0 {
            problems.push(format!(
                "{}: {errors} failed requests ({:?})",
                self.label, self.counts
            ));
        }
        problems
    }
}

/// State shared by every sender of one run.
struct Run {
    client: reqwest::Client,
    config: LoadConfig,
    workload: Workload,
    recorder: Mutex<Recorder>,
    measure_from: Instant,
    stop_at: Instant,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

impl Run {
    /// Counts a request in flight, then sends it (see [`Run::send_counted`]).
    async fn send_one(&self, start: Instant) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.send_counted(start).await;
    }

    /// Sends the next turn of some conversation, starting the clock at `start`, and records it
    /// if it started inside the window. The caller has already counted it in flight.
    async fn send_counted(&self, start: Instant) {
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        self.max_in_flight.fetch_max(in_flight, Ordering::Relaxed);
        let conversation = self.workload.checkout();
        let body = self.workload.body(self.config.target.api, &conversation);
        let threshold = self.config.stall_threshold();
        let target = &self.config.target;
        let outcome = probe::send(&self.client, target, body, start, threshold).await;
        self.workload.checkin(conversation);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        if start >= self.measure_from {
            self.record(&outcome);
        }
    }

    fn record(&self, outcome: &Outcome) {
        self.recorder
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(outcome);
    }

    fn report(&self) -> LoadReport {
        let summary = self
            .recorder
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .summary();
        let config = &self.config;
        let duration_secs = config.duration.as_secs_f64();
        LoadReport {
            label: config.label.clone(),
            mode: config.mode.clone(),
            duration_secs,
            warmup_secs: config.warmup.as_secs_f64(),
            workload: config.workload.clone(),
            pacing_ms: config.pacing.map(as_ms),
            stall_threshold_ms: config.stall_threshold().map(as_ms),
            throughput_rps: summary.counts.ok as f64 / duration_secs.max(f64::EPSILON),
            counts: summary.counts,
            max_in_flight: self.max_in_flight.load(Ordering::Relaxed),
            ttft: summary.ttft,
            done: summary.done,
            gap: summary.gaps,
            gateway: summary.gateway,
            memory_cached: summary.cached_memory,
        }
    }
}

/// A reqwest client suited to load generation: HTTP/1.1, `TCP_NODELAY`, unbounded keep-alive
/// pool (one connection per concurrent stream).
fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(usize::MAX)
        .pool_idle_timeout(Duration::from_secs(30))
        .build()?)
}

/// A client that speaks cleartext HTTP/2 by prior knowledge (`TCP_NODELAY`): one connection
/// per host, every stream on it.
pub(crate) fn h2c_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .http2_prior_knowledge()
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(30))
        .build()?)
}

/// Runs one load test and returns its report. Senders are tokio tasks: a multi-threaded
/// runtime spreads them over its worker threads.
pub async fn run(config: LoadConfig) -> anyhow::Result<LoadReport> {
    let client = http_client()?;
    let now = Instant::now();
    let measure_from = now + config.warmup;
    let run = Arc::new(Run {
        client,
        workload: Workload::new(config.workload.clone()),
        recorder: Mutex::new(Recorder::new()?),
        measure_from,
        stop_at: measure_from + config.duration,
        in_flight: AtomicU64::new(0),
        max_in_flight: AtomicU64::new(0),
        config,
    });
    match run.config.mode {
        LoadMode::Closed { concurrency } => closed_loop(&run, concurrency, now).await,
        LoadMode::Open {
            rate,
            max_in_flight,
        } => open_loop(&run, rate, max_in_flight, now).await?,
    }
    Ok(run.report())
}

/// `concurrency` senders, started evenly over the warm-up so streams do not all tick in phase.
async fn closed_loop(run: &Arc<Run>, concurrency: usize, now: Instant) {
    let mut senders = JoinSet::new();
    let concurrency = concurrency.max(1);
    for i in 0..concurrency {
        let offset = run.config.warmup.mul_f64(i as f64 / concurrency as f64);
        senders.spawn(sender(Arc::clone(run), now + offset));
    }
    while senders.join_next().await.is_some() {}
}

async fn sender(run: Arc<Run>, first_at: Instant) {
    tokio::time::sleep_until(first_at).await;
    loop {
        let start = Instant::now();
        if start >= run.stop_at {
            return;
        }
        run.send_one(start).await;
    }
}

/// Sends request `k` at `now + k / rate` until the window closes, then waits for all of them.
///
/// The schedule is kept by an OS thread sleeping with `std::thread::sleep` (sub-millisecond
/// precision) rather than by tokio timers, whose millisecond ticks would otherwise add up to
/// ~2 ms of the harness's own lateness to every latency measured from the intended time.
async fn open_loop(
    run: &Arc<Run>,
    rate: f64,
    max_in_flight: usize,
    now: Instant,
) -> anyhow::Result<()> {
    let (spawned_tx, mut spawned_rx) = tokio::sync::mpsc::unbounded_channel();
    let scheduler = Scheduler {
        run: Arc::clone(run),
        runtime: tokio::runtime::Handle::current(),
        rate: rate.max(f64::MIN_POSITIVE),
        max_in_flight: max_in_flight as u64,
        start: now,
    };
    std::thread::Builder::new()
        .name("open-loop-scheduler".to_owned())
        .spawn(move || scheduler.run(&spawned_tx))
        .context("starting the open-loop scheduler thread")?;
    // The channel closes when the scheduler thread is done; by then every request is in it.
    while let Some(request) = spawned_rx.recv().await {
        let _ = request.await;
    }
    Ok(())
}

/// The open-loop schedule, kept on a thread of its own.
struct Scheduler {
    run: Arc<Run>,
    runtime: tokio::runtime::Handle,
    rate: f64,
    max_in_flight: u64,
    start: Instant,
}

impl Scheduler {
    fn run(self, spawned: &tokio::sync::mpsc::UnboundedSender<tokio::task::JoinHandle<()>>) {
        for k in 0_u64.. {
            let intended = self.start + Duration::from_secs_f64(k as f64 / self.rate);
            if intended >= self.run.stop_at {
                return;
            }
            std::thread::sleep(intended.saturating_duration_since(Instant::now()));
            if self.run.in_flight.load(Ordering::Relaxed) >= self.max_in_flight {
                if intended >= self.run.measure_from {
                    self.run.record(&Outcome::failed(Failure::Dropped));
                }
                continue;
            }
            // Counted here, not when the task starts, so the cap holds under a backlog.
            self.run.in_flight.fetch_add(1, Ordering::Relaxed);
            let run = Arc::clone(&self.run);
            let request = self
                .runtime
                .spawn(async move { run.send_counted(intended).await });
            if spawned.send(request).is_err() {
                return;
            }
        }
    }
}

fn as_ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1_000.0
}
