//! Webhook routes: `POST /v1/hooks/{name}` takes deliveries; `GET /v1/hooks`
//! and `GET /v1/hooks/{name}/deliveries` list receivers and what came of
//! their deliveries.
//!
//! A delivery is checked in this order, each failure answered at once and
//! counted in `cairn_webhook_deliveries_total{hook, result}`. Before a byte
//! of the body is read: unknown receiver (404), declared length over
//! `max_body_bytes` (413), signature header missing or malformed, or a wrong
//! token (401). Then the body is read, at most `MAX_WEBHOOK_BODY_READS` at
//! once (503 past them) and within `webhook_body_timeout` (408): over the
//! limit (413), signature (401), payload (400, naming the field). Log lines
//! carry the receiver and the reason, never the secret or the body.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::problem::{self, ApiError};
use super::{
    authenticated, body_too_large, check_body, check_known_parameters, collect_body, query_limit,
    with_state, ApiState,
};
use crate::config::Role;
use crate::event::{Actor, Event};
use crate::metrics::DeliveryLabels;
use crate::webhook::inbox::{DeliveryRecord, InboxError, ProcessedDelivery, Receipt};
use crate::webhook::receivers;
use crate::wire::{DeliveryList, DeliveryResponse, DeliveryView, HookList, HookView, OutcomeView};

// The response types are the wire module's; how a handler fills them from
// the inbox's records is here.

impl OutcomeView {
    fn from_processed(processed: &ProcessedDelivery) -> OutcomeView {
        OutcomeView {
            outcome: processed.processed.outcome,
            summary: processed.processed.summary.clone(),
            actions: processed.processed.actions.clone(),
            skipped: processed.processed.skipped.clone(),
            event_id: processed.event.id,
            seq: processed.event.seq,
            time: processed.event.time,
        }
    }
}

impl DeliveryView {
    fn from_record(record: &DeliveryRecord) -> DeliveryView {
        DeliveryView {
            delivery: record.payload.delivery.clone(),
            event: record.payload.event.clone(),
            received: record.received.time,
            seq: record.received.seq,
            event_id: record.received.id,
            trace: trace_link(&record.received),
            outcome: record.processed.as_ref().map(OutcomeView::from_processed),
        }
    }
}

fn trace_link(event: &Event) -> String {
    format!("/v1/events/{}/trace", event.id)
}

pub(super) fn routes(
    state: &ApiState,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let deliver = warp::path!("v1" / "hooks" / String)
        .and(warp::post())
        .and(with_state(state))
        .and(warp::header::headers_cloned())
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .then(
            |name: String, state: ApiState, headers, length: Option<u64>, body| async move {
                if let Some(refused) = refuse_before_body(&name, &state, &headers, length) {
                    return refused;
                }
                // Past this point the body is read, before its signature can
                // be checked: a bounded number at once, each for a bounded time.
                let Ok(_reading) = state.webhook_reads.clone().try_acquire_owned() else {
                    count(&state, &name, "busy");
                    tracing::warn!(hook = %name, reason = "busy", "webhook delivery refused");
                    return ApiError {
                        retryable: true,
                        ..ApiError::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "busy",
                            "too many webhook deliveries are being read; try again",
                        )
                    }
                    .closing()
                    .into_response();
                };
                let limit = state.max_body_bytes;
                let timeout = state.webhook_body_timeout;
                let body =
                    match tokio::time::timeout(timeout, collect_body(body, length, limit)).await {
                        Ok(body) => body,
                        Err(_) => Err(ApiError::new(
                            StatusCode::REQUEST_TIMEOUT,
                            "body_timeout",
                            format!("the body did not arrive within {} ms", timeout.as_millis()),
                        )
                        .closing()),
                    };
                deliver(name, state, headers, body).await
            },
        );
    let list = warp::path!("v1" / "hooks")
        .and(warp::get())
        .and(authenticated(state, Role::Read))
        .and(with_state(state))
        .map(|_actor: Actor, state: ApiState| {
            let hooks = state
                .inbox
                .hooks()
                .map(|(name, config)| {
                    let mut settings = serde_json::to_value(&config.receiver).unwrap_or_default();
                    let kind = config.receiver.kind().to_string();
                    if let Some(object) = settings.as_object_mut() {
                        object.remove("type");
                    }
                    HookView {
                        name: name.clone(),
                        kind,
                        path: format!("/v1/hooks/{name}"),
                        settings,
                    }
                })
                .collect();
            warp::reply::json(&HookList { hooks }).into_response()
        });
    let deliveries = warp::path!("v1" / "hooks" / String / "deliveries")
        .and(warp::get())
        .and(authenticated(state, Role::Read))
        .and(with_state(state))
        .and(warp::query::<HashMap<String, String>>())
        .then(
            |name: String, _actor: Actor, state: ApiState, query: HashMap<String, String>| async move {
                let result = async {
                    check_known_parameters(&query, &["limit"])?;
                    let limit = query_limit(&query)?;
                    let records = state
                        .inbox
                        .deliveries(&name, limit)
                        .await
                        .map_err(inbox_error)?;
                    let deliveries = records.iter().map(DeliveryView::from_record).collect();
                    Ok(warp::reply::json(&DeliveryList { deliveries }))
                }
                .await;
                problem::respond(result)
            },
        );
    deliver.or(list).unify().or(deliveries).unify()
}

/// Counts a delivery's result in `cairn_webhook_deliveries_total`.
fn count(state: &ApiState, hook: &str, result: &'static str) {
    state
        .inbox
        .metrics()
        .webhook_deliveries
        .get_or_create(&DeliveryLabels {
            hook: hook.to_string(),
            result,
        })
        .inc();
}

