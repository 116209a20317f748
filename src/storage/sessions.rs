//! The call sessions table: [`SessionStore`].

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{AnswerOutcome, CallSession, CallStart, Caller, CloseSession, Platform};
use super::{StartedCall, StoreResult};

/// One record per call, keyed by the platform's call.
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// A call's first write, in one transaction:
    /// - upserts the caller with `phone` (when given; as [`CallerStore::upsert_caller`]) and
    ///   sets it on the new session;
    /// - closes `close_previous` (as [`SessionStore::close_session`]; one that no longer exists
    ///   is skipped);
    /// - creates the session for `(platform, call_key)` unless it exists. On creation with a
    ///   caller, snapshots the caller's previous `call_count` and `last_call_at` into the
    ///   session (`prior_calls`, `prior_call_at`) and then counts this call on the caller
    ///   (`call_count + 1`, `last_call_at = started_at`). A session already stored for the
    ///   platform's call is kept and returned, with `created: false`.
    ///
    /// [`CallerStore::upsert_caller`]: super::CallerStore::upsert_caller
    async fn start_call(&self, start: &CallStart) -> StoreResult<StartedCall>;

    /// The session with this id.
    async fn get_session(&self, session_id: Uuid) -> StoreResult<Option<CallSession>>;

    /// The session of a platform's call, with its caller, in one round trip (the per-turn read).
    async fn load_call(
        &self,
        platform: Platform,
        call_key: &str,
    ) -> StoreResult<Option<(CallSession, Option<Caller>)>>;

    /// Names the caller of a session stored without one (a caller learnt after the call, e.g.
    /// from a post-call webhook), in one transaction: upserts the caller with `phone` (as
    /// [`CallerStore::upsert_caller`]), sets it on the session with the caller's counts
    /// snapshotted, and counts the call on the caller (as [`SessionStore::start_call`] does). A
    /// session that already has a caller is returned unchanged (idempotent). An unknown session
    /// is [`StoreError::NotFound`].
    ///
    /// [`CallerStore::upsert_caller`]: super::CallerStore::upsert_caller
    /// [`StoreError::NotFound`]: super::StoreError::NotFound
    async fn attach_caller(
        &self,
        session_id: Uuid,
        phone: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<CallSession>;

    /// The newest session of this caller with this assistant, started at or after
    /// `started_since`, that can be resumed: status `ended` or `dropped`, or `active` with
    /// `last_activity_at` before `stale_before` (no longer live; see `memory.live_window_secs`),
    /// and not already resumed by another session (a
    /// chain of attempts resumes from its newest link). `exclude` (the asking call) is never
    /// returned.
    async fn find_resumable(
        &self,
        caller_id: Uuid,
        assistant_id: &str,
        started_since: DateTime<Utc>,
        stale_before: DateTime<Utc>,
        exclude: Option<Uuid>,
    ) -> StoreResult<Option<CallSession>>;

    /// Confirms `field = value` on the session, atomically with respect to concurrent writers
    /// (version bump). When every name in `required` is then answered, the status becomes
    /// `completed`. Re-recording the same value changes nothing and reports `changed: false`.
    async fn record_answer(
        &self,
        session_id: Uuid,
        field: &str,
        value: &str,
        required: &[String],
        now: DateTime<Utc>,
    ) -> StoreResult<AnswerOutcome>;

    /// Closes a session from a call-ended signal: sets `ended_at`, the ended reason and merges
    /// `details` (platform data: cost, transcript, recordings…) into the stored details. A
    /// `completed` session keeps that status; any other becomes `status`. Closing twice keeps the
    /// first `ended_at`.
    async fn close_session(
        &self,
        session_id: Uuid,
        close: &CloseSession,
    ) -> StoreResult<CallSession>;
}
