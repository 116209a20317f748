//! The records the store keeps, shared by both backends.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::platforms::{Platform, UnknownPlatform};
mod labels;

pub use labels::{AnalysisSource, AuditAction, AuditActor};

/// Defines a string-backed enum with `as_str`, `Display` and `FromStr`.
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// The stored spelling.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = super::StoreError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    other => Err(super::StoreError::Corrupt(
                        format!("unknown {} {other:?}", stringify!($name)),
                    )),
                }
            }
        }
    };
}

impl From<UnknownPlatform> for super::StoreError {
    fn from(e: UnknownPlatform) -> Self {
        Self::Corrupt(e.to_string())
    }
}

string_enum!(
    /// Where a call session stands.
    SessionStatus {
        /// The call is in progress.
        Active => "active",
        /// Every required scripted field is confirmed.
        Completed => "completed",
        /// The platform reported the call ended.
        Ended => "ended",
        /// The call went away without an end signal (e.g. it went silent past the window).
        Dropped => "dropped",
    }
);

string_enum!(
    /// Who produced a turn.
    TurnRole {
        /// The caller.
        User => "user",
        /// The agent's spoken reply.
        Assistant => "assistant",
        /// A tool call made by the model.
        ToolCall => "tool_call",
        /// A tool's result given back to the model.
        ToolResult => "tool_result",
    }
);

string_enum!(
    /// Where a job stands.
    JobStatus {
        /// Waiting for `run_at`.
        Queued => "queued",
        /// Leased to a worker.
        Running => "running",
        /// Finished successfully.
        Done => "done",
        /// Given up after its attempts.
        Failed => "failed",
        /// Failed on configuration; waits for a start that may allow it (see
        /// `JobStore::wait_job`).
        Waiting => "waiting",
    }
);

/// One person, keyed by their E.164 phone number, shared across assistants and platforms.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Caller {
    /// Primary key.
    pub caller_id: Uuid,
    /// E.164 number.
    pub phone: String,
    /// Name as the caller gave it.
    pub name: Option<String>,
    /// Preferred language (free text or a BCP 47 tag).
    pub language: Option<String>,
    /// Short facts remembered about the caller, oldest first, without duplicates.
    pub notes: Vec<String>,
    /// Summary of the last analysed call.
    pub last_summary: Option<String>,
    /// Sentiment of the last analysed call.
    pub last_sentiment: Option<String>,
    /// Open action from the last analysed call (`none` is stored as `None`).
    pub last_action: Option<String>,
    /// When the most recent call started.
    pub last_call_at: Option<DateTime<Utc>>,
    /// How many calls this caller has made (each call session counted once).
    pub call_count: i64,
    /// First time the caller was seen.
    pub first_seen_at: DateTime<Utc>,
    /// Last time the caller was seen.
    pub last_seen_at: DateTime<Utc>,
    /// Last change to the row.
    pub updated_at: DateTime<Utc>,
}

/// A change to a caller's profile; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CallerPatch {
    /// New name.
    pub name: Option<String>,
    /// New language.
    pub language: Option<String>,
    /// A note to add (skipped when already present).
    pub note: Option<String>,
}

/// What an analysis changes on the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct CallerAnalysisUpdate {
    /// The caller to update.
    pub caller_id: Uuid,
    /// New `last_summary`.
    pub summary: String,
    /// New `last_sentiment`.
    pub sentiment: Option<String>,
    /// New `last_action` (`None` clears it).
    pub action: Option<String>,
    /// When the update happened.
    pub now: DateTime<Utc>,
}

/// One confirmed scripted answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// The value as confirmed.
    pub value: String,
    /// When it was confirmed.
    pub confirmed_at: DateTime<Utc>,
}

/// Confirmed answers by field name.
pub type Answers = BTreeMap<String, Answer>;

