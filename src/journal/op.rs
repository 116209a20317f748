//! What the journal records, and replaying it into the database.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Journal;
use super::file::{Cursor, Record};
use crate::storage::{
    CallStart, CallerPatch, NewAudit, NewJob, NewWebhookEvent, Store, StoreError, TurnWrite,
};

/// One journaled write. Each is idempotent, so applying it again changes nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// A call's first write ([`Store::start_call`]); keyed by the platform's call.
    StartCall(CallStart),
    /// A finished turn and its audit entries ([`Store::save_turns`]); keyed per turn and entry.
    Turns(TurnWrite),
    /// A confirmed answer ([`Store::record_answer`]); recording the same value again is a no-op.
    Answer(AnswerWrite),
    /// A caller profile change ([`Store::update_caller`]); notes are not added twice.
    Profile(ProfileWrite),
    /// An accepted webhook and its job ([`Store::record_webhook`]); keyed by its dedupe key.
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

/// Applies the next records (a batch), saving the cursor after the last one applied.
async fn replay_batch(journal: &Journal, store: &dyn Store, batch_max: usize) -> Result<(), Stop> {
    let records = blocking(journal, move |log| log.read(batch_max, BATCH_BYTES)).await?;
    if records.is_empty() {
        return Err(Stop::Landing);
    }
    let mut cursor = blocking(journal, |log| Ok(log.cursor().clone())).await?;
    let (applied, stopped) = apply_records(journal, store, &records, &mut cursor).await;
    if applied > 0 {
        blocking(journal, move |log| log.advance(cursor)).await?;
        let left = journal.0.backlog.fetch_sub(applied, Ordering::SeqCst) - applied;
        metrics::counter!("redial_journal_replayed_total").increment(applied);
        metrics::gauge!("redial_journal_backlog").set(left as f64);
        if left == 0 {
            compact(journal).await?;
        }
    }
    stopped.map_or(Ok(()), Err)
}

/// Applies `records` in order, grouping consecutive turn writes into one transaction. Returns
/// how many were applied (or rejected for good) and why it stopped early, if it did.
async fn apply_records(
    journal: &Journal,
    store: &dyn Store,
    records: &[Record],
    cursor: &mut Cursor,
) -> (u64, Option<Stop>) {
    let mut applied = 0;
    let mut i = 0;
    while i < records.len() {
        let op = match serde_json::from_slice::<Op>(&records[i].line) {
            Ok(op) => op,
            Err(e) => {
                reject(journal, &records[i], &format!("unreadable record: {e}")).await;
                (cursor.offset, applied, i) = (records[i].end, applied + 1, i + 1);
                continue;
            }
        };
        let group = match op {
            Op::Turns(first) => turn_group(first, &records[i + 1..]),
            other => vec![other],
        };
        let n = group.len();
        match apply_group(journal, store, &records[i..i + n], group, cursor).await {
            Ok(()) => {}
            Err(e) if super::transient(&e) => return (applied, Some(Stop::Outage(e))),
            Err(e) => {
                // Only a single record fails for good here: groups are split before.
                reject(journal, &records[i], &e.to_string()).await;
            }
        }
        (cursor.offset, applied, i) = (records[i + n - 1].end, applied + n as u64, i + n);
    }
    (applied, None)
}

/// `first` and the turn writes that directly follow it.
fn turn_group(first: TurnWrite, rest: &[Record]) -> Vec<Op> {
    let mut group = vec![Op::Turns(first)];
    for record in rest {
        match serde_json::from_slice::<Op>(&record.line) {
            Ok(op @ Op::Turns(_)) => group.push(op),
            _ => break,
        }
    }
    group
}

/// Applies one group: several turn writes in one transaction (split one by one when the
/// database rejects it, so one bad record does not take the others down), or one other record.
async fn apply_group(
    journal: &Journal,
    store: &dyn Store,
    records: &[Record],
    group: Vec<Op>,
    cursor: &mut Cursor,
) -> Result<(), StoreError> {
    if group.len() == 1 {
        let op = group.into_iter().next().ok_or(StoreError::NotFound)?;
        return apply(journal, store, op, cursor).await;
    }
    let writes: Vec<TurnWrite> = group
        .into_iter()
        .filter_map(|op| match op {
            Op::Turns(write) => Some(resolved(journal, write)),
            _ => None,
        })
        .collect();
    match journal.attempt(store.save_turns(&writes)).await {
        Ok(results) => {
            for (result, record) in results.iter().zip(records) {
                if result.is_none() {
                    reject(journal, record, "the session does not exist").await;
                }
            }
            Ok(())
        }
        Err(e) if super::transient(&e) => Err(e),
        Err(_) => {
            for (write, record) in writes.into_iter().zip(records) {
                match apply(journal, store, Op::Turns(write), cursor).await {
                    Ok(()) => {}
                    Err(e) if super::transient(&e) => return Err(e),
                    Err(e) => reject(journal, record, &e.to_string()).await,
                }
            }
            Ok(())
        }
    }
}

/// Applies one record.
async fn apply(
    journal: &Journal,
    store: &dyn Store,
    op: Op,
    cursor: &mut Cursor,
) -> Result<(), StoreError> {
    match op {
        Op::StartCall(start) => start_call(journal, store, start, cursor).await,
        Op::Turns(write) => {
            let write = resolved(journal, write);
            let results = journal
                .attempt(store.save_turns(std::slice::from_ref(&write)))
                .await?;
            match results.first() {
                Some(Some(_)) => Ok(()),
                _ => Err(StoreError::NotFound),
            }
        }
        Op::Answer(answer) => {
            let session_id = journal.resolve(answer.session_id);
            journal
                .attempt(store.record_answer(
                    session_id,
                    &answer.field,
                    &answer.value,
                    &answer.required,
                    answer.at,
                ))
                .await
                .map(drop)
        }
        Op::Profile(profile) => {
            let caller_id = match (profile.caller_id, &profile.phone) {
                (Some(id), _) => id,
                (None, Some(phone)) => {
                    journal
                        .attempt(store.upsert_caller(phone, profile.at))
                        .await?
                        .caller_id
                }
                (None, None) => return Err(StoreError::NotFound),
            };
            journal
                .attempt(store.update_caller(caller_id, &profile.patch, profile.at))
                .await
                .map(drop)
        }
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
            actor: format!("engine:{}", start.session.platform),
            action: "create".into(),
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

/// The write with its session ids mapped onto stored ones.
fn resolved(journal: &Journal, mut write: TurnWrite) -> TurnWrite {
    write.session_id = journal.resolve(write.session_id);
    for entry in &mut write.audit {
        entry.session_id = entry.session_id.map(|id| journal.resolve(id));
    }
    write
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
