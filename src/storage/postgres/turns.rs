//! The turn log on Postgres.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use super::{TurnRow, analyses, text};
use crate::storage::rows::convert_all;
use crate::storage::{NewAudit, NewTurn, StoreResult, Turn, TurnWrite};

#[tracing::instrument(
    name = "store.save_turns",
    skip_all,
    fields(backend = "postgres", items = batch.len(), inserted = tracing::field::Empty)
)]
pub(super) async fn save_turns(
    pool: &PgPool,
    batch: &[TurnWrite],
) -> StoreResult<Vec<Option<u64>>> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let mut ids: Vec<Uuid> = batch.iter().map(|w| w.session_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut tx = pool.begin().await?;
    // Locked in id order, so batches of several instances never wait on each other in a cycle.
    let found: HashSet<Uuid> = sqlx::query_scalar(
        "select session_id from call_session where session_id = any($1) \
         order by session_id for no key update",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    let stored = |w: &&TurnWrite| found.contains(&w.session_id);

    // Every turn of the batch in one statement per chunk; a key repeated within the batch is
    // inserted once, for the first item that carries it.
    let mut first_of: HashMap<(Uuid, &str), usize> = HashMap::new();
    for (index, write) in batch.iter().enumerate().filter(|(_, w)| stored(w)) {
        for turn in &write.turns {
            first_of
                .entry((write.session_id, turn.idempotency_key.as_str()))
                .or_insert(index);
        }
    }
    let rows: Vec<(Uuid, &NewTurn)> = batch
        .iter()
        .filter(stored)
        .flat_map(|w| w.turns.iter().map(move |t| (w.session_id, t)))
        .collect();
    let mut inserted = vec![0_u64; batch.len()];
    let mut newest: Vec<Option<DateTime<Utc>>> = vec![None; batch.len()];
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut insert = QueryBuilder::<Postgres>::new(
            "insert into turn (session_id, idempotency_key, role, content, tool_name, \
             tool_call_id, partial, created_at) ",
        );
        insert.push_values(chunk, |mut row, (session_id, turn)| {
            row.push_bind(*session_id)
                .push_bind(&turn.idempotency_key)
                .push_bind(turn.role.as_str())
                .push_bind(text(&turn.content))
                .push_bind(turn.tool_name.as_deref().map(text))
                .push_bind(turn.tool_call_id.as_deref().map(text))
                .push_bind(turn.partial)
                .push_bind(turn.created_at);
        });
        insert.push(
            " on conflict (session_id, idempotency_key) do nothing \
             returning session_id, idempotency_key, created_at",
        );
        let created: Vec<(Uuid, String, DateTime<Utc>)> =
            insert.build_query_as().fetch_all(&mut *tx).await?;
        for (session_id, key, at) in created {
            if let Some(&index) = first_of.get(&(session_id, key.as_str())) {
                inserted[index] += 1;
                newest[index] = newest[index].max(Some(at));
            }
        }
    }

    // One update for every touched session: its newest inserted turn, its last given model,
    // one version bump per item that touches it.
    let mut touches: HashMap<Uuid, Touch<'_>> = HashMap::new();
    for (index, write) in batch.iter().enumerate().filter(|(_, w)| stored(w)) {
        if inserted[index] == 0 && write.model.is_none() {
            continue;
        }
        let touch = touches.entry(write.session_id).or_default();
        touch.at = touch.at.max(newest[index]);
        touch.model = write.model.as_deref().or(touch.model);
        touch.bumps += 1;
    }
    if !touches.is_empty() {
        let (mut sessions, mut ats, mut models, mut bumps) = (vec![], vec![], vec![], vec![]);
        for (session_id, touch) in touches {
            sessions.push(session_id);
            ats.push(touch.at);
            models.push(touch.model);
            bumps.push(touch.bumps);
        }
        // greatest() and coalesce() ignore a null `at` (no turn inserted, only a model).
        sqlx::query(
            "update call_session s set last_activity_at = greatest(s.last_activity_at, t.at), \
             model = coalesce(t.model, s.model), version = s.version + t.bumps, \
             updated_at = coalesce(t.at, s.updated_at) \
             from unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::int8[]) \
             as t(session_id, at, model, bumps) where s.session_id = t.session_id",
        )
        .bind(&sessions)
        .bind(&ats)
        .bind(&models)
        .bind(&bumps)
        .execute(&mut *tx)
        .await?;
    }

    let audit: Vec<NewAudit> = batch
        .iter()
        .filter(stored)
        .flat_map(|w| w.audit.iter().cloned())
        .collect();
    for chunk in audit.chunks(ROWS_PER_STATEMENT) {
        analyses::insert_audit(&mut tx, chunk).await?;
    }
    tx.commit().await?;
    tracing::Span::current().record("inserted", inserted.iter().sum::<u64>());
    Ok(batch
        .iter()
        .zip(inserted)
        .map(|(w, n)| found.contains(&w.session_id).then_some(n))
        .collect())
}

/// What a batch does to one session: its newest inserted turn, its last given model, and one
/// version bump per item that touches it.
#[derive(Default)]
struct Touch<'a> {
    at: Option<DateTime<Utc>>,
    model: Option<&'a str>,
    bumps: i64,
}

/// Rows per multi-row insert: 8 parameters each, well under Postgres' 65,535 per statement.
const ROWS_PER_STATEMENT: usize = 4_000;

#[tracing::instrument(name = "store.list_turns", skip_all, fields(backend = "postgres", %session_id))]
pub(super) async fn list_turns(pool: &PgPool, session_id: Uuid) -> StoreResult<Vec<Turn>> {
    let rows: Vec<TurnRow> = sqlx::query_as(
        "select seq, session_id, idempotency_key, role, content, tool_name, tool_call_id, \
         partial, created_at from turn where session_id = $1 order by seq",
    )
    .bind(session_id)
    .fetch_all(pool)
    .await?;
    convert_all(rows)
}
