//! Who touched a caller's data and how (the audit log's `actor` and `action`), and who produced
//! an analysis (its `source`): typed here, stored as the same text as ever.
//!
//! Unlike the closed `string_enum!` enums of the parent module, these are open: text this build does not
//! know (written by an older or newer release, or by hand) reads as `Other`, kept as it was, so
//! no stored audit entry or analysis becomes unreadable. Each reads back as the value it was
//! written from: `Display` and `From<String>` are inverse for every value but an `Other`
//! holding text a known variant spells (which nothing here builds).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Platform;

/// Serialises the type as its text (`Display`) and reads it back with `From<String>`, so a
/// journal written before the type existed reads the same.
macro_rules! serde_as_text {
    ($name:ident) => {
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                String::deserialize(deserializer).map(Self::from)
            }
        }
    };
}

/// Who or what touched a caller's data.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AuditActor {
    /// The engine serving a turn on this platform (`engine:<platform>`).
    Engine(Platform),
    /// One of redial's own tools the model called (`engine:tool`).
    Tool,
    /// The post-call analysis worker (`worker:analysis`).
    AnalysisWorker,
    /// A platform's call-ended webhook, processed by a worker (`webhook:<platform>`).
    Webhook(Platform),
    /// The admin API, acting with the admin key of this name (`admin:<name>`).
    Admin(String),
    /// A `redial calls` / `redial callers` command run by this user (`cli:<user>`).
    Cli(String),
    /// The retention sweeper (`retention`).
    Retention,
    /// Text this build does not know, as stored.
    Other(String),
}

impl fmt::Display for AuditActor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Engine(platform) => write!(f, "engine:{platform}"),
            Self::Tool => f.write_str("engine:tool"),
            Self::AnalysisWorker => f.write_str("worker:analysis"),
            Self::Webhook(platform) => write!(f, "webhook:{platform}"),
            Self::Admin(name) => write!(f, "admin:{name}"),
            Self::Cli(user) => write!(f, "cli:{user}"),
            Self::Retention => f.write_str("retention"),
            Self::Other(text) => f.write_str(text),
        }
    }
}

impl From<String> for AuditActor {
    fn from(text: String) -> Self {
        let platform = |prefix: &str| {
            text.strip_prefix(prefix)
                .and_then(|name| name.parse::<Platform>().ok())
        };
        // A name after `admin:` or `cli:`; empty is not one (it reads as `Other`).
        let name = |prefix: &str| text.strip_prefix(prefix).filter(|n| !n.is_empty());
        if let Some(platform) = platform("engine:") {
            return Self::Engine(platform);
        }
        if let Some(platform) = platform("webhook:") {
            return Self::Webhook(platform);
        }
        if let Some(admin) = name("admin:") {
            return Self::Admin(admin.to_owned());
        }
        if let Some(user) = name("cli:") {
            return Self::Cli(user.to_owned());
        }
        match text.as_str() {
            "engine:tool" => Self::Tool,
            "worker:analysis" => Self::AnalysisWorker,
            "retention" => Self::Retention,
            _ => Self::Other(text),
        }
    }
}

serde_as_text!(AuditActor);

/// What was done to a caller's data.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AuditAction {
    /// Read (`read`): the profile went into a turn's prompt.
    Read,
    /// Created (`create`): a call's first turn stored the caller.
    Create,
    /// Changed (`update`): a tool, a webhook or an analysis wrote to the profile or the call.
    Update,
    /// Exported (`export`): everything held about the caller, by an operator.
    Export,
    /// Erased (`erase`): the tombstone of an erasure, whose details keep a keyed hash of the
    /// number, never the number.
    Erase,
    /// A retention sweep deleted what was past its window (`retention_sweep`; one summary entry
    /// per sweep, the counts in its details).
    RetentionSweep,
    /// Text this build does not know, as stored.
    Other(String),
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Read => "read",
            Self::Create => "create",
            Self::Update => "update",
            Self::Export => "export",
            Self::Erase => "erase",
            Self::RetentionSweep => "retention_sweep",
            Self::Other(text) => text,
        })
    }
}

impl From<String> for AuditAction {
    fn from(text: String) -> Self {
        match text.as_str() {
            "read" => Self::Read,
            "create" => Self::Create,
            "update" => Self::Update,
            "export" => Self::Export,
            "erase" => Self::Erase,
            "retention_sweep" => Self::RetentionSweep,
            _ => Self::Other(text),
        }
    }
}

serde_as_text!(AuditAction);

