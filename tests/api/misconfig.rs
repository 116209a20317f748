//! Loud for operators, soft for callers: an upstream error reaches a non-voice client as its
//! status in OpenAI's shape while a caller hears the apology; `check-config` reports the silent
//! misconfigurations; a job failing on configuration waits for a start that allows it instead
//! of being retried (both stores where storage is involved).

use std::time::{Duration, Instant};

use redial::platforms::Platform;
use redial::storage::AnalysisSource;
use redial_bench::mock::Behavior;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, SqliteConnection};

use crate::support::app::{TestApp, app_tests, read_sse, vapi_body};
use crate::support::db::Backend;
use crate::support::process::command;

app_tests!(
    a_wrong_upstream_key_is_a_401_for_a_generic_client_and_an_apology_for_a_caller,
    an_analysis_job_failing_on_configuration_waits_and_runs_after_a_restart_with_a_model,
);

const REFUSED: &str = "Incorrect API key provided: sk-wr***ng.";

async fn a_wrong_upstream_key_is_a_401_for_a_generic_client_and_an_apology_for_a_caller(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let generic = json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]});

    for stream in [false, true] {
        app.upstream.push("gpt-test", Behavior::error(401, REFUSED));
        let mut body = generic.clone();
        body["stream"] = json!(stream);
        let response = app.chat(&body).await;
        assert_eq!(response.status(), 401, "stream: {stream}");
        assert_eq!(response.headers()["content-type"], "application/json");
        let error: Value = response.json().await.unwrap();
        let error = &error["error"];
        assert_eq!(error["type"], "authentication_error", "{error}");
        assert_eq!(error["code"], "upstream_client_error", "{error}");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains("401") && message.contains("upstream.api_key"),
            "the message names the upstream and the key to check: {message}"
        );
        assert!(
            !message.contains(&app.settings.upstream.apology),
            "{message}"
        );
    }

    // An outage is the upstream's 5xx, in the same shape.
    app.upstream.push(
        "gpt-test",
        Behavior::Status {
            code: 503,
            body: "overloaded".into(),
        },
    );
    let response = app.chat(&generic).await;
    assert_eq!(response.status(), 503);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["type"], "api_error");

    // A caller on a voice platform hears the apology instead.
    app.upstream.push("gpt-test", Behavior::error(401, REFUSED));
    let response = app
        .chat(&vapi_body("call-k1", "+14155550123", "Hello?"))
        .await;
    assert_eq!(response.status(), 200);
    let sse = read_sse(response).await;
    assert_eq!(sse.text(), app.settings.upstream.apology);
    assert!(sse.done);
    app.teardown().await;
}

#[tokio::test]
async fn check_config_reports_the_silent_misconfigurations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("redial.toml");
    // No upstream key, no upstream.model (Retell cannot be served), a webhook secret and no
    // analysis.model.
    std::fs::write(
        &path,
        "[server]\napi_keys = [\"k\"]\n[webhooks]\nvapi_secret = \"s\"\n",
    )
    .unwrap();
    let output = command(dir.path())
        .args(["check-config", "--config", &path.display().to_string()])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "warnings do not fail the check: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    for key in ["upstream.api_key", "upstream.model", "analysis.model"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("# warning ({key}):"))),
            "check-config warns about {key}: {stdout}"
        );
    }
    assert!(stdout.contains("Retell"), "{stdout}");
    toml::from_str::<toml::Table>(&stdout).expect("the output still parses as TOML");

    // Configured, nothing to report.
    std::fs::write(
        &path,
        "[server]\napi_keys = [\"k\"]\n[upstream]\napi_key = \"sk\"\nmodel = \"gpt-4o-mini\"\n\
         [webhooks]\nvapi_secret = \"s\"\n",
    )
    .unwrap();
    let output = command(dir.path())
        .args(["check-config", "--config", &path.display().to_string()])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert!(!stdout.contains("# warning"), "{stdout}");

    // One agent has a model, another and unlisted ones have none: each is named.
    let agents = "[server]\napi_keys = [\"k\"]\n[upstream]\napi_key = \"sk\"\n\
                  [[assistants]]\nid = \"agent_1\"\nmodel = \"gpt-4o-mini\"\n\
                  [[assistants]]\nid = \"agent_2\"\n";
    std::fs::write(&path, agents).unwrap();
    let output = command(dir.path())
        .args(["check-config", "--config", &path.display().to_string()])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    let warning = |key: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("# warning ({key}):")))
            .unwrap_or_else(|| panic!("no warning about {key}: {stdout}"))
            .to_owned()
    };
    assert!(
        warning("assistants[1].model").contains("\"agent_2\""),
        "{stdout}"
    );
    assert!(warning("upstream.model").contains("1011"), "{stdout}");
    assert!(!stdout.contains("assistants[0]"), "{stdout}");

    // A model whose provider is not configured is an error naming the assistant and the key.
    let misspelt = "[server]\napi_keys = [\"k\"]\n[upstream]\napi_key = \"sk\"\n\
                    [[providers]]\nname = \"claude\"\nkind = \"anthropic\"\n\
                    [[assistants]]\nid = \"agent_1\"\nmodel = \"claud/claude-haiku\"\n";
    std::fs::write(&path, misspelt).unwrap();
    let output = command(dir.path())
        .args(["check-config", "--config", &path.display().to_string()])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("`assistants[0].model`")
            && stderr.contains("\"agent_1\"")
            && stderr.contains("\"claud\""),
        "{stderr}"
    );
}

