//! Tests of the signature checks, with the published Retell vectors and vectors for ElevenLabs
//! and Vapi computed independently with Python's `hmac` module.

use super::*;

// Retell SDK test vector (docs/protocols/retell.md §3.3).
const R1_BODY: &[u8] = br#"{"event":"call_ended"}"#;
const R1_KEY: &str = "test-api-key";
const R1_V: i64 = 1_700_000_000_000;
const R1_HEADER: &str =
    "v=1700000000000,d=07024cabe7dd8f6d1c6e4a8324ca92c812e6ad4a7ee506c04f7e462e3321823e";

// Retell vector computed with the SDK's `sign()` (docs/protocols/retell.md §3.3).
const R2_BODY: &[u8] =
    br#"{"event":"call_ended","call":{"call_id":"Jabr9TXYYJHfvl6Syypi88rdAHYHmcq6"}}"#;
const R2_KEY: &str = "key_test_webhook";
const R2_V: i64 = 1_714_608_491_736;
const R2_HEADER: &str =
    "v=1714608491736,d=037f06454b2c0e2e7d7e969c4fdb1ef23403b09f73b4066fb60611a49a90e27d";

// python3 -c 'import hmac,hashlib; print(hmac.new(b"wsec_test_secret",
//   b"1755700400." + EL_BODY, hashlib.sha256).hexdigest())'
const EL_BODY: &[u8] =
    br#"{"type":"post_call_transcription","data":{"conversation_id":"conv_123"}}"#;
const EL_SECRET: &str = "wsec_test_secret";
const EL_T: i64 = 1_755_700_400;
const EL_V0: &str = "v0=bcaf50a4f8d1be9646ba84404643ebd457360d70643fd73f45ba11ca75b74009";

// python3 -c 'import hmac,hashlib; print(hmac.new(b"vapi-hmac-secret",
//   b"<timestamp>." + VAPI_BODY, hashlib.sha256).hexdigest())'
const VAPI_BODY: &[u8] = br#"{"message":{"type":"end-of-call-report"}}"#;
const VAPI_SECRET: &str = "vapi-hmac-secret";
const VAPI_TS_MS: &str = "1755700392500";
const VAPI_SIG_MS: &str = "fda419a86a475b84fffe7392663aecca3a94a76635df715e7f27c45b69f2b306";
const VAPI_TS_S: &str = "1755700392";
const VAPI_SIG_S: &str = "6469115d2391b258a1320ddb18b8379aff6d6cfa2a31b2d7084eaec688a4be92";

fn retell(header: &str, body: &[u8], key: &str, now: i64) -> Result<(), SignatureError> {
    verify_retell(Some(header), body, key, now)
}

#[test]
fn retell_sdk_vector_is_valid_across_the_inclusive_window() {
    for now in [R1_V - 300_000, R1_V, R1_V + 300_000] {
        assert_eq!(
            retell(R1_HEADER, R1_BODY, R1_KEY, now),
            Ok(()),
            "now = {now}"
        );
    }
    for now in [R1_V - 300_001, R1_V + 300_001] {
        assert_eq!(
            retell(R1_HEADER, R1_BODY, R1_KEY, now),
            Err(SignatureError::OutOfTolerance),
            "now = {now}"
        );
    }
}

#[test]
fn retell_sign_vector_is_valid_at_the_boundary_and_not_beyond() {
    assert_eq!(retell(R2_HEADER, R2_BODY, R2_KEY, R2_V + 300_000), Ok(()));
    assert_eq!(
        retell(R2_HEADER, R2_BODY, R2_KEY, R2_V + 300_001),
        Err(SignatureError::OutOfTolerance)
    );
}

