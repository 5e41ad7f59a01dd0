//! Webhook receivers: GitHub pushes (GitOps), Alertmanager alerts, and
//! signed generic change requests, each turned into audited ledger changes.
//!
//! A delivery goes through three steps:
//!
//! 1. **Check** (`api::hooks`, on the request's task): the receiver exists,
//!    the body is within bounds, the signature or token holds
//!    (`signature.rs`), and the payload reads (`generic.rs`, ...). A delivery
//!    that fails here changes nothing and is counted in `/metrics`.
//! 2. **Record** (`inbox.rs`): a `WebhookReceived` event on stream
//!    `hook/<name>`, under the idempotency key of its delivery id, is fsynced
//!    before the answer (202). A redelivery gets the original outcome.
//! 3. **Act** (`inbox.rs`, one worker per receiver, in log order): the
//!    receiver plans its actions from what was recorded (pure, except the git
//!    reads of GitHub), the actions run through the `Ledger` under their own
//!    idempotency keys and with `Cause::WebhookDelivery`, and a
//!    `WebhookProcessed` records the outcome. A delivery recorded but not
//!    processed before a crash is processed at the next start; actions that
//!    ran before the crash find their keys used and are not run twice.
//!
//! # Layout
//!
//! - `action.rs`: `HookAction`, what receivers ask of the ledger.
//! - `signature.rs`: GitHub's `X-Hub-Signature-256`, the generic
//!   `t=...,v1=...` header with its 5-minute window, bearer tokens; all
//!   compared in constant time.
//! - `action.rs`: `HookAction`, `PlannedHookAction` and `Skipped`, what a
//!   receiver hands to the inbox.
//! - `payload.rs`: `PayloadError` and the JSON reading shared by receivers,
//!   whose errors name the field at fault (`alerts[2].fingerprint`).
//! - `generic.rs` (pure): the generic change request.
//! - `github.rs` (pure): `GithubSettings`, `parse` of `ping` and `push`
//!   deliveries, `plan_push` from the manifest files at the pushed commit.
//! - `git.rs` (IO): `GitSource` runs the git program on the local clone:
//!   fetch, the manifest files at a commit, the files a push removed.
//! - `alertmanager.rs` (pure): `AlertmanagerSettings` and its rules, `parse`
//!   of Alertmanager's webhook payload (version 4), `delivery_id`, and `plan`.
//! - `receivers.rs`: the dispatch on the receiver type (check, plan).
//! - `inbox.rs` (IO): recording, the workers, recovery, running actions.
//!
//! **Architecture Invariant:** nothing here knows HTTP (the route is in
//! `api::hooks`) or the store's backends (everything goes through the `Ledger` and its store).

pub mod action;
pub mod alertmanager;
pub mod generic;
pub mod git;
pub mod github;
pub mod inbox;
pub mod payload;
pub mod receivers;
pub mod signature;

pub use payload::PayloadError;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The longest delivery id accepted.
pub const MAX_DELIVERY_ID_LEN: usize = 128;

/// Delivery ids become parts of idempotency keys and log lines: 1 to 128 of
/// `A-Z a-z 0-9 . _ : -`.
pub fn check_delivery_id(id: &str) -> Result<(), String> {
    let allowed = |byte: u8| byte.is_ascii_alphanumeric() || b"._:-".contains(&byte);
    if id.is_empty() || id.len() > MAX_DELIVERY_ID_LEN || !id.bytes().all(allowed) {
        return Err(format!(
            "{id:?} is not a delivery id (1 to {MAX_DELIVERY_ID_LEN} of A-Z a-z 0-9 . _ : -)"
        ));
    }
    Ok(())
}

/// One receiver, `[hooks.<name>]` in the config file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HookConfig {
    /// The HMAC key (github, generic) or bearer token (alertmanager).
    /// Never logged, never shown by the API.
    #[serde(skip_serializing)]
    pub secret: String,
    pub receiver: ReceiverConfig,
}

/// The type-specific settings of a receiver.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ReceiverConfig {
    Github(github::GithubSettings),
    Alertmanager(alertmanager::AlertmanagerSettings),
    Generic(GenericSettings),
}

impl ReceiverConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            ReceiverConfig::Github(_) => "github",
            ReceiverConfig::Alertmanager(_) => "alertmanager",
            ReceiverConfig::Generic(_) => "generic",
        }
    }

    /// Refuses settings that are well-typed but unusable.
    fn check(&self) -> Result<(), String> {
        match self {
            ReceiverConfig::Github(settings) => settings.validate(),
            ReceiverConfig::Alertmanager(settings) => alertmanager::validate(settings),
            ReceiverConfig::Generic(_) => Ok(()),
        }
    }
}

/// `type = "generic"` has no settings of its own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericSettings {}

impl<'de> Deserialize<'de> for HookConfig {
    /// `type` and `secret` are taken out of the table first; the rest must be
    /// exactly the settings of that type (unknown keys are refused).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = BTreeMap::<String, toml::Value>::deserialize(deserializer)?;
        let kind = match table.remove("type") {
            Some(toml::Value::String(kind)) => kind,
            Some(_) => return Err(D::Error::custom("`type` must be a string")),
            None => {
                return Err(D::Error::custom(
                    "missing `type`: github, alertmanager or generic",
                ))
            }
        };
        let secret = match table.remove("secret") {
            Some(toml::Value::String(secret)) => secret,
            Some(_) => return Err(D::Error::custom("`secret` must be a string")),
            None => {
                return Err(D::Error::custom(
                    "missing `secret`: every receiver needs one (an HMAC key, or \
                     Alertmanager's bearer token)",
                ))
            }
        };
        let rest = toml::Value::Table(table.into_iter().collect());
        let settings_error = |error: toml::de::Error| D::Error::custom(error.message().to_string());
        let receiver = match kind.as_str() {
            "github" => ReceiverConfig::Github(rest.try_into().map_err(settings_error)?),
            "alertmanager" => {
                ReceiverConfig::Alertmanager(rest.try_into().map_err(settings_error)?)
            }
            "generic" => ReceiverConfig::Generic(rest.try_into().map_err(settings_error)?),
            other => {
                return Err(D::Error::custom(format!(
                    "unknown `type` {other:?}: github, alertmanager or generic"
                )))
            }
        };
        Ok(HookConfig { secret, receiver })
    }
}

/// Checks the receivers of a config: names are DNS labels, secrets at least
/// `min_secret_len` bytes long (the config's rule for every secret).
pub fn check_hooks(
    hooks: &BTreeMap<String, HookConfig>,
    min_secret_len: usize,
) -> Result<(), String> {
    for (name, hook) in hooks {
        if !crate::model::is_dns_label(name) {
            return Err(format!("hooks.{name}: a receiver name must be a DNS label"));
        }
        if hook.secret.len() < min_secret_len {
            return Err(format!(
                "hooks.{name}.secret: at least {min_secret_len} characters"
            ));
        }
        hook.receiver
            .check()
            .map_err(|message| format!("hooks.{name}: {message}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn delivery_ids_are_short_and_plain() {
        super::check_delivery_id("72d3162e-cc78-11e3-81ab-4c9367dc0958").unwrap();
        super::check_delivery_id("am-0123abcd").unwrap();
        for bad in ["", "a/b", "a b", &"x".repeat(129)] {
            assert!(super::check_delivery_id(bad).is_err(), "{bad:?}");
        }
    }
}
