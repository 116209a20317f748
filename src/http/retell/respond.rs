//! One response: a Retell request becomes an engine turn, the turn's events become `response`
//! and tool frames under the request's `response_id`, and a guard makes sure the response is
//! always closed with `content_complete: true` unless a newer request superseded it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};

use serde_json::json;

use super::outbox::{Closed, Outbox};
use super::protocol::{ResponseFrame, ResponseRequest, ServerEvent, Utterance};
use crate::config::Settings;
use crate::engine::{
    Engine, InternalToolCall, InternalToolResult, ToolCalls, TurnEvent, TurnRequest,
};
use crate::openai::{ChatMessage, Role};
use crate::platforms::Identity;
use crate::upstream::Tool;

/// The tool that hangs up: offered to the model on Retell calls, mapped to `end_call: true`.
pub(super) const END_CALL: &str = "end_call";

/// Added after the transcript of a `reminder_required`, so the model nudges the caller.
const REMINDER_NOTE: &str = "The caller has been silent for a while. Say one short line to \
     check that they are still there, or briefly repeat your last question.";

/// What Retell asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ask {
    /// `response_required`: the caller spoke.
    Response,
    /// `reminder_required`: the caller has been quiet.
    Reminder,
}

/// The engine turn for a Retell request: the assistant's `system_prompt`, the transcript
/// (agent → assistant, user → user), and `end_call` as the only platform tool. Retell cannot run
/// other platform tools, and sends no model or sampling parameters (`upstream.model` decides).
pub(super) fn turn_request(
    settings: &Settings,
    identity: &Identity,
    request: &ResponseRequest,
    ask: Ask,
) -> TurnRequest {
    let assistant = settings.assistant(&identity.assistant_id);
    let mut messages = Vec::with_capacity(request.transcript.len() + 2);
    if !assistant.system_prompt.trim().is_empty() {
        messages.push(ChatMessage::text(
            Role::System,
            assistant.system_prompt.clone(),
        ));
    }
    messages.extend(request.transcript.iter().filter_map(Utterance::to_message));
    if ask == Ask::Reminder {
        messages.push(ChatMessage::text(Role::System, REMINDER_NOTE));
    }
    TurnRequest {
        identity: identity.clone(),
        messages,
        tools: vec![end_call_tool()],
        model: None,
        params: Box::default(),
        deferred_tools: vec![END_CALL.to_owned()],
        announced_tools: Vec::new(),
        hold_before_internal_tools: true,
    }
}

fn end_call_tool() -> Tool {
    static END_CALL_TOOL: LazyLock<Tool> = LazyLock::new(|| Tool {
        name: END_CALL.into(),
        description: Some(END_CALL_DESCRIPTION.into()),
        parameters: Some(Arc::new(json!({"type": "object", "properties": {}}))),
        strict: None,
    });
    END_CALL_TOOL.clone()
}

const END_CALL_DESCRIPTION: &str = "Hang up the phone call. Use it only when the conversation is \
    over (the caller said goodbye or asked to end the call), after saying a short goodbye in the \
    same reply.";

/// Runs the turn and streams it as frames of the guarded response; closes the response at the
/// end, whatever the end. Dropping this future (supersession, hang-up) drops the turn's
/// receiver, which stops the engine.
pub(super) async fn run(
    engine: Engine,
    turn: TurnRequest,
    guard: ResponseGuard,
    hung_up: Arc<AtomicBool>,
) {
    let response_id = guard.response_id;
    let mut handle = engine.start_turn(turn);
    let mut platform_calls = ToolCalls::default();
    let mut finished = false;
    while let Some(event) = handle.recv().await {
        let sent = match event {
            TurnEvent::Text(text) => guard.content(text).await,
            TurnEvent::ToolCall(delta) => {
                platform_calls.push(&delta);
                Ok(())
            }
            TurnEvent::InternalToolCall(call) => {
                let InternalToolCall {
                    id,
                    name,
                    arguments,
                } = *call;
                let event = ServerEvent::ToolCallInvocation {
                    tool_call_id: id,
                    name,
                    arguments,
                };
                guard.event(event).await
            }
            TurnEvent::InternalToolResult(result) => {
                let InternalToolResult { id, content, ok } = *result;
                let event = ServerEvent::ToolCallResult {
                    tool_call_id: id,
                    content,
                    successful: ok,
                };
                guard.event(event).await
            }
            // Retell has no place for usage; it is stored with the turn.
            TurnEvent::Usage(_) => Ok(()),
            TurnEvent::Finish(_) => {
                finished = true;
                break;
            }
            // Only non-voice clients are told of an upstream failure; Retell callers hear the
            // apology. Should one arrive, the response still completes.
            TurnEvent::UpstreamFailed(failure) => {
                tracing::error!(response_id, status = failure.status, "{}", failure.message);
                finished = true;
                break;
            }
        };
        if sent.is_err() {
            return;
        }
    }
    if !finished {
        tracing::error!(
            response_id,
            "the turn ended without a finish event; closing the response"
        );
    }
    let end_call = ends_call(&platform_calls);
    if end_call {
        hung_up.store(true, Ordering::Release);
    }
    guard.complete(end_call).await;
    let timings = &handle.timings;
    tracing::info!(
        response_id,
        model = timings.model.get().map(String::as_str),
        first_token_ms = timings.upstream_first.get().map(|d| d.as_millis()),
        total_ms = handle.started.elapsed().as_millis(),
        end_call,
        "response complete"
    );
}

