//! Which models answer a turn. (What they are sent is built by each provider in
//! [`crate::upstream`], from the typed request.)

use crate::config::{AssistantSettings, UpstreamSettings};

/// The model of a turn: from a resumed call's second attempt on, the escalation model (the
/// assistant's, else `upstream.escalation_model`) when one is set; else the assistant's model,
/// `upstream.model`, or the model the request asked for, in that order.
pub(crate) fn primary(
    upstream: &UpstreamSettings,
    assistant: &AssistantSettings,
    requested: Option<&str>,
    resumed: bool,
) -> String {
    let first_set = |models: &[&str]| {
        models
            .iter()
            .find(|m| !m.is_empty())
            .map(|m| (*m).to_owned())
    };
    if resumed
        && let Some(model) = first_set(&[&assistant.escalation_model, &upstream.escalation_model])
    {
        return model;
    }
    first_set(&[
        &assistant.model,
        &upstream.model,
        requested.unwrap_or_default(),
    ])
    .unwrap_or_default()
}

/// The fallbacks of an assistant: its own when it lists any, else `upstream.fallback_models`.
pub(crate) fn fallbacks<'a>(
    upstream: &'a UpstreamSettings,
    assistant: &'a AssistantSettings,
) -> &'a [String] {
    if assistant.fallback_models.is_empty() {
        &upstream.fallback_models
    } else {
        &assistant.fallback_models
    }
}

/// Whether a turn of `assistant` has a model to ask when the request names none (Retell never
/// does): the assistant's `model` or `upstream.model`, or one of its fallbacks.
pub fn has_configured_model(upstream: &UpstreamSettings, assistant: &AssistantSettings) -> bool {
    !primary(upstream, assistant, None, false).is_empty()
        || fallbacks(upstream, assistant).iter().any(|m| !m.is_empty())
}

/// Model candidates in order: the primary, then the fallbacks (without repeats).
pub(crate) fn candidates(primary: &str, fallbacks: &[String]) -> Vec<String> {
    let mut out = vec![primary.to_owned()];
    for model in fallbacks {
        if !model.is_empty() && !out.contains(model) {
            out.push(model.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallbacks_follow_the_primary_without_repeats() {
        let fallbacks = vec![
            "b".to_owned(),
            "a".to_owned(),
            String::new(),
            "c".to_owned(),
        ];
        assert_eq!(candidates("a", &fallbacks), ["a", "b", "c"]);
    }

    #[test]
    fn the_assistant_model_wins_and_escalation_applies_to_resumed_calls() {
        let mut upstream = UpstreamSettings {
            model: "up".into(),
            escalation_model: "up-strong".into(),
            fallback_models: vec!["up-fb".into()],
            ..UpstreamSettings::default()
        };
        let mut assistant = AssistantSettings::default();
        assert_eq!(primary(&upstream, &assistant, Some("req"), false), "up");
        assert_eq!(
            primary(&upstream, &assistant, Some("req"), true),
            "up-strong"
        );
        assert_eq!(fallbacks(&upstream, &assistant), ["up-fb"]);
        assistant.model = "claude/haiku".into();
        assistant.escalation_model = "claude/sonnet".into();
        assistant.fallback_models = vec!["gpt".into()];
        assert_eq!(
            primary(&upstream, &assistant, Some("req"), false),
            "claude/haiku"
        );
        assert_eq!(primary(&upstream, &assistant, None, true), "claude/sonnet");
        assert_eq!(fallbacks(&upstream, &assistant), ["gpt"]);
        upstream.model.clear();
        assistant.model.clear();
        assert_eq!(primary(&upstream, &assistant, Some("req"), false), "req");
    }

    #[test]
    fn a_model_is_configured_by_the_assistant_or_upstream_or_a_fallback() {
        let mut upstream = UpstreamSettings::default();
        let mut assistant = AssistantSettings {
            escalation_model: "strong".into(),
            fallback_models: vec![String::new()],
            ..AssistantSettings::default()
        };
        assert!(
            !has_configured_model(&upstream, &assistant),
            "an escalation model answers only resumed calls"
        );
        upstream.fallback_models = vec!["up-fb".into()];
        assert!(
            !has_configured_model(&upstream, &assistant),
            "the assistant's own (empty) list replaces upstream's"
        );
        assistant.fallback_models.clear();
        assert!(has_configured_model(&upstream, &assistant));
        upstream.fallback_models.clear();
        assistant.model = "claude/haiku".into();
        assert!(has_configured_model(&upstream, &assistant));
        assistant.model.clear();
        upstream.model = "gpt".into();
        assert!(has_configured_model(&upstream, &assistant));
    }
}
