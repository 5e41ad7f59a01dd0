//! Daemon configuration: a TOML file, overridden by command-line flags.
//! Every key, with its default (tokens and plugins have none):
//!
//! ```toml
//! listen = "127.0.0.1:7470"
//! data_dir = "./cairn-data"
//! log_format = "human"        # or "json"
//! max_body_bytes = 1048576    # the largest request body read
//! shutdown_timeout_seconds = 30
//!
//! [[tokens]]
//! name = "alice"              # becomes the actor of the events this token writes
//! secret = "a long random string"
//! role = "write"              # read | write | admin
//!
//! [api]
//! watch_heartbeat_ms = 15000  # an SSE comment on an idle `GET /v1/watch`
//! webhook_body_timeout_ms = 10000  # the longest a webhook body may take to arrive
//!
//! [reconcile]
//! enabled = true              # false: a ledger only, no provider calls
//! workers = 4                 # clusters reconciled at once
//! concurrency = 64            # provider calls at once, all clusters
//! cluster_concurrency = 16    # provider calls at once, one cluster
//! resync_interval_ms = 30000  # drift check of a converged cluster
//! backoff_base_ms = 200       # first retry delay; doubles, with jitter
//! backoff_max_ms = 30000
//! degraded_after_failures = 3
//!
//! [snapshots]
//! every_events = 50000        # snapshot the projections this often; 0: never
//!
//! [sim]                       # the simulated cloud (provider `sim`)
//! seed = 0                    # of the latency jitter and the failures
//! failure_rate = 0.0          # of creates and deletes (retryable)
//! machine_quota = 10000
//! list_delay_ms = 500         # eventual consistency of listings
//! [sim.latency_ms]            # per call, jittered from half to one and a half
//! create = 20
//! delete = 10
//! describe = 1
//! lookup = 1
//! list = 2
//!
//! [providers.exec.ref]        # a plugin provider, `provider: exec:ref`
//! command = ["python3", "tools/plugins/reference_plugin.py", "--state-dir", "ref-cloud"]
//! timeout_seconds = 30
//!
//! [hooks.deploys]             # a webhook receiver, `POST /v1/hooks/deploys`
//! type = "generic"            # github | alertmanager | generic
//! secret = "a long random string"   # required, at least 16 characters
//! ```
//!
//! The settings of each receiver type are in docs/webhooks.md.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::provider::exec::ExecPluginConfig;
use crate::provider::sim::SimConfig;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7470";
pub const DEFAULT_DATA_DIR: &str = "./cairn-data";
/// The largest request body the API reads.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;
/// Secrets (of tokens and of webhook receivers) shorter than this are
/// refused: they can be guessed.
pub const MIN_SECRET_LEN: usize = 16;

/// Whether a `host[:port]` (as in a `Host` header or a URL's authority) names
/// this machine's loopback: `localhost`, `127.0.0.1`, `[::1]` and the like.
pub fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // `[address]` or `[address]:port`, nothing else after the bracket.
        Some(rest) => match rest.split_once(']') {
            Some((address, "")) => address,
            Some((address, port)) if is_port_suffix(port) => address,
            _ => return false,
        },
        None => match host.rsplit_once(':') {
            Some((name, port)) if is_port_suffix(&format!(":{port}")) => name,
            Some(_) => return false,
            None => host,
        },
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

/// `:` followed by 1 to 5 digits.
fn is_port_suffix(text: &str) -> bool {
    text.strip_prefix(':').is_some_and(|digits| {
        (1..=5).contains(&digits.len()) && digits.bytes().all(|byte| byte.is_ascii_digit())
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Write,
    Admin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub name: String,
    pub secret: String,
    pub role: Role,
}

/// `[reconcile]`: how the reconcilers run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileSettings {
    /// False keeps a ledger that drives no cloud: desired state, history and
    /// audit only (an audit replica, or a migration in progress).
    pub enabled: bool,
    /// Clusters reconciled at once.
    pub workers: usize,
    /// Provider calls in flight at once, over all clusters.
    pub concurrency: usize,
    /// Provider calls in flight at once for one cluster.
    pub cluster_concurrency: usize,
    /// How often a converged cluster is compared with its provider (drift).
    pub resync_interval_ms: u64,
    /// The first retry delay after a failed pass; it doubles per failure.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Consecutive failing passes (failures, no progress) before Degraded.
    pub degraded_after_failures: u32,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        ReconcileSettings {
            enabled: true,
            workers: 4,
            concurrency: 64,
            cluster_concurrency: 16,
            resync_interval_ms: 30_000,
            backoff_base_ms: 200,
            backoff_max_ms: 30_000,
            degraded_after_failures: 3,
        }
    }
}

