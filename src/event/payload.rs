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
use crate::model::Change;

/// A decoded payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// A desired-state change.
    Change(Box<Change>),
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

macro_rules! payload_types {
    ($($variant:ident => $schema:literal),* $(,)?) => {
        /// Every event type name this build writes, for docs and filters.
        pub const EVENT_TYPES: &[&str] = &[$(stringify!($variant)),*];

        /// The type name a change is stored under, without encoding it.
        pub fn change_type(change: &Change) -> &'static str {
            match change {
                $(Change::$variant(_) => stringify!($variant),)*
            }
        }

        /// Encodes a desired-state change.
        pub fn encode_change(change: &Change) -> EncodedPayload {
            match change {
                $(Change::$variant(inner) => EncodedPayload {
                    event_type: stringify!($variant),
                    schema: $schema,
                    bytes: to_bincode(inner),
                },)*
            }
        }

        /// Decodes a payload by its type name and schema version.
        pub fn decode(event_type: &str, schema: u16, bytes: &[u8]) -> Result<Payload, DecodeError> {
            match (event_type, schema) {
                $((stringify!($variant), $schema) => Ok(Payload::Change(Box::new(Change::$variant(from_bincode(bytes)?)))),)*
                _ => Ok(Payload::Unknown { event_type: event_type.to_string(), schema }),
            }
        }

        /// The payload as JSON, for the API and the CLI.
        pub fn to_json(event_type: &str, schema: u16, bytes: &[u8]) -> Result<serde_json::Value, DecodeError> {
            let json = |value: Result<serde_json::Value, serde_json::Error>| {
                value.map_err(|error| DecodeError::Bincode(error.to_string()))
            };
            match decode(event_type, schema, bytes)? {
                Payload::Change(change) => match *change {
                    $(Change::$variant(inner) => json(serde_json::to_value(inner)),)*
                },
                Payload::Unknown { .. } => Ok(serde_json::Value::Null),
            }
        }
    };
}

payload_types! {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PoolScaled;

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
