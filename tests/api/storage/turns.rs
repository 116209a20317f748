//! The turn log: ordered, idempotent, advancing the session's activity.

use super::*;
use redial::platforms::Platform;
use redial::storage::{AuditAction, AuditActor, CallStart, NewAudit, Saved, Turn, TurnWrite};

on_both_backends!(
    append_turns_stores_turns_in_order_and_advances_last_activity,
    append_turns_skips_turns_whose_key_is_already_stored,
    turns_of_an_unknown_session_are_not_found_and_list_empty,
    save_turn_stores_turns_in_order_with_the_model_activity_and_audit,
    saving_a_turn_again_adds_no_turn_and_keeps_activity_but_appends_its_audit_again,
    save_turn_never_moves_activity_backwards_and_touches_only_for_a_turn_or_a_model,
    save_turn_for_an_unknown_session_fails_and_stores_nothing,
    save_turns_stores_a_batch_of_several_sessions_as_saves_in_order_and_skips_unknown_sessions,
    a_key_repeated_within_a_batch_is_stored_once_for_its_first_item,
    an_empty_batch_stores_nothing,
    a_batch_larger_than_one_statement_is_stored_whole,
    concurrent_batches_over_the_same_sessions_in_opposite_orders_all_commit,
    a_batch_starts_its_calls_with_their_turns_in_one_transaction,
    starts_of_one_call_in_a_batch_are_applied_once_and_its_items_share_the_stored_session,
    a_start_for_a_call_already_stored_adopts_its_session_and_audits_a_read,
    a_start_already_stored_under_the_same_session_id_is_adopted,
    two_new_calls_of_one_caller_in_a_batch_are_counted_in_turn,
    a_start_in_a_batch_closes_the_abandoned_call_it_resumes,
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

async fn save_turn_stores_turns_in_order_with_the_model_activity_and_audit(store: Arc<dyn Store>) {
    // Arrange
    let (caller, session) = caller_with_session(store.as_ref(), "call-1", at(0)).await;
    let reply = NewTurn {
        role: TurnRole::Assistant,
        ..user_turn("r1", "Nice to meet you, Ada.", at(3))
    };
    let turns = vec![
        user_turn("m1", "Hello", at(1)),
        user_turn("m2", "My name is Ada", at(2)),
        reply,
    ];
    let audit = [turn_audit(caller, session.session_id, at(3))];

    // Act
    let inserted = store
        .save_turn(session.session_id, &turns, Some("gpt-next"), &audit)
        .await
        .expect("save turn");

    // Assert
    assert_eq!(inserted, 3);
    let listed = store.list_turns(session.session_id).await.expect("list");
    assert_eq!(listed.iter().map(to_new).collect::<Vec<_>>(), turns);
    assert!(listed.windows(2).all(|w| w[0].seq < w[1].seq));
    let stored = stored_session(store.as_ref(), session.session_id).await;
    assert_eq!(stored.last_activity_at, at(3));
    assert_eq!(stored.model.as_deref(), Some("gpt-next"));
    assert_eq!(stored.version, session.version + 1, "one touch, one bump");
    let trail = store.list_audit(caller, 10).await.expect("audit");
    assert_eq!(trail.len(), 1);
    assert_eq!(
        (
            trail[0].session_id,
            trail[0].reason.as_str(),
            trail[0].created_at
        ),
        (Some(session.session_id), "turn", at(3))
    );
}

async fn saving_a_turn_again_adds_no_turn_and_keeps_activity_but_appends_its_audit_again(
    store: Arc<dyn Store>,
) {
    // Arrange
    let (caller, session) = caller_with_session(store.as_ref(), "call-1", at(0)).await;
    let id = session.session_id;
    let turns = [
        user_turn("m1", "Hello", at(1)),
        user_turn("m2", "Ada", at(2)),
    ];
    let audit = [turn_audit(caller, id, at(2))];
    store
        .save_turn(id, &turns, Some("gpt-test"), &audit)
        .await
        .expect("first save");
    // A retry mints new times for the same keys.
    let retried = [
        user_turn("m1", "Hello", at(8)),
        user_turn("m2", "Ada", at(9)),
    ];

    // Act
    let again = store
        .save_turn(id, &retried, Some("gpt-test"), &audit)
        .await
        .expect("save again");
    let extended = store
        .save_turn(
            id,
            &[turns[1].clone(), user_turn("m3", "Yes", at(5))],
            None,
            &[],
        )
        .await
        .expect("save with one new turn");

    // Assert
    assert_eq!((again, extended), (0, 1));
    let listed = store.list_turns(id).await.expect("list");
    let keys: Vec<(&str, DateTime<Utc>)> = listed
        .iter()
        .map(|t| (t.idempotency_key.as_str(), t.created_at))
        .collect();
    assert_eq!(keys, [("m1", at(1)), ("m2", at(2)), ("m3", at(5))]);
    let stored = stored_session(store.as_ref(), id).await;
    assert_eq!(
        stored.last_activity_at,
        at(5),
        "skipped turns do not move activity"
    );
    assert_eq!(
        store.list_audit(caller, 10).await.expect("audit").len(),
        2,
        "audit entries have no dedupe key: a re-save appends them again"
    );
}

async fn save_turn_never_moves_activity_backwards_and_touches_only_for_a_turn_or_a_model(
    store: Arc<dyn Store>,
) {
    // Arrange
    let (_, session) = caller_with_session(store.as_ref(), "call-1", at(0)).await;
    let id = session.session_id;
    store
        .save_turn(id, &[user_turn("late", "later", at(10))], None, &[])
        .await
        .expect("save the later turn");
    let after_late = stored_session(store.as_ref(), id).await;

    // Act
    let nothing = store.save_turn(id, &[], None, &[]).await.expect("nothing");
    let untouched = stored_session(store.as_ref(), id).await;
    let model_only = store
        .save_turn(id, &[], Some("gpt-fallback"), &[])
        .await
        .expect("model only");
    let with_model = stored_session(store.as_ref(), id).await;
    let early = store
        .save_turn(id, &[user_turn("early", "earlier", at(4))], None, &[])
        .await
        .expect("save an earlier turn");
    let after_early = stored_session(store.as_ref(), id).await;

    // Assert
    assert_eq!((nothing, model_only, early), (0, 0, 1));
    assert_eq!(after_late.last_activity_at, at(10));
    assert_eq!(
        after_late.model.as_deref(),
        Some("gpt-test"),
        "no model given"
    );
    assert_eq!(
        untouched, after_late,
        "no turn and no model: the session is untouched"
    );
    assert_eq!(with_model.model.as_deref(), Some("gpt-fallback"));
    assert_eq!(with_model.last_activity_at, at(10));
    assert_eq!(with_model.version, after_late.version + 1);
    assert_eq!(after_early.last_activity_at, at(10), "never backwards");
    assert_eq!(after_early.model.as_deref(), Some("gpt-fallback"));
    assert_eq!(after_early.version, with_model.version + 1);
}

async fn save_turn_for_an_unknown_session_fails_and_stores_nothing(store: Arc<dyn Store>) {
    // Arrange
    let caller = store
        .upsert_caller(PHONE, at(0))
        .await
        .expect("upsert")
        .caller_id;
    let unknown = Uuid::now_v7();

    // Act
    let saved = store
        .save_turn(
            unknown,
            &[user_turn("m1", "Hello", at(1))],
            Some("gpt-test"),
            &[turn_audit(caller, unknown, at(1))],
        )
        .await;
    let empty = store
        .save_turn(unknown, &[], None, &[turn_audit(caller, unknown, at(1))])
        .await;

    // Assert
    assert!(matches!(saved, Err(StoreError::NotFound)), "got {saved:?}");
    assert!(matches!(empty, Err(StoreError::NotFound)), "got {empty:?}");
    assert!(store.list_turns(unknown).await.expect("list").is_empty());
    assert!(
        store
            .list_audit(caller, 10)
            .await
            .expect("audit")
            .is_empty(),
        "no audit entry without its turn"
    );
}

async fn save_turns_stores_a_batch_of_several_sessions_as_saves_in_order_and_skips_unknown_sessions(
    store: Arc<dyn Store>,
) {
    // Arrange
    let (caller, first) = caller_with_session(store.as_ref(), "call-1", at(0)).await;
    let (_, second) = caller_with_session(store.as_ref(), "call-2", at(0)).await;
    let unknown = Uuid::now_v7();
    let batch = [
        TurnWrite {
            session_id: first.session_id,
            turns: vec![
                user_turn("a1", "Hello", at(1)),
                user_turn("a2", "Ada", at(2)),
            ],
            model: Some("gpt-one".to_owned()),
            audit: vec![turn_audit(caller, first.session_id, at(2))],
            usage: Vec::new(),
            start: None,
        },
        TurnWrite {
            session_id: unknown,
            turns: vec![user_turn("u1", "lost", at(3))],
            model: Some("gpt-unknown".to_owned()),
            audit: vec![turn_audit(caller, unknown, at(3))],
            usage: Vec::new(),
            start: None,
        },
        TurnWrite {
            session_id: second.session_id,
            turns: vec![user_turn("b1", "Hi", at(4))],
            model: None,
            audit: vec![turn_audit(caller, second.session_id, at(4))],
            usage: Vec::new(),
            start: None,
        },
        // The first session's next turn, queued behind the others; "a2" is already in the
        // batch, so only "a3" is new.
        TurnWrite {
            session_id: first.session_id,
            turns: vec![user_turn("a2", "Ada", at(5)), user_turn("a3", "Yes", at(6))],
            model: Some("gpt-two".to_owned()),
            audit: vec![],
            usage: Vec::new(),
            start: None,
        },
    ];

    // Act
    let results = store.save_turns(&batch).await.expect("save batch");

    // Assert
    assert_eq!(results, [Some(2), None, Some(1), Some(1)]);
    let keys = |turns: Vec<Turn>| -> Vec<String> {
        turns.into_iter().map(|t| t.idempotency_key).collect()
    };
    assert_eq!(
        keys(store.list_turns(first.session_id).await.expect("list")),
        ["a1", "a2", "a3"]
    );
    assert_eq!(
        keys(store.list_turns(second.session_id).await.expect("list")),
        ["b1"]
    );
    assert!(store.list_turns(unknown).await.expect("list").is_empty());
    let first_stored = stored_session(store.as_ref(), first.session_id).await;
    assert_eq!(first_stored.last_activity_at, at(6));
    assert_eq!(
        first_stored.model.as_deref(),
        Some("gpt-two"),
        "the last model wins"
    );
    assert_eq!(
        first_stored.version,
        first.version + 2,
        "two items touched it: two bumps, as two saves"
    );
    let second_stored = stored_session(store.as_ref(), second.session_id).await;
    assert_eq!(second_stored.last_activity_at, at(4));
    assert_eq!(second_stored.model, second.model, "no model given");
    assert_eq!(second_stored.version, second.version + 1);
    let trail = store.list_audit(caller, 10).await.expect("audit");
    let mut audited: Vec<Option<Uuid>> = trail.iter().map(|e| e.session_id).collect();
    audited.sort();
    let mut expected = vec![Some(first.session_id), Some(second.session_id)];
    expected.sort();
    assert_eq!(audited, expected, "no audit entry for the unknown session");
}

async fn a_key_repeated_within_a_batch_is_stored_once_for_its_first_item(store: Arc<dyn Store>) {
    // Arrange: a re-sent request queued right behind the original.
    let (_, session) = caller_with_session(store.as_ref(), "call-1", at(0)).await;
    let write = |content: &str, when: i64| TurnWrite {
        session_id: session.session_id,
        turns: vec![user_turn("m1", content, at(when))],
        model: None,
        audit: vec![],
        usage: Vec::new(),
        start: None,
    };

    // Act
    let results = store
        .save_turns(&[write("original", 1), write("re-sent", 2)])
        .await
        .expect("save batch");

    // Assert
    assert_eq!(results, [Some(1), Some(0)]);
    let listed = store.list_turns(session.session_id).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].content, "original");
    let stored = stored_session(store.as_ref(), session.session_id).await;
    assert_eq!(stored.last_activity_at, at(1));
    assert_eq!(
        stored.version,
        session.version + 1,
        "the re-sent item inserted nothing and gave no model: no touch"
    );
}

