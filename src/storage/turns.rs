//! The turns table: [`TurnStore`].

use async_trait::async_trait;
use uuid::Uuid;

use super::{ModelUsage, NewTurn, Saved, StoreError, StoreResult, Turn, TurnWrite};

/// A session's log of what was said, append-only.
#[async_trait]
pub trait TurnStore: Send + Sync {
    /// Appends turns to a session's log in order. A turn whose `idempotency_key` is already
    /// stored for the session is skipped. Returns how many were inserted; when any was, the
    /// session's `last_activity_at` moves to the newest of them (never backwards) and its
    /// version is bumped. An unknown session is [`StoreError::NotFound`]. (A batch of one for
    /// [`TurnStore::save_turns`], with no model and no audit.)
    async fn append_turns(&self, session_id: Uuid, turns: &[NewTurn]) -> StoreResult<u64> {
        let write = TurnWrite {
            session_id,
            turns: turns.to_vec(),
            model: None,
            audit: Vec::new(),
            usage: Vec::new(),
            start: None,
        };
        match self.save_turns(std::slice::from_ref(&write)).await?.first() {
            Some(Some(inserted)) => Ok(*inserted),
            _ => Err(StoreError::NotFound),
        }
    }

    /// Stores a batch of finished turns, of one session or many, in one transaction (group
    /// commit). Each item, all or nothing:
    /// - appends its `turns` in order, skipping those whose `idempotency_key` is already stored
    ///   for the session;
    /// - when a turn was inserted or `model` is given, touches the session once:
    ///   `last_activity_at` becomes the newest inserted turn's `created_at` unless it is
    ///   already later (never backwards; skipped turns do not move it), `model` is replaced
    ///   when given, and the version is bumped by one;
    /// - stores its `usage` rows, skipping those whose `usage_key` is already stored for the
    ///   session;
    /// - appends its `audit` entries (as [`AuditStore::append_audit`]). Audit entries have no
    ///   dedupe key: saving the same item again inserts no turn but appends its entries again
    ///   (a retried save records the access twice, which overstates rather than loses it).
    ///
    /// Items are applied in batch order, so two items of one session behave as two saves one
    /// after the other (the session's version is bumped once per item that touches it, the
    /// last given model wins, turns keep batch order).
    ///
    /// Returns, per item, how many of its turns were inserted, or `None` when its session does
    /// not exist (nothing of that item is stored, audit entries included; the other items are).
    /// Any other failure stores nothing of the batch. Postgres locks the batch's sessions in id
    /// order, so concurrent batches of several instances cannot deadlock one another.
    ///
    /// [`AuditStore::append_audit`]: super::AuditStore::append_audit
    async fn save_turns(&self, batch: &[TurnWrite]) -> StoreResult<Vec<Option<u64>>> {
        let saved = self.save_batch(batch).await?;
        Ok(saved.into_iter().map(|s| s.inserted).collect())
    }

    /// [`TurnStore::save_turns`] for a batch whose items may also start their call (a call's
    /// first turn: its caller and session are written with it, in the same transaction, not in
    /// one of their own).
    ///
    /// An item with a `start` first does what [`SessionStore::start_call`] does for it — upserts
    /// the caller, closes the abandoned call it resumes, creates the session unless the call has
    /// one, counts the call on its caller — and then is saved as above, into the call's stored
    /// session: when another request created the call's session first, that session is adopted,
    /// and every item of the batch written under the new session's id goes to it. Starts of one
    /// call in the batch are applied once. An item with a start records its audit entries against
    /// the started caller when they name none, and as a read, not a create, when the session
    /// was adopted.
    ///
    /// A start the database rejects fails the batch (the writer then saves its items one by
    /// one, so only that item is lost). Returns, per item, what was inserted and, for items with
    /// a start, what the start stored.
    ///
    /// [`SessionStore::start_call`]: super::SessionStore::start_call
    async fn save_batch(&self, batch: &[TurnWrite]) -> StoreResult<Vec<Saved>>;

    /// The session's turns, oldest first: by `created_at` (when each was said, so a turn
    /// written late — replayed from the outage journal, or persisted after a slower earlier
    /// one — still takes its place), then in the order they were stored.
    async fn list_turns(&self, session_id: Uuid) -> StoreResult<Vec<Turn>>;

    /// The call's token usage per model, summed over its turns, by model name. Empty for a call
    /// with no usage recorded (or an unknown session).
    async fn call_usage(&self, session_id: Uuid) -> StoreResult<Vec<ModelUsage>>;
}

/// A token count as the database stores it (`bigint`).
pub(crate) fn tokens(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// One row of a usage sum.
pub(crate) fn model_usage(
    (model, turns, prompt, completion, cached): (String, i64, i64, i64, i64),
) -> ModelUsage {
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    ModelUsage {
        model,
        turns: count(turns),
        prompt_tokens: count(prompt),
        completion_tokens: count(completion),
        cached_tokens: count(cached),
    }
}
