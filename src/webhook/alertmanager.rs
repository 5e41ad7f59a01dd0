//! The Alertmanager receiver: a firing alert that a rule matches replaces a
//! machine or grows a pool. Pure functions, no IO.
//!
//! Alertmanager sends a group's notification again and again while its alerts
//! fire (`repeat_interval`), and again when one of them changes. Each action's
//! key is `alert/<rule>/<fingerprint>/<startsAt>`: a repeat of the same alert
//! reuses the key and the inbox does not act twice, while the same alert
//! firing again later has a new `startsAt` and acts again.
//!
//! The rules, in the hook's settings (TOML, the action's fields beside the
//! rule's own):
//!
//! ```toml
//! [hooks.alerts]
//! type = "alertmanager"
//! secret = "..."                        # the bearer token Alertmanager sends
//!
//! [[hooks.alerts.rules]]
//! name = "replace-dead-nodes"           # unique; part of the action keys
//! match = { alertname = "NodeDown", severity = "page" }  # every label must equal
//! cluster_label = "cluster"             # the label naming the cluster (default)
//! action = "replace_machine"
//! machine_label = "instance"            # the label naming the machine (default)
//!
//! [[hooks.alerts.rules]]
//! name = "grow-saturated-pools"
//! match = { alertname = "PoolSaturated" }
//! cluster = "prod-eu"                   # a fixed cluster instead of cluster_label
//! action = "scale_pool"
//! pool_label = "pool"                   # or a fixed `pool = "workers"`
//! by = 1                                # replicas added per alert, at least 1
//! max = 10                              # never grown past this
//! ```
//!
//! A rule is read flat, as above, through a private struct that refuses
//! unknown keys and keys of the other action (serde's `flatten` would accept
//! any key silently).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::action::{HookAction, PlannedHookAction, Skipped};
use super::payload::{from_json, PayloadError};

/// The reason of a `Skipped` for a resolved alert: it asks for nothing.
pub const RESOLVED: &str = "resolved";

/// The longest fingerprint accepted (Alertmanager's are 16 hex digits); it is
/// part of the action keys, which the store bounds.
pub const MAX_FINGERPRINT_LEN: usize = 64;

/// The payload version this receiver reads.
pub const PAYLOAD_VERSION: &str = "4";

/// The settings of a `type = "alertmanager"` hook: its rules, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerSettings {
    /// The first rule whose labels all match an alert acts on it.
    #[serde(default)]
    pub rules: Vec<AlertRule>,
}

/// Which alerts a rule acts on, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawAlertRule")]
pub struct AlertRule {
    /// Unique among the hook's rules; part of the action keys.
    pub name: String,
    /// Label name to value; an alert matches when it has every one of them
    /// (at least one).
    pub matchers: BTreeMap<String, String>,
    /// The cluster acted on; when unset, the value of `cluster_label`.
    pub cluster: Option<String>,
    /// The label naming the cluster when `cluster` is unset.
    pub cluster_label: String,
    /// What the rule does.
    pub action: RuleAction,
}

/// What a rule does to the cluster of a matching alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum RuleAction {
    /// Replaces the machine named by the alert's `machine_label`.
    ReplaceMachine { machine_label: String },
    /// Grows a pool by `by` replicas, never past `max`.
    ScalePool {
        /// A fixed pool; when unset, the value of `pool_label`.
        pool: Option<String>,
        /// The label naming the pool when `pool` is unset.
        pool_label: String,
        by: i64,
        max: i64,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawActionKind {
    ReplaceMachine,
    ScalePool,
}

/// A rule as written: every key of both actions, so that unknown keys and
/// keys of the other action are refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlertRule {
    name: String,
    #[serde(rename = "match")]
    matchers: BTreeMap<String, String>,
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    cluster_label: Option<String>,
    action: RawActionKind,
    #[serde(default)]
    machine_label: Option<String>,
    #[serde(default)]
    pool: Option<String>,
    #[serde(default)]
    pool_label: Option<String>,
    #[serde(default)]
    by: Option<i64>,
    #[serde(default)]
    max: Option<i64>,
}

impl TryFrom<RawAlertRule> for AlertRule {
    type Error = String;

