//! Call sessions on Postgres.

use std::borrow::Cow;
use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgConnection, Postgres, QueryBuilder};
use uuid::Uuid;

use super::{
    CallerRow, PostgresStore, SessionRow, SessionWithCallerRow, answers, callers, json, opt_text,
    text,
};
use crate::platforms::Platform;
use crate::storage::rows::{
    caller_columns, missing_parent, select_session_with_caller, session_columns,
};
use crate::storage::{
    AnswerOutcome, CallSession, CallStart, Caller, CloseSession, NewSession, SessionStore,
    StartedCall, StoreError, StoreResult, rules,
};

/// Creates the session of `new` unless one is stored for its call (as [`SessionStore::start_call`]
/// describes), inside the caller's write transaction; returns it and whether it is new.
pub(super) async fn create_session_in(
    tx: &mut PgConnection,
    new: &NewSession,
) -> StoreResult<(CallSession, bool)> {
    // Lock the caller first: concurrent creations for one caller then count and snapshot in turn.
    let (prior_calls, prior_call_at) = match new.caller_id {
        Some(caller_id) => {
            let counts: Option<(i64, Option<DateTime<Utc>>)> = sqlx::query_as(
                "select call_count, last_call_at from caller \
                 where caller_id = $1 for no key update",
            )
            .bind(caller_id)
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
    .bind(new.session_id)
    .bind(new.platform.as_str())
    .bind(text(&new.call_key))
    .bind(new.caller_id)
    .bind(text(&new.assistant_id))
    .bind(new.status.as_str())
    .bind(new.attempt)
    .bind(new.resumes_session_id)
    .bind(Json(answers(&new.answers)))
    .bind(prior_calls)
    .bind(prior_call_at)
    .bind(opt_text(new.model.as_deref()))
    .bind(new.started_at)
    .fetch_optional(&mut *tx)
    .await
    .map_err(missing_parent)?;

    let (row, created) = match inserted {
        Some(row) => {
            if let Some(caller_id) = new.caller_id {
                sqlx::query(
                    "update caller set call_count = call_count + 1, \
                     last_call_at = greatest(last_call_at, $2), \
                     updated_at = greatest(updated_at, $2) \
                     where caller_id = $1",
                )
                .bind(caller_id)
                .bind(new.started_at)
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
    tx: &mut PgConnection,
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

/// Rows per multi-row session insert: 13 parameters each, under Postgres' 65,535 per statement.
const SESSIONS_PER_STATEMENT: usize = 4_000;

/// [`start_call_in`] for a batch's starts (distinct calls), set-based: one upsert of their
/// callers, one insert of their sessions, one update counting the calls, whatever their number
/// (plus one read of the sessions adopted, when another request created any first). A start that
/// closes an abandoned call, or whose caller starts another call in the batch, is applied on its
/// own, after the others, as [`start_call_in`] (both are rare; the second keeps each call's
/// snapshot of the calls before it). Returns what each start stored, in `starts` order.
pub(super) async fn start_calls_in(
    tx: &mut PgConnection,
    starts: &[&CallStart],
) -> StoreResult<Vec<StartedCall>> {
    let mut callers_of: HashMap<Cow<'_, str>, usize> = HashMap::new();
    for start in starts {
        if let Some(phone) = &start.phone {
            *callers_of.entry(text(phone)).or_default() += 1;
        }
    }
    let alone = |start: &CallStart| {
        start.close_previous.is_none()
            && start
                .phone
                .as_deref()
                .is_none_or(|phone| callers_of.get(&text(phone)).copied() == Some(1))
    };
    let (together, apart): (Vec<usize>, Vec<usize>) =
        (0..starts.len()).partition(|&i| alone(starts[i]));
    let mut started: Vec<Option<StartedCall>> = vec![None; starts.len()];

    if !together.is_empty() {
        // The callers, each once (phones in order, as every batch locks them).
        let phones: Vec<(Cow<'_, str>, DateTime<Utc>)> = together
            .iter()
            .filter_map(|&i| Some((text(starts[i].phone.as_deref()?), starts[i].now)))
            .collect();
        let mut callers: HashMap<String, Caller> = HashMap::new();
        if !phones.is_empty() {
            let rows: Vec<CallerRow> = sqlx::query_as(concat!(
                "insert into caller (caller_id, phone, first_seen_at, last_seen_at, updated_at) \
                 select id, phone, at, at, at \
                 from unnest($1::uuid[], $2::text[], $3::timestamptz[]) as t(id, phone, at) \
                 on conflict (phone) do update \
                 set last_seen_at = excluded.last_seen_at, updated_at = excluded.updated_at \
                 returning ",
                caller_columns!()
            ))
            .bind(phones.iter().map(|_| Uuid::now_v7()).collect::<Vec<_>>())
            .bind(phones.iter().map(|(p, _)| p.as_ref()).collect::<Vec<_>>())
            .bind(phones.iter().map(|(_, at)| *at).collect::<Vec<_>>())
            .fetch_all(&mut *tx)
            .await?;
            for row in rows {
                let caller = Caller::try_from(row)?;
                callers.insert(caller.phone.clone(), caller);
            }
        }
        let caller_of = |start: &CallStart| {
            let phone = start.phone.as_deref()?;
            callers.get(text(phone).as_ref())
        };

        // The sessions; those of calls already stored are left as they are.
        let mut inserted: HashMap<Uuid, CallSession> = HashMap::new();
        for chunk in together.chunks(SESSIONS_PER_STATEMENT) {
            let mut insert = QueryBuilder::<Postgres>::new(
                "insert into call_session (session_id, platform, call_key, caller_id, \
                 assistant_id, status, attempt, resumes_session_id, answers, prior_calls, \
                 prior_call_at, model, started_at, last_activity_at, updated_at) ",
            );
            insert.push_values(chunk, |mut row, &i| {
                let new = &starts[i].session;
                let caller = caller_of(starts[i]);
                row.push_bind(new.session_id)
                    .push_bind(new.platform.as_str())
                    .push_bind(text(&new.call_key).into_owned())
                    .push_bind(caller.map(|c| c.caller_id))
                    .push_bind(text(&new.assistant_id).into_owned())
                    .push_bind(new.status.as_str())
                    .push_bind(new.attempt)
                    .push_bind(new.resumes_session_id)
                    .push_bind(Json(answers(&new.answers).into_owned()))
                    .push_bind(caller.map_or(0, |c| c.call_count))
                    .push_bind(caller.and_then(|c| c.last_call_at))
                    .push_bind(opt_text(new.model.as_deref()).map(Cow::into_owned))
                    .push_bind(new.started_at)
                    .push_bind(new.started_at)
                    .push_bind(new.started_at);
            });
            insert.push(concat!(
                " on conflict do nothing returning ",
                session_columns!()
            ));
            let rows: Vec<SessionRow> = insert
                .build_query_as()
                .fetch_all(&mut *tx)
                .await
                .map_err(missing_parent)?;
            for row in rows {
                let session = CallSession::try_from(row)?;
                inserted.insert(session.session_id, session);
            }
        }

        // Each new call counted on its caller (callers are distinct here).
        let counted: Vec<(Uuid, DateTime<Utc>)> = together
            .iter()
            .filter(|&&i| inserted.contains_key(&starts[i].session.session_id))
            .filter_map(|&i| {
                Some((
                    caller_of(starts[i])?.caller_id,
                    starts[i].session.started_at,
                ))
            })
            .collect();
        if !counted.is_empty() {
            sqlx::query(
                "update caller c set call_count = c.call_count + 1, \
                 last_call_at = greatest(c.last_call_at, t.at), \
                 updated_at = greatest(c.updated_at, t.at) \
                 from unnest($1::uuid[], $2::timestamptz[]) as t(caller_id, at) \
                 where c.caller_id = t.caller_id",
            )
            .bind(counted.iter().map(|(id, _)| *id).collect::<Vec<_>>())
            .bind(counted.iter().map(|(_, at)| *at).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }

        // Calls whose session another request created first: theirs is adopted.
        let adopted: Vec<usize> = together
            .iter()
            .copied()
            .filter(|&i| !inserted.contains_key(&starts[i].session.session_id))
            .collect();
        let mut stored: HashMap<(String, String), CallSession> = HashMap::new();
        if !adopted.is_empty() {
            let rows: Vec<SessionRow> = sqlx::query_as(concat!(
                "select ",
                session_columns!(),
                " from call_session where (platform, call_key) in \
                 (select * from unnest($1::text[], $2::text[]))"
            ))
            .bind(
                adopted
                    .iter()
                    .map(|&i| starts[i].session.platform.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                adopted
                    .iter()
                    .map(|&i| text(&starts[i].session.call_key).into_owned())
                    .collect::<Vec<_>>(),
            )
            .fetch_all(&mut *tx)
            .await?;
            for row in rows {
                let session = CallSession::try_from(row)?;
                stored.insert(
                    (
                        session.platform.as_str().to_owned(),
                        session.call_key.clone(),
                    ),
                    session,
                );
            }
        }
        for &i in &together {
            let new = &starts[i].session;
            let caller = caller_of(starts[i]).cloned();
            let (session, created) = match inserted.remove(&new.session_id) {
                Some(session) => (session, true),
                None => {
                    let key = (
                        new.platform.as_str().to_owned(),
                        text(&new.call_key).into_owned(),
                    );
                    let session = stored.remove(&key).ok_or_else(|| {
                        StoreError::Conflict("session vanished during creation".into())
                    })?;
                    (session, false)
                }
            };
            started[i] = Some(StartedCall {
                session,
                caller,
                created,
            });
        }
    }
    for i in apart {
        started[i] = Some(start_call_in(tx, starts[i]).await?);
    }
    Ok(started.into_iter().flatten().collect())
}

#[async_trait]
impl SessionStore for PostgresStore {
    #[tracing::instrument(
        name = "store.start_call",
        skip_all,
        fields(backend = "postgres", platform = %start.session.platform,
               session_id = %start.session.session_id, created = tracing::field::Empty)
    )]
    async fn start_call(&self, start: &CallStart) -> StoreResult<StartedCall> {
        let mut tx = self.pool.begin().await?;
        let started = start_call_in(&mut tx, start).await?;
        tx.commit().await?;
        tracing::Span::current().record("created", started.created);
        Ok(started)
    }

    #[tracing::instrument(
        name = "store.get_session",
        skip_all,
        fields(backend = "postgres", %session_id)
    )]
    async fn get_session(&self, session_id: Uuid) -> StoreResult<Option<CallSession>> {
        let row: Option<SessionRow> = sqlx::query_as(concat!(
            "select ",
            session_columns!(),
            " from call_session where session_id = $1"
        ))
        .bind(session_id)
        .fetch_optional(&self.reader)
        .await?;
        row.map(CallSession::try_from).transpose()
    }

    #[tracing::instrument(
        name = "store.load_call",
        skip_all,
        fields(backend = "postgres", %platform)
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
        fields(backend = "postgres", %session_id, attached = tracing::field::Empty)
    )]
    async fn attach_caller(
        &self,
        session_id: Uuid,
        phone: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<CallSession> {
        let mut tx = self.pool.begin().await?;
        let caller = callers::upsert_caller_in(&mut tx, phone, now).await?;
        // Lock the caller as a session creation does: counts are snapshotted and bumped in turn.
        let (prior_calls, prior_call_at): (i64, Option<DateTime<Utc>>) = sqlx::query_as(
            "select call_count, last_call_at from caller where caller_id = $1 for no key update",
        )
        .bind(caller.caller_id)
        .fetch_one(&mut *tx)
        .await?;
        let attached: Option<SessionRow> = sqlx::query_as(concat!(
            "update call_session set caller_id = $2, prior_calls = $3, prior_call_at = $4, \
             version = version + 1, updated_at = greatest(updated_at, $5) \
             where session_id = $1 and caller_id is null returning ",
            session_columns!()
        ))
        .bind(session_id)
        .bind(caller.caller_id)
        .bind(prior_calls)
        .bind(prior_call_at)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let session = match attached {
            Some(row) => {
                let session = CallSession::try_from(row)?;
                sqlx::query(
                    "update caller set call_count = call_count + 1, \
                     last_call_at = greatest(last_call_at, $2), \
                     updated_at = greatest(updated_at, $3) \
                     where caller_id = $1",
                )
                .bind(caller.caller_id)
                .bind(session.started_at)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                tracing::Span::current().record("attached", true);
                session
            }
            None => {
                let row: Option<SessionRow> = sqlx::query_as(concat!(
                    "select ",
                    session_columns!(),
                    " from call_session where session_id = $1"
                ))
                .bind(session_id)
                .fetch_optional(&mut *tx)
                .await?;
                CallSession::try_from(row.ok_or(StoreError::NotFound)?)?
            }
        };
        tx.commit().await?;
        Ok(session)
    }

    #[tracing::instrument(
        name = "store.find_resumable",
        skip_all,
        fields(backend = "postgres", %caller_id, assistant_id)
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
             and ($5::uuid is null or session_id <> $5) \
             and not exists (select 1 from call_session r \
                             where r.resumes_session_id = call_session.session_id) \
             order by started_at desc, session_id desc limit 1"
        ))
        .bind(caller_id)
        .bind(text(assistant_id))
        .bind(started_since)
        .bind(stale_before)
        .bind(exclude)
        .fetch_optional(&self.reader)
        .await?;
        row.map(CallSession::try_from).transpose()
    }

    #[tracing::instrument(
        name = "store.record_answer",
        skip_all,
        fields(backend = "postgres", %session_id, field, changed = tracing::field::Empty)
    )]
    async fn record_answer(
        &self,
        session_id: Uuid,
        field: &str,
        value: &str,
        required: &[String],
        now: DateTime<Utc>,
    ) -> StoreResult<AnswerOutcome> {
        let mut tx = self.pool.begin().await?;
        let mut session = lock_session(&mut tx, session_id).await?;
        let changed = rules::apply_answer(&mut session, field, value, required, now);
        if changed {
            save_state(&mut tx, &session, now).await?;
        }
        tx.commit().await?;
        tracing::Span::current().record("changed", changed);
        Ok(AnswerOutcome { session, changed })
    }

    #[tracing::instrument(
        name = "store.close_session",
        skip_all,
        fields(backend = "postgres", %session_id, status = %close.status)
    )]
    async fn close_session(
        &self,
        session_id: Uuid,
        close: &CloseSession,
    ) -> StoreResult<CallSession> {
        let mut tx = self.pool.begin().await?;
        let session = close_session_in(&mut tx, session_id, close).await?;
        tx.commit().await?;
        Ok(session)
    }
}

