//! Reconciliation figures on the simulated cloud, in one process.
//!
//! Run: `cargo bench --bench reconcile` (add `-- --machines 200` for a quicker run,
//! `-- --latency-ms 0` to see what the log and the sim cost without latency).
//! `--skip-lag` leaves out the lag phase (2 below), as the benchmark suite of
//! issue 6 does; `--json-out FILE` also writes the figures as one JSON object
//! (`tools/bench_json.rs`): `converge_<machines>_s` and
//! `converge_<machines>_fail10_s` (seconds from the apply to Ready, e.g.
//! `converge_1000_s`), `converge_<machines>_events` and
//! `converge_<machines>_fail10_events` (events in the log then),
//! `converge_<machines>_fail10_failed_actions`, and, with the lag phase,
//! `lag_p50_events`, `lag_p99_events`, `lag_max_events`. The issue sets no goal
//! for these, so every `met` is `null`.
//!
//! 1. Convergence: a 1,000-machine cluster (two pools of 500 over four subnets)
//!    is applied to an empty log; the time until its Ready condition is True is
//!    measured with the sim's latency at 10 ms for every call, 50 provider calls
//!    at once, and failure rates of 0% and 10%. Every action is two durable
//!    appends (intent and outcome), fsynced through group commit.
//! 2. Lag: 20 converged clusters receive a steady stream of scale changes (one
//!    apply every 5 ms, alternating 3 and 4 workers); the reconciler lag (head
//!    seq minus the last seq up to which every event's cluster has been through
//!    a pass that began after the event: `Reconciler::lag`) is sampled in a loop
//!    that sleeps 1 ms between samples.

// This bench records no figure with a goal (`Figures::goal`).
#[allow(dead_code)]
#[path = "bench_json.rs"]
mod bench_json;

use std::sync::Arc;
use std::time::{Duration, Instant};

/// The daemon's allocator (src/main.rs), so that the library figures are
/// those of the process that ships.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use bench_json::Figures;

use cairn::event::{Actor, ActorKind};
use cairn::ledger::{ApplyOptions, CommandContext, Ledger};
use cairn::metrics::ReconcileMetrics;
use cairn::model::{parse_manifest, ConditionType, Manifest, ManifestFormat, ResourceKind};
use cairn::provider::sim::{SimCloud, SimConfig, SimLatency};
use cairn::provider::{Provider, Providers};
use cairn::reconcile::{Backoff, Reconciler, ReconcilerConfig};
use cairn::store::EventStore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

fn manifest(name: &str, pools: &[(&str, i64)]) -> Manifest {
    let pools: String = pools
        .iter()
        .map(|(pool, replicas)| {
            format!(
                "    - {{name: {pool}, role: worker, replicas: {replicas}, machineType: m5.large, \
                 image: ubuntu-24.04, subnets: [a, b, c, d]}}\n"
            )
        })
        .collect();
    let yaml = format!(
        "apiVersion: cairn/v1\nkind: Cluster\nmetadata: {{name: {name}}}\nspec:\n  provider: sim\n  \
         region: eu-west-1\n  kubernetesVersion: 1.31.2\n  network:\n    cidr: 10.0.0.0/16\n    subnets:\n      \
         - {{name: a, cidr: 10.0.1.0/24}}\n      - {{name: b, cidr: 10.0.2.0/24}}\n      \
         - {{name: c, cidr: 10.0.3.0/24}}\n      - {{name: d, cidr: 10.0.4.0/24}}\n  pools:\n{pools}"
    );
    parse_manifest(yaml.as_bytes(), ManifestFormat::Yaml).expect("the bench manifest is valid")
}

fn context() -> CommandContext {
    CommandContext::new(Actor {
        kind: ActorKind::User,
        name: "bench".into(),
    })
}

struct Running {
    ledger: Arc<Ledger>,
    reconciler: Arc<Reconciler>,
    store: Arc<dyn EventStore>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    _dir: tempfile::TempDir,
}

async fn start(failure_rate: f64, latency_ms: u64) -> Running {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store =
        cairn::store::open(cairn::store::StoreConfig::new(dir.path())).expect("the store opens");
    let ledger = Ledger::open(store.clone() as Arc<dyn EventStore>)
        .await
        .expect("the ledger opens");
    let sim_config = SimConfig {
        seed: 42,
        latency_ms: SimLatency::uniform(latency_ms),
        failure_rate,
        machine_quota: 100_000,
        list_delay_ms: 500,
    };
    let sim = SimCloud::open(&dir.path().join("sim"), sim_config).expect("the sim opens");
    let mut providers = Providers::new();
    providers.insert("sim", Arc::new(sim) as Arc<dyn Provider>);
    let config = ReconcilerConfig {
        workers: 4,
        concurrency: 50,
        cluster_concurrency: 50,
        resync: Duration::from_secs(3600),
        backoff: Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
        },
        degraded_after_failures: 3,
    };
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    tasks.spawn(ledger.clone().follow(shutdown.clone()));
    let reconciler = Reconciler::new(
        ledger.clone(),
        providers,
        config,
        ReconcileMetrics::default(),
    );
    reconciler.start(&tasks, shutdown.clone());
    Running {
        ledger,
        reconciler,
        store,
        shutdown,
        tasks,
        _dir: dir,
    }
}

