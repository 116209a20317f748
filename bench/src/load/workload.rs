//! Vapi-shaped request bodies for many distinct callers and calls with multi-turn histories
//! (and, for a direct baseline against an Anthropic upstream, the same conversations as
//! Messages requests).
//!
//! A [`Workload`] hands out conversations: a call id, a caller number and the next turn. A
//! conversation is checked out for one request and checked back in when it completes, so the
//! turns of one call are always sent one after another (as a platform does) and each turn's
//! history is one exchange longer than the last. After `turns` turns the call is over and a new
//! call, from the next caller, takes its place.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Value, json};

use super::Api;

const SYSTEM_PROMPT: &str = "You are Ava, the phone assistant of Bayside Dental. Keep answers short \
     and friendly, confirm details back to the caller, and never invent appointment times.";
const GREETING: &str = "Hi, this is Ava from Bayside Dental. How can I help you today?";
const USER_LINES: [&str; 6] = [
    "Hi, I'd like to book a cleaning for next week.",
    "Tuesday afternoon would be best, if you have anything.",
    "My name is Jordan, J-O-R-D-A-N.",
    "Yes, the number I'm calling from is fine.",
    "Do you take Delta Dental insurance?",
    "Great, that's all I needed. Thanks!",
];
const ASSISTANT_LINES: [&str; 6] = [
    "Sure, I can help with that. Which day works best for you?",
    "I have Tuesday at 2:30 or 4:00 PM. Which would you prefer?",
    "Thanks, Jordan. I've noted your name.",
    "Perfect, we'll text the confirmation to this number.",
    "Yes, we're in network with Delta Dental.",
    "You're welcome, see you on Tuesday!",
];
/// The assistant id every request carries.
const ASSISTANT_ID: &str = "bench-assistant";
/// The user turn before the greeting in a Messages request (redial's own opening line).
const CALL_OPENING: &str = "(the call connects)";
/// The number callers dial.
const DIALED_NUMBER: &str = "+14155550100";

/// The shape of the generated traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WorkloadSpec {
    /// The `model` of every request.
    pub model: String,
    /// Number of distinct caller phone numbers (`+1415555XXXX`, wrapping past 10,000).
    pub callers: u64,
    /// Turns per call; turn `n` carries a history of `n - 1` earlier exchanges.
    pub turns: u32,
}

impl Default for WorkloadSpec {
    fn default() -> Self {
        Self {
            model: "bench-model".to_owned(),
            callers: 1_000,
            turns: 4,
        }
    }
}

/// One call in progress: who is calling, which call it is, and which turn comes next (from 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conversation {
    /// Vapi `call.id` (UUID-shaped, unique per run).
    pub call_id: String,
    /// Caller number in E.164.
    pub caller: String,
    /// The turn the next request sends, starting at 1.
    pub turn: u32,
}

/// Hands out conversations and renders their request bodies. Shared by all senders of a run.
#[derive(Debug)]
pub struct Workload {
    spec: WorkloadSpec,
    run_nonce: u64,
    calls_started: AtomicU64,
    idle: Mutex<VecDeque<Conversation>>,
}

impl Workload {
    /// A workload whose call ids are unique to this instance (a nonce from the clock and pid).
    pub fn new(spec: WorkloadSpec) -> Self {
        Self {
            spec,
            run_nonce: run_nonce(),
            calls_started: AtomicU64::new(0),
            idle: Mutex::new(VecDeque::new()),
        }
    }

    /// The next conversation to send a turn of: an idle call in progress, or a new call.
    pub fn checkout(&self) -> Conversation {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front();
        idle.unwrap_or_else(|| self.new_call())
    }

    /// Returns a conversation after its turn completed; it continues with the next turn unless
    /// the call has had all its turns.
    pub fn checkin(&self, mut conversation: Conversation) {
        conversation.turn += 1;
        if conversation.turn <= self.spec.turns.max(1) {
            self.idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push_back(conversation);
        }
    }

    /// The JSON body of the conversation's current turn, for `api`.
    pub fn body(&self, api: Api, conversation: &Conversation) -> Bytes {
        match api {
            Api::Openai => self.chat_body(conversation),
            Api::Anthropic => self.messages_body(conversation),
        }
    }

    /// The turn as an Anthropic Messages request, as redial would send it upstream: the system
    /// prompt apart and marked cacheable (so the mock does its prompt-cache work for the
    /// baseline too), and a user opening before the greeting (the API wants a user turn first).
    fn messages_body(&self, conversation: &Conversation) -> Bytes {
        let mut messages = vec![json!({"role": "user", "content": CALL_OPENING})];
        messages.extend(history(conversation.turn).into_iter().skip(1));
        let body = json!({
            "model": self.spec.model,
            "stream": true,
            "temperature": 0.5,
            "max_tokens": 250,
            "system": [{"type": "text", "text": SYSTEM_PROMPT,
                        "cache_control": {"type": "ephemeral"}}],
            "messages": messages,
        });
        Bytes::from(body.to_string())
    }