impl ReconcileSettings {
    pub fn reconciler_config(&self) -> crate::reconcile::ReconcilerConfig {
        crate::reconcile::ReconcilerConfig {
            workers: self.workers,
            concurrency: self.concurrency,
            cluster_concurrency: self.cluster_concurrency,
            resync: Duration::from_millis(self.resync_interval_ms),
            backoff: crate::reconcile::Backoff {
                base: Duration::from_millis(self.backoff_base_ms),
                max: Duration::from_millis(self.backoff_max_ms),
            },
            degraded_after_failures: self.degraded_after_failures,
        }
    }

    fn check(&self) -> Result<(), String> {
        let positive = [
            ("reconcile.workers", self.workers as u64),
            ("reconcile.concurrency", self.concurrency as u64),
            (
                "reconcile.cluster_concurrency",
                self.cluster_concurrency as u64,
            ),
            ("reconcile.resync_interval_ms", self.resync_interval_ms),
            ("reconcile.backoff_base_ms", self.backoff_base_ms),
            (
                "reconcile.degraded_after_failures",
                u64::from(self.degraded_after_failures),
            ),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(format!("{field}: must be positive"));
            }
        }
        if self.backoff_max_ms < self.backoff_base_ms {
            return Err("reconcile.backoff_max_ms: must be at least backoff_base_ms".into());
        }
        Ok(())
    }
}

/// `[snapshots]`: how often the projections are snapshotted into the store.
/// More often: a shorter replay at start-up and shorter folds for
/// point-in-time reads, for more bytes on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotSettings {
    pub every_events: u64,
}

impl Default for SnapshotSettings {
    fn default() -> Self {
        SnapshotSettings {
            every_events: crate::ledger::DEFAULT_SNAPSHOT_EVERY,
        }
    }
}

/// `[api]`: HTTP API settings beyond the top-level keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    /// How long a `GET /v1/watch` stream may stay silent before the daemon
    /// sends a heartbeat comment (keeps proxies from closing it as idle).
    pub watch_heartbeat_ms: u64,
    /// How long a webhook delivery's body may take to arrive, once its
    /// headers passed the checks made before the body (docs/webhooks.md).
    pub webhook_body_timeout_ms: u64,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            watch_heartbeat_ms: 15_000,
            webhook_body_timeout_ms: 10_000,
        }
    }
}

impl SnapshotSettings {
    pub fn ledger_config(&self) -> crate::ledger::LedgerConfig {
        crate::ledger::LedgerConfig {
            snapshot_every: self.every_events,
        }
    }
}

impl ApiSettings {
    pub fn watch_heartbeat(&self) -> Duration {
        Duration::from_millis(self.watch_heartbeat_ms)
    }

    pub fn webhook_body_timeout(&self) -> Duration {
        Duration::from_millis(self.webhook_body_timeout_ms)
    }
}

/// `[providers]`: plugin providers, `[providers.exec.<name>]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProvidersConfig {
    pub exec: BTreeMap<String, ExecPluginConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    pub tokens: Vec<TokenConfig>,
    pub max_body_bytes: u64,
    /// How long a shutdown waits for in-flight requests before it exits anyway.
    pub shutdown_timeout_seconds: u64,
    pub api: ApiSettings,
    pub reconcile: ReconcileSettings,
    pub snapshots: SnapshotSettings,
    /// The simulated cloud, the `sim` provider (state in `<data_dir>/sim`).
    pub sim: SimConfig,
    pub providers: ProvidersConfig,
    /// Webhook receivers, `[hooks.<name>]` (see `webhook` and docs/webhooks.md).
    pub hooks: BTreeMap<String, crate::webhook::HookConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN
                .parse()
                .expect("default listen address parses"),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            log_format: LogFormat::Human,
            tokens: Vec::new(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            shutdown_timeout_seconds: 30,
            api: ApiSettings::default(),
            reconcile: ReconcileSettings::default(),
            snapshots: SnapshotSettings::default(),
            sim: SimConfig::default(),
            providers: ProvidersConfig::default(),
            hooks: BTreeMap::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

/// Flags that override the file.
#[derive(Debug, Clone, Default)]
pub struct ConfigOverrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
}

