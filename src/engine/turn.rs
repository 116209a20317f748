//! Running one turn: memory under budget, prompt, upstream passes with fallbacks and redial's
//! own tools, events, persistence.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::Sender;
use tokio::time::timeout;

use super::live::LiveGuard;
use super::memory::{self, CallContext};
use super::persist::{self, Outcome};
use super::summary::{self, SummaryInput};
use super::tool_calls::ToolCalls;
use super::tools;
use super::{
    Engine, InternalToolCall, InternalToolResult, TurnEvent, TurnRequest, TurnTimings,
    UpstreamFailure, prompt, script,
};
use crate::config::AssistantSettings;
use crate::openai::{ChatMessage, Content, FinishReason, Role, ToolCall};
use crate::platforms::Identity;
use crate::upstream::{Event, Request, Tool, ToolCallDelta, UpstreamError, UpstreamStream, Usage};

/// The client went away; stop working for it.
pub(crate) struct ClientGone;

/// Everything a pass needs that does not change between passes.
struct TurnCtx<'a> {
    engine: &'a Engine,
    request: &'a TurnRequest,
    script: &'a AssistantSettings,
    primary: String,
    /// The static part of the prompt is the platform's; redial's summary goes after it.
    summary: Option<&'a str>,
    tx: &'a Sender<TurnEvent>,
    timings: &'a TurnTimings,
    started: Instant,
}

/// A whole turn; `live` marks the call live until the turn is persisted.
pub(super) async fn run(
    engine: Engine,
    request: TurnRequest,
    tx: Sender<TurnEvent>,
    timings: Arc<TurnTimings>,
    started: Instant,
    live: Option<LiveGuard>,
) {
    // A place in the write queue first: when the database has fallen far behind, new turns
    // wait here rather than piling up unwritten work.
    let slot = engine.writer.reserve().await;
    let (identity, context, finished) = converse(&engine, request, tx, &timings, started).await;
    metrics::histogram!("redial_turn_seconds").record(started.elapsed().as_secs_f64());
    // Only what the write needs is still held here: the request's history, the prompt and the
    // reply were freed with the conversation, so turns that wait for the database cost little.
    // Boxed: a turn waiting on the database holds this, not a streaming turn.
    Box::pin(persist::persist(
        &engine, &identity, context, finished, slot,
    ))
    .await;
    drop(live);
}

/// The conversation part of a turn: memory, prompt, upstream passes and events. Returns what
/// persisting it needs.
async fn converse(
    engine: &Engine,
    request: TurnRequest,
    tx: Sender<TurnEvent>,
    timings: &TurnTimings,
    started: Instant,
) -> (Identity, Option<CallContext>, persist::Finished) {
    let mut context = read_memory(engine, &request).await;
    let _ = timings.memory.set(started.elapsed());
    let _ = timings
        .memory_cached
        .set(context.as_ref().is_some_and(|c| c.cached));
    metrics::histogram!("redial_memory_read_seconds").record(started.elapsed().as_secs_f64());

    let prompt_started = Instant::now();
    let script = engine.settings.assistant(&request.identity.assistant_id);
    let (summary, offered) = build_prompt(engine, &request, context.as_ref(), script);
    // The platform's conversation as it came; copied only when redial's own tools add to it.
    let mut messages = Cow::Borrowed(request.messages.as_slice());
    let _ = timings.prompt.set(prompt_started.elapsed());

    let resumed = context.as_ref().is_some_and(|c| c.session.attempt >= 2);
    let ctx = TurnCtx {
        engine,
        request: &request,
        script,
        primary: prompt::primary(
            &engine.settings.upstream,
            script,
            request.model.as_deref(),
            resumed,
        ),
        summary: summary.as_deref(),
        tx: &tx,
        timings,
        started,
    };
    let mut outcome = Outcome::default();
    let result = respond(&ctx, &mut messages, &offered, &mut context, &mut outcome).await;
    if result.is_ok() {
        let finish = outcome.finish.unwrap_or(if outcome.tool_calls.is_empty() {
            FinishReason::Stop
        } else {
            FinishReason::ToolCalls
        });
        outcome.finish = Some(finish);
        if let Some(usage) = outcome.total_usage() {
            let _ = tx.send(TurnEvent::Usage(usage)).await;
        }
        let _ = tx.send(TurnEvent::Finish(finish)).await;
    } else {
        outcome.partial = true;
        metrics::counter!("redial_client_disconnects_total").increment(1);
    }
    let finished = persist::Finished::of(&request.messages, outcome);
    (request.identity, context, finished)
}