    /// The turn as a Vapi chat-completions request.
    fn chat_body(&self, conversation: &Conversation) -> Bytes {
        let customer = json!({"number": conversation.caller});
        let body = json!({
            "model": self.spec.model,
            "stream": true,
            "temperature": 0.5,
            "max_tokens": 250,
            "messages": history(conversation.turn),
            "call": {
                "id": conversation.call_id,
                "assistantId": ASSISTANT_ID,
                "type": "inboundPhoneCall",
                "status": "in-progress",
                "customer": customer,
            },
            "customer": customer,
            "phoneNumber": {"number": DIALED_NUMBER},
            "metadata": {},
        });
        Bytes::from(body.to_string())
    }

    fn new_call(&self) -> Conversation {
        let n = self.calls_started.fetch_add(1, Ordering::Relaxed);
        Conversation {
            call_id: call_id(self.run_nonce, n),
            caller: caller_number(n % self.spec.callers.max(1)),
            turn: 1,
        }
    }
}

/// `[system, greeting, (user, assistant) × (turn - 1), user]`.
fn history(turn: u32) -> Vec<Value> {
    let exchanges = turn.saturating_sub(1) as usize;
    let mut messages = Vec::with_capacity(3 + 2 * exchanges);
    messages.push(json!({"role": "system", "content": SYSTEM_PROMPT}));
    messages.push(json!({"role": "assistant", "content": GREETING}));
    for i in 0..exchanges {
        messages.push(json!({"role": "user", "content": USER_LINES[i % USER_LINES.len()]}));
        let reply = ASSISTANT_LINES[i % ASSISTANT_LINES.len()];
        messages.push(json!({"role": "assistant", "content": reply}));
    }
    let next = USER_LINES[exchanges % USER_LINES.len()];
    messages.push(json!({"role": "user", "content": next}));
    messages
}

/// `+1415555XXXX` for callers below 10,000; higher indices continue into the next exchanges.
fn caller_number(index: u64) -> String {
    format!("+1{}", 4_155_550_000 + index)
}

/// A UUID-shaped (version 4 layout) id from the run nonce and the call's sequence number.
fn call_id(nonce: u64, n: u64) -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        nonce >> 32,
        (nonce >> 16) & 0xffff,
        nonce & 0xfff,
        (n >> 48) & 0xfff,
        n & 0xffff_ffff_ffff,
    )
}

fn run_nonce() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    // Fold the 128-bit timestamp and mix in the pid so concurrent runs differ.
    (nanos as u64) ^ ((nanos >> 64) as u64) ^ (u64::from(std::process::id()) << 40)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(callers: u64, turns: u32) -> Workload {
        Workload::new(WorkloadSpec {
            model: "m".into(),
            callers,
            turns,
        })
    }

    #[test]
    fn a_call_is_sent_turn_by_turn_with_a_growing_history_then_replaced() {
        let workload = workload(10, 2);
        let first = workload.checkout();
        let body: Value =
            serde_json::from_slice(&workload.body(Api::Openai, &first)).expect("json");
        assert_eq!(body["messages"].as_array().map(Vec::len), Some(3));
        assert_eq!(body["call"]["id"], json!(first.call_id));
        assert_eq!(body["customer"]["number"], "+14155550000");
        assert_eq!(body["call"]["customer"], body["customer"]);
        workload.checkin(first.clone());

        let second = workload.checkout();
        assert_eq!(
            (second.call_id.as_str(), second.turn),
            (first.call_id.as_str(), 2)
        );
        let body: Value =
            serde_json::from_slice(&workload.body(Api::Openai, &second)).expect("json");
        assert_eq!(body["messages"].as_array().map(Vec::len), Some(5));
        assert_eq!(body["messages"][4]["role"], "user");
        // The same turn as a Messages request: the system prompt apart, a user turn first.
        let messages: Value =
            serde_json::from_slice(&workload.body(Api::Anthropic, &second)).expect("json");
        assert_eq!(
            messages["system"][0]["text"],
            body["messages"][0]["content"]
        );
        assert_eq!(messages["system"][0]["cache_control"]["type"], "ephemeral");
        assert_eq!(messages["messages"][0]["role"], "user");
        assert_eq!(messages["messages"][1], body["messages"][1]);
        assert_eq!(messages["messages"][4], body["messages"][4]);
        assert_eq!(messages["max_tokens"], 250);
        assert!(messages.get("call").is_none());
        workload.checkin(second);

        let third = workload.checkout();
        assert_ne!(third.call_id, first.call_id);
        assert_eq!((third.turn, third.caller.as_str()), (1, "+14155550001"));
    }

    #[test]
    fn concurrent_checkouts_get_distinct_calls_and_callers_wrap() {
        let workload = workload(2, 4);
        let calls: Vec<Conversation> = (0..3).map(|_| workload.checkout()).collect();
        assert_ne!(calls[0].call_id, calls[1].call_id);
        assert_ne!(calls[1].call_id, calls[2].call_id);
        assert_eq!(calls[0].caller, calls[2].caller);
        assert_eq!(calls[0].call_id.len(), 36);
    }
}
