//! Shared application state, cheap to clone into every handler.

use std::sync::{Arc, OnceLock};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Settings;
use crate::storage::Store;

/// Everything a request handler may need.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Inner>);

/// The contents of [`AppState`].
#[derive(Debug)]
pub struct Inner {
    /// The validated configuration.
    pub settings: Settings,
    /// Durable state.
    pub store: Arc<dyn Store>,
    /// Background work (persistence, webhook side effects) that must finish before exit and must
    /// not be cancelled by a client disconnect. Drained on shutdown.
    pub tasks: TaskTracker,
    /// Cancelled when shutdown begins.
    pub shutdown: CancellationToken,
    /// Renders the Prometheus metrics.
    pub metrics: PrometheusHandle,
}

impl AppState {
    /// Assembles the state.
    pub fn new(settings: Settings, store: Arc<dyn Store>) -> Self {
        Self(Arc::new(Inner {
            settings,
            store,
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            metrics: metrics_handle(),
        }))
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
