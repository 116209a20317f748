//! The HTTP surface around turns: probes, metrics, errors, dev mode, heartbeats, disconnects,
//! graceful shutdown and the memory budget (both stores unless noted).

use std::time::Duration;

use redial::config::Secret;
use redial::platforms::Platform;
use redial_bench::mock::Behavior;
use serde_json::Value;
use sqlx::{Connection, Executor, PgConnection};

use crate::support::app::{TestApp, app_tests, parse_sse, read_sse, vapi_body};
use crate::support::db::Backend;

app_tests!(
    probes_metrics_and_unknown_routes_answer_in_json,
    dev_mode_serves_loopback_clients_without_a_key,
    heartbeats_keep_the_stream_alive_while_the_upstream_thinks,
    heartbeats_fill_a_silence_mid_reply_and_stay_out_of_a_steady_one,
    a_client_that_hangs_up_mid_reply_still_gets_its_turn_stored,
    shutdown_lets_an_in_flight_stream_finish_and_drains_its_writes,
);

async fn probes_metrics_and_unknown_routes_answer_in_json(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| s.server.admin_key = Secret::new("admin")).await;
    assert!(
        read_sse(app.chat(&vapi_body("call-h", "+14155550123", "hi")).await)
            .await
            .done
    );

    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(health.headers().contains_key("x-request-id"));
    let ready: Value = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready");
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(
        metrics.status(),
        401,
        "metrics need the admin key when one is set"
    );
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth("admin")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("redial_turns_total"), "{metrics}");

    let missing = app
        .client
        .get(app.url("/nope"))
        .bearer_auth("admin")
        .header("x-request-id", "req-123")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.headers()["x-request-id"],
        "req-123",
        "a client's request id is kept"
    );
    let error: Value = missing.json().await.unwrap();
    assert_eq!(error["error"]["code"], "not_found");
    let wrong_method = app
        .client
        .get(app.url("/v1/chat/completions"))
        .bearer_auth(crate::support::app::API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), 405);
    assert_eq!(
        wrong_method.json::<Value>().await.unwrap()["error"]["type"],
        "invalid_request_error"
    );
    app.teardown().await;
}

async fn dev_mode_serves_loopback_clients_without_a_key(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| s.server.api_keys.clear()).await;
    let response = app
        .client
        .post(app.url("/v1/chat/completions"))
        .json(&vapi_body("call-dev", "+14155550123", "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(read_sse(response).await.done);
    app.teardown().await;
}

async fn heartbeats_keep_the_stream_alive_while_the_upstream_thinks(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| s.upstream.heartbeat_ms = 200).await;
    app.upstream.push(
        "gpt-test",
        Behavior::Text {
            chunks: vec!["Finally.".into()],
            ttft: Duration::from_millis(900),
            gap: Duration::ZERO,
        },
    );

    let response = app.chat(&vapi_body("call-hb", "+14155550123", "hi")).await;
    let timing = response.headers()["server-timing"]
        .to_str()
        .unwrap()
        .to_owned();
    let sse = read_sse(response).await;

    assert!(
        !timing.contains("upstream;"),
        "headers went out before the first token: {timing}"
    );
    assert!(
        sse.comments.iter().filter(|c| *c == "ping").count() >= 2,
        "{:?}",
        sse.comments
    );
    assert!(
        sse.comments
            .iter()
            .any(|c| c.starts_with("server-timing total;dur="))
    );
    assert_eq!(sse.text(), "Finally.");
    assert!(sse.done);
    app.teardown().await;
}

/// A heartbeat follows `heartbeat_ms` of silence, counted from the last thing sent: a reply
/// whose chunks keep coming gets none, a pause mid-reply gets them.
async fn heartbeats_fill_a_silence_mid_reply_and_stay_out_of_a_steady_one(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| s.upstream.heartbeat_ms = 400).await;
    let pings = |comments: &[String]| comments.iter().filter(|c| *c == "ping").count();
    // 1.2 s of chunks 60 ms apart: three heartbeat intervals, no silence near one.
    let words: Vec<String> = (0..20).map(|i| format!("w{i} ")).collect();
    app.upstream.push(
        "gpt-test",
        Behavior::Text {
            chunks: words.clone(),
            ttft: Duration::ZERO,
            gap: Duration::from_millis(60),
        },
    );
    let steady = read_sse(
        app.chat(&vapi_body("call-hb-1", "+14155550123", "hi"))
            .await,
    )
    .await;
    assert_eq!(steady.text(), words.concat());
    assert_eq!(pings(&steady.comments), 0, "{:?}", steady.comments);

    // Two words 1.3 s apart: heartbeats at about 0.4, 0.8 and 1.2 s into the pause.
    app.upstream.push(
        "gpt-test",
        Behavior::Text {
            chunks: vec!["Let me ".into(), "see.".into()],
            ttft: Duration::ZERO,
            gap: Duration::from_millis(1_300),
        },
    );
    let paused = read_sse(
        app.chat(&vapi_body("call-hb-2", "+14155550123", "hi"))
            .await,
    )
    .await;
    assert_eq!(paused.text(), "Let me see.");
    assert!(
        (2..=3).contains(&pings(&paused.comments)),
        "{:?}",
        paused.comments
    );
    assert!(paused.done);
    app.teardown().await;
}

