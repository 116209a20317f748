//! Loading and precedence: flag > environment > file > default.

use std::io::Write;

use super::*;

fn file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn flag(key: &'static str, value: &str, flag: &'static str) -> Override {
    Override {
        key,
        value: value.to_owned(),
        flag,
    }
}

#[test]
fn defaults_apply_when_nothing_is_configured() {
    let settings = load(None, env(&[]), &[]).unwrap();
    assert_eq!(settings.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(settings.database.url.expose(), "sqlite://redial.db");
    assert_eq!(settings.memory.summary_max_tokens, 300);
    assert_eq!(settings.server.body_limit_bytes, 2 * 1024 * 1024);
    assert!(settings.server.dev_mode());
}

#[test]
fn flag_beats_environment_beats_file_beats_default() {
    let f = file(
        "[server]\nlisten = \"127.0.0.1:1000\"\n[memory]\nread_budget_ms = 7\nresume_window_secs = 9\n",
    );
    let e = env(&[
        ("REDIAL_SERVER__LISTEN", "127.0.0.1:2000"),
        ("REDIAL_MEMORY__READ_BUDGET_MS", "8"),
    ]);
    let settings = load(
        Some(f.path()),
        e.clone(),
        &[flag("server.listen", "127.0.0.1:3000", "--listen")],
    )
    .unwrap();
    assert_eq!(
        settings.server.listen.to_string(),
        "127.0.0.1:3000",
        "flag wins"
    );
    assert_eq!(settings.memory.read_budget_ms, 8, "environment beats file");
    assert_eq!(settings.memory.resume_window_secs, 9, "file beats default");
    assert_eq!(settings.memory.summary_max_tokens, 300, "default");
    let settings = load(Some(f.path()), e, &[]).unwrap();
    assert_eq!(settings.server.listen.to_string(), "127.0.0.1:2000");
}

#[test]
fn lists_come_comma_separated_from_the_environment() {
    let e = env(&[
        ("REDIAL_SERVER__API_KEYS", "a, b,,c"),
        ("REDIAL_UPSTREAM__FALLBACK_MODELS", "m1,m2"),
    ]);
    let settings = load(None, e, &[]).unwrap();
    let keys: Vec<_> = settings
        .server
        .api_keys
        .iter()
        .map(Secret::expose)
        .collect();
    assert_eq!(keys, ["a", "b", "c"]);
    assert_eq!(settings.upstream.fallback_models, ["m1", "m2"]);
}

#[test]
fn conventional_variables_are_honoured_below_their_redial_names() {
    let e = env(&[
        ("DATABASE_URL", "postgres://u:p@h/db"),
        ("OPENAI_API_KEY", "sk-env"),
    ]);
    let settings = load(None, e, &[]).unwrap();
    assert_eq!(settings.database.url.expose(), "postgres://u:p@h/db");
    assert_eq!(settings.upstream.api_key.expose(), "sk-env");
    let e = env(&[
        ("DATABASE_URL", "postgres://u:p@h/db"),
        ("REDIAL_DATABASE__URL", "sqlite://x.db"),
        ("OPENAI_API_KEY", "sk-env"),
        ("REDIAL_UPSTREAM__API_KEY", "sk-redial"),
    ]);
    let settings = load(None, e, &[]).unwrap();
    assert_eq!(settings.database.url.expose(), "sqlite://x.db");
    assert_eq!(settings.upstream.api_key.expose(), "sk-redial");
    let settings = load(
        None,
        env(&[("DATABASE_URL", "postgres://h/db")]),
        &[flag("database.url", "sqlite://f.db", "--database-url")],
    )
    .unwrap();
    assert_eq!(settings.database.url.expose(), "sqlite://f.db");
}

#[test]
fn a_wrongly_typed_value_names_the_key_and_the_file() {
    let f = file("[server]\nlisten = 12\n");
    let err = load(Some(f.path()), env(&[]), &[]).unwrap_err().to_string();
    assert!(err.contains("`server.listen`"), "{err}");
    assert!(err.contains(&f.path().display().to_string()), "{err}");
}

#[test]
fn unknown_keys_are_rejected_with_their_source() {
    let f = file("[server]\nlisten = \"127.0.0.1:1\"\nlistn = 1\n");
    let err = load(Some(f.path()), env(&[]), &[]).unwrap_err().to_string();
    assert!(
        err.contains("`server.listn`") && err.contains("config file"),
        "{err}"
    );
    let f = file("[nonsense]\nx = 1\n");
    assert!(
        load(Some(f.path()), env(&[]), &[])
            .unwrap_err()
            .to_string()
            .contains("`nonsense`")
    );
    let err = load(None, env(&[("REDIAL_SERVER__LISTN", "x")]), &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("REDIAL_SERVER__LISTN"), "{err}");
    // Variables outside the REDIAL_<SECTION>__<KEY> shape are not configuration.
    assert!(
        load(
            None,
            env(&[("REDIAL_BIN", "x"), ("REDIAL_CONFIG", "y")]),
            &[]
        )
        .is_ok()
    );
}

#[test]
fn bad_environment_values_name_the_variable() {
    let err = load(None, env(&[("REDIAL_MEMORY__READ_BUDGET_MS", "soon")]), &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("REDIAL_MEMORY__READ_BUDGET_MS") && err.contains("integer"),
        "{err}"
    );
}

#[test]
fn dev_mode_refuses_a_public_listen_address() {
    let err = load(None, env(&[("REDIAL_SERVER__LISTEN", "0.0.0.0:8080")]), &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("api_keys"), "{err}");
    let e = env(&[
        ("REDIAL_SERVER__LISTEN", "0.0.0.0:8080"),
        ("REDIAL_SERVER__API_KEYS", "k"),
    ]);
    assert!(load(None, e, &[]).is_ok());
}

#[test]
fn semantic_checks_name_the_key() {
    for (var, value, key) in [
        ("REDIAL_DATABASE__URL", "mysql://x", "database.url"),
        ("REDIAL_UPSTREAM__BASE_URL", "ftp://x", "upstream.base_url"),
        (
            "REDIAL_MEMORY__DEFAULT_REGION",
            "XX",
            "memory.default_region",
        ),
        (
            "REDIAL_MEMORY__READ_BUDGET_MS",
            "0",
            "memory.read_budget_ms",
        ),
        (
            "REDIAL_DATABASE__WRITE_BATCH_MAX",
            "0",
            "database.write_batch_max",
        ),
        (
            "REDIAL_DATABASE__WRITE_BATCH_MAX",
            "1000000000000",
            "database.write_batch_max",
        ),
        (
            "REDIAL_DATABASE__WRITE_LINGER_MS",
            "60000",
            "database.write_linger_ms",
        ),
        (
            "REDIAL_DATABASE__WRITE_QUEUE_CAPACITY",
            "0",
            "database.write_queue_capacity",
        ),
        (
            "REDIAL_DATABASE__WRITE_QUEUE_CAPACITY",
            "18446744073709551615",
            "database.write_queue_capacity",
        ),
    ] {
        let err = load(None, env(&[(var, value)]), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains(key) && err.contains(var), "{err}");
    }
}

#[test]
fn limits_are_bounded_and_name_their_key() {
    for (var, value, key) in [
        ("REDIAL_LIMITS__MAX_MESSAGES", "0", "limits.max_messages"),
        (
            "REDIAL_LIMITS__MAX_MESSAGES",
            "100001",
            "limits.max_messages",
        ),
        (
            "REDIAL_LIMITS__MAX_VALUE_BYTES",
            "0",
            "limits.max_value_bytes",
        ),
        ("REDIAL_LIMITS__MAX_ID_BYTES", "4097", "limits.max_id_bytes"),
    ] {
        let err = load(None, env(&[(var, value)]), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains(key) && err.contains(var), "{err}");
    }
    let settings = load(None, env(&[("REDIAL_LIMITS__MAX_ID_BYTES", "64")]), &[]).unwrap();
    assert_eq!(settings.limits.max_id_bytes, 64);
    assert_eq!(settings.limits.max_messages, 2_000);
}

#[test]
fn the_example_config_loads_as_it_is() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let settings = load(Some(&path), env(&[]), &[]).unwrap();
    let defaults = Settings::default();
    // The example documents the defaults: loading it changes nothing.
    assert_eq!(
        toml::to_string(&settings).unwrap(),
        toml::to_string(&defaults).unwrap()
    );
}

