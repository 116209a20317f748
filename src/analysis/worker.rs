//! The analysis worker pool: claims jobs from the store's durable queue, runs them, retries with
//! exponential backoff, and gives up after `analysis.max_attempts`. A running job's lease is
//! renewed, so a job may outlive it; a job whose worker died is taken over once its lease
//! expires, so a killed process loses nothing. Every write a worker makes to its job is fenced
//! by its lease, so a worker that lost the job cannot overwrite its new holder's outcome. A job
//! that fails on configuration is not retried: it waits, with its reason, for the next start.

use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::{JobPayload, analyse_session, needs_configuration, process_call_event};
use crate::engine::Engine;
use crate::storage::{Job, JobLease, StoreError};

/// Starts `analysis.workers` workers on `tracker`; they stop claiming when `shutdown` is
/// cancelled and finish the job in hand.
pub fn spawn(engine: &Engine, shutdown: &CancellationToken, tracker: &TaskTracker) {
    let instance = Uuid::now_v7().simple().to_string();
    for n in 0..engine.settings().analysis.workers {
        let engine = engine.clone();
        let shutdown = shutdown.clone();
        let name = format!("{}-{n}", &instance[..12]);
        tracker.spawn(async move { run(engine, name, shutdown).await });
    }
}

async fn run(engine: Engine, name: String, shutdown: CancellationToken) {
    let settings = &engine.settings().analysis;
    let poll = Duration::from_millis(settings.poll_interval_ms);
    let lease = Duration::from_secs(settings.lease_secs);
    while !shutdown.is_cancelled() {
        // Taken before the claim, so the worker's view of its lease never outlasts the store's.
        let claimed_at = Instant::now();
        match engine.store().claim_job(&name, Utc::now(), lease).await {
            Ok(Some(job)) => run_job(&engine, &job, claimed_at).await,
            Ok(None) => {
                tokio::select! {
                    () = tokio::time::sleep(poll) => {}
                    () = shutdown.cancelled() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, worker = %name, "claiming a job failed");
                tokio::select! {
                    () = tokio::time::sleep(poll * 4) => {}
                    () = shutdown.cancelled() => {}
                }
            }
        }
    }
}

/// Runs a claimed job while renewing its lease; a job whose lease is lost is dropped mid-run
/// and left to its new holder (every step of a job is idempotent, so the new holder redoes
/// whatever this worker had done).
async fn run_job(engine: &Engine, job: &Job, claimed_at: Instant) {
    let Some(lease) = job.lease() else {
        tracing::error!(job_id = %job.job_id, "a claimed job came back without its lease");
        return;
    };
    let held = tokio::select! {
        result = attempt(engine, job) => Some(result),
        lost = hold(engine, &lease, claimed_at) => {
            lease_lost(&lease, lost);
            None
        }
    };
    if let Some(result) = held {
        record_outcome(engine, &lease, job, result).await;
    }
}

async fn attempt(engine: &Engine, job: &Job) -> anyhow::Result<()> {
    // A job taken over after its lease expired may already have used every attempt.
    if job.attempts > job.max_attempts {
        return Err(anyhow::anyhow!(
            "gave up after {} attempts",
            job.max_attempts
        ));
    }
    run_kind(engine, job).await
}

/// Why a worker stopped holding a job.
#[derive(Debug, Clone, Copy)]
enum LeaseLost {
    /// The store says another claim holds it now (or it is gone).
    TakenOver,
    /// No renewal landed before the lease ran out: another worker may hold it by now.
    Expired,
}

impl LeaseLost {
    fn as_str(self) -> &'static str {
        match self {
            Self::TakenOver => "taken_over",
            Self::Expired => "expired",
        }
    }
}