const VAPI_SECRET: &str = "vapi-secret";
const CALL_ID: &str = "call-unanswered";

/// `(status, attempts, max_attempts, last_error)` of the analysis job, read beside the app.
async fn analysis_job(
    backend: Backend,
    app: &TestApp,
) -> Option<(String, i32, i32, Option<String>)> {
    let sql = "select status, attempts, max_attempts, last_error from job \
               where kind = 'analyze_call'";
    match backend {
        Backend::Postgres => {
            let mut conn = PgConnection::connect(&app.db.url).await.unwrap();
            sqlx::query_as(sql).fetch_optional(&mut conn).await.unwrap()
        }
        Backend::Sqlite => {
            let mut conn = SqliteConnection::connect(&app.db.url).await.unwrap();
            sqlx::query_as(sql).fetch_optional(&mut conn).await.unwrap()
        }
    }
}

async fn wait_for_job_status(backend: Backend, app: &TestApp, status: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let job = analysis_job(backend, app).await;
        if job.as_ref().is_some_and(|j| j.0 == status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the analysis job is not {status} within {within:?}: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn an_analysis_job_failing_on_configuration_waits_and_runs_after_a_restart_with_a_model(
    backend: Backend,
) {
    // No analysis.model, no upstream.model, and a call redial never answered: its turns named
    // no model, so there is none to analyse it with.
    let app = TestApp::spawn_with(backend, |s| {
        s.webhooks.vapi_secret = redial::config::Secret::new(VAPI_SECRET);
        s.analysis.poll_interval_ms = 20;
        s.analysis.retry_base_secs = 1;
    })
    .await;
    let mut report: Value =
        serde_json::from_str(include_str!("../fixtures/vapi/end-of-call-report.json")).unwrap();
    report["message"]["call"]["id"] = json!(CALL_ID);
    let response = app
        .client
        .post(app.url("/webhooks/vapi"))
        .header("x-vapi-secret", VAPI_SECRET)
        .json(&report)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    wait_for_job_status(backend, &app, "waiting", Duration::from_secs(10)).await;
    // Past the first retry's time (1 s), nothing has run again.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let (status, attempts, max_attempts, reason) = analysis_job(backend, &app).await.unwrap();
    assert_eq!(
        (status.as_str(), attempts),
        ("waiting", 1),
        "not retried as if transient"
    );
    assert_eq!(
        max_attempts,
        app.settings.analysis.max_attempts + 1,
        "the attempt does not count"
    );
    let reason = reason.unwrap();
    assert!(
        reason.contains("analysis.model"),
        "a clear reason: {reason}"
    );
    assert!(
        app.upstream.requests().is_empty(),
        "nothing was asked upstream"
    );

    // A restart with a model configured runs it.
    app.upstream.push(
        "analyst",
        Behavior::text([json!({"summary": "Asked about a loan.", "urgency": 2, "action": "none", "sentiment": "neutral"}).to_string()]),
    );
    let app = app
        .restart_with(|s| s.analysis.model = "analyst".into())
        .await;
    wait_for_job_status(backend, &app, "done", Duration::from_secs(10)).await;
    let (session, _) = app.stored_call(Platform::Vapi, CALL_ID).await;
    let analyses = app
        .db
        .store
        .list_analyses(session.session_id)
        .await
        .unwrap();
    let ours = analyses
        .iter()
        .find(|a| a.source == AnalysisSource::Redial)
        .unwrap();
    assert_eq!(ours.summary, "Asked about a loan.");
    assert_eq!(ours.model.as_deref(), Some("analyst"));
    app.teardown().await;
}
