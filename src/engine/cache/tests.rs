use chrono::Utc;
use uuid::Uuid;

use super::*;
use crate::storage::SessionStatus;

fn cached(call_key: &str, caller_id: Option<Uuid>) -> Cached {
    let now = Utc::now();
    Cached {
        session: CallSession {
            session_id: Uuid::now_v7(),
            platform: Platform::Vapi,
            call_key: call_key.into(),
            caller_id,
            assistant_id: "a".into(),
            status: SessionStatus::Active,
            attempt: 1,
            resumes_session_id: None,
            answers: Default::default(),
            prior_calls: 0,
            prior_call_at: None,
            model: None,
            ended_reason: None,
            details: serde_json::json!({}),
            started_at: now,
            last_activity_at: now,
            ended_at: None,
            version: 1,
        },
        caller: caller_id.map(|caller_id| Caller {
            caller_id,
            phone: "+14155550123".into(),
            name: Some("Ada".into()),
            language: None,
            notes: Vec::new(),
            last_summary: None,
            last_sentiment: None,
            last_action: None,
            last_call_at: None,
            call_count: 1,
            first_seen_at: now,
            last_seen_at: now,
            updated_at: now,
        }),
        start: None,
    }
}

/// A first turn's entry: the session as it will be stored, with its start.
fn starting(call_key: &str, phone: Option<&str>) -> Cached {
    let mut entry = cached(call_key, None);
    let session = &entry.session;
    entry.start = Some(CallStart {
        session: crate::storage::NewSession {
            session_id: session.session_id,
            platform: session.platform,
            call_key: session.call_key.clone(),
            caller_id: None,
            assistant_id: session.assistant_id.clone(),
            attempt: 1,
            resumes_session_id: None,
            answers: Default::default(),
            status: session.status,
            model: None,
            started_at: session.started_at,
        },
        phone: phone.map(str::to_owned),
        close_previous: None,
        now: Utc::now(),
    });
    entry
}

/// What the writer stored for `entry`'s start: its session (or another one), with a caller.
fn stored(entry: &Cached, session_id: Uuid, caller_id: Option<Uuid>) -> StartedCall {
    let mut session = entry.session.clone();
    session.session_id = session_id;
    session.caller_id = caller_id;
    StartedCall {
        caller: cached("x", caller_id).caller,
        session,
        created: true,
    }
}

fn watching(max_entries: usize, max_bytes: usize) -> CallCache {
    let cache = CallCache::new(max_entries, max_bytes);
    cache.notice(Change::Watching);
    cache
}

#[test]
fn a_kept_call_is_served_until_its_history_shows_a_turn_it_has_not_seen() {
    let cache = watching(10, 1 << 20);
    let ticket = cache.ticket();
    assert!(cache.put(ticket, cached("c1", None), 2));
    assert!(cache.get(Platform::Vapi, "c1", 2).is_some());
    assert!(
        cache.get(Platform::Retell, "c1", 2).is_none(),
        "per platform"
    );
    assert!(
        cache.get(Platform::Vapi, "c1", 3).is_none(),
        "a third assistant message is a turn served elsewhere"
    );
    assert!(
        cache.get(Platform::Vapi, "c1", 2).is_none(),
        "and it is dropped"
    );
}

#[test]
fn a_notice_drops_every_entry_holding_the_id() {
    let cache = watching(10, 1 << 20);
    let caller = Uuid::now_v7();
    let (one, two) = (cached("c1", Some(caller)), cached("c2", Some(caller)));
    let session = one.session.session_id;
    assert!(cache.put(cache.ticket(), one, 9));
    assert!(cache.put(cache.ticket(), two, 9));
    cache.notice(Change::Row(session));
    assert!(cache.get(Platform::Vapi, "c1", 0).is_none());
    assert!(cache.get(Platform::Vapi, "c2", 0).is_some());
    cache.notice(Change::Row(caller));
    assert!(cache.get(Platform::Vapi, "c2", 0).is_none());
    assert_eq!(cache.usage(), (0, 0), "nothing left behind");
}

#[test]
fn what_was_read_before_a_change_is_refused() {
    let cache = watching(10, 1 << 20);
    let entry = cached("c1", Some(Uuid::now_v7()));
    let ticket = cache.ticket();
    cache.notice(Change::Row(Uuid::now_v7()));
    assert!(
        cache.put(ticket, entry.clone(), 1),
        "another row's change does not matter"
    );
    let ticket = cache.ticket();
    cache.notice(Change::Row(entry.caller.as_ref().unwrap().caller_id));
    assert!(!cache.put(ticket, entry.clone(), 1), "its caller changed");
    let ticket = cache.ticket();
    cache.notice(Change::Row(entry.session.session_id));
    assert!(!cache.put(ticket, entry.clone(), 1), "its session changed");
    assert!(cache.put(cache.ticket(), entry, 1), "read after the change");
}

#[test]
fn a_ticket_older_than_the_notices_remembered_is_refused() {
    let cache = watching(10, 1 << 20);
    let ticket = cache.ticket();
    for _ in 0..=RECENT {
        cache.notice(Change::Row(Uuid::now_v7()));
    }
    assert!(!cache.put(ticket, cached("c1", None), 1));
    assert!(cache.put(cache.ticket(), cached("c1", None), 1));
}

