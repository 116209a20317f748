//! Providers: the turn-level matrix (text; internal tool → speech; platform tool → filler and
//! tool call; fallback across providers; all-fail apology; cut stream; Retell) against the mock's
//! OpenAI-compatible and Anthropic Messages endpoints over real HTTP, on both stores; clean tool
//! schemas, prompt caching, parameters, usage, `GET /v1/models` and the legacy `function` role.

use axum::http::Version;
use futures_util::{SinkExt, StreamExt};
use redial::config::{
    AdminKey, AssistantSettings, FieldSettings, HttpVersion, PriceSettings, ProviderKind,
    ProviderSettings, Secret, Settings, UpstreamSettings,
};
use redial::platforms::Platform;
use redial_bench::mock::{Behavior, HTTP2_MAX_CONCURRENT_STREAMS};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::app::{API_KEY, TestApp, app_tests, read_sse, vapi_body};
use crate::support::db::Backend;

/// Which API of the mock answers the assistant's model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    OpenAi,
    Anthropic,
}

const FILLER: &str = "One moment, please.";
const APOLOGY: &str = "Sorry, I'm having trouble right now. Could you say that again?";
const ARGS: &str = r#"{"date":"2026-09-01","time":"10:00"}"#;
const PROMPT: &str = "You are Ava, a loan assistant.";

impl Kind {
    /// The model as configured, and as the mock's queue sees it.
    fn model(self) -> (&'static str, &'static str) {
        match self {
            Self::OpenAi => ("gpt-test", "gpt-test"),
            Self::Anthropic => ("claude/claude-test", "claude-test"),
        }
    }

    fn other(self) -> Self {
        match self {
            Self::OpenAi => Self::Anthropic,
            Self::Anthropic => Self::OpenAi,
        }
    }

    /// Whether request `i` of the mock went to this kind's API, authenticated as it should be.
    fn served(self, app: &TestApp, i: usize) -> bool {
        let headers = &app.upstream.request_headers()[i];
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        match self {
            Self::OpenAi => {
                header("authorization") == Some("Bearer upstream-key")
                    && header("anthropic-version").is_none()
            }
            Self::Anthropic => {
                header("x-api-key") == Some("ant-key")
                    && header("anthropic-version") == Some("2023-06-01")
                    && header("authorization").is_none()
            }
        }
    }
}

/// Both providers on the test's mock, with `kind`'s model answering `asst-1` (a script with one
/// field) and `agent_1` (Retell), and the other kind's model as the fallback.
fn configure(kind: Kind) -> impl FnOnce(&mut Settings) {
    move |settings: &mut Settings| {
        settings.providers.push(ProviderSettings {
            name: "claude".into(),
            kind: ProviderKind::Anthropic,
            base_url: settings.upstream.base_url.clone(),
            api_key: Secret::new("ant-key"),
            headers: Default::default(),
            max_tokens: 512,
            stream_usage: true,
            http: HttpVersion::Auto,
        });
        settings.upstream.model = kind.model().0.into();
        settings.upstream.fallback_models = vec![kind.other().model().0.into()];
        let script = vec![FieldSettings {
            name: "loan_purpose".into(),
            question: "What is the loan for?".into(),
            required: true,
            description: String::new(),
        }];
        settings.assistants = vec![
            AssistantSettings {
                id: "asst-1".into(),
                fields: script.clone(),
                ..AssistantSettings::default()
            },
            AssistantSettings {
                id: "agent_1".into(),
                system_prompt: PROMPT.into(),
                greeting: "Hi, this is Ava.".into(),
                fields: script,
                ..AssistantSettings::default()
            },
        ];
    }
}

async fn spawn(backend: Backend, kind: Kind) -> TestApp {
    TestApp::spawn_with(backend, configure(kind)).await
}

/// The names and arguments of the tool calls in an SSE transcript, assembled.
fn streamed_calls(chunks: &[Value]) -> Vec<(String, String)> {
    let mut calls: Vec<(String, String)> = Vec::new();
    for chunk in chunks {
        for call in chunk["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let index = call["index"].as_u64().unwrap() as usize;
            if calls.len() <= index {
                calls.resize(index + 1, Default::default());
            }
            if let Some(name) = call["function"]["name"].as_str() {
                calls[index].0 = name.to_owned();
            }
            calls[index].1 += call["function"]["arguments"].as_str().unwrap_or("");
        }
    }
    calls
}

