//! Bearer-token authentication and roles.
//!
//! With tokens configured, every request but the health checks needs
//! `Authorization: Bearer <secret>`; the token's name becomes the actor of the
//! events it writes. Secrets are compared in constant time, against every
//! configured token, so timing tells nothing about which one nearly matched.
//!
//! With no tokens (allowed on loopback only, see `Config::check`), every
//! request acts as the local user; the `X-Cairn-Actor` header may name who
//! (the CLI sends the login name) so that history still says who changed what.
//!
//! Browsers are kept out: Cairn has no browser client, so a request that a web
//! page made (it carries `Origin`, or `Sec-Fetch-Site` other than `none`) is
//! refused, which stops cross-site request forgery against a token-less daemon
//! on loopback. Without tokens, the `Host` must also be a loopback name or
//! address, which stops DNS rebinding.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use warp::http::{HeaderMap, StatusCode};

use super::problem::ApiError;
use crate::config::{is_loopback_host, Role, TokenConfig};
use crate::event::{Actor, ActorKind};

pub struct Auth {
    /// Each token with the SHA-256 of its secret: comparing digests of equal
    /// length keeps even the secret's length out of the timing.
    tokens: Vec<(TokenConfig, [u8; 32])>,
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

impl Auth {
    pub fn new(tokens: Vec<TokenConfig>) -> Auth {
        Auth {
            tokens: tokens
                .into_iter()
                .map(|token| {
                    let digest = digest(&token.secret);
                    (token, digest)
                })
                .collect(),
        }
    }

    /// Checks where a request comes from, then who it is. `host` is the
    /// request's authority (the Host header, or HTTP/2's :authority).
    pub fn check_request(
        &self,
        headers: &HeaderMap,
        host: Option<&str>,
        required: Role,
    ) -> Result<Actor, ApiError> {
        let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
        // By presence and bytes, not by `to_str`: a header that is not ASCII
        // is still a header (`strict.rs` refuses it before this).
        if headers.contains_key("origin")
            || headers
                .get("sec-fetch-site")
                .is_some_and(|site| site.as_bytes() != b"none")
        {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "browser_request",
                "requests made by web pages are refused (Origin or Sec-Fetch-Site header present)",
            ));
        }
        if self.tokens.is_empty() && !host.is_some_and(is_loopback_host) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "bad_host",
                "without tokens, only requests addressed to a loopback host are served",
            ));
        }
        self.check(header("authorization"), header("x-cairn-actor"), required)
    }

    /// Who the request is, if it may do what needs `required`.
    pub fn check(
        &self,
        authorization: Option<&str>,
        claimed_actor: Option<&str>,
        required: Role,
    ) -> Result<Actor, ApiError> {
        if self.tokens.is_empty() {
            let name = claimed_actor
                .filter(|name| valid_actor_name(name))
                .unwrap_or("local");
            return Ok(Actor {
                kind: ActorKind::User,
                name: name.to_string(),
            });
        }
        // The scheme name is case-insensitive (RFC 9110, section 11.1).
        let secret = authorization.and_then(|value| {
            let (scheme, secret) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(secret)
        });
        let Some(secret) = secret else {
            return Err(ApiError::unauthorized(
                "this daemon requires a bearer token (Authorization: Bearer <token>)",
            ));
        };
        let given = digest(secret.trim());
        let mut found: Option<&TokenConfig> = None;
        for (token, expected) in &self.tokens {
            if bool::from(expected.ct_eq(&given)) {
                found = Some(token);
            }
        }
        let Some(token) = found else {
            return Err(ApiError::unauthorized("unknown token"));
        };
        if token.role < required {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "token {:?} has role {:?}, this needs {:?}",
                    token.name, token.role, required
                ),
            ));
        }
        Ok(Actor {
            kind: ActorKind::User,
            name: token.name.clone(),
        })
    }
}

fn valid_actor_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::new(vec![
            TokenConfig {
                name: "reader".into(),
                secret: "r".repeat(20),
                role: Role::Read,
            },
            TokenConfig {
                name: "alice".into(),
                secret: "a".repeat(20),
                role: Role::Write,
            },
        ])
    }

    #[test]
    fn token_name_becomes_the_actor() {
        let bearer = format!("Bearer {}", "a".repeat(20));
        let actor = auth()
            .check(Some(&bearer), Some("mallory"), Role::Write)
            .unwrap();
        assert_eq!(actor.name, "alice");
    }

    #[test]
    fn missing_wrong_and_underprivileged_tokens_are_refused() {
        let auth = auth();
        assert_eq!(auth.check(None, None, Role::Read).unwrap_err().status, 401);
        let wrong = format!("Bearer {}", "b".repeat(20));
        assert_eq!(
            auth.check(Some(&wrong), None, Role::Read)
                .unwrap_err()
                .status,
            401
        );
        let reader = format!("Bearer {}", "r".repeat(20));
        assert_eq!(
            auth.check(Some(&reader), None, Role::Write)
                .unwrap_err()
                .status,
            403
        );
        assert!(auth.check(Some(&reader), None, Role::Read).is_ok());
    }

    /// Checks a request with these headers; its host is the `host` pair.
    fn check(
        auth: &Auth,
        pairs: &[(&'static str, &str)],
        required: Role,
    ) -> Result<Actor, ApiError> {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        let host = pairs
            .iter()
            .find(|(name, _)| *name == "host")
            .map(|(_, value)| *value);
        auth.check_request(&map, host, required)
    }

    #[test]
    fn requests_from_web_pages_are_refused() {
        let auth = Auth::new(Vec::new());
        let local = ("host", "127.0.0.1:7470");
        assert!(check(&auth, &[local], Role::Write).is_ok());
        for extra in [
            ("origin", "https://evil.example"),
            ("sec-fetch-site", "cross-site"),
        ] {
            let error = check(&auth, &[local, extra], Role::Write).unwrap_err();
            assert_eq!(error.code, "browser_request");
        }
        assert!(check(&auth, &[local, ("sec-fetch-site", "none")], Role::Write).is_ok());
    }

    #[test]
    fn without_tokens_only_loopback_hosts_are_served() {
        let without_tokens = Auth::new(Vec::new());
        for host in [
            "localhost:7470",
            "127.0.0.1",
            "[::1]:7470",
            "[::1]",
            "127.1.2.3:80",
            "LOCALHOST",
        ] {
            assert!(
                check(&without_tokens, &[("host", host)], Role::Read).is_ok(),
                "{host}"
            );
        }
        for host in [
            "evil.example:7470",
            "10.0.0.1:7470",
            "localhost.evil.example",
            "[::1]evil",
            "[::1]:7470x",
        ] {
            let error = check(&without_tokens, &[("host", host)], Role::Read).unwrap_err();
            assert_eq!(error.code, "bad_host", "{host}");
        }
        assert!(check(&without_tokens, &[], Role::Read).is_err());
        // With tokens, the host is the operator's business (a proxy, a DNS name).
        let bearer = format!("Bearer {}", "a".repeat(20));
        let remote = [
            ("host", "cairn.internal:7470"),
            ("authorization", bearer.as_str()),
        ];
        assert!(check(&auth(), &remote, Role::Write).is_ok());
    }

    #[test]
    fn without_tokens_the_claimed_local_user_is_the_actor() {
        let auth = Auth::new(Vec::new());
        assert_eq!(
            auth.check(None, Some("bob"), Role::Admin).unwrap().name,
            "bob"
        );
        assert_eq!(
            auth.check(None, Some("bad name!"), Role::Admin)
                .unwrap()
                .name,
            "local"
        );
    }
}
