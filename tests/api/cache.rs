//! The per-call cache around a call's start (both stores): a first turn's start is written with
//! the turn in the writer's batch, and until then the instance serves the call's next turn from
//! the first turn's context; a call warmed by the platform's start event reads nothing on its
//! first turn.

use std::time::Duration;

use redial::platforms::Platform;
use redial::storage::SessionStatus;
use redial_bench::mock::Behavior;
use reqwest::Response;
use serde_json::{Value, json};

use crate::support::app::{API_KEY, TestApp, app_tests, read_sse};
use crate::support::db::Backend;
use crate::support::inspect::Inspect;

app_tests!(
    a_call_start_waits_for_the_writer_and_the_next_turn_is_served_from_the_cache_meanwhile,
    a_call_warmed_by_its_start_event_reads_nothing_on_its_first_turn,
);

const CALL: &str = "c0a8b1e2-5d3f-4e6a-9b7c-1f2e3d4c5b6a";
const NUMBER: &str = "+14155550123";
const VAPI_SECRET: &str = "vapi-secret";

/// A Vapi turn of `CALL`: the greeting, then `users` each answered by the one after.
fn turn(users: &[&str]) -> Value {
    let mut messages = vec![
        json!({"role": "system", "content": "You are Ava."}),
        json!({"role": "assistant", "content": "Hi, how can I help?"}),
    ];
    for (i, user) in users.iter().enumerate() {
        if i > 0 {
            messages.push(json!({"role": "assistant", "content": format!("Reply {i}.")}));
        }
        messages.push(json!({"role": "user", "content": user}));
    }
    json!({
        "model": "gpt-test",
        "stream": true,
        "messages": messages,
        "call": {"id": CALL, "type": "inboundPhoneCall",
                 "assistantId": "5b1e7c2a-0d4f-4f3e-8a9b-2c3d4e5f6a7b",
                 "customer": {"number": NUMBER}},
        "customer": {"number": NUMBER},
    })
}

async fn send(app: &TestApp, body: &Value) -> Response {
    let response = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(API_KEY)
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response
}

/// The `mem` entry of a response's `Server-Timing`.
fn memory_timing(response: &Response) -> String {
    let timing = response.headers()["server-timing"].to_str().unwrap();
    timing
        .split(", ")
        .find(|part| part.starts_with("mem;"))
        .unwrap_or_else(|| panic!("no memory timing in {timing}"))
        .to_owned()
}

