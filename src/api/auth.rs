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

use subtle::ConstantTimeEq;

use super::problem::ApiError;
use crate::config::{Role, TokenConfig};
use crate::event::{Actor, ActorKind};
use warp::http::StatusCode;

pub struct Auth {
    tokens: Vec<TokenConfig>,
}

impl Auth {
    pub fn new(tokens: Vec<TokenConfig>) -> Auth {
        Auth { tokens }
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
        let mut found: Option<&TokenConfig> = None;
        for token in &self.tokens {
            if bool::from(token.secret.as_bytes().ct_eq(secret.trim().as_bytes())) {
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
