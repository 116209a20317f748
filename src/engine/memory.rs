//! Loading what redial knows about a call: its session and caller, created on the first turn.

use chrono::Utc;
use uuid::Uuid;

use super::Engine;
use crate::platforms::Identity;
use crate::storage::{CallSession, Caller, NewSession, SessionStatus, StoreError};

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
/// or creates the caller and creates the session.
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
    let new = NewSession {
        session_id: Uuid::now_v7(),
        platform: identity.platform,
        call_key: identity.call_key.clone(),
        caller_id: caller.as_ref().map(|c| c.caller_id),
        assistant_id: identity.assistant_id.clone(),
        attempt: 1,
        resumes_session_id: None,
        answers: Default::default(),
        status: SessionStatus::Active,
        model: model.map(str::to_owned),
        started_at: now,
    };
    let (session, created) = store.create_session(&new).await?;
    Ok(CallContext {
        session,
        caller,
        created,
    })
}
