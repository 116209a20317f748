//! One Retell connection: a reader loop, one writer task, a greeting task, and one generation
//! task per response.
//!
//! The reader never waits on the engine or the store, so `ping_pong` is echoed at once even
//! while a response is being generated. A newer `response_required` / `reminder_required`
//! supersedes the response in progress: its epoch ends (the writer drops its frames), its task
//! is aborted (which stops the engine's turn), and the new one starts.
//!
//! On shutdown the connection stops reading, lets the response in progress finish, and then
//! drops the socket without a close frame: Retell treats that as an abnormal close and
//! reconnects (to another instance), where the call continues from the store. A close code 1000
//! would hang up the call instead.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures_util::stream::{SplitStream, StreamExt};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use super::greeting;
use super::outbox::{self, Outbox};
use super::protocol::{self, CallInfo, Incoming, ResponseRequest, ServerEvent};
use super::respond::{self, Ask, ResponseGuard};
use crate::engine::{Engine, Hold, LiveGuard, has_configured_model};
use crate::platforms::{Identity, Platform};
use crate::state::AppState;
use crate::storage::{CloseSession, SessionStatus};

/// How long the begin message waits for `call_details` (which names the caller) before it is
/// sent without them.
pub(super) const CALL_DETAILS_WAIT: Duration = Duration::from_millis(1500);

/// The close reason sent to a call whose agent has no model (at most 123 bytes).
const NO_MODEL_REASON: &str =
    "redial has no model for this agent: set the assistant's model or upstream.model";

/// How long the writer may take to flush the last frames once the connection ends.
const FLUSH_GRACE: Duration = Duration::from_secs(5);

/// Serves one Retell connection until Retell closes it or redial shuts down.
pub(super) async fn serve(socket: WebSocket, state: AppState, call_id: String) {
    let span = tracing::info_span!("retell", call_id = %call_id);
    async move {
        metrics::counter!("redial_retell_connections_total").increment(1);
        tracing::info!("Retell connected");
        let (sink, stream) = socket.split();
        let (outbox, queue) = Outbox::new();
        let mut writer = AbortOnDropHandle::new(tokio::spawn(outbox::write(sink, queue)));
        let mut session = Session::new(state, call_id, outbox);
        let end = session.run(stream).await;
        session.finish(end).await;
        drop(session);
        if tokio::time::timeout(FLUSH_GRACE, &mut writer)
            .await
            .is_err()
        {
            tracing::warn!("the last Retell frames could not be flushed in time");
        }
        tracing::info!(?end, "Retell connection ended");
    }
    .instrument(span)
    .await;
}

/// Why the reader stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Retell closed the socket, or it failed.
    Closed,
    /// redial is shutting down.
    Shutdown,
}

/// The per-connection state the reader keeps.
struct Session {
    state: AppState,
    identity: Identity,
    outbox: Outbox,
    /// The begin message in preparation (set once started).
    begin: Option<AbortOnDropHandle<()>>,
    /// The response in progress.
    generation: Option<AbortOnDropHandle<()>>,
    /// Keeps the call live (not resumable by a redial) while the socket is open, and through
    /// the reconnect grace after it closes.
    live: Option<LiveGuard>,
    /// Set once a response ended the call (`end_call`).
    hung_up: Arc<AtomicBool>,
    /// Set when the call's agent turned out to have no model: the call is refused.
    refused: bool,
}

impl Session {
    fn new(state: AppState, call_id: String, outbox: Outbox) -> Self {
        let region = &state.settings.memory.default_region;
        let identity = Identity::of_call(Platform::Retell, call_id, None, None, region);
        let live = state
            .engine
            .hold_live(Platform::Retell, &identity.call_key, Hold::Connection);
        Self {
            state,
            identity,
            outbox,
            begin: None,
            generation: None,
            live: Some(live),
            hung_up: Arc::new(AtomicBool::new(false)),
            refused: false,
        }
    }

