//! The bookkeeping of [`super::TurnStore::save_turns`], shared by both backends: which items are
//! stored, which item an inserted turn belongs to, and what each session's one update is.
//!
//! A backend finds the batch's stored sessions, inserts [`Batch::rows`] (in statements of
//! [`ROWS_PER_STATEMENT`]) reporting each inserted row to [`Batch::inserted`], applies
//! [`Batch::touches`] in one update, appends [`Batch::audit`] and commits; [`Batch::results`]
//! is then the answer.
//!
//! A batch whose items start their calls ([`TurnWrite::start`]) first applies [`starts`] in
//! the same transaction, then saves the items as [`Started::apply`] maps them onto the stored
//! sessions.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::text::text;
use super::{AuditAction, CallStart, NewAudit, NewTurn, NewUsage, StartedCall, TurnWrite};
use crate::platforms::Platform;

/// Rows per multi-row insert: at most 8 parameters each, under SQLite's 32,766 and Postgres'
/// 65,535 per statement.
pub(crate) const ROWS_PER_STATEMENT: usize = 4_000;

/// A batch being saved.
pub(crate) struct Batch<'a> {
    writes: &'a [TurnWrite],
    found: HashSet<Uuid>,
    /// The first item (in batch order) carrying each key of a session: the one a key repeated
    /// within the batch is inserted for. Keys are as stored ([`text`]), as the database reports
    /// them back.
    first_of: HashMap<Uuid, HashMap<Cow<'a, str>, usize>>,
    inserted: Vec<u64>,
    newest: Vec<Option<DateTime<Utc>>>,
}

/// What a batch does to one session: its newest inserted turn, its last given model, and one
/// version bump per item that touches it.
#[derive(Debug, Default)]
pub(crate) struct Touch<'a> {
    pub session_id: Uuid,
    pub at: Option<DateTime<Utc>>,
    pub model: Option<&'a str>,
    pub bumps: i64,
}

impl<'a> Batch<'a> {
    /// A batch whose stored sessions are `found`; items of other sessions are skipped.
    pub(crate) fn new(writes: &'a [TurnWrite], found: HashSet<Uuid>) -> Self {
        let mut first_of: HashMap<Uuid, HashMap<Cow<'a, str>, usize>> = HashMap::new();
        for (index, write) in writes.iter().enumerate() {
            if found.contains(&write.session_id) {
                let keys = first_of.entry(write.session_id).or_default();
                for turn in &write.turns {
                    keys.entry(text(&turn.idempotency_key)).or_insert(index);
                }
            }
        }
        Self {
            writes,
            found,
            first_of,
            inserted: vec![0; writes.len()],
            newest: vec![None; writes.len()],
        }
    }

    /// The distinct sessions of the batch, in id order (the order to lock them in).
    pub(crate) fn session_ids(writes: &[TurnWrite]) -> Vec<Uuid> {
        let mut ids: Vec<Uuid> = writes.iter().map(|w| w.session_id).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    fn stored(&self) -> impl Iterator<Item = (usize, &'a TurnWrite)> + '_ {
        self.writes
            .iter()
            .enumerate()
            .filter(|(_, w)| self.found.contains(&w.session_id))
    }

    /// Every turn to insert, with its session, in batch order.
    pub(crate) fn rows(&self) -> Vec<(Uuid, &'a NewTurn)> {
        self.stored()
            .flat_map(|(_, w)| w.turns.iter().map(move |t| (w.session_id, t)))
            .collect()
    }

    /// Counts a row the database inserted.
    pub(crate) fn inserted(&mut self, session_id: Uuid, key: &str, at: DateTime<Utc>) {
        if let Some(&index) = self
            .first_of
            .get(&session_id)
            .and_then(|keys| keys.get(key))
        {
            self.inserted[index] += 1;
            self.newest[index] = self.newest[index].max(Some(at));
        }
    }

    /// One update per session that an item touches (a turn inserted, or a model given).
    pub(crate) fn touches(&self) -> Vec<Touch<'a>> {
        let mut touches: Vec<Touch<'a>> = Vec::new();
        let mut position: HashMap<Uuid, usize> = HashMap::new();
        for (index, write) in self.stored() {
            if self.inserted[index] == 0 && write.model.is_none() {
                continue;
            }
            let at = *position.entry(write.session_id).or_insert_with(|| {
                touches.push(Touch {
                    session_id: write.session_id,
                    ..Touch::default()
                });
                touches.len() - 1
            });
            let touch = &mut touches[at];
            touch.at = touch.at.max(self.newest[index]);
            touch.model = write.model.as_deref().or(touch.model);
            touch.bumps += 1;
        }
        touches
    }

    /// The audit entries of the stored items.
    pub(crate) fn audit(&self) -> Vec<&'a NewAudit> {
        self.stored().flat_map(|(_, w)| w.audit.iter()).collect()
    }

