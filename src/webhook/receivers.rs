//! The one place that dispatches on the receiver type: checking a delivery
//! (authentication, then the payload) and planning its actions.

use std::time::Duration;

use super::action::PlannedHookAction;
use super::git::{GitError, GitSource};
use super::github::{GithubEvent, GithubSettings, Push};
use super::inbox::{Delivery, DeliveryPlan};
use super::signature::{self, AuthError};
use super::{
    alertmanager, check_delivery_id, generic, github, HookConfig, PayloadError, ReceiverConfig,
};
use crate::model::WebhookReceived;

/// The longest one git command of a GitHub delivery may take.
const GIT_TIMEOUT: Duration = Duration::from_secs(60);

/// How many times a delivery's git reads are tried before it fails, and the
/// pause before the first retry (doubled each time).
const GIT_ATTEMPTS: u32 = 3;
const GIT_RETRY: Duration = Duration::from_secs(2);

/// Why a delivery was refused before it was recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Answered 401.
    #[error("{0}")]
    Unauthorized(#[from] AuthError),
    /// Answered 400.
    #[error("{0}")]
    Malformed(#[from] PayloadError),
}

impl Refusal {
    /// The reason as a metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Unauthorized(_) => "unauthorized",
            Refusal::Malformed(_) => "malformed",
        }
    }
}

/// Authenticates a delivery and reads its payload. `header` looks a request
/// header up by its lowercase name; `now` is the receiver's clock in unix
/// seconds.
pub fn check<'a>(
    config: &HookConfig,
    header: impl Fn(&str) -> Option<&'a str>,
    body: &[u8],
    now: i64,
) -> Result<Delivery, Refusal> {
    let digest = Delivery::digest_of(body);
    match &config.receiver {
        ReceiverConfig::Github(_) => {
            signature::verify_github(&config.secret, header("x-hub-signature-256"), body)?;
            let event = header("x-github-event")
                .ok_or_else(|| PayloadError::field("X-GitHub-Event", "the header is missing"))?;
            let id = header("x-github-delivery")
                .ok_or_else(|| PayloadError::field("X-GitHub-Delivery", "the header is missing"))?;
            check_delivery_id(id)
                .map_err(|reason| PayloadError::field("X-GitHub-Delivery", reason))?;
            let parsed = github::parse(event, body)?;
            Ok(Delivery {
                id: id.to_string(),
                event: event.to_string(),
                digest,
                request: serde_json::to_string(&parsed).expect("an event serializes"),
            })
        }
        ReceiverConfig::Alertmanager(_) => {
            signature::verify_bearer(&config.secret, header("authorization"))?;
            let notification = alertmanager::parse(body)?;
            let event = match notification.status {
                alertmanager::AlertStatus::Firing => "firing",
                alertmanager::AlertStatus::Resolved => "resolved",
            };
            Ok(Delivery {
                id: alertmanager::delivery_id(body),
                event: event.to_string(),
                digest,
                request: serde_json::to_string(&notification).expect("a notification serializes"),
            })
        }
        ReceiverConfig::Generic(_) => {
            signature::verify_generic(
                &config.secret,
                header(generic::SIGNATURE_HEADER),
                body,
                now,
            )?;
            let request = generic::parse(body)?;
            Ok(Delivery {
                id: request.id.clone(),
                event: request.action.name().to_string(),
                digest,
                request: serde_json::to_string(&request).expect("a request serializes"),
            })
        }
    }
}

/// Reads the recorded request of a delivery and plans its actions. An error
/// is the reason the delivery fails as a whole.
pub async fn plan(config: &HookConfig, received: &WebhookReceived) -> Result<DeliveryPlan, String> {
    match &config.receiver {
        ReceiverConfig::Github(settings) => match read_recorded(received)? {
            GithubEvent::Ping { zen, .. } => Ok(DeliveryPlan {
                ignored: Some(format!("ping: {zen}")),
                ..DeliveryPlan::default()
            }),
            GithubEvent::Other { event } => Ok(DeliveryPlan {
                ignored: Some(format!("GitHub event {event:?} is not acted on")),
                ..DeliveryPlan::default()
            }),
            GithubEvent::Push(push) => plan_push(settings, &push, &received.delivery).await,
        },
        ReceiverConfig::Alertmanager(settings) => {
            let notification: alertmanager::Notification = read_recorded(received)?;
            let (actions, skipped) = alertmanager::plan(settings, &notification);
            let resolved = skipped
                .iter()
                .filter(|skipped| skipped.reason == alertmanager::RESOLVED)
                .count();
            let ignored = actions.is_empty().then(|| {
                format!(
                    "{} alerts ({resolved} resolved), none to act on",
                    notification.alerts.len()
                )
            });
            Ok(DeliveryPlan {
                actions,
                // A resolved alert asks for nothing; it is no skipped work.
                skipped: skipped
                    .into_iter()
                    .filter(|skipped| skipped.reason != alertmanager::RESOLVED)
                    .collect(),
                ignored,
            })
        }
        ReceiverConfig::Generic(_) => {
            let request: generic::GenericRequest = read_recorded(received)?;
            let action: PlannedHookAction =
                generic::plan(&request, &received.delivery).map_err(|error| error.to_string())?;
            Ok(DeliveryPlan {
                actions: vec![action],
                ..DeliveryPlan::default()
            })
        }
    }
}

/// Reads the pushed commit's manifests with git (fetching first when the
/// receiver names a remote) and plans the push. Git failures are retried,
/// then fail the delivery.
async fn plan_push(
    settings: &GithubSettings,
    push: &Push,
    delivery: &str,
) -> Result<DeliveryPlan, String> {
    // Another branch or a deleted one: decided without git.
    let early = github::plan_push(settings, push, delivery, &[], &[]);
    if early.ignored.is_some() {
        return Ok(into_plan(early));
    }
    let source = GitSource::from_settings(settings, GIT_TIMEOUT);
    let mut pause = GIT_RETRY;
    let mut attempt = 1;
    loop {
        match read_push(&source, settings, push).await {
            Ok((after, removed)) => {
                let plan = github::plan_push(settings, push, delivery, &after, &removed);
                return Ok(into_plan(plan));
            }
            Err(error) if attempt < GIT_ATTEMPTS => {
                tracing::warn!(delivery, %error, attempt, "reading the pushed commit failed; retrying");
                tokio::time::sleep(pause).await;
                pause *= 2;
                attempt += 1;
            }
            Err(error) => return Err(format!("reading commit {} failed: {error}", push.after)),
        }
    }
}

async fn read_push(
    source: &GitSource,
    settings: &GithubSettings,
    push: &Push,
) -> Result<(Vec<github::ManifestFile>, Vec<github::ManifestFile>), GitError> {
    source.fetch().await?;
    let after = source.manifests_at(&push.after, &settings.path).await?;
    let removed = source
        .removed_between(&push.before, &push.after, &settings.path)
        .await?;
    Ok((after, removed))
}

fn into_plan(plan: github::PushPlan) -> DeliveryPlan {
    DeliveryPlan {
        actions: plan.actions,
        skipped: plan.skipped,
        ignored: plan.ignored,
    }
}

fn read_recorded<T: serde::de::DeserializeOwned>(received: &WebhookReceived) -> Result<T, String> {
    serde_json::from_str(&received.request)
        .map_err(|error| format!("the recorded request does not read: {error}"))
}