/// One platform call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallSession {
    /// Primary key.
    pub session_id: Uuid,
    /// The platform that carries the call.
    pub platform: Platform,
    /// The platform's call id (unique per platform).
    pub call_key: String,
    /// The caller, when identified.
    pub caller_id: Option<Uuid>,
    /// The platform's assistant or agent id (`""` when unknown).
    pub assistant_id: String,
    /// Where the call stands.
    pub status: SessionStatus,
    /// 1 for a fresh call, n for the n-th attempt at a resumed conversation.
    pub attempt: i32,
    /// The session this one resumes.
    pub resumes_session_id: Option<Uuid>,
    /// Confirmed answers.
    pub answers: Answers,
    /// The caller's call count before this call (snapshot at creation).
    pub prior_calls: i64,
    /// When the caller's previous call started (snapshot at creation).
    pub prior_call_at: Option<DateTime<Utc>>,
    /// The model that last served the call.
    pub model: Option<String>,
    /// Why the call ended, as the platform said.
    pub ended_reason: Option<String>,
    /// Platform data about the call (cost, transcript, recordings, platform summary…).
    pub details: serde_json::Value,
    /// When the call started.
    pub started_at: DateTime<Utc>,
    /// Last turn or answer.
    pub last_activity_at: DateTime<Utc>,
    /// When the call ended.
    pub ended_at: Option<DateTime<Utc>>,
    /// Optimistic-concurrency version, bumped on every change.
    pub version: i64,
}

/// A session to create.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewSession {
    /// Primary key, minted by the caller (`Uuid::now_v7`).
    pub session_id: Uuid,
    /// The platform.
    pub platform: Platform,
    /// The platform's call id.
    pub call_key: String,
    /// The caller, when identified.
    pub caller_id: Option<Uuid>,
    /// The assistant id (`""` when unknown).
    pub assistant_id: String,
    /// Attempt number (1 unless resuming).
    pub attempt: i32,
    /// The session this one resumes.
    pub resumes_session_id: Option<Uuid>,
    /// Answers inherited from the resumed session.
    pub answers: Answers,
    /// Initial status (`active`, or `completed` when inherited answers already complete it).
    pub status: SessionStatus,
    /// The model serving the first turn.
    pub model: Option<String>,
    /// When the call started.
    pub started_at: DateTime<Utc>,
}

/// The result of [`super::SessionStore::record_answer`].
#[derive(Debug, Clone, PartialEq)]
pub struct AnswerOutcome {
    /// The session after the write.
    pub session: CallSession,
    /// Whether anything changed.
    pub changed: bool,
}

/// A call-ended signal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloseSession {
    /// The status to set unless the session is `completed`.
    pub status: SessionStatus,
    /// Why the call ended.
    pub ended_reason: Option<String>,
    /// When the call ended.
    pub ended_at: DateTime<Utc>,
    /// Platform data to merge into the session's details (top-level keys replace).
    pub details: serde_json::Value,
}

/// One entry of a call's conversation log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Turn {
    /// Monotonic position across the whole store (orders a session's turns).
    pub seq: i64,
    /// The session.
    pub session_id: Uuid,
    /// Dedupe key within the session.
    pub idempotency_key: String,
    /// Who produced it.
    pub role: TurnRole,
    /// Text (for tool calls, the arguments JSON; for tool results, the result).
    pub content: String,
    /// Tool name, for tool calls and results.
    pub tool_name: Option<String>,
    /// Tool call id, for tool calls and results.
    pub tool_call_id: Option<String>,
    /// An assistant reply cut short (upstream failure or client gone).
    pub partial: bool,
    /// When it happened.
    pub created_at: DateTime<Utc>,
}

/// A turn to append.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewTurn {
    /// Dedupe key within the session.
    pub idempotency_key: String,
    /// Who produced it.
    pub role: TurnRole,
    /// Text.
    pub content: String,
    /// Tool name.
    pub tool_name: Option<String>,
    /// Tool call id.
    pub tool_call_id: Option<String>,
    /// A reply cut short.
    pub partial: bool,
    /// When it happened.
    pub created_at: DateTime<Utc>,
}

