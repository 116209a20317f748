//! The audit table: [`AuditStore`].

use async_trait::async_trait;

use super::{NewAudit, StoreResult};

/// Who read or changed what about a caller, append-only.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends audit entries.
    async fn append_audit(&self, entries: &[NewAudit]) -> StoreResult<()>;
}
