//! Checks of the loaded settings that types alone cannot express. Errors name the key and, via
//! `origin`, where its value came from.
//!
//! One function per settings section, run in the order the sections are listed in
//! [`validate`]; each stops at its first problem, so a config with several reports the first
//! of them in that order.

use crate::upstream::DEFAULT_PROVIDER;

use super::{
    AnalysisSettings, AssistantSettings, ConfigError, DatabaseSettings, LimitSettings,
    MemorySettings, NAME_PLACEHOLDER, Secret, ServerSettings, Settings, UpstreamSettings,
};

/// The outcome of one check.
type Checked = Result<(), ConfigError>;

/// Builds the error that names a key and where its value came from.
struct Check<'a> {
    origin: &'a dyn Fn(&str) -> String,
}

impl Check<'_> {
    /// The error for `key`.
    fn fail(&self, key: &str, message: impl std::fmt::Display) -> Checked {
        Err(ConfigError(format!(
            "invalid value for `{key}`{}: {message}",
            (self.origin)(key)
        )))
    }

    /// Fails on the first of `values` that is zero.
    fn positive(&self, values: &[(&str, u64)]) -> Checked {
        match values.iter().find(|(_, value)| *value == 0) {
            Some((key, _)) => self.fail(key, "must be greater than 0"),
            None => Ok(()),
        }
    }
}

/// Checks what types alone cannot.
pub(super) fn validate(
    settings: &Settings,
    origin: impl Fn(&str) -> String,
) -> Result<(), ConfigError> {
    let check = Check { origin: &origin };
    server(&settings.server, &check)?;
    database(&settings.database, &check)?;
    upstream(&settings.upstream, &check)?;
    memory(&settings.memory, &check)?;
    analysis(&settings.analysis, &settings.database, &check)?;
    assistants(&settings.assistants, &check)?;
    providers(settings, &check)?;
    models(settings, &check)?;
    limits(&settings.limits, &check)?;
    operator(settings, &check)
}

/// Provider names unique and usable as a model prefix; URLs, headers and bounds valid; prices
/// finite and not negative.
fn providers(settings: &Settings, check: &Check<'_>) -> Checked {
    let mut names = std::collections::BTreeSet::new();
    for (i, provider) in settings.providers.iter().enumerate() {
        let at = |key: &str| format!("providers[{i}].{key}");
        let valid_name = !provider.name.is_empty()
            && provider
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid_name {
            return check.fail(
                &at("name"),
                format!(
                    "{:?} must be letters, digits, `-`, `_` and `.` (it prefixes models: \
                     `name/model`)",
                    provider.name
                ),
            );
        }
        if !names.insert(provider.name.as_str()) {
            return check.fail(&at("name"), format!("{:?} is listed twice", provider.name));
        }
        if provider.name == DEFAULT_PROVIDER {
            return check.fail(
                &at("name"),
                format!(
                    "{DEFAULT_PROVIDER:?} is reserved: it names the [upstream] section \
                     (`{DEFAULT_PROVIDER}/model` sends a model to it as it is)"
                ),
            );
        }
        if !provider.base_url.is_empty() {
            let url = reqwest::Url::parse(&provider.base_url);
            if !url.is_ok_and(|u| matches!(u.scheme(), "http" | "https")) {
                return check.fail(
                    &at("base_url"),
                    format!("{:?} is not an http(s) URL", provider.base_url),
                );
            }
        }
        for (name, value) in &provider.headers {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
                || reqwest::header::HeaderValue::from_str(value.expose()).is_err()
            {
                return check.fail(
                    &at("headers"),
                    format!(
                        "{name:?} is not a valid header name, or its value is not a valid \
                             header value"
                    ),
                );
            }
        }
        if !(1..=1_000_000).contains(&provider.max_tokens) {
            return check.fail(&at("max_tokens"), "must be between 1 and 1000000");
        }
    }
    for (model, price) in &settings.prices {
        let values = [
            Some(price.input_per_mtok),
            Some(price.output_per_mtok),
            price.cached_input_per_mtok,
        ];
        if values
            .into_iter()
            .flatten()
            .any(|v| !v.is_finite() || v < 0.0)
        {
            return check.fail(
                &format!("prices.{model:?}"),
                "prices must be finite and not negative",
            );
        }
    }
    Ok(())
}

