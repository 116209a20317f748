//! Call sessions on SQLite.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::SqliteConnection;
use sqlx::types::Json;
use uuid::Uuid;

use super::{
    SessionRow, SessionWithCallerRow, SqliteStore, begin_write, callers, id, ms, truncate_ms,
};
use crate::platforms::Platform;
use crate::storage::rows::{missing_parent, select_session_with_caller, session_columns};
use crate::storage::text::{answers, json, opt_text, text};
use crate::storage::{
    AnswerOutcome, CallSession, CallStart, Caller, CloseSession, NewSession, SessionStore,
    StartedCall, StoreError, StoreResult, rules,
};

/// Creates the session of `new` unless one is stored for its call (as [`SessionStore::start_call`]
/// describes), inside the caller's write transaction; returns it and whether it is new.
pub(super) async fn create_session_in(
    tx: &mut SqliteConnection,
    new: &NewSession,
) -> StoreResult<(CallSession, bool)> {
    let (prior_calls, prior_call_at) = match new.caller_id {
        Some(caller_id) => {
            let counts: Option<(i64, Option<i64>)> =
                sqlx::query_as("select call_count, last_call_at from caller where caller_id = $1")
                    .bind(id(caller_id))
                    .fetch_optional(&mut *tx)
                    .await?;
            counts.ok_or(StoreError::NotFound)?
        }
        None => (0, None),
    };
    let inserted: Option<SessionRow> = sqlx::query_as(concat!(
        "insert into call_session (session_id, platform, call_key, caller_id, assistant_id, \
         status, attempt, resumes_session_id, answers, prior_calls, prior_call_at, model, \
         started_at, last_activity_at, updated_at) \
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, $13) \
         on conflict do nothing returning ",
        session_columns!()
    ))
    .bind(id(new.session_id))
    .bind(new.platform.as_str())
    .bind(text(&new.call_key))
    .bind(new.caller_id.map(id))
    .bind(text(&new.assistant_id))
    .bind(new.status.as_str())
    .bind(new.attempt)
    .bind(new.resumes_session_id.map(id))
    .bind(Json(answers(&new.answers)))
    .bind(prior_calls)
    .bind(prior_call_at)
    .bind(opt_text(new.model.as_deref()))
    .bind(ms(new.started_at))
    .fetch_optional(&mut *tx)
    .await
    .map_err(missing_parent)?;

    let (row, created) = match inserted {
        Some(row) => {
            if let Some(caller_id) = new.caller_id {
                // Two-argument max() is NULL when either side is: coalesce the nullable column.
                sqlx::query(
                    "update caller set call_count = call_count + 1, \
                     last_call_at = max(coalesce(last_call_at, $2), $2), \
                     updated_at = max(updated_at, $2) \
                     where caller_id = $1",
                )
                .bind(id(caller_id))
                .bind(ms(new.started_at))
                .execute(&mut *tx)
                .await?;
            }
            (row, true)
        }
        None => (
            select_by_key(tx, new.platform, &new.call_key)
                .await?
                .ok_or_else(|| StoreError::Conflict("session vanished during creation".into()))?,
            false,
        ),
    };
    Ok((CallSession::try_from(row)?, created))
}

/// [`SessionStore::start_call`] inside the caller's write transaction (a batch's, say).
pub(super) async fn start_call_in(
    tx: &mut SqliteConnection,
    start: &CallStart,
) -> StoreResult<StartedCall> {
    let mut new = start.session.clone();
    let caller = match &start.phone {
        Some(phone) => {
            let caller = callers::upsert_caller_in(&mut *tx, phone, start.now).await?;
            new.caller_id = Some(caller.caller_id);
            Some(caller)
        }
        None => None,
    };
    if let Some((previous, close)) = &start.close_previous {
        match close_session_in(&mut *tx, *previous, close).await {
            Ok(_) | Err(StoreError::NotFound) => {}
            Err(e) => return Err(e),
        }
    }
    let (session, created) = create_session_in(tx, &new).await?;
    Ok(StartedCall {
        session,
        caller,
        created,
    })
}

