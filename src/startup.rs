//! Building and running the application: store, listener, router, graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::Settings;
use crate::engine::has_configured_model;
use crate::journal::Journal;
use crate::server::{self, ServeOptions, limits};
use crate::state::AppState;
use crate::storage::{self, ConnectOptions, Store};

/// A bound, ready-to-run gateway. Binding happens in [`Application::build`], so port 0 works
/// and [`Application::local_addr`] tells the real port.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    max_connections: usize,
}

impl Application {
    /// Raises the open-file limit, connects the store, applies migrations, and binds the
    /// listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        for warning in config_warnings(&settings) {
            tracing::warn!(key = warning.key.as_str(), "{}", warning.message);
        }
        // Beside the store's start-up: a blocking thread loads what parsing a caller's number
        // needs, before the first caller would wait for it on a worker.
        let region = settings.memory.default_region.clone();
        let phone = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let read = crate::platforms::phone::warm(&region);
            (region, read, started.elapsed())
        });
        let soft = limits::raise_fd_limit().map(|l| l.soft);
        let max_connections = limits::max_connections(&settings, soft);
        limits::warn_if_cap_exceeds_limit(&settings, max_connections, soft);
        let store = open_store(&settings).await?;
        store
            .migrate()
            .await
            .context("applying database migrations failed")?;
        release_waiting_jobs(store.as_ref()).await;
        let (region, examples, took) = phone.await.context("loading phone number metadata")?;
        tracing::info!(
            region,
            examples,
            took_ms = took.as_secs_f64() * 1e3,
            "phone number metadata loaded"
        );
        let listener = TcpListener::bind(settings.server.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.server.listen))?;
        let journal = open_journal(&settings).await?;
        let state = AppState::new(settings, store, journal)
            .context("building the upstream client failed")?;
        Ok(Self {
            listener,
            state,
            max_connections,
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The shared state (for tests and embedding).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests and
    /// streams finish within `server.shutdown_grace_secs`, drains background writes within the
    /// same budget, and closes the store.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Self {
            listener,
            state,
            max_connections,
        } = self;
        let addr = listener.local_addr()?;
        let token = state.shutdown.clone();
        let settings = &state.settings.server;
        let options = ServeOptions {
            header_read_timeout: settings.header_read_timeout(),
            idle_timeout: settings.idle_timeout(),
            max_connections,
        };
        let app = crate::http::router(state.clone());
        let mut server = tokio::spawn(server::serve(listener, app, options, token.clone()));
        crate::analysis::worker::spawn(&state.engine, &token, &state.workers);
        crate::admin::retention::spawn(&state);
        state.engine.journal().spawn_replayer(
            std::sync::Arc::clone(&state.store),
            token.clone(),
            state.settings.database.write_batch_max,
        );
        spawn_metrics_upkeep(&state);
        tracing::info!(%addr, store = state.store.backend(), dev_mode = settings.dev_mode(), max_connections, "redial listening");

        tokio::select! {
            result = &mut server => {
                result.context("server task failed")?;
            }
            () = shutdown => tracing::info!("shutdown signal received; draining"),
        }
        token.cancel();
        let grace = state.settings.server.shutdown_grace();
        if tokio::time::timeout(grace, &mut server).await.is_err() {
            tracing::warn!(
                ?grace,
                "in-flight requests did not finish in time; closing them"
            );
            server.abort();
        }
        drain(&state, grace).await;
        state.engine.journal().close().await;
        state.store.close().await;
        tracing::info!("redial stopped");
        Ok(())
    }
}

/// Jobs parked because the configuration did not allow them run again now: the configuration
/// is read at start, so this is when it may have changed. One that still cannot run waits again
/// without using up its attempts. A failure here is logged; the jobs are released next time.
async fn release_waiting_jobs(store: &dyn Store) {
    match store.release_waiting_jobs(chrono::Utc::now()).await {
        Ok(0) => {}
        Ok(released) => {
            tracing::info!(
                released,
                "jobs that waited for configuration are queued again"
            );
        }
        Err(e) => tracing::warn!(error = %e, "releasing jobs that wait for configuration failed"),
    }
}

/// A configuration that loads but will not work as its operator likely expects: logged at start
/// and reported by `redial check-config`, so it is seen before a caller finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    /// The key to look at.
    pub key: String,
    /// What will go wrong, and what to set.
    pub message: String,
}