/// Every model the configuration names can be sent somewhere: `upstream.model`, its fallbacks
/// and escalation model, each assistant's `model`, `fallback_models` and `escalation_model`, and
/// `analysis.model`. With `[[providers]]` configured, a `name/model` must name one of them (or
/// `upstream/`, which sends the rest to `[upstream]` as it is); without any, every model goes
/// to `[upstream]` as it is (OpenRouter's and vLLM's `org/model` names included). Not blank,
/// and something after the provider's `name/`. (An assistant with no model at all is a
/// warning, not an error: the request may name one; see `startup::config_warnings`.)
fn models(settings: &Settings, check: &Check<'_>) -> Checked {
    let upstream = &settings.upstream;
    let section = [
        ("upstream.model", &upstream.model),
        ("upstream.escalation_model", &upstream.escalation_model),
        ("analysis.model", &settings.analysis.model),
    ];
    for (key, name) in section {
        model(settings, key, name, None, check)?;
    }
    fallbacks(
        settings,
        "upstream.",
        &upstream.fallback_models,
        None,
        check,
    )?;
    for (i, assistant) in settings.assistants.iter().enumerate() {
        let id = Some(assistant.id.as_str());
        let at = |key: &str| format!("assistants[{i}].{key}");
        model(settings, &at("model"), &assistant.model, id, check)?;
        let escalation = &assistant.escalation_model;
        model(settings, &at("escalation_model"), escalation, id, check)?;
        fallbacks(settings, &at(""), &assistant.fallback_models, id, check)?;
    }
    Ok(())
}

/// Each model of a `fallback_models` list (`owner`: `upstream.` or `assistants[i].`) is set
/// and goes somewhere.
fn fallbacks(
    settings: &Settings,
    owner: &str,
    list: &[String],
    assistant: Option<&str>,
    check: &Check<'_>,
) -> Checked {
    for (j, name) in list.iter().enumerate() {
        let key = format!("{owner}fallback_models[{j}]");
        if name.is_empty() {
            let whose = whose(assistant);
            return check.fail(&key, format!("is empty{whose}: list only models"));
        }
        model(settings, &key, name, assistant, check)?;
    }
    Ok(())
}

/// ` (assistant "id")` for a key of an assistant, else nothing.
fn whose(assistant: Option<&str>) -> String {
    assistant
        .map(|id| format!(" (assistant {id:?})"))
        .unwrap_or_default()
}

/// One configured model (empty = not set): not blank, and a `name/` prefix that routes it.
fn model(
    settings: &Settings,
    key: &str,
    name: &str,
    assistant: Option<&str>,
    check: &Check<'_>,
) -> Checked {
    if name.is_empty() {
        return Ok(());
    }
    let whose = whose(assistant);
    if name.trim() != name || name.contains(char::is_control) {
        return check.fail(
            key,
            format!("{name:?}{whose} must not be blank or begin or end with spaces"),
        );
    }
    let Some((prefix, rest)) = name.split_once('/') else {
        return Ok(());
    };
    let providers = &settings.providers;
    let known = prefix == DEFAULT_PROVIDER || providers.iter().any(|p| p.name == prefix);
    if known && rest.is_empty() {
        return check.fail(
            key,
            format!("{name:?}{whose} names no model after the provider {prefix:?}"),
        );
    }
    if !known && !providers.is_empty() {
        let names: Vec<&str> = providers.iter().map(|p| p.name.as_str()).collect();
        return check.fail(
            key,
            format!(
                "{name:?}{whose} names the provider {prefix:?}, which is not configured \
                 ([[providers]]: {}); write `name/model` with one of them, or \
                 `{DEFAULT_PROVIDER}/{name}` to send {name:?} to [upstream] as it is",
                names.join(", ")
            ),
        );
    }
    Ok(())
}

