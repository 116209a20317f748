//! Token usage and what it costs: counted in metrics by model as each upstream pass reports it.

use crate::config::{PriceSettings, Settings};
use crate::storage::ModelUsage;
use crate::upstream::Usage;

/// The configured price of `model`: its own entry (`provider/model` as written), else the entry
/// of the model without its provider prefix.
pub fn price<'a>(settings: &'a Settings, model: &str) -> Option<&'a PriceSettings> {
    settings.prices.get(model).or_else(|| {
        model
            .split_once('/')
            .and_then(|(_, bare)| settings.prices.get(bare))
    })
}

/// The cost in US dollars of `usage` on `model`, when the model has a price.
pub fn cost(settings: &Settings, model: &str, usage: Usage) -> Option<f64> {
    price(settings, model).map(|p| {
        p.cost(
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.cached_tokens,
        )
    })
}

/// The cost in US dollars of one model's share of a call, when the model has a price.
pub fn model_cost(settings: &Settings, usage: &ModelUsage) -> Option<f64> {
    let tokens = Usage {
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
        cached_tokens: usage.cached_tokens,
    };
    cost(settings, &usage.model, tokens)
}

/// The cost in US dollars of a call's usage; `None` unless every model it used has a price.
pub fn call_cost(settings: &Settings, usage: &[ModelUsage]) -> Option<f64> {
    usage
        .iter()
        .try_fold(0.0, |total, u| model_cost(settings, u).map(|c| total + c))
}

/// Counts one reply's tokens (`redial_upstream_tokens_total{model,kind}`) and cost
/// (`redial_upstream_cost_microdollars_total{model}`).
pub fn count(settings: &Settings, model: &str, usage: Usage) {
    for (kind, tokens) in [
        ("prompt", usage.prompt_tokens),
        ("completion", usage.completion_tokens),
        ("cached", usage.cached_tokens),
    ] {
        metrics::counter!("redial_upstream_tokens_total", "model" => model.to_owned(), "kind" => kind)
            .increment(tokens);
    }
    if let Some(cost) = cost(settings, model, usage) {
        metrics::counter!("redial_upstream_cost_microdollars_total", "model" => model.to_owned())
            .increment((cost * 1_000_000.0).round() as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_uses_the_cached_price_for_cached_input_and_falls_back_to_the_bare_model() {
        let mut settings = Settings::default();
        settings.prices.insert(
            "claude-haiku".into(),
            PriceSettings {
                input_per_mtok: 1.0,
                output_per_mtok: 5.0,
                cached_input_per_mtok: Some(0.1),
            },
        );
        let usage = Usage {
            prompt_tokens: 1_000_000,
            completion_tokens: 200_000,
            cached_tokens: 500_000,
        };
        let cost = cost(&settings, "claude/claude-haiku", usage).unwrap();
        assert!((cost - (0.5 + 0.05 + 1.0)).abs() < 1e-9, "{cost}");
        assert!(super::cost(&settings, "gpt-4o", usage).is_none());
        let call = |model: &str| ModelUsage {
            model: model.into(),
            turns: 2,
            prompt_tokens: 1_000_000,
            completion_tokens: 0,
            cached_tokens: 0,
        };
        let total = call_cost(
            &settings,
            &[call("claude-haiku"), call("claude/claude-haiku")],
        );
        assert!((total.unwrap() - 2.0).abs() < 1e-9);
        assert!(call_cost(&settings, &[call("claude-haiku"), call("gpt-4o")]).is_none());
    }
}
