//! Webhook events and the durable job queue on SQLite.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{SqliteConnection, SqlitePool};
use uuid::Uuid;

use super::{JobRow, SqliteStore, begin_write, id, ms};
use crate::storage::rows::job_columns;
use crate::storage::text::{json, opt_text, text};
use crate::storage::{
    Job, JobLease, JobStore, NewJob, NewWebhookEvent, Recorded, StoreError, StoreResult, rules,
};

/// The condition of every write by a lease holder (`$1` job id, `$2` worker, `$3` attempt): the
/// job still runs under the claim that made the lease.
macro_rules! held {
    () => {
        "job_id = $1 and status = 'running' and locked_by = $2 and attempts = $3"
    };
}

#[async_trait]
impl JobStore for SqliteStore {
    #[tracing::instrument(
        name = "store.record_webhook",
        skip_all,
        fields(backend = "sqlite", platform = %event.platform, event_type = %event.event_type,
               event_id = %event.event_id, new = tracing::field::Empty)
    )]
    async fn record_webhook(
        &self,
        event: &NewWebhookEvent,
        job: Option<&NewJob>,
    ) -> StoreResult<Recorded> {
        let mut tx = begin_write(&self.writer).await?;
        let stored = sqlx::query(
            "insert into webhook_event (event_id, platform, event_type, call_key, dedupe_key, \
             payload, received_at) values ($1, $2, $3, $4, $5, $6, $7) \
             on conflict (dedupe_key) do nothing",
        )
        .bind(id(event.event_id))
        .bind(event.platform.as_str())
        .bind(text(&event.event_type))
        .bind(opt_text(event.call_key.as_deref()))
        .bind(text(&event.dedupe_key))
        .bind(text(&event.payload))
        .bind(ms(event.received_at))
        .execute(&mut *tx)
        .await?;
        let new = stored.rows_affected() == 1;
        if new && let Some(job) = job {
            insert_job(&mut tx, job, event.received_at).await?;
        }
        tx.commit().await?;
        tracing::Span::current().record("new", new);
        Ok(if new {
            Recorded::New(event.event_id)
        } else {
            Recorded::Duplicate
        })
    }

    #[tracing::instrument(
        name = "store.enqueue_job",
        skip_all,
        fields(backend = "sqlite", kind = %job.kind, job_id = %job.job_id)
    )]
    async fn enqueue_job(&self, job: &NewJob) -> StoreResult<Recorded> {
        let mut conn = self.writer.acquire().await?;
        // The trait gives no enqueue time; the wall clock stands in for it.
        insert_job(&mut conn, job, Utc::now()).await
    }

    #[tracing::instrument(
        name = "store.claim_job",
        skip_all,
        fields(backend = "sqlite", worker, job_id = tracing::field::Empty)
    )]
    async fn claim_job(
        &self,
        worker: &str,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> StoreResult<Option<Job>> {
        // One statement under the write lock: no other claimer can pick the row in between.
        let mut tx = begin_write(&self.writer).await?;
        let row: Option<JobRow> = sqlx::query_as(concat!(
            "update job set status = 'running', attempts = attempts + 1, locked_by = $1, \
             locked_until = $3, updated_at = $2 \
             where job_id = ( \
                 select job_id from job \
                 where (status = 'queued' and run_at <= $2) \
                    or (status = 'running' and locked_until < $2) \
                 order by run_at, job_id limit 1) \
             returning ",
            job_columns!()
        ))
        .bind(text(worker))
        .bind(ms(now))
        .bind(ms(rules::lease_expiry(now, lease)))
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        let job = row.map(Job::try_from).transpose()?;
        if let Some(job) = &job {
            tracing::Span::current().record("job_id", tracing::field::display(job.job_id));
        }
        Ok(job)
    }

    #[tracing::instrument(
        name = "store.complete_job",
        skip_all,
        fields(backend = "sqlite", job_id = %lease.job_id, worker = %lease.worker)
    )]
    async fn complete_job(&self, lease: &JobLease, now: DateTime<Utc>) -> StoreResult<()> {
        let done = sqlx::query(concat!(
            "update job set status = 'done', locked_by = null, locked_until = null, \
             updated_at = $4 \
             where ",
            held!()
        ))
        .bind(id(lease.job_id))
        .bind(text(&lease.worker))
        .bind(lease.attempt)
        .bind(ms(now))
        .execute(&self.writer)
        .await?;
        finished(&self.writer, lease, done.rows_affected()).await
    }

    #[tracing::instrument(
        name = "store.fail_job",
        skip_all,
        fields(backend = "sqlite", job_id = %lease.job_id, worker = %lease.worker,
               retry = retry_at.is_some())
    )]
    async fn fail_job(
        &self,
        lease: &JobLease,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let done = sqlx::query(concat!(
            "update job set \
             status = case when $5 is null then 'failed' else 'queued' end, \
             run_at = coalesce($5, run_at), last_error = $4, locked_by = null, \
             locked_until = null, updated_at = $6 \
             where ",
            held!()
        ))
        .bind(id(lease.job_id))
        .bind(text(&lease.worker))
        .bind(lease.attempt)
        .bind(text(error))
        .bind(retry_at.map(ms))
        .bind(ms(now))
        .execute(&self.writer)
        .await?;
        finished(&self.writer, lease, done.rows_affected()).await
    }

    #[tracing::instrument(
        name = "store.wait_job",
        skip_all,
        fields(backend = "sqlite", job_id = %lease.job_id, worker = %lease.worker)
    )]
    async fn wait_job(
        &self,
        lease: &JobLease,
        reason: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let done = sqlx::query(concat!(
            "update job set status = 'waiting', last_error = $4, max_attempts = max_attempts + 1, \
             locked_by = null, locked_until = null, updated_at = $5 \
             where ",
            held!()
        ))
        .bind(id(lease.job_id))
        .bind(text(&lease.worker))
        .bind(lease.attempt)
        .bind(text(reason))
        .bind(ms(now))
        .execute(&self.writer)
        .await?;
        finished(&self.writer, lease, done.rows_affected()).await
    }

    #[tracing::instrument(
        name = "store.release_waiting_jobs",
        skip_all,
        fields(backend = "sqlite", released = tracing::field::Empty)
    )]
    async fn release_waiting_jobs(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        let done = sqlx::query(
            "update job set status = 'queued', run_at = $1, updated_at = $1 \
             where status = 'waiting'",
        )
        .bind(ms(now))
        .execute(&self.writer)
        .await?;
        tracing::Span::current().record("released", done.rows_affected());
        Ok(done.rows_affected())
    }

    #[tracing::instrument(
        name = "store.renew_job",
        skip_all,
        fields(backend = "sqlite", job_id = %lease.job_id, worker = %lease.worker, renewed)
    )]
    async fn renew_job(
        &self,
        lease: &JobLease,
        now: DateTime<Utc>,
        lease_for: Duration,
    ) -> StoreResult<bool> {
        let done = sqlx::query(concat!(
            "update job set locked_until = $4, updated_at = $5 where ",
            held!()
        ))
        .bind(id(lease.job_id))
        .bind(text(&lease.worker))
        .bind(lease.attempt)
        .bind(ms(rules::lease_expiry(now, lease_for)))
        .bind(ms(now))
        .execute(&self.writer)
        .await?;
        let renewed = done.rows_affected() == 1;
        tracing::Span::current().record("renewed", renewed);
        Ok(renewed)
    }
}