#[test]
fn the_example_config_documents_every_key() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let example: toml::Table = toml::from_str(&text).unwrap();
    let defaults = toml::Value::try_from(Settings::default()).unwrap();
    for (section, keys) in defaults.as_table().unwrap() {
        let Some(keys) = keys.as_table() else {
            continue;
        };
        for key in keys.keys() {
            assert!(
                example.get(section).and_then(|s| s.get(key)).is_some(),
                "config.example.toml does not document `{section}.{key}`"
            );
        }
    }
    // The repeated tables are documented in a commented example.
    for key in [
        "[[assistants]]",
        "id =",
        "filler =",
        "system_prompt =",
        "greeting =",
        "greeting_unknown =",
        "[[assistants.fields]]",
        "name =",
        "question =",
        "required =",
        "description =",
        "model =",
        "fallback_models =",
        "escalation_model =",
        "[[providers]]",
        "kind =",
        "base_url =",
        "api_key =",
        "headers =",
        "max_tokens =",
        "stream_usage =",
        "http =",
        "http2_streams_per_connection =",
        "[prices.",
        "input_per_mtok =",
        "output_per_mtok =",
        "cached_input_per_mtok =",
    ] {
        assert!(
            text.contains(key),
            "config.example.toml does not document `{key}`"
        );
    }
}

