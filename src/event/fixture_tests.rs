//! The fixture log: records written by the first version of the format, kept
//! in `tests/fixtures/log-v1.hex`, which every later version must still decode
//! and verify. Never regenerate the file to make this test pass: a failure
//! here means stored logs of users would no longer read.
//!
//! The file was written once with `CAIRN_WRITE_FIXTURE=1 cargo test --lib fixture`
//! (which refuses to overwrite an existing file). One line per record:
//! `seq hex-of-the-record`, records as stored under the `e` keys.

use std::path::PathBuf;

use uuid::Uuid;

use crate::event::payload::{self, Payload};
use crate::event::{Actor, ActorKind, Cause, ChainCursor, Event, NewEvent};
use crate::model::{diff, parse_manifest, Manifest, ManifestFormat};
use crate::projection::DesiredState;
use crate::store::{
    AppendRequest, EventStore, ExpectedVersion, Idempotency, SledStore, SledStoreConfig,
};

fn fixture_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/log-v1.hex")
}

fn read_fixture() -> Vec<(u64, Vec<u8>)> {
    let text = std::fs::read_to_string(fixture_path()).expect("tests/fixtures/log-v1.hex exists");
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

#[test]
fn fixture_log_still_decodes_and_verifies() {
    let records = read_fixture();
    assert!(
        records.len() >= 12,
        "the fixture has {} records",
        records.len()
    );
    let mut cursor = ChainCursor::default();
    let mut events = Vec::new();
    for (seq, record) in &records {
        assert_eq!(*seq, cursor.last_seq + 1, "the fixture has no gaps");
        let event = cursor
            .check(*seq, record)
            .unwrap_or_else(|error| panic!("fixture seq {seq}: {error}"));
        match payload::decode(&event.event_type, event.schema, &event.payload) {
            Ok(Payload::Change(_)) => {}
            other => panic!("fixture seq {seq} ({}): {other:?}", event.event_type),
        }
        events.push(event);
    }
    let types: std::collections::BTreeSet<&str> = events
        .iter()
        .map(|event| event.event_type.as_str())
        .collect();
    for event_type in payload::EVENT_TYPES {
        assert!(
            types.contains(event_type),
            "the fixture lacks a {event_type} event"
        );
    }

    // What the fixture's story ends with (see `write_fixture` below).
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

/// Writes the fixture if it does not exist yet and CAIRN_WRITE_FIXTURE is set.
#[tokio::test]
async fn write_fixture() {
    if std::env::var_os("CAIRN_WRITE_FIXTURE").is_none() || fixture_path().exists() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(SledStoreConfig::new(dir.path())).unwrap();
    let base = parse_manifest(
        include_bytes!("../../docs/examples/prod-eu.yaml"),
        ManifestFormat::Yaml,
    )
    .unwrap();
    let edit = |text: &str, edits: &[(&str, &str)]| -> Manifest {
        let mut text = text.to_string();
        for (from, to) in edits {
            assert!(text.contains(from), "{from}");
            text = text.replace(from, to);
        }
        parse_manifest(text.as_bytes(), ManifestFormat::Yaml).unwrap()
    };
    let yaml = include_str!("../../docs/examples/prod-eu.yaml");
    let subnet_a = "      - {name: a, cidr: 10.0.1.0/24, zone: eu-west-1a}";
    let subnet_b = "      - {name: b, cidr: 10.0.2.0/24, zone: eu-west-1b}";
    let subnets_a_and_b = format!("{subnet_a}\n{subnet_b}");
    let batch_pool = "    - {name: batch, role: worker, replicas: 2, machineType: c5.large, image: ubuntu-24.04, subnets: [b]}\n    - {name: workers,";
    // Step 3 touches every kind of change at once; step 4 builds on it.
    let mut step_three = vec![
        ("replicas: 5", "replicas: 7"),
        (subnet_a, subnets_a_and_b.as_str()),
        ("source: 0.0.0.0/0}", "source: 10.0.0.0/8}"),
        ("{team: platform}", "{team: platform, env: prod}"),
        ("kubernetesVersion: 1.31.2", "kubernetesVersion: 1.31.3"),
        ("{drift: correct}", "{drift: report}"),
    ];
    let mut step_four = step_three.clone();
    step_three.push(("    - {name: workers,", batch_pool));
    step_four.push((
        "machineType: m5.xlarge, image: ubuntu-24.04",
        "machineType: m5.xlarge, image: ubuntu-24.10",
    ));
    step_four.push(("zone: eu-west-1a}\n", "zone: eu-west-1c}\n"));
    let steps: Vec<(Manifest, &str)> = vec![
        (base.clone(), "alice"),
        (edit(yaml, &[("replicas: 5", "replicas: 7")]), "alice"),
        (edit(yaml, &step_three), "bob"),
        (edit(yaml, &step_four), "alice"),
        (edit(yaml, &[("name: prod-eu", "name: staging")]), "carol"),
    ];
    let mut state = DesiredState::default();
    for (index, (manifest, who)) in steps.iter().enumerate() {
        let current = state
            .cluster(&manifest.metadata.name)
            .map(|cluster| cluster.manifest.clone());
        let changes = diff(current.as_ref(), manifest).unwrap();
        let events = changes
            .iter()
            .map(|change| {
                let encoded = payload::encode_change(change);
                NewEvent {
                    id: Uuid::now_v7(),
                    event_type: encoded.event_type.to_string(),
                    schema: encoded.schema,
                    actor: Actor {
                        kind: if index == 4 {
                            ActorKind::Webhook
                        } else {
                            ActorKind::User
                        },
                        name: who.to_string(),
                    },
                    cause: match index {
                        0 => Cause::None,
                        4 => Cause::Webhook {
                            hook: "github".into(),
                            delivery: "72d3162e-cc78-11e3-81ab-4c9367dc0958".into(),
                        },
                        _ => Cause::Request {
                            request_id: Uuid::now_v7().to_string(),
                            idempotency_key: Some(format!("key-{index}")),
                            reason: Some(format!("step {index}")),
                        },
                    },
                    correlation: Uuid::now_v7(),
                    payload: encoded.bytes,
                }
            })
            .collect();
        let outcome = store
            .append(AppendRequest {
                stream: manifest.stream(),
                expected: ExpectedVersion::Any,
                events,
                idempotency: Some(Idempotency {
                    key: format!("key-{index}"),
                    digest: [index as u8; 32],
                }),
            })
            .await
            .unwrap();
        for event in &outcome.events {
            state.apply(event);
        }
    }
    let all: Vec<std::sync::Arc<Event>> = store.read(0, 1000).await.unwrap();
    let mut text = String::from(
        "# Cairn log fixture, record format 1. Written once; never regenerate (see src/event/fixture_tests.rs).\n",
    );
    for event in &all {
        text.push_str(&format!(
            "{} {}\n",
            event.seq,
            hex::encode(event.encode_record())
        ));
    }
    std::fs::create_dir_all(fixture_path().parent().unwrap()).unwrap();
    std::fs::write(fixture_path(), text).unwrap();
}
