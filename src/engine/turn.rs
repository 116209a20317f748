//! Running one turn: memory under budget, prompt, upstream with fallbacks, events, persistence.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::mpsc::Sender;
use tokio::time::timeout;

use super::memory::{self, CallContext};
use super::summary::{self, SummaryInput};
use super::{Engine, TurnEvent, TurnRequest, TurnTimings, persist, prompt};
use crate::openai::{ChatMessage, FinishReason};
use crate::upstream::{Delta, UpstreamError, UpstreamStream};

/// What the turn produced, for persistence.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Everything the caller was sent as text (apology included).
    pub text: String,
    /// Platform tool calls, complete.
    pub tool_calls: ToolCalls,
    /// The reply did not complete as the model meant it.
    pub partial: bool,
    /// The model that answered.
    pub model: Option<String>,
    /// How the turn ended.
    pub finish: Option<FinishReason>,
}

/// The client went away; stop working for it.
struct ClientGone;

pub(super) async fn run(
    engine: Engine,
    request: TurnRequest,
    tx: Sender<TurnEvent>,
    timings: Arc<TurnTimings>,
    started: Instant,
) {
    let context = read_memory(&engine, &request).await;
    let _ = timings.memory.set(started.elapsed());
    metrics::histogram!("redial_memory_read_seconds").record(started.elapsed().as_secs_f64());

    let prompt_started = Instant::now();
    let summary = context.as_ref().and_then(|c| {
        let input = SummaryInput {
            session: &c.session,
            caller: c.caller.as_ref(),
            script_lines: &[],
        };
        summary::build(&input, engine.settings.memory.summary_max_tokens)
    });
    let messages = prompt::with_summary(&request.messages, summary);
    let _ = timings.prompt.set(prompt_started.elapsed());

    let primary = primary_model(&engine, &request, context.as_ref());
    let mut outcome = Outcome::default();
    let result = reply(
        &engine,
        &request,
        &messages,
        &primary,
        &tx,
        (&timings, started),
        &mut outcome,
    )
    .await;
    if result.is_ok() {
        let finish = outcome.finish.unwrap_or(if outcome.tool_calls.is_empty() {
            FinishReason::Stop
        } else {
            FinishReason::ToolCalls
        });
        outcome.finish = Some(finish);
        let _ = tx.send(TurnEvent::Finish(finish)).await;
    } else {
        outcome.partial = true;
        metrics::counter!("redial_client_disconnects_total").increment(1);
    }
    drop(tx);
    metrics::histogram!("redial_turn_seconds").record(started.elapsed().as_secs_f64());
    persist::persist(&engine, &request, context, &outcome).await;
}

/// Loads memory within `memory.read_budget_ms`; past it, or on error, the turn goes on without.
async fn read_memory(engine: &Engine, request: &TurnRequest) -> Option<CallContext> {
    let budget = Duration::from_millis(engine.settings.memory.read_budget_ms);
    let model = request.model.as_deref();
    match timeout(budget, memory::load(engine, &request.identity, model)).await {
        Ok(Ok(context)) => Some(context),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "memory read failed; the turn continues without memory");
            metrics::counter!("redial_memory_read_failures_total", "reason" => "error")
                .increment(1);
            None
        }
        Err(_) => {
            tracing::warn!(
                ?budget,
                "memory read exceeded its budget; the turn continues without memory"
            );
            metrics::counter!("redial_memory_read_failures_total", "reason" => "timeout")
                .increment(1);
            None
        }
    }
}

/// `upstream.model` when set, else the requested model; the escalation model from a resumed
/// call's second attempt on.
fn primary_model(engine: &Engine, request: &TurnRequest, context: Option<&CallContext>) -> String {
    let upstream = &engine.settings.upstream;
    let resumed = context.is_some_and(|c| c.session.attempt >= 2);
    if resumed && !upstream.escalation_model.is_empty() {
        return upstream.escalation_model.clone();
    }
    if !upstream.model.is_empty() {
        return upstream.model.clone();
    }
    request.model.clone().unwrap_or_default()
}

/// Streams one reply to `tx`, trying fallback models until one produces a first token; ends
/// with the apology when every model fails or the stream breaks.
async fn reply(
    engine: &Engine,
    request: &TurnRequest,
    messages: &[ChatMessage],
    primary: &str,
    tx: &Sender<TurnEvent>,
    (timings, started): (&TurnTimings, Instant),
    outcome: &mut Outcome,
) -> Result<(), ClientGone> {
    let Some((model, mut stream, first)) = open(engine, request, messages, primary, tx).await?
    else {
        return apologise(engine, tx, outcome).await;
    };
    let _ = timings.upstream_first.set(started.elapsed());
    metrics::histogram!("redial_upstream_first_token_seconds")
        .record(started.elapsed().as_secs_f64());
    let _ = timings.model.set(model.clone());
    outcome.model = Some(model);
    forward(tx, first, outcome).await?;
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            () = tx.closed() => return Err(ClientGone),
        };
        match next {
            None => break,
            Some(Ok(deltas)) => forward(tx, deltas, outcome).await?,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "upstream stream broke mid-reply");
                metrics::counter!("redial_upstream_failures_total", "kind" => e.kind(), "phase" => "stream").increment(1);
                return apologise(engine, tx, outcome).await;
            }
        }
    }
    if outcome.text.trim().is_empty() && outcome.tool_calls.is_empty() {
        tracing::warn!("upstream finished without a word; the caller hears the apology");
        return apologise(engine, tx, outcome).await;
    }
    Ok(())
}

