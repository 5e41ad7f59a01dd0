//! Time travel over HTTP: a cluster at a point (`GET /v1/clusters/{name}?at=`),
//! the diff between two points, and rollback.

use std::collections::HashMap;

use bytes::Bytes;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::problem::{self, ApiError};
use super::{
    authenticated, check_body, check_cluster_name, check_known_parameters, command_context,
    limited_body, with_state, ApiState,
};
use crate::config::Role;
use crate::event::Actor;
use crate::ledger::{ClusterAt, Point, RollbackOutcome};
use crate::wire::{
    ClusterAtView, ClusterView, ConditionView, DiffView, EventView, ObservedView, PlannedChange,
    PointView, RollbackRequest, RollbackResponse,
};

// The request and response types are the wire module's; how a handler
// fills them from the ledger's answers is here.

impl PointView {
    fn new(requested: Point, state: &ClusterAt) -> PointView {
        PointView {
            requested: requested.to_string(),
            seq: state.seq,
            time: state.time,
        }
    }
}

impl RollbackResponse {
    fn from_outcome(outcome: &RollbackOutcome) -> RollbackResponse {
        let changes = outcome
            .changes
            .iter()
            .map(PlannedChange::from_change)
            .chain(outcome.lifecycle.iter().map(PlannedChange::from_lifecycle))
            .collect();
        RollbackResponse {
            cluster: outcome.cluster.clone(),
            to_seq: outcome.to_seq,
            dry_run: outcome.dry_run,
            stream_version: outcome.stream_version,
            changes,
            events: EventView::from_events(&outcome.events),
        }
    }
}

fn point_parameter(query: &HashMap<String, String>, name: &str) -> Result<Point, ApiError> {
    match query.get(name) {
        None => Ok(Point::Now),
        Some(text) => text.parse().map_err(|error: String| {
            ApiError::bad_request("bad_parameter", format!("{name}: {error}"))
        }),
    }
}

pub(super) fn routes(
    state: &ApiState,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let diff = warp::path!("v1" / "clusters" / String / "diff")
        .and(warp::get())
        .and(authenticated(state, Role::Read))
        .and(with_state(state))
        .and(warp::query::<HashMap<String, String>>())
        .then(diff_handler);
    let rollback = warp::path!("v1" / "clusters" / String / "rollback")
        .and(warp::post())
        .and(authenticated(state, Role::Write))
        .and(with_state(state))
        .and(warp::header::headers_cloned())
        .and(limited_body(state.max_body_bytes))
        .then(rollback_handler);
    diff.or(rollback).unify()
}

/// `GET /v1/clusters/{name}?at=...`.
pub(super) async fn cluster_at_handler(
    name: &str,
    at: &str,
    state: &ApiState,
) -> Result<Response, ApiError> {
    check_cluster_name(name)?;
    let point: Point = at
        .parse()
        .map_err(|error: String| ApiError::bad_request("bad_parameter", format!("at: {error}")))?;
    let cluster = state.ledger.cluster_at(name, point).await?;
    let observed = cluster.observed.clone().unwrap_or_default();
    let view = ClusterAtView {
        name: name.to_string(),
        at: PointView::new(point, &cluster),
        deleted: cluster.deleted(),
        stream_version: cluster.stream_version,
        cluster: cluster
            .desired
            .as_ref()
            .map(|desired| ClusterView::from_state(desired, &observed)),
        observed: ObservedView::from_observed(&observed),
        conditions: ConditionView::from_observed(&observed),
    };
    Ok(warp::reply::json(&view).into_response())
}

async fn diff_handler(
    name: String,
    _actor: Actor,
    state: ApiState,
    query: HashMap<String, String>,
) -> Response {
    let result = async {
        check_cluster_name(&name)?;
        check_known_parameters(&query, &["from", "to"])?;
        if !query.contains_key("from") {
            return Err(ApiError::bad_request(
                "bad_parameter",
                "from: required (a seq, an RFC 3339 time or \"now\")",
            ));
        }
        let from = point_parameter(&query, "from")?;
        let to = point_parameter(&query, "to")?;
        let diff = state.ledger.diff_cluster(&name, from, to).await?;
        let view = DiffView {
            cluster: name,
            from: PointView::new(from, &diff.from),
            to: PointView::new(to, &diff.to),
            desired: diff.desired,
            observed: diff.observed,
        };
        Ok::<_, ApiError>(warp::reply::json(&view))
    }
    .await;
    problem::respond(result)
}

async fn rollback_handler(
    name: String,
    actor: Actor,
    state: ApiState,
    headers: warp::http::HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        check_cluster_name(&name)?;
        let request: RollbackRequest = check_body(&state, body.len(), move || {
            serde_json::from_slice::<RollbackRequest>(&body)
        })
        .await?
        .map_err(|error| {
            ApiError::bad_request(
                "malformed",
                format!(
                    "the body must be {{\"to\": \"<seq|time|now>\", \"dryRun\": false}}: {error}"
                ),
            )
        })?;
        let to: Point = request
            .to
            .parse()
            .map_err(|error: String| ApiError::bad_request("malformed", format!("to: {error}")))?;
        let context = command_context(actor, &headers)?;
        let outcome = state
            .ledger
            .rollback(&name, to, request.dry_run, &context)
            .await?;
        let response = RollbackResponse::from_outcome(&outcome);
        // The reconcilers carry a rollback out later: 202 when it appended.
        let status = if outcome.events.is_empty() {
            StatusCode::OK
        } else {
            StatusCode::ACCEPTED
        };
        let reply = warp::reply::with_status(warp::reply::json(&response), status);
        Ok::<_, ApiError>(warp::reply::with_header(
            reply,
            "x-request-id",
            context.request_id,
        ))
    }
    .await;
    problem::respond(result)
}
