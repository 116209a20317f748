//! Counts what the database holds against what the callers were answered: turns and answers
//! lost, and rows stored more than once.

use std::collections::{BTreeMap, HashMap};

use anyhow::Context as _;
use serde::Serialize;
use sqlx::{Connection as _, PgConnection};

use super::callers::CallLog;
use crate::suite::redact;

/// Stored versus answered, for one run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Caller turns answered in full.
    pub turns_answered: u64,
    /// Answered turns whose caller words or reply are not stored.
    pub turns_lost: u64,
    /// Answers (last confirmed value per call and field) the callers had confirmed.
    pub answers_confirmed: u64,
    /// Confirmed answers whose stored value is missing or different.
    pub answers_lost: u64,
    /// `record_answer` tool calls answered but not stored as a `tool_call` turn.
    pub tool_calls_lost: u64,
    /// `record_answer` audit entries missing.
    pub audit_entries_lost: u64,
    /// Calls with an answered turn that have no session at all.
    pub calls_missing: u64,
    /// Calls whose stored caller turns (in `turn.seq` order) are not in the order spoken.
    pub calls_out_of_order: u64,
    /// Up to three of them: the call and its caller turns as stored.
    pub out_of_order_examples: Vec<String>,
    /// Rows stored more than once: the same turn (call, role, content), an audit entry beyond
    /// one per `record_answer`, a second session for a call. Must be 0.
    pub duplicates: u64,
}

/// What the database holds for one call.
#[derive(Debug, Default)]
struct Stored {
    sessions: u64,
    /// `(role, content)` of user, assistant and tool-call turns, with how often each is stored.
    turns: HashMap<(String, String), u64>,
    answers: BTreeMap<String, String>,
    audit: u64,
    /// The call's user turns in `turn.seq` order.
    user_order: Vec<String>,
}

/// Reads the database at `url` (directly, not through the proxy) and compares it with `calls`.
pub async fn count(url: &str, calls: &[CallLog]) -> anyhow::Result<Tally> {
    let mut connection = PgConnection::connect(url)
        .await
        .with_context(|| format!("connecting to {}", redact(url)))?;
    let stored = read(&mut connection).await;
    connection.close().await.context("closing the connection")?;
    Ok(compare(calls, &stored?))
}

async fn read(connection: &mut PgConnection) -> anyhow::Result<HashMap<String, Stored>> {
    let mut stored: HashMap<String, Stored> = HashMap::new();
    let sessions: Vec<(String, String)> =
        sqlx::query_as("select call_key, answers::text from call_session")
            .fetch_all(&mut *connection)
            .await
            .context("reading call sessions")?;
    for (call, answers) in sessions {
        let entry = stored.entry(call).or_default();
        entry.sessions += 1;
        entry.answers.extend(answer_values(&answers)?);
    }
    let turns: Vec<(String, String, String, i64)> = sqlx::query_as(
        "select s.call_key, t.role, t.content, count(*) from turn t \
         join call_session s on s.session_id = t.session_id \
         where t.role in ('user', 'assistant', 'tool_call') \
         group by s.call_key, t.role, t.content",
    )
    .fetch_all(&mut *connection)
    .await
    .context("reading turns")?;
    for (call, role, content, n) in turns {
        let entry = stored.entry(call).or_default();
        entry.turns.insert((role, content), n.unsigned_abs());
    }
    let order: Vec<(String, String)> = sqlx::query_as(
        "select s.call_key, t.content from turn t \
         join call_session s on s.session_id = t.session_id \
         where t.role = 'user' order by t.created_at, t.seq",
    )
    .fetch_all(&mut *connection)
    .await
    .context("reading the order of turns")?;
    for (call, content) in order {
        stored.entry(call).or_default().user_order.push(content);
    }
    let audits: Vec<(String, i64)> = sqlx::query_as(
        "select s.call_key, count(*) from audit_log a \
         join call_session s on s.session_id = a.session_id \
         where a.reason = 'record_answer' group by s.call_key",
    )
    .fetch_all(&mut *connection)
    .await
    .context("reading audit entries")?;
    for (call, n) in audits {
        stored.entry(call).or_default().audit = n.unsigned_abs();
    }
    Ok(stored)
}

/// `{"field": {"value": "…", …}, …}` → field → value.
fn answer_values(json: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let answers: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(json).context("parsing call_session.answers")?;
    Ok(answers
        .into_iter()
        .filter_map(|(field, answer)| Some((field, answer["value"].as_str()?.to_owned())))
        .collect())
}

