//! Persisting a turn after its last event was sent: off the caller's critical path, never
//! cancelled by a client disconnect, idempotent. The turn goes to the write-behind queue
//! ([`super::writer`]), which writes it with other calls' turns in one transaction; a call's
//! first turn takes the call's start (its caller and session) along, into the same transaction.
//! Only while the database is away is the start written (journaled) here first, in order.

use chrono::Utc;
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::Engine;
use super::memory::{self, CallContext};
use super::tool_calls::ToolCalls;
use super::tools::ToolResult;
use super::writer::{self, Slot};
use crate::journal::{Op, WriteError, Written};
use crate::openai::{ChatMessage, FinishReason, Role, ToolCall};
use crate::platforms::Identity;
use crate::storage::{
    AuditAction, AuditActor, CallStart, NewAudit, NewTurn, NewUsage, StoreError, TurnRole,
    TurnWrite,
};
use crate::upstream::Usage;

/// What the turn produced, for persistence.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Everything the caller was sent as text (filler and apology included).
    pub text: String,
    /// Platform tool calls, complete.
    pub tool_calls: ToolCalls,
    /// redial's own tool calls and their results, in order.
    pub internal: Vec<(ToolCall, ToolResult)>,
    /// The reply did not complete as the model meant it.
    pub partial: bool,
    /// The model that answered.
    pub model: Option<String>,
    /// How the turn ended.
    pub finish: Option<FinishReason>,
    /// Tokens used, per model that answered (in order, one entry per model).
    pub usage: Vec<(String, Usage)>,
}

impl Outcome {
    /// Adds one pass's usage to its model's.
    pub(crate) fn add_usage(&mut self, model: &str, usage: Usage) {
        match self.usage.iter_mut().find(|(m, _)| m == model) {
            Some((_, total)) => total.add(usage),
            None => self.usage.push((model.to_owned(), usage)),
        }
    }

    /// The usage of every model together.
    pub(crate) fn total_usage(&self) -> Option<Usage> {
        (!self.usage.is_empty()).then(|| {
            let mut total = Usage::default();
            for (_, usage) in &self.usage {
                total.add(*usage);
            }
            total
        })
    }
}

/// What a finished turn leaves to store.
#[derive(Debug)]
pub(crate) struct Finished {
    /// The request's new messages and the reply, keyed.
    turns: Vec<NewTurn>,
    /// The model that answered.
    model: Option<String>,
    /// Tokens used, per model.
    usage: Vec<NewUsage>,
    /// Assistant messages the call's next request may hold: the request's and this reply.
    next_assistant: usize,
}

impl Finished {
    /// The turns to store for a request's `messages` and its `outcome`.
    pub(crate) fn of(messages: &[ChatMessage], outcome: Outcome) -> Self {
        let now = Utc::now();
        let key = request_key(messages);
        let usage = outcome
            .usage
            .iter()
            .map(|(model, usage)| NewUsage {
                usage_key: format!("{key}:usage:{model}"),
                model: model.clone(),
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
                cached_tokens: usage.cached_tokens,
                created_at: now,
            })
            .collect();
        Self {
            turns: new_turns(messages, &outcome),
            model: outcome.model,
            usage,
            next_assistant: assistant_messages(messages) + 1,
        }
    }
}

/// Stores a finished turn: hands it to the writer through `slot` (or, when the queue was closed,
/// writes it directly), with the call's start when it is the call's first.
/// Only a write the database rejects for good, or one neither it nor the journal can take, is
/// lost; that is logged and counted.
pub(crate) async fn persist(
    engine: &Engine,
    identity: &Identity,
    context: Option<CallContext>,
    finished: Finished,
    slot: Option<Slot>,
) {
    let (ctx, start) = match prepare(engine, identity, context, finished.model.as_deref()).await {
        Ok(prepared) => prepared,
        Err(e) => {
            tracing::error!(error = %e, "persisting the turn failed; the turn is not stored");
            metrics::counter!("redial_persist_failures_total").increment(1);
            return;
        }
    };
    // The call's next turn here reads this context instead of the database (a first turn's
    // with its start, until the writer has stored it).
    memory::remember(engine, identity, &ctx, finished.next_assistant);
    let write = turn_write(identity, &ctx, finished, start);
    match slot {
        Some(slot) => slot.write(write),
        None => {
            let (store, journal) = (engine.store.as_ref(), &engine.journal);
            let batch = std::slice::from_ref(&write);
            writer::write_direct(store, journal, &engine.cache, batch).await;
        }
    }
}

