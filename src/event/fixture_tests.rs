//! The fixture log: records written by the first version of the format, kept
//! in `tests/fixtures/log-v1.hex`, which every later version must still decode
//! and verify. Never regenerate the file to make this test pass: a failure
//! here means stored logs of users would no longer read.
//!
//! The file was written once by `cargo run --example write-fixture` (see
//! tools/write_fixture.rs, which refuses to overwrite an existing file). One
//! line per record: `seq hex-of-the-record`, records as stored under the `e` keys.

use std::path::PathBuf;

use crate::event::payload::{self, Payload};
use crate::event::ChainCursor;
use crate::projection::DesiredState;

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn read_fixture(name: &str) -> Vec<(u64, Vec<u8>)> {
    let path = fixture_path(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (seq, record) = line.split_once(' ').expect("`seq hex` per line");
            (
                seq.parse().expect("seq"),
                hex::decode(record.trim()).expect("hex"),
            )
        })
        .collect()
}

/// Every record of a fixture, chain-checked, without gaps, each payload of
/// a type this build knows.
fn verified_events(name: &str) -> Vec<crate::event::Event> {
    let mut cursor = ChainCursor::default();
    let mut events = Vec::new();
    for (seq, record) in &read_fixture(name) {
        assert_eq!(*seq, cursor.last_seq + 1, "{name} has no gaps");
        let event = cursor
            .check(*seq, record)
            .unwrap_or_else(|error| panic!("{name} seq {seq}: {error}"));
        match payload::decode(&event.event_type, event.schema, &event.payload) {
            Ok(
                Payload::Change(_)
                | Payload::Lifecycle(_)
                | Payload::Reconcile(_)
                | Payload::Webhook(_),
            ) => {}
            other => panic!("{name} seq {seq} ({}): {other:?}", event.event_type),
        }
        events.push(event);
    }
    events
}

#[test]
fn fixture_log_still_decodes_and_verifies() {
    let events = verified_events("log-v1.hex");
    assert!(
        events.len() >= 12,
        "the fixture has {} records",
        events.len()
    );
    let types: std::collections::BTreeSet<&str> = events
        .iter()
        .map(|event| event.event_type.as_str())
        .collect();
    for event_type in payload::CHANGE_TYPES {
        assert!(
            types.contains(event_type),
            "the fixture lacks a {event_type} event"
        );
    }

    // What the fixture's story ends with (see tools/write_fixture.rs).
    let state = DesiredState::replay(&events);
    let prod = state.cluster("prod-eu").expect("prod-eu declared");
    let workers = prod
        .manifest
        .spec
        .pools
        .iter()
        .find(|pool| pool.name == "workers")
        .unwrap();
    assert_eq!(workers.replicas, 7);
    assert_eq!(workers.image, "ubuntu-24.10");
    assert_eq!(prod.manifest.spec.kubernetes_version, "1.31.3");
    assert_eq!(prod.manifest.spec.policy.drift, "report");
    assert!(prod
        .manifest
        .spec
        .pools
        .iter()
        .all(|pool| pool.name != "batch"));
    assert!(prod
        .manifest
        .spec
        .network
        .subnets
        .iter()
        .any(|subnet| subnet.name == "b"));
    assert_eq!(prod.updated_by.name, "alice");
    assert!(state.cluster("staging").is_some());
    assert_eq!(state.skipped_events, 0);
}

