//! The events of the webhook inbox (stream `hook/<name>`): a delivery was
//! received, and what came of it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The stream a receiver's deliveries are recorded on.
pub fn hook_stream(hook: &str) -> String {
    format!("hook/{hook}")
}

/// The payloads of stream `hook/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum WebhookEvent {
    WebhookReceived(WebhookReceived),
    WebhookProcessed(WebhookProcessed),
}

/// An authenticated delivery, recorded before anything acts on it. It holds
/// what the receiver read from the body, so that a delivery received just
/// before a crash is processed after the restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookReceived {
    /// The receiver's name from the config.
    pub hook: String,
    /// The sender's delivery id (GitHub's `X-GitHub-Delivery`, the generic
    /// request's `id`, a digest of the body for Alertmanager).
    pub delivery: String,
    /// SHA-256 of the body, hex.
    pub digest: String,
    /// The receiver type: `github`, `alertmanager` or `generic`.
    pub kind: String,
    /// What the sender says it is: GitHub's `X-GitHub-Event`, Alertmanager's
    /// group status, the generic request's action.
    pub event: String,
    /// What the receiver read from the body, as JSON: only the fields it
    /// acts on (a GitHub push's ref, commits, repository and pusher, not its
    /// commit list), so that a large body still fits one event.
    pub request: String,
}

/// What came of a delivery: written once per delivery, caused by its
/// `WebhookReceived`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookProcessed {
    pub delivery: String,
    pub outcome: DeliveryOutcome,
    /// One line for people: what was done, or why nothing was.
    pub summary: String,
    /// Every action the delivery asked for, in order, with its result.
    pub actions: Vec<ActionReport>,
    /// Parts of the payload that were not acted on, and why.
    pub skipped: Vec<SkippedReport>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryOutcome {
    /// Every action ran (some may have changed nothing).
    Done,
    /// Nothing to do: a ping, a push to another branch, a resolved alert.
    Ignored,
    /// Some actions ran, others failed or parts were skipped.
    Partial,
    /// Nothing could be done (every action failed, or the payload could not
    /// be read, e.g. a commit git does not have).
    Failed,
}

impl DeliveryOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryOutcome::Done => "done",
            DeliveryOutcome::Ignored => "ignored",
            DeliveryOutcome::Partial => "partial",
            DeliveryOutcome::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActionReport {
    /// The action in words, e.g. `apply cluster prod-eu`.
    pub action: String,
    /// The idempotency key it ran under.
    pub key: String,
    pub result: ActionResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", rename_all_fields = "camelCase")]
pub enum ActionResult {
    /// It appended this many events.
    Applied {
        events: u64,
    },
    /// The desired state already was what the action asks for.
    Unchanged,
    /// An earlier delivery (or an earlier attempt of this one, before a
    /// crash) already ran an action with the same key.
    AlreadyDone,
    Failed {
        error: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SkippedReport {
    pub subject: String,
    pub reason: String,
}
