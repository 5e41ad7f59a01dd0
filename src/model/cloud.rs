//! Cloud resources, reconciler actions and the events that record them: the
//! vocabulary shared by the planner, the providers, the observed-state
//! projection and the exec plugin protocol. Pure data.
//!
//! These types are stored inside events with bincode, which records an enum
//! variant by its index: append new variants at the end only, never reorder.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::manifest::FirewallRule;

/// The kinds of cloud resource a cluster is made of, in creation order.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    Network,
    Subnet,
    FirewallRule,
    Machine,
}

impl ResourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Network => "network",
            ResourceKind::Subnet => "subnet",
            ResourceKind::FirewallRule => "firewall_rule",
            ResourceKind::Machine => "machine",
        }
    }
}

/// Names a resource within its cluster: `machine/workers-0`, `network/network`.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub struct ResourceKey {
    pub kind: ResourceKind,
    pub name: String,
}

impl ResourceKey {
    pub fn new(kind: ResourceKind, name: impl Into<String>) -> ResourceKey {
        ResourceKey {
            kind,
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ResourceKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}/{}", self.kind.as_str(), self.name)
    }
}

/// The name the single network of a cluster goes by in its resource key.
pub const NETWORK_NAME: &str = "network";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSpec {
    pub cidr: String,
    pub region: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubnetSpec {
    pub name: String,
    pub cidr: String,
    pub zone: Option<String>,
}

/// One machine of a pool. Machines are named `<pool>-<index>`; index `i` of a
/// pool goes to the pool's subnet `i % subnets.len()`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineSpec {
    pub name: String,
    pub pool: String,
    pub role: String,
    pub machine_type: String,
    pub image: String,
    pub subnet: String,
    pub kubernetes_version: String,
}

/// What Cairn asks a provider to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResourceSpec {
    Network(NetworkSpec),
    Subnet(SubnetSpec),
    FirewallRule(FirewallRule),
    Machine(MachineSpec),
}

impl ResourceSpec {
    pub fn kind(&self) -> ResourceKind {
        match self {
            ResourceSpec::Network(_) => ResourceKind::Network,
            ResourceSpec::Subnet(_) => ResourceKind::Subnet,
            ResourceSpec::FirewallRule(_) => ResourceKind::FirewallRule,
            ResourceSpec::Machine(_) => ResourceKind::Machine,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            ResourceSpec::Network(_) => NETWORK_NAME,
            ResourceSpec::Subnet(subnet) => &subnet.name,
            ResourceSpec::FirewallRule(rule) => &rule.name,
            ResourceSpec::Machine(machine) => &machine.name,
        }
    }

    pub fn key(&self) -> ResourceKey {
        ResourceKey::new(self.kind(), self.name())
    }
}

/// A resource as a provider reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CloudResource {
    /// The provider's own id for it (`sim-m-000042`, `i-0abc...`).
    pub provider_id: String,
    /// The cluster it is tagged with.
    pub cluster: String,
    /// The idempotency token it was created with.
    pub token: String,
    pub spec: ResourceSpec,
    /// A machine's private address; None for other kinds.
    pub address: Option<String>,
}

impl CloudResource {
    pub fn key(&self) -> ResourceKey {
        self.spec.key()
    }
}

/// One step the reconciler takes against a provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", rename_all_fields = "camelCase")]
pub enum Action {
    /// Create a resource (or find the one this action's token already made).
    Create { spec: ResourceSpec },
    /// Delete a resource; deleting one that is already gone succeeds.
    Delete {
        key: ResourceKey,
        provider_id: String,
    },
}

impl Action {
    pub fn key(&self) -> ResourceKey {
        match self {
            Action::Create { spec } => spec.key(),
            Action::Delete { key, .. } => key.clone(),
        }
    }

    /// `create` or `delete`, for metrics and logs.
    pub fn operation(&self) -> &'static str {
        match self {
            Action::Create { .. } => "create",
            Action::Delete { .. } => "delete",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{} {}", self.operation(), self.key())
    }
}

/// The conditions a cluster reports, Kubernetes style.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub enum ConditionType {
    /// Observed state matches desired state.
    Ready,
    /// The reconciler is carrying out actions.
    Progressing,
    /// Actions keep failing, or drift is being reported and not corrected.
    Degraded,
    /// The cluster is paused: no provider calls.
    Paused,
}

