//! The command line: argument definitions and the commands that talk to a
//! daemon over HTTP or work offline on a data directory.
//!
//! # Layout
//!
//! - `mod.rs`: clap definitions and dispatch.
//! - `client.rs`: the HTTP client and its error messages.
//! - `output.rs`: table, JSON and YAML rendering.
//! - `sse.rs`: the Server-Sent Events parser behind `events --follow`.
//! - `backup.rs`: `export` (from the daemon or offline) and `import`.
//!
//! **Architecture Invariant:** the CLI knows nothing of warp and does not
//! depend on the `api` module; it speaks the API's request and response types
//! from `crate::wire` over HTTP, and opens the store only for offline commands.
//!
//! Exit codes: 0 success, 1 the daemon refused the request, 2 bad usage or a
//! local problem (an unreadable file, a data directory in use), 3 the daemon
//! could not be reached or did not answer, 4 verification found a bad record
//! (or `import` refused a file: tampered, truncated or malformed).

mod audit;
mod backup;
mod client;
mod hooks;
mod output;
pub mod sse;

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::LogFormat;
use crate::wire::{
    ApplyResponse, CloudEventView, ClusterAtView, ClusterList, ClusterView, DiffView,
    EventPageView, LifecycleResponse, RollbackRequest, RollbackResponse, ScaleRequest,
    SimResources, VerifyView,
};
use client::{Client, ClientError};

pub use output::OutputFormat;

