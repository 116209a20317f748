//! The SQLite store: the embedded zero-setup default (`sqlite://redial.db`, created when missing).
//!
//! Times are stored as unix milliseconds, ids as hyphenated text and JSON as text.
//!
//! The database runs in WAL mode, where readers never wait for the writer, and the store keeps
//! two pools over the file so that they never wait for a connection held by one either:
//! - the **writer**, exactly one connection: every write goes through it, so concurrent writes
//!   of this process queue in the pool (asynchronously, first come first served) instead of
//!   holding several connections that spin on `busy_timeout` for the one write lock;
//! - the **readers**, `max_connections` query-only connections (`PRAGMA query_only`), serving
//!   every pure read: `load_call`, the `get_*` and `list_*` methods, `find_resumable`, `ping`.
//!
//! Every multi-statement write starts with `begin immediate`, taking the write lock up front, so
//! it waits on `busy_timeout` for a writer of another process instead of failing when a read
//! lock cannot be upgraded. `sqlite::memory:` keeps one connection serving both roles: the
//! database lives only as long as that connection.

mod admin;
mod analyses;
mod audit;
mod callers;
mod jobs;
mod sessions;
mod turns;

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnectionMetadata;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, Sqlite, SqliteConnection, Transaction};
use uuid::Uuid;
use uuid::fmt::Hyphenated;

use super::changes::{Change, ChangeSink, Changes, Watch};
use super::rows;
use super::{ConnectOptions, Store, StoreError, StoreResult};

/// The SQLite migrations, embedded at build time.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a connection waits for the write lock before failing with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

type CallerRow = rows::CallerRow<Hyphenated, i64>;
type SessionRow = rows::SessionRow<Hyphenated, i64>;
type SessionWithCallerRow = rows::SessionWithCallerRow<Hyphenated, i64>;
type TurnRow = rows::TurnRow<Hyphenated, i64>;
type JobRow = rows::JobRow<Hyphenated, i64>;
type AnalysisRow = rows::AnalysisRow<Hyphenated, i64>;

/// A UUID as stored: hyphenated text.
fn id(uuid: Uuid) -> Hyphenated {
    uuid.hyphenated()
}

/// An instant as stored: unix milliseconds.
fn ms(time: DateTime<Utc>) -> i64 {
    time.timestamp_millis()
}

/// `time` at the stored precision, so a record returned by a write equals the one read back.
fn truncate_ms(time: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms(time)).unwrap_or(time)
}

/// Starts a write transaction holding the database's write lock from its first statement.
async fn begin_write(pool: &SqlitePool) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
    pool.begin_with("begin immediate").await
}

/// The writer's `after_release` hook: a connection that sqlx still counts inside a transaction
/// is closed rather than reused (the pool opens a fresh one for the next write).
///
/// When SQLite fails a statement or a COMMIT with `SQLITE_FULL` or `SQLITE_IOERR`, it may roll
/// the transaction back by itself. The dropped `Transaction` then queues sqlx's ROLLBACK, which
/// fails ("cannot rollback - no transaction is active"), and sqlx only lowers its transaction
/// depth when that ROLLBACK succeeds: the connection would stay at depth 1 for good, failing
/// every later `begin immediate` with "attempted to call begin_with at non-zero transaction
/// depth", long after the disk has space again. Nothing public resets the depth, so the
/// connection goes.
fn discard_if_in_transaction(
    conn: &mut SqliteConnection,
    _meta: PoolConnectionMetadata,
) -> BoxFuture<'_, Result<bool, sqlx::Error>> {
    Box::pin(async move {
        if conn.is_in_transaction() {
            // The dropped transaction's ROLLBACK is queued on the connection's worker thread
            // ahead of this ping: once it answers, the depth is final.
            conn.ping().await?;
        }
        if conn.is_in_transaction() {
            tracing::warn!(
                backend = "sqlite",
                "closing the writer connection: a failed transaction left it unusable"
            );
            return Ok(false);
        }
        Ok(true)
    })
}

/// SQLite implementation of [`Store`].
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// The single writer connection (also the reader for an in-memory database).
    writer: SqlitePool,
    /// Query-only connections for the pure reads.
    reader: SqlitePool,
    /// Where this store reports its changes to callers and sessions (it is their only writer).
    changes: Changes,
}

impl SqliteStore {
    /// Opens the pools to `url` without migrating: `sqlite://redial.db` or `sqlite:redial.db`
    /// (relative), `sqlite:///abs/path.db`, or `sqlite::memory:` (one connection holding a private
    /// in-memory database for the store's lifetime, serving reads and writes). The file is
    /// created when missing.
    #[tracing::instrument(name = "store.connect", skip_all, fields(backend = "sqlite"))]
    pub async fn connect(url: &str, options: &ConnectOptions) -> StoreResult<Self> {
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let connect = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::InvalidUrl(e.to_string()))?
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        // No ping before handing out a connection: an in-process connection does not go stale,
        // and the ping would be one more round trip to its worker thread on every query.
        let pool = || {
            SqlitePoolOptions::new()
                .acquire_timeout(options.connect_timeout)
                .test_before_acquire(false)
        };
        // The writer is never closed for idleness: it is the one connection every write needs.
        // It is closed when a failed write leaves it unusable (see discard_if_in_transaction),
        // except in memory, where closing it would drop the database.
        let writer = pool()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None);
        if in_memory {
            // The database lives as long as a connection to it does, and shared-cache
            // connections would fail with SQLITE_LOCKED rather than wait: keep exactly one.
            let writer = writer.connect_with(connect.create_if_missing(true)).await?;
            return Ok(Self {
                reader: writer.clone(),
                writer,
                changes: Changes::default(),
            });
        }
        // The writer creates the file and switches it to WAL (a persistent setting) before
        // any reader opens it.
        let writer = writer
            .after_release(discard_if_in_transaction)
            .connect_with(
                connect
                    .clone()
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal),
            )
            .await?;
        let reader = pool()
            .max_connections(options.max_connections.max(1))
            .connect_with(connect.pragma("query_only", "ON"))
            .await?;
        Ok(Self {
            writer,
            reader,
            changes: Changes::default(),
        })
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn shared(&self) -> bool {
        false
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn watch_changes(&self, sink: ChangeSink) -> Watch {
        if !self.changes.set(sink) {
            return Watch::Unsupported;
        }
        self.changes.notify(Change::Watching);
        Watch::Inline
    }

    #[tracing::instrument(name = "store.migrate", skip_all, fields(backend = "sqlite"))]
    async fn migrate(&self) -> StoreResult<()> {
        MIGRATOR.run(&self.writer).await?;
        Ok(())
    }

    #[tracing::instrument(name = "store.ping", skip_all, fields(backend = "sqlite"))]
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("select 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}
