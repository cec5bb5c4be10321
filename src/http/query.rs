//! The accept endpoint's query: `id` (a base-10 i64, exactly once) and an optional `endpoint`
//! (an absolute http/https URL of at most 2048 bytes). Percent-decoding and `+` as space
//! apply to names and values.

use ureq::http::Uri;

/// Longest `endpoint` accepted, in bytes after decoding.
pub const MAX_ENDPOINT: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq)]
/// An accept request's query.
pub struct AcceptQuery {
    /// The id to count.
    pub id: i64,
    /// Where to send the count, when the request names an `endpoint`.
    pub endpoint: Option<Uri>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
/// Why an accept query is refused with `400`.
pub enum QueryError {
    #[error("id is missing")]
    /// No `id`.
    MissingId,
    #[error("id is given more than once")]
    /// More than one `id`.
    DuplicateId,
    #[error("id is not a base-10 signed 64-bit integer")]
    /// An `id` that is not a signed 64-bit decimal integer.
    InvalidId,
    #[error("endpoint is given more than once")]
    /// More than one `endpoint`.
    DuplicateEndpoint,
    #[error("endpoint is longer than {MAX_ENDPOINT} bytes")]
    /// An `endpoint` longer than `MAX_ENDPOINT`.
    EndpointTooLong,
    #[error("endpoint is not an absolute http or https URL")]
    /// An `endpoint` that is not an absolute http or https URL.
    InvalidEndpoint,
}

/// Parses a query string (without the `?`). `scratch` is reused for percent-decoding so that
/// the common case allocates nothing.
pub fn parse_accept_query(query: &[u8], scratch: &mut Vec<u8>) -> Result<AcceptQuery, QueryError> {
    let mut id = None;
    let mut endpoint = None;
    for pair in query.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &pair[pair.len()..]),
        };
        match Name::of(name, scratch) {
            Name::Id => {
                if id.is_some() {
                    return Err(QueryError::DuplicateId);
                }
                id = Some(parse_id(value, scratch));
            }
            Name::Endpoint => {
                if endpoint.is_some() {
                    return Err(QueryError::DuplicateEndpoint);
                }
                endpoint = Some(parse_endpoint(value, scratch));
            }
            Name::Other => {}
        }
    }
    // Duplicates are checked over the whole query before a value's own error is reported.
    let id = id.ok_or(QueryError::MissingId)??;
    let endpoint = endpoint.transpose()?;
    Ok(AcceptQuery { id, endpoint })
}

enum Name {
    Id,
    Endpoint,
    Other,
}

impl Name {
    fn of(raw: &[u8], scratch: &mut Vec<u8>) -> Name {
        let Ok(decoded) = decode(raw, scratch) else {
            return Name::Other;
        };
        match decoded {
            b"id" => Name::Id,
            b"endpoint" => Name::Endpoint,
            _ => Name::Other,
        }
    }
}

fn parse_id(raw: &[u8], scratch: &mut Vec<u8>) -> Result<i64, QueryError> {
    let decoded = decode(raw, scratch).map_err(|_| QueryError::InvalidId)?;
    parse_i64(decoded).ok_or(QueryError::InvalidId)
}

/// Reads base-10 text as `i64::from_str` does (an optional sign, then at least one digit), but
/// from bytes: every request carries an id, and `str::from_utf8` before `parse` cost a fifth of
/// this parser's time (`cargo bench --bench hot_path -- "parse/accept query"`).
fn parse_i64(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        _ => (false, text),
    };
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0i64, |value, &b| {
        let digit = i64::from(b.wrapping_sub(b'0'));
        if digit > 9 {
            return None;
        }
        let shifted = value.checked_mul(10)?;
        // Negative values accumulate downwards so that i64::MIN is reachable.
        if negative {
            shifted.checked_sub(digit)
        } else {
            shifted.checked_add(digit)
        }
    })
}

