//! Call sessions: creation and counting, lookups, touch and close.

use super::*;
use redial::storage::{Answer, CallStart};

on_both_backends!(
    create_session_counts_the_call_once_and_snapshots_the_callers_previous_calls,
    create_session_stores_every_field_as_given,
    concurrent_creations_of_one_call_create_one_session_and_count_it_once,
    create_session_for_an_unknown_caller_is_not_found,
    load_call_returns_the_session_with_its_caller,
    load_call_of_a_session_without_caller_or_of_an_unknown_call,
    get_session_of_an_unknown_id_is_none,
    close_session_sets_status_and_reason_keeps_the_first_end_and_merges_details,
    close_session_keeps_a_completed_status,
    closing_an_unknown_session_is_not_found,
    start_call_stores_the_caller_and_session_and_closes_the_abandoned_call_at_once,
    start_call_of_a_stored_call_keeps_its_session_and_counts_it_once,
    start_call_without_a_number_or_with_a_vanished_previous_call_still_starts,
);

async fn create_session_counts_the_call_once_and_snapshots_the_callers_previous_calls(
    store: Arc<dyn Store>,
) {
    // Arrange
    let caller = store.upsert_caller(PHONE, at(0)).await.expect("upsert");
    let first = new_session("call-1", Some(caller.caller_id), at(0));
    let second = new_session("call-2", Some(caller.caller_id), at(100));
    let first_again = NewSession {
        session_id: Uuid::now_v7(),
        started_at: at(200),
        ..first.clone()
    };

    // Act
    let (s1, created1) = store.create_session(&first).await.expect("first call");
    let (s2, created2) = store.create_session(&second).await.expect("second call");
    let (s1_again, created_again) = store.create_session(&first_again).await.expect("repeat");

    // Assert
    assert!(created1 && created2 && !created_again);
    assert_eq!((s1.prior_calls, s1.prior_call_at), (0, None));
    assert_eq!((s2.prior_calls, s2.prior_call_at), (1, Some(at(0))));
    assert_eq!(
        s1_again, s1,
        "a repeated creation returns the stored session"
    );
    let caller = store
        .get_caller(caller.caller_id)
        .await
        .expect("get")
        .expect("caller");
    assert_eq!(caller.call_count, 2, "the repeated creation is not counted");
    assert_eq!(caller.last_call_at, Some(at(100)));
}

async fn create_session_stores_every_field_as_given(store: Arc<dyn Store>) {
    // Arrange
    let (caller_id, earlier) = caller_with_session(store.as_ref(), "call-1", at(0)).await;
    let mut answers = Answers::new();
    answers.insert(
        "loan_purpose".to_owned(),
        Answer {
            value: "a new roof".to_owned(),
            confirmed_at: at(30),
        },
    );
    let resumed = NewSession {
        platform: Platform::Retell,
        attempt: 2,
        resumes_session_id: Some(earlier.session_id),
        answers: answers.clone(),
        status: SessionStatus::Completed,
        model: None,
        ..new_session("call-2", Some(caller_id), at(500))
    };

    // Act
    let (session, _) = store.create_session(&resumed).await.expect("create");

    // Assert
    let expected = CallSession {
        session_id: resumed.session_id,
        platform: Platform::Retell,
        call_key: "call-2".to_owned(),
        caller_id: Some(caller_id),
        assistant_id: ASSISTANT.to_owned(),
        status: SessionStatus::Completed,
        attempt: 2,
        resumes_session_id: Some(earlier.session_id),
        answers,
        prior_calls: 1,
        prior_call_at: Some(at(0)),
        model: None,
        ended_reason: None,
        details: json!({}),
        started_at: at(500),
        last_activity_at: at(500),
        ended_at: None,
        version: session.version,
    };
    assert_eq!(session, expected);
    let stored = store.get_session(session.session_id).await.expect("get");
    assert_eq!(stored, Some(expected));
}