/// The state summary (when memory was read) and the tools offered (platform's and redial's).
fn build_prompt(
    engine: &Engine,
    request: &TurnRequest,
    context: Option<&CallContext>,
    script: &AssistantSettings,
) -> (Option<String>, Vec<Tool>) {
    let Some(context) = context else {
        // Without memory (the read failed) the model still gets redial's tools: what the caller
        // confirms is saved, or journaled while the database is away.
        let mut offered = request.tools.clone();
        let identified = request.identity.caller.is_some();
        offered.extend(tools::definitions(script, identified, &request.tools));
        return (None, offered);
    };
    let script_lines = script::lines(&context.session, script);
    let input = SummaryInput {
        session: &context.session,
        caller: context.caller.as_ref(),
        identified: context.identified,
        script_lines: &script_lines,
    };
    let summary = summary::build(&input, engine.settings.memory.summary_max_tokens);
    let mut offered = request.tools.clone();
    offered.extend(tools::definitions(
        script,
        context.identified,
        &request.tools,
    ));
    (summary, offered)
}

/// Loads memory within `memory.read_budget_ms`; past it, or on error, the turn goes on without.
///
/// The read runs as a task of its own that is left to finish when the budget runs out, rather
/// than being dropped mid-query: a query cancelled halfway costs its pooled connection (it must
/// be closed and reopened), and under load that churn would slow every later read.
async fn read_memory(engine: &Engine, request: &TurnRequest) -> Option<CallContext> {
    let budget = Duration::from_millis(engine.settings.memory.read_budget_ms);
    let (task_engine, identity) = (engine.clone(), request.identity.clone());
    let model = request.model.clone();
    let assistant = persist::assistant_messages(&request.messages);
    let mut read = Box::pin(async move {
        memory::load_for_turn(&task_engine, &identity, model.as_deref(), assistant).await
    });
    // Polled here while within budget (no hand-off to another task on the common path);
    // past it, handed to a task of its own to finish.
    let result = match timeout(budget, &mut read).await {
        Ok(result) => Ok(result),
        Err(elapsed) => {
            engine.tasks.spawn(async move {
                let _ = read.await;
            });
            Err(elapsed)
        }
    };
    match result {
        Ok(Ok(context)) => Some(context),
        Ok(Err(e)) => {
            if engine.read_warnings.elapsed_enough() {
                tracing::warn!(error = %e, "memory read failed; the turn continues without memory (logged once every 10 s; see redial_memory_read_failures_total)");
            }
            metrics::counter!("redial_memory_read_failures_total", "reason" => "error")
                .increment(1);
            None
        }
        Err(_) => {
            if engine.read_warnings.elapsed_enough() {
                tracing::warn!(
                    ?budget,
                    "memory read exceeded its budget; the turn continues without memory (logged \
                     once every 10 s; see redial_memory_read_failures_total)"
                );
            }
            metrics::counter!("redial_memory_read_failures_total", "reason" => "timeout")
                .increment(1);
            None
        }
    }
}

