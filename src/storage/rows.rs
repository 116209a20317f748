//! Row shapes shared by both backends and their conversion into records.
//!
//! The two schemas use the same column names; only the column types differ. Each row struct is
//! generic over how the backend encodes an id (`I`: Postgres `uuid`, SQLite hyphenated text) and a
//! time (`T`: Postgres `timestamptz`, SQLite unix milliseconds), so one conversion serves both.
//! JSON columns decode to `serde_json::Value` on both (jsonb and JSON text alike).

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use uuid::Uuid;
use uuid::fmt::Hyphenated;

use super::{Analysis, CallSession, Caller, Job, StoreError, StoreResult, Turn, TurnRole};

/// The caller columns, in [`CallerRow`] order.
macro_rules! caller_columns {
    () => {
        "caller_id, phone, name, language, notes, last_summary, last_sentiment, last_action, \
         last_call_at, call_count, first_seen_at, last_seen_at, updated_at"
    };
}

/// The call session columns, in [`SessionRow`] order.
macro_rules! session_columns {
    () => {
        "session_id, platform, call_key, caller_id, assistant_id, status, attempt, \
         resumes_session_id, answers, prior_calls, prior_call_at, model, ended_reason, details, \
         started_at, last_activity_at, ended_at, version"
    };
}

/// The job columns, in [`JobRow`] order.
macro_rules! job_columns {
    () => {
        "job_id, kind, dedupe_key, payload, status, attempts, max_attempts, run_at, locked_by, \
         locked_until, last_error, created_at, updated_at"
    };
}

/// Selects sessions left-joined with their caller, as [`SessionWithCallerRow`] reads them.
macro_rules! select_session_with_caller {
    () => {
        "select s.session_id, s.platform, s.call_key, s.caller_id, s.assistant_id, s.status, \
         s.attempt, s.resumes_session_id, s.answers, s.prior_calls, s.prior_call_at, s.model, \
         s.ended_reason, s.details, s.started_at, s.last_activity_at, s.ended_at, s.version, \
         c.caller_id as c_caller_id, c.phone as c_phone, c.name as c_name, \
         c.language as c_language, c.notes as c_notes, c.last_summary as c_last_summary, \
         c.last_sentiment as c_last_sentiment, c.last_action as c_last_action, \
         c.last_call_at as c_last_call_at, c.call_count as c_call_count, \
         c.first_seen_at as c_first_seen_at, c.last_seen_at as c_last_seen_at, \
         c.updated_at as c_updated_at \
         from call_session s left join caller c on c.caller_id = s.caller_id"
    };
}

pub(crate) use {caller_columns, job_columns, select_session_with_caller, session_columns};

/// How a backend stores a UUID.
pub(crate) trait DbId {
    /// The UUID.
    fn into_uuid(self) -> Uuid;
}

impl DbId for Uuid {
    fn into_uuid(self) -> Uuid {
        self
    }
}

impl DbId for Hyphenated {
    fn into_uuid(self) -> Uuid {
        Hyphenated::into_uuid(self)
    }
}

/// How a backend stores a point in time.
pub(crate) trait DbTime {
    /// The instant, or `Corrupt` when the stored value is out of range.
    fn into_utc(self) -> StoreResult<DateTime<Utc>>;
}

impl DbTime for DateTime<Utc> {
    fn into_utc(self) -> StoreResult<DateTime<Utc>> {
        Ok(self)
    }
}

/// Unix milliseconds (SQLite).
impl DbTime for i64 {
    fn into_utc(self) -> StoreResult<DateTime<Utc>> {
        DateTime::from_timestamp_millis(self)
            .ok_or_else(|| StoreError::Corrupt(format!("timestamp {self} ms is out of range")))
    }
}

fn opt_time<T: DbTime>(value: Option<T>) -> StoreResult<Option<DateTime<Utc>>> {
    value.map(DbTime::into_utc).transpose()
}

