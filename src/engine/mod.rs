//! The conversation engine: transport-agnostic turns.
//!
//! A transport (HTTP SSE, Retell WebSocket) hands [`Engine::start_turn`] a [`TurnRequest`] and
//! reads [`TurnEvent`]s from the returned [`TurnHandle`]. The turn runs in the reading task —
//! it loads memory under a hard budget, builds the prompt and streams the upstream (with
//! fallbacks), so tokens reach the transport without a hand-off between tasks — and whatever is
//! left when the handle is dropped (persisting the turn, or finishing it after a disconnect) runs
//! on in a tracked background task: a client that disconnects never cancels a write, and
//! shutdown drains them.

mod cache;
mod live;
mod memory;
mod persist;
mod prompt;
pub mod script;
pub mod summary;
mod tool_calls;
pub mod tools;
mod turn;
pub mod usage;
mod writer;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TrackedFuture;
use uuid::Uuid;

use crate::config::Settings;
use crate::journal::Journal;
use crate::openai::{ChatMessage, FinishReason};
use crate::platforms::Identity;
use crate::storage::Store;
use crate::upstream::{LlmClient, Params, Tool, ToolCallDelta, Usage};

pub use live::{Hold, LiveCalls, LiveGuard};
pub use memory::CallContext;
pub use prompt::has_configured_model;
pub use tool_calls::ToolCalls;

/// One turn to run.
#[derive(Debug, Clone)]
pub struct TurnRequest {
    /// Who, which call, which assistant.
    pub identity: Identity,
    /// The conversation as the platform sent it.
    pub messages: Vec<ChatMessage>,
    /// The platform's own tools (function tools only, with only the fields upstreams accept).
    pub tools: Vec<Tool>,
    /// The model the platform asked for.
    pub model: Option<String>,
    /// Request parameters; each provider forwards those it understands. Boxed: most requests
    /// set few, and the turn's future carries the request for its whole life.
    pub params: Box<Params>,
    /// Platform tools the platform runs only once the reply has been spoken (Retell's
    /// `end_call`): the filler is not spoken before them.
    pub deferred_tools: Vec<String>,
    /// Platform tools the platform announces itself while they run (a Vapi tool with its own
    /// `request-start` message): a filler before them would be spoken twice.
    pub announced_tools: Vec<String>,
    /// Speak the assistant's filler before redial's own tools too, when the model has said
    /// nothing yet in this turn (for transports that voice tool progress, like Retell's).
    pub hold_before_internal_tools: bool,
}

/// What a turn produces, in order.
///
/// Text is what nearly every event is, so the rarer kinds are boxed: an event is 32 bytes, and
/// the channel of every live turn holds a block of them.
#[derive(Debug, Clone, PartialEq)]
pub enum TurnEvent {
    /// Text to speak.
    Text(String),
    /// A fragment of a platform tool call (indices renumbered 0, 1, … over platform calls).
    ToolCall(Box<ToolCallDelta>),
    /// redial is running one of its own tools (transports may show it; HTTP does not).
    InternalToolCall(Box<InternalToolCall>),
    /// The result of one of redial's own tools.
    InternalToolResult(Box<InternalToolResult>),
    /// Tokens the turn's upstream passes used, over every model that answered; sent just before
    /// `Finish` when any upstream reported usage.
    Usage(Usage),
    /// The turn is over; nothing follows.
    Finish(FinishReason),
    /// The upstream failed and the client is not a voice platform: it is told so, with the
    /// upstream's status, instead of hearing the apology. Nothing follows.
    UpstreamFailed(Box<UpstreamFailure>),
}

/// One of redial's own tools, as the model called it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalToolCall {
    /// Call id.
    pub id: String,
    /// Tool name.
    pub name: String,
    /// Arguments JSON.
    pub arguments: String,
}

/// What one of redial's own tools returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalToolResult {
    /// Call id.
    pub id: String,
    /// Result JSON given to the model.
    pub content: String,
    /// Whether the tool succeeded.
    pub ok: bool,
}

