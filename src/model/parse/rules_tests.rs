//! The rules of `validate` as a user meets them: manifests parsed by
//! `parse_manifest`, with the unknown fields and type errors that parsing
//! reports first. They live under `parse`, which calls `validate`, so that
//! `validate` does not depend on `parse`, not even in its tests.

use super::*;

/// A valid manifest that the cases below break one edit at a time.
const BASE: &str = r#"
apiVersion: cairn/v1
kind: Cluster
metadata:
  name: prod-eu
  labels: {team: platform, example.com/tier: gold}
spec:
  provider: sim
  region: eu-west-1
  kubernetesVersion: 1.31.2
  network:
    cidr: 10.0.0.0/16
    subnets:
      - {name: a, cidr: 10.0.1.0/24, zone: eu-west-1a}
      - {name: b, cidr: 10.0.2.0/24, zone: eu-west-1b}
  firewall:
    - {name: api, direction: ingress, protocol: tcp, ports: "443", source: 0.0.0.0/0}
    - {name: ping, direction: ingress, protocol: icmp, source: 10.0.0.0/8}
  pools:
    - {name: control-plane, role: control-plane, replicas: 3, machineType: m5.large, image: ubuntu-24.04, subnets: [a]}
    - {name: workers, role: worker, replicas: 5, machineType: m5.xlarge, image: ubuntu-24.04, subnets: [a, b]}
  policy: {drift: correct}
"#;

/// `BASE` with each `(from, to)` edit applied; each `from` must occur once.
fn edit(edits: &[(&str, &str)]) -> String {
    let mut yaml = BASE.to_string();
    for (from, to) in edits {
        assert_eq!(
            yaml.matches(from).count(),
            1,
            "{from:?} must occur exactly once"
        );
        yaml = yaml.replace(from, to);
    }
    yaml
}

/// Parses `yaml` and checks that it yields exactly the `expected` errors,
/// in order, each given as a substring of its `path: reason` form. No
/// expected errors means the manifest must be accepted.
#[track_caller]
fn check(yaml: &str, expected: &[&str]) {
    let actual: Vec<String> = match parse_manifest(yaml.as_bytes(), ManifestFormat::Yaml) {
        Ok(_) => Vec::new(),
        Err(ManifestError::Invalid(errors)) => errors.iter().map(ToString::to_string).collect(),
        Err(error) => panic!("expected field errors, got {error:?}"),
    };
    let matches = actual.len() == expected.len()
        && actual
            .iter()
            .zip(expected)
            .all(|(actual, expected)| actual.contains(expected));
    assert!(matches, "\nexpected: {expected:#?}\nactual: {actual:#?}");
}

#[test]
fn base_manifest_is_valid() {
    check(BASE, &[]);
}

#[test]
fn header_and_metadata_rules() {
    check(
        &edit(&[("apiVersion: cairn/v1", "apiVersion: cairn/v2")]),
        &["apiVersion: expected \"cairn/v1\", got \"cairn/v2\""],
    );
    check(
        &edit(&[("kind: Cluster", "kind: Pod")]),
        &["kind: expected \"Cluster\", got \"Pod\""],
    );
    check(
        &edit(&[("name: prod-eu", "name: Prod_EU")]),
        &["metadata.name: \"Prod_EU\" is not a DNS label"],
    );
    check(
        &edit(&[("name: prod-eu", "name: -prod")]),
        &["metadata.name: \"-prod\" is not a DNS label"],
    );
    check(
        &edit(&[("name: prod-eu", "name: prod-")]),
        &["metadata.name: \"prod-\" is not a DNS label"],
    );
    check(
        &edit(&[("name: prod-eu", "name: \"\"")]),
        &["metadata.name: \"\" is not a DNS label"],
    );
    check(
        &edit(&[("name: prod-eu", &format!("name: {}", "x".repeat(64)))]),
        &["metadata.name: \"xxxx"],
    );
    check(
        &edit(&[("name: prod-eu", &format!("name: {}", "x".repeat(63)))]),
        &[],
    );
    check(
        &edit(&[("team: platform", "\"bad key\": platform")]),
        &["metadata.labels.bad key: \"bad key\" is not a label key"],
    );
    check(
        &edit(&[("team: platform", "\"\": platform")]),
        &["metadata.labels.: \"\" is not a label key"],
    );
    check(
        &edit(&[("team: platform", &format!("team: {}", "v".repeat(64)))]),
        &["metadata.labels.team: label value must be at most 63 characters"],
    );
    check(&edit(&[("team: platform", "team: \"\"")]), &[]);
    for value in ["a\\nb", "a\\u202eb", "a\\tb", "a\\e[2Kb"] {
        check(
            &edit(&[("team: platform", &format!("team: \"{value}\""))]),
            &["metadata.labels.team: label value must be at most 63 characters"],
        );
    }
    check(&edit(&[("team: platform", "team: \"équipe\"")]), &[]);
}

