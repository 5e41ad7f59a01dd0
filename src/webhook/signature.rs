//! Signature and token checks of webhook deliveries. Pure functions, no IO.
//!
//! - GitHub: `X-Hub-Signature-256: sha256=<hex>`, HMAC-SHA256 of the raw body.
//! - Generic: `X-Cairn-Signature: t=<unix seconds>,v1=<hex>`, HMAC-SHA256 of
//!   `<t>.<raw body>`, refused when `t` is more than `MAX_CLOCK_SKEW` away
//!   from now (a captured delivery cannot be replayed later).
//! - Alertmanager: `Authorization: Bearer <token>` (it cannot sign).
//!
//! Every comparison of secret material is constant time: `Mac::verify_slice`
//! for signatures, `subtle::ConstantTimeEq` for tokens.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// How far a generic delivery's timestamp may be from the receiver's clock.
pub const MAX_CLOCK_SKEW_SECONDS: i64 = 5 * 60;

/// Why a delivery was not authenticated. The text never holds the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the {header} header is missing")]
    Missing { header: &'static str },
    #[error("the {header} header is malformed: {problem}")]
    Malformed {
        header: &'static str,
        problem: &'static str,
    },
    #[error("the signature does not match the body")]
    BadSignature,
    #[error("the token does not match")]
    BadToken,
    #[error("the timestamp is {skew_seconds} s away from the receiver's clock (at most {MAX_CLOCK_SKEW_SECONDS} s)")]
    Stale { skew_seconds: i64 },
}

fn mac(secret: &str) -> HmacSha256 {
    <HmacSha256 as Mac>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length")
}

/// HMAC-SHA256 of `parts`, concatenated, as lowercase hex: what a sender puts
/// in its signature header (used by `cairn hooks send` and the tests).
pub fn sign(secret: &str, parts: &[&[u8]]) -> String {
    let mut mac = mac(secret);
    for part in parts {
        mac.update(part);
    }
    hex::encode(mac.finalize().into_bytes())
}

fn verify(
    secret: &str,
    parts: &[&[u8]],
    hex_signature: &str,
    header: &'static str,
) -> Result<(), AuthError> {
    let expected = hex::decode(hex_signature).map_err(|_| AuthError::Malformed {
        header,
        problem: "the signature is not hex",
    })?;
    let mut mac = mac(secret);
    for part in parts {
        mac.update(part);
    }
    mac.verify_slice(&expected)
        .map_err(|_| AuthError::BadSignature)
}

const GITHUB_HEADER: &str = "X-Hub-Signature-256";
const GENERIC_HEADER: &str = "X-Cairn-Signature";

/// The hex signature of GitHub's `X-Hub-Signature-256` header, checked for
/// form (present, `sha256=`, 64 hex digits): what can be known before the
/// body is read.
pub fn github_signature(header: Option<&str>) -> Result<&str, AuthError> {
    let value = header.ok_or(AuthError::Missing {
        header: GITHUB_HEADER,
    })?;
    let hex_signature = value.strip_prefix("sha256=").ok_or(AuthError::Malformed {
        header: GITHUB_HEADER,
        problem: "it must start with sha256=",
    })?;
    check_hex_digest(hex_signature, GITHUB_HEADER)?;
    Ok(hex_signature)
}

/// A SHA-256 digest in lowercase or uppercase hex: 64 digits.
fn check_hex_digest(text: &str, header: &'static str) -> Result<(), AuthError> {
    if text.len() == 64 && text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(AuthError::Malformed {
            header,
            problem: "the signature is not 64 hex digits",
        })
    }
}

/// Checks GitHub's `X-Hub-Signature-256` header.
pub fn verify_github(secret: &str, header: Option<&str>, body: &[u8]) -> Result<(), AuthError> {
    let hex_signature = github_signature(header)?;
    verify(secret, &[body], hex_signature, GITHUB_HEADER)
}

/// The header a generic sender puts on `body` at `timestamp`.
pub fn generic_header(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let signature = sign(secret, &[timestamp.to_string().as_bytes(), b".", body]);
    format!("t={timestamp},v1={signature}")
}

/// A generic delivery's `X-Cairn-Signature` header, read for form: the
/// timestamp as sent, as a number, and the hex signature. What can be known
/// before the body is read.
pub struct GenericSignature<'a> {
    pub timestamp_text: &'a str,
    pub timestamp: i64,
    pub signature: &'a str,
}