/// How the upstream failed, for a client that is told rather than apologised to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamFailure {
    /// The HTTP status to answer with (see [`crate::upstream::UpstreamError::client_status`]).
    pub status: u16,
    /// What happened, with a hint for the operator where one helps.
    pub message: String,
    /// Low-cardinality kind (`client_error`, `rate_limited`, `server_error`, `timeout`…).
    pub kind: &'static str,
}

/// Timings of one turn, filled as it progresses (read by transports for `Server-Timing`).
#[derive(Debug, Default)]
pub struct TurnTimings {
    /// Memory read (load or create session and caller).
    pub memory: OnceLock<Duration>,
    /// Whether the memory came from the call cache (nothing read from the database).
    pub memory_cached: OnceLock<bool>,
    /// Prompt build.
    pub prompt: OnceLock<Duration>,
    /// From the start of the turn to the upstream's first token.
    pub upstream_first: OnceLock<Duration>,
    /// The model that answered.
    pub model: OnceLock<String>,
}

/// A running turn, read with [`TurnHandle::recv`].
///
/// The turn runs in the task that reads it: each `recv` drives the turn's own work (memory,
/// upstream, tools) until an event is ready, so a token reaches the transport without a hand-off
/// between tasks. Dropping the handle — the turn's events all read, a client gone, a response
/// superseded — hands whatever is left of the turn (finishing, persisting) to a background task
/// that shutdown drains; the turn is never cancelled halfway.
pub struct TurnHandle {
    events: mpsc::Receiver<TurnEvent>,
    turn: Option<TrackedFuture<Pin<Box<dyn Future<Output = ()> + Send>>>>,
    /// Timings, filled as they become known.
    pub timings: Arc<TurnTimings>,
    /// When the turn started.
    pub started: Instant,
}

impl std::fmt::Debug for TurnHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnHandle")
            .field("running", &self.turn.is_some())
            .field("timings", &self.timings)
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

impl TurnHandle {
    /// The next event, driving the turn until one is ready; `None` once the turn has sent its
    /// last event. The future may be dropped at any time (a timeout, say) without losing
    /// anything: the turn lives in the handle.
    pub async fn recv(&mut self) -> Option<TurnEvent> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// While the turn runs here, its events can only appear when it is polled here, so the
    /// channel is read without registering the reader's waker: with a waker registered, every
    /// event the turn sent would wake the very task that is polling it, and each chunk would
    /// cost a second, idle pass through the connection task. The turn itself registers for
    /// whatever it waits on. Once it has finished, the channel holds everything it sent.
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<TurnEvent>> {
        if let Some(event) = self.try_next() {
            return Poll::Ready(event);
        }
        let Some(turn) = self.turn.as_mut() else {
            return self.events.poll_recv(cx);
        };
        if Pin::new(turn).poll(cx).is_ready() {
            self.turn = None;
        }
        match self.try_next() {
            Some(event) => Poll::Ready(event),
            None if self.turn.is_none() => self.events.poll_recv(cx),
            None => Poll::Pending,
        }
    }

    /// An event already sent (`Some(Some)`), the end of the turn's events (`Some(None)`), or
    /// nothing yet (`None`); registers no waker.
    fn try_next(&mut self) -> Option<Option<TurnEvent>> {
        match self.events.try_recv() {
            Ok(event) => Some(Some(event)),
            Err(mpsc::error::TryRecvError::Disconnected) => Some(None),
            Err(mpsc::error::TryRecvError::Empty) => None,
        }
    }
}

impl Drop for TurnHandle {
    fn drop(&mut self) {
        let Some(turn) = self.turn.take() else {
            return;
        };
        // Still tracked: shutdown waits for it. Without a runtime (it is shutting down) there
        // is nothing left to run it on.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(turn);
        }
    }
}

