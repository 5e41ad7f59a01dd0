//! Writes the fixture log `tests/fixtures/log-v1-reconcile.hex`: the story of a
//! cluster that the reconciler builds on the simulated cloud, with failures
//! whose answers were lost, a pause, drift, and a deletion. It holds every
//! lifecycle and reconciler event type, as the store of this version records
//! them.
//!
//! Run once: `cargo run --example write-fixture-reconcile`. It refuses to
//! overwrite the file: every later version must still read it (see
//! src/event/fixture_tests.rs).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cairn::event::{Actor, ActorKind, Event};
use cairn::ledger::{ApplyOptions, CommandContext, Ledger};
use cairn::metrics::ReconcileMetrics;
use cairn::model::{parse_manifest, ManifestFormat, ResourceKind};
use cairn::provider::sim::{SimCloud, SimConfig, SimLatency};
use cairn::provider::{Provider, Providers};
use cairn::reconcile::{Backoff, Reconciler, ReconcilerConfig};
use cairn::store::EventStore;
use tokio_util::sync::CancellationToken;

const MANIFEST: &str = "apiVersion: cairn/v1\nkind: Cluster\nmetadata: {name: fixture}\nspec:\n  provider: sim\n  \
    region: eu-west-1\n  kubernetesVersion: 1.31.2\n  network:\n    cidr: 10.0.0.0/16\n    subnets:\n      \
    - {name: a, cidr: 10.0.1.0/24, zone: eu-west-1a}\n  firewall:\n    \
    - {name: api, direction: ingress, protocol: tcp, ports: \"443\", source: 0.0.0.0/0}\n  pools:\n    \
    - {name: workers, role: worker, replicas: 2, machineType: m5.large, image: ubuntu-24.04, subnets: [a]}\n  \
    policy: {drift: correct}\n";

fn context(name: &str) -> CommandContext {
    CommandContext {
        reason: Some("fixture".into()),
        ..CommandContext::new(Actor {
            kind: ActorKind::User,
            name: name.into(),
        })
    }
}

#[tokio::main]
async fn main() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/log-v1-reconcile.hex");
    if path.exists() {
        eprintln!(
            "{} exists; the fixture is never regenerated",
            path.display()
        );
        std::process::exit(1);
    }
    let dir = tempfile::tempdir().unwrap();
    let store = cairn::store::open(cairn::store::StoreConfig::new(dir.path())).unwrap();
    let ledger = Ledger::open(store.clone() as Arc<dyn EventStore>)
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(ledger.clone().follow(shutdown.clone()));
    let sim_config = SimConfig {
        seed: 3,
        latency_ms: SimLatency::uniform(0),
        failure_rate: 0.4,
        list_delay_ms: 0,
        ..SimConfig::default()
    };
    let sim = Arc::new(SimCloud::open(&dir.path().join("sim"), sim_config).unwrap());
    let mut providers = Providers::new();
    providers.insert("sim", sim.clone() as Arc<dyn Provider>);
    let config = ReconcilerConfig {
        workers: 1,
        concurrency: 1,
        cluster_concurrency: 1,
        // Every pass resyncs, so the drift below is seen at once.
        resync: Duration::ZERO,
        backoff: Backoff {
            base: Duration::from_millis(1),
            max: Duration::from_millis(1),
        },
        degraded_after_failures: 3,
    };
    let reconciler = Reconciler::new(
        ledger.clone(),
        providers,
        config,
        ReconcileMetrics::default(),
    );
    let ready = |ledger: &Ledger| {
        ledger.observed("fixture").is_some_and(|observed| {
            observed
                .conditions
                .get(&cairn::model::ConditionType::Ready)
                .is_some_and(|ready| ready.status)
        })
    };
    let manifest = parse_manifest(MANIFEST.as_bytes(), ManifestFormat::Yaml).unwrap();
    ledger
        .apply(manifest, ApplyOptions::default(), &context("alice"))
        .await
        .unwrap();
    for _ in 0..50 {
        reconciler.reconcile("fixture", &shutdown).await.unwrap();
        if ready(&ledger) {
            break;
        }
    }
    assert!(ready(&ledger), "the fixture cluster converged");
    ledger.pause("fixture", &context("bob")).await.unwrap();
    reconciler.reconcile("fixture", &shutdown).await.unwrap();
    ledger.resume("fixture", &context("bob")).await.unwrap();
    let machine = sim
        .resources()
        .into_iter()
        .find(|resource| resource.key().kind == ResourceKind::Machine)
        .unwrap();
    sim.delete_behind_back(&machine.provider_id).await.unwrap();
    for _ in 0..50 {
        reconciler.reconcile("fixture", &shutdown).await.unwrap();
        if ready(&ledger) && sim.resources().len() == 5 {
            break;
        }
    }
    ledger
        .request_deletion("fixture", &context("carol"))
        .await
        .unwrap();
    for _ in 0..50 {
        reconciler.reconcile("fixture", &shutdown).await.unwrap();
        if ledger.cluster("fixture").is_none() {
            break;
        }
    }
    assert!(
        ledger.cluster("fixture").is_none(),
        "the fixture cluster was deleted"
    );

    let all: Vec<Arc<Event>> = store.read(0, 10_000).await.unwrap();
    let mut text = String::from(
        "# Cairn log fixture of reconciler and lifecycle events, record format 1. Written once; \
         never regenerate (see src/event/fixture_tests.rs).\n",
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
    store.close().await;
    println!("wrote {} records to {}", all.len(), path.display());
}
