//! The `redial` binary itself: commands, exit codes, signals, and surviving SIGKILL.

use std::path::Path;
use std::time::Duration;

use redial::platforms::Platform;
use redial::storage::{AnalysisSource, Store};
use redial_bench::mock::{Behavior, MockConfig, MockUpstream};
use serde_json::{Value, json};
use sqlx::{Connection, Executor, PgConnection};
use uuid::Uuid;

use crate::support::app::{API_KEY, app_tests, parse_sse, vapi_body};
use crate::support::db::{Backend, TestDb, postgres_url};
use crate::support::process::{Server, run};

app_tests!(
    a_gateway_killed_after_an_answer_loses_no_confirmed_answer,
    an_analysis_interrupted_by_a_kill_completes_after_restart,
);

fn example_config() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config.example.toml")
        .display()
        .to_string()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn serve_starts_with_the_example_config_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("x.db").display());
    let example = example_config();
    let server = Server::start(
        dir.path(),
        &[
            "--config",
            &example,
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &db,
        ],
    )
    .await;

    let health = reqwest::get(server.url("/healthz")).await.unwrap();
    let ready: Value = reqwest::get(server.url("/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    assert_eq!(health.status(), 200);
    assert_eq!(ready["store"], "sqlite");
    let status = server.terminate().await;
    assert!(status.success(), "{status:?}");
}

/// A log collector that stops reading leaves redial's stderr full. Log lines are written by a
/// thread of their own, so requests are still answered; with lines written by the runtime's
/// workers, the first request after the pipe filled would block its worker for good.
#[tokio::test]
async fn requests_are_answered_while_nobody_reads_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["serve", "--listen", "127.0.0.1:0"]).await;
    server.stall_logs();
    let client = reqwest::Client::new();
    // Each request logs a line of about 300 bytes: 2,000 of them are ten times the pipe.
    for i in 0..2_000 {
        let response = tokio::time::timeout(
            Duration::from_secs(10),
            client.get(server.url("/v1/models")).send(),
        )
        .await
        .unwrap_or_else(|_| panic!("request {i} was not answered: the logs held it up"))
        .unwrap();
        assert_eq!(response.status(), 200);
    }
    let metrics = client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("redial_log_lines_dropped_total 0"),
        "2,000 lines fit the writer's queue: none dropped yet\n{metrics}"
    );
    server.kill().await;
}

/// Reading a caller's number needs the phone-number metadata, which loads on first use: about
/// 90 ms, plus a few for each region's first number. redial loads it, and reads the default
/// region's example numbers, before it listens, so the first caller after a start neither waits
/// for it nor blocks a worker (and every stream on it) while it loads.
#[tokio::test]
async fn phone_number_metadata_is_loaded_before_redial_listens() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = crate::support::process::command(dir.path());
    command.env("REDIAL_MEMORY__DEFAULT_REGION", "gb");
    let server = Server::start_command(command, &["serve", "--listen", "127.0.0.1:0"]).await;
    let loaded = server
        .startup
        .iter()
        .find(|entry| entry["message"] == "phone number metadata loaded")
        .unwrap_or_else(|| panic!("not loaded before listening: {:#?}", server.startup));
    assert_eq!(loaded["region"], "gb");
    assert_eq!(
        loaded["examples"], 2,
        "the region's fixed-line and mobile examples"
    );
    let status = server.terminate().await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn a_request_is_logged_once_its_response_has_been_sent_not_when_it_starts() {
    // Five tokens 60 ms apart: the headers go out with the first, the stream ends ~240 ms later.
    let upstream = MockUpstream::start(MockConfig {
        ttft: Duration::ZERO,
        inter_token: Duration::from_millis(60),
        tokens: 5,
        token: "word ".into(),
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("r.db").display());
    let config = write_config(dir.path(), &db, &upstream, "");
    let mut server = Server::start(dir.path(), &["--config", &config, "serve"]).await;

    let body = chat(&server, &vapi_body("call-log-1", "+14155550123", "Hello")).await;
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    let line = server
        .next_log("finished processing request", Duration::from_secs(5))
        .await
        .expect("a request line");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["complete"], true, "{line}");
    assert_eq!(line["span"]["route"], "/v1/chat/completions", "{line}");
    let headers = line["latency_ms"].as_f64().expect("latency_ms");
    let whole = line["duration_ms"].as_f64().expect("duration_ms");
    assert!(whole >= 200.0, "written after the last token: {line}");
    assert!(
        headers < whole - 150.0,
        "the headers went out with the first token: {line}"
    );

    // A caller that hangs up after the first token: the line says the reply was cut short.
    let mut response = reqwest::Client::new()
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(API_KEY)
        .json(&vapi_body("call-log-2", "+14155550123", "Hello"))
        .send()
        .await
        .unwrap();
    assert!(response.chunk().await.unwrap().is_some());
    drop(response);
    let line = server
        .next_log("finished processing request", Duration::from_secs(5))
        .await
        .expect("a line for the cut request");
    assert_eq!(line["complete"], false, "{line}");
    let status = server.terminate().await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn with_no_configuration_redial_serves_on_an_embedded_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["serve", "--listen", "127.0.0.1:0"]).await;
    let ready = reqwest::get(server.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    assert!(
        dir.path().join("redial.db").exists(),
        "sqlite://redial.db is created in the working directory"
    );
    let status = server.terminate().await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
#[ignore = "needs Postgres at TEST_DATABASE_URL: run scripts/test.sh"]
async fn migrate_twice_on_a_fresh_postgres_database_succeeds() {
    let admin = postgres_url();
    let name = format!("test_{}", Uuid::now_v7().simple());
    let mut connection = PgConnection::connect(&admin).await.unwrap();
    connection
        .execute(format!("create database {name}").as_str())
        .await
        .unwrap();
    let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
    let dir = tempfile::tempdir().unwrap();

    let first = run(dir.path(), &["migrate", "--database-url", &url]).await;
    let second = run(dir.path(), &["migrate", "--database-url", &url]).await;

    assert!(first.status.success(), "{}", stderr(&first));
    assert!(second.status.success(), "{}", stderr(&second));
    let _ = connection
        .execute(format!("drop database if exists {name} with (force)").as_str())
        .await;
}

#[tokio::test]
async fn a_bad_value_exits_non_zero_naming_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[server]\nlisten = 12\n").unwrap();

    let output = run(dir.path(), &["--config", config.to_str().unwrap(), "serve"]).await;

    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains("`server.listen`") && message.contains("bad.toml"),
        "{message}"
    );
    assert_eq!(message.trim().lines().count(), 1, "one line: {message}");
    assert!(!message.contains("panicked"));
}