/// The call cache, fed by the store's change notices (a listener task on Postgres, stopped by
/// `shutdown`); it stays empty when the store cannot report changes.
fn watch(
    store: &Arc<dyn Store>,
    settings: &Settings,
    shutdown: &CancellationToken,
) -> cache::CallCache {
    let memory = &settings.memory;
    let cache = cache::CallCache::new(memory.cache_max_calls, memory.cache_max_bytes);
    if memory.cache_max_calls == 0 || memory.cache_max_bytes == 0 {
        return cache;
    }
    let sink_cache = cache.clone();
    let sink: crate::storage::changes::ChangeSink =
        Arc::new(move |change| sink_cache.notice(change));
    match store.watch_changes(sink) {
        crate::storage::changes::Watch::Task(listen) => {
            let shutdown = shutdown.clone();
            // Not on `tasks`: that tracker counts work to drain, and the listener only stops
            // at shutdown.
            let listener = TaskTracker::new();
            listener.close();
            listener.spawn(async move {
                tokio::select! {
                    () = listen => {}
                    () = shutdown.cancelled() => {}
                }
            });
        }
        crate::storage::changes::Watch::Inline => {}
        crate::storage::changes::Watch::Unsupported => {
            tracing::info!("the store cannot report changes; every turn reads its memory from it");
        }
    }
    cache
}

/// The engine, shared by every transport.
#[derive(Debug, Clone)]
pub struct Engine {
    pub(crate) settings: Arc<Settings>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) llm: LlmClient,
    pub(crate) tasks: TaskTracker,
    pub(crate) writer: writer::WriteQueue,
    pub(crate) journal: Journal,
    /// Failed memory reads are logged at most once a while (an outage fails every turn's).
    pub(crate) read_warnings: Arc<writer::Throttle>,
    /// Calls with a turn running (or a Retell socket open) on this instance.
    pub(crate) live: LiveCalls,
    /// When this engine (process) started.
    pub(crate) started_at: chrono::DateTime<chrono::Utc>,
    /// Calls' memory kept between their turns on this instance.
    pub(crate) cache: cache::CallCache,
}

impl Engine {
    /// Assembles an engine and starts its turn writer (the write-behind queue configured by
    /// `database.write_*`), which drains and stops once `shutdown` is cancelled. Must be called
    /// within a Tokio runtime.
    pub fn new(
        settings: Arc<Settings>,
        store: Arc<dyn Store>,
        llm: LlmClient,
        tasks: TaskTracker,
        shutdown: CancellationToken,
        journal: Journal,
    ) -> Self {
        let cache = watch(&store, &settings, &shutdown);
        let writer = writer::WriteQueue::spawn(
            Arc::clone(&store),
            journal.clone(),
            cache.clone(),
            shutdown,
            settings.database.write_queue_capacity,
            settings.database.write_batch_max,
            Duration::from_millis(settings.database.write_linger_ms),
        );
        Self {
            settings,
            store,
            llm,
            tasks,
            writer,
            journal,
            read_warnings: Arc::new(writer::Throttle::new()),
            live: LiveCalls::default(),
            started_at: chrono::Utc::now(),
            cache,
        }
    }

    /// The configuration.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The outage journal every durable write goes through.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The upstream client.
    pub fn llm(&self) -> &LlmClient {
        &self.llm
    }

    /// Background work that shutdown drains.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// The session and caller of a call, created (resuming an unfinished call of the caller
    /// where one applies) when the call is new. Not bounded by the memory budget: for webhooks
    /// and workers, not turns.
    pub async fn load_call_context(
        &self,
        identity: &Identity,
    ) -> Result<CallContext, crate::storage::StoreError> {
        memory::load_stored(self, identity, None).await
    }

    /// Records `text` as the agent's opening line of the call (the greeting) unless one was
    /// recorded before, and returns whether this call recorded it — that is, whether the caller
    /// should hear it. Keyed in the store, so a call is greeted once across reconnects and
    /// instances.
    pub async fn record_opening(
        &self,
        session_id: Uuid,
        text: &str,
    ) -> Result<bool, crate::storage::StoreError> {
        persist::opening(self, session_id, text).await
    }

