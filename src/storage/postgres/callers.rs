//! Callers on Postgres.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{CallerRow, opt_text, strings, text};
use crate::storage::rows::caller_columns;
use crate::storage::{Caller, CallerPatch, StoreError, StoreResult, rules};

#[tracing::instrument(
    name = "store.upsert_caller",
    skip_all,
    fields(backend = "postgres", caller_id = tracing::field::Empty)
)]
pub(super) async fn upsert_caller(
    pool: &PgPool,
    phone: &str,
    now: DateTime<Utc>,
) -> StoreResult<Caller> {
    let mut conn = pool.acquire().await?;
    let caller = upsert_caller_in(&mut conn, phone, now).await?;
    tracing::Span::current().record("caller_id", tracing::field::display(caller.caller_id));
    Ok(caller)
}

/// [`upsert_caller`] on a connection (inside the caller's transaction, if any).
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

#[tracing::instrument(
    name = "store.get_caller",
    skip_all,
    fields(backend = "postgres", %caller_id)
)]
pub(super) async fn get_caller(pool: &PgPool, caller_id: Uuid) -> StoreResult<Option<Caller>> {
    let row: Option<CallerRow> = sqlx::query_as(concat!(
        "select ",
        caller_columns!(),
        " from caller where caller_id = $1"
    ))
    .bind(caller_id)
    .fetch_optional(pool)
    .await?;
    row.map(Caller::try_from).transpose()
}

#[tracing::instrument(
    name = "store.get_caller_by_phone",
    skip_all,
    fields(backend = "postgres")
)]
pub(super) async fn get_caller_by_phone(pool: &PgPool, phone: &str) -> StoreResult<Option<Caller>> {
    let row: Option<CallerRow> = sqlx::query_as(concat!(
        "select ",
        caller_columns!(),
        " from caller where phone = $1"
    ))
    .bind(text(phone))
    .fetch_optional(pool)
    .await?;
    row.map(Caller::try_from).transpose()
}

#[tracing::instrument(
    name = "store.update_caller",
    skip_all,
    fields(backend = "postgres", %caller_id)
)]
pub(super) async fn update_caller(
    pool: &PgPool,
    caller_id: Uuid,
    patch: &CallerPatch,
    now: DateTime<Utc>,
) -> StoreResult<Caller> {
    let mut tx = pool.begin().await?;
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
