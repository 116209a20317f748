//! Assistant scripts in the state summary: resumption notice, confirmed answers, next question.

use crate::config::AssistantSettings;
use crate::storage::{Answers, CallSession};

use super::summary::quote;

/// The script's lines for the state summary, highest priority first.
pub fn lines(session: &CallSession, script: &AssistantSettings) -> Vec<String> {
    let mut lines = Vec::new();
    if session.attempt >= 2 {
        lines.push(format!(
            "This call resumes an earlier call from this caller that ended before every question \
             was answered (attempt {}). Welcome them back, do not start over, and do not ask \
             again for confirmed answers.",
            session.attempt
        ));
    }
    if script.fields.is_empty() {
        return lines;
    }
    let confirmed: Vec<String> = script
        .fields
        .iter()
        .filter_map(|f| {
            session
                .answers
                .get(&f.name)
                .map(|a| format!("{} = {}", f.name, quote(&a.value)))
        })
        .collect();
    if !confirmed.is_empty() {
        lines.push(format!(
            "Confirmed answers (do not ask again): {}.",
            confirmed.join("; ")
        ));
    }
    match next_question(script, &session.answers) {
        Some(question) => lines.push(format!("Next question to ask: {}", quote(question))),
        None => lines.push("Every scripted question is answered.".to_owned()),
    }
    lines
}

/// The first unanswered required question, else the first unanswered optional one.
pub fn next_question<'a>(script: &'a AssistantSettings, answers: &Answers) -> Option<&'a str> {
    let unanswered = |required: bool| {
        script
            .fields
            .iter()
            .find(|f| f.required == required && !answers.contains_key(&f.name))
            .map(|f| f.question.as_str())
    };
    unanswered(true).or_else(|| unanswered(false))
}

/// Whether some required field is still unanswered.
pub fn incomplete(script: &AssistantSettings, answers: &Answers) -> bool {
    script
        .fields
        .iter()
        .any(|f| f.required && !answers.contains_key(&f.name))
}
