//! The conversation engine: transport-agnostic turns.
//!
//! A transport (HTTP SSE, Retell WebSocket) hands [`Engine::start_turn`] a [`TurnRequest`] and
//! reads [`TurnEvent`]s from the returned [`TurnHandle`]. The turn itself runs as a tracked
//! background task: it loads memory under a hard budget, builds the prompt, streams the
//! upstream (with fallbacks), and persists the turn after the last event was sent — so a client
//! that disconnects never cancels a write, and shutdown drains them.

mod memory;
mod persist;
mod prompt;
pub mod script;
pub mod summary;
mod tool_calls;
pub mod tools;
mod turn;
mod writer;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::config::Settings;
use crate::openai::{ChatMessage, FinishReason};
use crate::platforms::Identity;
use crate::storage::Store;
use crate::upstream::LlmClient;

pub use memory::CallContext;
pub use tool_calls::ToolCalls;

/// One turn to run.
#[derive(Debug, Clone)]
pub struct TurnRequest {
    /// Who, which call, which assistant.
    pub identity: Identity,
    /// The conversation as the platform sent it.
    pub messages: Vec<ChatMessage>,
    /// The platform's own tools (passed through).
    pub tools: Vec<Value>,
    /// The model the platform asked for.
    pub model: Option<String>,
    /// Sampling parameters forwarded upstream.
    pub params: Map<String, Value>,
    /// Platform tools the platform runs only once the reply has been spoken (Retell's
    /// `end_call`): the filler is not spoken before them.
    pub deferred_tools: Vec<String>,
    /// Speak the assistant's filler before redial's own tools too, when the model has said
    /// nothing yet in this turn (for transports that voice tool progress, like Retell's).
    pub hold_before_internal_tools: bool,
}

/// What a turn produces, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum TurnEvent {
    /// Text to speak.
    Text(String),
    /// A platform tool-call delta in OpenAI's streaming shape.
    ToolCall(Value),
    /// redial is running one of its own tools (transports may show it; HTTP does not).
    InternalToolCall {
        /// Call id.
        id: String,
        /// Tool name.
        name: String,
        /// Arguments JSON.
        arguments: String,
    },
    /// The result of one of redial's own tools.
    InternalToolResult {
        /// Call id.
        id: String,
        /// Result JSON given to the model.
        content: String,
        /// Whether the tool succeeded.
        ok: bool,
    },
    /// The turn is over; nothing follows.
    Finish(FinishReason),
}

/// Timings of one turn, filled as it progresses (read by transports for `Server-Timing`).
#[derive(Debug, Default)]
pub struct TurnTimings {
    /// Memory read (load or create session and caller).
    pub memory: OnceLock<Duration>,
    /// Prompt build.
    pub prompt: OnceLock<Duration>,
    /// From the start of the turn to the upstream's first token.
    pub upstream_first: OnceLock<Duration>,
    /// The model that answered.
    pub model: OnceLock<String>,
}

/// The reading end of a running turn.
#[derive(Debug)]
pub struct TurnHandle {
    /// The events, ending with [`TurnEvent::Finish`].
    pub events: mpsc::Receiver<TurnEvent>,
    /// Timings, filled as they become known.
    pub timings: Arc<TurnTimings>,
    /// When the turn started.
    pub started: Instant,
}

/// The engine, shared by every transport.
#[derive(Debug, Clone)]
pub struct Engine {
    pub(crate) settings: Arc<Settings>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) llm: LlmClient,
    pub(crate) tasks: TaskTracker,
    pub(crate) writer: writer::WriteQueue,
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
    ) -> Self {
        let writer = writer::WriteQueue::spawn(
            Arc::clone(&store),
            shutdown,
            settings.database.write_queue_capacity,
            settings.database.write_batch_max,
        );
        Self {
            settings,
            store,
            llm,
            tasks,
            writer,
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

    /// Turns (and tool audit entries) handed to the write-behind queue and not yet stored.
    pub fn pending_writes(&self) -> usize {
        self.writer.pending()
    }

    /// Resolves once the write-behind queue has been drained and its writer has stopped; it
    /// stops after shutdown begins, once every turn that started has handed in its write.
    pub async fn writes_drained(&self) {
        self.writer.stopped().await;
    }

    /// Starts a turn in a tracked background task and returns its event stream.
    pub fn start_turn(&self, request: TurnRequest) -> TurnHandle {
        let (tx, events) = mpsc::channel(64);
        let timings = Arc::new(TurnTimings::default());
        let started = Instant::now();
        let engine = self.clone();
        let task_timings = Arc::clone(&timings);
        self.tasks.spawn(async move {
            turn::run(engine, request, tx, task_timings, started).await;
        });
        TurnHandle {
            events,
            timings,
            started,
        }
    }
}
