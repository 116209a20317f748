//! No dead air after tool calls, scripts, and resumption of dropped calls (both stores).

use redial::config::{AssistantSettings, FieldSettings, Settings};
use redial::platforms::Platform;
use redial::storage::SessionStatus;
use redial_bench::mock::Behavior;
use serde_json::{Value, json};

use crate::support::app::{TestApp, app_tests, read_sse, vapi_body};
use crate::support::db::Backend;

app_tests!(
    an_internal_tool_call_is_followed_by_speech_in_the_same_stream,
    a_platform_tool_call_passes_through_after_a_spoken_filler,
    the_tool_loop_is_bounded_and_still_ends_in_speech,
    an_unknown_field_gets_an_explanatory_tool_result,
    a_resent_request_does_not_reapply_tool_side_effects,
    a_dropped_call_resumes_at_the_first_unanswered_question,
);

/// A loan script for `asst-1`: purpose then amount, both required.
fn loan_script(settings: &mut Settings) {
    settings.assistants.push(AssistantSettings {
        id: "asst-1".into(),
        filler: "One moment, please.".into(),
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
                description: "in dollars".into(),
            },
        ],
        ..AssistantSettings::default()
    });
}

fn answer(field: &str, value: &str) -> String {
    json!({"field": field, "value": value}).to_string()
}

async fn an_internal_tool_call_is_followed_by_speech_in_the_same_stream(backend: Backend) {
    let app = TestApp::spawn_with(backend, loan_script).await;
    app.upstream.push(
        "gpt-test",
        Behavior::tool_call("record_answer", answer("loan_purpose", "a car")),
    );
    app.upstream.push(
        "gpt-test",
        Behavior::text(["Got it. ", "How much do you need?"]),
    );

    let sse = read_sse(
        app.chat(&vapi_body("call-t1", "+14155550123", "It's for a car."))
            .await,
    )
    .await;

    assert_eq!(sse.text(), "Got it. How much do you need?");
    assert_eq!(sse.finish_reason().as_deref(), Some("stop"));
    assert!(sse.done);
    assert!(
        sse.chunks
            .iter()
            .all(|c| c["choices"][0]["delta"].get("tool_calls").is_none()),
        "no tool call reaches the platform"
    );
    let requests = app.upstream.requests();
    assert_eq!(requests.len(), 2);
    let offered: Vec<_> = requests[0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].clone())
        .collect();
    assert!(
        offered.contains(&json!("record_answer")) && offered.contains(&json!("remember_caller")),
        "{offered:?}"
    );
    let follow_up = requests[1]["messages"].as_array().unwrap();
    let tool_message = follow_up.iter().find(|m| m["role"] == "tool").unwrap();
    assert!(
        tool_message["content"]
            .as_str()
            .unwrap()
            .contains("How much do you need?")
    );
    assert!(
        follow_up.iter().any(|m| m["role"] == "assistant"
            && m["tool_calls"][0]["function"]["name"] == "record_answer")
    );
    // The answer was committed before the model heard about it.
    let (session, _) = app.stored_call(Platform::Vapi, "call-t1").await;
    assert_eq!(session.answers["loan_purpose"].value, "a car");
    app.teardown().await;
}

async fn a_platform_tool_call_passes_through_after_a_spoken_filler(backend: Backend) {
    let app = TestApp::spawn_with(backend, loan_script).await;
    let args = r#"{"date":"2026-09-01","time":"10:00"}"#;
    app.upstream
        .push("gpt-test", Behavior::tool_call("bookAppointment", args));
    let mut body = vapi_body("call-t2", "+14155550123", "Book me Thursday at ten.");
    body["tools"] = json!([{"type": "function", "function": {"name": "bookAppointment", "parameters": {"type": "object"}}}]);

    let sse = read_sse(app.chat(&body).await).await;

    assert_eq!(sse.text(), "One moment, please.", "the filler comes first");
    let first_tool = sse
        .chunks
        .iter()
        .position(|c| c["choices"][0]["delta"].get("tool_calls").is_some())
        .unwrap();
    let first_text = sse
        .chunks
        .iter()
        .position(|c| c["choices"][0]["delta"]["content"].is_string())
        .unwrap();
    assert!(first_text < first_tool);
    let fragments: Vec<&Value> = sse
        .chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    assert_eq!(fragments[0]["function"]["name"], "bookAppointment");
    assert_eq!(fragments[0]["index"], 0);
    assert!(fragments[0]["id"].is_string());
    let arguments: String = fragments
        .iter()
        .filter_map(|f| f["function"]["arguments"].as_str())
        .collect();
    assert_eq!(arguments, args, "arguments arrive intact");
    assert_eq!(sse.finish_reason().as_deref(), Some("tool_calls"));
    assert!(sse.done);
    app.teardown().await;
}

async fn the_tool_loop_is_bounded_and_still_ends_in_speech(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        loan_script(s);
        s.upstream.max_tool_rounds = 2;
    })
    .await;
    for _ in 0..3 {
        app.upstream.push(
            "gpt-test",
            Behavior::tool_call("record_answer", answer("loan_purpose", "a car")),
        );
    }

    let sse = read_sse(app.chat(&vapi_body("call-t3", "+14155550123", "car")).await).await;

    assert_eq!(app.upstream.requests().len(), 2, "two rounds, no more");
    assert_eq!(
        sse.text(),
        "How much do you need?",
        "the caller hears the next question"
    );
    assert!(sse.done);
    app.teardown().await;
}