/// Whether the model called `end_call`. Other platform tools cannot run on Retell (none is
/// offered); a model that invents one is logged.
fn ends_call(calls: &ToolCalls) -> bool {
    let mut end = false;
    for call in calls.calls() {
        match call.function.name.as_str() {
            END_CALL => end = true,
            name => tracing::warn!(name, "the model called a tool Retell cannot run; ignored"),
        }
    }
    end
}

/// Sends the frames of one response and, when dropped unfinished (engine error, panic), still
/// closes it — unless a newer request has superseded it, in which case nothing more is sent.
#[derive(Debug)]
pub(super) struct ResponseGuard {
    response_id: i64,
    epoch: u64,
    outbox: Outbox,
    closed: bool,
}

impl ResponseGuard {
    /// Guards the response `response_id`, started at `epoch` of `outbox`.
    pub(super) fn new(response_id: i64, epoch: u64, outbox: Outbox) -> Self {
        Self {
            response_id,
            epoch,
            outbox,
            closed: false,
        }
    }

    async fn content(&self, text: String) -> Result<(), Closed> {
        self.event(ServerEvent::response(self.response_id, text, false))
            .await
    }

    async fn event(&self, event: ServerEvent) -> Result<(), Closed> {
        self.outbox.send_for(self.epoch, event).await
    }

    fn last_frame(&self, end_call: bool) -> ServerEvent {
        ServerEvent::Response(ResponseFrame {
            response_id: self.response_id,
            content: String::new(),
            content_complete: true,
            end_call,
        })
    }

    /// Sends the closing frame (`content_complete: true`, with `end_call` when asked).
    async fn complete(mut self, end_call: bool) {
        self.closed = true;
        let _ = self.event(self.last_frame(end_call)).await;
    }
}

impl Drop for ResponseGuard {
    fn drop(&mut self) {
        if self.closed || !self.outbox.is_current(self.epoch) {
            return;
        }
        tracing::warn!(
            response_id = self.response_id,
            "a response ended without finishing; closing it"
        );
        let _ = self.outbox.try_send_for(self.epoch, self.last_frame(false));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platforms::Platform;

    fn identity() -> Identity {
        Identity {
            platform: Platform::Retell,
            call_key: "c1".into(),
            ephemeral: false,
            caller: None,
            assistant_id: "agent_1".into(),
        }
    }

    fn utterance(role: &str, content: &str) -> Utterance {
        Utterance {
            role: role.into(),
            content: Some(content.into()),
        }
    }

    #[test]
    fn the_transcript_becomes_the_conversation_after_the_system_prompt() {
        let mut settings = Settings::default();
        settings.assistants.push(crate::config::AssistantSettings {
            id: "agent_1".into(),
            system_prompt: "You are Ava.".into(),
            ..crate::config::AssistantSettings::default()
        });
        let request = ResponseRequest {
            response_id: 1,
            transcript: vec![
                utterance("agent", "Hi!"),
                utterance("user", "I need a loan."),
            ],
        };

        let turn = turn_request(&settings, &identity(), &request, Ask::Response);

        let roles: Vec<_> = turn.messages.iter().map(|m| m.role).collect();
        assert_eq!(roles, [Role::System, Role::Assistant, Role::User]);
        assert_eq!(turn.messages[0].text_content(), "You are Ava.");
        assert_eq!(turn.tools[0].name, END_CALL);
        assert_eq!(turn.deferred_tools, [END_CALL]);
        assert!(turn.hold_before_internal_tools && turn.model.is_none());

        let reminder = turn_request(&Settings::default(), &identity(), &request, Ask::Reminder);
        assert_eq!(reminder.messages.len(), 3, "no prompt configured, one note");
        assert_eq!(reminder.messages[2].role, Role::System);
    }

    #[test]
    fn a_dropped_guard_closes_its_response_unless_superseded() {
        let (outbox, queue) = Outbox::new();
        let first = outbox.supersede();
        drop(ResponseGuard::new(1, first, outbox.clone()));
        let second = outbox.supersede();
        let superseded = ResponseGuard::new(2, second, outbox.clone());
        outbox.supersede();
        drop(superseded);
        drop(outbox);

        let queued = queue.into_queued();

        let closing = ServerEvent::Response(ResponseFrame {
            response_id: 1,
            content: String::new(),
            content_complete: true,
            end_call: false,
        });
        assert_eq!(queued, [(Some(first), closing)]);
    }
}
