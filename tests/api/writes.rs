//! The write-behind queue: turns of many calls written in batches, a bounded queue that holds
//! new turns when the database falls behind, and writes the database rejects (both stores unless
//! noted).

use std::time::Duration;

use redial::platforms::Platform;
use redial::storage::Turn;
use sqlx::{Connection, Executor, PgConnection};

use crate::support::app::{TestApp, app_tests, read_sse, vapi_body};
use crate::support::db::Backend;
use crate::support::inspect::Inspect;

app_tests!(
    turns_of_many_concurrent_calls_are_all_stored_in_batches,
    a_nul_character_in_a_message_does_not_lose_the_turn,
);

async fn turns_of_many_concurrent_calls_are_all_stored_in_batches(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| s.database.write_batch_max = 4).await;

    let turns = (0..24).map(|i| {
        let app = &app;
        async move {
            let body = vapi_body(&format!("call-batch-{i}"), &format!("+1415555{i:04}"), "hi");
            read_sse(app.chat(&body).await).await
        }
    });
    let transcripts = futures_util::future::join_all(turns).await;
    app.settle().await;

    assert!(transcripts.iter().all(|t| t.done));
    for i in 0..24 {
        let (session, caller) = app
            .stored_call(Platform::Vapi, &format!("call-batch-{i}"))
            .await;
        let turns = app.db.store.list_turns(session.session_id).await.unwrap();
        assert_eq!(turns.len(), 2, "call {i}: the user's line and the reply");
        assert_eq!(session.model.as_deref(), Some("gpt-test"));
        let trail = app
            .db
            .store
            .list_audit(caller.unwrap().caller_id, 10)
            .await
            .unwrap();
        assert_eq!(trail.len(), 1, "call {i}: the turn's access is audited");
    }
    app.teardown().await;
}

/// Postgres only: a table lock stops the writer, and once the queue is full a new turn waits
/// for room before it starts; nothing is lost when the database comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres at TEST_DATABASE_URL: run scripts/test.sh"]
async fn a_full_write_queue_holds_new_turns_until_the_database_catches_up() {
    let app = TestApp::spawn_with(Backend::Postgres, |s| {
        s.database.write_queue_capacity = 1;
        s.database.write_batch_max = 1;
    })
    .await;
    let mut blocker = PgConnection::connect(&app.db.url).await.unwrap();
    blocker.execute("begin").await.unwrap();
    blocker
        .execute("lock table turn in access exclusive mode")
        .await
        .unwrap();

    // The first turn's write is taken by the writer and blocks on the lock; the second's waits
    // in the queue, which is then full.
    for call in ["call-q1", "call-q2"] {
        let sse = read_sse(app.chat(&vapi_body(call, "+14155550123", "hi")).await).await;
        assert!(sse.done, "{call} is answered while the database is slow");
    }
    wait_for_pending(&app, 2).await;
    let third = {
        let app = &app;
        async move { read_sse(app.chat(&vapi_body("call-q3", "+14155550123", "hi")).await).await }
    };
    let mut third = Box::pin(third);
    let held = tokio::time::timeout(Duration::from_millis(500), &mut third).await;
    assert!(held.is_err(), "the third turn waits for room in the queue");
    assert_eq!(
        app.upstream.requests().len(),
        2,
        "the waiting turn has not gone upstream"
    );

    blocker.execute("rollback").await.unwrap();
    let sse = third.await;
    assert!(sse.done, "the third turn runs once the writer catches up");
    app.settle().await;
    for call in ["call-q1", "call-q2", "call-q3"] {
        assert_eq!(stored_turns(&app, call).await.len(), 2, "{call} is stored");
    }
    app.teardown().await;
}

