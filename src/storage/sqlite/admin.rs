//! The operator's queries on SQLite ([`AdminStore`]).
//!
//! Lists of ids and needles are bound as one JSON array and read with `json_each`. Erasure
//! and the retention sweeps run with `secure_delete` on, so deleted rows are overwritten in the
//! file rather than left in free pages, and an erasure ends with a WAL checkpoint, so the old
//! pages do not linger in the write-ahead log either.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};
use uuid::Uuid;
use uuid::fmt::Hyphenated;

use super::{CallerRow, SessionRow, SqliteStore, audit, begin_write, id, ms};
use crate::storage::admin::{AdminStore, CallFilter, Erasure, ErasureCounts, StoredWebhookEvent};
use crate::storage::rows::{DbTime, caller_columns, convert_all, session_columns};
use crate::storage::{AuditEntry, CallSession, Caller, Platform, StoreResult};

#[derive(sqlx::FromRow)]
struct WebhookRow {
    event_id: Hyphenated,
    platform: String,
    event_type: String,
    call_key: Option<String>,
    payload: String,
    received_at: i64,
}

impl TryFrom<WebhookRow> for StoredWebhookEvent {
    type Error = crate::storage::StoreError;

    fn try_from(row: WebhookRow) -> StoreResult<Self> {
        Ok(Self {
            event_id: row.event_id.into_uuid(),
            platform: row.platform.parse()?,
            event_type: row.event_type,
            call_key: row.call_key,
            payload: row.payload,
            received_at: row.received_at.into_utc()?,
        })
    }
}

/// A JSON array of strings, for `json_each`.
fn json_list<T: ToString>(items: &[T]) -> String {
    serde_json::Value::from(items.iter().map(ToString::to_string).collect::<Vec<_>>()).to_string()
}

/// An `audit_log` row.
#[derive(sqlx::FromRow)]
struct AuditRow {
    audit_id: i64,
    caller_id: Option<Hyphenated>,
    session_id: Option<Hyphenated>,
    actor: String,
    action: String,
    reason: String,
    details: serde_json::Value,
    created_at: i64,
}

impl TryFrom<AuditRow> for AuditEntry {
    type Error = crate::storage::StoreError;

    fn try_from(row: AuditRow) -> StoreResult<Self> {
        Ok(Self {
            audit_id: row.audit_id,
            caller_id: row.caller_id.map(Hyphenated::into_uuid),
            session_id: row.session_id.map(Hyphenated::into_uuid),
            actor: row.actor.into(),
            action: row.action.into(),
            reason: row.reason,
            details: row.details,
            created_at: row.created_at.into_utc()?,
        })
    }
}

#[async_trait]
impl AdminStore for SqliteStore {
    async fn list_calls(&self, filter: &CallFilter) -> StoreResult<Vec<CallSession>> {
        let mut query = QueryBuilder::<Sqlite>::new(concat!(
            "select ",
            session_columns!(),
            " from call_session where 1"
        ));
        if let Some(caller_id) = filter.caller_id {
            query.push(" and caller_id = ").push_bind(id(caller_id));
        }
        if let Some(assistant) = &filter.assistant_id {
            query
                .push(" and assistant_id = ")
                .push_bind(assistant.clone());
        }
        if let Some(platform) = filter.platform {
            query.push(" and platform = ").push_bind(platform.as_str());
        }
        if let Some(status) = filter.status {
            query.push(" and status = ").push_bind(status.as_str());
        }
        if let Some(since) = filter.since {
            query.push(" and started_at >= ").push_bind(ms(since));
        }
        if let Some(until) = filter.until {
            query.push(" and started_at < ").push_bind(ms(until));
        }
        if let Some(after) = filter.after {
            query
                .push(" and (started_at, session_id) < (")
                .push_bind(ms(after.started_at))
                .push(", ")
                .push_bind(id(after.session_id))
                .push(")");
        }
        query
            .push(" order by started_at desc, session_id desc limit ")
            .push_bind(i64::from(filter.limit));
        let rows: Vec<SessionRow> = query.build_query_as().fetch_all(&self.reader).await?;
        convert_all(rows)
    }