impl Running {
    fn ready(&self, name: &str) -> bool {
        self.ledger.observed(name).is_some_and(|observed| {
            observed
                .conditions
                .get(&ConditionType::Ready)
                .is_some_and(|ready| ready.status)
        })
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        self.store.close().await;
    }
}

/// What one convergence took.
struct Converged {
    seconds: f64,
    events: u64,
    failed: usize,
}

async fn converge(machines: i64, failure_rate: f64, latency_ms: u64) -> Converged {
    let running = start(failure_rate, latency_ms).await;
    let half = machines / 2;
    let cluster = manifest("big", &[("blue", half), ("green", machines - half)]);
    let started = Instant::now();
    running
        .ledger
        .apply(cluster, ApplyOptions::default(), &context())
        .await
        .expect("the apply succeeds");
    while !running.ready("big") {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let observed = running.ledger.observed("big").expect("observed state");
    let machine_count = observed
        .resources
        .keys()
        .filter(|key| key.kind == ResourceKind::Machine)
        .count();
    let events = running.store.head().seq;
    let failed = {
        let events = running
            .store
            .read(0, events as usize)
            .await
            .expect("the log reads");
        events
            .iter()
            .filter(|e| e.event_type == "ActionFailed")
            .count()
    };
    println!(
        "| {machines} | {:.0}% | {:.2} s | {machine_count} | {failed} | {events} | {:.0} |",
        failure_rate * 100.0,
        elapsed.as_secs_f64(),
        machine_count as f64 / elapsed.as_secs_f64(),
    );
    running.stop().await;
    Converged {
        seconds: elapsed.as_secs_f64(),
        events,
        failed,
    }
}

/// Reconciler lag in events: p50, p99, max.
async fn lag() -> (u64, u64, u64) {
    let running = start(0.0, 10).await;
    for index in 0..20 {
        let cluster = manifest(&format!("c{index}"), &[("workers", 3)]);
        running
            .ledger
            .apply(cluster, ApplyOptions::default(), &context())
            .await
            .expect("the apply succeeds");
    }
    while !(0..20).all(|index| running.ready(&format!("c{index}"))) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ledger = running.ledger.clone();
    let writer = tokio::spawn(async move {
        let mut applies = 0u64;
        let until = Instant::now() + Duration::from_secs(10);
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        while Instant::now() < until {
            tick.tick().await;
            let index = applies % 20;
            let workers = 3 + (applies / 20) as i64 % 2;
            let cluster = manifest(&format!("c{index}"), &[("workers", workers)]);
            ledger
                .apply(cluster, ApplyOptions::default(), &context())
                .await
                .expect("the apply succeeds");
            applies += 1;
        }
        applies
    });
    let mut samples = Vec::new();
    while !writer.is_finished() {
        samples.push(running.reconciler.lag());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let applies = writer.await.expect("the writer finishes");
    samples.sort_unstable();
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    println!(
        "lag under {applies} applies in 10 s ({:.0}/s), {} samples: p50 {} events, p99 {} events, max {} events; head seq {}",
        applies as f64 / 10.0,
        samples.len(),
        pick(0.5),
        pick(0.99),
        samples.last().copied().unwrap_or(0),
        running.store.head().seq,
    );
    let figures = (pick(0.5), pick(0.99), samples.last().copied().unwrap_or(0));
    running.stop().await;
    figures
}

fn main() {
    let mut machines = 1000;
    let mut latency_ms = 10;
    let mut arguments = std::env::args().skip(1);
    while let Some(argument) = arguments.next() {
        if argument == "--machines" {
            machines = arguments
                .next()
                .and_then(|value| value.parse().ok())
                .expect("--machines N");
        }
        if argument == "--latency-ms" {
            latency_ms = arguments
                .next()
                .and_then(|value| value.parse().ok())
                .expect("--latency-ms N");
        }
    }
    let skip_lag = bench_json::has_flag("--skip-lag");
    let json_out = bench_json::json_out_arg();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        println!("convergence on the sim provider, {latency_ms} ms per call, 50 calls at once:\n");
        println!("| machines | failure rate | time to Ready | machines | failed actions | events | machines/s |");
        println!("|---|---|---|---|---|---|---|");
        let clean = converge(machines, 0.0, latency_ms).await;
        let failing = converge(machines, 0.1, latency_ms).await;
        let mut figures = Figures::default();
        for (suffix, converged) in [("", &clean), ("_fail10", &failing)] {
            figures.add(
                &format!("converge_{machines}{suffix}_s"),
                converged.seconds,
                "s",
            );
            figures.add(
                &format!("converge_{machines}{suffix}_events"),
                converged.events as f64,
                "events",
            );
        }
        figures.add(
            &format!("converge_{machines}_fail10_failed_actions"),
            failing.failed as f64,
            "actions",
        );
        if skip_lag {
            println!("\nlag phase skipped (--skip-lag)");
        } else {
            println!();
            let (p50, p99, max) = lag().await;
            figures.add("lag_p50_events", p50 as f64, "events");
            figures.add("lag_p99_events", p99 as f64, "events");
            figures.add("lag_max_events", max as f64, "events");
        }
        if let Some(path) = &json_out {
            figures.write(
                path,
                "reconcile",
                serde_json::json!({
                    "machines": machines,
                    "latency_ms": latency_ms,
                    "provider_concurrency": 50,
                    "failure_rates": [0.0, 0.1],
                    "lag": !skip_lag,
                }),
            );
        }
    });
}