#[tokio::test]
async fn a_journal_directory_that_cannot_be_used_stops_the_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-directory");
    std::fs::write(&blocker, "a file").unwrap();
    let db = format!("sqlite://{}", dir.path().join("x.db").display());

    let output = crate::support::process::command(dir.path())
        .env("REDIAL_DATABASE__JOURNAL_DIR", &blocker)
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &db])
        .output()
        .await
        .unwrap();

    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains("database.journal_dir") && message.contains("not-a-directory"),
        "{message}"
    );
    assert!(!message.contains("panicked"));
}

#[tokio::test]
async fn an_unreachable_database_exits_non_zero_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(
        dir.path(),
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            "postgres://redial:secret@127.0.0.1:1/redial",
        ],
    )
    .await;

    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    let last = message.trim().lines().last().unwrap_or_default().to_owned();
    assert!(
        last.starts_with(
            "redial: cannot connect to the database at postgres://redial:***@127.0.0.1:1/redial"
        ),
        "{message}"
    );
    assert!(
        !message.contains("secret") && !message.contains("panicked"),
        "{message}"
    );
}

#[tokio::test]
async fn check_config_prints_the_configuration_with_secrets_masked() {
    let dir = tempfile::tempdir().unwrap();
    let output = crate::support::process::command(dir.path())
        .args([
            "check-config",
            "--database-url",
            "postgres://app:hunter2@db/redial",
        ])
        .env("REDIAL_SERVER__API_KEYS", "platform-key-1,platform-key-2")
        .env("OPENAI_API_KEY", "sk-live-abc")
        .output()
        .await
        .unwrap();

    assert!(output.status.success(), "{}", stderr(&output));
    let printed = String::from_utf8_lossy(&output.stdout);
    let parsed: toml::Table = toml::from_str(&printed).unwrap();
    assert_eq!(
        parsed["server"]["api_keys"],
        toml::Value::Array(vec!["***".into(), "***".into()])
    );
    assert_eq!(
        parsed["database"]["url"].as_str(),
        Some("postgres://app:***@db/redial")
    );
    assert_eq!(parsed["upstream"]["api_key"].as_str(), Some("***"));
    for secret in ["platform-key-1", "hunter2", "sk-live-abc"] {
        assert!(!printed.contains(secret), "{secret} leaked: {printed}");
    }
}

