//! `cairn trace ID`: an event's causal chain, printed as an indented table.

use std::io::Write;

use clap::Args;
use tabwriter::TabWriter;

use super::client::Client;
use super::output::{print_structured, OutputFormat};
use super::Failure;
use crate::event::Cause;
use crate::wire::{TraceEntry, TraceView};

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// The event's id (a UUID, as `cairn events -o json` shows it).
    pub id: String,
}

pub(super) async fn trace(
    client: &Client,
    args: TraceArgs,
    format: OutputFormat,
) -> Result<(), Failure> {
    let id = uuid::Uuid::parse_str(&args.id)
        .map_err(|_| Failure::Other(format!("{:?} is not an event id (a UUID)", args.id)))?;
    let view: TraceView = client.get(&format!("/v1/events/{id}/trace"), &[]).await?;
    print_trace(&view, format);
    Ok(())
}

/// What started a chain, in words.
pub fn describe_origin(origin: &Cause) -> String {
    match origin {
        Cause::None => "nothing recorded".into(),
        Cause::Request {
            request_id,
            idempotency_key,
            reason,
        } => {
            let mut text = format!("request {request_id}");
            if let Some(key) = idempotency_key {
                text.push_str(&format!(", idempotency key {key:?}"));
            }
            if let Some(reason) = reason {
                text.push_str(&format!(", reason {reason:?}"));
            }
            text
        }
        Cause::Webhook { hook, delivery } => format!("webhook {hook}, delivery {delivery}"),
        Cause::WebhookDelivery {
            hook,
            delivery,
            details,
            ..
        } => {
            let mut text = format!("webhook {hook}, delivery {delivery}");
            for (name, value) in details {
                text.push_str(&format!(", {name} {value:?}"));
            }
            text
        }
        Cause::Event { seq, id } => {
            format!("event {id} at seq {seq} (not in the log, or past the trace's limit)")
        }
    }
}

/// One table row: the type indented by `indent` steps, marked when it is the traced event.
fn row(entry: &TraceEntry, indent: usize, marker: &str) -> String {
    let event = &entry.event;
    format!(
        "{marker}{}\t{}\t{}\t{}{}\t{}\t{}",
        event.seq,
        event.time.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
        event.stream,
        "  ".repeat(indent),
        event.event_type,
        event.actor.name,
        entry.summary
    )
}

/// The causes from the root down, the event (marked `*`), its effects indented
/// by depth; then the other events of the same correlation id.
pub fn trace_lines(view: &TraceView) -> Vec<String> {
    let mut lines = vec![format!("origin: {}", describe_origin(&view.origin))];
    if view.causes_truncated {
        lines.push("(the chain of causes goes further up than shown)".into());
    }
    let mut rows = vec!["  SEQ\tTIME\tSTREAM\tTYPE\tACTOR\tSUMMARY".to_string()];
    for (position, cause) in view.causes.iter().enumerate() {
        rows.push(row(cause, position, "  "));
    }
    let base = view.causes.len();
    rows.push(row(&view.event, base, "* "));
    for effect in &view.effects {
        let depth = effect.depth.unwrap_or(1) as usize;
        rows.push(row(effect, base + depth, "  "));
    }
    lines.extend(tabulate(&rows));
    if view.effects_truncated {
        lines.push(format!(
            "(more effects than the {} shown)",
            view.effects.len()
        ));
    }
    if !view.correlated.is_empty() {
        lines.push("same correlation id, outside the chain:".into());
        let mut rows = vec!["  SEQ\tTIME\tSTREAM\tTYPE\tACTOR\tSUMMARY".to_string()];
        rows.extend(view.correlated.iter().map(|entry| row(entry, 0, "  ")));
        lines.extend(tabulate(&rows));
        if view.correlated_truncated {
            lines.push(format!(
                "(more correlated events than the {} shown)",
                view.correlated.len()
            ));
        }
    }
    lines
}

fn tabulate(rows: &[String]) -> Vec<String> {
    let mut writer = TabWriter::new(Vec::new()).padding(2);
    for row in rows {
        let _ = writeln!(writer, "{}", super::output::printable_row(row));
    }
    let bytes = writer.into_inner().unwrap_or_default();
    String::from_utf8_lossy(&bytes)
        .lines()
        .map(|line| line.trim_end().to_string())
        .collect()
}

pub fn print_trace(view: &TraceView, format: OutputFormat) {
    if print_structured(view, format) {
        return;
    }
    for line in trace_lines(view) {
        println!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, event_type: &str, depth: Option<u32>) -> TraceEntry {
        let event: crate::wire::EventView = serde_json::from_value(serde_json::json!({
            "seq": seq, "stream": "reconcile/a", "version": seq,
            "id": uuid::Uuid::nil(), "type": event_type, "schema": 1,
            "time": "2026-11-25T03:00:00Z", "actor": {"kind": "reconciler", "name": "r"},
            "cause": "none", "correlation": uuid::Uuid::nil(), "data": null,
            "prevHash": "", "hash": ""
        }))
        .unwrap();
        TraceEntry {
            event,
            summary: format!("summary {seq}"),
            depth,
            parent: depth.map(|_| seq - 1),
        }
    }

    #[test]
    fn a_trace_prints_causes_then_the_event_then_effects_indented_by_depth() {
        let view = TraceView {
            event: entry(2, "Started", None),
            causes: vec![entry(1, "Declared", None)],
            causes_truncated: false,
            origin: Cause::Request {
                request_id: "r1".into(),
                idempotency_key: None,
                reason: Some("why".into()),
            },
            effects: vec![entry(3, "Succeeded", Some(1)), entry(4, "Later", Some(2))],
            effects_truncated: true,
            correlated: Vec::new(),
            correlated_truncated: false,
        };
        let lines = trace_lines(&view);
        assert_eq!(lines[0], "origin: request r1, reason \"why\"");
        let type_column = |line: &str, name: &str| line.find(name).unwrap();
        let declared = type_column(&lines[2], "Declared");
        assert!(lines[3].starts_with("* 2 "));
        assert_eq!(type_column(&lines[3], "Started"), declared + 2);
        assert_eq!(type_column(&lines[4], "Succeeded"), declared + 4);
        assert_eq!(type_column(&lines[5], "Later"), declared + 6);
        assert_eq!(lines[6], "(more effects than the 2 shown)");
    }
}
