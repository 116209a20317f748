//! `/v1/chat/completions`: streaming, identity, memory, fallbacks, bad input. Every test runs on
//! both stores against a mock upstream over real HTTP.

use std::time::{Duration, Instant};

use redial::platforms::Platform;
use redial_bench::mock::Behavior;
use serde_json::{Value, json};

use crate::support::app::{TestApp, app_tests, parse_sse, read_sse, vapi_body};
use crate::support::db::Backend;

app_tests!(
    a_vapi_turn_streams_the_upstream_text_and_ends_with_done,
    tokens_are_forwarded_as_they_arrive,
    non_streaming_clients_get_one_completion_on_every_route,
    a_second_call_from_the_same_number_is_recognised_after_a_restart,
    a_failing_model_falls_back_to_the_next,
    when_every_model_fails_the_caller_hears_the_apology,
    a_stream_cut_mid_reply_ends_cleanly_with_the_apology,
    a_stream_that_goes_quiet_mid_reply_ends_with_the_apology,
    a_reply_longer_than_the_idle_timeout_is_not_cut_while_chunks_keep_coming,
    a_resent_request_does_not_duplicate_turns,
    bad_input_gets_an_openai_error_and_changes_nothing,
    requests_need_a_valid_api_key,
);

async fn a_vapi_turn_streams_the_upstream_text_and_ends_with_done(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.upstream.push(
        "gpt-test",
        Behavior::text(["Sure", ", what", " day works?"]),
    );

    let response = app
        .chat(&vapi_body("call-1", "+14155550123", "I'd like a loan."))
        .await;

    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["x-accel-buffering"], "no");
    let timing = headers["server-timing"].to_str().unwrap().to_owned();
    assert!(
        timing.contains("mem;dur=") && timing.contains("total;dur="),
        "{timing}"
    );
    assert!(headers.contains_key("x-request-id"));
    let sse = read_sse(response).await;
    assert!(sse.done, "the stream ends with [DONE]");
    assert_eq!(sse.text(), "Sure, what day works?");
    assert_eq!(sse.chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(sse.chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(sse.finish_reason().as_deref(), Some("stop"));

    // Platform fields never reach the upstream; sampling parameters do; the summary follows the
    // platform's system prompt.
    let sent = &app.upstream.requests()[0];
    for key in ["call", "customer", "phoneNumber", "metadata"] {
        assert!(sent.get(key).is_none(), "{key} leaked upstream: {sent}");
    }
    assert_eq!(sent["temperature"], 0.5);
    assert_eq!(sent["max_tokens"], 250);
    assert_eq!(
        sent["messages"][0]["content"],
        "You are Ava, a loan assistant."
    );
    assert!(
        sent["messages"][1]["content"]
            .as_str()
            .unwrap()
            .contains("first call"),
        "{sent}"
    );
    assert_eq!(
        app.upstream.request_headers()[0]
            .iter()
            .find(|(k, _)| k == "authorization")
            .unwrap()
            .1,
        "Bearer upstream-key"
    );

    // The turn is stored: the new user message and the reply.
    app.settle().await;
    let (session, caller) = app.stored_call(Platform::Vapi, "call-1").await;
    assert_eq!(caller.unwrap().phone, "+14155550123");
    assert_eq!(session.assistant_id, "asst-1");
    let turns = app.db.store.list_turns(session.session_id).await.unwrap();
    let texts: Vec<_> = turns
        .iter()
        .map(|t| (t.role.as_str(), t.content.as_str(), t.partial))
        .collect();
    assert_eq!(
        texts,
        [
            ("user", "I'd like a loan.", false),
            ("assistant", "Sure, what day works?", false)
        ]
    );
    app.teardown().await;
}

async fn tokens_are_forwarded_as_they_arrive(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let gap = Duration::from_millis(300);
    app.upstream.push(
        "gpt-test",
        Behavior::Text {
            chunks: vec!["one ".into(), "two ".into(), "three".into()],
            ttft: Duration::ZERO,
            gap,
        },
    );

    let started = Instant::now();
    let mut response = app
        .chat(&vapi_body("call-2", "+14155550123", "count"))
        .await;
    let mut arrivals = Vec::new();
    let mut body = String::new();
    while let Some(bytes) = response.chunk().await.unwrap() {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if text.contains("\"content\"") {
            arrivals.push(started.elapsed());
        }
        body.push_str(&text);
    }

    assert_eq!(parse_sse(&body).text(), "one two three");
    assert!(
        arrivals.len() >= 3,
        "each token arrives in its own read: {arrivals:?}"
    );
    assert!(
        arrivals[2] - arrivals[0] >= gap,
        "tokens were not buffered: {arrivals:?}"
    );
    app.teardown().await;
}

async fn non_streaming_clients_get_one_completion_on_every_route(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for path in [
        "/v1/chat/completions",
        "/chat/completions",
        "/chat/completions/chat/completions",
    ] {
        app.upstream
            .push("gpt-test", Behavior::text(["Hello", " there"]));
        let body = json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]});
        let response = app.post(path, &body).await;
        assert_eq!(response.status(), 200, "{path}");
        assert!(
            response.headers()["server-timing"]
                .to_str()
                .unwrap()
                .contains("upstream;dur=")
        );
        let completion: Value = response.json().await.unwrap();
        assert_eq!(completion["object"], "chat.completion", "{path}");
        assert_eq!(
            completion["choices"][0]["message"]["content"],
            "Hello there"
        );
        assert_eq!(completion["choices"][0]["finish_reason"], "stop");
    }
    app.teardown().await;
}

