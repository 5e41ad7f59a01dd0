//! Golden tests of the planner: each file in `src/reconcile/testdata/plan/`
//! is one case, a YAML document (the desired manifest and a compact observed
//! state) followed by a `--- plan` line and the expected plan, one action per
//! line. Adding a case is adding a file. `CAIRN_UPDATE_GOLDEN=1 cargo test
//! --lib golden` rewrites the expected plans from what the planner says now;
//! review the diff before committing it.
//!
//! The observed state, compactly:
//!
//! ```yaml
//! observed:
//!   network: sim-net-1                 # exists with the desired spec
//!   subnets: {a: sim-subnet-2}
//!   firewall: {api: sim-fw-3}
//!   machines:
//!     workers-0: sim-m-4
//!     workers-1: {id: sim-m-5, image: ubuntu-22.04}   # differs from desired
//!   orphans: {sim-m-9: workers-7}      # provider id: machine name
//!   attempts: {machine/workers-2: 2}   # tries made with the current token
//!   incarnations: {machine/workers-0: 1}
//!   drift: [machine/workers-1]
//!   inFlight: [machine/workers-3]      # a create started without an outcome
//!                                      # (a delete, for a resource listed above)
//! replacements: {workers-0: sim-m-4}   # machines asked to be replaced
//! ```
//!
//! A resource the desired state does not have gets a made-up spec (a worker
//! machine, subnet 10.0.9.0/24, ...), which is all a deletion needs.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::{desired_resources, plan, PlanInput};
use crate::model::{
    parse_manifest, Action, CloudResource, FirewallRule, MachineSpec, Manifest, ManifestFormat,
    NetworkSpec, ResourceKey, ResourceKind, ResourceSpec, SubnetSpec,
};
use crate::projection::{Attempts, DriftRecord, InFlightAction, ObservedCluster};