/// The answer to a delivery refused before a byte of its body is read: an
/// unknown receiver (404), a declared length over the limit (413), a
/// signature header missing or malformed, or a wrong token (401). None when
/// the body is to be read.
fn refuse_before_body(
    name: &str,
    state: &ApiState,
    headers: &warp::http::HeaderMap,
    length: Option<u64>,
) -> Option<Response> {
    // The body is not read: the connection cannot be reused.
    let closing = |error: ApiError| error.closing().into_response();
    let Some(config) = state.inbox.hook(name) else {
        return Some(closing(unknown_hook(state, name)));
    };
    let limit = state.max_body_bytes;
    if length.is_some_and(|length| length > limit) {
        count(state, name, "too_large");
        tracing::warn!(hook = %name, reason = "too_large", "webhook delivery refused");
        return Some(closing(body_too_large(limit)));
    }
    let header = |header_name: &str| {
        headers
            .get(header_name)
            .and_then(|value| value.to_str().ok())
    };
    if let Err(refusal) = receivers::check_before_body(config, header) {
        count(state, name, refusal.label());
        tracing::warn!(hook = %name, reason = refusal.label(), detail = %refusal, "webhook delivery refused");
        return Some(closing(refusal_error(refusal)));
    }
    None
}

/// 404 for a receiver that does not exist, counted and logged.
fn unknown_hook(state: &ApiState, name: &str) -> ApiError {
    // Receiver names are DNS labels, so this one is no receiver's.
    count(state, "_unknown", "unknown_hook");
    tracing::warn!(hook = %name, reason = "unknown_hook", "webhook delivery refused");
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_hook",
        format!("no webhook receiver named {name:?}"),
    )
}

fn refusal_error(refusal: receivers::Refusal) -> ApiError {
    match refusal {
        receivers::Refusal::Unauthorized(error) => ApiError::unauthorized(error.to_string()),
        receivers::Refusal::Malformed(error) => {
            ApiError::bad_request("malformed_payload", error.to_string())
        }
    }
}

/// Checks, records and answers one delivery.
async fn deliver(
    name: String,
    state: ApiState,
    headers: warp::http::HeaderMap,
    body: Result<Bytes, ApiError>,
) -> Response {
    let inbox = state.inbox.clone();
    let count = |hook: &str, result: &'static str| count(&state, hook, result);
    let Some(config) = inbox.hook(&name) else {
        return unknown_hook(&state, &name).into_response();
    };
    let body = match body {
        Ok(body) => body,
        Err(error) => {
            let reason = match error.status {
                StatusCode::PAYLOAD_TOO_LARGE => "too_large",
                StatusCode::REQUEST_TIMEOUT => "timeout",
                _ => "malformed",
            };
            count(&name, reason);
            tracing::warn!(hook = %name, reason, "webhook delivery refused");
            return error.into_response();
        }
    };
    let now = chrono::Utc::now().timestamp();
    // The signature over the whole body, and the payload's parse: on a body
    // thread unless the body is small (`check_body`).
    let checked = {
        let config = config.clone();
        check_body(&state, body.len(), move || {
            let header = |header_name: &str| {
                headers
                    .get(header_name)
                    .and_then(|value| value.to_str().ok())
            };
            receivers::check(&config, header, &body, now)
        })
        .await
    };
    let delivery = match checked {
        Err(error) => return error.into_response(),
        Ok(Ok(delivery)) => delivery,
        Ok(Err(refusal)) => {
            count(&name, refusal.label());
            tracing::warn!(hook = %name, reason = refusal.label(), detail = %refusal, "webhook delivery refused");
            return refusal_error(refusal).into_response();
        }
    };
    let delivery_id = delivery.id.clone();
    match inbox.receive(&name, delivery).await {
        Ok(Receipt::Accepted { received }) => {
            count(&name, "accepted");
            tracing::info!(hook = %name, delivery = %delivery_id, seq = received.seq, "webhook delivery recorded");
            let response = response(&name, &delivery_id, "accepted", &received, None);
            warp::reply::with_status(warp::reply::json(&response), StatusCode::ACCEPTED)
                .into_response()
        }
        Ok(Receipt::Duplicate {
            received,
            processed,
        }) => {
            count(&name, "duplicate");
            tracing::info!(hook = %name, delivery = %delivery_id, "webhook redelivery answered with the first outcome");
            let outcome = processed.as_ref().map(OutcomeView::from_processed);
            let response = response(&name, &delivery_id, "duplicate", &received, outcome);
            warp::reply::json(&response).into_response()
        }
        Err(error) => {
            let reason = match &error {
                InboxError::DeliveryReused { .. } => "conflict",
                InboxError::TooLarge { .. } => "too_large",
                _ => "failed",
            };
            count(&name, reason);
            tracing::warn!(hook = %name, delivery = %delivery_id, reason, %error, "webhook delivery not recorded");
            inbox_error(error).into_response()
        }
    }
}

fn response(
    hook: &str,
    delivery: &str,
    status: &str,
    received: &Arc<Event>,
    outcome: Option<OutcomeView>,
) -> DeliveryResponse {
    DeliveryResponse {
        hook: hook.to_string(),
        delivery: delivery.to_string(),
        status: status.to_string(),
        event_id: received.id,
        seq: received.seq,
        trace: trace_link(received),
        outcome,
    }
}

fn inbox_error(error: InboxError) -> ApiError {
    match error {
        InboxError::UnknownHook(name) => ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_hook",
            format!("no webhook receiver named {name:?}"),
        ),
        error @ InboxError::DeliveryReused { .. } => {
            ApiError::new(StatusCode::CONFLICT, "delivery_reused", error.to_string())
        }
        error @ InboxError::TooLarge { .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            error.to_string(),
        ),
        InboxError::Store(error) => error.into(),
    }
}
