//! The planner: `plan(desired, observed) -> actions`, a pure function.
//!
//! The rules, in the order the actions run:
//!
//! 1. Deletions, in reverse dependency order (machines, firewall rules,
//!    subnets, the network): resources the desired state no longer has,
//!    orphans, and resources whose spec differs from the desired one.
//!    - A machine whose spec changed is replaced one at a time per pool
//!      (delete now, create on a later pass), and only while every other
//!      desired machine of the pool exists, so a pool never loses more than
//!      one machine to a rolling change.
//!    - A subnet whose spec changed is deleted together with the machines in
//!      it (they cannot outlive it), and created again on a later pass.
//!    - A machine asked to be replaced (`MachineReplacementRequested`, whose
//!      provider id is the one observed under that name) is deleted at once,
//!      whatever the rest of its pool looks like: it is broken already, so
//!      the one-per-pool rule of rolling changes does not hold it back. A
//!      pool losing a machine that way is not whole, so no rolling
//!      replacement of the same pool starts in the same pass. A request
//!      naming a provider id that is no longer observed does nothing (the
//!      machine was replaced already, or is gone).
//! 2. Creations, in dependency order (network, subnets, firewall rules,
//!    machines), of desired resources the observed state lacks. Machines wait
//!    for a subnet that is being replaced. A replaced machine is created
//!    again by this rule on a later pass, with its next incarnation's token.
//!
//! With drift policy `report`, a resource with unrepaired drift is left alone:
//! no create for one that vanished, no delete for one that appeared or
//! changed. A resource with an action in flight is left alone too, until the
//! action is resolved; both hold a requested replacement back. A cluster
//! whose deletion was requested has no desired resources.
//!
//! Tokens are `<cluster>/<kind>/<name>/<incarnation>` for a create (retries
//! reuse it; the incarnation grows each time a resource under that key is
//! gone, so a replacement gets a new token), the same with `/delete` for a
//! delete, and `<cluster>/orphan/<provider id>/delete` for an orphan.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{
    Action, MachineSpec, Manifest, NetworkSpec, ResourceKey, ResourceKind, ResourceSpec, SubnetSpec,
};
use crate::projection::ObservedCluster;

/// What the planner looks at.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    pub cluster: &'a str,
    /// None when nothing should exist (deletion requested).
    pub desired: Option<&'a Manifest>,
    pub observed: &'a ObservedCluster,
    /// Machines asked to be replaced: name -> the provider id to replace
    /// (`ClusterState::replacements`).
    pub replacements: &'a BTreeMap<String, String>,
}

/// One action with the token and attempt number its `ActionStarted` records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedAction {
    pub action: Action,
    pub token: String,
    pub attempt: u32,
    /// The clean-up of a resource the log did not create. Orphans go last,
    /// so that a failing clean-up never holds up the cluster's own work.
    pub orphan: bool,
}

impl PlannedAction {
    /// Actions of the same phase may run concurrently; phases run in order:
    /// deletions (machines first), creations (network first), then orphans.
    pub fn phase(&self) -> u8 {
        let rank = match self.action.key().kind {
            ResourceKind::Network => 0,
            ResourceKind::Subnet => 1,
            ResourceKind::FirewallRule => 2,
            ResourceKind::Machine => 3,
        };
        match (&self.action, self.orphan) {
            (Action::Delete { .. }, false) => 3 - rank,
            (Action::Create { .. }, _) => 4 + rank,
            (Action::Delete { .. }, true) => 11 - rank,
        }
    }
}

impl std::fmt::Display for PlannedAction {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.action {
            Action::Create { spec } => write!(formatter, "create {}", spec.key())?,
            Action::Delete { key, provider_id } => write!(formatter, "delete {key} {provider_id}")?,
        }
        write!(formatter, " token={} attempt={}", self.token, self.attempt)?;
        if self.orphan {
            write!(formatter, " (orphan)")?;
        }
        Ok(())
    }
}

/// Every resource a manifest asks for, by key.
pub fn desired_resources(manifest: &Manifest) -> BTreeMap<ResourceKey, ResourceSpec> {
    let spec = &manifest.spec;
    let mut resources = BTreeMap::new();
    let mut add = |resource: ResourceSpec| {
        resources.insert(resource.key(), resource);
    };
    add(ResourceSpec::Network(NetworkSpec {
        cidr: spec.network.cidr.clone(),
        region: spec.region.clone(),
    }));
    for subnet in &spec.network.subnets {
        add(ResourceSpec::Subnet(SubnetSpec {
            name: subnet.name.clone(),
            cidr: subnet.cidr.clone(),
            zone: subnet.zone.clone(),
        }));
    }
    for rule in &spec.firewall {
        add(ResourceSpec::FirewallRule(rule.clone()));
    }
    for pool in &spec.pools {
        for index in 0..pool.replicas.max(0) as usize {
            let Some(subnet) = pool.subnets.get(index % pool.subnets.len().max(1)) else {
                continue;
            };
            add(ResourceSpec::Machine(MachineSpec {
                name: format!("{}-{index}", pool.name),
                pool: pool.name.clone(),
                role: pool.role.clone(),
                machine_type: pool.machine_type.clone(),
                image: pool.image.clone(),
                subnet: subnet.clone(),
                kubernetes_version: spec.kubernetes_version.clone(),
            }));
        }
    }
    resources
}

/// The create token of a resource at its current incarnation.
pub fn create_token(cluster: &str, observed: &ObservedCluster, key: &ResourceKey) -> String {
    format!("{cluster}/{key}/{}", observed.incarnation(key))
}

