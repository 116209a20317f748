//! Several instances on one Postgres: the per-call cache never shows a stale answer.
//!
//! Two redial instances share one fresh database; a call alternates between them, each turn
//! recording an answer through the instance it runs on, while a concurrent writer keeps changing
//! another answer of the same call straight in the database (as an operator or a webhook would).
//! Every prompt the mock upstreams receive is checked.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use redial::config::{AssistantSettings, FieldSettings, Settings};
use redial::platforms::Platform;
use redial::startup::Application;
use redial::storage::connect;
use redial_bench::mock::{Behavior, MockConfig, MockUpstream};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::support::app::{API_KEY, TestApp, read_sse, test_settings};
use crate::support::db::Backend;

/// Turns in the call, alternating between the instances.
const TURNS: usize = 8;

/// How long a change notice may take to reach the other instance (Postgres LISTEN/NOTIFY; see
/// src/engine/cache.rs). A write acknowledged longer ago than this must be in every prompt.
const NOTICE_BOUND: Duration = Duration::from_millis(50);

fn script(settings: &mut Settings) {
    let mut fields: Vec<FieldSettings> = (0..TURNS)
        .map(|i| FieldSettings {
            name: format!("f{i}"),
            question: format!("Question {i}?"),
            required: true,
            description: String::new(),
        })
        .collect();
    fields.push(FieldSettings {
        name: "extra".into(),
        question: "Anything else?".into(),
        required: false,
        description: String::new(),
    });
    settings.assistants.push(AssistantSettings {
        id: "asst-mi".into(),
        filler: String::new(),
        fields,
        ..AssistantSettings::default()
    });
    settings.memory.summary_max_tokens = 4_000;
}

/// A second instance on the first one's database, with its own upstream and journal.
async fn second_instance(first: &TestApp) -> (String, MockUpstream, tempfile::TempDir) {
    let upstream = MockUpstream::start(MockConfig::default())
        .await
        .expect("start the mock upstream");
    let journal = tempfile::tempdir().expect("journal directory");
    let mut settings = test_settings(&first.db, &upstream);
    script(&mut settings);
    settings.database.journal_dir = journal.path().display().to_string();
    let app = Application::build(settings)
        .await
        .expect("build instance B");
    let addr = app.local_addr().expect("bound address");
    tokio::spawn(app.run_until_stopped(std::future::pending::<()>()));
    (format!("http://{addr}"), upstream, journal)
}

fn body(history: &[Value]) -> Value {
    let mut messages = vec![
        json!({"role": "system", "content": "You are Ava."}),
        json!({"role": "assistant", "content": "Hi, how can I help?"}),
    ];
    messages.extend(history.iter().cloned());
    json!({
        "model": "gpt-test",
        "stream": true,
        "messages": messages,
        "call": {"id": "call-mi", "assistantId": "asst-mi"},
        "customer": {"number": "+14155550199"},
    })
}

