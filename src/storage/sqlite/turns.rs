//! The turn log on SQLite.

use std::collections::HashSet;

use async_trait::async_trait;
use chrono::DateTime;
use sqlx::{QueryBuilder, Sqlite};
use uuid::Uuid;

use super::{SqliteStore, TurnRow, audit, begin_write, id, ms, sessions};
use crate::storage::batch::{self, Batch, ROWS_PER_STATEMENT, Started};
use crate::storage::rows::convert_all;
use crate::storage::text::{opt_text, text};
use crate::storage::turns::{model_usage, tokens};
use crate::storage::{ModelUsage, Saved, StoreResult, Turn, TurnStore, TurnWrite};

#[async_trait]
impl TurnStore for SqliteStore {
    #[tracing::instrument(
        name = "store.save_batch",
        skip_all,
        fields(backend = "sqlite", items = writes.len(), inserted = tracing::field::Empty)
    )]
    async fn save_batch(&self, writes: &[TurnWrite]) -> StoreResult<Vec<Saved>> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        // A handful of statements for the whole batch, whatever its size: each statement is a round
        // trip to the connection's thread.
        let mut tx = begin_write(&self.writer).await?;
        // A call's first turn brings its start: stored first, in this transaction.
        let starts = batch::starts(writes);
        let mut started = Started::default();
        for start in &starts {
            started.record(start, sessions::start_call_in(&mut tx, start).await?);
        }
        let (writes, per_item) = started.apply(writes);
        let writes: &[TurnWrite] = &writes;
        let mut found = HashSet::new();
        for chunk in Batch::session_ids(writes).chunks(ROWS_PER_STATEMENT) {
            let mut select = QueryBuilder::<Sqlite>::new(
                "select session_id from call_session where session_id in (",
            );
            let mut ids = select.separated(", ");
            for session_id in chunk {
                ids.push_bind(id(*session_id));
            }
            select.push(")");
            let rows: Vec<String> = select.build_query_scalar().fetch_all(&mut *tx).await?;
            found.extend(rows.iter().filter_map(|s| Uuid::parse_str(s).ok()));
        }
        let mut batch = Batch::new(writes, found);

        for chunk in batch.rows().chunks(ROWS_PER_STATEMENT) {
            let mut insert = QueryBuilder::<Sqlite>::new(
                "insert into turn (session_id, idempotency_key, role, content, tool_name, \
                 tool_call_id, partial, created_at) ",
            );
            insert.push_values(chunk, |mut row, (session_id, turn)| {
                row.push_bind(id(*session_id))
                    .push_bind(text(&turn.idempotency_key))
                    .push_bind(turn.role.as_str())
                    .push_bind(text(&turn.content))
                    .push_bind(opt_text(turn.tool_name.as_deref()))
                    .push_bind(opt_text(turn.tool_call_id.as_deref()))
                    .push_bind(turn.partial)
                    .push_bind(ms(turn.created_at));
            });
            insert.push(
                " on conflict (session_id, idempotency_key) do nothing \
                 returning session_id, idempotency_key, created_at",
            );
            let created: Vec<(String, String, i64)> =
                insert.build_query_as().fetch_all(&mut *tx).await?;
            for (session_id, key, at) in created {
                if let (Ok(session_id), Some(at)) = (
                    Uuid::parse_str(&session_id),
                    DateTime::from_timestamp_millis(at),
                ) {
                    batch.inserted(session_id, &key, at);
                }
            }
        }

        for chunk in batch.touches().chunks(ROWS_PER_STATEMENT) {
            // max() of a null is null, hence the coalesce (no turn inserted, only a model).
            let mut update =
                QueryBuilder::<Sqlite>::new("with t (session_id, at, model, bumps) as (");
            update.push_values(chunk, |mut row, touch| {
                row.push_bind(id(touch.session_id))
                    .push_bind(touch.at.map(ms))
                    .push_bind(touch.model.map(text))
                    .push_bind(touch.bumps);
            });
            update.push(
                ") update call_session set \
                 last_activity_at = max(call_session.last_activity_at, \
                                        coalesce(t.at, call_session.last_activity_at)), \
                 model = coalesce(t.model, call_session.model), \
                 version = call_session.version + t.bumps, \
                 updated_at = coalesce(t.at, call_session.updated_at) \
                 from t where call_session.session_id = t.session_id",
            );
            update.build().execute(&mut *tx).await?;
        }
        let usage = batch.usage();
        for chunk in usage.chunks(ROWS_PER_STATEMENT) {
            let mut insert = QueryBuilder::<Sqlite>::new(
                "insert into turn_usage (session_id, usage_key, model, prompt_tokens, \
                 completion_tokens, cached_tokens, created_at) ",
            );
            insert.push_values(chunk, |mut row, (session_id, usage)| {
                row.push_bind(id(*session_id))
                    .push_bind(text(&usage.usage_key))
                    .push_bind(text(&usage.model))
                    .push_bind(tokens(usage.prompt_tokens))
                    .push_bind(tokens(usage.completion_tokens))
                    .push_bind(tokens(usage.cached_tokens))
                    .push_bind(ms(usage.created_at));
            });
            insert.push(" on conflict (session_id, usage_key) do nothing");
            insert.build().execute(&mut *tx).await?;
        }
        audit::insert_audit(&mut tx, &batch.audit()).await?;
        tx.commit().await?;
        // As start_call: a closed previous call is a change a cached memory shows.
        let closed = starts.iter().filter_map(|s| s.close_previous.as_ref());
        self.changes.publish(closed.map(|(previous, _)| *previous));
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
        fields(backend = "sqlite", %session_id)
    )]
    async fn list_turns(&self, session_id: Uuid) -> StoreResult<Vec<Turn>> {
        let rows: Vec<TurnRow> = sqlx::query_as(
            "select seq, session_id, idempotency_key, role, content, tool_name, tool_call_id, \
             partial, created_at from turn where session_id = $1 order by created_at, seq",
        )
        .bind(id(session_id))
        .fetch_all(&self.reader)
        .await?;
        convert_all(rows)
    }

    #[tracing::instrument(
        name = "store.call_usage",
        skip_all,
        fields(backend = "sqlite", %session_id)
    )]
    async fn call_usage(&self, session_id: Uuid) -> StoreResult<Vec<ModelUsage>> {
        let rows: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
            "select model, count(*), sum(prompt_tokens), sum(completion_tokens), \
             sum(cached_tokens) from turn_usage where session_id = $1 \
             group by model order by model",
        )
        .bind(id(session_id))
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.into_iter().map(model_usage).collect())
    }
}