#[async_trait]
impl SessionStore for SqliteStore {
    #[tracing::instrument(
        name = "store.start_call",
        skip_all,
        fields(backend = "sqlite", platform = %start.session.platform,
               session_id = %start.session.session_id, created = tracing::field::Empty)
    )]
    async fn start_call(&self, start: &CallStart) -> StoreResult<StartedCall> {
        let mut tx = begin_write(&self.writer).await?;
        let started = start_call_in(&mut tx, start).await?;
        tx.commit().await?;
        // The new session and its caller's counts are nothing a cached memory shows; a closed
        // previous call is.
        self.changes
            .publish(start.close_previous.as_ref().map(|(previous, _)| *previous));
        tracing::Span::current().record("created", started.created);
        Ok(started)
    }

    #[tracing::instrument(
        name = "store.get_session",
        skip_all,
        fields(backend = "sqlite", %session_id)
    )]
    async fn get_session(&self, session_id: Uuid) -> StoreResult<Option<CallSession>> {
        let row: Option<SessionRow> = sqlx::query_as(concat!(
            "select ",
            session_columns!(),
            " from call_session where session_id = $1"
        ))
        .bind(id(session_id))
        .fetch_optional(&self.reader)
        .await?;
        row.map(CallSession::try_from).transpose()
    }

    #[tracing::instrument(
        name = "store.load_call",
        skip_all,
        fields(backend = "sqlite", %platform)
    )]
    async fn load_call(
        &self,
        platform: Platform,
        call_key: &str,
    ) -> StoreResult<Option<(CallSession, Option<Caller>)>> {
        let row: Option<SessionWithCallerRow> = sqlx::query_as(concat!(
            select_session_with_caller!(),
            " where s.platform = $1 and s.call_key = $2"
        ))
        .bind(platform.as_str())
        .bind(text(call_key))
        .fetch_optional(&self.reader)
        .await?;
        row.map(SessionWithCallerRow::into_records).transpose()
    }

    #[tracing::instrument(
        name = "store.attach_caller",
        skip_all,
        fields(backend = "sqlite", %session_id, attached = tracing::field::Empty)
    )]
    async fn attach_caller(
        &self,
        session_id: Uuid,
        phone: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<CallSession> {
        let mut tx = begin_write(&self.writer).await?;
        let caller = callers::upsert_caller_in(&mut tx, phone, now).await?;
        let mut session = read_session(&mut tx, session_id).await?;
        if session.caller_id.is_none() {
            // The write transaction holds the database lock: counts cannot move under us.
            let (prior_calls, prior_call_at): (i64, Option<i64>) =
                sqlx::query_as("select call_count, last_call_at from caller where caller_id = $1")
                    .bind(id(caller.caller_id))
                    .fetch_one(&mut *tx)
                    .await?;
            sqlx::query(
                "update call_session set caller_id = $2, prior_calls = $3, prior_call_at = $4, \
                 version = version + 1, updated_at = max(updated_at, $5) where session_id = $1",
            )
            .bind(id(session_id))
            .bind(id(caller.caller_id))
            .bind(prior_calls)
            .bind(prior_call_at)
            .bind(ms(now))
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "update caller set call_count = call_count + 1, \
                 last_call_at = max(coalesce(last_call_at, $2), $2), \
                 updated_at = max(updated_at, $3) where caller_id = $1",
            )
            .bind(id(caller.caller_id))
            .bind(ms(session.started_at))
            .bind(ms(now))
            .execute(&mut *tx)
            .await?;
            tracing::Span::current().record("attached", true);
            session = read_session(&mut tx, session_id).await?;
        }
        tx.commit().await?;
        self.changes.publish([session_id]);
        Ok(session)
    }

    #[tracing::instrument(
        name = "store.find_resumable",
        skip_all,
        fields(backend = "sqlite", %caller_id, assistant_id)
    )]
    async fn find_resumable(
        &self,
        caller_id: Uuid,
        assistant_id: &str,
        started_since: DateTime<Utc>,
        stale_before: DateTime<Utc>,
        exclude: Option<Uuid>,
    ) -> StoreResult<Option<CallSession>> {
        let row: Option<SessionRow> = sqlx::query_as(concat!(
            "select ",
            session_columns!(),
            " from call_session \
             where caller_id = $1 and assistant_id = $2 and started_at >= $3 \
             and (status in ('ended', 'dropped') or (status = 'active' and last_activity_at < $4)) \
             and ($5 is null or session_id <> $5) \
             and not exists (select 1 from call_session r \
                             where r.resumes_session_id = call_session.session_id) \
             order by started_at desc, session_id desc limit 1"
        ))
        .bind(id(caller_id))
        .bind(text(assistant_id))
        .bind(ms(started_since))
        .bind(ms(stale_before))
        .bind(exclude.map(id))
        .fetch_optional(&self.reader)
        .await?;
        row.map(CallSession::try_from).transpose()
    }

    #[tracing::instrument(
        name = "store.record_answer",
        skip_all,
        fields(backend = "sqlite", %session_id, field, changed = tracing::field::Empty)
    )]
    async fn record_answer(
        &self,
        session_id: Uuid,
        field: &str,
        value: &str,
        required: &[String],
        now: DateTime<Utc>,
    ) -> StoreResult<AnswerOutcome> {
        let mut tx = begin_write(&self.writer).await?;
        let mut session = read_session(&mut tx, session_id).await?;
        let now = truncate_ms(now);
        let changed = rules::apply_answer(&mut session, field, value, required, now);
        if changed {
            save_state(&mut tx, &session, now).await?;
        }
        tx.commit().await?;
        if changed {
            self.changes.publish([session_id]);
        }
        tracing::Span::current().record("changed", changed);
        Ok(AnswerOutcome { session, changed })
    }

    #[tracing::instrument(
        name = "store.close_session",
        skip_all,
        fields(backend = "sqlite", %session_id, status = %close.status)
    )]
    async fn close_session(
        &self,
        session_id: Uuid,
        close: &CloseSession,
    ) -> StoreResult<CallSession> {
        let mut tx = begin_write(&self.writer).await?;
        let session = close_session_in(&mut tx, session_id, close).await?;
        tx.commit().await?;
        self.changes.publish([session_id]);
        Ok(session)
    }
}

