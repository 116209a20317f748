//! `POST /v1/chat/completions` (and the paths platforms build from a base URL): the
//! OpenAI-compatible turn for Vapi, ElevenLabs and any OpenAI client.

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::Stream;
use serde_json::{Value, json};
use uuid::Uuid;

use super::extract::RawBody;
use super::sse::{self, SseBody};
use crate::engine::{
    ToolCalls, TurnEvent, TurnHandle, TurnRequest, TurnTimings, UpstreamFailure,
    has_configured_model,
};
use crate::error::ApiError;
use crate::openai::{ChatRequest, ChunkBuilder, FinishReason, completion};
use crate::platforms;
use crate::state::AppState;
use crate::upstream::{Params, Tool, Usage};

/// Every path a platform may build: Vapi and ElevenLabs append `/chat/completions` to the URL
/// they are given, so a URL that already ends in it arrives doubled.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/chat/completions", post(chat))
        .route("/chat/completions/chat/completions", post(chat))
        .route("/v1/chat/completions/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/models", get(models))
        .route("/v1/models/{*model}", get(model))
}

/// `GET /v1/models`: the models the configuration names (`upstream.model`, fallbacks,
/// escalation models, assistants' models, `analysis.model`), as OpenAI lists models. Clients call
/// it to check the key and warm the connection.
async fn models(State(state): State<AppState>) -> axum::Json<Value> {
    let data: Vec<Value> = state
        .settings
        .configured_models()
        .into_iter()
        .map(|id| model_object(&state, id))
        .collect();
    axum::Json(json!({"object": "list", "data": data}))
}

/// `GET /v1/models/{model}`: one configured model, or a 404 in OpenAI's shape.
async fn model(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    state
        .settings
        .configured_models()
        .into_iter()
        .find(|m| *m == id)
        .map(|id| axum::Json(model_object(&state, id)))
        .ok_or_else(|| ApiError::NotFound(format!("the model {id:?} is not configured")))
}

fn model_object(state: &AppState, id: &str) -> Value {
    json!({
        "id": id,
        "object": "model",
        "created": 0,
        "owned_by": state.engine.llm().provider_of(id),
    })
}

async fn chat(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let mut request = parse(&headers, &body)?;
    request.read_legacy_functions();
    validate(&state, &request)?;
    let identity = platforms::identify(
        &headers,
        &request,
        &state.settings.memory.default_region,
        state.settings.limits.max_id_bytes,
    )
    .map_err(|e| over_limit(e.field, "string_above_max_length", e.to_string()))?;
    require_model(&state, &request, &identity.assistant_id)?;
    let params = Params::from_request(&request.extra, request.user.as_deref())
        .map_err(|e| ApiError::invalid_param(&e.param, e.to_string()))?;
    let include_usage = request
        .extra
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        == Some(true);
    let streaming = identity.is_voice() || request.stream == Some(true);
    metrics::counter!("redial_turns_total", "platform" => identity.platform.as_str()).increment(1);
    let requested_model = request.model.clone().unwrap_or_default();
    let announced_tools = announced_tools(&request);
    let tools = Tool::from_openai_list(request.tools.as_deref().unwrap_or_default());
    let turn = TurnRequest {
        identity,
        messages: request.messages,
        tools,
        model: request.model,
        params: Box::new(params),
        deferred_tools: Vec::new(),
        announced_tools,
        hold_before_internal_tools: false,
    };
    let handle = state.engine.start_turn(turn);
    let heartbeat = Duration::from_millis(state.settings.upstream.heartbeat_ms);
    Ok(if streaming {
        stream_response(handle, requested_model, heartbeat, include_usage).await
    } else {
        json_response(handle, &requested_model).await
    })
}

/// Parses the body, with errors that name the offending field.
fn parse(headers: &HeaderMap, body: &[u8]) -> Result<ChatRequest, ApiError> {
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
        let value = content_type.to_str().unwrap_or("").to_ascii_lowercase();
        let essence = value.split(';').next().unwrap_or("").trim();
        if essence != "application/json" && !essence.ends_with("+json") {
            return Err(ApiError::UnsupportedMediaType(format!(
                "unsupported content type {essence:?}; send application/json"
            )));
        }
    }
    // The path of a bad field is tracked only for a body that failed: tracking it costs every
    // good request a little.
    if let Ok(request) = serde_json::from_slice(body) {
        return Ok(request);
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::bad_request(format!("the body is not valid JSON: {inner}"))
        } else if path == "." {
            ApiError::bad_request(format!("invalid request: {inner}"))
        } else {
            ApiError::invalid_param(&path, format!("invalid value for `{path}`: {inner}"))
        }
    })
}

