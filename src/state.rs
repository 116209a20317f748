//! Shared application state, cheap to clone into every handler.

use std::sync::{Arc, OnceLock};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Settings;
use crate::engine::Engine;
use crate::journal::Journal;
use crate::storage::Store;
use crate::upstream::{LlmClient, UpstreamError};

/// Everything a request handler may need.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Inner>);

/// The contents of [`AppState`].
#[derive(Debug)]
pub struct Inner {
    /// The validated configuration.
    pub settings: Arc<Settings>,
    /// Durable state.
    pub store: Arc<dyn Store>,
    /// Background work (persistence, webhook side effects) that must finish before exit and must
    /// not be cancelled by a client disconnect. Drained on shutdown.
    pub tasks: TaskTracker,
    /// Cancelled when shutdown begins.
    pub shutdown: CancellationToken,
    /// Renders the Prometheus metrics.
    pub metrics: PrometheusHandle,
    /// The conversation engine.
    pub engine: Engine,
    /// The analysis workers (stopped by `shutdown`, drained on exit).
    pub workers: TaskTracker,
}

impl AppState {
    /// Assembles the state; every durable write goes through `journal`.
    pub fn new(
        settings: Settings,
        store: Arc<dyn Store>,
        journal: Journal,
    ) -> Result<Self, UpstreamError> {
        let settings = Arc::new(settings);
        let tasks = TaskTracker::new();
        let llm = LlmClient::new(&settings)?;
        let shutdown = CancellationToken::new();
        let engine = Engine::new(
            Arc::clone(&settings),
            Arc::clone(&store),
            llm,
            tasks.clone(),
            shutdown.clone(),
            journal,
        );
        Ok(Self(Arc::new(Inner {
            settings,
            store,
            tasks,
            shutdown,
            metrics: metrics_handle(),
            engine,
            workers: TaskTracker::new(),
        })))
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// The process-wide Prometheus recorder, installed on first use (several apps in one test
/// process share it).
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is already installed; metrics then go there.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
