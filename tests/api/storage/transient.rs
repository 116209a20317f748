//! `StoreError::is_transient` on errors the databases really raise, and a Postgres COMMIT that
//! fails does not wedge the store's connection.

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, Executor, PgConnection, SqliteConnection};

use super::*;
use crate::support::db::{Backend, run_with_url};

/// The store's error for a failed raw query.
fn store_error<T: std::fmt::Debug>(result: Result<T, sqlx::Error>) -> StoreError {
    StoreError::from(result.expect_err("the query should fail"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_busy_is_transient_and_a_constraint_violation_is_not() {
    run_with_url(Backend::Sqlite, |_, url| async move {
        // Arrange: one connection holds the write lock; another will not wait for it.
        let mut holder = SqliteConnection::connect(&url).await.expect("connect");
        holder.execute("begin immediate").await.expect("lock");
        let options: SqliteConnectOptions = url.parse().expect("url");
        let mut impatient = SqliteConnection::connect_with(&options.busy_timeout(Duration::ZERO))
            .await
            .expect("connect");

        // Act
        let busy = store_error(impatient.execute("begin immediate").await);
        holder.execute("rollback").await.expect("unlock");
        impatient
            .execute("create table t (k integer primary key)")
            .await
            .expect("create");
        impatient
            .execute("insert into t values (1)")
            .await
            .expect("insert");
        let duplicate = store_error(impatient.execute("insert into t values (1)").await);

        // Assert
        assert!(busy.is_transient(), "{busy}");
        assert!(!duplicate.is_transient(), "{duplicate}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres at TEST_DATABASE_URL: run scripts/test.sh"]
async fn a_terminated_postgres_backend_is_transient_and_bad_input_is_not() {
    run_with_url(Backend::Postgres, |_, url| async move {
        let mut conn = PgConnection::connect(&url).await.expect("connect");

        // Act
        let bad_input = store_error(conn.execute("select 1 / 0").await);
        let terminated = store_error(
            conn.execute("select pg_terminate_backend(pg_backend_pid())")
                .await,
        );

        // Assert
        assert!(!bad_input.is_transient(), "{bad_input}");
        assert!(terminated.is_transient(), "{terminated}");
    })
    .await;
}

/// Postgres ends a transaction whose COMMIT fails, and sqlx's queued ROLLBACK lowers its depth
/// whatever the outcome: the same connection takes the next write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres at TEST_DATABASE_URL: run scripts/test.sh"]
async fn a_postgres_commit_that_fails_does_not_wedge_the_connection() {
    run_with_url(Backend::Postgres, |_, url| async move {
        // Arrange: one connection per pool, and a deferred trigger failing every COMMIT that
        // stores a turn, with a serialization failure.
        let options = ConnectOptions {
            max_connections: 1,
            connect_timeout: Duration::from_secs(5),
        };
        let store = connect(&url, &options).await.expect("connect");
        let (_, session) = caller_with_session(store.as_ref(), "call-1", at(0)).await;
        let mut admin = PgConnection::connect(&url).await.expect("connect");
        admin
            .execute(
                "create function fail_commit() returns trigger language plpgsql as $$ \
                 begin raise exception 'injected' using errcode = 'serialization_failure'; end $$; \
                 create constraint trigger fail_commit after insert on turn \
                 deferrable initially deferred for each row execute function fail_commit()",
            )
            .await
            .expect("install the failing trigger");

        // Act
        let failed = store
            .append_turns(session.session_id, &[user_turn("t1", "lost", at(1))])
            .await;
        admin
            .execute("drop trigger fail_commit on turn")
            .await
            .expect("remove the trigger");
        let next = store
            .append_turns(session.session_id, &[user_turn("t2", "kept", at(2))])
            .await;

        // Assert
        let failed = failed.expect_err("the COMMIT fails");
        assert!(failed.to_string().contains("injected"), "{failed}");
        assert!(
            failed.is_transient(),
            "a serialization failure is transient"
        );
        assert_eq!(next.expect("the next write"), 1);
        let turns = store.list_turns(session.session_id).await.expect("turns");
        assert_eq!(turns.len(), 1);
        assert_eq!(turns[0].content, "kept");
        store.close().await;
    })
    .await;
}