async fn a_call_start_waits_for_the_writer_and_the_next_turn_is_served_from_the_cache_meanwhile(
    backend: Backend,
) {
    // Arrange: the writer lingers, so the first turn's write is still queued when the next turn
    // arrives (a closed-loop caller, or a fast one, beats a busy writer).
    let app = TestApp::spawn_with(backend, |s| s.database.write_linger_ms = 1_500).await;
    app.upstream.push("gpt-test", Behavior::text(["Reply 1."]));
    app.upstream.push("gpt-test", Behavior::text(["Reply 2."]));

    // Act: the first turn.
    let first = send(&app, &turn(&["Hello."])).await;
    assert!(!memory_timing(&first).contains("call cache"));
    assert_eq!(read_sse(first).await.text(), "Reply 1.");
    for _ in 0..200 {
        if app.state.engine.pending_writes() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(app.state.engine.pending_writes(), 1, "the turn is queued");

    // Assert: handed to the writer, and the call is not stored: its start went with the turn.
    let stored = app.db.store.load_call(Platform::Vapi, CALL).await.unwrap();
    assert!(
        stored.is_none(),
        "the call's start was written on its own, before the turn: {stored:?}"
    );

    // Act: the next turn, before the writer has stored the first.
    let second = send(&app, &turn(&["Hello.", "Ada."])).await;
    let memory = memory_timing(&second);
    assert_eq!(read_sse(second).await.text(), "Reply 2.");
    app.settle().await;

    // Assert: served from the first turn's context; one call, stored once, with every turn.
    assert!(
        memory.contains("call cache"),
        "the second turn read the database: {memory}"
    );
    let (session, caller) = app.stored_call(Platform::Vapi, CALL).await;
    assert_eq!(session.status, SessionStatus::Active);
    let caller = caller.expect("the caller is stored");
    assert_eq!(caller.call_count, 1, "the call is counted once");
    let turns = app.db.store.list_turns(session.session_id).await.unwrap();
    let said: Vec<&str> = turns.iter().map(|t| t.content.as_str()).collect();
    assert_eq!(said, ["Hello.", "Reply 1.", "Ada.", "Reply 2."]);
    let audit = app.db.store.list_audit(caller.caller_id, 10).await.unwrap();
    assert_eq!(audit.len(), 2, "{audit:?}");
    assert!(
        audit
            .iter()
            .all(|e| e.session_id == Some(session.session_id))
    );
    app.teardown().await;
}

async fn a_call_warmed_by_its_start_event_reads_nothing_on_its_first_turn(backend: Backend) {
    // Arrange
    let app = TestApp::spawn_with(backend, |s| {
        s.webhooks.vapi_secret = redial::config::Secret::new(VAPI_SECRET);
    })
    .await;
    let started = include_bytes!("../fixtures/vapi/status-update-in-progress.json");
    let response = app
        .client
        .post(app.url("/webhooks/vapi"))
        .header("content-type", "application/json")
        .header("x-vapi-secret", VAPI_SECRET)
        .body(started.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    app.settle().await;
    let (warmed, _) = app.stored_call(Platform::Vapi, CALL).await;

    // Act
    app.upstream.push("gpt-test", Behavior::text(["Reply 1."]));
    let first = send(&app, &turn(&["Hello."])).await;
    let memory = memory_timing(&first);
    assert_eq!(read_sse(first).await.text(), "Reply 1.");
    app.settle().await;

    // Assert
    assert!(
        memory.contains("call cache"),
        "the first turn of a warmed call read the database: {memory}"
    );
    let (session, caller) = app.stored_call(Platform::Vapi, CALL).await;
    assert_eq!(session.session_id, warmed.session_id);
    assert_eq!(caller.expect("caller").call_count, 1);
    let turns = app.db.store.list_turns(session.session_id).await.unwrap();
    assert_eq!(turns.len(), 2, "{turns:?}");
    app.teardown().await;
}

/// Postgres: a call's start stored by two transactions at once under the same session id (the
/// writer's batch, and a tool of the call's next turn served from the cache with the first
/// turn's start) is adopted by the second, not refused as a duplicate key. (The fault smoke run
/// once hit a narrower window of this race — the other row already in the primary key's index
/// but not yet in the call key's — which only a conflict clause naming no index covers; this
/// test does not reproduce that window deterministically.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres at TEST_DATABASE_URL: run scripts/test.sh"]
async fn a_start_stored_concurrently_under_the_same_session_id_is_adopted() {
    use chrono::Utc;
    use redial::storage::{Answers, CallStart, NewSession};
    use sqlx::{Connection as _, Executor as _};
    let app = TestApp::spawn(Backend::Postgres).await;
    let session_id = uuid::Uuid::now_v7();
    let start = CallStart {
        session: NewSession {
            session_id,
            platform: Platform::Vapi,
            call_key: "call-race".into(),
            caller_id: None,
            assistant_id: "asst-1".into(),
            attempt: 1,
            resumes_session_id: None,
            answers: Answers::default(),
            status: SessionStatus::Active,
            model: None,
            started_at: Utc::now(),
        },
        phone: None,
        close_previous: None,
        now: Utc::now(),
    };
    // The other transaction inserts the same session and holds it uncommitted.
    let mut other = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    other.execute("begin").await.unwrap();
    sqlx::query(
        "insert into call_session (session_id, platform, call_key, status, started_at, \
         last_activity_at, updated_at) values ($1, 'vapi', 'call-race', 'active', now(), now(), \
         now())",
    )
    .bind(session_id)
    .execute(&mut other)
    .await
    .unwrap();
    let store = std::sync::Arc::clone(&app.db.store);
    let racing = tokio::spawn(async move { store.start_call(&start).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !racing.is_finished(),
        "the start waits for the other transaction"
    );
    other.execute("commit").await.unwrap();

    let started = racing.await.unwrap().expect("adopted, not a duplicate key");
    assert!(!started.created);
    assert_eq!(started.session.session_id, session_id);
    app.teardown().await;
}
