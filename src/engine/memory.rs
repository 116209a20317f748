//! Loading what redial knows about a call: its session and caller, created on the first turn,
//! resuming the caller's unfinished call when there is one.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Engine, script};
use crate::platforms::Identity;
use crate::storage::{
    Answers, CallSession, Caller, CloseSession, NewSession, SessionStatus, StoreError,
};

/// The session of the current call and its caller.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// The call's session.
    pub session: CallSession,
    /// The caller, when identified. On the first turn this is the profile as it was before this
    /// call was counted.
    pub caller: Option<Caller>,
    /// Whether this turn created the session.
    pub created: bool,
}

/// Loads the call's session and caller in one round trip; on the first turn of a call, finds
/// or creates the caller and creates the session (linked to the call it resumes, if any).
pub(crate) async fn load(
    engine: &Engine,
    identity: &Identity,
    model: Option<&str>,
) -> Result<CallContext, StoreError> {
    let store = &engine.store;
    if let Some((session, caller)) = store
        .load_call(identity.platform, &identity.call_key)
        .await?
    {
        return Ok(CallContext {
            session,
            caller,
            created: false,
        });
    }
    let now = Utc::now();
    let caller = match &identity.caller {
        Some(phone) => Some(store.upsert_caller(phone, now).await?),
        None => None,
    };
    let resumed = match &caller {
        Some(caller) => resumable(engine, caller.caller_id, &identity.assistant_id, now).await?,
        None => None,
    };
    let script = engine.settings.assistant(&identity.assistant_id);
    let (attempt, resumes_session_id, answers) = match &resumed {
        Some(previous) => (
            previous.attempt + 1,
            Some(previous.session_id),
            previous.answers.clone(),
        ),
        None => (1, None, Answers::default()),
    };
    let status = if !script.fields.is_empty() && !script::incomplete(script, &answers) {
        SessionStatus::Completed
    } else {
        SessionStatus::Active
    };
    let new = NewSession {
        session_id: Uuid::now_v7(),
        platform: identity.platform,
        call_key: identity.call_key.clone(),
        caller_id: caller.as_ref().map(|c| c.caller_id),
        assistant_id: identity.assistant_id.clone(),
        attempt,
        resumes_session_id,
        answers,
        status,
        model: model.map(str::to_owned),
        started_at: now,
    };
    let (session, created) = store.create_session(&new).await?;
    if created && session.resumes_session_id.is_some() {
        metrics::counter!("redial_resumed_calls_total").increment(1);
    }
    Ok(CallContext {
        session,
        caller,
        created,
    })
}

/// The caller's unfinished call with this assistant within the resume window, when the
/// assistant's script has required fields. An abandoned `active` call is marked `dropped`.
async fn resumable(
    engine: &Engine,
    caller_id: Uuid,
    assistant_id: &str,
    now: DateTime<Utc>,
) -> Result<Option<CallSession>, StoreError> {
    let script = engine.settings.assistant(assistant_id);
    if script.required_fields().is_empty() {
        return Ok(None);
    }
    let memory = &engine.settings.memory;
    let since = now - seconds(memory.resume_window_secs);
    let stale_before = now - seconds(memory.stale_after_secs);
    let found = engine
        .store
        .find_resumable(caller_id, assistant_id, since, stale_before, None)
        .await?;
    let Some(previous) = found.filter(|s| script::incomplete(script, &s.answers)) else {
        return Ok(None);
    };
    if previous.status == SessionStatus::Active {
        let close = CloseSession {
            status: SessionStatus::Dropped,
            ended_reason: Some("went silent; resumed by a new call".into()),
            ended_at: previous.last_activity_at,
            details: serde_json::json!({}),
        };
        engine
            .store
            .close_session(previous.session_id, &close)
            .await?;
    }
    Ok(Some(previous))
}

fn seconds(secs: u64) -> chrono::Duration {
    chrono::Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX / 1000))
}
