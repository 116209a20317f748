//! Reading what redial holds: calls, a call in full, a caller, a caller's export and access log.
//! Every read is audited (see the module documentation of [`super`]).

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Actor, Admin, AdminError, subject};
use crate::config::Settings;
use crate::engine::usage::{call_cost, model_cost};
use crate::storage::admin::{CallCursor, CallFilter, StoredWebhookEvent};
use crate::storage::{
    Analysis, Answers, AuditAction, AuditEntry, CallSession, Caller, ModelUsage, Turn,
};

/// Largest page of calls or access-log entries.
pub const MAX_PAGE: u32 = 1000;
/// Page size when none is asked for.
pub const DEFAULT_PAGE: u32 = 100;
/// The export document's format name and version (see docs/ADMIN.md).
pub const EXPORT_FORMAT: &str = "redial.caller-export";
/// The export document's schema version.
pub const EXPORT_VERSION: u32 = 1;
/// How far back an access log reaches when `since` is not given, in days.
pub const ACCESS_LOG_DEFAULT_DAYS: i64 = 90;

/// One call in a listing.
#[derive(Debug, Clone, Serialize)]
pub struct CallSummary {
    /// The session id.
    pub session_id: Uuid,
    /// The platform.
    pub platform: String,
    /// The platform's call id.
    pub call_key: String,
    /// The caller's id, when identified.
    pub caller_id: Option<Uuid>,
    /// The assistant id.
    pub assistant_id: String,
    /// Where the call stands.
    pub status: String,
    /// 1 for a fresh call, n for the n-th attempt of a resumed conversation.
    pub attempt: i32,
    /// The session this one resumes.
    pub resumes_session_id: Option<Uuid>,
    /// Confirmed answers.
    pub answers: usize,
    /// When the call started.
    pub started_at: DateTime<Utc>,
    /// Last turn or answer.
    pub last_activity_at: DateTime<Utc>,
    /// When the call ended.
    pub ended_at: Option<DateTime<Utc>>,
    /// Why it ended, as the platform said.
    pub ended_reason: Option<String>,
}

impl From<&CallSession> for CallSummary {
    fn from(s: &CallSession) -> Self {
        Self {
            session_id: s.session_id,
            platform: s.platform.as_str().into(),
            call_key: s.call_key.clone(),
            caller_id: s.caller_id,
            assistant_id: s.assistant_id.clone(),
            status: s.status.as_str().into(),
            attempt: s.attempt,
            resumes_session_id: s.resumes_session_id,
            answers: s.answers.len(),
            started_at: s.started_at,
            last_activity_at: s.last_activity_at,
            ended_at: s.ended_at,
            ended_reason: s.ended_reason.clone(),
        }
    }
}

/// A page of calls, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct CallPage {
    /// The calls.
    pub calls: Vec<CallSummary>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// A webhook event as shown: the body parsed when it is JSON.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookView {
    /// The event id.
    pub event_id: Uuid,
    /// The platform.
    pub platform: String,
    /// The platform's event type.
    pub event_type: String,
    /// When it arrived.
    pub received_at: DateTime<Utc>,
    /// The body as received (JSON when it parses, else the raw text).
    pub payload: Value,
}

impl From<StoredWebhookEvent> for WebhookView {
    fn from(e: StoredWebhookEvent) -> Self {
        let payload = serde_json::from_str(&e.payload).unwrap_or(Value::String(e.payload));
        Self {
            event_id: e.event_id,
            platform: e.platform.as_str().into(),
            event_type: e.event_type,
            received_at: e.received_at,
            payload,
        }
    }
}

/// The calls a call resumed (oldest first) and the calls that resumed it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Resumption {
    /// Earlier attempts of the conversation, oldest first.
    pub resumes: Vec<CallSummary>,
    /// Later attempts that resumed this call.
    pub resumed_by: Vec<CallSummary>,
}

/// A call in full.
#[derive(Debug, Clone, Serialize)]
pub struct CallDetail {
    /// The session.
    pub session: CallSession,
    /// The caller, when identified.
    pub caller: Option<Caller>,
    /// Confirmed answers by field.
    pub answers: Answers,
    /// The conversation, in order.
    pub turns: Vec<Turn>,
    /// Analyses (the platform's and redial's).
    pub analyses: Vec<Analysis>,
    /// Webhook events received for the call, oldest first.
    pub webhook_events: Vec<WebhookView>,
    /// The resumption chain.
    pub resumption: Resumption,
    /// Cost, duration and LLM token counts where a platform reported them; `null` when none
    /// did.
    pub usage: Option<Value>,
    /// The tokens redial's own upstream requests used, per model, and their cost.
    pub upstream_usage: UpstreamUsage,
}