type Opened = Option<(String, UpstreamStream, Vec<Delta>)>;

/// Tries each candidate model until one streams a first event within the first-token timeout.
async fn open(
    engine: &Engine,
    request: &TurnRequest,
    messages: &[ChatMessage],
    primary: &str,
    tx: &Sender<TurnEvent>,
) -> Result<Opened, ClientGone> {
    let upstream = &engine.settings.upstream;
    let first_token = Duration::from_millis(upstream.first_token_timeout_ms);
    for (i, model) in prompt::candidates(primary, &upstream.fallback_models)
        .into_iter()
        .enumerate()
    {
        if model.is_empty() {
            continue;
        }
        let body = prompt::upstream_body(&model, messages, &request.tools, &request.params, true);
        let attempt = async {
            let mut stream = engine.llm.open_stream(&body).await?;
            match stream.next().await {
                Some(Ok(first)) => Ok((stream, first)),
                Some(Err(e)) => Err(e),
                None => Err(UpstreamError::Transport("empty stream".into())),
            }
        };
        let result = tokio::select! {
            result = timeout(first_token, attempt) => result.unwrap_or(Err(UpstreamError::Timeout("first token"))),
            () = tx.closed() => return Err(ClientGone),
        };
        match result {
            Ok((stream, first)) => {
                if i > 0 {
                    metrics::counter!("redial_upstream_fallbacks_total").increment(1);
                }
                return Ok(Some((model, stream, first)));
            }
            Err(e) => {
                tracing::warn!(model, error = %e, "upstream failed before its first token");
                metrics::counter!("redial_upstream_failures_total", "kind" => e.kind(), "phase" => "open").increment(1);
                if !e.is_retryable() {
                    break;
                }
            }
        }
    }
    Ok(None)
}

/// Sends deltas to the client, keeping what was sent.
async fn forward(
    tx: &Sender<TurnEvent>,
    deltas: Vec<Delta>,
    outcome: &mut Outcome,
) -> Result<(), ClientGone> {
    for delta in deltas {
        match delta {
            Delta::Text(text) => {
                outcome.text.push_str(&text);
                tx.send(TurnEvent::Text(text))
                    .await
                    .map_err(|_| ClientGone)?;
            }
            Delta::ToolCall(call) => {
                outcome.tool_calls.push(&call);
                tx.send(TurnEvent::ToolCall(call))
                    .await
                    .map_err(|_| ClientGone)?;
            }
            Delta::Finish(reason) => outcome.finish = Some(reason),
        }
    }
    Ok(())
}

/// Speaks the apology line and marks the reply partial.
async fn apologise(
    engine: &Engine,
    tx: &Sender<TurnEvent>,
    outcome: &mut Outcome,
) -> Result<(), ClientGone> {
    let apology = &engine.settings.upstream.apology;
    let line = if outcome.text.is_empty() || outcome.text.ends_with(' ') {
        apology.clone()
    } else {
        format!(" {apology}")
    };
    outcome.text.push_str(&line);
    outcome.partial = true;
    outcome.finish = Some(FinishReason::Stop);
    metrics::counter!("redial_apologies_total").increment(1);
    tx.send(TurnEvent::Text(line)).await.map_err(|_| ClientGone)
}

/// Platform tool calls assembled from streamed fragments, by index.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ToolCalls(Vec<Value>);

impl ToolCalls {
    /// Adds one streamed fragment.
    pub fn push(&mut self, fragment: &Value) {
        let index = fragment.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
        while self.0.len() <= index {
            self.0.push(
                json!({"id": "", "type": "function", "function": {"name": "", "arguments": ""}}),
            );
        }
        let call = &mut self.0[index];
        if let Some(id) = fragment.get("id").and_then(Value::as_str) {
            call["id"] = json!(id);
        }
        let function = fragment.get("function");
        if let Some(name) = function.and_then(|f| f.get("name")).and_then(Value::as_str) {
            call["function"]["name"] = json!(name);
        }
        if let Some(args) = function
            .and_then(|f| f.get("arguments"))
            .and_then(Value::as_str)
        {
            let joined = format!(
                "{}{args}",
                call["function"]["arguments"].as_str().unwrap_or("")
            );
            call["function"]["arguments"] = json!(joined);
        }
    }

    /// Whether no call was made.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The complete calls, in OpenAI's `message.tool_calls` shape.
    pub fn calls(&self) -> &[Value] {
        &self.0
    }
}