#[test]
fn unknown_fields_at_several_depths_are_reported_together() {
    check(
        &edit(&[
            ("kind: Cluster", "kind: Cluster\ncolour: blue"),
            ("  name: prod-eu", "  name: prod-eu\n  namespace: default"),
            ("zone: eu-west-1b}", "zone: eu-west-1b, zoen: x}"),
            ("replicas: 5,", "replicas: 5, replica: 6,"),
            ("{drift: correct}", "{drift: correct, drfit: report}"),
        ]),
        // Keys are visited in alphabetical order: `policy` before `pools`.
        &[
            "colour: unknown field",
            "metadata.namespace: unknown field",
            "spec.network.subnets[1].zoen: unknown field",
            "spec.policy.drfit: unknown field",
            "spec.pools[1].replica: unknown field",
        ],
    );
}

#[test]
fn unknown_fields_and_validation_errors_are_reported_together() {
    check(
        &edit(&[
            ("kind: Cluster", "kind: Cluster\ncolour: blue"),
            ("name: prod-eu", "name: Prod_EU"),
        ]),
        &[
            "colour: unknown field",
            "metadata.name: \"Prod_EU\" is not a DNS label",
        ],
    );
}

#[test]
fn a_subnet_replaced_by_a_placeholder_is_not_reported_missing_from_pools() {
    check(
        &edit(&[(
            "{name: a, cidr: 10.0.1.0/24",
            "{name: [a], cidr: 10.0.1.0/24",
        )]),
        &["spec.network.subnets[0].name: invalid type: sequence, expected a string"],
    );
}

#[test]
fn type_errors_name_their_path() {
    check(
        &edit(&[("replicas: 5", "replicas: many")]),
        &["spec.pools[1].replicas: invalid type: string \"many\", expected i64"],
    );
    check(
        &edit(&[("subnets: [a]", "subnets: a")]),
        &["spec.pools[0].subnets: invalid type: string \"a\", expected a sequence"],
    );
    check(
        &edit(&[("  region: eu-west-1\n", "")]),
        &["spec.region: missing field"],
    );
    check(
        &edit(&[(
            "{name: b, cidr: 10.0.2.0/24, zone: eu-west-1b}",
            "{name: b, zone: eu-west-1b}",
        )]),
        &["spec.network.subnets[1].cidr: missing field"],
    );
}

#[test]
fn type_errors_do_not_hide_other_errors() {
    // Unknown fields, then type errors and missing fields, then validation.
    check(
        &edit(&[
            ("replicas: 5", "replicas: five"),
            ("cidr: 10.0.2.0/24", "cidr: 10.1.2.0/24"),
            (
                "  policy: {drift: correct}",
                "  policy: {drift: correct}\n  zzz: 1",
            ),
        ]),
        &[
            "spec.zzz: unknown field",
            "spec.pools[1].replicas: invalid type: string \"five\", expected i64",
            "spec.network.subnets[1].cidr: 10.1.2.0/24 is not inside the network 10.0.0.0/16",
        ],
    );
    check(
        &edit(&[
            ("replicas: 3", "replicas: three"),
            ("subnets: [a, b]", "subnets: {a: b}"),
        ]),
        &[
            "spec.pools[0].replicas: invalid type: string \"three\", expected i64",
            "spec.pools[1].subnets: invalid type: map, expected a sequence",
        ],
    );
    check(
        &edit(&[
            ("  region: eu-west-1\n", ""),
            ("{name: workers,", "{name: Workers,"),
        ]),
        &[
            "spec.region: missing field",
            "spec.pools[1].name: \"Workers\" is not a DNS label",
        ],
    );
    check(
        &edit(&[
            ("  pools:\n", "  pools: many\n"),
            ("    - {name: control-plane, role: control-plane, replicas: 3, machineType: m5.large, image: ubuntu-24.04, subnets: [a]}\n", ""),
            ("    - {name: workers, role: worker, replicas: 5, machineType: m5.xlarge, image: ubuntu-24.04, subnets: [a, b]}\n", ""),
            ("kind: Cluster", "kind: Clutser"),
            ("provider: sim", "provider: gcp"),
        ]),
        &[
            "spec.pools: invalid type: string \"many\", expected a sequence",
            "kind: expected \"Cluster\", got \"Clutser\"",
            "spec.provider: unknown provider \"gcp\"",
        ],
    );
}

