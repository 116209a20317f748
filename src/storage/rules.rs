//! The store's write rules, applied in memory to a record read under a lock.
//!
//! Both backends read the row inside a write transaction (Postgres `for no key update`, SQLite
//! `begin immediate`), apply one of these functions and write the result back, so the semantics
//! live in one place and the conformance suite holds both to them.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::text::{json, text};
use super::{Answer, CallSession, Caller, CallerPatch, CloseSession, SessionStatus};

/// Applies a profile patch. Returns whether anything changed; `updated_at` moves only then.
/// Values are compared and kept as stored ([`text`]), so re-sending a value with NUL is a no-op
/// and the returned caller matches the stored one.
pub(crate) fn apply_caller_patch(
    caller: &mut Caller,
    patch: &CallerPatch,
    now: DateTime<Utc>,
) -> bool {
    let mut changed = false;
    if let Some(name) = patch.name.as_deref().map(text) {
        changed |= caller.name.as_deref() != Some(&*name);
        caller.name = Some(name.into_owned());
    }
    if let Some(language) = patch.language.as_deref().map(text) {
        changed |= caller.language.as_deref() != Some(&*language);
        caller.language = Some(language.into_owned());
    }
    if let Some(note) = patch.note.as_deref().map(text)
        && !caller.notes.iter().any(|n| *n == *note)
    {
        caller.notes.push(note.into_owned());
        changed = true;
    }
    if changed {
        caller.updated_at = now;
    }
    changed
}

/// Confirms `field = value`. Returns whether anything changed: re-recording the same value is a
/// no-op. On a change the version is bumped, activity moves to `now` (never backwards), and the
/// session becomes `completed` when a non-empty `required` set is fully answered. An empty
/// `required` (no scripted required fields) never completes a session. The field and value are
/// compared and kept as stored ([`text`]).
pub(crate) fn apply_answer(
    session: &mut CallSession,
    field: &str,
    value: &str,
    required: &[String],
    now: DateTime<Utc>,
) -> bool {
    let (field, value) = (text(field), text(value));
    if session
        .answers
        .get(&*field)
        .is_some_and(|a| a.value == value)
    {
        return false;
    }
    session.answers.insert(
        field.into_owned(),
        Answer {
            value: value.into_owned(),
            confirmed_at: now,
        },
    );
    let complete = !required.is_empty()
        && required
            .iter()
            .all(|name| session.answers.contains_key(name));
    if complete {
        session.status = SessionStatus::Completed;
    }
    session.last_activity_at = session.last_activity_at.max(now);
    session.version += 1;
    true
}

/// Applies a call-ended signal: a `completed` session keeps its status, the first `ended_at`
/// wins, a new ended reason replaces the old one, and `details`' top-level keys replace the stored
/// ones (a non-object `details` merges nothing).
pub(crate) fn apply_close(session: &mut CallSession, close: &CloseSession) {
    if session.status != SessionStatus::Completed {
        session.status = close.status;
    }
    session.ended_at.get_or_insert(close.ended_at);
    if let Some(reason) = &close.ended_reason {
        session.ended_reason = Some(text(reason).into_owned());
    }
    merge_details(&mut session.details, &json(&close.details));
    session.version += 1;
}

/// Top-level merge of `patch` into `stored`, both expected to be JSON objects.
fn merge_details(stored: &mut serde_json::Value, patch: &serde_json::Value) {
    let serde_json::Value::Object(patch) = patch else {
        return;
    };
    if !stored.is_object() {
        *stored = serde_json::Value::Object(serde_json::Map::new());
    }
    if let serde_json::Value::Object(stored) = stored {
        for (key, value) in patch {
            stored.insert(key.clone(), value.clone());
        }
    }
}

/// The caller's stored open action: "none" (any case) or blank means no action.
pub(crate) fn normalize_action(action: Option<&str>) -> Option<&str> {
    action
        .map(str::trim)
        .filter(|a| !a.is_empty() && !a.eq_ignore_ascii_case("none"))
}