/// The tokens a call's turns used upstream, as redial counted them, per model.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamUsage {
    /// One entry per model that answered, by model name.
    pub models: Vec<ModelUsageView>,
    /// The call's cost in US dollars: `null` unless every model has a `[prices]` entry (and
    /// when no usage is recorded).
    pub cost_usd: Option<f64>,
}

/// One model's share of a call's upstream usage.
#[derive(Debug, Clone, Serialize)]
pub struct ModelUsageView {
    /// The model as configured (`provider/model` or a bare name).
    pub model: String,
    /// Upstream replies the model gave (one per answered request).
    pub turns: u64,
    /// Input tokens, cached ones included.
    pub prompt_tokens: u64,
    /// Output tokens.
    pub completion_tokens: u64,
    /// Input tokens read from the prompt cache.
    pub cached_tokens: u64,
    /// The cost in US dollars, when the model has a `[prices]` entry.
    pub cost_usd: Option<f64>,
}

impl UpstreamUsage {
    /// A call's usage as [`crate::storage::TurnStore::call_usage`] sums it, priced with
    /// `settings.prices`.
    pub fn new(settings: &Settings, usage: Vec<ModelUsage>) -> Self {
        let cost_usd = (!usage.is_empty())
            .then(|| call_cost(settings, &usage))
            .flatten();
        let models = usage
            .into_iter()
            .map(|u| ModelUsageView {
                cost_usd: model_cost(settings, &u),
                model: u.model,
                turns: u.turns,
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
                cached_tokens: u.cached_tokens,
            })
            .collect();
        Self { models, cost_usd }
    }
}

/// A caller and a page of their calls.
#[derive(Debug, Clone, Serialize)]
pub struct CallerView {
    /// The profile.
    pub caller: Caller,
    /// Their calls, newest first.
    pub calls: CallPage,
}

/// Everything redial holds about a caller (see docs/ADMIN.md for the schema).
#[derive(Debug, Clone, Serialize)]
pub struct ExportDocument {
    /// Always `redial.caller-export`.
    pub format: &'static str,
    /// Schema version.
    pub version: u32,
    /// When the export was made.
    pub exported_at: DateTime<Utc>,
    /// The caller key (E.164 number or `id:<id>`).
    pub subject: String,
    /// The profile.
    pub caller: Caller,
    /// Every call, oldest first, in full.
    pub calls: Vec<CallDetail>,
    /// Every recorded access to the caller's data, oldest first.
    pub access_log: Vec<AuditEntry>,
}

/// A page of a caller's access log.
#[derive(Debug, Clone, Serialize)]
pub struct AccessLog {
    /// The caller key asked about.
    pub subject: String,
    /// Whether the caller was erased (the log then ends with the tombstone).
    pub erased: bool,
    /// Start of the window.
    pub since: DateTime<Utc>,
    /// End of the window (exclusive).
    pub until: DateTime<Utc>,
    /// Entries, oldest first: when (`created_at`), who (`actor`), what (`action`), why
    /// (`reason`).
    pub entries: Vec<AuditEntry>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Encodes a call cursor (`<unix ms>.<session id>`; opaque to clients).
pub fn encode_cursor(session: &CallSession) -> String {
    format!(
        "{}.{}",
        session.started_at.timestamp_millis(),
        session.session_id.simple()
    )
}

/// Decodes a call cursor.
pub fn decode_cursor(raw: &str) -> Result<CallCursor, AdminError> {
    let invalid = || AdminError::Invalid {
        param: "cursor",
        message: "cursor must be a next_cursor value returned by this API".into(),
    };
    let (ms, id) = raw.split_once('.').ok_or_else(invalid)?;
    let started_at = ms
        .parse()
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .filter(|t: &DateTime<Utc>| (1970..=9999).contains(&chrono::Datelike::year(t)))
        .ok_or_else(invalid)?;
    let session_id = Uuid::try_parse(id).map_err(|_| invalid())?;
    Ok(CallCursor {
        started_at,
        session_id,
    })
}

/// A page size parameter: 1 to [`MAX_PAGE`].
pub fn page_size(limit: Option<u32>) -> Result<u32, AdminError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(_) => Err(AdminError::Invalid {
            param: "limit",
            message: format!("limit must be between 1 and {MAX_PAGE}"),
        }),
    }
}

