//! Post-call analyses on SQLite.

use async_trait::async_trait;
use sqlx::types::Json;
use uuid::Uuid;

use super::{AnalysisRow, SqliteStore, begin_write, id, ms};
use crate::storage::rows::{convert_all, missing_parent};
use crate::storage::text::{json, opt_text, text};
use crate::storage::{
    Analysis, AnalysisStore, CallerAnalysisUpdate, NewAnalysis, Recorded, StoreError, StoreResult,
    rules,
};

#[async_trait]
impl AnalysisStore for SqliteStore {
    #[tracing::instrument(
        name = "store.save_analysis",
        skip_all,
        fields(backend = "sqlite", session_id = %analysis.session_id, source = %analysis.source,
               new = tracing::field::Empty)
    )]
    async fn save_analysis(
        &self,
        analysis: &NewAnalysis,
        caller_update: Option<&CallerAnalysisUpdate>,
    ) -> StoreResult<Recorded> {
        let mut tx = begin_write(&self.writer).await?;
        let stored = sqlx::query(
            "insert into analysis (analysis_id, session_id, source, summary, urgency, action, \
             sentiment, raw, model, created_at) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             on conflict (session_id, source) do nothing",
        )
        .bind(id(analysis.analysis_id))
        .bind(id(analysis.session_id))
        .bind(text(&analysis.source.to_string()).into_owned())
        .bind(text(&analysis.summary))
        .bind(analysis.urgency)
        .bind(opt_text(analysis.action.as_deref()))
        .bind(opt_text(analysis.sentiment.as_deref()))
        .bind(Json(json(&analysis.raw)))
        .bind(opt_text(analysis.model.as_deref()))
        .bind(ms(analysis.created_at))
        .execute(&mut *tx)
        .await
        .map_err(missing_parent)?;
        let new = stored.rows_affected() == 1;
        if let (true, Some(update)) = (new, caller_update) {
            let done = sqlx::query(
                "update caller set last_summary = $2, last_sentiment = $3, last_action = $4, \
                 updated_at = $5 where caller_id = $1",
            )
            .bind(id(update.caller_id))
            .bind(text(&update.summary))
            .bind(opt_text(update.sentiment.as_deref()))
            .bind(opt_text(rules::normalize_action(update.action.as_deref())))
            .bind(ms(update.now))
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound);
            }
        }
        tx.commit().await?;
        if new {
            self.changes
                .publish(caller_update.map(|update| update.caller_id));
        }
        tracing::Span::current().record("new", new);
        Ok(if new {
            Recorded::New(analysis.analysis_id)
        } else {
            Recorded::Duplicate
        })
    }

    #[tracing::instrument(
        name = "store.list_analyses",
        skip_all,
        fields(backend = "sqlite", %session_id)
    )]
    async fn list_analyses(&self, session_id: Uuid) -> StoreResult<Vec<Analysis>> {
        let rows: Vec<AnalysisRow> = sqlx::query_as(
            "select analysis_id, session_id, source, summary, urgency, action, sentiment, raw, \
             model, created_at from analysis where session_id = $1 \
             order by created_at, analysis_id",
        )
        .bind(id(session_id))
        .fetch_all(&self.reader)
        .await?;
        convert_all(rows)
    }
}
