//! Call-ended webhooks: signatures on raw bytes, dedupe, and the durable analysis (both stores).

use std::time::Duration;

use hmac::{Hmac, Mac};
use redial::platforms::Platform;
use redial::storage::{Analysis, AnalysisSource, SessionStatus, Store};
use redial_bench::mock::Behavior;
use serde_json::{Value, json};
use sha2::Sha256;
use uuid::Uuid;

use crate::support::app::{TestApp, app_tests, read_sse, vapi_body};
use crate::support::db::Backend;

const VAPI_SECRET: &str = "vapi-secret";
const RETELL_KEY: &str = "key_test_webhook";
const ELEVENLABS_SECRET: &str = "wsec_test";

/// Extra request headers.
type Headers = Vec<(&'static str, String)>;

app_tests!(
    a_vapi_end_of_call_report_closes_the_call_and_informs_the_next_one,
    forged_or_unsigned_webhooks_are_rejected_and_change_nothing,
    duplicate_deliveries_produce_one_analysis,
    an_elevenlabs_post_call_transcription_is_accepted_when_signed,
    unconfigured_platforms_and_malformed_bodies_are_refused,
    an_invalid_analysis_is_asked_again,
    vapi_status_updates_open_and_close_the_session_and_other_messages_are_acknowledged,
    signed_webhooks_with_nul_and_lone_surrogates_everywhere_close_and_analyse_the_call,
    a_platform_without_webhooks_is_not_found_and_nothing_is_stored,
);

async fn spawn(backend: Backend) -> TestApp {
    TestApp::spawn_with(backend, |s| {
        s.webhooks.vapi_secret = redial::config::Secret::new(VAPI_SECRET);
        s.webhooks.retell_api_key = redial::config::Secret::new(RETELL_KEY);
        s.webhooks.elevenlabs_secret = redial::config::Secret::new(ELEVENLABS_SECRET);
        s.analysis.model = "analyst".into();
        s.analysis.poll_interval_ms = 20;
        s.analysis.retry_base_secs = 1;
    })
    .await
}

fn hmac_hex(key: &str, parts: &[&[u8]]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    for part in parts {
        mac.update(part);
    }
    hex::encode(mac.finalize().into_bytes())
}

fn analysis_reply(summary: &str) -> Behavior {
    let reply =
        json!({"summary": summary, "urgency": 4, "action": "call_back", "sentiment": "frustrated"});
    Behavior::text([reply.to_string()])
}

async fn post_raw(
    app: &TestApp,
    path: &str,
    body: &[u8],
    headers: &[(&str, String)],
) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url(path))
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    request.send().await.unwrap()
}

fn retell_headers(body: &[u8], key: &str) -> Headers {
    let v = chrono::Utc::now().timestamp_millis().to_string();
    let d = hmac_hex(key, &[body, v.as_bytes()]);
    vec![("x-retell-signature", format!("v={v},d={d}"))]
}

fn elevenlabs_headers(body: &[u8], secret: &str) -> Headers {
    let t = chrono::Utc::now().timestamp().to_string();
    let v0 = hmac_hex(secret, &[t.as_bytes(), b".", body]);
    vec![("elevenlabs-signature", format!("t={t},v0={v0}"))]
}

fn vapi_hmac_headers(body: &[u8], secret: &str, timestamp_ms: i64) -> Headers {
    let ts = timestamp_ms.to_string();
    let signature = hmac_hex(secret, &[ts.as_bytes(), b".", body]);
    vec![("x-timestamp", ts), ("x-signature", signature)]
}

fn end_of_call_report(call_id: &str, number: &str) -> Vec<u8> {
    let mut report: Value =
        serde_json::from_str(include_str!("../fixtures/vapi/end-of-call-report.json")).unwrap();
    report["message"]["call"]["id"] = json!(call_id);
    report["message"]["call"]["assistantId"] = json!("asst-1");
    report["message"]["customer"] = json!({"number": number});
    report["message"]["call"]["customer"] = json!({"number": number});
    serde_json::to_vec(&report).unwrap()
}