#[test]
fn assistants_take_a_prompt_and_greetings_from_the_file() {
    let f = file(
        "[[assistants]]\nid = \"agent_1\"\nsystem_prompt = \"You are Ava.\"\n\
         greeting = \"Hi {name}, this is Ava.\"\ngreeting_unknown = \"Hi, this is Ava.\"\n",
    );
    let settings = load(Some(f.path()), env(&[]), &[]).unwrap();
    let assistant = settings.assistant("agent_1");
    assert_eq!(assistant.system_prompt, "You are Ava.");
    assert_eq!(assistant.greeting, "Hi {name}, this is Ava.");
    assert_eq!(assistant.greeting_unknown, "Hi, this is Ava.");
    assert_eq!(
        settings.assistant("other").greeting,
        "",
        "the built-in default is silent"
    );

    let f = file("[[assistants]]\nid = \"a\"\ngreeting_unknown = \"Hi {name}\"\n");
    let err = load(Some(f.path()), env(&[]), &[]).unwrap_err().to_string();
    assert!(err.contains("assistants[0].greeting_unknown"), "{err}");
}

#[test]
fn the_analysis_lease_must_outlast_renewals_waiting_for_a_connection() {
    let lease = |secs: &str, connect: &str| {
        let vars = env(&[
            ("REDIAL_ANALYSIS__LEASE_SECS", secs),
            ("REDIAL_DATABASE__CONNECT_TIMEOUT_SECS", connect),
        ]);
        load(None, vars, &[]).map(|s| s.analysis.lease_secs)
    };
    // Renewed every third of the lease, two renewals that each wait the whole connection
    // timeout must fit in the two thirds after the first one: lease >= 3 x connect timeout.
    for (secs, connect) in [("3", "1"), ("15", "5"), ("30", "10"), ("86400", "5")] {
        assert!(
            lease(secs, connect).is_ok(),
            "lease {secs} s, connect {connect} s"
        );
    }
    for (secs, connect) in [
        ("0", "1"),
        ("2", "0"),
        ("2", "1"),
        ("14", "5"),
        ("29", "10"),
        ("86401", "5"),
        ("18446744073709551615", "5"),
    ] {
        let err = lease(secs, connect).unwrap_err().to_string();
        assert!(
            err.contains("`analysis.lease_secs`") && err.contains("REDIAL_ANALYSIS__LEASE_SECS"),
            "lease {secs} s, connect {connect} s: {err}"
        );
    }
    let defaults = Settings::default();
    assert_eq!(defaults.analysis.lease_secs, 30);
    assert!(
        defaults.analysis.lease_secs + defaults.analysis.poll_interval_ms / 1_000 < 60,
        "a crashed worker's job is taken over within a minute by default"
    );
}

