//! Loading what redial knows about a call: its session and caller.
//!
//! The per-turn read ([`load`]) only reads: an existing call's session and caller in one round
//! trip, or — on a call's first turn — the caller's profile and any unfinished call to resume.
//! The new session is then held in memory and written by [`ensure_stored`] off the caller's
//! critical path (when the turn is persisted, or before one of redial's own tools needs it), so
//! a write backlog never delays what the caller hears.
//!
//! A call's later turns on the instance that served its previous one read nothing at all: the
//! context is kept in the call cache ([`super::cache`]) once the turn is persisted
//! ([`remember`]), and taken from it by [`load_for_turn`].

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::cache::{Cached, Ticket};
use super::{Engine, script};
use crate::journal::{Op, WriteError, Written};
use crate::platforms::Identity;
use crate::storage::{
    Answers, CallSession, CallStart, Caller, CloseSession, NewSession, SessionStatus, StartedCall,
    StoreError,
};

/// The session of the current call and its caller.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// The call's session (on a first turn, as it will be stored).
    pub session: CallSession,
    /// The caller, when identified and known. On the first turn this is the profile as it was
    /// before this call was counted.
    pub caller: Option<Caller>,
    /// Whether the caller has a phone number (known or not yet stored).
    pub identified: bool,
    /// Whether this context's writes created the session.
    pub created: bool,
    /// Taken from the call cache: nothing was read from the database.
    pub cached: bool,
    /// Built without the database (it was unreachable): the session is new as far as this
    /// context knows, and what the call stored before is not in it.
    pub offline: bool,
    /// The caller's number, when identified.
    pub phone: Option<String>,
    /// A first turn's writes, not done yet: the call's start (its caller, the abandoned call it
    /// resumes, its new session), written by [`ensure_stored`] or with the turn
    /// ([`deferred_start`]).
    pending: Option<CallStart>,
    /// Taken before this context was read: what the cache needs to tell whether it is still
    /// current when offered (`None`: not to be cached).
    ticket: Option<Ticket>,
}

/// Whether the call cache may serve or take this call now: a call with a key, and nothing in
/// the outage journal (journaled writes are not reported as changes until replayed).
fn cacheable(engine: &Engine, identity: &Identity) -> bool {
    !identity.ephemeral
        && engine.cache.enabled()
        && engine.journal.backlog() == 0
        && !engine.journal.failing()
}

/// A turn's read: the call's cached memory when this instance served its previous turn and
/// nothing changed since (see [`super::cache`]; `assistant` is how many assistant messages the
/// request's history holds), else [`load`].
pub(crate) async fn load_for_turn(
    engine: &Engine,
    identity: &Identity,
    model: Option<&str>,
    assistant: usize,
) -> Result<CallContext, StoreError> {
    if cacheable(engine, identity)
        && let Some((cached, ticket)) =
            engine
                .cache
                .get(identity.platform, &identity.call_key, assistant)
    {
        metrics::counter!("redial_call_cache_total", "outcome" => "hit").increment(1);
        return Ok(CallContext {
            session: cached.session,
            caller: cached.caller,
            identified: identity.caller.is_some(),
            created: false,
            cached: true,
            offline: false,
            phone: identity.caller.clone(),
            // A first turn's context, its start not yet acknowledged by the writer: kept, so
            // that whatever writes next makes sure the session exists (idempotently).
            pending: cached.start,
            ticket: Some(ticket),
        });
    }
    metrics::counter!("redial_call_cache_total", "outcome" => "miss").increment(1);
    load(engine, identity, model).await
}

/// Offers a context to the call cache for the call's next turn here, whose history may hold at
/// most `max_assistant` assistant messages for it to be current. A first turn's context is kept
/// with its start, not yet stored (the writer stores it with the turn and then tells the cache:
/// [`super::cache::CallCache::started`]). Contexts built offline or read while the journal holds
/// writes are not kept.
pub(crate) fn remember(
    engine: &Engine,
    identity: &Identity,
    context: &CallContext,
    max_assistant: usize,
) {
    let Some(ticket) = context.ticket else { return };
    if context.offline || !cacheable(engine, identity) {
        return;
    }
    let cached = Cached {
        session: context.session.clone(),
        caller: context.caller.clone(),
        start: context.pending.clone(),
    };
    engine.cache.put(ticket, cached, max_assistant);
}

/// Forgets the call's cached memory (a write the store has not reported: journaled).
pub(crate) fn forget(engine: &Engine, identity: &Identity) {
    engine.cache.forget(identity.platform, &identity.call_key);
}

