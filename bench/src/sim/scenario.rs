//! Scenario files: TOML under `bench/scenarios/`, one scenario each, expanded into instances
//! (one per platform and repetition) that each get their own caller number and call ids.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::mock::Behavior;

/// The voice platform a call is played as.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PlatformKind {
    /// Vapi's custom LLM: OpenAI requests carrying `call` and `customer`.
    Vapi,
    /// ElevenLabs' custom LLM: OpenAI requests with `elevenlabs_extra_body` and the identity in
    /// the `X-Call-Id` / `X-Caller-Id` / `X-Assistant-Id` request headers.
    Elevenlabs,
    /// Retell's custom-LLM WebSocket.
    Retell,
}

impl PlatformKind {
    /// Lowercase name, as in scenario files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vapi => "vapi",
            Self::Elevenlabs => "elevenlabs",
            Self::Retell => "retell",
        }
    }
}

/// One scenario file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Unique name (the file name without `.toml` by convention).
    pub name: String,
    /// What the scenario plays and what it proves.
    #[serde(default)]
    pub description: String,
    /// The platforms it is played on; one instance per platform and repetition.
    pub platforms: Vec<PlatformKind>,
    /// Repetitions per platform (each with its own caller and call ids).
    #[serde(default = "one")]
    pub repeat: u32,
    /// Part of the small subset CI runs.
    #[serde(default)]
    pub ci: bool,
    /// The calls, in any order (`after` and `start_ms` set their timing).
    pub calls: Vec<CallSpec>,
}

fn one() -> u32 {
    1
}

/// One call of a scenario.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallSpec {
    /// Name within the scenario (`A`, `B`…).
    pub name: String,
    /// `"same"` (the scenario's caller, the default) or `"other"` (a second number).
    #[serde(default)]
    pub caller: CallerChoice,
    /// Starts this long after the scenario starts (unless `after` is set).
    #[serde(default)]
    pub start_ms: u64,
    /// Starts `gap_ms` after this call (by name) ended.
    #[serde(default)]
    pub after: Option<String>,
    /// See `after`.
    #[serde(default)]
    pub gap_ms: u64,
    /// This call is a redial expected to continue the named call: its confirmed answers must not
    /// be asked again, and the call must be resumed (not started over).
    #[serde(default)]
    pub resumes: Option<String>,
    /// The platform's call-ended webhook.
    #[serde(default)]
    pub webhook: WebhookTiming,
    /// For `late`: sent this long after the call ended.
    #[serde(default)]
    pub webhook_delay_ms: u64,
    /// How the call ends after its last turn.
    #[serde(default)]
    pub end: EndKind,
    /// What the caller says, in order.
    pub turns: Vec<TurnSpec>,
}

/// Which number a call comes from.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CallerChoice {
    /// The scenario's caller.
    #[default]
    Same,
    /// A second number, never used by another call of the instance.
    Other,
}

/// When the platform sends its call-ended webhook.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookTiming {
    /// Never (quick starts set up no webhook; a crashed gateway may never get one).
    #[default]
    Missing,
    /// Right after the call ends.
    OnTime,
    /// `webhook_delay_ms` after the call ends (typically after the redial started).
    Late,
    /// Right after the call ends, delivered twice.
    Duplicate,
}

/// How a call ends.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EndKind {
    /// The caller says goodbye: Retell gets a close frame; HTTP platforms just stop.
    #[default]
    Hangup,
    /// The line drops: Retell's socket ends without a close frame and is not reconnected.
    Drop,
}

/// One caller utterance and what the upstream does with it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TurnSpec {
    /// What the caller says.
    pub say: String,
    /// Pause before saying it (the caller listening and thinking).
    #[serde(default = "default_pause")]
    pub pause_ms: u64,
    /// The upstream's replies to this turn's requests, in order.
    #[serde(default)]
    pub reply: Vec<Step>,
    /// The caller hangs up once the first words of the reply are heard.
    #[serde(default)]
    pub hangup: bool,
    /// The gateway is killed (SIGKILL) once the first words of the reply are heard, and started
    /// again; the call is lost with it.
    #[serde(default)]
    pub kill: bool,
    /// Retell: the socket drops before this turn and the platform reconnects to the same call.
    #[serde(default)]
    pub reconnect: bool,
}