    async fn caller_by_id(&self, caller_id: Uuid) -> StoreResult<Option<Caller>> {
        let row: Option<CallerRow> = sqlx::query_as(concat!(
            "select ",
            caller_columns!(),
            " from caller where caller_id = ?1"
        ))
        .bind(id(caller_id))
        .fetch_optional(&self.reader)
        .await?;
        row.map(Caller::try_from).transpose()
    }

    async fn resumed_by(&self, session_id: Uuid) -> StoreResult<Vec<CallSession>> {
        let rows: Vec<SessionRow> = sqlx::query_as(concat!(
            "select ",
            session_columns!(),
            " from call_session where resumes_session_id = ?1 order by started_at, session_id"
        ))
        .bind(id(session_id))
        .fetch_all(&self.reader)
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
             from webhook_event where platform = ?1 and call_key = ?2 \
             order by received_at, event_id",
        )
        .bind(platform.as_str())
        .bind(call_key)
        .fetch_all(&self.reader)
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
        let ids: Vec<Hyphenated> = caller_ids.iter().copied().map(id).collect();
        let rows: Vec<AuditRow> = sqlx::query_as(
            "select audit_id, caller_id, session_id, actor, action, reason, details, created_at \
             from audit_log \
             where (caller_id in (select value from json_each(?1)) or session_id in \
                    (select session_id from call_session \
                     where caller_id in (select value from json_each(?1)))) \
               and created_at >= ?2 and created_at < ?3 and audit_id > ?4 \
             order by audit_id limit ?5",
        )
        .bind(json_list(&ids))
        .bind(ms(since))
        .bind(ms(until))
        .bind(after.unwrap_or(0))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        convert_all(rows)
    }

    async fn erased_callers(&self, subject_hash: &str) -> StoreResult<Vec<Uuid>> {
        let ids: Vec<(Hyphenated,)> = sqlx::query_as(
            "select caller_id from audit_log \
             where action = 'erase' and json_extract(details, '$.subject_hash') = ?1 \
               and caller_id is not null \
             group by caller_id order by min(audit_id)",
        )
        .bind(subject_hash)
        .fetch_all(&self.reader)
        .await?;
        Ok(ids.into_iter().map(|(id,)| id.into_uuid()).collect())
    }

    async fn erase_caller(&self, erasure: &Erasure) -> StoreResult<ErasureCounts> {
        secure_delete(&self.writer).await?;
        let mut tx = begin_write(&self.writer).await?;
        let (counts, deleted) = erase_in(&mut tx, erasure).await?;
        audit::insert_audit(&mut tx, std::slice::from_ref(&erasure.tombstone)).await?;
        tx.commit().await?;
        // The call cache must not keep serving what was just erased (a forced erasure of a
        // call in progress: its next turn starts afresh).
        self.changes.publish(deleted);
        // Best effort: copies the overwritten pages into the file and empties the WAL. A
        // reader holding an old snapshot may keep part of it until the next checkpoint.
        if let Err(e) = sqlx::query("pragma wal_checkpoint(truncate)")
            .execute(&self.writer)
            .await
        {
            tracing::warn!(error = %e, "checkpoint after an erasure failed");
        }
        Ok(counts)
    }

    async fn delete_turns_before(&self, before: DateTime<Utc>, limit: u32) -> StoreResult<u64> {
        self.sweep_batch(
            "delete from turn where seq in \
             (select seq from turn where created_at < ?1 order by seq limit ?2)",
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
        secure_delete(&self.writer).await?;
        let done = sqlx::query(
            "update call_session set \
               details = json_remove(details, '$.transcript', '$.messages', '$.recording_urls'), \
               updated_at = ?3 \
             where session_id in \
               (select session_id from call_session \
                where coalesce(ended_at, last_activity_at) < ?1 \
                  and (json_type(details, '$.transcript') is not null \
                       or json_type(details, '$.messages') is not null \
                       or json_type(details, '$.recording_urls') is not null) \
                limit ?2)",
        )
        .bind(ms(before))
        .bind(i64::from(limit))
        .bind(ms(Utc::now()))
        .execute(&self.writer)
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
             (select event_id from webhook_event where received_at < ?1 \
              order by received_at limit ?2)",
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
             (select job_id from job where status in ('done', 'failed') and updated_at < ?1 \
              order by updated_at limit ?2)",
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
            " from caller where last_seen_at < ?1 order by last_seen_at limit ?2"
        ))
        .bind(ms(before))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        convert_all(rows)
    }
}

