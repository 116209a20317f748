//! Lenient reads from a `serde_json::Value`: a field that is absent, `null` or of the wrong type
//! reads as `None`, never as an error. Paths are JSON pointers (`/message/call/id`).

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Map, Value};

/// A non-empty string at `pointer`.
pub(super) fn str_at(value: &Value, pointer: &str) -> Option<String> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// The first non-empty string among `pointers`.
pub(super) fn first_str(value: &Value, pointers: &[&str]) -> Option<String> {
    pointers.iter().find_map(|p| str_at(value, p))
}

/// A finite number at `pointer`.
pub(super) fn f64_at(value: &Value, pointer: &str) -> Option<f64> {
    value
        .pointer(pointer)
        .and_then(Value::as_f64)
        .filter(|n| n.is_finite())
}

/// An integer at `pointer`; a float is rounded to the nearest integer.
pub(super) fn i64_at(value: &Value, pointer: &str) -> Option<i64> {
    let number = value.pointer(pointer)?;
    number
        .as_i64()
        .or_else(|| f64_at(number, "").map(|f| f.round() as i64))
}

/// A boolean at `pointer`.
pub(super) fn bool_at(value: &Value, pointer: &str) -> Option<bool> {
    value.pointer(pointer).and_then(Value::as_bool)
}

/// The object at `pointer`, if it is one.
pub(super) fn object_at<'a>(value: &'a Value, pointer: &str) -> Option<&'a Value> {
    value.pointer(pointer).filter(|v| v.is_object())
}

/// A copy of the first array among `pointers`.
pub(super) fn first_array(value: &Value, pointers: &[&str]) -> Option<Value> {
    pointers
        .iter()
        .find_map(|p| value.pointer(p).filter(|v| v.is_array()))
        .cloned()
}

/// An RFC 3339 timestamp (`2026-08-20T17:00:01.000Z`) at `pointer`.
pub(super) fn rfc3339_at(value: &Value, pointer: &str) -> Option<DateTime<Utc>> {
    let text = value.pointer(pointer)?.as_str()?;
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A Unix-milliseconds integer at `pointer`, as a time.
pub(super) fn epoch_ms_at(value: &Value, pointer: &str) -> Option<DateTime<Utc>> {
    i64_at(value, pointer).and_then(DateTime::from_timestamp_millis)
}

/// `end − start` in milliseconds, when both are known and the end is not before the start.
pub(super) fn span_ms(start: Option<DateTime<Utc>>, end: Option<DateTime<Utc>>) -> Option<i64> {
    let span = end? - start?;
    (span >= TimeDelta::zero()).then(|| span.num_milliseconds())
}

/// Collects the non-empty strings found at `(key, pointer)` into an object under `key`.
pub(super) fn collect_strings(value: &Value, fields: &[(&str, &str)]) -> Map<String, Value> {
    fields
        .iter()
        .filter_map(|(key, pointer)| {
            str_at(value, pointer).map(|url| ((*key).to_owned(), Value::String(url)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wrong_types_read_as_absent() {
        let v = json!({"s": 5, "n": "5", "b": "true", "o": [], "a": {}, "e": ""});
        assert_eq!(str_at(&v, "/s"), None);
        assert_eq!(str_at(&v, "/e"), None);
        assert_eq!(f64_at(&v, "/n"), None);
        assert_eq!(i64_at(&v, "/n"), None);
        assert_eq!(bool_at(&v, "/b"), None);
        assert_eq!(object_at(&v, "/o"), None);
        assert_eq!(first_array(&v, &["/a"]), None);
        assert_eq!(rfc3339_at(&v, "/s"), None);
        assert_eq!(str_at(&v, "/missing/deeper"), None);
    }

    #[test]
    fn numbers_and_times() {
        let v = json!({"i": 1714608475945_i64, "f": 191.5, "t": "2026-08-20T17:00:01.000Z"});
        assert_eq!(i64_at(&v, "/f"), Some(192));
        assert_eq!(f64_at(&v, "/i"), Some(1_714_608_475_945.0));
        let start = epoch_ms_at(&v, "/i");
        assert_eq!(start.map(|t| t.timestamp_millis()), Some(1_714_608_475_945));
        let at = rfc3339_at(&v, "/t");
        assert_eq!(at.map(|t| t.timestamp()), Some(1_787_245_201));
        assert_eq!(span_ms(start, start), Some(0));
        assert_eq!(span_ms(at, start), None);
        assert_eq!(span_ms(None, start), None);
    }
}
