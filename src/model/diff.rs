//! From two manifests to the semantic changes between them, and back.
//!
//! [`diff`] says what changed between the desired state in the log and a newly
//! applied manifest, as [`Change`]s that read as a story in the audit log.
//! [`apply_change`] is the pure fold that projections replay from the log.
//! The two are each other's inverse: folding `diff(Some(&a), &b)` onto `a`
//! gives back `b` exactly, which the property tests below check.
//!
//! Both work on validated, normalized manifests (see
//! [`Manifest::normalize`]): subnets, firewall rules and pools sorted by name.

use std::collections::BTreeMap;

use super::change::{
    Change, ClusterDeclared, DriftPolicyChanged, FirewallRuleAdded, FirewallRuleRemoved,
    KubernetesVersionChanged, LabelsChanged, PoolAdded, PoolRemoved, PoolScaled,
    PoolTemplateChanged, SubnetAdded, SubnetRemoved,
};
use super::manifest::{FirewallRule, Manifest, Pool, Subnet};
use super::validate::FieldError;

/// Computes the changes that turn `old` into `new`.
///
/// With no `old` the cluster is new and the single change is
/// `ClusterDeclared`. Otherwise identical manifests give no change at all (so
/// applying the same manifest twice appends nothing), and the cluster name,
/// provider, region and network CIDR must not change: each such change is an
/// error at its path, and all of them are reported together.
///
/// The changes come in this order, by name within each kind:
///
/// 1. `SubnetAdded` for each new subnet. A subnet that changed (same name,
///    other CIDR or zone) yields `SubnetRemoved` with the old value followed
///    immediately by `SubnetAdded` with the new one, at its place in the
///    name order. Subnets come first so that pools may use them.
/// 2. `FirewallRuleRemoved` for each removed rule and the old value of each
///    changed rule, then `FirewallRuleAdded` for each added rule and the new
///    value of each changed rule.
/// 3. `PoolAdded`, then `PoolTemplateChanged` (role, machine type, image or
///    subnets changed), then `PoolScaled` (replicas changed), then
///    `PoolRemoved`. A pool whose template and size both changed yields both.
/// 4. `SubnetRemoved` for each removed subnet, last, once no pool uses it.
/// 5. `LabelsChanged`, `KubernetesVersionChanged`, `DriftPolicyChanged`.
///
/// The states in between two changes need not be valid manifests (a changed
/// subnet is briefly missing); only the state after the last change is.
pub fn diff(old: Option<&Manifest>, new: &Manifest) -> Result<Vec<Change>, Vec<FieldError>> {
    let Some(old) = old else {
        return Ok(vec![Change::ClusterDeclared(ClusterDeclared {
            manifest: new.clone(),
        })]);
    };

    let immutable = [
        ("metadata.name", &old.metadata.name, &new.metadata.name),
        ("spec.provider", &old.spec.provider, &new.spec.provider),
        ("spec.region", &old.spec.region, &new.spec.region),
        (
            "spec.network.cidr",
            &old.spec.network.cidr,
            &new.spec.network.cidr,
        ),
    ];
    let errors: Vec<FieldError> = immutable
        .into_iter()
        .filter(|(_, was, is)| was != is)
        .map(|(path, was, _)| {
            FieldError::new(
                path,
                format!("immutable: was {was}, delete and re-declare the cluster to change it"),
            )
        })
        .collect();
    if !errors.is_empty() {
        return Err(errors);
    }

    let mut changes = Vec::new();

    let old_subnets = by_name(&old.spec.network.subnets, |subnet| &subnet.name);
    let new_subnets = by_name(&new.spec.network.subnets, |subnet| &subnet.name);
    for (name, subnet) in &new_subnets {
        match old_subnets.get(name) {
            None => {}
            Some(&was) if was == *subnet => continue,
            Some(&was) => changes.push(Change::SubnetRemoved(SubnetRemoved {
                subnet: was.clone(),
            })),
        }
        changes.push(Change::SubnetAdded(SubnetAdded {
            subnet: (*subnet).clone(),
        }));
    }

    let old_rules = by_name(&old.spec.firewall, |rule| &rule.name);
    let new_rules = by_name(&new.spec.firewall, |rule| &rule.name);
    for (name, rule) in &old_rules {
        if new_rules.get(name) != Some(rule) {
            changes.push(Change::FirewallRuleRemoved(FirewallRuleRemoved {
                rule: (*rule).clone(),
            }));
        }
    }
    for (name, rule) in &new_rules {
        if old_rules.get(name) != Some(rule) {
            changes.push(Change::FirewallRuleAdded(FirewallRuleAdded {
                rule: (*rule).clone(),
            }));
        }
    }

    let old_pools = by_name(&old.spec.pools, |pool| &pool.name);
    let new_pools = by_name(&new.spec.pools, |pool| &pool.name);
    for (name, pool) in &new_pools {
        if !old_pools.contains_key(name) {
            changes.push(Change::PoolAdded(PoolAdded {
                pool: (*pool).clone(),
            }));
        }
    }
    for (name, pool) in &new_pools {
        if let Some(was) = old_pools.get(name) {
            let (from, to) = (was.template(), pool.template());
            if from != to {
                changes.push(Change::PoolTemplateChanged(PoolTemplateChanged {
                    pool: name.to_string(),
                    from,
                    to,
                }));
            }
        }
    }
    for (name, pool) in &new_pools {
        if let Some(was) = old_pools.get(name) {
            if was.replicas != pool.replicas {
                changes.push(Change::PoolScaled(PoolScaled {
                    pool: name.to_string(),
                    from: was.replicas,
                    to: pool.replicas,
                }));
            }
        }
    }
    for (name, pool) in &old_pools {
        if !new_pools.contains_key(name) {
            changes.push(Change::PoolRemoved(PoolRemoved {
                pool: (*pool).clone(),
            }));
        }
    }

    for (name, subnet) in &old_subnets {
        if !new_subnets.contains_key(name) {
            changes.push(Change::SubnetRemoved(SubnetRemoved {
                subnet: (*subnet).clone(),
            }));
        }
    }

    if old.metadata.labels != new.metadata.labels {
        changes.push(Change::LabelsChanged(LabelsChanged {
            from: old.metadata.labels.clone(),
            to: new.metadata.labels.clone(),
        }));
    }
    if old.spec.kubernetes_version != new.spec.kubernetes_version {
        changes.push(Change::KubernetesVersionChanged(KubernetesVersionChanged {
            from: old.spec.kubernetes_version.clone(),
            to: new.spec.kubernetes_version.clone(),
        }));
    }
    if old.spec.policy.drift != new.spec.policy.drift {
        changes.push(Change::DriftPolicyChanged(DriftPolicyChanged {
            from: old.spec.policy.drift.clone(),
            to: new.spec.policy.drift.clone(),
        }));
    }

    Ok(changes)
}