/// The second fixture: lifecycle and reconciler events (see
/// tools/write_fixture_reconcile.rs), the story of a cluster built on the
/// simulated cloud with failures, a pause, drift, and its deletion.
#[test]
fn reconcile_fixture_log_still_decodes_verifies_and_replays() {
    let events = verified_events("log-v1-reconcile.hex");
    let types: std::collections::BTreeSet<&str> = events
        .iter()
        .map(|event| event.event_type.as_str())
        .collect();
    // The types that existed when this fixture was written (issue 3);
    // later types need a fixture of their own.
    let written_then = [
        "ClusterPaused",
        "ClusterResumed",
        "ClusterDeletionRequested",
    ];
    for event_type in written_then.iter().chain(payload::RECONCILE_TYPES) {
        assert!(
            types.contains(event_type),
            "the fixture lacks a {event_type} event"
        );
    }
    let mut projections = crate::projection::Projections::default();
    for event in &events {
        projections.apply(event);
    }
    assert!(projections.desired.cluster("fixture").is_none(), "deleted");
    assert_eq!(projections.desired.stream_version("fixture"), 4);
    let observed = projections.observed.cluster("fixture").expect("observed");
    assert!(observed.deleted);
    assert!(observed.resources.is_empty() && observed.in_flight.is_empty());
    assert_eq!(projections.desired.skipped_events, 0);
    assert_eq!(projections.observed.skipped_events, 0);
}

/// The third fixture: rollbacks (see tools/write_fixture_history.rs): a
/// scale-up rolled back, then a deletion called off by a rollback.
#[test]
fn history_fixture_log_still_decodes_verifies_and_replays() {
    let events = verified_events("log-v1-history.hex");
    let types: Vec<&str> = events
        .iter()
        .map(|event| event.event_type.as_str())
        .collect();
    assert_eq!(
        types,
        [
            "ClusterDeclared",
            "PoolScaled",
            "RollbackRequested",
            "PoolScaled",
            "ClusterDeletionRequested",
            "RollbackRequested",
            "ClusterDeletionCancelled",
        ]
    );
    // Each rollback's effects name it, with the seq the store filled in.
    for (effect, request) in [(3, 2), (6, 5)] {
        assert_eq!(
            events[effect].cause,
            crate::event::Cause::Event {
                seq: events[request].seq,
                id: events[request].id
            }
        );
    }
    let mut projections = crate::projection::Projections::default();
    for event in &events {
        projections.apply(event);
    }
    let cluster = projections.desired.cluster("history").expect("restored");
    assert_eq!(cluster.manifest.spec.pools[0].replicas, 2);
    assert!(!cluster.deletion_requested);
    assert_eq!(projections.desired.skipped_events, 0);
}

/// The fourth fixture: webhooks (see tools/write_fixture_hooks.rs): a generic
/// delivery recorded, acted on and answered, and a machine replacement.
#[test]
fn hooks_fixture_log_still_decodes_verifies_and_replays() {
    let events = verified_events("log-v1-hooks.hex");
    let types: Vec<&str> = events
        .iter()
        .map(|event| event.event_type.as_str())
        .collect();
    assert_eq!(
        types,
        [
            "ClusterDeclared",
            "WebhookReceived",
            "PoolScaled",
            "WebhookProcessed",
            "MachineReplacementRequested",
        ]
    );
    let crate::event::Cause::WebhookDelivery {
        hook,
        delivery,
        received_seq,
        received_id,
        details,
    } = &events[2].cause
    else {
        panic!("the change names the delivery: {:?}", events[2].cause);
    };
    assert_eq!((hook.as_str(), delivery.as_str()), ("deploys", "fixture-1"));
    assert_eq!((*received_seq, *received_id), (events[1].seq, events[1].id));
    assert_eq!(details["reason"], "fixture");
    assert_eq!(
        events[3].cause,
        crate::event::Cause::Event {
            seq: events[1].seq,
            id: events[1].id
        }
    );
    match payload::decode(&events[3].event_type, events[3].schema, &events[3].payload) {
        Ok(Payload::Webhook(processed)) => match *processed {
            crate::model::WebhookEvent::WebhookProcessed(processed) => {
                assert_eq!(processed.outcome, crate::model::DeliveryOutcome::Done);
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    let mut projections = crate::projection::Projections::default();
    for event in &events {
        projections.apply(event);
    }
    let cluster = projections.desired.cluster("hooks").expect("declared");
    assert_eq!(cluster.manifest.spec.pools[0].replicas, 3);
    assert_eq!(cluster.replacements["workers-1"], "sim-fixture-1");
    assert_eq!(projections.desired.skipped_events, 0);
}