/// Inserts a queued job unless one with its dedupe key exists.
async fn insert_job(
    conn: &mut SqliteConnection,
    job: &NewJob,
    created_at: DateTime<Utc>,
) -> StoreResult<Recorded> {
    let done = sqlx::query(
        "insert into job (job_id, kind, dedupe_key, payload, max_attempts, run_at, created_at, \
         updated_at) values ($1, $2, $3, $4, $5, $6, $7, $7) \
         on conflict (dedupe_key) do nothing",
    )
    .bind(id(job.job_id))
    .bind(text(&job.kind))
    .bind(text(&job.dedupe_key))
    .bind(Json(json(&job.payload)))
    .bind(job.max_attempts)
    .bind(ms(job.run_at))
    .bind(ms(created_at))
    .execute(conn)
    .await?;
    Ok(if done.rows_affected() == 1 {
        Recorded::New(job.job_id)
    } else {
        Recorded::Duplicate
    })
}

/// The job with this id (tells a fenced write's `NotFound` from its `Conflict`).
async fn get_job(pool: &SqlitePool, job_id: Uuid) -> StoreResult<Option<Job>> {
    let row: Option<JobRow> = sqlx::query_as(concat!(
        "select ",
        job_columns!(),
        " from job where job_id = $1"
    ))
    .bind(id(job_id))
    .fetch_optional(pool)
    .await?;
    row.map(Job::try_from).transpose()
}

/// The outcome of a fenced finish that changed `rows_affected` rows: a job that exists but is
/// no longer held by `lease` is a conflict (its new holder's outcome stands), a missing one is
/// not found.
async fn finished(pool: &SqlitePool, lease: &JobLease, rows_affected: u64) -> StoreResult<()> {
    if rows_affected > 0 {
        return Ok(());
    }
    if get_job(pool, lease.job_id).await?.is_some() {
        Err(StoreError::Conflict(format!(
            "job {} is no longer held by {} (attempt {})",
            lease.job_id, lease.worker, lease.attempt
        )))
    } else {
        Err(StoreError::NotFound)
    }
}