/// A call's first write, as [`super::SessionStore::start_call`] takes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallStart {
    /// The session to create (its `caller_id` is set from `phone` when one is given).
    pub session: NewSession,
    /// The caller's E.164 number, upserted first.
    pub phone: Option<String>,
    /// An abandoned call this one resumes, to close (as `dropped`, say).
    pub close_previous: Option<(Uuid, CloseSession)>,
    /// When (the caller's `last_seen_at`).
    pub now: DateTime<Utc>,
}

/// What [`super::SessionStore::start_call`] stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StartedCall {
    /// The call's session: the new one, or the one already stored for the platform's call.
    pub session: CallSession,
    /// The caller as upserted, before this call was counted on it.
    pub caller: Option<Caller>,
    /// Whether this call created the session.
    pub created: bool,
}

/// One finished turn of a session to store, as [`super::TurnStore::save_turns`] takes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnWrite {
    /// The session the turn belongs to.
    pub session_id: Uuid,
    /// The turns to append, in order (keys already stored are skipped).
    pub turns: Vec<NewTurn>,
    /// The model that served the turn, when known.
    pub model: Option<String>,
    /// Accesses to record with it.
    pub audit: Vec<NewAudit>,
    /// Tokens the turn used, one entry per model that answered (keys already stored are
    /// skipped). Journals written before usage was recorded have none.
    #[serde(default)]
    pub usage: Vec<NewUsage>,
    /// The call's first write, when the turn is its first: stored before the turns, in the same
    /// transaction (see [`super::TurnStore::save_batch`]). `session_id` is its new session's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<CallStart>,
}

/// What [`super::TurnStore::save_batch`] did with one item.
#[derive(Debug, Clone, PartialEq)]
pub struct Saved {
    /// How many of its turns were inserted; `None` when its session does not exist (nothing of
    /// the item is stored).
    pub inserted: Option<u64>,
    /// For an item that started its call, what the start stored.
    pub started: Option<StartedCall>,
}

/// Tokens one model used in one turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewUsage {
    /// Unique within the session: a re-sent request stores its usage once.
    pub usage_key: String,
    /// The model, as configured or requested (`provider/model` included).
    pub model: String,
    /// Input tokens, cached ones included.
    pub prompt_tokens: u64,
    /// Output tokens.
    pub completion_tokens: u64,
    /// Input tokens read from the provider's prompt cache.
    pub cached_tokens: u64,
    /// When the turn ran.
    pub created_at: DateTime<Utc>,
}

/// A call's tokens on one model, summed over its turns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelUsage {
    /// The model.
    pub model: String,
    /// Turns (upstream replies to one request) the model answered.
    pub turns: u64,
    /// Input tokens, cached ones included.
    pub prompt_tokens: u64,
    /// Output tokens.
    pub completion_tokens: u64,
    /// Input tokens read from the prompt cache.
    pub cached_tokens: u64,
}

/// Whether a keyed write was new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Stored now, with this id.
    New(Uuid),
    /// Already stored under the same key; nothing changed.
    Duplicate,
}

impl Recorded {
    /// Whether this write stored something.
    pub fn is_new(self) -> bool {
        matches!(self, Self::New(_))
    }
}

/// A webhook as received.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewWebhookEvent {
    /// Primary key.
    pub event_id: Uuid,
    /// The sending platform.
    pub platform: Platform,
    /// The platform's event type (e.g. `end-of-call-report`).
    pub event_type: String,
    /// The call it is about.
    pub call_key: Option<String>,
    /// Unique key (platform, event, call): a second delivery is a duplicate.
    pub dedupe_key: String,
    /// The raw body as received (lone surrogate escapes repaired; NUL is stored as U+FFFD).
    pub payload: String,
    /// When it arrived.
    pub received_at: DateTime<Utc>,
}

/// A job to enqueue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewJob {
    /// Primary key.
    pub job_id: Uuid,
    /// What to run (e.g. `analyze_call`).
    pub kind: String,
    /// Unique key: the same work is enqueued once.
    pub dedupe_key: String,
    /// Arguments.
    pub payload: serde_json::Value,
    /// Earliest start.
    pub run_at: DateTime<Utc>,
    /// Attempts before giving up.
    pub max_attempts: i32,
}

