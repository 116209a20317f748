//! Layered loading of [`Settings`]: defaults < file < environment < flags.
//!
//! Every layer is merged into one TOML table while remembering which source set each key, so an
//! error can say "`server.listen` from config file redial.toml: …".

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use toml::{Table, Value};

use super::{NAME_PLACEHOLDER, Secret, Settings};

/// A configuration problem, with the key and the source it came from in its message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// A value set on the command line: the dotted key it sets, the value, and the flag's name.
#[derive(Debug, Clone)]
pub struct Override {
    /// Dotted key, e.g. `server.listen`.
    pub key: &'static str,
    /// The value as typed.
    pub value: String,
    /// The flag, e.g. `--listen`.
    pub flag: &'static str,
}

/// Where a key's value came from.
#[derive(Debug, Clone)]
enum Source {
    File(PathBuf),
    Env(String),
    Flag(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "config file {}", path.display()),
            Self::Env(var) => write!(f, "environment variable {var}"),
            Self::Flag(flag) => write!(f, "command-line flag {flag}"),
        }
    }
}

/// Loads the configuration from `path` (if any), the environment `env` (pass
/// `std::env::vars()`), and command-line `overrides`, then validates it.
pub fn load(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &[Override],
) -> Result<Settings, ConfigError> {
    let template = Value::try_from(template_settings())
        .map_err(|e| ConfigError(format!("internal: default settings do not serialize: {e}")))?;
    let template = template.as_table().cloned().unwrap_or_default();
    let mut layers = Layers::default();
    if let Some(path) = path {
        layers.read_file(path, &template)?;
    }
    let env: BTreeMap<String, String> = env.into_iter().collect();
    layers.apply_env(&env, &template)?;
    for o in overrides {
        let (section, key) = o.key.split_once('.').unwrap_or(("", o.key));
        layers.set(section, key, &o.value, Source::Flag(o.flag), &template)?;
    }
    let mut settings = layers.deserialize()?;
    if settings.upstream.api_key.is_empty() {
        if let Some(key) = env.get("OPENAI_API_KEY") {
            settings.upstream.api_key = Secret::new(key.clone());
        }
    }
    validate(&settings, &layers)?;
    Ok(settings)
}

/// Defaults plus one example of every repeated table, so file keys can be checked by name.
fn template_settings() -> Settings {
    let mut settings = Settings::default();
    let mut assistant = super::AssistantSettings::default();
    assistant.fields.push(super::FieldSettings {
        name: String::new(),
        question: String::new(),
        required: true,
        description: String::new(),
    });
    settings.assistants.push(assistant);
    settings
}

#[derive(Default)]
struct Layers {
    root: Table,
    sources: BTreeMap<String, Source>,
}

impl Layers {
    fn read_file(&mut self, path: &Path, template: &Table) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        let table: Table = toml::from_str(&text).map_err(|e| {
            ConfigError(format!(
                "config file {} is not valid TOML: {e}",
                path.display()
            ))
        })?;
        let source = Source::File(path.to_owned());
        check_known(&table, template, "", &source)?;
        record_sources(&table, "", &source, &mut self.sources);
        self.root = table;
        Ok(())
    }

    fn apply_env(
        &mut self,
        env: &BTreeMap<String, String>,
        template: &Table,
    ) -> Result<(), ConfigError> {
        for (var, value) in env {
            // Only REDIAL_<SECTION>__<KEY> is configuration; REDIAL_CONFIG and other tools' own
            // REDIAL_* variables are not.
            let Some(rest) = var.strip_prefix("REDIAL_") else {
                continue;
            };
            let Some((section, key)) = rest.split_once("__") else {
                continue;
            };
            let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
            self.set(&section, &key, value, Source::Env(var.clone()), template)?;
        }
        if !env.contains_key("REDIAL_DATABASE__URL") {
            if let Some(url) = env.get("DATABASE_URL") {
                self.set(
                    "database",
                    "url",
                    url,
                    Source::Env("DATABASE_URL".into()),
                    template,
                )?;
            }
        }
        Ok(())
    }

    /// Sets `section.key` from a string, typed after the key's default value.
    fn set(
        &mut self,
        section: &str,
        key: &str,
        raw: &str,
        source: Source,
        template: &Table,
    ) -> Result<(), ConfigError> {
        let Some(default) = template
            .get(section)
            .and_then(Value::as_table)
            .and_then(|t| t.get(key))
        else {
            return Err(ConfigError(format!(
                "unknown configuration key `{section}.{key}` (from {source})"
            )));
        };
        let value = parse_scalar(default, raw).map_err(|expected| {
            ConfigError(format!(
                "invalid value for `{section}.{key}` (from {source}): expected {expected}, got {raw:?}"
            ))
        })?;
        let table = self
            .root
            .entry(section.to_owned())
            .or_insert_with(|| Value::Table(Table::new()));
        let Value::Table(table) = table else {
            return Err(ConfigError(format!("`{section}` must be a table")));
        };
        table.insert(key.to_owned(), value);
        self.sources.insert(format!("{section}.{key}"), source);
        Ok(())
    }

    fn deserialize(&self) -> Result<Settings, ConfigError> {
        let value = Value::Table(self.root.clone());
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let message = e.into_inner().message().to_owned();
            ConfigError(format!(
                "invalid value for `{path}`{}: {message}",
                self.origin(&path)
            ))
        })
    }

    /// " (from SOURCE)" for the most specific recorded source of `path`, or "".
    fn origin(&self, path: &str) -> String {
        let mut candidate = path;
        loop {
            if let Some(source) = self.sources.get(candidate) {
                return format!(" (from {source})");
            }
            match candidate.rfind(['.', '[']) {
                Some(i) => candidate = &candidate[..i],
                None => return String::new(),
            }
        }
    }
}

