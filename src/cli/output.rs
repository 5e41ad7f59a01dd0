//! Rendering responses as tables, JSON or YAML.

use std::io::Write;

use serde::Serialize;
use tabwriter::TabWriter;

use crate::model::printable;
use crate::replay::ReplayReport;
use crate::wire::{
    ApplyResponse, CloudEventView, ClusterAtView, ClusterList, ClusterView, DiffEntry, DiffView,
    EventPageView, EventView, LifecycleResponse, PointView, RollbackResponse, SimResources,
    VerifyView,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
    Yaml,
}

/// Prints a value as JSON or YAML and says true; says false for a table.
pub fn print_structured<T: Serialize>(value: &T, format: OutputFormat) -> bool {
    match format {
        OutputFormat::Table => false,
        OutputFormat::Json => {
            println!(
                "{}",
                serde_json::to_string_pretty(value).expect("DTOs serialize")
            );
            true
        }
        OutputFormat::Yaml => {
            // Through JSON, so YAML has the same shape as `-o json` (serde_norway
            // would write enums as YAML tags such as `!request`).
            let json = serde_json::to_value(value).expect("DTOs serialize");
            let yaml = serde_norway::to_string(&json).expect("JSON values serialize");
            print!("{yaml}");
            true
        }
    }
}

fn print_table(header: &str, rows: impl IntoIterator<Item = String>) {
    let mut writer = TabWriter::new(std::io::stdout()).padding(2);
    let _ = writeln!(writer, "{header}");
    for row in rows {
        let _ = writeln!(writer, "{}", printable_row(&row));
    }
    let _ = writer.flush();
}

/// A table row (cells joined by tabs) with every cell made printable
/// (`model::printable`): whatever the log holds, a cell cannot start a new
/// line or send the terminal an escape sequence. A tab inside a value
/// (recorded text may hold one) only shifts the columns after it.
pub(super) fn printable_row(row: &str) -> String {
    row.split('\t')
        .map(crate::model::printable)
        .collect::<Vec<_>>()
        .join("\t")
}

pub fn print_apply(response: &ApplyResponse, format: OutputFormat) {
    if print_structured(response, format) {
        return;
    }
    for change in &response.changes {
        println!("{} {}", change.op, change.summary);
    }
    let count = response.changes.len();
    let noun = if count == 1 { "change" } else { "changes" };
    if response.dry_run {
        println!(
            "cluster {}: {count} {noun} planned (dry run, nothing appended)",
            response.cluster
        );
    } else if response.deduplicated {
        println!(
            "cluster {}: already applied with this idempotency key ({count} {noun}), version {}",
            response.cluster, response.stream_version
        );
    } else if count == 0 {
        println!(
            "cluster {}: no changes, version {}",
            response.cluster, response.stream_version
        );
    } else {
        let seqs = match (response.events.first(), response.events.last()) {
            (Some(first), Some(last)) if first.seq != last.seq => {
                format!("seq {}..{}", first.seq, last.seq)
            }
            (Some(first), _) => format!("seq {}", first.seq),
            _ => String::new(),
        };
        println!(
            "cluster {}: {count} {noun} applied ({seqs}), version {}",
            response.cluster, response.stream_version
        );
    }
}

pub fn print_clusters(list: &ClusterList, format: OutputFormat) {
    if print_structured(list, format) {
        return;
    }
    print_table(
        "NAME\tPROVIDER\tREGION\tKUBERNETES\tPOOLS\tREPLICAS\tMACHINES\tREADY\tVERSION\tUPDATED\tBY",
        list.clusters.iter().map(|cluster| {
            let ready = match (cluster.deletion_requested, cluster.paused, cluster.ready) {
                (true, _, _) => "Deleting",
                (_, true, _) => "Paused",
                (_, _, Some(true)) => "True",
                (_, _, Some(false)) => "False",
                (_, _, None) => "-",
            };
            format!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                cluster.name,
                cluster.provider,
                cluster.region,
                cluster.kubernetes_version,
                cluster.pools,
                cluster.replicas,
                cluster.machines,
                ready,
                cluster.stream_version,
                cluster.updated_at.format("%Y-%m-%dT%H:%M:%SZ"),
                cluster.updated_by.name
            )
        }),
    );
}

