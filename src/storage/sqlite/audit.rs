//! The audit log on SQLite.

use std::borrow::Borrow;

use async_trait::async_trait;
use sqlx::types::Json;
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use super::{SqliteStore, id, ms};
use crate::storage::batch::ROWS_PER_STATEMENT;
use crate::storage::text::{json, text};
use crate::storage::{AuditStore, NewAudit, StoreResult};

#[async_trait]
impl AuditStore for SqliteStore {
    #[tracing::instrument(
        name = "store.append_audit",
        skip_all,
        fields(backend = "sqlite", entries = entries.len())
    )]
    async fn append_audit(&self, entries: &[NewAudit]) -> StoreResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut conn = self.writer.acquire().await?;
        insert_audit(&mut conn, entries).await
    }
}

/// Inserts audit entries (none is a no-op), in statements of at most
/// [`ROWS_PER_STATEMENT`] rows.
pub(super) async fn insert_audit<E: Borrow<NewAudit>>(
    conn: &mut SqliteConnection,
    entries: &[E],
) -> StoreResult<()> {
    for chunk in entries.chunks(ROWS_PER_STATEMENT) {
        let mut insert = QueryBuilder::<Sqlite>::new(
            "insert into audit_log (entry_key, caller_id, session_id, actor, action, reason, \
             details, created_at) ",
        );
        insert.push_values(chunk, |mut row, entry| {
            let entry = entry.borrow();
            row.push_bind(entry.entry_key.map(id))
                .push_bind(entry.caller_id.map(id))
                .push_bind(entry.session_id.map(id))
                .push_bind(text(&entry.actor.to_string()).into_owned())
                .push_bind(text(&entry.action.to_string()).into_owned())
                .push_bind(text(&entry.reason))
                .push_bind(Json(json(&entry.details)))
                .push_bind(ms(entry.created_at));
        });
        insert.push(" on conflict (entry_key) do nothing");
        insert.build().execute(&mut *conn).await?;
    }
    Ok(())
}
