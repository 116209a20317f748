//! End-to-end tests of the mock upstream, driven over real HTTP with reqwest.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redial_bench::mock::{Behavior, MockConfig, MockUpstream};
use redial_bench::sse::SseParser;
use serde_json::{Value, json};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

fn chat_body(model: &str, stream: Option<bool>) -> Value {
    let mut body = json!({
        "model": model,
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    });
    if let Some(stream) = stream {
        body["stream"] = json!(stream);
    }
    body
}

async fn post(mock: &MockUpstream, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}/chat/completions", mock.base_url()))
        .header("content-type", "application/json")
        .header("Authorization", "Bearer test-key")
        .body(body.to_string())
        .send()
        .await
        .expect("send")
}

/// Reads an SSE body to its end: each event's data with its arrival time since `start`.
async fn read_events(response: reqwest::Response, start: Instant) -> Vec<(Duration, String)> {
    let mut parser = SseParser::new();
    let mut events = Vec::new();
    let mut body = response.bytes_stream();
    while let Some(bytes) = body.next().await {
        let bytes = bytes.expect("body chunk");
        let at = start.elapsed();
        events.extend(parser.feed(&bytes).into_iter().map(|data| (at, data)));
    }
    events
}

fn json_events(events: &[(Duration, String)]) -> Vec<Value> {
    let (done, chunks) = events.split_last().expect("at least [DONE]");
    assert_eq!(done.1, "[DONE]", "stream must end with [DONE]");
    chunks
        .iter()
        .map(|(_, data)| serde_json::from_str(data).expect("chunk is JSON"))
        .collect()
}

fn delta(chunk: &Value) -> &Value {
    &chunk["choices"][0]["delta"]
}

#[tokio::test]
async fn default_stream_sends_configured_tokens_in_openai_chunk_shape() {
    let config = MockConfig {
        tokens: 3,
        token: "hi ".to_owned(),
        ..MockConfig::default()
    };
    let mock = MockUpstream::start(config).await.expect("start");

    let response = post(&mock, &chat_body("m-1", Some(true))).await;

    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let chunks = json_events(&read_events(response, Instant::now()).await);
    assert_eq!(chunks.len(), 4, "{chunks:#?}");
    for (i, chunk) in chunks.iter().enumerate() {
        assert_eq!(chunk["id"], "chatcmpl-mock");
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert!(chunk["created"].as_u64().is_some_and(|t| t > 1_700_000_000));
        assert_eq!(chunk["model"], "m-1");
        assert_eq!(chunk["choices"][0]["index"], 0);
        assert_eq!(
            delta(chunk)["role"],
            if i == 0 {
                json!("assistant")
            } else {
                json!(null)
            }
        );
    }
    for chunk in &chunks[..3] {
        assert_eq!(delta(chunk)["content"], "hi ");
        assert_eq!(chunk["choices"][0]["finish_reason"], json!(null));
    }
    assert_eq!(delta(&chunks[3]), &json!({}));
    assert_eq!(chunks[3]["choices"][0]["finish_reason"], "stop");
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
}

#[tokio::test]
async fn text_behavior_honours_time_to_first_token_and_gaps() {
    let mock = MockUpstream::start(MockConfig::default())
        .await
        .expect("start");
    mock.push(
        "*",
        Behavior::Text {
            chunks: vec!["a".into(), "b".into(), "c".into()],
            ttft: Duration::from_millis(150),
            gap: Duration::from_millis(60),
        },
    );

    let start = Instant::now();
    let response = post(&mock, &chat_body("m", Some(true))).await;
    let headers_at = start.elapsed();
    let events = read_events(response, start).await;

    assert!(
        headers_at < Duration::from_millis(100),
        "headers come first: {headers_at:?}"
    );
    let contents: Vec<_> = events.iter().take(3).collect();
    assert!(
        contents[0].0 >= Duration::from_millis(150),
        "ttft {:?}",
        contents[0].0
    );
    for pair in contents.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(gap >= Duration::from_millis(45), "gap {gap:?}");
    }
    let text: String = json_events(&events)
        .iter()
        .filter_map(|c| delta(c)["content"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, "abc");
}