/// Folds one change onto the desired state of a cluster.
///
/// `ClusterDeclared` replaces the state whatever it was. Every other change
/// edits the item it names, and inserts keep subnets, firewall rules and pools
/// sorted by name, so folding the changes of [`diff`] yields a normalized
/// manifest.
///
/// A change that does not fit the state leaves the state unchanged: anything
/// but `ClusterDeclared` on no cluster, an add of a name that already exists,
/// a removal, scale or template change of a name that does not exist. This is
/// deliberate. The fold is replayed from the log, where every event is already
/// committed and can never be refused, so it must be total and deterministic
/// rather than fail or guess. Removals and template changes match by name
/// only and do not compare the recorded old value with the state.
pub fn apply_change(state: Option<Manifest>, change: &Change) -> Option<Manifest> {
    match (state, change) {
        (Some(mut manifest), _) => {
            apply_change_in_place(&mut manifest, change.clone());
            Some(manifest)
        }
        (None, Change::ClusterDeclared(declared)) => Some(declared.manifest.clone()),
        (None, _) => None,
    }
}

/// Applies one change to an existing manifest in place, taking the change's
/// data instead of copying it, and says whether the manifest changed (the
/// same as comparing `apply_change`'s answer with the manifest before). The
/// fold of the log calls this once per change, so it must not clone a
/// manifest to find out.
pub fn apply_change_in_place(manifest: &mut Manifest, change: Change) -> bool {
    fn replace<T: PartialEq>(slot: &mut T, value: T) -> bool {
        let changed = *slot != value;
        if changed {
            *slot = value;
        }
        changed
    }
    let spec = &mut manifest.spec;
    match change {
        Change::ClusterDeclared(declared) => replace(manifest, declared.manifest),
        Change::LabelsChanged(change) => replace(&mut manifest.metadata.labels, change.to),
        Change::KubernetesVersionChanged(change) => {
            replace(&mut spec.kubernetes_version, change.to)
        }
        Change::DriftPolicyChanged(change) => replace(&mut spec.policy.drift, change.to),
        Change::SubnetAdded(change) => {
            insert_sorted(&mut spec.network.subnets, change.subnet, subnet_name)
        }
        Change::SubnetRemoved(change) => {
            remove_named(&mut spec.network.subnets, &change.subnet.name, subnet_name)
        }
        Change::FirewallRuleAdded(change) => {
            insert_sorted(&mut spec.firewall, change.rule, rule_name)
        }
        Change::FirewallRuleRemoved(change) => {
            remove_named(&mut spec.firewall, &change.rule.name, rule_name)
        }
        Change::PoolAdded(change) => insert_sorted(&mut spec.pools, change.pool, pool_name),
        Change::PoolRemoved(change) => remove_named(&mut spec.pools, &change.pool.name, pool_name),
        Change::PoolScaled(change) => spec
            .pools
            .iter_mut()
            .find(|pool| pool.name == change.pool)
            .is_some_and(|pool| replace(&mut pool.replicas, change.to)),
        Change::PoolTemplateChanged(change) => {
            match spec.pools.iter_mut().find(|pool| pool.name == change.pool) {
                Some(pool) => {
                    let to = change.to;
                    // Every field is assigned; `|` rather than `||` so that
                    // none is skipped once one has changed.
                    replace(&mut pool.role, to.role)
                        | replace(&mut pool.machine_type, to.machine_type)
                        | replace(&mut pool.image, to.image)
                        | replace(&mut pool.subnets, to.subnets)
                }
                None => false,
            }
        }
    }
}