#[test]
fn retell_rejects_a_wrong_key_or_a_tampered_body() {
    assert_eq!(
        retell(R2_HEADER, R2_BODY, "key_other", R2_V),
        Err(SignatureError::Mismatch)
    );
    assert_eq!(
        retell(R1_HEADER, br#"{"event":"call_ended" }"#, R1_KEY, R1_V),
        Err(SignatureError::Mismatch)
    );
    // The vectors are not interchangeable.
    assert_eq!(
        retell(R1_HEADER, R2_BODY, R2_KEY, R1_V),
        Err(SignatureError::Mismatch)
    );
}

#[test]
fn retell_signs_the_timestamp_digits_as_received() {
    // A leading zero is still the same instant, but the signed message differs.
    let header = R1_HEADER.replace("v=", "v=0");
    assert_eq!(
        retell(&header, R1_BODY, R1_KEY, R1_V),
        Err(SignatureError::Mismatch)
    );
}

#[test]
fn retell_rejects_uppercase_hex_and_extra_whitespace() {
    let upper = format!("v=1700000000000,d={}", &R1_HEADER[18..].to_uppercase());
    let variants = [
        upper,
        format!(" {R1_HEADER}"),
        format!("{R1_HEADER} "),
        format!("{R1_HEADER}\n"),
        R1_HEADER.replace(",d=", ", d="),
        R1_HEADER.replace("v=", "v= "),
    ];
    for header in variants {
        assert_eq!(
            retell(&header, R1_BODY, R1_KEY, R1_V),
            Err(SignatureError::Malformed),
            "{header:?}"
        );
    }
}

#[test]
fn retell_rejects_other_malformed_headers() {
    let d = &R1_HEADER[18..];
    let variants = [
        format!("d={d},v=1700000000000"),
        format!("v=1700000000000,d={}", &d[..63]),
        format!("v=1700000000000,d={d}0"),
        format!("v=,d={d}"),
        format!("v=-1700000000000,d={d}"),
        format!("v=1.7e12,d={d}"),
        format!("v=1700000000000,d={d},x=1"),
        format!("v=1700000000000;d={d}"),
        format!("v=1700000000000,d={}g", &d[..63]),
        "v=1700000000000".to_owned(),
        d.to_owned(),
    ];
    for header in variants {
        assert_eq!(
            retell(&header, R1_BODY, R1_KEY, R1_V),
            Err(SignatureError::Malformed),
            "{header:?}"
        );
    }
}

#[test]
fn retell_reports_missing_unconfigured_and_overflowing_timestamps() {
    assert_eq!(
        verify_retell(None, R1_BODY, R1_KEY, R1_V),
        Err(SignatureError::Missing)
    );
    assert_eq!(
        retell("", R1_BODY, R1_KEY, R1_V),
        Err(SignatureError::Missing)
    );
    assert_eq!(
        retell(R1_HEADER, R1_BODY, "", R1_V),
        Err(SignatureError::Unconfigured)
    );
    let huge = R1_HEADER.replace("v=", "v=99999999999999999999");
    assert_eq!(
        retell(&huge, R1_BODY, R1_KEY, R1_V),
        Err(SignatureError::OutOfTolerance)
    );
}

fn elevenlabs(header: &str, body: &[u8], now: i64) -> Result<(), SignatureError> {
    verify_elevenlabs(Some(header), body, EL_SECRET, now)
}

fn el_header() -> String {
    format!("t={EL_T},{EL_V0}")
}

#[test]
fn elevenlabs_vector_verifies_in_any_part_order_and_with_extra_parts() {
    let variants = [
        el_header(),
        format!("{EL_V0},t={EL_T}"),
        format!("t={EL_T}, {EL_V0}"),
        format!("t={EL_T},{EL_V0},v1=ignored,foo"),
        format!("t={EL_T},{}", EL_V0.to_uppercase().replace("V0=", "v0=")),
    ];
    for header in variants {
        assert_eq!(elevenlabs(&header, EL_BODY, EL_T), Ok(()), "{header:?}");
    }
}

#[test]
fn elevenlabs_accepts_any_matching_v0_among_several() {
    let stale = "v0=0000000000000000000000000000000000000000000000000000000000000000";
    let header = format!("t={EL_T},{stale},{EL_V0}");
    assert_eq!(elevenlabs(&header, EL_BODY, EL_T), Ok(()));
    let only_stale = format!("t={EL_T},{stale}");
    assert_eq!(
        elevenlabs(&only_stale, EL_BODY, EL_T),
        Err(SignatureError::Mismatch)
    );
}

#[test]
fn elevenlabs_window_is_30_minutes_back_and_5_minutes_ahead() {
    let header = el_header();
    assert_eq!(elevenlabs(&header, EL_BODY, EL_T + 1800), Ok(()));
    assert_eq!(
        elevenlabs(&header, EL_BODY, EL_T + 1801),
        Err(SignatureError::OutOfTolerance)
    );
    assert_eq!(elevenlabs(&header, EL_BODY, EL_T - 300), Ok(()));
    assert_eq!(
        elevenlabs(&header, EL_BODY, EL_T - 301),
        Err(SignatureError::OutOfTolerance)
    );
}

#[test]
fn elevenlabs_rejects_a_wrong_secret_or_a_tampered_body() {
    let header = el_header();
    assert_eq!(
        verify_elevenlabs(Some(&header), EL_BODY, "wsec_other", EL_T),
        Err(SignatureError::Mismatch)
    );
    let tampered = br#"{"type":"post_call_transcription","data":{"conversation_id":"conv_124"}}"#;
    assert_eq!(
        elevenlabs(&header, tampered, EL_T),
        Err(SignatureError::Mismatch)
    );
}

#[test]
fn elevenlabs_rejects_malformed_missing_and_unconfigured() {
    let malformed = [
        EL_V0.to_owned(),
        format!("t={EL_T}"),
        format!("t={EL_T},t={EL_T},{EL_V0}"),
        format!("t=abc,{EL_V0}"),
        format!("t=-5,{EL_V0}"),
        format!("t={EL_T},v0=zz"),
        format!("t={EL_T},{}", &EL_V0[..66]),
    ];
    for header in malformed {
        assert_eq!(
            elevenlabs(&header, EL_BODY, EL_T),
            Err(SignatureError::Malformed),
            "{header:?}"
        );
    }
    assert_eq!(
        verify_elevenlabs(None, EL_BODY, EL_SECRET, EL_T),
        Err(SignatureError::Missing)
    );
    assert_eq!(
        elevenlabs("  ", EL_BODY, EL_T),
        Err(SignatureError::Missing)
    );
    assert_eq!(
        verify_elevenlabs(Some(&el_header()), EL_BODY, "", EL_T),
        Err(SignatureError::Unconfigured)
    );
}

fn vapi_hmac(signature: &str, timestamp: &str) -> VapiAuthHeaders {
    VapiAuthHeaders {
        signature: Some(signature.to_owned()),
        timestamp: Some(timestamp.to_owned()),
        ..VapiAuthHeaders::default()
    }
}

fn vapi_shared(secret: &str) -> VapiAuthHeaders {
    VapiAuthHeaders {
        x_vapi_secret: Some(secret.to_owned()),
        ..VapiAuthHeaders::default()
    }
}

const VAPI_NOW: i64 = 1_755_700_392_500;

#[test]
fn vapi_accepts_the_shared_secret_header() {
    let ok = verify_vapi(&vapi_shared(VAPI_SECRET), VAPI_BODY, VAPI_SECRET, VAPI_NOW);
    assert_eq!(ok, Ok(()));
    for wrong in [
        "vapi-hmac-secreT",
        "vapi-hmac-secre",
        "vapi-hmac-secret2",
        "x",
    ] {
        assert_eq!(
            verify_vapi(&vapi_shared(wrong), VAPI_BODY, VAPI_SECRET, VAPI_NOW),
            Err(SignatureError::Mismatch),
            "{wrong:?}"
        );
    }
}

#[test]
fn vapi_accepts_an_hmac_with_a_millisecond_timestamp_with_or_without_prefix() {
    for signature in [VAPI_SIG_MS.to_owned(), format!("sha256={VAPI_SIG_MS}")] {
        let headers = vapi_hmac(&signature, VAPI_TS_MS);
        for now in [VAPI_NOW - 300_000, VAPI_NOW, VAPI_NOW + 300_000] {
            assert_eq!(verify_vapi(&headers, VAPI_BODY, VAPI_SECRET, now), Ok(()));
        }
        assert_eq!(
            verify_vapi(&headers, VAPI_BODY, VAPI_SECRET, VAPI_NOW + 300_001),
            Err(SignatureError::OutOfTolerance)
        );
    }
}

#[test]
fn vapi_accepts_an_hmac_with_a_second_timestamp() {
    let headers = vapi_hmac(VAPI_SIG_S, VAPI_TS_S);
    let signed_ms = 1_755_700_392_000;
    assert_eq!(
        verify_vapi(&headers, VAPI_BODY, VAPI_SECRET, signed_ms + 300_000),
        Ok(())
    );
    assert_eq!(
        verify_vapi(&headers, VAPI_BODY, VAPI_SECRET, signed_ms - 300_001),
        Err(SignatureError::OutOfTolerance)
    );
    // The unit is part of the signed text: the ms signature does not verify with seconds.
    let swapped = vapi_hmac(VAPI_SIG_MS, VAPI_TS_S);
    assert_eq!(
        verify_vapi(&swapped, VAPI_BODY, VAPI_SECRET, signed_ms),
        Err(SignatureError::Mismatch)
    );
}

#[test]
fn vapi_rejects_a_tampered_body_or_wrong_secret() {
    let headers = vapi_hmac(VAPI_SIG_MS, VAPI_TS_MS);
    assert_eq!(
        verify_vapi(
            &headers,
            br#"{"message":{"type":"status-update"}}"#,
            VAPI_SECRET,
            VAPI_NOW
        ),
        Err(SignatureError::Mismatch)
    );
    assert_eq!(
        verify_vapi(&headers, VAPI_BODY, "other-secret", VAPI_NOW),
        Err(SignatureError::Mismatch)
    );
}

#[test]
fn vapi_valid_hmac_wins_over_a_wrong_shared_secret() {
    let mut headers = vapi_hmac(VAPI_SIG_MS, VAPI_TS_MS);
    headers.x_vapi_secret = Some("stale".to_owned());
    assert_eq!(
        verify_vapi(&headers, VAPI_BODY, VAPI_SECRET, VAPI_NOW),
        Ok(())
    );
}

#[test]
fn vapi_reports_missing_malformed_and_unconfigured() {
    let none = VapiAuthHeaders::default();
    assert_eq!(
        verify_vapi(&none, VAPI_BODY, VAPI_SECRET, VAPI_NOW),
        Err(SignatureError::Missing)
    );
    let no_timestamp = VapiAuthHeaders {
        signature: Some(VAPI_SIG_MS.to_owned()),
        ..VapiAuthHeaders::default()
    };
    assert_eq!(
        verify_vapi(&no_timestamp, VAPI_BODY, VAPI_SECRET, VAPI_NOW),
        Err(SignatureError::Missing)
    );
    for (signature, timestamp) in [
        ("sha512=abc", VAPI_TS_MS),
        (&VAPI_SIG_MS[..60], VAPI_TS_MS),
        (VAPI_SIG_MS, "2025-08-20T17:00:00Z"),
        (VAPI_SIG_MS, "-1755700392500"),
    ] {
        assert_eq!(
            verify_vapi(
                &vapi_hmac(signature, timestamp),
                VAPI_BODY,
                VAPI_SECRET,
                VAPI_NOW
            ),
            Err(SignatureError::Malformed),
            "{signature:?} {timestamp:?}"
        );
    }
    // An empty configured secret never matches, not even an empty header.
    assert_eq!(
        verify_vapi(&vapi_shared(""), VAPI_BODY, "", VAPI_NOW),
        Err(SignatureError::Unconfigured)
    );
    assert_eq!(
        verify_vapi(&vapi_shared(""), VAPI_BODY, VAPI_SECRET, VAPI_NOW),
        Err(SignatureError::Missing)
    );
}

#[test]
fn vapi_headers_debug_hides_the_shared_secret() {
    let shown = format!("{:?}", vapi_shared(VAPI_SECRET));
    assert!(!shown.contains(VAPI_SECRET), "{shown}");
    assert!(shown.contains("***"), "{shown}");
}

#[test]
fn error_messages_are_distinct_and_carry_no_data() {
    let messages: std::collections::BTreeSet<String> = [
        SignatureError::Unconfigured,
        SignatureError::Missing,
        SignatureError::Malformed,
        SignatureError::OutOfTolerance,
        SignatureError::Mismatch,
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    assert_eq!(messages.len(), 5);
    assert!(
        messages
            .iter()
            .all(|m| !m.chars().any(|c| c.is_ascii_digit()))
    );
}
