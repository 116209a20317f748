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
    /// Text this build does not know, as stored.
    Other(String),
}

impl fmt::Display for AuditActor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Engine(platform) => write!(f, "engine:{platform}"),
            Self::Tool => f.write_str("engine:tool"),
            Self::AnalysisWorker => f.write_str("worker:analysis"),
            Self::Other(text) => f.write_str(text),
        }
    }
}

impl From<String> for AuditActor {
    fn from(text: String) -> Self {
        let platform = text
            .strip_prefix("engine:")
            .and_then(|name| name.parse::<Platform>().ok());
        match (text.as_str(), platform) {
            ("engine:tool", _) => Self::Tool,
            ("worker:analysis", _) => Self::AnalysisWorker,
            (_, Some(platform)) => Self::Engine(platform),
            (_, None) => Self::Other(text),
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
    /// Changed (`update`): a tool or an analysis wrote to the profile or the call's answers.
    Update,
    /// Text this build does not know, as stored.
    Other(String),
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Read => "read",
            Self::Create => "create",
            Self::Update => "update",
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
        ] {
            assert_eq!(AuditActor::from(text.to_owned()), actor);
            assert_eq!(actor.to_string(), text);
        }
        for (text, action) in [
            ("read", AuditAction::Read),
            ("create", AuditAction::Create),
            ("update", AuditAction::Update),
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
            "Engine:vapi",
            "",
            "a\0b",
        ] {
            let actor = AuditActor::from(text.to_owned());
            assert_eq!(actor, AuditActor::Other(text.to_owned()));
            assert_eq!(actor.to_string(), text);
        }
        for text in ["export", "erase", "READ", " read"] {
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
