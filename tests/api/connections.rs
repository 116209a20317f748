//! Connection hardening: floods of silent and slow connections, the header and idle timeouts,
//! the connection cap, and the long streams none of them may cut.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use redial::config::ServerSettings;
use redial_bench::mock::{Behavior, MockConfig, MockUpstream};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;

use crate::support::app::{API_KEY, TestApp, app_tests, parse_sse, vapi_body};
use crate::support::db::{Backend, TestDb};
use crate::support::process::{Server, limited_command};

app_tests!(
    a_flood_of_silent_and_slow_connections_leaves_keyed_clients_served,
    an_sse_stream_longer_than_the_timeouts_is_not_cut,
    a_retell_socket_idle_past_the_timeouts_stays_open_and_takes_large_frames,
    over_the_cap_with_every_connection_busy_a_new_one_is_refused_fast,
);

/// The open-file limit the flooded binary runs under: the common default soft limit.
const FLOOD_NOFILE: u64 = 1_024;
const SILENT: usize = 1_100;
const SLOWLORIS: usize = 50;
/// Allowance on top of a timeout for the server to notice and the close to arrive.
const SLACK: Duration = Duration::from_secs(2);

/// Raises this test process's own soft open-file limit to hold `needed` descriptors; panics,
/// saying why, when the hard limit does not allow it (a test that cannot flood must fail, never
/// pass).
fn enough_descriptors(needed: u64) {
    let soft = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    assert!(
        soft >= needed,
        "this process may open {soft} files, the test needs {needed}: raise the hard limit \
         (ulimit -Hn)"
    );
}

/// A config file for a keyed (not dev-mode) child redial on `db_url`.
fn write_config(dir: &Path, db_url: &str, upstream: &MockUpstream, server_extra: &str) -> String {
    let path = dir.join("redial.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\napi_keys = [\"{API_KEY}\"]\nshutdown_grace_secs = 5\n\
         {server_extra}\n[database]\nurl = \"{db_url}\"\n\
         [upstream]\nbase_url = \"{}\"\napi_key = \"k\"\nfirst_token_timeout_ms = 3000\n",
        upstream.base_url()
    );
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Waits until the server closes `stream` (EOF or reset) and returns when; `None` if it is
/// still open at `deadline`. Whatever the server sends first (a 503) is read and ignored.
async fn closed_by(mut stream: TcpStream, deadline: Instant) -> Option<Instant> {
    let mut buf = [0_u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(Instant::now()),
            Ok(Ok(_)) => {}
        }
    }
}

/// A slowloris client: a request line and then one header line every 300 ms, never finishing
/// the head. Returns how long the server kept it open (`None`: still open after `limit`).
async fn slowloris(addr: SocketAddr, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let dribble = async move {
        let _ = write
            .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: redial\r\n")
            .await;
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if write.write_all(b"X-Slow: 1\r\n").await.is_err() {
                // Written into a closed socket: wait for the read side to see it.
                std::future::pending::<()>().await;
            }
        }
    };
    let closed = async {
        let mut buf = [0_u8; 256];
        while let Ok(n) = read.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::select! {
        () = dribble => None,
        () = closed => Some(started.elapsed()),
        () = tokio::time::sleep(limit) => None,
    }
}