/// Upstream passes until the model speaks or calls a platform tool; redial's own tool calls are
/// run between passes, at most `upstream.max_tool_rounds` times.
async fn respond(
    ctx: &TurnCtx<'_>,
    messages: &mut Cow<'_, [ChatMessage]>,
    offered: &[Tool],
    context: &mut Option<CallContext>,
    outcome: &mut Outcome,
) -> Result<(), ClientGone> {
    for _ in 0..ctx.engine.settings.upstream.max_tool_rounds {
        let text_before = outcome.text.len();
        let internal = pass(ctx, messages, offered, outcome).await?;
        if internal.is_empty() {
            return Ok(());
        }
        let said = outcome.text[text_before..].to_owned();
        let messages = messages.to_mut();
        messages.push(ChatMessage {
            role: Role::Assistant,
            content: (!said.is_empty()).then_some(Content::Text(said)),
            name: None,
            tool_calls: Some(internal.clone()),
            tool_call_id: None,
            function_call: None,
        });
        for call in internal {
            Box::pin(run_internal_tool(ctx, messages, context, outcome, call)).await?;
        }
    }
    // The bound: the model keeps calling tools. The caller still hears something useful.
    metrics::counter!("redial_tool_round_limit_total").increment(1);
    let answers = context
        .as_ref()
        .map(|c| c.session.answers.clone())
        .unwrap_or_default();
    let line = script::next_question(ctx.script, &answers).map_or_else(
        || ctx.engine.settings.upstream.apology.clone(),
        str::to_owned,
    );
    Box::pin(speak(ctx, outcome, &line)).await
}

async fn run_internal_tool(
    ctx: &TurnCtx<'_>,
    messages: &mut Vec<ChatMessage>,
    context: &mut Option<CallContext>,
    outcome: &mut Outcome,
    call: ToolCall,
) -> Result<(), ClientGone> {
    let event = TurnEvent::InternalToolCall(Box::new(InternalToolCall {
        id: call.id.clone(),
        name: call.function.name.clone(),
        arguments: call.function.arguments.clone(),
    }));
    ctx.tx.send(event).await.map_err(|_| ClientGone)?;
    let result = tools::execute(
        ctx.engine,
        context,
        &ctx.request.identity,
        &call.function.name,
        &call.function.arguments,
    )
    .await;
    metrics::counter!("redial_internal_tool_calls_total", "tool" => call.function.name.clone(), "ok" => result.ok.to_string()).increment(1);
    let event = TurnEvent::InternalToolResult(Box::new(InternalToolResult {
        id: call.id.clone(),
        content: result.content.clone(),
        ok: result.ok,
    }));
    ctx.tx.send(event).await.map_err(|_| ClientGone)?;
    let mut message = ChatMessage::text(Role::Tool, result.content.clone());
    message.tool_call_id = Some(call.id.clone());
    messages.push(message);
    outcome.internal.push((call, result));
    Ok(())
}

/// One upstream pass: text and platform tool calls stream to the client as they arrive;
/// redial's own tool calls are collected and returned.
async fn pass(
    ctx: &TurnCtx<'_>,
    messages: &[ChatMessage],
    offered: &[Tool],
    outcome: &mut Outcome,
) -> Result<Vec<ToolCall>, ClientGone> {
    // Boxed: opening (candidates, fallbacks, the first-token timeout) is over before the
    // stream is read, so the streaming turn does not carry its state.
    let (model, mut stream, first) = match Box::pin(open(ctx, messages, offered)).await? {
        Ok(opened) => opened,
        Err(e) => return Box::pin(fail(ctx, outcome, e)).await.map(|()| Vec::new()),
    };
    let _ = ctx.timings.upstream_first.set(ctx.started.elapsed());
    metrics::histogram!("redial_upstream_first_token_seconds")
        .record(ctx.started.elapsed().as_secs_f64());
    let _ = ctx.timings.model.set(model.clone());
    outcome.model = Some(model.clone());
    let mut router = ToolRouter::default();
    router.forward(ctx, first, outcome).await?;
    // Made once: it registers with the channel on its first poll and is only checked after, so
    // a chunk costs no registration.
    let mut gone = std::pin::pin!(ctx.tx.closed());
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            () = &mut gone => {
                router.record_usage(ctx, &model, outcome);
                return Err(ClientGone);
            }
        };
        match next {
            None => break,
            Some(Ok(events)) => router.forward(ctx, events, outcome).await?,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "upstream stream broke mid-reply");
                metrics::counter!("redial_upstream_failures_total", "kind" => e.kind(), "phase" => "stream").increment(1);
                router.record_usage(ctx, &model, outcome);
                return Box::pin(fail(ctx, outcome, Some(e)))
                    .await
                    .map(|()| Vec::new());
            }
        }
    }
    router.record_usage(ctx, &model, outcome);
    if router.platform_called {
        return Ok(Vec::new());
    }
    let internal = router.internal.into_calls();
    if internal.is_empty() && outcome.text.trim().is_empty() {
        tracing::warn!("upstream finished without a word; the caller hears the apology");
        Box::pin(apologise(ctx, outcome)).await?;
    }
    Ok(internal)
}