/// A config file for a child redial on `db_url`, talking to `upstream`.
fn write_config(dir: &Path, db_url: &str, upstream: &MockUpstream, extra: &str) -> String {
    let path = dir.join("redial.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\napi_keys = [\"{API_KEY}\"]\nshutdown_grace_secs = 5\n\
         [database]\nurl = \"{db_url}\"\n\
         [upstream]\nbase_url = \"{}\"\napi_key = \"k\"\nfirst_token_timeout_ms = 3000\n{extra}",
        upstream.base_url()
    );
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

async fn chat(server: &Server, body: &Value) -> String {
    reqwest::Client::new()
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(API_KEY)
        .json(body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn a_gateway_killed_after_an_answer_loses_no_confirmed_answer(backend: Backend) {
    let db = TestDb::new(backend).await;
    let upstream = MockUpstream::start(MockConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A generous memory budget: this test is about durability, not the cold-start budget.
    let script = "escalation_model = \"gpt-strong\"\n\
        [memory]\nlive_window_secs = 0\nread_budget_ms = 5000\n\
        [[assistants]]\nid = \"asst-1\"\n\
        [[assistants.fields]]\nname = \"loan_purpose\"\nquestion = \"What is the loan for?\"\n\
        [[assistants.fields]]\nname = \"amount\"\nquestion = \"How much do you need?\"\n";
    let config = write_config(dir.path(), &db.url, &upstream, script);
    upstream.push(
        "gpt-test",
        Behavior::ToolCalls {
            text_before: None,
            calls: vec![
                (
                    "record_answer".into(),
                    json!({"field": "loan_purpose", "value": "a boat"}).to_string(),
                ),
                (
                    "remember_caller".into(),
                    json!({"name": "Grace"}).to_string(),
                ),
            ],
        },
    );
    upstream.push(
        "gpt-test",
        Behavior::text(["Lovely, Grace. How much do you need?"]),
    );
    let server = Server::start(dir.path(), &["--config", &config, "serve"]).await;

    let first = parse_sse(
        &chat(
            &server,
            &vapi_body("call-k1", "+14155550123", "I'm Grace; it's for a boat"),
        )
        .await,
    );
    assert!(first.done);
    server.kill().await;

    let server = Server::start(dir.path(), &["--config", &config, "serve"]).await;
    let second = parse_sse(
        &chat(
            &server,
            &vapi_body("call-k2", "415-555-0123", "Hello? We got cut off"),
        )
        .await,
    );
    assert!(second.done);

    let requests = upstream.requests();
    let resumed = requests.last().unwrap();
    assert_eq!(resumed["model"], "gpt-strong");
    let summary = resumed["messages"][1]["content"].as_str().unwrap();
    assert!(summary.contains(r#"loan_purpose = "a boat""#), "{summary}");
    assert!(summary.contains(r#"Caller's name: "Grace""#), "{summary}");
    assert!(
        summary.contains(r#"Next question to ask: "How much do you need?""#),
        "{summary}"
    );
    server.terminate().await;
    db.teardown().await;
}

async fn an_analysis_interrupted_by_a_kill_completes_after_restart(backend: Backend) {
    let db = TestDb::new(backend).await;
    let upstream = MockUpstream::start(MockConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Default lease and poll interval: the interrupted job must be taken over within a minute.
    let extra = "[analysis]\nmodel = \"analyst\"\n\
        [webhooks]\nretell_api_key = \"key_test_webhook\"\n";
    let config = write_config(dir.path(), &db.url, &upstream, extra);
    upstream.push("analyst", Behavior::Stall);
    let server = Server::start(dir.path(), &["--config", &config, "serve"]).await;
    let body = include_bytes!("../fixtures/retell/call_ended.json").to_vec();
    let v = chrono::Utc::now().timestamp_millis().to_string();
    let mut mac =
        <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(b"key_test_webhook").unwrap();
    hmac::Mac::update(&mut mac, &body);
    hmac::Mac::update(&mut mac, v.as_bytes());
    let d = hex::encode(hmac::Mac::finalize(mac).into_bytes());

    let response = reqwest::Client::new()
        .post(server.url("/webhooks/retell"))
        .header("x-retell-signature", format!("v={v},d={d}"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Wait until the analysis request is in flight, then kill the process mid-job.
    for _ in 0..200 {
        if upstream.requests().iter().any(|r| r["model"] == "analyst") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        upstream.requests().iter().any(|r| r["model"] == "analyst"),
        "the job started"
    );
    server.kill().await;

    let reply = json!({"summary": "Asked about opening hours.", "urgency": 1, "action": "none", "sentiment": "satisfied"});
    upstream.push("analyst", Behavior::text([reply.to_string()]));
    let server = Server::start(dir.path(), &["--config", &config, "serve"]).await;
    let restarted = std::time::Instant::now();

    let summary = wait_for_analysis(db.store.as_ref(), "Jabr9TXYYJHfvl6Syypi88rdAHYHmcq6").await;
    assert_eq!(summary, "Asked about opening hours.");
    let took = restarted.elapsed();
    assert!(
        took < Duration::from_secs(60),
        "taken over {took:?} after the restart"
    );
    server.terminate().await;
    db.teardown().await;
}

async fn wait_for_analysis(store: &dyn Store, call_key: &str) -> String {
    // A minute: with the default lease an interrupted job waits up to 30 s for its takeover.
    for _ in 0..2_400 {
        if let Some((session, _)) = store.load_call(Platform::Retell, call_key).await.unwrap() {
            let analyses = store.list_analyses(session.session_id).await.unwrap();
            if let Some(a) = analyses
                .into_iter()
                .find(|a| a.source == AnalysisSource::Redial)
            {
                return a.summary;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the interrupted analysis never completed");
}