async fn select_by_key(
    conn: &mut SqliteConnection,
    platform: Platform,
    call_key: &str,
) -> StoreResult<Option<SessionRow>> {
    Ok(sqlx::query_as(concat!(
        "select ",
        session_columns!(),
        " from call_session where platform = $1 and call_key = $2"
    ))
    .bind(platform.as_str())
    .bind(text(call_key))
    .fetch_optional(conn)
    .await?)
}

/// [`SessionStore::close_session`] inside the caller's write transaction.
pub(super) async fn close_session_in(
    tx: &mut SqliteConnection,
    session_id: Uuid,
    close: &CloseSession,
) -> StoreResult<CallSession> {
    let mut session = read_session(tx, session_id).await?;
    let ended_at = truncate_ms(close.ended_at);
    rules::apply_close(&mut session, close);
    session.ended_at = session.ended_at.map(truncate_ms);
    save_state(tx, &session, ended_at).await?;
    Ok(session)
}

/// Reads a session inside a write transaction (which already holds the write lock).
async fn read_session(conn: &mut SqliteConnection, session_id: Uuid) -> StoreResult<CallSession> {
    let row: Option<SessionRow> = sqlx::query_as(concat!(
        "select ",
        session_columns!(),
        " from call_session where session_id = $1"
    ))
    .bind(id(session_id))
    .fetch_optional(conn)
    .await?;
    CallSession::try_from(row.ok_or(StoreError::NotFound)?)
}

/// Writes back the mutable state of a session read by [`read_session`], whose version the rules
/// bumped by one.
async fn save_state(
    conn: &mut SqliteConnection,
    session: &CallSession,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    let done = sqlx::query(
        "update call_session set status = $3, answers = $4, last_activity_at = $5, \
         ended_at = $6, ended_reason = $7, details = $8, version = $2, updated_at = $9 \
         where session_id = $1 and version = $2 - 1",
    )
    .bind(id(session.session_id))
    .bind(session.version)
    .bind(session.status.as_str())
    .bind(Json(answers(&session.answers)))
    .bind(ms(session.last_activity_at))
    .bind(session.ended_at.map(ms))
    .bind(opt_text(session.ended_reason.as_deref()))
    .bind(Json(json(&session.details)))
    .bind(ms(now))
    .execute(conn)
    .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::Conflict(
            "session changed under its write lock".into(),
        ));
    }
    Ok(())
}
