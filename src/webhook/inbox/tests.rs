//! The outcome of a delivery from its action results (pure), and the inbox
//! against a real store: a delivery recorded with no worker running is
//! processed by the next worker, once, and its actions that ran before count
//! as already done.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use crate::event::ActorKind;
use crate::metrics::Metrics;
use crate::model::{parse_manifest, ManifestFormat};
use crate::webhook::{GenericSettings, HookConfig, ReceiverConfig};

fn report(result: ActionResult) -> ActionReport {
    ActionReport {
        action: "scale web/workers to 3".into(),
        key: "d/0".into(),
        result,
    }
}

fn skipped(subject: &str) -> SkippedReport {
    SkippedReport {
        subject: subject.into(),
        reason: "invalid manifest".into(),
    }
}

/// Actions, skipped parts, the receiver's reason to ignore, the outcome.
type OutcomeCase = (
    Vec<ActionReport>,
    Vec<SkippedReport>,
    Option<String>,
    DeliveryOutcome,
);

#[test]
fn the_outcome_follows_from_the_action_results() {
    let applied = || report(ActionResult::Applied { events: 1 });
    let failed = || {
        report(ActionResult::Failed {
            error: "no cluster named web".into(),
        })
    };
    let cases: Vec<OutcomeCase> = vec![
        (
            vec![],
            vec![],
            Some("ping: hi".into()),
            DeliveryOutcome::Ignored,
        ),
        (vec![], vec![], None, DeliveryOutcome::Ignored),
        (
            vec![],
            vec![skipped("a.yaml")],
            None,
            DeliveryOutcome::Failed,
        ),
        (
            vec![],
            vec![skipped("a.yaml")],
            Some("none to act on".into()),
            DeliveryOutcome::Ignored,
        ),
        (
            vec![applied(), report(ActionResult::AlreadyDone)],
            vec![],
            None,
            DeliveryOutcome::Done,
        ),
        (
            vec![report(ActionResult::Unchanged)],
            vec![],
            None,
            DeliveryOutcome::Done,
        ),
        (
            vec![applied(), failed()],
            vec![],
            None,
            DeliveryOutcome::Partial,
        ),
        (
            vec![applied()],
            vec![skipped("b.yaml")],
            None,
            DeliveryOutcome::Partial,
        ),
        (
            vec![failed(), failed()],
            vec![],
            None,
            DeliveryOutcome::Failed,
        ),
    ];
    for (actions, skipped, ignored, expected) in cases {
        let (outcome, summary) = summarize(&actions, &skipped, ignored);
        assert_eq!(outcome, expected, "{summary}");
    }
    let (_, summary) = summarize(&[applied(), failed()], &[], None);
    assert_eq!(
        summary,
        "2 actions: 1 applied, 1 failed (first failure: scale web/workers to 3: no cluster named web)"
    );
}

fn manifest() -> crate::model::Manifest {
    let text = "apiVersion: cairn/v1\nkind: Cluster\nmetadata: {name: web}\nspec:\n  provider: sim\n  \
         region: r\n  kubernetesVersion: 1.31.2\n  network:\n    cidr: 10.0.0.0/16\n    subnets:\n      \
         - {name: a, cidr: 10.0.1.0/24}\n  pools:\n    - {name: w, role: worker, replicas: 2, \
         machineType: m, image: i, subnets: [a]}\n";
    parse_manifest(text.as_bytes(), ManifestFormat::Yaml).unwrap()
}

fn generic_hooks() -> BTreeMap<String, HookConfig> {
    BTreeMap::from([(
        "deploys".to_string(),
        HookConfig {
            secret: "a-secret-of-some-length".into(),
            receiver: ReceiverConfig::Generic(GenericSettings {}),
        },
    )])
}

fn scale_delivery(id: &str, replicas: i64) -> Delivery {
    let body = format!(
        r#"{{"id": "{id}", "action": "scale", "cluster": "web", "pool": "w", "replicas": {replicas}}}"#
    );
    let request = crate::webhook::generic::parse(body.as_bytes()).unwrap();
    Delivery {
        id: id.to_string(),
        event: "scale".into(),
        digest: Delivery::digest_of(body.as_bytes()),
        request: serde_json::to_string(&request).unwrap(),
    }
}

