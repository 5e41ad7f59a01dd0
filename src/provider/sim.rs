//! The simulated cloud: Cairn's default provider, persisted in the data dir.
//!
//! `SimCloud` behaves like a small public cloud, so that the reconciler meets
//! the troubles it will meet in a real one:
//!
//! - **Latency.** Every call sleeps its configured latency, with seeded jitter
//!   (uniform between half and one and a half times the configured value),
//!   through `tokio::time::sleep`, so tests can pause the clock.
//! - **Failures.** With probability `failure_rate` a create or delete fails as
//!   retryable. Half of those fail before the effect ("simulated transient
//!   error"), half after the effect was made durable ("simulated lost
//!   response"): the cloud did the work but the answer was lost, which is why
//!   idempotency tokens matter.
//! - **Idempotency.** A create whose token already made a live resource
//!   returns that resource unchanged. A token whose resource was deleted is a
//!   permanent error: a token never silently creates a second resource.
//!   Deleting a resource that is already gone succeeds.
//! - **Dependencies.** A subnet needs its cluster's network, and its cidr must
//!   lie in the network's cidr. A machine needs its subnet (`MachineSpec.subnet`
//!   names a subnet of the same cluster). A subnet with machines, or a network
//!   with subnets, cannot be deleted. Firewall rules depend on nothing.
//! - **Addresses.** A machine gets the lowest free host address of its
//!   subnet, skipping the network address, the first three hosts (reserved,
//!   as on AWS) and the broadcast address.
//! - **Quota.** At most `machine_quota` machines are alive at once, over all
//!   clusters.
//! - **Drift.** [`SimCloud::delete_behind_back`] deletes a resource without
//!   Cairn asking, as an operator with a cloud console would.
//!
//! # Consistency model
//!
//! `describe` and `lookup` are consistent: they see every durable change at
//! once. `list` is eventually consistent: it shows the world as it was
//! `list_delay_ms` ago. A created resource appears in `list` only
//! `list_delay_ms` after its creation, and a deleted one keeps appearing until
//! `list_delay_ms` after its deletion (its tombstone is kept in memory only).
//! Everything loaded from the journal when the cloud is opened is visible to
//! `list` at once: a restart forgets the lag.
//!
//! # Journal format
//!
//! The cloud lives in `journal.ndjson` in its directory: one JSON object per
//! line, appended and `sync_data`'d before the call that made the change
//! returns success.
//!
//! ```text
//! {"created":{"resource":{"providerId":"sim-net-000001","cluster":"prod","token":"...","spec":{...},"address":null}}}
//! {"deleted":{"provider_id":"sim-net-000001"}}
//! ```
//!
//! Opening the cloud replays the journal. A torn last line (one without its
//! trailing newline, or a last line that does not parse) is the trace of a
//! write that crashed before it was acknowledged: it is truncated away. A line
//! that does not parse anywhere else is corruption, reported with its line
//! number. Provider ids share one counter (`sim-net-000001`,
//! `sim-subnet-000002`, `sim-fw-000003`, `sim-m-000004`), restored from the
//! journal on open.
//!
//! # Layout
//!
//! - [`SimConfig`], [`SimLatency`]: the knobs, with a pleasant demo default.
//! - [`SimCloud`]: the public face; the `Provider` implementation sleeps,
//!   rolls the dice, then hands every mutation to a blocking thread.
//! - `Shared`: what the async calls and the blocking threads share: the
//!   journal (whose lock serializes mutations, taken only on blocking
//!   threads) and the state (a std mutex, never held across an await).
//! - `SimState`: the in-memory cloud: live resources, every token ever used,
//!   tombstones for `list`, and the validation of creates and deletes.
//! - `Journal` and `replay_journal`: the file, its appends and its replay.
//!
//! A mutation runs whole on a blocking thread (validate, append, sync, apply
//! to memory), so a caller that gives up on its future (a timeout) cannot
//! leave the memory behind the journal.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use ipnet::IpNet;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{Provider, ProviderError};
use crate::model::{CloudResource, ResourceKind, ResourceSpec};

/// The name of the journal file inside the simulated cloud's directory.
pub const JOURNAL_FILE_NAME: &str = "journal.ndjson";

/// The latency of each kind of call, in milliseconds, before jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimLatency {
    pub create: u64,
    pub delete: u64,
    pub describe: u64,
    pub lookup: u64,
    pub list: u64,
}

impl SimLatency {
    /// The same latency for every kind of call (0: none).
    pub fn uniform(millis: u64) -> SimLatency {
        SimLatency {
            create: millis,
            delete: millis,
            describe: millis,
            lookup: millis,
            list: millis,
        }
    }
}

impl Default for SimLatency {
    fn default() -> Self {
        SimLatency {
            create: 20,
            delete: 10,
            describe: 1,
            lookup: 1,
            list: 2,
        }
    }
}

/// How the simulated cloud behaves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "snake_case")]
pub struct SimConfig {
    /// Seeds every random choice: latency jitter and failures.
    pub seed: u64,
    /// The latency of each kind of call.
    pub latency_ms: SimLatency,
    /// The probability, from 0.0 to 1.0, that a create or delete fails
    /// (retryably).
    pub failure_rate: f64,
    /// The most machines alive at once, over all clusters. A create beyond it
    /// fails permanently.
    pub machine_quota: u32,
    /// How long after a create or delete `list` still shows the old picture.
    pub list_delay_ms: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 0,
            latency_ms: SimLatency::default(),
            failure_rate: 0.0,
            machine_quota: 10_000,
            list_delay_ms: 500,
        }
    }
}

impl SimConfig {
    /// Checks the values serde cannot; the error names the bad field.
    pub fn check(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.failure_rate) {
            return Err(format!(
                "failure_rate must lie between 0.0 and 1.0, got {}",
                self.failure_rate
            ));
        }
        Ok(())
    }
}

/// What can go wrong opening the simulated cloud or changing it behind
/// Cairn's back.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("invalid sim provider config: {0}")]
    Config(String),
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("simulated cloud journal {path} is corrupt at line {line}: {message}")]
    CorruptJournal {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error(
        "simulated cloud journal {path} cannot take more writes until the cloud is reopened: {reason}"
    )]
    JournalUnusable { path: PathBuf, reason: String },
    /// The resource cannot be deleted while others depend on it.
    #[error("{0}")]
    InUse(String),
    #[error("the simulated cloud's blocking writer failed: {0}")]
    Writer(String),
}

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum JournalEntry {
    Created { resource: Box<CloudResource> },
    Deleted { provider_id: String },
}

/// The simulated cloud. Cheap to share behind an `Arc`; every method takes
/// `&self`.
pub struct SimCloud {
    shared: Arc<Shared>,
}

/// What the async calls and the blocking writer threads share.
struct Shared {
    config: SimConfig,
    /// The journal. Its lock serializes mutations and is taken only on
    /// blocking threads, never across an await.
    journal: Mutex<Journal>,
    /// The in-memory cloud. Held only briefly, never across an await.
    state: Mutex<SimState>,
    /// The one source of randomness, seeded by `config.seed`.
    random: Mutex<StdRng>,
}

/// The failure a call was chosen to suffer, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InjectedFailure {
    None,
    BeforeEffect,
    AfterEffect,
}

const TRANSIENT_ERROR_MESSAGE: &str = "simulated transient error";
const LOST_RESPONSE_MESSAGE: &str =
    "simulated lost response: the cloud did it but the answer was lost";

