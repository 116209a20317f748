//! Durable state: the [`Store`] trait and the records it keeps.
//!
//! Two backends implement it, each with its own migrations folder: Postgres for production (several
//! redial instances may share one database, so nothing here may rely on process-local state) and
//! SQLite, the embedded zero-setup default. Both are held to one conformance suite
//! (`tests/api/storage.rs`). The store saves values as given: callers mint ids and timestamps.
//! The one exception is text no store can hold (NUL), which both backends store as U+FFFD
//! ([`text`]).

mod batch;
mod postgres;
mod rows;
mod rules;
mod sqlite;
pub mod text;
mod types;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::platforms::Platform;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
pub use types::*;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The record asked for does not exist.
    #[error("record not found")]
    NotFound,
    /// The write conflicts with what is stored (e.g. a stale version).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database URL is not one redial can use.
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
    /// A stored value could not be decoded into its record type.
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
    /// The database failed or could not be reached.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database did not answer within the write budget (`database.write_timeout_ms`).
    #[error("the database did not answer within {0:?}")]
    Timeout(Duration),
}

/// Result alias for the storage layer.
pub type StoreResult<T> = Result<T, StoreError>;

/// How to open a store.
///
/// Each backend keeps reads apart from writes so that a backlog of writes never makes the
/// per-turn read wait for a connection:
/// - SQLite (a file): one writer connection, through which every write goes (writers queue in
///   the pool rather than on the database's busy timeout), and `max_connections` query-only
///   reader connections for the pure reads. `sqlite::memory:` has a single connection for both.
/// - Postgres: the main pool of `max_connections` for writes and most reads, plus a small reader
///   pool of `max(2, max_connections / 4)` read-only connections for the per-turn reads
///   (`load_call`, `get_session`, `get_caller_by_phone`, `find_resumable`).
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Largest number of pooled connections: SQLite's reader pool, Postgres' main pool (see the
    /// type's documentation for the connections added to it).
    pub max_connections: u32,
    /// How long to wait for a connection before failing.
    pub connect_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Opens the store the URL's scheme names (`postgres://`, `postgresql://` or `sqlite:`), without
/// applying migrations. A SQLite file is created when missing.
pub async fn connect(
    url: &str,
    options: &ConnectOptions,
) -> StoreResult<std::sync::Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(std::sync::Arc::new(
            PostgresStore::connect(url, options).await?,
        ))
    } else if url.starts_with("sqlite:") {
        Ok(std::sync::Arc::new(
            SqliteStore::connect(url, options).await?,
        ))
    } else {
        Err(StoreError::InvalidUrl(
            "the scheme must be postgres://, postgresql:// or sqlite:".into(),
        ))
    }
}

