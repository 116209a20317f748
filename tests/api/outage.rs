//! The database goes away mid-call: a TCP proxy between redial and Postgres cuts every
//! connection (the shared server keeps running) while 20 callers keep talking. Every caller
//! hears every reply without waiting for the database, and once the database is back every turn,
//! answer, audit entry and webhook is stored exactly once, in order — also when redial is killed
//! with SIGKILL during the outage and restarted after it (the journal is replayed at start).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use redial::config::{AssistantSettings, DatabaseUrl, FieldSettings, MemorySettings, Secret};
use redial::platforms::Platform;
use redial::storage::TurnRole;
use redial_bench::mock::{Behavior, MockConfig, MockUpstream};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

use crate::support::app::{API_KEY, TestApp};
use crate::support::db::{Backend, TestDb, postgres_url};
use crate::support::process::Server;
use crate::support::proxy::{Proxy, postgres_addr};

const CALLERS: usize = 20;
const VAPI_SECRET: &str = "vapi-outage-secret";
/// Turns per call before the caller hangs up (and the platform's end-of-call webhook arrives).
const TURNS_PER_CALL: usize = 8;
/// Pause between a caller's turns (20 callers: about 50 turns a second in all).
const TURN_GAP: Duration = Duration::from_millis(300);
const FIELDS: [&str; 2] = ["loan_purpose", "amount"];
/// A webhook is answered well before a platform's own timeout: from the journal, never after a
/// retry loop (the first one in an outage may wait `database.write_timeout_ms`; a loaded
/// two-core machine adds its own delays).
const WEBHOOK_MAX: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres at TEST_DATABASE_URL: run scripts/test.sh"]
async fn a_30_second_database_outage_loses_nothing_and_callers_do_not_wait() {
    database_outage(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres at TEST_DATABASE_URL: run scripts/test.sh"]
async fn a_3_minute_database_outage_loses_nothing_and_callers_do_not_wait() {
    database_outage(Duration::from_secs(180)).await;
}

/// Callers talk through an in-process redial (shipped defaults, except the test's upstream
/// timeouts) while the proxy cuts the database for `outage`.
async fn database_outage(outage: Duration) {
    let (proxy, app, target) = behind_a_proxy(true).await;
    let run = Run::start(&target);
    run.warm_up().await;
    proxy.cut();
    run.set(Phase::Outage);
    tokio::time::sleep(outage).await;
    let journaled = app.state.engine.journal().backlog();
    let ready = reqwest::get(app.url("/readyz")).await.unwrap().status();
    proxy.restore();
    run.set(Phase::After);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = run.finish().await;

    assert!(journaled > 0, "writes were journaled during the outage");
    assert_eq!(ready, 503, "/readyz tells the truth during the outage");
    report.assert_every_reply_was_heard();
    report.assert_first_token_unaffected();
    wait_until_replayed(&app.url("/readyz")).await;
    app.settle().await;
    assert_eq!(app.state.engine.journal().backlog(), 0);
    report.assert_stored_exactly_once(&app.db).await;
    drop(proxy);
    app.teardown().await;
}

/// The same with the real binary, killed with SIGKILL in the middle of a 30-second outage:
/// what it journaled is replayed by the next process once the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres at TEST_DATABASE_URL: run scripts/test.sh"]
async fn a_gateway_killed_during_an_outage_replays_its_journal_after_the_restart() {
    let db = TestDb::new(Backend::Postgres).await;
    let proxy = Proxy::start(postgres_addr(&db.url)).await;
    let upstream = MockUpstream::start(MockConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("redial.toml");
    let script = "[[assistants]]\nid = \"asst-1\"\n\
        [[assistants.fields]]\nname = \"loan_purpose\"\nquestion = \"What is the loan for?\"\n\
        [[assistants.fields]]\nname = \"amount\"\nquestion = \"How much?\"\n";
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\napi_keys = [\"{API_KEY}\"]\n\
             [database]\nurl = \"{}\"\n\
             [upstream]\nbase_url = \"{}\"\napi_key = \"k\"\n\
             [analysis]\nworkers = 0\n\
             [webhooks]\nvapi_secret = \"{VAPI_SECRET}\"\n{script}",
            proxy.postgres_url(&db.url),
            upstream.base_url()
        ),
    )
    .unwrap();
    let args = ["--config", config.to_str().unwrap(), "serve"];
    let server = Server::start(dir.path(), &args).await;
    let target = Target {
        base: server.url(""),
        upstream: upstream.clone(),
    };
    let run = Run::start(&target);
    run.warm_up().await;
    proxy.cut();
    run.set(Phase::Outage);
    tokio::time::sleep(Duration::from_secs(15)).await;
    // Stop the callers first: a turn cut off by the kill was never answered and is not
    // expected to be stored.
    let report = run.finish().await;
    server.kill().await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    proxy.restore();
    let server = Server::start(dir.path(), &args).await;

    report.assert_every_reply_was_heard();
    wait_until_replayed(&server.url("/readyz")).await;
    report.assert_stored_exactly_once(&db).await;
    drop(server);
    drop(proxy);
    upstream.shutdown();
    db.teardown().await;
}

/// An in-process redial on a fresh Postgres database reached through a cuttable proxy, with the
/// shipped memory defaults, no analysis workers, and the outage journal on or off.
async fn behind_a_proxy(journal: bool) -> (Proxy, TestApp, Target) {
    let proxy = Proxy::start(postgres_addr(&postgres_url())).await;
    let app = TestApp::spawn_with(Backend::Postgres, |s| {
        let url = proxy.postgres_url(s.database.url.expose());
        s.database.url = DatabaseUrl::new(url);
        if !journal {
            s.database.journal_dir = String::new();
        }
        s.memory = MemorySettings::default();
        s.analysis.workers = 0;
        s.webhooks.vapi_secret = Secret::new(VAPI_SECRET);
        s.assistants.push(loan_script());
    })
    .await;
    let target = Target {
        base: app.url(""),
        upstream: app.upstream.clone(),
    };
    (proxy, app, target)
}

fn loan_script() -> AssistantSettings {
    let field = |name: &str, question: &str| FieldSettings {
        name: name.into(),
        question: question.into(),
        required: true,
        description: String::new(),
    };
    AssistantSettings {
        id: "asst-1".into(),
        fields: vec![
            field("loan_purpose", "What is the loan for?"),
            field("amount", "How much?"),
        ],
        ..AssistantSettings::default()
    }
}

/// Waits (up to 60 s) until `/readyz` answers 200 with nothing left in the journal.
async fn wait_until_replayed(readyz: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let started = Instant::now();
    loop {
        let status = match reqwest::get(readyz).await {
            Ok(response) => {
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or_default();
                Some((status, body["journal_backlog"].as_u64()))
            }
            Err(_) => None,
        };
        if status == Some((200, Some(0))) {
            eprintln!(
                "journal replayed {:?} after the database came back",
                started.elapsed()
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the journal was not replayed within 60 s ({status:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Where callers talk to: a redial and its mock upstream.
#[derive(Clone)]
struct Target {
    base: String,
    upstream: MockUpstream,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    /// Connections opening, first writes: not part of the baseline.
    Warmup = 0,
    Normal = 1,
    Outage = 2,
    After = 3,
}

/// The callers, running.
struct Run {
    phase: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    callers: Vec<tokio::task::JoinHandle<CallerLog>>,
}

impl Run {
    fn start(target: &Target) -> Self {
        let phase = Arc::new(AtomicU8::new(Phase::Warmup as u8));
        let stop = Arc::new(AtomicBool::new(false));
        let callers = (0..CALLERS)
            .map(|n| {
                let caller = Caller {
                    n,
                    phone: format!("+1415555{n:04}"),
                    target: target.clone(),
                    client: reqwest::Client::new(),
                    phase: Arc::clone(&phase),
                };
                let stop = Arc::clone(&stop);
                tokio::spawn(async move { caller.talk(&stop).await })
            })
            .collect();
        Self {
            phase,
            stop,
            callers,
        }
    }

    /// Two seconds of warm-up, then three of normal operation (the baseline).
    async fn warm_up(&self) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        self.set(Phase::Normal);
        tokio::time::sleep(Duration::from_secs(3)).await;
    }

    fn set(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::SeqCst);
    }

    async fn finish(self) -> Report {
        self.stop.store(true, Ordering::SeqCst);
        let mut report = Report::default();
        for caller in self.callers {
            let log = caller.await.expect("a caller task");
            report.calls.extend(log.calls);
            report.failures.extend(log.failures);
            for (phase, ttft) in log.ttfts {
                report.ttfts.entry(phase as u8).or_default().push(ttft);
            }
        }
        report
    }
}

/// One caller: calls of [`TURNS_PER_CALL`] turns, one after another, from one number.
struct Caller {
    n: usize,
    phone: String,
    target: Target,
    client: reqwest::Client,
    phase: Arc<AtomicU8>,
}

#[derive(Default)]
struct CallerLog {
    calls: Vec<CallLog>,
    failures: Vec<String>,
    ttfts: Vec<(Phase, Duration)>,
}

/// What one call said and confirmed, and what must therefore be stored.
#[derive(Debug, Default)]
struct CallLog {
    id: String,
    said: Vec<String>,
    replies: Vec<String>,
    answers: BTreeMap<String, String>,
    tool_turns: usize,
    webhook: bool,
}

impl Caller {
    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::SeqCst) {
            0 => Phase::Warmup,
            1 => Phase::Normal,
            2 => Phase::Outage,
            _ => Phase::After,
        }
    }

    async fn talk(self, stop: &AtomicBool) -> CallerLog {
        let mut log = CallerLog::default();
        let mut number = 0;
        while !stop.load(Ordering::SeqCst) {
            let mut call = CallLog {
                id: format!("outage-c{}-{number}", self.n),
                ..CallLog::default()
            };
            number += 1;
            for turn in 0..TURNS_PER_CALL {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                self.turn(&mut call, turn, &mut log).await;
                tokio::time::sleep(TURN_GAP).await;
            }
            if call.said.len() == TURNS_PER_CALL {
                self.hang_up(&mut call, &mut log).await;
            }
            log.calls.push(call);
        }
        log
    }

    /// One turn: every third one confirms an answer through `record_answer`.
    async fn turn(&self, call: &mut CallLog, turn: usize, log: &mut CallerLog) {
        let model = format!("outage-m{}", self.n);
        let said = format!("{} says {turn}", call.id);
        let reply = format!("Reply {turn} to {}.", call.id);
        let answer = (turn % 3 == 1).then(|| {
            let field = FIELDS[(turn / 3) % FIELDS.len()];
            (field, format!("{field} {turn} of {}", call.id))
        });
        if let Some((field, value)) = &answer {
            let arguments = json!({"field": field, "value": value}).to_string();
            self.target
                .upstream
                .push(&model, Behavior::tool_call("record_answer", arguments));
        }
        let (first, rest) = reply.split_at(6);
        self.target
            .upstream
            .push(&model, Behavior::text([first, rest]));
        let phase = self.phase();
        let body = self.body(call, &said, &model);
        let started = Instant::now();
        let heard = match self.stream(&body).await {
            Ok(heard) => heard,
            Err(e) => {
                log.failures.push(format!("{said}: {e}"));
                return;
            }
        };
        if heard.text != reply {
            log.failures
                .push(format!("{said}: heard {:?}, not {reply:?}", heard.text));
            return;
        }
        if self.phase() == phase {
            log.ttfts.push((phase, heard.first - started));
        }
        call.said.push(said);
        call.replies.push(reply);
        if let Some((field, value)) = answer {
            call.answers.insert(field.to_owned(), value);
            call.tool_turns += 1;
        }
    }

    /// A Vapi request with the call's whole history, as Vapi sends it.
    fn body(&self, call: &CallLog, said: &str, model: &str) -> Value {
        let mut messages = vec![json!({"role": "system", "content": "You are Ava."})];
        for (user, assistant) in call.said.iter().zip(&call.replies) {
            messages.push(json!({"role": "user", "content": user}));
            messages.push(json!({"role": "assistant", "content": assistant}));
        }
        messages.push(json!({"role": "user", "content": said}));
        let customer = json!({"number": self.phone});
        json!({
            "model": model,
            "stream": true,
            "messages": messages,
            "call": {"id": call.id, "assistantId": "asst-1", "customer": customer},
            "customer": customer,
        })
    }

    async fn stream(&self, body: &Value) -> Result<Heard, String> {
        let mut response = self
            .client
            .post(format!("{}/v1/chat/completions", self.target.base))
            .bearer_auth(API_KEY)
            .json(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if response.status() != 200 {
            return Err(format!("status {}", response.status()));
        }
        let (mut buffer, mut text, mut first, mut done) =
            (String::new(), String::new(), None, false);
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let frame: String = buffer.drain(..end + 2).collect();
                let Some(data) = frame.trim().strip_prefix("data: ") else {
                    continue;
                };
                if data == "[DONE]" {
                    done = true;
                    continue;
                }
                let chunk: Value = serde_json::from_str(data).map_err(|e| e.to_string())?;
                if let Some(content) = chunk["choices"][0]["delta"]["content"].as_str()
                    && !content.is_empty()
                {
                    first.get_or_insert_with(Instant::now);
                    text.push_str(content);
                }
            }
        }
        match (first, done) {
            (Some(first), true) => Ok(Heard { text, first }),
            _ => Err(format!(
                "the stream ended without speech or [DONE]: {text:?}"
            )),
        }
    }

    /// The platform's end-of-call webhook: answered at once, stored once.
    async fn hang_up(&self, call: &mut CallLog, log: &mut CallerLog) {
        let mut report: Value =
            serde_json::from_str(include_str!("../fixtures/vapi/end-of-call-report.json")).unwrap();
        report["message"]["call"]["id"] = json!(call.id);
        report["message"]["call"]["assistantId"] = json!("asst-1");
        report["message"]["customer"] = json!({"number": self.phone});
        report["message"]["call"]["customer"] = json!({"number": self.phone});
        let started = Instant::now();
        let response = self
            .client
            .post(format!("{}/webhooks/vapi", self.target.base))
            .header("content-type", "application/json")
            .header("x-vapi-secret", VAPI_SECRET)
            .body(serde_json::to_vec(&report).unwrap())
            .send()
            .await;
        match response {
            Ok(r) if r.status() == 200 && started.elapsed() < WEBHOOK_MAX => {
                call.webhook = true;
            }
            Ok(r) => log.failures.push(format!(
                "{} webhook: {} after {:?}",
                call.id,
                r.status(),
                started.elapsed()
            )),
            Err(e) => log.failures.push(format!("{} webhook: {e}", call.id)),
        }
    }
}

struct Heard {
    text: String,
    first: Instant,
}

#[derive(Default)]
struct Report {
    calls: Vec<CallLog>,
    failures: Vec<String>,
    ttfts: BTreeMap<u8, Vec<Duration>>,
}

impl Report {
    /// Every turn was answered in full.
    fn assert_every_reply_was_heard(&self) {
        assert!(
            self.failures.is_empty(),
            "{} failures, first: {:?}",
            self.failures.len(),
            &self.failures[..self.failures.len().min(5)]
        );
    }

    /// The outage added at most 100 ms to the time to first token (90th percentile against the
    /// 90th before it), and at most one turn in a thousand took as long as the write budget
    /// (`database.write_timeout_ms`, 1 s): no turn waits for the database. A turn that waited on
    /// a write would make every turn of the outage that slow; one or two stragglers are the
    /// machine (the whole suite shares two cores), so the slowest turn is printed, not asserted.
    fn assert_first_token_unaffected(&self) {
        let normal = percentile(&self.ttfts[&(Phase::Normal as u8)], 0.9);
        let outage_turns = &self.ttfts[&(Phase::Outage as u8)];
        let outage = percentile(outage_turns, 0.9);
        let slowest = outage_turns.iter().max().copied().unwrap_or_default();
        eprintln!(
            "first token p90: {normal:?} before, {outage:?} during the outage ({} turns; \
             slowest {slowest:?})",
            outage_turns.len()
        );
        assert!(
            outage_turns.len() >= CALLERS,
            "callers talked during the outage"
        );
        assert!(
            outage <= normal + Duration::from_millis(100),
            "first token p90 {outage:?} during the outage vs {normal:?} before"
        );
        let waited = outage_turns
            .iter()
            .filter(|t| **t >= Duration::from_secs(1))
            .count();
        assert!(
            waited * 1000 <= outage_turns.len(),
            "{waited} of {} turns waited 1 s or more (slowest {slowest:?})",
            outage_turns.len()
        );
    }

    /// Each call's session holds each of its turns once, in order, with its last answers; each
    /// answer's audit entry and each webhook is stored once.
    async fn assert_stored_exactly_once(&self, db: &TestDb) {
        let mut raw = PgConnection::connect(&db.url).await.unwrap();
        let store = db.store.as_ref();
        for call in self.calls.iter().filter(|c| !c.said.is_empty()) {
            let (session, _) = store
                .load_call(Platform::Vapi, &call.id)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("call {} is not stored", call.id));
            let turns = store.list_turns(session.session_id).await.unwrap();
            let of = |role: TurnRole| -> Vec<String> {
                turns
                    .iter()
                    .filter(|t| t.role == role && t.tool_name.is_none())
                    .map(|t| t.content.clone())
                    .collect()
            };
            assert_eq!(of(TurnRole::User), call.said, "{}: caller turns", call.id);
            assert_eq!(
                of(TurnRole::Assistant),
                call.replies,
                "{}: replies",
                call.id
            );
            let tool_calls = turns
                .iter()
                .filter(|t| t.role == TurnRole::ToolCall)
                .count();
            assert_eq!(tool_calls, call.tool_turns, "{}: tool calls", call.id);
            let answers: BTreeMap<String, String> = session
                .answers
                .iter()
                .map(|(field, answer)| (field.clone(), answer.value.clone()))
                .collect();
            assert_eq!(answers, call.answers, "{}: answers", call.id);
            let audited: i64 = sqlx::query_scalar(
                "select count(*) from audit_log where session_id = $1 and reason = 'record_answer'",
            )
            .bind(session.session_id)
            .fetch_one(&mut raw)
            .await
            .unwrap();
            assert_eq!(
                audited, call.tool_turns as i64,
                "{}: audit entries",
                call.id
            );
            let anonymous: i64 = sqlx::query_scalar(
                "select count(*) from audit_log where session_id = $1 and caller_id is null",
            )
            .bind(session.session_id)
            .fetch_one(&mut raw)
            .await
            .unwrap();
            assert_eq!(
                anonymous, 0,
                "{}: every audit entry names the caller",
                call.id
            );
            let sessions: i64 =
                sqlx::query_scalar("select count(*) from call_session where call_key = $1")
                    .bind(&call.id)
                    .fetch_one(&mut raw)
                    .await
                    .unwrap();
            assert_eq!(sessions, 1, "{}: one session", call.id);
            let webhooks: i64 =
                sqlx::query_scalar("select count(*) from webhook_event where call_key = $1")
                    .bind(&call.id)
                    .fetch_one(&mut raw)
                    .await
                    .unwrap();
            assert_eq!(webhooks, i64::from(call.webhook), "{}: webhooks", call.id);
        }
        raw.close().await.unwrap();
    }
}

fn percentile(samples: &[Duration], q: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

/// Without a journal, an outage is answered honestly and fast: the model hears that an answer
/// could not be saved, and a webhook gets 503 at once (the platform retries), not a 500 after
/// a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres at TEST_DATABASE_URL: run scripts/test.sh"]
async fn without_a_journal_an_outage_is_reported_honestly_and_fast() {
    let (proxy, app, target) = behind_a_proxy(false).await;
    let caller = Caller {
        n: 0,
        phone: "+14155550199".into(),
        target,
        client: reqwest::Client::new(),
        phase: Arc::new(AtomicU8::new(Phase::Normal as u8)),
    };
    let mut log = CallerLog::default();
    let mut call = CallLog {
        id: "no-journal".into(),
        ..CallLog::default()
    };
    caller.turn(&mut call, 0, &mut log).await;
    proxy.cut();

    caller.turn(&mut call, 1, &mut log).await;
    let started = Instant::now();
    caller.hang_up(&mut call, &mut log).await;
    let webhook_wait = started.elapsed();

    let requests = app.upstream.requests();
    let tool_result = requests
        .iter()
        .flat_map(|r| r["messages"].as_array().cloned().unwrap_or_default())
        .find(|m| m["role"] == "tool")
        .expect("the tool result went back to the model");
    assert!(
        tool_result["content"]
            .as_str()
            .unwrap()
            .contains("could not be saved"),
        "{tool_result}"
    );
    assert_eq!(log.failures.len(), 1, "{:?}", log.failures);
    assert!(
        log.failures[0].contains("503"),
        "the webhook gets 503: {:?}",
        log.failures
    );
    assert!(webhook_wait < Duration::from_secs(3), "{webhook_wait:?}");
    let ready = reqwest::get(app.url("/readyz")).await.unwrap().status();
    assert_eq!(ready, 503);
    proxy.restore();
    app.teardown().await;
    drop(proxy);
}