const CLUSTER: &str = "prod";

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Case {
    desired: Option<serde_norway::Value>,
    #[serde(default)]
    deletion_requested: bool,
    #[serde(default)]
    observed: CompactObserved,
    /// Machine name -> the provider id a replacement request named.
    #[serde(default)]
    replacements: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CompactObserved {
    network: Option<Entry>,
    #[serde(default)]
    subnets: BTreeMap<String, Entry>,
    #[serde(default)]
    firewall: BTreeMap<String, Entry>,
    #[serde(default)]
    machines: BTreeMap<String, Entry>,
    #[serde(default)]
    orphans: BTreeMap<String, String>,
    #[serde(default)]
    attempts: BTreeMap<String, u32>,
    #[serde(default)]
    incarnations: BTreeMap<String, u32>,
    #[serde(default)]
    drift: Vec<String>,
    /// Actions started without an outcome (a crash in between): the create
    /// of a resource not observed, the delete of one that is.
    #[serde(default, rename = "inFlight")]
    in_flight: Vec<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Entry {
    Id(String),
    Detailed(Detailed),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Detailed {
    id: String,
    cidr: Option<String>,
    image: Option<String>,
    machine_type: Option<String>,
    subnet: Option<String>,
    kubernetes_version: Option<String>,
}

impl Entry {
    fn detailed(self) -> Detailed {
        match self {
            Entry::Id(id) => Detailed {
                id,
                ..Detailed::default()
            },
            Entry::Detailed(detailed) => detailed,
        }
    }
}

fn parse_key(text: &str) -> ResourceKey {
    let (kind, name) = text.split_once('/').expect("a key is kind/name");
    let kind = match kind {
        "network" => ResourceKind::Network,
        "subnet" => ResourceKind::Subnet,
        "firewall_rule" => ResourceKind::FirewallRule,
        "machine" => ResourceKind::Machine,
        other => panic!("unknown resource kind {other}"),
    };
    ResourceKey::new(kind, name)
}

/// The spec a compact entry stands for: the desired one, or a made-up one,
/// with the entry's overrides.
fn observed_spec(
    wanted: &BTreeMap<ResourceKey, ResourceSpec>,
    key: &ResourceKey,
    detailed: &Detailed,
) -> ResourceSpec {
    let mut spec = wanted.get(key).cloned().unwrap_or_else(|| match key.kind {
        ResourceKind::Network => ResourceSpec::Network(NetworkSpec {
            cidr: "10.0.0.0/16".into(),
            region: "eu-west-1".into(),
        }),
        ResourceKind::Subnet => ResourceSpec::Subnet(SubnetSpec {
            name: key.name.clone(),
            cidr: "10.0.9.0/24".into(),
            zone: None,
        }),
        ResourceKind::FirewallRule => ResourceSpec::FirewallRule(FirewallRule {
            name: key.name.clone(),
            direction: "ingress".into(),
            protocol: "tcp".into(),
            ports: Some("22".into()),
            source: "0.0.0.0/0".into(),
        }),
        ResourceKind::Machine => ResourceSpec::Machine(MachineSpec {
            name: key.name.clone(),
            pool: key
                .name
                .rsplit_once('-')
                .map_or(key.name.as_str(), |(pool, _)| pool)
                .into(),
            role: "worker".into(),
            machine_type: "m5.large".into(),
            image: "ubuntu-24.04".into(),
            subnet: "a".into(),
            kubernetes_version: "1.31.2".into(),
        }),
    });
    match &mut spec {
        ResourceSpec::Network(network) => {
            if let Some(cidr) = &detailed.cidr {
                network.cidr = cidr.clone();
            }
        }
        ResourceSpec::Subnet(subnet) => {
            if let Some(cidr) = &detailed.cidr {
                subnet.cidr = cidr.clone();
            }
        }
        ResourceSpec::FirewallRule(_) => {}
        ResourceSpec::Machine(machine) => {
            let overrides = [
                (&detailed.image, &mut machine.image),
                (&detailed.machine_type, &mut machine.machine_type),
                (&detailed.subnet, &mut machine.subnet),
                (
                    &detailed.kubernetes_version,
                    &mut machine.kubernetes_version,
                ),
            ];
            for (value, field) in overrides {
                if let Some(value) = value {
                    *field = value.clone();
                }
            }
        }
    }
    spec
}

fn build_observed(
    compact: CompactObserved,
    wanted: &BTreeMap<ResourceKey, ResourceSpec>,
) -> ObservedCluster {
    let mut observed = ObservedCluster::default();
    let mut entries: Vec<(ResourceKey, Entry)> = Vec::new();
    if let Some(network) = compact.network {
        entries.push((ResourceKey::new(ResourceKind::Network, "network"), network));
    }
    let groups = [
        (ResourceKind::Subnet, compact.subnets),
        (ResourceKind::FirewallRule, compact.firewall),
        (ResourceKind::Machine, compact.machines),
    ];
    for (kind, group) in groups {
        for (name, entry) in group {
            entries.push((ResourceKey::new(kind, name), entry));
        }
    }
    for (key, entry) in entries {
        let detailed = entry.detailed();
        let spec = observed_spec(wanted, &key, &detailed);
        observed.resources.insert(key, resource(detailed.id, spec));
    }
    for (provider_id, machine) in compact.orphans {
        let key = ResourceKey::new(ResourceKind::Machine, machine);
        let spec = observed_spec(&BTreeMap::new(), &key, &Detailed::default());
        observed
            .orphans
            .insert(provider_id.clone(), resource(provider_id, spec));
    }
    for (key, incarnation) in compact.incarnations {
        observed.incarnations.insert(parse_key(&key), incarnation);
    }
    for (key, count) in compact.attempts {
        let key = parse_key(&key);
        let token = super::create_token(CLUSTER, &observed, &key);
        let spec = observed_spec(wanted, &key, &Detailed::default());
        let attempts = Attempts {
            action: Action::Create { spec },
            token,
            count,
        };
        observed.attempts.insert(key, attempts);
    }
    for key in compact.in_flight {
        let key = parse_key(&key);
        let (action, token) = match observed.resources.get(&key) {
            Some(resource) => (
                Action::Delete {
                    key: key.clone(),
                    provider_id: resource.provider_id.clone(),
                },
                format!("{CLUSTER}/{key}/{}/delete", observed.incarnation(&key)),
            ),
            None => (
                Action::Create {
                    spec: observed_spec(wanted, &key, &Detailed::default()),
                },
                super::create_token(CLUSTER, &observed, &key),
            ),
        };
        let in_flight = InFlightAction {
            action,
            token: token.clone(),
            attempt: 1,
            started_seq: 1,
            started_id: uuid::Uuid::nil(),
        };
        observed.in_flight.insert(token, in_flight);
    }
    for key in compact.drift {
        let record = DriftRecord {
            detected_seq: 1,
            expected: None,
            actual: None,
        };
        observed.drift.insert(parse_key(&key), record);
    }
    observed
}

fn resource(provider_id: String, spec: ResourceSpec) -> CloudResource {
    CloudResource {
        provider_id,
        cluster: CLUSTER.into(),
        token: String::new(),
        spec,
        address: None,
    }
}

fn run_case(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|error| error.to_string())?;
    let (input, expected) = text
        .split_once("--- plan\n")
        .ok_or("the case has no `--- plan` line")?;
    let case: Case = serde_norway::from_str(input).map_err(|error| error.to_string())?;
    let manifest: Option<Manifest> = case
        .desired
        .map(|value| {
            let yaml = serde_norway::to_string(&value).expect("a YAML value serializes");
            parse_manifest(yaml.as_bytes(), ManifestFormat::Yaml)
                .map_err(|error| format!("desired: {error}"))
        })
        .transpose()?;
    let wanted = manifest.as_ref().map(desired_resources).unwrap_or_default();
    let observed = build_observed(case.observed, &wanted);
    let desired = manifest.as_ref().filter(|_| !case.deletion_requested);
    let actions = plan(PlanInput {
        cluster: CLUSTER,
        desired,
        observed: &observed,
        replacements: &case.replacements,
    });
    let actual: String = actions.iter().map(|action| format!("{action}\n")).collect();
    if actual == expected {
        return Ok(());
    }
    if std::env::var_os("CAIRN_UPDATE_GOLDEN").is_some() {
        std::fs::write(path, format!("{input}--- plan\n{actual}")).map_err(|e| e.to_string())?;
        return Ok(());
    }
    Err(format!("expected:\n{expected}\nactual:\n{actual}"))
}

#[test]
fn planner_golden_cases() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/reconcile/testdata/plan");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("the golden case directory exists")
        .map(|entry| entry.expect("a readable directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "txt"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 8,
        "expected the golden cases in {}",
        dir.display()
    );
    let failures: Vec<String> = paths
        .iter()
        .filter_map(|path| {
            run_case(path)
                .err()
                .map(|error| format!("{}:\n{error}", path.display()))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