async fn a_second_call_from_the_same_number_is_recognised_after_a_restart(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let first = read_sse(
        app.chat(&vapi_body("call-a", "+1 (415) 555-0123", "hello"))
            .await,
    )
    .await;
    assert!(first.done);
    let app = app.restart().await;

    let second = read_sse(
        app.chat(&vapi_body("call-b", "415.555.0123", "it's me again"))
            .await,
    )
    .await;

    assert!(second.done);
    let requests = app.upstream.requests();
    let summary = requests.last().unwrap()["messages"][1]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert!(
        summary.contains(&format!("Previous calls: 1; last call on {today}")),
        "{summary}"
    );
    app.teardown().await;
}

async fn a_failing_model_falls_back_to_the_next(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        s.upstream.model = "primary".into();
        s.upstream.fallback_models = vec!["backup".into()];
    })
    .await;
    app.upstream.push(
        "primary",
        Behavior::Status {
            code: 503,
            body: "overloaded".into(),
        },
    );
    app.upstream
        .push("backup", Behavior::text(["From the backup."]));

    let sse = read_sse(app.chat(&vapi_body("call-f", "+14155550123", "hi")).await).await;

    assert_eq!(sse.text(), "From the backup.");
    assert!(sse.done);
    let models: Vec<_> = app
        .upstream
        .requests()
        .iter()
        .map(|r| r["model"].clone())
        .collect();
    assert_eq!(models, [json!("primary"), json!("backup")]);
    app.teardown().await;
}

async fn when_every_model_fails_the_caller_hears_the_apology(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        s.upstream.model = "primary".into();
        s.upstream.fallback_models = vec!["backup".into(), "stalled".into()];
        s.upstream.first_token_timeout_ms = 300;
    })
    .await;
    app.upstream.push(
        "primary",
        Behavior::Status {
            code: 500,
            body: "boom".into(),
        },
    );
    app.upstream.push(
        "backup",
        Behavior::Status {
            code: 429,
            body: "slow down".into(),
        },
    );
    app.upstream.push("stalled", Behavior::Stall);

    let sse = read_sse(app.chat(&vapi_body("call-x", "+14155550123", "hi")).await).await;

    assert_eq!(sse.text(), app.settings.upstream.apology);
    assert_eq!(sse.finish_reason().as_deref(), Some("stop"));
    assert!(sse.done);
    app.settle().await;
    let (session, _) = app.stored_call(Platform::Vapi, "call-x").await;
    let turns = app.db.store.list_turns(session.session_id).await.unwrap();
    assert!(
        turns.last().unwrap().partial,
        "the failed reply is marked partial"
    );
    app.teardown().await;
}

async fn a_stream_cut_mid_reply_ends_cleanly_with_the_apology(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.upstream.push(
        "gpt-test",
        Behavior::CutAfter {
            chunks: vec!["Let me check".into()],
        },
    );

    let sse = read_sse(app.chat(&vapi_body("call-cut", "+14155550123", "hi")).await).await;

    assert!(sse.text().starts_with("Let me check "), "{}", sse.text());
    assert!(sse.text().ends_with(&app.settings.upstream.apology));
    assert_eq!(sse.finish_reason().as_deref(), Some("stop"));
    assert!(sse.done);
    app.teardown().await;
}

async fn a_stream_that_goes_quiet_mid_reply_ends_with_the_apology(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| s.upstream.stream_idle_timeout_ms = 300).await;
    app.upstream.push(
        "gpt-test",
        Behavior::StallAfter {
            chunks: vec!["Let me check".into()],
        },
    );

    let sse = read_sse(
        app.chat(&vapi_body("call-quiet", "+14155550123", "hi"))
            .await,
    )
    .await;

    assert!(sse.text().starts_with("Let me check "), "{}", sse.text());
    assert!(sse.text().ends_with(&app.settings.upstream.apology));
    assert!(sse.done);
    app.settle().await;
    let (session, _) = app.stored_call(Platform::Vapi, "call-quiet").await;
    let turns = app.db.store.list_turns(session.session_id).await.unwrap();
    assert!(turns.last().unwrap().partial, "the cut reply is partial");
    app.teardown().await;
}

