//! Webhook events and the durable job queue.

use super::*;
use redial::storage::{Job, JobLease, JobStatus, Recorded};
use std::collections::HashSet;

const LEASE: Duration = Duration::from_secs(30);

on_both_backends!(
    record_webhook_stores_a_new_event_and_enqueues_its_job,
    a_duplicate_webhook_is_reported_and_enqueues_no_second_job,
    a_new_webhook_does_not_enqueue_a_job_whose_dedupe_key_exists,
    enqueue_job_enqueues_each_dedupe_key_once,
    claim_job_leases_the_oldest_due_job,
    concurrent_claimers_never_get_the_same_job,
    claim_job_reclaims_a_running_job_whose_lease_expired,
    fail_job_requeues_for_a_retry_or_fails_for_good,
    a_completed_job_is_done_and_never_claimed_again,
    finishing_an_unknown_job_is_not_found_and_getting_it_is_none,
    renewing_a_held_lease_extends_it,
    an_expired_lease_nobody_claimed_is_still_renewed,
    a_lease_taken_over_is_not_renewed,
    a_stale_worker_cannot_finish_a_job_taken_over,
    a_finished_job_is_not_renewed,
);

async fn record_webhook_stores_a_new_event_and_enqueues_its_job(store: Arc<dyn Store>) {
    // Arrange
    let event = webhook("vapi:end-of-call-report:call-1", at(5));
    let job = new_job("analyze:call-1", at(5));

    // Act
    let recorded = store
        .record_webhook(&event, Some(&job))
        .await
        .expect("record");

    // Assert
    assert_eq!(recorded, Recorded::New(event.event_id));
    let stored = store.get_job(job.job_id).await.expect("get");
    let expected = Job {
        job_id: job.job_id,
        kind: job.kind.clone(),
        dedupe_key: job.dedupe_key.clone(),
        payload: job.payload.clone(),
        status: JobStatus::Queued,
        attempts: 0,
        max_attempts: 3,
        run_at: at(5),
        locked_by: None,
        locked_until: None,
        last_error: None,
        created_at: at(5),
        updated_at: at(5),
    };
    assert_eq!(stored, Some(expected));
}

async fn a_duplicate_webhook_is_reported_and_enqueues_no_second_job(store: Arc<dyn Store>) {
    // Arrange
    let first = webhook("vapi:end-of-call-report:call-1", at(5));
    let first_job = new_job("analyze:call-1", at(5));
    store
        .record_webhook(&first, Some(&first_job))
        .await
        .expect("first delivery");
    let redelivery = webhook("vapi:end-of-call-report:call-1", at(65));
    let second_job = new_job("analyze:call-1:again", at(65));

    // Act
    let recorded = store
        .record_webhook(&redelivery, Some(&second_job))
        .await
        .expect("redelivery");

    // Assert
    assert_eq!(recorded, Recorded::Duplicate);
    assert!(!recorded.is_new());
    assert_eq!(store.get_job(second_job.job_id).await.expect("get"), None);
}

async fn a_new_webhook_does_not_enqueue_a_job_whose_dedupe_key_exists(store: Arc<dyn Store>) {
    // Arrange
    let job = new_job("analyze:call-1", at(5));
    store
        .record_webhook(&webhook("vapi:status-update:call-1", at(5)), Some(&job))
        .await
        .expect("first event");
    let event = webhook("vapi:end-of-call-report:call-1", at(6));
    let same_work = new_job("analyze:call-1", at(6));

    // Act
    let recorded = store
        .record_webhook(&event, Some(&same_work))
        .await
        .expect("second event");

    // Assert
    assert_eq!(recorded, Recorded::New(event.event_id));
    assert_eq!(store.get_job(same_work.job_id).await.expect("get"), None);
    assert!(store.get_job(job.job_id).await.expect("get").is_some());
}

async fn enqueue_job_enqueues_each_dedupe_key_once(store: Arc<dyn Store>) {
    // Arrange
    let job = new_job("analyze:call-1", at(0));
    let again = new_job("analyze:call-1", at(0));

    // Act
    let first = store.enqueue_job(&job).await.expect("enqueue");
    let second = store.enqueue_job(&again).await.expect("enqueue again");

    // Assert
    assert_eq!(first, Recorded::New(job.job_id));
    assert_eq!(second, Recorded::Duplicate);
    assert_eq!(store.get_job(again.job_id).await.expect("get"), None);
    let stored = store.get_job(job.job_id).await.expect("get").expect("job");
    assert_eq!((stored.status, stored.attempts), (JobStatus::Queued, 0));
}

