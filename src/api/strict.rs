//! Strict HTTP: what a request must not be ambiguous about, checked before
//! any route (RFC 9110 and 9112). Two readers of an ambiguous request (a
//! proxy and the daemon, or two checks in the daemon) can disagree on what it
//! says; so it is refused, naming what is wrong:
//!
//! - a header that decides who asks or where from (`Host`, `Authorization`,
//!   `X-Cairn-Actor`, `Origin`, `Sec-Fetch-Site`), or how long the body is
//!   (`Content-Length`, `Transfer-Encoding`), given twice;
//! - `Origin` or `Sec-Fetch-Site` that is not visible ASCII (the browser
//!   guard must never take such a header for an absent one);
//! - a query parameter given twice (`at=1&at=2`);
//! - `Content-Length` together with `Transfer-Encoding`. hyper drops the
//!   `Content-Length` of such a request before any filter sees it, so the
//!   request heads are read again below hyper (`server.rs`), which marks the
//!   request for [`conflicting_framing`].
//!
//! Duplicate JSON keys are refused where bodies are read
//! (`model::parse_json_unique`, the manifest parser, serde's structs).

use warp::http::HeaderMap;

use super::problem::ApiError;

/// Headers that may appear at most once.
const SINGLE_HEADERS: [&str; 7] = [
    "host",
    "authorization",
    "x-cairn-actor",
    "origin",
    "sec-fetch-site",
    "content-length",
    "transfer-encoding",
];

/// The refusal of a request marked by `server.rs` for having both
/// `Content-Length` and `Transfer-Encoding` (RFC 9112 §6.1).
pub fn conflicting_framing() -> ApiError {
    ApiError::bad_request(
        "conflicting_framing",
        "the request has both Content-Length and Transfer-Encoding, \
         so its length is ambiguous (RFC 9112 section 6.1)",
    )
    .closing()
}

/// Checks a request's headers and raw query string (without the `?`).
pub fn check_request(headers: &HeaderMap, raw_query: &str) -> Result<(), ApiError> {
    for name in SINGLE_HEADERS {
        if headers.get_all(name).iter().nth(1).is_some() {
            // The body's length may be misread: the connection is not reused.
            return Err(ApiError::bad_request(
                "duplicate_header",
                format!("the {name} header is given more than once"),
            )
            .closing());
        }
    }
    for name in ["origin", "sec-fetch-site"] {
        if headers
            .get(name)
            .is_some_and(|value| value.to_str().is_err())
        {
            return Err(ApiError::bad_request(
                "bad_header",
                format!("the {name} header is not visible ASCII"),
            ));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (key, _) in form_urlencoded::parse(raw_query.as_bytes()) {
        if !seen.insert(key.clone()) {
            return Err(ApiError::bad_request(
                "bad_query",
                format!("the query parameter {key:?} is given more than once"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use warp::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_bytes(value).unwrap());
        }
        map
    }

    fn code(headers: &HeaderMap, query: &str) -> Option<&'static str> {
        check_request(headers, query).err().map(|error| error.code)
    }

    #[test]
    fn ambiguous_requests_are_refused_and_plain_ones_pass() {
        let plain = headers(&[("host", b"127.0.0.1"), ("content-length", b"3")]);
        assert_eq!(code(&plain, "after=1&limit=2"), None);
        assert_eq!(code(&plain, ""), None);
        for name in SINGLE_HEADERS {
            let twice = headers(&[(name, b"a"), (name, b"a")]);
            assert_eq!(code(&twice, ""), Some("duplicate_header"), "{name}");
        }
        let origin = headers(&[("origin", b"https://ex\xe4mple.org")]);
        assert_eq!(code(&origin, ""), Some("bad_header"));
        let site = headers(&[("sec-fetch-site", b"cross-site\xff")]);
        assert_eq!(code(&site, ""), Some("bad_header"));
        assert_eq!(code(&plain, "at=1&at=2"), Some("bad_query"));
        assert_eq!(code(&plain, "at=1&a%74=2"), Some("bad_query"));
    }
}
