//! HTTP/1.1 conformance of verve's codec, case by case, against the real binary: for each
//! case, the raw bytes sent on a fresh connection, the statuses answered in order, whether
//! the connection is then closed or kept open, and which ids were counted and which were not.
//!
//! The cases come from RFC 9112 and RFC 9110 and follow the kinds of the public suites
//! (hyper's h1 tests, llhttp's request fixtures, nginx-tests, HTTP Garden's bug classes):
//! the request line, header fields, message framing and request smuggling, the query, and
//! connection handling. Ids are written `ID1`…`ID9` and replaced by ids unique to the case;
//! a case's counted ids must be counted and its other ids must not, which is checked by
//! sending each again and watching whether the window's distinct count moves.

use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::{Conn, Verve};

/// What the connection does after the expected answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    Close,
    Open,
}
use Then::{Close, Open};

struct Case {
    name: &'static str,
    /// Sent in parts: `<PAUSE>` waits 100 ms between two writes; `<BODYLEN>` is the length
    /// of the body (what follows the first empty line).
    raw: String,
    answers: Vec<u16>,
    head_only: bool,
    then: Then,
    counted: Vec<&'static str>,
    not_counted: Vec<&'static str>,
}

fn case(
    name: &'static str,
    raw: impl Into<String>,
    answers: &[u16],
    then: Then,
    counted: &[&'static str],
    not_counted: &[&'static str],
) -> Case {
    Case {
        name,
        raw: raw.into(),
        answers: answers.to_vec(),
        head_only: false,
        then,
        counted: counted.to_vec(),
        not_counted: not_counted.to_vec(),
    }
}

/// A valid HTTP/1.1 request for `target`.
fn get(target: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n")
}

/// A valid accept request with the query `query`.
fn accept(query: &str) -> String {
    get(&format!("/api/verve/accept?{query}"))
}

/// A request whose head is `lines` (each ended here with CRLF), then an empty line.
fn head(lines: &[&str]) -> String {
    let mut raw = String::new();
    for line in lines {
        raw.push_str(line);
        raw.push_str("\r\n");
    }
    raw.push_str("\r\n");
    raw
}

const A1: &str = "GET /api/verve/accept?id=ID1 HTTP/1.1";

/// The accept request `A1` with `n` header lines of 7,000 bytes each.
fn padded_head(n: usize) -> String {
    let pads: Vec<String> = (0..n)
        .map(|i| format!("X-{i}: {}", "a".repeat(7_000)))
        .collect();
    let mut lines = vec![A1, "Host: t"];
    lines.extend(pads.iter().map(String::as_str));
    head(&lines)
}

fn request_line_cases() -> Vec<Case> {
    vec![
        case("a valid GET", accept("id=ID1"), &[200], Open, &["ID1"], &[]),
        Case {
            head_only: true,
            ..case(
                "HEAD counts like GET",
                head(&["HEAD /api/verve/accept?id=ID1 HTTP/1.1", "Host: t"]),
                &[200],
                Open,
                &["ID1"],
                &[],
            )
        },
        case(
            "HTTP/1.0 without Host, closed after",
            head(&["GET /api/verve/accept?id=ID1 HTTP/1.0"]),
            &[200],
            Close,
            &["ID1"],
            &[],
        ),
        case(
            "HTTP/1.0 asking for keep-alive",
            head(&[
                "GET /api/verve/accept?id=ID1 HTTP/1.0",
                "Connection: keep-alive",
            ]),
            &[200],
            Open,
            &["ID1"],
            &[],
        ),
        case(
            "methods are case-sensitive: get is not GET",
            head(&["get /api/verve/accept?id=ID1 HTTP/1.1", "Host: t"]),
            &[405],
            Open,
            &[],
            &["ID1"],
        ),
        case(
            "POST on the accept path",
            head(&[
                "POST /api/verve/accept?id=ID1 HTTP/1.1",
                "Host: t",
                "Content-Length: 0",
            ]),
            &[405],
            Open,
            &[],
            &["ID1"],
        ),
        case(
            "DELETE on the accept path",
            head(&["DELETE /api/verve/accept?id=ID1 HTTP/1.1", "Host: t"]),
            &[405],
            Open,
            &[],
            &["ID1"],
        ),
        case(
            "an unknown method token",
            head(&["FOO /api/verve/accept?id=ID1 HTTP/1.1", "Host: t"]),
            &[405],
            Open,
            &[],
            &["ID1"],
        ),
        case(
            "a method with a character outside tchar",
            head(&["GE(T /api/verve/accept?id=ID1 HTTP/1.1", "Host: t"]),
            &[400],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "HTTP/1.2",
            head(&["GET /api/verve/accept?id=ID1 HTTP/1.2", "Host: t"]),
            &[400],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "HTTP/2.0 in an HTTP/1 request line",
            head(&["GET /api/verve/accept?id=ID1 HTTP/2.0", "Host: t"]),
            &[400],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "a lower-case protocol name",
            head(&["GET /api/verve/accept?id=ID1 http/1.1", "Host: t"]),
            &[400],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "HTTP/0.9: no version",
            "GET /api/verve/accept?id=ID1\r\n\r\n",
            &[400],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "two spaces after the method",
            head(&["GET  /api/verve/accept?id=ID1 HTTP/1.1", "Host: t"]),
            &[400],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "a tab between method and target",
            head(&["GET\t/api/verve/accept?id=ID1 HTTP/1.1", "Host: t"]),
            &[400],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "a space after the version",
            head(&["GET /api/verve/accept?id=ID1 HTTP/1.1 ", "Host: t"]),
            &[400],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "an empty line before the request line is ignored (RFC 9112 §2.2)",
            format!("\r\n{}", accept("id=ID1")),
            &[200],
            Open,
            &["ID1"],
            &[],
        ),
        case(
            "a bare LF before the request line",
            format!("\n{}", accept("id=ID1")),
            &[400],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "absolute-form target",
            get("http://t/api/verve/accept?id=ID1"),
            &[200],
            Open,
            &["ID1"],
            &[],
        ),
        case(
            "a target that is neither origin- nor absolute-form, with :// inside",
            get("zz?x=http://h/api/verve/accept?id=ID1"),
            &[400],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "asterisk-form: OPTIONS *",
            head(&["OPTIONS * HTTP/1.1", "Host: t"]),
            &[400],
            Close,
            &[],
            &[],
        ),
        case(
            "authority-form: CONNECT",
            head(&["CONNECT t:443 HTTP/1.1", "Host: t:443"]),
            &[400],
            Close,
            &[],
            &[],
        ),
        case(
            "a scheme that does not start with a letter",
            get("1http://t/api/verve/accept?id=ID1"),
            &[400],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "raw UTF-8 in the query",
            accept("id=ID1&x=caf\u{e9}"),
            &[400],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "a C1 control in UTF-8 in the query",
            accept("id=ID1&x=\u{80}"),
            &[400],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "a fragment in the target",
            accept("id=ID1#x"),
            &[400],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "a pipe in the query",
            accept("id=ID1&x=a|b"),
            &[400],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "a double quote in the query",
            accept("id=ID1&x=a\"b"),
            &[400],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "a less-than sign in the query",
            accept("id=ID1&x=a<b"),
            &[400],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "a greater-than sign in the query",
            accept("id=ID1&x=a>b"),
            &[400],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "a caret in the query",
            accept("id=ID1&x=a^b"),
            &[400],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "a backtick in the query",
            accept("id=ID1&x=a`b"),
            &[400],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "an opening brace in the query",
            accept("id=ID1&x=a{b"),
            &[400],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "a closing brace in the query",
            accept("id=ID1&x=a}b"),
            &[400],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "a backslash in the query",
            accept("id=ID1&x=a\\b"),
            &[400],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "a space inside the target",
            head(&["GET /api/verve/accept?id=ID1 ID2 HTTP/1.1", "Host: t"]),
            &[400],
            Close,
            &[],
            &["ID1", "ID2"],
        ),
        case(
            "a NUL inside the target",
            head(&["GET /api/verve/accept?id=ID1\0 HTTP/1.1", "Host: t"]),
            &[400],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "a control character inside the target",
            head(&["GET /api/verve/accept?id=ID1\x01 HTTP/1.1", "Host: t"]),
            &[400],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "a DEL inside the target",
            head(&["GET /api/verve/accept?id=ID1\x7f HTTP/1.1", "Host: t"]),
            &[400],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "a request line over 8 KiB",
            head(&[
                &format!(
                    "GET /api/verve/accept?id=ID1&pad={} HTTP/1.1",
                    "a".repeat(9000)
                ),
                "Host: t",
            ]),
            &[414],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "a request line of about 7.9 KiB and a header line of 300 bytes: the limit is per line",
            head(&[
                &format!(
                    "GET /api/verve/accept?id=ID1&pad={} HTTP/1.1",
                    "a".repeat(7_942 - 49)
                ),
                "Host: t",
                &format!("X-Pad: {}", "b".repeat(293)),
            ]),
            &[200],
            Open,
            &["ID1"],
            &[],
        ),
        case(
            "a header line over 8 KiB",
            head(&[A1, "Host: t", &format!("X-Pad: {}", "b".repeat(8_200))]),
            &[431],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "a head of 28 KiB in header lines under 8 KiB is served",
            padded_head(4),
            &[200],
            Open,
            &["ID1"],
            &[],
        ),
        case(
            "a head over 32 KiB in header lines under 8 KiB",
            padded_head(5),
            &[431],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "a request line of 7 KiB is served",
            accept(&format!("id=ID1&pad={}", "a".repeat(7000))),
            &[200],
            Open,
            &["ID1"],
            &[],
        ),
        case("an unknown path", get("/nope"), &[404], Open, &[], &[]),
        case(
            "the accept path with a trailing slash",
            get("/api/verve/accept/?id=ID1"),
            &[404],
            Open,
            &[],
            &["ID1"],
        ),
        case(
            "paths are case-sensitive",
            get("/API/verve/accept?id=ID1"),
            &[404],
            Open,
            &[],
            &["ID1"],
        ),
        case(
            "the path is not percent-decoded",
            get("/api/verve/%61ccept?id=ID1"),
            &[404],
            Open,
            &[],
            &["ID1"],
        ),
        case("liveness", get("/healthz"), &[200], Open, &[], &[]),
        case(
            "readiness, standalone",
            get("/readyz"),
            &[200],
            Open,
            &[],
            &[],
        ),
        case("metrics", get("/metrics"), &[200], Open, &[], &[]),
    ]
}

fn header_cases() -> Vec<Case> {
    let bad = |name, lines: &[&str]| case(name, head(lines), &[400], Close, &[], &["ID1"]);
    let good = |name, lines: &[&str]| case(name, head(lines), &[200], Open, &["ID1"], &[]);
    vec![
        bad("HTTP/1.1 without Host", &[A1]),
        bad("two Host lines", &[A1, "Host: t", "Host: t"]),
        bad("two different Host lines", &[A1, "Host: a", "Host: b"]),
        bad("a list of hosts", &[A1, "Host: a, b"]),
        bad("a Host with a path", &[A1, "Host: a/b"]),
        bad("a Host with userinfo", &[A1, "Host: user@a"]),
        bad("a Host with a space inside", &[A1, "Host: a b"]),
        bad("a Host with a port that is not digits", &[A1, "Host: a:x"]),
        bad(
            "a Host with a port over five digits",
            &[A1, "Host: a:123456"],
        ),
        bad("a Host with two ports", &[A1, "Host: a:1:2"]),
        bad("an unclosed IPv6 literal", &[A1, "Host: [::1"]),
        bad(
            "an invalid Host in HTTP/1.0",
            &["GET /api/verve/accept?id=ID1 HTTP/1.0", "Host: a,b"],
        ),
        good("an empty Host", &[A1, "Host:"]),
        good("a Host with a port", &[A1, "Host: example.com:8080"]),
        good("an IPv4 Host", &[A1, "Host: 127.0.0.1:80"]),
        good("an IPv6 literal Host", &[A1, "Host: [::1]:8080"]),
        good("Host spelled in another case", &[A1, "hOsT: t"]),
        case(
            "HTTP/1.0 with a valid Host",
            head(&["GET /api/verve/accept?id=ID1 HTTP/1.0", "Host: t"]),
            &[200],
            Close,
            &["ID1"],
            &[],
        ),
        bad("a header line without a colon", &[A1, "Host: t", "NoColon"]),
        bad("a space before the colon", &[A1, "Host: t", "X-Y : z"]),
        bad("a space before the colon of Host", &[A1, "Host : t"]),
        bad("an obsolete line folding", &[A1, "Host: t", "X-Y: a", " b"]),
        bad("a tab-folded line", &[A1, "Host: t", "X-Y: a", "\tb"]),
        bad(
            "a header name with a separator",
            &[A1, "Host: t", "X(Y): z"],
        ),
        bad("an empty header name", &[A1, "Host: t", ": z"]),
        bad("a NUL in a header value", &[A1, "Host: t", "X-Y: a\0b"]),
        bad(
            "a control character in a header value",
            &[A1, "Host: t", "X-Y: a\x01b"],
        ),
        bad(
            "a bare CR inside a header value",
            &[A1, "Host: t", "X-Y: a\rb"],
        ),
        good("a tab inside a header value", &[A1, "Host: t", "X-Y: a\tb"]),
        good(
            "whitespace around a header value",
            &[A1, "Host: t", "X-Y:  \t a \t "],
        ),
        good("an empty header value", &[A1, "Host: t", "X-Y:"]),
        case(
            "a bare LF ending the request line",
            "GET /api/verve/accept?id=ID1 HTTP/1.1\nHost: t\r\n\r\n",
            &[400],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "a bare LF ending a header line",
            "GET /api/verve/accept?id=ID1 HTTP/1.1\r\nHost: t\nX-Y: z\r\n\r\n",
            &[400],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "a bare LF ending the head",
            "GET /api/verve/accept?id=ID1 HTTP/1.1\r\nHost: t\r\n\n",
            &[400],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "only bare LFs",
            "GET /api/verve/accept?id=ID1 HTTP/1.1\nHost: t\n\n",
            &[400],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "a bare CR ending a header line",
            "GET /api/verve/accept?id=ID1 HTTP/1.1\r\nHost: t\rX-Y: z\r\n\r\n",
            &[400],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "64 header fields",
            {
                let pad: Vec<String> = (0..63).map(|i| format!("X-{i}: v")).collect();
                let mut lines = vec![A1, "Host: t"];
                lines.extend(pad.iter().map(String::as_str));
                head(&lines)
            },
            &[200],
            Open,
            &["ID1"],
            &[],
        ),
        case(
            "65 header fields",
            {
                let pad: Vec<String> = (0..64).map(|i| format!("X-{i}: v")).collect();
                let mut lines = vec![A1, "Host: t"];
                lines.extend(pad.iter().map(String::as_str));
                head(&lines)
            },
            &[431],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "a head over 8 KiB",
            head(&[A1, "Host: t", &format!("X-Pad: {}", "a".repeat(9000))]),
            &[431],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "a head just under 8 KiB",
            head(&[A1, "Host: t", &format!("X-Pad: {}", "a".repeat(8000))]),
            &[200],
            Open,
            &["ID1"],
            &[],
        ),
        case(
            "Connection: close",
            head(&[A1, "Host: t", "Connection: close"]),
            &[200],
            Close,
            &["ID1"],
            &[],
        ),
        case(
            "Connection: CLOSE, in capitals",
            head(&[A1, "Host: t", "Connection: CLOSE"]),
            &[200],
            Close,
            &["ID1"],
            &[],
        ),
        case(
            "close among other connection options",
            head(&[A1, "Host: t", "Connection: keep-alive, close"]),
            &[200],
            Close,
            &["ID1"],
            &[],
        ),
        case(
            "an unknown connection option",
            head(&[A1, "Host: t", "Connection: foo"]),
            &[200],
            Open,
            &["ID1"],
            &[],
        ),
    ]
}

fn framing_cases() -> Vec<Case> {
    let cl =
        |name, value: &str, then_body: &str, answers: &[u16], then, counted: &[&'static str]| {
            let not: Vec<&'static str> = ["ID1"]
                .into_iter()
                .filter(|i| !counted.contains(i))
                .collect();
            Case {
                not_counted: not,
                ..case(
                    name,
                    format!(
                        "{}{then_body}",
                        head(&[A1, "Host: t", &format!("Content-Length: {value}")])
                    ),
                    answers,
                    then,
                    counted,
                    &[],
                )
            }
        };
    vec![
        cl(
            "Content-Length: 0 on a GET",
            "0",
            "",
            &[200],
            Open,
            &["ID1"],
        ),
        cl(
            "a body on a GET is skipped",
            "5",
            "hello",
            &[200],
            Open,
            &["ID1"],
        ),
        cl(
            "leading zeros in Content-Length",
            "005",
            "hello",
            &[200],
            Open,
            &["ID1"],
        ),
        cl(
            "whitespace after Content-Length",
            "5  ",
            "hello",
            &[200],
            Open,
            &["ID1"],
        ),
        cl(
            "a plus sign in Content-Length",
            "+5",
            "hello",
            &[400],
            Close,
            &[],
        ),
        cl("a negative Content-Length", "-1", "", &[400], Close, &[]),
        cl(
            "a list in Content-Length",
            "5, 5",
            "hello",
            &[400],
            Close,
            &[],
        ),
        cl(
            "two numbers in Content-Length",
            "5 5",
            "hello",
            &[400],
            Close,
            &[],
        ),
        cl(
            "a hexadecimal Content-Length",
            "0x5",
            "hello",
            &[400],
            Close,
            &[],
        ),
        cl("an empty Content-Length", "", "", &[400], Close, &[]),
        cl(
            "a Content-Length past u64",
            "99999999999999999999999",
            "",
            &[400],
            Close,
            &[],
        ),
        cl("a request over 64 KiB", "70000", "", &[413], Close, &[]),
        case(
            "two equal Content-Lengths are one",
            format!(
                "{}hello",
                head(&[A1, "Host: t", "Content-Length: 5", "Content-Length: 5"])
            ),
            &[200],
            Open,
            &["ID1"],
            &[],
        ),
        case(
            "two different Content-Lengths",
            format!(
                "{}hello",
                head(&[A1, "Host: t", "Content-Length: 5", "Content-Length: 0"])
            ),
            &[400],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "Transfer-Encoding: chunked",
            format!(
                "{}0\r\n\r\n",
                head(&[A1, "Host: t", "Transfer-Encoding: chunked"])
            ),
            &[400],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "Transfer-Encoding: identity",
            head(&[A1, "Host: t", "Transfer-Encoding: identity"]),
            &[400],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "Transfer-Encoding and Content-Length (CL.TE)",
            format!(
                "{}0\r\n\r\n{}",
                head(&[
                    A1,
                    "Host: t",
                    "Content-Length: 5",
                    "Transfer-Encoding: chunked"
                ]),
                accept("id=ID2")
            ),
            &[400],
            Close,
            &[],
            &["ID1", "ID2"],
        ),
        case(
            "an obfuscated Transfer-Encoding value",
            head(&[A1, "Host: t", "Transfer-Encoding: xchunked"]),
            &[400],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "Transfer-Encoding in capitals",
            head(&[A1, "Host: t", "TRANSFER-ENCODING: chunked"]),
            &[400],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "a space before the colon of Transfer-Encoding",
            head(&[A1, "Host: t", "Transfer-Encoding : chunked"]),
            &[400],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "a folded Transfer-Encoding",
            head(&[A1, "Host: t", "Transfer-Encoding:", " chunked"]),
            &[400],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "an underscore makes another header, not Transfer-Encoding",
            head(&[A1, "Host: t", "Transfer_Encoding: chunked"]),
            &[200],
            Open,
            &["ID1"],
            &[],
        ),
        case(
            "a request inside a body is not executed",
            format!(
                "{}{}",
                head(&[A1, "Host: t", "Content-Length: <BODYLEN>"]),
                accept("id=ID2")
            ),
            &[200],
            Open,
            &["ID1"],
            &["ID2"],
        ),
        case(
            "the bare-LF smuggle: a Content-Length behind a bare LF",
            format!(
                "GET /api/verve/accept?id=ID1 HTTP/1.1\r\nHost: t\r\nDummy: x\nContent-Length: <BODYLEN>\r\n\r\n{}",
                accept("id=ID2")
            ),
            &[400],
            Close,
            &[],
            &["ID1", "ID2"],
        ),
        case(
            "the bare-CR smuggle: a Content-Length behind a bare CR",
            format!(
                "GET /api/verve/accept?id=ID1 HTTP/1.1\r\nHost: t\r\nDummy: x\rContent-Length: <BODYLEN>\r\n\r\n{}",
                accept("id=ID2")
            ),
            &[400],
            Close,
            &[],
            &["ID1", "ID2"],
        ),
        case(
            "a valid request, then a smuggling attempt: the first is answered and counted",
            format!(
                "{}GET /api/verve/accept?id=ID2 HTTP/1.1\nHost: t\r\n\r\n{}",
                accept("id=ID1"),
                accept("id=ID3")
            ),
            &[200, 400],
            Close,
            &["ID1"],
            &["ID2", "ID3"],
        ),
        case(
            "a request without Host between two valid ones",
            format!(
                "{}{}{}",
                accept("id=ID1"),
                head(&["GET /api/verve/accept?id=ID2 HTTP/1.1"]),
                accept("id=ID3")
            ),
            &[200, 400],
            Close,
            &["ID1"],
            &["ID2", "ID3"],
        ),
        case(
            "a body split over two writes",
            format!(
                "{}hel<PAUSE>lo{}",
                head(&[A1, "Host: t", "Content-Length: 5"]),
                accept("id=ID2")
            ),
            &[200, 200],
            Open,
            &["ID1", "ID2"],
            &[],
        ),
        case(
            "a GET with Expect: 100-continue and no body",
            head(&[A1, "Host: t", "Expect: 100-continue", "Content-Length: 0"]),
            &[200],
            Open,
            &["ID1"],
            &[],
        ),
        // RFC 9110 §10.1.1: a client waiting for `100 Continue` before its content gets the
        // final answer at once; the content is not read and the connection closes.
        case(
            "Expect: 100-continue, the content held back: answered at once",
            head(&[A1, "Host: t", "Expect: 100-continue", "Content-Length: 5"]),
            &[200],
            Close,
            &["ID1"],
            &[],
        ),
        case(
            "Expect: 100-continue on POST: 405 at once",
            head(&[
                "POST /api/verve/accept?id=ID1 HTTP/1.1",
                "Host: t",
                "Expect: 100-Continue",
                "Content-Length: 5",
            ]),
            &[405],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "Expect: 100-continue on an unknown path: 404 at once",
            head(&[
                "GET /nope HTTP/1.1",
                "Host: t",
                "Expect: 100-continue",
                "Content-Length: 5",
            ]),
            &[404],
            Close,
            &[],
            &[],
        ),
        case(
            "Expect: 100-continue with a bad id: 400 at once",
            head(&[
                "GET /api/verve/accept?id=x HTTP/1.1",
                "Host: t",
                "Expect: 100-continue",
                "Content-Length: 5",
            ]),
            &[400],
            Close,
            &[],
            &[],
        ),
        case(
            "Expect: 100-continue on /healthz: 200 at once",
            head(&[
                "GET /healthz HTTP/1.1",
                "Host: t",
                "Expect: 100-continue",
                "Content-Length: 5",
            ]),
            &[200],
            Close,
            &[],
            &[],
        ),
        case(
            "Expect: 100-continue with the content sent along: served as usual",
            format!(
                "{}hello{}",
                head(&[A1, "Host: t", "Expect: 100-continue", "Content-Length: 5"]),
                accept("id=ID2")
            ),
            &[200, 200],
            Open,
            &["ID1", "ID2"],
            &[],
        ),
    ]
}

fn query_cases() -> Vec<Case> {
    let ok = |name, query: &str, counted: &[&'static str]| {
        case(name, accept(query), &[200], Open, counted, &[])
    };
    let refused = |name, query: &str, not_counted: &[&'static str]| {
        case(name, accept(query), &[400], Open, &[], not_counted)
    };
    vec![
        ok("a percent-encoded minus", "id=%2DID1", &["-ID1"]),
        ok("a percent-encoded plus", "id=%2BID1", &["ID1"]),
        ok("leading zeros name the same id", "id=000ID1", &["ID1"]),
        ok("a percent-encoded parameter name", "i%64=ID1", &["ID1"]),
        ok("other parameters are ignored", "foo=bar&id=ID1&x", &["ID1"]),
        ok("empty parameters are ignored", "&&id=ID1&&", &["ID1"]),
        ok(
            "the smallest i64",
            "id=-9223372036854775808",
            &["-9223372036854775808"],
        ),
        ok(
            "an endpoint, percent-encoded",
            "id=ID1&endpoint=http%3A%2F%2Fexample.com%2Fhook",
            &["ID1"],
        ),
        refused("a literal plus is a space", "id=+ID1", &["ID1"]),
        refused("no id", "x=ID1", &["ID1"]),
        refused("an empty id", "id=&x=ID1", &["ID1"]),
        refused("two ids", "id=ID1&id=ID2", &["ID1", "ID2"]),
        refused("the same id twice", "id=ID1&id=ID1", &["ID1"]),
        refused("a letter after the digits", "id=ID1x", &["ID1"]),
        refused("a space inside the id", "id=ID1%20", &["ID1"]),
        refused("i64::MAX + 1", "id=9223372036854775808", &[]),
        refused("a decimal point", "id=ID1.0", &["ID1"]),
        refused("a bad percent-escape", "id=%zzID1", &["ID1"]),
        refused("a truncated percent-escape", "id=ID1%4", &["ID1"]),
        refused("an encoded letter", "id=%41", &[]),
        refused("a bare minus", "id=-", &[]),
        refused(
            "an endpoint that is not http",
            "id=ID1&endpoint=ftp%3A%2F%2Fx%2F",
            &["ID1"],
        ),
        refused(
            "an endpoint that is not absolute",
            "id=ID1&endpoint=%2Fhook",
            &["ID1"],
        ),
        refused(
            "an endpoint over 2048 bytes",
            &format!(
                "id=ID1&endpoint=http%3A%2F%2Fa.example%2F{}",
                "a".repeat(2100)
            ),
            &["ID1"],
        ),
        refused(
            "two endpoints",
            "id=ID1&endpoint=http%3A%2F%2Fa%2F&endpoint=http%3A%2F%2Fb%2F",
            &["ID1"],
        ),
        case(
            "an empty query",
            get("/api/verve/accept?"),
            &[400],
            Open,
            &[],
            &[],
        ),
        case("no query", get("/api/verve/accept"), &[400], Open, &[], &[]),
    ]
}

fn connection_cases() -> Vec<Case> {
    vec![
        case(
            "three pipelined requests are answered in order",
            format!("{}{}{}", accept("id=ID1"), accept("id=x"), accept("id=ID2")),
            &[200, 400, 200],
            Open,
            &["ID1", "ID2"],
            &[],
        ),
        case(
            "pipelined HTTP/1.0 keep-alive requests",
            head(&[
                "GET /api/verve/accept?id=ID1 HTTP/1.0",
                "Connection: keep-alive",
            ]) + &head(&[
                "GET /api/verve/accept?id=ID2 HTTP/1.0",
                "Connection: keep-alive",
            ]),
            &[200, 200],
            Open,
            &["ID1", "ID2"],
            &[],
        ),
        case(
            "nothing after an HTTP/1.0 answer is read",
            head(&["GET /api/verve/accept?id=ID1 HTTP/1.0"]) + &accept("id=ID2"),
            &[200],
            Close,
            &["ID1"],
            &["ID2"],
        ),
        case(
            "nothing after Connection: close is read",
            head(&[A1, "Host: t", "Connection: close"]) + &accept("id=ID2"),
            &[200],
            Close,
            &["ID1"],
            &["ID2"],
        ),
        case(
            "a head in two writes",
            "GET /api/verve/accept?id=ID1 HT<PAUSE>TP/1.1\r\nHost: t\r\n\r\n",
            &[200],
            Open,
            &["ID1"],
            &[],
        ),
        case(
            "a head cut between CR and LF",
            "GET /api/verve/accept?id=ID1 HTTP/1.1\r\nHost: t\r<PAUSE>\n\r\n",
            &[200],
            Open,
            &["ID1"],
            &[],
        ),
        case("an idle connection is closed", "", &[], Close, &[], &[]),
        case(
            "a head that never ends is closed, not answered",
            "GET /api/verve/accept?id=ID1 HTTP/1.1\r\nHost: t\r\n",
            &[],
            Close,
            &[],
            &["ID1"],
        ),
        case(
            "a 404 keeps the connection",
            format!("{}{}", get("/nope"), accept("id=ID1")),
            &[404, 200],
            Open,
            &["ID1"],
            &[],
        ),
        case(
            "a 405 keeps the connection",
            head(&[
                "PUT /api/verve/accept?id=ID1 HTTP/1.1",
                "Host: t",
                "Content-Length: 0",
            ]) + &accept("id=ID2"),
            &[405, 200],
            Open,
            &["ID2"],
            &["ID1"],
        ),
    ]
}

/// The case's bytes with its ids, and `<BODYLEN>` replaced by the length of what follows the
/// first empty line.
fn raw_of(case_index: usize, text: &str) -> String {
    let raw = ids_of(case_index, text);
    match raw.split_once("\r\n\r\n") {
        Some((_, body)) if raw.contains("<BODYLEN>") => {
            raw.replace("<BODYLEN>", &body.len().to_string())
        }
        _ => raw,
    }
}

/// Replaces `IDn` by this case's id n.
fn ids_of(case_index: usize, text: &str) -> String {
    let base = 10_000_000 * (case_index as i64 + 1);
    let mut out = text.to_owned();
    for n in 1..=9 {
        out = out.replace(&format!("ID{n}"), &(base + n).to_string());
    }
    out
}

fn distinct_ids(v: &Verve) -> u64 {
    crate::common::metric(&crate::common::scrape(v.addr), "verve_window_distinct_ids")
}

/// Waits until the window's distinct count is `want` (and stays there a moment).
fn settles_at(v: &Verve, want: u64) -> Result<(), u64> {
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        let now = distinct_ids(v);
        if now == want {
            thread::sleep(Duration::from_millis(30));
            let again = distinct_ids(v);
            return if again == want { Ok(()) } else { Err(again) };
        }
        if Instant::now() > deadline {
            return Err(now);
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Whether `id` was counted already: sending it again does not move the distinct count.
fn was_counted(v: &Verve, id: &str) -> bool {
    let before = distinct_ids(v);
    let answer = Conn::open(v.addr).get(&format!("/api/verve/accept?id={id}"));
    assert_eq!(answer.status, 200, "probe of {id}");
    settles_at(v, before).is_ok()
}

/// The distinct count once it no longer moves: what an earlier failed case sent has landed.
fn settled_distinct_ids(v: &Verve) -> u64 {
    let mut last = distinct_ids(v);
    loop {
        thread::sleep(Duration::from_millis(30));
        let now = distinct_ids(v);
        if now == last {
            return now;
        }
        last = now;
    }
}

fn run(v: &Verve, index: usize, case: &Case) -> Result<(), String> {
    let before = settled_distinct_ids(v);
    let raw = raw_of(index, &case.raw);
    let mut conn = Conn::open(v.addr);
    conn.stream()
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    for (i, part) in raw.split("<PAUSE>").enumerate() {
        if i > 0 {
            thread::sleep(Duration::from_millis(100));
        }
        conn.send(part.as_bytes());
    }
    let mut answers = Vec::new();
    for _ in &case.answers {
        match conn.read_answer(case.head_only) {
            Ok(a) => answers.push(a.status),
            Err(_) => break,
        }
    }
    if answers != case.answers {
        return Err(format!("answers {answers:?}, expected {:?}", case.answers));
    }
    let as_expected = match case.then {
        // Within 3 s: past the idle and head timeouts (1 s) when the case waits for them.
        Close => conn.is_closed_by_server(),
        Open => conn.is_idle(Duration::from_millis(200)),
    };
    if !as_expected {
        return Err(format!("expected the connection {:?}", case.then));
    }
    drop(conn);
    let want = before + case.counted.len() as u64;
    settles_at(v, want).map_err(|got| format!("{got} distinct ids, expected {want}"))?;
    for id in &case.counted {
        let id = ids_of(index, id);
        if !was_counted(v, &id) {
            return Err(format!("id {id} was not counted"));
        }
    }
    for id in &case.not_counted {
        let id = ids_of(index, id);
        if was_counted(v, &id) {
            return Err(format!("id {id} was counted"));
        }
    }
    Ok(())
}

#[test]
fn every_conformance_case_holds() {
    // One window for the whole run: wait out the last minute of a UTC day.
    let day = 86_400;
    let into_day = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % day;
    if into_day > day - 120 {
        thread::sleep(Duration::from_secs(day - into_day + 1));
    }
    let v = Verve::options()
        .workers(1)
        .window_secs(86400)
        .idle_timeout(Duration::from_secs(1))
        .head_timeout(Duration::from_secs(1))
        .start();
    let cases: Vec<Case> = [
        request_line_cases(),
        header_cases(),
        framing_cases(),
        query_cases(),
        connection_cases(),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert!(cases.len() >= 100, "{} cases", cases.len());
    eprintln!("conformance: {} cases", cases.len());
    let failures: Vec<String> = cases
        .iter()
        .enumerate()
        .filter_map(|(i, case)| {
            run(&v, i, case)
                .err()
                .map(|e| format!("{}: {e}", case.name))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // Nothing sent to the worker made it stop answering.
    assert_eq!(Conn::open(v.addr).get("/healthz").status, 200);
}
