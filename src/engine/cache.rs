//! The per-call state cache: what a call's next turn on this instance would read, kept from its
//! previous one, so a later turn reads nothing from the database.
//!
//! After a turn is persisted (or a call is warmed as it starts), the instance keeps the call's
//! session and caller. Correctness rests on three rules:
//!
//! - **Every change is heard.** The store reports each changed caller and session (see
//!   [`crate::storage::changes`]): SQLite from its own writes, before they return; Postgres from
//!   triggers through a listener connection, whichever instance wrote. A notice drops every entry
//!   holding that id. While the listener is down ([`Change::Lost`]) the cache is empty and takes
//!   nothing.
//! - **Nothing read before a change is kept after it.** A turn takes a [`Ticket`] before it
//!   reads; when it offers what it read ([`CallCache::put`]), the offer is refused if a notice
//!   for its session or caller arrived since (or too many notices to tell). So a write that lands
//!   while a turn runs — by a tool, a webhook, another instance — is never hidden by the turn's
//!   older copy.
//! - **Another instance's turn is seen in the history.** Each entry remembers how many assistant
//!   messages the call's history may hold for the entry to be current (its last reply included);
//!   a request with more has had a turn elsewhere since, and reads the database, whether or not
//!   that turn's notices have arrived yet.
//!
//! Entries are bounded by count and estimated bytes (least recently used go first), dropped when
//! the call ends (closing the session is a change), and never taken from a context built offline
//! or while the outage journal holds writes.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use uuid::Uuid;

use crate::platforms::Platform;
use crate::storage::changes::Change;
use crate::storage::{CallSession, CallStart, Caller, StartedCall};

/// How many recent notices are remembered for refusing stale offers; a ticket older than all of
/// them cannot be checked and its offer is refused.
const RECENT: usize = 4_096;

/// A call: platform and call key.
type Key = (Platform, String);

/// The point in the notice sequence before which a read was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket(u64);

/// A call's cached memory.
#[derive(Debug, Clone)]
pub(crate) struct Cached {
    /// The call's session.
    pub session: CallSession,
    /// Its caller, when known.
    pub caller: Option<Caller>,
    /// The call's start, when its first turn was answered here and the writer has not yet
    /// stored it (see [`CallCache::started`]): `session` is then the session as it will be
    /// stored.
    pub start: Option<CallStart>,
}

#[derive(Debug)]
struct Entry {
    cached: Cached,
    /// Most assistant messages a request's history may hold for this entry to be current.
    max_assistant: usize,
    bytes: usize,
    used: u64,
}

#[derive(Debug, Default)]
struct Inner {
    /// Notices so far.
    seq: u64,
    /// The notice number of the last [`Change::Lost`].
    lost_at: u64,
    /// The last [`RECENT`] row notices: number and id.
    recent: VecDeque<(u64, Uuid)>,
    /// The number of the newest row notice no longer in `recent`.
    dropped_upto: u64,
    entries: HashMap<Key, Entry>,
    /// Session and caller ids → the calls whose entries hold them.
    holders: HashMap<Uuid, Vec<Key>>,
    bytes: usize,
    clock: u64,
}

/// The cache, shared by every turn of this instance (cheap to clone).
#[derive(Debug, Clone)]
pub(crate) struct CallCache {
    inner: Arc<Mutex<Inner>>,
    /// Whether every change is being heard (the store watches, its listener is up).
    watching: Arc<AtomicBool>,
    max_entries: usize,
    max_bytes: usize,
}