/// When a lease taken at `now` for `lease` expires (saturating far in the future).
pub(crate) fn lease_expiry(now: DateTime<Utc>, lease: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(lease)
        .ok()
        .and_then(|delta| now.checked_add_signed(delta))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_action_treats_none_and_blank_as_no_action() {
        assert_eq!(normalize_action(Some("None")), None);
        assert_eq!(normalize_action(Some("  ")), None);
        assert_eq!(normalize_action(None), None);
        assert_eq!(normalize_action(Some(" call back ")), Some("call back"));
    }

    #[test]
    fn merge_details_replaces_top_level_keys_and_ignores_non_objects() {
        let mut stored = serde_json::json!({"a": 1, "b": {"x": 1}});
        merge_details(&mut stored, &serde_json::json!({"b": {"y": 2}, "c": 3}));
        assert_eq!(stored, serde_json::json!({"a": 1, "b": {"y": 2}, "c": 3}));
        merge_details(&mut stored, &serde_json::Value::Null);
        assert_eq!(stored, serde_json::json!({"a": 1, "b": {"y": 2}, "c": 3}));
    }

    #[test]
    fn values_with_nul_are_kept_as_stored_so_resending_them_changes_nothing() {
        let now = Utc::now();
        let mut caller = Caller {
            caller_id: uuid::Uuid::now_v7(),
            phone: "+14155550123".into(),
            name: None,
            language: None,
            notes: Vec::new(),
            last_summary: None,
            last_sentiment: None,
            last_action: None,
            last_call_at: None,
            call_count: 0,
            first_seen_at: now,
            last_seen_at: now,
            updated_at: now,
        };
        let patch = CallerPatch {
            name: Some("Ann\0".into()),
            language: Some("\0en".into()),
            note: Some("likes\0tea".into()),
        };
        assert!(apply_caller_patch(&mut caller, &patch, now));
        assert_eq!(caller.name.as_deref(), Some("Ann\u{fffd}"));
        assert_eq!(caller.language.as_deref(), Some("\u{fffd}en"));
        assert_eq!(caller.notes, ["likes\u{fffd}tea"]);
        assert!(!apply_caller_patch(&mut caller, &patch, now));
        assert_eq!(caller.notes.len(), 1);

        let close = CloseSession {
            status: SessionStatus::Ended,
            ended_reason: Some("hung\0up".into()),
            ended_at: now,
            details: serde_json::json!({"t\0": "x\0"}),
        };
        let mut session = CallSession {
            session_id: uuid::Uuid::now_v7(),
            platform: crate::platforms::Platform::Vapi,
            call_key: "c".into(),
            caller_id: None,
            assistant_id: String::new(),
            status: SessionStatus::Active,
            attempt: 1,
            resumes_session_id: None,
            answers: super::super::Answers::new(),
            prior_calls: 0,
            prior_call_at: None,
            model: None,
            ended_reason: None,
            details: serde_json::json!({}),
            started_at: now,
            last_activity_at: now,
            ended_at: None,
            version: 1,
        };
        assert!(apply_answer(&mut session, "f\0", "v\0", &[], now));
        assert_eq!(session.answers["f\u{fffd}"].value, "v\u{fffd}");
        assert!(!apply_answer(&mut session, "f\0", "v\0", &[], now));
        apply_close(&mut session, &close);
        assert_eq!(session.ended_reason.as_deref(), Some("hung\u{fffd}up"));
        assert_eq!(
            session.details,
            serde_json::json!({"t\u{fffd}": "x\u{fffd}"})
        );
    }

    #[test]
    fn lease_expiry_saturates_instead_of_overflowing() {
        let now = Utc::now();
        assert_eq!(lease_expiry(now, Duration::MAX), DateTime::<Utc>::MAX_UTC);
        assert_eq!(
            lease_expiry(now, Duration::from_secs(30)),
            now + TimeDelta::seconds(30)
        );
    }
}