async fn an_empty_batch_stores_nothing(store: Arc<dyn Store>) {
    // Act
    let results = store.save_turns(&[]).await.expect("empty batch");

    // Assert
    assert!(results.is_empty());
}

async fn a_batch_larger_than_one_statement_is_stored_whole(store: Arc<dyn Store>) {
    // Arrange: 4,500 turns of 8 parameters each, more than one insert statement may bind.
    let (_, session) = caller_with_session(store.as_ref(), "call-1", at(0)).await;
    let turns: Vec<NewTurn> = (0..4_500)
        .map(|i| user_turn(&format!("m{i}"), "a", at(1)))
        .collect();
    let write = TurnWrite {
        session_id: session.session_id,
        turns,
        model: None,
        audit: vec![],
        usage: Vec::new(),
        start: None,
    };

    // Act
    let results = store
        .save_turns(std::slice::from_ref(&write))
        .await
        .expect("save a long turn");

    // Assert
    assert_eq!(results, [Some(4_500)]);
    let listed = store.list_turns(session.session_id).await.expect("list");
    assert_eq!(listed.len(), 4_500);
    assert_eq!(
        listed[4_499].idempotency_key, "m4499",
        "order is kept across statements"
    );
}

async fn concurrent_batches_over_the_same_sessions_in_opposite_orders_all_commit(
    store: Arc<dyn Store>,
) {
    // Arrange: two writers (two instances, say) each batching turns of the same two calls, in
    // opposite orders. Locking in batch order would deadlock them.
    let (_, first) = caller_with_session(store.as_ref(), "call-1", at(0)).await;
    let (_, second) = caller_with_session(store.as_ref(), "call-2", at(0)).await;
    let writer = |sessions: [Uuid; 2], name: &'static str| {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            for round in 0..20 {
                let batch: Vec<TurnWrite> = sessions
                    .iter()
                    .map(|session_id| TurnWrite {
                        session_id: *session_id,
                        turns: vec![user_turn(&format!("{name}-{round}"), "hi", at(round))],
                        model: None,
                        audit: vec![],
                        usage: Vec::new(),
                        start: None,
                    })
                    .collect();
                store.save_turns(&batch).await?;
            }
            Ok::<_, StoreError>(())
        })
    };

    // Act
    let forward = writer([first.session_id, second.session_id], "forward");
    let backward = writer([second.session_id, first.session_id], "backward");
    let (forward, backward) = (forward.await.expect("join"), backward.await.expect("join"));

    // Assert
    forward.expect("forward batches commit");
    backward.expect("backward batches commit");
    for session in [first.session_id, second.session_id] {
        assert_eq!(store.list_turns(session).await.expect("list").len(), 40);
    }
}

