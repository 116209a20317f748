//! The operator's queries: listing calls, a call's webhooks and resumption links, a caller's
//! access log, erasure, and the retention sweeps ([`AdminStore`], a supertrait of
//! [`super::Store`]).
//!
//! None of these is on a caller's path: they serve the admin API, the `redial calls` /
//! `redial callers` commands and the retention sweeper. Deletions that may touch many rows run
//! in batches of at most `limit` rows, each its own short transaction, so a sweep never holds
//! locks for long.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{AuditEntry, CallSession, Caller, NewAudit, Platform, SessionStatus, StoreResult};

/// Which calls [`AdminStore::list_calls`] returns: every given filter must match.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallFilter {
    /// The caller.
    pub caller_id: Option<Uuid>,
    /// The assistant id.
    pub assistant_id: Option<String>,
    /// The platform.
    pub platform: Option<Platform>,
    /// The status.
    pub status: Option<SessionStatus>,
    /// Started at or after.
    pub since: Option<DateTime<Utc>>,
    /// Started before.
    pub until: Option<DateTime<Utc>>,
    /// Resume after this position (exclusive): the last call of the previous page.
    pub after: Option<CallCursor>,
    /// Most calls returned.
    pub limit: u32,
}

/// A position in the newest-first order of calls: `(started_at, session_id)`, both descending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallCursor {
    /// The call's start.
    pub started_at: DateTime<Utc>,
    /// The call's session id (orders calls that started in the same millisecond).
    pub session_id: Uuid,
}

/// A stored webhook event, as received.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredWebhookEvent {
    /// Primary key.
    pub event_id: Uuid,
    /// The sending platform.
    pub platform: Platform,
    /// The platform's event type.
    pub event_type: String,
    /// The call it is about.
    pub call_key: Option<String>,
    /// The raw body (sanitised as stored).
    pub payload: String,
    /// When it arrived.
    pub received_at: DateTime<Utc>,
}

/// What [`AdminStore::erase_caller`] deletes and writes.
#[derive(Debug, Clone, PartialEq)]
pub struct Erasure {
    /// The caller to erase (their sessions, turns, answers and analyses go with them).
    pub caller_id: Uuid,
    /// Every text form of the caller's number or id that a raw webhook body or a job payload
    /// may hold: rows containing any of them are deleted too (whichever call they name).
    pub needles: Vec<String>,
    /// The audit entry that stays: who erased, when, and a keyed hash of the number in its
    /// details, never the number.
    pub tombstone: NewAudit,
}

/// How many rows an erasure deleted or scrubbed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ErasureCounts {
    /// Caller rows deleted (0 when already erased).
    pub callers: u64,
    /// Call sessions (with their answers and platform details).
    pub sessions: u64,
    /// Turns.
    pub turns: u64,
    /// Analyses.
    pub analyses: u64,
    /// Raw webhook events.
    pub webhook_events: u64,
    /// Jobs (their payloads copy webhook bodies).
    pub jobs: u64,
    /// Audit entries whose details were emptied (who, what, why and when stay).
    pub audit_scrubbed: u64,
}

/// The operator's queries. See the module documentation.
#[async_trait]
pub trait AdminStore: Send + Sync {
    /// Calls matching `filter`, newest first (`started_at`, then `session_id`, descending).
    async fn list_calls(&self, filter: &CallFilter) -> StoreResult<Vec<CallSession>>;

    /// The caller with this id.
    async fn caller_by_id(&self, caller_id: Uuid) -> StoreResult<Option<Caller>>;

    /// The sessions that resume `session_id` (normally at most one), oldest first.
    async fn resumed_by(&self, session_id: Uuid) -> StoreResult<Vec<CallSession>>;

    /// The webhook events stored for a platform's call, oldest first.
    async fn list_webhook_events(
        &self,
        platform: Platform,
        call_key: &str,
    ) -> StoreResult<Vec<StoredWebhookEvent>>;

    /// The audit entries of any of `caller_ids` (or of any of their sessions) created in
    /// `[since, until)`, oldest first (by time, then id), after audit id `after`, at most
    /// `limit`.
    async fn list_access(
        &self,
        caller_ids: &[Uuid],
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        after: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<AuditEntry>>;

    /// The callers erased under this keyed hash of their number (from erasure tombstones,
    /// whose details hold `subject_hash`), oldest first.
    async fn erased_callers(&self, subject_hash: &str) -> StoreResult<Vec<Uuid>>;

    /// Erases a caller in one transaction: deletes the caller (and with them their sessions,
    /// turns, answers and analyses), the webhook events of their calls and any whose body holds
    /// one of `needles`, the jobs of those events and sessions and any whose payload holds one
    /// of `needles`; empties the details of the audit entries of the caller and their sessions
    /// (but earlier tombstones, which hold only the keyed hash);
    /// appends the tombstone. Sessions of other callers that resumed one of theirs lose that
    /// link. Idempotent: erasing an erased caller deletes nothing more of theirs (but still any row
    /// holding a needle) and appends the tombstone again.
    async fn erase_caller(&self, erasure: &Erasure) -> StoreResult<ErasureCounts>;

    /// Deletes up to `limit` turns said before `before`; returns how many.
    async fn delete_turns_before(&self, before: DateTime<Utc>, limit: u32) -> StoreResult<u64>;

    /// Removes the platform's transcript, messages and recording URLs from the details of up
    /// to `limit` calls that ended (or were last active) before `before`; returns how many.
    async fn scrub_transcripts_before(&self, before: DateTime<Utc>, limit: u32)
    -> StoreResult<u64>;

    /// Deletes up to `limit` webhook events received before `before`; returns how many.
    async fn delete_webhook_events_before(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<u64>;

    /// Deletes up to `limit` finished jobs (`done` or `failed`) last changed before `before`;
    /// returns how many. Queued, running and waiting jobs still need their payload and stay.
    async fn delete_finished_jobs_before(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<u64>;

    /// Up to `limit` callers last seen before `before`, least recently seen first.
    async fn inactive_callers(&self, before: DateTime<Utc>, limit: u32)
    -> StoreResult<Vec<Caller>>;
}
