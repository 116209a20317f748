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
