//! Typed payloads: the mapping between a `(type, schema)` pair and a Rust type.
//!
//! Each payload is encoded on its own (bincode of the variant's struct), keyed
//! by its type name, so that reordering enum variants can never change what an
//! old record means, and so that an older build reading a newer log sees an
//! unknown type instead of a wrong one.
//!
//! To add an event type: add the variant to `Change` (or a new payload enum),
//! list it in `payload_types!` below with schema 1, and document it in
//! docs/events.md. To change a payload's shape: bump its schema and decode the
//! old schema into the new type here (upcasting).

use crate::event::{from_bincode, to_bincode, DecodeError};
use crate::model::{Change, Lifecycle, ReconcileEvent, WebhookEvent};

/// A decoded payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// A desired-state change from a manifest diff (stream `cluster/<name>`).
    Change(Box<Change>),
    /// Pause, resume, deletion request, machine replacement (stream `cluster/<name>`).
    Lifecycle(Lifecycle),
    /// An intent, outcome, drift or condition (stream `reconcile/<name>`).
    Reconcile(Box<ReconcileEvent>),
    /// A webhook delivery received or processed (stream `hook/<name>`).
    Webhook(Box<WebhookEvent>),
    /// A type this build does not know (written by a newer build).
    Unknown { event_type: String, schema: u16 },
}

/// An encoded payload, ready to put into a `NewEvent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPayload {
    pub event_type: &'static str,
    pub schema: u16,
    pub bytes: Vec<u8>,
}

/// One family of payload types: an enum whose variants each wrap a struct
/// stored under the variant's name.
macro_rules! payload_family {
    ($family:ident, $wrap:expr, $types:ident, $type_fn:ident, $encode:ident, $decode:ident, $json:ident,
     { $($variant:ident => $schema:literal),* $(,)? }) => {
        /// The type names of this family.
        pub const $types: &[&str] = &[$(stringify!($variant)),*];

        /// The type name a payload is stored under, without encoding it.
        pub fn $type_fn(payload: &$family) -> &'static str {
            match payload {
                $($family::$variant(_) => stringify!($variant),)*
            }
        }

        /// Encodes a payload of this family.
        pub fn $encode(payload: &$family) -> EncodedPayload {
            match payload {
                $($family::$variant(inner) => EncodedPayload {
                    event_type: stringify!($variant),
                    schema: $schema,
                    bytes: to_bincode(inner),
                },)*
            }
        }

        fn $decode(event_type: &str, schema: u16, bytes: &[u8]) -> Option<Result<Payload, DecodeError>> {
            match (event_type, schema) {
                $((stringify!($variant), $schema) => Some(from_bincode(bytes).map(|inner| $wrap($family::$variant(inner)))),)*
                _ => None,
            }
        }

        fn $json(payload: &$family) -> Result<serde_json::Value, serde_json::Error> {
            match payload {
                $($family::$variant(inner) => serde_json::to_value(inner),)*
            }
        }
    };
}

payload_family!(Change, |change| Payload::Change(Box::new(change)), CHANGE_TYPES, change_type,
    encode_change, decode_change, change_json, {
    ClusterDeclared => 1,
    LabelsChanged => 1,
    KubernetesVersionChanged => 1,
    DriftPolicyChanged => 1,
    SubnetAdded => 1,
    SubnetRemoved => 1,
    FirewallRuleAdded => 1,
    FirewallRuleRemoved => 1,
    PoolAdded => 1,
    PoolRemoved => 1,
    PoolScaled => 1,
    PoolTemplateChanged => 1,
});

payload_family!(Lifecycle, Payload::Lifecycle, LIFECYCLE_TYPES, lifecycle_type,
    encode_lifecycle, decode_lifecycle, lifecycle_json, {
    ClusterPaused => 1,
    ClusterResumed => 1,
    ClusterDeletionRequested => 1,
    RollbackRequested => 1,
    ClusterDeletionCancelled => 1,
    MachineReplacementRequested => 1,
});

