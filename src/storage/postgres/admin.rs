//! The operator's queries on Postgres ([`AdminStore`]).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Postgres, QueryBuilder};
use uuid::Uuid;

use super::{CallerRow, PostgresStore, SessionRow, audit};
use crate::storage::admin::{AdminStore, CallFilter, Erasure, ErasureCounts, StoredWebhookEvent};
use crate::storage::rows::{caller_columns, convert_all, session_columns};
use crate::storage::text::text;
use crate::storage::{AuditEntry, CallSession, Caller, Platform, StoreResult};

#[derive(sqlx::FromRow)]
struct WebhookRow {
    event_id: Uuid,
    platform: String,
    event_type: String,
    call_key: Option<String>,
    payload: String,
    received_at: DateTime<Utc>,
}

impl TryFrom<WebhookRow> for StoredWebhookEvent {
    type Error = crate::storage::StoreError;

    fn try_from(row: WebhookRow) -> StoreResult<Self> {
        Ok(Self {
            event_id: row.event_id,
            platform: row.platform.parse()?,
            event_type: row.event_type,
            call_key: row.call_key,
            payload: row.payload,
            received_at: row.received_at,
        })
    }
}

/// An `audit_log` row.
#[derive(sqlx::FromRow)]
struct AuditRow {
    audit_id: i64,
    caller_id: Option<Uuid>,
    session_id: Option<Uuid>,
    actor: String,
    action: String,
    reason: String,
    details: serde_json::Value,
    created_at: DateTime<Utc>,
}

impl TryFrom<AuditRow> for AuditEntry {
    type Error = crate::storage::StoreError;

    fn try_from(row: AuditRow) -> StoreResult<Self> {
        Ok(Self {
            audit_id: row.audit_id,
            caller_id: row.caller_id,
            session_id: row.session_id,
            actor: row.actor.into(),
            action: row.action.into(),
            reason: row.reason,
            details: row.details,
            created_at: row.created_at,
        })
    }
}

#[async_trait]
impl AdminStore for PostgresStore {
    async fn list_calls(&self, filter: &CallFilter) -> StoreResult<Vec<CallSession>> {
        let mut query = QueryBuilder::<Postgres>::new(concat!(
            "select ",
            session_columns!(),
            " from call_session where true"
        ));
        if let Some(caller_id) = filter.caller_id {
            query.push(" and caller_id = ").push_bind(caller_id);
        }
        if let Some(assistant) = &filter.assistant_id {
            query
                .push(" and assistant_id = ")
                .push_bind(text(assistant).into_owned());
        }
        if let Some(platform) = filter.platform {
            query.push(" and platform = ").push_bind(platform.as_str());
        }
        if let Some(status) = filter.status {
            query.push(" and status = ").push_bind(status.as_str());
        }
        if let Some(since) = filter.since {
            query.push(" and started_at >= ").push_bind(since);
        }
        if let Some(until) = filter.until {
            query.push(" and started_at < ").push_bind(until);
        }
        if let Some(after) = filter.after {
            query
                .push(" and (started_at, session_id) < (")
                .push_bind(after.started_at)
                .push(", ")
                .push_bind(after.session_id)
                .push(")");
        }
        query
            .push(" order by started_at desc, session_id desc limit ")
            .push_bind(i64::from(filter.limit));
        let rows: Vec<SessionRow> = query.build_query_as().fetch_all(&self.pool).await?;
        convert_all(rows)
    }

