//! Repairs a webhook body's lone UTF-16 surrogate escapes before it is parsed.
//!
//! JSON text may escape a lone surrogate (`"\ud800"`), which names no character: serde_json
//! rejects it, Postgres `jsonb` rejects it, and a Rust string cannot hold it. A platform that
//! sends one (a transcript cut mid-emoji, say) would get a 400 for a correctly signed event and
//! retry it until it gives up, and the call would never be closed. So, after the signature is
//! verified on the raw bytes, each lone surrogate escape becomes `\ufffd` (U+FFFD); a valid
//! surrogate pair, every other escape and all other bytes are kept exactly.
//!
//! The pass reads escapes as JSON does: a backslash and the byte after it are one escape, so
//! `\\ud800` (an escaped backslash, then the letters `ud800`) is text, not a surrogate.

use std::borrow::Cow;

/// What a lone surrogate escape becomes.
const REPLACEMENT: &[u8] = b"\\ufffd";

/// `body` with every lone surrogate escape replaced by `\ufffd`; borrowed when there is none.
pub fn replace_lone_surrogates(body: &[u8]) -> Cow<'_, [u8]> {
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    let mut at = 0;
    while let Some(offset) = body.get(at..).and_then(find_backslash) {
        let start = at + offset;
        at = match unit_at(body, start) {
            Some(high) if is_high(high) && unit_at(body, start + 6).is_some_and(is_low) => {
                start + 12
            }
            Some(unit) if is_high(unit) || is_low(unit) => {
                let out = out.get_or_insert_with(|| Vec::with_capacity(body.len()));
                out.extend_from_slice(body.get(copied..start).unwrap_or_default());
                out.extend_from_slice(REPLACEMENT);
                copied = start + 6;
                copied
            }
            Some(_) => start + 6,
            // Any other escape is the backslash and one byte (`\\`, `\"`, `\n`…).
            None => start + 2,
        };
    }
    match out {
        Some(mut out) => {
            out.extend_from_slice(body.get(copied..).unwrap_or_default());
            Cow::Owned(out)
        }
        None => Cow::Borrowed(body),
    }
}

fn find_backslash(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\\')
}

/// The UTF-16 code unit of a `\uXXXX` escape starting at `at`.
fn unit_at(body: &[u8], at: usize) -> Option<u16> {
    let escape = body.get(at..at.checked_add(6)?)?;
    let digits = escape.strip_prefix(b"\\u")?;
    let digits = std::str::from_utf8(digits).ok()?;
    if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u16::from_str_radix(digits, 16).ok()
}

fn is_high(unit: u16) -> bool {
    (0xD800..=0xDBFF).contains(&unit)
}

fn is_low(unit: u16) -> bool {
    (0xDC00..=0xDFFF).contains(&unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repaired(body: &str) -> String {
        String::from_utf8(replace_lone_surrogates(body.as_bytes()).into_owned()).unwrap()
    }

    #[test]
    fn lone_surrogates_become_the_replacement_character() {
        assert_eq!(repaired(r#"{"a":"x\ud800y"}"#), r#"{"a":"x\ufffdy"}"#);
        assert_eq!(repaired(r#"["\uDC00"]"#), r#"["\ufffd"]"#);
        // A high surrogate followed by a non-low escape, or at the very end.
        assert_eq!(repaired(r#"["\ud800\u0041"]"#), r#"["\ufffd\u0041"]"#);
        assert_eq!(repaired(r#"["\udbff\udbff"]"#), r#"["\ufffd\ufffd"]"#);
        assert_eq!(repaired(r#""\ud800"#), r#""\ufffd"#);
        // The result parses.
        let value: serde_json::Value =
            serde_json::from_str(&repaired(r#"{"a\ud800":"\udfff"}"#)).unwrap();
        assert_eq!(value, serde_json::json!({"a\u{fffd}": "\u{fffd}"}));
    }

    #[test]
    fn valid_pairs_other_escapes_and_escaped_backslashes_are_kept() {
        for body in [
            r#"{"emoji":"\ud83d\ude00","nul":"\u0000","q":"\"\\\n"}"#,
            // An escaped backslash, then text that only looks like an escape.
            r#"["\\ud800","\\u0000","\\\\ud800"]"#,
            r#"["\u12"]"#,
            "",
            r"\",
        ] {
            assert!(
                matches!(replace_lone_surrogates(body.as_bytes()), Cow::Borrowed(_)),
                "{body}"
            );
        }
        let parsed: Vec<String> = serde_json::from_str(r#"["\\ud800","\\u0000"]"#).unwrap();
        assert_eq!(parsed, ["\\ud800", "\\u0000"], "not a surrogate, not a NUL");
        // Right after an escaped backslash, a real escape is still seen.
        assert_eq!(repaired(r#"["\\\ud800"]"#), r#"["\\\ufffd"]"#);
    }

    #[test]
    fn bytes_that_are_not_utf8_pass_through() {
        let body = b"{\"a\":\"\xff\\ud800\"}";
        assert_eq!(
            replace_lone_surrogates(body).as_ref(),
            b"{\"a\":\"\xff\\ufffd\"}"
        );
    }
}
