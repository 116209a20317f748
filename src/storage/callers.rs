//! The callers table: [`CallerStore`].

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Caller, CallerPatch, StoreResult};

/// Who calls: one record per E.164 number.
#[async_trait]
pub trait CallerStore: Send + Sync {
    /// Finds the caller with this E.164 number, creating it when new; `last_seen_at` becomes `now`.
    async fn upsert_caller(&self, phone: &str, now: DateTime<Utc>) -> StoreResult<Caller>;

    /// The caller with this E.164 number.
    async fn get_caller_by_phone(&self, phone: &str) -> StoreResult<Option<Caller>>;

    /// Applies a profile change. A note already present is not added twice (idempotent).
    async fn update_caller(
        &self,
        caller_id: Uuid,
        patch: &CallerPatch,
        now: DateTime<Utc>,
    ) -> StoreResult<Caller>;
}
