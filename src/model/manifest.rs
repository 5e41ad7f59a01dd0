//! The Cluster manifest: the desired state a user declares.
//!
//! These types are stored inside events (see `crate::event`), so they must stay
//! encodable by bincode through serde: no `#[serde(flatten)]`, no untagged enums,
//! no `skip_serializing_if`. Enumerated values (protocol, role, ...) are kept as
//! strings and checked by `validate`, so that one request reports every bad
//! value at once instead of stopping at the first one.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The only `apiVersion` this build understands.
pub const API_VERSION: &str = "cairn/v1";
/// The only `kind` this build understands.
pub const KIND_CLUSTER: &str = "Cluster";

/// A whole Cluster manifest, as written by a user in YAML or JSON.
///
/// After `parse_manifest` it is validated and normalized: subnets, firewall
/// rules and pools are sorted by name, because their order carries no meaning
/// and a stable order makes diffs and folds deterministic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Manifest {
    /// Always `cairn/v1`.
    pub api_version: String,
    /// Always `Cluster`.
    pub kind: String,
    pub metadata: Metadata,
    pub spec: ClusterSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Metadata {
    /// The cluster name, a DNS label. It names the event stream `cluster/<name>`.
    pub name: String,
    /// Free-form labels; a BTreeMap so that encoding and hashing are deterministic.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct ClusterSpec {
    /// `sim` or `exec:<plugin-name>`. Immutable once declared.
    pub provider: String,
    /// Provider region. Immutable once declared.
    pub region: String,
    /// A semantic version such as `1.31.2`.
    pub kubernetes_version: String,
    pub network: Network,
    #[serde(default)]
    pub firewall: Vec<FirewallRule>,
    #[serde(default)]
    pub pools: Vec<Pool>,
    #[serde(default)]
    pub policy: Policy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Network {
    /// The network CIDR, e.g. `10.0.0.0/16`. Immutable once declared.
    pub cidr: String,
    #[serde(default)]
    pub subnets: Vec<Subnet>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Subnet {
    pub name: String,
    /// Must lie inside the network CIDR and overlap no other subnet.
    pub cidr: String,
    #[serde(default)]
    pub zone: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct FirewallRule {
    pub name: String,
    /// `ingress` or `egress`.
    pub direction: String,
    /// `tcp`, `udp`, `icmp` or `all`.
    pub protocol: String,
    /// A port (`443`) or an inclusive range (`8000-8080`); required for tcp and
    /// udp, forbidden for icmp and all.
    #[serde(default)]
    pub ports: Option<String>,
    /// The peer CIDR (the source for ingress, the destination for egress).
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Pool {
    pub name: String,
    /// `control-plane` or `worker`.
    pub role: String,
    /// Desired machine count, 0..=1000. Signed so that a negative value is
    /// reported by validation with the others, not as a parse error.
    pub replicas: i64,
    pub machine_type: String,
    pub image: String,
    /// Names of subnets of this cluster that machines are spread over.
    pub subnets: Vec<String>,
}

/// Everything about a pool except its size: what a machine of the pool looks like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct PoolTemplate {
    pub role: String,
    pub machine_type: String,
    pub image: String,
    pub subnets: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Policy {
    /// `correct` (repair drift) or `report` (only record it).
    #[serde(default = "default_drift")]
    pub drift: String,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            drift: default_drift(),
        }
    }
}

fn default_drift() -> String {
    "correct".to_string()
}

impl Pool {
    pub fn template(&self) -> PoolTemplate {
        PoolTemplate {
            role: self.role.clone(),
            machine_type: self.machine_type.clone(),
            image: self.image.clone(),
            subnets: self.subnets.clone(),
        }
    }
}

impl Manifest {
    /// The event stream that holds this cluster's history.
    pub fn stream(&self) -> String {
        cluster_stream(&self.metadata.name)
    }

    /// Sorts the named lists by name. Validation has already rejected duplicates.
    pub fn normalize(&mut self) {
        self.spec
            .network
            .subnets
            .sort_by(|a, b| a.name.cmp(&b.name));
        self.spec.firewall.sort_by(|a, b| a.name.cmp(&b.name));
        self.spec.pools.sort_by(|a, b| a.name.cmp(&b.name));
    }
}

/// The stream name of a cluster: `cluster/<name>`.
pub fn cluster_stream(name: &str) -> String {
    format!("cluster/{name}")
}
