//! Platform webhooks, transport-free: signature verification ([`signature`]) and normalisation
//! of the three platforms' bodies into one [`WebhookEvent`] ([`event`]).
//!
//! The HTTP layer takes the body as raw bytes, verifies it with the platform's function (which
//! needs those exact bytes), then calls [`parse`]:
//!
//! ```
//! use redial::storage::Platform;
//! use redial::webhooks::{self, EventKind};
//!
//! let body = br#"{"event":"call_ended"}"#; // the raw bytes, never re-serialised JSON
//! let header = "v=1700000000000,d=07024cabe7dd8f6d1c6e4a8324ca92c812e6ad4a7ee506c04f7e462e3321823e";
//! let now_ms = 1_700_000_000_000;
//! webhooks::verify_retell(Some(header), body, "test-api-key", now_ms)?; // error → 401
//! let body = webhooks::replace_lone_surrogates(body); // only after the signature check
//! let event = webhooks::parse(Platform::Retell, &body)?; // error → 400
//! assert_eq!(event.kind, EventKind::CallEnded);
//! assert_eq!(event.dedupe_key, "retell:call_ended:-");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Dedupe keys are `"{platform}:{event_type}:{call_key or -}"`. Two refinements keep distinct
//! events apart: Vapi `status-update` inserts its status (`vapi:status-update:ended:<id>`), and
//! any other Vapi message that is not a lifecycle event (`conversation-update`, `tool-calls`,
//! `speech-update`…, which repeat within a call) appends its `message.timestamp`. Retell's
//! repeated `transcript_updated` keeps one key per call: only the latest matters.

mod elevenlabs;
mod escapes;
pub mod event;
mod json;
mod retell;
pub mod signature;
mod vapi;

pub use escapes::replace_lone_surrogates;
pub use event::{CallEnd, EventKind, ParseError, PlatformAnalysisData, WebhookEvent, parse};
pub use signature::{
    SignatureError, VapiAuthHeaders, verify_elevenlabs, verify_retell, verify_vapi,
};
