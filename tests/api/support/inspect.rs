//! What only tests need from a store, kept out of the production store traits (see "Adding a
//! query" in `redial::storage`): reads of records production never reads back (a caller by id,
//! a job, the audit trail), straight from the test database with plain SQL on either backend,
//! and two shorthands for production writes (`create_session`, `save_turn`).
//!
//! The reads decode the columns here, independently of the backends' own row decoding, so a
//! test reading back what a store wrote checks the stored columns themselves.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redial::storage::{
    AuditEntry, CallSession, CallStart, Caller, Job, NewAudit, NewSession, NewTurn, Store,
    StoreError, StoreResult, TurnWrite,
};
use sqlx::{Connection, FromRow, PgConnection, SqliteConnection};
use uuid::Uuid;

use super::db;

/// Test-only reads and shorthands on any store opened by [`db::TestDb`].
#[async_trait]
pub trait Inspect {
    /// The caller with this id.
    async fn get_caller(&self, caller_id: Uuid) -> StoreResult<Option<Caller>>;

    /// The job with this id.
    async fn get_job(&self, job_id: Uuid) -> StoreResult<Option<Job>>;

    /// A caller's audit trail, newest first, at most `limit` entries.
    async fn list_audit(&self, caller_id: Uuid, limit: i64) -> StoreResult<Vec<AuditEntry>>;

    /// Creates the session unless one is stored for its call: `start_call` with no phone and
    /// nothing to close. Returns the stored session and whether this call created it.
    async fn create_session(&self, new: &NewSession) -> StoreResult<(CallSession, bool)>;

    /// Saves one session's turn: `save_turns` with a batch of one; an unknown session is
    /// `NotFound`.
    async fn save_turn(
        &self,
        session_id: Uuid,
        turns: &[NewTurn],
        model: Option<&str>,
        audit: &[NewAudit],
    ) -> StoreResult<u64>;
}

const CALLER_COLUMNS: &str = "caller_id, phone, name, language, notes, last_summary, \
     last_sentiment, last_action, last_call_at, call_count, first_seen_at, last_seen_at, \
     updated_at";
const JOB_COLUMNS: &str = "job_id, kind, dedupe_key, payload, status, attempts, max_attempts, \
     run_at, locked_by, locked_until, last_error, created_at, updated_at";
const AUDIT_COLUMNS: &str =
    "audit_id, caller_id, session_id, actor, action, reason, details, created_at";

#[async_trait]
impl Inspect for dyn Store + '_ {
    async fn get_caller(&self, caller_id: Uuid) -> StoreResult<Option<Caller>> {
        let sql = format!("select {CALLER_COLUMNS} from caller where caller_id = $1");
        match connect(self).await? {
            Db::Postgres(mut conn) => {
                let row: Option<CallerRow<Uuid, DateTime<Utc>>> = sqlx::query_as(&sql)
                    .bind(caller_id)
                    .fetch_optional(&mut conn)
                    .await?;
                conn.close().await?;
                row.map(CallerRow::into_caller).transpose()
            }
            Db::Sqlite(mut conn) => {
                let row: Option<CallerRow<String, i64>> = sqlx::query_as(&sql)
                    .bind(caller_id.hyphenated().to_string())
                    .fetch_optional(&mut conn)
                    .await?;
                conn.close().await?;
                row.map(CallerRow::into_caller).transpose()
            }
        }
    }

    async fn get_job(&self, job_id: Uuid) -> StoreResult<Option<Job>> {
        let sql = format!("select {JOB_COLUMNS} from job where job_id = $1");
        match connect(self).await? {
            Db::Postgres(mut conn) => {
                let row: Option<JobRow<Uuid, DateTime<Utc>>> = sqlx::query_as(&sql)
                    .bind(job_id)
                    .fetch_optional(&mut conn)
                    .await?;
                conn.close().await?;
                row.map(JobRow::into_job).transpose()
            }
            Db::Sqlite(mut conn) => {
                let row: Option<JobRow<String, i64>> = sqlx::query_as(&sql)
                    .bind(job_id.hyphenated().to_string())
                    .fetch_optional(&mut conn)
                    .await?;
                conn.close().await?;
                row.map(JobRow::into_job).transpose()
            }
        }
    }

    async fn list_audit(&self, caller_id: Uuid, limit: i64) -> StoreResult<Vec<AuditEntry>> {
        let sql = format!(
            "select {AUDIT_COLUMNS} from audit_log where caller_id = $1 \
             order by created_at desc, audit_id desc limit $2"
        );
        match connect(self).await? {
            Db::Postgres(mut conn) => {
                let rows: Vec<AuditRow<Uuid, DateTime<Utc>>> = sqlx::query_as(&sql)
                    .bind(caller_id)
                    .bind(limit)
                    .fetch_all(&mut conn)
                    .await?;
                conn.close().await?;
                rows.into_iter().map(AuditRow::into_entry).collect()
            }
            Db::Sqlite(mut conn) => {
                let rows: Vec<AuditRow<String, i64>> = sqlx::query_as(&sql)
                    .bind(caller_id.hyphenated().to_string())
                    .bind(limit)
                    .fetch_all(&mut conn)
                    .await?;
                conn.close().await?;
                rows.into_iter().map(AuditRow::into_entry).collect()
            }
        }
    }

    async fn create_session(&self, new: &NewSession) -> StoreResult<(CallSession, bool)> {
        let start = CallStart {
            session: new.clone(),
            phone: None,
            close_previous: None,
            now: new.started_at,
        };
        let started = self.start_call(&start).await?;
        Ok((started.session, started.created))
    }

    async fn save_turn(
        &self,
        session_id: Uuid,
        turns: &[NewTurn],
        model: Option<&str>,
        audit: &[NewAudit],
    ) -> StoreResult<u64> {
        let write = TurnWrite {
            session_id,
            turns: turns.to_vec(),
            model: model.map(str::to_owned),
            audit: audit.to_vec(),
            usage: Vec::new(),
            start: None,
        };
        match self
            .save_turns(std::slice::from_ref(&write))
            .await?
            .as_slice()
        {
            [Some(inserted)] => Ok(*inserted),
            [None] => Err(StoreError::NotFound),
            other => panic!("save_turns answered {other:?} for a batch of one"),
        }
    }
}

