//! The call simulator: plays whole calls against a running redial and the mock upstream, from
//! scenario files, and reports what a caller would have suffered.
//!
//! A scenario ([`scenario::Scenario`], TOML under `bench/scenarios/`) names the platforms it is
//! played on (Vapi and ElevenLabs over HTTP, Retell over its WebSocket), its repetitions, and its
//! calls: who calls, when (at an offset, or N ms after another call ended), what the caller says
//! and what the upstream answers each turn (text with its latency, `record_answer` /
//! `remember_caller`, platform tools, failures, replies cut mid-stream), faults (the caller hangs
//! up mid-reply, the gateway is SIGKILLed and restarted, a Retell socket drops and reconnects),
//! and the call-ended webhook (missing, on time, late, duplicated; signed).
//!
//! Per call and in total the [`report::Report`] counts silent turns (a stream that ended with
//! nothing spoken), re-asked answers (a confirmed field's question offered to the model as the
//! next question: read from the upstream requests the mock recorded), repeated greetings, missed
//! and wrong resumptions, and the time to the first spoken token over the upstream's own.
//!
//! Turns are played one at a time (concurrent calls interleave turn by turn): redial sends every
//! chat request to one model (`upstream.model`, which Retell needs), so the mock's scripted
//! replies are attributed by order, and requests to turns by their last user message.

pub mod check;
pub mod drive;
pub mod gateway;
pub mod report;
pub mod scenario;
pub mod webhook;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::join_all;
use serde_json::{Value, json};
use tokio::sync::{Mutex, watch};

use crate::mock::{Behavior, MockUpstream};
use check::FIELDS;
use drive::{Ending, Fault, HttpCall, Outcome, RetellCall};
use gateway::Gateway;
use report::{CallReport, Report};
use scenario::{CallSpec, CallerChoice, EndKind, PlatformKind, Scenario, TurnSpec, WebhookTiming};
use webhook::{EndedCall, WebhookSecrets};

/// The model every chat request reaches the mock with (`upstream.model`).
pub const CHAT_MODEL: &str = "sim-model";
/// `analysis.model`: kept apart so post-call analyses never take a turn's scripted reply.
pub const ANALYSIS_MODEL: &str = "sim-analyst";
/// The assistant (Vapi assistant, ElevenLabs and Retell agent) every call talks to.
pub const ASSISTANT_ID: &str = "sim-loan";
/// The API key an owned redial accepts.
pub const API_KEY: &str = "sim-key";
/// Area codes for generated caller numbers (`+1 AAA 555 01NN`, valid NANP numbers).
const AREAS: [u16; 20] = [
    415, 212, 312, 617, 206, 303, 512, 404, 305, 702, 213, 646, 718, 202, 503, 615, 919, 612, 314,
    216,
];
/// Most platform-tool round trips in one turn.
const MAX_TOOL_ROUNDS: usize = 3;

/// redial's config for the simulator, without `[server] listen` (see [`gateway::OwnedSettings`]).
pub fn redial_config(
    database_url: &str,
    journal_dir: &str,
    upstream_base_url: &str,
    secrets: &WebhookSecrets,
) -> String {
    let q = |s: &str| Value::from(s).to_string();
    let mut config = format!(
        "api_keys = [{}]\n\n[database]\nurl = {}\njournal_dir = {}\n\n\
         [upstream]\nbase_url = {}\napi_key = \"mock\"\nmodel = {}\n\n\
         [analysis]\nmodel = {}\n\n\
         [webhooks]\nvapi_secret = {}\nretell_api_key = {}\nelevenlabs_secret = {}\n\n",
        q(API_KEY),
        q(database_url),
        q(journal_dir),
        q(upstream_base_url),
        q(CHAT_MODEL),
        q(ANALYSIS_MODEL),
        q(&secrets.vapi),
        q(&secrets.retell),
        q(&secrets.elevenlabs),
    );
    config.push_str(&assistant_config());
    config
}