/// The silent misconfigurations: no upstream key, no model for Retell (it names none) or for an
/// assistant, and webhooks whose calls may have no model to analyse them with.
pub fn config_warnings(settings: &Settings) -> Vec<ConfigWarning> {
    let upstream = &settings.upstream;
    let mut warnings = Vec::new();
    if upstream.api_key.is_empty() {
        warnings.push(ConfigWarning {
            key: "upstream.api_key".into(),
            message: format!(
                "no upstream key is set (upstream.api_key, REDIAL_UPSTREAM__API_KEY or \
                 OPENAI_API_KEY): turns go to {} without one, which a hosted provider refuses \
                 with 401; fine only for a local model server",
                upstream.base_url
            ),
        });
    }
    warnings.extend(model_warnings(settings));
    let webhooks = &settings.webhooks;
    let webhooks_on = settings.server.dev_mode()
        || !webhooks.vapi_secret.is_empty()
        || !webhooks.retell_api_key.is_empty()
        || !webhooks.elevenlabs_secret.is_empty();
    if webhooks_on
        && settings.analysis.workers > 0
        && settings.analysis.model.is_empty()
        && upstream.model.is_empty()
    {
        warnings.push(ConfigWarning {
            key: "analysis.model".into(),
            message: "analysis.model and upstream.model are both empty: a call's post-call \
                      analysis can only use the model its turns asked for, so a webhook for a \
                      call redial did not answer has no model to analyse it with (its job waits \
                      until a start with analysis.model set); set analysis.model"
                .into(),
        });
    }
    if !settings.server.all_admin_keys().is_empty() && settings.server.erasure_key.is_empty() {
        warnings.push(ConfigWarning {
            key: "server.erasure_key".into(),
            message: "admin keys are set but server.erasure_key is empty: erasure requests \
                      (DELETE /admin/v1/callers/{phone}, redial callers erase) are refused until \
                      it is set"
                .into(),
        });
    }
    warnings
}

/// Assistants that have no model when a request names none. A chat request names one (a 400
/// when it does not), Retell never does: its calls of such an agent are refused.
fn model_warnings(settings: &Settings) -> Vec<ConfigWarning> {
    let upstream = &settings.upstream;
    let mut warnings = Vec::new();
    let any = settings
        .assistants
        .iter()
        .any(|a| has_configured_model(upstream, a));
    if !has_configured_model(upstream, settings.assistant("")) {
        let message = if any {
            "upstream.model is empty: Retell names no model, so the Retell calls of agents \
             without an [[assistants]] entry that sets `model` are refused (the socket is closed \
             with 1011 once call_details name the agent); set upstream.model to serve them"
        } else {
            "upstream.model is empty: Retell names no model, so every Retell call is refused \
             (503 at the WebSocket upgrade); set upstream.model to serve Retell"
        };
        warnings.push(ConfigWarning {
            key: "upstream.model".into(),
            message: message.into(),
        });
    }
    for (i, assistant) in settings.assistants.iter().enumerate() {
        if any && !has_configured_model(upstream, assistant) {
            warnings.push(ConfigWarning {
                key: format!("assistants[{i}].model"),
                message: format!(
                    "assistant {:?} has no model (its own `model` and `fallback_models` and \
                     upstream's are empty): its Retell calls are refused (the socket is closed \
                     with 1011), and a chat request for it must name `model` (else 400)",
                    assistant.id
                ),
            });
        }
    }
    warnings
}

/// Histogram samples wait in the recorder until upkeep folds them in; without it they would
/// pile up between scrapes (or forever, when nothing scrapes).
fn spawn_metrics_upkeep(state: &AppState) {
    const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
    let (metrics, token) = (state.metrics.clone(), state.shutdown.clone());
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            tokio::select! {
                _ = interval.tick() => metrics.run_upkeep(),
                () = token.cancelled() => break,
            }
        }
    });
}

/// Waits for background work (turns finishing, their writes queued) and then for the turn
/// writer to drain its queue, at most `grace` in all.
async fn drain(state: &AppState, grace: Duration) {
    state.tasks.close();
    let drained = async {
        state.tasks.wait().await;
        state.engine.writes_drained().await;
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::error!(
            tasks = state.tasks.len(),
            queued_writes = state.engine.pending_writes(),
            "background writes did not finish before the shutdown deadline"
        );
    }
}

/// Opens the configured store, with an error that names the (password-masked) URL.
pub async fn open_store(settings: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    let db = &settings.database;
    let options = ConnectOptions {
        max_connections: db.max_connections,
        connect_timeout: Duration::from_secs(db.connect_timeout_secs),
    };
    storage::connect(db.url.expose(), &options)
        .await
        .with_context(|| format!("cannot connect to the database at {}", db.url.redacted()))
}

/// Opens the outage journal (`database.journal_dir`), with an error that names the directory.
pub async fn open_journal(settings: &Settings) -> anyhow::Result<Journal> {
    let database = settings.database.clone();
    tokio::task::spawn_blocking(move || Journal::open(&database))
        .await
        .context("opening the outage journal panicked")?
        .with_context(|| {
            format!(
                "cannot open the outage journal in {:?} (database.journal_dir)",
                settings.database.journal_dir
            )
        })
}

/// `redial migrate`: applies pending migrations and exits.
pub async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let store = open_store(settings).await?;
    store
        .migrate()
        .await
        .context("applying database migrations failed")?;
    store.close().await;
    tracing::info!(url = %settings.database.url.redacted(), "migrations applied");
    Ok(())
}

/// Installs the SIGINT (Ctrl-C) and SIGTERM handlers now, and returns a future that resolves
/// on either. Installing before the listener is bound means a signal can never arrive while the
/// default action (immediate exit) is still in place.
#[cfg(unix)]
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

/// Resolves on Ctrl-C.
#[cfg(not(unix))]
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
