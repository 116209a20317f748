//! Checks of the loaded settings that types alone cannot express. Errors name the key and, via
//! `origin`, where its value came from.

use super::{ConfigError, NAME_PLACEHOLDER, Secret, Settings};

/// Checks what types alone cannot.
pub(super) fn validate(
    settings: &Settings,
    origin: impl Fn(&str) -> String,
) -> Result<(), ConfigError> {
    let fail = |key: &str, message: String| {
        Err(ConfigError(format!(
            "invalid value for `{key}`{}: {message}",
            origin(key)
        )))
    };
    let server = &settings.server;
    if server.dev_mode() && !server.listen.ip().is_loopback() {
        return fail(
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
        return fail("server.api_keys", "keys must not be empty strings".into());
    }
    if server.body_limit_bytes < 1024 {
        return fail("server.body_limit_bytes", "must be at least 1024".into());
    }
    validate_connections(server, &fail)?;
    let url = settings.database.url.expose();
    if !(url.starts_with("sqlite:")
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://"))
    {
        return fail(
            "database.url",
            format!(
                "{:?} must start with sqlite:, postgres:// or postgresql://",
                settings.database.url.redacted()
            ),
        );
    }
    if settings.database.max_connections == 0 {
        return fail("database.max_connections", "must be at least 1".into());
    }
    let db = &settings.database;
    if !(1..=10_000).contains(&db.write_batch_max) {
        return fail(
            "database.write_batch_max",
            "must be between 1 and 10000".into(),
        );
    }
    if db.write_linger_ms > 1_000 {
        return fail(
            "database.write_linger_ms",
            "must be at most 1000 (milliseconds)".into(),
        );
    }
    if !(1..=1_000_000).contains(&db.write_queue_capacity) {
        return fail(
            "database.write_queue_capacity",
            "must be between 1 and 1000000".into(),
        );
    }
    if !(10..=60_000).contains(&db.write_timeout_ms) {
        return fail(
            "database.write_timeout_ms",
            "must be between 10 and 60000 (milliseconds)".into(),
        );
    }
    let upstream = &settings.upstream;
    match reqwest::Url::parse(&upstream.base_url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => {}
        _ => {
            return fail(
                "upstream.base_url",
                format!("{:?} is not an http(s) URL", upstream.base_url),
            );
        }
    }
    for (key, value) in [
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
        ("memory.read_budget_ms", settings.memory.read_budget_ms),
    ] {
        if value == 0 {
            return fail(key, "must be greater than 0".into());
        }
    }
    if upstream.apology.trim().is_empty() {
        return fail(
            "upstream.apology",
            "must not be empty: it is what the caller hears when the upstream fails".into(),
        );
    }
    if !crate::platforms::phone::is_region(&settings.memory.default_region) {
        return fail(
            "memory.default_region",
            format!(
                "{:?} is not an ISO 3166 alpha-2 region code such as \"US\"",
                settings.memory.default_region
            ),
        );
    }
    const TEN_YEARS: u64 = 10 * 365 * 86_400;
    for (key, value) in [
        (
            "memory.resume_window_secs",
            settings.memory.resume_window_secs,
        ),
        ("memory.live_window_secs", settings.memory.live_window_secs),
        (
            "memory.retell_reconnect_grace_secs",
            settings.memory.retell_reconnect_grace_secs,
        ),
    ] {
        if value > TEN_YEARS {
            return fail(key, format!("must be at most {TEN_YEARS} seconds"));
        }
    }
    let analysis = &settings.analysis;
    if !analysis.actions.iter().any(|a| a == "none") {
        return fail("analysis.actions", "must include \"none\"".into());
    }
    if analysis.max_attempts < 1 {
        return fail("analysis.max_attempts", "must be at least 1".into());
    }
    for (key, value) in [
        ("analysis.lease_secs", analysis.lease_secs),
        ("analysis.poll_interval_ms", analysis.poll_interval_ms),
        ("analysis.timeout_secs", analysis.timeout_secs),
    ] {
        if value == 0 {
            return fail(key, "must be greater than 0".into());
        }
    }
    validate_lease(settings, &origin)?;
    if settings.upstream.max_tool_rounds == 0 {
        return fail("upstream.max_tool_rounds", "must be at least 1".into());
    }
    validate_assistants(settings, &origin)?;
    validate_providers(settings, &origin)?;
    if settings.memory.summary_max_tokens < 16 {
        return fail("memory.summary_max_tokens", "must be at least 16".into());
    }
    let limits = &settings.limits;
    for (key, value, most) in [
        ("limits.max_messages", limits.max_messages, 100_000),
        ("limits.max_value_bytes", limits.max_value_bytes, 1 << 20),
        ("limits.max_id_bytes", limits.max_id_bytes, 4_096),
    ] {
        if !(1..=most).contains(&value) {
            return fail(key, format!("must be between 1 and {most}"));
        }
    }
    Ok(())
}

/// Longest `analysis.lease_secs`: a day (a crashed worker's job waits this long).
const MAX_LEASE_SECS: u64 = 86_400;

/// A running job renews its lease every third of `analysis.lease_secs`, and a renewal may wait
/// up to `database.connect_timeout_secs` for a connection. From the first renewal to the
/// lease's end there are two thirds of the lease: two renewals that each wait the full timeout
/// and fail must still leave the job held, so the lease is at least 3 × the connection
/// timeout (and at least 3 s, for a renewal interval of a second or more).
fn validate_lease(
    settings: &Settings,
    origin: &impl Fn(&str) -> String,
) -> Result<(), ConfigError> {
    let lease = settings.analysis.lease_secs;
    let connect = settings.database.connect_timeout_secs;
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
    Err(ConfigError(format!(
        "invalid value for `analysis.lease_secs`{}: {problem}",
        origin("analysis.lease_secs")
    )))
}

/// The connection timeouts and cap: a zero timeout would close every connection at once, and
/// a timeout of hours would let idle sockets pile up again.
fn validate_connections(
    server: &super::ServerSettings,
    fail: &impl Fn(&str, String) -> Result<(), ConfigError>,
) -> Result<(), ConfigError> {
    if !(100..=600_000).contains(&server.header_read_timeout_ms) {
        return fail(
            "server.header_read_timeout_ms",
            "must be between 100 and 600000 (milliseconds)".into(),
        );
    }
    if !(1..=3_600).contains(&server.idle_timeout_secs) {
        return fail(
            "server.idle_timeout_secs",
            "must be between 1 and 3600 (seconds)".into(),
        );
    }
    if server.max_connections > 1_000_000 {
        return fail(
            "server.max_connections",
            "must be at most 1000000 (0 = derived from the open-file limit)".into(),
        );
    }
    Ok(())
}

/// Assistant ids unique and non-empty; field names unique identifiers; questions set (an empty
/// filler is allowed: it turns the filler off).
fn validate_assistants(
    settings: &Settings,
    origin: &impl Fn(&str) -> String,
) -> Result<(), ConfigError> {
    let mut ids = std::collections::BTreeSet::new();
    for (i, assistant) in settings.assistants.iter().enumerate() {
        let at = |key: &str| format!("assistants[{i}].{key}");
        let fail = |key: String, message: &str| {
            Err(ConfigError(format!(
                "invalid value for `{key}`{}: {message}",
                origin(&key)
            )))
        };
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

/// Provider names unique and usable as a model prefix; URLs, headers and bounds valid; prices
/// finite and non-negative.
fn validate_providers(
    settings: &Settings,
    origin: &impl Fn(&str) -> String,
) -> Result<(), ConfigError> {
    let fail = |key: String, message: String| {
        Err(ConfigError(format!(
            "invalid value for `{key}`{}: {message}",
            origin(&key)
        )))
    };
    let mut names = std::collections::BTreeSet::new();
    for (i, provider) in settings.providers.iter().enumerate() {
        let at = |key: &str| format!("providers[{i}].{key}");
        let valid_name = !provider.name.is_empty()
            && provider
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid_name {
            return fail(
                at("name"),
                format!(
                    "{:?} must be letters, digits, `-`, `_` and `.` (it prefixes models: \
                     `name/model`)",
                    provider.name
                ),
            );
        }
        if !names.insert(provider.name.as_str()) {
            return fail(at("name"), format!("{:?} is listed twice", provider.name));
        }
        if !provider.base_url.is_empty() {
            match reqwest::Url::parse(&provider.base_url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                _ => {
                    return fail(
                        at("base_url"),
                        format!("{:?} is not an http(s) URL", provider.base_url),
                    );
                }
            }
        }
        for (name, value) in &provider.headers {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
                || reqwest::header::HeaderValue::from_str(value.expose()).is_err()
            {
                return fail(
                    at("headers"),
                    format!(
                        "{name:?} is not a valid header name, or its value is not a valid header value"
                    ),
                );
            }
        }
        if !(1..=1_000_000).contains(&provider.max_tokens) {
            return fail(at("max_tokens"), "must be between 1 and 1000000".into());
        }
    }
    for (model, price) in &settings.prices {
        let key = format!("prices.{model:?}");
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
            return fail(key, "prices must be finite and not negative".into());
        }
    }
    Ok(())
}
