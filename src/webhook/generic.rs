//! The generic receiver: a signed JSON change request from any system.
//!
//! ```json
//! {"id": "deploy-4711", "action": "scale", "cluster": "prod-eu", "pool": "workers", "replicas": 7}
//! ```
//!
//! `id` is the delivery id: a retry sends the same id and body. It is inside
//! the signed body, so a captured request cannot be replayed under another
//! id. Actions: `apply` (with `manifest`, the manifest as JSON), `scale`,
//! `pause`, `resume`, `rollback` (with `to`: a seq, an RFC 3339 time or `now`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::action::{HookAction, PlannedHookAction};
use super::PayloadError;
use crate::model::{is_dns_label, parse_manifest, ManifestFormat};

/// The header that carries `t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">`.
pub const SIGNATURE_HEADER: &str = "x-cairn-signature";

/// A change request as the receiver records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenericRequest {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(flatten)]
    pub action: GenericAction,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum GenericAction {
    Apply {
        manifest: serde_json::Value,
    },
    Scale {
        cluster: String,
        pool: String,
        replicas: i64,
    },
    Pause {
        cluster: String,
    },
    Resume {
        cluster: String,
    },
    Rollback {
        cluster: String,
        to: String,
    },
}

impl GenericAction {
    pub fn name(&self) -> &'static str {
        match self {
            GenericAction::Apply { .. } => "apply",
            GenericAction::Scale { .. } => "scale",
            GenericAction::Pause { .. } => "pause",
            GenericAction::Resume { .. } => "resume",
            GenericAction::Rollback { .. } => "rollback",
        }
    }
}

/// Reads and checks a change request: its JSON, its fields, and for `apply`
/// the whole manifest, so that a bad request is refused before it is recorded.
pub fn parse(body: &[u8]) -> Result<GenericRequest, PayloadError> {
    let value = crate::model::parse_json_unique(body).map_err(|error| match error {
        crate::model::JsonError::Syntax(error) => {
            PayloadError::field("", format!("not JSON: {error}"))
        }
        crate::model::JsonError::DuplicateKey(path) => PayloadError::field(path, "duplicate key"),
    })?;
    let serde_json::Value::Object(mut object) = value else {
        return Err(PayloadError::field("", "expected a JSON object"));
    };
    let id = match object.remove("id") {
        Some(serde_json::Value::String(id)) => id,
        Some(_) => return Err(PayloadError::field("id", "expected a string")),
        None => return Err(PayloadError::field("id", "missing: the delivery id")),
    };
    super::check_delivery_id(&id).map_err(|reason| PayloadError::field("id", reason))?;
    let reason = match object.remove("reason") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(reason)) if reason.len() > 1024 => {
            return Err(PayloadError::field("reason", "over 1024 bytes"))
        }
        Some(serde_json::Value::String(reason)) => {
            // Recorded and printed: printable text only (model::text).
            crate::model::check_text(&reason)
                .map_err(|problem| PayloadError::field("reason", problem))?;
            Some(reason)
        }
        Some(_) => return Err(PayloadError::field("reason", "expected a string")),
    };
    if !object.contains_key("action") {
        return Err(PayloadError::field(
            "action",
            "missing: one of apply, scale, pause, resume, rollback",
        ));
    }
    // Through the shared reader, so that an error names its field.
    let rest = serde_json::to_vec(&object).expect("a JSON object serializes");
    let action: GenericAction = super::payload::from_json(&rest)?;
    match &action {
        GenericAction::Apply { manifest } => {
            let bytes = serde_json::to_vec(manifest).expect("a JSON value serializes");
            parse_manifest(&bytes, ManifestFormat::Json)
                .map_err(|error| PayloadError::field("manifest", error.to_string()))?;
        }
        GenericAction::Scale { cluster, .. }
        | GenericAction::Pause { cluster }
        | GenericAction::Resume { cluster }
        | GenericAction::Rollback { cluster, .. } => {
            if !is_dns_label(cluster) {
                return Err(PayloadError::field("cluster", "not a DNS label"));
            }
        }
    }
    if let GenericAction::Rollback { to, .. } = &action {
        to.parse::<crate::ledger::Point>()
            .map_err(|error| PayloadError::field("to", error.to_string()))?;
    }
    Ok(GenericRequest { id, reason, action })
}