/// Reads the call's session and caller: one round trip for a known call; for a new call, the
/// caller's profile and the call it resumes (nothing is written; see [`ensure_stored`]).
pub(crate) async fn load(
    engine: &Engine,
    identity: &Identity,
    model: Option<&str>,
) -> Result<CallContext, StoreError> {
    let store = &engine.store;
    let identified = identity.caller.is_some();
    // Before the read: a change reported from now on keeps this context out of the cache.
    let ticket = Some(engine.cache.ticket());
    if let Some((session, caller)) = store
        .load_call(identity.platform, &identity.call_key)
        .await?
    {
        return Ok(CallContext {
            session,
            caller,
            identified,
            created: false,
            cached: false,
            offline: false,
            phone: identity.caller.clone(),
            pending: None,
            ticket,
        });
    }
    if engine.journal.backlog() > 0
        && engine
            .journal
            .journaled_start(identity.platform, &identity.call_key)
            .is_some()
    {
        // The call started while the database was away and its start is not replayed yet.
        return Ok(offline(engine, identity, model));
    }
    let now = Utc::now();
    let caller = match &identity.caller {
        Some(phone) => store.get_caller_by_phone(phone).await?,
        None => None,
    };
    let resumed = match &caller {
        Some(caller) => resumable(engine, caller.caller_id, &identity.assistant_id, now).await?,
        None => None,
    };
    let new = new_session(
        engine,
        identity,
        caller.as_ref(),
        resumed.as_ref(),
        model,
        now,
    );
    let session = unstored(&new, caller.as_ref());
    let close_previous = resumed
        .filter(|s| s.status == SessionStatus::Active)
        .map(|s| (s.session_id, dropped(s.last_activity_at)));
    let pending = CallStart {
        session: new,
        phone: identity.caller.clone(),
        close_previous,
        now,
    };
    Ok(CallContext {
        session,
        caller,
        identified,
        created: false,
        cached: false,
        offline: false,
        phone: identity.caller.clone(),
        pending: Some(pending),
        ticket,
    })
}

/// The context of a call whose stored state cannot be read (the database is away): a new
/// session for the call, no profile, nothing resumed. Its first write is journaled like any
/// other; replaying it adopts the call's stored session when the call already had one.
pub(crate) fn offline(engine: &Engine, identity: &Identity, model: Option<&str>) -> CallContext {
    let mut new = new_session(engine, identity, None, None, model, Utc::now());
    let journaled = engine
        .journal
        .journaled_start(identity.platform, &identity.call_key);
    if let Some(session_id) = journaled {
        new.session_id = session_id;
    }
    let session = unstored(&new, None);
    // When the call's start is in the journal already, there is nothing more to write for it.
    let pending = journaled.is_none().then(|| CallStart {
        session: new,
        phone: identity.caller.clone(),
        close_previous: None,
        now: Utc::now(),
    });
    CallContext {
        session,
        caller: None,
        identified: identity.caller.is_some(),
        created: false,
        cached: false,
        offline: true,
        phone: identity.caller.clone(),
        pending,
        ticket: None,
    }
}

/// Writes a first turn's caller and session (marking the resumed call dropped when it was
/// abandoned), or journals them while the database is away. Idempotent: a session another
/// request created meanwhile is adopted.
pub(crate) async fn ensure_stored(
    engine: &Engine,
    context: &mut CallContext,
) -> Result<(), WriteError> {
    let Some(mut start) = context.pending.clone() else {
        return Ok(());
    };
    // One transaction: the caller, the abandoned call it resumes, the new session.
    start.now = Utc::now();
    let written = engine
        .journal
        .write_for(context.offline, engine.store.start_call(&start), || {
            vec![Op::StartCall(start.clone())]
        })
        .await?;
    let Written::Stored(started) = written else {
        // Journaled: the context keeps the session as it will be stored, and later turns of
        // the call while the journal is in use reuse it.
        let session = &context.session;
        let journal = &engine.journal;
        journal.note_journaled_start(session.platform, &session.call_key, session.session_id);
        context.created = true;
        context.pending = None;
        return Ok(());
    };
    count_resumed(&started);
    if context.caller.is_none() {
        context.caller = started.caller;
    }
    context.session = started.session;
    context.created = started.created;
    context.offline = false;
    context.pending = None;
    Ok(())
}