/// The `[[assistants]]` table of the simulator's assistant: the prompt, a greeting, and the
/// three scripted fields of [`check::FIELDS`].
pub fn assistant_config() -> String {
    let q = |s: &str| Value::from(s).to_string();
    let mut config = format!(
        "[[assistants]]\nid = {}\nsystem_prompt = {}\ngreeting = {}\ngreeting_unknown = {}\n",
        q(ASSISTANT_ID),
        q(drive::SYSTEM_PROMPT),
        q("Hi {name}, this is Ava. How can I help?"),
        q("Hi, this is Ava. How can I help?"),
    );
    for field in &FIELDS {
        config.push_str(&format!(
            "\n[[assistants.fields]]\nname = {}\nquestion = {}\nrequired = true\n",
            q(field.name),
            q(field.question)
        ));
    }
    config
}

/// Keeps only the scenarios to run: the CI subset when `ci_only`, names containing `filter`.
pub fn select(scenarios: Vec<Scenario>, ci_only: bool, filter: Option<&str>) -> Vec<Scenario> {
    scenarios
        .into_iter()
        .filter(|s| !ci_only || s.ci)
        .filter(|s| filter.is_none_or(|f| s.name.contains(f)))
        .collect()
}

/// Plays scenarios against a gateway and a mock upstream.
pub struct Simulator {
    gateway: Gateway,
    mock: MockUpstream,
    secrets: WebhookSecrets,
    client: reqwest::Client,
    /// One turn at a time: the mock's replies are scripted in order.
    turn_lock: Mutex<()>,
    analyses_queued: AtomicUsize,
    next_number: AtomicU32,
    run_id: String,
}

/// One scenario played on one platform, one repetition.
struct Instance<'a> {
    scenario: &'a Scenario,
    platform: PlatformKind,
    repetition: u32,
    caller: String,
    other_caller: String,
}

/// Calls of an instance announce their end (with their confirmed fields) to calls that follow.
struct Ends {
    senders: HashMap<String, watch::Sender<Option<BTreeSet<String>>>>,
}

impl Ends {
    fn new(calls: &[CallSpec]) -> Self {
        let senders = calls
            .iter()
            .map(|c| (c.name.clone(), watch::channel(None).0))
            .collect();
        Self { senders }
    }

    /// Waits until `name` ended; returns its confirmed fields.
    async fn wait(&self, name: &str) -> BTreeSet<String> {
        let Some(sender) = self.senders.get(name) else {
            return BTreeSet::new();
        };
        let mut receiver = sender.subscribe();
        match receiver.wait_for(Option::is_some).await {
            Ok(value) => value.clone().unwrap_or_default(),
            Err(_) => BTreeSet::new(),
        }
    }

    fn finish(&self, name: &str, confirmed: &BTreeSet<String>) {
        if let Some(sender) = self.senders.get(name) {
            sender.send_replace(Some(confirmed.clone()));
        }
    }
}

/// A call's platform side.
enum Line {
    Http(HttpCall),
    Retell(Box<RetellCall>),
}

impl Simulator {
    /// A simulator against `gateway`, whose upstream is `mock`, signing webhooks with `secrets`.
    pub fn new(gateway: Gateway, mock: MockUpstream, secrets: WebhookSecrets) -> Self {
        let run_id = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
            .to_string();
        Self {
            gateway,
            mock,
            secrets,
            client: reqwest::Client::new(),
            turn_lock: Mutex::new(()),
            analyses_queued: AtomicUsize::new(0),
            next_number: AtomicU32::new(0),
            run_id,
        }
    }

    /// The gateway (to shut an owned redial down after the run).
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// Plays every instance of every scenario, one instance at a time.
    pub async fn run(&self, scenarios: &[Scenario]) -> Report {
        let mut calls = Vec::new();
        for scenario in scenarios {
            if scenario.kills() && !self.gateway.owned() {
                note_skipped(&scenario.name);
                continue;
            }
            for &platform in &scenario.platforms {
                for repetition in 1..=scenario.repeat {
                    let instance = Instance {
                        scenario,
                        platform,
                        repetition,
                        caller: self.number(),
                        other_caller: self.number(),
                    };
                    calls.extend(self.play_instance(&instance).await);
                }
            }
        }
        Report::new(calls)
    }

    fn number(&self) -> String {
        let n = self.next_number.fetch_add(1, Ordering::Relaxed) as usize;
        let area = AREAS[(n / 100) % AREAS.len()];
        format!("+1{area}5550{:03}", 100 + n % 100)
    }