impl TurnSpec {
    /// The upstream's own time to the turn's first spoken token: the latency of the first text
    /// reply, when only redial's own tools (answered at once by the mock) come before it. `None`
    /// when the turn opens with a failure, a cut or a platform tool.
    pub fn own_ttft(&self) -> Option<Duration> {
        for step in &self.reply {
            if let Some(own) = step.own_ttft() {
                return Some(own);
            }
            let internal = step.answer.is_some() || step.remember.is_some();
            if !internal || step.platform_tool.is_some() {
                return None;
            }
        }
        None
    }
}

fn default_pause() -> u64 {
    300
}

/// One upstream reply. Exactly one of `text`, `answer`, `remember`, `platform_tool`, `fail`,
/// `cut_after` is set (`answer` and `remember` may be combined into one tool-call reply).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Spoken text, streamed word by word.
    pub text: Option<String>,
    /// Time to the first token of this reply (the upstream's own latency).
    #[serde(default)]
    pub ttft_ms: u64,
    /// Gap between words.
    #[serde(default)]
    pub gap_ms: u64,
    /// `record_answer(field, value)`: `[field, value]`.
    pub answer: Option<[String; 2]>,
    /// `remember_caller(name)`.
    pub remember: Option<String>,
    /// A platform tool call (Vapi and ElevenLabs): its name; the platform runs it and asks again
    /// with the result, answered by the following steps.
    pub platform_tool: Option<String>,
    /// The platform tool's arguments (JSON text).
    #[serde(default)]
    pub args: Option<String>,
    /// The upstream answers this HTTP status.
    pub fail: Option<u16>,
    /// The upstream streams this text, then cuts the connection mid-reply.
    pub cut_after: Option<String>,
}

impl Step {
    /// The mock behaviour of this step.
    pub fn behavior(&self) -> anyhow::Result<Behavior> {
        let mut calls = Vec::new();
        if let Some([field, value]) = &self.answer {
            let args = serde_json::json!({"field": field, "value": value});
            calls.push(("record_answer".to_owned(), args.to_string()));
        }
        if let Some(name) = &self.remember {
            let args = serde_json::json!({"name": name});
            calls.push(("remember_caller".to_owned(), args.to_string()));
        }
        if let Some(tool) = &self.platform_tool {
            let args = self.args.clone().unwrap_or_else(|| "{}".to_owned());
            calls.push((tool.clone(), args));
        }
        let kinds = [
            self.text.is_some(),
            !calls.is_empty(),
            self.fail.is_some(),
            self.cut_after.is_some(),
        ];
        if kinds.iter().filter(|set| **set).count() != 1 {
            bail!(
                "a reply step sets exactly one of text, answer/remember/platform_tool, fail, cut_after"
            );
        }
        if let Some(text) = &self.text {
            return Ok(Behavior::Text {
                chunks: words(text),
                ttft: Duration::from_millis(self.ttft_ms),
                gap: Duration::from_millis(self.gap_ms),
            });
        }
        if let Some(code) = self.fail {
            return Ok(Behavior::error(code, "simulated upstream failure"));
        }
        if let Some(text) = &self.cut_after {
            return Ok(Behavior::CutAfter {
                chunks: words(text),
            });
        }
        Ok(Behavior::ToolCalls {
            text_before: None,
            calls,
        })
    }

    /// The upstream's own time to first spoken token, when this step speaks first.
    pub fn own_ttft(&self) -> Option<Duration> {
        self.text
            .as_ref()
            .map(|_| Duration::from_millis(self.ttft_ms))
    }
}

/// `"a b c"` → `["a ", "b ", "c"]`: one chunk per word, as a model streams.
fn words(text: &str) -> Vec<String> {
    let mut chunks: Vec<String> = text.split_inclusive(' ').map(str::to_owned).collect();
    if chunks.is_empty() {
        chunks.push(String::new());
    }
    chunks
}