impl Admin<'_> {
    /// A page of calls matching `filter` (its `limit` set), newest first; audited per caller
    /// listed.
    pub async fn list_calls(
        &self,
        actor: &Actor,
        filter: &CallFilter,
    ) -> Result<CallPage, AdminError> {
        let page = self.page(filter).await?;
        let callers: BTreeSet<Uuid> = page.iter().filter_map(|s| s.caller_id).collect();
        for caller in callers {
            self.audit(
                actor,
                AuditAction::Read,
                "admin: list calls",
                (Some(caller), None),
                json!({}),
            )
            .await?;
        }
        Ok(page_of(&page, filter.limit))
    }

    async fn page(&self, filter: &CallFilter) -> Result<Vec<CallSession>, AdminError> {
        let mut ask = filter.clone();
        ask.limit = filter.limit + 1;
        Ok(self.store.list_calls(&ask).await?)
    }

    /// A call in full; audited.
    pub async fn call(&self, actor: &Actor, session_id: Uuid) -> Result<CallDetail, AdminError> {
        let session = self
            .store
            .get_session(session_id)
            .await?
            .ok_or_else(|| AdminError::NotFound(format!("no call {session_id}")))?;
        let detail = self.detail(session).await?;
        let ids = (detail.session.caller_id, Some(session_id));
        self.audit(
            actor,
            AuditAction::Read,
            "admin: call detail",
            ids,
            json!({}),
        )
        .await?;
        Ok(detail)
    }

    async fn detail(&self, session: CallSession) -> Result<CallDetail, AdminError> {
        let store = self.store;
        let caller = match session.caller_id {
            Some(id) => store.caller_by_id(id).await?,
            None => None,
        };
        let turns = store.list_turns(session.session_id).await?;
        let analyses = store.list_analyses(session.session_id).await?;
        let events = store
            .list_webhook_events(session.platform, &session.call_key)
            .await?;
        let webhook_events: Vec<WebhookView> = events.into_iter().map(Into::into).collect();
        let resumption = self.resumption(&session).await?;
        let usage = usage(&session, &webhook_events);
        let upstream_usage =
            UpstreamUsage::new(self.settings, store.call_usage(session.session_id).await?);
        Ok(CallDetail {
            answers: session.answers.clone(),
            session,
            caller,
            turns,
            analyses,
            webhook_events,
            resumption,
            usage,
            upstream_usage,
        })
    }

    async fn resumption(&self, session: &CallSession) -> Result<Resumption, AdminError> {
        let mut resumes = Vec::new();
        let mut next = session.resumes_session_id;
        // A chain is short; the bound guards against a cycle in damaged data.
        while let Some(id) = next.filter(|_| resumes.len() < 100) {
            let Some(earlier) = self.store.get_session(id).await? else {
                break;
            };
            next = earlier.resumes_session_id;
            resumes.push(CallSummary::from(&earlier));
        }
        resumes.reverse();
        let resumed_by = self.store.resumed_by(session.session_id).await?;
        Ok(Resumption {
            resumes,
            resumed_by: resumed_by.iter().map(CallSummary::from).collect(),
        })
    }

    /// A caller and a page of their calls; audited.
    pub async fn caller(
        &self,
        actor: &Actor,
        raw: &str,
        after: Option<CallCursor>,
        limit: u32,
    ) -> Result<CallerView, AdminError> {
        let caller = self.find_caller(raw).await?;
        let filter = CallFilter {
            caller_id: Some(caller.caller_id),
            after,
            limit,
            ..CallFilter::default()
        };
        let page = self.page(&filter).await?;
        self.audit(
            actor,
            AuditAction::Read,
            "admin: caller profile",
            (Some(caller.caller_id), None),
            json!({}),
        )
        .await?;
        Ok(CallerView {
            caller,
            calls: page_of(&page, limit),
        })
    }

    async fn find_caller(&self, raw: &str) -> Result<Caller, AdminError> {
        let key = self.subject(raw, "phone")?;
        self.store
            .get_caller_by_phone(&key)
            .await?
            .ok_or_else(|| AdminError::NotFound(format!("no caller {key}")))
    }

    /// Every call of a caller, newest first (all pages).
    pub async fn all_calls(&self, caller_id: Uuid) -> Result<Vec<CallSession>, AdminError> {
        let mut calls = Vec::new();
        let mut filter = CallFilter {
            caller_id: Some(caller_id),
            limit: MAX_PAGE,
            ..CallFilter::default()
        };
        loop {
            let page = self.store.list_calls(&filter).await?;
            let full = page.len() == MAX_PAGE as usize;
            filter.after = page.last().map(|s| CallCursor {
                started_at: s.started_at,
                session_id: s.session_id,
            });
            calls.extend(page);
            if !full {
                return Ok(calls);
            }
        }
    }

    /// Everything redial holds about a caller; audited as an export.
    pub async fn export(&self, actor: &Actor, raw: &str) -> Result<ExportDocument, AdminError> {
        let caller = self.find_caller(raw).await?;
        let mut sessions = self.all_calls(caller.caller_id).await?;
        sessions.reverse();
        let mut calls = Vec::with_capacity(sessions.len());
        for session in sessions {
            calls.push(self.detail(session).await?);
        }
        let access_log = self
            .entries(
                &[caller.caller_id],
                DateTime::UNIX_EPOCH,
                Utc::now() + Duration::seconds(1),
            )
            .await?;
        let details = json!({"calls": calls.len()});
        self.audit(
            actor,
            AuditAction::Export,
            "admin: export",
            (Some(caller.caller_id), None),
            details,
        )
        .await?;
        Ok(ExportDocument {
            format: EXPORT_FORMAT,
            version: EXPORT_VERSION,
            exported_at: Utc::now(),
            subject: caller.phone.clone(),
            caller,
            calls,
            access_log,
        })
    }

    async fn entries(
        &self,
        callers: &[Uuid],
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<AuditEntry>, AdminError> {
        let mut out: Vec<AuditEntry> = Vec::new();
        loop {
            let after = out.last().map(|e| e.audit_id);
            let page = self
                .store
                .list_access(callers, since, until, after, MAX_PAGE)
                .await?;
            let full = page.len() == MAX_PAGE as usize;
            out.extend(page);
            if !full {
                return Ok(out);
            }
        }
    }

    /// A caller's access log in `[since, until)` (default: the last 90 days), oldest first;
    /// also for an erased caller, found by the keyed hash of the number in their tombstone.
    /// Audited (before it is read, so the reading is in it).
    pub async fn access_log(
        &self,
        actor: &Actor,
        raw: &str,
        window: (Option<DateTime<Utc>>, Option<DateTime<Utc>>),
        after: Option<i64>,
        limit: u32,
    ) -> Result<AccessLog, AdminError> {
        let key = self.subject(raw, "phone")?;
        let until = window
            .1
            .unwrap_or_else(|| Utc::now() + Duration::seconds(1));
        let since = window
            .0
            .unwrap_or_else(|| until - Duration::days(ACCESS_LOG_DEFAULT_DAYS));
        if since >= until {
            return Err(AdminError::Invalid {
                param: "since",
                message: "since must be before until".into(),
            });
        }
        let (callers, erased) = self.subject_callers(&key).await?;
        if callers.is_empty() {
            return Err(AdminError::NotFound(format!(
                "no caller {key}, and no erasure of it on record"
            )));
        }
        let latest = callers.last().copied();
        self.audit(
            actor,
            AuditAction::Read,
            "admin: access log",
            (latest, None),
            json!({}),
        )
        .await?;
        let mut entries = self
            .store
            .list_access(&callers, since, until, after, limit + 1)
            .await?;
        let more = entries.len() > limit as usize;
        entries.truncate(limit as usize);
        let next_cursor = more
            .then(|| entries.last().map(|e| e.audit_id.to_string()))
            .flatten();
        Ok(AccessLog {
            subject: key,
            erased,
            since,
            until,
            entries,
            next_cursor,
        })
    }

    /// The caller ids a caller key has had: erased ones (from tombstones) and the current one.
    async fn subject_callers(&self, key: &str) -> Result<(Vec<Uuid>, bool), AdminError> {
        let erasure_key = &self.settings.server.erasure_key;
        let mut callers = if erasure_key.is_empty() {
            Vec::new()
        } else {
            let hash = subject::subject_hash(erasure_key, key);
            self.store.erased_callers(&hash).await?
        };
        let erased = !callers.is_empty();
        if let Some(current) = self.store.get_caller_by_phone(key).await? {
            callers.push(current.caller_id);
        }
        Ok((callers, erased))
    }
}