    /// The usage rows of the items whose session exists, with their session.
    pub(crate) fn usage(&self) -> Vec<(Uuid, &'a NewUsage)> {
        self.stored()
            .flat_map(|(_, w)| w.usage.iter().map(move |u| (w.session_id, u)))
            .collect()
    }

    /// Per item, the turns inserted, or `None` when its session does not exist.
    pub(crate) fn results(self) -> Vec<Option<u64>> {
        self.writes
            .iter()
            .zip(self.inserted)
            .map(|(w, n)| self.found.contains(&w.session_id).then_some(n))
            .collect()
    }
}

/// A call: platform and call key.
type CallKey<'a> = (Platform, &'a str);

fn call_of(start: &CallStart) -> CallKey<'_> {
    (start.session.platform, start.session.call_key.as_str())
}

/// The distinct calls the batch starts, one start each (the first in batch order), in the order
/// to apply them: by phone, so that the batches of several instances lock callers in one order.
pub(crate) fn starts(writes: &[TurnWrite]) -> Vec<&CallStart> {
    let mut starts: Vec<&CallStart> = writes.iter().filter_map(|w| w.start.as_ref()).collect();
    // Stable: within one call, batch order is kept, and dedup keeps the first.
    let order = |s: &CallStart| {
        (
            s.phone.clone(),
            s.session.platform.as_str(),
            s.session.call_key.clone(),
        )
    };
    starts.sort_by_cached_key(|s| order(s));
    starts.dedup_by(|a, b| call_of(a) == call_of(b));
    starts
}

/// What a batch's starts stored, per call.
#[derive(Debug, Default)]
pub(crate) struct Started<'a>(HashMap<CallKey<'a>, StartedCall>);

impl<'a> Started<'a> {
    /// Records what `start` (one of [`starts`]) stored.
    pub(crate) fn record(&mut self, start: &'a CallStart, started: StartedCall) {
        self.0.insert(call_of(start), started);
    }

    /// The batch to save after the starts: every item written under a started call's new
    /// session id moved to the session stored for the call (another request's, when it created
    /// it first), and the audit entries of the items with a start completed (the started caller
    /// when they name none; a read, not a create, when the session was adopted). Also, per item,
    /// what its start stored (`created` as seen by that item).
    pub(crate) fn apply(
        &self,
        writes: &'a [TurnWrite],
    ) -> (Cow<'a, [TurnWrite]>, Vec<Option<StartedCall>>) {
        let mut moved: HashMap<Uuid, Uuid> = HashMap::new();
        let mut per_item = Vec::with_capacity(writes.len());
        for write in writes {
            let started = write.start.as_ref().and_then(|start| {
                let stored = self.0.get(&call_of(start))?;
                let pending = start.session.session_id;
                if stored.session.session_id != pending {
                    moved.insert(pending, stored.session.session_id);
                }
                let mut started = stored.clone();
                started.created = stored.created && stored.session.session_id == pending;
                Some(started)
            });
            per_item.push(started);
        }
        if per_item.iter().all(Option::is_none) {
            return (Cow::Borrowed(writes), per_item);
        }
        let fixed = writes
            .iter()
            .zip(&per_item)
            .map(|(write, started)| {
                let mut write = write.clone();
                let to = |id: &mut Uuid| *id = moved.get(id).copied().unwrap_or(*id);
                to(&mut write.session_id);
                for entry in &mut write.audit {
                    if let Some(id) = entry.session_id.as_mut() {
                        to(id);
                    }
                    if let Some(started) = started {
                        complete_audit(entry, started);
                    }
                }
                write
            })
            .collect();
        (Cow::Owned(fixed), per_item)
    }
}

/// An audit entry of an item that started its call, as the start turned out: the started
/// caller when the entry names none, and a read, not a create, when the session was adopted.
pub(crate) fn complete_audit(entry: &mut NewAudit, started: &StartedCall) {
    if entry.caller_id.is_none() {
        entry.caller_id = started.caller.as_ref().map(|c| c.caller_id);
    }
    if entry.action == AuditAction::Create && !started.created {
        entry.action = AuditAction::Read;
    }
}