fn subnet_name(subnet: &Subnet) -> &str {
    &subnet.name
}

fn rule_name(rule: &FirewallRule) -> &str {
    &rule.name
}

fn pool_name(pool: &Pool) -> &str {
    &pool.name
}

/// Indexes a list by name. Validation guarantees names are unique.
fn by_name<T>(items: &[T], name: impl Fn(&T) -> &String) -> BTreeMap<&str, &T> {
    items
        .iter()
        .map(|item| (name(item).as_str(), item))
        .collect()
}

/// Inserts `item` before the first item with a greater name, unless an item
/// with its name is already there.
fn insert_sorted<T>(items: &mut Vec<T>, item: T, name: fn(&T) -> &str) -> bool {
    let new_name = name(&item);
    if items.iter().any(|existing| name(existing) == new_name) {
        return false;
    }
    let position = items.partition_point(|existing| name(existing) < new_name);
    items.insert(position, item);
    true
}

/// Removes the item called `removed`, if there is one.
fn remove_named<T>(items: &mut Vec<T>, removed: &str, name: fn(&T) -> &str) -> bool {
    match items.iter().position(|item| name(item) == removed) {
        Some(position) => {
            items.remove(position);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::model::arbitrary::manifest_strategy;
    use crate::model::parse::{parse_manifest, ManifestFormat};

    const PROD_EU: &str = include_str!("../../docs/examples/prod-eu.yaml");

    fn prod_eu() -> Manifest {
        parse_manifest(PROD_EU.as_bytes(), ManifestFormat::Yaml).unwrap()
    }

    fn prod_eu_with(edits: &[(&str, &str)]) -> Manifest {
        let mut yaml = PROD_EU.to_string();
        for (from, to) in edits {
            assert_eq!(yaml.matches(from).count(), 1, "{from:?} must occur once");
            yaml = yaml.replace(from, to);
        }
        parse_manifest(yaml.as_bytes(), ManifestFormat::Yaml).unwrap()
    }

    fn fold(state: Option<Manifest>, changes: &[Change]) -> Option<Manifest> {
        changes.iter().fold(state, apply_change)
    }

    /// Names each change by its kind and subject, for compact assertions.
    fn summary(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|change| match change {
                Change::ClusterDeclared(c) => {
                    format!("ClusterDeclared {}", c.manifest.metadata.name)
                }
                Change::LabelsChanged(c) => format!("LabelsChanged {:?} -> {:?}", c.from, c.to),
                Change::KubernetesVersionChanged(c) => {
                    format!("KubernetesVersionChanged {} -> {}", c.from, c.to)
                }
                Change::DriftPolicyChanged(c) => {
                    format!("DriftPolicyChanged {} -> {}", c.from, c.to)
                }
                Change::SubnetAdded(c) => {
                    format!("SubnetAdded {} {}", c.subnet.name, c.subnet.cidr)
                }
                Change::SubnetRemoved(c) => {
                    format!("SubnetRemoved {} {}", c.subnet.name, c.subnet.cidr)
                }
                Change::FirewallRuleAdded(c) => format!("FirewallRuleAdded {}", c.rule.name),
                Change::FirewallRuleRemoved(c) => format!("FirewallRuleRemoved {}", c.rule.name),
                Change::PoolAdded(c) => format!("PoolAdded {}", c.pool.name),
                Change::PoolRemoved(c) => format!("PoolRemoved {}", c.pool.name),
                Change::PoolScaled(c) => format!("PoolScaled {} {} -> {}", c.pool, c.from, c.to),
                Change::PoolTemplateChanged(c) => format!("PoolTemplateChanged {}", c.pool),
            })
            .collect()
    }

    #[test]
    fn diff_from_nothing_declares_the_cluster() {
        let manifest = prod_eu();
        let changes = diff(None, &manifest).unwrap();
        assert_eq!(
            changes,
            [Change::ClusterDeclared(ClusterDeclared {
                manifest: manifest.clone()
            })]
        );
        assert_eq!(fold(None, &changes), Some(manifest));
    }

    #[test]
    fn diff_of_the_same_manifest_is_empty() {
        let manifest = prod_eu();
        assert_eq!(diff(Some(&manifest), &manifest.clone()), Ok(vec![]));
    }

    #[test]
    fn diff_of_a_scale_is_exactly_one_pool_scaled() {
        let old = prod_eu();
        let new = prod_eu_with(&[("replicas: 5", "replicas: 7")]);
        assert_eq!(
            diff(Some(&old), &new),
            Ok(vec![Change::PoolScaled(PoolScaled {
                pool: "workers".to_string(),
                from: 5,
                to: 7,
            })])
        );
    }

    #[test]
    fn diff_refuses_to_change_immutable_fields_and_names_them_all() {
        let old = prod_eu();
        let new = prod_eu_with(&[("region: eu-west-1", "region: eu-central-1")]);
        assert_eq!(
            diff(Some(&old), &new),
            Err(vec![FieldError::new(
                "spec.region",
                "immutable: was eu-west-1, delete and re-declare the cluster to change it"
            )])
        );

        let new = prod_eu_with(&[
            ("name: prod-eu", "name: prod-us"),
            ("provider: sim", "provider: exec:aws"),
            ("cidr: 10.0.0.0/16", "cidr: 10.0.0.0/8"),
        ]);
        let paths: Vec<String> = diff(Some(&old), &new)
            .unwrap_err()
            .into_iter()
            .map(|error| error.path)
            .collect();
        assert_eq!(
            paths,
            ["metadata.name", "spec.provider", "spec.network.cidr"]
        );
    }

    #[test]
    fn diff_orders_changes_by_kind_then_name() {
        let old = prod_eu_with(&[(
            "      - {name: a, cidr: 10.0.1.0/24, zone: eu-west-1a}\n",
            "      - {name: a, cidr: 10.0.1.0/24, zone: eu-west-1a}\n      - {name: z, cidr: 10.0.9.0/24}\n",
        )]);
        let new = prod_eu_with(&[
            (
                "      - {name: a, cidr: 10.0.1.0/24, zone: eu-west-1a}\n",
                "      - {name: a, cidr: 10.0.3.0/24, zone: eu-west-1a}\n      - {name: b, cidr: 10.0.2.0/24}\n",
            ),
            ("ports: \"443\"", "ports: \"6443\""),
            ("replicas: 3, machineType: m5.large", "replicas: 1, machineType: m5.2xlarge"),
            ("{name: workers,", "{name: batch, role: worker, replicas: 2, machineType: c5.large, image: ubuntu-24.04, subnets: [b]}\n    - {name: zz,"),
            ("team: platform", "team: infra"),
            ("kubernetesVersion: 1.31.2", "kubernetesVersion: 1.32.0"),
            ("drift: correct", "drift: report"),
        ]);
        let changes = diff(Some(&old), &new).unwrap();
        assert_eq!(
            summary(&changes),
            [
                "SubnetRemoved a 10.0.1.0/24",
                "SubnetAdded a 10.0.3.0/24",
                "SubnetAdded b 10.0.2.0/24",
                "FirewallRuleRemoved api",
                "FirewallRuleAdded api",
                "PoolAdded batch",
                "PoolAdded zz",
                "PoolTemplateChanged control-plane",
                "PoolScaled control-plane 3 -> 1",
                "PoolRemoved workers",
                "SubnetRemoved z 10.0.9.0/24",
                "LabelsChanged {\"team\": \"platform\"} -> {\"team\": \"infra\"}",
                "KubernetesVersionChanged 1.31.2 -> 1.32.0",
                "DriftPolicyChanged correct -> report",
            ]
        );
        assert_eq!(fold(Some(old), &changes), Some(new));
    }

    #[test]
    fn changes_that_do_not_fit_leave_the_state_unchanged() {
        let manifest = prod_eu();
        let scale_missing = Change::PoolScaled(PoolScaled {
            pool: "gpu".to_string(),
            from: 1,
            to: 2,
        });
        assert_eq!(apply_change(None, &scale_missing), None);
        assert_eq!(
            apply_change(Some(manifest.clone()), &scale_missing),
            Some(manifest.clone())
        );

        let duplicate_subnet = Change::SubnetAdded(SubnetAdded {
            subnet: Subnet {
                name: "a".to_string(),
                cidr: "10.0.7.0/24".to_string(),
                zone: None,
            },
        });
        assert_eq!(
            apply_change(Some(manifest.clone()), &duplicate_subnet),
            Some(manifest.clone())
        );

        let remove_missing = Change::PoolRemoved(PoolRemoved {
            pool: Pool {
                name: "gpu".to_string(),
                ..manifest.spec.pools[0].clone()
            },
        });
        assert_eq!(
            apply_change(Some(manifest.clone()), &remove_missing),
            Some(manifest)
        );
    }

    #[test]
    fn cluster_declared_replaces_any_state() {
        let old = prod_eu();
        let new = prod_eu_with(&[("replicas: 5", "replicas: 9")]);
        let declared = Change::ClusterDeclared(ClusterDeclared {
            manifest: new.clone(),
        });
        assert_eq!(apply_change(Some(old), &declared), Some(new));
    }

    proptest! {
        #[test]
        fn folding_a_diff_onto_the_old_manifest_gives_the_new_one(
            old in manifest_strategy("prod"),
            new in manifest_strategy("prod"),
        ) {
            let changes = diff(Some(&old), &new).unwrap();
            prop_assert_eq!(changes.is_empty(), old == new);
            prop_assert_eq!(fold(Some(old), &changes), Some(new));
        }

        #[test]
        fn a_change_in_place_says_whether_it_changed_the_manifest(
            old in manifest_strategy("prod"),
            new in manifest_strategy("prod"),
            other in manifest_strategy("prod"),
        ) {
            // The changes fit `old` one after the other; on `new` and on an
            // unrelated manifest most of them do not fit, or change nothing.
            let changes = diff(Some(&old), &new).unwrap();
            for start in [old, new, other] {
                let mut manifest = start;
                for change in &changes {
                    let before = manifest.clone();
                    let changed = apply_change_in_place(&mut manifest, change.clone());
                    prop_assert_eq!(changed, manifest != before, "{:?}", change);
                    let folded = apply_change(Some(before), change);
                    prop_assert_eq!(Some(&manifest), folded.as_ref());
                }
            }
        }

        #[test]
        fn diff_of_a_manifest_with_itself_is_empty(manifest in manifest_strategy("prod")) {
            prop_assert_eq!(diff(Some(&manifest), &manifest), Ok(vec![]));
        }

        #[test]
        fn folding_every_diff_from_nothing_gives_the_last_manifest(
            manifests in proptest::collection::vec(manifest_strategy("prod"), 1..8),
        ) {
            let mut state: Option<Manifest> = None;
            for manifest in &manifests {
                let changes = diff(state.as_ref(), manifest).unwrap();
                state = fold(state, &changes);
                prop_assert_eq!(state.as_ref(), Some(manifest));
            }
            prop_assert_eq!(state.as_ref(), manifests.last());
        }
    }
}
