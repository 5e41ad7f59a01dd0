//! Passes of the reconciler against a real log and the simulated cloud,
//! through a provider wrapper that counts calls and can be switched off.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
use crate::store::EventStore;

fn manifest(drift: &str, replicas: i64, image: &str, firewall: bool) -> String {
    let firewall = if firewall {
        "  firewall:\n    - {name: api, direction: ingress, protocol: tcp, ports: \"443\", source: 0.0.0.0/0}\n"
    } else {
        ""
    };
    format!(
        "apiVersion: cairn/v1\nkind: Cluster\nmetadata: {{name: c}}\nspec:\n  provider: sim\n  region: r\n  \
         kubernetesVersion: 1.31.2\n  network:\n    cidr: 10.0.0.0/16\n    subnets:\n      \
         - {{name: a, cidr: 10.0.1.0/24}}\n{firewall}  pools:\n    - {{name: w, role: worker, \
         replicas: {replicas}, machineType: m, image: {image}, subnets: [a]}}\n  policy: {{drift: {drift}}}\n"
    )
}

/// The sim, with every call written down, a switch that makes every create
/// fail (a provider outage), tokens whose create or delete answer is lost
/// after the cloud did the work, and a switch that makes lookups fail.
struct Recording {
    sim: SimCloud,
    calls: Mutex<Vec<String>>,
    down: AtomicBool,
    lose_create: Mutex<HashSet<String>>,
    lose_delete: Mutex<HashSet<String>>,
    lookup_fails: AtomicBool,
    /// Creates in progress now, and the most there ever were at once.
    creating: AtomicUsize,
    most_creating: AtomicUsize,
}

impl Recording {
    fn new(sim: SimCloud) -> Recording {
        Recording {
            sim,
            calls: Mutex::new(Vec::new()),
            down: AtomicBool::new(false),
            lose_create: Mutex::new(HashSet::new()),
            lose_delete: Mutex::new(HashSet::new()),
            lookup_fails: AtomicBool::new(false),
            creating: AtomicUsize::new(0),
            most_creating: AtomicUsize::new(0),
        }
    }

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
        let now = self.creating.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_creating.fetch_max(now, Ordering::SeqCst);
        let made = self.sim.create(cluster, token, spec).await;
        self.creating.fetch_sub(1, Ordering::SeqCst);
        if made.is_ok() && self.lose_create.lock().unwrap().remove(token) {
            return Err(ProviderError::retryable("the answer was lost"));
        }
        made
    }

    async fn delete(&self, cluster: &str, token: &str, id: &str) -> Result<(), ProviderError> {
        self.note(format!("delete {token}"));
        let done = self.sim.delete(cluster, token, id).await;
        if done.is_ok() && self.lose_delete.lock().unwrap().remove(token) {
            return Err(ProviderError::retryable("the answer was lost"));
        }
        done
    }

    async fn describe(&self, id: &str) -> Result<Option<CloudResource>, ProviderError> {
        self.note(format!("describe {id}"));
        self.sim.describe(id).await
    }

    async fn lookup(&self, token: &str) -> Result<Option<CloudResource>, ProviderError> {
        self.note(format!("lookup {token}"));
        if self.lookup_fails.load(Ordering::SeqCst) {
            return Err(ProviderError::retryable("lookups are unavailable"));
        }
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
    setup_with(
        &manifest("correct", 2, "i", false),
        Duration::from_secs(3600),
        0,
    )
    .await
}

fn test_context() -> CommandContext {
    CommandContext::new(Actor {
        kind: ActorKind::User,
        name: "test".into(),
    })
}

async fn apply(ledger: &Ledger, text: &str) {
    let manifest = parse_manifest(text.as_bytes(), ManifestFormat::Yaml).unwrap();
    ledger
        .apply(manifest, ApplyOptions::default(), &test_context())
        .await
        .unwrap();
}

fn reconciler_config(resync: Duration, concurrency: usize) -> ReconcilerConfig {
    ReconcilerConfig {
        workers: 1,
        concurrency,
        cluster_concurrency: concurrency,
        resync,
        backoff: Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_millis(100),
        },
        degraded_after_failures: 3,
    }
}

