//! `cairn hooks list | deliveries NAME | send NAME -f FILE`: the webhook
//! receivers, what came of their deliveries, and a signed test delivery.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use tabwriter::TabWriter;

use super::client::Client;
use super::output::{print_structured, OutputFormat};
use super::Failure;
use crate::config::{Config, ConfigOverrides};
use crate::webhook::{signature, ReceiverConfig};
use crate::wire::{DeliveryList, DeliveryResponse, HookList};

#[derive(Debug, Subcommand)]
pub enum HooksCommand {
    /// The configured receivers.
    List,
    /// A receiver's deliveries, newest first: when, outcome, trace link.
    Deliveries {
        name: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Signs a payload with the receiver's secret from the config file and
    /// posts it, as the real sender would (for testing).
    Send(SendArgs),
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// The receiver's name.
    pub name: String,
    /// The payload (JSON) to send.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// The daemon's config file, where the receiver and its secret are.
    #[arg(long, default_value = "cairn.toml")]
    pub config: PathBuf,
    /// GitHub only: the `X-GitHub-Event` header.
    #[arg(long, default_value = "push")]
    pub event: String,
    /// GitHub only: the `X-GitHub-Delivery` header (default: a new UUID).
    #[arg(long)]
    pub delivery: Option<String>,
}

pub(super) async fn run(
    client: &Client,
    command: HooksCommand,
    format: OutputFormat,
) -> Result<(), Failure> {
    match command {
        HooksCommand::List => {
            let list: HookList = client.get("/v1/hooks", &[]).await?;
            if !print_structured(&list, format) {
                let mut table = TabWriter::new(std::io::stdout());
                let _ = writeln!(table, "NAME\tTYPE\tPATH");
                for hook in &list.hooks {
                    let row = format!("{}\t{}\t{}", hook.name, hook.kind, hook.path);
                    let _ = writeln!(table, "{}", super::output::printable_row(&row));
                }
                let _ = table.flush();
            }
        }
        HooksCommand::Deliveries { name, limit } => {
            let query = [("limit", limit.to_string())];
            let list: DeliveryList = client
                .get(&format!("/v1/hooks/{name}/deliveries"), &query)
                .await?;
            if !print_structured(&list, format) {
                let mut table = TabWriter::new(std::io::stdout());
                let _ = writeln!(table, "RECEIVED\tDELIVERY\tEVENT\tOUTCOME\tSUMMARY\tTRACE");
                for delivery in &list.deliveries {
                    let (outcome, summary) = match &delivery.outcome {
                        Some(outcome) => (outcome.outcome.as_str(), outcome.summary.as_str()),
                        None => ("pending", ""),
                    };
                    let row = format!(
                        "{}\t{}\t{}\t{outcome}\t{summary}\t{}",
                        delivery.received.format("%Y-%m-%dT%H:%M:%SZ"),
                        delivery.delivery,
                        delivery.event,
                        delivery.trace
                    );
                    let _ = writeln!(table, "{}", super::output::printable_row(&row));
                }
                let _ = table.flush();
            }
        }
        HooksCommand::Send(args) => send_and_print(client, args, format).await?,
    }
    Ok(())
}

/// Sends a signed test delivery and prints the answer. `client` must carry
/// no API token.
pub(super) async fn send_and_print(
    client: &Client,
    args: SendArgs,
    format: OutputFormat,
) -> Result<(), Failure> {
    let response = send(client, args).await?;
    if !print_structured(&response, format) {
        println!(
            "{} delivery {} to {} (event {} at seq {}); trace: {}",
            response.status,
            response.delivery,
            response.hook,
            response.event_id,
            response.seq,
            response.trace
        );
        if let Some(outcome) = &response.outcome {
            println!(
                "outcome: {} ({})",
                outcome.outcome.as_str(),
                outcome.summary
            );
        }
    }
    Ok(())
}

async fn send(client: &Client, args: SendArgs) -> Result<DeliveryResponse, Failure> {
    let config = Config::load(Some(&args.config), ConfigOverrides::default())
        .map_err(|error| Failure::Other(error.to_string()))?;
    let hook = config.hooks.get(&args.name).ok_or_else(|| {
        Failure::Other(format!(
            "{} has no receiver [hooks.{}]",
            args.config.display(),
            args.name
        ))
    })?;
    let body = std::fs::read(&args.file)
        .map_err(|error| Failure::Other(format!("cannot read {}: {error}", args.file.display())))?;
    let headers = match &hook.receiver {
        ReceiverConfig::Github(_) => vec![
            (
                "x-hub-signature-256",
                format!("sha256={}", signature::sign(&hook.secret, &[&body])),
            ),
            ("x-github-event", args.event.clone()),
            (
                "x-github-delivery",
                args.delivery
                    .clone()
                    .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
            ),
        ],
        // Alertmanager's delivery id is the digest of the body.
        ReceiverConfig::Alertmanager(_) => {
            vec![("authorization", format!("Bearer {}", hook.secret))]
        }
        ReceiverConfig::Generic(_) => {
            let now = chrono::Utc::now().timestamp();
            vec![(
                crate::webhook::generic::SIGNATURE_HEADER,
                signature::generic_header(&hook.secret, now, &body),
            )]
        }
    };
    let mut all_headers = vec![("content-type", "application/json".to_string())];
    all_headers.extend(headers);
    Ok(client
        .post(&format!("/v1/hooks/{}", args.name), &[], &all_headers, body)
        .await?)
}