    async fn caller_by_id(&self, caller_id: Uuid) -> StoreResult<Option<Caller>> {
        let row: Option<CallerRow> = sqlx::query_as(concat!(
            "select ",
            caller_columns!(),
            " from caller where caller_id = $1"
        ))
        .bind(caller_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(Caller::try_from).transpose()
    }

    async fn resumed_by(&self, session_id: Uuid) -> StoreResult<Vec<CallSession>> {
        let rows: Vec<SessionRow> = sqlx::query_as(concat!(
            "select ",
            session_columns!(),
            " from call_session where resumes_session_id = $1 order by started_at, session_id"
        ))
        .bind(session_id)
        .fetch_all(&self.pool)
        .await?;
        convert_all(rows)
    }

    async fn list_webhook_events(
        &self,
        platform: Platform,
        call_key: &str,
    ) -> StoreResult<Vec<StoredWebhookEvent>> {
        let rows: Vec<WebhookRow> = sqlx::query_as(
            "select event_id, platform, event_type, call_key, payload, received_at \
             from webhook_event where platform = $1 and call_key = $2 \
             order by received_at, event_id",
        )
        .bind(platform.as_str())
        .bind(text(call_key))
        .fetch_all(&self.pool)
        .await?;
        convert_all(rows)
    }

    async fn list_access(
        &self,
        caller_ids: &[Uuid],
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        after: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<AuditEntry>> {
        let rows: Vec<AuditRow> = sqlx::query_as(
            "select audit_id, caller_id, session_id, actor, action, reason, details, created_at \
             from audit_log \
             where (caller_id = any($1) or session_id in \
                    (select session_id from call_session where caller_id = any($1))) \
               and created_at >= $2 and created_at < $3 and audit_id > $4 \
             order by audit_id limit $5",
        )
        .bind(caller_ids)
        .bind(since)
        .bind(until)
        .bind(after.unwrap_or(0))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        convert_all(rows)
    }

    async fn erased_callers(&self, subject_hash: &str) -> StoreResult<Vec<Uuid>> {
        let ids: Vec<(Uuid,)> = sqlx::query_as(
            "select caller_id from audit_log \
             where action = 'erase' and details ->> 'subject_hash' = $1 \
               and caller_id is not null \
             group by caller_id order by min(audit_id)",
        )
        .bind(text(subject_hash))
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }

    async fn erase_caller(&self, erasure: &Erasure) -> StoreResult<ErasureCounts> {
        let mut tx = self.pool.begin().await?;
        let counts = erase_in(&mut tx, erasure).await?;
        audit::insert_audit(&mut tx, std::slice::from_ref(&erasure.tombstone)).await?;
        tx.commit().await?;
        Ok(counts)
    }

    async fn delete_turns_before(&self, before: DateTime<Utc>, limit: u32) -> StoreResult<u64> {
        self.sweep_batch(
            "delete from turn where seq in \
             (select seq from turn where created_at < $1 order by seq limit $2)",
            before,
            limit,
        )
        .await
    }

    async fn scrub_transcripts_before(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<u64> {
        let done = sqlx::query(
            "update call_session set \
               details = details - 'transcript' - 'messages' - 'recording_urls', \
               updated_at = now() \
             where session_id in \
               (select session_id from call_session \
                where coalesce(ended_at, last_activity_at) < $1 \
                  and details ?| array['transcript', 'messages', 'recording_urls'] \
                limit $2)",
        )
        .bind(before)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn delete_webhook_events_before(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<u64> {
        self.sweep_batch(
            "delete from webhook_event where event_id in \
             (select event_id from webhook_event where received_at < $1 \
              order by received_at limit $2)",
            before,
            limit,
        )
        .await
    }

    async fn delete_finished_jobs_before(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<u64> {
        self.sweep_batch(
            "delete from job where job_id in \
             (select job_id from job where status in ('done', 'failed') and updated_at < $1 \
              order by updated_at limit $2)",
            before,
            limit,
        )
        .await
    }

    async fn inactive_callers(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<Caller>> {
        let rows: Vec<CallerRow> = sqlx::query_as(concat!(
            "select ",
            caller_columns!(),
            " from caller where last_seen_at < $1 order by last_seen_at limit $2"
        ))
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        convert_all(rows)
    }
}

impl PostgresStore {
    /// One retention batch: `sql` deletes at most `$2` rows older than `$1`.
    async fn sweep_batch(&self, sql: &str, before: DateTime<Utc>, limit: u32) -> StoreResult<u64> {
        let done = sqlx::query(sql)
            .bind(before)
            .bind(i64::from(limit))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

/// Every step of an erasure but the tombstone, inside its transaction.
async fn erase_in(tx: &mut PgConnection, erasure: &Erasure) -> StoreResult<ErasureCounts> {
    let caller_id = erasure.caller_id;
    let needles: Vec<String> = erasure
        .needles
        .iter()
        .map(|n| text(n).into_owned())
        .collect();
    let needles = &needles;
    // Lock the caller first: a call starting meanwhile waits, then finds no caller.
    let callers: Option<(Uuid,)> =
        sqlx::query_as("select caller_id from caller where caller_id = $1 for update")
            .bind(caller_id)
            .fetch_optional(&mut *tx)
            .await?;
    let sessions: Vec<(Uuid, String, String)> = sqlx::query_as(
        "select session_id, platform, call_key from call_session where caller_id = $1",
    )
    .bind(caller_id)
    .fetch_all(&mut *tx)
    .await?;
    let session_ids: Vec<Uuid> = sessions.iter().map(|s| s.0).collect();
    let platforms: Vec<String> = sessions.iter().map(|s| s.1.clone()).collect();
    let call_keys: Vec<String> = sessions.iter().map(|s| s.2.clone()).collect();
    let mut counts = ErasureCounts {
        callers: u64::from(callers.is_some()),
        sessions: session_ids.len() as u64,
        ..ErasureCounts::default()
    };
    counts.turns = sqlx::query("delete from turn where session_id = any($1)")
        .bind(&session_ids)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    counts.analyses = sqlx::query("delete from analysis where session_id = any($1)")
        .bind(&session_ids)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let events: Vec<(String,)> = sqlx::query_as(
        "delete from webhook_event \
         where (platform, call_key) in (select * from unnest($1::text[], $2::text[])) \
            or exists (select 1 from unnest($3::text[]) n where strpos(payload, n) > 0) \
         returning dedupe_key",
    )
    .bind(&platforms)
    .bind(&call_keys)
    .bind(needles)
    .fetch_all(&mut *tx)
    .await?;
    counts.webhook_events = events.len() as u64;
    let mut job_keys: Vec<String> = events.iter().map(|(k,)| format!("job:{k}")).collect();
    job_keys.extend(session_ids.iter().map(|id| format!("analyze:{id}")));
    counts.jobs = sqlx::query(
        "delete from job where dedupe_key = any($1) \
            or exists (select 1 from unnest($2::text[]) n where strpos(payload::text, n) > 0)",
    )
    .bind(&job_keys)
    .bind(needles)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    counts.audit_scrubbed = sqlx::query(
        "update audit_log set details = '{}' \
         where (caller_id = $1 or session_id = any($2)) and details <> '{}'::jsonb \
           and action <> 'erase'",
    )
    .bind(caller_id)
    .bind(&session_ids)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    // Sessions, answers and platform details go with the caller (on delete cascade); sessions
    // of other callers that resumed one of theirs lose the link (on delete set null).
    sqlx::query("delete from call_session where session_id = any($1)")
        .bind(&session_ids)
        .execute(&mut *tx)
        .await?;
    sqlx::query("delete from caller where caller_id = $1")
        .bind(caller_id)
        .execute(&mut *tx)
        .await?;
    Ok(counts)
}