#[test]
fn connection_limits_are_bounded_and_name_their_key() {
    for (var, value, key) in [
        (
            "REDIAL_SERVER__HEADER_READ_TIMEOUT_MS",
            "0",
            "server.header_read_timeout_ms",
        ),
        (
            "REDIAL_SERVER__HEADER_READ_TIMEOUT_MS",
            "600001",
            "server.header_read_timeout_ms",
        ),
        (
            "REDIAL_SERVER__IDLE_TIMEOUT_SECS",
            "0",
            "server.idle_timeout_secs",
        ),
        (
            "REDIAL_SERVER__IDLE_TIMEOUT_SECS",
            "3601",
            "server.idle_timeout_secs",
        ),
        (
            "REDIAL_SERVER__MAX_CONNECTIONS",
            "1000001",
            "server.max_connections",
        ),
        (
            "REDIAL_SERVER__MAX_CONNECTIONS",
            "-1",
            "server.max_connections",
        ),
    ] {
        let err = load(None, env(&[(var, value)]), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains(key) && err.contains(var), "{err}");
    }
    let settings = load(
        None,
        env(&[
            ("REDIAL_SERVER__HEADER_READ_TIMEOUT_MS", "100"),
            ("REDIAL_SERVER__IDLE_TIMEOUT_SECS", "3600"),
            ("REDIAL_SERVER__MAX_CONNECTIONS", "1"),
        ]),
        &[],
    )
    .unwrap();
    assert_eq!(settings.server.header_read_timeout_ms, 100);
    assert_eq!(settings.server.idle_timeout_secs, 3_600);
    assert_eq!(settings.server.max_connections, 1);
    let defaults = Settings::default().server;
    assert_eq!(
        (
            defaults.header_read_timeout_ms,
            defaults.idle_timeout_secs,
            defaults.max_connections
        ),
        (10_000, 75, 0),
        "the defaults README and config.example.toml document"
    );
}

#[test]
fn an_empty_filler_loads_and_turns_the_filler_off() {
    let f = file("[[assistants]]\nid = \"quiet\"\nfiller = \"\"\n[[assistants]]\nid = \"a\"\n");
    let settings = load(Some(f.path()), env(&[]), &[]).unwrap();
    assert_eq!(settings.assistant("quiet").filler, "");
    assert_eq!(
        settings.assistant("a").filler,
        "One moment, please.",
        "the default filler when none is given"
    );
}

#[test]
fn the_removed_stale_after_secs_is_refused_naming_its_replacement() {
    let f = file("[memory]\nstale_after_secs = 300\n");
    let err = load(Some(f.path()), env(&[]), &[]).unwrap_err().to_string();
    assert!(
        err.contains("`memory.stale_after_secs`") && err.contains("`memory.live_window_secs`"),
        "{err}"
    );
    let e = env(&[("REDIAL_MEMORY__STALE_AFTER_SECS", "300")]);
    assert!(load(None, e, &[]).is_err());
    let f = file("[memory]\nlive_window_secs = 20\nretell_reconnect_grace_secs = 2\n");
    let settings = load(Some(f.path()), env(&[]), &[]).unwrap();
    assert_eq!(
        (
            settings.memory.live_window_secs,
            settings.memory.retell_reconnect_grace_secs
        ),
        (20, 2)
    );
}

