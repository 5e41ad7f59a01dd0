//! One-line, human descriptions of changes, for plans and history:
//! `+` creates, `~` changes, `-` destroys.

use super::change::Change;
use super::cloud::Lifecycle;
use super::manifest::{FirewallRule, Pool, Subnet};

/// What a change does to the resource it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOp {
    Create,
    Update,
    Destroy,
}

impl ChangeOp {
    pub fn symbol(self) -> char {
        match self {
            ChangeOp::Create => '+',
            ChangeOp::Update => '~',
            ChangeOp::Destroy => '-',
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeDescription {
    pub op: ChangeOp,
    pub summary: String,
}

fn subnet_text(subnet: &Subnet) -> String {
    match &subnet.zone {
        Some(zone) => format!("subnet {} {} in {zone}", subnet.name, subnet.cidr),
        None => format!("subnet {} {}", subnet.name, subnet.cidr),
    }
}

fn rule_text(rule: &FirewallRule) -> String {
    let ports = rule
        .ports
        .as_deref()
        .map(|p| format!("/{p}"))
        .unwrap_or_default();
    let peer = if rule.direction == "egress" {
        "to"
    } else {
        "from"
    };
    format!(
        "firewall rule {} {} {}{} {peer} {}",
        rule.name, rule.direction, rule.protocol, ports, rule.source
    )
}

fn pool_text(pool: &Pool) -> String {
    format!(
        "pool {} ({} x {} {}, {})",
        pool.name, pool.replicas, pool.machine_type, pool.image, pool.role
    )
}

/// The part of a manifest a change touches, e.g. `pool/workers`: a diff
/// entry and the events that made it share it.
pub fn change_subject(change: &Change) -> String {
    match change {
        Change::ClusterDeclared(_) => "cluster".into(),
        Change::LabelsChanged(_) => "labels".into(),
        Change::KubernetesVersionChanged(_) => "kubernetesVersion".into(),
        Change::DriftPolicyChanged(_) => "driftPolicy".into(),
        Change::SubnetAdded(added) => format!("subnet/{}", added.subnet.name),
        Change::SubnetRemoved(removed) => format!("subnet/{}", removed.subnet.name),
        Change::FirewallRuleAdded(added) => format!("firewall/{}", added.rule.name),
        Change::FirewallRuleRemoved(removed) => format!("firewall/{}", removed.rule.name),
        Change::PoolAdded(added) => format!("pool/{}", added.pool.name),
        Change::PoolRemoved(removed) => format!("pool/{}", removed.pool.name),
        Change::PoolScaled(scaled) => format!("pool/{}", scaled.pool),
        Change::PoolTemplateChanged(changed) => format!("pool/{}", changed.pool),
    }
}

/// Describes a lifecycle command for a plan or a history line.
pub fn describe_lifecycle(lifecycle: &Lifecycle) -> ChangeDescription {
    let (op, summary) = match lifecycle {
        Lifecycle::ClusterPaused(_) => (ChangeOp::Update, "pause: no provider calls".into()),
        Lifecycle::ClusterResumed(_) => (ChangeOp::Update, "resume".into()),
        Lifecycle::ClusterDeletionRequested(_) => {
            (ChangeOp::Destroy, "tear the cluster down".into())
        }
        Lifecycle::ClusterDeletionCancelled(_) => (
            ChangeOp::Create,
            "call the deletion off: the cluster is wanted again".into(),
        ),
        Lifecycle::RollbackRequested(rollback) => (
            ChangeOp::Update,
            format!(
                "roll back to seq {} (asked: {})",
                rollback.to_seq, rollback.requested
            ),
        ),
        Lifecycle::MachineReplacementRequested(replacement) => (
            ChangeOp::Update,
            format!(
                "replace machine {} ({})",
                replacement.machine, replacement.provider_id
            ),
        ),
    };
    ChangeDescription { op, summary }
}

/// Describes a change for a plan or a history line.
pub fn describe_change(change: &Change) -> ChangeDescription {
    let (op, summary) = match change {
        Change::ClusterDeclared(declared) => {
            let spec = &declared.manifest.spec;
            (
                ChangeOp::Create,
                format!(
                    "cluster {} ({} {}, kubernetes {}, {} subnets, {} firewall rules, {} pools)",
                    declared.manifest.metadata.name,
                    spec.provider,
                    spec.region,
                    spec.kubernetes_version,
                    spec.network.subnets.len(),
                    spec.firewall.len(),
                    spec.pools.len()
                ),
            )
        }
        Change::LabelsChanged(labels) => (
            ChangeOp::Update,
            format!("labels {:?} -> {:?}", labels.from, labels.to),
        ),
        Change::KubernetesVersionChanged(version) => (
            ChangeOp::Update,
            format!("kubernetesVersion {} -> {}", version.from, version.to),
        ),
        Change::DriftPolicyChanged(policy) => (
            ChangeOp::Update,
            format!("drift policy {} -> {}", policy.from, policy.to),
        ),
        Change::SubnetAdded(added) => (ChangeOp::Create, subnet_text(&added.subnet)),
        Change::SubnetRemoved(removed) => (ChangeOp::Destroy, subnet_text(&removed.subnet)),
        Change::FirewallRuleAdded(added) => (ChangeOp::Create, rule_text(&added.rule)),
        Change::FirewallRuleRemoved(removed) => (ChangeOp::Destroy, rule_text(&removed.rule)),
        Change::PoolAdded(added) => (ChangeOp::Create, pool_text(&added.pool)),
        Change::PoolRemoved(removed) => (ChangeOp::Destroy, pool_text(&removed.pool)),
        Change::PoolScaled(scaled) => (
            ChangeOp::Update,
            format!(
                "pool {} replicas {} -> {}",
                scaled.pool, scaled.from, scaled.to
            ),
        ),
        Change::PoolTemplateChanged(changed) => {
            let (from, to) = (&changed.from, &changed.to);
            let mut parts = Vec::new();
            if from.role != to.role {
                parts.push(format!("role {} -> {}", from.role, to.role));
            }
            if from.machine_type != to.machine_type {
                parts.push(format!(
                    "machineType {} -> {}",
                    from.machine_type, to.machine_type
                ));
            }
            if from.image != to.image {
                parts.push(format!("image {} -> {}", from.image, to.image));
            }
            if from.subnets != to.subnets {
                parts.push(format!("subnets {:?} -> {:?}", from.subnets, to.subnets));
            }
            (
                ChangeOp::Update,
                format!("pool {} {}", changed.pool, parts.join(", ")),
            )
        }
    };
    ChangeDescription { op, summary }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PoolScaled;

    #[test]
    fn scaling_reads_as_a_change_of_replicas() {
        let description = describe_change(&Change::PoolScaled(PoolScaled {
            pool: "workers".into(),
            from: 3,
            to: 5,
        }));
        assert_eq!(description.op.symbol(), '~');
        assert_eq!(description.summary, "pool workers replicas 3 -> 5");
    }

    #[test]
    fn a_machine_replacement_names_the_machine_and_its_provider_id() {
        let description = describe_lifecycle(&Lifecycle::MachineReplacementRequested(
            crate::model::MachineReplacementRequested {
                machine: "workers-2".into(),
                provider_id: "sim-123".into(),
            },
        ));
        assert_eq!(description.op.symbol(), '~');
        assert_eq!(description.summary, "replace machine workers-2 (sim-123)");
    }
}