async fn concurrent_creations_of_one_call_create_one_session_and_count_it_once(
    store: Arc<dyn Store>,
) {
    // Arrange
    let caller = store.upsert_caller(PHONE, at(0)).await.expect("upsert");

    // Act
    let attempts = (0..10).map(|i| {
        let store = Arc::clone(&store);
        let new = new_session("call-1", Some(caller.caller_id), at(i));
        tokio::spawn(async move { store.create_session(&new).await })
    });
    let results: Vec<(CallSession, bool)> = futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.expect("task").expect("create session"))
        .collect();

    // Assert
    assert_eq!(results.iter().filter(|(_, created)| *created).count(), 1);
    let id = results[0].0.session_id;
    assert!(results.iter().all(|(s, _)| s.session_id == id));
    let caller = store
        .get_caller(caller.caller_id)
        .await
        .expect("get")
        .expect("caller");
    assert_eq!(caller.call_count, 1);
}

async fn create_session_for_an_unknown_caller_is_not_found(store: Arc<dyn Store>) {
    // Act
    let result = store
        .create_session(&new_session("call-1", Some(Uuid::now_v7()), at(0)))
        .await;

    // Assert
    assert!(
        matches!(result, Err(StoreError::NotFound)),
        "got {result:?}"
    );
}

async fn load_call_returns_the_session_with_its_caller(store: Arc<dyn Store>) {
    // Arrange
    let (caller_id, session) = caller_with_session(store.as_ref(), "call-1", at(0)).await;
    let caller = store
        .get_caller(caller_id)
        .await
        .expect("get")
        .expect("caller");

    // Act
    let loaded = store
        .load_call(Platform::Vapi, "call-1")
        .await
        .expect("load");

    // Assert
    assert_eq!(loaded, Some((session, Some(caller))));
}

async fn load_call_of_a_session_without_caller_or_of_an_unknown_call(store: Arc<dyn Store>) {
    // Arrange
    let anonymous = create(store.as_ref(), &new_session("call-1", None, at(0))).await;

    // Act
    let loaded = store
        .load_call(Platform::Vapi, "call-1")
        .await
        .expect("load");
    let other_platform = store
        .load_call(Platform::Retell, "call-1")
        .await
        .expect("load");
    let unknown = store
        .load_call(Platform::Vapi, "call-404")
        .await
        .expect("load");

    // Assert
    assert_eq!(loaded, Some((anonymous, None)));
    assert_eq!(other_platform, None, "the call key is per platform");
    assert_eq!(unknown, None);
}

async fn get_session_of_an_unknown_id_is_none(store: Arc<dyn Store>) {
    // Act
    let session = store.get_session(Uuid::now_v7()).await.expect("get");

    // Assert
    assert_eq!(session, None);
}

async fn close_session_sets_status_and_reason_keeps_the_first_end_and_merges_details(
    store: Arc<dyn Store>,
) {
    // Arrange
    let (_, session) = caller_with_session(store.as_ref(), "call-1", at(0)).await;
    let first = CloseSession {
        details: json!({ "cost": 0.12, "transcript": "hello" }),
        ..close_as(SessionStatus::Ended, at(50))
    };
    let second = CloseSession {
        status: SessionStatus::Dropped,
        ended_reason: Some("silence-timed-out".to_owned()),
        ended_at: at(90),
        details: json!({ "cost": 0.2, "recording_url": "https://example.test/r.wav" }),
    };

    // Act
    let closed = store
        .close_session(session.session_id, &first)
        .await
        .expect("close");
    let reclosed = store
        .close_session(session.session_id, &second)
        .await
        .expect("close");

    // Assert
    assert_eq!(closed.status, SessionStatus::Ended);
    assert_eq!(closed.ended_reason.as_deref(), Some("customer-ended-call"));
    assert_eq!(closed.ended_at, Some(at(50)));
    assert_eq!(
        closed.details,
        json!({ "cost": 0.12, "transcript": "hello" })
    );
    assert!(closed.version > session.version);
    assert_eq!(reclosed.status, SessionStatus::Dropped);
    assert_eq!(reclosed.ended_reason.as_deref(), Some("silence-timed-out"));
    assert_eq!(
        reclosed.ended_at,
        Some(at(50)),
        "the first end time is kept"
    );
    assert_eq!(
        reclosed.details,
        json!({ "cost": 0.2, "transcript": "hello", "recording_url": "https://example.test/r.wav" })
    );
    let stored = store.get_session(session.session_id).await.expect("get");
    assert_eq!(stored, Some(reclosed));
}