#[test]
fn providers_prices_and_assistant_models_load_with_secret_headers() {
    let f = file(
        r#"
[upstream]
model = "claude/claude-haiku"
fallback_models = ["gpt-4o-mini"]

[[providers]]
name = "claude"
kind = "anthropic"
headers = { "anthropic-beta" = "beta-secret" }

[[providers]]
name = "azure"
kind = "openai"
base_url = "https://x.openai.azure.com/openai/deployments/gpt4o?api-version=2024-10-21"
headers = { "api-key" = "azure-secret" }
stream_usage = false
http = "http1"

[prices."claude-haiku"]
input_per_mtok = 1.0
output_per_mtok = 5.0

[[assistants]]
id = "asst-1"
model = "azure/gpt-4o"
fallback_models = ["claude/claude-haiku"]
escalation_model = "claude/claude-sonnet"
"#,
    );
    let settings = load(Some(f.path()), env(&[("ANTHROPIC_API_KEY", "sk-ant")]), &[]).unwrap();
    let claude = &settings.providers[0];
    assert_eq!(claude.kind, ProviderKind::Anthropic);
    assert_eq!(
        claude.api_key.expose(),
        "sk-ant",
        "ANTHROPIC_API_KEY fills it"
    );
    assert_eq!(claude.max_tokens, 1024);
    let azure = &settings.providers[1];
    assert!(
        azure.api_key.is_empty(),
        "only anthropic providers take ANTHROPIC_API_KEY"
    );
    assert!(!azure.stream_usage);
    assert_eq!(azure.http, HttpVersion::Http1);
    assert_eq!(
        claude.http,
        HttpVersion::Auto,
        "HTTP/2 where TLS negotiates it"
    );
    assert_eq!(settings.prices["claude-haiku"].output_per_mtok, 5.0);
    assert_eq!(settings.assistant("asst-1").model, "azure/gpt-4o");
    assert_eq!(
        settings.configured_models(),
        [
            "claude/claude-haiku",
            "gpt-4o-mini",
            "azure/gpt-4o",
            "claude/claude-sonnet"
        ]
    );
    let shown = format!("{settings:?} {}", toml::to_string(&settings).unwrap());
    for secret in ["beta-secret", "azure-secret", "sk-ant"] {
        assert!(!shown.contains(secret), "{secret} is shown");
    }
}

#[test]
fn bad_providers_and_prices_are_refused_naming_the_key() {
    for (text, key) in [
        (
            "[[providers]]\nname = \"a/b\"\nkind = \"openai\"\n",
            "providers[0].name",
        ),
        (
            "[[providers]]\nname = \"a\"\nkind = \"openai\"\n[[providers]]\nname = \"a\"\nkind = \"anthropic\"\n",
            "providers[1].name",
        ),
        (
            "[[providers]]\nname = \"a\"\nkind = \"gemini\"\n",
            "providers[0].kind",
        ),
        (
            "[[providers]]\nname = \"a\"\nkind = \"openai\"\nbase_url = \"ftp://x\"\n",
            "providers[0].base_url",
        ),
        (
            "[[providers]]\nname = \"a\"\nkind = \"openai\"\nheaders = { \"bad header\" = \"x\" }\n",
            "providers[0].headers",
        ),
        (
            "[[providers]]\nname = \"a\"\nkind = \"openai\"\nmodels = []\n",
            "providers[0].models",
        ),
        (
            "[[providers]]\nname = \"a\"\nkind = \"openai\"\nhttp = \"h2\"\n",
            "providers[0].http",
        ),
        (
            "[prices.m]\ninput_per_mtok = -1.0\noutput_per_mtok = 1.0\n",
            "prices.\"m\"",
        ),
        (
            "[prices.m]\ninput_per_mtok = 1.0\noutput_per_mtok = 1.0\noutput = 2\n",
            "prices.m",
        ),
    ] {
        let f = file(text);
        let error = load(Some(f.path()), env(&[]), &[]).unwrap_err().to_string();
        assert!(error.contains(key), "{text}: {error}");
    }
}