impl CallCache {
    /// A cache of at most `max_entries` calls and about `max_bytes` bytes; with either at 0 it
    /// holds nothing. It takes nothing until told [`Change::Watching`].
    pub(crate) fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            inner: Arc::default(),
            watching: Arc::new(AtomicBool::new(false)),
            max_entries,
            max_bytes,
        }
    }

    /// Whether the cache may be used now.
    pub(crate) fn enabled(&self) -> bool {
        self.max_entries > 0 && self.max_bytes > 0 && self.watching.load(Ordering::Acquire)
    }

    /// Takes a store's change notice.
    pub(crate) fn notice(&self, change: Change) {
        let mut inner = self.lock();
        inner.seq += 1;
        let seq = inner.seq;
        match change {
            Change::Row(id) => {
                if inner.recent.len() == RECENT
                    && let Some((dropped, _)) = inner.recent.pop_front()
                {
                    inner.dropped_upto = dropped;
                }
                inner.recent.push_back((seq, id));
                let keys = inner.holders.remove(&id).unwrap_or_default();
                for key in keys {
                    inner.remove(&key);
                }
            }
            Change::Lost => {
                self.watching.store(false, Ordering::Release);
                inner.lost_at = seq;
                inner.entries.clear();
                inner.holders.clear();
                inner.bytes = 0;
            }
            Change::Watching => self.watching.store(true, Ordering::Release),
        }
    }

    /// The ticket to take before reading what may be offered later.
    pub(crate) fn ticket(&self) -> Ticket {
        Ticket(self.lock().seq)
    }

    /// The call's cached memory, when its history shows no turn this entry has not seen (at
    /// most `assistant` assistant messages), with the ticket for offering it back.
    pub(crate) fn get(
        &self,
        platform: Platform,
        call_key: &str,
        assistant: usize,
    ) -> Option<(Cached, Ticket)> {
        if !self.enabled() {
            return None;
        }
        let mut inner = self.lock();
        inner.clock += 1;
        let clock = inner.clock;
        let ticket = Ticket(inner.seq);
        let key = (platform, call_key.to_owned());
        let entry = inner.entries.get_mut(&key)?;
        if assistant > entry.max_assistant {
            // Another instance answered a turn of this call since: read it afresh.
            inner.remove(&key);
            return None;
        }
        entry.used = clock;
        Some((entry.cached.clone(), ticket))
    }

    /// Offers a call's memory as read after `ticket`; kept unless a notice about its session or
    /// caller has arrived since (or the cache cannot tell). `max_assistant` is how many assistant
    /// messages the call's next request may hold (see the module documentation).
    pub(crate) fn put(&self, ticket: Ticket, cached: Cached, max_assistant: usize) -> bool {
        if !self.enabled() {
            return false;
        }
        let mut inner = self.lock();
        self.put_locked(&mut inner, ticket, cached, max_assistant)
    }

    /// A call's start, held by its entry, was stored by the writer as `started` (read after
    /// `ticket`, taken before the writer's transaction began): the entry now holds the stored
    /// session, and the caller the start upserted when it held none. It is dropped instead when
    /// the call's stored session is not the one it held (another request created the call's
    /// session first) or a notice about either arrived since `ticket`. An entry holding no
    /// start, or another one, is left as it is.
    pub(crate) fn started(&self, ticket: Ticket, pending: Uuid, started: &StartedCall) {
        if !self.enabled() {
            return;
        }
        let session = &started.session;
        let key = (session.platform, session.call_key.clone());
        let mut inner = self.lock();
        let Some(entry) = inner.entries.get(&key) else {
            return;
        };
        let held = entry.cached.start.as_ref().map(|s| s.session.session_id);
        if held != Some(pending) {
            return;
        }
        if session.session_id != pending {
            inner.remove(&key);
            return;
        }
        let cached = Cached {
            session: session.clone(),
            caller: (entry.cached.caller.clone()).or_else(|| started.caller.clone()),
            start: None,
        };
        let max_assistant = entry.max_assistant;
        if !self.put_locked(&mut inner, ticket, cached, max_assistant) {
            inner.remove(&key);
        }
    }

    fn put_locked(
        &self,
        inner: &mut Inner,
        ticket: Ticket,
        cached: Cached,
        max_assistant: usize,
    ) -> bool {
        let session_id = cached.session.session_id;
        let caller_id = cached.caller.as_ref().map(|c| c.caller_id);
        let since = ticket.0;
        let forgotten = inner.dropped_upto > since;
        let changed = inner
            .recent
            .iter()
            .rev()
            .take_while(|(seq, _)| *seq > since)
            .any(|(_, id)| *id == session_id || Some(*id) == caller_id);
        if inner.lost_at > since || forgotten || changed {
            return false;
        }
        let key = (cached.session.platform, cached.session.call_key.clone());
        inner.remove(&key);
        let bytes = size_of(&cached);
        if bytes > self.max_bytes {
            return false;
        }
        while inner.entries.len() >= self.max_entries || inner.bytes + bytes > self.max_bytes {
            if !inner.evict_oldest() {
                break;
            }
        }
        inner.clock += 1;
        let used = inner.clock;
        for id in std::iter::once(session_id).chain(caller_id) {
            inner.holders.entry(id).or_default().push(key.clone());
        }
        inner.bytes += bytes;
        inner.entries.insert(
            key,
            Entry {
                cached,
                max_assistant,
                bytes,
                used,
            },
        );
        metrics::gauge!("redial_call_cache_entries").set(inner.entries.len() as f64);
        true
    }

    /// Forgets a call (its memory was written in a way not reported as a change, e.g. journaled
    /// while the database is away).
    pub(crate) fn forget(&self, platform: Platform, call_key: &str) {
        self.lock().remove(&(platform, call_key.to_owned()));
    }

    /// Entries held and their estimated bytes.
    #[cfg(test)]
    pub(crate) fn usage(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.entries.len(), inner.bytes)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update leaves the maps consistent before it can panic.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    fn remove(&mut self, key: &Key) {
        let Some(entry) = self.entries.remove(key) else {
            return;
        };
        self.bytes = self.bytes.saturating_sub(entry.bytes);
        let ids = std::iter::once(entry.cached.session.session_id)
            .chain(entry.cached.caller.as_ref().map(|c| c.caller_id));
        for id in ids {
            if let Some(keys) = self.holders.get_mut(&id) {
                keys.retain(|k| k != key);
                if keys.is_empty() {
                    self.holders.remove(&id);
                }
            }
        }
    }

    /// Drops the least recently used entry; `false` when there is none.
    fn evict_oldest(&mut self) -> bool {
        let oldest = self
            .entries
            .iter()
            .min_by_key(|(_, entry)| entry.used)
            .map(|(key, _)| key.clone());
        match oldest {
            Some(key) => {
                self.remove(&key);
                metrics::counter!("redial_call_cache_evictions_total").increment(1);
                true
            }
            None => false,
        }
    }
}

