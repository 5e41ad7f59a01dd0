//! The event the append benches write, and how they read a latency
//! percentile, shared by `tools/bench_append.rs` and `tools/bench_peers.rs`
//! (included with `#[path = "bench_event.rs"] mod bench_event;`), so the
//! library figures of both benches measure the same event the same way.

use std::time::Duration;

use cairn::event::{Actor, ActorKind, Cause, NewEvent};
use uuid::Uuid;

/// About 250 bytes of JSON, like a small change; the suite's peers store it too.
pub fn payload() -> String {
    format!(
        "{{\"pool\":\"workers\",\"from\":3,\"to\":5,\"reason\":\"{}\"}}",
        "x".repeat(200)
    )
}

/// One bench event carrying `payload`, with a fresh id and no cause.
pub fn new_event(payload: &[u8]) -> NewEvent {
    NewEvent {
        id: Uuid::now_v7(),
        event_type: "BenchEvent".into(),
        schema: 1,
        actor: Actor {
            kind: ActorKind::System,
            name: "bench".into(),
        },
        cause: Cause::None,
        correlation: Uuid::nil(),
        payload: payload.to_vec(),
    }
}

/// The `q` quantile of sorted latencies (nearest rank), in milliseconds;
/// 0 when there are none.
pub fn percentile_ms(sorted: &[Duration], q: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(index).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}
