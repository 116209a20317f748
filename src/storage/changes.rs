//! Change notices for callers and sessions: how an instance's call cache learns that what it
//! holds was changed by someone else.
//!
//! A store reports, to one [`ChangeSink`], the id of every caller and session changed in a way a
//! turn's memory shows (answers, status, attempt, the caller's profile and last-call analysis,
//! the session's caller), and of every one deleted. Activity-only updates (a stored turn moving
//! `last_activity_at`, `model` and `version`, a new call counted on its caller) are not reported:
//! nothing in a prompt reads them.
//!
//! - **Postgres** (several instances on one database): triggers `pg_notify` the id on channel
//!   [`CHANNEL`] in the writing transaction, so every instance — the writing one included — hears
//!   of every committed change, whoever made it. A listener connection per instance feeds the
//!   sink; when it drops, notices may have been missed, so the sink is told [`Change::Lost`]
//!   (forget everything) and [`Change::Watching`] once listening again.
//! - **SQLite** (one process owns the file): the store reports each change itself, after the
//!   commit and before the write returns, so the sink knows of it before anyone who waited on
//!   the write does. Every method that writes `caller` or `call_session` must call
//!   [`Changes::publish`] for what it changed.

use std::sync::{Arc, OnceLock};

use futures_util::future::BoxFuture;
use uuid::Uuid;

/// The Postgres notification channel the change triggers use.
pub const CHANNEL: &str = "redial_changes";

/// One change notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The caller or session with this id changed or was deleted.
    Row(Uuid),
    /// Notices may have been missed (the listener's connection dropped): nothing held is to be
    /// trusted, and nothing may be cached until [`Change::Watching`].
    Lost,
    /// Every change from now on will be reported.
    Watching,
}

/// Where a store reports changes.
pub type ChangeSink = Arc<dyn Fn(Change) + Send + Sync>;

/// How a store reports changes, returned by [`Store::watch_changes`](super::Store::watch_changes).
pub enum Watch {
    /// It cannot: nothing read from it may be cached.
    Unsupported,
    /// Synchronously, from its own writes (it is the only writer).
    Inline,
    /// From a task the caller runs until shutdown (a listener connection).
    Task(BoxFuture<'static, ()>),
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Unsupported => "Unsupported",
            Self::Inline => "Inline",
            Self::Task(_) => "Task",
        })
    }
}

/// A store's one sink, set once (by the engine at startup); publishing before it is set is a
/// no-op (nothing can have been cached yet).
#[derive(Clone, Default)]
pub struct Changes(Arc<OnceLock<ChangeSink>>);

impl std::fmt::Debug for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changes")
            .field("watched", &self.0.get().is_some())
            .finish()
    }
}

impl Changes {
    /// Sets the sink; `false` when one was set already (it is kept).
    pub fn set(&self, sink: ChangeSink) -> bool {
        self.0.set(sink).is_ok()
    }

    /// Reports that these rows changed.
    pub fn publish(&self, ids: impl IntoIterator<Item = Uuid>) {
        if let Some(sink) = self.0.get() {
            for id in ids {
                sink(Change::Row(id));
            }
        }
    }

    /// Reports a notice other than a row change.
    pub fn notify(&self, change: Change) {
        if let Some(sink) = self.0.get() {
            sink(change);
        }
    }
}