async fn close_session_keeps_a_completed_status(store: Arc<dyn Store>) {
    // Arrange
    let new = NewSession {
        status: SessionStatus::Completed,
        ..new_session("call-1", None, at(0))
    };
    let session = create(store.as_ref(), &new).await;

    // Act
    let closed = store
        .close_session(
            session.session_id,
            &close_as(SessionStatus::Dropped, at(60)),
        )
        .await
        .expect("close");

    // Assert
    assert_eq!(closed.status, SessionStatus::Completed);
    assert_eq!(closed.ended_at, Some(at(60)));
}

async fn closing_an_unknown_session_is_not_found(store: Arc<dyn Store>) {
    // Act
    let closed = store
        .close_session(Uuid::now_v7(), &close_as(SessionStatus::Ended, at(0)))
        .await;

    // Assert
    assert!(
        matches!(closed, Err(StoreError::NotFound)),
        "got {closed:?}"
    );
}

async fn start_call_stores_the_caller_and_session_and_closes_the_abandoned_call_at_once(
    store: Arc<dyn Store>,
) {
    // Arrange: the caller's earlier call went silent.
    let (caller_id, abandoned) = caller_with_session(store.as_ref(), "call-1", at(0)).await;
    let start = CallStart {
        session: NewSession {
            attempt: 2,
            resumes_session_id: Some(abandoned.session_id),
            ..new_session("call-2", None, at(100))
        },
        phone: Some(PHONE.to_owned()),
        close_previous: Some((
            abandoned.session_id,
            close_as(SessionStatus::Dropped, at(40)),
        )),
        now: at(100),
    };

    // Act
    let started = store.start_call(&start).await.expect("start call");

    // Assert
    assert!(started.created);
    let caller = started.caller.expect("the caller");
    assert_eq!(
        caller.caller_id, caller_id,
        "the known caller, found by number"
    );
    assert_eq!(
        caller.call_count, 1,
        "as it was before this call was counted"
    );
    assert_eq!(caller.last_seen_at, at(100));
    let session = &started.session;
    assert_eq!(session.session_id, start.session.session_id);
    assert_eq!(session.caller_id, Some(caller_id));
    assert_eq!(
        (session.prior_calls, session.prior_call_at),
        (1, Some(at(0)))
    );
    assert_eq!(session.resumes_session_id, Some(abandoned.session_id));
    let previous = stored_session(store.as_ref(), abandoned.session_id).await;
    assert_eq!(previous.status, SessionStatus::Dropped);
    assert_eq!(previous.ended_at, Some(at(40)));
    let counted = store
        .get_caller(caller_id)
        .await
        .expect("get")
        .expect("caller");
    assert_eq!(counted.call_count, 2);
    assert_eq!(counted.last_call_at, Some(at(100)));
}

async fn start_call_of_a_stored_call_keeps_its_session_and_counts_it_once(store: Arc<dyn Store>) {
    // Arrange: two requests of one new call, each planning its own session.
    let start = |started_at: i64| CallStart {
        session: new_session("call-1", None, at(started_at)),
        phone: Some(PHONE.to_owned()),
        close_previous: None,
        now: at(started_at),
    };
    let (first, second) = (start(10), start(11));

    // Act
    let one = store.start_call(&first).await.expect("first");
    let two = store.start_call(&second).await.expect("second");

    // Assert
    assert!(one.created && !two.created);
    assert_eq!(two.session, one.session, "the stored session is kept");
    let caller = store
        .get_caller_by_phone(PHONE)
        .await
        .expect("get")
        .expect("caller");
    assert_eq!(caller.call_count, 1);
    assert_eq!(caller.last_seen_at, at(11));
}

async fn start_call_without_a_number_or_with_a_vanished_previous_call_still_starts(
    store: Arc<dyn Store>,
) {
    // Arrange
    let start = CallStart {
        session: new_session("call-anonymous", None, at(5)),
        phone: None,
        close_previous: Some((Uuid::now_v7(), close_as(SessionStatus::Dropped, at(1)))),
        now: at(5),
    };

    // Act
    let started = store.start_call(&start).await.expect("start call");

    // Assert
    assert!(started.created);
    assert_eq!(started.caller, None);
    assert_eq!(started.session.caller_id, None);
    assert_eq!(
        stored_session(store.as_ref(), start.session.session_id).await,
        started.session
    );
}