macro_rules! matrix {
    ($($case:ident => $openai:ident, $anthropic:ident;)+) => {
        $(
            async fn $openai(backend: Backend) {
                $case(backend, Kind::OpenAi).await;
            }
            async fn $anthropic(backend: Backend) {
                $case(backend, Kind::Anthropic).await;
            }
            app_tests!($openai, $anthropic);
        )+
    };
}

matrix! {
    text => text_openai, text_anthropic;
    internal_tool => internal_tool_openai, internal_tool_anthropic;
    platform_tool => platform_tool_openai, platform_tool_anthropic;
    fallback => fallback_openai_to_anthropic, fallback_anthropic_to_openai;
    all_fail => all_fail_openai, all_fail_anthropic;
    cut_stream => cut_stream_openai, cut_stream_anthropic;
    retell => retell_openai, retell_anthropic;
}

async fn text(backend: Backend, kind: Kind) {
    let app = spawn(backend, kind).await;
    let (model, queue) = kind.model();
    app.upstream
        .push(queue, Behavior::text(["Hello", " there."]));
    let mut body = vapi_body("call-p1", "+14155550123", "Hi");
    body["call"]["assistantId"] = json!("asst-1");

    let sse = read_sse(app.chat(&body).await).await;

    assert_eq!(sse.text(), "Hello there.");
    assert_eq!(sse.finish_reason().as_deref(), Some("stop"));
    assert!(sse.done);
    assert_eq!(sse.chunks[0]["model"], model);
    assert_eq!(app.upstream.requests().len(), 1);
    assert!(kind.served(&app, 0));
    app.settle().await;
    let (session, _) = app.stored_call(Platform::Vapi, "call-p1").await;
    assert_eq!(session.model.as_deref(), Some(model));
    app.teardown().await;
}