/// An estimate of what an entry holds, in bytes: the text it keeps plus fixed overhead.
fn size_of(cached: &Cached) -> usize {
    let session = &cached.session;
    let answers: usize = session
        .answers
        .iter()
        .map(|(field, answer)| field.len() + answer.value.len() + 64)
        .sum();
    let text = session.call_key.len()
        + session.assistant_id.len()
        + session.model.as_deref().map_or(0, str::len)
        + session.ended_reason.as_deref().map_or(0, str::len)
        + session.details.to_string().len();
    let caller = cached.caller.as_ref().map_or(0, |c| {
        c.phone.len()
            + [
                &c.name,
                &c.language,
                &c.last_summary,
                &c.last_sentiment,
                &c.last_action,
            ]
            .iter()
            .map(|v| v.as_deref().map_or(0, str::len))
            .sum::<usize>()
            + c.notes.iter().map(|n| n.len() + 24).sum::<usize>()
            + std::mem::size_of::<Caller>()
    });
    // A start held copies the session's text and answers (and the phone).
    let start = cached.start.as_ref().map_or(0, |start| {
        std::mem::size_of::<CallStart>()
            + answers
            + text
            + start.phone.as_deref().map_or(0, str::len)
    });
    std::mem::size_of::<Entry>() + answers + text + caller + start + 128
}

#[cfg(test)]
mod tests;
