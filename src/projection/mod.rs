//! Projections: pure folds of the log into current state.
//!
//! # Layout
//!
//! - `desired.rs`: `DesiredState`, what each cluster should look like (manifest
//!   changes, pause, deletion request, machines asked to be replaced).
//! - `observed.rs`: `ObservedState`, what the reconcilers know the cloud holds
//!   (resources with provider ids, actions in flight, attempts, drift,
//!   conditions).
//! - `Projections` here folds every event into both, so they always describe
//!   the same prefix of the log.
//! - `snapshot.rs`: the state as snapshot parts (one per cluster) and back,
//!   and the fold of one cluster alone that point-in-time reads use.
//!
//! # The contract
//!
//! The fold reads `EventRef`s (an event borrowed from its record, or
//! `Event::view` of a decoded one), so that a replay decodes nothing it does
//! not need: `apply(&Event)` is `apply_ref(&event.view())`, and a replay
//! folds its records in place with `apply_ref`, each payload decoded once,
//! on the thread that folds it.
//!
//! `apply(&mut self, &Event)` must be deterministic: no clock, no randomness,
//! no IO. It is total: an event it cannot use leaves the state as it was,
//! because the fold is replayed from the log and must never stop at an old
//! event. A payload that does not decode, or a change that does not fit the
//! current state, is counted in `skipped_events`; a type this build does not
//! know (written by a newer build) is passed over silently. Applying an event
//! whose seq is not past `applied_seq` does nothing, so a follower that sees
//! an event twice stays correct.
//!
//! Replay rules: the state after replaying seqs 1..=n is the same whether built
//! incrementally as the events were committed, or from scratch later.
//!
//! **Architecture Invariant:** projections do no IO beyond reading events given
//! to them; anything here can be rebuilt from the log, bit for bit.

mod desired;
mod observed;
mod snapshot;

pub use desired::*;
pub use observed::*;
pub use snapshot::{
    check_comparable, join_shares, ShareParts, SnapshotError, HEADER_PART, SNAPSHOT_FORMAT,
};

use crate::event::payload::{self, Payload};
use crate::event::{DecodeError, Event, EventRef};
use crate::model::ReconcileEvent;

/// An event's payload as the fold uses it: `None` for a stream that no
/// projection reads (then nothing was decoded).
pub type FoldPayload = Option<Result<Payload, DecodeError>>;

/// Decodes what the fold needs of an event's payload: nothing for a stream
/// that no projection reads.
pub fn decode_for_fold(event: &EventRef<'_>) -> FoldPayload {
    let folded = event.stream.starts_with(CLUSTER_STREAM_PREFIX)
        || event.stream.starts_with(RECONCILE_STREAM_PREFIX);
    folded.then(|| decode_payload(event))
}

fn decode_payload(event: &EventRef<'_>) -> Result<Payload, DecodeError> {
    payload::decode(event.event_type, event.schema, event.payload)
}

/// Whether a reconciler's event ends its cluster (`ClusterDeleted`).
fn ends_a_cluster(payload: &Result<Payload, DecodeError>) -> bool {
    matches!(payload, Ok(Payload::Reconcile(reconcile))
        if matches!(**reconcile, ReconcileEvent::ClusterDeleted(_)))
}

/// Every projection, folded to the same seq.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Projections {
    pub desired: DesiredState,
    pub observed: ObservedState,
}

impl Projections {
    pub fn apply(&mut self, event: &Event) {
        self.apply_ref(&event.view());
    }

    /// Folds an event read in place. Its payload is decoded once for both
    /// projections (only if a projection reads its stream), and what it
    /// holds is moved into the state.
    pub fn apply_ref(&mut self, event: &EventRef<'_>) {
        if event.stream.starts_with(RECONCILE_STREAM_PREFIX) {
            let payload = decode_payload(event);
            self.desired
                .apply_reconcile(event, ends_a_cluster(&payload));
            self.observed.apply_decoded(event, Some(payload));
        } else {
            // The observed projection reads only reconcile streams.
            self.observed.apply_decoded(event, None);
            self.desired.apply_decoded(event, None);
        }
    }

    pub fn applied_seq(&self) -> u64 {
        self.desired.applied_seq
    }
}