/// The model that answered, its stream and first deltas; or the last failure (`None` when there
/// was no model to ask).
type Opened = Result<(String, UpstreamStream, Vec<Event>), Option<UpstreamError>>;

/// Tries each candidate model until one streams a first event within the first-token timeout.
async fn open(
    ctx: &TurnCtx<'_>,
    messages: &[ChatMessage],
    offered: &[Tool],
) -> Result<Opened, ClientGone> {
    let upstream = &ctx.engine.settings.upstream;
    let first_token = Duration::from_millis(upstream.first_token_timeout_ms);
    let fallbacks = prompt::fallbacks(upstream, ctx.script);
    let request = Request {
        messages,
        summary: ctx.summary,
        tools: offered,
        params: &ctx.request.params,
        stream: true,
    };
    let mut failure = None;
    for (i, model) in prompt::candidates(&ctx.primary, fallbacks)
        .into_iter()
        .enumerate()
    {
        if model.is_empty() {
            continue;
        }
        let attempt = async {
            let mut stream = ctx.engine.llm.open_stream(&model, &request).await?;
            match stream.next().await {
                Some(Ok(first)) => Ok((stream, first)),
                Some(Err(e)) => Err(e),
                None => Err(UpstreamError::Transport("empty stream".into())),
            }
        };
        let result = tokio::select! {
            result = timeout(first_token, attempt) => result.unwrap_or(Err(UpstreamError::Timeout("first token"))),
            () = ctx.tx.closed() => return Err(ClientGone),
        };
        match result {
            Ok((stream, first)) => {
                if i > 0 {
                    metrics::counter!("redial_upstream_fallbacks_total").increment(1);
                }
                return Ok(Ok((model, stream, first)));
            }
            Err(e) => {
                let provider = ctx.engine.llm.provider_of(&model);
                tracing::warn!(model, provider, error = %e, "upstream failed before its first token");
                metrics::counter!("redial_upstream_failures_total", "kind" => e.kind(), "phase" => "open").increment(1);
                let retryable = e.is_retryable();
                failure = Some(e);
                if !retryable {
                    break;
                }
            }
        }
    }
    Ok(Err(failure))
}

/// Sends tool-call fragments where they belong: redial's own are kept, the platform's pass
/// through (renumbered so the platform sees indices 0, 1, …), preceded by the filler (see
/// [`filler`]) when the caller has heard nothing yet — except before deferred tools, which the
/// platform runs after the reply, and tools the platform announces itself; redial's own get the
/// filler too when the request asks for a holding line.
#[derive(Default)]
struct ToolRouter {
    /// Upstream index → `Some(platform index)` or `None` for an internal call.
    routes: HashMap<u64, Option<u32>>,
    internal: ToolCalls,
    platform_called: bool,
    /// The latest usage the stream reported (a stream's last report is its total).
    usage: Option<Usage>,
}

impl ToolRouter {
    async fn forward(
        &mut self,
        ctx: &TurnCtx<'_>,
        events: Vec<Event>,
        outcome: &mut Outcome,
    ) -> Result<(), ClientGone> {
        for event in events {
            match event {
                Event::Text(text) => {
                    outcome.text.push_str(&text);
                    ctx.tx
                        .send(TurnEvent::Text(text))
                        .await
                        .map_err(|_| ClientGone)?;
                }
                Event::ToolCall(fragment) => self.route(ctx, fragment, outcome).await?,
                Event::Finish(reason) => outcome.finish = Some(reason),
                Event::Usage(usage) => self.usage = Some(usage),
            }
        }
        Ok(())
    }

    /// Adds the pass's usage to the turn's, and counts it (tokens and cost by model).
    fn record_usage(&mut self, ctx: &TurnCtx<'_>, model: &str, outcome: &mut Outcome) {
        let Some(usage) = self.usage.take() else {
            return;
        };
        outcome.add_usage(model, usage);
        super::usage::count(&ctx.engine.settings, model, usage);
    }

