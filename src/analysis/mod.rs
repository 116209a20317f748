//! Post-call work, run from the durable job queue: closing the session with what the platform
//! reported, storing the platform's own analysis, and redial's analysis (summary, urgency,
//! action, sentiment), which updates the caller for their next call.

mod job;
mod result;
pub mod worker;

use chrono::Utc;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::engine::Engine;
use crate::openai::{ChatMessage, Role};
use crate::platforms::{EventKind, WebhookEvent};
use crate::storage::{
    AnalysisSource, AuditAction, AuditActor, CallSession, CallerAnalysisUpdate, CloseSession,
    NewAnalysis, NewAudit, NewJob, SessionStatus, TurnRole,
};
use crate::upstream::{Params, Request};

pub use job::{AnalyzeCall, JobPayload, UnreadableJob};
pub use result::{CallAnalysis, SENTIMENTS, instructions, parse};

/// Attempts at a valid analysis within one job attempt before the job is retried later.
const VALID_REPLY_ATTEMPTS: usize = 3;

/// A job failed because of the configuration, not a passing fault (no model to analyse with,
/// the upstream refusing redial's key or the model): retrying before the configuration changes
/// cannot help, so the worker parks the job with this reason until the next start.
#[derive(Debug, thiserror::Error)]
#[error("needs configuration: {0}")]
pub struct NeedsConfiguration(pub String);

/// Whether `error` (or anything in its chain) is a [`NeedsConfiguration`].
pub fn needs_configuration(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(<dyn std::error::Error>::is::<NeedsConfiguration>)
}

/// The job that processes `event` (enqueued with the event, in one transaction).
pub fn job_for(event: &WebhookEvent, max_attempts: i32) -> Option<NewJob> {
    if !matches!(
        event.kind,
        EventKind::CallEnded | EventKind::PlatformAnalysis
    ) {
        return None;
    }
    event.call_key.as_ref()?;
    JobPayload::CallEvent(Box::new(event.clone()))
        .job(max_attempts)
        .ok()
}

/// Processes one call event: attach the caller it names to a session stored without one, close
/// the session (a call another call already resumed is closed too: the resumption stands), keep
/// the platform's analysis, enqueue the analysis. Idempotent: every step may run again after a crash or a retry without a second
/// effect.
pub async fn process_call_event(engine: &Engine, event: &WebhookEvent) -> anyhow::Result<()> {
    let Some(identity) = event.identity(&engine.settings().memory.default_region) else {
        return Ok(());
    };
    let mut context = engine.load_call_context(&identity).await?;
    if let (None, Some(caller)) = (context.session.caller_id, &identity.caller) {
        // The call carried no caller id (ElevenLabs without header mappings); the platform's
        // report does: the caller is known from now on, and their next call is recognised.
        context.session = engine
            .store()
            .attach_caller(context.session.session_id, caller, Utc::now())
            .await?;
        tracing::info!(session_id = %context.session.session_id, "the webhook named the call's caller");
    }
    if let Some(ended) = &event.ended {
        let close = CloseSession {
            status: SessionStatus::Ended,
            ended_reason: ended.ended_reason.clone(),
            ended_at: ended.ended_at.unwrap_or_else(Utc::now),
            details: json!({
                "platform_started_at": ended.started_at,
                "duration_ms": ended.duration_ms,
                "cost": ended.cost,
                "transcript": ended.transcript,
                "messages": ended.messages,
                "recording_urls": ended.recording_urls,
                "platform_summary": ended.platform_summary,
            }),
        };
        context.session = engine
            .store()
            .close_session(context.session.session_id, &close)
            .await?;
        if let Some(caller_id) = context.session.caller_id {
            let entry = NewAudit {
                entry_key: Some(Uuid::now_v7()),
                caller_id: Some(caller_id),
                session_id: Some(context.session.session_id),
                actor: AuditActor::Webhook(event.platform),
                action: AuditAction::Update,
                reason: "call-ended webhook".into(),
                details: json!({"event_type": event.event_type}),
                created_at: Utc::now(),
            };
            engine.store().append_audit(&[entry]).await?;
        }
    }
    if let Some(platform) = &event.analysis {
        let analysis = NewAnalysis {
            analysis_id: Uuid::now_v7(),
            session_id: context.session.session_id,
            source: AnalysisSource::Platform(event.platform),
            summary: platform.summary.clone().unwrap_or_default(),
            urgency: None,
            action: None,
            sentiment: platform.sentiment.clone(),
            raw: json!({"successful": platform.successful, "analysis": platform.raw}),
            model: None,
            created_at: Utc::now(),
        };
        engine.store().save_analysis(&analysis, None).await?;
    }
    let analyse = JobPayload::AnalyzeCall(AnalyzeCall {
        session_id: context.session.session_id,
    });
    let job = analyse.job(engine.settings().analysis.max_attempts)?;
    engine.store().enqueue_job(&job).await?;
    Ok(())
}

/// redial's own analysis of the session a [`JobPayload::AnalyzeCall`] names, once per session.
pub async fn analyse_session(engine: &Engine, job: &AnalyzeCall) -> anyhow::Result<()> {
    let session_id = job.session_id;
    let Some(session) = engine.store().get_session(session_id).await? else {
        tracing::warn!(%session_id, "the session to analyse no longer exists");
        return Ok(());
    };
    analyse(engine, &session).await
}