/// The actions that move `observed` toward `desired`, in execution order.
pub fn plan(input: PlanInput<'_>) -> Vec<PlannedAction> {
    let observed = input.observed;
    let wanted = input.desired.map(desired_resources).unwrap_or_default();
    let report = input
        .desired
        .is_some_and(|manifest| manifest.spec.policy.drift == "report");
    let left_alone = |key: &ResourceKey| report && observed.drift.contains_key(key);
    // An action in flight is resolved by its token before anything else is
    // tried on that key (the reconciler does so at the start of a pass).
    let in_flight: BTreeSet<ResourceKey> = observed
        .in_flight
        .values()
        .map(|in_flight| in_flight.action.key())
        .collect();
    let busy = |key: &ResourceKey| left_alone(key) || in_flight.contains(key);
    // A resource waits while one it depends on is absent and left alone.
    let network_key = ResourceKey::new(ResourceKind::Network, crate::model::NETWORK_NAME);
    let held_back = |key: &ResourceKey| -> bool {
        let absent_and_alone = |dependency: &ResourceKey| {
            !observed.resources.contains_key(dependency) && busy(dependency)
        };
        match wanted.get(key) {
            Some(ResourceSpec::Machine(machine)) => {
                absent_and_alone(&ResourceKey::new(
                    ResourceKind::Subnet,
                    machine.subnet.as_str(),
                )) || absent_and_alone(&network_key)
            }
            Some(ResourceSpec::Subnet(_) | ResourceSpec::FirewallRule(_)) => {
                absent_and_alone(&network_key)
            }
            _ => false,
        }
    };
    let mut actions = Vec::new();
    // Resources to delete, by key, with their provider ids.
    let mut deletions: BTreeMap<&ResourceKey, &str> = BTreeMap::new();

    if !report {
        for (provider_id, orphan) in &observed.orphans {
            let token = format!("{}/orphan/{provider_id}/delete", input.cluster);
            if observed.in_flight.contains_key(&token) {
                continue;
            }
            let action = Action::Delete {
                key: orphan.key(),
                provider_id: provider_id.clone(),
            };
            actions.push(PlannedAction {
                action,
                token,
                attempt: 1,
                orphan: true,
            });
        }
    }

    // Subnets whose spec changed take their machines with them.
    let stale_subnets: BTreeSet<&str> = observed
        .resources
        .iter()
        .filter(|(key, resource)| {
            key.kind == ResourceKind::Subnet
                && !left_alone(key)
                && wanted.get(*key).is_some_and(|spec| *spec != resource.spec)
        })
        .map(|(key, _)| key.name.as_str())
        .collect();
    let mut mismatched_machines = Vec::new();
    // Machines deleted because a replacement of exactly them was requested.
    let mut replaced: BTreeSet<&ResourceKey> = BTreeSet::new();
    for (key, resource) in &observed.resources {
        if busy(key) {
            continue;
        }
        let in_stale_subnet = matches!(&resource.spec, ResourceSpec::Machine(machine)
            if stale_subnets.contains(machine.subnet.as_str()));
        let replacement_requested = key.kind == ResourceKind::Machine
            && input.replacements.get(&key.name) == Some(&resource.provider_id);
        if replacement_requested {
            replaced.insert(key);
        }
        match wanted.get(key) {
            None => {
                deletions.insert(key, &resource.provider_id);
            }
            Some(_) if in_stale_subnet || replacement_requested => {
                deletions.insert(key, &resource.provider_id);
            }
            Some(spec) if *spec != resource.spec => match &resource.spec {
                ResourceSpec::Machine(machine) => {
                    mismatched_machines.push((key, resource, machine))
                }
                _ => {
                    deletions.insert(key, &resource.provider_id);
                }
            },
            Some(_) => {}
        }
    }

    // Rolling replacement: one machine per pool, only while the pool is
    // whole (a machine being replaced on request is as good as missing).
    let mut replacing_pools = BTreeSet::new();
    for (key, resource, machine) in mismatched_machines {
        let pool_whole = wanted.iter().all(|(wanted_key, spec)| match spec {
            ResourceSpec::Machine(wanted_machine) if wanted_machine.pool == machine.pool => {
                observed.resources.contains_key(wanted_key) && !replaced.contains(wanted_key)
            }
            _ => true,
        });
        if pool_whole && replacing_pools.insert(machine.pool.as_str()) {
            deletions.insert(key, &resource.provider_id);
        }
    }
    for (key, provider_id) in deletions {
        let token = format!(
            "{}/{key}/{}/delete",
            input.cluster,
            observed.incarnation(key)
        );
        let action = Action::Delete {
            key: key.clone(),
            provider_id: provider_id.to_string(),
        };
        actions.push(planned(observed, key, action, token));
    }

    for (key, spec) in &wanted {
        if observed.resources.contains_key(key) || busy(key) || held_back(key) {
            continue;
        }
        if let ResourceSpec::Machine(machine) = spec {
            if stale_subnets.contains(machine.subnet.as_str()) {
                continue;
            }
        }
        let token = create_token(input.cluster, observed, key);
        let action = Action::Create { spec: spec.clone() };
        actions.push(planned(observed, key, action, token));
    }

    actions.sort_by_key(|action| (action.phase(), action.action.key()));
    actions
}

fn planned(
    observed: &ObservedCluster,
    key: &ResourceKey,
    action: Action,
    token: String,
) -> PlannedAction {
    let attempt = observed
        .attempts
        .get(key)
        .filter(|attempts| attempts.token == token)
        .map_or(1, |attempts| attempts.count + 1);
    PlannedAction {
        action,
        token,
        attempt,
        orphan: false,
    }
}

#[cfg(test)]
mod golden;