async fn claim_job_leases_the_oldest_due_job(store: Arc<dyn Store>) {
    // Arrange
    let late = new_job("late", at(100));
    let oldest = new_job("oldest", at(0));
    let middle = new_job("middle", at(10));
    for job in [&late, &oldest, &middle] {
        store.enqueue_job(job).await.expect("enqueue");
    }

    // Act
    let first = store
        .claim_job("worker-1", at(50), LEASE)
        .await
        .expect("claim");
    let second = store
        .claim_job("worker-1", at(50), LEASE)
        .await
        .expect("claim");
    let third = store
        .claim_job("worker-1", at(50), LEASE)
        .await
        .expect("claim");

    // Assert
    let first = first.expect("a due job");
    assert_eq!(first.job_id, oldest.job_id);
    assert_eq!((first.status, first.attempts), (JobStatus::Running, 1));
    assert_eq!(first.locked_by.as_deref(), Some("worker-1"));
    assert_eq!(first.locked_until, Some(at(80)));
    assert_eq!(first.updated_at, at(50));
    assert_eq!(second.map(|j| j.job_id), Some(middle.job_id));
    assert_eq!(third, None, "a job not yet due is not claimed");
    assert_eq!(
        store.get_job(oldest.job_id).await.expect("get"),
        Some(first)
    );
}

async fn concurrent_claimers_never_get_the_same_job(store: Arc<dyn Store>) {
    // Arrange
    let jobs: Vec<NewJob> = (0..24)
        .map(|i| new_job(&format!("job-{i}"), at(i)))
        .collect();
    for job in &jobs {
        store.enqueue_job(job).await.expect("enqueue");
    }

    // Act
    let workers = (0..6).map(|w| {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let mut claimed = Vec::new();
            while let Some(job) = store
                .claim_job(&format!("worker-{w}"), at(100), LEASE)
                .await
                .expect("claim")
            {
                claimed.push(job.job_id);
            }
            claimed
        })
    });
    let claimed: Vec<Uuid> = futures_util::future::join_all(workers)
        .await
        .into_iter()
        .flat_map(|r| r.expect("task"))
        .collect();

    // Assert
    let unique: HashSet<Uuid> = claimed.iter().copied().collect();
    assert_eq!(claimed.len(), jobs.len(), "every job claimed exactly once");
    assert_eq!(
        unique,
        jobs.iter().map(|j| j.job_id).collect::<HashSet<_>>()
    );
}

async fn claim_job_reclaims_a_running_job_whose_lease_expired(store: Arc<dyn Store>) {
    // Arrange
    let job = new_job("analyze:call-1", at(0));
    store.enqueue_job(&job).await.expect("enqueue");
    store
        .claim_job("worker-1", at(0), LEASE)
        .await
        .expect("claim")
        .expect("job");

    // Act
    let at_expiry = store
        .claim_job("worker-2", at(30), LEASE)
        .await
        .expect("claim");
    let after_expiry = store
        .claim_job("worker-2", at(31), LEASE)
        .await
        .expect("claim");

    // Assert
    assert_eq!(at_expiry, None, "the lease holds until it has passed");
    let reclaimed = after_expiry.expect("the abandoned job");
    assert_eq!(reclaimed.job_id, job.job_id);
    assert_eq!(reclaimed.attempts, 2);
    assert_eq!(reclaimed.locked_by.as_deref(), Some("worker-2"));
    assert_eq!(reclaimed.locked_until, Some(at(61)));
}