/// A log with cluster `c` declared from `text`, the sim with `create_ms` of
/// latency per create, and a reconciler resyncing every `resync`.
async fn setup_with(text: &str, resync: Duration, create_ms: u64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::store::open(crate::store::StoreConfig::new(dir.path())).unwrap();
    let ledger = Ledger::open(store as Arc<dyn EventStore>).await.unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(ledger.clone().follow(shutdown.clone()));
    let sim_config = SimConfig {
        latency_ms: SimLatency {
            create: create_ms,
            ..SimLatency::uniform(0)
        },
        list_delay_ms: 0,
        ..SimConfig::default()
    };
    let provider = Arc::new(Recording::new(
        SimCloud::open(&dir.path().join("sim"), sim_config).unwrap(),
    ));
    let mut providers = Providers::new();
    providers.insert("sim", provider.clone() as Arc<dyn Provider>);
    let concurrency = if create_ms > 0 { 1 } else { 4 };
    let reconciler = Reconciler::new(
        ledger.clone(),
        providers,
        reconciler_config(resync, concurrency),
        ReconcileMetrics::default(),
    );
    apply(&ledger, text).await;
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

    /// Passes until the cluster is Ready, at most `limit`.
    async fn until_ready(&self, limit: usize) {
        for _ in 0..limit {
            self.pass().await;
            if self.condition(ConditionType::Ready) == Some((true, "Converged".into())) {
                return;
            }
        }
        panic!(
            "not Ready after {limit} passes: {:?}",
            self.ledger.observed("c")
        );
    }

    /// Machine name -> (provider id, token, image), panicking on a duplicate.
    fn machines(&self) -> std::collections::BTreeMap<String, (String, String, String)> {
        let mut machines = std::collections::BTreeMap::new();
        for resource in self.provider.sim.resources() {
            if let ResourceSpec::Machine(machine) = &resource.spec {
                let entry = (
                    resource.provider_id.clone(),
                    resource.token.clone(),
                    machine.image.clone(),
                );
                assert!(
                    machines.insert(machine.name.clone(), entry).is_none(),
                    "duplicate {}",
                    machine.name
                );
            }
        }
        machines
    }

    /// A restarted daemon's reconciler: nothing in memory, so its first pass resyncs.
    fn restarted(&self) -> Arc<Reconciler> {
        let mut providers = Providers::new();
        providers.insert("sim", self.provider.clone() as Arc<dyn Provider>);
        Reconciler::new(
            self.ledger.clone(),
            providers,
            reconciler_config(Duration::from_secs(3600), 4),
            ReconcileMetrics::default(),
        )
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
    let context = test_context();
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

#[tokio::test]
async fn a_create_whose_answer_was_lost_is_claimed_not_reported_as_drift() {
    // Policy report, and a resync on every pass: the worst case for confusion.
    let setup = setup_with(&manifest("report", 2, "i", false), Duration::ZERO, 0).await;
    setup
        .provider
        .lose_create
        .lock()
        .unwrap()
        .insert("c/machine/w-1/0".into());
    setup.until_ready(6).await;
    let machines = setup.machines();
    assert_eq!(machines.len(), 2, "{machines:?}");
    assert_eq!(machines["w-1"].1, "c/machine/w-1/0");
    let observed = setup.ledger.observed("c").unwrap();
    assert!(observed.drift.is_empty(), "{:?}", observed.drift);
    assert_eq!(
        setup.condition(ConditionType::Degraded).map(|d| d.0),
        Some(false)
    );
}

#[tokio::test]
async fn a_delete_whose_answer_was_lost_does_not_stall_a_rollout_after_a_restart() {
    let setup = setup_with(
        &manifest("report", 2, "i", false),
        Duration::from_secs(3600),
        0,
    )
    .await;
    setup.until_ready(4).await;
    apply(&setup.ledger, &manifest("report", 2, "j", false)).await;
    setup
        .provider
        .lose_delete
        .lock()
        .unwrap()
        .insert("c/machine/w-0/0/delete".into());
    setup.pass().await;
    // A restart: the first pass resyncs before it retries the delete.
    let restarted = setup.restarted();
    for _ in 0..8 {
        restarted.reconcile("c", &setup.shutdown).await.unwrap();
    }
    let machines = setup.machines();
    assert_eq!(machines.len(), 2, "{machines:?}");
    assert!(
        machines.values().all(|(_, _, image)| image == "j"),
        "{machines:?}"
    );
    assert_eq!(
        setup.condition(ConditionType::Ready),
        Some((true, "Converged".into()))
    );
}

#[tokio::test]
async fn deletion_finds_what_a_lost_answer_left_before_it_says_cluster_deleted() {
    let setup = setup_with(
        &manifest("correct", 1, "i", true),
        Duration::from_secs(3600),
        0,
    )
    .await;
    setup
        .provider
        .lose_create
        .lock()
        .unwrap()
        .insert("c/firewall_rule/api/0".into());
    setup.pass().await;
    setup
        .ledger
        .request_deletion("c", &test_context())
        .await
        .unwrap();
    for _ in 0..8 {
        if setup.pass().await == Requeue::OnEvent {
            break;
        }
    }
    assert!(
        setup.ledger.cluster("c").is_none(),
        "ClusterDeleted was written"
    );
    let left: Vec<_> = setup.provider.sim.resources();
    assert!(left.is_empty(), "the cloud still holds {left:#?}");
}

#[tokio::test]
async fn a_spent_token_moves_the_resource_to_a_new_incarnation() {
    let setup = setup().await;
    setup
        .provider
        .lose_create
        .lock()
        .unwrap()
        .insert("c/machine/w-1/0".into());
    setup.pass().await;
    // The resource its lost answer made is deleted before the retry.
    let made = setup
        .provider
        .sim
        .lookup("c/machine/w-1/0")
        .await
        .unwrap()
        .unwrap();
    setup
        .provider
        .sim
        .delete_behind_back(&made.provider_id)
        .await
        .unwrap();
    setup.until_ready(6).await;
    let machines = setup.machines();
    assert_eq!(machines.len(), 2, "{machines:?}");
    assert_eq!(machines["w-1"].1, "c/machine/w-1/1");
}

#[tokio::test]
async fn an_action_that_cannot_be_resolved_is_not_started_again() {
    let setup = setup().await;
    let network = ResourceSpec::Network(NetworkSpec {
        cidr: "10.0.0.0/16".into(),
        region: "r".into(),
    });
    setup
        .started_without_outcome(network, "c/network/network/0")
        .await;
    setup.provider.lookup_fails.store(true, Ordering::SeqCst);
    let requeue = setup.pass().await;
    assert!(matches!(requeue, Requeue::After(_)), "{requeue:?}");
    let calls = setup.provider.calls();
    assert!(
        !calls.contains(&"create c/network/network/0".to_string()),
        "{calls:?}"
    );
    assert_eq!(setup.ledger.observed("c").unwrap().in_flight.len(), 1);
    // Once lookups work again, it is resolved and the cluster converges.
    setup.provider.lookup_fails.store(false, Ordering::SeqCst);
    setup.until_ready(4).await;
    assert_eq!(setup.provider.sim.resources().len(), 4);
}

#[tokio::test]
async fn a_pause_stops_a_pass_before_its_next_intent() {
    let setup = setup_with(
        &manifest("correct", 8, "i", false),
        Duration::from_secs(3600),
        100,
    )
    .await;
    let reconciler = setup.reconciler.clone();
    let shutdown = setup.shutdown.clone();
    let pass = tokio::spawn(async move { reconciler.reconcile("c", &shutdown).await.unwrap() });
    // One create at a time, 50 to 150 ms each: pause while the first ones run.
    while !setup
        .provider
        .calls()
        .iter()
        .any(|call| call.starts_with("create c/machine"))
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    setup.ledger.pause("c", &test_context()).await.unwrap();
    let creates_at_pause = setup
        .provider
        .calls()
        .iter()
        .filter(|c| c.starts_with("create"))
        .count();
    pass.await.unwrap();
    let creates = setup
        .provider
        .calls()
        .iter()
        .filter(|c| c.starts_with("create"))
        .count();
    // At most the call already past its intent finishes.
    assert!(
        creates <= creates_at_pause + 1,
        "{creates_at_pause} at the pause, {creates} after"
    );
    assert!(setup.machines().len() < 8);
}

#[tokio::test]
async fn reported_drift_of_a_resource_no_longer_wanted_stops_counting() {
    let setup = setup_with(&manifest("report", 2, "i", false), Duration::ZERO, 0).await;
    setup.until_ready(4).await;
    let w1 = setup
        .provider
        .sim
        .lookup("c/machine/w-1/0")
        .await
        .unwrap()
        .unwrap();
    setup
        .provider
        .sim
        .delete_behind_back(&w1.provider_id)
        .await
        .unwrap();
    setup.pass().await;
    assert_eq!(
        setup.condition(ConditionType::Degraded),
        Some((true, "DriftReported".into()))
    );
    assert_eq!(setup.machines().len(), 1, "report does not repair");
    apply(&setup.ledger, &manifest("report", 1, "i", false)).await;
    setup.until_ready(3).await;
    assert_eq!(
        setup.condition(ConditionType::Degraded),
        Some((false, "AsExpected".into()))
    );
}

#[tokio::test]
async fn an_orphan_with_a_wanted_name_is_cleaned_up_without_blocking_the_cluster() {
    let setup = setup_with(&manifest("correct", 1, "i", false), Duration::ZERO, 0).await;
    setup.until_ready(4).await;
    let subnet = ResourceSpec::Subnet(SubnetSpec {
        name: "a".into(),
        cidr: "10.0.1.0/24".into(),
        zone: None,
    });
    setup
        .provider
        .sim
        .create("c", "someone-else", &subnet)
        .await
        .unwrap();
    apply(&setup.ledger, &manifest("correct", 2, "i", false)).await;
    setup.until_ready(6).await;
    assert_eq!(setup.machines().len(), 2);
    let subnets = setup
        .provider
        .sim
        .resources()
        .into_iter()
        .filter(|r| r.key().kind == ResourceKind::Subnet)
        .count();
    assert_eq!(subnets, 1, "the orphan subnet was deleted");
}

/// The most creates at once when two clusters of 8 machines are reconciled
/// together, with these limits (overall, per cluster).
async fn most_creates_at_once(concurrency: usize, cluster_concurrency: usize) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::store::open(crate::store::StoreConfig::new(dir.path())).unwrap();
    let ledger = Ledger::open(store as Arc<dyn EventStore>).await.unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(ledger.clone().follow(shutdown.clone()));
    let sim_config = SimConfig {
        latency_ms: SimLatency {
            create: 20,
            ..SimLatency::uniform(0)
        },
        list_delay_ms: 0,
        ..SimConfig::default()
    };
    let provider = Arc::new(Recording::new(
        SimCloud::open(&dir.path().join("sim"), sim_config).unwrap(),
    ));
    let mut providers = Providers::new();
    providers.insert("sim", provider.clone() as Arc<dyn Provider>);
    let config = ReconcilerConfig {
        workers: 2,
        concurrency,
        cluster_concurrency,
        ..reconciler_config(Duration::from_secs(3600), 1)
    };
    let reconciler = Reconciler::new(
        ledger.clone(),
        providers,
        config,
        ReconcileMetrics::default(),
    );
    for name in ["c", "d"] {
        let text =
            manifest("correct", 8, "i", false).replace("{name: c}", &format!("{{name: {name}}}"));
        apply(&ledger, &text).await;
    }
    let passes = ["c", "d"].map(|name| {
        let reconciler = reconciler.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { reconciler.reconcile(name, &shutdown).await.unwrap() })
    });
    for pass in passes {
        pass.await.unwrap();
    }
    let machines = provider
        .sim
        .resources()
        .into_iter()
        .filter(|r| r.key().kind == ResourceKind::Machine)
        .count();
    assert_eq!(machines, 16, "both clusters finished their machines");
    provider.most_creating.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_calls_are_bounded_per_cluster_and_overall() {
    // Per cluster 3, overall plenty: never more than 6 at once, and more than
    // one cluster's worth (the clusters do run side by side).
    let most = most_creates_at_once(64, 3).await;
    assert!((4..=6).contains(&most), "{most} creates at once");
    // Overall 4 binds before per cluster 3 can be reached twice.
    let most = most_creates_at_once(4, 3).await;
    assert!((3..=4).contains(&most), "{most} creates at once");
}
