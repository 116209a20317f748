use chrono::Utc;
use uuid::Uuid;

use super::*;
use crate::engine::cache::CallCache;
use crate::platforms::Platform;
use crate::storage::{
    Answers, CallStart, ConnectOptions, NewSession, NewTurn, SessionStatus, SessionStore,
    SqliteStore, TurnRole,
};

/// A migrated SQLite store in a temporary directory, with one session.
async fn store_with_session() -> (tempfile::TempDir, Arc<dyn Store>, Uuid) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("writer.db").display());
    let store = SqliteStore::connect(&url, &ConnectOptions::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let session_id = Uuid::now_v7();
    let session = NewSession {
        session_id,
        platform: Platform::Vapi,
        call_key: "call-1".into(),
        caller_id: None,
        assistant_id: "a".into(),
        attempt: 1,
        resumes_session_id: None,
        answers: Answers::default(),
        status: SessionStatus::Active,
        model: None,
        started_at: Utc::now(),
    };
    let start = CallStart {
        now: session.started_at,
        session,
        phone: None,
        close_previous: None,
    };
    store.start_call(&start).await.unwrap();
    (dir, Arc::new(store), session_id)
}

fn write(session_id: Uuid, key: &str) -> TurnWrite {
    TurnWrite {
        session_id,
        turns: vec![NewTurn {
            idempotency_key: key.into(),
            role: TurnRole::User,
            content: key.into(),
            tool_name: None,
            tool_call_id: None,
            partial: false,
            created_at: Utc::now(),
        }],
        model: None,
        audit: Vec::new(),
        usage: Vec::new(),
        start: None,
    }
}

fn no_journal() -> Journal {
    Journal::disabled(&crate::config::DatabaseSettings::default())
}

async fn keys(store: &dyn Store, session_id: Uuid) -> Vec<String> {
    let turns = store.list_turns(session_id).await.unwrap();
    turns.into_iter().map(|t| t.idempotency_key).collect()
}

#[tokio::test]
async fn shutdown_drains_reserved_writes_and_later_writes_go_straight_to_the_store() {
    let (_dir, store, session_id) = store_with_session().await;
    let shutdown = CancellationToken::new();
    let queue = WriteQueue::spawn(
        Arc::clone(&store),
        no_journal(),
        CallCache::new(0, 0),
        shutdown.clone(),
        4,
        2,
        Duration::ZERO,
    );
    let queued = queue.reserve().await.unwrap();
    let in_flight = queue.reserve().await.unwrap();
    queued.write(write(session_id, "queued"));

    shutdown.cancel();
    let closed = async {
        loop {
            match queue.reserve().await {
                None => break,
                Some(slot) => drop(slot),
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .unwrap();
    let early = tokio::time::timeout(Duration::from_millis(100), queue.stopped()).await;
    assert!(
        early.is_err(),
        "a turn holding a place keeps the writer running"
    );
    in_flight.write(write(session_id, "in-flight"));
    tokio::time::timeout(Duration::from_secs(5), queue.stopped())
        .await
        .unwrap();
    queue
        .submit(store.as_ref(), write(session_id, "late"))
        .await;

    assert_eq!(
        keys(store.as_ref(), session_id).await,
        ["queued", "in-flight", "late"]
    );
    assert_eq!(queue.pending(), 0);
}

#[tokio::test]
async fn writes_queued_together_are_stored_in_order() {
    let (_dir, store, session_id) = store_with_session().await;
    let shutdown = CancellationToken::new();
    let queue = WriteQueue::spawn(
        Arc::clone(&store),
        no_journal(),
        CallCache::new(0, 0),
        shutdown.clone(),
        16,
        4,
        Duration::from_millis(5),
    );

    for i in 0..10 {
        queue
            .submit(store.as_ref(), write(session_id, &format!("m{i}")))
            .await;
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), queue.stopped())
        .await
        .unwrap();

    let expected: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    assert_eq!(keys(store.as_ref(), session_id).await, expected);
    assert_eq!(queue.pending(), 0);
}

#[test]
fn the_full_queue_warning_is_throttled() {
    let throttle = Throttle::new();

    let first = throttle.elapsed_enough();
    let second = throttle.elapsed_enough();

    assert!(first, "the first time is reported");
    assert!(!second, "a second time within the interval is not");
}