#[test]
fn nothing_is_said_about_a_placeholder() {
    // Each placeholder ("", [], {}) would break a rule; only the type
    // error that put it there is reported.
    check(
        &edit(&[("region: eu-west-1", "region: [eu-west-1]")]),
        &["spec.region: invalid type: sequence, expected a string"],
    );
    check(
        &edit(&[("zone: eu-west-1b", "zone: [eu-west-1b]")]),
        &["spec.network.subnets[1].zone: invalid type: sequence, expected a string"],
    );
    check(
        &edit(&[("ports: \"443\"", "ports: [443]")]),
        &["spec.firewall[0].ports: invalid type: sequence, expected a string"],
    );
    check(
        &edit(&[("{name: workers,", "{name: [workers],")]),
        &["spec.pools[1].name: invalid type: sequence, expected a string"],
    );
    check(
        &edit(&[("    - {name: workers, role: worker, replicas: 5, machineType: m5.xlarge, image: ubuntu-24.04, subnets: [a, b]}", "    - workers")]),
        &["spec.pools[1]: invalid type: string \"workers\", expected struct Pool"],
    );
    check(
        &edit(&[("  name: prod-eu\n", "")]),
        &["metadata.name: missing field"],
    );
}

#[test]
fn spec_scalar_rules() {
    check(
        &edit(&[("provider: sim", "provider: aws")]),
        &["spec.provider: unknown provider \"aws\""],
    );
    check(
        &edit(&[("provider: sim", "provider: exec:Bad_Plugin")]),
        &["spec.provider: unknown provider \"exec:Bad_Plugin\""],
    );
    check(
        &edit(&[("provider: sim", "provider: \"exec:\"")]),
        &["spec.provider: unknown provider \"exec:\""],
    );
    check(&edit(&[("provider: sim", "provider: exec:hetzner")]), &[]);
    check(
        &edit(&[("region: eu-west-1", "region: EU West")]),
        &["spec.region: \"EU West\" is not a region"],
    );
    check(
        &edit(&[("region: eu-west-1", "region: \"\"")]),
        &["spec.region: \"\" is not a region"],
    );
    check(&edit(&[("kubernetesVersion: 1.31.2", "kubernetesVersion: v1.31.2")]), &["spec.kubernetesVersion: \"v1.31.2\" is not a semantic version (expected MAJOR.MINOR.PATCH, e.g. 1.31.2)"]);
    check(
        &edit(&[("kubernetesVersion: 1.31.2", "kubernetesVersion: 1.31")]),
        &["spec.kubernetesVersion: \"1.31\" is not a semantic version"],
    );
    check(
        &edit(&[(
            "kubernetesVersion: 1.31.2",
            "kubernetesVersion: 1.32.0-rc.1",
        )]),
        &[],
    );
    check(
        &edit(&[("drift: correct", "drift: ignore")]),
        &["spec.policy.drift: expected \"correct\" or \"report\", got \"ignore\""],
    );
    check(&edit(&[("  policy: {drift: correct}\n", "")]), &[]);
}

