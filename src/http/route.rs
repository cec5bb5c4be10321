//! Routing: which route a request target names, and its query. The same for verve's own codec
//! and for the hyper-on-tokio baseline.

use crate::answer::Route;

/// The `Allow` header of a `405`: every route takes these methods only.
pub const ALLOW: &str = "GET, HEAD";

/// The route a target names and its query (without `?`).
pub fn route_of(target: &[u8]) -> (Route, &[u8]) {
    let (path, query) = path_and_query(target);
    (Route::of(path), query)
}

/// The path and the query (without `?`) of a target.
fn path_and_query(target: &[u8]) -> (&[u8], &[u8]) {
    let target = origin_form(target);
    match target.iter().position(|&b| b == b'?') {
        Some(q) => (&target[..q], &target[q + 1..]),
        None => (target, &target[target.len()..]),
    }
}

/// The path and query of a target; an absolute-form target (`http://host/path?q`, which
/// HTTP/1.1 servers must accept) loses its scheme and authority.
fn origin_form(target: &[u8]) -> &[u8] {
    if target.first() == Some(&b'/') {
        return target;
    }
    let Some(scheme_end) = target.windows(3).position(|w| w == b"://") else {
        return target;
    };
    let authority = &target[scheme_end + 3..];
    match authority.iter().position(|&b| b == b'/' || b == b'?') {
        Some(i) => &authority[i..],
        None => b"/",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_form_strips_scheme_and_authority() {
        assert_eq!(
            origin_form(b"http://h:1/api/verve/accept?id=1"),
            b"/api/verve/accept?id=1"
        );
        assert_eq!(origin_form(b"http://h?x"), b"?x");
        assert_eq!(origin_form(b"http://h"), b"/");
        assert_eq!(origin_form(b"/a?b=c://d"), b"/a?b=c://d");
    }

    #[test]
    fn a_target_names_its_route_and_query() {
        assert_eq!(
            route_of(b"/api/verve/accept?id=1"),
            (Route::Accept, &b"id=1"[..])
        );
        assert_eq!(route_of(b"http://h/readyz"), (Route::Readyz, &b""[..]));
        assert_eq!(route_of(b"/api/verve/accept/x"), (Route::Other, &b""[..]));
    }
}