/// Who produced an analysis; a session keeps at most one analysis per source.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AnalysisSource {
    /// redial's own post-call analysis (`redial`).
    Redial,
    /// The platform's own analysis, from its webhook (`retell`, `vapi`, `elevenlabs`).
    Platform(Platform),
    /// Text this build does not know, as stored.
    Other(String),
}

impl fmt::Display for AnalysisSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Redial => f.write_str("redial"),
            Self::Platform(platform) => write!(f, "{platform}"),
            Self::Other(text) => f.write_str(text),
        }
    }
}

impl From<String> for AnalysisSource {
    fn from(text: String) -> Self {
        if text == "redial" {
            return Self::Redial;
        }
        match text.parse::<Platform>() {
            Ok(platform) => Self::Platform(platform),
            Err(_) => Self::Other(text),
        }
    }
}

serde_as_text!(AnalysisSource);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_spellings_read_as_their_variants_and_are_written_back_unchanged() {
        // Every spelling written today, each with the value it must read as.
        for (text, actor) in [
            ("engine:vapi", AuditActor::Engine(Platform::Vapi)),
            (
                "engine:elevenlabs",
                AuditActor::Engine(Platform::ElevenLabs),
            ),
            ("engine:retell", AuditActor::Engine(Platform::Retell)),
            ("engine:generic", AuditActor::Engine(Platform::Generic)),
            ("engine:tool", AuditActor::Tool),
            ("worker:analysis", AuditActor::AnalysisWorker),
            ("webhook:vapi", AuditActor::Webhook(Platform::Vapi)),
            ("admin:ops", AuditActor::Admin("ops".into())),
            ("cli:root", AuditActor::Cli("root".into())),
            ("retention", AuditActor::Retention),
        ] {
            assert_eq!(AuditActor::from(text.to_owned()), actor);
            assert_eq!(actor.to_string(), text);
        }
        for (text, action) in [
            ("read", AuditAction::Read),
            ("create", AuditAction::Create),
            ("update", AuditAction::Update),
            ("export", AuditAction::Export),
            ("erase", AuditAction::Erase),
            ("retention_sweep", AuditAction::RetentionSweep),
        ] {
            assert_eq!(AuditAction::from(text.to_owned()), action);
            assert_eq!(action.to_string(), text);
        }
        for (text, source) in [
            ("redial", AnalysisSource::Redial),
            ("vapi", AnalysisSource::Platform(Platform::Vapi)),
            ("retell", AnalysisSource::Platform(Platform::Retell)),
            ("elevenlabs", AnalysisSource::Platform(Platform::ElevenLabs)),
        ] {
            assert_eq!(AnalysisSource::from(text.to_owned()), source);
            assert_eq!(source.to_string(), text);
        }
    }

    #[test]
    fn unknown_text_reads_as_other_and_is_kept_as_it_was() {
        for text in [
            "engine",
            "engine:",
            "engine:skype",
            "admin",
            "admin:",
            "cli:",
            "webhook:skype",
            "Retention",
            "Engine:vapi",
            "",
            "a\0b",
        ] {
            let actor = AuditActor::from(text.to_owned());
            assert_eq!(actor, AuditActor::Other(text.to_owned()));
            assert_eq!(actor.to_string(), text);
        }
        for text in ["exported", "delete", "READ", " read", "retention-sweep"] {
            let action = AuditAction::from(text.to_owned());
            assert_eq!(action, AuditAction::Other(text.to_owned()));
            assert_eq!(action.to_string(), text);
        }
        for text in ["Redial", "openai", "redial "] {
            let source = AnalysisSource::from(text.to_owned());
            assert_eq!(source, AnalysisSource::Other(text.to_owned()));
            assert_eq!(source.to_string(), text);
        }
    }

    #[test]
    fn serde_uses_the_stored_text_so_journaled_entries_read_the_same() {
        let actor: AuditActor = serde_json::from_str(r#""engine:retell""#).unwrap();
        assert_eq!(actor, AuditActor::Engine(Platform::Retell));
        assert_eq!(serde_json::to_string(&actor).unwrap(), r#""engine:retell""#);
        let action: AuditAction = serde_json::from_str(r#""erase""#).unwrap();
        assert_eq!(serde_json::to_string(&action).unwrap(), r#""erase""#);
        let source = AnalysisSource::Redial;
        assert_eq!(serde_json::to_value(&source).unwrap(), "redial");
        assert!(serde_json::from_str::<AuditActor>("42").is_err());
    }
}
