//! The write-behind queue: finished turns of every call, written by one background task that
//! groups whatever is waiting into one transaction (group commit).
//!
//! One transaction per turn costs a commit (a WAL flush) per turn; at hundreds of turns a
//! second that is what limits a small Postgres, and the turns that wait for it pile up in
//! memory. The writer takes up to `database.write_batch_max` waiting turns at a time and stores
//! them with [`TurnStore::save_turns`], so the commit rate follows the database's speed rather
//! than the turn rate. Once a write arrives, the writer lingers up to `database.write_linger_ms` for
//! others to join it (a few milliseconds that no caller waits for: turns are written after their
//! reply), which keeps batches from shrinking to one turn each when the database is idle.
//!
//! The queue is bounded by `database.write_queue_capacity`, counting turns from their start: a
//! turn reserves its place ([`WriteQueue::reserve`]) before it runs, so when the database falls
//! behind, new turns wait for room instead of piling up unwritten work. Shutdown closes the queue:
//! turns holding a place still hand their write in and the writer drains everything before it
//! exits; a turn that finds the queue closed writes directly ([`write_direct`]).
//!
//! A call's first write joins the batch too: a first turn's write carries the call's start
//! ([`TurnWrite::start`]: its caller, the abandoned call it resumes, its session), stored with the
//! turns in the batch's one transaction ([`TurnStore::save_batch`]) instead of in one of its own
//! before them. Until then the call cache holds the first turn's context with its start, so
//! the call's next turn here reads nothing even when it arrives first; once stored, the writer
//! tells the cache what was stored ([`CallCache::started`]).
//!
//! [`TurnStore::save_turns`]: crate::storage::TurnStore::save_turns
//! [`TurnStore::save_batch`]: crate::storage::TurnStore::save_batch
//! [`TurnWrite::start`]: crate::storage::TurnWrite::start

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::mpsc::{self, OwnedPermit, Receiver, Sender};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::cache::CallCache;
use super::memory;
use crate::journal::{Journal, Op, WriteError, Written};

use crate::storage::{CallStart, Store, StoreError, TurnWrite, complete_audit};

/// First and longest wait before trying again a batch that neither the database nor the journal
/// could take.
const HOLD_RETRY_MIN: Duration = Duration::from_millis(100);
const HOLD_RETRY_MAX: Duration = Duration::from_secs(5);

/// The sending side of the write-behind queue (cheap to clone).
#[derive(Debug, Clone)]
pub(crate) struct WriteQueue {
    tx: Sender<TurnWrite>,
    /// Writes handed in and not yet stored (or given up on).
    pending: Arc<AtomicUsize>,
    /// The writer task.
    writer: TaskTracker,
    /// When the queue was last reported full.
    full_warning: Arc<Throttle>,
    /// Where writes go while the database is away.
    journal: Journal,
    /// Told what a batch's call starts stored.
    cache: CallCache,
}

/// Lets something happen at most once per [`Throttle::EVERY`].
#[derive(Debug)]
pub(crate) struct Throttle {
    started: std::time::Instant,
    /// Milliseconds since `started` of the last time, plus one (0: never).
    last: AtomicU64,
}

impl Throttle {
    const EVERY: Duration = Duration::from_secs(10);