#[test]
fn a_lost_listener_empties_the_cache_and_nothing_is_taken_until_it_watches_again() {
    let cache = watching(10, 1 << 20);
    assert!(cache.put(cache.ticket(), cached("c1", None), 1));
    let ticket = cache.ticket();
    cache.notice(Change::Lost);
    assert!(cache.get(Platform::Vapi, "c1", 0).is_none());
    assert!(!cache.put(cache.ticket(), cached("c2", None), 1));
    cache.notice(Change::Watching);
    assert!(
        !cache.put(ticket, cached("c3", None), 1),
        "read before the loss"
    );
    assert!(cache.put(cache.ticket(), cached("c4", None), 1));
}

#[test]
fn nothing_is_cached_before_the_store_watches() {
    let cache = CallCache::new(10, 1 << 20);
    assert!(!cache.put(cache.ticket(), cached("c1", None), 1));
}

#[test]
fn bounded_by_entries_and_bytes_least_recently_used_first_out() {
    let cache = watching(2, 1 << 20);
    for key in ["c1", "c2"] {
        assert!(cache.put(cache.ticket(), cached(key, None), 1));
    }
    assert!(cache.get(Platform::Vapi, "c1", 0).is_some(), "c1 used last");
    assert!(cache.put(cache.ticket(), cached("c3", None), 1));
    assert!(cache.get(Platform::Vapi, "c2", 0).is_none(), "c2 evicted");
    assert!(cache.get(Platform::Vapi, "c1", 0).is_some());
    assert_eq!(cache.usage().0, 2);

    let one = size_of(&cached("c1", None));
    let cache = watching(100, one * 2);
    for key in ["c1", "c2", "c3"] {
        assert!(cache.put(cache.ticket(), cached(key, None), 1));
    }
    let (entries, bytes) = cache.usage();
    assert_eq!(entries, 2);
    assert!(bytes <= one * 2);
}

#[test]
fn a_forgotten_call_is_read_again() {
    let cache = watching(10, 1 << 20);
    assert!(cache.put(cache.ticket(), cached("c1", None), 1));
    cache.forget(Platform::Vapi, "c1");
    assert!(cache.get(Platform::Vapi, "c1", 0).is_none());
    assert_eq!(cache.usage(), (0, 0));
}

#[test]
fn a_first_turn_is_served_with_its_start_until_the_writer_stores_it() {
    let cache = watching(10, 1 << 20);
    let entry = starting("c1", Some("+14155550123"));
    let pending = entry.session.session_id;
    assert!(cache.put(cache.ticket(), entry.clone(), 1));
    let (served, _) = cache
        .get(Platform::Vapi, "c1", 1)
        .expect("served before it is stored");
    assert!(
        served.start.is_some(),
        "the next turn must still make sure the call is stored"
    );

    let ticket = cache.ticket();
    let caller_id = Uuid::now_v7();
    cache.started(ticket, pending, &stored(&entry, pending, Some(caller_id)));
    let (served, _) = cache
        .get(Platform::Vapi, "c1", 1)
        .expect("kept once stored");
    assert!(served.start.is_none());
    assert_eq!(served.session.session_id, pending);
    assert_eq!(served.caller.map(|c| c.caller_id), Some(caller_id));
    // The caller it now holds is watched like any other.
    cache.notice(Change::Row(caller_id));
    assert!(cache.get(Platform::Vapi, "c1", 1).is_none());
}

#[test]
fn a_start_that_adopted_another_session_drops_the_entry() {
    let cache = watching(10, 1 << 20);
    let entry = starting("c1", None);
    let pending = entry.session.session_id;
    assert!(cache.put(cache.ticket(), entry.clone(), 1));
    let ticket = cache.ticket();
    cache.started(ticket, pending, &stored(&entry, Uuid::now_v7(), None));
    assert!(cache.get(Platform::Vapi, "c1", 1).is_none());
}

#[test]
fn a_start_stored_after_a_notice_about_its_caller_drops_the_entry() {
    let cache = watching(10, 1 << 20);
    let entry = starting("c1", Some("+14155550123"));
    let pending = entry.session.session_id;
    assert!(cache.put(cache.ticket(), entry.clone(), 1));
    let ticket = cache.ticket();
    let caller_id = Uuid::now_v7();
    // The caller changed after the writer's transaction began: what it read may be older.
    cache.notice(Change::Row(caller_id));
    cache.started(ticket, pending, &stored(&entry, pending, Some(caller_id)));
    assert!(cache.get(Platform::Vapi, "c1", 1).is_none());
}

#[test]
fn an_entry_holding_another_start_or_none_is_left_alone() {
    let cache = watching(10, 1 << 20);
    let entry = cached("c1", None);
    let session_id = entry.session.session_id;
    assert!(cache.put(cache.ticket(), entry, 1));
    let other = starting("c1", None);
    cache.started(
        cache.ticket(),
        session_id,
        &stored(&other, Uuid::now_v7(), None),
    );
    let (served, _) = cache.get(Platform::Vapi, "c1", 1).expect("left alone");
    assert_eq!(served.session.session_id, session_id);
}
