//! Post-call analyses and the audit log on SQLite.

use std::borrow::Borrow;

use sqlx::types::Json;
use sqlx::{QueryBuilder, Sqlite, SqliteConnection, SqlitePool};
use uuid::Uuid;

use super::{AnalysisRow, AuditRow, begin_write, id, ms};
use crate::storage::batch::ROWS_PER_STATEMENT;
use crate::storage::rows::{convert_all, missing_parent};
use crate::storage::text::{json, opt_text, text};
use crate::storage::{
    Analysis, AuditEntry, CallerAnalysisUpdate, NewAnalysis, NewAudit, Recorded, StoreError,
    StoreResult, rules,
};

#[tracing::instrument(
    name = "store.save_analysis",
    skip_all,
    fields(backend = "sqlite", session_id = %analysis.session_id, source = %analysis.source,
           new = tracing::field::Empty)
)]
pub(super) async fn save_analysis(
    pool: &SqlitePool,
    analysis: &NewAnalysis,
    caller_update: Option<&CallerAnalysisUpdate>,
) -> StoreResult<Recorded> {
    let mut tx = begin_write(pool).await?;
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
    tracing::Span::current().record("new", new);
    Ok(if new {
        Recorded::New(analysis.analysis_id)
    } else {
        Recorded::Duplicate
    })
}

#[tracing::instrument(name = "store.list_analyses", skip_all, fields(backend = "sqlite", %session_id))]
pub(super) async fn list_analyses(
    pool: &SqlitePool,
    session_id: Uuid,
) -> StoreResult<Vec<Analysis>> {
    let rows: Vec<AnalysisRow> = sqlx::query_as(
        "select analysis_id, session_id, source, summary, urgency, action, sentiment, raw, \
         model, created_at from analysis where session_id = $1 \
         order by created_at, analysis_id",
    )
    .bind(id(session_id))
    .fetch_all(pool)
    .await?;
    convert_all(rows)
}

#[tracing::instrument(
    name = "store.append_audit",
    skip_all,
    fields(backend = "sqlite", entries = entries.len())
)]
pub(super) async fn append_audit(pool: &SqlitePool, entries: &[NewAudit]) -> StoreResult<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut conn = pool.acquire().await?;
    insert_audit(&mut conn, entries).await
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

#[tracing::instrument(name = "store.list_audit", skip_all, fields(backend = "sqlite", %caller_id, limit))]
pub(super) async fn list_audit(
    pool: &SqlitePool,
    caller_id: Uuid,
    limit: i64,
) -> StoreResult<Vec<AuditEntry>> {
    let rows: Vec<AuditRow> = sqlx::query_as(
        "select audit_id, caller_id, session_id, actor, action, reason, details, created_at \
         from audit_log where caller_id = $1 \
         order by created_at desc, audit_id desc limit $2",
    )
    .bind(id(caller_id))
    .bind(limit.max(0))
    .fetch_all(pool)
    .await?;
    convert_all(rows)
}
