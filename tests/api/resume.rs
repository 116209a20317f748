//! Resumption that follows real call timelines with the shipped defaults, and who counts as a
//! caller: a quick redial after a drop resumes (no webhook needed), a live call is never merged
//! with a concurrent one, a late call-ended webhook does not undo a resumption, ElevenLabs names
//! the caller in the body or in its post-call webhook, and any caller id is a caller (both
//! stores).

use std::time::Duration;

use hmac::{Hmac, Mac};
use redial::config::{AssistantSettings, FieldSettings, Secret, Settings};
use redial::platforms::Platform;
use redial::storage::{CallSession, SessionStatus};
use redial_bench::mock::Behavior;
use serde_json::{Value, json};
use sha2::Sha256;
use sqlx::{Connection, PgConnection, SqliteConnection};

use crate::support::app::{API_KEY, TestApp, app_tests, read_sse, vapi_body};
use crate::support::db::Backend;

app_tests!(
    a_redial_eight_seconds_after_a_drop_resumes_without_a_webhook,
    a_redial_after_really_waiting_the_default_live_window_resumes,
    a_call_active_two_seconds_ago_is_a_concurrent_call_not_resumed,
    a_call_cut_off_by_a_restart_of_its_only_process_is_resumed_at_once,
    a_turn_in_flight_keeps_a_call_live,
    a_late_call_ended_webhook_closes_the_resumed_call_and_keeps_the_resumption,
    elevenlabs_names_the_caller_in_the_body,
    an_elevenlabs_webhook_with_the_number_makes_the_next_call_recognised,
    callers_that_are_not_numbers_share_memory_in_their_own_namespace,
);

const NUMBER: &str = "+14155550123";
const VAPI_SECRET: &str = "vapi-secret";
const ELEVENLABS_SECRET: &str = "wsec_test";
const FIRST_CALL: &str = "This is the caller's first call.";
const CONFIRMED: &str = r#"Confirmed answers (do not ask again): loan_purpose = "a car"."#;
const NEXT_AMOUNT: &str = r#"Next question to ask: "How much do you need?""#;

/// A loan script for `asst-1` (purpose then amount, both required); memory settings are the
/// shipped defaults.
fn loan_script(settings: &mut Settings) {
    settings.assistants.push(AssistantSettings {
        id: "asst-1".into(),
        fields: vec![
            FieldSettings {
                name: "loan_purpose".into(),
                question: "What is the loan for?".into(),
                required: true,
                description: String::new(),
            },
            FieldSettings {
                name: "amount".into(),
                question: "How much do you need?".into(),
                required: true,
                description: String::new(),
            },
        ],
        ..AssistantSettings::default()
    });
    settings.webhooks.vapi_secret = Secret::new(VAPI_SECRET);
    settings.webhooks.elevenlabs_secret = Secret::new(ELEVENLABS_SECRET);
    settings.analysis.model = "analyst".into();
    settings.analysis.poll_interval_ms = 20;
}

async fn spawn(backend: Backend) -> TestApp {
    TestApp::spawn_with(backend, loan_script).await
}

/// The model confirms the purpose and learns the caller's name, then speaks.
fn answer_purpose_and_name(app: &TestApp) {
    app.upstream.push(
        "gpt-test",
        Behavior::ToolCalls {
            text_before: None,
            calls: vec![
                (
                    "record_answer".into(),
                    json!({"field": "loan_purpose", "value": "a car"}).to_string(),
                ),
                ("remember_caller".into(), json!({"name": "Ada"}).to_string()),
            ],
        },
    );
    app.upstream
        .push("gpt-test", Behavior::text(["Thanks Ada. How much?"]));
}

/// A Vapi turn of `call_id` from `number`, read to the end.
async fn vapi_turn(app: &TestApp, call_id: &str, number: &str) {
    let sse = read_sse(app.chat(&vapi_body(call_id, number, "Hello")).await).await;
    assert!(sse.done, "{call_id}: the stream completes");
}

