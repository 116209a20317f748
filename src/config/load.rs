//! Layered loading of [`Settings`]: defaults < file < environment < flags.
//!
//! Every layer is merged into one TOML table while remembering which source set each key, so an
//! error can say "`server.listen` from config file redial.toml: …".

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use toml::{Table, Value};

use super::{Secret, Settings};

/// A configuration problem, with the key and the source it came from in its message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub(super) String);

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
    if settings.upstream.api_key.is_empty()
        && let Some(key) = env.get("OPENAI_API_KEY")
    {
        settings.upstream.api_key = Secret::new(key.clone());
    }
    if let Some(key) = env.get("ANTHROPIC_API_KEY") {
        for provider in &mut settings.providers {
            if provider.kind == super::ProviderKind::Anthropic && provider.api_key.is_empty() {
                provider.api_key = Secret::new(key.clone());
            }
        }
    }
    super::validate::validate(&settings, |key| layers.origin(key))?;
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
    settings.providers.push(super::ProviderSettings {
        name: String::new(),
        kind: super::ProviderKind::Openai,
        base_url: String::new(),
        api_key: Secret::default(),
        headers: BTreeMap::new(),
        max_tokens: 0,
        stream_usage: true,
        http: super::HttpVersion::Auto,
    });
    settings
        .server
        .admin_keys
        .push(super::AdminKey::new(String::new(), String::new()));
    settings
}

/// Tables whose keys are the user's own (header names, model names): not checked against the
/// template. Their values are still checked when the settings are deserialized.
const FREE_FORM: &[&str] = &["headers", "prices"];

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
        if !env.contains_key("REDIAL_DATABASE__URL")
            && let Some(url) = env.get("DATABASE_URL")
        {
            self.set(
                "database",
                "url",
                url,
                Source::Env("DATABASE_URL".into()),
                template,
            )?;
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
            return Err(unknown_key(&format!("{section}.{key}"), &source));
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
    pub(super) fn origin(&self, path: &str) -> String {
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

/// Keys that were removed, with what replaces them: a configuration still setting one is refused
/// with a message that names the replacement.
const REMOVED_KEYS: &[(&str, &str)] = &[(
    "memory.stale_after_secs",
    "a call is now resumable as soon as it is not live; set `memory.live_window_secs` \
     (default 8) instead",
)];

/// The error for a key the settings do not have (naming the replacement of a removed one).
fn unknown_key(path: &str, source: &Source) -> ConfigError {
    match REMOVED_KEYS.iter().find(|(key, _)| *key == path) {
        Some((_, instead)) => {
            ConfigError(format!("`{path}` (from {source}) was removed: {instead}"))
        }
        None => ConfigError(format!(
            "unknown configuration key `{path}` (from {source})"
        )),
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
            return Err(unknown_key(&path, source));
        };
        match (value, expected) {
            (Value::Table(_), Value::Table(_)) if FREE_FORM.contains(&key.as_str()) => {}
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
