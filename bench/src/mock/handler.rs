//! The mock's HTTP layer: shared state, routes, request recording, and paced response bodies.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::stream::{self, BoxStream, StreamExt};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::anthropic;
use super::render::{self, Frame, JsonPlan, ReplyContext, StreamPlan, Tail};
use super::script::{Behavior, MockConfig};

/// How long [`Behavior::Stall`] holds a request before giving up.
const STALL_FOR: Duration = Duration::from_secs(600);
/// Pause before a cut so the frames already produced are flushed to the socket first.
const CUT_GRACE: Duration = Duration::from_millis(10);
/// The queue key that matches any model.
pub(crate) const ANY_MODEL: &str = "*";

type BodyStream = BoxStream<'static, Result<Bytes, io::Error>>;

/// State shared by the [`super::MockUpstream`] handle and the request handlers.
#[derive(Debug)]
pub(crate) struct MockState {
    config: Mutex<MockConfig>,
    queues: Mutex<HashMap<String, VecDeque<Behavior>>>,
    log: Mutex<RequestLog>,
    recording: AtomicBool,
    /// Whether the Messages endpoint models Anthropic's prompt cache.
    prompt_cache: AtomicBool,
    next_call_id: AtomicU64,
    /// Prompt prefixes the Messages endpoint has cached (hashes).
    cached_prefixes: Mutex<HashSet<[u8; 32]>>,
}

/// Bodies, headers and HTTP versions of received requests, index-aligned.
#[derive(Debug, Default)]
struct RequestLog {
    bodies: Vec<Value>,
    headers: Vec<Vec<(String, String)>>,
    versions: Vec<Version>,
}

impl MockState {
    pub(crate) fn new(config: MockConfig) -> Self {
        Self {
            config: Mutex::new(config),
            queues: Mutex::new(HashMap::new()),
            log: Mutex::new(RequestLog::default()),
            recording: AtomicBool::new(true),
            prompt_cache: AtomicBool::new(true),
            next_call_id: AtomicU64::new(0),
            cached_prefixes: Mutex::new(HashSet::new()),
        }
    }

    pub(crate) fn set_config(&self, config: MockConfig) {
        *lock(&self.config) = config;
    }

    pub(crate) fn set_recording(&self, on: bool) {
        self.recording.store(on, Ordering::Relaxed);
    }

    pub(crate) fn set_prompt_cache(&self, on: bool) {
        self.prompt_cache.store(on, Ordering::Relaxed);
    }

    pub(crate) fn push(&self, model: &str, behavior: Behavior) {
        lock(&self.queues)
            .entry(model.to_owned())
            .or_default()
            .push_back(behavior);
    }

    pub(crate) fn queued(&self) -> usize {
        lock(&self.queues).values().map(VecDeque::len).sum()
    }

    pub(crate) fn requests(&self) -> Vec<Value> {
        lock(&self.log).bodies.clone()
    }

    pub(crate) fn request_headers(&self) -> Vec<Vec<(String, String)>> {
        lock(&self.log).headers.clone()
    }

    pub(crate) fn request_versions(&self) -> Vec<Version> {
        lock(&self.log).versions.clone()
    }

    fn record(&self, version: Version, headers: &HeaderMap, body: &Result<Value, String>) {
        if !self.recording.load(Ordering::Relaxed) {
            return;
        }
        let body = match body {
            Ok(value) => value.clone(),
            Err(raw) => Value::String(raw.clone()),
        };
        let headers = headers
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), value)
            })
            .collect();
        let mut log = lock(&self.log);
        log.bodies.push(body);
        log.headers.push(headers);
        log.versions.push(version);
    }

    /// The next scripted behaviour for `model` (its own queue first, then `"*"`), or the
    /// default stream.
    fn next_behavior(&self, model: &str) -> Behavior {
        let scripted = {
            let mut queues = lock(&self.queues);
            let own = queues.get_mut(model).and_then(VecDeque::pop_front);
            own.or_else(|| queues.get_mut(ANY_MODEL).and_then(VecDeque::pop_front))
        };
        scripted.unwrap_or_else(|| lock(&self.config).to_behavior())
    }

    fn reply_context(&self, request: &Value, behavior: &Behavior) -> ReplyContext {
        let calls = match behavior {
            Behavior::ToolCalls { calls, .. } => calls.len() as u64,
            _ => 0,
        };
        ReplyContext {
            model: request["model"].as_str().unwrap_or_default().to_owned(),
            include_usage: request["stream_options"]["include_usage"].as_bool() == Some(true),
            prompt_tokens: estimate_prompt_tokens(request),
            first_call_id: self.next_call_id.fetch_add(calls, Ordering::Relaxed),
        }
    }
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves the data consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The mock's routes. Chat completions are served with and without the `/v1` prefix.
pub(crate) fn router(state: Arc<MockState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/chat/completions", post(chat_completions))
        .route("/v1/messages", post(messages))
        .route("/messages", post(messages))
        .route("/v1/models", get(models))
        .fallback(not_found)
        .with_state(state)
}

async fn chat_completions(
    State(state): State<Arc<MockState>>,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed = serde_json::from_slice::<Value>(&body)
        .map_err(|_| String::from_utf8_lossy(&body).into_owned());
    state.record(version, &headers, &parsed);
    let Ok(request) = parsed else {
        return error_response(StatusCode::BAD_REQUEST, "request body is not valid JSON");
    };
    let model = request["model"].as_str().unwrap_or_default();
    let behavior = state.next_behavior(model);
    match behavior {
        Behavior::Status { code, body } => status_response(code, body),
        Behavior::Stall => {
            tokio::time::sleep(STALL_FOR).await;
            error_response(StatusCode::GATEWAY_TIMEOUT, "mock upstream stalled")
        }
        behavior => {
            let ctx = state.reply_context(&request, &behavior);
            if request["stream"].as_bool() == Some(true) {
                sse_response(render::stream_plan(&behavior, &ctx))
            } else {
                json_response(render::json_plan(&behavior, &ctx)).await
            }
        }
    }
}

