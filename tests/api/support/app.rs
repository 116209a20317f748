//! A running redial for tests: its own database (SQLite file or fresh Postgres database), its own
//! mock upstream, bound to 127.0.0.1:0, stopped gracefully on demand.

use std::net::SocketAddr;
use std::time::Duration;

use redial::config::{DatabaseUrl, Secret, Settings};
use redial::platforms::Platform;
use redial::startup::Application;
use redial::state::AppState;
use redial::storage::{CallSession, Caller};
use redial_bench::mock::{MockConfig, MockUpstream};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::db::{Backend, TestDb};

/// The bearer key test apps accept.
pub const API_KEY: &str = "test-key";

/// A running app with its upstream and database.
pub struct TestApp {
    /// Where it listens.
    pub addr: SocketAddr,
    /// HTTP client for requests to it.
    pub client: reqwest::Client,
    /// The mock upstream it talks to.
    pub upstream: MockUpstream,
    /// Its database (also usable directly through `db.store`).
    pub db: TestDb,
    /// The settings it runs with.
    pub settings: Settings,
    /// Its shared state.
    pub state: AppState,
    running: Option<Running>,
}

struct Running {
    stop: oneshot::Sender<()>,
    server: JoinHandle<anyhow::Result<()>>,
}

/// Settings for a test app on `db` talking to `upstream`.
pub fn test_settings(db: &TestDb, upstream: &MockUpstream) -> Settings {
    let mut settings = Settings::default();
    settings.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    settings.server.api_keys = vec![Secret::new(API_KEY)];
    settings.server.shutdown_grace_secs = 10;
    settings.database.url = DatabaseUrl::new(db.url.clone());
    settings.database.journal_dir = db.journal.path().display().to_string();
    settings.upstream.base_url = upstream.base_url();
    settings.upstream.api_key = Secret::new("upstream-key");
    settings.upstream.first_token_timeout_ms = 2_000;
    settings.upstream.stream_idle_timeout_ms = 2_000;
    settings.upstream.heartbeat_ms = 500;
    settings.memory.read_budget_ms = 2_000;
    settings
}