async fn a_client_that_hangs_up_mid_reply_still_gets_its_turn_stored(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let chunks: Vec<String> = (0..20).map(|i| format!("word{i} ")).collect();
    app.upstream.push(
        "gpt-test",
        Behavior::Text {
            chunks,
            ttft: Duration::ZERO,
            gap: Duration::from_millis(100),
        },
    );

    let mut response = app
        .chat(&vapi_body(
            "call-hangup",
            "+14155550123",
            "tell me a long story",
        ))
        .await;
    let first = response.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("word0"));
    drop(response);
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.settle().await;

    let (session, _) = app.stored_call(Platform::Vapi, "call-hangup").await;
    let turns = app.db.store.list_turns(session.session_id).await.unwrap();
    let reply = turns
        .iter()
        .find(|t| t.role.as_str() == "assistant")
        .expect("the partial reply is stored");
    assert!(reply.partial);
    assert!(
        reply.content.starts_with("word0 ") && !reply.content.contains("word19"),
        "{}",
        reply.content
    );
    app.teardown().await;
}

async fn shutdown_lets_an_in_flight_stream_finish_and_drains_its_writes(backend: Backend) {
    let mut app = TestApp::spawn(backend).await;
    let chunks: Vec<String> = (0..5).map(|i| format!("part{i} ")).collect();
    app.upstream.push(
        "gpt-test",
        Behavior::Text {
            chunks,
            ttft: Duration::ZERO,
            gap: Duration::from_millis(150),
        },
    );
    let mut response = app
        .chat(&vapi_body("call-drain", "+14155550123", "go"))
        .await;
    let mut body = String::from_utf8_lossy(&response.chunk().await.unwrap().unwrap()).into_owned();

    let read_rest = async {
        while let Some(bytes) = response.chunk().await.unwrap() {
            body.push_str(&String::from_utf8_lossy(&bytes));
        }
    };
    tokio::join!(read_rest, app.stop());

    let sse = parse_sse(&body);
    assert!(sse.done, "the stream finished after the shutdown signal");
    assert_eq!(sse.text(), "part0 part1 part2 part3 part4 ");
    let (session, _) = app.stored_call(Platform::Vapi, "call-drain").await;
    let turns = app.db.store.list_turns(session.session_id).await.unwrap();
    assert_eq!(
        turns.len(),
        2,
        "the turn was stored before the process stopped"
    );
    let refused = app.client.get(app.url("/healthz")).send().await;
    assert!(refused.is_err(), "no new connections after shutdown");
    app.teardown().await;
}

/// Postgres only: a table lock makes the memory read exceed its budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres at TEST_DATABASE_URL: run scripts/test.sh"]
async fn a_memory_read_past_its_budget_fails_open() {
    let app = TestApp::spawn_with(Backend::Postgres, |s| s.memory.read_budget_ms = 100).await;
    let mut blocker = PgConnection::connect(&app.db.url).await.unwrap();
    blocker.execute("begin").await.unwrap();
    blocker
        .execute("lock table call_session in access exclusive mode")
        .await
        .unwrap();

    let response = app
        .chat(&vapi_body("call-slowdb", "+14155550123", "hello?"))
        .await;
    let timing = response.headers()["server-timing"]
        .to_str()
        .unwrap()
        .to_owned();
    let sse = read_sse(response).await;

    assert_eq!(
        sse.text(),
        "Hello Hello Hello Hello Hello ",
        "the caller is answered without memory"
    );
    assert!(sse.done);
    let mem: f64 = timing
        .split("mem;dur=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (100.0..1_000.0).contains(&mem),
        "the read was abandoned at its budget: {timing}"
    );
    let sent = &app.upstream.requests()[0];
    assert!(
        !sent.to_string().contains("Context from redial"),
        "no summary without memory"
    );

    blocker.execute("rollback").await.unwrap();
    app.settle().await;
    let (session, _) = app.stored_call(Platform::Vapi, "call-slowdb").await;
    assert_eq!(
        app.db
            .store
            .list_turns(session.session_id)
            .await
            .unwrap()
            .len(),
        2,
        "the turn is stored once the database answers"
    );
    app.teardown().await;
}