/// The call's context — read again when the turn ran without memory, or built offline while the
/// database is away. A first turn's start goes to the writer with the turn
/// ([`memory::deferred_start`], returned with the context: decided once, so the write carries
/// the start exactly when it was not written here); when it cannot (offline, or the journal in
/// use), it is written (or journaled) here, first.
async fn prepare(
    engine: &Engine,
    identity: &Identity,
    context: Option<CallContext>,
    model: Option<&str>,
) -> Result<(CallContext, Option<CallStart>), WriteError> {
    let mut ctx = match context {
        Some(ctx) => ctx,
        None => reload(engine, identity, model).await?,
    };
    let start = memory::deferred_start(engine, &ctx);
    if start.is_none() {
        memory::ensure_stored(engine, &mut ctx).await?;
    }
    Ok((ctx, start))
}

/// Reads the context of a turn that ran without memory, within the write budget; while the
/// database is away, the offline context.
async fn reload(
    engine: &Engine,
    identity: &Identity,
    model: Option<&str>,
) -> Result<CallContext, WriteError> {
    if engine.journal.failing() {
        return Ok(memory::offline(engine, identity, model));
    }
    let budget = engine.settings.database.write_timeout();
    match tokio::time::timeout(budget, memory::load(engine, identity, model)).await {
        Ok(Ok(ctx)) => Ok(ctx),
        Ok(Err(e)) if !e.is_transient() => Err(WriteError::Rejected(e)),
        Ok(Err(_)) | Err(_) => Ok(memory::offline(engine, identity, model)),
    }
}

/// The turns, the session's activity and model, and the audit entry, for one transaction; with
/// the call's `start` on its first turn.
fn turn_write(
    identity: &Identity,
    ctx: &CallContext,
    finished: Finished,
    start: Option<CallStart>,
) -> TurnWrite {
    let session_id = ctx.session.session_id;
    // A start names a caller to upsert: the entry's caller is then the one the start stores
    // (filled in by the store), and it is a create unless the session turns out adopted.
    let starts_caller = start.as_ref().is_some_and(|s| s.phone.is_some());
    let caller_id = ctx.caller.as_ref().map(|c| c.caller_id);
    let audit = (caller_id.is_some() || starts_caller)
        .then(|| NewAudit {
            entry_key: Some(Uuid::now_v7()),
            caller_id,
            session_id: Some(session_id),
            actor: AuditActor::Engine(identity.platform),
            action: if ctx.created || start.is_some() {
                AuditAction::Create
            } else {
                AuditAction::Read
            },
            reason: "turn".into(),
            details: json!({"memory_used": true}),
            created_at: Utc::now(),
        })
        .into_iter()
        .collect();
    TurnWrite {
        session_id,
        turns: finished.turns,
        model: finished.model,
        audit,
        usage: finished.usage,
        start,
    }
}

/// The idempotency key of a call's opening line: one per session.
const OPENING_KEY: &str = "opening";

