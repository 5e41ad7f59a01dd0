//! Semantic desired-state changes: what `diff` produces and what the log stores.
//!
//! Each variant wraps a struct of its own so that the event layer can encode
//! each payload separately under its type name (see `crate::event::payload`).
//! Removals carry the whole removed value so that the audit reads as a story
//! and a later rollback can restore it without replaying history.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::manifest::{FirewallRule, Manifest, Pool, PoolTemplate, Subnet};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Change {
    ClusterDeclared(ClusterDeclared),
    LabelsChanged(LabelsChanged),
    KubernetesVersionChanged(KubernetesVersionChanged),
    DriftPolicyChanged(DriftPolicyChanged),
    SubnetAdded(SubnetAdded),
    SubnetRemoved(SubnetRemoved),
    FirewallRuleAdded(FirewallRuleAdded),
    FirewallRuleRemoved(FirewallRuleRemoved),
    PoolAdded(PoolAdded),
    PoolRemoved(PoolRemoved),
    PoolScaled(PoolScaled),
    PoolTemplateChanged(PoolTemplateChanged),
}

/// A cluster came into existence with this (validated, normalized) manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ClusterDeclared {
    pub manifest: Manifest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LabelsChanged {
    pub from: BTreeMap<String, String>,
    pub to: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct KubernetesVersionChanged {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DriftPolicyChanged {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SubnetAdded {
    pub subnet: Subnet,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SubnetRemoved {
    pub subnet: Subnet,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FirewallRuleAdded {
    pub rule: FirewallRule,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FirewallRuleRemoved {
    pub rule: FirewallRule,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PoolAdded {
    pub pool: Pool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PoolRemoved {
    pub pool: Pool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PoolScaled {
    pub pool: String,
    pub from: i64,
    pub to: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PoolTemplateChanged {
    pub pool: String,
    pub from: PoolTemplate,
    pub to: PoolTemplate,
}