async fn internal_tool(backend: Backend, kind: Kind) {
    let app = spawn(backend, kind).await;
    let (_, queue) = kind.model();
    let args = r#"{"field":"loan_purpose","value":"a car"}"#;
    app.upstream
        .push(queue, Behavior::tool_call("record_answer", args));
    app.upstream
        .push(queue, Behavior::text(["Great, ", "a car."]));
    let mut body = vapi_body("call-p2", "+14155550123", "It's for a car.");
    body["call"]["assistantId"] = json!("asst-1");

    let sse = read_sse(app.chat(&body).await).await;

    assert_eq!(
        sse.text(),
        "Great, a car.",
        "the model speaks after redial's tool"
    );
    assert!(
        streamed_calls(&sse.chunks).is_empty(),
        "the platform never sees it"
    );
    assert_eq!(sse.finish_reason().as_deref(), Some("stop"));
    let requests = app.upstream.requests();
    assert_eq!(requests.len(), 2);
    assert!(kind.served(&app, 0) && kind.served(&app, 1));
    // The second pass carries the call and its result, in the provider's own shape.
    let second = requests[1]["messages"].to_string();
    match kind {
        Kind::OpenAi => assert!(second.contains(r#""role":"tool""#), "{second}"),
        Kind::Anthropic => {
            assert!(second.contains(r#""type":"tool_use""#), "{second}");
            assert!(second.contains(r#""type":"tool_result""#), "{second}");
        }
    }
    app.settle().await;
    let (session, _) = app.stored_call(Platform::Vapi, "call-p2").await;
    assert_eq!(session.answers["loan_purpose"].value, "a car");
    app.teardown().await;
}

async fn platform_tool(backend: Backend, kind: Kind) {
    let app = spawn(backend, kind).await;
    let (_, queue) = kind.model();
    app.upstream
        .push(queue, Behavior::tool_call("bookAppointment", ARGS));
    let mut body = vapi_body("call-p3", "+14155550123", "Book me for Thursday.");
    body["tools"] = json!([{"type": "function", "function": {"name": "bookAppointment",
        "parameters": {"type": "object"}}}]);

    let sse = read_sse(app.chat(&body).await).await;

    assert_eq!(sse.text(), FILLER);
    assert_eq!(
        streamed_calls(&sse.chunks),
        [("bookAppointment".to_owned(), ARGS.to_owned())]
    );
    assert_eq!(sse.finish_reason().as_deref(), Some("tool_calls"));
    assert!(kind.served(&app, 0));
    app.teardown().await;
}

/// The primary model is overloaded (429 from OpenAI, 529 from Anthropic); the other provider's
/// model answers.
async fn fallback(backend: Backend, kind: Kind) {
    let app = spawn(backend, kind).await;
    let (_, queue) = kind.model();
    let (fallback_model, fallback_queue) = kind.other().model();
    let status = match kind {
        Kind::OpenAi => 429,
        Kind::Anthropic => 529,
    };
    app.upstream
        .push(queue, Behavior::error(status, "overloaded"));
    app.upstream
        .push(fallback_queue, Behavior::text(["Fallback ", "here."]));

    let sse = read_sse(app.chat(&vapi_body("call-p4", "+14155550123", "Hi")).await).await;

    assert_eq!(sse.text(), "Fallback here.");
    assert_eq!(sse.chunks[0]["model"], fallback_model);
    assert!(kind.served(&app, 0), "the primary was asked first");
    assert!(kind.other().served(&app, 1), "then the other provider");
    app.teardown().await;
}

async fn all_fail(backend: Backend, kind: Kind) {
    let app = spawn(backend, kind).await;
    let (_, queue) = kind.model();
    let (_, fallback_queue) = kind.other().model();
    app.upstream.push(queue, Behavior::error(500, "down"));
    app.upstream
        .push(fallback_queue, Behavior::error(503, "down too"));

    let sse = read_sse(app.chat(&vapi_body("call-p5", "+14155550123", "Hi")).await).await;

    assert_eq!(sse.text(), APOLOGY);
    assert_eq!(sse.finish_reason().as_deref(), Some("stop"));
    assert!(sse.done);
    assert_eq!(app.upstream.requests().len(), 2);
    app.teardown().await;
}

async fn cut_stream(backend: Backend, kind: Kind) {
    let app = spawn(backend, kind).await;
    let (_, queue) = kind.model();
    app.upstream.push(
        queue,
        Behavior::CutAfter {
            chunks: vec!["Let me ".into(), "check".into()],
        },
    );

    let sse = read_sse(app.chat(&vapi_body("call-p6", "+14155550123", "Hi")).await).await;

    assert_eq!(sse.text(), format!("Let me check {APOLOGY}"));
    assert_eq!(sse.finish_reason().as_deref(), Some("stop"));
    assert!(sse.done);
    app.settle().await;
    let turns = app
        .db
        .store
        .list_turns(
            app.stored_call(Platform::Vapi, "call-p6")
                .await
                .0
                .session_id,
        )
        .await
        .unwrap();
    let reply = turns.last().unwrap();
    assert!(reply.partial, "a cut reply is stored as partial");
    app.teardown().await;
}

async fn retell(backend: Backend, kind: Kind) {
    let app = spawn(backend, kind).await;
    let (_, queue) = kind.model();
    app.upstream
        .push(queue, Behavior::text(["Sure, ", "what for?"]));
    // One socket driven as Retell drives it: config, call details, begin, one response.
    let mut frames = Vec::new();
    let read = async |ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >| loop {
        let message = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(text) = message {
            return serde_json::from_str::<Value>(text.as_str()).unwrap();
        }
    };
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/retell/llm-websocket/{API_KEY}/call-r2",
        app.addr
    ))
    .await
    .unwrap();
    assert_eq!(read(&mut ws).await["response_type"], "config");
    let details = json!({"interaction_type": "call_details", "call": {
        "call_type": "phone_call", "call_id": "call-r2", "agent_id": "agent_1",
        "from_number": "+14155550123", "to_number": "+14155550100", "direction": "inbound",
        "call_status": "registered", "metadata": {}}});
    ws.send(Message::text(details.to_string())).await.unwrap();
    let begin = read(&mut ws).await;
    assert_eq!(begin["content"], "Hi, this is Ava.", "{begin}");
    let request = json!({"interaction_type": "response_required", "response_id": 1,
        "transcript": [{"role": "agent", "content": "Hi, this is Ava.", "words": []},
                       {"role": "user", "content": "I need a loan.", "words": []}]});
    ws.send(Message::text(request.to_string())).await.unwrap();
    loop {
        let frame = read(&mut ws).await;
        let done = frame["response_id"] == 1 && frame["content_complete"] == true;
        frames.push(frame);
        if done {
            break;
        }
    }
    let text: String = frames
        .iter()
        .filter(|f| f["response_type"] == "response")
        .filter_map(|f| f["content"].as_str())
        .collect();
    assert_eq!(text, "Sure, what for?");
    assert!(kind.served(&app, 0));
    let sent = app.upstream.requests()[0].to_string();
    assert!(
        sent.contains(PROMPT),
        "the assistant's prompt went upstream: {sent}"
    );
    assert!(
        sent.contains("end_call"),
        "Retell's end_call tool is offered"
    );
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    app.teardown().await;
}

app_tests!(
    vapi_only_tool_keys_never_reach_the_upstream,
    a_second_turn_to_anthropic_reads_the_static_prefix_from_the_cache,
    usage_comes_back_to_clients_that_ask_and_shows_in_metrics,
    client_parameters_reach_an_openai_compatible_upstream,
    models_are_listed_and_the_legacy_function_role_is_read_as_tool,
    usage_is_stored_per_turn_once_and_summed_per_call,
    each_provider_speaks_the_http_version_it_is_set_to,
    turns_past_one_http2_connections_stream_limit_do_not_wait_for_a_free_stream,
);

/// A Vapi tool as Vapi sends it: its own keys beside the function, plus a transfer tool.
fn vapi_tools() -> Value {
    json!([
        {"type": "function", "async": false, "server": {"url": "https://tools.example/hook"},
         "messages": [{"type": "request-start", "content": "Checking the calendar"}],
         "function": {"name": "bookAppointment", "description": "Book a slot",
                      "parameters": {"type": "object", "properties": {"date": {"type": "string"}}}}},
        {"type": "transferCall", "destinations": [{"type": "number", "number": "+14155550100"}]}
    ])
}

async fn vapi_only_tool_keys_never_reach_the_upstream(backend: Backend) {
    for kind in [Kind::OpenAi, Kind::Anthropic] {
        let app = spawn(backend, kind).await;
        let mut body = vapi_body("call-t1", "+14155550123", "Book me in.");
        body["call"]["assistantId"] = json!("asst-1");
        body["tools"] = vapi_tools();

        let sse = read_sse(app.chat(&body).await).await;
        assert!(sse.done);

        // The platform's one function tool, clean, then redial's own two (asst-1 has a script and
        // the caller is known); no transfer tool.
        let sent = app.upstream.requests()[0]["tools"].clone();
        assert_eq!(sent.as_array().unwrap().len(), 3, "{sent}");
        let expected = match kind {
            Kind::OpenAi => json!([{"type": "function", "function": {
                "name": "bookAppointment", "description": "Book a slot",
                "parameters": {"type": "object", "properties": {"date": {"type": "string"}}}}}]),
            Kind::Anthropic => json!([{"name": "bookAppointment", "description": "Book a slot",
                "input_schema": {"type": "object", "properties": {"date": {"type": "string"}}}}]),
        };
        assert_eq!(sent[0], expected[0], "{kind:?}");
        app.teardown().await;
    }
}

async fn a_second_turn_to_anthropic_reads_the_static_prefix_from_the_cache(backend: Backend) {
    let app = spawn(backend, Kind::Anthropic).await;
    let mut body = vapi_body("call-c1", "+14155550123", "I need a loan.");
    body["call"]["assistantId"] = json!("asst-1");
    let first = read_sse(app.chat(&body).await).await;
    assert!(first.done);
    app.settle().await;

    body["messages"] = json!([
        {"role": "system", "content": "You are Ava, a loan assistant."},
        {"role": "assistant", "content": "Hi, how can I help?"},
        {"role": "user", "content": "I need a loan."},
        {"role": "assistant", "content": first.text()},
        {"role": "user", "content": "For a car."}
    ]);
    body["stream_options"] = json!({"include_usage": true});
    let second = read_sse(app.chat(&body).await).await;

    let request = &app.upstream.requests()[1];
    let system = request["system"].as_array().unwrap();
    assert_eq!(system.len(), 2, "{system:?}");
    assert_eq!(system[0]["text"], "You are Ava, a loan assistant.");
    assert_eq!(system[0]["cache_control"], json!({"type": "ephemeral"}));
    assert!(
        system[1]["text"]
            .as_str()
            .unwrap()
            .contains("What is the loan for?"),
        "the summary follows the cached prefix: {system:?}"
    );
    assert!(system[1].get("cache_control").is_none());
    let tools = request["tools"].as_array().unwrap();
    assert_eq!(tools[0]["name"], "record_answer");
    assert_eq!(
        tools.last().unwrap()["cache_control"],
        json!({"type": "ephemeral"})
    );
    assert_eq!(
        tools
            .iter()
            .filter(|t| t.get("cache_control").is_some())
            .count(),
        1,
        "one mark, on the last tool"
    );
    // The mock reads the same prefix from its cache: the client sees the cached tokens.
    let usage = &second.chunks.last().unwrap()["usage"];
    // Stored per turn, summed per call.
    app.settle().await;
    let (session, _) = app.stored_call(Platform::Vapi, "call-c1").await;
    let stored = app.db.store.call_usage(session.session_id).await.unwrap();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].model, "claude/claude-test");
    assert_eq!(stored[0].turns, 2);
    assert_eq!(
        stored[0].cached_tokens,
        usage["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap(),
        "the first turn wrote the cache, the second read it"
    );
    assert!(
        usage["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
            > 0,
        "{usage}"
    );
    app.teardown().await;
}

async fn usage_comes_back_to_clients_that_ask_and_shows_in_metrics(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.server.admin_keys = vec![AdminKey::new("ops", "admin-key")];
        settings.prices.insert(
            "gpt-test".into(),
            PriceSettings {
                input_per_mtok: 1_000.0,
                output_per_mtok: 2_000.0,
                cached_input_per_mtok: None,
            },
        );
    })
    .await;
    let body =
        json!({"model": "gpt-test", "messages": [{"role": "user", "content": "Hello there"}]});

    // JSON: always, as OpenAI does.
    let completion: Value = app.chat(&body).await.json().await.unwrap();
    let usage = &completion["usage"];
    assert_eq!(usage["completion_tokens"], 5, "{completion}");
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + 5
    );

    // A stream: only when asked, as a last chunk without choices.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let plain = read_sse(app.chat(&streamed).await).await;
    assert!(plain.chunks.iter().all(|c| c.get("usage").is_none()));
    streamed["stream_options"] = json!({"include_usage": true});
    let asked = read_sse(app.chat(&streamed).await).await;
    let last = asked.chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 5, "{last}");
    assert_eq!(
        asked.chunks[asked.chunks.len() - 2]["choices"][0]["finish_reason"],
        "stop"
    );
    // redial asked the upstream for the usage of every stream.
    let sent = app.upstream.requests();
    assert_eq!(sent[1]["stream_options"], json!({"include_usage": true}));

    let metrics = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth("admin-key")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = |name: &str| {
        metrics
            .lines()
            .any(|l| l.starts_with(name) && l.contains(r#"model="gpt-test""#))
    };
    assert!(line("redial_upstream_tokens_total"), "{metrics}");
    assert!(line("redial_upstream_cost_microdollars_total"), "{metrics}");
    app.teardown().await;
}

async fn client_parameters_reach_an_openai_compatible_upstream(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = json!({
        "model": "gpt-test", "stream": true,
        "messages": [{"role": "user", "content": "Hi"}],
        "prompt_cache_key": "tenant-7", "service_tier": "priority", "user": "user-42",
        "safety_identifier": "sid-1", "verbosity": "low", "metadata": {"tenant": "acme"},
        "temperature": 0.3, "n": 3, "logprobs": true
    });
    assert!(read_sse(app.chat(&body).await).await.done);
    let sent = &app.upstream.requests()[0];
    assert_eq!(sent["prompt_cache_key"], "tenant-7");
    assert_eq!(sent["service_tier"], "priority");
    assert_eq!(sent["user"], "user-42");
    assert_eq!(sent["safety_identifier"], "sid-1");
    assert_eq!(sent["verbosity"], "low");
    assert_eq!(sent["temperature"], 0.3);
    for dropped in ["metadata", "n", "logprobs"] {
        assert!(sent.get(dropped).is_none(), "{dropped} is dropped: {sent}");
    }

    // With store, metadata goes too (OpenAI accepts it only then).
    let mut stored = body.clone();
    stored["store"] = json!(true);
    assert!(read_sse(app.chat(&stored).await).await.done);
    let sent = &app.upstream.requests()[1];
    assert_eq!(sent["metadata"], json!({"tenant": "acme"}));
    assert_eq!(sent["store"], true);

    // A parameter of the wrong type is the client's error, named.
    let mut bad = body.clone();
    bad["temperature"] = json!("warm");
    let response = app.chat(&bad).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["param"], "temperature", "{error}");
    assert_eq!(app.upstream.requests().len(), 2, "nothing went upstream");
    app.teardown().await;
}

async fn models_are_listed_and_the_legacy_function_role_is_read_as_tool(backend: Backend) {
    let app = spawn(backend, Kind::Anthropic).await;
    let list = |path: &'static str| app.client.get(app.url(path)).bearer_auth(API_KEY).send();
    let models: Value = list("/v1/models").await.unwrap().json().await.unwrap();
    assert_eq!(
        models,
        json!({"object": "list", "data": [
            {"id": "claude/claude-test", "object": "model", "created": 0, "owned_by": "claude"},
            {"id": "gpt-test", "object": "model", "created": 0, "owned_by": "upstream"}
        ]})
    );
    let one = list("/v1/models/claude/claude-test").await.unwrap();
    assert_eq!(one.status(), 200);
    assert_eq!(list("/v1/models/nope").await.unwrap().status(), 404);
    let anonymous = app.client.get(app.url("/v1/models")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401, "the list needs a key");

    let body = json!({"model": "x", "stream": true, "messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": null, "function_call": {"name": "weather", "arguments": "{}"}},
        {"role": "function", "name": "weather", "content": "sunny"}
    ]});
    let sse = read_sse(app.chat(&body).await).await;
    assert!(sse.done, "a function message is accepted");
    let sent = app.upstream.requests()[0]["messages"].clone();
    assert_eq!(sent[1]["content"][0]["type"], "tool_use", "{sent}");
    assert_eq!(sent[2]["content"][0]["type"], "tool_result", "{sent}");
    assert_eq!(
        sent[1]["content"][0]["id"], sent[2]["content"][0]["tool_use_id"],
        "{sent}"
    );
    app.teardown().await;
}

