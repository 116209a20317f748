//! The fault benchmark's callers: Vapi-shaped streaming calls with a growing history, every
//! third turn confirming an answer through `record_answer` (scripted per caller on the mock
//! upstream), paced so that the callers together make a steady number of turns a second.
//! Each caller remembers what it was answered, which is what must end up stored.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::mock::{Behavior, MockUpstream};
use crate::sse::SseParser;
use crate::suite::API_KEY;

/// The scripted fields of the benchmark's assistant (see [`ASSISTANT_ID`]).
pub const FIELDS: [&str; 2] = ["loan_purpose", "amount"];
/// The assistant every call talks to; redial is configured with it and its [`FIELDS`].
pub const ASSISTANT_ID: &str = "fault-asst";
/// Per-request timeout: a turn slower than this counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Failures kept verbatim for the report (the rest are only counted).
const KEPT_FAILURES: usize = 20;

/// Where the load stands, for sorting first-token times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// Connections opening, first writes: not part of the baseline.
    Warmup = 0,
    /// The database is up: the baseline.
    Normal = 1,
    /// The proxy is cut.
    Outage = 2,
    /// The proxy is restored; the journal is being replayed.
    Recovery = 3,
}

impl Phase {
    fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Warmup,
            1 => Self::Normal,
            2 => Self::Outage,
            _ => Self::Recovery,
        }
    }
}

/// The shape of the load.
#[derive(Clone, Debug)]
pub struct LoadShape {
    /// Concurrent callers (one model name, one phone number each).
    pub callers: usize,
    /// Time between one caller's turn starts.
    pub turn_interval: Duration,
    /// Turns per call before the caller starts a new call.
    pub turns_per_call: usize,
}

/// What one call said and was answered, and therefore what must be stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallLog {
    /// The platform call id (`call_session.call_key`).
    pub id: String,
    /// The caller's words of each answered turn.
    pub said: Vec<String>,
    /// The reply heard for each answered turn.
    pub replies: Vec<String>,
    /// Last confirmed value per field.
    pub answers: BTreeMap<String, String>,
    /// Answered turns that went through `record_answer`.
    pub tool_turns: usize,
}

/// Everything the callers saw.
#[derive(Debug, Default)]
pub struct LoadLog {
    /// Every call (including ones with no answered turn).
    pub calls: Vec<CallLog>,
    /// Turns that failed (error, bad status, wrong or incomplete reply).
    pub failed: u64,
    /// The first [`KEPT_FAILURES`] failures, verbatim.
    pub failures: Vec<String>,
    /// Time to first token of each answered turn that began and ended in one phase.
    pub ttft: BTreeMap<Phase, Vec<Duration>>,
}

impl LoadLog {
    /// Turns answered in full.
    pub fn answered(&self) -> u64 {
        self.calls.iter().map(|call| call.said.len() as u64).sum()
    }

    fn absorb(&mut self, other: Self) {
        self.calls.extend(other.calls);
        self.failed += other.failed;
        let room = KEPT_FAILURES.saturating_sub(self.failures.len());
        self.failures.extend(other.failures.into_iter().take(room));
        for (phase, samples) in other.ttft {
            self.ttft.entry(phase).or_default().extend(samples);
        }
    }
}

/// The callers, running.
#[derive(Debug)]
pub struct Callers {
    phase: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<LoadLog>>,
}

impl Callers {
    /// Starts `shape.callers` callers against redial at `base_url`, scripting `mock`.
    /// `tag` keeps call ids and model names of different runs apart.
    pub fn start(base_url: &str, mock: &MockUpstream, tag: &str, shape: &LoadShape) -> Self {
        let phase = Arc::new(AtomicU8::new(Phase::Warmup as u8));
        let stop = Arc::new(AtomicBool::new(false));
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .unwrap_or_default();
        let tasks = (0..shape.callers)
            .map(|n| {
                let caller = Caller {
                    name: format!("{tag}-c{n}"),
                    phone: format!("+1415{:07}", n % 10_000_000),
                    chat_url: format!("{base_url}/v1/chat/completions"),
                    mock: mock.clone(),
                    client: client.clone(),
                    phase: Arc::clone(&phase),
                    shape: shape.clone(),
                    generation: 0,
                };
                tokio::spawn(caller.talk(Arc::clone(&stop)))
            })
            .collect();
        Self { phase, stop, tasks }
    }

    /// Marks the phase later turns belong to.
    pub fn set(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::SeqCst);
    }

    /// Stops the callers after their current turn and collects what they saw.
    pub async fn finish(self) -> LoadLog {
        self.stop.store(true, Ordering::SeqCst);
        let mut log = LoadLog::default();
        for task in self.tasks {
            match task.await {
                Ok(caller) => log.absorb(caller),
                Err(error) => {
                    log.failed += 1;
                    log.failures.push(format!("a caller task failed: {error}"));
                }
            }
        }
        log
    }
}