/// Stores the opening line as the session's first assistant turn unless it has one; `true`
/// when this call stored it.
pub(crate) async fn opening(
    engine: &Engine,
    session_id: Uuid,
    text: &str,
) -> Result<bool, StoreError> {
    let turn = NewTurn {
        idempotency_key: OPENING_KEY.into(),
        role: TurnRole::Assistant,
        content: text.to_owned(),
        tool_name: None,
        tool_call_id: None,
        partial: false,
        created_at: Utc::now(),
    };
    let session_id = engine.journal.resolve(session_id);
    let write = TurnWrite {
        session_id,
        turns: vec![turn],
        model: None,
        audit: Vec::new(),
        usage: Vec::new(),
        start: None,
    };
    let written = engine
        .journal
        .write(engine.store.append_turns(session_id, &write.turns), || {
            vec![Op::Turns(write.clone())]
        })
        .await?;
    // Journaled: nothing stored says it was said, so this call says it.
    Ok(match written {
        Written::Stored(inserted) => inserted > 0,
        Written::Journaled => true,
    })
}

/// The request's new messages (everything after the last assistant message) and the reply, each
/// with a key that makes a re-sent request a no-op.
fn new_turns(messages: &[ChatMessage], outcome: &Outcome) -> Vec<NewTurn> {
    let now = Utc::now();
    let start = messages
        .iter()
        .rposition(|m| m.role == Role::Assistant)
        .map_or(0, |i| i + 1);
    let mut turns: Vec<NewTurn> = messages[start..]
        .iter()
        .enumerate()
        .filter_map(|(offset, m)| {
            let role = match m.role {
                Role::User => TurnRole::User,
                Role::Tool => TurnRole::ToolResult,
                _ => return None,
            };
            let content = m.text_content();
            Some(NewTurn {
                idempotency_key: format!(
                    "m{}:{}",
                    start + offset,
                    digest(&[role.as_str(), &content])
                ),
                role,
                content,
                tool_name: None,
                tool_call_id: m.tool_call_id.clone(),
                partial: false,
                created_at: now,
            })
        })
        .collect();
    let reply_key = request_key(messages);
    for (i, (call, result)) in outcome.internal.iter().enumerate() {
        let key = format!("{reply_key}:internal{i}");
        turns.push(NewTurn {
            idempotency_key: key.clone(),
            role: TurnRole::ToolCall,
            content: call.function.arguments.clone(),
            tool_name: Some(call.function.name.clone()),
            tool_call_id: Some(call.id.clone()),
            partial: false,
            created_at: now,
        });
        turns.push(NewTurn {
            idempotency_key: format!("{key}:result"),
            role: TurnRole::ToolResult,
            content: result.content.clone(),
            tool_name: Some(call.function.name.clone()),
            tool_call_id: Some(call.id.clone()),
            partial: false,
            created_at: now,
        });
    }
    if !outcome.text.is_empty() {
        turns.push(NewTurn {
            idempotency_key: reply_key.clone(),
            role: TurnRole::Assistant,
            content: outcome.text.clone(),
            tool_name: None,
            tool_call_id: None,
            partial: outcome.partial,
            created_at: now,
        });
    }
    for (i, call) in outcome.tool_calls.calls().iter().enumerate() {
        turns.push(NewTurn {
            idempotency_key: format!("{reply_key}:tool{i}"),
            role: TurnRole::ToolCall,
            content: call.function.arguments.clone(),
            tool_name: Some(call.function.name.clone()),
            tool_call_id: Some(call.id.clone()),
            partial: outcome.partial,
            created_at: now,
        });
    }
    turns
}

/// The key of a request's reply: its position in the call and a digest of everything said so
/// far, so a re-sent request replies under the same key.
fn request_key(messages: &[ChatMessage]) -> String {
    let texts: Vec<String> = messages.iter().map(ChatMessage::text_content).collect();
    let request_digest = digest(&texts.iter().map(String::as_str).collect::<Vec<_>>());
    format!("r{}:{request_digest}", messages.len())
}

/// A short, stable digest of some strings.
fn digest(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hex::encode(&hasher.finalize()[..8])
}

/// How many assistant messages a history holds (the call cache's measure of a call's turns).
pub(crate) fn assistant_messages(messages: &[ChatMessage]) -> usize {
    messages
        .iter()
        .filter(|m| m.role == Role::Assistant)
        .count()
}