    fn try_from(raw: RawAlertRule) -> Result<AlertRule, String> {
        let name = raw.name;
        let action = match raw.action {
            RawActionKind::ReplaceMachine => {
                let foreign = [
                    ("pool", raw.pool.is_some()),
                    ("pool_label", raw.pool_label.is_some()),
                    ("by", raw.by.is_some()),
                    ("max", raw.max.is_some()),
                ];
                if let Some((key, _)) = foreign.iter().find(|(_, set)| *set) {
                    return Err(format!(
                        "rule {name:?}: `{key}` belongs to action scale_pool, not replace_machine"
                    ));
                }
                RuleAction::ReplaceMachine {
                    machine_label: raw.machine_label.unwrap_or_else(|| "instance".to_string()),
                }
            }
            RawActionKind::ScalePool => {
                if raw.machine_label.is_some() {
                    return Err(format!(
                        "rule {name:?}: `machine_label` belongs to action replace_machine, not scale_pool"
                    ));
                }
                let (Some(by), Some(max)) = (raw.by, raw.max) else {
                    return Err(format!(
                        "rule {name:?}: action scale_pool needs `by` (replicas added) and `max` (the most replicas)"
                    ));
                };
                RuleAction::ScalePool {
                    pool: raw.pool,
                    pool_label: raw.pool_label.unwrap_or_else(|| "pool".to_string()),
                    by,
                    max,
                }
            }
        };
        Ok(AlertRule {
            name,
            matchers: raw.matchers,
            cluster: raw.cluster,
            cluster_label: raw.cluster_label.unwrap_or_else(|| "cluster".to_string()),
            action,
        })
    }
}

/// Checks the rules at config load: unique names usable in a key, at least
/// one matcher, `by` and `max` at least 1, fixed clusters and pools that are
/// DNS labels.
pub fn validate(settings: &AlertmanagerSettings) -> Result<(), String> {
    let mut names = BTreeSet::new();
    for (index, rule) in settings.rules.iter().enumerate() {
        let at = format!("rules[{index}] ({:?})", rule.name);
        if rule.name.is_empty()
            || rule.name.len() > 63
            || rule.name.contains('/')
            || rule.name.contains(char::is_whitespace)
        {
            return Err(format!(
                "{at}: name must be 1 to 63 characters, without `/` or spaces (it is part of the action keys)"
            ));
        }
        if !names.insert(rule.name.as_str()) {
            return Err(format!("{at}: another rule has the same name"));
        }
        if rule.matchers.is_empty() {
            return Err(format!(
                "{at}: match must name at least one label, or the rule would act on every alert"
            ));
        }
        if let Some(cluster) = &rule.cluster {
            if !crate::model::is_dns_label(cluster) {
                return Err(format!("{at}: cluster {cluster:?} is not a cluster name"));
            }
        }
        if let RuleAction::ScalePool { pool, by, max, .. } = &rule.action {
            if *by < 1 {
                return Err(format!("{at}: by must be at least 1, found {by}"));
            }
            if *max < 1 {
                return Err(format!("{at}: max must be at least 1, found {max}"));
            }
            if let Some(pool) = pool {
                if !crate::model::is_dns_label(pool) {
                    return Err(format!("{at}: pool {pool:?} is not a pool name"));
                }
            }
        }
    }
    Ok(())
}

/// Whether an alert (or a whole notification) is firing or resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

/// An Alertmanager webhook notification (payload version 4): one group of
/// alerts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// Always `"4"` here.
    pub version: String,
    /// Identifies the group the notification is about.
    #[serde(default)]
    pub group_key: String,
    /// How many alerts Alertmanager left out (`max_alerts`).
    #[serde(default)]
    pub truncated_alerts: u64,
    /// `resolved` when every alert of the group is.
    pub status: AlertStatus,
    /// The name of the Alertmanager receiver that sent it.
    pub receiver: String,
    #[serde(default)]
    pub group_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub common_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub common_annotations: BTreeMap<String, String>,
    /// The Alertmanager's own address.
    #[serde(default, rename = "externalURL")]
    pub external_url: String,
    pub alerts: Vec<Alert>,
}

/// One alert of a notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub status: AlertStatus,
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// When the alert started firing, RFC 3339, kept as sent (it is part of
    /// the action keys).
    pub starts_at: String,
    /// When it resolved; `0001-01-01T00:00:00Z` while firing.
    #[serde(default)]
    pub ends_at: String,
    #[serde(default, rename = "generatorURL")]
    pub generator_url: String,
    /// Identifies the alert by its labels: hex digits.
    pub fingerprint: String,
}

#[derive(Deserialize)]
struct VersionOnly {
    version: String,
}

