//! What the simulator looks for in the upstream requests redial made for a turn (as the mock
//! recorded them): confirmed answers offered as the next question, and resumption notices.

use std::collections::BTreeSet;

use serde_json::Value;

/// The line of the state summary that offers the next scripted question.
const NEXT_QUESTION: &str = "Next question to ask: ";
/// The line of the state summary that marks a resumed call.
const RESUMED: &str = "resumes an earlier call";

/// A scripted field: its name and the question redial offers for it.
#[derive(Clone, Debug)]
pub struct Field {
    /// Field name, as `record_answer` passes it.
    pub name: &'static str,
    /// Its question.
    pub question: &'static str,
}

/// The simulator's assistant: three required questions, in order.
pub const FIELDS: [Field; 3] = [
    Field {
        name: "loan_purpose",
        question: "What is the loan for?",
    },
    Field {
        name: "amount",
        question: "How much do you need?",
    },
    Field {
        name: "start_date",
        question: "When should the loan start?",
    },
];

/// Whether `request` belongs to the turn in which the caller said `said`: its last user
/// message is that utterance.
pub fn belongs_to(request: &Value, said: &str) -> bool {
    request["messages"]
        .as_array()
        .and_then(|messages| messages.iter().rev().find(|m| m["role"] == "user"))
        .is_some_and(|m| m["content"].as_str() == Some(said))
}

/// The questions `request` asks the model to collect next: the summary's "Next question to
/// ask" lines and the `next_question` of `record_answer` results.
pub fn offered_questions(request: &Value) -> Vec<String> {
    let mut questions = Vec::new();
    for message in request["messages"].as_array().into_iter().flatten() {
        let Some(content) = message["content"].as_str() else {
            continue;
        };
        match message["role"].as_str() {
            Some("system") => {
                for (at, _) in content.match_indices(NEXT_QUESTION) {
                    if let Some(question) = json_string_at(&content[at + NEXT_QUESTION.len()..]) {
                        questions.push(question);
                    }
                }
            }
            Some("tool") => {
                let result = serde_json::from_str::<Value>(content).unwrap_or_default();
                if let Some(question) = result["next_question"].as_str() {
                    questions.push(question.to_owned());
                }
            }
            _ => {}
        }
    }
    questions
}

/// The confirmed fields that `requests` ask for again.
pub fn reasked(requests: &[&Value], confirmed: &BTreeSet<String>) -> BTreeSet<String> {
    let offered: Vec<String> = requests
        .iter()
        .flat_map(|request| offered_questions(request))
        .collect();
    FIELDS
        .iter()
        .filter(|f| confirmed.contains(f.name) && offered.iter().any(|q| q == f.question))
        .map(|f| f.name.to_owned())
        .collect()
}

/// Whether redial told the model this call resumes an earlier one.
pub fn resumed(request: &Value) -> bool {
    request["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["role"] == "system")
        .any(|m| m["content"].as_str().is_some_and(|c| c.contains(RESUMED)))
}

/// The JSON string literal at the start of `text`.
fn json_string_at(text: &str) -> Option<String> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<String>()
        .next()?
        .ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn request(summary: &str, tool: Option<&str>) -> Value {
        let mut messages = vec![
            json!({"role": "system", "content": "You are Ava."}),
            json!({"role": "system", "content": summary}),
            json!({"role": "user", "content": "Hello again"}),
        ];
        if let Some(tool) = tool {
            messages.push(json!({"role": "tool", "tool_call_id": "c", "content": tool}));
        }
        json!({"model": "m", "messages": messages})
    }

    #[test]
    fn a_confirmed_field_offered_again_is_reasked() {
        let confirmed: BTreeSet<String> = ["loan_purpose".to_owned()].into();
        let again = request(
            "Context:\n- This is the caller's first call.\n- Next question to ask: \"What is the loan for?\"",
            None,
        );
        assert_eq!(
            reasked(&[&again], &confirmed),
            ["loan_purpose".to_owned()].into()
        );
        assert!(!resumed(&again));
        assert!(belongs_to(&again, "Hello again"));
        assert!(!belongs_to(&again, "Hello"));

        let resumed_ok = request(
            "- This call resumes an earlier call from this caller\n- Confirmed answers (do not ask again): loan_purpose = \"a car\".\n- Next question to ask: \"How much do you need?\"",
            Some(r#"{"ok":true,"next_question":"When should the loan start?"}"#),
        );
        assert!(reasked(&[&resumed_ok], &confirmed).is_empty());
        assert!(resumed(&resumed_ok));
        assert_eq!(
            offered_questions(&resumed_ok),
            ["How much do you need?", "When should the loan start?"]
        );
    }

    #[test]
    fn a_tool_result_asking_for_a_confirmed_field_is_reasked() {
        let confirmed: BTreeSet<String> = ["amount".to_owned()].into();
        let tool = request(
            "",
            Some(r#"{"ok":true,"next_question":"How much do you need?"}"#),
        );
        assert_eq!(reasked(&[&tool], &confirmed), ["amount".to_owned()].into());
        let garbage = request("Next question to ask: not json", Some("not json"));
        assert!(offered_questions(&garbage).is_empty());
    }
}
