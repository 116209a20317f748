//! A scriptable mock upstream: OpenAI-compatible (`POST /v1/chat/completions`) and Anthropic
//! Messages (`POST /v1/messages`, see the `anthropic` module), on one port, over HTTP/1.1 or
//! cleartext HTTP/2 (prior knowledge), as the client opens the connection.
//!
//! By default every request gets a stream shaped by [`MockConfig`] (time to first token,
//! inter-token gap, token count). Tests script individual requests with
//! [`MockUpstream::push`]: text with delays, streamed tool calls, HTTP errors, stalls and
//! connections cut mid-body. Every received body and its headers are recorded in order.
//!
//! Responses are real SSE written frame by frame (no buffering) in OpenAI's
//! `chat.completion.chunk` shape (or Anthropic's streaming events on `/v1/messages`), or one
//! `chat.completion` (or `message`) JSON when the request does not set `"stream": true`. The
//! same scripted [`Behavior`]s serve both endpoints.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use redial_bench::mock::{Behavior, MockConfig, MockUpstream};
//!
//! let mock = MockUpstream::start(MockConfig::default()).await?;
//! mock.push("gpt-test", Behavior::tool_call("lookup", r#"{"id":1}"#));
//! mock.push("*", Behavior::error(500, "boom"));
//! // point the gateway at mock.base_url() ...
//! assert!(mock.requests().is_empty());
//! mock.shutdown();
//! # Ok(()) }
//! ```

mod anthropic;
mod handler;
mod render;
mod script;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinSet};

pub use script::{Behavior, MockConfig};

use handler::MockState;

/// Streams one HTTP/2 connection may carry at once: the floor RFC 9113 recommends, as a strict
/// server would allow (hyper's own default is higher).
pub const HTTP2_MAX_CONCURRENT_STREAMS: u32 = 100;

/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// A running mock upstream. Cheap to clone; all clones control the same server, which stops
/// when [`MockUpstream::shutdown`] is called or the last clone is dropped.
#[derive(Clone)]
pub struct MockUpstream {
    inner: Arc<Inner>,
}

struct Inner {
    addr: SocketAddr,
    state: Arc<MockState>,
    server: AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl fmt::Debug for MockUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockUpstream")
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

impl MockUpstream {
    /// Binds `127.0.0.1:0` and serves in a background tokio task.
    pub async fn start(config: MockConfig) -> anyhow::Result<MockUpstream> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Binds `listen` (port 0 picks a free port) and serves in a background tokio task.
    pub async fn start_on(listen: SocketAddr, config: MockConfig) -> anyhow::Result<MockUpstream> {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding the mock upstream to {listen}"))?;
        let addr = listener
            .local_addr()
            .context("reading the mock's address")?;
        let state = Arc::new(MockState::new(config));
        let app = handler::router(Arc::clone(&state));
        let server = tokio::spawn(serve(listener, app)).abort_handle();
        Ok(MockUpstream {
            inner: Arc::new(Inner {
                addr,
                state,
                server,
            }),
        })
    }

    /// Like [`MockUpstream::start_on`], but serves on a dedicated OS thread with its own
    /// single-threaded tokio runtime, so the mock's pacing neither waits for nor steals the
    /// caller's worker threads. The benchmarks use it; it works inside or outside a runtime
    /// (it blocks the calling thread only until the server thread has started).
    pub fn start_isolated(listen: SocketAddr, config: MockConfig) -> anyhow::Result<MockUpstream> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the mock's runtime")?;
        let listener = std::net::TcpListener::bind(listen)
            .with_context(|| format!("binding the mock upstream to {listen}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener
            .local_addr()
            .context("reading the mock's address")?;
        let state = Arc::new(MockState::new(config));
        let app = handler::router(Arc::clone(&state));
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("mock-upstream".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(error) => return drop(started_tx.send(Err(error))),
                    };
                    let server = tokio::spawn(serve(listener, app));
                    let _ = started_tx.send(Ok(server.abort_handle()));
                    // Returns when the server is aborted; dropping the runtime then closes
                    // every connection.
                    let _ = server.await;
                });
            })
            .context("starting the mock's thread")?;
        let server = started_rx
            .recv()
            .context("the mock's thread died during startup")?
            .context("registering the mock's listener")?;
        Ok(MockUpstream {
            inner: Arc::new(Inner {
                addr,
                state,
                server,
            }),
        })
    }

    /// The OpenAI base URL of the mock, `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.inner.addr)
    }

    /// The address the mock listens on.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Every body received on `POST /v1/chat/completions` and `POST /v1/messages`, in arrival
    /// order. A body that is not
    /// JSON is recorded as a JSON string holding the raw text (and answered with 400).
    pub fn requests(&self) -> Vec<serde_json::Value> {
        self.inner.state.requests()
    }

    /// The headers of each recorded request (names lowercase), aligned with
    /// [`MockUpstream::requests`].
    pub fn request_headers(&self) -> Vec<Vec<(String, String)>> {
        self.inner.state.request_headers()
    }

    /// The HTTP version of each recorded request, aligned with [`MockUpstream::requests`]:
    /// HTTP/1.1, or HTTP/2 for a client that opened the connection with HTTP/2's preface
    /// (cleartext HTTP/2 by prior knowledge).
    pub fn request_versions(&self) -> Vec<axum::http::Version> {
        self.inner.state.request_versions()
    }

    /// Queues `behavior` for the next request whose `body.model == model` (`"*"` matches any
    /// model). Queues are FIFO per key; a request takes from its model's queue first, then from
    /// `"*"`, and falls back to the default stream of the [`MockConfig`].
    pub fn push(&self, model: &str, behavior: Behavior) {
        self.inner.state.push(model, behavior);
    }

    /// How many scripted behaviours are still queued, over all models.
    pub fn queued(&self) -> usize {
        self.inner.state.queued()
    }

    /// Replaces the default behaviour for requests with nothing queued.
    pub fn set_config(&self, config: MockConfig) {
        self.inner.state.set_config(config);
    }

    /// Turns request recording on (the default) or off. Long load runs turn it off so the
    /// mock's memory stays flat.
    pub fn set_recording(&self, on: bool) {
        self.inner.state.set_recording(on);
    }

    /// Turns the Messages endpoint's model of Anthropic's prompt cache on (the default) or off.
    /// Off, nothing is hashed and usage shows no cached tokens: what redial adds is then
    /// measured without the mock's own work on the blocks redial marks for caching.
    pub fn set_prompt_cache(&self, on: bool) {
        self.inner.state.set_prompt_cache(on);
    }

    /// Stops accepting connections and closes every open one, including stalled responses.
    pub fn shutdown(&self) {
        self.inner.server.abort();
    }
}

/// Accepts connections until aborted. Connections live in a [`JoinSet`] owned by this task, so
/// aborting it drops (and closes) every connection too.
async fn serve(listener: TcpListener, app: Router) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, app.clone()));
                }
                Err(_) => tokio::time::sleep(ACCEPT_BACKOFF).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: TcpStream, app: Router) {
    // Latency matters more than packet count: write every SSE frame as soon as it is ready.
    if stream.set_nodelay(true).is_err() {
        return;
    }
    let service = TowerToHyperService::new(app);
    // HTTP/1.1, or cleartext HTTP/2 when the client starts with its preface (prior knowledge).
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_concurrent_streams(HTTP2_MAX_CONCURRENT_STREAMS);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    // An error here is a client going away or a deliberate cut; either way the connection is done.
    let _ = connection.await;
}
