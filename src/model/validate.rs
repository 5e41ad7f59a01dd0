//! The rules of a valid manifest that its types cannot express.
//!
//! [`validate`] reports every broken rule at once, each at the path of the
//! field that breaks it, so a user fixes a manifest in one round trip instead
//! of one error at a time. Paths index lists as the user wrote them, so
//! validation runs before [`Manifest::normalize`] sorts anything.
//!
//! The rules, field by field:
//!
//! - `apiVersion` is `cairn/v1` and `kind` is `Cluster`.
//! - `metadata.name` and the names of subnets, firewall rules and pools are
//!   DNS labels (see [`is_dns_label`]). Names are unique within their list; a
//!   duplicate is reported at its second occurrence, naming the first.
//! - Label keys are 1 to 63 characters of `A-Z a-z 0-9 . _ / -`. Label values
//!   are at most 63 characters (possibly none) and contain no control,
//!   line separator or bidirectional formatting characters (`text.rs`). This is simpler than Kubernetes' rule on purpose: labels here
//!   are for people and for filtering, not for selectors.
//! - `spec.provider` is `sim` or `exec:<plugin-name>`, the name a DNS label.
//! - `spec.region` is 1 to 63 characters of `a-z 0-9 -`.
//! - `spec.kubernetesVersion` is a strict semantic version (`1.31.2`).
//! - Every CIDR parses and has no host bits set (`10.0.1.0/24`, not
//!   `10.0.1.5/24`); this holds for firewall rule sources too. Subnets lie
//!   inside the network, in the same IP family, and do not overlap each other.
//! - A subnet's `zone`, when given, is not empty.
//! - A firewall rule's `direction` is `ingress` or `egress`; its `protocol` is
//!   `tcp`, `udp`, `icmp` or `all`; `ports` is required for tcp and udp, as
//!   `N` or `N-M` with `1 <= N <= M <= 65535`, and forbidden for icmp and all.
//! - A pool's `role` is `control-plane` or `worker`; `replicas` is in
//!   `0..=1000`; `machineType` and `image` are not empty; `subnets` names at
//!   least one subnet of this manifest, each at most once.
//! - `spec.policy.drift` is `correct` or `report`.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::manifest::{FirewallRule, Manifest, Pool, Subnet, API_VERSION, KIND_CLUSTER};

/// One problem with one field of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// Where the problem is, e.g. `spec.network.subnets[1].cidr`. The empty
    /// string stands for the whole document.
    pub path: String,
    /// What is wrong there, in words meant for the person who wrote it.
    pub reason: String,
}

impl FieldError {
    /// Creates an error at `path` saying `reason`.
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> FieldError {
        FieldError {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

/// The largest number of replicas a pool may ask for.
pub const MAX_REPLICAS: i64 = 1000;

/// Returns whether `s` is a DNS label as in RFC 1123: 1 to 63 characters of
/// lowercase ASCII letters, digits and `-`, starting and ending with a letter
/// or a digit.
///
/// Cluster, subnet, firewall rule and pool names are DNS labels, so they are
/// safe in URLs, stream names and cloud resource names.
pub fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    let alphanumeric = |byte: &u8| byte.is_ascii_lowercase() || byte.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(|byte| alphanumeric(byte) || *byte == b'-')
        && bytes.first().is_some_and(alphanumeric)
        && bytes.last().is_some_and(alphanumeric)
}

/// Checks every rule of a manifest and returns every broken one, in document
/// order. An empty result means the manifest is valid.
pub fn validate(manifest: &Manifest) -> Vec<FieldError> {
    let mut errors = Errors::default();

    if manifest.api_version != API_VERSION {
        errors.push(
            "apiVersion",
            format!("expected {API_VERSION:?}, got {:?}", manifest.api_version),
        );
    }
    if manifest.kind != KIND_CLUSTER {
        errors.push(
            "kind",
            format!("expected {KIND_CLUSTER:?}, got {:?}", manifest.kind),
        );
    }
    errors.dns_label("metadata.name", &manifest.metadata.name);
    for (key, value) in &manifest.metadata.labels {
        let path = format!("metadata.labels.{key}");
        if !is_label_key(key) {
            errors.push(
                &path,
                format!("{key:?} is not a label key (1-63 characters of A-Z, a-z, 0-9, '.', '_', '/' and '-')"),
            );
        }
        // Printed in tables: the rule of recorded text (`text.rs`), tabs included.
        let printable = value
            .chars()
            .all(|c| c != '\t' && super::is_allowed_in_text(c));
        if value.chars().count() > 63 || !printable {
            errors.push(
                &path,
                "label value must be at most 63 characters, without control or bidirectional formatting characters",
            );
        }
    }

    let spec = &manifest.spec;
    let provider_ok = spec.provider == "sim"
        || spec
            .provider
            .strip_prefix("exec:")
            .is_some_and(is_dns_label);
    if !provider_ok {
        errors.push(
            "spec.provider",
            format!(
                "unknown provider {:?} (expected \"sim\" or \"exec:<plugin-name>\")",
                spec.provider
            ),
        );
    }
    let region_ok = !spec.region.is_empty()
        && spec.region.len() <= 63
        && spec
            .region
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-');
    if !region_ok {
        errors.push(
            "spec.region",
            format!(
                "{:?} is not a region (1-63 characters of a-z, 0-9 and '-')",
                spec.region
            ),
        );
    }
    if semver::Version::parse(&spec.kubernetes_version).is_err() {
        errors.push(
            "spec.kubernetesVersion",
            format!(
                "{:?} is not a semantic version (expected MAJOR.MINOR.PATCH, e.g. 1.31.2)",
                spec.kubernetes_version
            ),
        );
    }

    let network = errors.cidr("spec.network.cidr", &spec.network.cidr);
    validate_subnets(&mut errors, network, &spec.network.subnets);
    let mut rule_names = FirstIndex::default();
    for (index, rule) in spec.firewall.iter().enumerate() {
        let path = format!("spec.firewall[{index}]");
        validate_firewall_rule(&mut errors, &path, rule);
        errors.duplicate_name("spec.firewall", index, &rule.name, &mut rule_names);
    }
    let subnet_names: BTreeSet<&str> = spec
        .network
        .subnets
        .iter()
        .map(|subnet| subnet.name.as_str())
        .collect();
    let mut pool_names = FirstIndex::default();
    for (index, pool) in spec.pools.iter().enumerate() {
        let path = format!("spec.pools[{index}]");
        validate_pool(&mut errors, &path, pool, &subnet_names);
        errors.duplicate_name("spec.pools", index, &pool.name, &mut pool_names);
    }

    if !matches!(spec.policy.drift.as_str(), "correct" | "report") {
        errors.push(
            "spec.policy.drift",
            format!(
                "expected \"correct\" or \"report\", got {:?}",
                spec.policy.drift
            ),
        );
    }

    errors.0
}

/// Label keys: 1 to 63 characters of `A-Z a-z 0-9 . _ / -`.
fn is_label_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 63
        && key
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'/' | b'-'))
}