/// The first `limit` of `sessions` (fetched with one extra to tell whether more follow).
fn page_of(sessions: &[CallSession], limit: u32) -> CallPage {
    let shown = &sessions[..sessions.len().min(limit as usize)];
    let next_cursor = (sessions.len() > limit as usize)
        .then(|| shown.last().map(encode_cursor))
        .flatten();
    CallPage {
        calls: shown.iter().map(CallSummary::from).collect(),
        next_cursor,
    }
}

/// What the platforms reported about a call's cost and LLM usage.
fn usage(session: &CallSession, events: &[WebhookView]) -> Option<Value> {
    let mut usage = serde_json::Map::new();
    for key in ["cost", "duration_ms"] {
        if let Some(v) = session.details.get(key).filter(|v| !v.is_null()) {
            usage.insert(key.into(), v.clone());
        }
    }
    for event in events {
        let p = &event.payload;
        let found = [
            (
                "llm_prompt_tokens",
                "/message/costBreakdown/llmPromptTokens",
            ),
            (
                "llm_completion_tokens",
                "/message/costBreakdown/llmCompletionTokens",
            ),
            ("llm_token_usage", "/call/llm_token_usage"),
            ("llm_usage", "/data/metadata/charging/llm_usage"),
        ];
        for (name, pointer) in found {
            if let Some(v) = p.pointer(pointer).filter(|v| !v.is_null()) {
                usage.insert(name.into(), v.clone());
            }
        }
    }
    (!usage.is_empty()).then_some(Value::Object(usage))
}
