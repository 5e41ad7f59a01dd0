//! Writes the fixture log `tests/fixtures/log-v1.hex`: a short, realistic story
//! of two clusters that uses every desired-state event type, every kind of
//! cause and two kinds of actor, as the store of this version records it.
//!
//! Run once: `cargo run --example write-fixture`. It refuses to overwrite the
//! file: the fixture is what every later version must still read (see
//! src/event/fixture_tests.rs), so it is written once and never regenerated.

use std::path::PathBuf;

use cairn::event::payload;
use cairn::event::{Actor, ActorKind, Cause, Event, NewEvent};
use cairn::model::{diff, parse_manifest, Manifest, ManifestFormat};
use cairn::projection::DesiredState;
use cairn::store::{AppendRequest, ExpectedVersion, Idempotency};
use uuid::Uuid;

#[tokio::main]
async fn main() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/log-v1.hex");
    if path.exists() {
        eprintln!(
            "{} exists; the fixture is never regenerated",
            path.display()
        );
        std::process::exit(1);
    }
    let data_dir = std::env::temp_dir().join(format!("cairn-fixture-{}", std::process::id()));
    let store = cairn::store::open(cairn::store::StoreConfig::new(&data_dir)).unwrap();
    let base = parse_manifest(
        include_bytes!("../docs/examples/prod-eu.yaml"),
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
    let yaml = include_str!("../docs/examples/prod-eu.yaml");
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
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    store.close().await;
    drop(store);
    let _ = std::fs::remove_dir_all(&data_dir);
    println!("wrote {} records to {}", all.len(), path.display());
}
