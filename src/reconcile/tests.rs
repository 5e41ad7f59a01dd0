//! Passes of the reconciler against a real log and the simulated cloud,
//! through a provider wrapper that counts calls and can be switched off.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Backoff, Reconciler, ReconcilerConfig, Requeue};
use crate::event::{Actor, ActorKind, Cause};
use crate::ledger::{ApplyOptions, CommandContext, Ledger};
use crate::metrics::ReconcileMetrics;
use crate::model::{
    parse_manifest, Action, ActionStarted, CloudResource, ConditionType, ManifestFormat,
    NetworkSpec, ReconcileEvent, ResourceKind, ResourceSpec, SubnetSpec,
};
use crate::provider::sim::{SimCloud, SimConfig, SimLatency};
use crate::provider::{Provider, ProviderError, Providers};
use crate::store::{EventStore, SledStore, SledStoreConfig};

const MANIFEST: &str = "apiVersion: cairn/v1\nkind: Cluster\nmetadata: {name: c}\nspec:\n  provider: sim\n  \
    region: r\n  kubernetesVersion: 1.31.2\n  network:\n    cidr: 10.0.0.0/16\n    subnets:\n      \
    - {name: a, cidr: 10.0.1.0/24}\n  pools:\n    - {name: w, role: worker, replicas: 2, machineType: m, \
    image: i, subnets: [a]}\n";

/// The sim, with every call written down and a switch that makes every
/// create fail (a provider outage).
struct Recording {
    sim: SimCloud,
    calls: Mutex<Vec<String>>,
    down: AtomicBool,
}

impl Recording {
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn note(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }
}

#[async_trait]
impl Provider for Recording {
    async fn create(
        &self,
        cluster: &str,
        token: &str,
        spec: &ResourceSpec,
    ) -> Result<CloudResource, ProviderError> {
        self.note(format!("create {token}"));
        if self.down.load(Ordering::SeqCst) {
            return Err(ProviderError::retryable("the provider is down"));
        }
        self.sim.create(cluster, token, spec).await
    }

    async fn delete(&self, cluster: &str, token: &str, id: &str) -> Result<(), ProviderError> {
        self.note(format!("delete {token}"));
        self.sim.delete(cluster, token, id).await
    }

    async fn describe(&self, id: &str) -> Result<Option<CloudResource>, ProviderError> {
        self.note(format!("describe {id}"));
        self.sim.describe(id).await
    }

    async fn lookup(&self, token: &str) -> Result<Option<CloudResource>, ProviderError> {
        self.note(format!("lookup {token}"));
        self.sim.lookup(token).await
    }

    async fn list(&self, cluster: &str) -> Result<Vec<CloudResource>, ProviderError> {
        self.note(format!("list {cluster}"));
        self.sim.list(cluster).await
    }
}

struct Setup {
    ledger: Arc<Ledger>,
    provider: Arc<Recording>,
    reconciler: Arc<Reconciler>,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(SledStoreConfig::new(dir.path())).unwrap());
    let ledger = Ledger::open(store as Arc<dyn EventStore>).await.unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(ledger.clone().follow(shutdown.clone()));
    let sim_config = SimConfig {
        latency_ms: SimLatency {
            create: 0,
            delete: 0,
            describe: 0,
            lookup: 0,
            list: 0,
        },
        list_delay_ms: 0,
        ..SimConfig::default()
    };
    let provider = Arc::new(Recording {
        sim: SimCloud::open(&dir.path().join("sim"), sim_config).unwrap(),
        calls: Mutex::new(Vec::new()),
        down: AtomicBool::new(false),
    });
    let mut providers = Providers::new();
    providers.insert("sim", provider.clone() as Arc<dyn Provider>);
    let config = ReconcilerConfig {
        workers: 1,
        concurrency: 4,
        cluster_concurrency: 4,
        resync: Duration::from_secs(3600),
        backoff: Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_millis(100),
        },
        degraded_after_failures: 3,
    };
    let reconciler = Reconciler::new(
        ledger.clone(),
        providers,
        config,
        ReconcileMetrics::default(),
    );
    let context = CommandContext {
        actor: Actor {
            kind: ActorKind::User,
            name: "test".into(),
        },
        request_id: "r".into(),
        correlation: Uuid::now_v7(),
        idempotency_key: None,
        reason: None,
    };
    let manifest = parse_manifest(MANIFEST.as_bytes(), ManifestFormat::Yaml).unwrap();
    ledger
        .apply(manifest, ApplyOptions::default(), &context)
        .await
        .unwrap();
    Setup {
        ledger,
        provider,
        reconciler,
        shutdown,
        _dir: dir,
    }
}

impl Setup {
    async fn pass(&self) -> Requeue {
        self.reconciler
            .reconcile("c", &self.shutdown)
            .await
            .unwrap()
    }

