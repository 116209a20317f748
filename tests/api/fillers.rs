//! Fillers: spoken to voice platforms only, off with `filler = ""`, and never before a Vapi tool
//! that announces itself with its own `request-start` message (both stores).

use redial::config::{AssistantSettings, Settings};
use redial_bench::mock::Behavior;
use serde_json::{Value, json};

use crate::support::app::{TestApp, app_tests, read_sse, vapi_body};
use crate::support::db::Backend;

app_tests!(
    a_generic_client_calling_a_platform_tool_gets_no_filler,
    vapi_hears_the_filler_before_a_platform_tool,
    an_empty_filler_turns_it_off,
    a_vapi_tool_with_its_own_request_start_message_gets_no_filler,
);

const FILLER: &str = "One moment, please.";
const ARGS: &str = r#"{"date":"2026-09-01"}"#;

/// `asst-1` with the given filler.
fn assistant(filler: &str) -> impl FnOnce(&mut Settings) {
    let filler = filler.to_owned();
    move |settings: &mut Settings| {
        settings.assistants.push(AssistantSettings {
            id: "asst-1".into(),
            filler,
            ..AssistantSettings::default()
        });
    }
}

fn book_tool() -> Value {
    json!({"type": "function", "function": {"name": "bookAppointment", "parameters": {"type": "object"}}})
}

/// The names of the tool calls in an SSE transcript's chunks.
fn streamed_tool_names(chunks: &[Value]) -> Vec<String> {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["name"].as_str())
        .map(str::to_owned)
        .collect()
}

async fn a_generic_client_calling_a_platform_tool_gets_no_filler(backend: Backend) {
    let app = TestApp::spawn_with(backend, assistant(FILLER)).await;
    app.upstream
        .push("gpt-test", Behavior::tool_call("bookAppointment", ARGS));
    app.upstream
        .push("gpt-test", Behavior::tool_call("bookAppointment", ARGS));
    let mut body = json!({
        "model": "gpt-test",
        "messages": [{"role": "user", "content": "Book me for Thursday."}],
        "tools": [book_tool()],
    });

    // Non-streaming: the tool call, and no content beside it.
    let response = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(crate::support::app::API_KEY)
        .header("x-assistant-id", "asst-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let completion: Value = response.json().await.unwrap();
    let message = &completion["choices"][0]["message"];
    assert!(
        message["content"].is_null() || message["content"] == "",
        "a generic client gets no filler: {message}"
    );
    assert_eq!(
        message["tool_calls"][0]["function"]["name"],
        "bookAppointment"
    );
    assert_eq!(completion["choices"][0]["finish_reason"], "tool_calls");

    // Streaming: the same.
    body["stream"] = json!(true);
    let sse = read_sse(
        app.client
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(crate::support::app::API_KEY)
            .header("x-assistant-id", "asst-1")
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(sse.text(), "", "no filler in the stream either");
    assert_eq!(streamed_tool_names(&sse.chunks), ["bookAppointment"]);
    assert_eq!(sse.finish_reason().as_deref(), Some("tool_calls"));
    app.teardown().await;
}

async fn vapi_hears_the_filler_before_a_platform_tool(backend: Backend) {
    let app = TestApp::spawn_with(backend, assistant(FILLER)).await;
    app.upstream
        .push("gpt-test", Behavior::tool_call("bookAppointment", ARGS));
    let mut body = vapi_body("call-f1", "+14155550123", "Book me for Thursday.");
    body["tools"] = json!([book_tool()]);

    let sse = read_sse(app.chat(&body).await).await;

    assert_eq!(sse.text(), FILLER);
    assert_eq!(streamed_tool_names(&sse.chunks), ["bookAppointment"]);
    app.teardown().await;
}

async fn an_empty_filler_turns_it_off(backend: Backend) {
    let app = TestApp::spawn_with(backend, assistant("")).await;
    app.upstream
        .push("gpt-test", Behavior::tool_call("bookAppointment", ARGS));
    let mut body = vapi_body("call-f2", "+14155550123", "Book me for Thursday.");
    body["tools"] = json!([book_tool()]);

    let sse = read_sse(app.chat(&body).await).await;

    assert!(
        sse.chunks.iter().all(|c| c["choices"][0]["delta"]
            .get("content")
            .is_none_or(Value::is_null)),
        "filler = \"\" says nothing, not even an empty line: {:?}",
        sse.chunks
    );
    assert_eq!(streamed_tool_names(&sse.chunks), ["bookAppointment"]);
    assert_eq!(sse.finish_reason().as_deref(), Some("tool_calls"));
    assert!(sse.done);
    app.teardown().await;
}

async fn a_vapi_tool_with_its_own_request_start_message_gets_no_filler(backend: Backend) {
    let app = TestApp::spawn_with(backend, assistant(FILLER)).await;
    let announced = |mut tool: Value| {
        tool["messages"] =
            json!([{"type": "request-start", "content": "Let me check the calendar."}]);
        tool
    };
    // The message on the tool in the request, then on the assistant's tools Vapi sends along.
    app.upstream
        .push("gpt-test", Behavior::tool_call("bookAppointment", ARGS));
    let mut body = vapi_body("call-f3", "+14155550123", "Book me for Thursday.");
    body["tools"] = json!([announced(book_tool())]);
    let sse = read_sse(app.chat(&body).await).await;
    assert_eq!(
        sse.text(),
        "",
        "Vapi speaks the tool's own message; redial adds none"
    );
    assert_eq!(streamed_tool_names(&sse.chunks), ["bookAppointment"]);

    app.upstream
        .push("gpt-test", Behavior::tool_call("bookAppointment", ARGS));
    let mut body = vapi_body("call-f4", "+14155550123", "Book me for Thursday.");
    body["tools"] = json!([book_tool()]);
    body["assistant"] = json!({"id": "asst-1", "model": {"tools": [announced(book_tool())]}});
    let sse = read_sse(app.chat(&body).await).await;
    assert_eq!(sse.text(), "");
    assert_eq!(streamed_tool_names(&sse.chunks), ["bookAppointment"]);

    // A message of another type does not announce the start: the filler is spoken.
    app.upstream
        .push("gpt-test", Behavior::tool_call("bookAppointment", ARGS));
    let mut body = vapi_body("call-f5", "+14155550123", "Book me for Thursday.");
    let mut tool = book_tool();
    tool["messages"] = json!([{"type": "request-complete", "content": "Done."}]);
    body["tools"] = json!([tool]);
    let sse = read_sse(app.chat(&body).await).await;
    assert_eq!(sse.text(), FILLER);
    app.teardown().await;
}