/// Renews `lease` every third of `analysis.lease_secs` and returns only once it is lost. A
/// renewal that fails (database unreachable, no free connection) keeps the job and is retried
/// soon; but once the last renewal that landed has run out, another worker may have claimed the
/// job, so this one must give it up. `claimed_at` precedes the claim, as each renewal's start
/// precedes its store-side expiry, so the worker gives up no later than the store hands over.
async fn hold(engine: &Engine, lease: &JobLease, claimed_at: Instant) -> LeaseLost {
    let lease_for = Duration::from_secs(engine.settings().analysis.lease_secs);
    let every = renewal_interval(lease_for);
    let mut expires = after(claimed_at, lease_for);
    let mut next = after(claimed_at, every);
    loop {
        tokio::time::sleep_until(next.min(expires)).await;
        let sent = Instant::now();
        let left = expires.saturating_duration_since(sent);
        if left.is_zero() {
            return LeaseLost::Expired;
        }
        let renewal = engine.store().renew_job(lease, Utc::now(), lease_for);
        match tokio::time::timeout(left, renewal).await {
            Ok(Ok(true)) => {
                metrics::counter!("redial_job_lease_renewals_total", "outcome" => "renewed")
                    .increment(1);
                tracing::debug!(job_id = %lease.job_id, worker = %lease.worker, "job lease renewed");
                expires = after(sent, lease_for);
                next = after(sent, every);
            }
            Ok(Ok(false)) => return LeaseLost::TakenOver,
            Ok(Err(e)) => {
                metrics::counter!("redial_job_lease_renewals_total", "outcome" => "error")
                    .increment(1);
                tracing::warn!(job_id = %lease.job_id, worker = %lease.worker, error = %e,
                    remaining_ms = left.as_millis(), "renewing the job lease failed; retrying");
                next = after(Instant::now(), every.min(RENEWAL_RETRY));
            }
            Err(_) => return LeaseLost::Expired,
        }
    }
}

/// How soon a failed renewal is tried again (at most the renewal interval).
const RENEWAL_RETRY: Duration = Duration::from_secs(1);

/// A lease is renewed three times per lease: two renewals in a row may fail (each waiting up to
/// `database.connect_timeout_secs`, which validation bounds by a third of the lease) before the
/// job is lost.
fn renewal_interval(lease: Duration) -> Duration {
    lease / 3
}

/// `at + span`, or a year from now should that overflow (validation bounds the lease to a day).
fn after(at: Instant, span: Duration) -> Instant {
    at.checked_add(span)
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365))
}

fn lease_lost(lease: &JobLease, lost: LeaseLost) {
    metrics::counter!("redial_job_leases_lost_total", "reason" => lost.as_str()).increment(1);
    tracing::warn!(job_id = %lease.job_id, worker = %lease.worker, attempt = lease.attempt,
        reason = lost.as_str(), "lost the job lease; abandoning the job to its new holder");
}

async fn run_kind(engine: &Engine, job: &Job) -> anyhow::Result<()> {
    match JobPayload::of(job)? {
        JobPayload::CallEvent(event) => process_call_event(engine, &event).await,
        JobPayload::AnalyzeCall(call) => analyse_session(engine, &call).await,
    }
}

async fn record_outcome(engine: &Engine, lease: &JobLease, job: &Job, result: anyhow::Result<()>) {
    let store = engine.store();
    let now = Utc::now();
    let (outcome, recorded) = match result {
        Ok(()) => ("done", store.complete_job(lease, now).await),
        Err(e) if needs_configuration(&e) => {
            let reason = format!("{e:#}");
            tracing::warn!(job_id = %job.job_id, kind = %job.kind, reason,
                "job cannot run with this configuration; it waits for the next start");
            ("waiting", store.wait_job(lease, &reason, now).await)
        }
        Err(e) => {
            let error = format!("{e:#}");
            let retry_at =
                (job.attempts < job.max_attempts).then(|| now + backoff(engine, job.attempts));
            let outcome = if retry_at.is_some() {
                "retry"
            } else {
                "failed"
            };
            tracing::warn!(job_id = %job.job_id, attempts = job.attempts, error, outcome, "job failed");
            (outcome, store.fail_job(lease, &error, retry_at, now).await)
        }
    };
    match recorded {
        Ok(()) => metrics::counter!("redial_jobs_total", "outcome" => outcome).increment(1),
        // Another claim holds the job: its outcome stands, not this stale one.
        Err(StoreError::Conflict(_)) => lease_lost(lease, LeaseLost::TakenOver),
        // The lease expires and another worker takes the job over.
        Err(e) => {
            tracing::error!(job_id = %job.job_id, error = %e, "recording the job's outcome failed");
        }
    }
}

/// `retry_base_secs * 2^(attempts-1)`, capped at an hour.
fn backoff(engine: &Engine, attempts: i32) -> chrono::Duration {
    let base = engine.settings().analysis.retry_base_secs;
    let exponent = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(16);
    let secs = base.saturating_mul(1 << exponent).min(3_600);
    chrono::Duration::seconds(i64::try_from(secs).unwrap_or(3_600))
}
