//! Reconcilers: drive providers until observed state matches desired state.
//!
//! # Layout
//!
//! - `plan.rs`: `plan(desired, observed) -> actions`, pure and golden-tested
//!   (cases in `testdata/plan/`).
//! - `queue.rs`: the level-triggered work queue of cluster names, and backoff.
//! - `reconciler.rs`: the workers; one pass = resolve actions in flight,
//!   resync for drift when due, plan, execute phase by phase, conditions.
//!
//! **Architecture Invariant:** a provider call is always preceded by a durable
//! `ActionStarted` with its idempotency token, and an action found in flight
//! is resolved by asking the provider about the token, never by creating
//! again. Retries reuse the token. So one desired resource yields one cloud
//! resource, crash or no crash.
//!
//! **Architecture Invariant:** this module knows nothing of HTTP. It reads the
//! projections and appends through the `Ledger`.

pub mod plan;
pub mod queue;
pub mod reconciler;

pub use plan::{plan, PlanInput, PlannedAction};
pub use queue::{Backoff, WorkQueue};
pub use reconciler::{Reconciler, ReconcilerConfig, Requeue};

#[cfg(test)]
mod tests;
