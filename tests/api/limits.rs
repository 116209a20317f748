//! Poison input and limits: text the stores cannot hold is stored sanitised, and requests over
//! the `[limits]` are refused with a 400 naming the limit, storing nothing (both stores).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use redial::config::{AssistantSettings, FieldSettings, Settings};
use redial::platforms::Platform;
use redial::storage::{
    AnalysisSource, Answer, Answers, AuditAction, AuditActor, CallStart, CallerAnalysisUpdate,
    CallerPatch, CloseSession, NewAnalysis, NewAudit, NewJob, NewSession, NewTurn, NewWebhookEvent,
    SessionStatus, Store, TurnRole,
};
use redial_bench::mock::Behavior;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::app::{API_KEY, TestApp, app_tests, read_sse, vapi_body};
use crate::support::db::{Backend, on_both_backends};
use crate::support::inspect::Inspect;

on_both_backends!(every_write_stores_nul_as_the_replacement_character);

app_tests!(
    tool_values_with_nul_are_stored_sanitised,
    fifty_thousand_messages_are_refused_and_nothing_is_stored_or_sent,
    a_request_with_many_old_messages_writes_only_the_new_ones,
    overlong_ids_are_refused_and_nothing_is_stored_or_sent,
    overlong_tool_values_get_a_tool_error_and_are_not_stored,
);

/// One megabyte.
const MB: usize = 1 << 20;

/// A script for `asst-1` with one required field.
fn script(settings: &mut Settings) {
    settings.assistants.push(AssistantSettings {
        id: "asst-1".into(),
        fields: vec![FieldSettings {
            name: "loan_purpose".into(),
            question: "What is the loan for?".into(),
            required: true,
            description: String::new(),
        }],
        ..AssistantSettings::default()
    });
}

/// Runs one Vapi turn of `call_id` in which the model calls `tool` with `arguments`, then
/// speaks; returns the tool result the model was given.
async fn tool_turn(app: &TestApp, call_id: &str, tool: &str, arguments: &Value) -> String {
    let before = app.upstream.requests().len();
    app.upstream
        .push("gpt-test", Behavior::tool_call(tool, arguments.to_string()));
    app.upstream.push("gpt-test", Behavior::text(["Noted."]));
    let said = format!("turn {before}");
    let sse = read_sse(app.chat(&vapi_body(call_id, "+14155550123", &said)).await).await;
    assert_eq!(sse.text(), "Noted.");
    app.settle().await;
    let requests = app.upstream.requests();
    assert_eq!(requests.len(), before + 2, "a tool round, then speech");
    let follow_up = requests.last().unwrap()["messages"].as_array().unwrap();
    let result = follow_up.iter().find(|m| m["role"] == "tool").unwrap();
    result["content"].as_str().unwrap().to_owned()
}

/// The error of a refused request, after checking its status and shape.
async fn refused(response: reqwest::Response) -> Value {
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    body["error"].clone()
}