pub fn print_cluster(view: &ClusterView, format: OutputFormat) {
    if print_structured(view, format) {
        return;
    }
    println!("cluster:   {}", view.name);
    println!("version:   {}", view.stream_version);
    println!("declared:  seq {}", view.declared_seq);
    println!(
        "updated:   seq {} at {} by {}",
        view.updated_seq,
        view.updated_at.format("%Y-%m-%dT%H:%M:%SZ"),
        view.updated_by.name
    );
    if view.paused {
        println!("paused:    yes (no provider calls)");
    }
    if view.deletion_requested {
        println!("deleting:  yes");
    }
    println!("conditions:");
    if view.conditions.is_empty() {
        println!("  (none yet: not reconciled)");
    }
    for condition in &view.conditions {
        println!(
            "  {:<12} {:<5} {:<15} seq {:<6} {}",
            condition.condition_type,
            condition.status,
            condition.reason,
            condition.seq,
            condition.message
        );
    }
    let observed = &view.observed;
    println!("observed (as of seq {}):", observed.updated_seq);
    print_table(
        "  RESOURCE\tPROVIDER ID\tPOOL\tADDRESS",
        observed
            .resources
            .iter()
            .chain(&observed.orphans)
            .map(|resource| {
                let orphan = if observed
                    .orphans
                    .iter()
                    .any(|o| o.provider_id == resource.provider_id)
                {
                    " (orphan)"
                } else {
                    ""
                };
                format!(
                    "  {}{orphan}\t{}\t{}\t{}",
                    resource.key,
                    resource.provider_id,
                    resource.pool.as_deref().unwrap_or("-"),
                    resource.address.as_deref().unwrap_or("-")
                )
            }),
    );
    for in_flight in &observed.in_flight {
        println!(
            "  in flight: {} (token {}, attempt {}, started at seq {})",
            in_flight.action, in_flight.token, in_flight.attempt, in_flight.started_seq
        );
    }
    for drift in &observed.drift {
        println!(
            "  drift: {} at seq {} (expected {}, found {})",
            drift.resource,
            drift.detected_seq,
            drift.expected.as_deref().unwrap_or("nothing"),
            drift.actual.as_deref().unwrap_or("nothing")
        );
    }
    println!("desired:");
    let yaml = serde_norway::to_string(&view.desired).expect("manifests serialize");
    for line in yaml.lines() {
        println!("  {line}");
    }
}

/// `done` says what happened ("paused"); `already` what was already so.
pub fn print_lifecycle(
    response: &LifecycleResponse,
    done: &str,
    already: &str,
    format: OutputFormat,
) {
    if print_structured(response, format) {
        return;
    }
    match &response.event {
        Some(event) => println!(
            "cluster {}: {done} (event seq {}, version {})",
            response.cluster, event.seq, response.stream_version
        ),
        None => println!("cluster {}: {already}; nothing appended", response.cluster),
    }
}

pub fn print_sim_resources(list: &SimResources, format: OutputFormat) {
    if print_structured(list, format) {
        return;
    }
    print_table(
        "PROVIDER ID\tCLUSTER\tRESOURCE\tADDRESS\tTOKEN",
        list.resources.iter().map(|resource| {
            format!(
                "{}\t{}\t{}\t{}\t{}",
                resource.provider_id,
                resource.cluster,
                resource.key(),
                resource.address.as_deref().unwrap_or("-"),
                resource.token
            )
        }),
    );
}

/// The one-line summary of an event (see `EventView::summary`).
fn event_summary(event: &EventView) -> String {
    event.summary()
}

/// The one-line summary of an event of this type with this payload.
fn summary(event_type: &str, data: &serde_json::Value) -> String {
    crate::wire::summary_of(event_type, data)
}

fn event_reason(event: &EventView) -> String {
    match &event.cause {
        crate::event::Cause::Request {
            reason: Some(reason),
            ..
        } => reason.clone(),
        // A webhook change: the sender's reason, or else what the delivery
        // was (a GitHub push: its commit and pusher).
        crate::event::Cause::WebhookDelivery {
            hook,
            delivery,
            details,
            ..
        } => match (details.get("reason"), details.get("commit")) {
            (Some(reason), _) => reason.clone(),
            (None, Some(commit)) => format!(
                "{hook}: commit {} by {}",
                commit.chars().take(12).collect::<String>(),
                details.get("pusher").map_or("?", String::as_str)
            ),
            (None, None) => format!("{hook}: delivery {delivery}"),
        },
        _ => String::new(),
    }
}

pub fn print_events(page: &EventPageView, format: OutputFormat, history: bool) {
    if print_structured(page, format) {
        return;
    }
    let header = if history {
        "SEQ\tVERSION\tTIME\tACTOR\tTYPE\tCHANGE\tREASON"
    } else {
        "SEQ\tSTREAM\tTIME\tACTOR\tTYPE\tCHANGE"
    };
    print_table(
        header,
        page.events.iter().map(|event| {
            let time = event.time.format("%Y-%m-%dT%H:%M:%S%.3fZ");
            if history {
                format!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    event.seq,
                    event.version,
                    time,
                    event.actor.name,
                    event.event_type,
                    event_summary(event),
                    event_reason(event)
                )
            } else {
                format!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    event.seq,
                    event.stream,
                    time,
                    event.actor.name,
                    event.event_type,
                    event_summary(event)
                )
            }
        }),
    );
    if let Some(next) = &page.next {
        println!("(more: --after {next})");
    }
}