async fn a_nul_character_in_a_message_does_not_lose_the_turn(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    let sse = read_sse(
        app.chat(&vapi_body("call-nul", "+14155550123", "hello\u{0}world"))
            .await,
    )
    .await;
    app.settle().await;

    assert!(sse.done);
    let turns = stored_turns(&app, "call-nul").await;
    assert_eq!(turns.len(), 2, "the user's line and the reply are stored");
    // Postgres text cannot hold NUL: it is stored as the replacement character, on both stores
    // so that the data does not differ by backend.
    assert_eq!(turns[0].content, "hello\u{fffd}world");
    app.teardown().await;
}

/// Postgres only: the writer holds two turns in one batch, and the database rejects one of
/// them (a trigger); the other is still stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres at TEST_DATABASE_URL: run scripts/test.sh"]
async fn a_write_the_database_rejects_does_not_take_its_batch_down() {
    let app = TestApp::spawn(Backend::Postgres).await;
    let mut blocker = PgConnection::connect(&app.db.url).await.unwrap();
    blocker
        .execute(
            "create function reject_poison() returns trigger language plpgsql as $$ \
             begin if new.content = 'poison' then raise exception 'rejected'; end if; \
             return new; end $$; \
             create trigger reject_poison before insert on turn \
             for each row execute function reject_poison()",
        )
        .await
        .unwrap();
    blocker.execute("begin").await.unwrap();
    blocker
        .execute("lock table turn in access exclusive mode")
        .await
        .unwrap();

    // The first write blocks the writer on the lock; the next two queue up behind it and are
    // taken together.
    let chat = |call: &'static str, text: &'static str| {
        let app = &app;
        async move { read_sse(app.chat(&vapi_body(call, "+14155550123", text)).await).await }
    };
    assert!(chat("call-p1", "hi").await.done);
    wait_for_pending(&app, 1).await;
    assert!(chat("call-p2", "hi").await.done);
    assert!(chat("call-p3", "poison").await.done);
    wait_for_pending(&app, 3).await;
    blocker.execute("rollback").await.unwrap();
    app.settle().await;

    assert_eq!(stored_turns(&app, "call-p1").await.len(), 2);
    assert_eq!(
        stored_turns(&app, "call-p2").await.len(),
        2,
        "stored despite its batch failing"
    );
    assert_eq!(
        stored_turns(&app, "call-p3").await.len(),
        0,
        "the rejected write is lost alone"
    );
    app.teardown().await;
}

/// The stored turns of a Vapi call.
async fn stored_turns(app: &TestApp, call: &str) -> Vec<Turn> {
    let (session, _) = app.stored_call(Platform::Vapi, call).await;
    app.db.store.list_turns(session.session_id).await.unwrap()
}

/// Postgres only: every connection redial holds is killed (as a database restart would);
/// the next turn is still answered and stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres at TEST_DATABASE_URL: run scripts/test.sh"]
async fn turns_are_stored_after_the_database_drops_every_connection() {
    let app = TestApp::spawn(Backend::Postgres).await;
    assert!(
        read_sse(app.chat(&vapi_body("call-r1", "+14155550123", "hi")).await)
            .await
            .done
    );
    app.settle().await;
    let mut admin = PgConnection::connect(&app.db.url).await.unwrap();

    admin
        .execute(
            "select pg_terminate_backend(pid) from pg_stat_activity \
             where datname = current_database() and pid <> pg_backend_pid()",
        )
        .await
        .unwrap();
    let sse = read_sse(
        app.chat(&vapi_body("call-r1", "+14155550123", "still there?"))
            .await,
    )
    .await;
    app.settle().await;

    assert!(
        sse.done,
        "the turn is answered (without memory if its read failed)"
    );
    // Counted on a new connection: the test's own store lost its connections too.
    let stored: i64 = sqlx::query_scalar(
        "select count(*) from turn join call_session using (session_id) \
         where call_key = 'call-r1'",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(
        stored, 4,
        "both turns are stored: the writes got fresh connections"
    );
    app.teardown().await;
}

async fn wait_for_pending(app: &TestApp, writes: usize) {
    for _ in 0..500 {
        if app.state.engine.pending_writes() == writes {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(app.state.engine.pending_writes(), writes, "queued writes");
}
