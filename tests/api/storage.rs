//! The store conformance suite: every test runs against SQLite and Postgres, each on a fresh
//! database (see `support::db`). Times are millisecond-precise, the precision both backends keep.

mod analyses;
mod answers;
mod callers;
mod disk;
mod jobs;
mod pools;
mod resume;
mod retention;
mod sessions;
mod transient;
mod turns;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use redial::platforms::Platform;
use redial::storage::{
    Answers, CallSession, CloseSession, ConnectOptions, NewJob, NewSession, NewTurn,
    NewWebhookEvent, SessionStatus, Store, StoreError, TurnRole, connect,
};
use serde_json::json;
use uuid::Uuid;

use crate::support::db::on_both_backends;
use crate::support::inspect::Inspect;

const PHONE: &str = "+15550100001";
const OTHER_PHONE: &str = "+15550100002";
const ASSISTANT: &str = "asst-intake";

/// `secs` after a fixed, millisecond-precise instant.
fn at(secs: i64) -> DateTime<Utc> {
    let base = DateTime::from_timestamp_millis(1_795_260_000_250).expect("valid base instant");
    base + TimeDelta::seconds(secs)
}

/// A fresh Vapi session for `call_key` with the test assistant, active, first attempt.
fn new_session(call_key: &str, caller_id: Option<Uuid>, started_at: DateTime<Utc>) -> NewSession {
    NewSession {
        session_id: Uuid::now_v7(),
        platform: Platform::Vapi,
        call_key: call_key.to_owned(),
        caller_id,
        assistant_id: ASSISTANT.to_owned(),
        attempt: 1,
        resumes_session_id: None,
        answers: Answers::new(),
        status: SessionStatus::Active,
        model: Some("gpt-test".to_owned()),
        started_at,
    }
}

/// Creates `new`, which must be new.
async fn create(store: &dyn Store, new: &NewSession) -> CallSession {
    let (session, created) = store.create_session(new).await.expect("create session");
    assert!(created, "{} should be a new session", new.call_key);
    session
}

/// A caller with one session of the test assistant started at `started_at`.
async fn caller_with_session(
    store: &dyn Store,
    call_key: &str,
    started_at: DateTime<Utc>,
) -> (Uuid, CallSession) {
    let caller = store
        .upsert_caller(PHONE, started_at)
        .await
        .expect("upsert caller");
    let session = create(
        store,
        &new_session(call_key, Some(caller.caller_id), started_at),
    )
    .await;
    (caller.caller_id, session)
}

fn close_as(status: SessionStatus, ended_at: DateTime<Utc>) -> CloseSession {
    CloseSession {
        status,
        ended_reason: Some("customer-ended-call".to_owned()),
        ended_at,
        details: json!({}),
    }
}

/// The stored session with this id.
async fn stored_session(store: &dyn Store, session_id: Uuid) -> CallSession {
    store
        .get_session(session_id)
        .await
        .expect("get session")
        .expect("session exists")
}

fn user_turn(key: &str, content: &str, created_at: DateTime<Utc>) -> NewTurn {
    NewTurn {
        idempotency_key: key.to_owned(),
        role: TurnRole::User,
        content: content.to_owned(),
        tool_name: None,
        tool_call_id: None,
        partial: false,
        created_at,
    }
}

fn new_job(dedupe_key: &str, run_at: DateTime<Utc>) -> NewJob {
    NewJob {
        job_id: Uuid::now_v7(),
        kind: "analyze_call".to_owned(),
        dedupe_key: dedupe_key.to_owned(),
        payload: json!({ "key": dedupe_key }),
        run_at,
        max_attempts: 3,
    }
}

fn webhook(dedupe_key: &str, received_at: DateTime<Utc>) -> NewWebhookEvent {
    NewWebhookEvent {
        event_id: Uuid::now_v7(),
        platform: Platform::Vapi,
        event_type: "end-of-call-report".to_owned(),
        call_key: Some("call-1".to_owned()),
        dedupe_key: dedupe_key.to_owned(),
        payload: "{\"message\": {\"type\": \"end-of-call-report\"} }\n".to_owned(),
        received_at,
    }
}

fn names(fields: &[&str]) -> Vec<String> {
    fields.iter().map(|f| (*f).to_owned()).collect()
}

on_both_backends!(migrating_again_is_harmless_and_the_store_answers_pings);

async fn migrating_again_is_harmless_and_the_store_answers_pings(store: Arc<dyn Store>) {
    // Arrange: the harness has already migrated the database once.

    // Act
    store.migrate().await.expect("second migrate");

    // Assert
    store.ping().await.expect("ping");
    assert!(matches!(store.backend(), "sqlite" | "postgres"));
}

#[tokio::test]
async fn connecting_to_an_unreachable_postgres_fails_promptly_with_a_database_error() {
    // Arrange: nothing listens on port 1.
    let options = ConnectOptions {
        max_connections: 2,
        connect_timeout: Duration::from_millis(500),
    };
    let started = Instant::now();

    // Act
    let result = connect("postgres://postgres@127.0.0.1:1/postgres", &options).await;

    // Assert
    assert!(
        matches!(result, Err(StoreError::Database(_))),
        "expected a database error, got {result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn connect_rejects_a_url_of_an_unknown_scheme() {
    // Act
    let result = connect("mysql://localhost/redial", &ConnectOptions::default()).await;

    // Assert
    assert!(
        matches!(result, Err(StoreError::InvalidUrl(_))),
        "got {result:?}"
    );
}

#[tokio::test]
async fn a_missing_sqlite_file_is_created_on_connect_and_runs_in_wal_mode() {
    // Arrange
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("fresh.db");
    let url = format!("sqlite:{}", path.display());

    // Act
    let store = connect(&url, &ConnectOptions::default())
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");

    // Assert
    assert!(path.exists(), "{} should exist", path.display());
    let pool = sqlx::SqlitePool::connect(&url)
        .await
        .expect("raw connection");
    let mode: String = sqlx::query_scalar("pragma journal_mode")
        .fetch_one(&pool)
        .await
        .expect("journal mode");
    assert_eq!(mode, "wal");
    pool.close().await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_memory_sqlite_store_keeps_its_data_and_serves_concurrent_writers() {
    // Arrange
    let store = connect("sqlite::memory:", &ConnectOptions::default())
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    let (_, session) = caller_with_session(store.as_ref(), "call-mem", at(0)).await;
    let fields: Vec<String> = (0..10).map(|i| format!("field_{i}")).collect();

    // Act
    let writers = fields.iter().map(|field| {
        let store = Arc::clone(&store);
        let field = field.clone();
        tokio::spawn(async move {
            store
                .record_answer(session.session_id, &field, "yes", &[], at(1))
                .await
        })
    });
    for writer in futures_util::future::join_all(writers).await {
        writer.expect("task").expect("record answer");
    }

    // Assert
    let stored = store
        .get_session(session.session_id)
        .await
        .expect("get session")
        .expect("session exists");
    assert_eq!(stored.answers.len(), fields.len());
    store.close().await;
}