    /// Marks a call live on this instance until the guard is dropped: a new call from the same
    /// caller does not resume it meanwhile (an open Retell socket holds one).
    pub fn hold_live(
        &self,
        platform: crate::platforms::Platform,
        call_key: &str,
        hold: Hold,
    ) -> LiveGuard {
        self.live.hold(platform, call_key, hold)
    }

    /// How many holds of this kind keep the call live on this instance.
    pub fn live_holds(
        &self,
        platform: crate::platforms::Platform,
        call_key: &str,
        hold: Hold,
    ) -> usize {
        self.live.holds(platform, call_key, hold)
    }

    /// Turns (and tool audit entries) handed to the write-behind queue and not yet stored.
    pub fn pending_writes(&self) -> usize {
        self.writer.pending()
    }

    /// Resolves once the write-behind queue has been drained and its writer has stopped; it
    /// stops after shutdown begins, once every turn that started has handed in its write.
    pub async fn writes_drained(&self) {
        self.writer.stopped().await;
    }

    /// Starts a turn; it runs as its handle is read (see [`TurnHandle`]) and is tracked for
    /// shutdown from now until it has finished.
    pub fn start_turn(&self, request: TurnRequest) -> TurnHandle {
        let (tx, events) = mpsc::channel(64);
        let timings = Arc::new(TurnTimings::default());
        let started = Instant::now();
        let engine = self.clone();
        let task_timings = Arc::clone(&timings);
        // The call is live from now until the turn is persisted: a redial meanwhile is a
        // concurrent call, not a resumption.
        let identity = &request.identity;
        let live = (!identity.ephemeral).then(|| {
            self.live
                .hold(identity.platform, &identity.call_key, Hold::Turn)
        });
        // The turn's future is the one allocation every stream holds for its whole life: its
        // rarely taken paths (redial's own tools, the bound line, persisting) are boxed where
        // they run, so a plain streaming turn carries only what streaming needs.
        let turn: Pin<Box<dyn Future<Output = ()> + Send>> =
            Box::pin(turn::run(engine, request, tx, task_timings, started, live));
        TurnHandle {
            events,
            turn: Some(self.tasks.track_future(turn)),
            timings,
            started,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};

    use super::*;

    /// Counts the wake-ups of the task reading a turn.
    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn reading_a_turn_wakes_its_task_only_for_what_the_turn_waits_on() {
        let (tx, events) = mpsc::channel(64);
        let upstream = Arc::new(tokio::sync::Notify::new());
        let chunks = Arc::clone(&upstream);
        let run: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
            for word in ["one", "two", "three"] {
                chunks.notified().await;
                let _ = tx.send(TurnEvent::Text(word.into())).await;
            }
        });
        let mut turn = TurnHandle {
            events,
            turn: Some(TaskTracker::new().track_future(run)),
            timings: Arc::default(),
            started: Instant::now(),
        };
        let waker = Arc::new(CountingWaker::default());
        let task = Waker::from(Arc::clone(&waker));
        let mut cx = Context::from_waker(&task);

        let mut read = Vec::new();
        for _ in 0..3 {
            assert!(turn.poll_recv(&mut cx).is_pending(), "nothing sent yet");
            // A chunk arrives: the one wake-up the task needs.
            upstream.notify_one();
            match turn.poll_recv(&mut cx) {
                Poll::Ready(Some(TurnEvent::Text(text))) => read.push(text),
                other => panic!("expected a text event, got {other:?}"),
            }
        }
        assert_eq!(read, ["one", "two", "three"]);
        assert!(matches!(turn.poll_recv(&mut cx), Poll::Ready(None)));
        assert!(turn.turn.is_none(), "the turn has finished");
        // One wake-up per chunk, for the chunk; none for the turn's own sends.
        assert_eq!(waker.0.load(Ordering::SeqCst), 3);
    }
}
