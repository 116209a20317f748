//! redial's own tools: `record_answer` and `remember_caller`. The engine runs them and feeds the
//! result back to the model; the platform never sees them.

use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Engine;
use super::memory::{self, CallContext};
use super::script;
use crate::config::{AssistantSettings, FieldSettings};
use crate::journal::{AnswerWrite, Op, ProfileWrite, Written};
use crate::platforms::Identity;
use crate::storage::{Answer, AuditAction, AuditActor, CallerPatch, NewAudit, TurnWrite};
use crate::upstream::Tool;
use uuid::Uuid;

/// Confirms one scripted field.
pub const RECORD_ANSWER: &str = "record_answer";
/// Updates the caller's profile.
pub const REMEMBER_CALLER: &str = "remember_caller";

/// What the model hears when an answer can be neither stored nor journaled.
const ANSWER_NOT_SAVED: &str = "the answer could not be saved; ask the caller to repeat it";
/// What the model hears when a profile change can be neither stored nor journaled.
const PROFILE_NOT_SAVED: &str = "the profile could not be saved";

/// Whether `name` is one of redial's own tools.
pub fn is_internal(name: &str) -> bool {
    name == RECORD_ANSWER || name == REMEMBER_CALLER
}

/// The internal tools offered for this call: `record_answer` when the assistant has a script,
/// `remember_caller` when the caller is known. A platform tool of the same name wins.
pub fn definitions(
    script: &AssistantSettings,
    caller_known: bool,
    platform_tools: &[Tool],
) -> Vec<Tool> {
    let taken = |name: &str| platform_tools.iter().any(|t| t.name == name);
    let mut tools = Vec::new();
    if !script.fields.is_empty() && !taken(RECORD_ANSWER) {
        tools.push(record_answer_tool(&script.fields));
    }
    if caller_known && !taken(REMEMBER_CALLER) {
        tools.push(REMEMBER_CALLER_TOOL.clone());
    }
    tools
}

/// `remember_caller`, the same for every call: built once.
static REMEMBER_CALLER_TOOL: LazyLock<Tool> = LazyLock::new(|| Tool {
    name: REMEMBER_CALLER.into(),
    description: Some(REMEMBER_CALLER_DESCRIPTION.into()),
    parameters: Some(Arc::new(json!({"type": "object", "properties": {
        "name": {"type": "string", "description": "The caller's name as they gave it."},
        "language": {"type": "string", "description": "The caller's preferred language."},
        "note": {"type": "string", "description": "A short fact worth remembering."}
    }}))),
    strict: None,
});

const REMEMBER_CALLER_DESCRIPTION: &str = "Remember something about the caller for future calls: \
    their name, preferred language, or a short note. Call it when the caller tells you; then keep \
    talking.";

/// `record_answer` for a script's fields, built once per distinct script: every turn of every
/// call of an assistant offers the same definition.
fn record_answer_tool(fields: &[FieldSettings]) -> Tool {
    /// Most distinct scripts remembered; past it the memo starts over.
    const MAX: usize = 64;
    static BUILT: Mutex<Vec<(Vec<FieldSettings>, Tool)>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, tool)) = built.iter().find(|(script, _)| script == fields) {
        return tool.clone();
    }
    let tool = record_answer_definition(fields);
    if built.len() >= MAX {
        built.clear();
    }
    built.push((fields.to_vec(), tool.clone()));
    tool
}

fn record_answer_definition(script: &[FieldSettings]) -> Tool {
    let fields: Vec<String> = script
        .iter()
        .map(|f| {
            let required = if f.required { "required" } else { "optional" };
            let detail = if f.description.is_empty() {
                String::new()
            } else {
                format!(" ({})", f.description)
            };
            format!("- {}: {:?}{detail}, {required}", f.name, f.question)
        })
        .collect();
    let names: Vec<&str> = script.iter().map(|f| f.name.as_str()).collect();
    Tool {
        name: RECORD_ANSWER.into(),
        description: Some(format!(
            "Record the caller's answer to a scripted question as soon as they have clearly given it, then continue the conversation. Fields:\n{}",
            fields.join("\n")
        )),
        parameters: Some(Arc::new(json!({"type": "object", "properties": {
            "field": {"type": "string", "enum": names},
            "value": {"type": "string", "description": "The answer, as the caller confirmed it."}
        }, "required": ["field", "value"]}))),
        strict: None,
    }
}