    /// Sends `config`, then reads frames until the socket ends or shutdown begins. The begin
    /// message goes out when `call_details` arrives, or after [`CALL_DETAILS_WAIT`].
    async fn run(&mut self, mut stream: SplitStream<WebSocket>) -> End {
        if self.outbox.send(ServerEvent::config()).await.is_err() {
            return End::Closed;
        }
        let details_deadline = Instant::now() + CALL_DETAILS_WAIT;
        let shutdown = self.state.shutdown.clone();
        loop {
            if self.refused {
                return self.refuse().await;
            }
            let waiting = self.begin.is_none();
            let message = tokio::select! {
                () = shutdown.cancelled() => return End::Shutdown,
                () = tokio::time::sleep_until(details_deadline), if waiting => {
                    tracing::warn!("no call_details from Retell; greeting without them");
                    self.start_begin();
                    continue;
                }
                message = stream.next() => message,
            };
            match message {
                None => return End::Closed,
                Some(Err(e)) => {
                    tracing::info!(error = %e, "the Retell socket failed");
                    return End::Closed;
                }
                Some(Ok(message)) => self.on_message(message).await,
            }
        }
    }

    /// Whether the call's agent has a model: Retell names none, so it must be configured (the
    /// agent's assistant's `model` or fallbacks, else `upstream`'s).
    fn has_model(&mut self) -> bool {
        let settings = &self.state.settings;
        let assistant = settings.assistant(&self.identity.assistant_id);
        let found = has_configured_model(&settings.upstream, assistant);
        self.refused |= !found;
        found
    }

    /// Closes the socket of a call whose agent has no model, as a chat request naming no model
    /// is refused: nothing is stored or sent upstream, and Retell ends the call (a close with
    /// 1011 is reported as `error_llm_websocket_runtime`; a reconnect is refused alike).
    async fn refuse(&mut self) -> End {
        metrics::counter!("redial_retell_refused_total", "reason" => "no_model").increment(1);
        tracing::warn!(
            assistant_id = %self.identity.assistant_id,
            "Retell names no model and this agent has none configured: the call is refused; set \
             the assistant's `model` or `upstream.model`"
        );
        self.begin = None;
        self.generation = None;
        self.outbox.supersede();
        let _ = self.outbox.close(1011, NO_MODEL_REASON).await;
        End::Closed
    }

    async fn on_message(&mut self, message: Message) {
        match message {
            Message::Text(text) => match protocol::parse(text.as_str()) {
                Ok(incoming) => self.on_incoming(incoming).await,
                Err(e) => ignore(e.kind(), &e, text.len()),
            },
            Message::Binary(bytes) => ignore("binary", &"Retell sends JSON text", bytes.len()),
            Message::Close(frame) => {
                let code = frame.as_ref().map(|f| f.code);
                tracing::info!(?code, "Retell closed the socket");
            }
            // The WebSocket layer answers pings itself.
            Message::Ping(_) | Message::Pong(_) => {}
        }
    }

    async fn on_incoming(&mut self, incoming: Incoming) {
        match incoming {
            Incoming::PingPong { timestamp } => {
                let _ = self.outbox.send(ServerEvent::PingPong { timestamp }).await;
            }
            Incoming::CallDetails(call) => self.on_call_details(&call),
            Incoming::UpdateOnly => {}
            Incoming::ResponseRequired(request) => self.respond(&request, Ask::Response),
            Incoming::ReminderRequired(request) => self.respond(&request, Ask::Reminder),
        }
    }

    /// Takes the caller and the agent from the call object, then greets.
    fn on_call_details(&mut self, call: &CallInfo) {
        if call
            .call_id
            .as_deref()
            .is_some_and(|id| id != self.identity.call_key)
        {
            tracing::warn!(
                details_call_id = ?call.call_id,
                "call_details name another call id; the URL's call id is used"
            );
        }
        self.identity = Identity::of_call(
            Platform::Retell,
            self.identity.call_key.clone(),
            call.caller_number(),
            call.agent_id.clone(),
            &self.state.settings.memory.default_region,
        );
        if self.begin.is_some() {
            tracing::info!("call_details arrived after the begin message; used from now on");
            self.has_model();
        }
        self.start_begin();
    }

    /// Starts the begin message (once per connection), unless the call has no model.
    fn start_begin(&mut self) {
        if self.begin.is_some() || !self.has_model() {
            return;
        }
        let task = greeting::send_begin(
            self.state.engine.clone(),
            self.identity.clone(),
            self.outbox.clone(),
        );
        self.begin = Some(spawn(task));
    }