/// A Vapi turn with the API key; returns the SSE body.
async fn keyed_turn(client: &reqwest::Client, server: &Server, call_id: &str) -> String {
    client
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(API_KEY)
        .json(&vapi_body(call_id, "+14155550123", "Hello?"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn a_flood_of_silent_and_slow_connections_leaves_keyed_clients_served(backend: Backend) {
    enough_descriptors(4 * (SILENT + SLOWLORIS) as u64);
    let db = TestDb::new(backend).await;
    let upstream = MockUpstream::start(MockConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The shipped defaults: no timeout or cap is configured.
    let config = write_config(dir.path(), &db.url, &upstream, "");
    let header_timeout = ServerSettings::default().header_read_timeout();
    let server = Server::start_command(
        limited_command(dir.path(), FLOOD_NOFILE),
        &["--config", &config, "serve"],
    )
    .await;
    // One turn before the flood: the first parse of a phone number loads the numbering plan
    // database, which takes seconds in a debug build and has nothing to do with connections.
    // Its own client, so that no pooled connection carries the requests during the flood.
    let warm_up = keyed_turn(&reqwest::Client::new(), &server, "call-warm-up").await;
    assert!(parse_sse(&warm_up).done, "{warm_up}");

    let mut silent = Vec::with_capacity(SILENT);
    for _ in 0..SILENT {
        let stream = TcpStream::connect(server.addr).await.unwrap();
        silent.push((stream, Instant::now()));
    }
    let slow: Vec<_> = (0..SLOWLORIS)
        .map(|_| tokio::spawn(slowloris(server.addr, header_timeout + SLACK)))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let client = reqwest::Client::new();
    let health = timeout(
        Duration::from_secs(1),
        client.get(server.url("/healthz")).send(),
    )
    .await
    .expect("/healthz answered within 1 s during the flood")
    .unwrap();
    assert_eq!(health.status(), 200);
    let turn = timeout(
        Duration::from_secs(1),
        keyed_turn(&client, &server, "call-flood"),
    )
    .await
    .expect("a chat turn answered within 1 s during the flood");
    assert!(parse_sse(&turn).done, "{turn}");

    let closes = silent
        .into_iter()
        .map(|(stream, opened)| closed_by(stream, opened + header_timeout + SLACK));
    let closes = futures_util::future::join_all(closes).await;
    let still_open = closes.iter().filter(|c| c.is_none()).count();
    assert_eq!(
        still_open, 0,
        "silent connections still open past the header timeout"
    );
    for task in slow {
        let kept = task.await.unwrap();
        assert!(
            kept.is_some(),
            "a slowloris connection outlived the header timeout"
        );
    }
    let health = client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let status = server.terminate().await;
    assert!(status.success(), "{status:?}");
    db.teardown().await;
}

/// Out of descriptors (a cap above what the limit allows), accept fails: redial must log it
/// rarely, keep accepting once descriptors free up, and not spin.
#[tokio::test]
async fn out_of_descriptors_accept_errors_are_throttled_and_serving_resumes() {
    enough_descriptors(4 * SILENT as u64);
    let upstream = MockUpstream::start(MockConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("x.db").display());
    let config = write_config(
        dir.path(),
        &db,
        &upstream,
        "max_connections = 5000\nheader_read_timeout_ms = 60000\n",
    );
    let mut server = Server::start_command(
        limited_command(dir.path(), FLOOD_NOFILE),
        &["--config", &config, "serve"],
    )
    .await;
    let mut silent = Vec::with_capacity(SILENT);
    for _ in 0..SILENT {
        silent.push(TcpStream::connect(server.addr).await.unwrap());
    }
    // Out of descriptors for two seconds: a hot loop would log (and retry) thousands of times.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let logged = server.count_logs("accept failed");
    assert!(logged >= 1, "the accept errors were never logged");
    assert!(logged <= 2, "accept errors logged {logged} times in 2 s");

    drop(silent);
    let health = timeout(Duration::from_secs(2), reqwest::get(server.url("/healthz")))
        .await
        .expect("serving resumes once descriptors are free")
        .unwrap();
    assert_eq!(health.status(), 200);
    let status = server.terminate().await;
    assert!(status.success(), "{status:?}");
}

/// Short timeouts for the in-process tests: a 200 ms header timeout, a 1 s idle timeout.
fn short_timeouts(settings: &mut redial::config::Settings) {
    settings.server.header_read_timeout_ms = 200;
    settings.server.idle_timeout_secs = 1;
}

async fn an_sse_stream_longer_than_the_timeouts_is_not_cut(backend: Backend) {
    let app = TestApp::spawn_with(backend, short_timeouts).await;
    let words: Vec<String> = (0..8).map(|i| format!("w{i} ")).collect();
    app.upstream.push(
        "gpt-test",
        Behavior::Text {
            chunks: words.clone(),
            ttft: Duration::from_millis(300),
            gap: Duration::from_millis(300),
        },
    );

    let started = Instant::now();
    let body = app
        .chat(&vapi_body("call-long", "+14155550123", "Tell me a story"))
        .await
        .text()
        .await
        .unwrap();

    assert!(
        started.elapsed() > Duration::from_secs(2),
        "the stream outlasts both timeouts"
    );
    let sse = parse_sse(&body);
    assert!(sse.done, "{body}");
    let text: String = sse
        .chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, words.concat());
    app.teardown().await;
}

async fn a_retell_socket_idle_past_the_timeouts_stays_open_and_takes_large_frames(
    backend: Backend,
) {
    let app = TestApp::spawn_with(backend, |settings| {
        short_timeouts(settings);
        settings.upstream.model = "gpt-test".into();
    })
    .await;
    let url = format!(
        "ws://{}/retell/llm-websocket/{API_KEY}/call-quiet",
        app.addr
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();

    tokio::time::sleep(Duration::from_millis(2_500)).await;
    ws.send(Message::text(
        json!({"interaction_type": "ping_pong", "timestamp": 1}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(pong(&mut ws).await, Some(1), "the idle socket stays open");

    // One unfragmented 20 MiB frame, as Retell sends a long call's transcript: above the old
    // 16 MiB frame limit, below the 32 MiB message limit.
    let pad = "x".repeat(20 << 20);
    let large = json!({"interaction_type": "ping_pong", "timestamp": 2, "pad": pad});
    ws.send(Message::text(large.to_string())).await.unwrap();
    assert_eq!(pong(&mut ws).await, Some(2), "the 20 MiB frame is accepted");
    let _ = ws.close(None).await;
    app.teardown().await;
}

/// The timestamp of the next `ping_pong` echo (other frames skipped); `None` if the socket
/// closed first.
async fn pong(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Option<i64> {
    let read = async {
        while let Some(Ok(message)) = ws.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            let frame: Value = serde_json::from_str(&text).unwrap();
            if frame["response_type"] == "ping_pong" {
                return frame["timestamp"].as_i64();
            }
        }
        None
    };
    timeout(Duration::from_secs(10), read)
        .await
        .expect("an answer or a close")
}

async fn over_the_cap_with_every_connection_busy_a_new_one_is_refused_fast(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.server.max_connections = 2;
    })
    .await;
    for _ in 0..2 {
        app.upstream.push(
            "gpt-test",
            Behavior::Text {
                chunks: (0..6).map(|i| format!("w{i} ")).collect(),
                ttft: Duration::ZERO,
                gap: Duration::from_millis(300),
            },
        );
    }
    let streams: Vec<_> = (0..2)
        .map(|i| {
            // A client each: one connection each.
            let request = reqwest::Client::new()
                .post(app.url("/v1/chat/completions"))
                .bearer_auth(API_KEY)
                .json(&vapi_body(&format!("call-cap-{i}"), "+14155550123", "Hi"));
            tokio::spawn(async move { request.send().await.unwrap().text().await.unwrap() })
        })
        .collect();
    for _ in 0..200 {
        if app.upstream.requests().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(app.upstream.requests().len(), 2, "both turns are streaming");

    let started = Instant::now();
    let mut third = TcpStream::connect(app.addr).await.unwrap();
    let mut answer = Vec::new();
    timeout(Duration::from_secs(1), third.read_to_end(&mut answer))
        .await
        .expect("refused within 1 s")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 503"),
        "refused with a 503: {answer:?}"
    );
    assert!(answer.contains(r#""code":"unavailable""#), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(1));

    for stream in streams {
        let body = stream.await.unwrap();
        assert!(parse_sse(&body).done, "a busy stream was cut: {body}");
    }
    let health = timeout(Duration::from_secs(1), reqwest::get(app.url("/healthz")))
        .await
        .expect("served again once connections close")
        .unwrap();
    assert_eq!(health.status(), 200);
    app.teardown().await;
}

/// A request head and the response to it on a raw keep-alive connection.
async fn healthz_keep_alive(stream: &mut TcpStream) {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: redial\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let mut buf = [0_u8; 1024];
    while !String::from_utf8_lossy(&response).ends_with(r#""ok"}"#) {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the response");
        response.extend_from_slice(&buf[..n]);
    }
    assert!(
        response.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&response)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slow_heads_are_closed_after_the_header_timeout() {
    let app = TestApp::spawn_with(Backend::Sqlite, |settings| {
        settings.server.header_read_timeout_ms = 300;
        settings.server.admin_key = redial::config::Secret::new("admin");
    })
    .await;
    let limit = Duration::from_millis(300) + SLACK;

    let silent = TcpStream::connect(app.addr).await.unwrap();
    let opened = Instant::now();
    let slow = slowloris(app.addr, limit);
    let (silent_closed, slow_kept) = tokio::join!(closed_by(silent, opened + limit), slow);

    assert!(silent_closed.is_some(), "the silent connection stayed open");
    assert!(
        slow_kept.is_some(),
        "a head dribbled in slowly stayed open past the timeout"
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
    assert!(
        metrics.contains(r#"redial_connection_timeouts_total{kind="header"}"#),
        "{metrics}"
    );
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_waits_the_idle_timeout_not_the_header_timeout() {
    let app = TestApp::spawn_with(Backend::Sqlite, |settings| {
        settings.server.header_read_timeout_ms = 200;
        settings.server.idle_timeout_secs = 2;
    })
    .await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    healthz_keep_alive(&mut stream).await;
    let idle_since = Instant::now();

    // Well past the header timeout, the idle connection is still open and still serves.
    let mut buf = [0_u8; 16];
    let early = timeout(Duration::from_millis(800), stream.read(&mut buf)).await;
    assert!(early.is_err(), "closed after the header timeout: {early:?}");
    healthz_keep_alive(&mut stream).await;
    let idle_since_second = Instant::now();
    assert!(idle_since.elapsed() < Duration::from_secs(2));

    let closed = closed_by(stream, idle_since_second + Duration::from_secs(2) + SLACK).await;
    let closed = closed.expect("the idle connection was never closed");
    assert!(
        closed - idle_since_second >= Duration::from_millis(1_500),
        "closed after {:?}, before the idle timeout",
        closed - idle_since_second
    );
    app.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_the_oldest_idle_connection_makes_room() {
    let app = TestApp::spawn_with(Backend::Sqlite, |settings| {
        settings.server.max_connections = 2;
    })
    .await;
    let oldest = TcpStream::connect(app.addr).await.unwrap();
    let _newer = TcpStream::connect(app.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let health = timeout(Duration::from_secs(1), reqwest::get(app.url("/healthz")))
        .await
        .expect("answered within 1 s")
        .unwrap();

    assert_eq!(health.status(), 200);
    let evicted = closed_by(oldest, Instant::now() + Duration::from_secs(1)).await;
    assert!(evicted.is_some(), "the oldest silent connection is closed");
    app.teardown().await;
}
