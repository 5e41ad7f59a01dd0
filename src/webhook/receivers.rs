//! The one place that dispatches on the receiver type: checking a delivery
//! (authentication, then the payload) and planning its actions.

use std::time::Duration;

use super::action::{Delivery, DeliveryPlan, PlannedHookAction, Skipped};
use super::git::{GitError, GitSource};
use super::github::{GithubEvent, GithubSettings, Push};
use super::signature::{self, AuthError};
use super::{
    alertmanager, check_delivery_id, generic, github, HookConfig, PayloadError, ReceiverConfig,
};
use crate::model::WebhookReceived;

/// The longest one git command of a GitHub delivery may take.
const GIT_TIMEOUT: Duration = Duration::from_secs(60);

/// The pause before the first retry of a delivery's git reads, doubled each
/// time up to `GIT_RETRY_MAX`.
const GIT_RETRY: Duration = Duration::from_secs(2);
const GIT_RETRY_MAX: Duration = Duration::from_secs(60);

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

/// What can be checked of a delivery before its body is read: the
/// signature header's presence and form (GitHub, generic), or the whole token
/// (Alertmanager, whose token does not depend on the body).
pub fn check_before_body<'a>(
    config: &HookConfig,
    header: impl Fn(&str) -> Option<&'a str>,
) -> Result<(), Refusal> {
    match &config.receiver {
        ReceiverConfig::Github(_) => {
            signature::github_signature(header("x-hub-signature-256"))?;
        }
        ReceiverConfig::Alertmanager(_) => {
            signature::verify_bearer(&config.secret, header("authorization"))?;
        }
        ReceiverConfig::Generic(_) => {
            signature::generic_signature(header(generic::SIGNATURE_HEADER))?;
        }
    }
    Ok(())
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

/// Reads the manifests with git (fetching first when the receiver names a
/// remote) and plans the push.
///
/// The tree applied is the branch's tip when the pushed commit is behind it
/// (an old push redelivered, two pushes arriving out of order, a captured
/// push replayed under a new delivery id): a push never takes the desired
/// state back to an older commit. Git failures that may clear (a fetch over a
/// network, a timeout) are retried until they do; a commit the clone does
/// not have fails the delivery.
async fn plan_push(
    settings: &GithubSettings,
    push: &Push,
    delivery: &str,
) -> Result<DeliveryPlan, String> {
    // Another branch or a deleted one: decided without git.
    let early = github::plan_push(settings, push, delivery, &[], &[]);
    if early.ignored.is_some() {
        return Ok(early);
    }
    let source = GitSource::from_settings(settings, GIT_TIMEOUT);
    let mut pause = GIT_RETRY;
    loop {
        match read_push(&source, settings, push, delivery).await {
            Ok(plan) => return Ok(plan),
            Err(error) if git_error_may_clear(&error) => {
                tracing::warn!(delivery, %error, retry_in_seconds = pause.as_secs(), "reading the pushed commit failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(GIT_RETRY_MAX);
            }
            Err(error) => return Err(format!("reading commit {} failed: {error}", push.after)),
        }
    }
}

/// Whether a git error may go away by itself (as opposed to a commit that is
/// not there, or settings git refuses).
fn git_error_may_clear(error: &GitError) -> bool {
    matches!(
        error,
        GitError::Timeout { .. }
            | GitError::Failed { .. }
            | GitError::Spawn { .. }
            | GitError::GitMissing { .. }
    )
}

async fn read_push(
    source: &GitSource,
    settings: &GithubSettings,
    push: &Push,
    delivery: &str,
) -> Result<DeliveryPlan, GitError> {
    source.fetch().await?;
    let branch = match &settings.remote {
        Some(remote) => format!("refs/remotes/{remote}/{}", settings.branch),
        None => format!("refs/heads/{}", settings.branch),
    };
    let mut target = push.clone();
    if let Some(tip) = source.resolve(&branch).await? {
        if tip != push.after && source.is_ancestor(&push.after, &tip).await? {
            target.after = tip;
        }
    }
    let after = source.manifests_at(&target.after, &settings.path).await?;
    let mut prune_skipped = None;
    let removed = match source
        .removed_between(&target.before, &target.after, &settings.path)
        .await
    {
        Ok(removed) => removed,
        // A force push over commits the clone never had: apply, no pruning.
        Err(GitError::UnknownCommit { commit, .. }) if commit == target.before => {
            prune_skipped = Some(Skipped {
                subject: "prune".to_string(),
                reason: format!(
                    "the commit before the push ({commit}) is not in the clone, so no \
                     removed file can be found; nothing is deleted"
                ),
            });
            Vec::new()
        }
        Err(error) => return Err(error),
    };
    let mut plan = github::plan_push(settings, &target, delivery, &after, &removed);
    if target.after != push.after {
        for action in &mut plan.actions {
            action
                .details
                .insert("pushed".to_string(), push.after.clone());
        }
    }
    plan.skipped.extend(prune_skipped);
    Ok(plan)
}

fn read_recorded<T: serde::de::DeserializeOwned>(received: &WebhookReceived) -> Result<T, String> {
    serde_json::from_str(&received.request)
        .map_err(|error| format!("the recorded request does not read: {error}"))
}