/// Reads an Alertmanager webhook payload. A version other than
/// [`PAYLOAD_VERSION`] is refused before anything else is read; errors name
/// the field (`alerts[2].fingerprint`).
pub fn parse(body: &[u8]) -> Result<Notification, PayloadError> {
    let VersionOnly { version } = from_json(body)?;
    if version != PAYLOAD_VERSION {
        return Err(PayloadError::field(
            "version",
            format!("expected \"{PAYLOAD_VERSION}\", found {version:?}"),
        ));
    }
    let notification: Notification = from_json(body)?;
    for (index, alert) in notification.alerts.iter().enumerate() {
        if alert.fingerprint.is_empty()
            || alert.fingerprint.len() > MAX_FINGERPRINT_LEN
            || !alert
                .fingerprint
                .bytes()
                .all(|byte| byte.is_ascii_hexdigit())
        {
            return Err(PayloadError::field(
                format!("alerts[{index}].fingerprint"),
                format!(
                    "expected 1 to {MAX_FINGERPRINT_LEN} hex digits, found {:?}",
                    alert.fingerprint
                ),
            ));
        }
        if chrono::DateTime::parse_from_rfc3339(&alert.starts_at).is_err() {
            return Err(PayloadError::field(
                format!("alerts[{index}].startsAt"),
                format!("expected an RFC 3339 time, found {:?}", alert.starts_at),
            ));
        }
    }
    Ok(notification)
}

/// The delivery id of a notification: Alertmanager sends none, so it is
/// `am-` and the first 32 hex digits of the body's SHA-256. An identical
/// repeat is the same delivery.
pub fn delivery_id(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    format!("am-{}", hex::encode(&digest[..16]))
}

/// Plans a notification: for each firing alert, the first rule whose
/// matchers all hold acts. Resolved alerts, alerts no rule matches and
/// alerts lacking a label their rule reads are skipped, by fingerprint.
pub fn plan(
    settings: &AlertmanagerSettings,
    notification: &Notification,
) -> (Vec<PlannedHookAction>, Vec<Skipped>) {
    let mut actions = Vec::new();
    let mut skipped = Vec::new();
    for alert in &notification.alerts {
        let skip = |reason: String| Skipped {
            subject: alert.fingerprint.clone(),
            reason,
        };
        if alert.status == AlertStatus::Resolved {
            skipped.push(skip(RESOLVED.to_string()));
            continue;
        }
        let Some(rule) = settings.rules.iter().find(|rule| {
            rule.matchers
                .iter()
                .all(|(label, value)| alert.labels.get(label) == Some(value))
        }) else {
            skipped.push(skip("no rule matches".to_string()));
            continue;
        };
        match planned(rule, alert, notification) {
            Ok(action) => actions.push(action),
            Err(reason) => skipped.push(skip(reason)),
        }
    }
    if notification.truncated_alerts > 0 {
        skipped.push(Skipped {
            subject: "truncatedAlerts".to_string(),
            reason: format!(
                "Alertmanager left out {} alerts of the group (max_alerts); they are not acted on",
                notification.truncated_alerts
            ),
        });
    }
    (actions, skipped)
}

