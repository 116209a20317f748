//! Plays one call's turns as its platform does: Vapi and ElevenLabs over streaming HTTP (the whole
//! conversation resent each turn), Retell over its custom-LLM WebSocket.

use std::time::Duration;

use anyhow::{Context as _, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::gateway::Gateway;
use super::scenario::PlatformKind;
use crate::sse::SseParser;

/// Longest a turn may take end to end.
const TURN_TIMEOUT: Duration = Duration::from_secs(30);
/// The system prompt Vapi and ElevenLabs send (Retell's comes from redial's assistant config).
pub const SYSTEM_PROMPT: &str = "You are Ava, a loan assistant. Collect the loan purpose, the \
amount and the start date.";
/// What the agent says first on the HTTP platforms (their `firstMessage`).
const FIRST_MESSAGE: &str = "Hi, this is Ava. How can I help?";

/// How the turn's stream ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// `[DONE]` (HTTP) or `content_complete` (Retell).
    Complete,
    /// The reply ended in platform tool calls `(id, name, arguments)`.
    ToolCalls(Vec<(String, String, String)>),
    /// The caller hung up mid-reply (simulated).
    HungUp,
    /// The gateway was killed mid-reply (simulated).
    Killed,
    /// The gateway answered an error or the stream broke.
    Failed(String),
}

/// What one request-response exchange produced.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Everything spoken.
    pub spoken: String,
    /// Time from sending to the first non-blank spoken token.
    pub first_token: Option<Duration>,
    /// How it ended.
    pub ending: Ending,
}

impl Outcome {
    /// A silent turn: the stream ended with nothing spoken, and not because the simulation hung
    /// up or killed the gateway.
    pub fn silent(&self) -> bool {
        let faulted = matches!(self.ending, Ending::HungUp | Ending::Killed);
        !faulted && self.spoken.trim().is_empty()
    }
}

/// What to do once the first words are heard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Nothing: read to the end.
    None,
    /// The caller hangs up.
    Hangup,
    /// The gateway is SIGKILLed (and restarted).
    Kill,
}

/// An HTTP platform's call: its identity and the conversation so far.
#[derive(Debug)]
pub struct HttpCall {
    platform: PlatformKind,
    call_id: String,
    caller: String,
    assistant: String,
    model: String,
    history: Vec<Value>,
}

impl HttpCall {
    /// A call that has just been answered with the platform's first message.
    pub fn new(platform: PlatformKind, call_id: &str, caller: &str, assistant: &str) -> Self {
        Self {
            platform,
            call_id: call_id.to_owned(),
            caller: caller.to_owned(),
            assistant: assistant.to_owned(),
            model: super::CHAT_MODEL.to_owned(),
            history: vec![json!({"role": "assistant", "content": FIRST_MESSAGE})],
        }
    }

    /// The caller says `text`; the reply is streamed back.
    pub async fn say(
        &mut self,
        gateway: &Gateway,
        text: &str,
        tools: &[String],
        fault: Fault,
    ) -> anyhow::Result<Outcome> {
        self.history.push(json!({"role": "user", "content": text}));
        self.exchange(gateway, tools, fault).await
    }