async fn fail_job_requeues_for_a_retry_or_fails_for_good(store: Arc<dyn Store>) {
    // Arrange
    let job = new_job("analyze:call-1", at(0));
    store.enqueue_job(&job).await.expect("enqueue");
    let first = claim(store.as_ref(), "worker-1", 0).await;

    // Act
    store
        .fail_job(&lease(&first), "upstream 503", Some(at(100)), at(5))
        .await
        .expect("fail with retry");
    let retried = store.get_job(job.job_id).await.expect("get").expect("job");
    let too_early = store
        .claim_job("worker-1", at(99), LEASE)
        .await
        .expect("claim");
    let second = store
        .claim_job("worker-1", at(100), LEASE)
        .await
        .expect("claim");
    let second = second.expect("the retry");
    store
        .fail_job(&lease(&second), "bad output", None, at(105))
        .await
        .expect("fail for good");
    let failed = store.get_job(job.job_id).await.expect("get").expect("job");
    let after = store
        .claim_job("worker-1", at(10_000), LEASE)
        .await
        .expect("claim");

    // Assert
    assert_eq!(retried.status, JobStatus::Queued);
    assert_eq!(retried.run_at, at(100));
    assert_eq!(retried.last_error.as_deref(), Some("upstream 503"));
    assert_eq!((retried.locked_by, retried.locked_until), (None, None));
    assert_eq!(too_early, None);
    assert_eq!(second.attempts, 2);
    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(failed.last_error.as_deref(), Some("bad output"));
    assert_eq!(failed.updated_at, at(105));
    assert_eq!(after, None, "a failed job is never claimed");
}

async fn a_completed_job_is_done_and_never_claimed_again(store: Arc<dyn Store>) {
    // Arrange
    let job = new_job("analyze:call-1", at(0));
    store.enqueue_job(&job).await.expect("enqueue");
    let claimed = claim(store.as_ref(), "worker-1", 0).await;

    // Act
    store
        .complete_job(&lease(&claimed), at(5))
        .await
        .expect("complete");

    // Assert
    let done = store.get_job(job.job_id).await.expect("get").expect("job");
    assert_eq!(done.status, JobStatus::Done);
    assert_eq!((done.locked_by, done.locked_until), (None, None));
    assert_eq!(done.updated_at, at(5));
    let later = store
        .claim_job("worker-2", at(10_000), LEASE)
        .await
        .expect("claim");
    assert_eq!(later, None);
}

async fn finishing_an_unknown_job_is_not_found_and_getting_it_is_none(store: Arc<dyn Store>) {
    // Arrange
    let unknown = JobLease {
        job_id: Uuid::now_v7(),
        worker: "worker-1".into(),
        attempt: 1,
    };

    // Act
    let completed = store.complete_job(&unknown, at(0)).await;
    let failed = store.fail_job(&unknown, "boom", None, at(0)).await;
    let renewed = store
        .renew_job(&unknown, at(0), LEASE)
        .await
        .expect("renew");
    let got = store.get_job(Uuid::now_v7()).await.expect("get");

    // Assert
    assert!(
        matches!(completed, Err(StoreError::NotFound)),
        "got {completed:?}"
    );
    assert!(
        matches!(failed, Err(StoreError::NotFound)),
        "got {failed:?}"
    );
    assert!(!renewed, "an unknown job has no lease to renew");
    assert_eq!(got, None);
}

/// Claims the due job for `worker` at `at(secs)`; there must be one.
async fn claim(store: &dyn Store, worker: &str, secs: i64) -> Job {
    store
        .claim_job(worker, at(secs), LEASE)
        .await
        .expect("claim")
        .expect("a due job")
}

fn lease(job: &Job) -> JobLease {
    job.lease().expect("a claimed job is leased")
}

async fn renewing_a_held_lease_extends_it(store: Arc<dyn Store>) {
    // Arrange
    let job = new_job("analyze:call-1", at(0));
    store.enqueue_job(&job).await.expect("enqueue");
    let claimed = claim(store.as_ref(), "worker-1", 0).await;

    // Act
    let renewed = store
        .renew_job(&lease(&claimed), at(20), LEASE)
        .await
        .expect("renew");
    let past_the_first_lease = store
        .claim_job("worker-2", at(40), LEASE)
        .await
        .expect("claim");
    let past_the_renewal = store
        .claim_job("worker-2", at(51), LEASE)
        .await
        .expect("claim");

    // Assert
    assert!(renewed);
    assert_eq!(past_the_first_lease, None, "the renewed lease holds to 50");
    let taken_over = past_the_renewal.expect("the job once the renewal ran out");
    assert_eq!(taken_over.job_id, job.job_id);
    assert_eq!(taken_over.attempts, 2);
}

