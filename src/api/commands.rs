//! Cluster commands beyond apply (pause, resume, delete, scale, replace a
//! machine) and the simulated cloud's admin endpoints.

use bytes::Bytes;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::problem::{self, ApiError};
use super::{
    authenticated, check_body, check_cluster_name, command_context, if_match_header, limited_body,
    with_state, ApiState,
};
use crate::config::Role;
use crate::event::Actor;
use crate::ledger::LifecycleOutcome;
use crate::provider::sim::SimError;
use crate::wire::{ApplyResponse, EventView, LifecycleResponse, ScaleRequest, SimResources};

/// Which lifecycle command a route carries out.
#[derive(Debug, Clone)]
enum LifecycleCommand {
    Pause,
    Resume,
    Delete,
    /// Replace the machine named by its name, provider id or address.
    ReplaceMachine(String),
}

pub(super) fn routes(
    state: &ApiState,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let lifecycle = |expected_verb: &'static str, command: LifecycleCommand| {
        warp::path!("v1" / "clusters" / String / String)
            .and_then(move |name: String, verb: String| async move {
                if verb == expected_verb {
                    Ok(name)
                } else {
                    Err(warp::reject::not_found())
                }
            })
            .and(warp::post())
            .and(authenticated(state, Role::Write))
            .and(with_state(state))
            .and(warp::header::headers_cloned())
            .then(move |name, actor, state, headers| {
                lifecycle_handler(name, command.clone(), actor, state, headers)
            })
    };
    let pause = lifecycle("pause", LifecycleCommand::Pause);
    let resume = lifecycle("resume", LifecycleCommand::Resume);
    let delete = warp::path!("v1" / "clusters" / String)
        .and(warp::delete())
        .and(authenticated(state, Role::Write))
        .and(with_state(state))
        .and(warp::header::headers_cloned())
        .then(|name, actor, state, headers| {
            lifecycle_handler(name, LifecycleCommand::Delete, actor, state, headers)
        });
    let replace_machine = warp::path!("v1" / "clusters" / String / "machines" / String / "replace")
        .and(warp::post())
        .and(authenticated(state, Role::Write))
        .and(with_state(state))
        .and(warp::header::headers_cloned())
        .then(|name, machine, actor, state, headers| {
            let command = LifecycleCommand::ReplaceMachine(machine);
            lifecycle_handler(name, command, actor, state, headers)
        });
    let scale = warp::path!("v1" / "clusters" / String / "pools" / String / "scale")
        .and(warp::post())
        .and(authenticated(state, Role::Write))
        .and(with_state(state))
        .and(warp::header::headers_cloned())
        .and(limited_body(state.max_body_bytes))
        .then(scale_handler);
    let sim_resources = warp::path!("v1" / "sim" / "resources")
        .and(warp::get())
        .and(authenticated(state, Role::Read))
        .and(with_state(state))
        .map(|_actor: Actor, state: ApiState| problem::respond(sim_resources(&state)));
    let sim_delete = warp::path!("v1" / "sim" / "resources" / String)
        .and(warp::delete())
        .and(authenticated(state, Role::Admin))
        .and(with_state(state))
        .then(sim_delete_handler);
    pause
        .or(resume)
        .unify()
        .or(delete)
        .unify()
        .or(scale)
        .unify()
        .or(replace_machine)
        .unify()
        .or(sim_resources)
        .unify()
        .or(sim_delete)
        .unify()
}

async fn lifecycle_handler(
    name: String,
    command: LifecycleCommand,
    actor: Actor,
    state: ApiState,
    headers: warp::http::HeaderMap,
) -> Response {
    let result = async {
        check_cluster_name(&name)?;
        let context = command_context(actor, &headers)?;
        let outcome: LifecycleOutcome = match &command {
            LifecycleCommand::Pause => state.ledger.pause(&name, &context).await?,
            LifecycleCommand::Resume => state.ledger.resume(&name, &context).await?,
            LifecycleCommand::Delete => state.ledger.request_deletion(&name, &context).await?,
            LifecycleCommand::ReplaceMachine(machine) => {
                check_machine_reference(machine)?;
                state
                    .ledger
                    .replace_machine(&name, machine, &context)
                    .await?
            }
        };
        let response = LifecycleResponse {
            cluster: outcome.cluster,
            changed: outcome.event.is_some(),
            stream_version: outcome.stream_version,
            event: outcome.event.as_deref().map(EventView::from_event),
        };
        // A deletion is carried out later by the reconcilers: 202.
        let status = match command {
            LifecycleCommand::Delete => StatusCode::ACCEPTED,
            _ => StatusCode::OK,
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

/// The most bytes a machine reference in a path may have; names, provider
/// ids and addresses are far shorter.
const MAX_MACHINE_REFERENCE_BYTES: usize = 253;

/// A machine reference is a name, a provider id or an address: printable
/// ASCII without spaces, and not too long.
fn check_machine_reference(machine: &str) -> Result<(), ApiError> {
    let printable = machine.bytes().all(|byte| byte.is_ascii_graphic());
    if machine.is_empty() || machine.len() > MAX_MACHINE_REFERENCE_BYTES || !printable {
        return Err(ApiError::bad_request(
            "bad_path",
            format!(
                "machine {machine:?} in the path is not a machine name, provider id or address"
            ),
        ));
    }
    Ok(())
}

async fn scale_handler(
    name: String,
    pool: String,
    actor: Actor,
    state: ApiState,
    headers: warp::http::HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        check_cluster_name(&name)?;
        let request: ScaleRequest =
            check_body(&state, body.len(), move || serde_json::from_slice(&body))
                .await?
                .map_err(|error| {
                    ApiError::bad_request(
                        "malformed",
                        format!("the body must be {{\"replicas\": N}}: {error}"),
                    )
                })?;
        let if_match = if_match_header(&headers)?;
        let context = command_context(actor, &headers)?;
        let outcome = state
            .ledger
            .scale(&name, &pool, request.replicas, if_match, &context)
            .await?;
        let response = ApplyResponse::from_outcome(&outcome);
        let etag = format!("\"{}\"", response.stream_version);
        let reply = warp::reply::with_header(warp::reply::json(&response), "etag", etag);
        Ok::<_, ApiError>(warp::reply::with_header(
            reply,
            "x-request-id",
            context.request_id,
        ))
    }
    .await;
    problem::respond(result)
}

fn sim_resources(state: &ApiState) -> Result<Response, ApiError> {
    let resources = state.sim.resources();
    Ok(warp::reply::json(&SimResources { resources }).into_response())
}

async fn sim_delete_handler(provider_id: String, actor: Actor, state: ApiState) -> Response {
    let result = async {
        let deleted = state
            .sim
            .delete_behind_back(&provider_id)
            .await
            .map_err(|error| match error {
                // Something else still depends on it, as in a real cloud.
                SimError::InUse(_) => {
                    ApiError::new(StatusCode::CONFLICT, "resource_in_use", error.to_string())
                }
                other => {
                    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", other.to_string())
                }
            })?;
        let Some(deleted) = deleted else {
            return Err(ApiError::not_found(format!(
                "the simulated cloud has no resource {provider_id}"
            )));
        };
        tracing::warn!(actor = %actor.name, provider_id, "deleted a simulated resource behind the reconciler's back");
        Ok(warp::reply::json(&deleted).into_response())
    }
    .await;
    problem::respond(result)
}
