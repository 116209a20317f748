//! The Postgres store: production backend, safe for several redial instances sharing a database.
//!
//! The store keeps two pools: the main pool (`max_connections`) for writes and most reads, and a
//! small pool of read-only connections for the per-turn reads (`load_call`, `get_session`,
//! `get_caller_by_phone`, `find_resumable`), so a backlog of writes holding every main
//! connection (waiting on row locks, say) never makes a turn wait for its memory read.
//!
//! Multi-statement writes run in a transaction and lock the rows they read-modify-write with
//! `for no key update` (which leaves foreign-key checks of concurrent inserts unblocked); the job
//! queue uses `for update skip locked`.

mod admin;
mod analyses;
mod audit;
mod callers;
mod changes;
mod jobs;
mod sessions;
mod turns;

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use sqlx::Connection as _;
use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnectionMetadata;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use uuid::Uuid;

use super::changes::{ChangeSink, Watch};
use super::rows;
// Every bound string and JSON value goes through these (see `storage::text`).
use super::text::{answers, json, opt_text, strings, text};
use super::{ConnectOptions, Store, StoreError, StoreResult};

/// The Postgres migrations, embedded at build time.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

type CallerRow = rows::CallerRow<Uuid, DateTime<Utc>>;
type SessionRow = rows::SessionRow<Uuid, DateTime<Utc>>;
type SessionWithCallerRow = rows::SessionWithCallerRow<Uuid, DateTime<Utc>>;
type TurnRow = rows::TurnRow<Uuid, DateTime<Utc>>;
type JobRow = rows::JobRow<Uuid, DateTime<Utc>>;
type AnalysisRow = rows::AnalysisRow<Uuid, DateTime<Utc>>;

/// Postgres implementation of [`Store`].
#[derive(Debug, Clone)]
pub struct PostgresStore {
    /// Writes and everything not on the hot path.
    pool: PgPool,
    /// Read-only connections reserved for the per-turn reads.
    reader: PgPool,
}

/// The size of the reader pool for a main pool of `max_connections`: a quarter of it, at least
/// two, so one slow read does not make the next wait.
fn reader_connections(max_connections: u32) -> u32 {
    (max_connections / 4).max(2)
}

/// A reader connection idle for this long is pinged before use (it may have been dropped by a
/// database restart or a network device meanwhile); a busier one is used as it is, sparing every
/// memory read a round trip. A read on a connection that died anyway fails, and the turn goes on
/// without memory (fail open).
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(5);

#[expect(
    clippy::needless_pass_by_value,
    reason = "the signature of sqlx's before_acquire hook"
)]
fn ping_if_idle(
    conn: &mut PgConnection,
    meta: PoolConnectionMetadata,
) -> BoxFuture<'_, Result<bool, sqlx::Error>> {
    Box::pin(async move {
        if meta.idle_for >= PING_IF_IDLE_FOR {
            conn.ping().await?;
        }
        Ok(true)
    })
}

impl PostgresStore {
    /// Opens the pools to `url` (`postgres://…`) without migrating. Fails with
    /// [`StoreError::Database`] when no connection can be made within `connect_timeout`.
    #[tracing::instrument(name = "store.connect", skip_all, fields(backend = "postgres"))]
    pub async fn connect(url: &str, options: &ConnectOptions) -> StoreResult<Self> {
        let connect_options =
            PgConnectOptions::from_str(url).map_err(|e| StoreError::InvalidUrl(e.to_string()))?;
        // A few connections are kept open so the first turns after a start or an idle spell do
        // not pay for connection setup inside the memory read budget.
        // Writes keep sqlx's ping before every checkout: they are off the caller's path, and
        // after a database restart a dead connection must not use up a write's retries.
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .min_connections(options.max_connections.min(4))
            .acquire_timeout(options.connect_timeout)
            .connect_with(connect_options.clone())
            .await?;
        // Up to four readers are kept warm like the main pool's connections. They are read-only,
        // so a write sent to them by mistake fails instead of taking locks on the hot path.
        let readers = reader_connections(options.max_connections);
        let reader = PgPoolOptions::new()
            .test_before_acquire(false)
            .before_acquire(ping_if_idle)
            .max_connections(readers)
            .min_connections(readers.min(4))
            .acquire_timeout(options.connect_timeout)
            .connect_with(connect_options.options([("default_transaction_read_only", "on")]))
            .await?;
        Ok(Self { pool, reader })
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    #[tracing::instrument(name = "store.migrate", skip_all, fields(backend = "postgres"))]
    async fn migrate(&self) -> StoreResult<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    fn watch_changes(&self, sink: ChangeSink) -> Watch {
        Watch::Task(Box::pin(changes::listen(self.pool.clone(), sink)))
    }

    #[tracing::instrument(name = "store.ping", skip_all, fields(backend = "postgres"))]
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("select 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.reader.close().await;
        self.pool.close().await;
    }
}
