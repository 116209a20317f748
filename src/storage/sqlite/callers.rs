//! Callers on SQLite.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::SqliteConnection;
use sqlx::types::Json;
use uuid::Uuid;

use super::{CallerRow, SqliteStore, begin_write, id, ms};
use crate::storage::rows::caller_columns;
use crate::storage::text::{opt_text, strings, text};
use crate::storage::{Caller, CallerPatch, CallerStore, StoreError, StoreResult, rules};

#[async_trait]
impl CallerStore for SqliteStore {
    #[tracing::instrument(
        name = "store.upsert_caller",
        skip_all,
        fields(backend = "sqlite", caller_id = tracing::field::Empty)
    )]
    async fn upsert_caller(&self, phone: &str, now: DateTime<Utc>) -> StoreResult<Caller> {
        let mut conn = self.writer.acquire().await?;
        let caller = upsert_caller_in(&mut conn, phone, now).await?;
        tracing::Span::current().record("caller_id", tracing::field::display(caller.caller_id));
        Ok(caller)
    }

    #[tracing::instrument(
        name = "store.get_caller_by_phone",
        skip_all,
        fields(backend = "sqlite")
    )]
    async fn get_caller_by_phone(&self, phone: &str) -> StoreResult<Option<Caller>> {
        let row: Option<CallerRow> = sqlx::query_as(concat!(
            "select ",
            caller_columns!(),
            " from caller where phone = $1"
        ))
        .bind(text(phone))
        .fetch_optional(&self.reader)
        .await?;
        row.map(Caller::try_from).transpose()
    }

    #[tracing::instrument(
        name = "store.update_caller",
        skip_all,
        fields(backend = "sqlite", %caller_id)
    )]
    async fn update_caller(
        &self,
        caller_id: Uuid,
        patch: &CallerPatch,
        now: DateTime<Utc>,
    ) -> StoreResult<Caller> {
        let mut tx = begin_write(&self.writer).await?;
        let row: Option<CallerRow> = sqlx::query_as(concat!(
            "select ",
            caller_columns!(),
            " from caller where caller_id = $1"
        ))
        .bind(id(caller_id))
        .fetch_optional(&mut *tx)
        .await?;
        let mut caller = Caller::try_from(row.ok_or(StoreError::NotFound)?)?;
        let changed = rules::apply_caller_patch(&mut caller, patch, now);
        if changed {
            sqlx::query(
                "update caller set name = $2, language = $3, notes = $4, updated_at = $5 \
                 where caller_id = $1",
            )
            .bind(id(caller_id))
            .bind(opt_text(caller.name.as_deref()))
            .bind(opt_text(caller.language.as_deref()))
            .bind(Json(strings(&caller.notes)))
            .bind(ms(caller.updated_at))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        if changed {
            self.changes.publish([caller_id]);
        }
        Ok(caller)
    }
}

/// [`CallerStore::upsert_caller`] on a connection (inside the caller's transaction, if any).
pub(super) async fn upsert_caller_in(
    conn: &mut SqliteConnection,
    phone: &str,
    now: DateTime<Utc>,
) -> StoreResult<Caller> {
    let row: CallerRow = sqlx::query_as(concat!(
        "insert into caller (caller_id, phone, first_seen_at, last_seen_at, updated_at) \
         values ($1, $2, $3, $3, $3) \
         on conflict (phone) do update \
         set last_seen_at = excluded.last_seen_at, updated_at = excluded.updated_at \
         returning ",
        caller_columns!()
    ))
    .bind(id(Uuid::now_v7()))
    .bind(text(phone))
    .bind(ms(now))
    .fetch_one(conn)
    .await?;
    Caller::try_from(row)
}