/// Everything redial keeps durably. Every method is safe to call concurrently from several
/// processes sharing one database; writes that carry an idempotency or dedupe key may be repeated
/// without effect.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// `"postgres"` or `"sqlite"`.
    fn backend(&self) -> &'static str;

    /// Applies the backend's pending migrations. Idempotent.
    async fn migrate(&self) -> StoreResult<()>;

    /// Whether several redial processes may share this store (Postgres), as opposed to one
    /// process owning it (a SQLite file: one writer connection, one journal).
    fn shared(&self) -> bool {
        true
    }

    /// Cheap round trip proving the database answers (readiness).
    async fn ping(&self) -> StoreResult<()>;

    /// Closes the store's pools, waiting for checked-out connections to return.
    async fn close(&self);

    // ---- callers ------------------------------------------------------------------------------

    /// Finds the caller with this E.164 number, creating it when new; `last_seen_at` becomes `now`.
    async fn upsert_caller(&self, phone: &str, now: DateTime<Utc>) -> StoreResult<Caller>;

    /// The caller with this id.
    async fn get_caller(&self, caller_id: Uuid) -> StoreResult<Option<Caller>>;

    /// The caller with this E.164 number.
    async fn get_caller_by_phone(&self, phone: &str) -> StoreResult<Option<Caller>>;

    /// Applies a profile change. A note already present is not added twice (idempotent).
    async fn update_caller(
        &self,
        caller_id: Uuid,
        patch: &CallerPatch,
        now: DateTime<Utc>,
    ) -> StoreResult<Caller>;

    // ---- call sessions ------------------------------------------------------------------------

    /// Creates the session for `(platform, call_key)` unless it exists. On creation with a caller,
    /// in the same transaction, snapshots the caller's previous `call_count` and `last_call_at`
    /// into the session (`prior_calls`, `prior_call_at`) and then counts this call on the caller
    /// (`call_count + 1`, `last_call_at = started_at`). Returns the stored session and whether
    /// this call created it.
    async fn create_session(&self, new: &NewSession) -> StoreResult<(CallSession, bool)>;

    /// A call's first write, in one transaction: upserts the caller with `phone` (when given;
    /// as [`Store::upsert_caller`]) and sets it on the new session, closes `close_previous`
    /// (as [`Store::close_session`]; one that no longer exists is skipped), and creates the
    /// session (as [`Store::create_session`]: a session already stored for the platform's call
    /// is kept and returned).
    async fn start_call(&self, start: &CallStart) -> StoreResult<StartedCall>;

    /// The session with this id.
    async fn get_session(&self, session_id: Uuid) -> StoreResult<Option<CallSession>>;

    /// The session of a platform's call, with its caller, in one round trip (the per-turn read).
    async fn load_call(
        &self,
        platform: Platform,
        call_key: &str,
    ) -> StoreResult<Option<(CallSession, Option<Caller>)>>;

    /// Names the caller of a session stored without one (a caller learnt after the call, e.g.
    /// from a post-call webhook), in one transaction: upserts the caller with `phone` (as
    /// [`Store::upsert_caller`]), sets it on the session with the caller's counts snapshotted,
    /// and counts the call on the caller (as [`Store::create_session`] does). A session that
    /// already has a caller is returned unchanged (idempotent). An unknown session is
    /// [`StoreError::NotFound`].
    async fn attach_caller(
        &self,
        session_id: Uuid,
        phone: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<CallSession>;

    /// The newest session of this caller with this assistant, started at or after
    /// `started_since`, that can be resumed: status `ended` or `dropped`, or `active` with
    /// `last_activity_at` before `stale_before` (no longer live; see `memory.live_window_secs`),
    /// and not already resumed by another session (a
    /// chain of attempts resumes from its newest link). `exclude` (the asking call) is never
    /// returned.
    async fn find_resumable(
        &self,
        caller_id: Uuid,
        assistant_id: &str,
        started_since: DateTime<Utc>,
        stale_before: DateTime<Utc>,
        exclude: Option<Uuid>,
    ) -> StoreResult<Option<CallSession>>;

    /// Confirms `field = value` on the session, atomically with respect to concurrent writers
    /// (version bump). When every name in `required` is then answered, the status becomes
    /// `completed`. Re-recording the same value changes nothing and reports `changed: false`.
    async fn record_answer(
        &self,
        session_id: Uuid,
        field: &str,
        value: &str,
        required: &[String],
        now: DateTime<Utc>,
    ) -> StoreResult<AnswerOutcome>;

    /// Marks the session's last activity and the model that served it: `last_activity_at`
    /// becomes `now` unless it is already later, `model` is replaced when given, and the
    /// version is bumped.
    async fn touch_session(
        &self,
        session_id: Uuid,
        model: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<()>;

    /// Closes a session from a call-ended signal: sets `ended_at`, the ended reason and merges
    /// `details` (platform data: cost, transcript, recordings…) into the stored details. A
    /// `completed` session keeps that status; any other becomes `status`. Closing twice keeps the
    /// first `ended_at`.
    async fn close_session(
        &self,
        session_id: Uuid,
        close: &CloseSession,
    ) -> StoreResult<CallSession>;

    // ---- turns --------------------------------------------------------------------------------

    /// Appends turns to a session's log in order. A turn whose `idempotency_key` is already
    /// stored for the session is skipped. Returns how many were inserted; when any was, the
    /// session's `last_activity_at` moves to the newest of them (never backwards) and its
    /// version is bumped. An unknown session is [`StoreError::NotFound`]. ([`Store::save_turn`]
    /// with no model and no audit.)
    async fn append_turns(&self, session_id: Uuid, turns: &[NewTurn]) -> StoreResult<u64> {
        self.save_turn(session_id, turns, None, &[]).await
    }

    /// Stores a finished turn in one transaction, all or nothing:
    /// - appends `turns` in order, skipping those whose `idempotency_key` is already stored for
    ///   the session;
    /// - when a turn was inserted or `model` is given, touches the session once (as
    ///   [`Store::touch_session`]): `last_activity_at` becomes the newest inserted turn's
    ///   `created_at` unless it is already later (never backwards; skipped turns do not move
    ///   it), `model` is replaced when given, and the version is bumped by one;
    /// - appends the `audit` entries (as [`Store::append_audit`]).
    ///
    /// Returns how many turns were inserted. An unknown session fails with
    /// [`StoreError::NotFound`] and stores nothing, audit entries included. Saving the same turn
    /// again inserts no turn, but audit entries have no dedupe key: they are appended again (a
    /// retried save records the access twice, which overstates rather than loses it).
    ///
    /// A batch of one for [`Store::save_turns`].
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
        };
        match self.save_turns(std::slice::from_ref(&write)).await?.first() {
            Some(Some(inserted)) => Ok(*inserted),
            _ => Err(StoreError::NotFound),
        }
    }

    /// Stores a batch of finished turns, of one session or many, in one transaction (group
    /// commit): each item as [`Store::save_turn`] describes, in batch order, so two items of
    /// one session behave as two saves one after the other (the session's version is bumped
    /// once per item that touches it, the last given model wins, turns keep batch order).
    ///
    /// Returns, per item, how many of its turns were inserted, or `None` when its session does
    /// not exist (nothing of that item is stored, audit entries included; the other items are).
    /// Any other failure stores nothing of the batch. Postgres locks the batch's sessions in id
    /// order, so concurrent batches of several instances cannot deadlock one another.
    async fn save_turns(&self, batch: &[TurnWrite]) -> StoreResult<Vec<Option<u64>>>;

    /// The session's turns, oldest first: by `created_at` (when each was said, so a turn
    /// written late — replayed from the outage journal, or persisted after a slower earlier
    /// one — still takes its place), then in the order they were stored.
    async fn list_turns(&self, session_id: Uuid) -> StoreResult<Vec<Turn>>;

    // ---- webhooks and jobs --------------------------------------------------------------------

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
    /// `retry_at` is `None`. Fenced like [`Store::complete_job`].
    async fn fail_job(
        &self,
        lease: &JobLease,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> StoreResult<()>;

    /// Parks a job that failed on configuration: `waiting`, with `reason` as its last error,
    /// until [`Store::release_waiting_jobs`]. The attempt does not count against the job (its
    /// `max_attempts` grows by one; `attempts` never goes back, so leases stay fenced). Fenced
    /// like [`Store::complete_job`].
    async fn wait_job(&self, lease: &JobLease, reason: &str, now: DateTime<Utc>)
    -> StoreResult<()>;

    /// Queues every `waiting` job to run now (at a start, when the configuration may have
    /// changed); returns how many.
    async fn release_waiting_jobs(&self, now: DateTime<Utc>) -> StoreResult<u64>;

    /// The job with this id.
    async fn get_job(&self, job_id: Uuid) -> StoreResult<Option<Job>>;

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

    // ---- analyses -----------------------------------------------------------------------------

    /// Stores an analysis once per `(session_id, source)`. When new and `caller_update` is given,
    /// updates that caller's last summary, sentiment and open action in the same transaction.
    async fn save_analysis(
        &self,
        analysis: &NewAnalysis,
        caller_update: Option<&CallerAnalysisUpdate>,
    ) -> StoreResult<Recorded>;

    /// A session's analyses, oldest first.
    async fn list_analyses(&self, session_id: Uuid) -> StoreResult<Vec<Analysis>>;

    // ---- audit --------------------------------------------------------------------------------

    /// Appends audit entries.
    async fn append_audit(&self, entries: &[NewAudit]) -> StoreResult<()>;

    /// A caller's audit trail, newest first, at most `limit` entries.
    async fn list_audit(&self, caller_id: Uuid, limit: i64) -> StoreResult<Vec<AuditEntry>>;
}