#[tokio::test]
async fn a_delivery_recorded_without_a_worker_is_processed_once_by_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::store::open(crate::store::StoreConfig::new(dir.path())).unwrap();
    let metrics = Arc::new(Metrics::new(store.metrics()));
    let ledger = Ledger::open(store.clone()).await.unwrap();
    let follow = CancellationToken::new();
    tokio::spawn(ledger.clone().follow(follow.clone()));
    let context = CommandContext::new(crate::event::Actor {
        kind: ActorKind::User,
        name: "test".into(),
    });
    ledger
        .apply(manifest(), ApplyOptions::default(), &context)
        .await
        .unwrap();

    // An inbox whose worker is stopped at once records but never acts: as a
    // crash right after the answer would leave it.
    let stopped = CancellationToken::new();
    stopped.cancel();
    let tracker = TaskTracker::new();
    let inbox = Inbox::start(
        ledger.clone(),
        &generic_hooks(),
        metrics.clone(),
        stopped,
        &tracker,
    );
    tracker.close();
    tracker.wait().await;
    let first = inbox
        .receive("deploys", scale_delivery("d-1", 3))
        .await
        .unwrap();
    let second = inbox
        .receive("deploys", scale_delivery("d-2", 5))
        .await
        .unwrap();
    assert!(matches!(first, Receipt::Accepted { .. }));
    assert!(matches!(second, Receipt::Accepted { .. }));
    // d-2's action ran before the crash (its key is used, by the receiver,
    // whose principal its keys belong to); d-1's did not.
    let ran = CommandContext {
        actor: Actor::webhook("deploys"),
        idempotency_key: Some("hook/deploys/action/d-2/0".into()),
        ..context.clone()
    };
    ledger.scale("web", "w", 5, None, &ran).await.unwrap();

    // The next start processes both, in log order, each once.
    let running = CancellationToken::new();
    let tracker = TaskTracker::new();
    let inbox = Inbox::start(
        ledger.clone(),
        &generic_hooks(),
        metrics.clone(),
        running.clone(),
        &tracker,
    );
    let records = loop {
        let records = inbox.deliveries("deploys", 10).await.unwrap();
        if records.iter().all(|record| record.processed.is_some()) {
            break records;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    let results: Vec<(String, ActionResult)> = records
        .iter()
        .map(|record| {
            let processed = &record.processed.as_ref().unwrap().processed;
            (
                processed.delivery.clone(),
                processed.actions[0].result.clone(),
            )
        })
        .collect();
    assert_eq!(
        results,
        [
            ("d-2".to_string(), ActionResult::AlreadyDone),
            ("d-1".to_string(), ActionResult::Applied { events: 1 }),
        ]
    );
    // d-1 ran after d-2 was done by hand: its scale to 3 is the last word.
    let pools = ledger.cluster("web").unwrap().manifest.spec.pools;
    assert_eq!(pools[0].replicas, 3);

    // A third start finds nothing to do.
    running.cancel();
    tracker.close();
    tracker.wait().await;
    let head = store.head().seq;
    let running = CancellationToken::new();
    let tracker = TaskTracker::new();
    let _inbox = Inbox::start(
        ledger.clone(),
        &generic_hooks(),
        metrics.clone(),
        running.clone(),
        &tracker,
    );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(store.head().seq, head);
    running.cancel();
    follow.cancel();
}

#[test]
fn an_outcome_is_cut_to_fit_one_event() {
    let long = "x".repeat(10_000);
    // Many small reports: cut to the count.
    let many = WebhookProcessed {
        delivery: "d".into(),
        outcome: DeliveryOutcome::Done,
        summary: "150 actions".into(),
        actions: (0..150).map(|_| report(ActionResult::Unchanged)).collect(),
        skipped: Vec::new(),
    };
    let (cut, _) = bounded(many);
    assert_eq!(cut.actions.len(), MAX_REPORTS);
    assert_eq!(
        cut.skipped.last().unwrap().reason,
        "50 more action reports and 0 more skipped parts"
    );
    // Long texts everywhere: cut to the size.
    let large = WebhookProcessed {
        delivery: "d".into(),
        outcome: DeliveryOutcome::Partial,
        summary: long.clone(),
        actions: (0..500)
            .map(|_| {
                report(ActionResult::Failed {
                    error: long.clone(),
                })
            })
            .collect(),
        skipped: (0..500)
            .map(|index| SkippedReport {
                subject: format!("{index}-{long}.yaml"),
                reason: long.clone(),
            })
            .collect(),
    };
    let (cut, encoded) = bounded(large);
    assert!(cut.actions.len() < MAX_REPORTS);
    assert!(cut
        .skipped
        .last()
        .unwrap()
        .reason
        .ends_with("more skipped parts"));
    assert!(
        encoded.bytes.len() <= MAX_OUTCOME_BYTES,
        "{} bytes",
        encoded.bytes.len()
    );
}
