//! Feeds arbitrary bytes through the request head parser and the accept-query parser, the
//! way a connection does: every complete request in the buffer, one after another.
#![no_main]

use libfuzzer_sys::fuzz_target;
use verve::http::query::parse_accept_query;
use verve::http::request::{Parsed, parse};

fuzz_target!(|data: &[u8]| {
    let mut scratch = Vec::new();
    let mut rest = data;
    while let Parsed::Complete { head, len } = parse(rest) {
        assert!(len > 0 && len <= rest.len());
        if let Some(q) = head.target.iter().position(|&b| b == b'?') {
            let _ = parse_accept_query(&head.target[q + 1..], &mut scratch);
        }
        rest = &rest[len..];
    }
});
