//! The official `openai` Python SDK against redial (`tests/sdk/openai_sdk_check.py`). Needs the
//! interpreter named by REDIAL_TEST_PYTHON (`scripts/test.sh` sets up a venv with the SDK), so
//! both variants are `#[ignore]`d with that reason: a plain `cargo test` lists them as ignored
//! and never creates the venv; `scripts/test.sh` runs them. Run without the SDK, the test fails
//! with instructions rather than pass without checking.

use std::time::Duration;

use redial_bench::mock::Behavior;
use serde_json::Value;

use crate::support::app::{API_KEY, TestApp};
use crate::support::db::Backend;

/// By hand rather than with `app_tests!`: the SQLite variant needs the SDK too.
mod the_official_openai_python_sdk_streams_through_redial {
    use crate::support::db::Backend;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs the OpenAI Python SDK at REDIAL_TEST_PYTHON: run scripts/test.sh"]
    async fn sqlite() {
        super::the_official_openai_python_sdk_streams_through_redial(Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs Postgres at TEST_DATABASE_URL and the OpenAI Python SDK at REDIAL_TEST_PYTHON: run scripts/test.sh"]
    async fn postgres() {
        super::the_official_openai_python_sdk_streams_through_redial(Backend::Postgres).await;
    }
}

async fn the_official_openai_python_sdk_streams_through_redial(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let gap = Duration::from_millis(150);
    let words = ["Hello", " from", " the", " upstream."];
    app.upstream.push(
        "gpt-test",
        Behavior::Text {
            chunks: words.iter().map(|w| (*w).to_owned()).collect(),
            ttft: Duration::ZERO,
            gap,
        },
    );
    app.upstream
        .push("gpt-test", Behavior::text(["Non-streamed ", "answer."]));
    let python = std::env::var("REDIAL_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openai_sdk_check.py");

    // Both base URLs a platform may be given: with /v1 and without.
    for (call, base) in [("sdk-v1", app.url("/v1")), ("sdk-root", app.url(""))] {
        if call == "sdk-root" {
            app.upstream
                .push("gpt-test", Behavior::text(["Hi", " again"]));
            app.upstream.push("gpt-test", Behavior::text(["Plain."]));
        }
        let output = tokio::process::Command::new(&python)
            .arg(script)
            .env("REDIAL_BASE_URL", &base)
            .env("REDIAL_API_KEY", API_KEY)
            .env("REDIAL_CALL_ID", call)
            .output()
            .await
            .unwrap_or_else(|e| {
                panic!("cannot run {python}: {e}; run scripts/test.sh, which installs the SDK")
            });
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "the SDK check failed (run scripts/test.sh to install the openai package):\n{stderr}"
        );
        let seen: Value = serde_json::from_slice(&output.stdout).unwrap();
        if call == "sdk-v1" {
            assert_eq!(
                seen["pieces"],
                serde_json::json!(words),
                "token by token: {seen}"
            );
            let arrivals: Vec<f64> = seen["arrivals"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert!(
                arrivals[3] - arrivals[0] >= 0.3,
                "tokens arrived as they were produced: {arrivals:?}"
            );
            assert_eq!(seen["completion_text"], "Non-streamed answer.");
        } else {
            assert_eq!(seen["pieces"], serde_json::json!(["Hi", " again"]));
            assert_eq!(seen["completion_text"], "Plain.");
        }
        assert_eq!(seen["finish"], "stop");
        assert_eq!(seen["completion_finish"], "stop");
    }
    // The Vapi fields in extra_body identified the call and the caller.
    app.settle().await;
    let (_, caller) = app
        .db
        .store
        .load_call(redial::platforms::Platform::Vapi, "sdk-v1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(caller.unwrap().phone, "+14155550199");
    app.teardown().await;
}