/// A generic client's streaming turn with these headers and body fields.
async fn generic_turn(app: &TestApp, headers: &[(&str, &str)], extra: Value) {
    let mut body = json!({"model": "gpt-test", "stream": true,
        "messages": [{"role": "system", "content": "You are Ava."},
                     {"role": "user", "content": "Hello"}]});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    let mut request = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(API_KEY)
        .json(&body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(read_sse(response).await.done);
}

/// redial's memory as the upstream saw it on its last chat request (the system messages).
fn last_prompt(app: &TestApp) -> String {
    let requests = app.upstream.requests();
    let last = requests
        .iter()
        .rev()
        .find(|r| r["model"] != "analyst")
        .expect("a chat request");
    last["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "system")
        .filter_map(|m| m["content"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Moves a stored call's last activity `secs` into the past, as if that much time had passed
/// since its last turn.
async fn backdate(app: &TestApp, backend: Backend, call_key: &str, secs: i64) {
    match backend {
        Backend::Postgres => {
            let mut conn = PgConnection::connect(&app.db.url).await.unwrap();
            sqlx::query(
                "update call_session set last_activity_at = last_activity_at - make_interval(secs => $2) \
                 where call_key = $1",
            )
            .bind(call_key)
            .bind(secs as f64)
            .execute(&mut conn)
            .await
            .unwrap();
        }
        Backend::Sqlite => {
            let mut conn = SqliteConnection::connect(&app.db.url).await.unwrap();
            sqlx::query(
                "update call_session set last_activity_at = last_activity_at - $2 \
                 where call_key = $1",
            )
            .bind(call_key)
            .bind(secs * 1000)
            .execute(&mut conn)
            .await
            .unwrap();
        }
    }
}

async fn session(app: &TestApp, platform: Platform, call_key: &str) -> CallSession {
    app.stored_call(platform, call_key).await.0
}

async fn a_redial_eight_seconds_after_a_drop_resumes_without_a_webhook(backend: Backend) {
    let app = spawn(backend).await;
    answer_purpose_and_name(&app);
    vapi_turn(&app, "call-A", NUMBER).await;
    app.settle().await;
    // The line dropped after that turn; no webhook ever comes. The caller redials 8 s later.
    backdate(&app, backend, "call-A", 8).await;

    vapi_turn(&app, "call-B", "(415) 555-0123").await;
    app.settle().await;

    let prompt = last_prompt(&app);
    assert!(prompt.contains(CONFIRMED), "{prompt}");
    assert!(prompt.contains(NEXT_AMOUNT), "{prompt}");
    assert!(prompt.contains(r#"Caller's name: "Ada""#), "{prompt}");
    let a = session(&app, Platform::Vapi, "call-A").await;
    let b = session(&app, Platform::Vapi, "call-B").await;
    assert_eq!((b.attempt, b.resumes_session_id), (2, Some(a.session_id)));
    assert_eq!(
        b.answers.get("loan_purpose").map(|a| a.value.as_str()),
        Some("a car")
    );
    assert_eq!(a.status, SessionStatus::Dropped);
    app.teardown().await;
}

async fn a_redial_after_really_waiting_the_default_live_window_resumes(backend: Backend) {
    let app = spawn(backend).await;
    answer_purpose_and_name(&app);
    vapi_turn(&app, "call-A", NUMBER).await;
    app.settle().await;
    let window = app.settings.memory.live_window_secs;
    assert_eq!(window, 8, "the shipped default");
    tokio::time::sleep(Duration::from_secs(window) + Duration::from_millis(300)).await;

    vapi_turn(&app, "call-B", NUMBER).await;
    app.settle().await;

    let a = session(&app, Platform::Vapi, "call-A").await;
    let b = session(&app, Platform::Vapi, "call-B").await;
    assert_eq!((b.attempt, b.resumes_session_id), (2, Some(a.session_id)));
    assert!(last_prompt(&app).contains(CONFIRMED));
    app.teardown().await;
}

/// The gateway crashed (or restarted) mid-call and the caller redials at once. On SQLite, which
/// one process owns, a call last active before that process started cannot be live: it is
/// resumed without waiting out the live window. On Postgres another instance may be serving it,
/// so the live window still applies.
async fn a_call_cut_off_by_a_restart_of_its_only_process_is_resumed_at_once(backend: Backend) {
    let app = spawn(backend).await;
    answer_purpose_and_name(&app);
    vapi_turn(&app, "call-A", NUMBER).await;
    app.settle().await;
    let app = app.restart().await;

    vapi_turn(&app, "call-B", NUMBER).await;
    app.settle().await;

    let a = session(&app, Platform::Vapi, "call-A").await;
    let b = session(&app, Platform::Vapi, "call-B").await;
    match backend {
        Backend::Sqlite => {
            assert_eq!((b.attempt, b.resumes_session_id), (2, Some(a.session_id)));
            assert!(last_prompt(&app).contains(CONFIRMED));
        }
        Backend::Postgres => {
            assert_eq!(
                (b.attempt, b.resumes_session_id),
                (1, None),
                "within the window"
            );
        }
    }
    app.teardown().await;
}

async fn a_call_active_two_seconds_ago_is_a_concurrent_call_not_resumed(backend: Backend) {
    let app = spawn(backend).await;
    answer_purpose_and_name(&app);
    vapi_turn(&app, "call-A", NUMBER).await;
    app.settle().await;
    // Real time, not a backdated row: on SQLite a call last active before this process started
    // is not live (see the restart test above).
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A second line of the same caller while the first is still talking.
    vapi_turn(&app, "call-B", NUMBER).await;
    app.settle().await;

    let a = session(&app, Platform::Vapi, "call-A").await;
    let b = session(&app, Platform::Vapi, "call-B").await;
    assert_eq!((b.attempt, b.resumes_session_id), (1, None), "not merged");
    assert!(b.answers.is_empty());
    assert_eq!(
        a.status,
        SessionStatus::Active,
        "the live call is not dropped"
    );
    assert!(!last_prompt(&app).contains(CONFIRMED));
    app.teardown().await;
}

async fn a_turn_in_flight_keeps_a_call_live(backend: Backend) {
    let app = spawn(backend).await;
    answer_purpose_and_name(&app);
    vapi_turn(&app, "call-A", NUMBER).await;
    app.settle().await;
    // Its stored activity is old (a long pause), but a slow turn of it is running right now.
    backdate(&app, backend, "call-A", 60).await;
    app.upstream.push(
        "gpt-test",
        Behavior::Text {
            chunks: vec!["Still here.".into()],
            ttft: Duration::from_millis(1500),
            gap: Duration::ZERO,
        },
    );
    let slow = {
        let request = app
            .client
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(API_KEY)
            .json(&vapi_body("call-A", NUMBER, "Are you there?"));
        tokio::spawn(async move { request.send().await.unwrap().text().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    vapi_turn(&app, "call-B", NUMBER).await;
    assert!(slow.await.unwrap().contains("Still here."));
    app.settle().await;

    let b = session(&app, Platform::Vapi, "call-B").await;
    assert_eq!((b.attempt, b.resumes_session_id), (1, None), "not merged");
    let a = session(&app, Platform::Vapi, "call-A").await;
    assert_eq!(a.status, SessionStatus::Active);
    app.teardown().await;
}

async fn a_late_call_ended_webhook_closes_the_resumed_call_and_keeps_the_resumption(
    backend: Backend,
) {
    let app = spawn(backend).await;
    answer_purpose_and_name(&app);
    vapi_turn(&app, "call-A", NUMBER).await;
    app.settle().await;
    backdate(&app, backend, "call-A", 8).await;
    vapi_turn(&app, "call-B", NUMBER).await;
    app.settle().await;

    // Call A's end-of-call report arrives only now.
    app.upstream.push(
        "analyst",
        Behavior::text([
            json!({"summary": "Car loan.", "urgency": 2, "action": "none",
            "sentiment": "neutral"})
            .to_string(),
        ]),
    );
    let mut report: Value =
        serde_json::from_str(include_str!("../fixtures/vapi/end-of-call-report.json")).unwrap();
    report["message"]["call"]["id"] = json!("call-A");
    report["message"]["call"]["assistantId"] = json!("asst-1");
    report["message"]["customer"] = json!({"number": NUMBER});
    report["message"]["call"]["customer"] = json!({"number": NUMBER});
    let response = app
        .client
        .post(app.url("/webhooks/vapi"))
        .header("x-vapi-secret", VAPI_SECRET)
        .json(&report)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut a = session(&app, Platform::Vapi, "call-A").await;
    for _ in 0..250 {
        if a.status == SessionStatus::Ended {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        a = session(&app, Platform::Vapi, "call-A").await;
    }

    assert_eq!(
        a.status,
        SessionStatus::Ended,
        "the late webhook closes call A"
    );
    assert_eq!(a.ended_reason.as_deref(), Some("customer-ended-call"));
    let b = session(&app, Platform::Vapi, "call-B").await;
    assert_eq!((b.attempt, b.resumes_session_id), (2, Some(a.session_id)));
    assert_eq!(b.status, SessionStatus::Active);
    assert_eq!(
        b.answers.get("loan_purpose").map(|a| a.value.as_str()),
        Some("a car")
    );
    // And B, once it drops in turn, is what the next redial resumes (not A again).
    backdate(&app, backend, "call-B", 8).await;
    vapi_turn(&app, "call-C", NUMBER).await;
    app.settle().await;
    let c = session(&app, Platform::Vapi, "call-C").await;
    assert_eq!((c.attempt, c.resumes_session_id), (3, Some(b.session_id)));
    app.teardown().await;
}

/// An ElevenLabs turn: `extra_body` as `elevenlabs_extra_body`, plus `fields` at the top level.
async fn elevenlabs_turn(
    app: &TestApp,
    headers: &[(&str, &str)],
    extra_body: Value,
    fields: Value,
) {
    let mut extra = json!({"elevenlabs_extra_body": extra_body});
    if let (Some(extra), Some(fields)) = (extra.as_object_mut(), fields.as_object()) {
        extra.extend(fields.clone());
    }
    generic_turn(app, headers, extra).await;
}

async fn elevenlabs_names_the_caller_in_the_body(backend: Backend) {
    let app = spawn(backend).await;
    // No header mappings: the dynamic variables the client passed.
    elevenlabs_turn(
        &app,
        &[],
        json!({"dynamic_variables": {"system__caller_id": "+1 415 555 0123",
            "system__conversation_id": "conv_1", "system__agent_id": "asst-1"}}),
        json!({"user_id": "user-9"}),
    )
    .await;
    // Only `user_id`: the end user's id is the caller.
    elevenlabs_turn(
        &app,
        &[("x-call-id", "conv_2")],
        json!({}),
        json!({"user_id": "user-9"}),
    )
    .await;
    app.settle().await;

    let (one, caller) = app.stored_call(Platform::ElevenLabs, "conv_1").await;
    assert_eq!(one.assistant_id, "asst-1");
    assert_eq!(caller.unwrap().phone, NUMBER);
    let (_, caller) = app.stored_call(Platform::ElevenLabs, "conv_2").await;
    assert_eq!(caller.unwrap().phone, "id:user-9");
    app.teardown().await;
}

fn elevenlabs_signature(body: &[u8]) -> String {
    let t = chrono::Utc::now().timestamp().to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(ELEVENLABS_SECRET.as_bytes()).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v0={}", hex::encode(mac.finalize().into_bytes()))
}

async fn an_elevenlabs_webhook_with_the_number_makes_the_next_call_recognised(backend: Backend) {
    let app = spawn(backend).await;
    // A phone call whose agent maps only the conversation id: no caller on the request.
    elevenlabs_turn(
        &app,
        &[("x-call-id", "conv_A"), ("x-assistant-id", "asst-1")],
        json!({}),
        json!({}),
    )
    .await;
    app.settle().await;
    assert!(
        app.stored_call(Platform::ElevenLabs, "conv_A")
            .await
            .1
            .is_none()
    );

    // The post-call webhook carries the number.
    let mut event: Value = serde_json::from_str(include_str!(
        "../fixtures/elevenlabs/post_call_transcription.json"
    ))
    .unwrap();
    event["data"]["conversation_id"] = json!("conv_A");
    event["data"]["agent_id"] = json!("asst-1");
    let body = serde_json::to_vec(&event).unwrap();
    let response = app
        .client
        .post(app.url("/webhooks/elevenlabs"))
        .header("content-type", "application/json")
        .header("elevenlabs-signature", elevenlabs_signature(&body))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut attached = None;
    for _ in 0..250 {
        attached = app.stored_call(Platform::ElevenLabs, "conv_A").await.1;
        if attached.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let caller = attached.expect("the webhook attaches the caller");
    assert_eq!((caller.phone.as_str(), caller.call_count), (NUMBER, 1));
    let a = session(&app, Platform::ElevenLabs, "conv_A").await;
    assert_eq!((a.caller_id, a.prior_calls), (Some(caller.caller_id), 0));

    // The next call from that number is recognised.
    elevenlabs_turn(
        &app,
        &[("x-call-id", "conv_B"), ("x-assistant-id", "asst-1")],
        json!({"system__caller_id": NUMBER}),
        json!({}),
    )
    .await;
    let prompt = last_prompt(&app);
    assert!(!prompt.contains(FIRST_CALL), "{prompt}");
    assert!(prompt.contains("Previous calls: 1"), "{prompt}");
    app.settle().await;
    app.teardown().await;
}

async fn callers_that_are_not_numbers_share_memory_in_their_own_namespace(backend: Backend) {
    let app = spawn(backend).await;
    let as_user_42 = |call: &'static str| {
        [
            ("x-call-id", call),
            ("x-caller-id", "user-42"),
            ("x-assistant-id", "asst-1"),
        ]
    };
    answer_purpose_and_name(&app);
    generic_turn(&app, &as_user_42("app-1"), json!({})).await;
    app.settle().await;
    backdate(&app, backend, "app-1", 8).await;

    // The same user, on another call: the name and the answer carry over.
    generic_turn(&app, &as_user_42("app-2"), json!({})).await;
    app.settle().await;
    let prompt = last_prompt(&app);
    assert!(prompt.contains(r#"Caller's name: "Ada""#), "{prompt}");
    assert!(prompt.contains(CONFIRMED), "{prompt}");
    assert!(prompt.contains("Previous calls: 1"), "{prompt}");
    let two = session(&app, Platform::Generic, "app-2").await;
    assert_eq!(two.attempt, 2);

    // OpenAI's `user` field names the same caller.
    backdate(&app, backend, "app-2", 8).await;
    generic_turn(
        &app,
        &[("x-call-id", "app-3"), ("x-assistant-id", "asst-1")],
        json!({"user": "user-42"}),
    )
    .await;
    app.settle().await;
    let prompt = last_prompt(&app);
    assert!(prompt.contains(r#"Caller's name: "Ada""#), "{prompt}");
    assert!(prompt.contains(CONFIRMED), "{prompt}");
    let (three, caller) = app.stored_call(Platform::Generic, "app-3").await;
    assert_eq!(
        (three.attempt, caller.unwrap().phone),
        (3, "id:user-42".to_owned())
    );

    // A phone-number caller (or any other id) never sees that memory.
    for (call, caller) in [("app-4", NUMBER), ("app-5", "user-43")] {
        generic_turn(
            &app,
            &[
                ("x-call-id", call),
                ("x-caller-id", caller),
                ("x-assistant-id", "asst-1"),
            ],
            json!({}),
        )
        .await;
        let prompt = last_prompt(&app);
        assert!(prompt.contains(FIRST_CALL), "{caller}: {prompt}");
        assert!(
            !prompt.contains("Ada") && !prompt.contains(CONFIRMED),
            "{prompt}"
        );
    }
    app.settle().await;
    app.teardown().await;
}