    async fn route(
        &mut self,
        ctx: &TurnCtx<'_>,
        mut fragment: ToolCallDelta,
        outcome: &mut Outcome,
    ) -> Result<(), ClientGone> {
        let index = u64::from(fragment.index);
        let next_platform = self.routes.values().flatten().count() as u32;
        // Only a call's first fragment carries its name.
        let name = fragment.name.clone().unwrap_or_default();
        let name = name.as_str();
        let route = *self
            .routes
            .entry(index)
            .or_insert_with(|| (!tools::is_internal(name)).then_some(next_platform));
        let silent = outcome.text.trim().is_empty();
        let Some(platform_index) = route else {
            if let Some(filler) = filler(ctx)
                && silent
                && ctx.request.hold_before_internal_tools
            {
                // The trailing space keeps the model's follow-up from running into the line.
                let line = format!("{} ", filler.trim_end());
                speak(ctx, outcome, &line).await?;
            }
            self.internal.push(&fragment);
            return Ok(());
        };
        let request = ctx.request;
        let platform_speaks = request.deferred_tools.iter().any(|t| t == name)
            || request.announced_tools.iter().any(|t| t == name);
        if let Some(filler) = filler(ctx)
            && !self.platform_called
            && silent
            && !platform_speaks
        {
            speak(ctx, outcome, filler).await?;
        }
        self.platform_called = true;
        fragment.index = platform_index;
        outcome.tool_calls.push(&fragment);
        ctx.tx
            .send(TurnEvent::ToolCall(Box::new(fragment)))
            .await
            .map_err(|_| ClientGone)
    }
}

/// The assistant's filler, when this turn may speak it: only to voice platforms (a generic
/// OpenAI client would get it as content beside the tool call, where nobody asked for it), and
/// not when the assistant turned it off with `filler = ""`.
fn filler<'a>(ctx: &TurnCtx<'a>) -> Option<&'a str> {
    let filler = ctx.script.filler.as_str();
    (ctx.request.identity.is_voice() && !filler.trim().is_empty()).then_some(filler)
}

/// Speaks a line of redial's own (filler, bound line).
async fn speak(ctx: &TurnCtx<'_>, outcome: &mut Outcome, line: &str) -> Result<(), ClientGone> {
    let line = if outcome.text.is_empty() || outcome.text.ends_with(' ') {
        line.to_owned()
    } else {
        format!(" {line}")
    };
    outcome.text.push_str(&line);
    ctx.tx
        .send(TurnEvent::Text(line))
        .await
        .map_err(|_| ClientGone)
}

/// The upstream failed: a voice platform's caller hears the apology (soft for callers); any
/// other client is told, with the upstream's own status (loud for operators: a wrong key is a
/// 401 in the client's logs, not a 200 that reads like a reply).
async fn fail(
    ctx: &TurnCtx<'_>,
    outcome: &mut Outcome,
    error: Option<UpstreamError>,
) -> Result<(), ClientGone> {
    if ctx.request.identity.is_voice() {
        return apologise(ctx, outcome).await;
    }
    outcome.partial = true;
    outcome.finish = Some(FinishReason::Stop);
    let failure = error.map_or_else(
        || UpstreamFailure {
            status: 502,
            message: "there was no model to ask upstream".into(),
            kind: "no_model",
        },
        |e| UpstreamFailure {
            status: e.client_status(),
            message: e
                .hint()
                .map_or_else(|| e.to_string(), |hint| format!("{e} ({hint})")),
            kind: e.kind(),
        },
    );
    metrics::counter!("redial_upstream_errors_relayed_total", "kind" => failure.kind).increment(1);
    ctx.tx
        .send(TurnEvent::UpstreamFailed(Box::new(failure)))
        .await
        .map_err(|_| ClientGone)
}

/// Speaks the apology line and marks the reply partial.
async fn apologise(ctx: &TurnCtx<'_>, outcome: &mut Outcome) -> Result<(), ClientGone> {
    outcome.partial = true;
    outcome.finish = Some(FinishReason::Stop);
    metrics::counter!("redial_apologies_total").increment(1);
    speak(ctx, outcome, &ctx.engine.settings.upstream.apology).await
}
