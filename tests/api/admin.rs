//! The admin API: export, erasure down to a full database dump, the access log, key classes,
//! and the served OpenAPI document (both stores).

use std::time::Duration;

use redial::config::{AdminKey, AssistantSettings, FieldSettings, PriceSettings, Secret, Settings};
use redial::platforms::Platform;
use redial::storage::{AnalysisSource, AuditAction, AuditActor};
use redial_bench::mock::Behavior;
use serde_json::{Value, json};

use crate::support::app::{API_KEY, TestApp, app_tests, read_sse, vapi_body};
use crate::support::db::Backend;
use crate::support::inspect::Inspect;
use crate::support::process;

app_tests!(
    an_export_holds_everything_and_an_erasure_leaves_nothing_in_a_dump,
    admin_routes_and_metrics_refuse_missing_and_platform_keys,
    calls_are_listed_newest_first_with_filters_and_cursors,
    an_erasure_waits_for_a_call_in_progress_unless_forced,
    an_erasure_without_the_erasure_key_is_refused,
    bad_admin_input_gets_a_4xx_in_the_error_shape,
    a_router_added_without_a_table_entry_is_not_public,
    the_cli_shows_exports_and_erases_and_is_audited,
    a_call_shows_the_upstream_usage_per_model_and_its_cost,
);

/// The admin key the test apps accept, named `ops`.
pub const ADMIN_KEY: &str = "test-admin-key";
const VAPI_SECRET: &str = "vapi-secret";
const NUMBER: &str = "+12125550147";
const NAME: &str = "Zebediah Quill";
const ANSWER: &str = "a purple submarine";
const SAID: &str = "PURPLE-OCTOPUS is what I want";
const WEBHOOK_TRANSCRIPT: &str = "MAGENTA-WALRUS transcript line";
const SUMMARY: &str = "Wants a SAFFRON-LLAMA loan.";

/// Admin key, erasure key, Vapi webhooks, a fast analysis worker and a one-question script.
pub fn operator_settings(s: &mut Settings) {
    s.server.admin_keys = vec![AdminKey::new("ops", ADMIN_KEY)];
    s.server.erasure_key = Secret::new("erasure-test-key");
    s.webhooks.vapi_secret = Secret::new(VAPI_SECRET);
    s.analysis.model = "analyst".into();
    s.analysis.poll_interval_ms = 20;
    s.assistants.push(AssistantSettings {
        id: "asst-1".into(),
        fields: vec![FieldSettings {
            name: "purpose".into(),
            question: "What is the loan for?".into(),
            required: true,
            description: String::new(),
        }],
        ..AssistantSettings::default()
    });
}