/// Parses an environment or flag string into the type of the key's default value.
fn parse_scalar(default: &Value, raw: &str) -> Result<Value, &'static str> {
    match default {
        Value::String(_) => Ok(Value::String(raw.to_owned())),
        Value::Integer(_) => raw
            .trim()
            .parse()
            .map(Value::Integer)
            .map_err(|_| "an integer"),
        Value::Float(_) => raw.trim().parse().map(Value::Float).map_err(|_| "a number"),
        Value::Boolean(_) => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Ok(Value::Boolean(true)),
            "false" | "0" | "no" => Ok(Value::Boolean(false)),
            _ => Err("true or false"),
        },
        Value::Array(_) => Ok(Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_owned()))
                .collect(),
        )),
        Value::Table(_) | Value::Datetime(_) => {
            Err("a value that can be set in the config file only")
        }
    }
}

/// Rejects keys of `table` that `template` does not have. Arrays of tables are checked against
/// the template array's first element when it has one.
fn check_known(
    table: &Table,
    template: &Table,
    prefix: &str,
    source: &Source,
) -> Result<(), ConfigError> {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let Some(expected) = template.get(key) else {
            return Err(ConfigError(format!(
                "unknown configuration key `{path}` (from {source})"
            )));
        };
        match (value, expected) {
            (Value::Table(inner), Value::Table(inner_template)) => {
                check_known(inner, inner_template, &path, source)?;
            }
            (Value::Array(items), Value::Array(templates)) => {
                if let Some(Value::Table(item_template)) = templates.first() {
                    for (i, item) in items.iter().enumerate() {
                        if let Value::Table(item) = item {
                            check_known(item, item_template, &format!("{path}[{i}]"), source)?;
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn record_sources(
    table: &Table,
    prefix: &str,
    source: &Source,
    out: &mut BTreeMap<String, Source>,
) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        if let Value::Table(inner) = value {
            record_sources(inner, &path, source, out);
        }
        out.insert(path, source.clone());
    }
}

/// Checks what types alone cannot.
fn validate(settings: &Settings, layers: &Layers) -> Result<(), ConfigError> {
    let fail = |key: &str, message: String| {
        Err(ConfigError(format!(
            "invalid value for `{key}`{}: {message}",
            layers.origin(key)
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
        ("memory.stale_after_secs", settings.memory.stale_after_secs),
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
    if settings.upstream.max_tool_rounds == 0 {
        return fail("upstream.max_tool_rounds", "must be at least 1".into());
    }
    validate_assistants(settings, layers)?;
    if settings.memory.summary_max_tokens < 16 {
        return fail("memory.summary_max_tokens", "must be at least 16".into());
    }
    Ok(())
}

/// Assistant ids unique and non-empty; field names unique identifiers; questions and fillers set.
fn validate_assistants(settings: &Settings, layers: &Layers) -> Result<(), ConfigError> {
    let mut ids = std::collections::BTreeSet::new();
    for (i, assistant) in settings.assistants.iter().enumerate() {
        let at = |key: &str| format!("assistants[{i}].{key}");
        let fail = |key: String, message: &str| {
            Err(ConfigError(format!(
                "invalid value for `{key}`{}: {message}",
                layers.origin(&key)
            )))
        };
        if assistant.id.trim().is_empty() {
            return fail(at("id"), "must not be empty");
        }
        if !ids.insert(assistant.id.as_str()) {
            return fail(at("id"), &format!("{:?} is listed twice", assistant.id));
        }
        if assistant.filler.trim().is_empty() {
            return fail(
                at("filler"),
                "must not be empty: it is what the caller hears while a tool runs",
            );
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