async fn usage_is_stored_per_turn_once_and_summed_per_call(backend: Backend) {
    let app = spawn(backend, Kind::OpenAi).await;
    let (_, fallback_queue) = Kind::Anthropic.model();
    // Turn 1: OpenAI answers (5 tokens by default). Turn 2: OpenAI is down, Anthropic answers.
    let first = vapi_body("call-u1", "+14155550123", "Hi");
    assert!(read_sse(app.chat(&first).await).await.done);
    app.upstream.push("gpt-test", Behavior::error(500, "down"));
    app.upstream
        .push(fallback_queue, Behavior::text(["a", "b", "c"]));
    let mut second = first.clone();
    second["messages"] = json!([
        {"role": "system", "content": "You are Ava, a loan assistant."},
        {"role": "assistant", "content": "Hi, how can I help?"},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello Hello Hello Hello Hello "},
        {"role": "user", "content": "More"}
    ]);
    assert!(read_sse(app.chat(&second).await).await.done);
    // The platform re-sends the second request: nothing is counted twice.
    app.upstream
        .push(fallback_queue, Behavior::text(["a", "b", "c"]));
    app.upstream.push("gpt-test", Behavior::error(500, "down"));
    assert!(read_sse(app.chat(&second).await).await.done);
    app.settle().await;

    let (session, _) = app.stored_call(Platform::Vapi, "call-u1").await;
    let usage = app.db.store.call_usage(session.session_id).await.unwrap();
    let models: Vec<_> = usage
        .iter()
        .map(|u| (u.model.as_str(), u.turns, u.completion_tokens))
        .collect();
    assert_eq!(models, [("claude/claude-test", 1, 3), ("gpt-test", 1, 5)]);
    assert!(usage.iter().all(|u| u.prompt_tokens > 0));
    let unknown = app.db.store.call_usage(uuid::Uuid::now_v7()).await.unwrap();
    assert!(unknown.is_empty());
    app.teardown().await;
}

