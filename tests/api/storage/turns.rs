//! The turn log: ordered, idempotent, advancing the session's activity.

use super::*;
use redial::storage::Turn;

on_both_backends!(
    append_turns_stores_turns_in_order_and_advances_last_activity,
    append_turns_skips_turns_whose_key_is_already_stored,
    turns_of_an_unknown_session_are_not_found_and_list_empty,
);

async fn append_turns_stores_turns_in_order_and_advances_last_activity(store: Arc<dyn Store>) {
    // Arrange
    let (_, session) = caller_with_session(store.as_ref(), "call-1", at(0)).await;
    let (_, other) = caller_with_session(store.as_ref(), "call-2", at(0)).await;
    let tool_call = NewTurn {
        role: TurnRole::ToolCall,
        tool_name: Some("record_answer".to_owned()),
        tool_call_id: Some("call_abc".to_owned()),
        ..user_turn("t2", r#"{"field":"name","value":"Ada"}"#, at(2))
    };
    let tool_result = NewTurn {
        role: TurnRole::ToolResult,
        ..user_turn("t3", "ok", at(3))
    };
    let partial_reply = NewTurn {
        role: TurnRole::Assistant,
        partial: true,
        ..user_turn("t4", "Thanks, Ada. And what is the loan f", at(4))
    };
    let turns = vec![
        user_turn("t1", "My name is Ada", at(1)),
        tool_call,
        tool_result,
        partial_reply,
    ];
    store
        .append_turns(other.session_id, &[user_turn("t1", "elsewhere", at(9))])
        .await
        .expect("append to the other session");

    // Act
    let inserted = store
        .append_turns(session.session_id, &turns)
        .await
        .expect("append");

    // Assert
    assert_eq!(inserted, 4);
    let listed = store.list_turns(session.session_id).await.expect("list");
    let as_new: Vec<NewTurn> = listed.iter().map(to_new).collect();
    assert_eq!(as_new, turns);
    assert!(listed.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(listed.iter().all(|t| t.session_id == session.session_id));
    let stored = store
        .get_session(session.session_id)
        .await
        .expect("get")
        .expect("session");
    assert_eq!(stored.last_activity_at, at(4));
}

async fn append_turns_skips_turns_whose_key_is_already_stored(store: Arc<dyn Store>) {
    // Arrange
    let (_, session) = caller_with_session(store.as_ref(), "call-1", at(0)).await;
    let id = session.session_id;
    let first = [user_turn("a", "one", at(1)), user_turn("b", "two", at(2))];
    store.append_turns(id, &first).await.expect("first append");
    let retried = [
        user_turn("b", "two, retried", at(3)),
        user_turn("c", "three", at(4)),
        user_turn("c", "three, again", at(5)),
    ];

    // Act
    let inserted = store.append_turns(id, &retried).await.expect("retry");
    let repeated = store.append_turns(id, &first).await.expect("repeat");

    // Assert
    assert_eq!((inserted, repeated), (1, 0));
    let listed = store.list_turns(id).await.expect("list");
    let contents: Vec<(&str, &str)> = listed
        .iter()
        .map(|t| (t.idempotency_key.as_str(), t.content.as_str()))
        .collect();
    assert_eq!(contents, [("a", "one"), ("b", "two"), ("c", "three")]);
    let stored = store.get_session(id).await.expect("get").expect("session");
    assert_eq!(
        stored.last_activity_at,
        at(4),
        "skipped turns do not move activity"
    );
}

async fn turns_of_an_unknown_session_are_not_found_and_list_empty(store: Arc<dyn Store>) {
    // Act
    let appended = store
        .append_turns(Uuid::now_v7(), &[user_turn("a", "hello", at(0))])
        .await;
    let listed = store.list_turns(Uuid::now_v7()).await.expect("list");

    // Assert
    assert!(
        matches!(appended, Err(StoreError::NotFound)),
        "got {appended:?}"
    );
    assert!(listed.is_empty());
}

fn to_new(turn: &Turn) -> NewTurn {
    NewTurn {
        idempotency_key: turn.idempotency_key.clone(),
        role: turn.role,
        content: turn.content.clone(),
        tool_name: turn.tool_name.clone(),
        tool_call_id: turn.tool_call_id.clone(),
        partial: turn.partial,
        created_at: turn.created_at,
    }
}