#[test]
fn configured_models_must_name_a_configured_provider_and_a_model() {
    let claude = "[[providers]]\nname = \"claude\"\nkind = \"anthropic\"\n";
    let assistant = |keys: &str| format!("{claude}[[assistants]]\nid = \"agent_7\"\n{keys}\n");
    for (text, key, says) in [
        (
            assistant("model = \"claud/claude-haiku\""),
            "assistants[0].model",
            "names the provider \"claud\", which is not configured ([[providers]]: claude)",
        ),
        (
            assistant("fallback_models = [\"gpt-4o\", \"gemini/flash\"]"),
            "assistants[0].fallback_models[1]",
            "\"gemini/flash\" (assistant \"agent_7\") names the provider \"gemini\"",
        ),
        (
            assistant("escalation_model = \"claude/\""),
            "assistants[0].escalation_model",
            "names no model after the provider \"claude\"",
        ),
        (
            assistant("fallback_models = [\"\"]"),
            "assistants[0].fallback_models[0]",
            "is empty (assistant \"agent_7\")",
        ),
        (
            assistant("model = \" gpt-4o\""),
            "assistants[0].model",
            "must not be blank",
        ),
        (
            format!("{claude}[upstream]\nmodel = \"meta-llama/llama-3\"\n"),
            "upstream.model",
            "`upstream/meta-llama/llama-3`",
        ),
        (
            format!("{claude}[analysis]\nmodel = \"anthropic/claude\"\n"),
            "analysis.model",
            "not configured",
        ),
        (
            "[[providers]]\nname = \"upstream\"\nkind = \"openai\"\n".to_owned(),
            "providers[0].name",
            "reserved",
        ),
    ] {
        let f = file(&text);
        let error = load(Some(f.path()), env(&[]), &[]).unwrap_err().to_string();
        assert!(
            error.contains(&format!("`{key}`")) && error.contains(says),
            "{text}: {error}"
        );
    }
    // Routed models load: a provider's, upstream's own prefix, and without [[providers]] any
    // `org/model` name (it goes to [upstream] as it is).
    for text in [
        assistant(
            "model = \"claude/claude-haiku\"\nfallback_models = [\"upstream/meta-llama/llama-3\", \"gpt-4o\"]",
        ),
        "[upstream]\nmodel = \"meta-llama/llama-3\"\nfallback_models = [\"openai/gpt-4o\"]\n"
            .to_owned(),
    ] {
        let f = file(&text);
        let loaded = load(Some(f.path()), env(&[]), &[]);
        assert!(loaded.is_ok(), "{text}: {:?}", loaded.err());
    }
}

#[test]
fn a_config_with_several_problems_reports_them_section_by_section() {
    // One problem per section, in the order `validate` checks the sections.
    let problems = [
        (
            "REDIAL_SERVER__BODY_LIMIT_BYTES",
            "10",
            "server.body_limit_bytes",
        ),
        (
            "REDIAL_DATABASE__MAX_CONNECTIONS",
            "0",
            "database.max_connections",
        ),
        (
            "REDIAL_UPSTREAM__MAX_TOOL_ROUNDS",
            "0",
            "upstream.max_tool_rounds",
        ),
        (
            "REDIAL_MEMORY__SUMMARY_MAX_TOKENS",
            "1",
            "memory.summary_max_tokens",
        ),
        (
            "REDIAL_ANALYSIS__MAX_ATTEMPTS",
            "0",
            "analysis.max_attempts",
        ),
        ("REDIAL_LIMITS__MAX_MESSAGES", "0", "limits.max_messages"),
    ];
    for first in 0..problems.len() {
        let vars: Vec<(&str, &str)> = problems[first..].iter().map(|(v, x, _)| (*v, *x)).collect();
        let err = load(None, env(&vars), &[]).unwrap_err().to_string();
        let (var, _, key) = problems[first];
        assert!(
            err.contains(&format!("`{key}`")) && err.contains(var),
            "{err}"
        );
    }
}

#[test]
fn the_upstream_http_version_and_streams_per_connection_have_defaults_and_are_checked() {
    assert_eq!(Settings::default().upstream.http, HttpVersion::Auto);
    let settings = load(None, env(&[("REDIAL_UPSTREAM__HTTP", "http2")]), &[]).unwrap();
    assert_eq!(settings.upstream.http, HttpVersion::Http2);
    assert_eq!(settings.upstream.http2_streams_per_connection, 100);
    let err = load(
        None,
        env(&[("REDIAL_UPSTREAM__HTTP2_STREAMS_PER_CONNECTION", "0")]),
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("upstream.http2_streams_per_connection") && err.contains("greater than 0"),
        "{err}"
    );
    let err = load(None, env(&[("REDIAL_UPSTREAM__HTTP", "2")]), &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("REDIAL_UPSTREAM__HTTP") && err.contains("http1"),
        "{err}"
    );
}