/// Checks what the request must satisfy before anything of it is stored or sent upstream.
fn validate(state: &AppState, request: &ChatRequest) -> Result<(), ApiError> {
    if request.messages.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "`messages` must contain at least one message",
        ));
    }
    let max_messages = state.settings.limits.max_messages;
    if request.messages.len() > max_messages {
        return Err(over_limit(
            "messages",
            "array_above_max_length",
            format!(
                "`messages` has {} messages; at most {max_messages} are accepted \
                 (limits.max_messages)",
                request.messages.len()
            ),
        ));
    }
    Ok(())
}

/// A model must come from the request or the configuration (the assistant's or upstream's
/// model, or a fallback).
fn require_model(
    state: &AppState,
    request: &ChatRequest,
    assistant_id: &str,
) -> Result<(), ApiError> {
    let has_model = request
        .model
        .as_deref()
        .is_some_and(|m| !m.trim().is_empty());
    let settings = &state.settings;
    let configured = has_configured_model(&settings.upstream, settings.assistant(assistant_id));
    if !has_model && !configured {
        return Err(ApiError::invalid_param(
            "model",
            "`model` is required (or configure `upstream.model` or the assistant's `model` to \
             choose it server-side)",
        ));
    }
    Ok(())
}

/// The tools Vapi announces itself when they start: those configured with a `request-start`
/// message (Vapi speaks it, or one of its own default phrases, as the tool call starts). They are
/// read from the request's `tools` and from the assistant's `model.tools` that Vapi sends with
/// the call, whichever carries the tool's `messages`.
fn announced_tools(request: &ChatRequest) -> Vec<String> {
    let assistant_tools = [
        ("assistant", "/model/tools"),
        ("call", "/assistant/model/tools"),
    ]
    .into_iter()
    .filter_map(|(key, pointer)| request.extra.get(key)?.pointer(pointer)?.as_array())
    .flatten();
    request
        .tools
        .iter()
        .flatten()
        .chain(assistant_tools)
        .filter(|tool| announces_start(tool))
        .filter_map(|tool| tool.pointer("/function/name")?.as_str().map(str::to_owned))
        .collect()
}

/// Whether a Vapi tool definition has a `request-start` message.
fn announces_start(tool: &Value) -> bool {
    tool.get("messages")
        .and_then(Value::as_array)
        .is_some_and(|messages| {
            messages
                .iter()
                .any(|m| m.get("type").and_then(Value::as_str) == Some("request-start"))
        })
}

/// A 400 for a request over one of the `[limits]`, with OpenAI's code for it.
fn over_limit(param: &str, code: &'static str, message: String) -> ApiError {
    ApiError::BadRequest {
        message,
        param: Some(param.to_owned()),
        code,
    }
}