/// Dev mode stays on loopback; keys are real; the body limit fits a request.
fn server(server: &ServerSettings, check: &Check<'_>) -> Checked {
    if server.dev_mode() && !server.listen.ip().is_loopback() {
        return check.fail(
            "server.listen",
            format!(
                "{} is not a loopback address and no `server.api_keys` are configured. Without keys \
                 redial runs in dev mode and serves loopback only; set `server.api_keys` (or \
                 REDIAL_SERVER__API_KEYS=key1,key2) to listen on other interfaces",
                server.listen
            ),
        );
    }
    if server.api_keys.iter().any(Secret::is_empty) {
        return check.fail("server.api_keys", "keys must not be empty strings");
    }
    if server.body_limit_bytes < 1024 {
        return check.fail("server.body_limit_bytes", "must be at least 1024");
    }
    connections(server, check)
}

/// The connection timeouts and cap: a zero timeout would close every connection at once, and
/// a timeout of hours would let idle sockets pile up again.
fn connections(server: &ServerSettings, check: &Check<'_>) -> Checked {
    if !(100..=600_000).contains(&server.header_read_timeout_ms) {
        return check.fail(
            "server.header_read_timeout_ms",
            "must be between 100 and 600000 (milliseconds)",
        );
    }
    if !(1..=3_600).contains(&server.idle_timeout_secs) {
        return check.fail(
            "server.idle_timeout_secs",
            "must be between 1 and 3600 (seconds)",
        );
    }
    if server.max_connections > 1_000_000 {
        return check.fail(
            "server.max_connections",
            "must be at most 1000000 (0 = derived from the open-file limit)",
        );
    }
    Ok(())
}

