//! Caller keys: every formatting of a phone number normalises to one E.164 string (`+14155550123`);
//! any other caller id (an app's user id, a SIP address, a WebRTC participant) is kept as given
//! under [`ID_PREFIX`], so it never collides with a number.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Mutex, PoisonError};

use phonenumber::Mode;
use phonenumber::country::Id;

/// Prefix of a caller key that is not a phone number: `id:user-42`.
pub const ID_PREFIX: &str = "id:";

/// Caller ids that name nobody in particular (withheld numbers): no caller, rather than one
/// caller shared by everyone who withholds their number.
const ANONYMOUS: &[&str] = &[
    "anonymous",
    "unknown",
    "restricted",
    "private",
    "unavailable",
    "null",
    "undefined",
];

/// The caller key of a raw caller id: a phone number (E.164, `tel:` and `sip:` forms, national
/// formats read in `default_region`) as its E.164 form; any other non-empty id as
/// `id:<id as given>`. `None` for a blank or anonymous id, and for a malformed number (one
/// written with a leading `+` or `tel:` that is not a valid number): a typo in a number must
/// not become a separate caller.
pub fn caller_key(raw: &str, default_region: &str) -> Option<String> {
    let raw = raw.trim();
    if let Some(key) = MEMO.get(raw, default_region) {
        return key;
    }
    let key = parse_caller_key(raw, default_region);
    MEMO.put(raw, default_region, &key);
    key
}

/// Caller ids read lately and their keys. Every turn of a call carries the same caller id, and
/// parsing a number runs the `phonenumber` crate's metadata regexes; a call's later turns find
/// their key here.
static MEMO: Memo = Memo::new();

/// Most caller ids [`MEMO`] holds; when full it starts over (keys are cheap to recompute, and
/// the ids of live calls come back within a turn).
const MEMO_MAX: usize = 4_096;

/// Raw caller ids of one region and their keys.
type Keys = HashMap<String, Option<String>>;

/// A bounded map of region → raw caller id → key.
struct Memo(Mutex<Option<HashMap<String, Keys>>>);

impl Memo {
    const fn new() -> Self {
        Self(Mutex::new(None))
    }

    fn get(&self, raw: &str, region: &str) -> Option<Option<String>> {
        let memo = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        memo.as_ref()?.get(region)?.get(raw).cloned()
    }

    fn put(&self, raw: &str, region: &str, key: &Option<String>) {
        let mut memo = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let regions = memo.get_or_insert_with(HashMap::new);
        if regions.values().map(HashMap::len).sum::<usize>() >= MEMO_MAX {
            regions.clear();
        }
        regions
            .entry(region.to_owned())
            .or_default()
            .insert(raw.to_owned(), key.clone());
    }
}

fn parse_caller_key(raw: &str, default_region: &str) -> Option<String> {
    if raw.is_empty() || ANONYMOUS.iter().any(|a| raw.eq_ignore_ascii_case(a)) {
        return None;
    }
    if let Some(number) = normalize(raw, default_region) {
        return Some(number);
    }
    let user = sip_user(raw).unwrap_or(raw);
    if let Some(number) = (user != raw)
        .then(|| normalize(user, default_region))
        .flatten()
    {
        return Some(number);
    }
    if raw.starts_with('+') || raw.starts_with("tel:") {
        return None;
    }
    Some(format!("{ID_PREFIX}{raw}"))
}

/// The user part of a `sip:`/`sips:` URI (`sip:+14155550123@host;user=phone` → `+14155550123`).
fn sip_user(raw: &str) -> Option<&str> {
    let rest = raw
        .strip_prefix("sip:")
        .or_else(|| raw.strip_prefix("sips:"))?;
    let user = rest.split(['@', ';']).next().unwrap_or(rest);
    (!user.is_empty()).then_some(user)
}

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