/// `http` per provider: `http2` opens cleartext HTTP/2 by prior knowledge (the mock serves both),
/// `http1` never does, and `auto` on an `http://` URL is HTTP/1.1 (ALPN needs TLS). A whole
/// turn streams over each, on both APIs.
async fn each_provider_speaks_the_http_version_it_is_set_to(backend: Backend) {
    use HttpVersion::{Auto, Http1, Http2};
    for (openai, anthropic) in [(Http2, Http1), (Http1, Http2), (Auto, Auto)] {
        let app = TestApp::spawn_with(backend, move |settings: &mut Settings| {
            configure(Kind::OpenAi)(settings);
            settings.upstream.http = openai;
            settings.providers[0].http = anthropic;
            let mut claude = settings.assistants[0].clone();
            claude.id = "asst-claude".into();
            claude.model = Kind::Anthropic.model().0.into();
            settings.assistants.push(claude);
        })
        .await;
        for (i, (kind, assistant)) in [(Kind::OpenAi, "asst-1"), (Kind::Anthropic, "asst-claude")]
            .into_iter()
            .enumerate()
        {
            app.upstream
                .push(kind.model().1, Behavior::text(["Hello", " there."]));
            let mut body = vapi_body(&format!("call-h{i}"), "+14155550123", "Hi");
            body["call"]["assistantId"] = json!(assistant);

            let sse = read_sse(app.chat(&body).await).await;

            assert_eq!(sse.text(), "Hello there.", "{kind:?}");
            assert!(sse.done);
            assert!(kind.served(&app, i), "{kind:?}");
        }
        let expected = |version| match version {
            Http2 => Version::HTTP_2,
            Http1 | Auto => Version::HTTP_11,
        };
        assert_eq!(
            app.upstream.request_versions(),
            [expected(openai), expected(anthropic)],
            "openai {openai:?}, anthropic {anthropic:?}"
        );
        app.teardown().await;
    }
}