    fn condition(&self, condition: ConditionType) -> Option<(bool, String)> {
        let observed = self.ledger.observed("c")?;
        let value = observed.conditions.get(&condition)?;
        Some((value.status, value.reason.clone()))
    }

    /// Records an intent whose outcome a crash lost.
    async fn started_without_outcome(&self, spec: ResourceSpec, token: &str) {
        let started = ReconcileEvent::ActionStarted(ActionStarted {
            action: Action::Create { spec },
            token: token.into(),
            attempt: 1,
        });
        self.ledger
            .record("c", Uuid::nil(), vec![(started, Cause::None)])
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn an_action_in_flight_is_resolved_by_its_token_never_by_creating_again() {
    let setup = setup().await;
    let network = ResourceSpec::Network(NetworkSpec {
        cidr: "10.0.0.0/16".into(),
        region: "r".into(),
    });
    let subnet = ResourceSpec::Subnet(SubnetSpec {
        name: "a".into(),
        cidr: "10.0.1.0/24".into(),
        zone: None,
    });
    // The network's create reached the cloud before the crash; the subnet's did not.
    let made = setup
        .provider
        .sim
        .create("c", "c/network/network/0", &network)
        .await
        .unwrap();
    setup
        .started_without_outcome(network, "c/network/network/0")
        .await;
    setup.started_without_outcome(subnet, "c/subnet/a/0").await;

    assert_eq!(
        setup.pass().await,
        Requeue::After(Duration::from_secs(3600))
    );

    let calls = setup.provider.calls();
    assert!(
        calls.contains(&"lookup c/network/network/0".to_string()),
        "{calls:?}"
    );
    assert!(
        !calls.contains(&"create c/network/network/0".to_string()),
        "{calls:?}"
    );
    // The subnet was never made: its intent failed, and the retry reused the token.
    assert_eq!(
        calls.iter().filter(|c| *c == "create c/subnet/a/0").count(),
        1,
        "{calls:?}"
    );
    let observed = setup.ledger.observed("c").unwrap();
    assert!(observed.in_flight.is_empty());
    let network_key = crate::model::ResourceKey::new(ResourceKind::Network, "network");
    assert_eq!(
        observed.resources[&network_key].provider_id,
        made.provider_id
    );
    let cloud = setup.provider.sim.resources();
    assert_eq!(
        cloud.len(),
        4,
        "one network, one subnet, two machines: {cloud:#?}"
    );
    assert_eq!(
        setup.condition(ConditionType::Ready),
        Some((true, "Converged".into()))
    );
}

#[tokio::test]
async fn repeated_failing_passes_make_a_cluster_degraded_until_one_succeeds() {
    let setup = setup().await;
    setup.provider.down.store(true, Ordering::SeqCst);
    for pass in 1..=3 {
        let requeue = setup.pass().await;
        assert!(
            matches!(requeue, Requeue::After(delay) if delay <= Duration::from_millis(100)),
            "{requeue:?}"
        );
        let degraded = setup
            .condition(ConditionType::Degraded)
            .map(|(status, _)| status);
        assert_eq!(degraded, Some(pass >= 3), "after failing pass {pass}");
    }
    let (_, reason) = setup.condition(ConditionType::Degraded).unwrap();
    assert_eq!(reason, "ActionsFailing");
    assert!(!setup.condition(ConditionType::Ready).unwrap().0);

    setup.provider.down.store(false, Ordering::SeqCst);
    // The network is created; later phases follow in later passes if needed.
    while setup.condition(ConditionType::Ready) != Some((true, "Converged".into())) {
        setup.pass().await;
    }
    assert_eq!(
        setup.condition(ConditionType::Degraded),
        Some((false, "AsExpected".into()))
    );
    // Every failed try reused the network's token: one network in the cloud.
    let networks = setup
        .provider
        .sim
        .resources()
        .into_iter()
        .filter(|r| r.key().kind == ResourceKind::Network)
        .count();
    assert_eq!(networks, 1);
}

#[tokio::test]
async fn a_paused_cluster_gets_no_provider_calls() {
    let setup = setup().await;
    let context = CommandContext {
        actor: Actor {
            kind: ActorKind::User,
            name: "test".into(),
        },
        request_id: "p".into(),
        correlation: Uuid::now_v7(),
        idempotency_key: None,
        reason: None,
    };
    setup.ledger.pause("c", &context).await.unwrap();
    assert_eq!(setup.pass().await, Requeue::OnEvent);
    assert!(
        setup.provider.calls().is_empty(),
        "{:?}",
        setup.provider.calls()
    );
    assert_eq!(
        setup.condition(ConditionType::Paused),
        Some((true, "PausedByUser".into()))
    );

    setup.ledger.resume("c", &context).await.unwrap();
    setup.pass().await;
    assert_eq!(setup.provider.sim.resources().len(), 4);
    assert_eq!(
        setup.condition(ConditionType::Paused),
        Some((false, "Active".into()))
    );
}