    async fn play_instance(&self, instance: &Instance<'_>) -> Vec<CallReport> {
        let ends = Ends::new(&instance.scenario.calls);
        let calls = instance
            .scenario
            .calls
            .iter()
            .map(|spec| self.play_call(instance, spec, &ends));
        join_all(calls).await
    }

    async fn play_call(&self, instance: &Instance<'_>, spec: &CallSpec, ends: &Ends) -> CallReport {
        match &spec.after {
            Some(after) => {
                ends.wait(after).await;
                tokio::time::sleep(Duration::from_millis(spec.gap_ms)).await;
            }
            None => tokio::time::sleep(Duration::from_millis(spec.start_ms)).await,
        }
        let inherited = match &spec.resumes {
            Some(resumed) => ends.wait(resumed).await,
            None => BTreeSet::new(),
        };
        let caller = match spec.caller {
            CallerChoice::Same => instance.caller.clone(),
            CallerChoice::Other => instance.other_caller.clone(),
        };
        let call_id = format!(
            "sim-{}-{}-{}-{}-{}",
            self.run_id,
            instance.scenario.name,
            instance.platform.as_str(),
            instance.repetition,
            spec.name
        );
        let mut report = CallReport {
            scenario: instance.scenario.name.clone(),
            platform: Some(instance.platform),
            repetition: instance.repetition,
            call: spec.name.clone(),
            call_id: call_id.clone(),
            ..CallReport::default()
        };
        let started = epoch_secs();
        let mut confirmed = inherited;
        let dropped = self
            .play_turns(
                instance,
                spec,
                &call_id,
                &caller,
                &mut confirmed,
                &mut report,
            )
            .await;
        ends.finish(&spec.name, &confirmed);
        let ended = EndedCall {
            call_id: &call_id,
            caller: &caller,
            assistant: ASSISTANT_ID,
            started,
            ended: epoch_secs(),
            dropped,
        };
        self.send_webhooks(instance.platform, spec, &ended, &mut report)
            .await;
        report
    }

    /// Plays the turns; returns whether the call ended by a drop (not a goodbye).
    async fn play_turns(
        &self,
        instance: &Instance<'_>,
        spec: &CallSpec,
        call_id: &str,
        caller: &str,
        confirmed: &mut BTreeSet<String>,
        report: &mut CallReport,
    ) -> bool {
        let mut line = match instance.platform {
            PlatformKind::Retell => {
                let _turn = self.turn_lock.lock().await;
                match RetellCall::connect(&self.gateway, call_id, caller, ASSISTANT_ID).await {
                    Ok(call) => Line::Retell(Box::new(call)),
                    Err(e) => {
                        report.problems.push(format!("error: connecting: {e:#}"));
                        return true;
                    }
                }
            }
            platform => Line::Http(HttpCall::new(platform, call_id, caller, ASSISTANT_ID)),
        };
        let mut dropped = spec.end == EndKind::Drop;
        for (index, turn) in spec.turns.iter().enumerate() {
            tokio::time::sleep(Duration::from_millis(turn.pause_ms)).await;
            let _turn = self.turn_lock.lock().await;
            let ended_by_fault = self
                .play_turn(&mut line, spec, index, turn, confirmed, report)
                .await;
            if ended_by_fault {
                dropped = true;
                break;
            }
        }
        if let Line::Retell(call) = line {
            report.repeated_greetings += call.greetings.saturating_sub(1);
            if call.greetings > 1 {
                report
                    .problems
                    .push(format!("greeted {} times", call.greetings));
            }
            (*call).end(!dropped).await;
        }
        dropped
    }