/// The start a first turn's write carries to the writer, which stores it with the turn in its
/// batch (see [`TurnStore::save_batch`]) instead of in a transaction of its own before it: `None`
/// when the session is stored already, or when the start is to be written now, by
/// [`ensure_stored`] (a context built offline, or the journal in use: the outage path journals
/// the start itself, in order).
///
/// [`TurnStore::save_batch`]: crate::storage::TurnStore::save_batch
pub(crate) fn deferred_start(engine: &Engine, context: &CallContext) -> Option<CallStart> {
    let journaling = engine.journal.failing() || engine.journal.backlog() > 0;
    if context.offline || journaling {
        return None;
    }
    let mut start = context.pending.clone()?;
    start.now = Utc::now();
    Some(start)
}

/// Counts a call that a start resumed.
pub(crate) fn count_resumed(started: &StartedCall) {
    if started.created && started.session.resumes_session_id.is_some() {
        metrics::counter!("redial_resumed_calls_total").increment(1);
    }
}

/// How an abandoned call a new one resumes is closed.
fn dropped(last_activity: DateTime<Utc>) -> CloseSession {
    CloseSession {
        status: SessionStatus::Dropped,
        ended_reason: Some("went silent; resumed by a new call".into()),
        ended_at: last_activity,
        details: serde_json::json!({}),
    }
}

/// Reads and, for a new call, stores the context at once (webhooks, workers, greetings). The
/// stored context is kept in the call cache: a call warmed as it starts (Vapi's `in-progress`,
/// Retell's `call_started` or greeting) reads nothing on its first turn here.
pub(crate) async fn load_stored(
    engine: &Engine,
    identity: &Identity,
    model: Option<&str>,
) -> Result<CallContext, StoreError> {
    let mut context = load(engine, identity, model).await?;
    ensure_stored(engine, &mut context)
        .await
        .map_err(StoreError::from)?;
    // Before its first turn a call's history holds at most the greeting.
    remember(engine, identity, &context, 1);
    Ok(context)
}

fn new_session(
    engine: &Engine,
    identity: &Identity,
    caller: Option<&Caller>,
    resumed: Option<&CallSession>,
    model: Option<&str>,
    now: DateTime<Utc>,
) -> NewSession {
    let script = engine.settings.assistant(&identity.assistant_id);
    let (attempt, resumes_session_id, answers) = match resumed {
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
    NewSession {
        session_id: Uuid::now_v7(),
        platform: identity.platform,
        call_key: identity.call_key.clone(),
        caller_id: caller.map(|c| c.caller_id),
        assistant_id: identity.assistant_id.clone(),
        attempt,
        resumes_session_id,
        answers,
        status,
        model: model.map(str::to_owned),
        started_at: now,
    }
}

/// The session as `start_call` will store it (the caller's counts are snapshotted).
fn unstored(new: &NewSession, caller: Option<&Caller>) -> CallSession {
    CallSession {
        session_id: new.session_id,
        platform: new.platform,
        call_key: new.call_key.clone(),
        caller_id: new.caller_id,
        assistant_id: new.assistant_id.clone(),
        status: new.status,
        attempt: new.attempt,
        resumes_session_id: new.resumes_session_id,
        answers: new.answers.clone(),
        prior_calls: caller.map_or(0, |c| c.call_count),
        prior_call_at: caller.and_then(|c| c.last_call_at),
        model: new.model.clone(),
        ended_reason: None,
        details: serde_json::json!({}),
        started_at: new.started_at,
        last_activity_at: new.started_at,
        ended_at: None,
        version: 0,
    }
}

/// The caller's unfinished call with this assistant within the resume window, when the
/// assistant's script has required fields and that call is not live.
///
/// A call is live — a concurrent call of the same caller, never merged — while a turn of it is
/// running on this instance or its Retell socket is open (the in-process registry), or while
/// its last activity is within `memory.live_window_secs` (the store: other instances). Anything
/// else unfinished is a call that dropped, whether or not the platform's call-ended webhook has
/// arrived (it may never: none configured, or the gateway was killed).
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
    let mut live_since = now - seconds(memory.live_window_secs);
    if !engine.store.shared() {
        // Only this process writes to this store: a call last active before it started had its
        // turns on a process that is gone (a crash or a restart), so it is not live.
        live_since = live_since.max(engine.started_at);
    }
    let found = engine
        .store
        .find_resumable(caller_id, assistant_id, since, live_since, None)
        .await?;
    let Some(found) = found else {
        return Ok(None);
    };
    if found.status == SessionStatus::Active && engine.live.is_live(found.platform, &found.call_key)
    {
        tracing::info!(
            previous = %found.session_id,
            "the caller's previous call is live here; a concurrent call, not a redial"
        );
        return Ok(None);
    }
    Ok(script::incomplete(script, &found.answers).then_some(found))
}

fn seconds(secs: u64) -> chrono::Duration {
    chrono::Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX / 1000))
}