/// The outcome of one internal tool call.
#[derive(Debug, Clone)]
pub struct ToolResult {
    /// The JSON text given back to the model.
    pub content: String,
    /// Whether the tool did what was asked.
    pub ok: bool,
}

impl ToolResult {
    fn ok(value: &Value) -> Self {
        Self {
            content: value.to_string(),
            ok: true,
        }
    }

    fn error(message: impl Into<String>) -> Self {
        Self {
            content: json!({"ok": false, "error": message.into()}).to_string(),
            ok: false,
        }
    }
}

/// Runs an internal tool. Writes are committed — or, while the database is away, durably
/// journaled — before this returns; the context's session and caller are updated with what was
/// written. A turn whose memory read failed gets an offline context here, so what the caller
/// confirms is still saved.
pub async fn execute(
    engine: &Engine,
    context: &mut Option<CallContext>,
    identity: &Identity,
    name: &str,
    arguments: &str,
) -> ToolResult {
    let context = context.get_or_insert_with(|| memory::offline(engine, identity, None));
    // A first turn's session is written only now that a tool needs it.
    if let Err(e) = memory::ensure_stored(engine, context).await {
        tracing::error!(error = %e, "storing the call before a tool failed");
        return ToolResult::error(match name {
            RECORD_ANSWER => ANSWER_NOT_SAVED,
            REMEMBER_CALLER => PROFILE_NOT_SAVED,
            _ => "memory is unavailable for this call right now; carry on without it",
        });
    }
    let result = match name {
        RECORD_ANSWER => record_answer(engine, context, arguments).await,
        REMEMBER_CALLER => remember_caller(engine, context, arguments).await,
        other => Err(format!("unknown tool {other:?}")),
    };
    if context.offline || engine.journal.backlog() > 0 {
        // A journaled write is reported as a change only once replayed: until then the call's
        // cached memory (from before) must not serve it.
        memory::forget(engine, identity);
    }
    result.unwrap_or_else(ToolResult::error)
}

#[derive(Deserialize)]
struct RecordAnswer {
    field: String,
    value: Value,
}

async fn record_answer(
    engine: &Engine,
    context: &mut CallContext,
    arguments: &str,
) -> Result<ToolResult, String> {
    let args: RecordAnswer = serde_json::from_str(arguments)
        .map_err(|e| format!("arguments must be {{\"field\": string, \"value\": string}}: {e}"))?;
    let value = match &args.value {
        Value::String(s) => s.trim().to_owned(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let script = engine.settings.assistant(&context.session.assistant_id);
    if script.field(&args.field).is_none() {
        let known: Vec<&str> = script.fields.iter().map(|f| f.name.as_str()).collect();
        return Err(format!(
            "unknown field {:?}; the fields are: {}",
            args.field,
            known.join(", ")
        ));
    }
    if value.is_empty() {
        return Err("the value is empty; ask the caller again".into());
    }
    within_limit(engine, "value", &value)?;
    let answer = AnswerWrite {
        session_id: engine.journal.resolve(context.session.session_id),
        field: args.field,
        value,
        required: script.required_fields(),
        at: Utc::now(),
    };
    let store = answer.apply(engine.store.as_ref());
    let written = engine
        .journal
        .write_for(context.offline, store, || vec![Op::Answer(answer.clone())])
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "record_answer failed");
            ANSWER_NOT_SAVED.to_owned()
        })?;
    let changed = match written {
        Written::Stored(outcome) => {
            context.session = outcome.session;
            outcome.changed
        }
        Written::Journaled => {
            let confirmed = Answer {
                value: answer.value,
                confirmed_at: answer.at,
            };
            context
                .session
                .answers
                .insert(answer.field.clone(), confirmed);
            true
        }
    };
    let details = json!({"field": answer.field, "changed": changed});
    audit(
        engine,
        context,
        AuditAction::Update,
        "record_answer",
        details,
    )
    .await;
    if context.offline {
        // What the call confirmed before the database went away is not known here: naming a
        // next question could make the model ask for an answer it already has.
        return Ok(ToolResult::ok(&json!({"ok": true, "field": answer.field})));
    }
    let next = script::next_question(script, &context.session.answers);
    Ok(ToolResult::ok(&json!({
        "ok": true,
        "field": answer.field,
        "complete": !script::incomplete(script, &context.session.answers),
        "next_question": next,
    })))
}

