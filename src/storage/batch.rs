//! The bookkeeping of [`super::TurnStore::save_turns`], shared by both backends: which items are
//! stored, which item an inserted turn belongs to, and what each session's one update is.
//!
//! A backend finds the batch's stored sessions, inserts [`Batch::rows`] (in statements of
//! [`ROWS_PER_STATEMENT`]) reporting each inserted row to [`Batch::inserted`], applies
//! [`Batch::touches`] in one update, appends [`Batch::audit`] and commits; [`Batch::results`]
//! is then the answer.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::text::text;
use super::{NewAudit, NewTurn, NewUsage, TurnWrite};

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
