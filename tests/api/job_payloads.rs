//! Typed job payloads against the stored form: a job row as releases before the typed payloads
//! wrote it (kind column, JSON payload) runs, and a row whose kind is unknown or whose payload
//! does not fit fails with a reason naming it, while the worker goes on (both stores).

use std::time::Duration;

use chrono::Utc;
use redial::platforms::Platform;
use redial::storage::{AnalysisSource, Job, JobStatus, NewJob};
use redial_bench::mock::Behavior;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::app::{TestApp, app_tests, read_sse, vapi_body};
use crate::support::db::Backend;
use crate::support::inspect::Inspect;

app_tests!(queued_rows_in_the_stored_form_run_and_unreadable_ones_fail_naming_their_kind);

/// A job row written directly, as an older release (or a hand) would have.
fn raw_job(kind: &str, payload: Value) -> NewJob {
    NewJob {
        job_id: Uuid::now_v7(),
        kind: kind.to_owned(),
        dedupe_key: format!("raw:{}", Uuid::now_v7()),
        payload,
        run_at: Utc::now(),
        max_attempts: 1,
    }
}

/// Waits until the worker has finished `job_id` (done or failed).
async fn finished(app: &TestApp, job_id: Uuid) -> Job {
    for _ in 0..500 {
        let job = app.db.store.get_job(job_id).await.unwrap().unwrap();
        if matches!(job.status, JobStatus::Done | JobStatus::Failed) {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("job {job_id} did not finish");
}

async fn queued_rows_in_the_stored_form_run_and_unreadable_ones_fail_naming_their_kind(
    backend: Backend,
) {
    // Arrange: a call with a turn to analyse, and an analyst reply waiting.
    let app = TestApp::spawn_with(backend, |s| {
        s.analysis.model = "analyst".into();
        s.analysis.poll_interval_ms = 20;
    })
    .await;
    let call = vapi_body("call-jp1", "+14155550123", "Is my loan approved?");
    assert!(read_sse(app.chat(&call).await).await.done);
    app.settle().await;
    let (session, _) = app.stored_call(Platform::Vapi, "call-jp1").await;
    let reply = json!({"summary": "Asked about a loan.", "urgency": 2, "action": "none",
        "sentiment": "neutral"});
    app.upstream
        .push("analyst", Behavior::text([reply.to_string()]));
    let old_form = raw_job(
        "analyze_call",
        json!({"session_id": session.session_id.to_string()}),
    );
    let unknown_kind = raw_job("reindex_calls", json!({"session_id": session.session_id}));
    let misfit = raw_job("analyze_call", json!({"session": "call-jp1"}));
    let not_an_event = raw_job("call_event", json!([1, 2, 3]));

    // Act
    for job in [&unknown_kind, &misfit, &not_an_event, &old_form] {
        assert!(app.db.store.enqueue_job(job).await.unwrap().is_new());
    }

    // Assert
    let ran = finished(&app, old_form.job_id).await;
    assert_eq!(ran.status, JobStatus::Done, "{:?}", ran.last_error);
    let analyses = app
        .db
        .store
        .list_analyses(session.session_id)
        .await
        .unwrap();
    let ours = analyses
        .iter()
        .find(|a| a.source == AnalysisSource::Redial)
        .expect("redial's analysis is stored");
    assert_eq!(ours.summary, "Asked about a loan.");
    for (job, says) in [
        (&unknown_kind, "unknown variant `reindex_calls`"),
        (&misfit, "missing field `session_id`"),
        (&not_an_event, "invalid type"),
    ] {
        let failed = finished(&app, job.job_id).await;
        assert_eq!(failed.status, JobStatus::Failed, "{}", job.kind);
        let reason = failed.last_error.unwrap_or_default();
        assert!(
            reason.contains(&format!("unreadable job of kind {:?}", job.kind))
                && reason.contains(says),
            "{}: {reason}",
            job.kind
        );
    }
    app.teardown().await;
}