/// Loads the `phonenumber` crate's metadata and compiles what reading `region`'s numbers needs,
/// so no caller waits for it. Both are lazy and run on the thread that first parses a number:
/// the metadata took about 90 ms on the reference machine, and each region's first number a few
/// milliseconds more — time a Tokio worker would spend blocked, stalling every stream it runs.
/// Blocking: run it on a blocking thread. Returns how many example numbers of `region` it read.
pub fn warm(region: &str) -> usize {
    let region = region.to_ascii_uppercase();
    let Some(metadata) = phonenumber::metadata::DATABASE.by_id(region.as_str()) else {
        return 0;
    };
    let descriptors = metadata.descriptors();
    let examples = [descriptors.fixed_line(), descriptors.mobile()]
        .into_iter()
        .flatten()
        .filter_map(|d| d.example());
    let mut read = 0;
    for national in examples {
        // The national form as a caller id arrives without a country code, then the E.164 form.
        if let Some(e164) = normalize(national, &region) {
            read += usize::from(normalize(&e164, &region).is_some());
        }
    }
    read
}

/// Whether `region` is a known ISO 3166 alpha-2 region code.
pub fn is_region(region: &str) -> bool {
    Id::from_str(&region.to_ascii_uppercase()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warming_reads_the_example_numbers_of_a_known_region_only() {
        assert_eq!(warm("us"), 2);
        assert_eq!(warm("GB"), 2);
        assert_eq!(warm("ZZ"), 0);
    }

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
    fn a_remembered_key_is_the_parsed_key_of_that_id_in_that_region() {
        for (raw, region) in [
            ("020 7946 0958", "GB"),
            ("020 7946 0958", "US"),
            ("(415) 555-0123", "US"),
            ("(415) 555-0123", "GB"),
            ("+1 415 555 01", "US"),
            ("user-42", "US"),
            ("anonymous", "US"),
        ] {
            let parsed = parse_caller_key(raw, region);
            assert_eq!(caller_key(raw, region), parsed, "{raw} in {region}, first");
            assert_eq!(caller_key(raw, region), parsed, "{raw} in {region}, again");
        }
        assert_ne!(
            caller_key("020 7946 0958", "GB"),
            caller_key("020 7946 0958", "US")
        );
    }

    #[test]
    fn the_memo_stays_within_its_bound() {
        let memo = Memo::new();
        for i in 0..MEMO_MAX + 10 {
            memo.put(&format!("user-{i}"), "US", &None);
        }
        let held = {
            let regions = memo.0.lock().unwrap_or_else(PoisonError::into_inner);
            regions
                .as_ref()
                .map_or(0, |r| r.values().map(HashMap::len).sum::<usize>())
        };
        assert!(held <= MEMO_MAX, "{held}");
        assert!(held > 0);
        assert_eq!(memo.get("user-4100", "US"), Some(None));
    }

    #[test]
    fn any_other_id_is_a_caller_in_its_own_namespace() {
        let key = |raw| caller_key(raw, "US");
        assert_eq!(key("user-42").as_deref(), Some("id:user-42"));
        assert_eq!(key(" user-42 ").as_deref(), Some("id:user-42"));
        assert_eq!(
            key("User-42").as_deref(),
            Some("id:User-42"),
            "kept as given"
        );
        assert_eq!(key("12").as_deref(), Some("id:12"), "not a number: an id");
        assert_eq!(
            key("sip:alice@example.com").as_deref(),
            Some("id:sip:alice@example.com")
        );
        // Numbers stay numbers, in every form.
        for raw in [
            "+1 415 555 0123",
            "tel:+14155550123",
            "sip:+14155550123@pbx.example.com;user=phone",
            "sips:4155550123@pbx.example.com",
        ] {
            assert_eq!(key(raw).as_deref(), Some("+14155550123"), "{raw}");
        }
        // No caller: blank, withheld, or a malformed number.
        for raw in ["", "  ", "anonymous", "Restricted", "+1 555", "tel:12"] {
            assert_eq!(key(raw), None, "{raw}");
        }
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