impl StoreError {
    /// Whether the database is away or temporarily unable rather than the write being wrong:
    /// the same write may succeed later unchanged (an outage journal keeps it for a retry).
    ///
    /// True for a write that did not finish within its budget ([`StoreError::Timeout`]), for
    /// connection-level failures (I/O, TLS, a broken protocol exchange, no pooled connection in
    /// time, a closed pool, a crashed SQLite worker), for Postgres SQLSTATE class 08 (connection exception),
    /// class 53 (insufficient resources), 57P01–57P03 (shutdown, cannot connect now), 40001 and
    /// 40P01 (serialization failure, deadlock), and for SQLite's busy, locked, full, I/O error,
    /// cannot-open and protocol result codes (extended codes included). False for everything
    /// the write itself is to blame for or that a retry cannot fix: constraint violations, bad
    /// input, [`StoreError::NotFound`], [`StoreError::Conflict`], [`StoreError::Corrupt`],
    /// invalid URLs and migrations.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Database(e) => transient_sqlx(e),
            Self::Timeout(_) => true,
            Self::NotFound
            | Self::Conflict(_)
            | Self::InvalidUrl(_)
            | Self::Corrupt(_)
            | Self::Migrate(_) => false,
        }
    }
}

/// [`StoreError::is_transient`] of a sqlx error.
fn transient_sqlx(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        // The conversation with the server broke (e.g. a connection closed during the TLS or
        // startup exchange reads as an "unexpected response"): an outage, not bad data.
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                transient_sqlstate(pg.code())
            } else if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // sqlx gives SQLite's extended result code, in decimal.
                db.code()
                    .and_then(|code| code.parse().ok())
                    .is_some_and(transient_sqlite_code)
            } else {
                false
            }
        }
        _ => false,
    }
}