/// The action `rule` takes on `alert`, or why it cannot.
fn planned(
    rule: &AlertRule,
    alert: &Alert,
    notification: &Notification,
) -> Result<PlannedHookAction, String> {
    let label = |name: &str| {
        alert.labels.get(name).cloned().ok_or_else(|| {
            format!(
                "rule {}: the alert has no label {name:?} to read",
                rule.name
            )
        })
    };
    let cluster = match &rule.cluster {
        Some(cluster) => cluster.clone(),
        None => label(&rule.cluster_label)?,
    };
    let action = match &rule.action {
        RuleAction::ReplaceMachine { machine_label } => HookAction::ReplaceMachine {
            cluster,
            machine: label(machine_label)?,
        },
        RuleAction::ScalePool {
            pool,
            pool_label,
            by,
            max,
        } => HookAction::ScaleBy {
            cluster,
            pool: match pool {
                Some(pool) => pool.clone(),
                None => label(pool_label)?,
            },
            by: *by,
            max: *max,
        },
    };
    let details = BTreeMap::from([
        (
            "alertname".to_string(),
            alert.labels.get("alertname").cloned().unwrap_or_default(),
        ),
        ("fingerprint".to_string(), alert.fingerprint.clone()),
        ("startsAt".to_string(), alert.starts_at.clone()),
        ("rule".to_string(), rule.name.clone()),
        ("receiver".to_string(), notification.receiver.clone()),
    ]);
    Ok(PlannedHookAction {
        action,
        key: format!(
            "alert/{}/{}/{}",
            rule.name, alert.fingerprint, alert.starts_at
        ),
        details,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRING: &str = include_str!("../../tests/fixtures/webhooks/alertmanager-firing.json");
    const RESOLVED: &str = include_str!("../../tests/fixtures/webhooks/alertmanager-resolved.json");

    const RULES: &str = r#"
        [[rules]]
        name = "replace-dead-nodes"
        match = { alertname = "NodeDown", severity = "page" }
        action = "replace_machine"

        [[rules]]
        name = "grow-saturated-pools"
        match = { alertname = "PoolSaturated" }
        action = "scale_pool"
        by = 1
        max = 10
    "#;

    fn edited(pointer: &str, value: serde_json::Value) -> Vec<u8> {
        crate::webhook::payload::test_edits::edited(FIRING, pointer, value)
    }

    fn without(parent: &str, field: &str) -> Vec<u8> {
        crate::webhook::payload::test_edits::without(FIRING, parent, field)
    }

    fn settings() -> AlertmanagerSettings {
        let settings: AlertmanagerSettings = toml::from_str(RULES).unwrap();
        validate(&settings).unwrap();
        settings
    }

    #[test]
    fn reads_the_firing_fixture() {
        let notification = parse(FIRING.as_bytes()).unwrap();
        assert_eq!(notification.version, "4");
        assert_eq!(notification.status, AlertStatus::Firing);
        assert_eq!(notification.receiver, "cairn");
        assert_eq!(
            notification.group_key,
            "{}/{severity=\"page\"}:{cluster=\"prod-eu\"}"
        );
        assert_eq!(
            notification.external_url,
            "http://alertmanager.example.com:9093"
        );
        assert_eq!(notification.truncated_alerts, 0);
        assert_eq!(notification.alerts.len(), 2);
        let node_down = &notification.alerts[0];
        assert_eq!(node_down.labels["instance"], "workers-1");
        assert_eq!(node_down.starts_at, "2025-03-04T09:20:31.452Z");
        assert_eq!(node_down.fingerprint, "5e2b4f6cd1e3a7b9");
        assert!(node_down.generator_url.starts_with("http://prometheus"));
        assert_eq!(notification.alerts[1].labels["pool"], "workers");

        let resolved = parse(RESOLVED.as_bytes()).unwrap();
        assert_eq!(resolved.status, AlertStatus::Resolved);
        assert!(resolved
            .alerts
            .iter()
            .all(|alert| alert.status == AlertStatus::Resolved));
    }

    #[test]
    fn errors_name_the_field() {
        let error = |body: &[u8]| parse(body).unwrap_err().to_string();
        assert_eq!(
            error(&edited("/version", "5".into())),
            "`version`: expected \"4\", found \"5\""
        );
        assert_eq!(
            error(&edited("/version", 4.into())),
            "`version`: invalid type: integer `4`, expected a string"
        );
        assert_eq!(error(&without("", "version")), "`version`: missing field");
        assert_eq!(
            error(&without("/alerts/1", "fingerprint")),
            "`alerts[1].fingerprint`: missing field"
        );
        assert_eq!(
            error(&edited("/alerts/1/fingerprint", "../x".into())),
            "`alerts[1].fingerprint`: expected 1 to 64 hex digits, found \"../x\""
        );
        assert_eq!(
            error(&edited("/alerts/0/startsAt", "yesterday".into())),
            "`alerts[0].startsAt`: expected an RFC 3339 time, found \"yesterday\""
        );
        assert_eq!(
            error(&edited("/alerts/0/status", "pending".into())),
            "`alerts[0].status`: unknown variant `pending`, expected `firing` or `resolved`"
        );
        assert_eq!(
            error(&edited("/alerts/1/labels/pool", 3.into())),
            "`alerts[1].labels.pool`: invalid type: integer `3`, expected a string"
        );
        assert_eq!(
            error(&edited("/truncatedAlerts", (-1).into())),
            "`truncatedAlerts`: invalid value: integer `-1`, expected u64"
        );
        assert!(matches!(
            parse(b"{\"version\": "),
            Err(PayloadError::Syntax(_))
        ));
        assert_eq!(
            error(b"[1, 2]"),
            "the body: expected a JSON object, found an array"
        );
    }

    #[test]
    fn delivery_ids_follow_the_body() {
        let id = delivery_id(FIRING.as_bytes());
        assert_eq!(id.len(), 3 + 32);
        assert!(id.starts_with("am-"));
        assert_eq!(id, delivery_id(FIRING.as_bytes()));
        assert_ne!(id, delivery_id(RESOLVED.as_bytes()));
        assert_eq!(delivery_id(b""), "am-e3b0c44298fc1c149afbf4c8996fb924");
    }

    #[test]
    fn firing_alerts_replace_a_machine_and_grow_a_pool() {
        let notification = parse(FIRING.as_bytes()).unwrap();
        let (actions, skipped) = plan(&settings(), &notification);
        assert_eq!(skipped, vec![]);
        assert_eq!(actions.len(), 2);
        assert_eq!(
            actions[0].action,
            HookAction::ReplaceMachine {
                cluster: "prod-eu".to_string(),
                machine: "workers-1".to_string(),
            }
        );
        assert_eq!(
            actions[0].key,
            "alert/replace-dead-nodes/5e2b4f6cd1e3a7b9/2025-03-04T09:20:31.452Z"
        );
        assert_eq!(
            actions[0].details,
            BTreeMap::from([
                ("alertname".to_string(), "NodeDown".to_string()),
                ("fingerprint".to_string(), "5e2b4f6cd1e3a7b9".to_string()),
                (
                    "startsAt".to_string(),
                    "2025-03-04T09:20:31.452Z".to_string()
                ),
                ("rule".to_string(), "replace-dead-nodes".to_string()),
                ("receiver".to_string(), "cairn".to_string()),
            ])
        );
        assert_eq!(
            actions[1].action,
            HookAction::ScaleBy {
                cluster: "prod-eu".to_string(),
                pool: "workers".to_string(),
                by: 1,
                max: 10,
            }
        );
        assert_eq!(
            actions[1].key,
            "alert/grow-saturated-pools/a81f09c3b2d4e657/2025-03-04T09:18:01.007Z"
        );
    }

    #[test]
    fn a_repeat_reuses_the_keys_and_a_new_firing_does_not() {
        let settings = settings();
        let first = plan(&settings, &parse(FIRING.as_bytes()).unwrap()).0;
        // Alertmanager's repeat: same alerts, the group re-sent later.
        let repeat_body = edited("/alerts/1/annotations/description", "avg CPU 93.0%".into());
        assert_ne!(delivery_id(&repeat_body), delivery_id(FIRING.as_bytes()));
        let repeat = plan(&settings, &parse(&repeat_body).unwrap()).0;
        let keys = |actions: &[PlannedHookAction]| -> Vec<String> {
            actions.iter().map(|action| action.key.clone()).collect()
        };
        assert_eq!(keys(&first), keys(&repeat));

        let again = edited("/alerts/0/startsAt", "2025-03-05T02:00:00Z".into());
        let later = plan(&settings, &parse(&again).unwrap()).0;
        assert_ne!(later[0].key, first[0].key);
        assert_eq!(later[1].key, first[1].key);
    }

    #[test]
    fn resolved_alerts_do_nothing() {
        let notification = parse(RESOLVED.as_bytes()).unwrap();
        let (actions, skipped) = plan(&settings(), &notification);
        assert_eq!(actions, vec![]);
        assert_eq!(
            skipped,
            vec![
                Skipped {
                    subject: "5e2b4f6cd1e3a7b9".to_string(),
                    reason: "resolved".to_string(),
                },
                Skipped {
                    subject: "a81f09c3b2d4e657".to_string(),
                    reason: "resolved".to_string(),
                },
            ]
        );
    }

    #[test]
    fn unmatched_alerts_and_missing_labels_are_skipped() {
        let mut notification = parse(FIRING.as_bytes()).unwrap();
        notification.alerts[0]
            .labels
            .insert("severity".to_string(), "ticket".to_string());
        notification.alerts[1].labels.remove("pool");
        notification.truncated_alerts = 3;
        let (actions, skipped) = plan(&settings(), &notification);
        assert_eq!(actions, vec![]);
        assert_eq!(
            skipped,
            vec![
                Skipped {
                    subject: "5e2b4f6cd1e3a7b9".to_string(),
                    reason: "no rule matches".to_string(),
                },
                Skipped {
                    subject: "a81f09c3b2d4e657".to_string(),
                    reason: "rule grow-saturated-pools: the alert has no label \"pool\" to read"
                        .to_string(),
                },
                Skipped {
                    subject: "truncatedAlerts".to_string(),
                    reason: "Alertmanager left out 3 alerts of the group (max_alerts); they are \
                             not acted on"
                        .to_string(),
                },
            ]
        );
    }

    #[test]
    fn the_first_matching_rule_acts_with_fixed_cluster_and_pool() {
        let settings: AlertmanagerSettings = toml::from_str(
            r#"
            [[rules]]
            name = "page-anything"
            match = { severity = "page" }
            cluster = "staging"
            action = "scale_pool"
            pool = "spare"
            by = 2
            max = 4

            [[rules]]
            name = "never-reached"
            match = { alertname = "NodeDown" }
            action = "replace_machine"
            machine_label = "node"
            "#,
        )
        .unwrap();
        validate(&settings).unwrap();
        let (actions, skipped) = plan(&settings, &parse(FIRING.as_bytes()).unwrap());
        assert_eq!(skipped, vec![]);
        assert_eq!(actions.len(), 2);
        for action in &actions {
            assert_eq!(
                action.action,
                HookAction::ScaleBy {
                    cluster: "staging".to_string(),
                    pool: "spare".to_string(),
                    by: 2,
                    max: 4,
                }
            );
            assert!(action.key.starts_with("alert/page-anything/"));
        }
    }

    #[test]
    fn rules_read_from_toml_and_validate() {
        let settings = settings();
        assert_eq!(
            settings.rules[0],
            AlertRule {
                name: "replace-dead-nodes".to_string(),
                matchers: BTreeMap::from([
                    ("alertname".to_string(), "NodeDown".to_string()),
                    ("severity".to_string(), "page".to_string()),
                ]),
                cluster: None,
                cluster_label: "cluster".to_string(),
                action: RuleAction::ReplaceMachine {
                    machine_label: "instance".to_string()
                },
            }
        );
        assert_eq!(
            settings.rules[1].action,
            RuleAction::ScalePool {
                pool: None,
                pool_label: "pool".to_string(),
                by: 1,
                max: 10,
            }
        );

        let refused = |text: &str| {
            toml::from_str::<AlertmanagerSettings>(text)
                .unwrap_err()
                .to_string()
        };
        let base = "[[rules]]\nname = \"r\"\nmatch = { a = \"b\" }\n";
        assert!(refused(&format!(
            "{base}action = \"replace_machine\"\nmachine_lable = \"x\"\n"
        ))
        .contains("machine_lable"));
        assert!(
            refused(&format!("{base}action = \"replace_machine\"\nby = 1\n"))
                .contains("`by` belongs to action scale_pool")
        );
        assert!(refused(&format!("{base}action = \"scale_pool\"\nby = 1\n")).contains("needs `by`"));
        assert!(refused(&format!("{base}action = \"reboot\"\n")).contains("reboot"));
        assert!(refused(&format!(
            "{base}action = \"scale_pool\"\nmachine_label = \"i\"\nby = 1\nmax = 2\n"
        ))
        .contains("`machine_label` belongs to action replace_machine"));

        let invalid = |text: &str| {
            let settings: AlertmanagerSettings = toml::from_str(text).unwrap();
            validate(&settings).unwrap_err()
        };
        assert!(
            invalid(&format!("{base}action = \"scale_pool\"\nby = 0\nmax = 2\n"))
                .contains("by must be at least 1")
        );
        assert!(
            invalid(&format!("{base}action = \"scale_pool\"\nby = 1\nmax = 0\n"))
                .contains("max must be at least 1")
        );
        assert!(
            invalid("[[rules]]\nname = \"r\"\nmatch = {}\naction = \"replace_machine\"\n")
                .contains("at least one label")
        );
        assert!(invalid(&format!(
            "{base}action = \"replace_machine\"\n{base}action = \"replace_machine\"\n"
        ))
        .contains("same name"));
        assert!(invalid(
            "[[rules]]\nname = \"a/b\"\nmatch = { a = \"b\" }\naction = \"replace_machine\"\n"
        )
        .contains("without `/`"));
        assert!(invalid(&format!(
            "{base}cluster = \"Prod EU\"\naction = \"replace_machine\"\n"
        ))
        .contains("not a cluster name"));
        assert_eq!(validate(&AlertmanagerSettings::default()), Ok(()));
    }
}