    pub(crate) fn new() -> Self {
        Self {
            started: std::time::Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    /// Whether it may happen now (and, if so, records that it did).
    pub(crate) fn elapsed_enough(&self) -> bool {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX) + 1;
        let last = self.last.load(Ordering::Relaxed);
        let every = u64::try_from(Self::EVERY.as_millis()).unwrap_or(u64::MAX);
        (last == 0 || now.saturating_sub(last) >= every)
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// A reserved place in the queue for one write.
#[derive(Debug)]
pub(crate) struct Slot {
    permit: OwnedPermit<TurnWrite>,
    pending: Arc<AtomicUsize>,
}

impl Slot {
    /// Hands the write to the writer; never waits.
    pub(crate) fn write(self, write: TurnWrite) {
        self.pending.fetch_add(1, Ordering::SeqCst);
        self.permit.send(write);
    }
}

impl WriteQueue {
    /// Starts the writer; it drains the queue and exits once `shutdown` is cancelled and every
    /// reserved place has been used or released.
    pub(crate) fn spawn(
        store: Arc<dyn Store>,
        journal: Journal,
        cache: CallCache,
        shutdown: CancellationToken,
        capacity: usize,
        batch_max: usize,
        linger: Duration,
    ) -> Self {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let pending = Arc::new(AtomicUsize::new(0));
        let writer = TaskTracker::new();
        writer.spawn(run(
            store,
            journal.clone(),
            cache.clone(),
            rx,
            shutdown,
            batch_max.max(1),
            linger,
            Arc::clone(&pending),
        ));
        writer.close();
        Self {
            tx,
            pending,
            writer,
            full_warning: Arc::new(Throttle::new()),
            journal,
            cache,
        }
    }

    /// A place for one write, waiting while the queue is full; `None` once it is closed.
    pub(crate) async fn reserve(&self) -> Option<Slot> {
        let permit = match self.tx.clone().try_reserve_owned() {
            Ok(permit) => permit,
            Err(mpsc::error::TrySendError::Closed(_)) => return None,
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!("redial_write_queue_full_total").increment(1);
                // Under sustained overload every new turn gets here: say so once a while.
                if self.full_warning.elapsed_enough() {
                    tracing::warn!(
                        "the write queue is full; new turns wait for the database to catch up \
                         (see redial_write_queue_full_total)"
                    );
                }
                self.tx.clone().reserve_owned().await.ok()?
            }
        };
        Some(Slot {
            permit,
            pending: Arc::clone(&self.pending),
        })
    }

    /// Queues a write, waiting for room; once the queue is closed, writes it directly.
    pub(crate) async fn submit(&self, store: &dyn Store, write: TurnWrite) {
        self.pending.fetch_add(1, Ordering::SeqCst);
        if let Err(mpsc::error::SendError(write)) = self.tx.send(write).await {
            let batch = std::slice::from_ref(&write);
            write_direct(store, &self.journal, &self.cache, batch).await;
            self.pending.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Writes handed to the writer and not yet stored.
    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    /// Resolves once the writer has drained the queue and stopped (after shutdown).
    pub(crate) async fn stopped(&self) {
        self.writer.wait().await;
    }
}

/// The writer: takes what is waiting, waits up to `linger` for more (up to `batch_max` in all)
/// and stores the batch in one transaction.
#[expect(
    clippy::too_many_arguments,
    reason = "the writer task's parts, each handed over once at spawn"
)]
async fn run(
    store: Arc<dyn Store>,
    journal: Journal,
    cache: CallCache,
    mut rx: Receiver<TurnWrite>,
    shutdown: CancellationToken,
    batch_max: usize,
    linger: Duration,
    pending: Arc<AtomicUsize>,
) {
    let mut batch = Vec::with_capacity(batch_max);
    let mut closed = false;
    loop {
        let received = tokio::select! {
            received = rx.recv_many(&mut batch, batch_max) => received,
            () = shutdown.cancelled(), if !closed => {
                // Reserved places may still be used; recv_many returns 0 once they are.
                rx.close();
                closed = true;
                continue;
            }
        };
        if received == 0 {
            break;
        }
        if !linger.is_zero() && batch.len() < batch_max {
            // Group commit: give other calls' turns a moment to join this transaction.
            let deadline = tokio::time::sleep(linger);
            tokio::pin!(deadline);
            while batch.len() < batch_max {
                let room = batch_max - batch.len();
                tokio::select! {
                    more = rx.recv_many(&mut batch, room) => if more == 0 { break },
                    () = &mut deadline => break,
                }
            }
        }
        let received = batch.len();
        metrics::histogram!("redial_write_batch_size").record(received as f64);
        metrics::gauge!("redial_write_queue_depth").set(rx.len() as f64);
        write_direct(&*store, &journal, &cache, &batch).await;
        pending.fetch_sub(received, Ordering::SeqCst);
        batch.clear();
    }
}

/// Stores `batch` in one transaction, or journals it while the database is away
/// ([`Journal::write`]). When the database rejects the batch, each write is tried on its own, so
/// one write it cannot take (bad data) does not take the others down; what it rejects is logged
/// and counted in `redial_persist_failures_total`. When neither the database nor the journal can
/// take the batch (the journal disabled or its disk failing too), it is held and tried again
/// with backoff: a write is never dropped because the database is away.
pub(crate) async fn write_direct(
    store: &dyn Store,
    journal: &Journal,
    cache: &CallCache,
    batch: &[TurnWrite],
) {
    let mut delay = HOLD_RETRY_MIN;
    loop {
        match store_batch(store, journal, cache, batch).await {
            Ok(()) => return,
            Err(e) => {
                tracing::error!(error = %e, writes = batch.len(), ?delay, "turns can be neither stored nor journaled; holding them and trying again");
                metrics::counter!("redial_write_holds_total").increment(1);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(HOLD_RETRY_MAX);
            }
        }
    }
}

/// One attempt at [`write_direct`]: `Err` only when the batch could not be taken at all.
async fn store_batch(
    store: &dyn Store,
    journal: &Journal,
    cache: &CallCache,
    batch: &[TurnWrite],
) -> Result<(), WriteError> {
    let writes = resolved(journal, batch);
    // Before the transaction: a notice from now on keeps what it reads out of the cache.
    let ticket = cache.ticket();
    let written = journal
        .write(store.save_batch(&writes), || journaled(&writes))
        .await;
    match written {
        Ok(Written::Stored(results)) => {
            for (write, saved) in batch.iter().zip(results) {
                if saved.inserted.is_none() {
                    lost(write, &StoreError::NotFound);
                }
                if let (Some(start), Some(started)) = (&write.start, &saved.started) {
                    memory::count_resumed(started);
                    cache.started(ticket, start.session.session_id, started);
                }
            }
            Ok(())
        }
        Ok(Written::Journaled) => {
            for start in writes.iter().filter_map(|w| w.start.as_ref()) {
                // As a journaled start_call: later turns of the call reuse its session id, and
                // the cache holds nothing of it (journaled writes are not reported as changes).
                let session = &start.session;
                let call_key = session.call_key.as_str();
                journal.note_journaled_start(session.platform, call_key, session.session_id);
                cache.forget(session.platform, call_key);
            }
            Ok(())
        }
        Err(WriteError::Rejected(e)) if batch.len() > 1 => {
            tracing::warn!(error = %e, writes = batch.len(), "a batch of turns failed; storing them one by one");
            for write in batch {
                let one = std::slice::from_ref(write);
                Box::pin(store_batch(store, journal, cache, one)).await?;
            }
            Ok(())
        }
        Err(WriteError::Rejected(e)) => {
            let Some(write) = batch.first() else {
                return Ok(());
            };
            match &write.start {
                // The start and the turns are tried apart, so only what is rejected is lost.
                Some(start) => store_apart(store, journal, cache, write, start).await,
                None => {
                    lost(write, &e);
                    Ok(())
                }
            }
        }
        Err(e @ WriteError::Unavailable { .. }) => Err(e),
    }
}

/// The batch with its session ids mapped onto stored ones, when a journaled call start was
/// replayed onto a session the call already had.
fn resolved<'a>(journal: &Journal, batch: &'a [TurnWrite]) -> Cow<'a, [TurnWrite]> {
    let remapped = |w: &TurnWrite| journal.resolve(w.session_id) != w.session_id;
    if !batch.iter().any(remapped) {
        return Cow::Borrowed(batch);
    }
    let writes = batch.iter().cloned();
    Cow::Owned(writes.map(|write| journal.resolve_write(write)).collect())
}

