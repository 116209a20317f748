//! Confirmed answers: atomic, idempotent, completing the session.

use super::*;
use redial::storage::Answer;

on_both_backends!(
    record_answer_stores_the_answer_and_bumps_the_version,
    record_answer_completes_the_session_once_every_required_field_is_answered,
    recording_the_same_answer_again_changes_nothing_and_a_new_value_replaces_it,
    concurrent_answers_to_different_fields_all_land,
    record_answer_on_an_unknown_session_is_not_found,
);

async fn record_answer_stores_the_answer_and_bumps_the_version(store: Arc<dyn Store>) {
    // Arrange
    let (_, session) = caller_with_session(store.as_ref(), "call-1", at(0)).await;
    let required = names(&["name", "loan_purpose"]);

    // Act
    let outcome = store
        .record_answer(session.session_id, "name", "Ada", &required, at(10))
        .await
        .expect("record");

    // Assert
    assert!(outcome.changed);
    let answer = Answer {
        value: "Ada".to_owned(),
        confirmed_at: at(10),
    };
    assert_eq!(outcome.session.answers.get("name"), Some(&answer));
    assert_eq!(outcome.session.status, SessionStatus::Active);
    assert_eq!(outcome.session.version, session.version + 1);
    assert_eq!(outcome.session.last_activity_at, at(10));
    let stored = store.get_session(session.session_id).await.expect("get");
    assert_eq!(stored, Some(outcome.session));
}

async fn record_answer_completes_the_session_once_every_required_field_is_answered(
    store: Arc<dyn Store>,
) {
    // Arrange
    let (_, session) = caller_with_session(store.as_ref(), "call-1", at(0)).await;
    let id = session.session_id;
    let required = names(&["name", "loan_purpose"]);

    // Act
    let partial = store
        .record_answer(id, "name", "Ada", &required, at(10))
        .await;
    let optional = store
        .record_answer(id, "note", "n/a", &required, at(15))
        .await;
    let full = store
        .record_answer(id, "loan_purpose", "roof", &required, at(20))
        .await;

    // Assert
    assert_eq!(
        partial.expect("first").session.status,
        SessionStatus::Active
    );
    assert_eq!(
        optional.expect("optional").session.status,
        SessionStatus::Active
    );
    assert_eq!(full.expect("last").session.status, SessionStatus::Completed);
    let stored = store.get_session(id).await.expect("get").expect("session");
    assert_eq!(stored.status, SessionStatus::Completed);
}

async fn recording_the_same_answer_again_changes_nothing_and_a_new_value_replaces_it(
    store: Arc<dyn Store>,
) {
    // Arrange
    let (_, session) = caller_with_session(store.as_ref(), "call-1", at(0)).await;
    let id = session.session_id;
    let first = store
        .record_answer(id, "name", "Ada", &[], at(10))
        .await
        .expect("first");

    // Act
    let repeat = store
        .record_answer(id, "name", "Ada", &[], at(20))
        .await
        .expect("repeat");
    let changed = store
        .record_answer(id, "name", "Grace", &[], at(30))
        .await
        .expect("change");

    // Assert
    assert!(!repeat.changed);
    assert_eq!(
        repeat.session, first.session,
        "a repeated answer changes nothing"
    );
    assert!(changed.changed);
    let answer = Answer {
        value: "Grace".to_owned(),
        confirmed_at: at(30),
    };
    assert_eq!(changed.session.answers.get("name"), Some(&answer));
    assert_eq!(changed.session.version, first.session.version + 1);
}

async fn concurrent_answers_to_different_fields_all_land(store: Arc<dyn Store>) {
    // Arrange
    let (_, session) = caller_with_session(store.as_ref(), "call-1", at(0)).await;
    let fields: Vec<String> = (0..20).map(|i| format!("field_{i:02}")).collect();

    // Act
    let writers = fields.iter().enumerate().map(|(i, field)| {
        let (store, field, required) = (Arc::clone(&store), field.clone(), fields.clone());
        let now = at(1 + i64::try_from(i).expect("small index"));
        tokio::spawn(async move {
            store
                .record_answer(session.session_id, &field, "yes", &required, now)
                .await
        })
    });
    let outcomes: Vec<_> = futures_util::future::join_all(writers)
        .await
        .into_iter()
        .map(|r| r.expect("task").expect("record answer"))
        .collect();

    // Assert
    assert!(outcomes.iter().all(|o| o.changed));
    let stored = store
        .get_session(session.session_id)
        .await
        .expect("get")
        .expect("session");
    let stored_fields: Vec<&String> = stored.answers.keys().collect();
    assert_eq!(stored_fields, fields.iter().collect::<Vec<_>>());
    assert_eq!(stored.version, session.version + 20);
    assert_eq!(stored.status, SessionStatus::Completed);
    assert_eq!(
        stored.last_activity_at,
        at(20),
        "activity never moves backwards"
    );
}

async fn record_answer_on_an_unknown_session_is_not_found(store: Arc<dyn Store>) {
    // Act
    let result = store
        .record_answer(Uuid::now_v7(), "name", "Ada", &[], at(0))
        .await;

    // Assert
    assert!(
        matches!(result, Err(StoreError::NotFound)),
        "got {result:?}"
    );
}
