//! [`Platform`]: which voice platform a call came from, with its stored spelling.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The voice platform a call came from.
///
/// [`Platform::as_str`] is the spelling stored in the database (`call_session.platform`,
/// `webhook_event.platform`), used in dedupe keys, URLs (`/webhooks/{platform}`) and metric
/// labels; serde's spelling (`snake_case`, so `eleven_labs`) is the one inside stored JSON (job
/// payloads, journal records). Neither may change: rows and journal files already hold them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    /// Vapi custom LLM.
    Vapi,
    /// ElevenLabs Agents custom LLM.
    ElevenLabs,
    /// Retell custom-LLM WebSocket.
    Retell,
    /// Any other OpenAI-compatible client.
    Generic,
}

impl Platform {
    /// Every platform, in declaration order.
    pub const ALL: [Self; 4] = [Self::Vapi, Self::ElevenLabs, Self::Retell, Self::Generic];

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vapi => "vapi",
            Self::ElevenLabs => "elevenlabs",
            Self::Retell => "retell",
            Self::Generic => "generic",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A text that is no platform's stored spelling.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown Platform {0:?}")]
pub struct UnknownPlatform(pub String);

impl FromStr for Platform {
    type Err = UnknownPlatform;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPlatform(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_and_serde_spellings_do_not_change() {
        let stored: Vec<_> = Platform::ALL.iter().map(|p| p.as_str()).collect();
        assert_eq!(stored, ["vapi", "elevenlabs", "retell", "generic"]);
        let json = serde_json::to_value(Platform::ALL).unwrap();
        assert_eq!(
            json,
            serde_json::json!(["vapi", "eleven_labs", "retell", "generic"])
        );
        for platform in Platform::ALL {
            assert_eq!(platform.as_str().parse::<Platform>(), Ok(platform));
            assert_eq!(platform.to_string(), platform.as_str());
        }
        assert_eq!(
            "Vapi".parse::<Platform>().unwrap_err().to_string(),
            "unknown Platform \"Vapi\""
        );
    }
}
