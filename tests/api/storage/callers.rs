//! Callers: upsert by phone, lookups, profile updates.

use super::*;
use redial::storage::CallerPatch;

on_both_backends!(
    upsert_caller_creates_one_caller_per_phone_and_moves_last_seen,
    callers_are_found_by_id_and_by_phone_and_unknown_ones_are_none,
    update_caller_sets_the_profile_and_adds_each_note_once,
    update_caller_of_an_unknown_caller_is_not_found,
    attach_caller_names_the_caller_of_a_session_stored_without_one_once,
);

async fn upsert_caller_creates_one_caller_per_phone_and_moves_last_seen(store: Arc<dyn Store>) {
    // Act
    let first = store
        .upsert_caller(PHONE, at(0))
        .await
        .expect("first upsert");
    let again = store
        .upsert_caller(PHONE, at(60))
        .await
        .expect("second upsert");
    let other = store
        .upsert_caller(OTHER_PHONE, at(90))
        .await
        .expect("other upsert");

    // Assert
    assert_eq!(first.phone, PHONE);
    assert_eq!(first.call_count, 0);
    assert!(first.notes.is_empty());
    assert_eq!((first.name.as_deref(), first.last_call_at), (None, None));
    assert_eq!((first.first_seen_at, first.last_seen_at), (at(0), at(0)));
    assert_eq!(again.caller_id, first.caller_id);
    assert_eq!((again.first_seen_at, again.last_seen_at), (at(0), at(60)));
    assert_ne!(other.caller_id, first.caller_id);
}

async fn callers_are_found_by_id_and_by_phone_and_unknown_ones_are_none(store: Arc<dyn Store>) {
    // Arrange
    let caller = store.upsert_caller(PHONE, at(0)).await.expect("upsert");

    // Act
    let by_id = store.get_caller(caller.caller_id).await.expect("get by id");
    let by_phone = store
        .get_caller_by_phone(PHONE)
        .await
        .expect("get by phone");
    let unknown_id = store
        .get_caller(Uuid::now_v7())
        .await
        .expect("get unknown id");
    let unknown_phone = store
        .get_caller_by_phone(OTHER_PHONE)
        .await
        .expect("unknown phone");

    // Assert
    assert_eq!(by_id.as_ref(), Some(&caller));
    assert_eq!(by_phone.as_ref(), Some(&caller));
    assert_eq!(unknown_id, None);
    assert_eq!(unknown_phone, None);
}

async fn update_caller_sets_the_profile_and_adds_each_note_once(store: Arc<dyn Store>) {
    // Arrange
    let caller = store.upsert_caller(PHONE, at(0)).await.expect("upsert");
    let id = caller.caller_id;
    let first_patch = CallerPatch {
        name: Some("Ada".to_owned()),
        language: Some("en-GB".to_owned()),
        note: Some("prefers mornings".to_owned()),
    };
    let same_note = CallerPatch {
        note: Some("prefers mornings".to_owned()),
        ..CallerPatch::default()
    };
    let second_note = CallerPatch {
        language: Some("fr".to_owned()),
        note: Some("has a dog".to_owned()),
        ..CallerPatch::default()
    };

    // Act
    let patched = store
        .update_caller(id, &first_patch, at(10))
        .await
        .expect("patch");
    let repeated = store
        .update_caller(id, &same_note, at(20))
        .await
        .expect("same note");
    let extended = store
        .update_caller(id, &second_note, at(30))
        .await
        .expect("new note");

    // Assert
    assert_eq!(patched.name.as_deref(), Some("Ada"));
    assert_eq!(patched.language.as_deref(), Some("en-GB"));
    assert_eq!(patched.notes, ["prefers mornings"]);
    assert_eq!(patched.updated_at, at(10));
    assert_eq!(repeated, patched, "a repeated note changes nothing");
    assert_eq!(
        extended.name.as_deref(),
        Some("Ada"),
        "an absent name is kept"
    );
    assert_eq!(extended.language.as_deref(), Some("fr"));
    assert_eq!(extended.notes, ["prefers mornings", "has a dog"]);
    assert_eq!(extended.updated_at, at(30));
    let stored = store
        .get_caller(id)
        .await
        .expect("get")
        .expect("caller exists");
    assert_eq!(stored, extended);
}

async fn update_caller_of_an_unknown_caller_is_not_found(store: Arc<dyn Store>) {
    // Act
    let result = store
        .update_caller(Uuid::now_v7(), &CallerPatch::default(), at(0))
        .await;

    // Assert
    assert!(
        matches!(result, Err(StoreError::NotFound)),
        "got {result:?}"
    );
}

async fn attach_caller_names_the_caller_of_a_session_stored_without_one_once(
    store: Arc<dyn Store>,
) {
    // Arrange: the caller has one earlier call; this call was stored without a caller.
    let (caller_id, _) = caller_with_session(store.as_ref(), "call-earlier", at(0)).await;
    let session = create(store.as_ref(), &new_session("call-anon", None, at(600))).await;
    let id_caller = "id:user-42";

    // Act
    let attached = store
        .attach_caller(session.session_id, PHONE, at(900))
        .await
        .expect("attach");
    let again = store
        .attach_caller(session.session_id, OTHER_PHONE, at(950))
        .await
        .expect("attach again");
    let unknown = store
        .attach_caller(Uuid::now_v7(), id_caller, at(960))
        .await;

    // Assert
    assert_eq!(attached.caller_id, Some(caller_id));
    assert_eq!(
        (attached.prior_calls, attached.prior_call_at),
        (1, Some(at(0))),
        "the caller's counts before this call"
    );
    assert_eq!(attached.version, session.version + 1);
    let counted = store.get_caller(caller_id).await.unwrap().unwrap();
    assert_eq!(
        (counted.call_count, counted.last_call_at),
        (2, Some(at(600)))
    );
    assert_eq!(again, attached, "a session with a caller keeps it");
    assert!(matches!(unknown, Err(StoreError::NotFound)), "{unknown:?}");
    assert!(
        store
            .get_caller_by_phone(id_caller)
            .await
            .unwrap()
            .is_none(),
        "nothing stored for an unknown session"
    );
}
