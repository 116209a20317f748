//! `/retell/llm-websocket/{call_id}`: whole calls driven over a real WebSocket as Retell drives
//! them (config → call_details → begin → responses → close), on both stores, against the mock
//! upstream.

use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::{SinkExt, StreamExt};
use redial::config::{AssistantSettings, FieldSettings, Settings};
use redial::platforms::Platform;
use redial::storage::{CallSession, CallerPatch, SessionStatus};
use redial_bench::mock::Behavior;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::support::app::{API_KEY, TestApp, app_tests};
use crate::support::db::Backend;

app_tests!(
    a_full_call_streams_every_response_to_completion,
    a_newer_request_supersedes_the_response_in_progress,
    ping_pong_is_echoed_while_a_response_is_generating,
    bad_frames_are_ignored_and_large_transcripts_accepted,
    a_reconnect_after_a_restart_continues_the_call_without_a_second_greeting,
    a_second_call_from_the_same_number_is_recognised,
    without_call_details_the_caller_is_greeted_after_a_short_wait,
    the_socket_needs_the_key_in_its_url,
    a_socket_closed_without_end_call_is_dropped_after_the_grace_and_a_redial_resumes_it,
    a_reconnect_within_the_grace_continues_the_call,
    a_socket_closed_after_end_call_is_ended_not_dropped,
    a_call_whose_agent_has_no_model_is_refused_and_the_others_are_served,
);

const MARIA: &str = "+14155550123";
const GREETING: &str = "Hi {name}, this is Ava. How can I help?";
const GREETING_UNKNOWN: &str = "Hi, this is Ava. How can I help?";
const PROMPT: &str = "You are Ava, a loan assistant.";

/// Retell users choose the model server-side; `agent_1` has a prompt, greetings and a script.
fn retell_settings(settings: &mut Settings) {
    settings.upstream.model = "gpt-test".into();
    settings.assistants = vec![AssistantSettings {
        id: "agent_1".into(),
        system_prompt: PROMPT.into(),
        greeting: GREETING.into(),
        greeting_unknown: GREETING_UNKNOWN.into(),
        fields: vec![FieldSettings {
            name: "loan_purpose".into(),
            question: "What is the loan for?".into(),
            required: true,
            description: String::new(),
        }],
        ..AssistantSettings::default()
    }];
}

async fn spawn(backend: Backend) -> TestApp {
    TestApp::spawn_with(backend, retell_settings).await
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Retell's side of one connection.
struct Retell {
    ws: Socket,
}

impl Retell {
    /// Connects to `call_id` with the key as a path segment, and checks the `config` frame.
    async fn connect(app: &TestApp, call_id: &str) -> Self {
        let url = format!("ws://{}/retell/llm-websocket/{API_KEY}/{call_id}", app.addr);
        let mut call = Self::open(&url).await.expect("connect");
        let config = call.recv().await;
        assert_eq!(
            config,
            json!({"response_type": "config", "config": {"auto_reconnect": true,
                "call_details": true}}),
            "config comes first"
        );
        call
    }

    async fn open(url: &str) -> Result<Self, tungstenite::Error> {
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(Self { ws })
    }

    async fn send(&mut self, value: &Value) {
        self.ws
            .send(Message::text(value.to_string()))
            .await
            .expect("send");
    }

    /// Sends `call_details` for an inbound call from `number` to `agent_1`; returns the begin
    /// message's content.
    async fn details(&mut self, call_id: &str, number: &str) -> String {
        self.send(&json!({"interaction_type": "call_details", "call": {
            "call_type": "phone_call", "call_id": call_id, "agent_id": "agent_1",
            "from_number": number, "to_number": "+14155550100", "direction": "inbound",
            "call_status": "registered", "metadata": {}}}))
            .await;
        self.begin().await
    }

    /// Reads the begin message (`response_id: 0`, complete) and returns its content.
    async fn begin(&mut self) -> String {
        let begin = self.recv().await;
        assert_eq!(begin["response_type"], "response", "{begin}");
        assert_eq!(begin["response_id"], 0, "{begin}");
        assert_eq!(begin["content_complete"], true, "{begin}");
        begin["content"].as_str().unwrap().to_owned()
    }

    async fn request(&mut self, kind: &str, id: i64, transcript: &[(&str, &str)]) {
        let transcript: Vec<Value> = transcript
            .iter()
            .map(|(role, content)| json!({"role": role, "content": content, "words": []}))
            .collect();
        self.send(&json!({"interaction_type": kind, "response_id": id,
            "transcript": transcript}))
            .await;
    }

    /// Reads frames until response `id` completes.
    async fn reply(&mut self, id: i64) -> Reply {
        let mut frames = Vec::new();
        loop {
            let frame = self.recv().await;
            let done = frame["response_type"] == "response"
                && frame["response_id"] == id
                && frame["content_complete"] == true;
            frames.push(frame);
            if done {
                return Reply { frames };
            }
        }
    }

    /// Sends a `ping_pong` and returns how long its echo took, with the frames read before it.
    async fn ping(&mut self, timestamp: i64) -> (Duration, Vec<Value>) {
        let started = Instant::now();
        self.send(&json!({"interaction_type": "ping_pong", "timestamp": timestamp}))
            .await;
        let mut before = Vec::new();
        loop {
            let frame = self.recv().await;
            if frame["response_type"] == "ping_pong" {
                assert_eq!(frame["timestamp"], timestamp);
                return (started.elapsed(), before);
            }
            before.push(frame);
        }
    }

    /// The next text frame as JSON.
    async fn recv(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("a frame within 10 s")
                .expect("the socket is open")
                .expect("a WebSocket message");
            match message {
                Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("unexpected message {other:?}"),
            }
        }
    }

    async fn close(mut self) {
        self.ws.close(None).await.expect("close");
        // Wait for the server's close reply, so the session has ended.
        while let Some(Ok(_)) = self.ws.next().await {}
    }
}