fn compare(calls: &[CallLog], stored: &HashMap<String, Stored>) -> Tally {
    let empty = Stored::default();
    let mut tally = Tally::default();
    for call in calls.iter().filter(|call| !call.said.is_empty()) {
        let held = stored.get(&call.id).unwrap_or(&empty);
        tally.turns_answered += call.said.len() as u64;
        tally.calls_missing += u64::from(held.sessions == 0);
        tally.duplicates += held.sessions.saturating_sub(1);
        let times = |role: &str, content: &str| {
            held.turns
                .get(&(role.to_owned(), content.to_owned()))
                .copied()
                .unwrap_or(0)
        };
        for (said, reply) in call.said.iter().zip(&call.replies) {
            let (user, assistant) = (times("user", said), times("assistant", reply));
            tally.turns_lost += u64::from(user == 0 || assistant == 0);
            tally.duplicates += user.saturating_sub(1) + assistant.saturating_sub(1);
        }
        let tool_calls: u64 = held
            .turns
            .iter()
            .filter(|((role, _), _)| role == "tool_call")
            .map(|(_, n)| *n)
            .sum();
        let distinct_tool_calls = held
            .turns
            .keys()
            .filter(|(role, _)| role == "tool_call")
            .count() as u64;
        let tool_turns = call.tool_turns as u64;
        tally.tool_calls_lost += tool_turns.saturating_sub(distinct_tool_calls);
        tally.duplicates += tool_calls - distinct_tool_calls;
        tally.audit_entries_lost += tool_turns.saturating_sub(held.audit);
        tally.duplicates += held.audit.saturating_sub(tool_turns);
        if !in_order(&call.said, &held.user_order) {
            tally.calls_out_of_order += 1;
            if tally.out_of_order_examples.len() < 3 {
                let example = format!("{}: stored {:?}", call.id, held.user_order);
                tally.out_of_order_examples.push(example);
            }
        }
        tally.answers_confirmed += call.answers.len() as u64;
        tally.answers_lost += call
            .answers
            .iter()
            .filter(|(field, value)| held.answers.get(*field) != Some(*value))
            .count() as u64;
    }
    tally
}

/// Whether the first stored occurrences of the spoken turns come in the order spoken (turns
/// not stored are counted as lost elsewhere; other stored turns are ignored).
fn in_order(said: &[String], stored: &[String]) -> bool {
    let mut seen = std::collections::HashSet::new();
    let stored: Vec<&String> = stored
        .iter()
        .filter(|turn| said.contains(turn) && seen.insert(*turn))
        .collect();
    let spoken: Vec<&String> = said.iter().filter(|turn| seen.contains(turn)).collect();
    stored == spoken
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: &str, turns: usize, answers: &[(&str, &str)]) -> CallLog {
        CallLog {
            id: id.into(),
            said: (0..turns).map(|t| format!("{id} says {t}")).collect(),
            replies: (0..turns).map(|t| format!("Reply {t}")).collect(),
            answers: answers
                .iter()
                .map(|(f, v)| ((*f).to_owned(), (*v).to_owned()))
                .collect(),
            tool_turns: answers.len(),
        }
    }

    fn stored_as_said(call: &CallLog) -> Stored {
        let mut turns = HashMap::new();
        for (said, reply) in call.said.iter().zip(&call.replies) {
            turns.insert(("user".to_owned(), said.clone()), 1);
            turns.insert(("assistant".to_owned(), reply.clone()), 1);
        }
        for (field, value) in &call.answers {
            turns.insert(("tool_call".to_owned(), format!("{field}={value}")), 1);
        }
        Stored {
            sessions: 1,
            turns,
            answers: call.answers.clone(),
            audit: call.tool_turns as u64,
            user_order: call.said.clone(),
        }
    }

    #[test]
    fn everything_stored_once_is_a_clean_tally() {
        let calls = [call("a", 3, &[("amount", "5")]), call("b", 0, &[])];
        let stored = HashMap::from([("a".to_owned(), stored_as_said(&calls[0]))]);
        let tally = compare(&calls, &stored);
        assert_eq!(
            tally,
            Tally {
                turns_answered: 3,
                answers_confirmed: 1,
                ..Tally::default()
            }
        );
    }

    #[test]
    fn losses_and_duplicates_are_counted() {
        let calls = [
            call("a", 3, &[("amount", "5"), ("loan_purpose", "car")]),
            call("gone", 2, &[]),
        ];
        let mut held = stored_as_said(&calls[0]);
        held.turns
            .remove(&("assistant".to_owned(), "Reply 1".to_owned()));
        held.turns
            .insert(("user".to_owned(), "a says 0".to_owned()), 3);
        held.answers.insert("amount".into(), "6".into());
        held.turns
            .remove(&("tool_call".to_owned(), "amount=5".to_owned()));
        held.audit = 3;
        held.user_order.swap(0, 2);
        let stored = HashMap::from([("a".to_owned(), held)]);
        let tally = compare(&calls, &stored);
        assert_eq!(
            tally,
            Tally {
                turns_answered: 5,
                turns_lost: 3,
                answers_confirmed: 2,
                answers_lost: 1,
                tool_calls_lost: 1,
                audit_entries_lost: 0,
                calls_missing: 1,
                calls_out_of_order: 1,
                out_of_order_examples: vec![
                    "a: stored [\"a says 2\", \"a says 1\", \"a says 0\"]".to_owned()
                ],
                duplicates: 3,
            }
        );
    }

    #[test]
    fn order_ignores_lost_and_repeated_turns_but_not_swaps() {
        let said: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let stored = |turns: &[&str]| turns.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>();
        assert!(in_order(&said, &stored(&["a", "b", "c"])));
        assert!(in_order(&said, &stored(&["a", "c"])));
        assert!(in_order(&said, &stored(&["x", "a", "b", "a", "c"])));
        assert!(!in_order(&said, &stored(&["b", "a", "c"])));
        assert!(!in_order(&said, &stored(&["a", "c", "b"])));
    }

    #[test]
    fn answer_values_read_the_stored_shape() {
        let json = r#"{"amount": {"value": "5", "confirmed_at": "2026-01-01T00:00:00Z"}}"#;
        let values = answer_values(json).expect("parses");
        assert_eq!(values, BTreeMap::from([("amount".into(), "5".into())]));
    }
}