/// A call's first write that the database rejected whole: its start alone (as
/// [`SessionStore::start_call`]), then its turns into the stored session, each lost alone if
/// rejected. The call's cache entry is dropped (its next turn reads the database).
///
/// [`SessionStore::start_call`]: crate::storage::SessionStore::start_call
async fn store_apart(
    store: &dyn Store,
    journal: &Journal,
    cache: &CallCache,
    write: &TurnWrite,
    start: &CallStart,
) -> Result<(), WriteError> {
    let session = &start.session;
    cache.forget(session.platform, &session.call_key);
    let written = journal
        .write(store.start_call(start), || {
            vec![Op::StartCall(start.clone())]
        })
        .await;
    let mut rest = write.clone();
    rest.start = None;
    match written {
        Ok(Written::Stored(started)) => {
            memory::count_resumed(&started);
            rest.session_id = started.session.session_id;
            for entry in &mut rest.audit {
                entry.session_id = Some(started.session.session_id);
                complete_audit(entry, &started);
            }
        }
        Ok(Written::Journaled) => {
            let call_key = session.call_key.as_str();
            journal.note_journaled_start(session.platform, call_key, session.session_id);
        }
        Err(WriteError::Rejected(e)) => {
            lost(write, &e);
            return Ok(());
        }
        Err(e @ WriteError::Unavailable { .. }) => return Err(e),
    }
    Box::pin(store_batch(
        store,
        journal,
        cache,
        std::slice::from_ref(&rest),
    ))
    .await
}

/// The journal records of a batch: each start as the call's first write, before its turns.
fn journaled(writes: &[TurnWrite]) -> Vec<Op> {
    let mut ops = Vec::with_capacity(writes.len());
    for write in writes {
        let mut write = write.clone();
        if let Some(start) = write.start.take() {
            ops.push(Op::StartCall(start));
        }
        ops.push(Op::Turns(write));
    }
    ops
}

fn lost(write: &TurnWrite, error: &StoreError) {
    tracing::error!(
        error = %error,
        session_id = %write.session_id,
        turns = write.turns.len(),
        audit_entries = write.audit.len(),
        "storing a turn failed; it is not stored"
    );
    metrics::counter!("redial_persist_failures_total").increment(1);
}

#[cfg(test)]
mod tests;