/// The frames of one response.
struct Reply {
    frames: Vec<Value>,
}

impl Reply {
    fn responses(&self) -> impl Iterator<Item = &Value> {
        self.frames
            .iter()
            .filter(|f| f["response_type"] == "response")
    }

    fn text(&self) -> String {
        self.responses()
            .filter_map(|f| f["content"].as_str())
            .collect()
    }

    fn types(&self) -> Vec<&str> {
        self.frames
            .iter()
            .map(|f| f["response_type"].as_str().unwrap())
            .collect()
    }

    fn last(&self) -> &Value {
        self.frames.last().unwrap()
    }

    /// Every response frame is for `id`, exactly one completes it, and it is the last.
    fn assert_well_formed(&self, id: i64) {
        assert!(
            self.responses().all(|f| f["response_id"] == id),
            "{:?}",
            self.frames
        );
        let complete = self
            .responses()
            .filter(|f| f["content_complete"] == true)
            .count();
        assert_eq!(complete, 1, "{:?}", self.frames);
        assert_eq!(self.last()["content_complete"], true);
    }
}

/// The content of every message the mock upstream received in request `i`.
fn messages(app: &TestApp, i: usize) -> Vec<(String, String)> {
    app.upstream.requests()[i]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_owned(),
                m["content"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

async fn seed_caller(app: &TestApp, phone: &str, name: &str) {
    let caller = app.db.store.upsert_caller(phone, Utc::now()).await.unwrap();
    let patch = CallerPatch {
        name: Some(name.into()),
        ..CallerPatch::default()
    };
    app.db
        .store
        .update_caller(caller.caller_id, &patch, Utc::now())
        .await
        .unwrap();
}

async fn a_full_call_streams_every_response_to_completion(backend: Backend) {
    let app = spawn(backend).await;
    seed_caller(&app, MARIA, "Maria").await;
    let mut call = Retell::connect(&app, "call-full").await;

    // Begin: greeted by name once call_details named the caller.
    let greeting = call.details("call-full", MARIA).await;
    assert_eq!(greeting, "Hi Maria, this is Ava. How can I help?");
    let (_, before) = call.ping(1703302407333).await;
    assert!(before.is_empty(), "{before:?}");
    call.send(
        &json!({"interaction_type": "update_only", "turntaking": "user_turn",
        "transcript": [{"role": "agent", "content": greeting}]}),
    )
    .await;

    // A plain response, streamed chunk by chunk.
    app.upstream.push(
        "gpt-test",
        Behavior::text(["Sure, ", "what is the loan for?"]),
    );
    let mut transcript = vec![("agent", greeting.as_str()), ("user", "I need a loan.")];
    call.request("response_required", 1, &transcript).await;
    let reply = call.reply(1).await;
    reply.assert_well_formed(1);
    assert_eq!(reply.text(), "Sure, what is the loan for?");
    assert_eq!(reply.frames.len(), 3, "two chunks and the closing frame");
    let sent = &app.upstream.requests()[0];
    assert_eq!(sent["model"], "gpt-test");
    let tools: Vec<_> = sent["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(tools, ["end_call", "record_answer", "remember_caller"]);
    let sent = messages(&app, 0);
    assert_eq!(sent[0], ("system".into(), PROMPT.into()));
    assert!(
        sent[1].0 == "system" && sent[1].1.contains("\"Maria\""),
        "{sent:?}"
    );
    assert_eq!(sent[2], ("assistant".into(), greeting.clone()));
    assert_eq!(sent[3], ("user".into(), "I need a loan.".into()));

    // redial's own tool inside the response: holding line, invocation, result, follow-up.
    app.upstream.push(
        "gpt-test",
        Behavior::tool_call(
            "record_answer",
            r#"{"field": "loan_purpose", "value": "a car"}"#,
        ),
    );
    app.upstream
        .push("gpt-test", Behavior::text(["Great, a car. ", "How much?"]));
    transcript.extend([("agent", "Sure, what is the loan for?"), ("user", "A car.")]);
    call.request("response_required", 2, &transcript).await;
    let reply = call.reply(2).await;
    reply.assert_well_formed(2);
    assert_eq!(
        reply.types(),
        [
            "response",
            "tool_call_invocation",
            "tool_call_result",
            "response",
            "response",
            "response"
        ]
    );
    assert_eq!(reply.frames[0]["content"], "One moment, please. ");
    let invocation = &reply.frames[1];
    assert_eq!(invocation["name"], "record_answer");
    let arguments: Value = serde_json::from_str(invocation["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments["value"], "a car");
    let result = &reply.frames[2];
    assert_eq!(result["tool_call_id"], invocation["tool_call_id"]);
    assert_eq!(result["successful"], true);
    assert!(result["content"].as_str().unwrap().contains("\"ok\":true"));
    assert_eq!(reply.text(), "One moment, please. Great, a car. How much?");

    // A reminder: the model is told the caller went quiet.
    app.upstream
        .push("gpt-test", Behavior::text(["Are you still there?"]));
    call.request("reminder_required", 3, &transcript).await;
    let reply = call.reply(3).await;
    reply.assert_well_formed(3);
    assert_eq!(reply.text(), "Are you still there?");
    let last = messages(&app, 3).pop().unwrap();
    assert!(last.0 == "system" && last.1.contains("silent"), "{last:?}");

    // The upstream fails: the caller hears the apology, and the response still completes.
    app.upstream.push(
        "gpt-test",
        Behavior::Status {
            code: 500,
            body: "boom".into(),
        },
    );
    call.request("response_required", 4, &transcript).await;
    let reply = call.reply(4).await;
    reply.assert_well_formed(4);
    assert_eq!(reply.text(), app.settings.upstream.apology);

    // The model hangs up: a goodbye without filler, and end_call on the closing frame.
    app.upstream.push(
        "gpt-test",
        Behavior::ToolCalls {
            text_before: Some("Goodbye, Maria!".into()),
            calls: vec![("end_call".into(), "{}".into())],
        },
    );
    transcript.push(("user", "That's all, bye."));
    call.request("response_required", 5, &transcript).await;
    let reply = call.reply(5).await;
    reply.assert_well_formed(5);
    assert_eq!(reply.text(), "Goodbye, Maria!");
    assert_eq!(reply.last()["end_call"], true);
    assert!(
        reply.frames[..reply.frames.len() - 1]
            .iter()
            .all(|f| f.get("end_call").is_none())
    );
    call.close().await;

    // Everything is stored: the greeting, the confirmed answer, the turns.
    app.settle().await;
    let (session, caller) = app.stored_call(Platform::Retell, "call-full").await;
    assert_eq!(session.assistant_id, "agent_1");
    assert_eq!(caller.unwrap().phone, MARIA);
    assert_eq!(session.answers["loan_purpose"].value, "a car");
    let turns = app.db.store.list_turns(session.session_id).await.unwrap();
    assert_eq!(turns[0].content, greeting);
    assert!(turns.iter().any(|t| t.content == "Goodbye, Maria!"));
    app.teardown().await;
}

async fn a_newer_request_supersedes_the_response_in_progress(backend: Backend) {
    let app = spawn(backend).await;
    let mut call = Retell::connect(&app, "call-super").await;
    call.details("call-super", MARIA).await;
    app.upstream.push(
        "gpt-test",
        Behavior::Text {
            chunks: vec!["one ".into(); 8],
            ttft: Duration::ZERO,
            gap: Duration::from_millis(250),
        },
    );
    app.upstream
        .push("gpt-test", Behavior::text(["Second answer."]));

    call.request("response_required", 1, &[("user", "Tell me")])
        .await;
    let first = call.recv().await;
    assert_eq!(
        (&first["response_id"], &first["content_complete"]),
        (&json!(1), &json!(false))
    );
    call.request(
        "response_required",
        2,
        &[("user", "Tell me about Thursday at ten.")],
    )
    .await;
    let reply = call.reply(2).await;

    // Nothing for id 1 follows id 2's first frame, and id 1 is never completed.
    let first_new = reply
        .frames
        .iter()
        .position(|f| f["response_id"] == 2)
        .unwrap();
    assert!(
        reply.frames[first_new..]
            .iter()
            .all(|f| f["response_id"] == 2),
        "{:?}",
        reply.frames
    );
    assert!(
        reply
            .frames
            .iter()
            .all(|f| f["response_id"] != 1 || f["content_complete"] == false)
    );
    assert_eq!(
        reply
            .responses()
            .filter(|f| f["response_id"] == 2)
            .filter_map(|f| f["content"].as_str())
            .collect::<String>(),
        "Second answer."
    );
    // Long after id 1 would have streamed on, the next frame is still only the pong.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (_, stray) = call.ping(9).await;
    assert!(stray.is_empty(), "frames after supersession: {stray:?}");
    call.close().await;

    // The superseded reply was stopped and stored as partial.
    app.settle().await;
    let (session, _) = app.stored_call(Platform::Retell, "call-super").await;
    let turns = app.db.store.list_turns(session.session_id).await.unwrap();
    let cut = turns
        .iter()
        .find(|t| t.content.starts_with("one "))
        .expect("the superseded reply is stored");
    assert!(
        cut.partial && cut.content.len() < "one ".len() * 8,
        "{cut:?}"
    );
    assert!(
        turns
            .iter()
            .any(|t| t.content == "Second answer." && !t.partial)
    );
    app.teardown().await;
}

async fn ping_pong_is_echoed_while_a_response_is_generating(backend: Backend) {
    let app = spawn(backend).await;
    let mut call = Retell::connect(&app, "call-ping").await;
    call.details("call-ping", MARIA).await;
    app.upstream.push(
        "gpt-test",
        Behavior::Text {
            chunks: vec!["word ".into(); 6],
            ttft: Duration::ZERO,
            gap: Duration::from_millis(300),
        },
    );

    call.request("response_required", 1, &[("user", "Talk slowly")])
        .await;
    assert_eq!(call.recv().await["response_id"], 1);
    let (echo, _) = call.ping(42).await;
    let rest = call.reply(1).await;

    assert!(echo < Duration::from_secs(1), "pong took {echo:?}");
    assert!(
        rest.responses().any(|f| f["content"] == "word "),
        "the response was still generating when the pong went out"
    );
    rest.assert_well_formed(1);
    call.close().await;
    app.teardown().await;
}

async fn bad_frames_are_ignored_and_large_transcripts_accepted(backend: Backend) {
    let app = spawn(backend).await;
    let mut call = Retell::connect(&app, "call-junk").await;
    call.details("call-junk", MARIA).await;

    call.ws
        .send(Message::binary(vec![1_u8, 2, 3]))
        .await
        .unwrap();
    for junk in [
        "{not json",
        r#"{"interaction_type": "dance"}"#,
        r#"{"interaction_type": "reminder_required", "transcript": []}"#,
        r#"{"interaction_type": "response_required", "response_id": "7"}"#,
        r#"{"interaction_type": "update_only", "transcript": []}"#,
    ] {
        call.ws.send(Message::text(junk)).await.unwrap();
    }
    let (_, answered) = call.ping(5).await;
    assert!(answered.is_empty(), "junk was answered: {answered:?}");

    // About 3 MB in one frame: Retell resends the whole call, with word timings, every time.
    let words: Vec<Value> = (0..150)
        .map(|i| json!({"word": "blah", "start": f64::from(i) * 0.25, "end": f64::from(i) * 0.25 + 0.2}))
        .collect();
    let mut transcript: Vec<Value> = (0..600)
        .map(|i| {
            let role = if i % 2 == 0 { "user" } else { "agent" };
            json!({"role": role, "content": "blah ".repeat(100), "words": words})
        })
        .collect();
    transcript.push(json!({"role": "user", "content": "So?", "words": []}));
    let frame = json!({"interaction_type": "response_required", "response_id": 1,
        "transcript": transcript});
    assert!(frame.to_string().len() > 3_000_000);
    call.send(&frame).await;
    let reply = call.reply(1).await;

    reply.assert_well_formed(1);
    assert_eq!(reply.text(), "Hello ".repeat(5), "the mock's default reply");
    assert_eq!(
        app.upstream.requests().len(),
        1,
        "only the valid request ran"
    );
    assert_eq!(
        messages(&app, 0).len(),
        603,
        "the prompt, the summary and every utterance"
    );
    call.close().await;
    app.teardown().await;
}

async fn a_reconnect_after_a_restart_continues_the_call_without_a_second_greeting(
    backend: Backend,
) {
    let app = spawn(backend).await;
    let mut call = Retell::connect(&app, "call-re").await;
    assert_eq!(call.details("call-re", MARIA).await, GREETING_UNKNOWN);
    app.upstream.push(
        "gpt-test",
        Behavior::Text {
            chunks: vec!["What is ".into(), "the loan ".into(), "for?".into()],
            ttft: Duration::ZERO,
            gap: Duration::from_millis(150),
        },
    );
    call.request("response_required", 1, &[("user", "Hi")])
        .await;
    assert_eq!(call.recv().await["content"], "What is ");

    // redial restarts mid-response: the response in progress still completes; then the socket
    // ends without a close frame (a close frame would hang up the call), so Retell reconnects —
    // here, to the new process.
    let app = app.restart().await;
    let rest = call.reply(1).await;
    rest.assert_well_formed(1);
    assert_eq!(rest.text(), "the loan for?");
    let ended = tokio::time::timeout(Duration::from_secs(5), call.ws.next())
        .await
        .expect("the socket ends on shutdown");
    assert!(!matches!(ended, Some(Ok(Message::Close(_)))), "{ended:?}");

    let mut call = Retell::connect(&app, "call-re").await;
    let begin = call.details("call-re", MARIA).await;
    assert_eq!(begin, "", "a reconnect is not greeted again");
    app.upstream.push("gpt-test", Behavior::text(["Got it."]));
    call.request(
        "response_required",
        2,
        &[
            ("user", "Hi"),
            ("agent", "What is the loan for?"),
            ("user", "A boat."),
        ],
    )
    .await;
    let reply = call.reply(2).await;
    reply.assert_well_formed(2);
    assert_eq!(reply.text(), "Got it.");
    call.close().await;

    app.settle().await;
    let (session, caller) = app.stored_call(Platform::Retell, "call-re").await;
    assert_eq!(
        caller.unwrap().call_count,
        1,
        "one call, however many sockets"
    );
    let turns = app.db.store.list_turns(session.session_id).await.unwrap();
    let greetings = turns
        .iter()
        .filter(|t| t.content == GREETING_UNKNOWN)
        .count();
    assert_eq!(greetings, 1);
    assert!(turns.iter().any(|t| t.content == "A boat."));
    app.teardown().await;
}

async fn a_second_call_from_the_same_number_is_recognised(backend: Backend) {
    let app = spawn(backend).await;
    let mut call = Retell::connect(&app, "call-one").await;
    assert_eq!(call.details("call-one", MARIA).await, GREETING_UNKNOWN);
    app.upstream.push(
        "gpt-test",
        Behavior::tool_call("remember_caller", r#"{"name": "Maria"}"#),
    );
    app.upstream
        .push("gpt-test", Behavior::text(["Nice to meet you, Maria."]));
    call.request(
        "response_required",
        1,
        &[("agent", GREETING_UNKNOWN), ("user", "I'm Maria.")],
    )
    .await;
    let reply = call.reply(1).await;
    reply.assert_well_formed(1);
    assert_eq!(reply.frames[1]["name"], "remember_caller");
    assert!(reply.text().ends_with("Nice to meet you, Maria."));
    call.close().await;
    app.settle().await;

    // The same number, formatted differently, on a new call.
    let mut call = Retell::connect(&app, "call-two").await;
    let greeting = call.details("call-two", "+1 (415) 555-0123").await;
    assert_eq!(greeting, "Hi Maria, this is Ava. How can I help?");
    call.request(
        "response_required",
        1,
        &[("agent", &greeting), ("user", "Me again.")],
    )
    .await;
    call.reply(1).await.assert_well_formed(1);
    call.close().await;

    let summary = messages(&app, 2)[1].1.clone();
    let today = Utc::now().format("%Y-%m-%d").to_string();
    assert!(
        summary.contains(&format!("Previous calls: 1; last call on {today}"))
            && summary.contains("\"Maria\""),
        "{summary}"
    );
    app.teardown().await;
}

async fn without_call_details_the_caller_is_greeted_after_a_short_wait(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        retell_settings(s);
        s.assistants[0].id = "default".into();
    })
    .await;
    let started = Instant::now();
    let mut call = Retell::connect(&app, "call-quiet").await;

    let begin = call.begin().await;

    assert_eq!(begin, GREETING_UNKNOWN);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    call.request("response_required", 1, &[("user", "Hello?")])
        .await;
    call.reply(1).await.assert_well_formed(1);
    call.close().await;
    app.teardown().await;
}

async fn the_socket_needs_the_key_in_its_url(backend: Backend) {
    let app = spawn(backend).await;
    let base = format!("ws://{}/retell/llm-websocket", app.addr);
    for url in [
        format!("{base}/call-k"),
        format!("{base}/call-k?key=nope"),
        format!("{base}/nope/call-k"),
    ] {
        let refused = Retell::open(&url).await.err().expect("refused");
        let tungstenite::Error::Http(response) = refused else {
            panic!("{url}: {refused:?}")
        };
        assert_eq!(response.status(), 401, "{url}");
    }
    for url in [
        format!("{base}/call-k?key={API_KEY}"),
        format!("{base}/{API_KEY}/call-k"),
    ] {
        let mut call = Retell::open(&url).await.expect(&url);
        assert_eq!(call.recv().await["response_type"], "config");
        call.close().await;
    }
    // A plain GET (no upgrade) with a valid key is a client error, not a crash.
    let plain = app
        .client
        .get(format!(
            "http://{}/retell/llm-websocket/{API_KEY}/call-k",
            app.addr
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 400);
    app.teardown().await;

    // Dev mode (no keys) serves loopback without a key; without a model Retell is refused.
    let app = TestApp::spawn_with(backend, |s| {
        retell_settings(s);
        s.server.api_keys.clear();
    })
    .await;
    let mut call = Retell::open(&format!("ws://{}/retell/llm-websocket/call-d", app.addr))
        .await
        .expect("dev mode");
    assert_eq!(call.recv().await["response_type"], "config");
    call.close().await;
    app.teardown().await;
    let app = TestApp::spawn(backend).await;
    let refused = Retell::open(&format!(
        "ws://{}/retell/llm-websocket/{API_KEY}/call-m",
        app.addr
    ))
    .await
    .err()
    .expect("refused");
    assert!(matches!(refused, tungstenite::Error::Http(r) if r.status() == 503));
    app.teardown().await;
}

/// Polls the stored session of `call_id` until `done` holds, for at most `within`.
async fn session_when(
    app: &TestApp,
    call_id: &str,
    within: Duration,
    done: impl Fn(&CallSession) -> bool,
) -> CallSession {
    let deadline = Instant::now() + within;
    loop {
        let (session, _) = app.stored_call(Platform::Retell, call_id).await;
        if done(&session) || Instant::now() > deadline {
            return session;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_socket_closed_without_end_call_is_dropped_after_the_grace_and_a_redial_resumes_it(
    backend: Backend,
) {
    let app = spawn(backend).await;
    let grace = app.settings.memory.retell_reconnect_grace_secs;
    assert_eq!(grace, 5, "the shipped default");
    let mut call = Retell::connect(&app, "call-cut").await;
    assert_eq!(call.details("call-cut", MARIA).await, GREETING_UNKNOWN);
    call.request("response_required", 1, &[("user", "Hi, I need a loan.")])
        .await;
    call.reply(1).await.assert_well_formed(1);
    // The line drops: the socket closes, no end_call, no reconnect, no webhook.
    call.close().await;
    let closed = Instant::now();

    let dropped = session_when(&app, "call-cut", Duration::from_secs(grace + 3), |s| {
        s.status != SessionStatus::Active
    })
    .await;
    assert_eq!(dropped.status, SessionStatus::Dropped);
    assert!(
        closed.elapsed() >= Duration::from_secs(grace) - Duration::from_millis(200),
        "not before the grace is over"
    );

    // The caller redials at once (well within the live window): the call resumes.
    let mut call = Retell::connect(&app, "call-again").await;
    call.details("call-again", MARIA).await;
    call.request("response_required", 1, &[("user", "Sorry, I got cut off.")])
        .await;
    call.reply(1).await.assert_well_formed(1);
    call.close().await;
    let again = session_when(&app, "call-again", Duration::from_secs(1), |_| true).await;
    assert_eq!(
        (again.attempt, again.resumes_session_id),
        (2, Some(dropped.session_id))
    );
    app.teardown().await;
}

async fn a_reconnect_within_the_grace_continues_the_call(backend: Backend) {
    let app = spawn(backend).await;
    let grace = Duration::from_secs(app.settings.memory.retell_reconnect_grace_secs);
    let mut call = Retell::connect(&app, "call-blip").await;
    assert_eq!(call.details("call-blip", MARIA).await, GREETING_UNKNOWN);
    call.close().await;

    // Retell reconnects the same call within the grace.
    let mut call = Retell::connect(&app, "call-blip").await;
    assert_eq!(
        call.details("call-blip", MARIA).await,
        "",
        "no second greeting"
    );
    tokio::time::sleep(grace + Duration::from_secs(1)).await;
    app.upstream.push("gpt-test", Behavior::text(["Go on."]));
    call.request("response_required", 1, &[("user", "Still there?")])
        .await;
    let reply = call.reply(1).await;
    reply.assert_well_formed(1);
    assert_eq!(reply.text(), "Go on.");

    let session = session_when(&app, "call-blip", Duration::ZERO, |_| true).await;
    assert_eq!(session.status, SessionStatus::Active, "the call goes on");
    assert_eq!((session.attempt, session.ended_at), (1, None));
    call.close().await;
    app.teardown().await;
}

async fn a_socket_closed_after_end_call_is_ended_not_dropped(backend: Backend) {
    let app = spawn(backend).await;
    let grace = app.settings.memory.retell_reconnect_grace_secs;
    let mut call = Retell::connect(&app, "call-bye").await;
    call.details("call-bye", MARIA).await;
    app.upstream.push(
        "gpt-test",
        Behavior::ToolCalls {
            text_before: Some("Goodbye!".into()),
            calls: vec![("end_call".into(), "{}".into())],
        },
    );
    call.request("response_required", 1, &[("user", "That's all, bye.")])
        .await;
    let reply = call.reply(1).await;
    assert_eq!(reply.frames.last().unwrap()["end_call"], true);
    // Retell hangs up once the goodbye is spoken.
    call.close().await;

    let ended = session_when(&app, "call-bye", Duration::from_secs(grace + 3), |s| {
        s.status != SessionStatus::Active
    })
    .await;
    assert_eq!(ended.status, SessionStatus::Ended);
    assert_eq!(
        ended.ended_reason.as_deref(),
        Some("the agent ended the call (end_call)")
    );
    app.teardown().await;
}

/// A Retell call is warmed by its `call_details` (the greeting reads and keeps the call's
/// memory), so its first response reads nothing from the database: a change made behind the
/// cache's back (Postgres triggers off: no notice) after the greeting is not in the first
/// prompt. (Postgres only: a SQLite store reports every write it makes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Postgres at TEST_DATABASE_URL: run scripts/test.sh"]
async fn the_first_response_of_a_call_warmed_by_its_details_reads_nothing() {
    use sqlx::Connection as _;
    let app = spawn(Backend::Postgres).await;
    // Every write here goes behind the cache's back: the seed's own change notice, delivered
    // whenever the listener gets to it, would otherwise reach the cache during the warm-up
    // (on a loaded machine) and keep the warmed memory out, as it should.
    let mut admin = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    sqlx::query("set session_replication_role = replica")
        .execute(&mut admin)
        .await
        .unwrap();
    app.db.store.upsert_caller(MARIA, Utc::now()).await.unwrap();
    sqlx::query("update caller set name = 'Maria' where phone = $1")
        .bind(MARIA)
        .execute(&mut admin)
        .await
        .unwrap();
    let mut call = Retell::connect(&app, "call-warm").await;
    let greeting = call.details("call-warm", MARIA).await;
    assert_eq!(greeting, "Hi Maria, this is Ava. How can I help?");
    // The greeting was chosen from the stored call: it is warmed.
    app.stored_call(Platform::Retell, "call-warm").await;

    sqlx::query("update caller set name = 'Hidden' where phone = $1")
        .bind(MARIA)
        .execute(&mut admin)
        .await
        .unwrap();

    app.upstream
        .push("gpt-test", Behavior::text(["What is the loan for?"]));
    call.request(
        "response_required",
        1,
        &[("agent", greeting.as_str()), ("user", "I need a loan.")],
    )
    .await;
    call.reply(1).await.assert_well_formed(1);
    let summary = &messages(&app, 0)[1].1;
    assert!(
        summary.contains("\"Maria\"") && !summary.contains("Hidden"),
        "the first response read the database instead of the warmed memory: {summary}"
    );
    call.close().await;
    app.teardown().await;
}

async fn a_call_whose_agent_has_no_model_is_refused_and_the_others_are_served(backend: Backend) {
    // Only agent_1 has a model: agent_2 and agents without an entry have none.
    let app = TestApp::spawn_with(backend, |s| {
        retell_settings(s);
        s.upstream.model.clear();
        s.assistants[0].model = "gpt-test".into();
        s.assistants.push(AssistantSettings {
            id: "agent_2".into(),
            greeting: "Hello from agent 2.".into(),
            ..AssistantSettings::default()
        });
    })
    .await;
    /// Reads until the server closes the socket; the close code, reason and frames read first.
    async fn closed(call: &mut Retell) -> (u16, String, Vec<Value>) {
        let mut frames = Vec::new();
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), call.ws.next())
                .await
                .expect("the socket closes within 10 s");
            match message {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (frame.code.into(), frame.reason.to_string(), frames);
                }
                Some(Ok(Message::Text(text))) => {
                    frames.push(serde_json::from_str(text.as_str()).unwrap());
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }
    let details = |call_id: &str, agent: &str| {
        json!({"interaction_type": "call_details", "call": {
            "call_type": "phone_call", "call_id": call_id, "agent_id": agent,
            "from_number": MARIA, "to_number": "+14155550100", "direction": "inbound",
            "call_status": "registered", "metadata": {}}})
    };

    // agent_2: refused once call_details name it, before the greeting.
    let mut call = Retell::connect(&app, "call-nomodel").await;
    call.send(&details("call-nomodel", "agent_2")).await;
    let (code, reason, frames) = closed(&mut call).await;
    assert_eq!(code, 1011);
    assert!(reason.contains("no model"), "{reason}");
    assert!(frames.is_empty(), "nothing is said: {frames:?}");

    // An agent without an entry, asked before call_details: refused, nothing generated.
    let mut call = Retell::connect(&app, "call-unlisted").await;
    call.request("response_required", 1, &[("user", "Hello?")])
        .await;
    let (code, _, frames) = closed(&mut call).await;
    assert_eq!(code, 1011);
    assert!(frames.is_empty(), "{frames:?}");

    // agent_1 has its model: served as usual.
    let mut call = Retell::connect(&app, "call-served").await;
    call.send(&details("call-served", "agent_1")).await;
    assert_eq!(call.begin().await, GREETING_UNKNOWN);
    call.request("response_required", 1, &[("user", "Hello?")])
        .await;
    call.reply(1).await.assert_well_formed(1);
    call.close().await;
    app.settle().await;

    let sent = app.upstream.requests();
    assert_eq!(sent.len(), 1, "only the served call went upstream");
    assert_eq!(sent[0]["model"], "gpt-test");
    for refused in ["call-nomodel", "call-unlisted"] {
        let stored = app.db.store.load_call(Platform::Retell, refused).await;
        assert!(stored.unwrap().is_none(), "{refused} stored nothing");
    }
    app.teardown().await;
}