/// Locks a mutex, carrying on after a panic in another holder: the journal
/// cuts back failed appends and the state changes in small whole steps, so
/// what a panic leaves behind is still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SimCloud {
    /// Opens (or creates) the simulated cloud persisted in `dir` (the daemon
    /// passes `<data_dir>/sim`), replaying its journal. Everything loaded is
    /// visible to `list` at once.
    pub fn open(dir: &Path, config: SimConfig) -> Result<SimCloud, SimError> {
        config.check().map_err(SimError::Config)?;
        std::fs::create_dir_all(dir).map_err(|source| SimError::Io {
            action: "create directory",
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(JOURNAL_FILE_NAME);
        let io_error = |action: &'static str| {
            let path = path.clone();
            move |source| SimError::Io {
                action,
                path,
                source,
            }
        };
        let journal_existed = path.try_exists().map_err(io_error("check"))?;
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io_error("open"))?;
        if !journal_existed {
            // Make the new file's directory entry durable too.
            File::open(dir)
                .and_then(|directory| directory.sync_all())
                .map_err(|source| SimError::Io {
                    action: "sync directory",
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
        let mut contents = Vec::new();
        file.read_to_end(&mut contents).map_err(io_error("read"))?;
        let (state, valid_length) = replay_journal(&path, &contents)?;
        if valid_length < contents.len() {
            tracing::warn!(
                journal = %path.display(),
                torn_bytes = contents.len() - valid_length,
                "truncating the torn last line of the simulated cloud journal"
            );
            file.set_len(valid_length as u64)
                .and_then(|()| file.sync_data())
                .map_err(io_error("truncate"))?;
        }
        let random = StdRng::seed_from_u64(config.seed);
        Ok(SimCloud {
            shared: Arc::new(Shared {
                config,
                journal: Mutex::new(Journal {
                    path,
                    file,
                    length: valid_length as u64,
                    unusable: None,
                }),
                state: Mutex::new(state),
                random: Mutex::new(random),
            }),
        })
    }

    /// The true state, every cluster, sorted by provider id (not eventually
    /// consistent): for tests and admin endpoints.
    pub fn resources(&self) -> Vec<CloudResource> {
        let state = lock(&self.shared.state);
        state
            .live
            .values()
            .map(|live| live.resource.clone())
            .collect()
    }

    /// Deletes a resource behind Cairn's back (to make drift), with neither
    /// latency nor injected failures, but with the cloud's dependency rules
    /// (a subnet with machines or a network with subnets is refused with
    /// `SimError::InUse`). Returns what it deleted, None if no such id.
    /// Durable before it returns.
    pub async fn delete_behind_back(
        &self,
        provider_id: &str,
    ) -> Result<Option<CloudResource>, SimError> {
        let shared = Arc::clone(&self.shared);
        let provider_id = provider_id.to_string();
        let now = Instant::now();
        let deleted =
            tokio::task::spawn_blocking(move || shared.delete_blocking(&provider_id, now))
                .await
                .map_err(|error| SimError::Writer(error.to_string()))??;
        if let Some(resource) = &deleted {
            tracing::info!(
                provider_id = %resource.provider_id,
                cluster = %resource.cluster,
                resource = %resource.key(),
                "simulated cloud resource deleted behind Cairn's back"
            );
        }
        Ok(deleted)
    }

    /// Sleeps the given latency with seeded jitter; zero means no sleep.
    async fn simulate_latency(&self, base_milliseconds: u64) {
        if base_milliseconds == 0 {
            return;
        }
        let factor: f64 = {
            let mut random = lock(&self.shared.random);
            random.random_range(0.5..=1.5)
        };
        let seconds = base_milliseconds as f64 * factor / 1000.0;
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    }

    /// Decides whether this create or delete fails, and when.
    fn roll_failure(&self) -> InjectedFailure {
        let failure_rate = self.shared.config.failure_rate;
        if failure_rate <= 0.0 {
            return InjectedFailure::None;
        }
        let mut random = lock(&self.shared.random);
        // `random::<f64>()` lies in [0, 1), so a rate of 1.0 always fails.
        if random.random::<f64>() >= failure_rate {
            InjectedFailure::None
        } else if random.random_bool(0.5) {
            InjectedFailure::BeforeEffect
        } else {
            InjectedFailure::AfterEffect
        }
    }

    fn list_delay(&self) -> Duration {
        Duration::from_millis(self.shared.config.list_delay_ms)
    }
}

impl Shared {
    /// Validates and makes a create durable, then applies it to memory. Runs
    /// on a blocking thread with the journal locked, so mutations are
    /// serialized and none is lost by a cancelled caller.
    fn create_blocking(
        &self,
        cluster: &str,
        token: &str,
        spec: &ResourceSpec,
        listed_from: Instant,
    ) -> Result<CloudResource, ProviderError> {
        let mut journal = lock(&self.journal);
        let resource = {
            let state = lock(&self.state);
            match state.plan_create(cluster, token, spec, self.config.machine_quota)? {
                CreatePlan::Existing(resource) => return Ok(resource),
                CreatePlan::New(resource) => resource,
            }
        };
        journal
            .append(&JournalEntry::Created {
                resource: Box::new(resource.clone()),
            })
            .map_err(|error| ProviderError::retryable(error.to_string()))?;
        lock(&self.state).apply_created(resource.clone(), Some(listed_from));
        Ok(resource)
    }

    /// Validates and makes a delete durable, then applies it to memory; None
    /// when no live resource has this id. Runs on a blocking thread with the
    /// journal locked.
    fn delete_blocking(
        &self,
        provider_id: &str,
        now: Instant,
    ) -> Result<Option<CloudResource>, SimError> {
        let mut journal = lock(&self.journal);
        {
            let state = lock(&self.state);
            let Some(live) = state.live.get(provider_id) else {
                return Ok(None);
            };
            state
                .check_deletable(&live.resource)
                .map_err(SimError::InUse)?;
        }
        journal.append(&JournalEntry::Deleted {
            provider_id: provider_id.to_string(),
        })?;
        let listed_until = now + Duration::from_millis(self.config.list_delay_ms);
        Ok(lock(&self.state).apply_deleted(provider_id, Some(listed_until)))
    }
}

#[async_trait]
impl Provider for SimCloud {
    async fn create(
        &self,
        cluster: &str,
        token: &str,
        spec: &ResourceSpec,
    ) -> Result<CloudResource, ProviderError> {
        self.simulate_latency(self.shared.config.latency_ms.create)
            .await;
        // A token seen before is answered at once, without injected failures.
        {
            let state = lock(&self.shared.state);
            if let Some(answer) = state.answer_known_token(token) {
                return answer;
            }
        }
        let failure = self.roll_failure();
        if failure == InjectedFailure::BeforeEffect {
            tracing::debug!(cluster, token, resource = %spec.key(), "simulated transient create failure");
            return Err(ProviderError::retryable(TRANSIENT_ERROR_MESSAGE));
        }
        let shared = Arc::clone(&self.shared);
        let owned_cluster = cluster.to_string();
        let owned_token = token.to_string();
        let owned_spec = spec.clone();
        let listed_from = Instant::now() + self.list_delay();
        let resource = tokio::task::spawn_blocking(move || {
            shared.create_blocking(&owned_cluster, &owned_token, &owned_spec, listed_from)
        })
        .await
        .map_err(|error| {
            ProviderError::retryable(format!("the simulated cloud's writer failed: {error}"))
        })??;
        if failure == InjectedFailure::AfterEffect {
            tracing::debug!(cluster, token, provider_id = %resource.provider_id, "simulated lost create response");
            return Err(ProviderError::retryable(LOST_RESPONSE_MESSAGE));
        }
        Ok(resource)
    }

    /// Deletes by provider id. The token is not needed: deletes are
    /// idempotent by nature. A resource of another cluster is refused.
    async fn delete(
        &self,
        cluster: &str,
        _token: &str,
        provider_id: &str,
    ) -> Result<(), ProviderError> {
        self.simulate_latency(self.shared.config.latency_ms.delete)
            .await;
        {
            // A resource never changes cluster, so this check cannot go stale.
            let state = lock(&self.shared.state);
            if let Some(live) = state.live.get(provider_id) {
                if live.resource.cluster != cluster {
                    return Err(ProviderError::permanent(format!(
                        "resource {provider_id} belongs to cluster {}, not {cluster}",
                        live.resource.cluster
                    )));
                }
            }
        }
        let failure = self.roll_failure();
        if failure == InjectedFailure::BeforeEffect {
            tracing::debug!(cluster, provider_id, "simulated transient delete failure");
            return Err(ProviderError::retryable(TRANSIENT_ERROR_MESSAGE));
        }
        let shared = Arc::clone(&self.shared);
        let owned_provider_id = provider_id.to_string();
        let now = Instant::now();
        tokio::task::spawn_blocking(move || shared.delete_blocking(&owned_provider_id, now))
            .await
            .map_err(|error| {
                ProviderError::retryable(format!("the simulated cloud's writer failed: {error}"))
            })?
            .map_err(|error| ProviderError::retryable(error.to_string()))?;
        if failure == InjectedFailure::AfterEffect {
            tracing::debug!(cluster, provider_id, "simulated lost delete response");
            return Err(ProviderError::retryable(LOST_RESPONSE_MESSAGE));
        }
        Ok(())
    }

    async fn describe(&self, provider_id: &str) -> Result<Option<CloudResource>, ProviderError> {
        self.simulate_latency(self.shared.config.latency_ms.describe)
            .await;
        let state = lock(&self.shared.state);
        Ok(state
            .live
            .get(provider_id)
            .map(|live| live.resource.clone()))
    }

    async fn lookup(&self, token: &str) -> Result<Option<CloudResource>, ProviderError> {
        self.simulate_latency(self.shared.config.latency_ms.lookup)
            .await;
        let state = lock(&self.shared.state);
        Ok(state.live_by_token(token).cloned())
    }

    /// The cluster's resources as they were `list_delay_ms` ago, sorted by
    /// provider id.
    async fn list(&self, cluster: &str) -> Result<Vec<CloudResource>, ProviderError> {
        self.simulate_latency(self.shared.config.latency_ms.list)
            .await;
        let now = Instant::now();
        let mut state = lock(&self.shared.state);
        state
            .tombstones
            .retain(|tombstone| tombstone.listed_until > now);
        let listed_at = |listed_from: Option<Instant>| listed_from.is_none_or(|from| from <= now);
        let mut listed: Vec<CloudResource> = state
            .live
            .values()
            .filter(|live| live.resource.cluster == cluster && listed_at(live.listed_from))
            .map(|live| live.resource.clone())
            .chain(
                state
                    .tombstones
                    .iter()
                    .filter(|tombstone| {
                        tombstone.resource.cluster == cluster && listed_at(tombstone.listed_from)
                    })
                    .map(|tombstone| tombstone.resource.clone()),
            )
            .collect();
        listed.sort_by(|left, right| left.provider_id.cmp(&right.provider_id));
        Ok(listed)
    }
}

/// A live resource and the moment `list` starts showing it (None: at once).
struct LiveResource {
    resource: CloudResource,
    listed_from: Option<Instant>,
}

/// A deleted resource that `list` keeps showing until `listed_until`.
struct Tombstone {
    resource: CloudResource,
    listed_from: Option<Instant>,
    listed_until: Instant,
}

/// What became of the resource a token created.
enum TokenRecord {
    /// The provider id of the live resource.
    Live(String),
    /// The resource, since deleted.
    Deleted(Box<CloudResource>),
}

/// What a create will do.
enum CreatePlan {
    /// The token already made this live resource.
    Existing(CloudResource),
    /// A new resource, not yet durable.
    New(CloudResource),
}

/// The in-memory cloud.
#[derive(Default)]
struct SimState {
    /// Live resources by provider id.
    live: BTreeMap<String, LiveResource>,
    /// Every token that ever created a resource.
    tokens: HashMap<String, TokenRecord>,
    /// Recently deleted resources, for `list`'s lag. In memory only.
    tombstones: Vec<Tombstone>,
    /// The number in the last provider id handed out.
    last_number: u64,
}

impl SimState {
    fn live_by_token(&self, token: &str) -> Option<&CloudResource> {
        match self.tokens.get(token)? {
            TokenRecord::Live(provider_id) => self.live.get(provider_id).map(|live| &live.resource),
            TokenRecord::Deleted(_) => None,
        }
    }

    /// The answer to a create whose token was used before; None for a new
    /// token.
    fn answer_known_token(&self, token: &str) -> Option<Result<CloudResource, ProviderError>> {
        match self.tokens.get(token)? {
            TokenRecord::Live(provider_id) => self
                .live
                .get(provider_id)
                .map(|live| Ok(live.resource.clone())),
            TokenRecord::Deleted(resource) => Some(Err(ProviderError::token_spent(format!(
                "token {token} already created {} ({}) in cluster {}, which has since been deleted",
                resource.key(),
                resource.provider_id,
                resource.cluster
            )))),
        }
    }

    fn live_in_cluster<'state>(
        &'state self,
        cluster: &'state str,
        kind: ResourceKind,
    ) -> impl Iterator<Item = &'state CloudResource> + 'state {
        self.live
            .values()
            .map(|live| &live.resource)
            .filter(move |resource| resource.cluster == cluster && resource.spec.kind() == kind)
    }

    /// Validates a create and builds its resource, without changing anything.
    fn plan_create(
        &self,
        cluster: &str,
        token: &str,
        spec: &ResourceSpec,
        machine_quota: u32,
    ) -> Result<CreatePlan, ProviderError> {
        if let Some(answer) = self.answer_known_token(token) {
            return answer.map(CreatePlan::Existing);
        }
        let mut address = None;
        match spec {
            ResourceSpec::Network(network) => {
                parse_cidr(&network.cidr, "network")?;
            }
            ResourceSpec::Subnet(subnet) => {
                let network = self
                    .live_in_cluster(cluster, ResourceKind::Network)
                    .find_map(|resource| match &resource.spec {
                        ResourceSpec::Network(network) => Some(network),
                        _ => None,
                    })
                    .ok_or_else(|| {
                        ProviderError::retryable(format!(
                            "cannot create subnet/{}: the network of cluster {cluster} does not exist",
                            subnet.name
                        ))
                    })?;
                let network_cidr = parse_cidr(&network.cidr, "network")?;
                let subnet_cidr = parse_cidr(&subnet.cidr, &format!("subnet/{}", subnet.name))?;
                if !network_cidr.contains(&subnet_cidr) {
                    return Err(ProviderError::permanent(format!(
                        "subnet/{} cidr {} does not lie within the network cidr {}",
                        subnet.name, subnet.cidr, network.cidr
                    )));
                }
            }
            ResourceSpec::FirewallRule(_) => {}
            ResourceSpec::Machine(machine) => {
                let machines_alive = self
                    .live
                    .values()
                    .filter(|live| live.resource.spec.kind() == ResourceKind::Machine)
                    .count();
                if machines_alive >= machine_quota as usize {
                    return Err(ProviderError::permanent(format!(
                        "machine quota of {machine_quota} reached"
                    )));
                }
                let subnet = self
                    .live_in_cluster(cluster, ResourceKind::Subnet)
                    .find_map(|resource| match &resource.spec {
                        ResourceSpec::Subnet(subnet) if subnet.name == machine.subnet => {
                            Some(subnet)
                        }
                        _ => None,
                    })
                    .ok_or_else(|| {
                        ProviderError::retryable(format!(
                            "cannot create machine/{}: subnet/{} does not exist in cluster {cluster}",
                            machine.name, machine.subnet
                        ))
                    })?;
                let subnet_cidr = parse_cidr(&subnet.cidr, &format!("subnet/{}", subnet.name))?;
                let used: HashSet<IpAddr> = self
                    .live_in_cluster(cluster, ResourceKind::Machine)
                    .filter(|resource| {
                        matches!(&resource.spec, ResourceSpec::Machine(other) if other.subnet == machine.subnet)
                    })
                    .filter_map(|resource| resource.address.as_deref()?.parse().ok())
                    .collect();
                let free = lowest_free_address(&subnet_cidr, &used).ok_or_else(|| {
                    ProviderError::permanent(format!(
                        "cannot create machine/{}: subnet/{} ({}) has no free address",
                        machine.name, subnet.name, subnet.cidr
                    ))
                })?;
                address = Some(free.to_string());
            }
        }
        let prefix = match spec.kind() {
            ResourceKind::Network => "sim-net",
            ResourceKind::Subnet => "sim-subnet",
            ResourceKind::FirewallRule => "sim-fw",
            ResourceKind::Machine => "sim-m",
        };
        Ok(CreatePlan::New(CloudResource {
            provider_id: format!("{prefix}-{:06}", self.last_number + 1),
            cluster: cluster.to_string(),
            token: token.to_string(),
            spec: spec.clone(),
            address,
        }))
    }

    /// Refuses the deletion of a resource others still depend on. Machines
    /// name their subnet and subnets their cluster's network, so when a
    /// duplicate (same name) is alive, the dependents may be the duplicate's
    /// and the deletion goes ahead.
    fn check_deletable(&self, resource: &CloudResource) -> Result<(), String> {
        let cluster = resource.cluster.as_str();
        let duplicated = self
            .live_in_cluster(cluster, resource.spec.kind())
            .any(|other| {
                other.provider_id != resource.provider_id && other.key() == resource.key()
            });
        if duplicated {
            return Ok(());
        }
        match &resource.spec {
            ResourceSpec::Network(_) => {
                let subnets = self.live_in_cluster(cluster, ResourceKind::Subnet).count();
                if subnets > 0 {
                    return Err(format!(
                        "cannot delete the network of cluster {cluster} ({}): {subnets} subnet(s) still in it",
                        resource.provider_id
                    ));
                }
            }
            ResourceSpec::Subnet(subnet) => {
                let machines = self
                    .live_in_cluster(cluster, ResourceKind::Machine)
                    .filter(|machine| {
                        matches!(&machine.spec, ResourceSpec::Machine(spec) if spec.subnet == subnet.name)
                    })
                    .count();
                if machines > 0 {
                    return Err(format!(
                        "cannot delete subnet/{} of cluster {cluster} ({}): {machines} machine(s) still in it",
                        subnet.name, resource.provider_id
                    ));
                }
            }
            ResourceSpec::FirewallRule(_) | ResourceSpec::Machine(_) => {}
        }
        Ok(())
    }

    fn apply_created(&mut self, resource: CloudResource, listed_from: Option<Instant>) {
        if let Some(number) = provider_id_number(&resource.provider_id) {
            self.last_number = self.last_number.max(number);
        }
        self.tokens.insert(
            resource.token.clone(),
            TokenRecord::Live(resource.provider_id.clone()),
        );
        self.live.insert(
            resource.provider_id.clone(),
            LiveResource {
                resource,
                listed_from,
            },
        );
    }

    /// Removes a live resource; with `listed_until`, `list` keeps showing it
    /// until then.
    fn apply_deleted(
        &mut self,
        provider_id: &str,
        listed_until: Option<Instant>,
    ) -> Option<CloudResource> {
        let live = self.live.remove(provider_id)?;
        self.tokens.insert(
            live.resource.token.clone(),
            TokenRecord::Deleted(Box::new(live.resource.clone())),
        );
        if let Some(listed_until) = listed_until {
            self.tombstones.push(Tombstone {
                resource: live.resource.clone(),
                listed_from: live.listed_from,
                listed_until,
            });
        }
        Some(live.resource)
    }

    /// Applies one journal entry during replay, refusing entries that
    /// contradict the ones before.
    fn replay(&mut self, entry: JournalEntry) -> Result<(), String> {
        match entry {
            JournalEntry::Created { resource } => {
                // Ids come from one counter, so each one created must be
                // numbered above every id before it.
                match provider_id_number(&resource.provider_id) {
                    None => {
                        return Err(format!(
                            "provider id {} does not end in a number",
                            resource.provider_id
                        ))
                    }
                    Some(number) if number <= self.last_number => {
                        return Err(format!(
                            "provider id {} does not follow the last id number, {}",
                            resource.provider_id, self.last_number
                        ))
                    }
                    Some(_) => {}
                }
                if self.tokens.contains_key(&resource.token) {
                    return Err(format!(
                        "token {} creates a second resource ({})",
                        resource.token, resource.provider_id
                    ));
                }
                self.apply_created(*resource, None);
            }
            JournalEntry::Deleted { provider_id } => {
                if self.apply_deleted(&provider_id, None).is_none() {
                    return Err(format!("deletes {provider_id}, which is not alive"));
                }
            }
        }
        Ok(())
    }
}

/// The number at the end of a provider id: 42 for `sim-m-000042`.
fn provider_id_number(provider_id: &str) -> Option<u64> {
    provider_id.rsplit('-').next()?.parse().ok()
}

fn parse_cidr(cidr: &str, owner: &str) -> Result<IpNet, ProviderError> {
    cidr.parse().map_err(|error| {
        ProviderError::permanent(format!("{owner} cidr {cidr} is not a valid CIDR: {error}"))
    })
}

/// The lowest host address of the subnet not in `used`, skipping the network
/// address, the three hosts after it (reserved) and the last address (the
/// broadcast address in IPv4).
fn lowest_free_address(subnet: &IpNet, used: &HashSet<IpAddr>) -> Option<IpAddr> {
    const RESERVED_AT_START: u128 = 4;
    let (first, last, to_address): (u128, u128, fn(u128) -> IpAddr) = match subnet {
        IpNet::V4(net) => (
            u128::from(u32::from(net.network())),
            u128::from(u32::from(net.broadcast())),
            |number| IpAddr::V4(Ipv4Addr::from(number as u32)),
        ),
        IpNet::V6(net) => (
            u128::from(net.network()),
            u128::from(net.broadcast()),
            |number| IpAddr::V6(Ipv6Addr::from(number)),
        ),
    };
    let first_host = first.checked_add(RESERVED_AT_START)?;
    (first_host..last)
        .map(to_address)
        .find(|address| !used.contains(address))
}

/// The journal file, open for appending.
struct Journal {
    path: PathBuf,
    file: File,
    /// The length of the journal's acknowledged lines.
    length: u64,
    /// Why no more writes are taken, after a failed write could not be undone.
    unusable: Option<String>,
}

impl Journal {
    /// Appends one line and syncs it. On failure the partial line is cut off
    /// again, so the next append does not follow a torn line.
    fn append(&mut self, entry: &JournalEntry) -> Result<(), SimError> {
        if let Some(reason) = &self.unusable {
            return Err(SimError::JournalUnusable {
                path: self.path.clone(),
                reason: reason.clone(),
            });
        }
        let written = serde_json::to_vec(entry)
            .map_err(std::io::Error::from)
            .and_then(|mut line| {
                line.push(b'\n');
                self.file.write_all(&line)?;
                self.file.sync_data()?;
                Ok(line.len() as u64)
            });
        match written {
            Ok(line_length) => {
                self.length += line_length;
                Ok(())
            }
            Err(source) => {
                if let Err(truncate_error) = self.file.set_len(self.length) {
                    self.unusable = Some(format!(
                        "a failed append ({source}) could not be cut off: {truncate_error}"
                    ));
                }
                Err(SimError::Io {
                    action: "append to",
                    path: self.path.clone(),
                    source,
                })
            }
        }
    }
}

/// Replays the journal's bytes. Returns the state and the length of the
/// valid prefix: shorter than the contents when the last line is torn.
fn replay_journal(path: &Path, contents: &[u8]) -> Result<(SimState, usize), SimError> {
    let mut state = SimState::default();
    let mut offset = 0;
    let mut line_number = 0;
    while offset < contents.len() {
        line_number += 1;
        let rest = &contents[offset..];
        let Some(newline) = rest.iter().position(|byte| *byte == b'\n') else {
            // No trailing newline: a write that never completed.
            break;
        };
        let next_offset = offset + newline + 1;
        let is_last_line = next_offset == contents.len();
        let corrupt = |message: String| SimError::CorruptJournal {
            path: path.to_path_buf(),
            line: line_number,
            message,
        };
        match serde_json::from_slice::<JournalEntry>(&rest[..newline]) {
            Ok(entry) => state.replay(entry).map_err(corrupt)?,
            // An unparseable last line is a torn write too.
            Err(_) if is_last_line => break,
            Err(error) => return Err(corrupt(error.to_string())),
        }
        offset = next_offset;
    }
    Ok((state, offset))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FirewallRule, MachineSpec, NetworkSpec, SubnetSpec};

    /// No latency, no failures, no list lag: a cloud that only does its job.
    fn quiet_config() -> SimConfig {
        SimConfig {
            seed: 1,
            latency_ms: SimLatency {
                create: 0,
                delete: 0,
                describe: 0,
                lookup: 0,
                list: 0,
            },
            failure_rate: 0.0,
            machine_quota: 10_000,
            list_delay_ms: 0,
        }
    }

    fn open_quiet(dir: &Path) -> SimCloud {
        SimCloud::open(dir, quiet_config()).expect("open the simulated cloud")
    }

    fn network_spec(cidr: &str) -> ResourceSpec {
        ResourceSpec::Network(NetworkSpec {
            cidr: cidr.to_string(),
            region: "eu-west-1".to_string(),
        })
    }

    fn subnet_spec(name: &str, cidr: &str) -> ResourceSpec {
        ResourceSpec::Subnet(SubnetSpec {
            name: name.to_string(),
            cidr: cidr.to_string(),
            zone: None,
        })
    }

    fn machine_spec(name: &str, subnet: &str) -> ResourceSpec {
        ResourceSpec::Machine(MachineSpec {
            name: name.to_string(),
            pool: "workers".to_string(),
            role: "worker".to_string(),
            machine_type: "small".to_string(),
            image: "ubuntu-24.04".to_string(),
            subnet: subnet.to_string(),
            kubernetes_version: "1.31.0".to_string(),
        })
    }

    fn firewall_spec(name: &str) -> ResourceSpec {
        ResourceSpec::FirewallRule(FirewallRule {
            name: name.to_string(),
            direction: "ingress".to_string(),
            protocol: "tcp".to_string(),
            ports: Some("443".to_string()),
            source: "0.0.0.0/0".to_string(),
        })
    }

    /// A cluster with network 10.0.0.0/16 and subnet `a` = 10.0.1.0/24.
    async fn create_network_and_subnet(cloud: &SimCloud, cluster: &str) {
        cloud
            .create(
                cluster,
                &format!("{cluster}-net"),
                &network_spec("10.0.0.0/16"),
            )
            .await
            .expect("create the network");
        cloud
            .create(
                cluster,
                &format!("{cluster}-subnet-a"),
                &subnet_spec("a", "10.0.1.0/24"),
            )
            .await
            .expect("create the subnet");
    }

    fn journal_path(dir: &Path) -> PathBuf {
        dir.join(JOURNAL_FILE_NAME)
    }

    fn journal_text(dir: &Path) -> String {
        std::fs::read_to_string(journal_path(dir)).expect("read the journal")
    }

    #[tokio::test]
    async fn same_token_twice_creates_one_resource() {
        let dir = tempfile::tempdir().unwrap();
        let cloud = open_quiet(dir.path());
        let first = cloud
            .create("prod", "token-1", &firewall_spec("https"))
            .await
            .unwrap();
        let second = cloud
            .create("prod", "token-1", &firewall_spec("https"))
            .await
            .unwrap();
        assert_eq!(first, second);
        assert_eq!(first.provider_id, "sim-fw-000001");
        assert_eq!(first.cluster, "prod");
        assert_eq!(first.token, "token-1");
        assert_eq!(cloud.resources(), vec![first.clone()]);
        assert_eq!(journal_text(dir.path()).lines().count(), 1);
        assert_eq!(cloud.lookup("token-1").await.unwrap(), Some(first));
    }

    #[tokio::test]
    async fn deleted_token_is_a_permanent_error_naming_its_resource() {
        let dir = tempfile::tempdir().unwrap();
        let cloud = open_quiet(dir.path());
        let rule = cloud
            .create("prod", "token-1", &firewall_spec("https"))
            .await
            .unwrap();
        cloud
            .delete("prod", "delete-1", &rule.provider_id)
            .await
            .unwrap();
        let error = cloud
            .create("prod", "token-1", &firewall_spec("https"))
            .await
            .unwrap_err();
        assert!(!error.retryable, "{error:?}");
        assert!(error.message.contains("firewall_rule/https"), "{error}");
        assert!(error.message.contains("sim-fw-000001"), "{error}");
        assert!(error.message.contains("deleted"), "{error}");
        assert!(cloud.resources().is_empty());
        assert_eq!(cloud.lookup("token-1").await.unwrap(), None);

        // The rule survives a restart too.
        drop(cloud);
        let cloud = open_quiet(dir.path());
        let error = cloud
            .create("prod", "token-1", &firewall_spec("https"))
            .await
            .unwrap_err();
        assert!(
            !error.retryable && error.message.contains("sim-fw-000001"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn deleting_an_unknown_or_deleted_id_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let cloud = open_quiet(dir.path());
        cloud.delete("prod", "t", "sim-m-999999").await.unwrap();
        let rule = cloud
            .create("prod", "token-1", &firewall_spec("https"))
            .await
            .unwrap();
        cloud.delete("prod", "t", &rule.provider_id).await.unwrap();
        cloud.delete("prod", "t", &rule.provider_id).await.unwrap();
        assert_eq!(cloud.describe(&rule.provider_id).await.unwrap(), None);
        // Only one deletion reached the journal.
        assert_eq!(journal_text(dir.path()).lines().count(), 2);
    }

    #[tokio::test]
    async fn deleting_a_resource_of_another_cluster_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cloud = open_quiet(dir.path());
        let rule = cloud
            .create("prod", "token-1", &firewall_spec("https"))
            .await
            .unwrap();
        let error = cloud
            .delete("staging", "t", &rule.provider_id)
            .await
            .unwrap_err();
        assert!(!error.retryable);
        assert!(error.message.contains("prod"), "{error}");
        assert_eq!(cloud.resources(), vec![rule]);
    }

    #[tokio::test]
    async fn journal_lines_are_created_and_deleted_entries() {
        let dir = tempfile::tempdir().unwrap();
        let cloud = open_quiet(dir.path());
        let rule = cloud
            .create("prod", "token-1", &firewall_spec("https"))
            .await
            .unwrap();
        cloud.delete("prod", "t", &rule.provider_id).await.unwrap();
        let text = journal_text(dir.path());
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0]["created"]["resource"]["providerId"],
            "sim-fw-000001"
        );
        assert_eq!(lines[0]["created"]["resource"]["token"], "token-1");
        assert_eq!(
            lines[1],
            serde_json::json!({"deleted": {"provider_id": "sim-fw-000001"}})
        );
        assert!(text.ends_with('\n'));
    }

    #[tokio::test]
    async fn state_and_id_counter_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let cloud = open_quiet(dir.path());
        create_network_and_subnet(&cloud, "prod").await;
        let rule = cloud
            .create("prod", "fw-1", &firewall_spec("https"))
            .await
            .unwrap();
        let machine = cloud
            .create("prod", "m-1", &machine_spec("workers-0", "a"))
            .await
            .unwrap();
        cloud.delete("prod", "t", &rule.provider_id).await.unwrap();
        let before = cloud.resources();
        assert_eq!(before.len(), 3);
        drop(cloud);

        let cloud = open_quiet(dir.path());
        assert_eq!(cloud.resources(), before);
        assert_eq!(
            cloud.describe(&machine.provider_id).await.unwrap(),
            Some(machine.clone())
        );
        assert_eq!(cloud.lookup("m-1").await.unwrap(), Some(machine));
        assert_eq!(cloud.describe(&rule.provider_id).await.unwrap(), None);
        let next = cloud
            .create("prod", "m-2", &machine_spec("workers-1", "a"))
            .await
            .unwrap();
        assert_eq!(next.provider_id, "sim-m-000005");
        assert_eq!(next.address.as_deref(), Some("10.0.1.5"));
    }

    #[tokio::test]
    async fn torn_last_line_without_newline_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let cloud = open_quiet(dir.path());
        let rule = cloud
            .create("prod", "fw-1", &firewall_spec("https"))
            .await
            .unwrap();
        drop(cloud);
        let intact = journal_text(dir.path());
        let torn = format!("{intact}{{\"created\":{{\"resource\":{{\"providerId\":\"sim-fw-0");
        std::fs::write(journal_path(dir.path()), &torn).unwrap();

        let cloud = open_quiet(dir.path());
        assert_eq!(cloud.resources(), vec![rule]);
        assert_eq!(journal_text(dir.path()), intact);
        // Appends after the truncation make well-formed lines.
        cloud
            .create("prod", "fw-2", &firewall_spec("ssh"))
            .await
            .unwrap();
        drop(cloud);
        let cloud = open_quiet(dir.path());
        assert_eq!(cloud.resources().len(), 2);
    }

    #[tokio::test]
    async fn unparseable_last_line_with_newline_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let cloud = open_quiet(dir.path());
        let rule = cloud
            .create("prod", "fw-1", &firewall_spec("https"))
            .await
            .unwrap();
        drop(cloud);
        let intact = journal_text(dir.path());
        std::fs::write(journal_path(dir.path()), format!("{intact}\0\0\0garbage\n")).unwrap();

        let cloud = open_quiet(dir.path());
        assert_eq!(cloud.resources(), vec![rule]);
        assert_eq!(journal_text(dir.path()), intact);
    }

    #[tokio::test]
    async fn corrupt_middle_line_is_an_error_naming_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let cloud = open_quiet(dir.path());
        cloud
            .create("prod", "fw-1", &firewall_spec("https"))
            .await
            .unwrap();
        cloud
            .create("prod", "fw-2", &firewall_spec("ssh"))
            .await
            .unwrap();
        drop(cloud);
        let text = journal_text(dir.path());
        let lines: Vec<&str> = text.lines().collect();
        let corrupted = format!("{}\nnot json at all\n{}\n", lines[0], lines[1]);
        std::fs::write(journal_path(dir.path()), &corrupted).unwrap();

        let error = match SimCloud::open(dir.path(), quiet_config()) {
            Ok(_) => panic!("a corrupt middle line must not open"),
            Err(error) => error,
        };
        assert!(
            matches!(&error, SimError::CorruptJournal { line: 2, .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("line 2"), "{error}");
        // Nothing was truncated.
        assert_eq!(journal_text(dir.path()), corrupted);
    }

    #[tokio::test]
    async fn contradictory_journal_line_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            journal_path(dir.path()),
            "{\"deleted\":{\"provider_id\":\"sim-m-000001\"}}\n",
        )
        .unwrap();
        let error = match SimCloud::open(dir.path(), quiet_config()) {
            Ok(_) => panic!("deleting what was never created must not open"),
            Err(error) => error,
        };
        assert!(
            matches!(&error, SimError::CorruptJournal { line: 1, .. }),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn repeated_creation_in_the_journal_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let cloud = open_quiet(dir.path());
        cloud
            .create("prod", "fw-1", &firewall_spec("https"))
            .await
            .unwrap();
        drop(cloud);
        let line = journal_text(dir.path());
        std::fs::write(journal_path(dir.path()), format!("{line}{line}")).unwrap();
        let error = match SimCloud::open(dir.path(), quiet_config()) {
            Ok(_) => panic!("a resource created twice must not open"),
            Err(error) => error,
        };
        assert!(
            matches!(&error, SimError::CorruptJournal { line: 2, .. }),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn subnet_needs_the_network_and_must_lie_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let cloud = open_quiet(dir.path());
        let error = cloud
            .create("prod", "s-1", &subnet_spec("a", "10.0.1.0/24"))
            .await
            .unwrap_err();
        assert!(error.retryable, "{error:?}");
        assert!(error.message.contains("network of cluster prod"), "{error}");

        cloud
            .create("prod", "net", &network_spec("10.0.0.0/16"))
            .await
            .unwrap();
        let error = cloud
            .create("prod", "s-2", &subnet_spec("b", "10.9.0.0/24"))
            .await
            .unwrap_err();
        assert!(!error.retryable, "{error:?}");
        assert!(error.message.contains("10.9.0.0/24"), "{error}");
        assert!(error.message.contains("10.0.0.0/16"), "{error}");

        // Another cluster's network does not count.
        let error = cloud
            .create("staging", "s-3", &subnet_spec("a", "10.0.1.0/24"))
            .await
            .unwrap_err();
        assert!(error.retryable, "{error:?}");

        // The first token, retried once the network exists, succeeds.
        let subnet = cloud
            .create("prod", "s-1", &subnet_spec("a", "10.0.1.0/24"))
            .await
            .unwrap();
        assert_eq!(subnet.provider_id, "sim-subnet-000002");
    }

    #[tokio::test]
    async fn machine_needs_its_subnet() {
        let dir = tempfile::tempdir().unwrap();
        let cloud = open_quiet(dir.path());
        create_network_and_subnet(&cloud, "prod").await;
        let error = cloud
            .create("prod", "m-1", &machine_spec("workers-0", "b"))
            .await
            .unwrap_err();
        assert!(error.retryable, "{error:?}");
        assert!(error.message.contains("subnet/b"), "{error}");
        assert!(cloud.lookup("m-1").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn deleting_what_others_depend_on_is_refused_with_the_count() {
        let dir = tempfile::tempdir().unwrap();
        let cloud = open_quiet(dir.path());
        create_network_and_subnet(&cloud, "prod").await;
        let network = cloud.lookup("prod-net").await.unwrap().unwrap();
        let subnet = cloud.lookup("prod-subnet-a").await.unwrap().unwrap();
        let first = cloud
            .create("prod", "m-1", &machine_spec("workers-0", "a"))
            .await
            .unwrap();
        let second = cloud
            .create("prod", "m-2", &machine_spec("workers-1", "a"))
            .await
            .unwrap();

        let error = cloud
            .delete("prod", "d", &subnet.provider_id)
            .await
            .unwrap_err();
        assert!(error.retryable, "{error:?}");
        assert!(error.message.contains("2 machine(s)"), "{error}");
        let error = cloud
            .delete("prod", "d", &network.provider_id)
            .await
            .unwrap_err();
        assert!(error.retryable, "{error:?}");
        assert!(error.message.contains("1 subnet(s)"), "{error}");

        // The behind-the-back path follows the same rules.
        let error = cloud
            .delete_behind_back(&subnet.provider_id)
            .await
            .unwrap_err();
        assert!(matches!(error, SimError::InUse(_)), "{error:?}");

        // In reverse order everything goes.
        for resource in [&first, &second, &subnet, &network] {
            cloud
                .delete("prod", "d", &resource.provider_id)
                .await
                .unwrap();
        }
        assert!(cloud.resources().is_empty());
    }

    #[tokio::test]
    async fn machine_addresses_skip_reserved_hosts_and_reuse_freed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let cloud = open_quiet(dir.path());
        create_network_and_subnet(&cloud, "prod").await;
        let first = cloud
            .create("prod", "m-1", &machine_spec("workers-0", "a"))
            .await
            .unwrap();
        let second = cloud
            .create("prod", "m-2", &machine_spec("workers-1", "a"))
            .await
            .unwrap();
        assert_eq!(first.address.as_deref(), Some("10.0.1.4"));
        assert_eq!(second.address.as_deref(), Some("10.0.1.5"));

        cloud.delete("prod", "d", &first.provider_id).await.unwrap();
        let third = cloud
            .create("prod", "m-3", &machine_spec("workers-2", "a"))
            .await
            .unwrap();
        assert_eq!(third.address.as_deref(), Some("10.0.1.4"));
        let fourth = cloud
            .create("prod", "m-4", &machine_spec("workers-3", "a"))
            .await
            .unwrap();
        assert_eq!(fourth.address.as_deref(), Some("10.0.1.6"));

        // Another cluster with the same cidr has its own addresses.
        create_network_and_subnet(&cloud, "staging").await;
        let other = cloud
            .create("staging", "s-m-1", &machine_spec("workers-0", "a"))
            .await
            .unwrap();
        assert_eq!(other.address.as_deref(), Some("10.0.1.4"));

        // Non-machines carry no address.
        assert!(cloud
            .resources()
            .iter()
            .all(|resource| resource.address.is_some()
                == (resource.spec.kind() == ResourceKind::Machine)));
    }

    #[tokio::test]
    async fn full_subnet_is_a_permanent_error() {
        let dir = tempfile::tempdir().unwrap();
        let cloud = open_quiet(dir.path());
        cloud
            .create("prod", "net", &network_spec("10.0.0.0/16"))
            .await
            .unwrap();
        // A /29 has 8 addresses: .0 network, .1-.3 reserved, .4-.6 usable, .7 broadcast.
        cloud
            .create("prod", "subnet", &subnet_spec("tiny", "10.0.2.0/29"))
            .await
            .unwrap();
        let mut addresses = Vec::new();
        for index in 0..3 {
            let machine = cloud
                .create(
                    "prod",
                    &format!("m-{index}"),
                    &machine_spec(&format!("workers-{index}"), "tiny"),
                )
                .await
                .unwrap();
            addresses.push(machine.address.unwrap());
        }
        assert_eq!(addresses, ["10.0.2.4", "10.0.2.5", "10.0.2.6"]);
        let error = cloud
            .create("prod", "m-3", &machine_spec("workers-3", "tiny"))
            .await
            .unwrap_err();
        assert!(!error.retryable, "{error:?}");
        assert!(error.message.contains("no free address"), "{error}");
    }

    #[test]
    fn lowest_free_address_handles_tiny_and_ipv6_subnets() {
        let none = HashSet::new();
        let slash_30: IpNet = "10.0.0.0/30".parse().unwrap();
        assert_eq!(lowest_free_address(&slash_30, &none), None);
        let slash_32: IpNet = "255.255.255.255/32".parse().unwrap();
        assert_eq!(lowest_free_address(&slash_32, &none), None);
        let ipv6: IpNet = "fd00::/64".parse().unwrap();
        assert_eq!(
            lowest_free_address(&ipv6, &none),
            Some("fd00::4".parse().unwrap())
        );
    }

    #[tokio::test]
    async fn machine_quota_is_enforced_over_all_clusters() {
        let dir = tempfile::tempdir().unwrap();
        let config = SimConfig {
            machine_quota: 2,
            ..quiet_config()
        };
        let cloud = SimCloud::open(dir.path(), config).unwrap();
        create_network_and_subnet(&cloud, "prod").await;
        create_network_and_subnet(&cloud, "staging").await;
        let first = cloud
            .create("prod", "m-1", &machine_spec("workers-0", "a"))
            .await
            .unwrap();
        cloud
            .create("staging", "m-2", &machine_spec("workers-0", "a"))
            .await
            .unwrap();
        let error = cloud
            .create("prod", "m-3", &machine_spec("workers-1", "a"))
            .await
            .unwrap_err();
        assert!(!error.retryable, "{error:?}");
        assert_eq!(error.message, "machine quota of 2 reached");
        // Other kinds are not limited.
        cloud
            .create("prod", "fw-1", &firewall_spec("https"))
            .await
            .unwrap();
        // A token that already made a machine is still answered at the limit.
        assert_eq!(
            cloud
                .create("prod", "m-1", &machine_spec("workers-0", "a"))
                .await
                .unwrap(),
            first
        );
        // Freeing a machine frees quota.
        cloud.delete("prod", "d", &first.provider_id).await.unwrap();
        cloud
            .create("prod", "m-3", &machine_spec("workers-1", "a"))
            .await
            .unwrap();
    }

    /// How one create call ended, for comparing runs.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Outcome {
        Created(String),
        Transient,
        LostResponse,
        Other(String),
    }

    fn classify(result: Result<CloudResource, ProviderError>) -> Outcome {
        match result {
            Ok(resource) => Outcome::Created(resource.provider_id),
            Err(error) if error.retryable && error.message == TRANSIENT_ERROR_MESSAGE => {
                Outcome::Transient
            }
            Err(error) if error.retryable && error.message == LOST_RESPONSE_MESSAGE => {
                Outcome::LostResponse
            }
            Err(error) => Outcome::Other(error.message),
        }
    }

    #[tokio::test]
    async fn failure_rate_one_fails_every_create_and_about_half_still_create() {
        let dir = tempfile::tempdir().unwrap();
        let config = SimConfig {
            failure_rate: 1.0,
            seed: 42,
            ..quiet_config()
        };
        let cloud = SimCloud::open(dir.path(), config).unwrap();
        let attempts = 100;
        let mut created_anyway = 0;
        for index in 0..attempts {
            let token = format!("fw-{index}");
            let outcome = classify(
                cloud
                    .create("prod", &token, &firewall_spec(&format!("rule-{index}")))
                    .await,
            );
            let found = cloud.lookup(&token).await.unwrap();
            match outcome {
                Outcome::LostResponse => {
                    assert!(found.is_some(), "a lost response for {token} left nothing");
                    created_anyway += 1;
                    // The retry with the same token finds the resource, even at
                    // a failure rate of 1.0, and makes no second one.
                    let retried = cloud
                        .create("prod", &token, &firewall_spec(&format!("rule-{index}")))
                        .await
                        .unwrap();
                    assert_eq!(Some(retried), found);
                }
                Outcome::Transient => {
                    assert!(found.is_none(), "a transient error for {token} created it")
                }
                other => panic!("create {token} ended with {other:?}"),
            }
        }
        assert!(
            (30..=70).contains(&created_anyway),
            "{created_anyway} of {attempts} failed creates still created"
        );
        assert_eq!(cloud.resources().len(), created_anyway);
    }

    #[tokio::test]
    async fn failure_rate_one_fails_every_delete() {
        let dir = tempfile::tempdir().unwrap();
        let quiet = open_quiet(dir.path());
        for index in 0..40 {
            quiet
                .create("prod", &format!("fw-{index}"), &firewall_spec("rule"))
                .await
                .unwrap();
        }
        let resources = quiet.resources();
        drop(quiet);
        let config = SimConfig {
            failure_rate: 1.0,
            ..quiet_config()
        };
        let cloud = SimCloud::open(dir.path(), config).unwrap();
        let mut deleted_anyway = 0;
        for resource in &resources {
            let error = cloud
                .delete("prod", "d", &resource.provider_id)
                .await
                .unwrap_err();
            assert!(error.retryable);
            let gone = cloud
                .describe(&resource.provider_id)
                .await
                .unwrap()
                .is_none();
            assert_eq!(gone, error.message == LOST_RESPONSE_MESSAGE, "{error}");
            deleted_anyway += usize::from(gone);
        }
        assert!((8..=32).contains(&deleted_anyway), "{deleted_anyway}");
    }

    /// Runs the same calls against a fresh cloud and reports each outcome
    /// with the (paused) time it took.
    async fn run_seeded_sequence(seed: u64) -> Vec<(Outcome, Duration)> {
        let dir = tempfile::tempdir().unwrap();
        let config = SimConfig {
            seed,
            failure_rate: 0.5,
            latency_ms: SimLatency::default(),
            ..quiet_config()
        };
        let cloud = SimCloud::open(dir.path(), config).unwrap();
        let mut outcomes = Vec::new();
        for index in 0..40 {
            let started = Instant::now();
            let outcome = classify(
                cloud
                    .create("prod", &format!("fw-{index}"), &firewall_spec("rule"))
                    .await,
            );
            outcomes.push((outcome, started.elapsed()));
        }
        outcomes
    }

    #[tokio::test(start_paused = true)]
    async fn same_seed_gives_same_sequence_of_outcomes() {
        let first = run_seeded_sequence(7).await;
        let second = run_seeded_sequence(7).await;
        assert_eq!(first, second);
        let outcomes: Vec<&Outcome> = first.iter().map(|(outcome, _)| outcome).collect();
        assert!(outcomes.iter().any(|o| matches!(o, Outcome::Created(_))));
        assert!(outcomes.contains(&&Outcome::Transient));
        assert!(outcomes.contains(&&Outcome::LostResponse));
        assert!(!outcomes.iter().any(|o| matches!(o, Outcome::Other(_))));
        let other_seed = run_seeded_sequence(8).await;
        assert_ne!(first, other_seed);
    }

    #[tokio::test(start_paused = true)]
    async fn latency_is_jittered_between_half_and_one_and_a_half_times() {
        let dir = tempfile::tempdir().unwrap();
        let config = SimConfig {
            latency_ms: SimLatency {
                create: 100,
                ..quiet_config().latency_ms
            },
            ..quiet_config()
        };
        let cloud = SimCloud::open(dir.path(), config).unwrap();
        let mut elapsed = HashSet::new();
        for index in 0..20 {
            let started = Instant::now();
            cloud
                .create("prod", &format!("fw-{index}"), &firewall_spec("rule"))
                .await
                .unwrap();
            let took = started.elapsed();
            assert!(
                took >= Duration::from_millis(50) && took <= Duration::from_millis(151),
                "{took:?}"
            );
            elapsed.insert(took);
        }
        assert!(elapsed.len() > 1, "no jitter: {elapsed:?}");

        // Zero latency does not sleep at all.
        let started = Instant::now();
        cloud.describe("sim-fw-000001").await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn list_lags_by_the_list_delay_while_describe_and_lookup_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let config = SimConfig {
            list_delay_ms: 500,
            ..quiet_config()
        };
        let cloud = SimCloud::open(dir.path(), config).unwrap();
        let rule = cloud
            .create("prod", "fw-1", &firewall_spec("https"))
            .await
            .unwrap();
        assert_eq!(
            cloud.describe(&rule.provider_id).await.unwrap(),
            Some(rule.clone())
        );
        assert_eq!(cloud.lookup("fw-1").await.unwrap(), Some(rule.clone()));
        assert!(cloud.list("prod").await.unwrap().is_empty());

        tokio::time::advance(Duration::from_millis(499)).await;
        assert!(cloud.list("prod").await.unwrap().is_empty());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(cloud.list("prod").await.unwrap(), vec![rule.clone()]);
        assert!(cloud.list("staging").await.unwrap().is_empty());

        cloud.delete("prod", "d", &rule.provider_id).await.unwrap();
        assert_eq!(cloud.describe(&rule.provider_id).await.unwrap(), None);
        assert_eq!(cloud.lookup("fw-1").await.unwrap(), None);
        assert_eq!(cloud.list("prod").await.unwrap(), vec![rule.clone()]);
        tokio::time::advance(Duration::from_millis(499)).await;
        assert_eq!(cloud.list("prod").await.unwrap(), vec![rule.clone()]);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(cloud.list("prod").await.unwrap().is_empty());

        // Created and deleted within the delay: list replays the short life
        // late, from 500 ms after the create to 500 ms after the delete.
        let brief = cloud
            .create("prod", "fw-2", &firewall_spec("ssh"))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_millis(100)).await;
        cloud.delete("prod", "d", &brief.provider_id).await.unwrap();
        let mut shown_at = Vec::new();
        for elapsed in (100..=700).step_by(100) {
            if !cloud.list("prod").await.unwrap().is_empty() {
                shown_at.push(elapsed);
            }
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        assert_eq!(shown_at, [500]);
    }

    #[tokio::test(start_paused = true)]
    async fn list_shows_everything_loaded_from_the_journal_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let config = SimConfig {
            list_delay_ms: 500,
            ..quiet_config()
        };
        let cloud = SimCloud::open(dir.path(), config.clone()).unwrap();
        create_network_and_subnet(&cloud, "prod").await;
        assert!(cloud.list("prod").await.unwrap().is_empty());
        drop(cloud);
        let cloud = SimCloud::open(dir.path(), config).unwrap();
        let listed = cloud.list("prod").await.unwrap();
        assert_eq!(listed, cloud.resources());
        assert_eq!(listed.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn delete_behind_back_is_durable_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let config = SimConfig {
            list_delay_ms: 500,
            ..quiet_config()
        };
        let cloud = SimCloud::open(dir.path(), config.clone()).unwrap();
        create_network_and_subnet(&cloud, "prod").await;
        let machine = cloud
            .create("prod", "m-1", &machine_spec("workers-0", "a"))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_millis(500)).await;

        let deleted = cloud
            .delete_behind_back(&machine.provider_id)
            .await
            .unwrap();
        assert_eq!(deleted, Some(machine.clone()));
        assert_eq!(
            cloud
                .delete_behind_back(&machine.provider_id)
                .await
                .unwrap(),
            None
        );
        assert_eq!(cloud.describe(&machine.provider_id).await.unwrap(), None);
        // The listing lags behind this deletion like any other.
        assert!(cloud.list("prod").await.unwrap().contains(&machine));
        drop(cloud);

        let cloud = SimCloud::open(dir.path(), config).unwrap();
        assert_eq!(cloud.describe(&machine.provider_id).await.unwrap(), None);
        assert!(!cloud.resources().contains(&machine));
        assert_eq!(cloud.resources().len(), 2);
        let error = cloud
            .create("prod", "m-1", &machine_spec("workers-0", "a"))
            .await
            .unwrap_err();
        assert!(!error.retryable && error.message.contains(&machine.provider_id));
    }

    #[tokio::test]
    async fn concurrent_creates_with_one_token_make_one_resource() {
        let dir = tempfile::tempdir().unwrap();
        let cloud = Arc::new(open_quiet(dir.path()));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let cloud = Arc::clone(&cloud);
            tasks.push(tokio::spawn(async move {
                cloud
                    .create("prod", "shared-token", &firewall_spec("https"))
                    .await
            }));
        }
        let mut ids = HashSet::new();
        for task in tasks {
            ids.insert(task.await.unwrap().unwrap().provider_id);
        }
        assert_eq!(ids.len(), 1);
        assert_eq!(cloud.resources().len(), 1);
    }

    #[test]
    fn config_defaults_parse_and_check() {
        let defaults = SimConfig::default();
        assert_eq!(defaults.check(), Ok(()));
        let parsed: SimConfig =
            serde_json::from_str(r#"{"seed": 3, "latency_ms": {"create": 5}}"#).unwrap();
        assert_eq!(parsed.seed, 3);
        assert_eq!(parsed.latency_ms.create, 5);
        assert_eq!(parsed.latency_ms.delete, SimLatency::default().delete);
        assert_eq!(parsed.list_delay_ms, defaults.list_delay_ms);
        assert!(serde_json::from_str::<SimConfig>(r#"{"failure": 0.1}"#).is_err());
        assert!(serde_json::from_str::<SimConfig>(r#"{"latency_ms": {"creat": 1}}"#).is_err());

        for bad in [-0.1, 1.5, f64::NAN] {
            let config = SimConfig {
                failure_rate: bad,
                ..SimConfig::default()
            };
            let error = config.check().unwrap_err();
            assert!(error.contains("failure_rate"), "{error}");
        }
        let dir = tempfile::tempdir().unwrap();
        let config = SimConfig {
            failure_rate: 2.0,
            ..SimConfig::default()
        };
        assert!(matches!(
            SimCloud::open(dir.path(), config),
            Err(SimError::Config(_))
        ));
    }
}
