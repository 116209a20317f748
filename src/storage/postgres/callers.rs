//! Callers on Postgres.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use sqlx::types::Json;
use uuid::Uuid;

use super::{CallerRow, PostgresStore, opt_text, strings, text};
use crate::storage::rows::caller_columns;
use crate::storage::{Caller, CallerPatch, CallerStore, StoreError, StoreResult, rules};

#[async_trait]
impl CallerStore for PostgresStore {
    #[tracing::instrument(
        name = "store.upsert_caller",
        skip_all,
        fields(backend = "postgres", caller_id = tracing::field::Empty)
    )]
    async fn upsert_caller(&self, phone: &str, now: DateTime<Utc>) -> StoreResult<Caller> {
        let mut conn = self.pool.acquire().await?;
        let caller = upsert_caller_in(&mut conn, phone, now).await?;
        tracing::Span::current().record("caller_id", tracing::field::display(caller.caller_id));
        Ok(caller)
    }

    #[tracing::instrument(
        name = "store.get_caller_by_phone",
        skip_all,
        fields(backend = "postgres")
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
        fields(backend = "postgres", %caller_id)
    )]
    async fn update_caller(
        &self,
        caller_id: Uuid,
        patch: &CallerPatch,
        now: DateTime<Utc>,
    ) -> StoreResult<Caller> {
        let mut tx = self.pool.begin().await?;
        let row: Option<CallerRow> = sqlx::query_as(concat!(
            "select ",
            caller_columns!(),
            " from caller where caller_id = $1 for no key update"
        ))
        .bind(caller_id)
        .fetch_optional(&mut *tx)
        .await?;
        let mut caller = Caller::try_from(row.ok_or(StoreError::NotFound)?)?;
        if rules::apply_caller_patch(&mut caller, patch, now) {
            sqlx::query(
                "update caller set name = $2, language = $3, notes = $4, updated_at = $5 \
                 where caller_id = $1",
            )
            .bind(caller_id)
            .bind(opt_text(caller.name.as_deref()))
            .bind(opt_text(caller.language.as_deref()))
            .bind(Json(strings(&caller.notes)))
            .bind(caller.updated_at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(caller)
    }
}

/// [`CallerStore::upsert_caller`] on a connection (inside the caller's transaction, if any).
pub(super) async fn upsert_caller_in(
    conn: &mut PgConnection,
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
    .bind(Uuid::now_v7())
    .bind(text(phone))
    .bind(now)
    .fetch_one(conn)
    .await?;
    Caller::try_from(row)
}
