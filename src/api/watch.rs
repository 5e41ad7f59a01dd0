//! `GET /v1/watch`: the log, live, as Server-Sent Events.
//!
//! Each event is one SSE message: `id:` its seq, `event:` its type, `data:`
//! the event as CloudEvents 1.0 JSON (`wire::CloudEventView`; docs/events.md,
//! "The live stream"). The stream starts after `Last-Event-ID`, else after
//! `after=`, else after the current head, and opens with an `id:`-only
//! message naming that seq, so a client that reconnects with the last id it
//! saw resumes exactly there even when no event arrived in between. Filters
//! (`stream=`, `type=`, `actor=`) skip events without ending the stream.
//!
//! Each client pulls from a catch-up `Subscription` of its own: hyper polls
//! the body stream only when the connection can take more, so a slow client
//! holds no buffer of events (it falls behind the broadcast and re-reads the
//! store) and never slows the writer. Every stream ends when the daemon shuts
//! down, so the graceful shutdown does not wait on watchers.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::{Stream, StreamExt, TryStreamExt};
use prometheus_client::metrics::gauge::Gauge;
use warp::reply::Response;
use warp::sse::Event as SseEvent;
use warp::{Filter, Reply};

use super::problem::{self, ApiError};
use super::{authenticated, check_known_parameters, header, query_u64, with_state, ApiState};
use crate::config::Role;
use crate::event::{payload, Actor, Event};
use crate::store::Subscription;
use crate::wire::CloudEventView;

/// The query parameters `GET /v1/watch` takes.
const PARAMETERS: &[&str] = &["after", "stream", "type", "actor"];

/// The text of the heartbeat comment (`: heartbeat`).
const HEARTBEAT_TEXT: &str = " heartbeat";

pub(super) fn routes(
    state: &ApiState,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::path!("v1" / "watch")
        .and(warp::get())
        .and(authenticated(state, Role::Read))
        .and(with_state(state))
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::header::headers_cloned())
        .map(
            |_actor: Actor,
             state: ApiState,
             query: HashMap<String, String>,
             headers: warp::http::HeaderMap| {
                problem::respond(watch(&state, &query, &headers))
            },
        )
}

/// Which events a watch sends.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct WatchFilter {
    stream: Option<String>,
    event_type: Option<String>,
    actor: Option<crate::audit::ActorFilter>,
}

