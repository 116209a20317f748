//! Whose data an admin request is about: the caller key of any number format, the text forms
//! in which raw bodies may hold it, and the keyed hash that erasure tombstones keep instead.

use hmac::{Hmac, Mac};
use phonenumber::Mode;
use sha2::Sha256;

use crate::config::Secret;
use crate::platforms::phone::{self, ID_PREFIX};

/// Shortest needle searched for in raw bodies: shorter strings (a two-digit id) would match
/// unrelated rows.
const MIN_NEEDLE: usize = 6;

/// The caller key of `raw`, normalised as everywhere else (any formatting of a number gives its
/// E.164 form; any other id becomes `id:<id>`; an id already written `id:…` is kept). `None`
/// for blank, anonymous and malformed numbers.
pub fn caller_key(raw: &str, default_region: &str) -> Option<String> {
    let raw = raw.trim();
    match raw.strip_prefix(ID_PREFIX) {
        Some(id) if !id.trim().is_empty() => Some(raw.to_owned()),
        Some(_) => None,
        None => phone::caller_key(raw, default_region),
    }
}

/// Every text form of the caller key that a raw webhook body, a job payload or a journal record
/// may hold: for a number, E.164 with and without `+`, the national number, and the national
/// and international formats with their usual separators; for an id, the id itself (when at
/// least six characters long; shorter ids are matched by their calls only).
pub fn needles(key: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(id) = key.strip_prefix(ID_PREFIX) {
        out.push(id.to_owned());
    } else {
        out.push(key.to_owned());
        out.push(key.trim_start_matches('+').to_owned());
        if let Ok(number) = phonenumber::parse(None, key) {
            let national = number.national().value().to_string();
            let formatted = [Mode::National, Mode::International, Mode::Rfc3966]
                .map(|mode| number.format().mode(mode).to_string());
            out.push(national);
            for text in formatted {
                let plain = text.replace(['(', ')'], "");
                for separator in ["-", ".", " "] {
                    out.push(plain.replace([' ', '-'], separator).trim().to_owned());
                }
                out.push(text);
            }
        }
    }
    out.retain(|n| n.chars().count() >= MIN_NEEDLE);
    out.sort();
    out.dedup();
    out
}

/// The keyed hash tombstones keep: `hmac-sha256:<hex>` of the caller key under
/// `server.erasure_key`. Without the key the number cannot be recovered from it by trying every
/// number; with it, an auditor can check whether a given number was erased.
pub fn subject_hash(erasure_key: &Secret, key: &str) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(erasure_key.expose().as_bytes()) else {
        // HMAC takes keys of any length; this arm is unreachable.
        return String::new();
    };
    mac.update(key.as_bytes());
    format!("hmac-sha256:{}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_has_its_usual_text_forms_as_needles() {
        let needles = needles("+14155550123");
        for form in [
            "+14155550123",
            "14155550123",
            "4155550123",
            "(415) 555-0123",
            "415-555-0123",
            "415.555.0123",
            "415 555 0123",
            "+1 415-555-0123",
            "tel:+1-415-555-0123",
        ] {
            assert!(needles.iter().any(|n| n == form), "{form} in {needles:?}");
        }
    }

    #[test]
    fn ids_are_needles_only_when_long_enough() {
        assert_eq!(needles("id:user-4242"), vec!["user-4242".to_owned()]);
        assert!(needles("id:42").is_empty());
    }

    #[test]
    fn keys_normalise_like_everywhere_and_keep_explicit_ids() {
        assert_eq!(
            caller_key("(415) 555-0123", "US").as_deref(),
            Some("+14155550123")
        );
        assert_eq!(
            caller_key("id:user-42", "US").as_deref(),
            Some("id:user-42")
        );
        assert_eq!(caller_key("user-42", "US").as_deref(), Some("id:user-42"));
        assert_eq!(caller_key("id:", "US"), None);
        assert_eq!(caller_key("anonymous", "US"), None);
    }

    #[test]
    fn the_hash_is_keyed() {
        let a = subject_hash(&Secret::new("k1"), "+14155550123");
        assert!(a.starts_with("hmac-sha256:"));
        assert_eq!(a, subject_hash(&Secret::new("k1"), "+14155550123"));
        assert_ne!(a, subject_hash(&Secret::new("k2"), "+14155550123"));
        assert!(!a.contains("4155550123"));
    }
}