#[derive(Debug, Parser)]
#[command(
    name = "cairn",
    version,
    about = "An event-sourced infrastructure ledger"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// The daemon's address.
    #[arg(
        long,
        global = true,
        env = "CAIRN_SERVER",
        default_value = "http://127.0.0.1:7470"
    )]
    pub server: String,
    /// A bearer token, when the daemon has tokens configured.
    #[arg(long, global = true, env = "CAIRN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Serve(ServeArgs),
    /// Declare or update a cluster from a manifest and print the plan.
    Apply(ApplyArgs),
    /// Show clusters.
    #[command(subcommand)]
    Get(GetCommand),
    /// Who changed a cluster, what, when and why.
    History(HistoryArgs),
    /// Read the log.
    Events(EventsArgs),
    /// An event's causal chain: what caused it, what it caused.
    Trace(audit::TraceArgs),
    /// Recompute the hash chain (on the daemon, or offline on a data dir).
    Verify(VerifyArgs),
    /// Write the whole log as NDJSON with its hashes (from the daemon, or offline).
    Export(ExportArgs),
    /// Load an export into a new data directory, verifying the chain as it goes.
    Import(ImportArgs),
    /// Set a pool's replica count.
    Scale(ScaleArgs),
    /// Stop provider calls for a cluster.
    Pause(LifecycleArgs),
    /// Let the reconcilers act on a paused cluster again.
    Resume(LifecycleArgs),
    /// Replace a broken machine: the reconcilers delete it at once and create it again.
    ReplaceMachine(ReplaceMachineArgs),
    /// Delete a cluster: its resources are torn down, its history stays.
    #[command(subcommand)]
    Delete(DeleteCommand),
    /// The simulated cloud: look at it, or change it behind Cairn's back.
    #[command(subcommand)]
    Sim(SimCommand),
    /// What changed in a cluster between two points (seqs, RFC 3339 times or "now").
    Diff(DiffArgs),
    /// Take a cluster's desired state back to a point, as a new change.
    Rollback(RollbackArgs),
    /// Rebuild every projection from seq 1, offline, and compare with the stored snapshots.
    Replay(ReplayArgs),
    /// Rebuild the log's derived indexes (index.redb) from the log, offline.
    Reindex(ReplayArgs),
    /// Webhook receivers: list them, their deliveries, send a signed test one.
    #[command(subcommand)]
    Hooks(hooks::HooksCommand),
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    pub name: String,
    /// A seq, an RFC 3339 time, or "now".
    #[arg(long)]
    pub from: String,
    /// A seq, an RFC 3339 time, or "now".
    #[arg(long, default_value = "now")]
    pub to: String,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    pub name: String,
    /// The point to go back to: a seq, an RFC 3339 time.
    #[arg(long)]
    pub to: String,
    /// Print what would change without appending anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Why; recorded in the events' cause.
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The data directory (the daemon must not be running on it).
    #[arg(long)]
    pub data_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    pub name: String,
    pub pool: String,
    pub replicas: i64,
    /// Scale only if the cluster is still at this version.
    #[arg(long)]
    pub if_match: Option<u64>,
    /// Why; recorded in the event's cause.
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(Debug, Args)]
pub struct LifecycleArgs {
    pub name: String,
    /// Why; recorded in the event's cause.
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReplaceMachineArgs {
    pub cluster: String,
    /// The machine's name (`workers-2`), provider id (`sim-m-000042`) or private address.
    pub machine: String,
    /// Why; recorded in the event's cause.
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum DeleteCommand {
    /// Request the deletion of a cluster.
    Cluster(LifecycleArgs),
}

#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// List what the simulated cloud holds (its true state, not a lagging listing).
    List {
        /// Only this cluster's resources.
        #[arg(long)]
        cluster: Option<String>,
    },
    /// Delete a machine behind Cairn's back, to see drift detection at work.
    DeleteMachine {
        cluster: String,
        /// The machine's name (`workers-0`) or provider id (`sim-m-000042`).
        machine: String,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML config file; flags beat its settings.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// ADDR:PORT to listen on (default 127.0.0.1:7470).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// The data directory (default ./cairn-data).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The manifest file (YAML or JSON), or - for standard input.
    #[arg(short = 'f', long = "file")]
    pub file: String,
    /// Print the plan without appending anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Apply only if the cluster is still at this version.
    #[arg(long)]
    pub if_match: Option<u64>,
    /// Make a retried apply safe: the same key and manifest apply once.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Why the change is made; recorded in the events' cause.
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum GetCommand {
    /// List clusters.
    Clusters,
    /// Show one cluster: desired state, observed resources, conditions.
    Cluster {
        name: String,
        /// As it was at this point: a seq, an RFC 3339 time, or "now".
        #[arg(long)]
        at: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    pub name: String,
    /// Show events after this stream version.
    #[arg(long, default_value_t = 0)]
    pub after: u64,
    /// At most this many events (1 to 1000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub limit: u64,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Show events after this seq (default: 0; with --follow, the current head).
    #[arg(long)]
    pub after: Option<u64>,
    /// At most this many events (1 to 1000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1000), conflicts_with = "follow")]
    pub limit: u64,
    /// Keep printing events as they are appended, until interrupted
    /// (reconnects after a dropped connection, missing and repeating none).
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only this stream, e.g. cluster/prod-eu.
    #[arg(long)]
    pub stream: Option<String>,
    /// Only this event type, e.g. PoolScaled.
    #[arg(long = "type")]
    pub event_type: Option<String>,
    /// Only this actor: NAME or KIND:NAME (user, webhook, reconciler, system).
    #[arg(long)]
    pub actor: Option<String>,
    /// Only events caused by this event id (or request id, idempotency key, webhook delivery).
    #[arg(long, conflicts_with = "follow")]
    pub cause: Option<String>,
    /// Only events with this correlation id.
    #[arg(long, conflicts_with = "follow")]
    pub correlation: Option<String>,
    /// From this seq or RFC 3339 time on (inclusive).
    #[arg(long, conflicts_with = "follow")]
    pub since: Option<String>,
    /// Up to this seq or RFC 3339 time (inclusive).
    #[arg(long, conflicts_with = "follow")]
    pub until: Option<String>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Verify this data dir offline instead of asking the daemon.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Export this data dir offline (no daemon may hold it) instead of
    /// asking the daemon (`GET /v1/export`, admin role).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The file to write, or - for standard output (the default).
    #[arg(short = 'f', long = "file", default_value = "-")]
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The data directory to create; it must not exist or be empty.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The export to read, or - for standard input (the default).
    #[arg(short = 'f', long = "file", default_value = "-")]
    pub file: PathBuf,
}

/// How a client command ended, for the exit code.
#[derive(Debug)]
pub enum Failure {
    /// The daemon answered with an error (exit 1).
    Refused(String),
    /// The daemon could not be reached or did not answer (exit 3).
    Unreachable(String),
    /// Verification found a bad record (exit 4).
    VerifyFailed(String),
    /// A local problem: bad arguments, an unreadable file, a locked data dir (exit 2).
    Other(String),
}

impl Failure {
    pub fn exit_code(&self) -> i32 {
        match self {
            Failure::Refused(_) => 1,
            Failure::Other(_) => 2,
            Failure::Unreachable(_) => 3,
            Failure::VerifyFailed(_) => 4,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Failure::Refused(text)
            | Failure::Unreachable(text)
            | Failure::VerifyFailed(text)
            | Failure::Other(text) => text,
        }
    }
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Failure {
        match error {
            ClientError::Unreachable { .. }
            | ClientError::TimedOut { .. }
            | ClientError::BrokenOff { .. } => Failure::Unreachable(error.to_string()),
            ClientError::Refused { .. } | ClientError::Unexpected { .. } => {
                Failure::Refused(error.to_string())
            }
            other => Failure::Other(other.to_string()),
        }
    }
}

/// Runs a client command (everything but `serve`).
pub async fn run_client(global: &GlobalArgs, command: Command) -> Result<(), Failure> {
    let client = Client::new(&global.server, global.token.clone())?;
    let format = global.output;
    match command {
        Command::Serve(_) => unreachable!("serve is dispatched by main"),
        Command::Apply(args) => {
            let (body, content_type) = read_manifest(&args.file)?;
            let mut query = Vec::new();
            if args.dry_run {
                query.push(("dryRun", "true".to_string()));
            }
            let mut headers = vec![("content-type", content_type.to_string())];
            if let Some(version) = args.if_match {
                headers.push(("if-match", version.to_string()));
            }
            if let Some(key) = args.idempotency_key {
                headers.push(("idempotency-key", key));
            }
            if let Some(reason) = args.reason {
                headers.push(("x-cairn-reason", reason));
            }
            let response: ApplyResponse = client.post("/v1/apply", &query, &headers, body).await?;
            output::print_apply(&response, format);
        }
        Command::Get(GetCommand::Clusters) => {
            let list: ClusterList = client.get("/v1/clusters", &[]).await?;
            output::print_clusters(&list, format);
        }
        Command::Get(GetCommand::Cluster { name, at: None }) => {
            check_names(&[&name])?;
            let view: ClusterView = client.get(&format!("/v1/clusters/{name}"), &[]).await?;
            output::print_cluster(&view, format);
        }
        Command::Get(GetCommand::Cluster { name, at: Some(at) }) => {
            check_names(&[&name])?;
            let view: ClusterAtView = client
                .get(&format!("/v1/clusters/{name}"), &[("at", at)])
                .await?;
            output::print_cluster_at(&view, format);
        }
        Command::Diff(args) => {
            check_names(&[&args.name])?;
            let query = [("from", args.from), ("to", args.to)];
            let view: DiffView = client
                .get(&format!("/v1/clusters/{}/diff", args.name), &query)
                .await?;
            output::print_diff(&view, format);
        }
        Command::Rollback(args) => {
            check_names(&[&args.name])?;
            let mut headers = vec![("content-type", "application/json".to_string())];
            headers.extend(reason_header(args.reason));
            let body = serde_json::to_vec(&RollbackRequest {
                to: args.to,
                dry_run: args.dry_run,
            })
            .expect("a rollback request serializes");
            let path = format!("/v1/clusters/{}/rollback", args.name);
            let response: RollbackResponse = client.post(&path, &[], &headers, body).await?;
            output::print_rollback(&response, format);
        }
        Command::Replay(args) => {
            let report = crate::replay::replay_offline(&args.data_dir)
                .await
                .map_err(|error| Failure::Other(error.to_string()))?;
            output::print_replay(&report, format);
            if !report.is_clean() {
                return Err(Failure::VerifyFailed(format!(
                    "{} snapshot(s) differ from the replay",
                    report.differing()
                )));
            }
        }
        Command::Reindex(args) => {
            let report = crate::store::reindex_offline(&args.data_dir)
                .await
                .map_err(|error| Failure::Other(error.to_string()))?;
            output::print_reindex(&report, format);
        }
        Command::History(args) => {
            let query = [
                ("after", args.after.to_string()),
                ("limit", args.limit.to_string()),
            ];
            let page: EventPageView = client
                .get(&format!("/v1/clusters/{}/history", args.name), &query)
                .await?;
            output::print_events(&page, format, true);
        }
        Command::Events(args) if args.follow => follow_events(&client, args, format).await?,
        Command::Events(args) => {
            let mut query = vec![
                ("after", args.after.unwrap_or(0).to_string()),
                ("limit", args.limit.to_string()),
            ];
            if let Some(stream) = args.stream {
                query.push(("stream", stream));
            }
            let filters = [
                ("type", args.event_type),
                ("actor", args.actor),
                ("cause", args.cause),
                ("correlation", args.correlation),
                ("since", args.since),
                ("until", args.until),
            ];
            query.extend(filters.into_iter().filter_map(|(n, v)| Some((n, v?))));
            let page: EventPageView = client.get("/v1/events", &query).await?;
            output::print_events(&page, format, false);
        }
        Command::Trace(args) => audit::trace(&client, args, format).await?,
        Command::Scale(args) => {
            check_names(&[&args.name, &args.pool])?;
            let mut headers = vec![("content-type", "application/json".to_string())];
            if let Some(version) = args.if_match {
                headers.push(("if-match", version.to_string()));
            }
            if let Some(reason) = args.reason {
                headers.push(("x-cairn-reason", reason));
            }
            let body = serde_json::to_vec(&ScaleRequest {
                replicas: args.replicas,
            })
            .expect("a scale request serializes");
            let path = format!("/v1/clusters/{}/pools/{}/scale", args.name, args.pool);
            let response: ApplyResponse = client.post(&path, &[], &headers, body).await?;
            output::print_apply(&response, format);
        }
        Command::Pause(args) => {
            check_names(&[&args.name])?;
            let path = format!("/v1/clusters/{}/pause", args.name);
            let headers = reason_header(args.reason);
            let response: LifecycleResponse = client.post(&path, &[], &headers, Vec::new()).await?;
            output::print_lifecycle(&response, "paused", "already paused", format);
        }
        Command::Resume(args) => {
            check_names(&[&args.name])?;
            let path = format!("/v1/clusters/{}/resume", args.name);
            let headers = reason_header(args.reason);
            let response: LifecycleResponse = client.post(&path, &[], &headers, Vec::new()).await?;
            output::print_lifecycle(&response, "resumed", "not paused", format);
        }
        Command::ReplaceMachine(args) => {
            check_names(&[&args.cluster])?;
            check_machine_reference(&args.machine)?;
            let path = format!(
                "/v1/clusters/{}/machines/{}/replace",
                args.cluster, args.machine
            );
            let headers = reason_header(args.reason);
            let response: LifecycleResponse = client.post(&path, &[], &headers, Vec::new()).await?;
            output::print_lifecycle(
                &response,
                &format!(
                    "replacement of machine {} requested; the reconcilers replace it",
                    args.machine
                ),
                &format!(
                    "the replacement of machine {} was already requested",
                    args.machine
                ),
                format,
            );
        }
        Command::Delete(DeleteCommand::Cluster(args)) => {
            check_names(&[&args.name])?;
            let headers = reason_header(args.reason);
            let response: LifecycleResponse = client
                .delete(&format!("/v1/clusters/{}", args.name), &headers)
                .await?;
            output::print_lifecycle(
                &response,
                "deletion requested; the reconcilers tear it down",
                "its deletion was already requested",
                format,
            );
        }
        Command::Sim(SimCommand::List { cluster }) => {
            let mut list: SimResources = client.get("/v1/sim/resources", &[]).await?;
            if let Some(cluster) = cluster {
                list.resources
                    .retain(|resource| resource.cluster == cluster);
            }
            output::print_sim_resources(&list, format);
        }
        Command::Sim(SimCommand::DeleteMachine { cluster, machine }) => {
            check_names(&[&cluster])?;
            let list: SimResources = client.get("/v1/sim/resources", &[]).await?;
            let found = list.resources.iter().find(|resource| {
                resource.cluster == cluster
                    && resource.key().kind == crate::model::ResourceKind::Machine
                    && (resource.provider_id == machine || resource.spec.name() == machine)
            });
            let Some(found) = found else {
                return Err(Failure::Refused(format!(
                    "the simulated cloud has no machine {machine} in cluster {cluster}"
                )));
            };
            let deleted: crate::model::CloudResource = client
                .delete(&format!("/v1/sim/resources/{}", found.provider_id), &[])
                .await?;
            if !output::print_structured(&deleted, format) {
                println!(
                    "deleted {} ({}) of cluster {} behind Cairn's back",
                    deleted.key(),
                    deleted.provider_id,
                    deleted.cluster
                );
            }
        }
        Command::Verify(VerifyArgs { data_dir: None }) => {
            let view: VerifyView = client.get("/v1/verify", &[]).await?;
            report_verify(&view, format)?;
        }
        Command::Verify(VerifyArgs {
            data_dir: Some(dir),
        }) => {
            let view = verify_offline(&dir).await?;
            report_verify(&view, format)?;
        }
        Command::Export(args) => backup::export(&client, args).await?,
        Command::Import(args) => backup::import(args, format).await?,
        // A delivery carries the receiver's credentials, never the bearer
        // token of the API (Alertmanager's would be a second Authorization).
        Command::Hooks(hooks::HooksCommand::Send(args)) => {
            let client = Client::new(&global.server, None)?;
            hooks::send_and_print(&client, args, format).await?
        }
        Command::Hooks(command) => hooks::run(&client, command, format).await?,
    }
    Ok(())
}

/// The first wait before reconnecting a dropped follow, doubled per failed
/// attempt up to `FOLLOW_BACKOFF_MAX`.
const FOLLOW_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(200);
const FOLLOW_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// `cairn events --follow`: prints `GET /v1/watch` until interrupted. After a
/// dropped connection it reconnects with `Last-Event-ID` (the last id the
/// stream dispatched, which the daemon sets before the first event too), so
/// nothing is missed or printed twice. Only the first connection's failure,
/// or a refusal that will not change (a 4xx), ends it.
async fn follow_events(
    client: &Client,
    args: EventsArgs,
    format: OutputFormat,
) -> Result<(), Failure> {
    let mut query = Vec::new();
    if let Some(after) = args.after {
        query.push(("after", after.to_string()));
    }
    if let Some(stream) = args.stream {
        query.push(("stream", stream));
    }
    if let Some(event_type) = args.event_type {
        query.push(("type", event_type));
    }
    if let Some(actor) = args.actor {
        query.push(("actor", actor));
    }
    let mut last_event_id: Option<String> = None;
    let mut connected = false;
    let mut backoff = FOLLOW_BACKOFF_MIN;
    loop {
        let lost = match client
            .open_stream("/v1/watch", &query, last_event_id.as_deref())
            .await
        {
            Ok(mut response) => {
                connected = true;
                backoff = FOLLOW_BACKOFF_MIN;
                let mut parser = sse::SseParser::new();
                loop {
                    match response.chunk().await {
                        Ok(Some(chunk)) => {
                            for item in parser.feed(&chunk) {
                                if let sse::SseItem::Message(message) = item {
                                    print_followed(&message, format)?;
                                }
                            }
                            if let Some(id) = parser.last_event_id() {
                                last_event_id = Some(id.to_string());
                            }
                        }
                        Ok(None) => break "the daemon ended the stream".to_string(),
                        Err(error) => break client.send_error(&error).to_string(),
                    }
                }
            }
            Err(error) if connected && error.is_retryable() => error.to_string(),
            Err(error) => return Err(error.into()),
        };
        eprintln!(
            "{}; reconnecting in {} ms",
            lost.lines().next().unwrap_or_default(),
            backoff.as_millis()
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(FOLLOW_BACKOFF_MAX);
    }
}

fn print_followed(message: &sse::SseMessage, format: OutputFormat) -> Result<(), Failure> {
    let event: CloudEventView = serde_json::from_str(&message.data).map_err(|error| {
        Failure::Refused(format!(
            "the daemon sent an event this client cannot read ({error}): {}",
            message.data
        ))
    })?;
    output::print_followed_event(&event, format);
    Ok(())
}

fn reason_header(reason: Option<String>) -> Vec<(&'static str, String)> {
    reason
        .map(|reason| vec![("x-cairn-reason", reason)])
        .unwrap_or_default()
}

/// Cluster and pool names go into URL paths: they must be DNS labels, as
/// the daemon requires anyway.
fn check_names(names: &[&str]) -> Result<(), Failure> {
    match names.iter().find(|name| !crate::model::is_dns_label(name)) {
        None => Ok(()),
        Some(name) => Err(Failure::Other(format!(
            "{name:?} is not a cluster or pool name (a DNS label: lowercase letters, digits and -)"
        ))),
    }
}

/// A machine reference goes into a URL path as it is: a name, provider id or
/// address made of letters, digits and `-._:~` only.
fn check_machine_reference(machine: &str) -> Result<(), Failure> {
    let safe = |character: char| character.is_ascii_alphanumeric() || "-._:~".contains(character);
    if machine.is_empty() || !machine.chars().all(safe) {
        return Err(Failure::Other(format!(
            "{machine:?} is not a machine name, provider id or address (letters, digits and -._:~)"
        )));
    }
    Ok(())
}

fn report_verify(view: &VerifyView, format: OutputFormat) -> Result<(), Failure> {
    output::print_verify(view, format);
    match (view.first_bad_seq, &view.reason) {
        (Some(seq), reason) => Err(Failure::VerifyFailed(format!(
            "the chain is broken at seq {seq}: {}",
            reason.as_deref().unwrap_or("unknown reason")
        ))),
        (None, _) => Ok(()),
    }
}

/// Verifies a data directory without a daemon.
pub async fn verify_offline(dir: &std::path::Path) -> Result<VerifyView, Failure> {
    let report = crate::store::verify_offline(dir)
        .await
        .map_err(|error| Failure::Other(error.to_string()))?;
    Ok(VerifyView::from_report(&report))
}

fn read_manifest(file: &str) -> Result<(Vec<u8>, &'static str), Failure> {
    let body = if file == "-" {
        let mut body = Vec::new();
        std::io::stdin()
            .read_to_end(&mut body)
            .map_err(|error| Failure::Other(format!("cannot read standard input: {error}")))?;
        body
    } else {
        std::fs::read(file)
            .map_err(|error| Failure::Other(format!("cannot read {file}: {error}")))?
    };
    let looks_like_json = file.ends_with(".json")
        || body
            .iter()
            .find(|byte| !byte.is_ascii_whitespace())
            .is_some_and(|byte| *byte == b'{');
    let content_type = if looks_like_json {
        "application/json"
    } else {
        "application/yaml"
    };
    Ok((body, content_type))
}