impl Config {
    /// Reads the file if given, applies the flags, and checks the result.
    pub fn load(path: Option<&Path>, overrides: ConfigOverrides) -> Result<Config, ConfigError> {
        let mut config = match path {
            None => Config::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                Config::parse(&text).map_err(|message| ConfigError::Parse {
                    path: path.display().to_string(),
                    message,
                })?
            }
        };
        if let Some(listen) = overrides.listen {
            config.listen = listen;
        }
        if let Some(data_dir) = overrides.data_dir {
            config.data_dir = data_dir;
        }
        if let Some(log_format) = overrides.log_format {
            config.log_format = log_format;
        }
        config.check()?;
        Ok(config)
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|error| error.to_string())
    }

    /// Refuses settings that would be unsafe or ambiguous.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.tokens.is_empty() && !self.listen.ip().is_loopback() {
            return Err(ConfigError::Invalid(format!(
                "refusing to listen on {} without tokens: add [[tokens]] to the config file, \
                 or listen on a loopback address such as {DEFAULT_LISTEN}",
                self.listen
            )));
        }
        for (index, token) in self.tokens.iter().enumerate() {
            if !crate::model::is_dns_label(&token.name) {
                return Err(ConfigError::Invalid(format!(
                    "tokens[{index}].name {:?}: must be a DNS label (it becomes the actor name)",
                    token.name
                )));
            }
            if token.secret.len() < MIN_SECRET_LEN {
                return Err(ConfigError::Invalid(format!(
                    "tokens[{index}].secret: at least {MIN_SECRET_LEN} characters"
                )));
            }
            if self.tokens[..index]
                .iter()
                .any(|other| other.name == token.name)
            {
                return Err(ConfigError::Invalid(format!(
                    "tokens[{index}].name {:?}: duplicate token name",
                    token.name
                )));
            }
        }
        if self.shutdown_timeout_seconds == 0 {
            return Err(ConfigError::Invalid(
                "shutdown_timeout_seconds: must be positive, or a shutdown would not wait \
                 for in-flight appends"
                    .into(),
            ));
        }
        if self.api.watch_heartbeat_ms == 0 {
            return Err(ConfigError::Invalid(
                "api.watch_heartbeat_ms: must be positive".into(),
            ));
        }
        if self.api.webhook_body_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "api.webhook_body_timeout_ms: must be positive".into(),
            ));
        }
        self.reconcile.check().map_err(ConfigError::Invalid)?;
        self.sim
            .check()
            .map_err(|message| ConfigError::Invalid(format!("sim.{message}")))?;
        for (name, plugin) in &self.providers.exec {
            if !crate::model::is_dns_label(name) {
                return Err(ConfigError::Invalid(format!(
                    "providers.exec.{name}: a plugin name must be a DNS label"
                )));
            }
            plugin.check().map_err(|message| {
                ConfigError::Invalid(format!("providers.exec.{name}.{message}"))
            })?;
        }
        crate::webhook::check_hooks(&self.hooks, MIN_SECRET_LEN).map_err(ConfigError::Invalid)?;
        if self.max_body_bytes == 0 {
            return Err(ConfigError::Invalid(
                "max_body_bytes: must be positive".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cairn.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\ndata_dir = \"/tmp/from-file\"\n",
        )
        .unwrap();
        let config = Config::load(
            Some(&path),
            ConfigOverrides {
                data_dir: Some("/tmp/from-flag".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.data_dir, PathBuf::from("/tmp/from-flag"));
    }

    #[test]
    fn no_tokens_means_loopback_only() {
        let config = Config {
            listen: "0.0.0.0:7470".parse().unwrap(),
            ..Config::default()
        };
        let error = config.check().unwrap_err().to_string();
        assert!(
            error.contains("refusing to listen on 0.0.0.0:7470"),
            "{error}"
        );
    }

    #[test]
    fn unknown_keys_and_short_secrets_are_refused() {
        assert!(Config::parse("lisen = \"x\"")
            .unwrap_err()
            .contains("lisen"));
        let config =
            Config::parse("[[tokens]]\nname = \"alice\"\nsecret = \"short\"\nrole = \"write\"\n")
                .unwrap();
        assert!(config
            .check()
            .unwrap_err()
            .to_string()
            .contains("tokens[0].secret"));
    }

    #[test]
    fn every_receiver_needs_a_type_and_a_long_enough_secret() {
        let check = |toml_text: &str| -> Result<(), String> {
            let config = Config::parse(toml_text)?;
            config.check().map_err(|error| error.to_string())
        };
        let cases = [
            ("[hooks.a]\ntype = \"generic\"\n", "missing `secret`"),
            ("[hooks.a]\nsecret = \"0123456789abcdef\"\n", "missing `type`"),
            ("[hooks.a]\ntype = \"gitlab\"\nsecret = \"0123456789abcdef\"\n", "unknown `type` \"gitlab\""),
            ("[hooks.a]\ntype = \"generic\"\nsecret = \"short\"\n", "hooks.a.secret: at least 16"),
            ("[hooks.A_B]\ntype = \"generic\"\nsecret = \"0123456789abcdef\"\n", "DNS label"),
            (
                "[hooks.a]\ntype = \"github\"\nsecret = \"0123456789abcdef\"\nrepository = \"/r\"\nbranchh = \"main\"\n",
                "unknown field `branchh`",
            ),
            (
                "[hooks.a]\ntype = \"generic\"\nsecret = \"0123456789abcdef\"\nrepository = \"/r\"\n",
                "unknown field `repository`",
            ),
        ];
        for (text, expected) in cases {
            let error = check(text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
        check("[hooks.a]\ntype = \"generic\"\nsecret = \"0123456789abcdef\"\n").unwrap();
        check(
            "[hooks.alerts]\ntype = \"alertmanager\"\nsecret = \"0123456789abcdef\"\n\
             [[hooks.alerts.rules]]\nname = \"down\"\nmatch = { alertname = \"NodeDown\" }\n\
             action = \"replace_machine\"\n",
        )
        .unwrap();
    }
}
