//! The turn log on SQLite.

use sqlx::{QueryBuilder, Sqlite, SqliteConnection, SqlitePool};
use uuid::Uuid;

use super::{TurnRow, analyses, begin_write, id, ms, sessions};
use crate::storage::rows::convert_all;
use crate::storage::{NewAudit, NewTurn, StoreError, StoreResult, Turn};

#[tracing::instrument(
    name = "store.append_turns",
    skip_all,
    fields(backend = "sqlite", %session_id, turns = turns.len(), inserted = tracing::field::Empty)
)]
pub(super) async fn append_turns(
    pool: &SqlitePool,
    session_id: Uuid,
    turns: &[NewTurn],
) -> StoreResult<u64> {
    let mut tx = begin_write(pool).await?;
    let created = insert_turns(&mut tx, session_id, turns).await?;
    if let Some(newest) = created.iter().max() {
        sessions::touch(&mut tx, session_id, None, Some(*newest)).await?;
    }
    tx.commit().await?;
    let inserted = created.len() as u64;
    tracing::Span::current().record("inserted", inserted);
    Ok(inserted)
}

#[tracing::instrument(
    name = "store.save_turn",
    skip_all,
    fields(backend = "sqlite", %session_id, turns = turns.len(), audit = audit.len(),
           inserted = tracing::field::Empty)
)]
pub(super) async fn save_turn(
    pool: &SqlitePool,
    session_id: Uuid,
    turns: &[NewTurn],
    model: Option<&str>,
    audit: &[NewAudit],
) -> StoreResult<u64> {
    let mut tx = begin_write(pool).await?;
    let created = insert_turns(&mut tx, session_id, turns).await?;
    let newest = created.iter().max().copied();
    if newest.is_some() || model.is_some() {
        sessions::touch(&mut tx, session_id, model, newest).await?;
    }
    analyses::insert_audit(&mut tx, audit).await?;
    tx.commit().await?;
    let inserted = created.len() as u64;
    tracing::Span::current().record("inserted", inserted);
    Ok(inserted)
}

/// Inserts `turns` into an existing session's log inside a write transaction, skipping keys
/// already stored; returns the `created_at` of each inserted turn. An unknown session is
/// [`StoreError::NotFound`], even with no turns.
async fn insert_turns(
    conn: &mut SqliteConnection,
    session_id: Uuid,
    turns: &[NewTurn],
) -> StoreResult<Vec<i64>> {
    let exists: Option<i32> =
        sqlx::query_scalar("select 1 from call_session where session_id = $1")
            .bind(id(session_id))
            .fetch_optional(&mut *conn)
            .await?;
    if exists.is_none() {
        return Err(StoreError::NotFound);
    }
    if turns.is_empty() {
        return Ok(Vec::new());
    }
    let mut insert = QueryBuilder::<Sqlite>::new(
        "insert into turn (session_id, idempotency_key, role, content, tool_name, tool_call_id, \
         partial, created_at) ",
    );
    insert.push_values(turns, |mut row, turn| {
        row.push_bind(id(session_id))
            .push_bind(&turn.idempotency_key)
            .push_bind(turn.role.as_str())
            .push_bind(&turn.content)
            .push_bind(&turn.tool_name)
            .push_bind(&turn.tool_call_id)
            .push_bind(turn.partial)
            .push_bind(ms(turn.created_at));
    });
    insert.push(" on conflict (session_id, idempotency_key) do nothing returning created_at");
    Ok(insert.build_query_scalar().fetch_all(conn).await?)
}

#[tracing::instrument(name = "store.list_turns", skip_all, fields(backend = "sqlite", %session_id))]
pub(super) async fn list_turns(pool: &SqlitePool, session_id: Uuid) -> StoreResult<Vec<Turn>> {
    let rows: Vec<TurnRow> = sqlx::query_as(
        "select seq, session_id, idempotency_key, role, content, tool_name, tool_call_id, \
         partial, created_at from turn where session_id = $1 order by seq",
    )
    .bind(id(session_id))
    .fetch_all(pool)
    .await?;
    convert_all(rows)
}
