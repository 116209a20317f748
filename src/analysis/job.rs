//! The jobs the worker runs, typed: one [`JobPayload`] variant per job kind, carrying its
//! arguments. Enqueueing builds one; the worker reads it back from the claimed row and matches
//! on it.
//!
//! The serde tag is the stored form: a job row's `kind` column is the tag and its JSON `payload`
//! the content, exactly as releases before this type wrote them (`call_event` with the webhook
//! event, `analyze_call` with `{"session_id": …}`), so jobs already queued run unchanged. A row
//! whose kind this build does not know, or whose payload does not fit its kind, reads as an
//! error that names the kind; the worker fails the job with it.

use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::platforms::WebhookEvent;
use crate::storage::{Job, NewJob};

/// A job: its kind (the serde tag) and its arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "payload")]
pub enum JobPayload {
    /// A call lifecycle event: close the session, keep the platform's analysis, enqueue
    /// redial's analysis.
    #[serde(rename = "call_event")]
    CallEvent(Box<WebhookEvent>),
    /// redial's analysis of one session (enqueued once per session, however many events report
    /// the call's end).
    #[serde(rename = "analyze_call")]
    AnalyzeCall(AnalyzeCall),
}

/// The arguments of [`JobPayload::AnalyzeCall`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnalyzeCall {
    /// The session to analyse.
    pub session_id: Uuid,
}

/// A stored job this build cannot run: its kind is unknown or its payload does not fit it.
#[derive(Debug, thiserror::Error)]
#[error("unreadable job of kind {kind:?}: {source}")]
pub struct UnreadableJob {
    /// The stored kind.
    pub kind: String,
    /// Why it does not read.
    pub source: serde_json::Error,
}

impl JobPayload {
    /// The job to enqueue for this, runnable now: same work, same dedupe key, so it is
    /// enqueued once.
    pub fn job(&self, max_attempts: i32) -> Result<NewJob, serde_json::Error> {
        let (kind, payload) = self.stored()?;
        Ok(NewJob {
            job_id: Uuid::now_v7(),
            kind,
            dedupe_key: self.dedupe_key(),
            payload,
            run_at: Utc::now(),
            max_attempts,
        })
    }

    /// What a stored `job` row asks for.
    pub fn of(job: &Job) -> Result<Self, UnreadableJob> {
        let tagged = serde_json::json!({"kind": job.kind, "payload": job.payload});
        serde_json::from_value(tagged).map_err(|source| UnreadableJob {
            kind: job.kind.clone(),
            source,
        })
    }

    /// The key that makes the same work enqueue once.
    fn dedupe_key(&self) -> String {
        match self {
            Self::CallEvent(event) => format!("job:{}", event.dedupe_key),
            Self::AnalyzeCall(call) => format!("analyze:{}", call.session_id),
        }
    }

    /// The stored form: the serde tag and content, as the `kind` and `payload` columns.
    fn stored(&self) -> Result<(String, Value), serde_json::Error> {
        let mut tagged = serde_json::to_value(self)?;
        let kind = tagged
            .get("kind")
            .and_then(Value::as_str)
            .map(str::to_owned);
        match (kind, tagged.get_mut("payload").map(Value::take)) {
            (Some(kind), Some(payload)) => Ok((kind, payload)),
            _ => Err(serde::ser::Error::custom(
                "a job payload serialised without its kind and content",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;
    use crate::platforms::EventKind;
    use crate::platforms::Platform;
    use crate::storage::JobStatus;

    fn row(kind: &str, payload: Value) -> Job {
        let at = Utc.timestamp_opt(0, 0).unwrap();
        Job {
            job_id: Uuid::now_v7(),
            kind: kind.to_owned(),
            dedupe_key: "k".to_owned(),
            payload,
            status: JobStatus::Running,
            attempts: 1,
            max_attempts: 3,
            run_at: at,
            locked_by: None,
            locked_until: None,
            last_error: None,
            created_at: at,
            updated_at: at,
        }
    }

    fn event() -> WebhookEvent {
        WebhookEvent {
            platform: Platform::Retell,
            event_type: "call_ended".to_owned(),
            kind: EventKind::CallEnded,
            call_key: Some("call-1".to_owned()),
            caller_number: Some("+14155550100".to_owned()),
            assistant_id: None,
            ended: None,
            analysis: None,
            dedupe_key: "retell:call_ended:call-1".to_owned(),
        }
    }

    #[test]
    fn an_analysis_job_is_stored_as_older_releases_stored_it() {
        let session_id = Uuid::now_v7();
        let payload = JobPayload::AnalyzeCall(AnalyzeCall { session_id });
        let job = payload.job(5).unwrap();
        assert_eq!(job.kind, "analyze_call");
        assert_eq!(job.payload, json!({"session_id": session_id}));
        assert_eq!(job.dedupe_key, format!("analyze:{session_id}"));
        assert_eq!(job.max_attempts, 5);
        let stored = row(
            "analyze_call",
            json!({"session_id": session_id.to_string()}),
        );
        assert_eq!(JobPayload::of(&stored).unwrap(), payload);
    }

    #[test]
    fn a_call_event_job_carries_the_event_as_its_payload() {
        let job = JobPayload::CallEvent(Box::new(event())).job(3).unwrap();
        assert_eq!(job.kind, "call_event");
        assert_eq!(job.payload, serde_json::to_value(event()).unwrap());
        assert_eq!(job.dedupe_key, "job:retell:call_ended:call-1");
        let read = JobPayload::of(&row(&job.kind, job.payload)).unwrap();
        assert_eq!(read, JobPayload::CallEvent(Box::new(event())));
    }

    #[test]
    fn an_unknown_kind_or_a_payload_that_does_not_fit_is_an_error_naming_the_kind() {
        let session_id = Uuid::now_v7().to_string();
        for (kind, payload, says) in [
            ("reindex", json!({}), "unknown variant `reindex`"),
            ("analyze_call", json!({}), "missing field `session_id`"),
            ("analyze_call", json!({"session_id": "nope"}), "UUID"),
            ("analyze_call", Value::Null, "analyze_call"),
            (
                "call_event",
                json!({"session_id": session_id}),
                "call_event",
            ),
            ("", json!(null), "unknown variant"),
        ] {
            let error = JobPayload::of(&row(kind, payload)).unwrap_err().to_string();
            assert!(error.contains(&format!("kind {kind:?}")), "{error}");
            assert!(error.contains(says), "{kind}: {error}");
        }
    }
}