impl Scenario {
    /// Checks what serde cannot: names, references, platform support.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.platforms.is_empty() || self.calls.is_empty() || self.repeat == 0 {
            bail!("a scenario needs platforms, calls and repeat >= 1");
        }
        for call in &self.calls {
            for reference in [&call.after, &call.resumes].into_iter().flatten() {
                if !self.calls.iter().any(|c| &c.name == reference) || reference == &call.name {
                    bail!("call {} refers to unknown call {reference}", call.name);
                }
            }
            if call.turns.is_empty() {
                bail!("call {} has no turns", call.name);
            }
            for turn in &call.turns {
                for step in &turn.reply {
                    step.behavior()
                        .with_context(|| format!("call {}, turn {:?}", call.name, turn.say))?;
                    let platform_tool = step.platform_tool.is_some();
                    if platform_tool && self.platforms.contains(&PlatformKind::Retell) {
                        bail!("platform tools are not part of Retell's custom-LLM protocol");
                    }
                }
            }
        }
        Ok(())
    }

    /// How many calls the scenario plays over all its instances.
    pub fn call_count(&self) -> usize {
        self.platforms.len() * self.repeat as usize * self.calls.len()
    }

    /// Whether some turn kills the gateway.
    pub fn kills(&self) -> bool {
        self.calls.iter().flat_map(|c| &c.turns).any(|t| t.kill)
    }
}

/// Loads every `*.toml` in `dir`, sorted by file name.
pub fn load_dir(dir: &Path) -> anyhow::Result<Vec<Scenario>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    paths.sort();
    let mut scenarios = Vec::with_capacity(paths.len());
    for path in paths {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        scenarios.push(parse(&text).with_context(|| format!("in {}", path.display()))?);
    }
    let mut names: Vec<&str> = scenarios.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
        bail!("two scenarios are named {}", pair[0]);
    }
    Ok(scenarios)
}

/// Parses and validates one scenario.
pub fn parse(text: &str) -> anyhow::Result<Scenario> {
    let scenario: Scenario = toml::from_str(text).context("parsing the scenario")?;
    scenario.validate()?;
    Ok(scenario)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scenario_parses_and_expands_its_calls() {
        let scenario = parse(
            r#"
            name = "x"
            platforms = ["vapi", "retell"]
            repeat = 3
            [[calls]]
            name = "A"
            [[calls.turns]]
            say = "hi"
            reply = [{ answer = ["loan_purpose", "a car"], remember = "Ada" }, { text = "How much?", ttft_ms = 40 }]
            [[calls]]
            name = "B"
            after = "A"
            gap_ms = 8000
            resumes = "A"
            [[calls.turns]]
            say = "back"
            "#,
        )
        .unwrap();
        assert_eq!(scenario.call_count(), 12);
        let steps = &scenario.calls[0].turns[0].reply;
        assert!(
            matches!(steps[0].behavior().unwrap(), Behavior::ToolCalls { calls, .. } if calls.len() == 2)
        );
        assert_eq!(steps[1].own_ttft(), Some(Duration::from_millis(40)));
        assert_eq!(steps[0].own_ttft(), None);
        assert_eq!(
            scenario.calls[0].turns[0].own_ttft(),
            Some(Duration::from_millis(40)),
            "after an internal tool, the text's latency"
        );
        assert_eq!(
            scenario.calls[1].turns[0].own_ttft(),
            None,
            "no reply scripted"
        );
        assert_eq!(words("How much?"), ["How ", "much?"]);
    }

    #[test]
    fn bad_references_and_steps_are_refused() {
        let base = "name = \"x\"\nplatforms = [\"vapi\"]\n[[calls]]\nname = \"A\"\n";
        let unknown = format!("{base}resumes = \"Z\"\n[[calls.turns]]\nsay = \"hi\"\n");
        assert!(parse(&unknown).is_err());
        let two = format!(
            "{base}[[calls.turns]]\nsay = \"hi\"\nreply = [{{ text = \"a\", fail = 500 }}]\n"
        );
        assert!(parse(&two).is_err());
        let retell_tool = "name = \"x\"\nplatforms = [\"retell\"]\n[[calls]]\nname = \"A\"\n\
            [[calls.turns]]\nsay = \"hi\"\nreply = [{ platform_tool = \"book\" }]\n";
        assert!(parse(retell_tool).is_err());
        assert!(parse("name = \"x\"\nplatforms = []\ncalls = []\nbogus = 1\n").is_err());
    }
}
