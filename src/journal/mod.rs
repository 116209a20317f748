//! The outage journal: writes the database cannot take right now are appended to a local file,
//! fsynced, and replayed in order once it answers again — also after a restart.
//!
//! Every durable write of the engine (a call's first write, finished turns, answers, profile
//! changes, audit entries) and every accepted webhook goes through [`Journal::write`]:
//! - while nothing is journaled, the write goes to the database, bounded by
//!   `database.write_timeout_ms`; when it fails because the database is away (a transient error,
//!   see [`StoreError::is_transient`](crate::storage::StoreError::is_transient)) or does not
//!   answer in time, it is journaled instead;
//! - while anything is journaled, every write is journaled too, behind it, so the database
//!   receives all writes in the order they were accepted (a newer answer is never overwritten by
//!   a replayed older one).
//!
//! A background replayer ([`Journal::spawn_replayer`]) applies journaled records in order, in
//! batches, and saves its cursor after each; records are idempotent (turn keys, the call key,
//! webhook dedupe keys, audit entry keys), so a record applied again after a crash changes
//! nothing. A record the database rejects for good (bad data, not an outage) goes to
//! `rejected.log` in the journal directory and replay moves on. Once everything is applied the
//! log is emptied and writes go straight to the database again.
//!
//! A call whose first write was journaled got a session id that the database may not know: when
//! the call already had a session (it started before the outage), replaying its start maps the
//! journaled id onto the stored one, and later writes are mapped the same way ([`Journal::resolve`]).

mod erase;
mod file;
mod op;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

pub use erase::JournalErasure;
pub use op::{AnswerWrite, Op, ProfileWrite, WebhookWrite};

use crate::config::DatabaseSettings;
use crate::platforms::Platform;
use crate::storage::{Store, StoreError, TurnWrite};
use file::Log;

/// The outage journal (cheap to clone). [`Journal::disabled`] keeps no file: writes the
/// database cannot take then fail as they did without it.
#[derive(Debug, Clone)]
pub struct Journal(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    /// The files; `None` when the journal is disabled.
    log: Option<Arc<Mutex<Log>>>,
    /// Records appended and not yet applied.
    backlog: AtomicU64,
    /// The last database write failed because the database is away (cleared by a success).
    failing: AtomicBool,
    /// Wakes the replayer after an append.
    appended: Notify,
    write_timeout: Duration,
    ready_max: u64,
    /// Journaled session ids → stored ones (see the module documentation), kept while the
    /// process runs (bounded).
    remap: Mutex<Bounded<Uuid, Uuid>>,
    /// Calls whose first write this process journaled → the session id it journaled, so later
    /// turns of the call reuse it instead of journaling another start.
    journaled_starts: Mutex<Bounded<CallKey, Uuid>>,
    /// Calls whose journaled start was replayed → their stored session.
    replayed_starts: Mutex<Bounded<CallKey, Uuid>>,
    /// Stored sessions seen by replay → their caller.
    session_callers: Mutex<Bounded<Uuid, Option<Uuid>>>,
    /// The replayer task.
    replayer: TaskTracker,
}

/// A map that forgets its oldest entries past [`Bounded::CAPACITY`].
#[derive(Debug)]
struct Bounded<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<K>,
}

impl<K: std::hash::Hash + Eq + Clone, V: Copy> Bounded<K, V> {
    const CAPACITY: usize = 100_000;

    fn get(&self, key: &K) -> Option<V> {
        self.map.get(key).copied()
    }

    fn insert(&mut self, key: K, value: V) {
        if self.map.insert(key.clone(), value).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > Self::CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }
}

impl<K, V> Default for Bounded<K, V> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

/// A platform's call.
type CallKey = (Platform, String);

/// What [`Journal::write`] did with a write.
#[derive(Debug)]
pub enum Written<T> {
    /// The database took it; its answer.
    Stored(T),
    /// The database is away: it is in the journal, on disk, and will be replayed.
    Journaled,
}

/// Why a write could be neither stored nor journaled.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The database rejected it (not an outage: journaling would not help).
    #[error(transparent)]
    Rejected(StoreError),
    /// The database is away and the journal could not take it (disabled, or its disk failed).
    #[error(
        "the database is unavailable ({store}) and the journal could not take the write: {journal}"
    )]
    Unavailable {
        /// The database's failure.
        store: StoreError,
        /// The journal's.
        journal: String,
    },
}