/// One event of `events --follow`: the columns of `cairn events` (no table
/// alignment: the width of what comes later is not known), or one JSON line
/// (the CloudEvent), or one YAML document.
pub fn print_followed_event(event: &CloudEventView, format: OutputFormat) {
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string(event).expect("DTOs serialize")),
        OutputFormat::Yaml => {
            println!("---");
            print_structured(event, format);
        }
        OutputFormat::Table => {
            let (event_type, _schema) = event.cairn_type().unwrap_or((&event.event_type, 0));
            let line = format!(
                "{}  {}  {}  {}  {}  {}",
                event.seq,
                printable(&event.subject),
                event.time.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                printable(&event.actor),
                printable(event_type),
                printable(&summary(event_type, &event.data))
            );
            println!("{}", line.trim_end());
        }
    }
}

pub fn print_verify(view: &VerifyView, format: OutputFormat) {
    if print_structured(view, format) {
        return;
    }
    match view.first_bad_seq {
        None => println!(
            "ok: {} events verified, head seq {}, head hash {}",
            view.events_checked, view.head_seq, view.head_hash
        ),
        Some(seq) => println!(
            "FAILED: first bad seq {seq}: {} ({} events verified before it)",
            view.reason.as_deref().unwrap_or("unknown"),
            view.events_checked
        ),
    }
}

fn point_text(point: &PointView) -> String {
    match point.time {
        Some(time) => format!(
            "seq {} ({})",
            point.seq,
            time.format("%Y-%m-%dT%H:%M:%S%.6fZ")
        ),
        None => format!("seq {}", point.seq),
    }
}

pub fn print_cluster_at(view: &ClusterAtView, format: OutputFormat) {
    if print_structured(view, format) {
        return;
    }
    println!(
        "as of:     {} (asked: {})",
        point_text(&view.at),
        view.at.requested
    );
    match &view.cluster {
        Some(cluster) => print_cluster(cluster, format),
        None => {
            println!("cluster:   {}", view.name);
            println!("version:   {}", view.stream_version);
            println!("deleted:   yes (every resource was gone by then)");
        }
    }
}

fn print_diff_entries(title: &str, entries: &[DiffEntry]) {
    println!("{title}:");
    if entries.is_empty() {
        println!("  (no difference)");
    }
    for entry in entries {
        println!("  {} {}", entry.op, entry.summary);
        for event in &entry.events {
            println!(
                "      seq {} {} by {} ({})",
                event.seq, event.event_type, event.actor, event.id
            );
        }
    }
}

pub fn print_diff(view: &DiffView, format: OutputFormat) {
    if print_structured(view, format) {
        return;
    }
    println!(
        "cluster {}: from {} to {}",
        view.cluster,
        point_text(&view.from),
        point_text(&view.to)
    );
    print_diff_entries("desired", &view.desired);
    print_diff_entries("observed", &view.observed);
}

pub fn print_rollback(response: &RollbackResponse, format: OutputFormat) {
    if print_structured(response, format) {
        return;
    }
    for change in &response.changes {
        println!("{} {}", change.op, change.summary);
    }
    let count = response.changes.len();
    let noun = if count == 1 { "change" } else { "changes" };
    if count == 0 {
        println!(
            "cluster {}: already as it was at seq {}, nothing to roll back",
            response.cluster, response.to_seq
        );
    } else if response.dry_run {
        println!(
            "cluster {}: rollback to seq {} would make {count} {noun} (dry run, nothing appended)",
            response.cluster, response.to_seq
        );
    } else {
        let first = response.events.first().map_or(0, |event| event.seq);
        println!(
            "cluster {}: rolled back to seq {} with {count} {noun} (RollbackRequested at seq {first}), version {}; the reconcilers carry it out",
            response.cluster, response.to_seq, response.stream_version
        );
    }
}

pub fn print_reindex(report: &crate::store::ReindexReport, format: OutputFormat) {
    if print_structured(report, format) {
        return;
    }
    println!(
        "reindexed {} events up to seq {} in {:.3} s (snapshots kept)",
        report.events_indexed, report.head_seq, report.seconds
    );
}

pub fn print_replay(report: &ReplayReport, format: OutputFormat) {
    if print_structured(report, format) {
        return;
    }
    println!(
        "replayed {} events in {:.3} s ({:.0} events/s): {} clusters, {} events skipped",
        report.events,
        report.seconds,
        report.events_per_second,
        report.clusters,
        report.skipped_events
    );
    if report.snapshots.is_empty() {
        println!("no snapshots stored");
    }
    for check in &report.snapshots {
        println!("snapshot at seq {}: {}", check.seq, check.verdict);
        for detail in &check.details {
            println!("  {detail}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_cell_cannot_start_a_row_or_reach_the_terminal() {
        let row = "42\talice\tPoolScaled\tok\n  43  root  ClusterDeleted\u{1b}[2K";
        assert_eq!(
            printable_row(row),
            "42\talice\tPoolScaled\tok\\n  43  root  ClusterDeleted\\e[2K"
        );
    }
}
