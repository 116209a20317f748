//! Durable state: the [`Store`] trait, one trait per table, and the records they keep.
//!
//! Two backends implement it, each with its own migrations folder: Postgres for production (several
//! redial instances may share one database, so nothing here may rely on process-local state) and
//! SQLite, the embedded zero-setup default. Both are held to one conformance suite
//! (`tests/api/storage.rs`). The store saves values as given: callers mint ids and timestamps.
//! The one exception is text no store can hold (NUL), which both backends store as U+FFFD
//! ([`text`]).
//!
//! One trait per table, each declared in `storage/<file>` and implemented in
//! `storage/postgres/<file>` and `storage/sqlite/<file>`:
//!
//! | table | trait | file |
//! |---|---|---|
//! | `caller` | [`CallerStore`] | `callers.rs` |
//! | `call_session` | [`SessionStore`] | `sessions.rs` |
//! | `turn` | [`TurnStore`] | `turns.rs` |
//! | `webhook_event`, `job` | [`JobStore`] | `jobs.rs` |
//! | `analysis` | [`AnalysisStore`] | `analyses.rs` |
//! | `audit_log` | [`AuditStore`] | `audit.rs` |
//! | several (the operator's queries) | [`admin::AdminStore`] | `admin.rs` |
//!
//! [`Store`] is their supertrait plus the lifecycle (`backend`, `migrate`, `shared`, `ping`,
//! `close`), implemented in each backend's `mod.rs`. `Arc<dyn Store>` is what the rest of redial
//! holds, and every table trait's methods are callable on it without importing the trait (code
//! holding a concrete `SqliteStore` or `PostgresStore` imports the table traits it calls).
//!
//! # Adding a query
//!
//! A query touches three files: declare the method, with its contract as its doc comment, on
//! the trait of the table it reads or writes (`storage/<table>.rs`), and implement it in the
//! `impl <Table>Store for …` block of `postgres/<table>.rs` and of `sqlite/<table>.rs`, choosing
//! the pool there (a pure read on the hot path goes to the reader pool). Callers holding a
//! `dyn Store` see it at once; nothing forwards it. Add it to the conformance suite
//! (`tests/api/storage/<table>.rs`, run on both backends). Only what production code calls
//! belongs on a trait: a read that only tests need lives in the tests' support
//! (`tests/api/support/inspect.rs`).

pub mod admin;
mod analyses;
mod audit;
mod batch;
pub(crate) use batch::complete_audit;
mod callers;
pub mod changes;
mod jobs;
mod postgres;
mod rows;
mod rules;
mod sessions;
mod sqlite;
pub mod text;
mod turns;
mod types;

use std::time::Duration;

use async_trait::async_trait;

use crate::platforms::Platform;
pub use analyses::AnalysisStore;
pub use audit::AuditStore;
pub use callers::CallerStore;
pub use jobs::JobStore;
pub use postgres::PostgresStore;
pub use sessions::SessionStore;
pub use sqlite::SqliteStore;
pub use turns::TurnStore;
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

/// Everything redial keeps durably: one trait per table, plus the store's lifecycle. Every method
/// is safe to call concurrently from several processes sharing one database; writes that carry an
/// idempotency or dedupe key may be repeated without effect.
///
/// The table traits' methods are callable on `dyn Store` (and any `T: Store`) without importing
/// them.
#[async_trait]
pub trait Store:
    admin::AdminStore
    + CallerStore
    + SessionStore
    + TurnStore
    + JobStore
    + AnalysisStore
    + AuditStore
    + Send
    + Sync
    + std::fmt::Debug
{
    /// `"postgres"` or `"sqlite"`.
    fn backend(&self) -> &'static str;

    /// Applies the backend's pending migrations. Idempotent.
    async fn migrate(&self) -> StoreResult<()>;

    /// Whether several redial processes may share this store (Postgres), as opposed to one
    /// process owning it (a SQLite file: one writer connection, one journal).
    fn shared(&self) -> bool {
        true
    }

    /// Starts reporting changed callers and sessions to `sink` (see [`changes`]); called once,
    /// at startup. The default cannot, so nothing read from the store is cached.
    fn watch_changes(&self, sink: changes::ChangeSink) -> changes::Watch {
        let _ = sink;
        changes::Watch::Unsupported
    }

    /// Cheap round trip proving the database answers (readiness).
    async fn ping(&self) -> StoreResult<()>;

    /// Closes the store's pools, waiting for checked-out connections to return.
    async fn close(&self);
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