impl ConditionType {
    /// The name the API and the CLI show.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionType::Ready => "Ready",
            ConditionType::Progressing => "Progressing",
            ConditionType::Degraded => "Degraded",
            ConditionType::Paused => "Paused",
        }
    }

    pub const ALL: [ConditionType; 4] = [
        ConditionType::Ready,
        ConditionType::Progressing,
        ConditionType::Degraded,
        ConditionType::Paused,
    ];
}

// Lifecycle commands on a cluster's desired state (stream `cluster/<name>`).

/// Stop provider calls for this cluster until it is resumed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ClusterPaused {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ClusterResumed {}

/// Tear the cluster's resources down; `ClusterDeleted` follows when they are gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ClusterDeletionRequested {}

// Reconciler events (stream `reconcile/<name>`).

/// Written, and on disk, before the provider call it announces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActionStarted {
    pub action: Action,
    /// The idempotency token the provider call carries. Retries of the same
    /// action reuse it, so a call that succeeded without an answer is found,
    /// not repeated.
    pub token: String,
    /// 1 for the first try of this token.
    pub attempt: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActionSucceeded {
    pub action: Action,
    pub token: String,
    pub provider_id: String,
    /// The resource as the provider reported it after a create; None after a delete.
    pub observed: Option<CloudResource>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActionFailed {
    pub action: Action,
    pub token: String,
    pub error: String,
    /// Whether trying again may succeed. A non-retryable failure is retried
    /// only after a backoff of at least the resync interval.
    pub retryable: bool,
    /// The token made a resource that no longer exists (its answer was lost,
    /// then it was deleted): the next create of this resource needs a new
    /// token, so its incarnation moves on.
    pub token_spent: bool,
}

/// The provider disagrees with what the log says exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DriftDetected {
    pub resource: ResourceKey,
    /// What the log said was there (None: nothing).
    pub expected: Option<CloudResource>,
    /// What the provider has (None: nothing).
    pub actual: Option<CloudResource>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConditionChanged {
    pub condition: ConditionType,
    pub status: bool,
    /// A CamelCase word: `Converged`, `ActionsFailing`, `DriftReported`, ...
    pub reason: String,
    pub message: String,
}

/// Every resource of a deleted cluster is gone; the cluster's history stays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ClusterDeleted {}

/// The stream that holds a cluster's reconciler events.
pub fn reconcile_stream(cluster: &str) -> String {
    format!("reconcile/{cluster}")
}

/// Lifecycle commands: desired-state events that are not manifest changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Lifecycle {
    ClusterPaused(ClusterPaused),
    ClusterResumed(ClusterResumed),
    ClusterDeletionRequested(ClusterDeletionRequested),
    RollbackRequested(RollbackRequested),
    ClusterDeletionCancelled(ClusterDeletionCancelled),
    MachineReplacementRequested(MachineReplacementRequested),
}

/// A user asked to take the desired state back to what it was at `to_seq`.
/// The changes that do it follow in the same append, each caused by this
/// event; on its own it changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollbackRequested {
    /// The seq the desired state goes back to.
    pub to_seq: u64,
    /// What the caller gave as `to` (a seq, a time or "now"), for the audit.
    pub requested: String,
}

/// A deletion still in progress was called off (by a rollback to a point
/// before it): the cluster is wanted again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ClusterDeletionCancelled {}

/// An operator (or an alert) asked to replace one machine, named and
/// resolved to the provider id it had when the request was made. The
/// reconciler deletes that machine at once, without the one-per-pool rule of
/// a rolling change (it is broken already), and the normal create rule then
/// makes a new one under the same name. A request that names a provider id
/// the machine no longer has does nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineReplacementRequested {
    /// The machine's name, `<pool>-<index>` (`workers-2`).
    pub machine: String,
    /// The provider id of the machine to replace (`sim-m-000042`).
    pub provider_id: String,
}

/// What reconcilers write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ReconcileEvent {
    ActionStarted(ActionStarted),
    ActionSucceeded(ActionSucceeded),
    ActionFailed(ActionFailed),
    DriftDetected(DriftDetected),
    ConditionChanged(ConditionChanged),
    ClusterDeleted(ClusterDeleted),
}
