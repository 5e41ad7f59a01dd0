//! Regression tests for bugs a review reproduced: a rollback racing the
//! reconciler's `ClusterDeleted`, point-in-time reads offered a snapshot of
//! another format, and a seq inside an atomic append.
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::*;
use crate::event::{Actor, ActorKind};
use crate::ledger::{ApplyOptions, CommandContext, LedgerConfig};
use crate::model::{
    parse_manifest, validate, ClusterDeleted, Manifest, ManifestFormat, ReconcileEvent,
};
use crate::projection::SNAPSHOT_FORMAT;
use crate::store::EventStore;

fn manifest(name: &str, replicas: i64, cidr: &str) -> Manifest {
    let text = format!(
        "apiVersion: cairn/v1\nkind: Cluster\nmetadata: {{name: {name}}}\nspec:\n  provider: sim\n  \
         region: r\n  kubernetesVersion: 1.31.2\n  network:\n    cidr: 10.0.0.0/16\n    subnets:\n      \
         - {{name: a, cidr: {cidr}}}\n  pools:\n    - {{name: w, role: worker, replicas: {replicas}, \
         machineType: m, image: i, subnets: [a]}}\n"
    );
    parse_manifest(text.as_bytes(), ManifestFormat::Yaml).unwrap()
}

fn context() -> CommandContext {
    CommandContext::new(Actor {
        kind: ActorKind::User,
        name: "test".into(),
    })
}

async fn apply(ledger: &Ledger, m: Manifest) {
    let options = ApplyOptions {
        dry_run: false,
        if_match: None,
    };
    ledger.apply(m, options, &context()).await.unwrap();
}

async fn setup(
    dir: &std::path::Path,
    every: u64,
) -> (Arc<dyn EventStore>, Arc<Ledger>, CancellationToken) {
    let store: Arc<dyn EventStore> =
        crate::store::open(crate::store::StoreConfig::new(dir)).unwrap();
    let ledger = Ledger::open_with(
        store.clone(),
        LedgerConfig {
            snapshot_every: every,
        },
    )
    .await
    .unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(ledger.clone().follow(shutdown.clone()));
    (store, ledger, shutdown)
}

/// A ClusterDeleted recorded by the reconciler between rollback's read and
/// its append is not caught by the version pin (other stream): the
/// DeletionCancelled lands on a deleted cluster and is skipped. `rollback`
/// notices the cluster is gone and plans again, which declares it anew;
/// here the race is played step by step, then the second plan.
#[tokio::test]
async fn a_rollback_that_lost_a_race_with_cluster_deleted_plans_again() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ledger, _s) = setup(dir.path(), 0).await;
    apply(&ledger, manifest("a", 3, "10.0.1.0/24")).await;
    let to_seq = store.head().seq;
    ledger.request_deletion("a", &context()).await.unwrap();

    // What rollback does, step by step.
    let target = ledger
        .cluster_at("a", Point::Seq(to_seq))
        .await
        .unwrap()
        .desired;
    ledger.wait_applied(store.head().seq).await.unwrap();
    let (current, version) = ledger.read(|p| {
        (
            p.desired.cluster("a").cloned(),
            p.desired.stream_version("a"),
        )
    });
    let (changes, lifecycle) = rollback_plan(current.as_ref(), target.as_ref()).unwrap();
    // The reconciler finishes the deletion now.
    let cause = Cause::Event {
        seq: 0,
        id: Uuid::nil(),
    };
    ledger
        .record(
            "a",
            Uuid::nil(),
            vec![(ReconcileEvent::ClusterDeleted(ClusterDeleted {}), cause)],
        )
        .await
        .unwrap();
    let outcome = RollbackOutcome {
        cluster: "a".into(),
        to_seq,
        changes,
        lifecycle,
        events: vec![],
        stream_version: version,
        dry_run: false,
    };
    let request = rollback_request(
        "a",
        version,
        Point::Seq(to_seq),
        to_seq,
        &outcome,
        &context(),
    );
    let appended = store
        .append(request)
        .await
        .expect("the pin does not see ClusterDeleted");
    ledger
        .wait_applied(appended.events.last().unwrap().seq)
        .await
        .unwrap();
    // The state `rollback` checks for after its append.
    assert!(current.is_some() && ledger.cluster("a").is_none());
    let again = ledger
        .rollback("a", Point::Seq(to_seq), false, &context())
        .await
        .unwrap();
    assert_eq!(
        again.changes.first().map(payload::change_type),
        Some("ClusterDeclared")
    );
    let restored = ledger.cluster("a").expect("declared anew");
    assert_eq!(restored.manifest.spec.pools[0].replicas, 3);
    assert!(!restored.deletion_requested);
}