fn validate_subnets(errors: &mut Errors, network: Option<IpNet>, subnets: &[Subnet]) {
    // The subnets seen so far whose CIDR is valid, to check overlaps against.
    let mut valid: Vec<(usize, &Subnet, IpNet)> = Vec::new();
    let mut names = FirstIndex::default();
    for (index, subnet) in subnets.iter().enumerate() {
        let path = format!("spec.network.subnets[{index}]");
        errors.dns_label(&format!("{path}.name"), &subnet.name);
        errors.duplicate_name("spec.network.subnets", index, &subnet.name, &mut names);
        let cidr_path = format!("{path}.cidr");
        if let Some(net) = errors.cidr(&cidr_path, &subnet.cidr) {
            if let Some(network) = network {
                if network.addr().is_ipv4() != net.addr().is_ipv4() {
                    errors.push(
                        &cidr_path,
                        format!("{net} is not in the same IP family as the network {network}"),
                    );
                } else if !network.contains(&net) {
                    errors.push(
                        &cidr_path,
                        format!("{net} is not inside the network {network}"),
                    );
                }
            }
            let overlapping = valid
                .iter()
                .find(|(_, _, other)| net.contains(other) || other.contains(&net));
            if let Some((other_index, other, other_net)) = overlapping {
                errors.push(
                    &cidr_path,
                    format!(
                        "{net} overlaps subnet {:?} ({other_net}) at spec.network.subnets[{other_index}]",
                        other.name
                    ),
                );
            }
            valid.push((index, subnet, net));
        }
        if subnet
            .zone
            .as_deref()
            .is_some_and(|zone| zone.trim().is_empty())
        {
            errors.push(format!("{path}.zone"), "must not be empty when given");
        }
    }
}

fn validate_firewall_rule(errors: &mut Errors, path: &str, rule: &FirewallRule) {
    errors.dns_label(&format!("{path}.name"), &rule.name);
    if !matches!(rule.direction.as_str(), "ingress" | "egress") {
        errors.push(
            format!("{path}.direction"),
            format!(
                "expected \"ingress\" or \"egress\", got {:?}",
                rule.direction
            ),
        );
    }
    let ports_path = format!("{path}.ports");
    match (rule.protocol.as_str(), rule.ports.as_deref()) {
        ("tcp" | "udp", None) => errors.push(
            &ports_path,
            format!("required for protocol {}", rule.protocol),
        ),
        ("icmp" | "all", Some(_)) => errors.push(
            &ports_path,
            format!("not allowed for protocol {}", rule.protocol),
        ),
        ("tcp" | "udp" | "icmp" | "all", _) => {}
        (protocol, _) => errors.push(
            format!("{path}.protocol"),
            format!("expected \"tcp\", \"udp\", \"icmp\" or \"all\", got {protocol:?}"),
        ),
    }
    if let Some(ports) = rule.ports.as_deref() {
        if let Err(reason) = check_port_range(ports) {
            errors.push(&ports_path, reason);
        }
    }
    errors.cidr(&format!("{path}.source"), &rule.source);
}