fn parse_endpoint(raw: &[u8], scratch: &mut Vec<u8>) -> Result<Uri, QueryError> {
    let decoded = decode(raw, scratch).map_err(|_| QueryError::InvalidEndpoint)?;
    if decoded.len() > MAX_ENDPOINT {
        return Err(QueryError::EndpointTooLong);
    }
    let uri = Uri::try_from(decoded).map_err(|_| QueryError::InvalidEndpoint)?;
    let scheme_ok = uri
        .scheme_str()
        .is_some_and(|s| s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https"));
    let host_ok = uri.host().is_some_and(|h| !h.is_empty());
    if scheme_ok && host_ok {
        Ok(uri)
    } else {
        Err(QueryError::InvalidEndpoint)
    }
}

/// A malformed `%` escape.
#[derive(Debug)]
struct BadEscape;

/// Percent-decodes `raw` with `+` as space. Returns `raw` itself when there is nothing to
/// decode, else the decoded bytes in `scratch`.
fn decode<'a>(raw: &'a [u8], scratch: &'a mut Vec<u8>) -> Result<&'a [u8], BadEscape> {
    if !raw.iter().any(|&b| b == b'%' || b == b'+') {
        return Ok(raw);
    }
    scratch.clear();
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => scratch.push(b' '),
            b'%' => {
                let hi = raw.get(i + 1).and_then(|&b| hex(b)).ok_or(BadEscape)?;
                let lo = raw.get(i + 2).and_then(|&b| hex(b)).ok_or(BadEscape)?;
                scratch.push(hi << 4 | lo);
                i += 2;
            }
            b => scratch.push(b),
        }
        i += 1;
    }
    Ok(scratch)
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str) -> Result<AcceptQuery, QueryError> {
        parse_accept_query(q.as_bytes(), &mut Vec::new())
    }

    #[test]
    fn ids() {
        assert_eq!(parse("id=42").unwrap().id, 42);
        assert_eq!(parse("a=b&id=-7&c").unwrap().id, -7);
        assert_eq!(parse("id=%2B5").unwrap().id, 5);
        assert_eq!(parse("i%64=9").unwrap().id, 9);
        assert_eq!(parse("id=9223372036854775807").unwrap().id, i64::MAX);
        assert_eq!(parse("id=9223372036854775808"), Err(QueryError::InvalidId));
        assert_eq!(parse("id=-9223372036854775808").unwrap().id, i64::MIN);
        assert_eq!(parse("id=-9223372036854775809"), Err(QueryError::InvalidId));
        assert_eq!(parse("id=-"), Err(QueryError::InvalidId));
        assert_eq!(parse("id=%2B"), Err(QueryError::InvalidId));
        assert_eq!(parse("id=1%2F"), Err(QueryError::InvalidId));
        assert_eq!(parse("id="), Err(QueryError::InvalidId));
        assert_eq!(parse("id"), Err(QueryError::InvalidId));
        assert_eq!(parse("id=+5"), Err(QueryError::InvalidId));
        assert_eq!(parse("id=0x10"), Err(QueryError::InvalidId));
        assert_eq!(parse("id=%zz"), Err(QueryError::InvalidId));
        assert_eq!(parse(""), Err(QueryError::MissingId));
        assert_eq!(parse("ids=1"), Err(QueryError::MissingId));
        assert_eq!(parse("id=1&id=1"), Err(QueryError::DuplicateId));
        assert_eq!(parse("id=x&id=1"), Err(QueryError::DuplicateId));
    }

    #[test]
    fn endpoints() {
        let q = parse("id=1&endpoint=http%3A%2F%2Fexample.com%2Fhook%3Fa%3D1").unwrap();
        assert_eq!(
            q.endpoint.unwrap().to_string(),
            "http://example.com/hook?a=1"
        );
        assert!(
            parse("id=1&endpoint=https://example.com")
                .unwrap()
                .endpoint
                .is_some()
        );
        assert_eq!(
            parse("id=1&endpoint=ftp://x/"),
            Err(QueryError::InvalidEndpoint)
        );
        assert_eq!(
            parse("id=1&endpoint=/relative"),
            Err(QueryError::InvalidEndpoint)
        );
        assert_eq!(parse("id=1&endpoint="), Err(QueryError::InvalidEndpoint));
        assert_eq!(
            parse("id=1&endpoint=http://a&endpoint=http://b"),
            Err(QueryError::DuplicateEndpoint)
        );
        let long = format!(
            "id=1&endpoint=http://example.com/{}",
            "a".repeat(MAX_ENDPOINT)
        );
        assert_eq!(parse(&long), Err(QueryError::EndpointTooLong));
    }
}