/// `GET path` with the admin key: status and JSON body.
pub async fn admin_get(app: &TestApp, path: &str) -> (u16, Value) {
    let response = app
        .client
        .get(app.url(path))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn admin_delete(app: &TestApp, path: &str) -> (u16, Value) {
    let response = app
        .client
        .delete(app.url(path))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn end_of_call_report(call_id: &str, number: &str) -> Vec<u8> {
    let mut report: Value =
        serde_json::from_str(include_str!("../fixtures/vapi/end-of-call-report.json")).unwrap();
    let message = &mut report["message"];
    message["call"]["id"] = json!(call_id);
    message["call"]["assistantId"] = json!("asst-1");
    message["customer"] = json!({"number": number});
    message["call"]["customer"] = json!({"number": number, "name": NAME});
    message["artifact"]["transcript"] = json!(format!("User: {WEBHOOK_TRANSCRIPT}, {NAME}"));
    serde_json::to_vec(&report).unwrap()
}

/// A call's first turn: the caller says `SAID`, the model records the answer and the name.
async fn first_call(app: &TestApp, call_id: &str) {
    let tool = |name: &str, args: Value| Behavior::tool_call(name, args.to_string());
    let up = &app.upstream;
    up.push(
        "gpt-test",
        tool(
            "record_answer",
            json!({"field": "purpose", "value": ANSWER}),
        ),
    );
    up.push("gpt-test", tool("remember_caller", json!({"name": NAME})));
    up.push("gpt-test", Behavior::text(["Noted, ", "thank you."]));
    let sse = read_sse(app.chat(&vapi_body(call_id, "(212) 555-0147", SAID)).await).await;
    assert!(sse.done);
    app.settle().await;
}

async fn webhook(app: &TestApp, call_id: &str) {
    let analysis =
        json!({"summary": SUMMARY, "urgency": 2, "action": "none", "sentiment": "neutral"});
    app.upstream
        .push("analyst", Behavior::text([analysis.to_string()]));
    let response = app
        .client
        .post(app.url("/webhooks/vapi"))
        .header("x-vapi-secret", VAPI_SECRET)
        .header("content-type", "application/json")
        .body(end_of_call_report(call_id, NUMBER))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    for _ in 0..500 {
        let (session, _) = app.stored_call(Platform::Vapi, call_id).await;
        let analyses = app
            .db
            .store
            .list_analyses(session.session_id)
            .await
            .unwrap();
        if analyses.iter().any(|a| a.source == AnalysisSource::Redial) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the call was not analysed");
}

/// A full dump of the app's database with the real tools (`pg_dump`, `sqlite3 .dump`), plus, for
/// SQLite, the raw bytes of the database file and its WAL.
pub async fn dump(app: &TestApp) -> String {
    let url = &app.db.url;
    let output = if let Some(path) = url.strip_prefix("sqlite://") {
        let mut text = run("sqlite3", &[path, ".dump"]).await;
        for file in [path.to_owned(), format!("{path}-wal")] {
            if let Ok(bytes) = std::fs::read(&file) {
                text.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
        text
    } else {
        run("pg_dump", &["--dbname", url]).await
    };
    assert!(output.contains("call_session"), "the dump holds the schema");
    output
}

async fn run(program: &str, args: &[&str]) -> String {
    let output = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("{program} must be installed for this test: {e}"));
    assert!(
        output.status.success(),
        "{program}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Groups of consecutive actors (any `engine:*` is `engine`), and the admin actions in order.
fn trail(entries: &[Value]) -> (Vec<String>, Vec<String>) {
    let mut groups: Vec<String> = Vec::new();
    let mut admin = Vec::new();
    for entry in entries {
        let actor = entry["actor"].as_str().unwrap();
        let group = if actor.starts_with("engine:") {
            "engine"
        } else {
            actor
        };
        if groups.last().map(String::as_str) != Some(group) {
            groups.push(group.to_owned());
        }
        if actor == "admin:ops" {
            admin.push(entry["action"].as_str().unwrap().to_owned());
        }
    }
    (groups, admin)
}

async fn an_export_holds_everything_and_an_erasure_leaves_nothing_in_a_dump(backend: Backend) {
    let app = TestApp::spawn_with(backend, operator_settings).await;
    first_call(&app, "call-a1").await;
    webhook(&app, "call-a1").await;
    let sse = read_sse(
        app.chat(&vapi_body("call-a2", "212.555.0147", "Second call"))
            .await,
    )
    .await;
    assert!(sse.done);
    app.settle().await;

    // Export: every call, answer, turn and analysis, whatever format the number is asked in.
    let (status, export) =
        admin_get(&app, "/admin/v1/callers/%2B1%20212%20555%200147/export").await;
    assert_eq!(status, 200, "{export}");
    assert_eq!(
        (export["format"].as_str(), export["version"].as_u64()),
        (Some("redial.caller-export"), Some(1))
    );
    assert_eq!(export["caller"]["name"], NAME);
    let calls = export["calls"].as_array().unwrap();
    let keys: Vec<_> = calls
        .iter()
        .map(|c| c["session"]["call_key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["call-a1", "call-a2"], "oldest first");
    assert_eq!(calls[0]["answers"]["purpose"]["value"], ANSWER);
    let said: Vec<_> = calls[0]["turns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["content"].as_str().unwrap())
        .collect();
    assert!(said.contains(&SAID), "{said:?}");
    assert!(
        calls[1]["turns"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["content"] == "Second call")
    );
    let sources: Vec<_> = calls[0]["analyses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["source"].as_str().unwrap())
        .collect();
    assert!(
        sources.contains(&"redial") && sources.contains(&"vapi"),
        "{sources:?}"
    );
    assert_eq!(
        calls[0]["webhook_events"][0]["event_type"],
        "end-of-call-report"
    );
    assert_eq!(calls[0]["usage"]["cost"], 0.1234);

    // Erase (forced: the second call is still within the live window), then a full dump holds
    // none of it, in any stored format.
    let (status, erased) = admin_delete(&app, "/admin/v1/callers/2125550147?force=true").await;
    assert_eq!(status, 200, "{erased}");
    assert_eq!(erased["status"], "erased");
    assert_eq!(erased["deleted"]["sessions"], 2);
    let dump = dump(&app).await;
    for secret in [
        NUMBER,
        "12125550147",
        "2125550147",
        "(212) 555-0147",
        "212-555-0147",
        "212.555.0147",
        NAME,
        ANSWER,
        "PURPLE-OCTOPUS",
        "MAGENTA-WALRUS",
        "SAFFRON-LLAMA",
    ] {
        assert!(!dump.contains(secret), "{secret:?} is still in the dump");
    }
    let (status, again) = admin_delete(&app, "/admin/v1/callers/+12125550147").await;
    assert_eq!(
        (status, again["status"].as_str()),
        (200, Some("already_erased")),
        "idempotent"
    );
    assert_eq!(again["deleted"]["turns"], 0);
    let (status, _) = admin_get(&app, "/admin/v1/callers/+12125550147").await;
    assert_eq!(status, 404);

    // The access log outlives the data: reads and writes, webhook, analysis, export, erase.
    let (status, log) = admin_get(&app, "/admin/v1/callers/+12125550147/access-log").await;
    assert_eq!(status, 200, "{log}");
    assert_eq!(log["erased"], true);
    let entries = log["entries"].as_array().unwrap();
    let (groups, admin) = trail(entries);
    assert_eq!(
        groups,
        [
            "engine",
            "webhook:vapi",
            "worker:analysis",
            "engine",
            "admin:ops"
        ],
        "{entries:#?}"
    );
    assert_eq!(admin, ["export", "erase", "erase", "read"]);
    let engine: Vec<_> = entries
        .iter()
        .filter(|e| e["actor"] == "engine:vapi")
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        engine.contains(&"create")
            && entries
                .iter()
                .any(|e| e["actor"] == "engine:tool" && e["action"] == "update")
    );
    assert!(
        entries
            .iter()
            .all(|e| !e.to_string().contains("2125550147"))
    );
    let tombstones: Vec<_> = entries.iter().filter(|e| e["action"] == "erase").collect();
    assert_eq!(tombstones.len(), 2);
    for tombstone in tombstones {
        let hash = tombstone["details"]["subject_hash"]
            .as_str()
            .unwrap_or_default();
        assert!(hash.starts_with("hmac-sha256:"), "{tombstone}");
    }

    // The next call from the number is a first call.
    let sse = read_sse(app.chat(&vapi_body("call-a3", NUMBER, "Hello again")).await).await;
    assert!(sse.done);
    app.settle().await;
    let (session, caller) = app.stored_call(Platform::Vapi, "call-a3").await;
    assert_eq!(session.prior_calls, 0);
    assert_eq!(session.attempt, 1);
    let caller = caller.unwrap();
    assert_eq!((caller.call_count, caller.name), (1, None));
    let last = app.upstream.requests().last().unwrap().to_string();
    assert!(
        !last.contains("Zebediah") && !last.contains("purple"),
        "{last}"
    );
    app.teardown().await;
}

async fn admin_routes_and_metrics_refuse_missing_and_platform_keys(backend: Backend) {
    let app = TestApp::spawn_with(backend, operator_settings).await;
    let routes = [
        "/admin/v1/openapi.json",
        "/admin/v1/calls",
        "/admin/v1/calls/0193f1c2-0000-7000-8000-000000000000",
        "/admin/v1/callers/+12125550147",
        "/admin/v1/callers/+12125550147/export",
        "/admin/v1/callers/+12125550147/access-log",
        "/metrics",
        "/not-a-listed-route",
    ];
    for route in routes {
        for key in [None, Some(API_KEY), Some("guess")] {
            let mut request = app.client.get(app.url(route));
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401, "{route} with {key:?}");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["type"], "authentication_error");
        }
    }
    let erase = app
        .client
        .delete(app.url("/admin/v1/callers/+12125550147"))
        .bearer_auth(API_KEY);
    assert_eq!(erase.send().await.unwrap().status(), 401);
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(
            app.client
                .get(app.url(probe))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let (status, _) = admin_get(&app, "/metrics").await;
    assert_eq!(status, 200);
    let (status, body) = admin_get(&app, "/not-a-listed-route").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    // The served document is the checked-in one.
    let served = app
        .client
        .get(app.url("/admin/v1/openapi.json"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(served.headers()["content-type"], "application/json");
    let checked_in = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/admin-openapi.json"
    ))
    .unwrap();
    assert_eq!(served.text().await.unwrap(), checked_in);
    app.teardown().await;
}

async fn calls_are_listed_newest_first_with_filters_and_cursors(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let app = app.restart_with(operator_settings).await;
    for (call, number) in [
        ("call-l1", NUMBER),
        ("call-l2", "+14155550123"),
        ("call-l3", NUMBER),
    ] {
        assert!(
            read_sse(app.chat(&vapi_body(call, number, "hi")).await)
                .await
                .done
        );
        app.settle().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let keys = |page: &Value| -> Vec<String> {
        page["calls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["call_key"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, page) = admin_get(&app, "/admin/v1/calls?limit=2").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(keys(&page), ["call-l3", "call-l2"]);
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let (_, rest) = admin_get(&app, &format!("/admin/v1/calls?limit=2&cursor={cursor}")).await;
    assert_eq!(keys(&rest), ["call-l1"]);
    assert!(rest["next_cursor"].is_null());
    let (_, mine) = admin_get(
        &app,
        "/admin/v1/calls?caller=(212)%20555-0147&platform=vapi&status=active&assistant=asst-1",
    )
    .await;
    assert_eq!(keys(&mine), ["call-l3", "call-l1"]);
    let (_, none) = admin_get(&app, "/admin/v1/calls?caller=%2B19175550100").await;
    assert_eq!(keys(&none), Vec::<String>::new());
    let (_, later) = admin_get(&app, "/admin/v1/calls?since=2999-01-01T00:00:00Z").await;
    assert!(keys(&later).is_empty());
    let (_, earlier) = admin_get(&app, "/admin/v1/calls?until=2000-01-01T00:00:00Z").await;
    assert!(keys(&earlier).is_empty());

    // A call in full, and its caller with their calls; both reads audited.
    let id = page["calls"][0]["session_id"].as_str().unwrap().to_owned();
    let (status, call) = admin_get(&app, &format!("/admin/v1/calls/{id}")).await;
    assert_eq!(status, 200, "{call}");
    assert_eq!(call["session"]["call_key"], "call-l3");
    assert_eq!(call["caller"]["phone"], NUMBER);
    assert!(call["turns"].as_array().unwrap().len() >= 2);
    assert!(call["usage"].is_null());
    let (status, caller) = admin_get(&app, "/admin/v1/callers/212-555-0147").await;
    assert_eq!(status, 200);
    assert_eq!(caller["calls"]["calls"].as_array().unwrap().len(), 2);
    let (_, log) = admin_get(&app, "/admin/v1/callers/212-555-0147/access-log").await;
    let reads: Vec<_> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor"] == "admin:ops")
        .map(|e| e["reason"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        reads,
        [
            "admin: list calls",
            "admin: list calls",
            "admin: list calls",
            "admin: call detail",
            "admin: caller profile",
            "admin: access log"
        ]
    );
    app.teardown().await;
}

async fn an_erasure_waits_for_a_call_in_progress_unless_forced(backend: Backend) {
    let app = TestApp::spawn_with(backend, operator_settings).await;
    assert!(
        read_sse(app.chat(&vapi_body("call-live", NUMBER, "hi")).await)
            .await
            .done
    );
    app.settle().await;
    let (status, body) = admin_delete(&app, "/admin/v1/callers/+12125550147").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    assert!(
        app.db
            .store
            .get_caller_by_phone(NUMBER)
            .await
            .unwrap()
            .is_some(),
        "nothing erased"
    );
    let (status, body) = admin_delete(&app, "/admin/v1/callers/+12125550147?force=true").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("erased")));
    assert!(
        app.db
            .store
            .get_caller_by_phone(NUMBER)
            .await
            .unwrap()
            .is_none()
    );
    // The call's next turn starts afresh: nothing of it is served from the instance's call
    // cache (which held the erased session and caller), so it is stored again as a first call.
    assert!(
        read_sse(
            app.chat(&vapi_body("call-live", NUMBER, "still there?"))
                .await
        )
        .await
        .done
    );
    app.settle().await;
    let (session, caller) = app
        .db
        .store
        .load_call(Platform::Vapi, "call-live")
        .await
        .unwrap()
        .expect("the call is stored again after the erasure");
    assert_eq!(session.prior_calls, 0, "a first call: {session:?}");
    assert!(caller.is_some(), "its caller is stored again");
    app.teardown().await;
}

async fn an_erasure_without_the_erasure_key_is_refused(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        operator_settings(s);
        s.server.erasure_key = Secret::default();
    })
    .await;
    let (status, body) = admin_delete(&app, "/admin/v1/callers/+12125550147").await;
    assert_eq!(status, 503);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("server.erasure_key")
    );
    app.teardown().await;
}

async fn bad_admin_input_gets_a_4xx_in_the_error_shape(backend: Backend) {
    let app = TestApp::spawn_with(backend, operator_settings).await;
    let cases = [
        ("/admin/v1/calls?limit=0", 400, Some("limit")),
        ("/admin/v1/calls?limit=x", 400, Some("limit")),
        ("/admin/v1/calls?status=flying", 400, Some("status")),
        ("/admin/v1/calls?platform=zoom", 400, Some("platform")),
        ("/admin/v1/calls?since=yesterday", 400, Some("since")),
        (
            "/admin/v1/calls?cursor=99999999999999999.abc",
            400,
            Some("cursor"),
        ),
        ("/admin/v1/calls?caler=%2B12125550147", 400, None),
        ("/admin/v1/calls/not-a-uuid", 400, Some("session_id")),
        (
            "/admin/v1/calls/0193f1c2-0000-7000-8000-000000000000",
            404,
            None,
        ),
        ("/admin/v1/callers/anonymous", 400, Some("phone")),
        ("/admin/v1/callers/%2B1555", 400, Some("phone")),
        ("/admin/v1/callers/%00%00%00", 404, None),
        ("/admin/v1/callers/+19175550100/export", 404, None),
        ("/admin/v1/callers/+19175550100/access-log", 404, None),
        (
            "/admin/v1/callers/+19175550100/access-log?since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z",
            400,
            Some("since"),
        ),
    ];
    for (path, status, param) in cases {
        let (got, body) = admin_get(&app, path).await;
        assert_eq!(got, status, "{path}: {body}");
        assert!(body["error"]["message"].is_string(), "{path}: {body}");
        assert_eq!(body["error"]["param"].as_str(), param, "{path}: {body}");
    }
    let (status, _) = admin_delete(&app, "/admin/v1/callers/+12125550147?force=maybe").await;
    assert_eq!(status, 400);
    app.teardown().await;
}

async fn a_router_added_without_a_table_entry_is_not_public(backend: Backend) {
    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use tower::ServiceExt;

    let app = TestApp::spawn_with(backend, operator_settings).await;
    let extra = axum::Router::new().route(
        "/internal/debug",
        axum::routing::get(|| async { "internals" }),
    );
    let router = redial::http::router_with(app.state.clone(), extra);
    let request = |key: Option<&str>| {
        let mut request = axum::http::Request::get("/internal/debug");
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let mut request = request.body(Body::empty()).unwrap();
        let loopback: std::net::SocketAddr = ([127, 0, 0, 1], 40000).into();
        request.extensions_mut().insert(ConnectInfo(loopback));
        request
    };
    for key in [None, Some(API_KEY)] {
        let response = router.clone().oneshot(request(key)).await.unwrap();
        assert_eq!(response.status(), 401, "{key:?}");
    }
    let response = router.oneshot(request(Some(ADMIN_KEY))).await.unwrap();
    assert_eq!(
        response.status(),
        200,
        "an unlisted route is an admin route"
    );
    app.teardown().await;
}

async fn the_cli_shows_exports_and_erases_and_is_audited(backend: Backend) {
    let mut app = TestApp::spawn_with(backend, operator_settings).await;
    assert!(
        read_sse(app.chat(&vapi_body("call-cli", NUMBER, SAID)).await)
            .await
            .done
    );
    app.settle().await;
    let (session, caller) = app.stored_call(Platform::Vapi, "call-cli").await;
    let caller_id = caller.unwrap().caller_id;
    let dir = tempfile::tempdir().unwrap();
    let journal = app.db.journal.path().display().to_string();
    let url = app.db.url.clone();
    let cli = |args: &[&str]| {
        let mut command = process::command(dir.path());
        command
            .env("REDIAL_DATABASE__URL", &url)
            .env("REDIAL_DATABASE__JOURNAL_DIR", &journal)
            .env("REDIAL_SERVER__ERASURE_KEY", "erasure-test-key")
            .env("USER", "tester")
            .args(args);
        command
    };

    let shown = cli(&["calls", "show", &session.session_id.to_string()])
        .output()
        .await
        .unwrap();
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["session"]["call_key"], "call-cli");
    let export = cli(&["callers", "export", "(212) 555-0147"])
        .output()
        .await
        .unwrap();
    let export: Value = serde_json::from_slice(&export.stdout).unwrap();
    assert_eq!(export["format"], "redial.caller-export");
    assert!(export.to_string().contains("PURPLE-OCTOPUS"));
    // The running gateway holds the outage journal: the erasure must go through its API.
    let refused = cli(&["callers", "erase", NUMBER, "--force"])
        .output()
        .await
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("DELETE /admin/v1/callers"));
    app.stop().await;
    let erased = cli(&["callers", "erase", NUMBER, "--force"])
        .output()
        .await
        .unwrap();
    assert!(
        erased.status.success(),
        "{}",
        String::from_utf8_lossy(&erased.stderr)
    );
    let erased: Value = serde_json::from_slice(&erased.stdout).unwrap();
    assert_eq!(erased["status"], "erased");
    assert_eq!(erased["journal"]["enabled"], true);

    let trail = app.db.store.list_audit(caller_id, 50).await.unwrap();
    let cli_actions: Vec<_> = trail
        .iter()
        .rev()
        .filter(|e| e.actor == AuditActor::Cli("tester".into()))
        .map(|e| e.action.clone())
        .collect();
    assert_eq!(
        cli_actions,
        [AuditAction::Read, AuditAction::Export, AuditAction::Erase]
    );
    assert!(
        app.db
            .store
            .get_caller_by_phone(NUMBER)
            .await
            .unwrap()
            .is_none()
    );
    app.teardown().await;
}

/// `[prices."<model>"]` of `dollars` per million input and twice that per million output tokens.
fn price(settings: &mut Settings, model: &str, dollars: f64) {
    let price = PriceSettings {
        input_per_mtok: dollars,
        output_per_mtok: 2.0 * dollars,
        cached_input_per_mtok: None,
    };
    settings.prices.insert(model.into(), price);
}

async fn a_call_shows_the_upstream_usage_per_model_and_its_cost(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        operator_settings(s);
        s.upstream.fallback_models = vec!["gpt-backup".into()];
        price(s, "gpt-test", 1_000.0);
    })
    .await;
    // Turn 1: gpt-test answers (5 tokens). Turn 2: gpt-test fails, gpt-backup answers (3).
    let first = vapi_body("call-u", NUMBER, "Hi");
    assert!(read_sse(app.chat(&first).await).await.done);
    app.upstream.push("gpt-test", Behavior::error(500, "down"));
    app.upstream
        .push("gpt-backup", Behavior::text(["a", "b", "c"]));
    let mut second = first.clone();
    second["messages"].as_array_mut().unwrap().extend([
        json!({"role": "assistant", "content": "Hello"}),
        json!({"role": "user", "content": "More"}),
    ]);
    assert!(read_sse(app.chat(&second).await).await.done);
    // A call whose upstream never answered has no usage.
    app.upstream.push("gpt-test", Behavior::error(500, "down"));
    app.upstream
        .push("gpt-backup", Behavior::error(500, "down"));
    let silent = vapi_body("call-silent", "+14155550123", "Hi");
    assert!(read_sse(app.chat(&silent).await).await.done);
    app.settle().await;
    let (session, _) = app.stored_call(Platform::Vapi, "call-u").await;
    let path = format!("/admin/v1/calls/{}", session.session_id);

    let (status, call) = admin_get(&app, &path).await;
    assert_eq!(status, 200, "{call}");
    let usage = &call["upstream_usage"];
    let models = usage["models"].as_array().unwrap();
    let names: Vec<_> = models.iter().map(|m| (&m["model"], &m["turns"])).collect();
    assert_eq!(
        names,
        [
            (&json!("gpt-backup"), &json!(1)),
            (&json!("gpt-test"), &json!(1))
        ],
        "{usage}"
    );
    assert_eq!(models[0]["completion_tokens"], 3, "{usage}");
    assert_eq!(models[1]["completion_tokens"], 5, "{usage}");
    assert_eq!(models[1]["cached_tokens"], 0, "{usage}");
    let tokens = |m: &Value, key: &str| m[key].as_f64().unwrap();
    let cost = |m: &Value, dollars: f64| {
        (tokens(m, "prompt_tokens") + 2.0 * tokens(m, "completion_tokens")) * dollars / 1e6
    };
    assert!(tokens(&models[1], "prompt_tokens") > 0.0, "{usage}");
    let test_cost = cost(&models[1], 1_000.0);
    assert!(
        (models[1]["cost_usd"].as_f64().unwrap() - test_cost).abs() < 1e-9,
        "{usage}"
    );
    assert!(
        models[0]["cost_usd"].is_null(),
        "gpt-backup has no price: {usage}"
    );
    assert!(
        usage["cost_usd"].is_null(),
        "not every model has a price: {usage}"
    );
    assert!(
        call["usage"].is_null(),
        "no platform reported usage: {call}"
    );
    // The OpenAPI document names exactly these fields (schemathesis rarely meets a stored call).
    keys_as_documented(&call, "CallDetail");
    keys_as_documented(usage, "UpstreamUsage");
    keys_as_documented(&models[1], "ModelUsage");

    // With a price for every model the call has a cost, in the detail and in the export.
    let app = app.restart_with(|s| price(s, "gpt-backup", 10.0)).await;
    let (_, call) = admin_get(&app, &path).await;
    let usage = &call["upstream_usage"];
    let backup_cost = cost(&usage["models"][0], 10.0);
    assert!((usage["models"][0]["cost_usd"].as_f64().unwrap() - backup_cost).abs() < 1e-9);
    let total = usage["cost_usd"].as_f64().unwrap();
    assert!((total - (test_cost + backup_cost)).abs() < 1e-9, "{usage}");
    let (status, export) = admin_get(&app, "/admin/v1/callers/212-555-0147/export").await;
    assert_eq!(status, 200, "{export}");
    assert_eq!(export["calls"][0]["upstream_usage"], *usage);

    let (silent, _) = app.stored_call(Platform::Vapi, "call-silent").await;
    let (_, call) = admin_get(&app, &format!("/admin/v1/calls/{}", silent.session_id)).await;
    assert_eq!(
        call["upstream_usage"],
        json!({"models": [], "cost_usd": null}),
        "{call}"
    );
    app.teardown().await;
}

/// `value` has exactly the properties, all required, of `schema` in docs/admin-openapi.json.
fn keys_as_documented(value: &Value, schema: &str) {
    let document: Value =
        serde_json::from_str(include_str!("../../docs/admin-openapi.json")).unwrap();
    let schema = &document["components"]["schemas"][schema];
    let mut documented: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
    let mut required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    let mut shown: Vec<&String> = value.as_object().unwrap().keys().collect();
    documented.sort();
    required.sort_unstable();
    shown.sort();
    assert_eq!(shown, documented, "{value}");
    assert_eq!(required, documented, "every field is required");
    assert_eq!(schema["additionalProperties"], false);
}
