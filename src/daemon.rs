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
    let damaged = |source: StoreError| match source {
        StoreError::Corrupt { .. } | StoreError::DamagedLog { .. } => DaemonError::Damaged {
            dir: config.data_dir.display().to_string(),
            source,
        },
        other => DaemonError::Store(other),
    };
    // Recovery reads and may cut the log's tail: off the runtime's workers.
    let store_config = crate::store::StoreConfig::new(&config.data_dir);
    let store = tokio::task::spawn_blocking(move || crate::store::open(store_config))
        .await
        .map_err(|error| DaemonError::Store(StoreError::Io(error.to_string())))?
        .map_err(damaged)?;
    let metrics = Arc::new(Metrics::new(store.metrics()));
    let started = std::time::Instant::now();
    let ledger = Ledger::open_with(
        store.clone() as Arc<dyn EventStore>,
        config.snapshots.ledger_config(),
    )
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
    };
    let server = warp::serve(routes(state))
        .incoming(listener)
        .graceful(shutdown.clone().cancelled_owned());
    let finished = tokio::spawn(async move {
        server.run().await;
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