/// A URL one of the backends serves; a pool and a write queue that can work.
fn database(db: &DatabaseSettings, check: &Check<'_>) -> Checked {
    let url = db.url.expose();
    if !(url.starts_with("sqlite:")
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://"))
    {
        return check.fail(
            "database.url",
            format!(
                "{:?} must start with sqlite:, postgres:// or postgresql://",
                db.url.redacted()
            ),
        );
    }
    if db.max_connections == 0 {
        return check.fail("database.max_connections", "must be at least 1");
    }
    if !(1..=10_000).contains(&db.write_batch_max) {
        return check.fail("database.write_batch_max", "must be between 1 and 10000");
    }
    if db.write_linger_ms > 1_000 {
        return check.fail(
            "database.write_linger_ms",
            "must be at most 1000 (milliseconds)",
        );
    }
    if !(1..=1_000_000).contains(&db.write_queue_capacity) {
        return check.fail(
            "database.write_queue_capacity",
            "must be between 1 and 1000000",
        );
    }
    if !(10..=60_000).contains(&db.write_timeout_ms) {
        return check.fail(
            "database.write_timeout_ms",
            "must be between 10 and 60000 (milliseconds)",
        );
    }
    Ok(())
}

/// An http(s) base URL, timeouts that are not zero, something to say when it fails, room for
/// at least one tool round.
fn upstream(upstream: &UpstreamSettings, check: &Check<'_>) -> Checked {
    match reqwest::Url::parse(&upstream.base_url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => {}
        _ => {
            return check.fail(
                "upstream.base_url",
                format!("{:?} is not an http(s) URL", upstream.base_url),
            );
        }
    }
    check.positive(&[
        ("upstream.connect_timeout_ms", upstream.connect_timeout_ms),
        (
            "upstream.first_token_timeout_ms",
            upstream.first_token_timeout_ms,
        ),
        (
            "upstream.stream_idle_timeout_ms",
            upstream.stream_idle_timeout_ms,
        ),
        ("upstream.heartbeat_ms", upstream.heartbeat_ms),
        (
            "upstream.http2_streams_per_connection",
            upstream.http2_streams_per_connection,
        ),
    ])?;
    if upstream.apology.trim().is_empty() {
        return check.fail(
            "upstream.apology",
            "must not be empty: it is what the caller hears when the upstream fails",
        );
    }
    if upstream.max_tool_rounds == 0 {
        return check.fail("upstream.max_tool_rounds", "must be at least 1");
    }
    Ok(())
}

/// A read budget, a known region, windows of at most ten years, a summary that says something.
fn memory(memory: &MemorySettings, check: &Check<'_>) -> Checked {
    check.positive(&[("memory.read_budget_ms", memory.read_budget_ms)])?;
    if !crate::platforms::phone::is_region(&memory.default_region) {
        return check.fail(
            "memory.default_region",
            format!(
                "{:?} is not an ISO 3166 alpha-2 region code such as \"US\"",
                memory.default_region
            ),
        );
    }
    const TEN_YEARS: u64 = 10 * 365 * 86_400;
    for (key, value) in [
        ("memory.resume_window_secs", memory.resume_window_secs),
        ("memory.live_window_secs", memory.live_window_secs),
        (
            "memory.retell_reconnect_grace_secs",
            memory.retell_reconnect_grace_secs,
        ),
    ] {
        if value > TEN_YEARS {
            return check.fail(key, format!("must be at most {TEN_YEARS} seconds"));
        }
    }
    if memory.summary_max_tokens < 16 {
        return check.fail("memory.summary_max_tokens", "must be at least 16");
    }
    Ok(())
}

/// An action list that includes `none`, at least one attempt, non-zero timings, and a lease
/// that outlasts renewals waiting for a connection (which is why it takes `database`).
fn analysis(analysis: &AnalysisSettings, db: &DatabaseSettings, check: &Check<'_>) -> Checked {
    if !analysis.actions.iter().any(|a| a == "none") {
        return check.fail("analysis.actions", "must include \"none\"");
    }
    if analysis.max_attempts < 1 {
        return check.fail("analysis.max_attempts", "must be at least 1");
    }
    check.positive(&[
        ("analysis.lease_secs", analysis.lease_secs),
        ("analysis.poll_interval_ms", analysis.poll_interval_ms),
        ("analysis.timeout_secs", analysis.timeout_secs),
    ])?;
    lease(analysis.lease_secs, db.connect_timeout_secs, check)
}

/// Longest `analysis.lease_secs`: a day (a crashed worker's job waits this long).
const MAX_LEASE_SECS: u64 = 86_400;

/// A running job renews its lease every third of `analysis.lease_secs`, and a renewal may wait
/// up to `database.connect_timeout_secs` for a connection. From the first renewal to the
/// lease's end there are two thirds of the lease: two renewals that each wait the full timeout
/// and fail must still leave the job held, so the lease is at least 3 × the connection
/// timeout (and at least 3 s, for a renewal interval of a second or more).
fn lease(lease: u64, connect: u64, check: &Check<'_>) -> Checked {
    let least = connect.saturating_mul(3).max(3);
    let problem = if lease < least {
        format!(
            "{lease} is too short: the lease is renewed every third of it and a renewal may wait \
             `database.connect_timeout_secs` ({connect} s) for a connection, so it must be at \
             least 3 seconds and at least 3 × database.connect_timeout_secs ({least} s)"
        )
    } else if lease > MAX_LEASE_SECS {
        format!("must be at most {MAX_LEASE_SECS} seconds")
    } else {
        return Ok(());
    };
    check.fail("analysis.lease_secs", problem)
}

/// Assistant ids unique and non-empty; field names unique identifiers; questions set (an empty
/// filler is allowed: it turns the filler off).
fn assistants(assistants: &[AssistantSettings], check: &Check<'_>) -> Checked {
    let mut ids = std::collections::BTreeSet::new();
    for (i, assistant) in assistants.iter().enumerate() {
        let at = |key: &str| format!("assistants[{i}].{key}");
        let fail = |key: String, message: &str| check.fail(&key, message);
        if assistant.id.trim().is_empty() {
            return fail(at("id"), "must not be empty");
        }
        if !ids.insert(assistant.id.as_str()) {
            return fail(at("id"), &format!("{:?} is listed twice", assistant.id));
        }
        if assistant.greeting_unknown.contains(NAME_PLACEHOLDER) {
            return fail(
                at("greeting_unknown"),
                "must not contain {name}: it is said when the caller's name is unknown",
            );
        }
        let mut names = std::collections::BTreeSet::new();
        for (j, field) in assistant.fields.iter().enumerate() {
            let key = |k: &str| format!("assistants[{i}].fields[{j}].{k}");
            let valid_name = !field.name.is_empty()
                && field
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid_name {
                return fail(key("name"), "must be letters, digits and underscores");
            }
            if !names.insert(field.name.as_str()) {
                return fail(key("name"), &format!("{:?} is listed twice", field.name));
            }
            if field.question.trim().is_empty() {
                return fail(key("question"), "must not be empty");
            }
        }
    }
    Ok(())
}

/// Request limits within their bounds.
fn limits(limits: &LimitSettings, check: &Check<'_>) -> Checked {
    for (key, value, most) in [
        ("limits.max_messages", limits.max_messages, 100_000),
        ("limits.max_value_bytes", limits.max_value_bytes, 1 << 20),
        ("limits.max_id_bytes", limits.max_id_bytes, 4_096),
    ] {
        if !(1..=most).contains(&value) {
            return check.fail(key, format!("must be between 1 and {most}"));
        }
    }
    Ok(())
}

/// Admin keys (named, non-empty, distinct, never a platform key) and retention.
fn operator(settings: &Settings, check: &Check<'_>) -> Checked {
    let server = &settings.server;
    let keys = server.all_admin_keys();
    for (i, key) in keys.iter().enumerate() {
        if !super::AdminKey::valid_name(&key.name) {
            return check.fail(
                "server.admin_keys",
                format!(
                    "key name {:?} must be 1 to 64 letters, digits, `.`, `_` or `-`",
                    key.name
                ),
            );
        }
        if key.key.is_empty() {
            return check.fail(
                "server.admin_keys",
                format!("the key named {:?} is empty", key.name),
            );
        }
        if keys[..i].iter().any(|k| k.name == key.name) {
            return check.fail(
                "server.admin_keys",
                format!(
                    "two keys are named {:?} (`server.admin_key` is named {:?})",
                    key.name,
                    super::DEFAULT_ADMIN_KEY_NAME
                ),
            );
        }
        if keys[..i].iter().any(|k| k.key.expose() == key.key.expose()) {
            return check.fail("server.admin_keys", "two admin keys are the same");
        }
        if server
            .api_keys
            .iter()
            .any(|k| k.expose() == key.key.expose())
        {
            return check.fail(
                "server.admin_keys",
                format!(
                    "the admin key named {:?} is also a platform key (server.api_keys): a \
                     platform key must never open the admin API",
                    key.name
                ),
            );
        }
    }
    let retention = &settings.retention;
    if !(1..=10_000).contains(&retention.batch_size) {
        return check.fail("retention.batch_size", "must be between 1 and 10000");
    }
    check.positive(&[(
        "retention.sweep_interval_secs",
        retention.sweep_interval_secs,
    )])?;
    if retention.inactive_callers_days > 0 && server.erasure_key.is_empty() {
        return check.fail(
            "retention.inactive_callers_days",
            "erasing inactive callers keeps a tombstone with a keyed hash of the number: set \
             `server.erasure_key` (a long random secret) as well",
        );
    }
    Ok(())
}
