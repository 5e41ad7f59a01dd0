//! `cairn serve`: wires the store, the ledger and the API together, and shuts
//! them down in order.
//!
//! Shutdown order: stop accepting connections and let in-flight requests
//! finish (their appends are answered), stop the reconcilers (a pass finishes
//! the provider calls it started and records their outcomes), stop the
//! projection follower, then close the store, whose writer drains its queue
//! and syncs one last time.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::auth::Auth;
use crate::api::{routes, ApiState};
use crate::config::Config;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::provider::exec::ExecProvider;
use crate::provider::sim::SimCloud;
use crate::provider::{Provider, Providers};
use crate::reconcile::Reconciler;
use crate::store::{EventStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot open the data directory")]
    Store(#[from] StoreError),
    #[error(
        "the log in {dir} is damaged; `cairn verify --data-dir {dir}` names the first bad record"
    )]
    Damaged { dir: String, source: StoreError },
    #[error("cannot open the simulated cloud")]
    Sim(#[from] crate::provider::sim::SimError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A daemon that is listening.
pub struct RunningDaemon {
    /// The address it listens on (the real port when the config said 0).
    pub addr: SocketAddr,
    /// Finishes when the daemon has shut down after `shutdown` was cancelled.
    pub finished: JoinHandle<()>,
}

/// Opens the store, replays the log, binds the listener and starts serving.
/// Returns once the daemon is listening.
pub async fn start(
    config: Config,
    shutdown: CancellationToken,
) -> Result<RunningDaemon, DaemonError> {
    let damaged = |source| store_error(&config, source);
    // Recovery reads and may cut the log's tail: off the runtime's workers.
    let store_config = crate::store::StoreConfig::new(&config.data_dir);
    let store = crate::store::open_off_runtime(store_config)
        .await
        .map_err(damaged)?;
    start_on_store(config, shutdown, store).await
}

/// A store error at start-up; damage names the directory and the command
/// that finds the first bad record.
fn store_error(config: &Config, source: StoreError) -> DaemonError {
    match source {
        StoreError::Corrupt { .. } | StoreError::DamagedLog { .. } => DaemonError::Damaged {
            dir: config.data_dir.display().to_string(),
            source,
        },
        other => DaemonError::Store(other),
    }
}

/// [`start`] on a store the caller opened (the tests open one on a
/// simulated disk whose faults they choose). The daemon closes it when it
/// stops.
pub(crate) async fn start_on_store(
    config: Config,
    shutdown: CancellationToken,
    store: Arc<dyn EventStore>,
) -> Result<RunningDaemon, DaemonError> {
    let damaged = |source| store_error(&config, source);
    let metrics = Arc::new(Metrics::new(store.metrics()));
    let started = std::time::Instant::now();
    let ledger = Ledger::open_with(store.clone(), config.snapshots.ledger_config())
        .await
        .map_err(damaged)?;
    tracing::info!(
        head_seq = store.head().seq,
        clusters = ledger.clusters().len(),
        millis = started.elapsed().as_millis() as u64,
        data_dir = %config.data_dir.display(),
        "log replayed"
    );

    let sim = Arc::new(SimCloud::open(
        &config.data_dir.join("sim"),
        config.sim.clone(),
    )?);
    let mut providers = Providers::new();
    providers.insert("sim", sim.clone() as Arc<dyn Provider>);
    for (name, plugin) in &config.providers.exec {
        let provider = ExecProvider::new(name.clone(), plugin.clone());
        providers.insert(
            format!("exec:{name}"),
            Arc::new(provider) as Arc<dyn Provider>,
        );
    }

    // Bind before anything runs: a daemon that cannot listen must not have
    // made provider calls.
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| DaemonError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| DaemonError::Bind {
        addr: config.listen,
        source,
    })?;

    let tasks = TaskTracker::new();
    let follower_stop = CancellationToken::new();
    tasks.spawn(ledger.clone().follow(follower_stop.clone()));
    let reconcile_tasks = TaskTracker::new();
    let reconcile_stop = CancellationToken::new();
    let reconciler = Reconciler::new(
        ledger.clone(),
        providers,
        config.reconcile.reconciler_config(),
        metrics.reconcile.clone(),
    );
    if config.reconcile.enabled {
        reconciler.start(&reconcile_tasks, reconcile_stop.clone());
    } else {
        tracing::info!("reconcilers are disabled ([reconcile] enabled = false)");
    }

    // The webhook workers stop with the reconcilers: before the follower and
    // the store, after the last request.
    let inbox = crate::webhook::inbox::Inbox::start(
        ledger.clone(),
        &config.hooks,
        metrics.clone(),
        reconcile_stop.clone(),
        &reconcile_tasks,
    );
    let state = ApiState {
        inbox,
        ledger,
        auth: Arc::new(Auth::new(config.tokens.clone())),
        metrics,
        max_body_bytes: config.max_body_bytes,
        shutdown: shutdown.clone(),
        sim,
        watch_heartbeat: config.api.watch_heartbeat(),
        body_work: Arc::new(crate::api::body_work::BodyWork::start(
            crate::api::body_work_slots(),
        )),
        webhook_reads: Arc::new(tokio::sync::Semaphore::new(
            crate::api::MAX_WEBHOOK_BODY_READS,
        )),
        webhook_body_timeout: config.api.webhook_body_timeout(),
    };
    let server =
        crate::api::server::serve(listener, warp::service(routes(state)), shutdown.clone());
    let finished = tokio::spawn(async move {
        server.await;
        tracing::info!("no more requests in flight; stopping");
        reconcile_stop.cancel();
        reconcile_tasks.close();
        reconcile_tasks.wait().await;
        follower_stop.cancel();
        tasks.close();
        tasks.wait().await;
        store.close().await;
        tracing::info!(head_seq = store.head().seq, "stopped");
    });
    Ok(RunningDaemon { addr, finished })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::disk::sim::{Fault, FaultError, FaultOp, SimDisk};
    use crate::store::index::MemoryIndexFile;
    use crate::store::log_store::{IndexLocation, LogStore, LogStoreConfig};
    use crate::store::StoreConfig;

    const MANIFEST: &str = include_str!("../docs/examples/prod-eu.yaml");

    /// A daemon on a store whose disk is `sim`, on 127.0.0.1:0.
    async fn daemon_on(
        sim: &SimDisk,
        index: &MemoryIndexFile,
        data_dir: &std::path::Path,
    ) -> (RunningDaemon, CancellationToken) {
        let store = LogStore::open(LogStoreConfig {
            disk: Arc::new(sim.clone()),
            index: IndexLocation::Memory(index.clone()),
            lock_directory: false,
            verify_in_background: false,
            ..LogStoreConfig::new(StoreConfig::new(data_dir))
        })
        .expect("the store opens");
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: data_dir.to_path_buf(),
            ..Config::default()
        };
        config.reconcile.enabled = false;
        let shutdown = CancellationToken::new();
        let daemon = start_on_store(config, shutdown.clone(), Arc::new(store))
            .await
            .expect("the daemon starts");
        (daemon, shutdown)
    }

    async fn apply(client: &reqwest::Client, base: &str, manifest: &str) -> reqwest::Response {
        client
            .post(format!("{base}/v1/apply"))
            .header("content-type", "application/yaml")
            .body(manifest.to_string())
            .send()
            .await
            .expect("the daemon answers")
    }

    async fn readyz(client: &reqwest::Client, base: &str) -> (u16, serde_json::Value) {
        let response = client.get(format!("{base}/readyz")).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// The end-to-end half of the store's fault test: with the disk full
    /// (or failing) under a running daemon, the request gets a clear error,
    /// `/readyz` answers 503 and says why, and a restart once the fault is
    /// gone serves again with every acknowledged change.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_disk_fault_makes_readyz_say_why_and_a_restart_without_it_serves_again() {
        for (op, error, words) in [
            (
                FaultOp::SyncData,
                FaultError::NoSpace,
                "No space left on device",
            ),
            (FaultOp::Write, FaultError::Io, "Input/output error"),
        ] {
            let data_dir = tempfile::tempdir().unwrap();
            let sim = SimDisk::new(11);
            let index = MemoryIndexFile::default();
            let client = reqwest::Client::new();

            let (daemon, shutdown) = daemon_on(&sim, &index, data_dir.path()).await;
            let base = format!("http://{}", daemon.addr);
            assert!(apply(&client, &base, MANIFEST).await.status().is_success());
            assert_eq!(readyz(&client, &base).await.0, 200);

            sim.inject(Fault {
                op,
                error,
                after: 0,
                sticky: true,
            });
            let scaled = MANIFEST.replace("replicas: 5", "replicas: 7");
            let refused = apply(&client, &base, &scaled).await;
            assert_eq!(refused.status().as_u16(), 503, "{op:?} {error:?}");
            let problem: serde_json::Value = refused.json().await.unwrap();
            assert!(
                problem.to_string().contains(words),
                "{op:?} {error:?}: {problem}"
            );
            // Every later request says the store has stopped, and that a
            // retry against this process will not help.
            let again = apply(&client, &base, &scaled).await;
            assert_eq!(again.status().as_u16(), 503);
            let problem: serde_json::Value = again.json().await.unwrap();
            assert_eq!(problem["code"], "store_failed", "{problem}");
            let (status, body) = readyz(&client, &base).await;
            assert_eq!(status, 503, "{body}");
            assert_eq!(body["ready"], false);
            let failure = body["storeFailure"].as_str().unwrap_or_default();
            assert!(failure.contains(words), "{op:?} {error:?}: {failure}");

            shutdown.cancel();
            daemon.finished.await.unwrap();
            sim.clear_faults();

            let (daemon, shutdown) = daemon_on(&sim, &index, data_dir.path()).await;
            let base = format!("http://{}", daemon.addr);
            assert_eq!(readyz(&client, &base).await.0, 200);
            let cluster: serde_json::Value = client
                .get(format!("{base}/v1/clusters/prod-eu"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            // The acknowledged declaration is there. The refused change's
            // outcome was unknown (its write may have reached the file
            // before the fdatasync failed), so it may be there too.
            assert_eq!(cluster["declaredSeq"], 1, "{cluster}");
            let workers = &cluster["desired"]["spec"]["pools"][1];
            assert!(
                workers["replicas"] == 5 || workers["replicas"] == 7,
                "{workers}"
            );
            let again = MANIFEST.replace("replicas: 5", "replicas: 9");
            assert!(apply(&client, &base, &again).await.status().is_success());
            shutdown.cancel();
            daemon.finished.await.unwrap();
        }
    }
}