/// A server takes so many streams on one HTTP/2 connection (the mock: 100, as a strict server
/// would) and hyper's client opens no second connection on its own: with the shipped
/// `http2_streams_per_connection`, redial spreads 150 concurrent turns over two connections, so
/// every one reaches the upstream while the first are still thinking, instead of the last 50
/// waiting seconds, in silence, for a stream to end.
async fn turns_past_one_http2_connections_stream_limit_do_not_wait_for_a_free_stream(
    backend: Backend,
) {
    const TURNS: usize = 150;
    const FIRST_TOKEN: std::time::Duration = std::time::Duration::from_secs(5);
    assert!(TURNS > HTTP2_MAX_CONCURRENT_STREAMS as usize);
    let owned = TestApp::spawn_with(backend, |settings: &mut Settings| {
        configure(Kind::OpenAi)(settings);
        settings.upstream.http = HttpVersion::Http2;
        // The shipped timeouts: the tests' 2 s would give up on the upstream before its reply.
        let shipped = UpstreamSettings::default();
        settings.upstream.first_token_timeout_ms = shipped.first_token_timeout_ms;
        settings.upstream.stream_idle_timeout_ms = shipped.stream_idle_timeout_ms;
    })
    .await;
    let app = &owned;
    let (_, queue) = Kind::OpenAi.model();
    for _ in 0..TURNS {
        app.upstream.push(
            queue,
            Behavior::Text {
                chunks: vec!["Hello.".to_owned()],
                ttft: FIRST_TOKEN,
                gap: std::time::Duration::ZERO,
            },
        );
    }
    let turns = futures_util::future::join_all((0..TURNS).map(|i| async move {
        let mut body = vapi_body(&format!("call-s{i}"), &format!("+1415555{i:04}"), "Hi");
        body["call"]["assistantId"] = json!("asst-1");
        read_sse(app.chat(&body).await).await
    }));
    // Every turn reaches the mock well before the first of them could have finished.
    let arrived = async {
        let deadline =
            tokio::time::Instant::now() + FIRST_TOKEN - std::time::Duration::from_secs(1);
        while app.upstream.requests().len() < TURNS && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        app.upstream.requests().len()
    };
    let (replies, arrived) = tokio::join!(turns, arrived);

    assert_eq!(
        arrived, TURNS,
        "turns reached the upstream before any finished"
    );
    for reply in &replies {
        assert_eq!(reply.text(), "Hello.");
        assert!(reply.done);
    }
    assert!(
        app.upstream
            .request_versions()
            .iter()
            .all(|v| *v == Version::HTTP_2)
    );
    owned.teardown().await;
}