/// Waits for the worker to store redial's analysis of the session.
async fn redial_analysis(store: &dyn Store, platform: Platform, call_key: &str) -> Analysis {
    for _ in 0..500 {
        if let Some((session, _)) = store.load_call(platform, call_key).await.unwrap() {
            let analyses = store.list_analyses(session.session_id).await.unwrap();
            if let Some(analysis) = analyses
                .into_iter()
                .find(|a| a.source == AnalysisSource::Redial)
            {
                return analysis;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no analysis of {call_key} appeared");
}

/// The sources of a session's stored analyses (`redial`, `retell`, `elevenlabs`…).
async fn analysis_sources(store: &dyn Store, session_id: Uuid) -> Vec<String> {
    let analyses = store.list_analyses(session_id).await.unwrap();
    analyses.iter().map(|a| a.source.to_string()).collect()
}

fn analyst_requests(app: &TestApp) -> usize {
    app.upstream
        .requests()
        .iter()
        .filter(|r| r["model"] == "analyst")
        .count()
}

async fn a_vapi_end_of_call_report_closes_the_call_and_informs_the_next_one(backend: Backend) {
    let app = spawn(backend).await;
    assert!(
        read_sse(
            app.chat(&vapi_body(
                "call-w1",
                "+14155550123",
                "My car loan was refused!"
            ))
            .await
        )
        .await
        .done
    );
    app.settle().await;
    app.upstream.push(
        "analyst",
        analysis_reply("Car loan refused; caller upset.\nWants a call back."),
    );

    let body = end_of_call_report("call-w1", "+14155550123");
    let response = post_raw(
        &app,
        "/webhooks/vapi",
        &body,
        &[("x-vapi-secret", VAPI_SECRET.to_owned())],
    )
    .await;

    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({}));
    let analysis = redial_analysis(app.db.store.as_ref(), Platform::Vapi, "call-w1").await;
    assert_eq!(
        (
            analysis.urgency,
            analysis.action.as_deref(),
            analysis.sentiment.as_deref()
        ),
        (Some(4), Some("call_back"), Some("frustrated"))
    );
    let analyst_prompt = app
        .upstream
        .requests()
        .into_iter()
        .find(|r| r["model"] == "analyst")
        .unwrap();
    assert!(
        analyst_prompt.to_string().contains("AI: "),
        "the platform's transcript is analysed"
    );
    let (session, caller) = app.stored_call(Platform::Vapi, "call-w1").await;
    assert_eq!(session.status, SessionStatus::Ended);
    assert_eq!(session.ended_reason.as_deref(), Some("customer-ended-call"));
    assert_eq!(session.details["cost"], 0.1234);
    let analyses = app
        .db
        .store
        .list_analyses(session.session_id)
        .await
        .unwrap();
    assert!(
        analyses
            .iter()
            .any(|a| a.source == AnalysisSource::Platform(Platform::Vapi)),
        "the platform's own summary is kept"
    );
    let caller = caller.unwrap();
    assert_eq!(
        caller.call_count, 1,
        "the webhook does not count the call again"
    );
    assert_eq!(caller.last_action.as_deref(), Some("call_back"));

    // The next call starts informed.
    assert!(
        read_sse(
            app.chat(&vapi_body("call-w2", "+14155550123", "Hello again"))
                .await
        )
        .await
        .done
    );
    let last = app
        .upstream
        .requests()
        .into_iter()
        .rev()
        .find(|r| r["model"] == "gpt-test")
        .unwrap();
    let summary = last["messages"][1]["content"].as_str().unwrap().to_owned();
    assert!(
        summary.contains(
            r#"Last call summary: "Car loan refused; caller upset.\nWants a call back.""#
        ),
        "{summary}"
    );
    assert!(
        summary.contains(r#"sentiment at the end of the last call: "frustrated""#),
        "{summary}"
    );
    assert!(
        summary.contains(r#"Open action from the last call: "call_back""#),
        "{summary}"
    );
    app.teardown().await;
}

async fn forged_or_unsigned_webhooks_are_rejected_and_change_nothing(backend: Backend) {
    let app = spawn(backend).await;
    let vapi = end_of_call_report("call-forged", "+14155550123");
    let retell = include_bytes!("../fixtures/retell/call_ended.json").to_vec();
    let eleven = include_bytes!("../fixtures/elevenlabs/post_call_transcription.json").to_vec();
    let stale = chrono::Utc::now().timestamp_millis() - 10 * 60 * 1000;
    let attempts: Vec<(&str, &[u8], Headers)> = vec![
        ("/webhooks/vapi", &vapi, vec![]),
        (
            "/webhooks/vapi",
            &vapi,
            vec![("x-vapi-secret", "guess".into())],
        ),
        (
            "/webhooks/vapi",
            &vapi,
            vapi_hmac_headers(&vapi, "wrong-secret", chrono::Utc::now().timestamp_millis()),
        ),
        (
            "/webhooks/vapi",
            &vapi,
            vapi_hmac_headers(&vapi, VAPI_SECRET, stale),
        ),
        ("/webhooks/retell", &retell, vec![]),
        (
            "/webhooks/retell",
            &retell,
            retell_headers(&retell, "another-key"),
        ),
        (
            "/webhooks/retell",
            b"{\"event\":\"call_ended\",\"call\":{\"call_id\":\"tampered\"}}",
            retell_headers(&retell, RETELL_KEY),
        ),
        ("/webhooks/elevenlabs", &eleven, vec![]),
        (
            "/webhooks/elevenlabs",
            &eleven,
            elevenlabs_headers(&eleven, "nope"),
        ),
    ];
    for (path, body, headers) in attempts {
        let response = post_raw(&app, path, body, &headers).await;
        assert_eq!(response.status(), 401, "{path} {headers:?}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["type"], "authentication_error");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        app.db
            .store
            .load_call(Platform::Vapi, "call-forged")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        app.db
            .store
            .load_call(Platform::Retell, "Jabr9TXYYJHfvl6Syypi88rdAHYHmcq6")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        app.db
            .store
            .get_caller_by_phone("+14155550123")
            .await
            .unwrap()
            .is_none()
    );
    assert!(app.upstream.requests().is_empty(), "no analysis ran");
    // A correctly signed Vapi HMAC delivery is accepted.
    let ok = post_raw(
        &app,
        "/webhooks/vapi",
        &vapi,
        &vapi_hmac_headers(&vapi, VAPI_SECRET, chrono::Utc::now().timestamp_millis()),
    )
    .await;
    assert_eq!(ok.status(), 200);
    app.teardown().await;
}

async fn duplicate_deliveries_produce_one_analysis(backend: Backend) {
    let app = spawn(backend).await;
    app.upstream
        .push("analyst", analysis_reply("Asked about pricing."));
    app.upstream.push(
        "analyst",
        analysis_reply("A second analysis must not happen."),
    );
    let ended = include_bytes!("../fixtures/retell/call_ended.json").to_vec();
    let analyzed = include_bytes!("../fixtures/retell/call_analyzed.json").to_vec();

    for body in [&ended, &ended, &analyzed, &analyzed] {
        let response = post_raw(
            &app,
            "/webhooks/retell",
            body,
            &retell_headers(body, RETELL_KEY),
        )
        .await;
        assert_eq!(response.status(), 200);
    }
    let key = "Jabr9TXYYJHfvl6Syypi88rdAHYHmcq6";
    let analysis = redial_analysis(app.db.store.as_ref(), Platform::Retell, key).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert_eq!(analysis.summary, "Asked about pricing.");
    assert_eq!(
        analyst_requests(&app),
        1,
        "one analysis, however many deliveries"
    );
    let (session, caller) = app.stored_call(Platform::Retell, key).await;
    let sources = analysis_sources(app.db.store.as_ref(), session.session_id).await;
    assert_eq!(sources.iter().filter(|s| *s == "redial").count(), 1);
    assert_eq!(
        sources.iter().filter(|s| *s == "retell").count(),
        1,
        "Retell's own analysis is kept: {sources:?}"
    );
    assert_eq!(caller.unwrap().call_count, 1);
    assert_eq!(session.status, SessionStatus::Ended);
    assert_eq!(session.ended_reason.as_deref(), Some("user_hangup"));
    app.teardown().await;
}

async fn an_elevenlabs_post_call_transcription_is_accepted_when_signed(backend: Backend) {
    let app = spawn(backend).await;
    app.upstream
        .push("analyst", analysis_reply("Checked an order."));
    let body = include_bytes!("../fixtures/elevenlabs/post_call_transcription.json").to_vec();

    let response = post_raw(
        &app,
        "/webhooks/elevenlabs",
        &body,
        &elevenlabs_headers(&body, ELEVENLABS_SECRET),
    )
    .await;

    assert_eq!(response.status(), 200);
    let key = "conv_01jzq8r5x4e9v3k2m7n6p5t4s3";
    let analysis = redial_analysis(app.db.store.as_ref(), Platform::ElevenLabs, key).await;
    assert_eq!(analysis.summary, "Checked an order.");
    let (session, _) = app.stored_call(Platform::ElevenLabs, key).await;
    assert_eq!(session.status, SessionStatus::Ended);
    let sources = analysis_sources(app.db.store.as_ref(), session.session_id).await;
    assert!(sources.contains(&"elevenlabs".to_owned()), "{sources:?}");
    app.teardown().await;
}

async fn unconfigured_platforms_and_malformed_bodies_are_refused(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        s.webhooks.retell_api_key = redial::config::Secret::new(RETELL_KEY);
    })
    .await;
    let body = end_of_call_report("call-u", "+14155550123");
    let response = post_raw(
        &app,
        "/webhooks/vapi",
        &body,
        &[("x-vapi-secret", "x".into())],
    )
    .await;
    assert_eq!(response.status(), 503);
    let error: Value = response.json().await.unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("webhooks.vapi_secret"),
        "{error}"
    );

    for malformed in [&b"{not json"[..], b"{\"call\":{}}", b"[1,2]"] {
        let response = post_raw(
            &app,
            "/webhooks/retell",
            malformed,
            &retell_headers(malformed, RETELL_KEY),
        )
        .await;
        assert_eq!(
            response.status(),
            400,
            "{}",
            String::from_utf8_lossy(malformed)
        );
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["type"], "invalid_request_error");
    }
    app.teardown().await;
}

async fn an_invalid_analysis_is_asked_again(backend: Backend) {
    let app = spawn(backend).await;
    app.upstream
        .push("analyst", Behavior::text(["Sure! The caller was happy."]));
    app.upstream
        .push("analyst", analysis_reply("Caller wanted a quote."));
    let body = include_bytes!("../fixtures/retell/call_ended.json").to_vec();

    let response = post_raw(
        &app,
        "/webhooks/retell",
        &body,
        &retell_headers(&body, RETELL_KEY),
    )
    .await;

    assert_eq!(response.status(), 200);
    let analysis = redial_analysis(
        app.db.store.as_ref(),
        Platform::Retell,
        "Jabr9TXYYJHfvl6Syypi88rdAHYHmcq6",
    )
    .await;
    assert_eq!(analysis.summary, "Caller wanted a quote.");
    assert_eq!(analyst_requests(&app), 2);
    app.teardown().await;
}

async fn vapi_status_updates_open_and_close_the_session_and_other_messages_are_acknowledged(
    backend: Backend,
) {
    let app = spawn(backend).await;
    let secret = [("x-vapi-secret", VAPI_SECRET.to_owned())];
    let key = "c0a8b1e2-5d3f-4e6a-9b7c-1f2e3d4c5b6a";

    let started = include_bytes!("../fixtures/vapi/status-update-in-progress.json");
    let response = post_raw(&app, "/webhooks/vapi", started, &secret).await;
    assert_eq!(response.status(), 200);
    let (session, _) = app
        .db
        .store
        .load_call(Platform::Vapi, key)
        .await
        .unwrap()
        .expect("the session is warmed");
    assert_eq!(session.status, SessionStatus::Active);

    let other = include_bytes!("../fixtures/vapi/tool-calls.json");
    let response = post_raw(&app, "/webhooks/vapi", other, &secret).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({}));

    let ended = include_bytes!("../fixtures/vapi/status-update-ended.json");
    assert_eq!(
        post_raw(&app, "/webhooks/vapi", ended, &secret)
            .await
            .status(),
        200
    );
    for _ in 0..200 {
        let (session, _) = app.stored_call(Platform::Vapi, key).await;
        if session.status == SessionStatus::Ended {
            assert_eq!(
                session.ended_reason.as_deref(),
                Some("pipeline-error-custom-llm-llm-failed")
            );
            app.teardown().await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the session was not closed");
}

/// `body` with a NUL (`\u0000`) and a lone surrogate (`\ud800`) escape at the end of every
/// string value, except the event types (`type`, `event`) that say what the event is.
fn poisoned(body: &[u8]) -> Vec<u8> {
    fn poison(value: &mut Value) {
        match value {
            Value::String(s) => s.push_str("\u{0}\u{1}"),
            Value::Array(items) => items.iter_mut().for_each(poison),
            Value::Object(map) => {
                for (key, value) in map.iter_mut() {
                    if key != "type" && key != "event" {
                        poison(value);
                    }
                }
            }
            _ => {}
        }
    }
    let mut value: Value = serde_json::from_slice(body).unwrap();
    poison(&mut value);
    let text = serde_json::to_string(&value).unwrap();
    // serde_json escapes U+0001 as `\u0001`: turn each into a lone surrogate escape.
    text.replace("\\u0001", "\\ud800").into_bytes()
}

async fn signed_webhooks_with_nul_and_lone_surrogates_everywhere_close_and_analyse_the_call(
    backend: Backend,
) {
    let app = spawn(backend).await;
    for _ in 0..3 {
        app.upstream
            .push("analyst", analysis_reply("Poison\u{0} handled."));
    }
    let vapi = poisoned(&end_of_call_report("call-poison", "+14155550123"));
    let retell = poisoned(include_bytes!("../fixtures/retell/call_ended.json"));
    let eleven = poisoned(include_bytes!(
        "../fixtures/elevenlabs/post_call_transcription.json"
    ));
    assert!(String::from_utf8_lossy(&retell).contains(r"\u0000\ud800"));
    let deliveries: Vec<(Platform, &str, &[u8], Headers)> = vec![
        (
            Platform::Vapi,
            "call-poison",
            &vapi,
            vec![("x-vapi-secret", VAPI_SECRET.to_owned())],
        ),
        (
            Platform::Retell,
            "Jabr9TXYYJHfvl6Syypi88rdAHYHmcq6",
            &retell,
            retell_headers(&retell, RETELL_KEY),
        ),
        (
            Platform::ElevenLabs,
            "conv_01jzq8r5x4e9v3k2m7n6p5t4s3",
            &eleven,
            elevenlabs_headers(&eleven, ELEVENLABS_SECRET),
        ),
    ];
    for (platform, key, body, headers) in deliveries {
        let path = format!("/webhooks/{platform}");
        let response = post_raw(&app, &path, body, &headers).await;
        assert_eq!(response.status(), 200, "{platform}");
        // Stored sanitised: the call id's NUL and lone surrogate are both U+FFFD.
        let stored_key = format!("{key}\u{fffd}\u{fffd}");
        let analysis = redial_analysis(app.db.store.as_ref(), platform, &stored_key).await;
        assert_eq!(analysis.summary, "Poison\u{fffd} handled.", "{platform}");
        let (session, _) = app.stored_call(platform, &stored_key).await;
        assert_eq!(session.status, SessionStatus::Ended, "{platform}");
        let reason = session.ended_reason.clone().unwrap_or_default();
        assert!(
            reason.ends_with("\u{fffd}\u{fffd}"),
            "{platform}: {reason:?}"
        );
        let transcript = session.details["transcript"].as_str().unwrap_or_default();
        assert!(
            transcript.contains('\u{fffd}') && !transcript.contains('\0'),
            "{platform}: {transcript:?}"
        );
        assert!(
            !session.details.to_string().contains("\\u0000"),
            "{platform}: no NUL left in the details"
        );
        // The call id as the platform sent it finds the same call.
        let (same, _) = app
            .stored_call(platform, &format!("{key}\u{0}\u{fffd}"))
            .await;
        assert_eq!(same.session_id, session.session_id);
    }
    app.teardown().await;
}

async fn a_platform_without_webhooks_is_not_found_and_nothing_is_stored(backend: Backend) {
    // Dev mode without secrets: a listed platform takes unsigned webhooks, so a 404 here can
    // only come from the platform name.
    let app = TestApp::spawn_with(backend, |s| s.server.api_keys.clear()).await;
    let body = include_bytes!("../fixtures/retell/call_started.json");
    let call_id = "Jabr9TXYYJHfvl6Syypi88rdAHYHmcq6";
    for platform in [
        "generic",
        "Retell",
        "twilio",
        "retell%20",
        "%FF",
        "elevenlabs.json",
    ] {
        let path = format!("/webhooks/{platform}");
        let response = post_raw(&app, &path, body, &[]).await;
        assert_eq!(response.status(), 404, "{path}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["type"], "invalid_request_error", "{path}");
        assert_eq!(error["error"]["code"], "not_found", "{path}");
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("vapi, retell, elevenlabs"),
            "{path}: {message}"
        );
    }
    for platform in [Platform::Generic, Platform::Retell] {
        let stored = app.db.store.load_call(platform, call_id).await.unwrap();
        assert!(stored.is_none(), "{platform}: nothing stored");
    }
    // The same body at its platform's route is taken (and warms the call's session).
    let response = post_raw(&app, "/webhooks/retell", body, &[]).await;
    assert_eq!(response.status(), 200);
    // The session is warmed in the background after the acknowledgement: wait for it.
    let mut stored = None;
    for _ in 0..500 {
        app.settle().await;
        stored = app
            .db
            .store
            .load_call(Platform::Retell, call_id)
            .await
            .unwrap();
        if stored.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (session, _) = stored.expect("the retell call's session is warmed");
    assert_eq!(session.status, SessionStatus::Active);
    app.teardown().await;
}