/// Postgres SQLSTATEs meaning the server is away or temporarily unable.
fn transient_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(code, "57P01" | "57P02" | "57P03" | "40001" | "40P01")
}

/// SQLite result codes meaning the file is busy or temporarily unwritable. `code` may be an
/// extended result code: its low byte is the primary code.
fn transient_sqlite_code(code: i32) -> bool {
    const BUSY: i32 = 5;
    const LOCKED: i32 = 6;
    const IOERR: i32 = 10;
    const FULL: i32 = 13;
    const CANTOPEN: i32 = 14;
    const PROTOCOL: i32 = 15;
    matches!(
        code & 0xff,
        BUSY | LOCKED | IOERR | FULL | CANTOPEN | PROTOCOL
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_level_failures_are_transient() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        for error in [
            sqlx::Error::Io(io),
            sqlx::Error::Tls("handshake".into()),
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::WorkerCrashed,
            sqlx::Error::Protocol("unexpected response from SSLRequest: 0x00".into()),
        ] {
            let error = StoreError::Database(error);
            assert!(error.is_transient(), "{error}");
        }
    }

    #[test]
    fn errors_of_the_write_or_the_data_are_not_transient() {
        for error in [
            StoreError::NotFound,
            StoreError::Conflict("stale".into()),
            StoreError::Corrupt("bad json".into()),
            StoreError::InvalidUrl("mysql:".into()),
            StoreError::Database(sqlx::Error::RowNotFound),
            StoreError::Database(sqlx::Error::ColumnNotFound("x".into())),
            StoreError::Database(sqlx::Error::Decode("bad".into())),
            StoreError::Database(sqlx::Error::InvalidSavePointStatement),
        ] {
            assert!(!error.is_transient(), "{error}");
        }
    }

    #[test]
    fn postgres_sqlstates_of_an_away_or_overloaded_server_are_transient() {
        for code in [
            "08000", "08003", "08006", "08001", "08004", "57P01", "57P02", "57P03", "53000",
            "53100", "53200", "53300", "40001", "40P01",
        ] {
            assert!(transient_sqlstate(code), "{code}");
        }
        // Constraint violations, bad input, query cancelled, undefined table, syntax.
        for code in [
            "23505", "23503", "23502", "22P02", "22001", "57014", "42P01", "42601", "40000",
        ] {
            assert!(!transient_sqlstate(code), "{code}");
        }
    }

    #[test]
    fn sqlite_codes_of_a_busy_or_unwritable_file_are_transient_extended_ones_included() {
        // BUSY, LOCKED, IOERR, FULL, CANTOPEN, PROTOCOL; BUSY_SNAPSHOT, LOCKED_SHAREDCACHE,
        // IOERR_WRITE, IOERR_FSYNC, IOERR_SHMOPEN, CANTOPEN_NOTEMPDIR.
        for code in [5, 6, 10, 13, 14, 15, 517, 262, 778, 1034, 4618, 270] {
            assert!(transient_sqlite_code(code), "{code}");
        }
        // ERROR, CONSTRAINT_UNIQUE, CONSTRAINT_FOREIGNKEY, CONSTRAINT_NOTNULL, CORRUPT,
        // MISMATCH, TOOBIG, READONLY.
        for code in [1, 2067, 787, 1299, 11, 20, 18, 8] {
            assert!(!transient_sqlite_code(code), "{code}");
        }
    }
}