#[tokio::test]
async fn tool_calls_are_streamed_in_openai_shape() {
    let mock = MockUpstream::start(MockConfig::default())
        .await
        .expect("start");
    let args = r#"{"date":"2026-09-01","time":"10:30"}"#;
    mock.push(
        "*",
        Behavior::ToolCalls {
            text_before: Some("One moment.".into()),
            calls: vec![
                ("book".into(), args.into()),
                ("hang_up".into(), "{}".into()),
            ],
        },
    );

    let response = post(&mock, &chat_body("m", Some(true))).await;
    let chunks = json_events(&read_events(response, Instant::now()).await);

    assert_eq!(
        delta(&chunks[0]),
        &json!({"role": "assistant", "content": "One moment."})
    );
    let tool_deltas: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| delta(c).get("tool_calls"))
        .map(|calls| &calls[0])
        .collect();
    for (index, (name, arguments)) in [("book", args), ("hang_up", "{}")].iter().enumerate() {
        let of_call: Vec<&&Value> = tool_deltas.iter().filter(|d| d["index"] == index).collect();
        let head = of_call[0];
        assert_eq!(head["id"], format!("call_{index}"));
        assert_eq!(head["type"], "function");
        assert_eq!(head["function"], json!({"name": name, "arguments": ""}));
        let fragments: Vec<&str> = of_call[1..]
            .iter()
            .map(|d| d["function"]["arguments"].as_str().expect("fragment"))
            .collect();
        assert!(fragments.len() >= 2, "{fragments:?}");
        assert_eq!(fragments.concat(), *arguments);
        assert!(of_call[1..].iter().all(|d| d.get("id").is_none()));
    }
    let last = chunks.last().expect("finish chunk");
    assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
}

#[tokio::test]
async fn status_behavior_answers_with_that_status_in_both_modes() {
    let mock = MockUpstream::start(MockConfig::default())
        .await
        .expect("start");
    let body = r#"{"error":{"message":"boom","type":"server_error"}}"#;
    for _ in 0..2 {
        mock.push(
            "*",
            Behavior::Status {
                code: 500,
                body: body.into(),
            },
        );
    }

    for stream in [Some(true), None] {
        let response = post(&mock, &chat_body("m", stream)).await;
        assert_eq!(response.status(), 500);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.text().await.expect("body"), body);
    }
}

#[tokio::test]
async fn cut_after_gives_the_client_an_incomplete_body_error() {
    let mock = MockUpstream::start(MockConfig::default())
        .await
        .expect("start");
    mock.push(
        "*",
        Behavior::CutAfter {
            chunks: vec!["partial".into(), " answer".into()],
        },
    );

    let response = post(&mock, &chat_body("m", Some(true))).await;
    assert_eq!(response.status(), 200);
    let mut parser = SseParser::new();
    let mut events = Vec::new();
    let mut body = response.bytes_stream();
    let mut error = None;
    while let Some(item) = body.next().await {
        match item {
            Ok(bytes) => events.extend(parser.feed(&bytes)),
            Err(e) => error = Some(e),
        }
    }

    assert!(
        error.is_some(),
        "the body must end in an error, got events {events:?}"
    );
    assert_eq!(
        events.len(),
        2,
        "both chunks arrive before the cut: {events:?}"
    );
    assert!(events.iter().all(|e| e != "[DONE]"));
}