async fn select_by_key(
    conn: &mut PgConnection,
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
    tx: &mut PgConnection,
    session_id: Uuid,
    close: &CloseSession,
) -> StoreResult<CallSession> {
    let mut session = lock_session(tx, session_id).await?;
    rules::apply_close(&mut session, close);
    save_state(tx, &session, close.ended_at).await?;
    Ok(session)
}

/// Reads a session and locks its row until the transaction ends.
async fn lock_session(conn: &mut PgConnection, session_id: Uuid) -> StoreResult<CallSession> {
    let row: Option<SessionRow> = sqlx::query_as(concat!(
        "select ",
        session_columns!(),
        " from call_session where session_id = $1 for no key update"
    ))
    .bind(session_id)
    .fetch_optional(conn)
    .await?;
    CallSession::try_from(row.ok_or(StoreError::NotFound)?)
}

/// Writes back the mutable state of a session read by [`lock_session`], whose version the rules
/// bumped by one.
async fn save_state(
    conn: &mut PgConnection,
    session: &CallSession,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    let done = sqlx::query(
        "update call_session set status = $3, answers = $4, last_activity_at = $5, \
         ended_at = $6, ended_reason = $7, details = $8, version = $2, updated_at = $9 \
         where session_id = $1 and version = $2 - 1",
    )
    .bind(session.session_id)
    .bind(session.version)
    .bind(session.status.as_str())
    .bind(Json(answers(&session.answers)))
    .bind(session.last_activity_at)
    .bind(session.ended_at)
    .bind(opt_text(session.ended_reason.as_deref()))
    .bind(Json(json(&session.details)))
    .bind(now)
    .execute(conn)
    .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::Conflict(
            "session changed under its lock".into(),
        ));
    }
    Ok(())
}