async fn tool_values_with_nul_are_stored_sanitised(backend: Backend) {
    let app = TestApp::spawn_with(backend, script).await;
    let answer = json!({"field": "loan_purpose", "value": "a\u{0}car"});
    let result = tool_turn(&app, "call-nul", "record_answer", &answer).await;
    assert!(result.contains(r#""ok":true"#), "{result}");
    let remember = json!({"name": "Ann\u{0}", "language": "\u{0}en", "note": "likes\u{0}tea"});
    let result = tool_turn(&app, "call-nul", "remember_caller", &remember).await;
    assert!(result.contains(r#""ok":true"#), "{result}");

    let (session, caller) = app.stored_call(Platform::Vapi, "call-nul").await;
    assert_eq!(session.answers["loan_purpose"].value, "a\u{fffd}car");
    let caller = caller.unwrap();
    assert_eq!(caller.name.as_deref(), Some("Ann\u{fffd}"));
    assert_eq!(caller.language.as_deref(), Some("\u{fffd}en"));
    assert_eq!(caller.notes, ["likes\u{fffd}tea"]);
    // The same values again change nothing (compared as stored).
    tool_turn(&app, "call-nul", "remember_caller", &remember).await;
    let (_, caller) = app.stored_call(Platform::Vapi, "call-nul").await;
    assert_eq!(caller.unwrap().notes.len(), 1);
    app.teardown().await;
}

async fn fifty_thousand_messages_are_refused_and_nothing_is_stored_or_sent(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut body = vapi_body("call-many", "+14155550123", "Hi");
    body["messages"] = Value::Array(vec![json!({"role": "user", "content": ""}); 50_000]);

    let error = refused(app.chat(&body).await).await;

    assert_eq!(error["param"], "messages");
    assert_eq!(error["code"], "array_above_max_length");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("limits.max_messages") && message.contains("2000"),
        "{message}"
    );
    app.settle().await;
    assert!(app.upstream.requests().is_empty(), "nothing sent upstream");
    let stored = app.db.store.load_call(Platform::Vapi, "call-many").await;
    assert!(stored.unwrap().is_none(), "nothing stored");
    let caller = app.db.store.get_caller_by_phone("+14155550123").await;
    assert!(caller.unwrap().is_none(), "no caller stored");
    app.teardown().await;
}

async fn a_request_with_many_old_messages_writes_only_the_new_ones(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // A long call at the limit: 1,999 earlier messages, then the caller's new one.
    let mut messages = vec![json!({"role": "system", "content": "You are Ava."})];
    for i in 1..1_999 {
        let role = if i % 2 == 1 { "user" } else { "assistant" };
        messages.push(json!({"role": role, "content": format!("old {i}")}));
    }
    messages.push(json!({"role": "user", "content": "the new one"}));
    assert_eq!(messages.len(), 2_000);
    let mut body = vapi_body("call-long", "+14155550123", "unused");
    body["messages"] = Value::Array(messages);

    let sse = read_sse(app.chat(&body).await).await;

    assert!(sse.done);
    app.settle().await;
    let (session, _) = app.stored_call(Platform::Vapi, "call-long").await;
    let turns = app.db.store.list_turns(session.session_id).await.unwrap();
    let spoken: Vec<(TurnRole, &str)> =
        turns.iter().map(|t| (t.role, t.content.as_str())).collect();
    assert_eq!(
        spoken.len(),
        2,
        "only the new message and the reply are written"
    );
    assert_eq!(spoken[0], (TurnRole::User, "the new one"));
    assert_eq!(spoken[1].0, TurnRole::Assistant);
    app.teardown().await;
}

async fn overlong_ids_are_refused_and_nothing_is_stored_or_sent(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let long_call = "c".repeat(7_000);
    let megabyte = "9".repeat(MB);

    let body = vapi_body(&long_call, "+14155550123", "Hi");
    let error = refused(app.chat(&body).await).await;
    assert_eq!(error["param"], "call.id");
    assert_eq!(error["code"], "string_above_max_length");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("limits.max_id_bytes") && message.contains("256"),
        "{message}"
    );

    let mut body = vapi_body("call-mb", &megabyte, "Hi");
    body["call"]["customer"]["number"] = json!("+14155550123");
    let error = refused(app.chat(&body).await).await;
    assert_eq!(error["param"], "customer.number");

    let mut body = vapi_body("call-asst", "+14155550123", "Hi");
    body["call"]["assistantId"] = json!(megabyte);
    assert_eq!(
        refused(app.chat(&body).await).await["param"],
        "call.assistantId"
    );

    // Headers (generic and ElevenLabs clients). A megabyte header is refused by the HTTP layer
    // itself (431) before redial sees it; 64 kB ones reach the check.
    let long_header = "7".repeat(64 << 10);
    let generic = json!({"model": "gpt-test", "messages": [{"role": "user", "content": "Hi"}]});
    for (header, field) in [
        ("x-call-id", "X-Call-Id"),
        ("x-caller-id", "X-Caller-Id"),
        ("x-assistant-id", "X-Assistant-Id"),
    ] {
        let response = app
            .client
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(API_KEY)
            .header(
                "x-call-id",
                if header == "x-call-id" {
                    long_header.as_str()
                } else {
                    "call-h"
                },
            )
            .header(header, &long_header)
            .json(&generic)
            .send()
            .await
            .unwrap();
        assert_eq!(refused(response).await["param"], field);
    }
    let response = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(API_KEY)
        .header("x-caller-id", &megabyte)
        .json(&generic)
        .send()
        .await;
    if let Ok(response) = response {
        assert_eq!(
            response.status(),
            431,
            "hyper refuses the header before redial sees it"
        );
    }

    // Retell: the call id of the WebSocket URL.
    let response = app
        .client
        .get(app.url(&format!(
            "/retell/llm-websocket/{API_KEY}/{}",
            "r".repeat(7_000)
        )))
        .send()
        .await
        .unwrap();
    let error = refused(response).await;
    assert_eq!(error["param"], "call_id");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("limits.max_id_bytes"),
        "{error}"
    );

    app.settle().await;
    assert!(app.upstream.requests().is_empty(), "nothing sent upstream");
    for (platform, key) in [
        (Platform::Vapi, long_call.as_str()),
        (Platform::Vapi, "call-mb"),
        (Platform::Vapi, "call-asst"),
        (Platform::Generic, "call-h"),
    ] {
        let stored = app.db.store.load_call(platform, key).await.unwrap();
        assert!(
            stored.is_none(),
            "{platform} {} is not stored",
            &key[..10.min(key.len())]
        );
    }
    let caller = app.db.store.get_caller_by_phone("+14155550123").await;
    assert!(caller.unwrap().is_none(), "no caller stored");
    app.teardown().await;
}

async fn overlong_tool_values_get_a_tool_error_and_are_not_stored(backend: Backend) {
    // The mock streams arguments 16 characters a frame: a megabyte is 65,536 frames, which an
    // unoptimised build takes longer than the test default of 2 s to read.
    let app = TestApp::spawn_with(backend, |s| {
        script(s);
        s.upstream.first_token_timeout_ms = 60_000;
    })
    .await;
    let big = "n".repeat(MB);

    let result = tool_turn(&app, "call-big", "remember_caller", &json!({"name": big})).await;
    assert!(
        result.contains(r#""ok":false"#) && result.contains("limits.max_value_bytes"),
        "{}",
        &result[..result.len().min(300)]
    );
    let answer = json!({"field": "loan_purpose", "value": "x".repeat(4_097)});
    let result = tool_turn(&app, "call-big", "record_answer", &answer).await;
    assert!(
        result.contains(r#""ok":false"#) && result.contains("4096"),
        "{result}"
    );

    let (session, caller) = app.stored_call(Platform::Vapi, "call-big").await;
    assert!(session.answers.is_empty(), "the answer is not stored");
    let caller = caller.unwrap();
    assert_eq!(caller.name, None, "the name is not stored");
    // A value at the limit is stored.
    let answer = json!({"field": "loan_purpose", "value": "x".repeat(4_096)});
    let result = tool_turn(&app, "call-big", "record_answer", &answer).await;
    assert!(result.contains(r#""ok":true"#), "{result}");
    app.teardown().await;
}

/// Every string a write takes, with a NUL in it, is stored with U+FFFD instead, and a lookup by a
/// key with a NUL finds the record stored under it.
async fn every_write_stores_nul_as_the_replacement_character(store: Arc<dyn Store>) {
    let now = Utc::now();
    let nul = |s: &str| format!("{s}\u{0}");
    let mut answers = Answers::new();
    answers.insert(
        nul("f"),
        Answer {
            value: nul("v"),
            confirmed_at: now,
        },
    );
    let started = store
        .start_call(&CallStart {
            session: NewSession {
                session_id: Uuid::now_v7(),
                platform: Platform::Generic,
                call_key: nul("call"),
                caller_id: None,
                assistant_id: nul("asst"),
                attempt: 1,
                resumes_session_id: None,
                answers,
                status: SessionStatus::Active,
                model: Some(nul("m")),
                started_at: now,
            },
            phone: Some(nul("+1")),
            close_previous: None,
            now,
        })
        .await
        .unwrap();
    let session_id = started.session.session_id;
    let caller_id = started.caller.unwrap().caller_id;
    let patch = CallerPatch {
        name: Some(nul("name")),
        language: Some(nul("lang")),
        note: Some(nul("note")),
    };
    store.update_caller(caller_id, &patch, now).await.unwrap();
    store
        .record_answer(session_id, &nul("g"), &nul("w"), &[], now)
        .await
        .unwrap();
    let turn = NewTurn {
        idempotency_key: nul("key"),
        role: TurnRole::ToolCall,
        content: nul("content"),
        tool_name: Some(nul("tool")),
        tool_call_id: Some(nul("id")),
        partial: false,
        created_at: now,
    };
    let audit = NewAudit {
        entry_key: None,
        caller_id: Some(caller_id),
        session_id: Some(session_id),
        actor: AuditActor::Other(nul("actor")),
        action: AuditAction::Other(nul("action")),
        reason: nul("reason"),
        details: json!({nul("k"): [nul("v")]}),
        created_at: now,
    };
    let inserted = store
        .save_turn(session_id, &[turn], Some(&nul("m3")), &[audit])
        .await
        .unwrap();
    assert_eq!(inserted, 1);
    let close = CloseSession {
        status: SessionStatus::Ended,
        ended_reason: Some(nul("reason")),
        ended_at: now,
        details: json!({nul("transcript"): nul("text")}),
    };
    store.close_session(session_id, &close).await.unwrap();
    let event = NewWebhookEvent {
        event_id: Uuid::now_v7(),
        platform: Platform::Vapi,
        event_type: nul("type"),
        call_key: Some(nul("call")),
        dedupe_key: nul("dedupe"),
        payload: nul("{}"),
        received_at: now,
    };
    let job = NewJob {
        job_id: Uuid::now_v7(),
        kind: nul("kind"),
        dedupe_key: nul("job"),
        payload: json!({nul("p"): nul("q")}),
        run_at: now,
        max_attempts: 1,
    };
    assert!(
        store
            .record_webhook(&event, Some(&job))
            .await
            .unwrap()
            .is_new()
    );
    let claimed = store
        .claim_job(&nul("worker"), now, Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    store
        .fail_job(&claimed.lease().unwrap(), &nul("error"), None, now)
        .await
        .unwrap();
    let analysis = NewAnalysis {
        analysis_id: Uuid::now_v7(),
        session_id,
        source: AnalysisSource::Other(nul("source")),
        summary: nul("summary"),
        urgency: Some(1),
        action: Some(nul("action")),
        sentiment: Some(nul("sentiment")),
        raw: json!({nul("raw"): nul("raw")}),
        model: Some(nul("model")),
        created_at: now,
    };
    let update = CallerAnalysisUpdate {
        caller_id,
        summary: nul("last summary"),
        sentiment: Some(nul("calm")),
        action: Some(nul("call back")),
        now,
    };
    store.save_analysis(&analysis, Some(&update)).await.unwrap();

    // Found by the keys as given, NUL and all.
    let (session, caller) = store
        .load_call(Platform::Generic, &nul("call"))
        .await
        .unwrap()
        .expect("the call is found by its key as given");
    let caller = caller.unwrap();
    let by_phone = store.get_caller_by_phone(&nul("+1")).await.unwrap();
    assert_eq!(by_phone.map(|c| c.caller_id), Some(caller_id));
    let job = store.get_job(claimed.job_id).await.unwrap().unwrap();
    let stored = format!(
        "{session:?}{caller:?}{:?}{:?}{:?}{job:?}",
        store.list_turns(session_id).await.unwrap(),
        store.list_audit(caller_id, 10).await.unwrap(),
        store.list_analyses(session_id).await.unwrap(),
    );
    assert!(!stored.contains("\\0"), "a NUL was stored: {stored}");
    assert_eq!(session.call_key, "call\u{fffd}");
    assert_eq!(session.model.as_deref(), Some("m3\u{fffd}"));
    assert_eq!(session.answers["g\u{fffd}"].value, "w\u{fffd}");
    assert_eq!(session.details["transcript\u{fffd}"], "text\u{fffd}");
    assert_eq!(caller.notes, ["note\u{fffd}"]);
    assert_eq!(caller.last_action.as_deref(), Some("call back\u{fffd}"));
    assert_eq!(job.last_error.as_deref(), Some("error\u{fffd}"));
    assert_eq!(job.payload, json!({"p\u{fffd}": "q\u{fffd}"}));
    // Every NUL given (36 of them, the lookups aside) is now a U+FFFD.
    assert!(stored.matches('\u{fffd}').count() >= 30, "{stored}");
}
