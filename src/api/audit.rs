//! Audit endpoints: the parameters of `GET /v1/events` and the causal trace
//! `GET /v1/events/{id}/trace`. The queries themselves are `crate::audit`'s.

use std::collections::HashMap;

use uuid::Uuid;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::problem::{self, ApiError};
use super::{authenticated, check_known_parameters, query_limit, query_u64, with_state, ApiState};
use crate::audit::{ActorFilter, EventQuery, LogPoint};
use crate::config::Role;
use crate::event::Actor;
use crate::wire::TraceView;

/// The query parameters `GET /v1/events` knows.
const EVENT_PARAMETERS: &[&str] = &[
    "after",
    "limit",
    "stream",
    "type",
    "actor",
    "cause",
    "correlation",
    "since",
    "until",
];

pub(super) fn routes(
    state: &ApiState,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("v1" / "events" / String / "trace")
        .and(warp::get())
        .and(authenticated(state, Role::Read))
        .and(with_state(state))
        .and(warp::query::<HashMap<String, String>>())
        .then(trace_handler)
}

fn bad_query(name: &str, detail: String) -> ApiError {
    ApiError::bad_request("bad_query", format!("query parameter {name}: {detail}"))
}

/// A parameter that must not be empty when given.
fn query_text(query: &HashMap<String, String>, name: &str) -> Result<Option<String>, ApiError> {
    match query.get(name) {
        Some(text) if text.is_empty() => Err(bad_query(name, "must not be empty".into())),
        other => Ok(other.cloned()),
    }
}

fn query_point(query: &HashMap<String, String>, name: &str) -> Result<Option<LogPoint>, ApiError> {
    query
        .get(name)
        .map(|text| LogPoint::parse(text).map_err(|detail| bad_query(name, detail)))
        .transpose()
}

/// The filters of `GET /v1/events`; 400 naming the parameter for anything wrong.
pub(super) fn event_query(query: &HashMap<String, String>) -> Result<EventQuery, ApiError> {
    check_known_parameters(query, EVENT_PARAMETERS)?;
    let actor = query
        .get("actor")
        .map(|text| ActorFilter::parse(text).map_err(|detail| bad_query("actor", detail)))
        .transpose()?;
    let correlation = query
        .get("correlation")
        .map(|text| {
            Uuid::parse_str(text)
                .map_err(|_| bad_query("correlation", format!("{text:?} is not a UUID")))
        })
        .transpose()?;
    Ok(EventQuery {
        after: query_u64(query, "after")?.unwrap_or(0),
        limit: query_limit(query)?,
        stream: query_text(query, "stream")?,
        event_type: query_text(query, "type")?,
        actor,
        cause: query_text(query, "cause")?,
        correlation,
        since: query_point(query, "since")?,
        until: query_point(query, "until")?,
    })
}

async fn trace_handler(
    id: String,
    _actor: Actor,
    state: ApiState,
    query: HashMap<String, String>,
) -> Response {
    let result = async {
        check_known_parameters(&query, &[])?;
        let id = Uuid::parse_str(&id).map_err(|_| {
            ApiError::bad_request(
                "bad_path",
                format!("event id {id:?} in the path is not a UUID"),
            )
        })?;
        let Some(trace) = state.ledger.trace(id).await? else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "event_not_found",
                format!("the log has no event with id {id}"),
            ));
        };
        Ok(warp::reply::json(&TraceView::from_trace(&trace)))
    }
    .await;
    problem::respond(result)
}