    /// The platform ran the tool calls of the last reply and asks again with their results.
    pub async fn tool_results(
        &mut self,
        gateway: &Gateway,
        spoken: &str,
        calls: &[(String, String, String)],
        tools: &[String],
    ) -> anyhow::Result<Outcome> {
        let tool_calls: Vec<Value> = calls
            .iter()
            .map(|(id, name, args)| json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}}))
            .collect();
        let content = if spoken.is_empty() {
            Value::Null
        } else {
            Value::from(spoken)
        };
        self.history
            .push(json!({"role": "assistant", "content": content, "tool_calls": tool_calls}));
        for (id, _, _) in calls {
            self.history.push(
                json!({"role": "tool", "tool_call_id": id, "content": "{\"ok\": true, \"booked\": true}"}),
            );
        }
        self.exchange(gateway, tools, Fault::None).await
    }

    fn body(&self, tools: &[String]) -> Value {
        let mut messages = vec![json!({"role": "system", "content": SYSTEM_PROMPT})];
        messages.extend(self.history.iter().cloned());
        let mut body = json!({
            "model": self.model, "stream": true, "temperature": 0.5, "max_tokens": 250,
            "messages": messages,
        });
        match self.platform {
            PlatformKind::Vapi => {
                body["call"] = json!({"id": self.call_id, "orgId": "org-sim", "type": "inboundPhoneCall",
                    "assistantId": self.assistant, "customer": {"number": self.caller}});
                body["customer"] = json!({"number": self.caller});
                body["phoneNumber"] = json!({"id": "pn-sim", "number": "+14155550100"});
            }
            PlatformKind::Elevenlabs | PlatformKind::Retell => {
                body["elevenlabs_extra_body"] = json!({"source": "redial-sim"});
            }
        }
        if !tools.is_empty() {
            body["tools"] = tools
                .iter()
                .map(|name| json!({"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}))
                .collect();
        }
        body
    }

    async fn exchange(
        &mut self,
        gateway: &Gateway,
        tools: &[String],
        fault: Fault,
    ) -> anyhow::Result<Outcome> {
        let client = reqwest::Client::new();
        let mut request = client
            .post(format!("{}/v1/chat/completions", gateway.base_url()))
            .bearer_auth(gateway.api_key())
            .header("content-type", "application/json")
            .body(self.body(tools).to_string())
            .timeout(TURN_TIMEOUT);
        if self.platform == PlatformKind::Elevenlabs {
            request = request
                .header("x-call-id", &self.call_id)
                .header("x-caller-id", &self.caller)
                .header("x-assistant-id", &self.assistant);
        }
        let started = Instant::now();
        let outcome = match request.send().await {
            Ok(response) if response.status().is_success() => {
                read_stream(response, started, gateway, fault).await
            }
            Ok(response) => Outcome {
                spoken: String::new(),
                first_token: None,
                ending: Ending::Failed(format!("HTTP {}", response.status())),
            },
            Err(e) => Outcome {
                spoken: String::new(),
                first_token: None,
                ending: Ending::Failed(format!("request failed: {e}")),
            },
        };
        if !outcome.spoken.is_empty() && !matches!(outcome.ending, Ending::ToolCalls(_)) {
            self.history
                .push(json!({"role": "assistant", "content": outcome.spoken}));
        }
        Ok(outcome)
    }
}

/// A tool call assembled from streamed fragments.
#[derive(Default)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
}

async fn read_stream(
    response: reqwest::Response,
    started: Instant,
    gateway: &Gateway,
    fault: Fault,
) -> Outcome {
    let mut outcome = Outcome {
        spoken: String::new(),
        first_token: None,
        ending: Ending::Failed("the stream ended without [DONE]".to_owned()),
    };
    let mut calls: Vec<PartialCall> = Vec::new();
    let mut parser = SseParser::new();
    let mut body = response.bytes_stream();
    while let Some(bytes) = body.next().await {
        let Ok(bytes) = bytes else {
            outcome.ending = Ending::Failed("the stream broke".to_owned());
            return outcome;
        };
        for data in parser.feed(&bytes) {
            if data == crate::sse::DONE {
                outcome.ending = if calls.is_empty() {
                    Ending::Complete
                } else {
                    Ending::ToolCalls(
                        calls
                            .drain(..)
                            .map(|c| (c.id, c.name, c.arguments))
                            .collect(),
                    )
                };
                return outcome;
            }
            let Ok(chunk) = serde_json::from_str::<Value>(&data) else {
                continue;
            };
            let delta = &chunk["choices"][0]["delta"];
            if let Some(text) = delta["content"].as_str() {
                outcome.spoken.push_str(text);
                if outcome.first_token.is_none() && !text.trim().is_empty() {
                    outcome.first_token = Some(started.elapsed());
                    if let Some(ending) = inject(gateway, fault).await {
                        outcome.ending = ending;
                        return outcome;
                    }
                }
            }
            for fragment in delta["tool_calls"].as_array().into_iter().flatten() {
                let index = fragment["index"].as_u64().unwrap_or(0) as usize;
                if calls.len() <= index {
                    calls.resize_with(index + 1, PartialCall::default);
                }
                let call = &mut calls[index];
                if let Some(id) = fragment["id"].as_str() {
                    call.id = id.to_owned();
                }
                if let Some(name) = fragment["function"]["name"].as_str() {
                    call.name.push_str(name);
                }
                if let Some(args) = fragment["function"]["arguments"].as_str() {
                    call.arguments.push_str(args);
                }
            }
        }
    }
    outcome
}

/// Applies the fault once the first words are heard; `Some` ends the exchange.
async fn inject(gateway: &Gateway, fault: Fault) -> Option<Ending> {
    match fault {
        Fault::None => None,
        Fault::Hangup => Some(Ending::HungUp),
        Fault::Kill => Some(match gateway.kill_and_restart().await {
            Ok(()) => Ending::Killed,
            Err(e) => Ending::Failed(format!("restarting redial after the kill: {e:#}")),
        }),
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Retell's side of a call: one socket at a time, the transcript it resends every request.
pub struct RetellCall {
    call_id: String,
    caller: String,
    assistant: String,
    ws: Option<Socket>,
    transcript: Vec<(String, String)>,
    next_id: i64,
    /// How many non-empty begin messages (greetings) the call got over all its sockets.
    pub greetings: u32,
}

impl RetellCall {
    /// Connects, sends `call_details` and reads the begin message.
    pub async fn connect(
        gateway: &Gateway,
        call_id: &str,
        caller: &str,
        assistant: &str,
    ) -> anyhow::Result<Self> {
        let mut call = Self {
            call_id: call_id.to_owned(),
            caller: caller.to_owned(),
            assistant: assistant.to_owned(),
            ws: None,
            transcript: Vec::new(),
            next_id: 1,
            greetings: 0,
        };
        call.open(gateway).await?;
        Ok(call)
    }

    /// The socket drops without a close frame and Retell reconnects to the same call.
    pub async fn reconnect(&mut self, gateway: &Gateway) -> anyhow::Result<()> {
        self.ws = None;
        self.open(gateway).await
    }

    async fn open(&mut self, gateway: &Gateway) -> anyhow::Result<()> {
        let base = gateway.base_url().replacen("http://", "ws://", 1);
        let url = format!(
            "{base}/retell/llm-websocket/{}/{}",
            gateway.api_key(),
            self.call_id
        );
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .context("opening Retell's socket")?;
        self.ws = Some(ws);
        let config = self.recv().await?;
        if config["response_type"] != "config" {
            bail!("expected the config frame, got {config}");
        }
        self.send(&json!({"interaction_type": "call_details", "call": {
            "call_type": "phone_call", "call_id": self.call_id, "agent_id": self.assistant,
            "from_number": self.caller, "to_number": "+14155550100", "direction": "inbound",
            "call_status": "registered", "metadata": {}}}))
            .await?;
        loop {
            let frame = self.recv().await?;
            if frame["response_type"] == "response" && frame["response_id"] == 0 {
                let greeting = frame["content"].as_str().unwrap_or_default().to_owned();
                if !greeting.trim().is_empty() {
                    self.greetings += 1;
                    self.transcript.push(("agent".to_owned(), greeting));
                }
                if frame["content_complete"] == true {
                    return Ok(());
                }
            }
        }
    }

    /// The caller says `text`; reads the response to completion (or applies `fault`).
    pub async fn say(
        &mut self,
        gateway: &Gateway,
        text: &str,
        fault: Fault,
    ) -> anyhow::Result<Outcome> {
        self.transcript.push(("user".to_owned(), text.to_owned()));
        let id = self.next_id;
        self.next_id += 1;
        let transcript: Vec<Value> = self
            .transcript
            .iter()
            .map(|(role, content)| json!({"role": role, "content": content, "words": []}))
            .collect();
        let started = Instant::now();
        self.send(
            &json!({"interaction_type": "response_required", "response_id": id,
            "transcript": transcript}),
        )
        .await?;
        let mut outcome = Outcome {
            spoken: String::new(),
            first_token: None,
            ending: Ending::Complete,
        };
        loop {
            let frame = match tokio::time::timeout(TURN_TIMEOUT, self.recv()).await {
                Ok(Ok(frame)) => frame,
                Ok(Err(e)) => {
                    outcome.ending = Ending::Failed(format!("{e:#}"));
                    break;
                }
                Err(_) => {
                    outcome.ending = Ending::Failed("no complete response in time".to_owned());
                    break;
                }
            };
            if frame["response_type"] != "response" || frame["response_id"] != id {
                continue;
            }
            let text = frame["content"].as_str().unwrap_or_default();
            outcome.spoken.push_str(text);
            if outcome.first_token.is_none() && !text.trim().is_empty() {
                outcome.first_token = Some(started.elapsed());
                if let Some(ending) = inject(gateway, fault).await {
                    outcome.ending = ending;
                    self.ws = None;
                    break;
                }
            }
            if frame["content_complete"] == true {
                break;
            }
        }
        if !outcome.spoken.is_empty() {
            self.transcript
                .push(("agent".to_owned(), outcome.spoken.clone()));
        }
        Ok(outcome)
    }

    /// Ends the call: a close frame (hang up) or just the socket gone (a drop).
    pub async fn end(mut self, hangup: bool) {
        let Some(mut ws) = self.ws.take() else {
            return;
        };
        if hangup {
            let _ = ws.close(None).await;
            let wait = async { while let Some(Ok(_)) = ws.next().await {} };
            let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
        }
    }

    async fn send(&mut self, value: &Value) -> anyhow::Result<()> {
        let ws = self.ws.as_mut().context("the socket is closed")?;
        ws.send(Message::text(value.to_string()))
            .await
            .context("sending to redial")
    }

    async fn recv(&mut self) -> anyhow::Result<Value> {
        let ws = self.ws.as_mut().context("the socket is closed")?;
        loop {
            let message = tokio::time::timeout(TURN_TIMEOUT, ws.next())
                .await
                .context("no frame within the turn timeout")?
                .context("the socket ended")?
                .context("reading the socket")?;
            match message {
                Message::Text(text) => {
                    return serde_json::from_str(text.as_str()).context("a frame that is not JSON");
                }
                Message::Close(_) => bail!("redial closed the socket"),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_that_ends_without_words_is_silent_unless_the_simulation_cut_it() {
        let outcome = |spoken: &str, ending: Ending| Outcome {
            spoken: spoken.to_owned(),
            first_token: None,
            ending,
        };
        assert!(outcome(" \n", Ending::Complete).silent());
        assert!(outcome("", Ending::Failed("HTTP 500".into())).silent());
        assert!(outcome("", Ending::ToolCalls(Vec::new())).silent());
        assert!(!outcome("One moment.", Ending::ToolCalls(Vec::new())).silent());
        assert!(!outcome("", Ending::HungUp).silent());
        assert!(!outcome("", Ending::Killed).silent());
        assert!(!outcome("Hi", Ending::Failed("the stream broke".into())).silent());
    }
}