fn from_json<V: DeserializeOwned>(column: &str, value: serde_json::Value) -> StoreResult<V> {
    serde_json::from_value(value).map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

/// A stored foreign-key violation means the referenced row is missing: report `NotFound`.
pub(crate) fn missing_parent(error: sqlx::Error) -> StoreError {
    match &error {
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => StoreError::NotFound,
        _ => StoreError::Database(error),
    }
}

/// A `caller` row.
#[derive(sqlx::FromRow)]
pub(crate) struct CallerRow<I, T> {
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

impl<I: DbId, T: DbTime> TryFrom<CallerRow<I, T>> for Caller {
    type Error = StoreError;

    fn try_from(row: CallerRow<I, T>) -> StoreResult<Self> {
        Ok(Self {
            caller_id: row.caller_id.into_uuid(),
            phone: row.phone,
            name: row.name,
            language: row.language,
            notes: from_json("caller.notes", row.notes)?,
            last_summary: row.last_summary,
            last_sentiment: row.last_sentiment,
            last_action: row.last_action,
            last_call_at: opt_time(row.last_call_at)?,
            call_count: row.call_count,
            first_seen_at: row.first_seen_at.into_utc()?,
            last_seen_at: row.last_seen_at.into_utc()?,
            updated_at: row.updated_at.into_utc()?,
        })
    }
}

/// A `call_session` row.
#[derive(sqlx::FromRow)]
pub(crate) struct SessionRow<I, T> {
    session_id: I,
    platform: String,
    call_key: String,
    caller_id: Option<I>,
    assistant_id: String,
    status: String,
    attempt: i32,
    resumes_session_id: Option<I>,
    answers: serde_json::Value,
    prior_calls: i64,
    prior_call_at: Option<T>,
    model: Option<String>,
    ended_reason: Option<String>,
    details: serde_json::Value,
    started_at: T,
    last_activity_at: T,
    ended_at: Option<T>,
    version: i64,
}

impl<I: DbId, T: DbTime> TryFrom<SessionRow<I, T>> for CallSession {
    type Error = StoreError;

    fn try_from(row: SessionRow<I, T>) -> StoreResult<Self> {
        Ok(Self {
            session_id: row.session_id.into_uuid(),
            platform: row.platform.parse()?,
            call_key: row.call_key,
            caller_id: row.caller_id.map(DbId::into_uuid),
            assistant_id: row.assistant_id,
            status: row.status.parse()?,
            attempt: row.attempt,
            resumes_session_id: row.resumes_session_id.map(DbId::into_uuid),
            answers: from_json("call_session.answers", row.answers)?,
            prior_calls: row.prior_calls,
            prior_call_at: opt_time(row.prior_call_at)?,
            model: row.model,
            ended_reason: row.ended_reason,
            details: row.details,
            started_at: row.started_at.into_utc()?,
            last_activity_at: row.last_activity_at.into_utc()?,
            ended_at: opt_time(row.ended_at)?,
            version: row.version,
        })
    }
}

/// A session joined with its caller's columns, prefixed `c_` and all nullable (left join).
#[derive(sqlx::FromRow)]
pub(crate) struct SessionWithCallerRow<I, T> {
    #[sqlx(flatten)]
    session: SessionRow<I, T>,
    c_caller_id: Option<I>,
    c_phone: Option<String>,
    c_name: Option<String>,
    c_language: Option<String>,
    c_notes: Option<serde_json::Value>,
    c_last_summary: Option<String>,
    c_last_sentiment: Option<String>,
    c_last_action: Option<String>,
    c_last_call_at: Option<T>,
    c_call_count: Option<i64>,
    c_first_seen_at: Option<T>,
    c_last_seen_at: Option<T>,
    c_updated_at: Option<T>,
}

impl<I: DbId, T: DbTime> SessionWithCallerRow<I, T> {
    /// The session and, when the join found one, its caller.
    pub(crate) fn into_records(self) -> StoreResult<(CallSession, Option<Caller>)> {
        let session = CallSession::try_from(self.session)?;
        let Some(caller_id) = self.c_caller_id else {
            return Ok((session, None));
        };
        let missing = || StoreError::Corrupt("caller row with null columns".into());
        let caller = CallerRow {
            caller_id,
            phone: self.c_phone.ok_or_else(missing)?,
            name: self.c_name,
            language: self.c_language,
            notes: self.c_notes.ok_or_else(missing)?,
            last_summary: self.c_last_summary,
            last_sentiment: self.c_last_sentiment,
            last_action: self.c_last_action,
            last_call_at: self.c_last_call_at,
            call_count: self.c_call_count.ok_or_else(missing)?,
            first_seen_at: self.c_first_seen_at.ok_or_else(missing)?,
            last_seen_at: self.c_last_seen_at.ok_or_else(missing)?,
            updated_at: self.c_updated_at.ok_or_else(missing)?,
        };
        Ok((session, Some(Caller::try_from(caller)?)))
    }
}

/// A `turn` row.
#[derive(sqlx::FromRow)]
pub(crate) struct TurnRow<I, T> {
    seq: i64,
    session_id: I,
    idempotency_key: String,
    role: String,
    content: String,
    tool_name: Option<String>,
    tool_call_id: Option<String>,
    partial: bool,
    created_at: T,
}

impl<I: DbId, T: DbTime> TryFrom<TurnRow<I, T>> for Turn {
    type Error = StoreError;

    fn try_from(row: TurnRow<I, T>) -> StoreResult<Self> {
        Ok(Self {
            seq: row.seq,
            session_id: row.session_id.into_uuid(),
            idempotency_key: row.idempotency_key,
            role: row.role.parse::<TurnRole>()?,
            content: row.content,
            tool_name: row.tool_name,
            tool_call_id: row.tool_call_id,
            partial: row.partial,
            created_at: row.created_at.into_utc()?,
        })
    }
}

/// A `job` row.
#[derive(sqlx::FromRow)]
pub(crate) struct JobRow<I, T> {
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

impl<I: DbId, T: DbTime> TryFrom<JobRow<I, T>> for Job {
    type Error = StoreError;

    fn try_from(row: JobRow<I, T>) -> StoreResult<Self> {
        Ok(Self {
            job_id: row.job_id.into_uuid(),
            kind: row.kind,
            dedupe_key: row.dedupe_key,
            payload: row.payload,
            status: row.status.parse()?,
            attempts: row.attempts,
            max_attempts: row.max_attempts,
            run_at: row.run_at.into_utc()?,
            locked_by: row.locked_by,
            locked_until: opt_time(row.locked_until)?,
            last_error: row.last_error,
            created_at: row.created_at.into_utc()?,
            updated_at: row.updated_at.into_utc()?,
        })
    }
}

/// An `analysis` row.
#[derive(sqlx::FromRow)]
pub(crate) struct AnalysisRow<I, T> {
    analysis_id: I,
    session_id: I,
    source: String,
    summary: String,
    urgency: Option<i32>,
    action: Option<String>,
    sentiment: Option<String>,
    raw: serde_json::Value,
    model: Option<String>,
    created_at: T,
}

impl<I: DbId, T: DbTime> TryFrom<AnalysisRow<I, T>> for Analysis {
    type Error = StoreError;

    fn try_from(row: AnalysisRow<I, T>) -> StoreResult<Self> {
        Ok(Self {
            analysis_id: row.analysis_id.into_uuid(),
            session_id: row.session_id.into_uuid(),
            source: row.source.into(),
            summary: row.summary,
            urgency: row.urgency,
            action: row.action,
            sentiment: row.sentiment,
            raw: row.raw,
            model: row.model,
            created_at: row.created_at.into_utc()?,
        })
    }
}

/// Converts every row, failing on the first corrupt one.
pub(crate) fn convert_all<R, V>(rows: Vec<R>) -> StoreResult<Vec<V>>
where
    V: TryFrom<R, Error = StoreError>,
{
    rows.into_iter().map(V::try_from).collect()
}
