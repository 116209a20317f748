//! What the journal records, and replaying it into the database.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Journal;
use super::file::{Cursor, Record};
use crate::storage::{
    AnswerOutcome, AuditAction, AuditActor, CallStart, Caller, CallerPatch, NewAudit, NewJob,
    NewWebhookEvent, Store, StoreError, StoreResult, TurnWrite,
};

/// One journaled write. Each is idempotent, so applying it again changes nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// A call's first write ([`start_call`](crate::storage::SessionStore::start_call)); keyed by
    /// the platform's call.
    StartCall(CallStart),
    /// A finished turn and its audit entries
    /// ([`save_turns`](crate::storage::TurnStore::save_turns)); keyed per turn and entry.
    Turns(TurnWrite),
    /// A confirmed answer ([`record_answer`](crate::storage::SessionStore::record_answer));
    /// recording the same value again is a no-op.
    Answer(AnswerWrite),
    /// A caller profile change ([`update_caller`](crate::storage::CallerStore::update_caller));
    /// notes are not added twice.
    Profile(ProfileWrite),
    /// An accepted webhook and its job
    /// ([`record_webhook`](crate::storage::JobStore::record_webhook)); keyed by its dedupe key.
    Webhook(WebhookWrite),
}

/// A journaled [`Op::Answer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerWrite {
    /// The session (possibly a journaled id).
    pub session_id: Uuid,
    /// The field.
    pub field: String,
    /// The confirmed value.
    pub value: String,
    /// The script's required fields (completion is decided when it is applied).
    pub required: Vec<String>,
    /// When it was confirmed.
    pub at: DateTime<Utc>,
}

impl AnswerWrite {
    /// Records the answer on its session
    /// ([`record_answer`](crate::storage::SessionStore::record_answer)).
    pub async fn apply(&self, store: &dyn Store) -> StoreResult<AnswerOutcome> {
        let (field, value) = (&self.field, &self.value);
        store
            .record_answer(self.session_id, field, value, &self.required, self.at)
            .await
    }
}

/// A journaled [`Op::Profile`]: the caller by id when it was known, else by number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileWrite {
    /// The stored caller, when known.
    pub caller_id: Option<Uuid>,
    /// The caller's number (used when the id is not known).
    pub phone: Option<String>,
    /// The change.
    pub patch: CallerPatch,
    /// When.
    pub at: DateTime<Utc>,
}

impl ProfileWrite {
    /// Applies the change to the caller by id, or by number (upserted) when the id is not
    /// known yet.
    pub async fn apply(&self, store: &dyn Store) -> StoreResult<Caller> {
        let caller_id = match (self.caller_id, &self.phone) {
            (Some(id), _) => id,
            (None, Some(phone)) => store.upsert_caller(phone, self.at).await?.caller_id,
            (None, None) => return Err(StoreError::NotFound),
        };
        store.update_caller(caller_id, &self.patch, self.at).await
    }
}

/// A journaled [`Op::Webhook`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookWrite {
    /// The event as received.
    pub event: NewWebhookEvent,
    /// Its processing job.
    pub job: Option<NewJob>,
}

/// First and longest wait between replay attempts while the database stays away.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Sessions whose answers replay applies at the same time.
const CONCURRENT_QUEUES: usize = 8;
/// Most bytes of records read per replay batch.
const BATCH_BYTES: usize = 8 << 20;

/// Why a replay batch stopped early.
#[derive(Debug)]
enum Stop {
    /// The database is away (the failing record is applied again later).
    Outage(StoreError),
    /// The journal files failed.
    Io(std::io::Error),
    /// An append is counted but not yet on disk.
    Landing,
}

