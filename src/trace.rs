//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the `traceparent` and
//! `tracestate` of an accept request, carried to its callback as a child span, so that a
//! user's tracing follows a request through verve. Requests without them cost two header
//! name comparisons.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

/// Longest `tracestate` passed on (what the specification asks every vendor to pass).
const MAX_TRACESTATE: usize = 512;

/// The trace headers of a request head, borrowed from the connection's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceHeaders<'a> {
    /// The one `traceparent` value.
    pub traceparent: &'a [u8],
    /// The `tracestate` value, when there is exactly one.
    pub tracestate: Option<&'a [u8]>,
}

/// A request's valid trace context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits.
    trace_id: Box<str>,
    /// 2 lowercase hex digits.
    flags: Box<str>,
    tracestate: Option<Box<str>>,
}

impl TraceContext {
    /// The context of `headers`, or `None` where the specification says to ignore
    /// `traceparent` (malformed, version `ff`, an all-zero trace or parent id). A `tracestate`
    /// that is not printable ASCII or is longer than 512 bytes is dropped.
    pub fn parse(headers: TraceHeaders<'_>) -> Option<TraceContext> {
        let tp = headers.traceparent;
        // version "-" trace-id "-" parent-id "-" flags: 55 bytes; a later version may add
        // fields after another "-".
        let fields = tp.get(..55)?;
        let (version, trace_id, parent_id, flags) = (
            &fields[..2],
            &fields[3..35],
            &fields[36..52],
            &fields[53..55],
        );
        let dashes = fields[2] == b'-' && fields[35] == b'-' && fields[52] == b'-';
        let longer_ok = match version {
            b"00" => tp.len() == 55,
            _ => tp.len() == 55 || tp[55] == b'-',
        };
        let hex = |s: &[u8]| s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let nonzero = |s: &[u8]| s.iter().any(|&b| b != b'0');
        if !dashes
            || !longer_ok
            || version == b"ff"
            || ![version, trace_id, parent_id, flags].into_iter().all(hex)
            || !nonzero(trace_id)
            || !nonzero(parent_id)
        {
            return None;
        }
        let tracestate = headers
            .tracestate
            .filter(|s| s.len() <= MAX_TRACESTATE && s.iter().all(|b| (b' '..=b'~').contains(b)))
            .and_then(|s| std::str::from_utf8(s).ok())
            .map(Box::from);
        Some(TraceContext {
            trace_id: String::from_utf8_lossy(trace_id).into(),
            // Version 00 knows one flag, `sampled`; the others are passed as they came.
            flags: String::from_utf8_lossy(flags).into(),
            tracestate,
        })
    }

    /// The `traceparent` of a child span with id `span_id` (non-zero).
    pub fn child_traceparent(&self, span_id: u64) -> String {
        format!("00-{}-{span_id:016x}-{}", self.trace_id, self.flags)
    }

    /// The `tracestate` passed on, if any.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }
}

/// Random non-zero span ids, one source per sending thread.
#[derive(Debug, Default)]
pub struct SpanIds {
    keys: RandomState,
    next: u64,
}

impl SpanIds {
    /// A new span id: the counter hashed under keys the OS chose at random.
    pub fn next_id(&mut self) -> u64 {
        loop {
            self.next += 1;
            let id = self.keys.hash_one(self.next);
            if id != 0 {
                return id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn parse(traceparent: &[u8], tracestate: Option<&[u8]>) -> Option<TraceContext> {
        TraceContext::parse(TraceHeaders {
            traceparent,
            tracestate,
        })
    }

    #[test]
    fn a_valid_traceparent_gives_a_child_in_the_same_trace_with_the_same_flags() {
        let context = parse(VALID, Some(b"congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")).unwrap();
        assert_eq!(
            context.child_traceparent(0xabc),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000abc-01"
        );
        assert_eq!(
            context.tracestate(),
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        );
    }

    #[test]
    fn what_the_specification_says_to_ignore_is_ignored() {
        let cases: [&[u8]; 9] = [
            b"",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            // Upper case, all-zero ids, version ff.
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // Version 00 with more after it; wrong separators; not hex.
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            b"00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ];
        for case in cases {
            assert_eq!(parse(case, None), None, "{}", String::from_utf8_lossy(case));
        }
    }

    #[test]
    fn a_later_version_is_read_as_version_00() {
        let later = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-more";
        let context = parse(later, None).unwrap();
        assert_eq!(
            context.child_traceparent(1),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000001-00"
        );
    }

    #[test]
    fn a_tracestate_too_long_or_not_printable_is_dropped() {
        let long = vec![b'a'; MAX_TRACESTATE + 1];
        assert_eq!(parse(VALID, Some(&long)).unwrap().tracestate(), None);
        assert_eq!(parse(VALID, Some(b"a=b\x01")).unwrap().tracestate(), None);
        assert_eq!(parse(VALID, None).unwrap().tracestate(), None);
    }

    #[test]
    fn span_ids_differ_and_are_never_zero() {
        let mut ids = SpanIds::default();
        let drawn: std::collections::HashSet<u64> = (0..10_000).map(|_| ids.next_id()).collect();
        assert_eq!(drawn.len(), 10_000);
        assert!(!drawn.contains(&0));
    }
}
