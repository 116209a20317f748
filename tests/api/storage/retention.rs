//! The operator's store queries: retention sweeps remove exactly what is past its window, and
//! the sweep as a whole is audited.

use super::*;
use redial::admin::Admin;
use redial::config::{Secret, Settings};
use redial::storage::{AuditAction, AuditActor, JobStatus};
use tokio_util::sync::CancellationToken;

on_both_backends!(
    batch_deletes_take_exactly_what_is_older_than_the_cutoff,
    a_sweep_removes_exactly_what_is_past_each_window_and_is_audited,
);

const DAY: i64 = 86_400;

async fn batch_deletes_take_exactly_what_is_older_than_the_cutoff(store: Arc<dyn Store>) {
    // Arrange: five turns a second apart; the cutoff is the fourth.
    let (_, session) = caller_with_session(store.as_ref(), "call-r1", at(0)).await;
    let turns: Vec<_> = (0..5)
        .map(|i| user_turn(&format!("t{i}"), &format!("turn {i}"), at(i)))
        .collect();
    store
        .save_turn(session.session_id, &turns, None, &[])
        .await
        .unwrap();

    // Act: batches of two until one is short.
    let first = store.delete_turns_before(at(3), 2).await.unwrap();
    let second = store.delete_turns_before(at(3), 2).await.unwrap();
    let third = store.delete_turns_before(at(3), 2).await.unwrap();

    // Assert
    assert_eq!((first, second, third), (2, 1, 0));
    let left: Vec<_> = store
        .list_turns(session.session_id)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.content)
        .collect();
    assert_eq!(left, ["turn 3", "turn 4"], "a turn at the cutoff stays");
}

/// Settings with every window at 30 days.
fn thirty_days() -> Settings {
    let mut settings = Settings::default();
    settings.server.erasure_key = Secret::new("k");
    settings.retention.transcripts_days = 30;
    settings.retention.webhook_bodies_days = 30;
    settings.retention.inactive_callers_days = 30;
    settings.retention.batch_size = 2;
    settings.retention.batch_pause_ms = 0;
    settings
}

/// A call of `phone` ended at `ended` (seconds), with a turn said then and a transcript.
async fn ended_call(store: &dyn Store, phone: &str, key: &str, ended: i64, now: i64) -> Uuid {
    let caller = store.upsert_caller(phone, at(now)).await.unwrap();
    let session = create(store, &new_session(key, Some(caller.caller_id), at(ended))).await;
    let turn = user_turn("t", &format!("said in {key}"), at(ended));
    store
        .save_turn(session.session_id, &[turn], None, &[])
        .await
        .unwrap();
    let mut close = close_as(SessionStatus::Ended, at(ended));
    close.details =
        json!({"transcript": "User: hi", "messages": [], "recording_urls": null, "cost": 0.5});
    store
        .close_session(session.session_id, &close)
        .await
        .unwrap();
    session.session_id
}

async fn a_sweep_removes_exactly_what_is_past_each_window_and_is_audited(store: Arc<dyn Store>) {
    // Arrange: "now" is day 100; the window reaches back to day 70.
    let now = 100 * DAY;
    let old = ended_call(store.as_ref(), PHONE, "call-old", 69 * DAY, now).await;
    let kept = ended_call(store.as_ref(), OTHER_PHONE, "call-kept", 71 * DAY, now).await;
    let old_event = webhook("old", at(69 * DAY));
    let old_job = new_job("job:old", at(69 * DAY));
    store
        .record_webhook(&old_event, Some(&old_job))
        .await
        .unwrap();
    let new_event = webhook("new", at(71 * DAY));
    store.record_webhook(&new_event, None).await.unwrap();
    let claimed = store
        .claim_job("w", at(69 * DAY), Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    store
        .complete_job(&claimed.lease().unwrap(), at(69 * DAY))
        .await
        .unwrap();
    let queued = new_job("job:queued", at(1));
    store.enqueue_job(&queued).await.unwrap();
    let inactive = store
        .upsert_caller("+15550100003", at(69 * DAY))
        .await
        .unwrap();
    let active = store
        .upsert_caller("+15550100004", at(71 * DAY))
        .await
        .unwrap();
    let settings = thirty_days();
    let admin = Admin {
        store: store.as_ref(),
        settings: &settings,
        journal: None,
        engine: None,
    };

    // Act
    let counts = admin
        .sweep(at(now), &CancellationToken::new())
        .await
        .unwrap();

    // Assert: exactly the old turn, transcript, webhook, finished job and inactive caller went.
    assert_eq!(counts.turns, 1);
    assert_eq!(counts.transcripts, 1);
    assert_eq!(counts.webhook_events, 1);
    assert_eq!(counts.jobs, 1);
    assert_eq!(counts.callers, 1);
    assert!(store.list_turns(old).await.unwrap().is_empty());
    assert_eq!(store.list_turns(kept).await.unwrap().len(), 1);
    let old_details = stored_session(store.as_ref(), old).await.details;
    assert_eq!(old_details, json!({"cost": 0.5}), "the call itself stays");
    let kept_details = stored_session(store.as_ref(), kept).await.details;
    assert_eq!(kept_details["transcript"], "User: hi");
    assert!(
        store
            .list_webhook_events(Platform::Vapi, "call-1")
            .await
            .unwrap()
            .iter()
            .all(|e| e.event_id == new_event.event_id)
    );
    assert_eq!(
        store
            .list_webhook_events(Platform::Vapi, "call-1")
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(store.get_job(old_job.job_id).await.unwrap().is_none());
    let waiting = store.get_job(queued.job_id).await.unwrap().unwrap();
    assert_eq!(
        waiting.status,
        JobStatus::Queued,
        "unfinished jobs keep their payload"
    );
    assert!(
        store
            .get_caller(inactive.caller_id)
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.get_caller(active.caller_id).await.unwrap().is_some());
    let trail = store.list_audit(inactive.caller_id, 10).await.unwrap();
    assert_eq!(
        (&trail[0].actor, &trail[0].action),
        (&AuditActor::Retention, &AuditAction::Erase)
    );
    assert!(
        trail[0].details["subject_hash"]
            .as_str()
            .unwrap()
            .starts_with("hmac-sha256:")
    );

    // A second sweep finds nothing more.
    let again = admin
        .sweep(at(now), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(again, Default::default());
}