/// The audit entry the engine writes with a turn.
fn turn_audit(caller_id: Uuid, session_id: Uuid, created_at: DateTime<Utc>) -> NewAudit {
    NewAudit {
        entry_key: None,
        caller_id: Some(caller_id),
        session_id: Some(session_id),
        actor: AuditActor::Engine(Platform::Vapi),
        action: AuditAction::Read,
        reason: "turn".to_owned(),
        details: json!({ "memory_used": true }),
        created_at,
    }
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

/// A call's first turn as the engine hands it to the writer: its start (a new session for
/// `call_key`, the caller by `phone`) and its turns, audited as a create naming no caller yet.
fn first_turn(call_key: &str, phone: Option<&str>, keys: &[&str], now: DateTime<Utc>) -> TurnWrite {
    let session = new_session(call_key, None, now);
    let session_id = session.session_id;
    TurnWrite {
        session_id,
        turns: keys.iter().map(|k| user_turn(k, k, now)).collect(),
        model: Some("gpt-test".to_owned()),
        audit: phone
            .map(|_| NewAudit {
                caller_id: None,
                action: AuditAction::Create,
                ..turn_audit(Uuid::nil(), session_id, now)
            })
            .into_iter()
            .collect(),
        usage: Vec::new(),
        start: Some(CallStart {
            session,
            phone: phone.map(str::to_owned),
            close_previous: None,
            now,
        }),
    }
}

fn started_of(saved: &Saved) -> &redial::storage::StartedCall {
    saved
        .started
        .as_ref()
        .expect("an item with a start reports it")
}

async fn a_batch_starts_its_calls_with_their_turns_in_one_transaction(store: Arc<dyn Store>) {
    // Arrange
    let batch = [
        first_turn("call-1", Some(PHONE), &["a1", "a2"], at(1)),
        first_turn("call-2", Some(OTHER_PHONE), &["b1"], at(2)),
        first_turn("call-3", None, &["c1"], at(3)),
    ];

    // Act
    let saved = store.save_batch(&batch).await.expect("save batch");

    // Assert
    assert_eq!(saved.len(), 3);
    for (item, saved) in batch.iter().zip(&saved) {
        let started = started_of(saved);
        assert!(started.created);
        assert_eq!(started.session.session_id, item.session_id);
        let (session, caller) = store
            .load_call(
                Platform::Vapi,
                &item.start.as_ref().unwrap().session.call_key,
            )
            .await
            .expect("load")
            .expect("the call's session is stored");
        assert_eq!(session.session_id, item.session_id);
        assert_eq!(session.model.as_deref(), Some("gpt-test"));
        let keys: Vec<String> = store
            .list_turns(item.session_id)
            .await
            .expect("list")
            .into_iter()
            .map(|t| t.idempotency_key)
            .collect();
        let expected: Vec<String> = item
            .turns
            .iter()
            .map(|t| t.idempotency_key.clone())
            .collect();
        assert_eq!(keys, expected);
        match &item.start.as_ref().unwrap().phone {
            Some(phone) => {
                let caller = caller.expect("the caller is stored");
                assert_eq!(&caller.phone, phone);
                assert_eq!(caller.call_count, 1);
                assert_eq!(
                    started.caller.as_ref().map(|c| c.caller_id),
                    Some(caller.caller_id)
                );
                let audit = store.list_audit(caller.caller_id, 10).await.expect("audit");
                assert_eq!(audit.len(), 1, "{audit:?}");
                assert_eq!(audit[0].action, AuditAction::Create);
                assert_eq!(audit[0].session_id, Some(item.session_id));
            }
            None => assert!(caller.is_none() && started.caller.is_none()),
        }
    }
    assert_eq!(
        saved.iter().map(|s| s.inserted).collect::<Vec<_>>(),
        [Some(2), Some(1), Some(1)]
    );
}

async fn starts_of_one_call_in_a_batch_are_applied_once_and_its_items_share_the_stored_session(
    store: Arc<dyn Store>,
) {
    // Arrange: the call's second turn was answered before its first was stored, from a read
    // that found no session (so under a session id of its own).
    let first = first_turn("call-1", Some(PHONE), &["m0"], at(1));
    let second = first_turn("call-1", Some(PHONE), &["m0", "m2"], at(2));

    // Act
    let saved = store
        .save_batch(&[first.clone(), second.clone()])
        .await
        .expect("save batch");

    // Assert
    assert!(started_of(&saved[0]).created);
    assert!(!started_of(&saved[1]).created, "the call was started once");
    assert_eq!(started_of(&saved[1]).session.session_id, first.session_id);
    assert_eq!(
        saved.iter().map(|s| s.inserted).collect::<Vec<_>>(),
        [Some(1), Some(1)]
    );
    let keys: Vec<String> = store
        .list_turns(first.session_id)
        .await
        .expect("list")
        .into_iter()
        .map(|t| t.idempotency_key)
        .collect();
    assert_eq!(keys, ["m0", "m2"]);
    assert!(
        store
            .get_session(second.session_id)
            .await
            .expect("get")
            .is_none()
    );
    let caller = store
        .get_caller_by_phone(PHONE)
        .await
        .expect("caller")
        .expect("stored");
    assert_eq!(caller.call_count, 1, "one call, counted once");
    let audit = store.list_audit(caller.caller_id, 10).await.expect("audit");
    let mut actions: Vec<AuditAction> = audit.iter().map(|e| e.action.clone()).collect();
    actions.sort_by_key(|a| format!("{a:?}"));
    assert_eq!(actions, [AuditAction::Create, AuditAction::Read]);
    assert!(audit.iter().all(|e| e.session_id == Some(first.session_id)));
}

async fn a_start_for_a_call_already_stored_adopts_its_session_and_audits_a_read(
    store: Arc<dyn Store>,
) {
    // Arrange: another request (a webhook, another instance) started the call first.
    let earlier = first_turn("call-1", Some(PHONE), &[], at(0));
    let stored = store
        .start_call(earlier.start.as_ref().unwrap())
        .await
        .expect("start");
    let late = first_turn("call-1", Some(PHONE), &["t1"], at(1));

    // Act
    let saved = store
        .save_batch(std::slice::from_ref(&late))
        .await
        .expect("save");

    // Assert
    let started = started_of(&saved[0]);
    assert!(!started.created);
    assert_eq!(started.session.session_id, stored.session.session_id);
    assert_eq!(saved[0].inserted, Some(1));
    let keys: Vec<String> = store
        .list_turns(stored.session.session_id)
        .await
        .expect("list")
        .into_iter()
        .map(|t| t.idempotency_key)
        .collect();
    assert_eq!(keys, ["t1"]);
    assert!(
        store
            .get_session(late.session_id)
            .await
            .expect("get")
            .is_none()
    );
    let caller_id = stored.caller.expect("caller").caller_id;
    let caller = store
        .get_caller(caller_id)
        .await
        .expect("get")
        .expect("caller");
    assert_eq!(caller.call_count, 1);
    let audit = store.list_audit(caller_id, 10).await.expect("audit");
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0].action, AuditAction::Read);
    assert_eq!(audit[0].session_id, Some(stored.session.session_id));
}