/// The idle timeout is the longest silence between chunks, not a limit on the whole reply: a
/// reply whose chunks keep coming is never cut, however long it runs.
async fn a_reply_longer_than_the_idle_timeout_is_not_cut_while_chunks_keep_coming(
    backend: Backend,
) {
    let app = TestApp::spawn_with(backend, |s| s.upstream.stream_idle_timeout_ms = 300).await;
    let chunks: Vec<String> = (0..10).map(|i| format!("w{i} ")).collect();
    app.upstream.push(
        "gpt-test",
        Behavior::Text {
            chunks: chunks.clone(),
            ttft: Duration::from_millis(150),
            gap: Duration::from_millis(150),
        },
    );

    let sse = read_sse(
        app.chat(&vapi_body("call-long", "+14155550123", "hi"))
            .await,
    )
    .await;

    assert_eq!(sse.text(), chunks.concat(), "the whole reply, no apology");
    assert_eq!(sse.finish_reason().as_deref(), Some("stop"));
    app.teardown().await;
}

async fn a_resent_request_does_not_duplicate_turns(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = vapi_body("call-r", "+14155550123", "same words");
    for _ in 0..2 {
        app.upstream
            .push("gpt-test", Behavior::text(["Same answer."]));
        assert!(read_sse(app.chat(&body).await).await.done);
        app.settle().await;
    }
    let (session, _) = app.stored_call(Platform::Vapi, "call-r").await;
    let turns = app.db.store.list_turns(session.session_id).await.unwrap();
    assert_eq!(turns.len(), 2, "one user turn and one reply: {turns:?}");
    let caller = app
        .db
        .store
        .get_caller_by_phone("+14155550123")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(caller.call_count, 1, "a re-sent request is not a new call");
    app.teardown().await;
}

async fn bad_input_gets_an_openai_error_and_changes_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let url = app.url("/v1/chat/completions");
    let send = |body: Vec<u8>, content_type: &'static str| {
        app.client
            .post(&url)
            .bearer_auth("test-key")
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let cases: Vec<(Vec<u8>, &str, u16, &str)> = vec![
        (
            b"{not json".to_vec(),
            "application/json",
            400,
            "not valid JSON",
        ),
        (
            br#"{"model":"m","messages":[]}"#.to_vec(),
            "application/json",
            400,
            "messages",
        ),
        (
            br#"{"model":"m"}"#.to_vec(),
            "application/json",
            400,
            "messages",
        ),
        (
            br#"{"model":"m","messages":"hi"}"#.to_vec(),
            "application/json",
            400,
            "messages",
        ),
        (
            br#"{"model":"m","messages":[{"role":"robot","content":"x"}]}"#.to_vec(),
            "application/json",
            400,
            "messages[0].role",
        ),
        (
            br#"{"messages":[{"role":"user","content":"x"}]}"#.to_vec(),
            "application/json",
            400,
            "model",
        ),
        (
            br#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#.to_vec(),
            "text/plain",
            415,
            "content type",
        ),
        (
            vec![b' '; 3 * 1024 * 1024],
            "application/json",
            413,
            "limit",
        ),
    ];
    for (body, content_type, status, needle) in cases {
        let response = send(body, content_type).await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{needle}");
        let error: Value = response.json().await.unwrap();
        let message = error["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(needle) || error["error"]["param"] == needle,
            "{needle}: {error}"
        );
        assert!(
            error["error"]["type"].is_string() && error["error"]["code"].is_string(),
            "{error}"
        );
    }
    assert!(
        app.upstream.requests().is_empty(),
        "nothing reached the upstream"
    );
    assert!(
        app.db
            .store
            .get_caller_by_phone("+14155550123")
            .await
            .unwrap()
            .is_none()
    );
    app.teardown().await;
}

async fn requests_need_a_valid_api_key(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = vapi_body("call-auth", "+14155550123", "hi");
    let url = app.url("/v1/chat/completions");
    let missing = app.client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    let wrong = app
        .client
        .post(&url)
        .bearer_auth("nope")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let error: Value = wrong.json().await.unwrap();
    assert_eq!(error["error"]["type"], "authentication_error");
    assert!(
        app.db
            .store
            .load_call(Platform::Vapi, "call-auth")
            .await
            .unwrap()
            .is_none()
    );
    app.teardown().await;
}