/// A queued or finished job.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Primary key.
    pub job_id: Uuid,
    /// What to run.
    pub kind: String,
    /// Unique key.
    pub dedupe_key: String,
    /// Arguments.
    pub payload: serde_json::Value,
    /// Where it stands.
    pub status: JobStatus,
    /// Attempts started so far.
    pub attempts: i32,
    /// Attempts before giving up.
    pub max_attempts: i32,
    /// Earliest (next) start.
    pub run_at: DateTime<Utc>,
    /// The worker holding the lease.
    pub locked_by: Option<String>,
    /// Lease expiry.
    pub locked_until: Option<DateTime<Utc>>,
    /// The last failure.
    pub last_error: Option<String>,
    /// Enqueued at.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// A worker's hold on a claimed job: the worker and the attempt its claim started. Every later
/// write to the job names it, so a worker whose lease was taken over (a later claim bumped
/// `attempts`) can neither renew nor finish the job over its new holder's head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobLease {
    /// The job held.
    pub job_id: Uuid,
    /// The worker that claimed it.
    pub worker: String,
    /// `attempts` as the claim set it.
    pub attempt: i32,
}

impl Job {
    /// The lease a claim returned (`None` when the job is not held by anyone).
    pub fn lease(&self) -> Option<JobLease> {
        self.locked_by.as_ref().map(|worker| JobLease {
            job_id: self.job_id,
            worker: worker.clone(),
            attempt: self.attempts,
        })
    }
}

/// A post-call analysis to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAnalysis {
    /// Primary key.
    pub analysis_id: Uuid,
    /// The analysed call.
    pub session_id: Uuid,
    /// Who produced it: redial, or the platform's own analysis.
    pub source: AnalysisSource,
    /// Two-line summary.
    pub summary: String,
    /// 1 (routine) to 5 (urgent).
    pub urgency: Option<i32>,
    /// Follow-up action.
    pub action: Option<String>,
    /// Caller sentiment.
    pub sentiment: Option<String>,
    /// The full result as produced.
    pub raw: serde_json::Value,
    /// The model that produced it.
    pub model: Option<String>,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// A stored analysis.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Analysis {
    /// Primary key.
    pub analysis_id: Uuid,
    /// The analysed call.
    pub session_id: Uuid,
    /// Who produced it.
    pub source: AnalysisSource,
    /// Two-line summary.
    pub summary: String,
    /// 1 to 5.
    pub urgency: Option<i32>,
    /// Follow-up action.
    pub action: Option<String>,
    /// Caller sentiment.
    pub sentiment: Option<String>,
    /// The full result.
    pub raw: serde_json::Value,
    /// The model.
    pub model: Option<String>,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// An access to a caller's data, to record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewAudit {
    /// Dedupe key: an entry whose key is already stored is not appended again, so a write that
    /// is retried or replayed from the outage journal records the access once. `None` = always
    /// appended.
    #[serde(default)]
    pub entry_key: Option<Uuid>,
    /// The caller whose data was touched.
    pub caller_id: Option<Uuid>,
    /// The call in whose context it happened.
    pub session_id: Option<Uuid>,
    /// Who or what.
    pub actor: AuditActor,
    /// What.
    pub action: AuditAction,
    /// Why (`turn`, `record_answer`, `analysis`…).
    pub reason: String,
    /// Extra context (never secrets).
    pub details: serde_json::Value,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// A recorded access.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    /// Monotonic id.
    pub audit_id: i64,
    /// The caller.
    pub caller_id: Option<Uuid>,
    /// The call.
    pub session_id: Option<Uuid>,
    /// Who.
    pub actor: AuditActor,
    /// What.
    pub action: AuditAction,
    /// Why.
    pub reason: String,
    /// Extra context.
    pub details: serde_json::Value,
    /// When.
    pub created_at: DateTime<Utc>,
}