    /// One turn, with the turn lock held. Returns whether a fault ended the call.
    async fn play_turn(
        &self,
        line: &mut Line,
        spec: &CallSpec,
        index: usize,
        turn: &TurnSpec,
        confirmed: &mut BTreeSet<String>,
        report: &mut CallReport,
    ) -> bool {
        let n = index + 1;
        for step in &turn.reply {
            if let Ok(behavior) = step.behavior() {
                self.mock.push(CHAT_MODEL, behavior);
            }
        }
        let fault = match (turn.hangup, turn.kill) {
            (_, true) => Fault::Kill,
            (true, false) => Fault::Hangup,
            _ => Fault::None,
        };
        let tools: Vec<String> = turn
            .reply
            .iter()
            .filter_map(|s| s.platform_tool.clone())
            .collect();
        let before = self.mock.requests().len();
        let exchanges = match self.exchanges(line, turn, &tools, fault).await {
            Ok(exchanges) => exchanges,
            Err(e) => {
                report.problems.push(format!("error: turn {n}: {e:#}"));
                return true;
            }
        };
        let recorded = self.mock.requests();
        let requests: Vec<&Value> = recorded[before.min(recorded.len())..]
            .iter()
            .filter(|r| r["model"] != ANALYSIS_MODEL && check::belongs_to(r, &turn.say))
            .collect();
        let unused = self.drain().await;
        report.unused_replies += unused;
        self.judge(spec, n, turn, &exchanges, &requests, confirmed, report);
        exchanges
            .last()
            .is_some_and(|o| matches!(o.ending, Ending::HungUp | Ending::Killed))
    }

    /// The turn's request and, for platform tools, the follow-ups with the tools' results.
    async fn exchanges(
        &self,
        line: &mut Line,
        turn: &TurnSpec,
        tools: &[String],
        fault: Fault,
    ) -> anyhow::Result<Vec<Outcome>> {
        match line {
            Line::Retell(call) => {
                if turn.reconnect {
                    call.reconnect(&self.gateway).await?;
                }
                Ok(vec![call.say(&self.gateway, &turn.say, fault).await?])
            }
            Line::Http(call) => {
                let mut outcomes = vec![call.say(&self.gateway, &turn.say, tools, fault).await?];
                for _ in 0..MAX_TOOL_ROUNDS {
                    let Some(Outcome {
                        spoken,
                        ending: Ending::ToolCalls(calls),
                        ..
                    }) = outcomes.last()
                    else {
                        break;
                    };
                    let (spoken, calls) = (spoken.clone(), calls.clone());
                    let next = call
                        .tool_results(&self.gateway, &spoken, &calls, tools)
                        .await?;
                    outcomes.push(next);
                }
                Ok(outcomes)
            }
        }
    }