#[test]
fn network_and_subnet_rules() {
    check(
        &edit(&[("cidr: 10.0.0.0/16", "cidr: 10.0.0.0/33")]),
        &["spec.network.cidr: \"10.0.0.0/33\" is not a CIDR"],
    );
    check(
        &edit(&[("cidr: 10.0.0.0/16", "cidr: 10.0.0.0")]),
        &["spec.network.cidr: \"10.0.0.0\" is not a CIDR"],
    );
    check(
        &edit(&[("cidr: 10.0.0.0/16", "cidr: 10.0.7.0/16")]),
        &["spec.network.cidr: host bits set, did you mean 10.0.0.0/16"],
    );
    check(
        &edit(&[("cidr: 10.0.1.0/24", "cidr: 10.0.1.5/24")]),
        &["spec.network.subnets[0].cidr: host bits set, did you mean 10.0.1.0/24"],
    );
    check(
        &edit(&[("cidr: 10.0.1.0/24", "cidr: ten/24")]),
        &["spec.network.subnets[0].cidr: \"ten/24\" is not a CIDR"],
    );
    check(
        &edit(&[("cidr: 10.0.2.0/24", "cidr: 10.1.2.0/24")]),
        &["spec.network.subnets[1].cidr: 10.1.2.0/24 is not inside the network 10.0.0.0/16"],
    );
    check(
        &edit(&[("cidr: 10.0.2.0/24", "cidr: 10.0.0.0/8")]),
        &[
            "spec.network.subnets[1].cidr: 10.0.0.0/8 is not inside the network 10.0.0.0/16",
            "overlaps subnet \"a\" (10.0.1.0/24) at spec.network.subnets[0]",
        ],
    );
    check(&edit(&[("cidr: 10.0.2.0/24", "cidr: \"fd00::/64\"")]), &["spec.network.subnets[1].cidr: fd00::/64 is not in the same IP family as the network 10.0.0.0/16"]);
    check(&edit(&[("cidr: 10.0.2.0/24", "cidr: 10.0.1.128/25")]), &["spec.network.subnets[1].cidr: 10.0.1.128/25 overlaps subnet \"a\" (10.0.1.0/24) at spec.network.subnets[0]"]);
    check(
        &edit(&[("cidr: 10.0.2.0/24", "cidr: 10.0.0.0/20")]),
        &["spec.network.subnets[1].cidr: 10.0.0.0/20 overlaps subnet \"a\" (10.0.1.0/24)"],
    );
    check(&edit(&[("{name: b,", "{name: a,")]), &["spec.network.subnets[1].name: duplicate name \"a\", first used at spec.network.subnets[0]", "spec.pools[1].subnets[1]: no subnet named \"b\""]);
    check(
        &edit(&[("{name: b,", "{name: B,")]),
        &[
            "spec.network.subnets[1].name: \"B\" is not a DNS label",
            "spec.pools[1].subnets[1]: no subnet named \"b\"",
        ],
    );
    check(
        &edit(&[("zone: eu-west-1b", "zone: \"\"")]),
        &["spec.network.subnets[1].zone: must not be empty when given"],
    );
    check(&edit(&[(", zone: eu-west-1b", "")]), &[]);
}

#[test]
fn firewall_rules() {
    check(&edit(&[("ports: \"443\"", "ports: 443")]), &[]);
    check(&edit(&[("ports: \"443\"", "ports: \"8000-8080\"")]), &[]);
    check(&edit(&[("ports: \"443\"", "ports: \"65535\"")]), &[]);
    check(
        &edit(&[("ports: \"443\"", "ports: \"0\"")]),
        &["spec.firewall[0].ports: port 0 is out of range (1-65535)"],
    );
    check(
        &edit(&[("ports: \"443\"", "ports: 70000")]),
        &["spec.firewall[0].ports: port 70000 is out of range (1-65535)"],
    );
    check(
        &edit(&[("ports: \"443\"", "ports: \"80-99999999999999999999\"")]),
        &["spec.firewall[0].ports: port 99999999999999999999 is out of range"],
    );
    check(
        &edit(&[("ports: \"443\"", "ports: \"80-20\"")]),
        &["spec.firewall[0].ports: port range 80-20 is reversed: 80 is greater than 20"],
    );
    check(
        &edit(&[("ports: \"443\"", "ports: https")]),
        &["spec.firewall[0].ports: \"https\" is not a port or a port range"],
    );
    check(
        &edit(&[("ports: \"443\"", "ports: \"+443\"")]),
        &["spec.firewall[0].ports: \"+443\" is not a port or a port range"],
    );
    check(
        &edit(&[("ports: \"443\"", "ports: \"80-\"")]),
        &["spec.firewall[0].ports: \"80-\" is not a port or a port range"],
    );
    check(
        &edit(&[("ports: \"443\", ", "")]),
        &["spec.firewall[0].ports: required for protocol tcp"],
    );
    check(
        &edit(&[("protocol: icmp,", "protocol: icmp, ports: \"7\",")]),
        &["spec.firewall[1].ports: not allowed for protocol icmp"],
    );
    check(
        &edit(&[("protocol: icmp,", "protocol: all, ports: \"7\",")]),
        &["spec.firewall[1].ports: not allowed for protocol all"],
    );
    check(&edit(&[("protocol: tcp", "protocol: sctp")]), &["spec.firewall[0].protocol: expected \"tcp\", \"udp\", \"icmp\" or \"all\", got \"sctp\""]);
    check(&edit(&[("protocol: tcp", "protocol: TCP")]), &["spec.firewall[0].protocol: expected \"tcp\", \"udp\", \"icmp\" or \"all\", got \"TCP\""]);
    check(
        &edit(&[(
            "direction: ingress, protocol: tcp",
            "direction: inbound, protocol: tcp",
        )]),
        &["spec.firewall[0].direction: expected \"ingress\" or \"egress\", got \"inbound\""],
    );
    check(
        &edit(&[("source: 0.0.0.0/0", "source: anywhere")]),
        &["spec.firewall[0].source: \"anywhere\" is not a CIDR"],
    );
    check(
        &edit(&[("source: 10.0.0.0/8", "source: 10.1.0.0/8")]),
        &["spec.firewall[1].source: host bits set, did you mean 10.0.0.0/8"],
    );
    check(
        &edit(&[("{name: ping,", "{name: api,")]),
        &["spec.firewall[1].name: duplicate name \"api\", first used at spec.firewall[0]"],
    );
    check(
        &edit(&[("{name: ping,", "{name: ping.v4,")]),
        &["spec.firewall[1].name: \"ping.v4\" is not a DNS label"],
    );
}