#[tokio::test]
async fn stall_after_sends_chunks_then_hangs_and_stall_never_answers() {
    let mock = MockUpstream::start(MockConfig::default())
        .await
        .expect("start");
    mock.push(
        "*",
        Behavior::StallAfter {
            chunks: vec!["so".into()],
        },
    );
    mock.push("*", Behavior::Stall);

    let response = post(&mock, &chat_body("m", Some(true))).await;
    let mut body = response.bytes_stream();
    let first = body.next().await.expect("a chunk").expect("ok");
    assert!(String::from_utf8_lossy(&first).contains(r#""content":"so""#));
    let more = tokio::time::timeout(Duration::from_millis(300), body.next()).await;
    assert!(more.is_err(), "the stream must hang, got {more:?}");

    let stalled = client()
        .post(format!("{}/chat/completions", mock.base_url()))
        .body(chat_body("m", Some(true)).to_string())
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(stalled.is_err_and(|e| e.is_timeout()));
}

#[tokio::test]
async fn non_streaming_requests_get_one_chat_completion_json() {
    let mock = MockUpstream::start(MockConfig::default())
        .await
        .expect("start");
    mock.push("tools", Behavior::tool_call("book", r#"{"day":"monday"}"#));

    let text: Value = post(&mock, &chat_body("m", None)).await.json_text().await;
    let tools: Value = post(&mock, &chat_body("tools", Some(false)))
        .await
        .json_text()
        .await;

    assert_eq!(text["object"], "chat.completion");
    assert_eq!(text["model"], "m");
    assert_eq!(text["choices"][0]["message"]["role"], "assistant");
    assert_eq!(text["choices"][0]["message"]["content"], "Hello ".repeat(5));
    assert_eq!(text["choices"][0]["finish_reason"], "stop");
    assert_eq!(text["usage"]["completion_tokens"], 5);
    let call = &tools["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["id"], "call_0");
    assert_eq!(
        call["function"],
        json!({"name": "book", "arguments": r#"{"day":"monday"}"#})
    );
    assert_eq!(tools["choices"][0]["finish_reason"], "tool_calls");
    assert!(tools["usage"]["total_tokens"].as_u64().is_some());
}

#[tokio::test]
async fn every_request_body_and_its_headers_are_recorded_in_order() {
    let mock = MockUpstream::start(MockConfig::default())
        .await
        .expect("start");
    let first = chat_body("first", Some(true));
    let second = chat_body("second", None);

    post(&mock, &first).await.bytes().await.expect("drain");
    post(&mock, &second).await.bytes().await.expect("drain");

    assert_eq!(mock.requests(), vec![first, second]);
    let headers = mock.request_headers();
    assert_eq!(headers.len(), 2);
    assert!(headers[0].contains(&("authorization".to_owned(), "Bearer test-key".to_owned())));
    assert!(
        headers
            .iter()
            .flatten()
            .all(|(name, _)| *name == name.to_lowercase())
    );
}

#[tokio::test]
async fn behaviors_are_taken_per_model_first_then_from_the_wildcard_queue() {
    let mock = MockUpstream::start(MockConfig::default())
        .await
        .expect("start");
    mock.push("a", Behavior::text(["A1"]));
    mock.push("a", Behavior::text(["A2"]));
    mock.push("*", Behavior::text(["ANY"]));
    assert_eq!(mock.queued(), 3);

    let mut answers = Vec::new();
    for model in ["b", "a", "a", "a", "b"] {
        let body: Value = post(&mock, &chat_body(model, None)).await.json_text().await;
        answers.push(
            body["choices"][0]["message"]["content"]
                .as_str()
                .map(str::to_owned),
        );
    }

    let default = "Hello ".repeat(5);
    let expected = ["ANY", "A1", "A2", default.as_str(), default.as_str()];
    assert_eq!(answers, expected.map(|s| Some(s.to_owned())));
    assert_eq!(mock.queued(), 0);
}

#[tokio::test]
async fn shutdown_closes_open_streams_and_stops_accepting() {
    let mock = MockUpstream::start(MockConfig::default())
        .await
        .expect("start");
    mock.push(
        "*",
        Behavior::StallAfter {
            chunks: vec!["x".into()],
        },
    );
    let response = post(&mock, &chat_body("m", Some(true))).await;
    let mut body = response.bytes_stream();
    body.next().await.expect("chunk").expect("ok");

    mock.shutdown();

    let end = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = body.next().await {}
    })
    .await;
    assert!(end.is_ok(), "the hanging stream must be closed by shutdown");
    let again = client()
        .post(format!("{}/chat/completions", mock.base_url()))
        .body("{}")
        .send()
        .await;
    assert!(again.is_err());
}

/// Reads a response body as JSON, asserting success.
trait JsonText {
    async fn json_text(self) -> Value;
}

impl JsonText for reqwest::Response {
    async fn json_text(self) -> Value {
        assert_eq!(self.status(), 200);
        let bytes = self.bytes().await.expect("body");
        serde_json::from_slice(&bytes).expect("JSON body")
    }
}

#[tokio::test]
async fn an_isolated_mock_serves_from_its_own_thread_until_shut_down() {
    let listen = "127.0.0.1:0".parse().expect("addr");
    let mock = MockUpstream::start_isolated(listen, MockConfig::default()).expect("start");

    let response = post(&mock, &chat_body("m", Some(true))).await;
    let chunks = json_events(&read_events(response, Instant::now()).await);
    assert_eq!(chunks.len(), 6);
    mock.shutdown();

    tokio::time::sleep(Duration::from_millis(100)).await;
    let again = client()
        .post(format!("{}/chat/completions", mock.base_url()))
        .body("{}")
        .send()
        .await;
    assert!(again.is_err(), "the isolated mock must stop accepting");
}

/// The Messages endpoint models the prompt cache: a marked prefix seen before is read from it;
/// with the model off nothing is cached (the bench's way to take the mock's own hashing out of
/// a comparison).
#[tokio::test]
async fn the_messages_prompt_cache_model_reads_a_repeated_prefix_and_can_be_turned_off() {
    let mock = MockUpstream::start(MockConfig::default())
        .await
        .expect("mock");
    let body = json!({
        "model": "claude-test",
        "max_tokens": 64,
        "system": [{"type": "text", "text": "You are Ava. ".repeat(50),
                    "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "hi"}],
    });
    let usage = || async {
        let reply = client()
            .post(format!("{}/messages", mock.base_url()))
            .header("anthropic-version", "2023-06-01")
            .header("x-api-key", "k")
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("send")
            .bytes()
            .await
            .expect("body");
        let reply: Value = serde_json::from_slice(&reply).expect("json");
        let usage = &reply["usage"];
        (
            usage["cache_creation_input_tokens"].as_u64().unwrap(),
            usage["cache_read_input_tokens"].as_u64().unwrap(),
        )
    };
    let (written, read) = usage().await;
    assert!(
        written > 0 && read == 0,
        "first: written {written}, read {read}"
    );
    let (written, read) = usage().await;
    assert!(
        written == 0 && read > 0,
        "again: written {written}, read {read}"
    );

    mock.set_prompt_cache(false);
    assert_eq!(usage().await, (0, 0));
    mock.shutdown();
}