/// SSE: waits briefly for the first event so `Server-Timing` can include the upstream's first
/// token, then streams every event as it arrives, ending with `data: [DONE]`. Comment
/// heartbeats keep the connection alive while the upstream thinks.
async fn stream_response(
    mut handle: TurnHandle,
    requested_model: String,
    heartbeat: Duration,
    include_usage: bool,
) -> Response {
    let first = tokio::time::timeout(heartbeat, handle.recv()).await.ok();
    if let Some(Some(TurnEvent::UpstreamFailed(failure))) = first {
        return upstream_error(&failure);
    }
    let timing = server_timing(&handle.timings, handle.started, None);
    let model = handle
        .timings
        .model
        .get()
        .cloned()
        .unwrap_or(requested_model);
    let chunks = ChunkBuilder::new(completion_id(), now_unix(), model);
    let frames = sse_frames(handle, first, chunks, include_usage);
    let mut response = Body::new(SseBody::new(frames, heartbeat)).into_response();
    set_common_headers(&mut response, &timing);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The turn's events as SSE frames. A client that asked for usage
/// (`stream_options.include_usage`) gets it as OpenAI sends it: one chunk with no choices after
/// the finish chunk.
fn sse_frames(
    mut handle: TurnHandle,
    first: Option<Option<TurnEvent>>,
    mut chunks: ChunkBuilder,
    include_usage: bool,
) -> impl Stream<Item = Bytes> {
    async_stream::stream! {
        let mut pending = first;
        let mut usage = Usage::default();
        loop {
            let event = match pending.take() {
                Some(event) => event,
                None => handle.recv().await,
            };
            if let Some(model) = handle.timings.model.get()
                && model != chunks.model() {
                    chunks.set_model(model);
                }
            match event {
                Some(TurnEvent::Text(text)) => yield sse::data(&chunks.content(&text)),
                Some(TurnEvent::ToolCall(delta)) => yield sse::data(&chunks.tool_call(&delta)),
                Some(TurnEvent::Usage(total)) => usage = total,
                Some(TurnEvent::Finish(reason)) => {
                    yield sse::data(&chunks.finish(reason));
                    if include_usage {
                        yield sse::data(&chunks.usage(&usage));
                    }
                    break;
                }
                Some(TurnEvent::InternalToolCall(_) | TurnEvent::InternalToolResult(_)) => {}
                // Past the headers, the error goes in the stream, as OpenAI sends one (its SDKs
                // raise it).
                Some(TurnEvent::UpstreamFailed(failure)) => {
                    yield sse::data(&upstream_error_body(&failure).to_string());
                    break;
                }
                None => {
                    // The turn ended without a finish event (it cannot, short of a bug): still
                    // close the stream properly so the platform never hangs.
                    tracing::error!("turn ended without a finish event");
                    yield sse::data(&chunks.finish(FinishReason::Stop));
                    break;
                }
            }
        }
        let total = handle.started.elapsed();
        yield sse::comment(&format!("server-timing total;dur={:.3}", ms(total)));
        yield sse::data("[DONE]");
    }
}

/// Non-streaming: collects the whole turn into one `chat.completion`.
async fn json_response(mut handle: TurnHandle, requested_model: &str) -> Response {
    let mut text = String::new();
    let mut calls = ToolCalls::default();
    let mut finish = FinishReason::Stop;
    let mut usage = Usage::default();
    while let Some(event) = handle.recv().await {
        match event {
            TurnEvent::Text(t) => text.push_str(&t),
            TurnEvent::ToolCall(delta) => calls.push(&delta),
            TurnEvent::Usage(total) => usage = total,
            TurnEvent::Finish(reason) => {
                finish = reason;
                break;
            }
            TurnEvent::InternalToolCall(_) | TurnEvent::InternalToolResult(_) => {}
            TurnEvent::UpstreamFailed(failure) => return upstream_error(&failure),
        }
    }
    let model = handle
        .timings
        .model
        .get()
        .map_or(requested_model, String::as_str);
    let body = completion(
        &completion_id(),
        now_unix(),
        model,
        &text,
        calls.calls(),
        finish,
        &usage,
    );
    let timing = server_timing(
        &handle.timings,
        handle.started,
        Some(handle.started.elapsed()),
    );
    let mut response = axum::Json(body).into_response();
    set_common_headers(&mut response, &timing);
    response
}

/// The upstream's failure as an error response in OpenAI's shape, with its status.
fn upstream_error(failure: &UpstreamFailure) -> Response {
    let status = StatusCode::from_u16(failure.status).unwrap_or(StatusCode::BAD_GATEWAY);
    (status, axum::Json(upstream_error_body(failure))).into_response()
}

/// `{"error": {message, type, param, code}}`: OpenAI's type for the status (its SDKs pick the
/// exception from the status, and retry 429 and 5xx), and `upstream_<kind>` as the code, so the
/// error reads as the upstream's and not the gateway's own.
fn upstream_error_body(failure: &UpstreamFailure) -> Value {
    let kind = match failure.status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    };
    json!({"error": {
        "message": failure.message,
        "type": kind,
        "param": null,
        "code": format!("upstream_{}", failure.kind),
    }})
}

fn set_common_headers(response: &mut Response, timing: &str) {
    if let Ok(value) = HeaderValue::from_str(timing) {
        response.headers_mut().insert("server-timing", value);
    }
}

/// `Server-Timing`: memory read, prompt build, upstream first token (when known), and total
/// time until the response headers (or the whole response, for JSON).
fn server_timing(timings: &TurnTimings, started: Instant, total: Option<Duration>) -> String {
    let mut parts = Vec::with_capacity(4);
    if let Some(d) = timings.memory.get() {
        // Which memory a turn used: the call cache (nothing read from the database) or not.
        let desc = if timings.memory_cached.get() == Some(&true) {
            "memory read: call cache"
        } else {
            "memory read"
        };
        parts.push(format!("mem;dur={:.3};desc=\"{desc}\"", ms(*d)));
    }
    if let Some(d) = timings.prompt.get() {
        parts.push(format!("prompt;dur={:.3};desc=\"prompt build\"", ms(*d)));
    }
    if let Some(d) = timings.upstream_first.get() {
        parts.push(format!(
            "upstream;dur={:.3};desc=\"upstream first token\"",
            ms(*d)
        ));
    }
    let total = total.unwrap_or_else(|| started.elapsed());
    parts.push(format!("total;dur={:.3}", ms(total)));
    parts.join(", ")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn completion_id() -> String {
    format!("chatcmpl-{}", Uuid::now_v7().simple())
}

fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}
