//! Erasing a caller: every row and every copy of their data, with a tombstone in the audit log
//! that keeps a keyed hash of the number, never the number.
//!
//! What goes (one database transaction, see `AdminStore::erase_caller`): the profile, every
//! session with its answers and platform details, turns, analyses, the raw webhook bodies of
//! their calls and any other body holding the number in one of its text forms, the jobs of those
//! (their payloads copy the bodies), and the details of every audit entry about them (who, what,
//! why and when stay: the access log outlives the data). Outside the database: applied records
//! in the outage journal are compacted away and `rejected.log` lines about them removed; while
//! journaled writes wait for replay, the erasure is refused (503), since replaying them would
//! store the data again.
//!
//! A call in progress (active, and live on this instance or active within
//! `memory.live_window_secs`) makes the erasure answer 409 unless forced: erasing under it would
//! let its next turn store the number again a moment later. Forced, that is what happens: the
//! call's next turn finds no session and starts afresh, so the number is stored again as a
//! first-time caller holding only the rest of that call (turns of it already queued for writing
//! are dropped, their session being gone).
//!
//! Idempotent: erasing an erased (or never seen) number deletes whatever still holds the number
//! and records another tombstone.

use chrono::{Duration, Utc};
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use super::{Actor, Admin, AdminError, subject};
use crate::engine::Hold;
use crate::journal::JournalErasure;
use crate::storage::admin::{Erasure, ErasureCounts};
use crate::storage::{AuditAction, AuditActor, CallSession, NewAudit, SessionStatus};

/// What an erasure did.
#[derive(Debug, Clone, Serialize)]
pub struct ErasureReport {
    /// `erased` (a caller was deleted now), `already_erased` (an earlier erasure is on
    /// record) or `unknown` (redial never held this caller; copies of the number were still
    /// looked for).
    pub status: &'static str,
    /// The keyed hash the tombstone keeps.
    pub subject_hash: String,
    /// When.
    pub erased_at: chrono::DateTime<Utc>,
    /// Rows deleted or scrubbed.
    pub deleted: ErasureCounts,
    /// What was done in this process's outage journal.
    pub journal: JournalErasure,
}

impl Admin<'_> {
    /// Erases the caller `raw` names. See the module documentation.
    pub async fn erase(
        &self,
        actor: &Actor,
        raw: &str,
        force: bool,
    ) -> Result<ErasureReport, AdminError> {
        let key = self.subject(raw, "phone")?;
        self.erase_key(actor, &key, force).await
    }

    /// Erases the caller stored under `key` (a caller key as stored: E.164 or `id:<id>`).
    pub async fn erase_key(
        &self,
        actor: &Actor,
        key: &str,
        force: bool,
    ) -> Result<ErasureReport, AdminError> {
        let key = key.to_owned();
        let erasure_key = &self.settings.server.erasure_key;
        if erasure_key.is_empty() {
            return Err(AdminError::Unavailable(
                "erasure needs server.erasure_key (the secret of the keyed hash its tombstone \
                 keeps instead of the number); set it and retry"
                    .into(),
            ));
        }
        let hash = subject::subject_hash(erasure_key, &key);
        let current = self.store.get_caller_by_phone(&key).await?;
        let earlier = self.store.erased_callers(&hash).await?;
        let caller_id = current
            .as_ref()
            .map(|c| c.caller_id)
            .or(earlier.last().copied());
        let sessions = match current.as_ref() {
            Some(caller) => self.all_calls(caller.caller_id).await?,
            None => Vec::new(),
        };
        if !force {
            self.refuse_if_live(&sessions)?;
        }
        let mut needles = subject::needles(&key);
        let mut journal_needles = needles.clone();
        journal_needles.extend(caller_id.map(|id| id.to_string()));
        journal_needles.extend(sessions.iter().map(|s| s.session_id.to_string()));
        let journal = self.erase_journal(journal_needles).await?;
        needles.push(key.clone());
        needles.sort();
        needles.dedup();
        let now = Utc::now();
        let status = match (&current, earlier.is_empty()) {
            (Some(_), _) => "erased",
            (None, false) => "already_erased",
            (None, true) => "unknown",
        };
        let tombstone = NewAudit {
            entry_key: Some(Uuid::now_v7()),
            caller_id,
            session_id: None,
            actor: actor.clone(),
            action: AuditAction::Erase,
            reason: if *actor == AuditActor::Retention {
                "retention: inactive caller".into()
            } else {
                "erasure request".into()
            },
            details: json!({"subject_hash": hash, "status": status, "sessions": sessions.len(), "forced": force}),
            created_at: now,
        };
        let erasure = Erasure {
            caller_id: caller_id.unwrap_or(Uuid::nil()),
            needles,
            tombstone,
        };
        let deleted = self.store.erase_caller(&erasure).await?;
        metrics::counter!("redial_erasures_total", "status" => status).increment(1);
        tracing::info!(%actor, status, sessions = deleted.sessions, "caller erased");
        Ok(ErasureReport {
            status,
            subject_hash: hash,
            erased_at: now,
            deleted,
            journal,
        })
    }

    /// 409 when one of `sessions` is a call in progress.
    fn refuse_if_live(&self, sessions: &[CallSession]) -> Result<(), AdminError> {
        let window = Duration::seconds(
            i64::try_from(self.settings.memory.live_window_secs).unwrap_or(i64::MAX / 1000),
        );
        let recent = Utc::now() - window;
        let live = sessions.iter().find(|s| {
            let here = self.engine.is_some_and(|engine| {
                [Hold::Turn, Hold::Connection]
                    .into_iter()
                    .any(|hold| engine.live_holds(s.platform, &s.call_key, hold) > 0)
            });
            matches!(s.status, SessionStatus::Active | SessionStatus::Completed)
                && s.ended_at.is_none()
                && (here || s.last_activity_at > recent)
        });
        match live {
            Some(call) => Err(AdminError::Conflict(format!(
                "call {} of this caller is in progress (last activity {}); erase once it ends, \
                 or pass force=true to erase now (its later turns are then stored as a new first-time caller)",
                call.session_id, call.last_activity_at
            ))),
            None => Ok(()),
        }
    }

    async fn erase_journal(&self, needles: Vec<String>) -> Result<JournalErasure, AdminError> {
        let Some(journal) = self.journal else {
            return Ok(JournalErasure::default());
        };
        match journal.erase(needles).await {
            Ok(Ok(done)) => Ok(done),
            Ok(Err(backlog)) => Err(AdminError::Unavailable(format!(
                "the outage journal holds {backlog} writes not yet stored in the database; \
                 replaying them after an erasure would store the caller's data again: retry \
                 once /readyz reports journal_backlog 0"
            ))),
            Err(e) => Err(AdminError::Unavailable(format!(
                "the outage journal could not be scrubbed: {e}"
            ))),
        }
    }
}
