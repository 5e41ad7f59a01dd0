//! Proptest strategies for valid manifests, for property tests across the crate.
//!
//! Generated manifests are valid and normalized, and share their name,
//! provider, region and network CIDR, so any two of them can be diffed. Names
//! and values come from small fixed pools so that two generated manifests
//! often share items, equal or changed, and the diff sees every kind of change.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::sample::{select, subsequence};

use super::manifest::{
    ClusterSpec, FirewallRule, Manifest, Metadata, Network, Policy, Pool, Subnet, API_VERSION,
    KIND_CLUSTER,
};

/// The network CIDR of every generated manifest.
pub(crate) const NETWORK_CIDR: &str = "10.0.0.0/16";

/// Subnet names; subnet `i` owns the block `10.0.(16 i).0/20`, so subnets of
/// different names never overlap.
const SUBNET_NAMES: [&str; 6] = ["a", "b", "c", "d", "e", "f"];
const ZONES: [&str; 3] = ["eu-west-1a", "eu-west-1b", "eu-west-1c"];
const RULE_NAMES: [&str; 5] = ["api", "dns", "egress-all", "nodeports", "ping"];
const PORTS: [&str; 5] = ["22", "53", "443", "8000-8080", "30000-32767"];
const SOURCES: [&str; 4] = [
    "0.0.0.0/0",
    "10.0.0.0/8",
    "192.168.0.0/16",
    "203.0.113.7/32",
];
const POOL_NAMES: [&str; 4] = ["batch", "control-plane", "gpu", "workers"];
const MACHINE_TYPES: [&str; 3] = ["m5.large", "m5.xlarge", "c5.2xlarge"];
const IMAGES: [&str; 2] = ["ubuntu-24.04", "flatcar-4081"];
const LABEL_KEYS: [&str; 4] = ["cost-center", "env", "example.com/owner", "team"];
const LABEL_VALUES: [&str; 4] = ["", "platform", "prod", "team_a.1"];

/// Valid, normalized manifests of the cluster called `name`.
pub(crate) fn manifest_strategy(name: &'static str) -> impl Strategy<Value = Manifest> {
    let subnets_and_pools = subnets_strategy().prop_flat_map(|subnets| {
        let names: Vec<String> = subnets.iter().map(|subnet| subnet.name.clone()).collect();
        (Just(subnets), pools_strategy(names))
    });
    let labels =
        proptest::collection::btree_map(select(&LABEL_KEYS[..]), select(&LABEL_VALUES[..]), 0..=3);
    let kubernetes_version =
        (29u64..=32, 0u64..=3).prop_map(|(minor, patch)| format!("1.{minor}.{patch}"));
    let drift = select(&["correct", "report"][..]);
    (
        subnets_and_pools,
        rules_strategy(),
        labels,
        kubernetes_version,
        drift,
    )
        .prop_map(
            move |((subnets, pools), firewall, labels, kubernetes_version, drift)| {
                let mut manifest = Manifest {
                    api_version: API_VERSION.to_string(),
                    kind: KIND_CLUSTER.to_string(),
                    metadata: Metadata {
                        name: name.to_string(),
                        labels: labels
                            .into_iter()
                            .map(|(key, value)| (key.to_string(), value.to_string()))
                            .collect::<BTreeMap<_, _>>(),
                    },
                    spec: ClusterSpec {
                        provider: "sim".to_string(),
                        region: "eu-west-1".to_string(),
                        kubernetes_version,
                        network: Network {
                            cidr: NETWORK_CIDR.to_string(),
                            subnets,
                        },
                        firewall,
                        pools,
                        policy: Policy {
                            drift: drift.to_string(),
                        },
                    },
                };
                manifest.normalize();
                manifest
            },
        )
}

/// Each subnet name present or not; a present subnet takes its whole /20 block
/// or one of the block's first four /24s, with or without a zone.
fn subnets_strategy() -> impl Strategy<Value = Vec<Subnet>> {
    let per_name: Vec<_> = (0..SUBNET_NAMES.len())
        .map(|index| {
            let subnet = (0u8..5, proptest::option::of(select(&ZONES[..]))).prop_map(
                move |(variant, zone)| {
                    let block = index * 16;
                    let cidr = match variant {
                        4 => format!("10.0.{block}.0/20"),
                        quarter => format!("10.0.{}.0/24", block + usize::from(quarter)),
                    };
                    Subnet {
                        name: SUBNET_NAMES[index].to_string(),
                        cidr,
                        zone: zone.map(str::to_string),
                    }
                },
            );
            proptest::option::of(subnet)
        })
        .collect();
    per_name.prop_map(|subnets| subnets.into_iter().flatten().collect())
}

/// Each rule name present or not, with ports exactly when tcp or udp.
fn rules_strategy() -> impl Strategy<Value = Vec<FirewallRule>> {
    let per_name: Vec<_> = RULE_NAMES
        .iter()
        .map(|&name| {
            let rule = (
                select(&["ingress", "egress"][..]),
                select(&["tcp", "udp", "icmp", "all"][..]),
                select(&PORTS[..]),
                select(&SOURCES[..]),
            )
                .prop_map(move |(direction, protocol, ports, source)| FirewallRule {
                    name: name.to_string(),
                    direction: direction.to_string(),
                    protocol: protocol.to_string(),
                    ports: matches!(protocol, "tcp" | "udp").then(|| ports.to_string()),
                    source: source.to_string(),
                });
            proptest::option::of(rule)
        })
        .collect();
    per_name.prop_map(|rules| rules.into_iter().flatten().collect())
}

/// Each pool name present or not, spread over a non-empty, shuffled subset of
/// `subnet_names`; no pools at all when there are no subnets.
fn pools_strategy(subnet_names: Vec<String>) -> BoxedStrategy<Vec<Pool>> {
    if subnet_names.is_empty() {
        return Just(Vec::new()).boxed();
    }
    let per_name: Vec<_> = POOL_NAMES
        .iter()
        .map(|&name| {
            let count = subnet_names.len();
            let pool = (
                select(&["control-plane", "worker"][..]),
                prop_oneof![0i64..=1000, select(&[0i64, 1, 3, 5][..])],
                select(&MACHINE_TYPES[..]),
                select(&IMAGES[..]),
                subsequence(subnet_names.clone(), 1..=count).prop_shuffle(),
            )
                .prop_map(move |(role, replicas, machine_type, image, subnets)| Pool {
                    name: name.to_string(),
                    role: role.to_string(),
                    replicas,
                    machine_type: machine_type.to_string(),
                    image: image.to_string(),
                    subnets,
                });
            proptest::option::of(pool)
        })
        .collect();
    per_name
        .prop_map(|pools| pools.into_iter().flatten().collect())
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::validate;

    proptest! {
        #[test]
        fn generated_manifests_are_valid_and_normalized(manifest in manifest_strategy("prod")) {
            prop_assert_eq!(validate(&manifest), vec![]);
            let mut normalized = manifest.clone();
            normalized.normalize();
            prop_assert_eq!(normalized, manifest);
        }
    }
}
