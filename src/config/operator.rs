//! Settings of the operator surface: named admin keys (`server.admin_keys`) and the retention
//! windows (`[retention]`).

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::Secret;

/// The name the single `server.admin_key` acts under in the audit log.
pub const DEFAULT_ADMIN_KEY_NAME: &str = "default";

/// One named admin key: `{ name = "ops", key = "…" }` in a file, `ops:…` in
/// `REDIAL_SERVER__ADMIN_KEYS` (comma-separated). The name is what the audit log records as the
/// actor (`admin:ops`); the key is a secret.
#[derive(Debug, Clone, Serialize)]
pub struct AdminKey {
    /// Who acts with this key, as the audit log names them (`[A-Za-z0-9._-]`, 1–64 bytes).
    pub name: String,
    /// The bearer token.
    pub key: Secret,
}

impl AdminKey {
    /// A key called `name`.
    pub fn new(name: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            key: Secret::new(key),
        }
    }

    /// Whether `name` is an acceptable key name.
    pub fn valid_name(name: &str) -> bool {
        (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    }
}

impl<'de> Deserialize<'de> for AdminKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;

        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = AdminKey;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table { name, key } or a string \"name:key\"")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<AdminKey, E> {
                let Some((name, key)) = value.split_once(':') else {
                    return Err(E::custom(
                        "an admin key given as a string must read \"name:key\"",
                    ));
                };
                Ok(AdminKey::new(name.trim(), key.trim()))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AdminKey, A::Error> {
                let (mut name, mut key) = (None, None);
                while let Some(field) = map.next_key::<String>()? {
                    match field.as_str() {
                        "name" => name = Some(map.next_value::<String>()?),
                        "key" => key = Some(map.next_value::<String>()?),
                        other => {
                            return Err(de::Error::unknown_field(other, &["name", "key"]));
                        }
                    }
                }
                let name = name.ok_or_else(|| de::Error::missing_field("name"))?;
                let key = key.ok_or_else(|| de::Error::missing_field("key"))?;
                Ok(AdminKey::new(name, key))
            }
        }

        deserializer.deserialize_any(KeyVisitor)
    }
}

/// `[retention]`: how long redial keeps what it collected (0 = keep for ever), and how the
/// background sweeper deletes what is past its window.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// Turns (the conversation log) and the platform transcript, messages and recording URLs
    /// kept in a call's details are deleted this many days after they were said / the call
    /// ended. 0 = keep.
    pub transcripts_days: u64,
    /// Raw webhook bodies, and finished jobs (whose payloads copy them), are deleted this many
    /// days after they arrived / finished. 0 = keep.
    pub webhook_bodies_days: u64,
    /// A caller not seen for this many days is erased entirely, as by
    /// `DELETE /admin/v1/callers/{phone}` (needs `server.erasure_key`). 0 = keep.
    pub inactive_callers_days: u64,
    /// How often the sweeper runs, in seconds.
    pub sweep_interval_secs: u64,
    /// Rows deleted per statement (each batch is its own short transaction).
    pub batch_size: u32,
    /// Pause between two batches, in milliseconds, so a large backlog never holds the database.
    pub batch_pause_ms: u64,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            transcripts_days: 0,
            webhook_bodies_days: 0,
            inactive_callers_days: 0,
            sweep_interval_secs: 3_600,
            batch_size: 500,
            batch_pause_ms: 20,
        }
    }
}

impl RetentionSettings {
    /// Whether any window is set.
    pub fn enabled(&self) -> bool {
        self.transcripts_days > 0 || self.webhook_bodies_days > 0 || self.inactive_callers_days > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Keys {
        keys: Vec<AdminKey>,
    }

    #[test]
    fn admin_keys_read_from_tables_and_name_key_strings() {
        let keys: Keys =
            toml::from_str("keys = [{ name = \"ops\", key = \"k1\" }, \"audit:k:2\"]").unwrap();
        assert_eq!(keys.keys[0].name, "ops");
        assert_eq!(keys.keys[0].key.expose(), "k1");
        assert_eq!(keys.keys[1].name, "audit");
        assert_eq!(keys.keys[1].key.expose(), "k:2");
        assert!(toml::from_str::<Keys>("keys = [\"nocolon\"]").is_err());
        assert!(toml::from_str::<Keys>("keys = [{ name = \"x\" }]").is_err());
        assert!(format!("{:?}", keys.keys[0]).contains("***"));
        assert!(!format!("{:?}", keys.keys[0]).contains("k1"));
    }

    fn load(env: &[(&str, &str)]) -> Result<super::super::Settings, String> {
        let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
        super::super::load(None, env, &[]).map_err(|e| e.to_string())
    }

    #[test]
    fn named_keys_load_from_the_environment_and_admin_key_is_named_default() {
        let settings = load(&[
            ("REDIAL_SERVER__ADMIN_KEYS", "ops:k1,dpo:k2"),
            ("REDIAL_SERVER__ADMIN_KEY", "k3"),
        ])
        .unwrap();
        let names: Vec<_> = settings
            .server
            .all_admin_keys()
            .into_iter()
            .map(|k| k.name)
            .collect();
        assert_eq!(names, ["ops", "dpo", DEFAULT_ADMIN_KEY_NAME]);
    }

    #[test]
    fn admin_keys_that_are_platform_keys_duplicates_or_empty_are_refused() {
        let platform = load(&[
            ("REDIAL_SERVER__API_KEYS", "shared"),
            ("REDIAL_SERVER__ADMIN_KEYS", "ops:shared"),
        ]);
        assert!(platform.unwrap_err().contains("also a platform key"));
        let twice = load(&[("REDIAL_SERVER__ADMIN_KEYS", "ops:a,ops:b")]);
        assert!(twice.unwrap_err().contains("two keys are named"));
        let same = load(&[("REDIAL_SERVER__ADMIN_KEYS", "ops:a,dpo:a")]);
        assert!(same.unwrap_err().contains("the same"));
        let empty = load(&[("REDIAL_SERVER__ADMIN_KEYS", "ops:")]);
        assert!(empty.unwrap_err().contains("is empty"));
        let name = load(&[("REDIAL_SERVER__ADMIN_KEYS", "o p:k")]);
        assert!(name.unwrap_err().contains("server.admin_keys"));
    }

    #[test]
    fn erasing_inactive_callers_needs_the_erasure_key() {
        let refused = load(&[("REDIAL_RETENTION__INACTIVE_CALLERS_DAYS", "365")]);
        assert!(refused.unwrap_err().contains("server.erasure_key"));
        let ok = load(&[
            ("REDIAL_RETENTION__INACTIVE_CALLERS_DAYS", "365"),
            ("REDIAL_SERVER__ERASURE_KEY", "secret"),
        ]);
        assert!(ok.unwrap().retention.enabled());
        let batch = load(&[("REDIAL_RETENTION__BATCH_SIZE", "0")]);
        assert!(batch.unwrap_err().contains("retention.batch_size"));
    }

    #[test]
    fn key_names_are_short_plain_words() {
        assert!(AdminKey::valid_name("ops-team_1.a"));
        assert!(!AdminKey::valid_name(""));
        assert!(!AdminKey::valid_name("has space"));
        assert!(!AdminKey::valid_name(&"x".repeat(65)));
    }
}