/// One caller: calls of `turns_per_call` turns, one after another, from one number.
struct Caller {
    name: String,
    phone: String,
    chat_url: String,
    mock: MockUpstream,
    client: reqwest::Client,
    phase: Arc<AtomicU8>,
    shape: LoadShape,
    /// Bumped after a failed turn: the mock's script for the old model name may hold
    /// behaviours the failed turn never consumed.
    generation: u32,
}

/// A turn's outcome.
enum Turn {
    Answered,
    Failed(String),
}

impl Caller {
    fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::SeqCst))
    }

    fn model(&self) -> String {
        format!("{}-m{}", self.name, self.generation)
    }

    async fn talk(mut self, stop: Arc<AtomicBool>) -> LoadLog {
        let mut log = LoadLog::default();
        let mut ticks = tokio::time::interval(self.shape.turn_interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut number = 0;
        'calls: while !stop.load(Ordering::SeqCst) {
            let mut call = CallLog {
                id: format!("{}-{number}", self.name),
                ..CallLog::default()
            };
            number += 1;
            for turn in 0..self.shape.turns_per_call {
                ticks.tick().await;
                if stop.load(Ordering::SeqCst) {
                    log.calls.push(call);
                    break 'calls;
                }
                if let Turn::Failed(failure) = self.turn(&mut call, turn, &mut log).await {
                    log.failed += 1;
                    if log.failures.len() < KEPT_FAILURES {
                        log.failures.push(failure);
                    }
                    // A fresh call and model name: the history and the script stay consistent.
                    self.generation += 1;
                    break;
                }
            }
            log.calls.push(call);
        }
        log
    }

    /// One turn: every third one (1, 4, 7, …) confirms an answer through `record_answer`.
    async fn turn(&self, call: &mut CallLog, turn: usize, log: &mut LoadLog) -> Turn {
        let model = self.model();
        let said = format!("{} says {turn}", call.id);
        let reply = format!("Reply {turn} to {}.", call.id);
        let answer = (turn % 3 == 1).then(|| {
            let field = FIELDS[(turn / 3) % FIELDS.len()];
            (field, format!("{field} {turn} of {}", call.id))
        });
        if let Some((field, value)) = &answer {
            let arguments = json!({"field": field, "value": value}).to_string();
            self.mock
                .push(&model, Behavior::tool_call("record_answer", arguments));
        }
        let (first, rest) = reply.split_at(6);
        self.mock.push(&model, Behavior::text([first, rest]));
        let phase = self.phase();
        let body = self.body(call, &said, &model);
        let started = Instant::now();
        let heard = match self.stream(&body).await {
            Ok(heard) => heard,
            Err(error) => return Turn::Failed(format!("{said}: {error}")),
        };
        if heard.text != reply {
            return Turn::Failed(format!("{said}: heard {:?}, not {reply:?}", heard.text));
        }
        if self.phase() == phase {
            let ttft = heard.first.saturating_duration_since(started);
            log.ttft.entry(phase).or_default().push(ttft);
        }
        call.said.push(said);
        call.replies.push(reply);
        if let Some((field, value)) = answer {
            call.answers.insert(field.to_owned(), value);
            call.tool_turns += 1;
        }
        Turn::Answered
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
            "call": {"id": call.id, "assistantId": ASSISTANT_ID, "customer": customer},
            "customer": customer,
        })
    }

    async fn stream(&self, body: &Value) -> Result<Heard, String> {
        let mut response = self
            .client
            .post(&self.chat_url)
            .bearer_auth(API_KEY)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if response.status() != 200 {
            return Err(format!("status {}", response.status()));
        }
        let mut parser = SseParser::new();
        let (mut text, mut first, mut done) = (String::new(), None, false);
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            for data in parser.feed(&chunk) {
                if data.trim() == "[DONE]" {
                    done = true;
                    continue;
                }
                let chunk: Value = serde_json::from_str(&data).map_err(|e| e.to_string())?;
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
}

struct Heard {
    text: String,
    first: Instant,
}

/// The `[[assistants]]` TOML redial is started with: [`ASSISTANT_ID`] asking for [`FIELDS`].
pub fn assistant_toml() -> String {
    let mut toml = format!("[[assistants]]\nid = \"{ASSISTANT_ID}\"\n");
    for field in FIELDS {
        toml.push_str(&format!(
            "[[assistants.fields]]\nname = \"{field}\"\nquestion = \"What is the {field}?\"\n"
        ));
    }
    toml
}