async fn analyse(engine: &Engine, session: &CallSession) -> anyhow::Result<()> {
    let existing = engine.store().list_analyses(session.session_id).await?;
    if existing.iter().any(|a| a.source == AnalysisSource::Redial) {
        return Ok(());
    }
    let Some(transcript) = transcript(engine, session).await? else {
        tracing::info!(session_id = %session.session_id, "no transcript; nothing to analyse");
        return Ok(());
    };
    let settings = engine.settings();
    let model = [&settings.analysis.model, &settings.upstream.model]
        .into_iter()
        .find(|m| !m.is_empty())
        .cloned()
        .or_else(|| session.model.clone())
        .ok_or_else(|| {
            NeedsConfiguration(
                "no model to analyse the call with (its turns named none): set analysis.model \
                 or upstream.model; the job runs at the next start"
                    .into(),
            )
        })?;
    let analysis = ask(engine, &model, &transcript).await?;
    // What the call's turns used and cost (with `[prices]`), kept with the analysis.
    let usage = engine.store().call_usage(session.session_id).await?;
    let cost = crate::engine::usage::call_cost(settings, &usage);
    let caller_update = session.caller_id.map(|caller_id| CallerAnalysisUpdate {
        caller_id,
        summary: analysis.summary.clone(),
        sentiment: Some(analysis.sentiment.clone()),
        action: (analysis.action != "none").then(|| analysis.action.clone()),
        now: Utc::now(),
    });
    let record = NewAnalysis {
        analysis_id: Uuid::now_v7(),
        session_id: session.session_id,
        source: AnalysisSource::Redial,
        summary: analysis.summary.clone(),
        urgency: Some(analysis.urgency),
        action: Some(analysis.action.clone()),
        sentiment: Some(analysis.sentiment.clone()),
        raw: json!({"summary": analysis.summary, "urgency": analysis.urgency, "action": analysis.action, "sentiment": analysis.sentiment, "usage": usage, "cost_usd": cost}),
        model: Some(model),
        created_at: Utc::now(),
    };
    let recorded = engine
        .store()
        .save_analysis(&record, caller_update.as_ref())
        .await?;
    if let (true, Some(caller_id)) = (recorded.is_new(), session.caller_id) {
        let entry = NewAudit {
            entry_key: Some(Uuid::now_v7()),
            caller_id: Some(caller_id),
            session_id: Some(session.session_id),
            actor: AuditActor::AnalysisWorker,
            action: AuditAction::Update,
            reason: "post-call analysis".into(),
            details: json!({"fields": ["last_summary", "last_sentiment", "last_action"]}),
            created_at: Utc::now(),
        };
        engine.store().append_audit(&[entry]).await?;
    }
    metrics::counter!("redial_analyses_total").increment(1);
    Ok(())
}

/// The platform's transcript when it sent one, else the stored turns.
async fn transcript(engine: &Engine, session: &CallSession) -> anyhow::Result<Option<String>> {
    if let Some(text) = session.details.get("transcript").and_then(Value::as_str)
        && !text.trim().is_empty()
    {
        return Ok(Some(text.to_owned()));
    }
    let turns = engine.store().list_turns(session.session_id).await?;
    let lines: Vec<String> = turns
        .iter()
        .filter_map(|t| match t.role {
            TurnRole::User => Some(format!("Caller: {}", t.content)),
            TurnRole::Assistant => Some(format!("Agent: {}", t.content)),
            _ => None,
        })
        .collect();
    Ok((!lines.is_empty()).then(|| lines.join("\n")))
}

/// Asks the upstream for the analysis, retrying on invalid replies.
async fn ask(engine: &Engine, model: &str, transcript: &str) -> anyhow::Result<CallAnalysis> {
    let settings = engine.settings();
    let timeout = std::time::Duration::from_secs(settings.analysis.timeout_secs);
    let mut messages = vec![
        ChatMessage::text(Role::System, instructions(&settings.analysis.actions)),
        ChatMessage::text(Role::User, format!("Transcript:\n{transcript}")),
    ];
    let params = Params {
        temperature: Some(0.0),
        ..Params::default()
    };
    let mut last_error = String::new();
    for _ in 0..VALID_REPLY_ATTEMPTS {
        let request = Request {
            messages: &messages,
            summary: None,
            tools: &[],
            params: &params,
            stream: false,
        };
        let reply = engine
            .llm()
            .complete(model, &request, timeout)
            .await
            .map_err(|e| match e.hint() {
                Some(hint) => anyhow::Error::new(NeedsConfiguration(format!("{e} ({hint})"))),
                None => anyhow::Error::new(e),
            })?;
        if let Some(usage) = reply.usage {
            crate::engine::usage::count(settings, model, usage);
        }
        let text = reply.text;
        match parse(&text, &settings.analysis.actions) {
            Ok(analysis) => return Ok(analysis),
            Err(e) => {
                tracing::warn!(error = %e, "invalid analysis reply; asking again");
                metrics::counter!("redial_analysis_invalid_replies_total").increment(1);
                messages.push(ChatMessage::text(Role::Assistant, text));
                messages.push(ChatMessage::text(
                    Role::User,
                    format!("That reply was invalid: {e}. Reply with the JSON object only."),
                ));
                last_error = e;
            }
        }
    }
    anyhow::bail!("no valid analysis after {VALID_REPLY_ATTEMPTS} replies: {last_error}")
}
