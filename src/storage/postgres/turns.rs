//! The turn log on Postgres.

use std::collections::HashSet;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use super::{PostgresStore, TurnRow, audit, sessions, text};
use crate::storage::batch::{self, Batch, ROWS_PER_STATEMENT, Started};
use crate::storage::rows::convert_all;
use crate::storage::turns::{model_usage, tokens};
use crate::storage::{ModelUsage, Saved, StoreResult, Turn, TurnStore, TurnWrite};

#[async_trait]
impl TurnStore for PostgresStore {
    #[tracing::instrument(
        name = "store.save_batch",
        skip_all,
        fields(backend = "postgres", items = writes.len(), inserted = tracing::field::Empty)
    )]
    async fn save_batch(&self, writes: &[TurnWrite]) -> StoreResult<Vec<Saved>> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        // A call's first turn brings its start: stored first, in this transaction.
        let starts = batch::starts(writes);
        let mut started = Started::default();
        let stored = sessions::start_calls_in(&mut tx, &starts).await?;
        for (start, stored) in starts.iter().zip(stored) {
            started.record(start, stored);
        }
        let (writes, per_item) = started.apply(writes);
        let writes: &[TurnWrite] = &writes;
        // Locked in id order, so batches of several instances never wait on each other in a cycle.
        let found: HashSet<Uuid> = sqlx::query_scalar(
            "select session_id from call_session where session_id = any($1) \
             order by session_id for no key update",
        )
        .bind(Batch::session_ids(writes))
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        let mut batch = Batch::new(writes, found);

        for chunk in batch.rows().chunks(ROWS_PER_STATEMENT) {
            let mut insert = QueryBuilder::<Postgres>::new(
                "insert into turn (session_id, idempotency_key, role, content, tool_name, \
                 tool_call_id, partial, created_at) ",
            );
            insert.push_values(chunk, |mut row, (session_id, turn)| {
                row.push_bind(*session_id)
                    .push_bind(text(&turn.idempotency_key))
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
                batch.inserted(session_id, &key, at);
            }
        }

        let touches = batch.touches();
        if !touches.is_empty() {
            // greatest() and coalesce() ignore a null `at` (no turn inserted, only a model).
            sqlx::query(
                "update call_session s set last_activity_at = greatest(s.last_activity_at, t.at), \
                 model = coalesce(t.model, s.model), version = s.version + t.bumps, \
                 updated_at = coalesce(t.at, s.updated_at) \
                 from unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::int8[]) \
                 as t(session_id, at, model, bumps) where s.session_id = t.session_id",
            )
            .bind(touches.iter().map(|t| t.session_id).collect::<Vec<_>>())
            .bind(touches.iter().map(|t| t.at).collect::<Vec<_>>())
            .bind(
                touches
                    .iter()
                    .map(|t| t.model.map(text))
                    .collect::<Vec<_>>(),
            )
            .bind(touches.iter().map(|t| t.bumps).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        let usage = batch.usage();
        for chunk in usage.chunks(ROWS_PER_STATEMENT) {
            let mut insert = QueryBuilder::<Postgres>::new(
                "insert into turn_usage (session_id, usage_key, model, prompt_tokens, \
                 completion_tokens, cached_tokens, created_at) ",
            );
            insert.push_values(chunk, |mut row, (session_id, usage)| {
                row.push_bind(*session_id)
                    .push_bind(text(&usage.usage_key))
                    .push_bind(text(&usage.model))
                    .push_bind(tokens(usage.prompt_tokens))
                    .push_bind(tokens(usage.completion_tokens))
                    .push_bind(tokens(usage.cached_tokens))
                    .push_bind(usage.created_at);
            });
            insert.push(" on conflict (session_id, usage_key) do nothing");
            insert.build().execute(&mut *tx).await?;
        }
        audit::insert_audit(&mut tx, &batch.audit()).await?;
        tx.commit().await?;
        let results = batch.results();
        tracing::Span::current().record("inserted", results.iter().flatten().sum::<u64>());
        Ok(results
            .into_iter()
            .zip(per_item)
            .map(|(inserted, started)| Saved { inserted, started })
            .collect())
    }

    #[tracing::instrument(
        name = "store.list_turns",
        skip_all,
        fields(backend = "postgres", %session_id)
    )]
    async fn list_turns(&self, session_id: Uuid) -> StoreResult<Vec<Turn>> {
        let rows: Vec<TurnRow> = sqlx::query_as(
            "select seq, session_id, idempotency_key, role, content, tool_name, tool_call_id, \
             partial, created_at from turn where session_id = $1 order by created_at, seq",
        )
        .bind(session_id)
        .fetch_all(&self.pool)
        .await?;
        convert_all(rows)
    }

    #[tracing::instrument(
        name = "store.call_usage",
        skip_all,
        fields(backend = "postgres", %session_id)
    )]
    async fn call_usage(&self, session_id: Uuid) -> StoreResult<Vec<ModelUsage>> {
        let rows: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
            "select model, count(*), sum(prompt_tokens)::int8, sum(completion_tokens)::int8, \
             sum(cached_tokens)::int8 from turn_usage where session_id = $1 \
             group by model order by model",
        )
        .bind(session_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(model_usage).collect())
    }
}