/// A connection of its own to the database behind a test store.
enum Db {
    Postgres(PgConnection),
    Sqlite(SqliteConnection),
}

async fn connect(store: &dyn Store) -> StoreResult<Db> {
    let url = db::url_of(store);
    Ok(match store.backend() {
        "postgres" => Db::Postgres(PgConnection::connect(&url).await?),
        _ => Db::Sqlite(SqliteConnection::connect(&url).await?),
    })
}

/// An id as a backend stores it: Postgres `uuid`, SQLite hyphenated text.
trait StoredId {
    fn uuid(self) -> StoreResult<Uuid>;
}

impl StoredId for Uuid {
    fn uuid(self) -> StoreResult<Uuid> {
        Ok(self)
    }
}

impl StoredId for String {
    fn uuid(self) -> StoreResult<Uuid> {
        self.parse()
            .map_err(|e| StoreError::Corrupt(format!("id {self:?}: {e}")))
    }
}

/// A time as a backend stores it: Postgres `timestamptz`, SQLite unix milliseconds.
trait StoredTime {
    fn utc(self) -> StoreResult<DateTime<Utc>>;
}

impl StoredTime for DateTime<Utc> {
    fn utc(self) -> StoreResult<DateTime<Utc>> {
        Ok(self)
    }
}

impl StoredTime for i64 {
    fn utc(self) -> StoreResult<DateTime<Utc>> {
        DateTime::from_timestamp_millis(self)
            .ok_or_else(|| StoreError::Corrupt(format!("time {self} ms")))
    }
}

fn opt_utc<T: StoredTime>(time: Option<T>) -> StoreResult<Option<DateTime<Utc>>> {
    time.map(StoredTime::utc).transpose()
}

fn opt_uuid<I: StoredId>(id: Option<I>) -> StoreResult<Option<Uuid>> {
    id.map(StoredId::uuid).transpose()
}

#[derive(FromRow)]
struct CallerRow<I, T> {
    caller_id: I,
    phone: String,
    name: Option<String>,
    language: Option<String>,
    notes: serde_json::Value,
    last_summary: Option<String>,
    last_sentiment: Option<String>,
    last_action: Option<String>,
    last_call_at: Option<T>,
    call_count: i64,
    first_seen_at: T,
    last_seen_at: T,
    updated_at: T,
}

impl<I: StoredId, T: StoredTime> CallerRow<I, T> {
    fn into_caller(self) -> StoreResult<Caller> {
        Ok(Caller {
            caller_id: self.caller_id.uuid()?,
            phone: self.phone,
            name: self.name,
            language: self.language,
            notes: serde_json::from_value(self.notes)
                .map_err(|e| StoreError::Corrupt(format!("caller.notes: {e}")))?,
            last_summary: self.last_summary,
            last_sentiment: self.last_sentiment,
            last_action: self.last_action,
            last_call_at: opt_utc(self.last_call_at)?,
            call_count: self.call_count,
            first_seen_at: self.first_seen_at.utc()?,
            last_seen_at: self.last_seen_at.utc()?,
            updated_at: self.updated_at.utc()?,
        })
    }
}

#[derive(FromRow)]
struct JobRow<I, T> {
    job_id: I,
    kind: String,
    dedupe_key: String,
    payload: serde_json::Value,
    status: String,
    attempts: i32,
    max_attempts: i32,
    run_at: T,
    locked_by: Option<String>,
    locked_until: Option<T>,
    last_error: Option<String>,
    created_at: T,
    updated_at: T,
}

impl<I: StoredId, T: StoredTime> JobRow<I, T> {
    fn into_job(self) -> StoreResult<Job> {
        Ok(Job {
            job_id: self.job_id.uuid()?,
            kind: self.kind,
            dedupe_key: self.dedupe_key,
            payload: self.payload,
            status: self.status.parse()?,
            attempts: self.attempts,
            max_attempts: self.max_attempts,
            run_at: self.run_at.utc()?,
            locked_by: self.locked_by,
            locked_until: opt_utc(self.locked_until)?,
            last_error: self.last_error,
            created_at: self.created_at.utc()?,
            updated_at: self.updated_at.utc()?,
        })
    }
}

#[derive(FromRow)]
struct AuditRow<I, T> {
    audit_id: i64,
    caller_id: Option<I>,
    session_id: Option<I>,
    actor: String,
    action: String,
    reason: String,
    details: serde_json::Value,
    created_at: T,
}

impl<I: StoredId, T: StoredTime> AuditRow<I, T> {
    fn into_entry(self) -> StoreResult<AuditEntry> {
        Ok(AuditEntry {
            audit_id: self.audit_id,
            caller_id: opt_uuid(self.caller_id)?,
            session_id: opt_uuid(self.session_id)?,
            actor: self.actor.into(),
            action: self.action.into(),
            reason: self.reason,
            details: self.details,
            created_at: self.created_at.utc()?,
        })
    }
}