async fn messages(
    State(state): State<Arc<MockState>>,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed = serde_json::from_slice::<Value>(&body)
        .map_err(|_| String::from_utf8_lossy(&body).into_owned());
    state.record(version, &headers, &parsed);
    let Ok(request) = parsed else {
        let body = anthropic::error_body("invalid_request_error", "body is not valid JSON");
        return json_body(StatusCode::BAD_REQUEST, body.to_string());
    };
    if let Some(problem) = anthropic::invalid(&headers, &request) {
        let body = anthropic::error_body("invalid_request_error", &problem);
        return json_body(StatusCode::BAD_REQUEST, body.to_string());
    }
    let model = request["model"].as_str().unwrap_or_default();
    let behavior = state.next_behavior(model);
    match behavior {
        Behavior::Status { code, body } => status_response(code, body),
        Behavior::Stall => {
            tokio::time::sleep(STALL_FOR).await;
            error_response(StatusCode::GATEWAY_TIMEOUT, "mock upstream stalled")
        }
        behavior => {
            let calls = match &behavior {
                Behavior::ToolCalls { calls, .. } => calls.len() as u64,
                _ => 0,
            };
            let first_call_id = state.next_call_id.fetch_add(calls, Ordering::Relaxed);
            let ctx = {
                let mut cached = state
                    .prompt_cache
                    .load(Ordering::Relaxed)
                    .then(|| lock(&state.cached_prefixes));
                anthropic::context(&request, body.len(), cached.as_deref_mut(), first_call_id)
            };
            if request["stream"].as_bool() == Some(true) {
                sse_response(anthropic::stream_plan(&behavior, &ctx))
            } else {
                json_response(anthropic::json_plan(&behavior, &ctx)).await
            }
        }
    }
}

async fn models() -> Response {
    let body = json!({"object": "list", "data": [{"id": "mock", "object": "model"}]});
    json_body(StatusCode::OK, body.to_string())
}

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "no such route on the mock upstream")
}

fn sse_response(plan: StreamPlan) -> Response {
    let headers = [
        (header::CONTENT_TYPE, "text/event-stream"),
        (header::CACHE_CONTROL, "no-cache"),
    ];
    let body = Body::from_stream(body_stream(plan.frames, plan.tail));
    (StatusCode::OK, headers, body).into_response()
}

async fn json_response(plan: JsonPlan) -> Response {
    if !plan.delay.is_zero() {
        tokio::time::sleep(plan.delay).await;
    }
    match plan.body {
        Some(body) => json_body(StatusCode::OK, body.to_string()),
        None => {
            let headers = [(header::CONTENT_TYPE, "application/json")];
            (
                StatusCode::OK,
                headers,
                Body::from_stream(tail_stream(plan.tail)),
            )
                .into_response()
        }
    }
}

fn status_response(code: u16, body: String) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if serde_json::from_str::<Value>(&body).is_ok() {
        json_body(status, body)
    } else {
        (status, [(header::CONTENT_TYPE, "text/plain")], body).into_response()
    }
}

fn error_response(status: StatusCode, message: &str) -> Response {
    let body =
        json!({"error": {"message": message, "type": "mock_error", "code": status.as_u16()}});
    json_body(status, body.to_string())
}

fn json_body(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The response body: `frames` at their scheduled times, then the tail.
fn body_stream(frames: Vec<Frame>, tail: Tail) -> BodyStream {
    stream::unfold(Pacer::new(frames), Pacer::next_frame)
        .chain(tail_stream(tail))
        .boxed()
}

fn tail_stream(tail: Tail) -> BodyStream {
    match tail {
        Tail::End => stream::empty().boxed(),
        Tail::Hang => stream::pending().boxed(),
        Tail::Cut => stream::once(async {
            tokio::time::sleep(CUT_GRACE).await;
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "mock upstream cut the connection",
            ))
        })
        .boxed(),
    }
}

/// Releases frames on an absolute schedule measured from the first poll, so per-frame timer
/// overshoot does not accumulate into drift.
struct Pacer {
    frames: std::vec::IntoIter<Frame>,
    start: Option<Instant>,
    offset: Duration,
}

impl Pacer {
    fn new(frames: Vec<Frame>) -> Self {
        Self {
            frames: frames.into_iter(),
            start: None,
            offset: Duration::ZERO,
        }
    }

    async fn next_frame(mut self) -> Option<(Result<Bytes, io::Error>, Self)> {
        let frame = self.frames.next()?;
        let start = *self.start.get_or_insert_with(Instant::now);
        if !frame.delay.is_zero() {
            self.offset += frame.delay;
            tokio::time::sleep_until(start + self.offset).await;
        }
        Some((Ok(frame.bytes), self))
    }
}

/// A rough prompt size (about four characters per token) for the `usage` object.
fn estimate_prompt_tokens(request: &Value) -> u64 {
    let chars: usize = request["messages"]
        .as_array()
        .map(|messages| {
            messages
                .iter()
                .filter_map(|message| message["content"].as_str())
                .map(str::len)
                .sum()
        })
        .unwrap_or(0);
    (chars as u64).div_ceil(4)
}
