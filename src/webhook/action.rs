//! What passes between the receivers and the inbox: a checked `Delivery`
//! that the inbox records, and what the delivery asks of the ledger.
//! Receivers turn a payload into a list of `PlannedHookAction`s (pure
//! functions, no IO), and the inbox carries them out in order, each with its
//! own idempotency key.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::model::Manifest;

/// A delivery that passed its receiver's checks, ready to record.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    /// What the sender says it is (see `WebhookReceived::event`).
    pub event: String,
    /// SHA-256 of the body as received.
    pub digest: [u8; 32],
    /// What the receiver read from the body, as JSON.
    pub request: String,
}

impl Delivery {
    pub fn digest_of(body: &[u8]) -> [u8; 32] {
        Sha256::digest(body).into()
    }
}

/// One command a webhook delivery asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum HookAction {
    /// Declare or update a cluster (GitHub: one manifest file; generic: `apply`).
    Apply {
        manifest: Box<Manifest>,
    },
    /// Set a pool's replica count.
    Scale {
        cluster: String,
        pool: String,
        replicas: i64,
    },
    /// Grow a pool by `by` replicas, never past `max` (Alertmanager rules).
    /// At or above `max` already, it does nothing.
    ScaleBy {
        cluster: String,
        pool: String,
        by: i64,
        max: i64,
    },
    Pause {
        cluster: String,
    },
    Resume {
        cluster: String,
    },
    /// Take the desired state back to a point (a seq, an RFC 3339 time or `now`).
    Rollback {
        cluster: String,
        to: String,
    },
    /// Mark a cluster for deletion (GitHub with `prune`: its file was removed).
    RequestDeletion {
        cluster: String,
    },
    /// Delete one machine and let the reconciler create it again. `machine`
    /// is a machine name (`workers-2`), its provider id, or its address.
    ReplaceMachine {
        cluster: String,
        machine: String,
    },
}

/// An action with what makes it safe to run twice and what explains it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedHookAction {
    pub action: HookAction,
    /// Appended to `hook/<name>/` to make the action's idempotency key. The
    /// inbox runs an action whose key was used before as "already done", so
    /// two deliveries that must not act twice share a key (Alertmanager:
    /// `alert/<rule>/<fingerprint>/<startsAt>`); otherwise it starts with the
    /// delivery id (GitHub: `<delivery>/apply/<cluster>`; generic: `<delivery>/0`).
    pub key: String,
    /// Facts that explain the action, recorded in the cause of every event it
    /// writes (GitHub: `commit`, `pusher`, `repository`, `file`).
    pub details: BTreeMap<String, String>,
}

/// A part of a payload that could not be acted on, while the rest was (a
/// GitHub push with one invalid manifest file among good ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// What was skipped: a file path, an alert fingerprint.
    pub subject: String,
    pub reason: String,
}

/// What a receiver asks for one delivery: its actions in order, the parts
/// it could not act on, or why it asks for nothing at all.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeliveryPlan {
    pub actions: Vec<PlannedHookAction>,
    pub skipped: Vec<Skipped>,
    /// Why the delivery as a whole asks for nothing (a ping, another branch).
    pub ignored: Option<String>,
}