payload_family!(ReconcileEvent, |event| Payload::Reconcile(Box::new(event)), RECONCILE_TYPES,
    reconcile_type, encode_reconcile, decode_reconcile, reconcile_json, {
    ActionStarted => 1,
    ActionSucceeded => 1,
    ActionFailed => 1,
    DriftDetected => 1,
    ConditionChanged => 1,
    ClusterDeleted => 1,
});

payload_family!(WebhookEvent, |event| Payload::Webhook(Box::new(event)), WEBHOOK_TYPES,
    webhook_type, encode_webhook, decode_webhook, webhook_json, {
    WebhookReceived => 1,
    WebhookProcessed => 1,
});

/// Every event type name this build writes, for docs and filters.
pub fn event_types() -> impl Iterator<Item = &'static str> {
    CHANGE_TYPES
        .iter()
        .chain(LIFECYCLE_TYPES)
        .chain(RECONCILE_TYPES)
        .chain(WEBHOOK_TYPES)
        .copied()
}

/// Decodes a payload by its type name and schema version.
pub fn decode(event_type: &str, schema: u16, bytes: &[u8]) -> Result<Payload, DecodeError> {
    decode_change(event_type, schema, bytes)
        .or_else(|| decode_lifecycle(event_type, schema, bytes))
        .or_else(|| decode_reconcile(event_type, schema, bytes))
        .or_else(|| decode_webhook(event_type, schema, bytes))
        .unwrap_or_else(|| {
            Ok(Payload::Unknown {
                event_type: event_type.to_string(),
                schema,
            })
        })
}

/// The payload as JSON, for the API and the CLI.
pub fn to_json(
    event_type: &str,
    schema: u16,
    bytes: &[u8],
) -> Result<serde_json::Value, DecodeError> {
    let json = match decode(event_type, schema, bytes)? {
        Payload::Change(change) => change_json(&change),
        Payload::Lifecycle(lifecycle) => lifecycle_json(&lifecycle),
        Payload::Reconcile(event) => reconcile_json(&event),
        Payload::Webhook(event) => webhook_json(&event),
        Payload::Unknown { .. } => return Ok(serde_json::Value::Null),
    };
    json.map_err(|error| DecodeError::Bincode(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MachineReplacementRequested, PoolScaled};

    #[test]
    fn change_round_trips_under_its_type_name() {
        let change = Change::PoolScaled(PoolScaled {
            pool: "workers".into(),
            from: 3,
            to: 5,
        });
        let encoded = encode_change(&change);
        assert_eq!(encoded.event_type, "PoolScaled");
        assert_eq!(change_type(&change), "PoolScaled");
        assert_eq!(
            decode(encoded.event_type, encoded.schema, &encoded.bytes).unwrap(),
            Payload::Change(Box::new(change))
        );
        assert_eq!(
            to_json("PoolScaled", 1, &encoded.bytes).unwrap(),
            serde_json::json!({"pool": "workers", "from": 3, "to": 5})
        );
    }

    #[test]
    fn a_machine_replacement_round_trips_under_its_type_name() {
        let lifecycle = Lifecycle::MachineReplacementRequested(MachineReplacementRequested {
            machine: "workers-2".into(),
            provider_id: "sim-m-000042".into(),
        });
        let encoded = encode_lifecycle(&lifecycle);
        assert_eq!(encoded.event_type, "MachineReplacementRequested");
        assert_eq!(encoded.schema, 1);
        assert_eq!(
            decode(encoded.event_type, encoded.schema, &encoded.bytes).unwrap(),
            Payload::Lifecycle(lifecycle)
        );
        assert_eq!(
            to_json("MachineReplacementRequested", 1, &encoded.bytes).unwrap(),
            serde_json::json!({"machine": "workers-2", "providerId": "sim-m-000042"})
        );
    }

    #[test]
    fn unknown_type_is_not_an_error() {
        assert_eq!(
            decode("FromTheFuture", 3, &[1, 2]).unwrap(),
            Payload::Unknown {
                event_type: "FromTheFuture".into(),
                schema: 3
            }
        );
    }
}
