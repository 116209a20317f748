//! The analysis worker pool: claims jobs from the store's durable queue, runs them, retries with
//! exponential backoff, and gives up after `analysis.max_attempts`. A job whose worker died is
//! taken over once its lease expires, so a killed process loses nothing.

use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::{ANALYZE_JOB, CALL_EVENT_JOB, analyse_session, process_call_event};
use crate::engine::Engine;
use crate::storage::Job;
use crate::webhooks::WebhookEvent;

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
        match engine.store().claim_job(&name, Utc::now(), lease).await {
            Ok(Some(job)) => run_job(&engine, &job).await,
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

async fn run_job(engine: &Engine, job: &Job) {
    // A job taken over after its lease expired may already have used every attempt.
    let result = if job.attempts > job.max_attempts {
        Err(anyhow::anyhow!(
            "gave up after {} attempts",
            job.max_attempts
        ))
    } else {
        run_kind(engine, job).await
    };
    record_outcome(engine, job, result).await;
}

async fn run_kind(engine: &Engine, job: &Job) -> anyhow::Result<()> {
    match job.kind.as_str() {
        CALL_EVENT_JOB => match serde_json::from_value::<WebhookEvent>(job.payload.clone()) {
            Ok(event) => process_call_event(engine, &event).await,
            Err(e) => Err(anyhow::anyhow!("unreadable job payload: {e}")),
        },
        ANALYZE_JOB => analyse_session(engine, &job.payload).await,
        other => Err(anyhow::anyhow!("unknown job kind {other:?}")),
    }
}

async fn record_outcome(engine: &Engine, job: &Job, result: anyhow::Result<()>) {
    let store = engine.store();
    let now = Utc::now();
    let outcome = match result {
        Ok(()) => {
            metrics::counter!("redial_jobs_total", "outcome" => "done").increment(1);
            store.complete_job(job.job_id, now).await
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
            metrics::counter!("redial_jobs_total", "outcome" => outcome).increment(1);
            store.fail_job(job.job_id, &error, retry_at, now).await
        }
    };
    if let Err(e) = outcome {
        // The lease expires and another worker takes the job over.
        tracing::error!(job_id = %job.job_id, error = %e, "recording the job's outcome failed");
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
