//! Text as every store can hold it: the one sanitising layer at the storage boundary.
//!
//! Postgres `text` and `jsonb` cannot hold NUL (U+0000): a value carrying one fails the whole
//! statement, so a caller's stray character (or a platform's `\u0000` in a webhook) would lose a
//! turn, a tool value or a call's close, and a platform would retry the same poison forever.
//! Every string the backends bind, and every string inside a JSON value they bind (keys
//! included), goes through [`text`] or [`json`], which replace NUL with U+FFFD. SQLite stores NUL
//! fine, but both backends sanitise so that the data does not differ by backend. Lone UTF-16
//! surrogates cannot reach this layer: a Rust string cannot hold one (the webhook body's escapes
//! are repaired before parsing, see `webhooks::escapes`).
//!
//! The helpers borrow when nothing needs replacing, which is the common case.

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::Answers;

/// `value` as every store can hold it: NUL becomes U+FFFD.
pub fn text(value: &str) -> Cow<'_, str> {
    if value.contains('\0') {
        Cow::Owned(value.replace('\0', "\u{fffd}"))
    } else {
        Cow::Borrowed(value)
    }
}

/// [`text`] of an optional value.
pub fn opt_text(value: Option<&str>) -> Option<Cow<'_, str>> {
    value.map(text)
}

/// `value` with [`text`] applied to every string and object key in it.
pub fn json(value: &Value) -> Cow<'_, Value> {
    if json_is_clean(value) {
        Cow::Borrowed(value)
    } else {
        let mut owned = value.clone();
        clean_json(&mut owned);
        Cow::Owned(owned)
    }
}

/// Applies [`text`] to every string and object key of `value`, in place.
pub fn clean_json(value: &mut Value) {
    match value {
        Value::String(s) => clean_string(s),
        Value::Array(items) => items.iter_mut().for_each(clean_json),
        Value::Object(map) => {
            if map.keys().any(|k| k.contains('\0')) {
                let taken = std::mem::take(map);
                *map = taken
                    .into_iter()
                    .map(|(k, v)| (text(&k).into_owned(), v))
                    .collect::<Map<String, Value>>();
            }
            map.values_mut().for_each(clean_json);
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Applies [`text`] to a string in place.
pub fn clean_string(value: &mut String) {
    if let Cow::Owned(clean) = text(value) {
        *value = clean;
    }
}

/// Whether `value` holds no NUL, in any string or key.
fn json_is_clean(value: &Value) -> bool {
    match value {
        Value::String(s) => !s.contains('\0'),
        Value::Array(items) => items.iter().all(json_is_clean),
        Value::Object(map) => map
            .iter()
            .all(|(k, v)| !k.contains('\0') && json_is_clean(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => true,
    }
}

/// [`text`] of every string of a list (a caller's notes).
pub fn strings(values: &[String]) -> Cow<'_, [String]> {
    if values.iter().all(|v| !v.contains('\0')) {
        Cow::Borrowed(values)
    } else {
        Cow::Owned(values.iter().map(|v| text(v).into_owned()).collect())
    }
}

/// [`text`] of every field name and value of confirmed answers.
pub fn answers(values: &Answers) -> Cow<'_, Answers> {
    let clean = values
        .iter()
        .all(|(k, a)| !k.contains('\0') && !a.value.contains('\0'));
    if clean {
        return Cow::Borrowed(values);
    }
    Cow::Owned(
        values
            .iter()
            .map(|(k, a)| {
                let mut a = a.clone();
                clean_string(&mut a.value);
                (text(k).into_owned(), a)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;

    use super::*;
    use crate::storage::Answer;

    #[test]
    fn nul_becomes_the_replacement_character_and_clean_text_is_borrowed() {
        assert_eq!(text("a\0b\0"), "a\u{fffd}b\u{fffd}");
        assert!(matches!(text("plain é ✓"), Cow::Borrowed("plain é ✓")));
        assert_eq!(opt_text(Some("\0")).as_deref(), Some("\u{fffd}"));
        assert_eq!(opt_text(None), None);
    }

    #[test]
    fn an_escaped_backslash_before_u0000_is_not_a_nul() {
        // The JSON text `"\\u0000"` is a backslash followed by `u0000`: six printable characters.
        let parsed: String = serde_json::from_str(r#""\\u0000""#).unwrap();
        assert_eq!(parsed, "\\u0000");
        assert!(matches!(text(&parsed), Cow::Borrowed(_)));
        let value = json!({"k": parsed});
        assert!(matches!(json(&value), Cow::Borrowed(_)));
        // Whereas `"\u0000"` is a NUL.
        let nul: String = serde_json::from_str(r#""\u0000""#).unwrap();
        assert_eq!(text(&nul), "\u{fffd}");
    }

    #[test]
    fn every_string_and_key_of_a_json_value_is_cleaned() {
        let value: Value =
            serde_json::from_str(r#"{"a\u0000": ["x\u0000", 1, null, {"b": "\u0000"}], "n": 2}"#)
                .unwrap();
        let clean = json(&value);
        assert!(matches!(clean, Cow::Owned(_)));
        assert_eq!(
            *clean,
            json!({"a\u{fffd}": ["x\u{fffd}", 1, null, {"b": "\u{fffd}"}], "n": 2})
        );
        // Postgres jsonb accepts what serde_json writes for it: no `\u0000` escape is left.
        assert!(!serde_json::to_string(&*clean).unwrap().contains("\\u0000"));
        let untouched = json!({"a": ["x", 1, true]});
        assert!(matches!(json(&untouched), Cow::Borrowed(_)));
    }

    #[test]
    fn lists_and_answers_are_cleaned() {
        let notes = vec!["ok".to_owned(), "n\0".to_owned()];
        assert_eq!(*strings(&notes), ["ok".to_owned(), "n\u{fffd}".to_owned()]);
        assert!(matches!(strings(&notes[..1]), Cow::Borrowed(_)));
        let at = Utc::now();
        let mut given = Answers::new();
        given.insert(
            "f\0".into(),
            Answer {
                value: "v\0".into(),
                confirmed_at: at,
            },
        );
        let clean = answers(&given);
        assert_eq!(clean["f\u{fffd}"].value, "v\u{fffd}");
        assert_eq!(clean["f\u{fffd}"].confirmed_at, at);
    }
}