/// fold_cluster decodes a part of a snapshot whose header is of another format.
#[tokio::test]
async fn point_in_time_reads_pass_over_a_snapshot_of_another_format() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ledger, s) = setup(dir.path(), 0).await;
    for r in [1, 2, 3] {
        apply(&ledger, manifest("a", r, "10.0.1.0/24")).await;
    }
    s.cancel();
    let other_dir = tempfile::tempdir().unwrap();
    let (_ostore, other, s2) = setup(other_dir.path(), 0).await;
    for r in [1, 2, 99] {
        apply(&other, manifest("a", r, "10.0.1.0/24")).await;
    }
    s2.cancel();
    let mut parts = other.read(Projections::clone).snapshot_parts();
    parts[0].1 =
        bincode::serde::encode_to_vec((SNAPSHOT_FORMAT + 1, 0u64), bincode::config::standard())
            .unwrap();
    let head = store.head().seq;
    store.save_snapshot(head, parts).await.unwrap();
    let reopened = Ledger::open_with(store.clone(), LedgerConfig { snapshot_every: 0 })
        .await
        .unwrap();
    assert_eq!(
        reopened.cluster("a").unwrap().manifest.spec.pools[0].replicas,
        3,
        "open passes it over"
    );
    let at = reopened.cluster_at("a", Point::Now).await.unwrap();
    assert_eq!(
        at.desired.unwrap().manifest.spec.pools[0].replicas,
        3,
        "cluster_at must pass it over too"
    );
}

/// A seq inside one append names a state that never existed, and rollback
/// takes the cluster to it: a pool naming a subnet that is not there.
#[tokio::test]
async fn a_seq_inside_an_append_reads_as_the_end_of_that_append() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ledger, _s) = setup(dir.path(), 0).await;
    apply(&ledger, manifest("a", 3, "10.0.1.0/24")).await;
    apply(&ledger, manifest("a", 3, "10.0.2.0/24")).await; // SubnetRemoved + SubnetAdded
    let mid = store.head().seq - 1;
    let at = ledger.cluster_at("a", Point::Seq(mid)).await.unwrap();
    assert_eq!(at.seq, mid + 1, "moved to the last event of the append");
    assert!(validate(&at.desired.as_ref().unwrap().manifest).is_empty());
    let outcome = ledger
        .rollback("a", Point::Seq(mid), false, &context())
        .await
        .unwrap();
    assert!(outcome.events.is_empty(), "that state is the current one");
    let now = ledger.cluster("a").unwrap();
    assert!(
        validate(&now.manifest).is_empty(),
        "desired state is now invalid: {:?}",
        validate(&now.manifest)
    );
}

/// A webhook rollback run again after a crash must not act twice: with an
/// idempotency key, the second call answers the first outcome even though
/// the cluster changed in between, and a rollback that found nothing to do
/// still records its key.
#[tokio::test]
async fn a_rollback_with_a_key_acts_once() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ledger, _s) = setup(dir.path(), 0).await;
    apply(&ledger, manifest("a", 3, "10.0.1.0/24")).await;
    let declared = store.head().seq;
    apply(&ledger, manifest("a", 5, "10.0.1.0/24")).await;
    let keyed = CommandContext {
        idempotency_key: Some("hook/deploys/action/r-1/0".into()),
        ..context()
    };
    let first = ledger
        .rollback("a", Point::Seq(declared), false, &keyed)
        .await
        .unwrap();
    assert_eq!(first.events.len(), 2, "RollbackRequested and PoolScaled");
    assert_eq!(
        ledger.cluster("a").unwrap().manifest.spec.pools[0].replicas,
        3
    );

    // A change after it, then the same rollback again: answered, not run.
    apply(&ledger, manifest("a", 7, "10.0.1.0/24")).await;
    let head = store.head().seq;
    let again = ledger
        .rollback("a", Point::Seq(declared), false, &keyed)
        .await
        .unwrap();
    assert_eq!(store.head().seq, head);
    let ids = |outcome: &RollbackOutcome| outcome.events.iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(ids(&again), ids(&first));
    assert_eq!(again.to_seq, declared);
    assert_eq!(
        ledger.cluster("a").unwrap().manifest.spec.pools[0].replicas,
        7
    );

    // Nothing to roll back: the key is recorded anyway.
    let now = CommandContext {
        idempotency_key: Some("hook/deploys/action/r-2/0".into()),
        ..context()
    };
    let noop = ledger.rollback("a", Point::Now, false, &now).await.unwrap();
    assert!(noop.events.is_empty());
    let recorded_key = now.scoped_idempotency_key().unwrap();
    assert!(store
        .idempotency_record(&recorded_key)
        .await
        .unwrap()
        .is_some());
    // The same key for another point is a conflict.
    let error = ledger
        .rollback("a", Point::Seq(declared), false, &now)
        .await
        .unwrap_err();
    assert!(matches!(
        error,
        LedgerError::Store(StoreError::IdempotencyKeyReused { .. })
    ));
}