    /// Supersedes the response in progress and starts generating `request`.
    fn respond(&mut self, request: &ResponseRequest, ask: Ask) {
        // Retell asked before call_details (or the wait) ended: greet with what is known.
        self.start_begin();
        if self.refused {
            return;
        }
        let epoch = self.outbox.supersede();
        if let Some(previous) = self.generation.take()
            && !previous.is_finished()
        {
            metrics::counter!("redial_retell_superseded_total").increment(1);
            tracing::debug!("a newer request superseded the response in progress");
        }
        metrics::counter!("redial_turns_total", "platform" => Platform::Retell.as_str())
            .increment(1);
        let turn = respond::turn_request(&self.state.settings, &self.identity, request, ask);
        let guard = ResponseGuard::new(request.response_id, epoch, self.outbox.clone());
        let hung_up = Arc::clone(&self.hung_up);
        let task = respond::run(self.state.engine.clone(), turn, guard, hung_up);
        self.generation = Some(spawn(task));
    }

    /// On shutdown, lets the greeting and the response in progress finish; on close, aborts
    /// them (dropping a turn's receiver stops it, and the engine stores what was said) and,
    /// off the caller's path, closes the call unless Retell reconnects within the grace.
    async fn finish(&mut self, end: End) {
        if end == End::Closed {
            // Nobody is listening: the response in progress needs no closing frame.
            self.outbox.supersede();
            if let Some(live) = self.live.take() {
                let closed = SocketClosed {
                    engine: self.state.engine.clone(),
                    call_key: self.identity.call_key.clone(),
                    hung_up: self.hung_up.load(Ordering::Acquire),
                    at: chrono::Utc::now(),
                };
                let grace =
                    Duration::from_secs(self.state.settings.memory.retell_reconnect_grace_secs);
                let shutdown = self.state.shutdown.clone();
                self.state.tasks.spawn(
                    async move {
                        tokio::select! {
                            // The next instance (or this one, restarted) carries on.
                            () = shutdown.cancelled() => {}
                            () = tokio::time::sleep(grace) => closed.settle().await,
                        }
                        drop(live);
                    }
                    .in_current_span(),
                );
            }
            return;
        }
        for task in [self.begin.take(), self.generation.take()]
            .into_iter()
            .flatten()
        {
            let _ = task.await;
        }
    }
}

/// A Retell socket that closed, waiting out the reconnect grace.
struct SocketClosed {
    engine: Engine,
    call_key: String,
    /// The agent ended the call (`end_call`): the caller was done, not cut off.
    hung_up: bool,
    at: chrono::DateTime<chrono::Utc>,
}

impl SocketClosed {
    /// Once the grace is over: unless Retell reconnected meanwhile (another connection of the
    /// call is open here), closes the still-active session, `dropped` (resumable by a redial at
    /// once) or `ended` after `end_call`. A reconnect to another instance finds the call closed
    /// and goes on from what is stored. Failures are logged: the live window makes the call
    /// resumable anyway once it has been silent long enough.
    async fn settle(self) {
        let reconnected =
            self.engine
                .live_holds(Platform::Retell, &self.call_key, Hold::Connection)
                > 1;
        if reconnected {
            tracing::info!("Retell reconnected within the grace; the call goes on");
            return;
        }
        let store = self.engine.store();
        let session = match store.load_call(Platform::Retell, &self.call_key).await {
            Ok(Some((session, _))) => session,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the closed call; left to the live window");
                return;
            }
        };
        if session.status != SessionStatus::Active {
            return;
        }
        let (status, reason) = if self.hung_up {
            (SessionStatus::Ended, "the agent ended the call (end_call)")
        } else {
            (
                SessionStatus::Dropped,
                "the Retell socket closed without end_call and was not reopened",
            )
        };
        let close = CloseSession {
            status,
            ended_reason: Some(reason.into()),
            ended_at: self.at,
            details: serde_json::json!({}),
        };
        match store.close_session(session.session_id, &close).await {
            Ok(_) => {
                metrics::counter!("redial_retell_calls_closed_total", "status" => status.as_str())
                    .increment(1);
                tracing::info!(status = %status, "the Retell call closed");
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not close the Retell call; left to the live window");
            }
        }
    }
}

/// A task tied to the connection: aborted when its handle is dropped.
fn spawn<F>(task: F) -> AbortOnDropHandle<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let handle: JoinHandle<()> = tokio::spawn(task.in_current_span());
    AbortOnDropHandle::new(handle)
}

/// Logs and counts a frame that is ignored (the call goes on). The frame itself is not logged:
/// it carries the caller's words.
fn ignore(kind: &'static str, why: &dyn std::fmt::Display, bytes: usize) {
    metrics::counter!("redial_retell_ignored_frames_total", "kind" => kind).increment(1);
    tracing::warn!(kind, bytes, why = %why, "ignoring a Retell frame");
}
