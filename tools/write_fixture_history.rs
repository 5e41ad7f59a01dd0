//! Writes the fixture log `tests/fixtures/log-v1-history.hex`: a cluster
//! scaled up, rolled back, its deletion requested, and rolled back again
//! before the deletion finished. It holds `RollbackRequested` and
//! `ClusterDeletionCancelled`, with the causes a rollback writes, as the
//! store of this version records them.
//!
//! Run once: `cargo run --example write-fixture-history`. It refuses to
//! overwrite the file: every later version must still read it (see
//! src/event/fixture_tests.rs).

use std::path::PathBuf;
use std::sync::Arc;

use cairn::event::{Actor, ActorKind, Event};
use cairn::ledger::{ApplyOptions, CommandContext, Ledger, Point};
use cairn::model::{parse_manifest, ManifestFormat};
use cairn::store::EventStore;
use tokio_util::sync::CancellationToken;

const MANIFEST: &str = "apiVersion: cairn/v1\nkind: Cluster\nmetadata: {name: history}\nspec:\n  provider: sim\n  \
    region: eu-west-1\n  kubernetesVersion: 1.31.2\n  network:\n    cidr: 10.0.0.0/16\n    subnets:\n      \
    - {name: a, cidr: 10.0.1.0/24, zone: eu-west-1a}\n  firewall:\n    \
    - {name: api, direction: ingress, protocol: tcp, ports: \"443\", source: 0.0.0.0/0}\n  pools:\n    \
    - {name: workers, role: worker, replicas: 2, machineType: m5.large, image: ubuntu-24.04, subnets: [a]}\n";

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
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/log-v1-history.hex");
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

    let manifest = parse_manifest(MANIFEST.as_bytes(), ManifestFormat::Yaml).unwrap();
    ledger
        .apply(manifest, ApplyOptions::default(), &context("alice"))
        .await
        .unwrap();
    let declared = store.head().seq;
    ledger
        .scale("history", "workers", 4, None, &context("bob"))
        .await
        .unwrap();
    ledger
        .rollback("history", Point::Seq(declared), false, &context("alice"))
        .await
        .unwrap();
    let before_deletion = store.head().seq;
    ledger
        .request_deletion("history", &context("carol"))
        .await
        .unwrap();
    ledger
        .rollback(
            "history",
            Point::Seq(before_deletion),
            false,
            &context("carol"),
        )
        .await
        .unwrap();
    let cluster = ledger.cluster("history").unwrap();
    assert!(!cluster.deletion_requested);
    assert_eq!(cluster.manifest.spec.pools[0].replicas, 2);

    let all: Vec<Arc<Event>> = store.read(0, 10_000).await.unwrap();
    let mut text = String::from(
        "# Cairn log fixture of rollbacks, record format 1. Written once; never regenerate \
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
    store.close().await;
    println!("wrote {} records to {}", all.len(), path.display());
}
