//! Writes the fixture log `tests/fixtures/log-v1-hooks.hex`: a cluster, a
//! generic webhook delivery that scales it (`WebhookReceived`, the change
//! with its `webhook_delivery` cause, `WebhookProcessed`), and a machine
//! replacement request, as the store of this version records them.
//!
//! Run once: `cargo run --example write-fixture-hooks`. It refuses to
//! overwrite the file: every later version must still read it (see
//! src/event/fixture_tests.rs).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use cairn::event::{Actor, ActorKind, Event};
use cairn::ledger::{ApplyOptions, CommandContext, Ledger};
use cairn::metrics::Metrics;
use cairn::model::{parse_manifest, ManifestFormat};
use cairn::store::EventStore;
use cairn::webhook::inbox::{Delivery, Inbox};
use cairn::webhook::{GenericSettings, HookConfig, ReceiverConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const MANIFEST: &str = "apiVersion: cairn/v1\nkind: Cluster\nmetadata: {name: hooks}\nspec:\n  provider: sim\n  \
    region: eu-west-1\n  kubernetesVersion: 1.31.2\n  network:\n    cidr: 10.0.0.0/16\n    subnets:\n      \
    - {name: a, cidr: 10.0.1.0/24, zone: eu-west-1a}\n  pools:\n    \
    - {name: workers, role: worker, replicas: 2, machineType: m5.large, image: ubuntu-24.04, subnets: [a]}\n";

const DELIVERY: &str = r#"{"id": "fixture-1", "action": "scale", "cluster": "hooks", "pool": "workers", "replicas": 3, "reason": "fixture"}"#;

#[tokio::main]
async fn main() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/log-v1-hooks.hex");
    if path.exists() {
        eprintln!(
            "{} exists; the fixture is never regenerated",
            path.display()
        );
        std::process::exit(1);
    }
    let dir = tempfile::tempdir().unwrap();
    let store = cairn::store::open(cairn::store::StoreConfig::new(dir.path())).unwrap();
    let metrics = Arc::new(Metrics::new(store.metrics()));
    let ledger = Ledger::open(store.clone() as Arc<dyn EventStore>)
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(ledger.clone().follow(shutdown.clone()));
    let context = CommandContext {
        reason: Some("fixture".into()),
        ..CommandContext::new(Actor {
            kind: ActorKind::User,
            name: "alice".into(),
        })
    };
    let manifest = parse_manifest(MANIFEST.as_bytes(), ManifestFormat::Yaml).unwrap();
    ledger
        .apply(manifest, ApplyOptions::default(), &context)
        .await
        .unwrap();

    let hooks = BTreeMap::from([(
        "deploys".to_string(),
        HookConfig {
            secret: "fixture-secret-0123456789".into(),
            receiver: ReceiverConfig::Generic(GenericSettings {}),
        },
    )]);
    let tracker = TaskTracker::new();
    let inbox = Inbox::start(ledger.clone(), &hooks, metrics, shutdown.clone(), &tracker);
    let request = cairn::webhook::generic::parse(DELIVERY.as_bytes()).unwrap();
    inbox
        .receive(
            "deploys",
            Delivery {
                id: request.id.clone(),
                event: "scale".into(),
                digest: Delivery::digest_of(DELIVERY.as_bytes()),
                request: serde_json::to_string(&request).unwrap(),
            },
        )
        .await
        .unwrap();
    while inbox.deliveries("deploys", 1).await.unwrap()[0]
        .processed
        .is_none()
    {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        ledger.cluster("hooks").unwrap().manifest.spec.pools[0].replicas,
        3
    );

    // A replacement request, as `replace_machine` appends it once the
    // machine is found in the observed state (no reconciler runs here).
    let command = cairn::model::Lifecycle::MachineReplacementRequested(
        cairn::model::MachineReplacementRequested {
            machine: "workers-1".into(),
            provider_id: "sim-fixture-1".into(),
        },
    );
    ledger.lifecycle("hooks", command, &context).await.unwrap();

    let all: Vec<Arc<Event>> = store.read(0, 10_000).await.unwrap();
    let mut text = String::from(
        "# Cairn log fixture of webhooks, record format 1. Written once; never regenerate \
         (see src/event/fixture_tests.rs).\n",
    );
    for event in &all {
        text.push_str(&format!(
            "{} {}\n",
            event.seq,
            hex::encode(event.encode_record())
        ));
    }
    std::fs::write(&path, text).unwrap();
    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
    store.close().await;
    println!("wrote {} records to {}", all.len(), path.display());
}