    /// Counts what the turn showed.
    #[expect(
        clippy::too_many_arguments,
        reason = "the turn's parts are borrowed from different owners"
    )]
    fn judge(
        &self,
        spec: &CallSpec,
        n: usize,
        turn: &TurnSpec,
        exchanges: &[Outcome],
        requests: &[&Value],
        confirmed: &mut BTreeSet<String>,
        report: &mut CallReport,
    ) {
        for (i, outcome) in exchanges.iter().enumerate() {
            report.turns += 1;
            let label = if i == 0 {
                format!("turn {n}")
            } else {
                format!("turn {n} tool follow-up {i}")
            };
            if outcome.silent() {
                report.silent_turns += 1;
                report
                    .problems
                    .push(format!("{label}: silent ({:?})", outcome.ending));
            } else if let Ending::Failed(why) = &outcome.ending {
                report.problems.push(format!("error: {label}: {why}"));
            }
        }
        if let (Some(first), Some(own)) = (exchanges.first(), turn.own_ttft())
            && let Some(heard) = first.first_token
        {
            let overhead = heard.saturating_sub(own).as_secs_f64() * 1000.0;
            report
                .ttft_overhead_ms
                .push((overhead * 100.0).round() / 100.0);
        }
        let again = check::reasked(requests, confirmed);
        if !again.is_empty() {
            report.reasked_answers += again.len() as u32;
            let fields: Vec<&str> = again.iter().map(String::as_str).collect();
            report
                .problems
                .push(format!("turn {n}: asked again for {}", fields.join(", ")));
        }
        if n == 1
            && let Some(first) = requests.first()
        {
            let resumed = check::resumed(first);
            match (&spec.resumes, resumed) {
                (Some(earlier), false) => {
                    report.missed_resumptions += 1;
                    report
                        .problems
                        .push(format!("started over instead of resuming call {earlier}"));
                }
                (None, true) => {
                    report.wrong_resumptions += 1;
                    report
                        .problems
                        .push("treated as a resumption of another call".to_owned());
                }
                _ => {}
            }
        }
        let completed = exchanges
            .last()
            .is_some_and(|o| matches!(o.ending, Ending::Complete | Ending::ToolCalls(_)));
        if completed {
            for step in &turn.reply {
                if let Some([field, _]) = &step.answer {
                    confirmed.insert(field.clone());
                }
            }
        }
    }

    /// Pops scripted replies redial did not ask for, so they cannot answer a later turn.
    /// Returns how many there were.
    async fn drain(&self) -> u32 {
        let analysed = self
            .mock
            .requests()
            .iter()
            .filter(|r| r["model"] == ANALYSIS_MODEL)
            .count();
        let pending_analyses = self
            .analyses_queued
            .load(Ordering::Relaxed)
            .saturating_sub(analysed);
        let leftover = self.mock.queued().saturating_sub(pending_analyses);
        let url = format!("{}/chat/completions", self.mock.base_url());
        for _ in 0..leftover {
            let body = json!({"model": CHAT_MODEL, "messages": [], "sim_drain": true});
            let _ = self
                .client
                .post(&url)
                .header("content-type", "application/json")
                .body(body.to_string())
                .timeout(Duration::from_millis(300))
                .send()
                .await;
        }
        leftover as u32
    }

    async fn send_webhooks(
        &self,
        platform: PlatformKind,
        spec: &CallSpec,
        call: &EndedCall<'_>,
        report: &mut CallReport,
    ) {
        let deliveries = match spec.webhook {
            WebhookTiming::Missing => return,
            WebhookTiming::OnTime => 1,
            WebhookTiming::Late => {
                tokio::time::sleep(Duration::from_millis(spec.webhook_delay_ms)).await;
                1
            }
            WebhookTiming::Duplicate => 2,
        };
        let _turn = self.turn_lock.lock().await;
        // The analysis the webhook starts gets a valid reply (once: a duplicate is not analysed).
        let analysis = json!({"summary": "Simulated call.", "urgency": 1, "action": "none",
            "sentiment": "neutral"});
        self.mock
            .push(ANALYSIS_MODEL, Behavior::text([analysis.to_string()]));
        self.analyses_queued.fetch_add(1, Ordering::Relaxed);
        for _ in 0..deliveries {
            if let Err(e) = self.deliver(platform, call).await {
                report.problems.push(format!("error: webhook: {e:#}"));
            }
        }
    }

    async fn deliver(&self, platform: PlatformKind, call: &EndedCall<'_>) -> anyhow::Result<()> {
        let (route, body, headers) = webhook::call_ended(platform, call, &self.secrets)?;
        let mut request = self
            .client
            .post(format!("{}{route}", self.gateway.base_url()))
            .header("content-type", "application/json")
            .body(body)
            .timeout(Duration::from_secs(10));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = request.send().await?;
        if !response.status().is_success() {
            anyhow::bail!("{route} answered {}", response.status());
        }
        Ok(())
    }
}

/// Notes (on stderr) a scenario skipped because it needs to kill a redial it does not own.
fn note_skipped(name: &str) {
    eprintln!("redial-sim: skipping {name}: it kills the gateway, which needs --redial-bin");
}

fn epoch_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_is_toml_with_the_assistant_and_every_secret() {
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:1\"\n{}",
            redial_config(
                "sqlite://x.db",
                "/tmp/j",
                "http://127.0.0.1:9/v1",
                &WebhookSecrets::default()
            )
        );
        let parsed: toml::Table = toml::from_str(&config).unwrap();
        assert_eq!(parsed["server"]["api_keys"][0].as_str(), Some(API_KEY));
        assert_eq!(parsed["upstream"]["model"].as_str(), Some(CHAT_MODEL));
        let fields = parsed["assistants"][0]["fields"].as_array().unwrap();
        assert_eq!(fields.len(), FIELDS.len());
        assert_eq!(
            parsed["webhooks"]["vapi_secret"].as_str(),
            Some("sim-vapi-secret")
        );
    }

    #[test]
    fn generated_numbers_are_distinct_e164() {
        let sim_numbers: Vec<String> = (0..250)
            .map(|n| {
                let area = AREAS[(n / 100) % AREAS.len()];
                format!("+1{area}5550{:03}", 100 + n % 100)
            })
            .collect();
        let unique: BTreeSet<&String> = sim_numbers.iter().collect();
        assert_eq!(unique.len(), 250);
        assert!(sim_numbers.iter().all(|n| n.len() == 12));
        assert_eq!(sim_numbers[0], "+14155550100");
    }
}