impl TestApp {
    /// Spawns an app on a fresh database of `backend` with default test settings.
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, |_| {}).await
    }

    /// Spawns an app after letting `configure` adjust the settings.
    pub async fn spawn_with(backend: Backend, configure: impl FnOnce(&mut Settings)) -> Self {
        let db = TestDb::new(backend).await;
        let upstream = MockUpstream::start(MockConfig::default())
            .await
            .expect("start the mock upstream");
        let mut settings = test_settings(&db, &upstream);
        configure(&mut settings);
        Self::start(db, upstream, settings).await
    }

    async fn start(db: TestDb, upstream: MockUpstream, settings: Settings) -> Self {
        let app = Application::build(settings.clone())
            .await
            .expect("build the app");
        let addr = app.local_addr().expect("bound address");
        let state = app.state().clone();
        let (stop, stopped) = oneshot::channel();
        let server = tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            client: reqwest::Client::new(),
            upstream,
            db,
            settings,
            state,
            running: Some(Running { stop, server }),
        }
    }

    /// Stops the app gracefully (in-flight streams and background writes drain) and waits.
    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = running.stop.send(());
            running
                .server
                .await
                .expect("server task")
                .expect("graceful stop");
        }
    }

    /// Stops the app and starts a new process-equivalent on the same database and upstream.
    pub async fn restart(mut self) -> Self {
        self.stop().await;
        let Self {
            db,
            upstream,
            settings,
            ..
        } = self;
        Self::start(db, upstream, settings).await
    }

    /// Like [`TestApp::restart`], with the settings changed by `configure` first (a restart
    /// with a new configuration).
    pub async fn restart_with(mut self, configure: impl FnOnce(&mut Settings)) -> Self {
        configure(&mut self.settings);
        self.restart().await
    }

    /// Stops the app and removes its database.
    pub async fn teardown(mut self) {
        self.stop().await;
        self.upstream.shutdown();
        let Self { db, .. } = self;
        db.teardown().await;
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs a JSON body to `path` with the test API key.
    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(API_KEY)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// POSTs a chat completion to `/v1/chat/completions`.
    pub async fn chat(&self, body: &Value) -> reqwest::Response {
        self.post("/v1/chat/completions", body).await
    }

    /// The stored session and caller of a platform's call; panics when the call is not stored.
    pub async fn stored_call(
        &self,
        platform: Platform,
        call_key: &str,
    ) -> (CallSession, Option<Caller>) {
        self.db
            .store
            .load_call(platform, call_key)
            .await
            .expect("load the call")
            .unwrap_or_else(|| panic!("call {call_key} is not stored"))
    }

    /// Waits until background work and the writes it queued (turn persistence) are done, and
    /// anything journaled meanwhile is replayed (unless database writes are failing: then it
    /// cannot be).
    pub async fn settle(&self) {
        for _ in 0..1000 {
            let journal = self.state.engine.journal();
            if self.state.tasks.is_empty()
                && self.state.engine.pending_writes() == 0
                && (journal.backlog() == 0 || journal.failing())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("background tasks did not finish");
    }
}

/// A Vapi-shaped streaming request for `call_id` from `number`.
pub fn vapi_body(call_id: &str, number: &str, user_text: &str) -> Value {
    json!({
        "model": "gpt-test",
        "stream": true,
        "temperature": 0.5,
        "max_tokens": 250,
        "messages": [
            {"role": "system", "content": "You are Ava, a loan assistant."},
            {"role": "assistant", "content": "Hi, how can I help?"},
            {"role": "user", "content": user_text}
        ],
        "call": {"id": call_id, "orgId": "org-1", "type": "inboundPhoneCall", "assistantId": "asst-1",
                 "customer": {"number": number}},
        "customer": {"number": number},
        "phoneNumber": {"id": "pn-1", "number": "+14155550100"},
        "metadata": {"tenantId": "acme"}
    })
}

/// A parsed SSE response.
#[derive(Debug)]
pub struct SseTranscript {
    /// Every `data:` JSON chunk, in order.
    pub chunks: Vec<Value>,
    /// Whether `data: [DONE]` ended the stream.
    pub done: bool,
    /// Comment lines (heartbeats, timing).
    pub comments: Vec<String>,
}

impl SseTranscript {
    /// The concatenated `delta.content` of all chunks.
    pub fn text(&self) -> String {
        self.chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect()
    }

    /// The last chunk's finish reason.
    pub fn finish_reason(&self) -> Option<String> {
        self.chunks.last()?["choices"][0]["finish_reason"]
            .as_str()
            .map(str::to_owned)
    }
}

/// Reads a whole SSE body.
pub async fn read_sse(response: reqwest::Response) -> SseTranscript {
    let body = response.text().await.expect("SSE body");
    parse_sse(&body)
}

/// Parses SSE text.
pub fn parse_sse(body: &str) -> SseTranscript {
    let mut transcript = SseTranscript {
        chunks: Vec::new(),
        done: false,
        comments: Vec::new(),
    };
    for line in body.lines() {
        if let Some(data) = line.strip_prefix("data:") {
            let data = data.trim();
            if data == "[DONE]" {
                transcript.done = true;
            } else {
                transcript
                    .chunks
                    .push(serde_json::from_str(data).expect("chunk is JSON"));
            }
        } else if let Some(comment) = line.strip_prefix(':') {
            transcript.comments.push(comment.trim().to_owned());
        }
    }
    transcript
}

/// Runs an app test against both stores: `<name>::sqlite` and `<name>::postgres`. The Postgres
/// variant is `#[ignore]`d with its reason, so a plain `cargo test` runs the SQLite half and lists
/// it as ignored; `scripts/test.sh` runs it (`--include-ignored`).
macro_rules! app_tests {
    ($($test:ident),+ $(,)?) => {$(
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$test($crate::support::db::Backend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = "needs Postgres at TEST_DATABASE_URL: run scripts/test.sh"]
            async fn postgres() {
                super::$test($crate::support::db::Backend::Postgres).await;
            }
        }
    )+};
}

pub(crate) use app_tests;