/// Reads `X-Cairn-Signature` (`t=<unix seconds>,v1=<hex>`) for form.
pub fn generic_signature(header: Option<&str>) -> Result<GenericSignature<'_>, AuthError> {
    const HEADER: &str = GENERIC_HEADER;
    let value = header.ok_or(AuthError::Missing { header: HEADER })?;
    let mut timestamp = None;
    let mut signature = None;
    for part in value.split(',') {
        match part.trim().split_once('=') {
            Some(("t", text)) => timestamp = Some(text),
            Some(("v1", text)) => signature = Some(text),
            // Other schemes (v0, v2, ...) are skipped, as Stripe-style senders expect.
            Some(_) => {}
            None => {
                return Err(AuthError::Malformed {
                    header: HEADER,
                    problem: "expected t=<seconds>,v1=<hex>",
                })
            }
        }
    }
    let timestamp_text = timestamp.ok_or(AuthError::Malformed {
        header: HEADER,
        problem: "no t=<unix seconds>",
    })?;
    let signature = signature.ok_or(AuthError::Malformed {
        header: HEADER,
        problem: "no v1=<hex signature>",
    })?;
    let timestamp: i64 = timestamp_text.parse().map_err(|_| AuthError::Malformed {
        header: HEADER,
        problem: "t is not a whole number of seconds",
    })?;
    check_hex_digest(signature, HEADER)?;
    Ok(GenericSignature {
        timestamp_text,
        timestamp,
        signature,
    })
}

/// Checks a generic delivery's `X-Cairn-Signature` header at `now` (unix seconds).
pub fn verify_generic(
    secret: &str,
    header: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), AuthError> {
    let GenericSignature {
        timestamp_text,
        timestamp,
        signature,
    } = generic_signature(header)?;
    // The signature first: an unsigned timestamp says nothing.
    verify(
        secret,
        &[timestamp_text.as_bytes(), b".", body],
        signature,
        GENERIC_HEADER,
    )?;
    let skew = now.saturating_sub(timestamp).saturating_abs();
    if skew > MAX_CLOCK_SKEW_SECONDS {
        return Err(AuthError::Stale { skew_seconds: skew });
    }
    Ok(())
}

/// Checks `Authorization: Bearer <token>`.
pub fn verify_bearer(secret: &str, header: Option<&str>) -> Result<(), AuthError> {
    const HEADER: &str = "Authorization";
    let value = header.ok_or(AuthError::Missing { header: HEADER })?;
    let token = value.strip_prefix("Bearer ").ok_or(AuthError::Malformed {
        header: HEADER,
        problem: "expected Bearer <token>",
    })?;
    if bool::from(token.as_bytes().ct_eq(secret.as_bytes())) {
        Ok(())
    } else {
        Err(AuthError::BadToken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "It's a Secret to Everybody";

    #[test]
    fn github_signature_matches_githubs_documented_example() {
        // From GitHub's "Validating webhook deliveries" documentation.
        let header = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(
            verify_github(SECRET, Some(header), b"Hello, World!"),
            Ok(())
        );
        assert_eq!(
            verify_github(SECRET, Some(header), b"Hello, World?"),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            verify_github("another secret", Some(header), b"Hello, World!"),
            Err(AuthError::BadSignature)
        );
        assert!(matches!(
            verify_github(SECRET, None, b""),
            Err(AuthError::Missing { .. })
        ));
        assert!(matches!(
            verify_github(SECRET, Some("sha1=abc"), b""),
            Err(AuthError::Malformed { .. })
        ));
        assert!(matches!(
            verify_github(SECRET, Some("sha256=zz"), b""),
            Err(AuthError::Malformed { .. })
        ));
    }

    #[test]
    fn generic_signatures_bind_the_timestamp_and_expire() {
        let body = br#"{"action":"pause","cluster":"prod"}"#;
        let header = generic_header(SECRET, 1_000_000, body);
        assert_eq!(
            verify_generic(SECRET, Some(&header), body, 1_000_000 + 299),
            Ok(())
        );
        assert_eq!(
            verify_generic(SECRET, Some(&header), body, 1_000_000 - 300),
            Ok(())
        );
        assert_eq!(
            verify_generic(SECRET, Some(&header), body, 1_000_000 + 301),
            Err(AuthError::Stale { skew_seconds: 301 })
        );
        // Moving the timestamp forward breaks the signature.
        let moved = header.replace("t=1000000", "t=1000300");
        assert_eq!(
            verify_generic(SECRET, Some(&moved), body, 1_000_300),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            verify_generic(SECRET, Some(&header), b"{}", 1_000_000),
            Err(AuthError::BadSignature)
        );
        assert!(matches!(
            verify_generic(SECRET, Some("v1=abcd"), body, 0),
            Err(AuthError::Malformed { .. })
        ));
        assert!(matches!(
            verify_generic(SECRET, Some("t=1,v1=abcd,garbage"), body, 0),
            Err(AuthError::Malformed { .. })
        ));
    }

    #[test]
    fn bearer_tokens_must_match_exactly() {
        assert_eq!(
            verify_bearer(SECRET, Some(&format!("Bearer {SECRET}"))),
            Ok(())
        );
        assert_eq!(
            verify_bearer(SECRET, Some(&format!("Bearer {SECRET}x"))),
            Err(AuthError::BadToken)
        );
        assert_eq!(
            verify_bearer(SECRET, Some("Bearer ")),
            Err(AuthError::BadToken)
        );
        assert!(matches!(
            verify_bearer(SECRET, Some(SECRET)),
            Err(AuthError::Malformed { .. })
        ));
    }
}