/// The `extra` value a prompt shows (`w<n>`), if any.
fn extra_in(prompt: &str) -> Option<u64> {
    let at = prompt.find("extra = \\\"w")? + "extra = \\\"w".len();
    prompt[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres at TEST_DATABASE_URL: run scripts/test.sh"]
async fn a_call_alternating_between_instances_never_sees_a_stale_answer() {
    let a = TestApp::spawn_with(Backend::Postgres, script).await;
    let (b_url, b_upstream, _b_journal) = second_instance(&a).await;
    let client = reqwest::Client::new();

    // The call's first turn stores it, so the writer has a session to write to.
    a.upstream.push("gpt-test", Behavior::text(["Hello."]));
    let mut history = vec![json!({"role": "user", "content": "hello"})];
    let first = client
        .post(a.url("/v1/chat/completions"))
        .bearer_auth(API_KEY)
        .json(&body(&history))
        .send()
        .await
        .unwrap();
    assert_eq!(read_sse(first).await.text(), "Hello.");
    history.push(json!({"role": "assistant", "content": "Hello."}));
    a.settle().await;
    let (session, _) = a.stored_call(Platform::Vapi, "call-mi").await;

    // The concurrent writer: its own connection, `extra = w<n>` with n rising, each write's
    // acknowledgement time recorded.
    let writer_store = connect(&a.db.url, &Default::default()).await.unwrap();
    let acked: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let stop = Arc::new(AtomicU64::new(0));
    let writer = {
        let (acked, stop) = (Arc::clone(&acked), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut n = 0;
            while stop.load(Ordering::Relaxed) == 0 {
                n += 1;
                writer_store
                    .record_answer(
                        session.session_id,
                        "extra",
                        &format!("w{n}"),
                        &[],
                        Utc::now(),
                    )
                    .await
                    .expect("the concurrent write");
                acked.lock().await.push((n, Instant::now()));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let mut shown_extra = 0;
    for turn in 0..TURNS {
        // A, A, B, B, …: some turns follow one on the same instance (served from its cache),
        // some follow one on the other (the history shows a turn the cache has not seen).
        let (url, upstream) = if (turn / 2) % 2 == 0 {
            (a.url(""), &a.upstream)
        } else {
            (b_url.clone(), &b_upstream)
        };
        let answer = json!({"field": format!("f{turn}"), "value": format!("v{turn}")});
        upstream.push(
            "gpt-test",
            Behavior::tool_call("record_answer", answer.to_string()),
        );
        let reply = format!("Noted {turn}.");
        upstream.push("gpt-test", Behavior::text([reply.clone()]));
        history.push(json!({"role": "user", "content": format!("answer {turn}")}));
        let seen_before = upstream.requests().len();
        let sent = Instant::now();
        let must_show = acked
            .lock()
            .await
            .iter()
            .rev()
            .find(|(_, at)| sent.duration_since(*at) >= NOTICE_BOUND)
            .map_or(0, |(n, _)| *n);
        let response = client
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth(API_KEY)
            .json(&body(&history))
            .send()
            .await
            .unwrap();
        assert_eq!(read_sse(response).await.text(), reply);
        history.push(json!({"role": "assistant", "content": reply}));

        let prompt = upstream.requests()[seen_before].to_string();
        for earlier in 0..turn {
            assert!(
                prompt.contains(&format!("f{earlier} = \\\"v{earlier}\\\"")),
                "turn {turn} on instance {}: the answer recorded in turn {earlier} is missing \
                 from the prompt: {prompt}",
                if (turn / 2) % 2 == 0 { "A" } else { "B" }
            );
        }
        let extra = extra_in(&prompt).unwrap_or(0);
        assert!(
            extra >= must_show,
            "turn {turn}: the prompt shows extra = w{extra}, but w{must_show} was acknowledged \
             {NOTICE_BOUND:?} before the request"
        );
        assert!(
            extra >= shown_extra,
            "turn {turn}: the prompt went back from w{shown_extra} to w{extra}"
        );
        shown_extra = extra;
    }
    stop.store(1, Ordering::Relaxed);
    writer.await.unwrap();
    a.teardown().await;
}

/// A later turn on the instance that served the previous one reads nothing from the database:
/// a change made behind the store's back (no notice: Postgres triggers off; on SQLite, another
/// store object, which a single-process store never has) is not seen, while a change with its
/// notice is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres at TEST_DATABASE_URL: run scripts/test.sh"]
async fn a_later_turn_is_served_from_the_cache_until_a_change_is_noticed() {
    use sqlx::Connection as _;
    let a = TestApp::spawn_with(Backend::Postgres, script).await;
    let client = reqwest::Client::new();
    let mut history = Vec::new();
    let turn = |history: &mut Vec<Value>, text: &str| {
        history.push(json!({"role": "user", "content": text}));
        body(history)
    };
    a.upstream.push("gpt-test", Behavior::text(["One."]));
    let response = client
        .post(a.url("/v1/chat/completions"))
        .bearer_auth(API_KEY)
        .json(&turn(&mut history, "one"))
        .send()
        .await
        .unwrap();
    assert_eq!(read_sse(response).await.text(), "One.");
    history.push(json!({"role": "assistant", "content": "One."}));
    a.settle().await;
    let (session, _) = a.stored_call(Platform::Vapi, "call-mi").await;

    // Behind the cache's back: no notice.
    let mut admin = sqlx::PgConnection::connect(&a.db.url).await.unwrap();
    sqlx::query("set session_replication_role = replica")
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::query("update call_session set answers = '{\"extra\": {\"value\": \"hidden\", \"confirmed_at\": \"2026-01-01T00:00:00Z\"}}' where session_id = $1")
        .bind(session.session_id)
        .execute(&mut admin)
        .await
        .unwrap();
    a.upstream.push("gpt-test", Behavior::text(["Two."]));
    let response = client
        .post(a.url("/v1/chat/completions"))
        .bearer_auth(API_KEY)
        .json(&turn(&mut history, "two"))
        .send()
        .await
        .unwrap();
    assert_eq!(read_sse(response).await.text(), "Two.");
    history.push(json!({"role": "assistant", "content": "Two."}));
    let prompt = a.upstream.requests().last().unwrap().to_string();
    assert!(
        !prompt.contains("hidden"),
        "the second turn read the database instead of its cache: {prompt}"
    );

    // Through the store: the trigger's notice drops the entry.
    a.db.store
        .record_answer(session.session_id, "extra", "noticed", &[], Utc::now())
        .await
        .unwrap();
    tokio::time::sleep(NOTICE_BOUND).await;
    a.upstream.push("gpt-test", Behavior::text(["Three."]));
    let response = client
        .post(a.url("/v1/chat/completions"))
        .bearer_auth(API_KEY)
        .json(&turn(&mut history, "three"))
        .send()
        .await
        .unwrap();
    assert_eq!(read_sse(response).await.text(), "Three.");
    let prompt = a.upstream.requests().last().unwrap().to_string();
    assert!(prompt.contains("extra = \\\"noticed\\\""), "{prompt}");
    a.teardown().await;
}
