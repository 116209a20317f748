//! Reads never queue behind writes: with every write of the store blocked on a lock held by
//! another connection, and more writes waiting than the store has connections, the per-turn
//! reads still answer at once. (Functional checks: the bound is far above a read's latency and
//! far below the time the writes stay blocked.)

use sqlx::{Connection, Executor, PgConnection, SqliteConnection};
use tokio::task::JoinHandle;

use super::*;
use crate::support::db::{Backend, run_with_url};

/// More concurrent writes than the store has connections (`ConnectOptions::default()`).
const WRITERS: usize = 12;

/// How long the reads may take while the writes are blocked.
const READ_BOUND: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_reads_answer_while_queued_writes_wait_for_a_held_write_lock() {
    run_with_url(Backend::Sqlite, |store, url| async move {
        // Arrange: another connection holds the database's write lock, so the store's writes
        // wait (on busy_timeout, 5 s) for as long as it is held.
        let (caller, session) = caller_with_session(store.as_ref(), "call-1", at(0)).await;
        let mut locker = SqliteConnection::connect(&url)
            .await
            .expect("raw connection");
        locker
            .execute("begin immediate")
            .await
            .expect("take the write lock");
        let writers = spawn_writers(&store, session.session_id);
        tokio::time::sleep(Duration::from_millis(200)).await;

        // Act
        let reads = tokio::time::timeout(READ_BOUND, hot_path_reads(store.as_ref(), caller)).await;
        let writes_waited = writers.iter().all(|w| !w.is_finished());
        locker
            .execute("rollback")
            .await
            .expect("release the write lock");

        // Assert
        assert_reads_answered(reads, &session);
        assert!(writes_waited, "the writes should have waited for the lock");
        assert_writes_complete(store.as_ref(), writers, session.session_id).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres at TEST_DATABASE_URL: run scripts/test.sh"]
async fn postgres_hot_path_reads_answer_while_blocked_writes_hold_every_main_connection() {
    run_with_url(Backend::Postgres, |store, url| async move {
        // Arrange: another connection locks the turn table against inserts (reads still pass),
        // so each write holds a main-pool connection until the lock is released.
        let (caller, session) = caller_with_session(store.as_ref(), "call-1", at(0)).await;
        let mut locker = PgConnection::connect(&url).await.expect("raw connection");
        locker.execute("begin").await.expect("begin");
        locker
            .execute("lock table turn in exclusive mode")
            .await
            .expect("lock the turn table");
        let writers = spawn_writers(&store, session.session_id);
        let max_connections = ConnectOptions::default().max_connections;
        wait_for_lock_waiters(&url, max_connections).await;
        let write_starved = tokio::time::timeout(
            Duration::from_millis(300),
            store.upsert_caller(OTHER_PHONE, at(1)),
        )
        .await
        .is_err();

        // Act
        let reads = tokio::time::timeout(READ_BOUND, hot_path_reads(store.as_ref(), caller)).await;
        locker.execute("commit").await.expect("release the lock");

        // Assert
        assert!(
            write_starved,
            "every main connection should be taken by a blocked write"
        );
        assert_reads_answered(reads, &session);
        assert_writes_complete(store.as_ref(), writers, session.session_id).await;
    })
    .await;
}

/// What a turn reads before it speaks: the call, its caller, a resumable call.
type Reads = (
    Option<(CallSession, Option<redial::storage::Caller>)>,
    Option<CallSession>,
);

async fn hot_path_reads(store: &dyn Store, caller_id: Uuid) -> Reads {
    let call = store
        .load_call(Platform::Vapi, "call-1")
        .await
        .expect("load call");
    let by_phone = store
        .get_caller_by_phone(PHONE)
        .await
        .expect("caller by phone");
    assert_eq!(by_phone.map(|c| c.caller_id), Some(caller_id));
    let resumable = store
        .find_resumable(caller_id, ASSISTANT, at(0), at(3600), None)
        .await
        .expect("find resumable");
    assert!(resumable.is_some(), "the idle active call is resumable");
    let session = match &call {
        Some((session, _)) => store
            .get_session(session.session_id)
            .await
            .expect("get session"),
        None => None,
    };
    (call, session)
}

fn assert_reads_answered(reads: Result<Reads, tokio::time::error::Elapsed>, session: &CallSession) {
    let (call, by_id) = reads.expect("the reads should answer while the writes are blocked");
    let (loaded, caller) = call.expect("the call is stored");
    assert_eq!(loaded.session_id, session.session_id);
    assert_eq!(caller.map(|c| c.caller_id), session.caller_id);
    assert_eq!(by_id.map(|s| s.session_id), Some(session.session_id));
}

/// `WRITERS` concurrent writes of one new turn each to the session.
fn spawn_writers(
    store: &Arc<dyn Store>,
    session_id: Uuid,
) -> Vec<JoinHandle<Result<u64, StoreError>>> {
    (0..WRITERS)
        .map(|i| {
            let store = Arc::clone(store);
            tokio::spawn(async move {
                let turn = user_turn(&format!("w{i}"), "hello", at(1));
                store.save_turn(session_id, &[turn], None, &[]).await
            })
        })
        .collect()
}

async fn assert_writes_complete(
    store: &dyn Store,
    writers: Vec<JoinHandle<Result<u64, StoreError>>>,
    session_id: Uuid,
) {
    for writer in writers {
        let inserted = writer.await.expect("writer task").expect("blocked write");
        assert_eq!(inserted, 1);
    }
    let turns = store.list_turns(session_id).await.expect("list turns");
    assert_eq!(turns.len(), WRITERS);
}

/// Waits until `count` sessions of the test database wait on a lock.
async fn wait_for_lock_waiters(url: &str, count: u32) {
    let mut observer = PgConnection::connect(url)
        .await
        .expect("observer connection");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity \
             where datname = current_database() and wait_event_type = 'Lock'",
        )
        .fetch_one(&mut observer)
        .await
        .expect("count lock waiters");
        if waiting >= i64::from(count) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {waiting} of {count} writes reached the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
