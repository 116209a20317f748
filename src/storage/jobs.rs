//! The webhook events and jobs tables: [`JobStore`].

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{Job, JobLease, NewJob, NewWebhookEvent, Recorded, StoreResult};

/// Accepted webhooks and the durable queue of work they (and calls) enqueue.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Stores a webhook event once per `dedupe_key` and, only when it is new, enqueues `job` in
    /// the same transaction (a job whose dedupe key exists is not enqueued again).
    async fn record_webhook(
        &self,
        event: &NewWebhookEvent,
        job: Option<&NewJob>,
    ) -> StoreResult<Recorded>;

    /// Enqueues a job once per `dedupe_key`.
    async fn enqueue_job(&self, job: &NewJob) -> StoreResult<Recorded>;

    /// Claims the oldest runnable job: `queued` with `run_at <= now`, or `running` whose lease
    /// expired (`locked_until < now`, its worker presumed dead). The claim sets it `running`,
    /// increments `attempts`, and leases it to `worker` until `now + lease`. Concurrent claimers
    /// never get the same job (Postgres: `FOR UPDATE SKIP LOCKED`).
    async fn claim_job(
        &self,
        worker: &str,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> StoreResult<Option<Job>>;

    /// Marks a job `done`, only while `lease` still holds it: `Conflict` (nothing changed) when
    /// the job was taken over or already finished, `NotFound` when there is no such job.
    async fn complete_job(&self, lease: &JobLease, now: DateTime<Utc>) -> StoreResult<()>;

    /// Records a failed attempt: back to `queued` at `retry_at`, or `failed` for good when
    /// `retry_at` is `None`. Fenced like [`JobStore::complete_job`].
    async fn fail_job(
        &self,
        lease: &JobLease,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> StoreResult<()>;

    /// Parks a job that failed on configuration: `waiting`, with `reason` as its last error,
    /// until [`JobStore::release_waiting_jobs`]. The attempt does not count against the job (its
    /// `max_attempts` grows by one; `attempts` never goes back, so leases stay fenced). Fenced
    /// like [`JobStore::complete_job`].
    async fn wait_job(&self, lease: &JobLease, reason: &str, now: DateTime<Utc>)
    -> StoreResult<()>;

    /// Queues every `waiting` job to run now (at a start, when the configuration may have
    /// changed); returns how many.
    async fn release_waiting_jobs(&self, now: DateTime<Utc>) -> StoreResult<u64>;

    /// Extends a running job's lease to `now + lease_for` while `lease` still holds it (same
    /// worker, same attempt), so a job that outlives one lease is not taken over. Returns `false`,
    /// changing nothing, when the job was taken over by a later claim, finished, or is gone. An
    /// expired lease that nobody has claimed yet is still held and is renewed.
    async fn renew_job(
        &self,
        lease: &JobLease,
        now: DateTime<Utc>,
        lease_for: Duration,
    ) -> StoreResult<bool>;
}