async fn two_new_calls_of_one_caller_in_a_batch_are_counted_in_turn(store: Arc<dyn Store>) {
    // Act
    let batch = [
        first_turn("call-1", Some(PHONE), &["a1"], at(1)),
        first_turn("call-2", Some(PHONE), &["b1"], at(2)),
    ];
    let saved = store.save_batch(&batch).await.expect("save");

    // Assert
    assert!(saved.iter().all(|s| started_of(s).created));
    let caller = store
        .get_caller_by_phone(PHONE)
        .await
        .expect("caller")
        .expect("stored");
    assert_eq!(caller.call_count, 2);
    assert_eq!(caller.last_call_at, Some(at(2)));
    let mut prior: Vec<i64> = Vec::new();
    for item in &batch {
        let session = stored_session(store.as_ref(), item.session_id).await;
        assert_eq!(session.caller_id, Some(caller.caller_id));
        prior.push(session.prior_calls);
    }
    prior.sort_unstable();
    assert_eq!(prior, [0, 1], "each call snapshots the calls before it");
}

async fn a_start_in_a_batch_closes_the_abandoned_call_it_resumes(store: Arc<dyn Store>) {
    // Arrange
    let (caller_id, abandoned) = caller_with_session(store.as_ref(), "call-0", at(0)).await;
    let mut resuming = first_turn("call-1", Some(PHONE), &["r1"], at(60));
    let start = resuming.start.as_mut().unwrap();
    start.session.attempt = 2;
    start.session.resumes_session_id = Some(abandoned.session_id);
    start.close_previous = Some((
        abandoned.session_id,
        close_as(SessionStatus::Dropped, at(5)),
    ));

    // Act
    let saved = store
        .save_batch(std::slice::from_ref(&resuming))
        .await
        .expect("save");

    // Assert
    assert!(started_of(&saved[0]).created);
    let closed = stored_session(store.as_ref(), abandoned.session_id).await;
    assert_eq!(closed.status, SessionStatus::Dropped);
    assert_eq!(closed.ended_at, Some(at(5)));
    let new = stored_session(store.as_ref(), resuming.session_id).await;
    assert_eq!(new.resumes_session_id, Some(abandoned.session_id));
    assert_eq!(new.caller_id, Some(caller_id));
    assert_eq!(new.prior_calls, 1);
}

async fn a_start_already_stored_under_the_same_session_id_is_adopted(store: Arc<dyn Store>) {
    // Arrange: the call's next turn, served from the cache with the first turn's start, ran a
    // tool that stored the start (same session id) before the writer's batch did.
    let first = first_turn("call-1", Some(PHONE), &["t1"], at(1));
    let start = first.start.clone().unwrap();
    let stored = store.start_call(&start).await.expect("the tool's start");

    // Act: the batch brings the same start, and the tool's path runs it once more too.
    let saved = store
        .save_batch(std::slice::from_ref(&first))
        .await
        .expect("save");
    let again = store.start_call(&start).await.expect("start again");

    // Assert
    assert_eq!(stored.session.session_id, first.session_id);
    assert!(!started_of(&saved[0]).created);
    assert_eq!(started_of(&saved[0]).session.session_id, first.session_id);
    assert!(!again.created);
    assert_eq!(saved[0].inserted, Some(1));
    let caller = store
        .get_caller_by_phone(PHONE)
        .await
        .expect("get")
        .expect("caller");
    assert_eq!(caller.call_count, 1);
}