impl From<WriteError> for StoreError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Rejected(e) | WriteError::Unavailable { store: e, .. } => e,
        }
    }
}

impl Journal {
    /// Opens the journal `settings.journal_dir` names (empty: disabled). Blocking: call it at
    /// start, before serving.
    pub fn open(settings: &DatabaseSettings) -> std::io::Result<Self> {
        if settings.journal_dir.is_empty() {
            return Ok(Self::new(None, settings));
        }
        let dir = Path::new(&settings.journal_dir);
        let (log, pending) = Log::open(dir)?;
        let journal = Self::new(Some(log), settings);
        journal.0.backlog.store(pending, Ordering::SeqCst);
        for (from, to) in journal
            .lock_log()
            .iter()
            .flat_map(|l| l.cursor().remap.clone())
        {
            journal.remember(from, to);
        }
        if pending > 0 {
            tracing::warn!(
                records = pending,
                dir = %dir.display(),
                "the outage journal holds writes not yet in the database; replaying them"
            );
        }
        metrics::gauge!("redial_journal_backlog").set(pending as f64);
        Ok(journal)
    }

    /// A journal that keeps nothing.
    pub fn disabled(settings: &DatabaseSettings) -> Self {
        Self::new(None, settings)
    }

    fn new(log: Option<Log>, settings: &DatabaseSettings) -> Self {
        let log = log.map(|log| Arc::new(Mutex::new(log)));
        Self(Arc::new(Shared {
            log,
            backlog: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            appended: Notify::new(),
            write_timeout: settings.write_timeout(),
            ready_max: settings.journal_ready_max,
            remap: Mutex::new(Bounded::default()),
            journaled_starts: Mutex::new(Bounded::default()),
            replayed_starts: Mutex::new(Bounded::default()),
            session_callers: Mutex::new(Bounded::default()),
            replayer: TaskTracker::new(),
        }))
    }

    /// Journaled writes not yet applied to the database.
    pub fn backlog(&self) -> u64 {
        self.0.backlog.load(Ordering::SeqCst)
    }

    /// Whether the last database write failed because the database is away.
    pub fn failing(&self) -> bool {
        self.0.failing.load(Ordering::SeqCst)
    }

    /// `Err(reason)` while writes fail or the backlog is past `database.journal_ready_max`.
    pub fn readiness(&self) -> Result<(), String> {
        if self.failing() {
            return Err(format!(
                "database writes are failing; {} writes wait in the journal",
                self.backlog()
            ));
        }
        let backlog = self.backlog();
        if backlog > self.0.ready_max {
            return Err(format!(
                "{backlog} journaled writes wait for the database (more than \
                 database.journal_ready_max = {})",
                self.0.ready_max
            ));
        }
        Ok(())
    }

    /// The id the database holds for a session id that may have been journaled.
    pub fn resolve(&self, session_id: Uuid) -> Uuid {
        locked(&self.0.remap).get(&session_id).unwrap_or(session_id)
    }

    /// The write with its session ids (its own and its audit entries') mapped onto stored ones.
    pub fn resolve_write(&self, mut write: TurnWrite) -> TurnWrite {
        write.session_id = self.resolve(write.session_id);
        for entry in &mut write.audit {
            entry.session_id = entry.session_id.map(|id| self.resolve(id));
        }
        write
    }

    fn remember(&self, from: Uuid, to: Uuid) {
        locked(&self.0.remap).insert(from, to);
    }

    /// The session id under which this process journaled the call's first write, if it did.
    pub fn journaled_start(&self, platform: Platform, call_key: &str) -> Option<Uuid> {
        locked(&self.0.journaled_starts).get(&(platform, call_key.to_owned()))
    }

    /// Records that the call's first write was journaled under `session_id`.
    pub fn note_journaled_start(&self, platform: Platform, call_key: &str, session_id: Uuid) {
        locked(&self.0.journaled_starts).insert((platform, call_key.to_owned()), session_id);
    }

    fn session_caller(&self, session_id: Uuid) -> Option<Option<Uuid>> {
        locked(&self.0.session_callers).get(&session_id)
    }

    fn note_session_caller(&self, session_id: Uuid, caller: Option<Uuid>) {
        locked(&self.0.session_callers).insert(session_id, caller);
    }

    fn replayed_start(&self, call: &CallKey) -> Option<Uuid> {
        locked(&self.0.replayed_starts).get(call)
    }

    fn note_replayed_start(&self, call: CallKey, stored: Uuid) {
        locked(&self.0.replayed_starts).insert(call, stored);
    }

