//! Secret configuration values: never shown in logs, debug output or `check-config`.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A secret string (API key, webhook secret). `Debug` and `Serialize` print `***` (or `""` when
/// empty, so an unset secret is visible as unset).
#[derive(Clone, Default)]
pub struct Secret(Option<SecretString>);

impl Secret {
    /// Wraps a value; an empty string is an unset secret.
    pub fn new(value: impl Into<String>) -> Self {
        let value: String = value.into();
        if value.is_empty() {
            Self(None)
        } else {
            Self(Some(SecretString::from(value)))
        }
    }

    /// The secret itself. Only call this where the value is used (a header, an HMAC key).
    pub fn expose(&self) -> &str {
        self.0.as_ref().map_or("", |s| s.expose_secret())
    }

    /// Whether no value is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    fn masked(&self) -> &'static str {
        if self.is_empty() { "" } else { "***" }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.masked())
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.masked())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

/// A database URL whose password (if any) is masked when shown.
#[derive(Clone)]
pub struct DatabaseUrl(SecretString);

impl DatabaseUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self(SecretString::from(url.into()))
    }

    /// The URL itself, password included.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// The URL with the password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_url_password(self.expose())
    }
}

impl Default for DatabaseUrl {
    fn default() -> Self {
        Self::new("sqlite://redial.db")
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl Serialize for DatabaseUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for DatabaseUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

/// Replaces the password of `scheme://user:password@host…` with `***`; other URLs unchanged.
/// A `password=` query parameter is masked too.
pub fn redact_url_password(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest_start = scheme_end + 3;
        let authority_end = out[rest_start..]
            .find(['/', '?'])
            .map_or(out.len(), |i| rest_start + i);
        if let Some(at) = out[rest_start..authority_end].rfind('@') {
            let userinfo = &out[rest_start..rest_start + at];
            if let Some(colon) = userinfo.find(':') {
                let start = rest_start + colon + 1;
                out.replace_range(start..rest_start + at, "***");
            }
        }
    }
    if let Some(pos) = out.find("password=") {
        let start = pos + "password=".len();
        let end = out[start..].find('&').map_or(out.len(), |i| start + i);
        out.replace_range(start..end, "***");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_in_debug_and_serialization() {
        let secret = Secret::new("sk-live-123");
        assert_eq!(format!("{secret:?}"), "\"***\"");
        assert_eq!(serde_json::to_string(&secret).unwrap(), "\"***\"");
        assert_eq!(secret.expose(), "sk-live-123");
        assert_eq!(format!("{:?}", Secret::default()), "\"\"");
    }

    #[test]
    fn database_url_passwords_are_masked() {
        assert_eq!(
            redact_url_password("postgres://app:s3cr3t@db:5432/redial"),
            "postgres://app:***@db:5432/redial"
        );
        assert_eq!(
            redact_url_password("postgres://app@db/redial?password=x&sslmode=require"),
            "postgres://app@db/redial?password=***&sslmode=require"
        );
        assert_eq!(
            redact_url_password("sqlite://redial.db"),
            "sqlite://redial.db"
        );
        let url = DatabaseUrl::new("postgres://a:b@h/d");
        assert_eq!(format!("{url:?}"), "\"postgres://a:***@h/d\"");
        assert_eq!(url.expose(), "postgres://a:b@h/d");
    }
}
