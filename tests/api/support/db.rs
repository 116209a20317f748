//! Test databases: every test gets its own, on each backend.
//!
//! SQLite: a fresh file in a temporary directory. Postgres: a fresh database
//! (`test_<uuid>`) created through a maintenance connection to `TEST_DATABASE_URL` (default
//! [`DEFAULT_POSTGRES_URL`]) and dropped when the test ends, pass or fail.
//!
//! Every test that needs Postgres carries
//! `#[ignore = "needs Postgres at TEST_DATABASE_URL: run scripts/test.sh"]` (the macros below add
//! it to their Postgres variants; a hand-written Postgres test adds it itself), so a plain
//! `cargo test` on a fresh clone runs the SQLite half and lists the rest as ignored, with that
//! reason, rather than failing or passing them unchecked. `scripts/test.sh` runs them all
//! (`--include-ignored`); there, Postgres being unreachable fails the test: it is part of the
//! suite, not optional.

use std::future::Future;
use std::panic::{AssertUnwindSafe, resume_unwind};
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::FutureExt;
use redial::storage::{ConnectOptions, Store, connect};
use sqlx::{Connection, Executor, PgConnection};
use tempfile::TempDir;
use uuid::Uuid;

/// Where the Postgres tests create their databases unless `TEST_DATABASE_URL` says otherwise.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The database URL of each open test store, by the store's address (see [`url_of`]).
static URLS: Mutex<Vec<(usize, String)>> = Mutex::new(Vec::new());

/// The address identifying a store in [`URLS`].
fn address(store: &dyn Store) -> usize {
    std::ptr::from_ref(store).cast::<()>().addr()
}

/// The database URL of a store opened by [`TestDb::new`] and not yet torn down, for test
/// support that reads the database behind an `Arc<dyn Store>` directly (`support::inspect`).
pub fn url_of(store: &dyn Store) -> String {
    let urls = URLS.lock().unwrap_or_else(PoisonError::into_inner);
    let address = address(store);
    urls.iter()
        .find(|(a, _)| *a == address)
        .map(|(_, url)| url.clone())
        .expect("the store was opened by TestDb::new and is not torn down")
}

/// A store backend under test.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    /// A SQLite file.
    Sqlite,
    /// A Postgres database.
    Postgres,
}

/// A migrated store on a database of its own, removed by [`TestDb::teardown`].
pub struct TestDb {
    /// The store under test.
    pub store: Arc<dyn Store>,
    /// The database URL (for starting an app on the same database).
    pub url: String,
    /// A directory for the outage journal of apps on this database (kept across restarts).
    pub journal: TempDir,
    cleanup: Cleanup,
}

enum Cleanup {
    Sqlite(TempDir),
    Postgres { admin_url: String, database: String },
}

impl TestDb {
    /// Creates and migrates a fresh database on `backend`.
    pub async fn new(backend: Backend) -> Self {
        let (url, cleanup) = match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("create a temporary directory");
                let url = format!("sqlite://{}", dir.path().join("redial.db").display());
                (url, Cleanup::Sqlite(dir))
            }
            Backend::Postgres => {
                let admin_url = postgres_url();
                let database = format!("test_{}", Uuid::now_v7().simple());
                admin_connection(&admin_url)
                    .await
                    .execute(format!("create database {database}").as_str())
                    .await
                    .expect("create the test database");
                let url = with_database(&admin_url, &database);
                (
                    url,
                    Cleanup::Postgres {
                        admin_url,
                        database,
                    },
                )
            }
        };
        let store = connect(&url, &ConnectOptions::default())
            .await
            .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
        store.migrate().await.expect("migrate the test database");
        // A store left behind by a test that never tore down may have had this address.
        let mut urls = URLS.lock().unwrap_or_else(PoisonError::into_inner);
        let address = address(store.as_ref());
        urls.retain(|(a, _)| *a != address);
        urls.push((address, url.clone()));
        drop(urls);
        Self {
            store,
            url,
            journal: tempfile::tempdir().expect("create a journal directory"),
            cleanup,
        }
    }

    /// Closes the store and removes its database (best effort).
    pub async fn teardown(self) {
        let address = address(self.store.as_ref());
        URLS.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(a, _)| *a != address);
        self.store.close().await;
        match self.cleanup {
            Cleanup::Sqlite(dir) => drop(dir),
            Cleanup::Postgres {
                admin_url,
                database,
            } => {
                let drop_sql = format!("drop database if exists {database} with (force)");
                let dropped = match PgConnection::connect(&admin_url).await {
                    Ok(mut admin) => admin.execute(drop_sql.as_str()).await.map(drop),
                    Err(e) => Err(e),
                };
                if let Err(e) = dropped {
                    eprintln!("could not drop test database {database}: {e}");
                }
            }
        }
    }
}

/// Runs `body` against a fresh migrated store on `backend`, removing the database afterwards
/// even when the body panics.
pub async fn run<F, Fut>(backend: Backend, body: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()>,
{
    run_with_url(backend, |store, _| body(store)).await;
}

/// As [`run`], also giving `body` the database's URL (for raw connections beside the store).
pub async fn run_with_url<F, Fut>(backend: Backend, body: F)
where
    F: FnOnce(Arc<dyn Store>, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let db = TestDb::new(backend).await;
    let outcome = AssertUnwindSafe(body(Arc::clone(&db.store), db.url.clone()))
        .catch_unwind()
        .await;
    db.teardown().await;
    if let Err(panic) = outcome {
        resume_unwind(panic);
    }
}

/// The maintenance URL of the test Postgres server.
pub fn postgres_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned())
}

async fn admin_connection(admin_url: &str) -> PgConnection {
    PgConnection::connect(admin_url).await.unwrap_or_else(|e| {
        panic!(
            "Postgres must be reachable at {admin_url} (set TEST_DATABASE_URL): {e}; \
             if this ran in a plain `cargo test`, the test lacks the \
             #[ignore = \"needs Postgres ...\"] every Postgres test carries"
        )
    })
}

/// `url` with its database name replaced by `database`, keeping any query string.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{database}", &base[..authority_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// Turns each named `async fn(Arc<dyn Store>)` into a test module with one test per backend,
/// `<name>::sqlite` and `<name>::postgres`.
/// The Postgres one is `#[ignore]`d with its reason, as every Postgres test is (module docs).
macro_rules! on_both_backends {
    ($($test:ident),+ $(,)?) => {$(
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $crate::support::db::run($crate::support::db::Backend::Sqlite, super::$test).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = "needs Postgres at TEST_DATABASE_URL: run scripts/test.sh"]
            async fn postgres() {
                $crate::support::db::run($crate::support::db::Backend::Postgres, super::$test)
                    .await;
            }
        }
    )+};
}

pub(crate) use on_both_backends;