impl WatchFilter {
    fn from_query(query: &HashMap<String, String>) -> Result<WatchFilter, ApiError> {
        let text = |name: &str| -> Result<Option<String>, ApiError> {
            match query.get(name) {
                None => Ok(None),
                Some(value) if value.is_empty() => Err(ApiError::bad_request(
                    "bad_query",
                    format!("query parameter {name} must not be empty"),
                )),
                Some(value) => Ok(Some(value.clone())),
            }
        };
        let event_type = text("type")?;
        if let Some(name) = &event_type {
            if !payload::event_types().any(|known| known == name) {
                return Err(ApiError::bad_request(
                    "bad_query",
                    format!(
                        "query parameter type={name:?} is not an event type (known: {})",
                        payload::event_types().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
        Ok(WatchFilter {
            stream: text("stream")?,
            event_type,
            actor: text("actor")?
                .map(|actor| crate::audit::ActorFilter::parse(&actor))
                .transpose()
                .map_err(|error| ApiError::bad_request("bad_query", format!("actor: {error}")))?,
        })
    }

    fn admits(&self, event: &Event) -> bool {
        self.stream
            .as_ref()
            .is_none_or(|stream| *stream == event.stream)
            && self
                .event_type
                .as_ref()
                .is_none_or(|event_type| *event_type == event.event_type)
            && self
                .actor
                .as_ref()
                .is_none_or(|actor| actor.matches(&event.actor))
    }
}

/// The seq the stream starts after: `Last-Event-ID` (a reconnecting client
/// keeps its URL), else `after`, else the head. Past the head is refused.
fn start_after(
    query: &HashMap<String, String>,
    headers: &warp::http::HeaderMap,
    head: u64,
) -> Result<u64, ApiError> {
    let (after, origin) = match header(headers, "last-event-id")? {
        Some(text) => {
            let seq = text.parse::<u64>().map_err(|_| {
                ApiError::bad_request(
                    "bad_header",
                    format!("Last-Event-ID {text:?} is not a seq (a non-negative integer)"),
                )
            })?;
            (seq, "Last-Event-ID")
        }
        None => match query_u64(query, "after")? {
            Some(seq) => (seq, "query parameter after"),
            None => return Ok(head),
        },
    };
    if after > head {
        let code = if origin == "Last-Event-ID" {
            "bad_header"
        } else {
            "bad_query"
        };
        return Err(ApiError::bad_request(
            code,
            format!("{origin} {after} is past the head of the log (seq {head})"),
        ));
    }
    Ok(after)
}

fn watch(
    state: &ApiState,
    query: &HashMap<String, String>,
    headers: &warp::http::HeaderMap,
) -> Result<Response, ApiError> {
    check_known_parameters(query, PARAMETERS)?;
    let filter = WatchFilter::from_query(query)?;
    let store = state.ledger.store().clone();
    let after = start_after(query, headers, store.head().seq)?;
    let subscription = Subscription::new(store, after + 1);
    let open = OpenStream::new(state.metrics.watch_streams.clone());
    // The first message carries only the start position: it updates the
    // client's last event id without being an event.
    let start = futures_util::stream::once(async move {
        Ok::<_, Infallible>(SseEvent::default().id(after.to_string()))
    });
    let events = futures_util::stream::unfold(
        (subscription, filter, open),
        |(mut subscription, filter, open)| async move {
            loop {
                match subscription.next().await {
                    Ok(Some(event)) if filter.admits(&event) => {
                        let message = message(&event);
                        return Some((Ok(message), (subscription, filter, open)));
                    }
                    Ok(Some(_)) => {}
                    // The store closed: the daemon is stopping.
                    Ok(None) => return None,
                    Err(error) => {
                        // Ending the stream lets the client reconnect with
                        // its last id and resume exactly there.
                        tracing::warn!(%error, "a watch stream failed to read the log");
                        return None;
                    }
                }
            }
        },
    );
    let stream = start
        .chain(events)
        .take_until(state.shutdown.clone().cancelled_owned());
    let stream = warp::sse::keep_alive()
        .interval(state.watch_heartbeat)
        .text(HEARTBEAT_TEXT)
        .stream(stream)
        .into_stream();
    Ok(warp::sse::reply(Exclusive::new(stream)).into_response())
}

/// One event as an SSE message.
fn message(event: &Event) -> SseEvent {
    let cloud_event = CloudEventView::from_event(event);
    let data = serde_json::to_string(&cloud_event).expect("a CloudEventView serializes");
    SseEvent::default()
        .id(event.seq.to_string())
        .event(event.event_type.clone())
        .data(data)
}

/// Counts itself in the open-streams gauge while it lives; the stream owns
/// it, so it goes when hyper drops the body (the client left, or the stream
/// ended).
struct OpenStream {
    gauge: Gauge,
}

impl OpenStream {
    fn new(gauge: Gauge) -> OpenStream {
        gauge.inc();
        OpenStream { gauge }
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Makes a `Send` stream `Sync`, as `warp::sse::reply` asks, by only ever
/// reaching it through `&mut` (`Mutex::get_mut` never locks). The store's
/// futures are `Send` but not `Sync`.
struct Exclusive<S> {
    inner: std::sync::Mutex<Pin<Box<S>>>,
}

impl<S> Exclusive<S> {
    fn new(stream: S) -> Exclusive<S> {
        Exclusive {
            inner: std::sync::Mutex::new(Box::pin(stream)),
        }
    }
}

impl<S: Stream> Stream for Exclusive<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let inner = self
            .get_mut()
            .inner
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        inner.as_mut().poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    fn headers(last_event_id: Option<&str>) -> warp::http::HeaderMap {
        let mut headers = warp::http::HeaderMap::new();
        if let Some(id) = last_event_id {
            headers.insert("last-event-id", id.parse().unwrap());
        }
        headers
    }

    #[test]
    fn the_start_is_last_event_id_then_after_then_the_head() {
        assert_eq!(start_after(&query(&[]), &headers(None), 9).unwrap(), 9);
        assert_eq!(
            start_after(&query(&[("after", "3")]), &headers(None), 9).unwrap(),
            3
        );
        assert_eq!(
            start_after(&query(&[("after", "3")]), &headers(Some("7")), 9).unwrap(),
            7
        );
        assert_eq!(start_after(&query(&[]), &headers(Some("0")), 9).unwrap(), 0);
    }

    #[test]
    fn bad_starts_are_refused_naming_what_is_wrong() {
        let error = start_after(&query(&[("after", "x")]), &headers(None), 9).unwrap_err();
        assert_eq!(error.code, "bad_query");
        assert!(error.detail.contains("after"), "{}", error.detail);
        let error = start_after(&query(&[]), &headers(Some("abc")), 9).unwrap_err();
        assert_eq!(error.code, "bad_header");
        assert!(error.detail.contains("Last-Event-ID"), "{}", error.detail);
        let error = start_after(&query(&[("after", "10")]), &headers(None), 9).unwrap_err();
        assert!(error.detail.contains("past the head"), "{}", error.detail);
    }

    #[test]
    fn filters_check_their_values() {
        let filter = WatchFilter::from_query(&query(&[
            ("stream", "cluster/a"),
            ("type", "PoolScaled"),
            ("actor", "alice"),
        ]))
        .unwrap();
        assert_eq!(filter.stream.as_deref(), Some("cluster/a"));
        let error = WatchFilter::from_query(&query(&[("type", "PoolScaledd")])).unwrap_err();
        assert!(error.detail.contains("type="), "{}", error.detail);
        let error = WatchFilter::from_query(&query(&[("stream", "")])).unwrap_err();
        assert!(error.detail.contains("stream"), "{}", error.detail);
    }
}