async fn an_unknown_field_gets_an_explanatory_tool_result(backend: Backend) {
    let app = TestApp::spawn_with(backend, loan_script).await;
    app.upstream.push(
        "gpt-test",
        Behavior::tool_call("record_answer", answer("shoe_size", "44")),
    );
    app.upstream
        .push("gpt-test", Behavior::text(["Sorry, what is the loan for?"]));

    let sse = read_sse(
        app.chat(&vapi_body("call-t4", "+14155550123", "size 44"))
            .await,
    )
    .await;

    assert_eq!(sse.text(), "Sorry, what is the loan for?");
    let requests = app.upstream.requests();
    let tool = requests[1]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "tool")
        .unwrap()
        .clone();
    let result: Value = serde_json::from_str(tool["content"].as_str().unwrap()).unwrap();
    assert_eq!(result["ok"], false);
    assert!(
        result["error"]
            .as_str()
            .unwrap()
            .contains("unknown field \"shoe_size\""),
        "{result}"
    );
    assert!(result["error"].as_str().unwrap().contains("loan_purpose"));
    app.teardown().await;
}

async fn a_resent_request_does_not_reapply_tool_side_effects(backend: Backend) {
    let app = TestApp::spawn_with(backend, loan_script).await;
    let body = vapi_body("call-t5", "+14155550123", "It's for a car.");
    for _ in 0..2 {
        app.upstream.push(
            "gpt-test",
            Behavior::tool_call("record_answer", answer("loan_purpose", "a car")),
        );
        app.upstream
            .push("gpt-test", Behavior::text(["How much do you need?"]));
        assert!(read_sse(app.chat(&body).await).await.done);
        app.settle().await;
    }
    let (session, _) = app.stored_call(Platform::Vapi, "call-t5").await;
    assert_eq!(session.answers.len(), 1);
    let turns = app.db.store.list_turns(session.session_id).await.unwrap();
    let roles: Vec<_> = turns.iter().map(|t| t.role.as_str()).collect();
    assert_eq!(
        roles,
        ["user", "tool_call", "tool_result", "assistant"],
        "no duplicated turn"
    );
    app.teardown().await;
}

async fn a_dropped_call_resumes_at_the_first_unanswered_question(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        loan_script(s);
        s.upstream.escalation_model = "gpt-strong".into();
        s.memory.live_window_secs = 0;
    })
    .await;
    // Call A: the purpose and the caller's name are recorded, then the line drops.
    app.upstream.push(
        "gpt-test",
        Behavior::ToolCalls {
            text_before: None,
            calls: vec![
                ("record_answer".into(), answer("loan_purpose", "a car")),
                ("remember_caller".into(), json!({"name": "Ada"}).to_string()),
            ],
        },
    );
    app.upstream.push(
        "gpt-test",
        Behavior::text(["Thanks Ada. How much do you need?"]),
    );
    assert!(
        read_sse(
            app.chat(&vapi_body(
                "call-A",
                "+1 415 555 0123",
                "I'm Ada, it's for a car"
            ))
            .await
        )
        .await
        .done
    );
    app.settle().await;

    // Call B, same number written differently: a resumption on the escalation model.
    app.upstream.push(
        "gpt-strong",
        Behavior::tool_call("record_answer", answer("amount", "5000")),
    );
    app.upstream.push(
        "gpt-strong",
        Behavior::text(["Perfect, that's everything."]),
    );
    assert!(
        read_sse(
            app.chat(&vapi_body(
                "call-B",
                "(415) 555-0123",
                "Sorry, we got cut off"
            ))
            .await
        )
        .await
        .done
    );
    app.settle().await;

    let requests = app.upstream.requests();
    let resumed = &requests[2];
    assert_eq!(resumed["model"], "gpt-strong");
    let summary = resumed["messages"][1]["content"].as_str().unwrap();
    assert!(summary.contains("resumes an earlier call"), "{summary}");
    assert!(
        summary.contains(r#"Confirmed answers (do not ask again): loan_purpose = "a car"."#),
        "{summary}"
    );
    assert!(
        summary.contains(r#"Next question to ask: "How much do you need?""#),
        "{summary}"
    );
    assert!(summary.contains(r#"Caller's name: "Ada""#), "{summary}");
    let (a, _) = app.stored_call(Platform::Vapi, "call-A").await;
    let (b, _) = app.stored_call(Platform::Vapi, "call-B").await;
    assert_eq!(a.status, SessionStatus::Dropped);
    assert_eq!((b.attempt, b.resumes_session_id), (2, Some(a.session_id)));
    assert_eq!(
        b.status,
        SessionStatus::Completed,
        "every required field is confirmed"
    );

    // Call C: nothing left to resume; a fresh first attempt on the normal model.
    assert!(
        read_sse(
            app.chat(&vapi_body("call-C", "+14155550123", "Hi again"))
                .await
        )
        .await
        .done
    );
    app.settle().await;
    let (c, _) = app.stored_call(Platform::Vapi, "call-C").await;
    assert_eq!((c.attempt, c.resumes_session_id), (1, None));
    assert_eq!(app.upstream.requests().last().unwrap()["model"], "gpt-test");
    app.teardown().await;
}
