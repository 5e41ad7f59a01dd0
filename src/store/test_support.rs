//! Events and append requests for the store's unit tests.

use uuid::Uuid;

use super::{AppendRequest, ExpectedVersion};
use crate::event::{Actor, ActorKind, Cause, NewEvent};

/// A system event of type `Test` whose payload is `text`.
pub(crate) fn new_event(text: &str) -> NewEvent {
    NewEvent {
        id: Uuid::now_v7(),
        event_type: "Test".into(),
        schema: 1,
        actor: Actor {
            kind: ActorKind::System,
            name: "test".into(),
        },
        cause: Cause::None,
        correlation: Uuid::nil(),
        payload: text.as_bytes().to_vec(),
    }
}

/// One append of one event per text, without an idempotency key.
pub(crate) fn request(stream: &str, expected: ExpectedVersion, texts: &[&str]) -> AppendRequest {
    AppendRequest {
        stream: stream.into(),
        expected,
        events: texts.iter().map(|text| new_event(text)).collect(),
        idempotency: None,
    }
}