    fn lock_log(&self) -> Option<MutexGuard<'_, Log>> {
        self.0
            .log
            .as_ref()
            .map(|log| log.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Stores a write: `store` against the database (within `database.write_timeout_ms`)
    /// unless writes are being journaled; on an outage, the `journal` records instead. The
    /// database rejecting the write for a reason other than an outage is returned as is.
    pub async fn write<T, F>(
        &self,
        store: F,
        journal: impl FnOnce() -> Vec<Op>,
    ) -> Result<Written<T>, WriteError>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        self.write_for(false, store, journal).await
    }

    /// As [`Journal::write`]; when `offline` (the call's state could not be read this turn: the
    /// database looked away) and the journal is enabled, journaled without trying the database
    /// first, so the caller does not wait for a write budget to run out.
    pub async fn write_for<T, F>(
        &self,
        offline: bool,
        store: F,
        journal: impl FnOnce() -> Vec<Op>,
    ) -> Result<Written<T>, WriteError>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        let skip = self.backlog() > 0 || (offline && self.0.log.is_some());
        let error = if skip {
            None
        } else {
            match self.attempt(store).await {
                Ok(value) => return Ok(Written::Stored(value)),
                Err(e) if e.is_transient() => Some(e),
                Err(e) => return Err(WriteError::Rejected(e)),
            }
        };
        match self.append(&journal()).await {
            Ok(()) => Ok(Written::Journaled),
            Err(journal) => Err(WriteError::Unavailable {
                store: error.unwrap_or(StoreError::Timeout(Duration::ZERO)),
                journal: journal.to_string(),
            }),
        }
    }

    /// Runs one database write within the write budget, keeping the failing flag up to date.
    pub async fn attempt<T>(
        &self,
        store: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let result = match tokio::time::timeout(self.0.write_timeout, store).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout(self.0.write_timeout)),
        };
        match &result {
            Ok(_) => self.0.failing.store(false, Ordering::SeqCst),
            Err(e) if e.is_transient() => {
                if !self.0.failing.swap(true, Ordering::SeqCst) {
                    tracing::error!(error = %e, "database writes are failing; journaling them");
                }
                metrics::counter!("redial_store_write_failures_total").increment(1);
            }
            Err(_) => {}
        }
        result
    }

    /// Appends records and waits until they are on disk.
    pub async fn append(&self, ops: &[Op]) -> std::io::Result<()> {
        let Some(log) = self.0.log.clone() else {
            return Err(std::io::Error::other("the outage journal is disabled"));
        };
        if ops.is_empty() {
            return Ok(());
        }
        let mut bytes = Vec::new();
        for op in ops {
            serde_json::to_writer(&mut bytes, op)?;
            bytes.push(b'\n');
        }
        let count = ops.len() as u64;
        // Counted before the append lands, so no write can slip past a journal about to hold a
        // record; taken back when the append fails.
        self.0.backlog.fetch_add(count, Ordering::SeqCst);
        let appended = tokio::task::spawn_blocking(move || {
            log.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .append(&bytes)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match &appended {
            Ok(()) => {
                metrics::counter!("redial_journal_appended_total").increment(count);
                self.0.appended.notify_one();
            }
            Err(e) => {
                self.0.backlog.fetch_sub(count, Ordering::SeqCst);
                tracing::error!(error = %e, "appending to the outage journal failed");
                metrics::counter!("redial_journal_append_failures_total").increment(1);
            }
        }
        metrics::gauge!("redial_journal_backlog").set(self.backlog() as f64);
        appended
    }

    /// Releases the journal directory at shutdown, once writes are drained and the replayer
    /// (stopped by the shutdown token) has finished its batch: another process (a restart) may
    /// then open it. Later appends fail.
    pub async fn close(&self) {
        self.0.replayer.close();
        self.0.replayer.wait().await;
        if let Some(mut log) = self.lock_log() {
            log.close();
        }
    }

    /// Starts the replayer on `tracker`; it stops when `shutdown` is cancelled (what is left
    /// is replayed after the next start).
    pub fn spawn_replayer(
        &self,
        store: Arc<dyn Store>,
        shutdown: CancellationToken,
        batch_max: usize,
    ) {
        if self.0.log.is_none() {
            return;
        }
        let journal = self.clone();
        let replay = async move { op::replay(journal, store, shutdown, batch_max).await };
        self.0.replayer.spawn(replay);
    }
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
