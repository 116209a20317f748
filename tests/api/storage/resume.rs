//! `find_resumable`: which earlier call a redial continues.

use super::*;

on_both_backends!(
    find_resumable_returns_the_newest_ended_or_dropped_session,
    find_resumable_only_considers_the_callers_sessions_with_that_assistant_in_the_window,
    find_resumable_takes_an_active_session_only_once_it_went_stale,
    find_resumable_never_returns_a_completed_or_excluded_session,
    find_resumable_skips_a_session_another_already_resumed,
);

/// Creates a session for `caller_id` and closes it with `status` a minute later.
async fn ended_session(store: &dyn Store, new: NewSession, status: SessionStatus) -> CallSession {
    let ended_at = new.started_at + TimeDelta::seconds(60);
    let session = create(store, &new).await;
    store
        .close_session(session.session_id, &close_as(status, ended_at))
        .await
        .expect("close")
}

async fn find_resumable_returns_the_newest_ended_or_dropped_session(store: Arc<dyn Store>) {
    // Arrange
    let caller = store.upsert_caller(PHONE, at(0)).await.expect("upsert");
    let id = Some(caller.caller_id);
    let s = store.as_ref();
    ended_session(s, new_session("call-1", id, at(0)), SessionStatus::Ended).await;
    let dropped = ended_session(
        s,
        new_session("call-2", id, at(100)),
        SessionStatus::Dropped,
    )
    .await;

    // Act
    let found = store
        .find_resumable(caller.caller_id, ASSISTANT, at(-3600), at(0), None)
        .await
        .expect("find");

    // Assert
    assert_eq!(found, Some(dropped));
}

async fn find_resumable_only_considers_the_callers_sessions_with_that_assistant_in_the_window(
    store: Arc<dyn Store>,
) {
    // Arrange
    let caller = store.upsert_caller(PHONE, at(0)).await.expect("upsert");
    let other = store
        .upsert_caller(OTHER_PHONE, at(0))
        .await
        .expect("upsert");
    let s = store.as_ref();
    let old = ended_session(
        s,
        new_session("call-1", Some(caller.caller_id), at(0)),
        SessionStatus::Ended,
    )
    .await;
    let other_assistant = NewSession {
        assistant_id: "asst-other".to_owned(),
        ..new_session("call-2", Some(caller.caller_id), at(100))
    };
    ended_session(s, other_assistant, SessionStatus::Ended).await;
    let other_caller = new_session("call-3", Some(other.caller_id), at(200));
    ended_session(s, other_caller, SessionStatus::Ended).await;

    // Act
    let in_window = store
        .find_resumable(caller.caller_id, ASSISTANT, at(0), at(0), None)
        .await
        .expect("find");
    let past_window = store
        .find_resumable(caller.caller_id, ASSISTANT, at(1), at(0), None)
        .await
        .expect("find");

    // Assert
    assert_eq!(
        in_window,
        Some(old),
        "a session started at the window's start counts"
    );
    assert_eq!(past_window, None);
}

async fn find_resumable_takes_an_active_session_only_once_it_went_stale(store: Arc<dyn Store>) {
    // Arrange
    let (caller_id, session) = caller_with_session(store.as_ref(), "call-1", at(0)).await;
    store
        .append_turns(session.session_id, &[user_turn("t", "still here", at(30))])
        .await
        .expect("a turn at 30 s");

    // Act
    let live = store
        .find_resumable(caller_id, ASSISTANT, at(-3600), at(30), None)
        .await
        .expect("find");
    let stale = store
        .find_resumable(caller_id, ASSISTANT, at(-3600), at(31), None)
        .await
        .expect("find");

    // Assert
    assert_eq!(live, None, "activity at the staleness bound is still live");
    assert_eq!(stale.map(|s| s.session_id), Some(session.session_id));
}

async fn find_resumable_never_returns_a_completed_or_excluded_session(store: Arc<dyn Store>) {
    // Arrange
    let caller = store.upsert_caller(PHONE, at(0)).await.expect("upsert");
    let id = Some(caller.caller_id);
    let s = store.as_ref();
    let ended = ended_session(s, new_session("call-1", id, at(0)), SessionStatus::Ended).await;
    let completed = NewSession {
        status: SessionStatus::Completed,
        ..new_session("call-2", id, at(100))
    };
    ended_session(s, completed, SessionStatus::Ended).await;

    // Act
    let found = store
        .find_resumable(caller.caller_id, ASSISTANT, at(-3600), at(1000), None)
        .await
        .expect("find");
    let excluded = store
        .find_resumable(
            caller.caller_id,
            ASSISTANT,
            at(-3600),
            at(1000),
            Some(ended.session_id),
        )
        .await
        .expect("find");

    // Assert
    assert_eq!(found, Some(ended), "the newer completed session is skipped");
    assert_eq!(excluded, None);
}

async fn find_resumable_skips_a_session_another_already_resumed(store: Arc<dyn Store>) {
    // Arrange: call-1 dropped, call-2 resumed it and dropped too.
    let caller = store.upsert_caller(PHONE, at(0)).await.expect("upsert");
    let id = Some(caller.caller_id);
    let s = store.as_ref();
    let first = ended_session(s, new_session("call-1", id, at(0)), SessionStatus::Dropped).await;
    let resuming = NewSession {
        attempt: 2,
        resumes_session_id: Some(first.session_id),
        ..new_session("call-2", id, at(100))
    };
    let second = ended_session(s, resuming, SessionStatus::Dropped).await;

    // Act
    let found = store
        .find_resumable(
            caller.caller_id,
            ASSISTANT,
            at(-3600),
            at(1000),
            Some(second.session_id),
        )
        .await
        .expect("find");
    let newest = store
        .find_resumable(caller.caller_id, ASSISTANT, at(-3600), at(1000), None)
        .await
        .expect("find");

    // Assert
    assert_eq!(found, None, "call-1 was already resumed by call-2");
    assert_eq!(newest.map(|s| s.session_id), Some(second.session_id));
}