/// The one action a change request asks for.
pub fn plan(request: &GenericRequest, delivery: &str) -> Result<PlannedHookAction, PayloadError> {
    let action = match &request.action {
        GenericAction::Apply { manifest } => {
            let bytes = serde_json::to_vec(manifest).expect("a JSON value serializes");
            let manifest = parse_manifest(&bytes, ManifestFormat::Json)
                .map_err(|error| PayloadError::field("manifest", error.to_string()))?;
            HookAction::Apply {
                manifest: Box::new(manifest),
            }
        }
        GenericAction::Scale {
            cluster,
            pool,
            replicas,
        } => HookAction::Scale {
            cluster: cluster.clone(),
            pool: pool.clone(),
            replicas: *replicas,
        },
        GenericAction::Pause { cluster } => HookAction::Pause {
            cluster: cluster.clone(),
        },
        GenericAction::Resume { cluster } => HookAction::Resume {
            cluster: cluster.clone(),
        },
        GenericAction::Rollback { cluster, to } => HookAction::Rollback {
            cluster: cluster.clone(),
            to: to.clone(),
        },
    };
    let mut details = BTreeMap::new();
    if let Some(reason) = &request.reason {
        details.insert("reason".to_string(), reason.clone());
    }
    Ok(PlannedHookAction {
        action,
        key: format!("{delivery}/0"),
        details,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scale_request_reads_into_one_action() {
        let body = br#"{"id": "d-1", "action": "scale", "cluster": "prod-eu", "pool": "workers", "replicas": 7, "reason": "load"}"#;
        let request = parse(body).unwrap();
        let planned = plan(&request, "d-1").unwrap();
        assert_eq!(
            planned.action,
            HookAction::Scale {
                cluster: "prod-eu".into(),
                pool: "workers".into(),
                replicas: 7
            }
        );
        assert_eq!(planned.key, "d-1/0");
        assert_eq!(planned.details["reason"], "load");
        // What the inbox records reads back the same.
        let recorded = serde_json::to_string(&request).unwrap();
        assert_eq!(
            serde_json::from_str::<GenericRequest>(&recorded).unwrap(),
            request
        );
    }

    #[test]
    fn bad_requests_name_the_field() {
        let cases: &[(&[u8], &str)] = &[
            (b"[1]", "expected a JSON object"),
            (b"{\"action\": \"pause\", \"cluster\": \"a\"}", "`id`: missing"),
            (b"{\"id\": \"a b\", \"action\": \"pause\", \"cluster\": \"a\"}", "`id`:"),
            (b"{\"id\": \"d\", \"cluster\": \"a\"}", "`action`: missing"),
            (b"{\"id\": \"d\", \"action\": \"explode\"}", "unknown variant `explode`"),
            (b"{\"id\": \"d\", \"action\": \"scale\", \"cluster\": \"a\", \"pool\": \"w\"}", "`replicas`: missing field"),
            (b"{\"id\": \"d\", \"action\": \"pause\", \"cluster\": \"a\", \"pool\": \"w\"}", "unknown field `pool`"),
            (b"{\"id\": \"d\", \"action\": \"pause\", \"cluster\": \"Not_A_Label\"}", "`cluster`: not a DNS label"),
            (b"{\"id\": \"d\", \"action\": \"rollback\", \"cluster\": \"a\", \"to\": \"yesterday\"}", "`to`:"),
            (b"{\"id\": \"d\", \"action\": \"apply\", \"manifest\": {\"kind\": \"Cluster\"}}", "`manifest`:"),
        ];
        for (body, expected) in cases {
            let error = parse(body).unwrap_err().to_string();
            assert!(
                error.contains(expected),
                "{}: {error}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