/// Applies journaled records until shutdown, waiting for appends while there are none.
pub(super) async fn replay(
    journal: Journal,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
    batch_max: usize,
) {
    let mut delay = RETRY_MIN;
    loop {
        let appended = journal.0.appended.notified();
        if journal.backlog() == 0 {
            tokio::select! {
                () = appended => continue,
                () = shutdown.cancelled() => return,
            }
        }
        let wait = match replay_batch(&journal, store.as_ref(), batch_max.max(1)).await {
            Ok(()) => {
                delay = RETRY_MIN;
                continue;
            }
            Err(Stop::Landing) => Duration::from_millis(5),
            Err(Stop::Outage(e)) => {
                tracing::debug!(error = %e, ?delay, "replaying the journal waits for the database");
                delay
            }
            Err(Stop::Io(e)) => {
                tracing::error!(error = %e, "reading the outage journal failed");
                delay
            }
        };
        delay = (delay * 2).min(RETRY_MAX);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Applies the next records (a batch), then saves the cursor past them. The batch is applied
/// as a whole or, when the database goes away in the middle, applied again from its start next
/// time (every record is idempotent, and nothing newer reaches the database in between).
async fn replay_batch(journal: &Journal, store: &dyn Store, batch_max: usize) -> Result<(), Stop> {
    let read_max = batch_max.saturating_mul(4);
    let records = blocking(journal, move |log| log.read(read_max, BATCH_BYTES)).await?;
    let Some(last) = records.last() else {
        return Err(Stop::Landing);
    };
    let end = last.end;
    let mut cursor = blocking(journal, |log| Ok(log.cursor().clone())).await?;
    apply_batch(journal, store, &records, &mut cursor, batch_max)
        .await
        .map_err(Stop::Outage)?;
    cursor.offset = end;
    let applied = records.len() as u64;
    blocking(journal, move |log| log.advance(cursor)).await?;
    let left = journal.0.backlog.fetch_sub(applied, Ordering::SeqCst) - applied;
    metrics::counter!("redial_journal_replayed_total").increment(applied);
    metrics::gauge!("redial_journal_backlog").set(left as f64);
    if left == 0 {
        compact(journal).await?;
    }
    Ok(())
}

/// Applies a batch of records. Order matters only within a call, so the batch is applied in
/// three passes that keep it: calls' first writes (one per call), then every turn write in
/// transactions of up to `batch_max`, then the rest (answers, profile changes, webhooks) in
/// order. Records the database rejects for good are set aside; an outage stops the batch.
async fn apply_batch(
    journal: &Journal,
    store: &dyn Store,
    records: &[Record],
    cursor: &mut Cursor,
    batch_max: usize,
) -> Result<(), StoreError> {
    let (mut starts, mut turns, mut rest) = (Vec::new(), Vec::new(), Vec::new());
    for record in records {
        match serde_json::from_slice::<Op>(&record.line) {
            Ok(Op::StartCall(start)) => starts.push((record, start)),
            Ok(Op::Turns(write)) => turns.push((record, write)),
            Ok(op) => rest.push((record, op)),
            Err(e) => reject(journal, record, &format!("unreadable record: {e}")).await,
        }
    }
    for (record, start) in starts {
        settle(
            journal,
            record,
            start_call(journal, store, start, cursor).await,
        )
        .await?;
    }
    for chunk in turns.chunks(batch_max.max(1)) {
        save_turns(journal, store, chunk).await?;
    }
    apply_rest(journal, store, rest).await
}

/// Answers, profile changes and webhooks: in order for each session (caller, webhook), and
/// several sessions at a time — each is its own small transaction, and one at a time they
/// would make replay slower than a busy instance writes.
async fn apply_rest(
    journal: &Journal,
    store: &dyn Store,
    rest: Vec<(&Record, Op)>,
) -> Result<(), StoreError> {
    let mut queues: Vec<Vec<(&Record, Op)>> = Vec::new();
    let mut by_key: HashMap<String, usize> = HashMap::new();
    for (record, op) in rest {
        let key = match &op {
            Op::Answer(answer) => journal.resolve(answer.session_id).to_string(),
            Op::Profile(profile) => match (profile.caller_id, &profile.phone) {
                (Some(id), _) => id.to_string(),
                (None, phone) => format!("phone:{}", phone.as_deref().unwrap_or_default()),
            },
            Op::Webhook(webhook) => format!("webhook:{}", webhook.event.dedupe_key),
            Op::StartCall(_) | Op::Turns(_) => String::new(),
        };
        let index = *by_key.entry(key).or_insert_with(|| {
            queues.push(Vec::new());
            queues.len() - 1
        });
        queues[index].push((record, op));
    }
    let runs: Vec<_> = queues
        .into_iter()
        .map(|queue| apply_queue(journal, store, queue))
        .collect();
    let results: Vec<Result<(), StoreError>> = futures_util::stream::iter(runs)
        .buffer_unordered(CONCURRENT_QUEUES)
        .collect()
        .await;
    results.into_iter().collect()
}

/// One session's (caller's, webhook's) records, in order.
async fn apply_queue(
    journal: &Journal,
    store: &dyn Store,
    queue: Vec<(&Record, Op)>,
) -> Result<(), StoreError> {
    for (record, op) in queue {
        settle(journal, record, apply(journal, store, op).await).await?;
    }
    Ok(())
}

/// Passes an outage on; sets a record the database rejected for good aside.
async fn settle(
    journal: &Journal,
    record: &Record,
    result: Result<(), StoreError>,
) -> Result<(), StoreError> {
    match result {
        Err(e) if e.is_transient() => Err(e),
        Err(e) => {
            reject(journal, record, &e.to_string()).await;
            Ok(())
        }
        Ok(()) => Ok(()),
    }
}

/// Turn writes in one transaction; one by one when the database rejects it, so one bad record
/// does not take the others down.
async fn save_turns(
    journal: &Journal,
    store: &dyn Store,
    chunk: &[(&Record, TurnWrite)],
) -> Result<(), StoreError> {
    let mut writes: Vec<TurnWrite> = chunk
        .iter()
        .map(|(_, write)| journal.resolve_write(write.clone()))
        .collect();
    attribute_audit(journal, store, &mut writes).await?;
    match journal.attempt(store.save_turns(&writes)).await {
        Ok(results) => {
            for (result, (record, _)) in results.iter().zip(chunk) {
                if result.is_none() {
                    reject(journal, record, "the session does not exist").await;
                }
            }
            Ok(())
        }
        Err(e) if e.is_transient() || chunk.len() == 1 => settle(journal, chunk[0].0, Err(e)).await,
        Err(_) => {
            for one in chunk {
                Box::pin(save_turns(journal, store, std::slice::from_ref(one))).await?;
            }
            Ok(())
        }
    }
}

/// Applies an answer, a profile change or a webhook (call starts and turns are applied by
/// [`apply_batch`]).
async fn apply(journal: &Journal, store: &dyn Store, op: Op) -> Result<(), StoreError> {
    match op {
        Op::StartCall(_) | Op::Turns(_) => Err(StoreError::Conflict(
            "call starts and turns are applied in their own passes".into(),
        )),
        Op::Answer(mut answer) => {
            answer.session_id = journal.resolve(answer.session_id);
            journal.attempt(answer.apply(store)).await.map(drop)
        }
        Op::Profile(profile) => journal.attempt(profile.apply(store)).await.map(drop),
        Op::Webhook(webhook) => journal
            .attempt(store.record_webhook(&webhook.event, webhook.job.as_ref()))
            .await
            .map(drop),
    }
}

/// Replays a call's first write. When the call already has a stored session, later records
/// of the journaled id are mapped onto it. A call started while the database was away had no
/// caller profile to audit against; its creation is audited now, once (keyed by the journaled
/// session id).
async fn start_call(
    journal: &Journal,
    store: &dyn Store,
    mut start: CallStart,
    cursor: &mut Cursor,
) -> Result<(), StoreError> {
    let journaled = start.session.session_id;
    let call = (start.session.platform, start.session.call_key.clone());
    if let Some(stored) = journal.replayed_start(&call) {
        // The call's start was applied already (an earlier record of the same call).
        if stored != journaled {
            journal.remember(journaled, stored);
            cursor.remap.insert(journaled, stored);
        }
        return Ok(());
    }
    start.session.resumes_session_id = start
        .session
        .resumes_session_id
        .map(|id| journal.resolve(id));
    if let Some((previous, _)) = &mut start.close_previous {
        *previous = journal.resolve(*previous);
    }
    let offline = start.session.caller_id.is_none() && start.phone.is_some();
    let started = journal.attempt(store.start_call(&start)).await?;
    let stored = started.session.session_id;
    journal.note_replayed_start(call, stored);
    journal.note_session_caller(stored, started.session.caller_id);
    if stored != journaled {
        journal.remember(journaled, stored);
        cursor.remap.insert(journaled, stored);
    }
    if offline && started.created {
        let caller_id = started.session.caller_id;
        let entry = NewAudit {
            entry_key: Some(journaled),
            caller_id,
            session_id: Some(stored),
            actor: AuditActor::Engine(start.session.platform),
            action: AuditAction::Create,
            reason: "turn (written from the outage journal)".into(),
            details: serde_json::json!({"memory_used": false}),
            created_at: start.now,
        };
        if caller_id.is_some() {
            journal.attempt(store.append_audit(&[entry])).await?;
        }
    }
    Ok(())
}

/// Fills in the caller of audit entries written while the caller's profile could not be read
/// (an offline context knows the call, not the caller id): the caller of the entry's session,
/// so a caller's access log lists them.
async fn attribute_audit(
    journal: &Journal,
    store: &dyn Store,
    writes: &mut [TurnWrite],
) -> Result<(), StoreError> {
    for entry in writes.iter_mut().flat_map(|w| w.audit.iter_mut()) {
        let (None, Some(session_id)) = (entry.caller_id, entry.session_id) else {
            continue;
        };
        entry.caller_id = match journal.session_caller(session_id) {
            Some(caller) => caller,
            None => {
                let session = journal.attempt(store.get_session(session_id)).await?;
                let caller = session.and_then(|s| s.caller_id);
                journal.note_session_caller(session_id, caller);
                caller
            }
        };
    }
    Ok(())
}

/// Sets a record the database rejected for good aside (`rejected.log`), logged and counted.
async fn reject(journal: &Journal, record: &Record, reason: &str) {
    tracing::error!(
        reason,
        "the database rejected a journaled write; it is kept in rejected.log"
    );
    metrics::counter!("redial_journal_rejected_total").increment(1);
    let (line, reason) = (record.line.clone(), reason.to_owned());
    if let Err(e) = blocking(journal, move |log| log.reject(&line, &reason)).await {
        tracing::error!(error = ?e, "keeping a rejected journal record failed");
    }
}

/// Empties the log once everything in it is applied (unless an append just landed).
async fn compact(journal: &Journal) -> Result<(), Stop> {
    let shared = Arc::clone(&journal.0);
    let compacted = blocking(journal, move |log| {
        if shared.backlog.load(Ordering::SeqCst) > 0 {
            return Ok(false);
        }
        log.compact()
    })
    .await?;
    if compacted {
        tracing::info!("the outage journal is replayed; writes go to the database again");
    }
    Ok(())
}

/// Runs `f` on the log in the blocking pool.
async fn blocking<T: Send + 'static>(
    journal: &Journal,
    f: impl FnOnce(&mut super::file::Log) -> std::io::Result<T> + Send + 'static,
) -> Result<T, Stop> {
    let Some(log) = journal.0.log.clone() else {
        return Err(Stop::Io(std::io::Error::other("the journal is disabled")));
    };
    tokio::task::spawn_blocking(move || f(&mut log.lock().unwrap_or_else(PoisonError::into_inner)))
        .await
        .map_err(|e| Stop::Io(std::io::Error::other(e)))?
        .map_err(Stop::Io)
}