/// Checks `N` or `N-M` with `1 <= N <= M <= 65535`; the error names the bad port.
fn check_port_range(ports: &str) -> Result<(), String> {
    let (start, end) = ports.split_once('-').unwrap_or((ports, ports));
    let (start, end) = match (parse_port(start), parse_port(end)) {
        (Some(start), Some(end)) => (start?, end?),
        _ => {
            return Err(format!(
                "{ports:?} is not a port or a port range (expected N or N-M, e.g. 443 or 8000-8080)"
            ))
        }
    };
    if start > end {
        return Err(format!(
            "port range {ports} is reversed: {start} is greater than {end}"
        ));
    }
    Ok(())
}

/// Parses one port number: `None` if it is not a number at all, an error if
/// it is a number outside `1..=65535`.
fn parse_port(text: &str) -> Option<Result<u32, String>> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let out_of_range = || format!("port {text} is out of range (1-65535)");
    Some(match text.parse::<u32>() {
        Ok(port) if (1..=65535).contains(&port) => Ok(port),
        _ => Err(out_of_range()),
    })
}

fn validate_pool(errors: &mut Errors, path: &str, pool: &Pool, subnet_names: &BTreeSet<&str>) {
    errors.dns_label(&format!("{path}.name"), &pool.name);
    if !matches!(pool.role.as_str(), "control-plane" | "worker") {
        errors.push(
            format!("{path}.role"),
            format!(
                "expected \"control-plane\" or \"worker\", got {:?}",
                pool.role
            ),
        );
    }
    if !(0..=MAX_REPLICAS).contains(&pool.replicas) {
        errors.push(
            format!("{path}.replicas"),
            format!(
                "must be between 0 and {MAX_REPLICAS}, got {}",
                pool.replicas
            ),
        );
    }
    if pool.machine_type.trim().is_empty() {
        errors.push(format!("{path}.machineType"), "must not be empty");
    }
    if pool.image.trim().is_empty() {
        errors.push(format!("{path}.image"), "must not be empty");
    }
    if pool.subnets.is_empty() {
        errors.push(format!("{path}.subnets"), "must name at least one subnet");
    }
    let mut listed = FirstIndex::default();
    for (index, name) in pool.subnets.iter().enumerate() {
        let subnet_path = format!("{path}.subnets[{index}]");
        if !subnet_names.contains(name.as_str()) {
            errors.push(&subnet_path, format!("no subnet named {name:?}"));
        }
        if let Some(first) = listed.earlier(name, index) {
            errors.push(
                &subnet_path,
                format!("subnet {name:?} is listed twice, first at {path}.subnets[{first}]"),
            );
        }
    }
}

/// The errors found so far, in the order found.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError::new(path, reason));
    }

    fn dns_label(&mut self, path: &str, value: &str) {
        if !is_dns_label(value) {
            self.push(
                path,
                format!(
                    "{value:?} is not a DNS label (1-63 characters of a-z, 0-9 and '-', \
                     starting and ending with a letter or digit)"
                ),
            );
        }
    }

    /// Checks a CIDR and returns it when it is valid, so that callers can go
    /// on to check containment and overlap without reporting it twice.
    fn cidr(&mut self, path: &str, value: &str) -> Option<IpNet> {
        match IpNet::from_str(value) {
            Err(_) => {
                self.push(
                    path,
                    format!("{value:?} is not a CIDR (expected ADDRESS/PREFIX, e.g. 10.0.0.0/16)"),
                );
                None
            }
            Ok(net) if net.trunc() != net => {
                self.push(path, format!("host bits set, did you mean {}", net.trunc()));
                None
            }
            Ok(net) => Some(net),
        }
    }

    /// Reports a name already used earlier in the same list, at this later
    /// occurrence, naming the first.
    fn duplicate_name<'a>(
        &mut self,
        list_path: &str,
        index: usize,
        name: &'a str,
        names: &mut FirstIndex<'a>,
    ) {
        if let Some(first) = names.earlier(name, index) {
            self.push(
                format!("{list_path}[{index}].name"),
                format!("duplicate name {name:?}, first used at {list_path}[{first}]"),
            );
        }
    }
}

/// Where each name of a list was first seen.
#[derive(Default)]
struct FirstIndex<'a>(HashMap<&'a str, usize>);

impl<'a> FirstIndex<'a> {
    /// Records `name` at `index` and returns the index where it was first
    /// seen, if that was earlier.
    fn earlier(&mut self, name: &'a str, index: usize) -> Option<usize> {
        let first = *self.0.entry(name).or_insert(index);
        (first != index).then_some(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The rules as a user meets them, through `parse_manifest`, are tested
    // in `parse/rules_tests.rs`, so that this module does not use `parse`.

    #[test]
    fn dns_labels() {
        for label in ["a", "0", "prod-eu", "a-b-c", "x1", &"y".repeat(63)] {
            assert!(is_dns_label(label), "{label:?} should be a DNS label");
        }
        for label in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "é",
            " a",
            &"y".repeat(64),
        ] {
            assert!(!is_dns_label(label), "{label:?} should not be a DNS label");
        }
    }
}
