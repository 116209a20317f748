//! Phone numbers as caller keys: every formatting of a number normalises to one E.164 string.

use std::str::FromStr;

use phonenumber::Mode;
use phonenumber::country::Id;

/// Normalises `raw` to E.164 (`+14155550123`). Numbers without a country code are read in
/// `default_region` (ISO 3166 alpha-2, e.g. `US`). `tel:` prefixes, spaces, dashes, dots and
/// parentheses are accepted; `00` international prefixes too. Returns `None` for anything that
/// is not a valid number (anonymous callers, SIP URIs, web calls).
pub fn normalize(raw: &str, default_region: &str) -> Option<String> {
    let raw = raw.trim();
    let raw = raw.strip_prefix("tel:").unwrap_or(raw);
    if raw.is_empty() || raw.contains('@') {
        return None;
    }
    let raw = match raw.strip_prefix("00") {
        Some(rest) => format!("+{rest}"),
        None => raw.to_owned(),
    };
    let region = Id::from_str(&default_region.to_ascii_uppercase()).ok();
    let number = phonenumber::parse(region, &raw).ok()?;
    phonenumber::is_valid(&number).then(|| number.format().mode(Mode::E164).to_string())
}

/// Whether `region` is a known ISO 3166 alpha-2 region code.
pub fn is_region(region: &str) -> bool {
    Id::from_str(&region.to_ascii_uppercase()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_formatting_of_a_number_gives_one_key() {
        for raw in [
            "+14155550123",
            "+1 (415) 555-0123",
            "1-415-555-0123",
            "(415) 555 0123",
            "415.555.0123",
            "tel:+1-415-555-0123",
            "0014155550123",
        ] {
            assert_eq!(
                normalize(raw, "US").as_deref(),
                Some("+14155550123"),
                "{raw}"
            );
        }
        assert_eq!(
            normalize("+44 20 7946 0958", "US").as_deref(),
            Some("+442079460958")
        );
        assert_eq!(
            normalize("020 7946 0958", "GB").as_deref(),
            Some("+442079460958")
        );
    }

    #[test]
    fn non_numbers_have_no_key() {
        for raw in ["", "anonymous", "sip:alice@example.com", "+1 555", "12"] {
            assert_eq!(normalize(raw, "US"), None, "{raw}");
        }
        assert!(is_region("us"));
        assert!(!is_region("XX"));
    }
}