/// Deleted content is overwritten with zeros on the writer connection from now on (a
/// per-connection setting; the writer is the only connection that deletes).
async fn secure_delete(writer: &sqlx::SqlitePool) -> StoreResult<()> {
    sqlx::query("pragma secure_delete = on")
        .execute(writer)
        .await?;
    Ok(())
}

impl SqliteStore {
    /// One retention batch: `sql` deletes at most `?2` rows older than `?1`, with
    /// `secure_delete` on so the freed pages are overwritten.
    async fn sweep_batch(&self, sql: &str, before: DateTime<Utc>, limit: u32) -> StoreResult<u64> {
        secure_delete(&self.writer).await?;
        let done = sqlx::query(sql)
            .bind(ms(before))
            .bind(i64::from(limit))
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected())
    }
}

/// Every step of an erasure but the tombstone, inside its transaction. Returns the counts and
/// the ids of the caller and sessions deleted (for the change notices).
async fn erase_in(
    tx: &mut SqliteConnection,
    erasure: &Erasure,
) -> StoreResult<(ErasureCounts, Vec<Uuid>)> {
    let caller_id = id(erasure.caller_id);
    let needles = json_list(&erasure.needles);
    let callers: Option<(Hyphenated,)> =
        sqlx::query_as("select caller_id from caller where caller_id = ?1")
            .bind(caller_id)
            .fetch_optional(&mut *tx)
            .await?;
    let sessions: Vec<(Hyphenated, String, String)> = sqlx::query_as(
        "select session_id, platform, call_key from call_session where caller_id = ?1",
    )
    .bind(caller_id)
    .fetch_all(&mut *tx)
    .await?;
    let session_ids: Vec<Hyphenated> = sessions.iter().map(|s| s.0).collect();
    let ids = json_list(&session_ids);
    let mut counts = ErasureCounts {
        callers: u64::from(callers.is_some()),
        sessions: session_ids.len() as u64,
        ..ErasureCounts::default()
    };
    counts.turns =
        sqlx::query("delete from turn where session_id in (select value from json_each(?1))")
            .bind(&ids)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    counts.analyses =
        sqlx::query("delete from analysis where session_id in (select value from json_each(?1))")
            .bind(&ids)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    let events: Vec<(String,)> = sqlx::query_as(
        "delete from webhook_event \
         where exists (select 1 from call_session s \
                       where s.caller_id = ?1 and s.platform = webhook_event.platform \
                         and s.call_key = webhook_event.call_key) \
            or exists (select 1 from json_each(?2) n where instr(payload, n.value) > 0) \
         returning dedupe_key",
    )
    .bind(caller_id)
    .bind(&needles)
    .fetch_all(&mut *tx)
    .await?;
    counts.webhook_events = events.len() as u64;
    let mut job_keys: Vec<String> = events.iter().map(|(k,)| format!("job:{k}")).collect();
    job_keys.extend(session_ids.iter().map(|id| format!("analyze:{id}")));
    counts.jobs = sqlx::query(
        "delete from job where dedupe_key in (select value from json_each(?1)) \
            or exists (select 1 from json_each(?2) n where instr(payload, n.value) > 0)",
    )
    .bind(json_list(&job_keys))
    .bind(&needles)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    counts.audit_scrubbed = sqlx::query(
        "update audit_log set details = '{}' \
         where (caller_id = ?1 or session_id in (select value from json_each(?2))) \
           and details <> '{}' and action <> 'erase'",
    )
    .bind(caller_id)
    .bind(&ids)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query("delete from call_session where session_id in (select value from json_each(?1))")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    sqlx::query("delete from caller where caller_id = ?1")
        .bind(caller_id)
        .execute(&mut *tx)
        .await?;
    let mut deleted: Vec<Uuid> = session_ids.iter().map(|id| id.into_uuid()).collect();
    deleted.push(erasure.caller_id);
    Ok((counts, deleted))
}