#[derive(Deserialize, Default)]
struct RememberCaller {
    name: Option<String>,
    language: Option<String>,
    note: Option<String>,
}

async fn remember_caller(
    engine: &Engine,
    context: &mut CallContext,
    arguments: &str,
) -> Result<ToolResult, String> {
    let args: RememberCaller = serde_json::from_str(arguments)
        .map_err(|e| format!("arguments must be an object with name, language or note: {e}"))?;
    let clean = |v: Option<String>| v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    let patch = CallerPatch {
        name: clean(args.name),
        language: clean(args.language),
        note: clean(args.note),
    };
    if patch == CallerPatch::default() {
        return Err("nothing to remember: give a name, language or note".into());
    }
    for (field, value) in [
        ("name", &patch.name),
        ("language", &patch.language),
        ("note", &patch.note),
    ] {
        if let Some(value) = value {
            within_limit(engine, field, value)?;
        }
    }
    let profile = ProfileWrite {
        caller_id: context.caller.as_ref().map(|c| c.caller_id),
        phone: context.phone.clone(),
        patch,
        at: Utc::now(),
    };
    if profile.caller_id.is_none() && profile.phone.is_none() {
        return Err(
            "the caller's number is unknown, so nothing can be remembered across calls".into(),
        );
    }
    let written = engine
        .journal
        .write_for(
            context.offline,
            profile.apply(engine.store.as_ref()),
            || vec![Op::Profile(profile.clone())],
        )
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "remember_caller failed");
            PROFILE_NOT_SAVED.to_owned()
        })?;
    if let Written::Stored(updated) = written {
        context.caller = Some(updated);
    }
    let patch = &profile.patch;
    let fields: Vec<&str> = [
        ("name", &patch.name),
        ("language", &patch.language),
        ("note", &patch.note),
    ]
    .iter()
    .filter(|(_, v)| v.is_some())
    .map(|(k, _)| *k)
    .collect();
    audit(
        engine,
        context,
        AuditAction::Update,
        "remember_caller",
        json!({"fields": fields}),
    )
    .await;
    Ok(ToolResult::ok(&json!({"ok": true, "remembered": fields})))
}

/// A value longer than `limits.max_value_bytes` is not stored; the model is told the limit, so
/// it can store a shorter one.
fn within_limit(engine: &Engine, field: &str, value: &str) -> Result<(), String> {
    let limit = engine.settings.limits.max_value_bytes;
    if value.len() > limit {
        return Err(format!(
            "`{field}` is {} bytes long; stored values are at most {limit} bytes \
             (limits.max_value_bytes): nothing was saved, give a shorter {field}",
            value.len()
        ));
    }
    Ok(())
}

async fn audit(
    engine: &Engine,
    context: &CallContext,
    action: AuditAction,
    reason: &str,
    details: Value,
) {
    let entry = NewAudit {
        entry_key: Some(Uuid::now_v7()),
        caller_id: context.caller.as_ref().map(|c| c.caller_id),
        session_id: Some(context.session.session_id),
        actor: AuditActor::Tool,
        action,
        reason: reason.into(),
        details,
        created_at: Utc::now(),
    };
    // Written behind the conversation, with other calls' turns; the tool's own write is
    // already committed.
    let write = TurnWrite {
        session_id: context.session.session_id,
        turns: Vec::new(),
        model: None,
        audit: vec![entry],
        usage: Vec::new(),
        start: None,
    };
    engine.writer.submit(engine.store.as_ref(), write).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str, question: &str) -> FieldSettings {
        FieldSettings {
            name: name.into(),
            question: question.into(),
            required: true,
            description: String::new(),
        }
    }

    #[test]
    fn each_script_gets_its_own_record_answer_however_often_it_is_asked() {
        let loan = [field("amount", "How much?"), field("term", "For how long?")];
        let visit = [field("day", "Which day suits you?")];
        for _ in 0..2 {
            for script in [&loan[..], &visit[..]] {
                assert_eq!(record_answer_tool(script), record_answer_definition(script));
            }
        }
        assert_ne!(record_answer_tool(&loan), record_answer_tool(&visit));
        let enumerated = record_answer_tool(&visit)
            .parameters
            .and_then(|p| p.pointer("/properties/field/enum").cloned());
        assert_eq!(enumerated, Some(json!(["day"])));
    }
}