async fn an_expired_lease_nobody_claimed_is_still_renewed(store: Arc<dyn Store>) {
    // Arrange
    let job = new_job("analyze:call-1", at(0));
    store.enqueue_job(&job).await.expect("enqueue");
    let claimed = claim(store.as_ref(), "worker-1", 0).await;

    // Act
    let renewed = store
        .renew_job(&lease(&claimed), at(40), LEASE)
        .await
        .expect("renew");

    // Assert
    assert!(
        renewed,
        "no other claim bumped the attempt: the job is still this worker's"
    );
    let stored = store.get_job(job.job_id).await.expect("get").expect("job");
    assert_eq!(stored.locked_until, Some(at(70)));
    assert_eq!(stored.updated_at, at(40));
    assert_eq!(stored.attempts, 1);
    let other = store
        .claim_job("worker-2", at(50), LEASE)
        .await
        .expect("claim");
    assert_eq!(other, None);
}

async fn a_lease_taken_over_is_not_renewed(store: Arc<dyn Store>) {
    // Arrange
    let job = new_job("analyze:call-1", at(0));
    store.enqueue_job(&job).await.expect("enqueue");
    let stale = lease(&claim(store.as_ref(), "worker-1", 0).await);
    let holder = claim(store.as_ref(), "worker-2", 31).await;
    // The same worker name claiming again is a new lease too: the attempt tells them apart.
    let same_name = JobLease {
        worker: holder.locked_by.clone().expect("holder"),
        ..stale.clone()
    };

    // Act
    let renewed_stale = store.renew_job(&stale, at(40), LEASE).await.expect("renew");
    let renewed_same_name = store
        .renew_job(&same_name, at(40), LEASE)
        .await
        .expect("renew");

    // Assert
    assert!(!renewed_stale, "a lease taken over is not extended");
    assert!(
        !renewed_same_name,
        "an older attempt's lease is not extended"
    );
    let stored = store.get_job(job.job_id).await.expect("get").expect("job");
    assert_eq!(stored, holder, "the new holder's lease is untouched");
}

async fn a_stale_worker_cannot_finish_a_job_taken_over(store: Arc<dyn Store>) {
    // Arrange
    let job = new_job("analyze:call-1", at(0));
    store.enqueue_job(&job).await.expect("enqueue");
    let stale = lease(&claim(store.as_ref(), "worker-1", 0).await);
    let holder = claim(store.as_ref(), "worker-2", 31).await;

    // Act
    let completed = store.complete_job(&stale, at(40)).await;
    let failed = store.fail_job(&stale, "stale failure", None, at(41)).await;
    let after_stale = store.get_job(job.job_id).await.expect("get").expect("job");
    store
        .complete_job(&lease(&holder), at(50))
        .await
        .expect("the holder completes");

    // Assert
    assert!(
        matches!(completed, Err(StoreError::Conflict(_))),
        "got {completed:?}"
    );
    assert!(
        matches!(failed, Err(StoreError::Conflict(_))),
        "got {failed:?}"
    );
    assert_eq!(
        after_stale, holder,
        "a stale worker's outcome changes nothing"
    );
    let done = store.get_job(job.job_id).await.expect("get").expect("job");
    assert_eq!((done.status, done.last_error), (JobStatus::Done, None));
    let again = store.complete_job(&lease(&holder), at(60)).await;
    assert!(
        matches!(again, Err(StoreError::Conflict(_))),
        "a finished job is not finished twice: {again:?}"
    );
}

async fn a_finished_job_is_not_renewed(store: Arc<dyn Store>) {
    // Arrange
    let job = new_job("analyze:call-1", at(0));
    store.enqueue_job(&job).await.expect("enqueue");
    let held = lease(&claim(store.as_ref(), "worker-1", 0).await);
    store
        .fail_job(&held, "upstream 503", Some(at(100)), at(5))
        .await
        .expect("fail");

    // Act
    let renewed = store.renew_job(&held, at(10), LEASE).await.expect("renew");

    // Assert
    assert!(
        !renewed,
        "a job handed back to the queue has no lease to renew"
    );
    let stored = store.get_job(job.job_id).await.expect("get").expect("job");
    assert_eq!(stored.status, JobStatus::Queued);
    assert_eq!((stored.locked_by, stored.locked_until), (None, None));
}
