//! The turn log on SQLite.

use sqlx::{QueryBuilder, Sqlite, SqliteConnection, SqlitePool};
use uuid::Uuid;

use super::{TurnRow, analyses, begin_write, id, ms, sessions};
use crate::storage::rows::convert_all;
use crate::storage::{NewTurn, StoreError, StoreResult, Turn, TurnWrite};

#[tracing::instrument(
    name = "store.save_turns",
    skip_all,
    fields(backend = "sqlite", items = batch.len(), inserted = tracing::field::Empty)
)]
pub(super) async fn save_turns(
    pool: &SqlitePool,
    batch: &[TurnWrite],
) -> StoreResult<Vec<Option<u64>>> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    // One write transaction, item after item: statements are in-process calls here, the commit
    // is what a batch saves.
    let mut tx = begin_write(pool).await?;
    let mut results = Vec::with_capacity(batch.len());
    for write in batch {
        let created = match insert_turns(&mut tx, write.session_id, &write.turns).await {
            Ok(created) => created,
            Err(StoreError::NotFound) => {
                results.push(None);
                continue;
            }
            Err(e) => return Err(e),
        };
        let newest = created.iter().max().copied();
        if newest.is_some() || write.model.is_some() {
            sessions::touch(&mut tx, write.session_id, write.model.as_deref(), newest).await?;
        }
        analyses::insert_audit(&mut tx, &write.audit).await?;
        results.push(Some(created.len() as u64));
    }
    tx.commit().await?;
    let inserted: u64 = results.iter().flatten().sum();
    tracing::Span::current().record("inserted", inserted);
    Ok(results)
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
    let mut created = Vec::with_capacity(turns.len());
    for chunk in turns.chunks(ROWS_PER_STATEMENT) {
        let mut insert = QueryBuilder::<Sqlite>::new(
            "insert into turn (session_id, idempotency_key, role, content, tool_name, \
             tool_call_id, partial, created_at) ",
        );
        insert.push_values(chunk, |mut row, turn| {
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
        created.extend(
            insert
                .build_query_scalar::<i64>()
                .fetch_all(&mut *conn)
                .await?,
        );
    }
    Ok(created)
}

/// Rows per multi-row insert: 8 parameters each, under SQLite's 32,766 per statement.
const ROWS_PER_STATEMENT: usize = 4_000;

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