#[test]
fn pool_rules() {
    check(
        &edit(&[("replicas: 5", "replicas: -1")]),
        &["spec.pools[1].replicas: must be between 0 and 1000, got -1"],
    );
    check(
        &edit(&[("replicas: 5", "replicas: 1001")]),
        &["spec.pools[1].replicas: must be between 0 and 1000, got 1001"],
    );
    check(&edit(&[("replicas: 5", "replicas: 1000")]), &[]);
    check(&edit(&[("replicas: 5", "replicas: 0")]), &[]);
    check(
        &edit(&[("role: worker", "role: etcd")]),
        &["spec.pools[1].role: expected \"control-plane\" or \"worker\", got \"etcd\""],
    );
    check(
        &edit(&[("machineType: m5.xlarge", "machineType: \"\"")]),
        &["spec.pools[1].machineType: must not be empty"],
    );
    check(
        &edit(&[(
            "image: ubuntu-24.04, subnets: [a, b]",
            "image: \" \", subnets: [a, b]",
        )]),
        &["spec.pools[1].image: must not be empty"],
    );
    check(
        &edit(&[("subnets: [a, b]", "subnets: []")]),
        &["spec.pools[1].subnets: must name at least one subnet"],
    );
    check(
        &edit(&[("subnets: [a, b]", "subnets: [a, c]")]),
        &["spec.pools[1].subnets[1]: no subnet named \"c\""],
    );
    check(&edit(&[("subnets: [a, b]", "subnets: [b, a, b]")]), &["spec.pools[1].subnets[2]: subnet \"b\" is listed twice, first at spec.pools[1].subnets[0]"]);
    check(
        &edit(&[("{name: workers,", "{name: control-plane,")]),
        &["spec.pools[1].name: duplicate name \"control-plane\", first used at spec.pools[0]"],
    );
    check(
        &edit(&[("{name: workers,", "{name: Workers,")]),
        &["spec.pools[1].name: \"Workers\" is not a DNS label"],
    );
}

#[test]
fn five_different_errors_show_at_once() {
    check(
        &edit(&[
            ("kind: Cluster", "kind: Clutser"),
            ("provider: sim", "provider: gcp"),
            ("cidr: 10.0.1.0/24", "cidr: 10.0.1.1/24"),
            ("ports: \"443\"", "ports: \"0\""),
            ("replicas: 5", "replicas: 1001"),
            ("subnets: [a]", "subnets: [x]"),
        ]),
        &[
            "kind: expected \"Cluster\", got \"Clutser\"",
            "spec.provider: unknown provider \"gcp\"",
            "spec.network.subnets[0].cidr: host bits set, did you mean 10.0.1.0/24",
            "spec.firewall[0].ports: port 0 is out of range",
            "spec.pools[0].subnets[0]: no subnet named \"x\"",
            "spec.pools[1].replicas: must be between 0 and 1000, got 1001",
        ],
    );
}
