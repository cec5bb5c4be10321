//! Properties of the request and query parsers on arbitrary input.

use std::fmt::Write as _;

use proptest::prelude::*;
use verve::http::query::{QueryError, parse_accept_query};
use verve::http::request::parse;

fn percent_encode_all(s: &str) -> String {
    s.bytes().fold(String::new(), |mut out, b| {
        let _ = write!(out, "%{b:02X}");
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// Whatever the id's text, verve agrees with Rust's own i64 parsing, whether the text is
    /// sent percent-encoded or (where it is query-safe) as it is.
    #[test]
    fn id_parsing_agrees_with_i64_from_str(s in "\\PC*|[-+]?[0-9]{0,25}") {
        let mut scratch = Vec::new();
        let expected = s.parse::<i64>().ok();
        let encoded = format!("id={}", percent_encode_all(&s));
        let got = parse_accept_query(encoded.as_bytes(), &mut scratch);
        prop_assert_eq!(got.as_ref().ok().map(|q| q.id), expected);
        if expected.is_none() {
            prop_assert_eq!(got.err(), Some(QueryError::InvalidId));
        }
        if s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            let plain = format!("id={s}");
            let got = parse_accept_query(plain.as_bytes(), &mut scratch);
            prop_assert_eq!(got.ok().map(|q| q.id), expected);
        }
    }

}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn query_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_accept_query(&bytes, &mut Vec::new());
    }

    #[test]
    fn request_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..20_000)) {
        let _ = parse(&bytes);
    }

    #[test]
    fn request_parser_never_panics_on_near_valid_heads(
        target in "/[ -~]{0,100}",
        headers in proptest::collection::vec(("[A-Za-z-]{1,20}", "[ -~]{0,40}"), 0..80),
        cut in 0usize..4096,
    ) {
        let mut raw = format!("GET {target} HTTP/1.1\r\nHost: t\r\n");
        for (n, v) in &headers {
            let _ = write!(raw, "{n}: {v}\r\n");
        }
        raw.push_str("\r\n");
        let raw = raw.as_bytes();
        let _ = parse(&raw[..cut.min(raw.len())]);
        let _ = parse(raw);
    }
}
