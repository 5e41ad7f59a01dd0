//! The HTTP API (warp): routes, request parsing, auth, problem responses.
//!
//! # Layout
//!
//! - `mod.rs`: the routes and their handlers.
//! - `audit.rs`: the filters of `GET /v1/events` and `GET /v1/events/{id}/trace`.
//! - `problem.rs`: errors as RFC 7807 problem+json with stable codes.
//! - `auth.rs`: bearer tokens and roles.
//! - `watch.rs`: `GET /v1/watch`, the live stream (Server-Sent Events).
//! - `export.rs`: `GET /v1/export`, the streamed NDJSON backup.
//! - `server.rs`: the accept loop, and the request heads read again below
//!   hyper (a request with both `Content-Length` and `Transfer-Encoding`).
//! - `strict.rs`: ambiguous headers and queries, refused before any route.
//! - `hooks.rs`: `POST /v1/hooks/{name}` (webhook deliveries, authenticated
//!   by the receiver's own secret, not by bearer tokens) and the listings.
//!
//! **Architecture Invariant:** only `api` (and later `webhook`) knows HTTP, and
//! it never touches a store backend: everything goes through the `Ledger`.

mod audit;
pub mod auth;
pub mod body_work;
mod commands;
mod export;
mod history;
mod hooks;
pub mod problem;
pub mod server;
mod strict;
mod watch;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Buf, Filter, Rejection, Reply};

use self::auth::Auth;
use self::problem::{recover, ApiError};
use crate::config::Role;
use crate::event::Actor;
use crate::ledger::{ApplyOptions, CommandContext, Ledger, LedgerError, MAX_PAGE};
use crate::metrics::{Metrics, ResponseLabels};
use crate::model::{is_dns_label, parse_manifest, ManifestFormat};
use crate::wire::{
    ApplyResponse, ClusterList, ClusterSummary, ClusterView, EventPageView, VerifyView,
};

/// Everything a handler needs.
#[derive(Clone)]
pub struct ApiState {
    pub ledger: Arc<Ledger>,
    pub auth: Arc<Auth>,
    pub metrics: Arc<Metrics>,
    pub max_body_bytes: u64,
    /// Cancelled when the daemon starts shutting down; `/readyz` then says no.
    pub shutdown: CancellationToken,
    /// The simulated cloud, for its admin endpoints (`/v1/sim/...`).
    pub sim: Arc<crate::provider::sim::SimCloud>,
    /// The longest silence on a `GET /v1/watch` stream before a heartbeat.
    pub watch_heartbeat: std::time::Duration,
    /// The webhook receivers and their workers.
    pub inbox: Arc<crate::webhook::inbox::Inbox>,
    /// The threads that parse and check large request bodies ([`check_body`]).
    pub body_work: Arc<body_work::BodyWork>,
    /// Bounds the webhook bodies being read at once: they are read before
    /// their signature can be checked, so this is what unauthenticated
    /// senders can hold (`MAX_WEBHOOK_BODY_READS` bodies of at most
    /// `max_body_bytes`). A delivery past it is answered 503 at once.
    pub webhook_reads: Arc<tokio::sync::Semaphore>,
    /// The longest a webhook body may take to arrive (`[api]
    /// webhook_body_timeout_ms`); then 408, and the connection is closed.
    pub webhook_body_timeout: std::time::Duration,
}

/// Webhook bodies read at once, at most (see [`ApiState::webhook_reads`]).
pub const MAX_WEBHOOK_BODY_READS: usize = 16;

/// How many request bodies may be parsed at once: one fewer than the cores
/// the process may use, and at least one.
pub fn body_work_slots() -> usize {
    std::thread::available_parallelism()
        .map_or(1, usize::from)
        .saturating_sub(1)
        .max(1)
}

/// Bodies of at most this many bytes are parsed on the runtime's worker that
/// read them; larger ones on a body thread (`body_work.rs`). The parsers'
/// limits bound a body's cost by its size (the worst 1 MiB shapes take 2 to
/// 18 ms, docs/PERFORMANCE.md, so 8 KiB well under a millisecond), and for a
/// small body the hand-off to a body thread and back (two wake-ups and two
/// context switches) cost more than the parse itself: most API requests
/// and webhook deliveries are this small.
pub const INLINE_BODY_BYTES: usize = 8 * 1024;

/// Runs `work`, the parse or check of a request body of `body_len` bytes:
/// inline when the body is small ([`INLINE_BODY_BYTES`]), else on a body
/// thread (`body_work.rs`): off the runtime's workers, a bounded number at
/// once, at a lower priority. A request whose client goes away while it
/// waits for a slot never starts its work; once started, the work is bounded
/// by the parsers' limits (`model::MAX_MANIFEST_NODES`, ...). A panic in
/// `work` is a 500 either way.
pub(crate) async fn check_body<T: Send + 'static>(
    state: &ApiState,
    body_len: usize,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    state
        .body_work
        .run_sized(body_len, INLINE_BODY_BYTES, work)
        .await
        .map_err(|error| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                error.to_string(),
            )
        })
}

/// The longest free-text reason a request may carry.
const MAX_REASON_BYTES: usize = 1024;

/// All routes, with every rejection turned into a problem document.
pub fn routes(state: ApiState) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let metrics = state.metrics.clone();
    let health = warp::path!("healthz")
        .and(warp::get())
        .map(|| warp::reply::json(&serde_json::json!({"status": "ok"})).into_response());
    let ready = warp::path!("readyz")
        .and(warp::get())
        .and(with_state(&state))
        .map(|state: ApiState| {
            let failure = state.ledger.store().failure();
            let ready = !state.shutdown.is_cancelled() && failure.is_none();
            let body = serde_json::json!({
                "ready": ready,
                "headSeq": state.ledger.store().head().seq,
                "appliedSeq": state.ledger.applied_seq(),
                "storeFailure": failure,
            });
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            warp::reply::with_status(warp::reply::json(&body), status).into_response()
        });
    let metrics_route = warp::path!("metrics")
        .and(warp::get())
        .and(authenticated(&state, Role::Read))
        .and(with_state(&state))
        .map(|_actor: Actor, state: ApiState| {
            warp::reply::with_header(
                state.metrics.render(),
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
            .into_response()
        });
    let apply = warp::path!("v1" / "apply")
        .and(warp::post())
        .and(authenticated(&state, Role::Write))
        .and(with_state(&state))
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::header::headers_cloned())
        .and(limited_body(state.max_body_bytes))
        .then(apply_handler);
    let clusters = warp::path!("v1" / "clusters")
        .and(warp::get())
        .and(authenticated(&state, Role::Read))
        .and(with_state(&state))
        .map(|_actor: Actor, state: ApiState| {
            let clusters = state.ledger.read(|projections| {
                projections
                    .desired
                    .clusters()
                    .map(|cluster| {
                        let name = &cluster.manifest.metadata.name;
                        let observed = projections
                            .observed
                            .cluster(name)
                            .cloned()
                            .unwrap_or_default();
                        ClusterSummary::from_state(cluster, &observed)
                    })
                    .collect()
            });
            warp::reply::json(&ClusterList { clusters }).into_response()
        });
    let cluster = warp::path!("v1" / "clusters" / String)
        .and(warp::get())
        .and(authenticated(&state, Role::Read))
        .and(with_state(&state))
        .and(warp::query::<HashMap<String, String>>())
        .then(
            |name: String, _actor: Actor, state: ApiState, query: HashMap<String, String>| async move {
                let result = match check_known_parameters(&query, &["at"]) {
                    Err(error) => Err(error),
                    Ok(()) => match query.get("at") {
                        Some(at) => history::cluster_at_handler(&name, at, &state).await,
                        None => cluster_handler(&name, &state),
                    },
                };
                problem::respond(result)
            },
        );
    let history = warp::path!("v1" / "clusters" / String / "history")
        .and(warp::get())
        .and(authenticated(&state, Role::Read))
        .and(with_state(&state))
        .and(warp::query::<HashMap<String, String>>())
        .then(history_handler);
    let events = warp::path!("v1" / "events")
        .and(warp::get())
        .and(authenticated(&state, Role::Read))
        .and(with_state(&state))
        .and(warp::query::<HashMap<String, String>>())
        .then(events_handler);
    let verify = warp::path!("v1" / "verify")
        .and(warp::get())
        .and(authenticated(&state, Role::Read))
        .and(with_state(&state))
        .then(|_actor: Actor, state: ApiState| async move {
            problem::respond(
                state
                    .ledger
                    .verify()
                    .await
                    .map(|report| warp::reply::json(&VerifyView::from_report(&report)))
                    .map_err(ApiError::from),
            )
        });

    let commands = commands::routes(&state);
    let history_routes = history::routes(&state);

    // Before any route: a request ambiguous about who asks, from where, how
    // long its body is, or what it queries, is refused (`strict.rs`).
    let strict = warp::ext::optional::<server::ConflictingFraming>()
        .and(warp::header::headers_cloned())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and_then(
            |framing: Option<server::ConflictingFraming>,
             headers: warp::http::HeaderMap,
             query: String| async move {
                if framing.is_some() {
                    return Err(warp::reject::custom(strict::conflicting_framing()));
                }
                strict::check_request(&headers, &query).map_err(warp::reject::custom)
            },
        )
        .untuple_one();

    let routes = health
        .or(ready)
        .unify()
        .or(metrics_route)
        .unify()
        .or(apply)
        .unify()
        .or(clusters)
        .unify()
        .or(cluster)
        .unify()
        .or(history)
        .unify()
        .or(events)
        .unify()
        .or(verify)
        .unify()
        .or(later_routes(&state, commands, history_routes))
        .unify();
    strict
        .and(routes)
        .recover(recover)
        .unify()
        .with(warp::log::custom(move |info| {
            metrics
                .http_responses
                .get_or_create(&ResponseLabels {
                    code: info.status().as_u16(),
                })
                .inc();
            tracing::info!(
                method = %info.method(),
                path = info.path(),
                status = info.status().as_u16(),
                micros = info.elapsed().as_micros() as u64,
                "request"
            );
        }))
}

/// The routes of the modules, boxed: one long chain of `or` makes a type so
/// deep that rustc's trait solver gives up on it in release builds.
fn later_routes(
    state: &ApiState,
    commands: impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static,
    history_routes: impl Filter<Extract = (Response,), Error = Rejection>
        + Clone
        + Send
        + Sync
        + 'static,
) -> warp::filters::BoxedFilter<(Response,)> {
    commands
        .or(history_routes)
        .unify()
        .or(audit::routes(state))
        .unify()
        .or(watch::routes(state))
        .unify()
        .or(export::route(state))
        .unify()
        .or(hooks::routes(state))
        .unify()
        .boxed()
}

fn with_state(state: &ApiState) -> impl Filter<Extract = (ApiState,), Error = Infallible> + Clone {
    let state = state.clone();
    warp::any().map(move || state.clone())
}

/// Resolves the caller to an actor, or rejects with 401/403 (see `auth`).
fn authenticated(
    state: &ApiState,
    required: Role,
) -> impl Filter<Extract = (Actor,), Error = Rejection> + Clone {
    let auth = state.auth.clone();
    warp::header::headers_cloned()
        .and(warp::host::optional())
        .and_then(
            move |headers: warp::http::HeaderMap, authority: Option<warp::host::Authority>| {
                // HTTP/2 carries the host in the :authority pseudo-header.
                let host = authority.map(|authority| authority.to_string());
                let result = auth.check_request(&headers, host.as_deref(), required);
                async move { result.map_err(warp::reject::custom) }
            },
        )
}

/// How much of an oversized body the daemon reads and discards before it
/// answers 413. A client that is still sending when the answer comes would see
/// a broken pipe instead of the answer; past this, the daemon answers at once
/// and closes the connection.
const MAX_DRAINED_BODY_BYTES: u64 = 16 * 1024 * 1024;

/// The request body, read up to `limit` bytes; beyond that, 413.
fn limited_body(limit: u64) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .and_then(move |length: Option<u64>, body| async move {
            collect_body(body, length, limit)
                .await
                .map_err(warp::reject::custom)
        })
}

/// Reads a body up to `limit` bytes; beyond that, a 413 error.
async fn collect_body<S, B>(body: S, length: Option<u64>, limit: u64) -> Result<Bytes, ApiError>
where
    S: futures_util::Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let too_large = || body_too_large(limit);
    if length.is_some_and(|length| length > MAX_DRAINED_BODY_BYTES) {
        return Err(too_large());
    }
    let mut body = Box::pin(body);
    let mut collected = BytesMut::new();
    let mut received: u64 = 0;
    while let Some(chunk) = body.next().await {
        let mut chunk =
            chunk.map_err(|error| ApiError::bad_request("bad_body", error.to_string()))?;
        received += chunk.remaining() as u64;
        if received > MAX_DRAINED_BODY_BYTES {
            return Err(too_large());
        }
        if received > limit || length.is_some_and(|length| length > limit) {
            // Over the limit: keep reading, but only to discard.
            chunk.advance(chunk.remaining());
            collected.clear();
            continue;
        }
        collected.put(chunk);
        // One chunk (at most `server::MAX_HEAD_BYTES`, hyper's read buffer)
        // per turn while more is announced: with a hundred bodies arriving
        // at once, a request that needs no body (`/healthz`) waits for one
        // chunk of each, not for whole bodies. A body that came in one chunk
        // does not pay for the turn.
        if length.is_none_or(|length| received < length) {
            tokio::task::yield_now().await;
        }
    }
    if received > limit {
        return Err(too_large());
    }
    Ok(collected.freeze())
}

pub(super) fn body_too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("the request body is over the limit of {limit} bytes"),
    )
    .closing()
}

fn check_cluster_name(name: &str) -> Result<(), ApiError> {
    if is_dns_label(name) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "bad_path",
            format!("cluster name {name:?} in the path is not a DNS label"),
        ))
    }
}

fn header<'a>(headers: &'a warp::http::HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => value.to_str().map(|text| Some(text.trim())).map_err(|_| {
            ApiError::bad_request("bad_header", format!("header {name} is not visible ASCII"))
        }),
    }
}

fn query_u64(query: &HashMap<String, String>, name: &str) -> Result<Option<u64>, ApiError> {
    match query.get(name) {
        None => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|_| {
            ApiError::bad_request(
                "bad_query",
                format!("query parameter {name}={text:?} is not a non-negative integer"),
            )
        }),
    }
}

fn check_known_parameters(query: &HashMap<String, String>, known: &[&str]) -> Result<(), ApiError> {
    match query.keys().find(|key| !known.contains(&key.as_str())) {
        None => Ok(()),
        Some(key) => Err(ApiError::bad_request(
            "bad_query",
            format!(
                "unknown query parameter {key:?} (known: {})",
                known.join(", ")
            ),
        )),
    }
}

/// `limit`: 1 to `MAX_PAGE`, 100 when absent.
fn query_limit(query: &HashMap<String, String>) -> Result<usize, ApiError> {
    match query_u64(query, "limit")? {
        None => Ok(100),
        Some(limit) if (1..=MAX_PAGE as u64).contains(&limit) => Ok(limit as usize),
        Some(limit) => Err(ApiError::bad_request(
            "bad_query",
            format!("query parameter limit={limit} must be between 1 and {MAX_PAGE}"),
        )),
    }
}

fn query_bool(query: &HashMap<String, String>, name: &str) -> Result<bool, ApiError> {
    match query.get(name).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") | Some("") => Ok(true),
        Some(other) => Err(ApiError::bad_request(
            "bad_query",
            format!("query parameter {name}={other:?} must be true or false"),
        )),
    }
}

async fn apply_handler(
    actor: Actor,
    state: ApiState,
    query: HashMap<String, String>,
    headers: warp::http::HeaderMap,
    body: Bytes,
) -> Response {
    problem::respond(apply_request(actor, state, query, headers, body).await)
}

async fn apply_request(
    actor: Actor,
    state: ApiState,
    query: HashMap<String, String>,
    headers: warp::http::HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let dry_run = query_bool(&query, "dryRun")?;
    let if_match = if_match_header(&headers)?;
    let context = command_context(actor, &headers)?;
    let request_id = context.correlation;
    let format = manifest_format(header(&headers, "content-type")?)?;
    let manifest = check_body(&state, body.len(), move || parse_manifest(&body, format)).await??;
    let outcome = state
        .ledger
        .apply(manifest, ApplyOptions { dry_run, if_match }, &context)
        .await?;
    if !outcome.events.is_empty() && !outcome.deduplicated {
        state.metrics.applies_changed.inc();
    }
    // 201 when this request (or the one it replays) declared the cluster.
    let status = match outcome.events.first() {
        Some(first) if first.version == 1 => StatusCode::CREATED,
        _ => StatusCode::OK,
    };
    let response = ApplyResponse::from_outcome(&outcome);
    let reply = warp::reply::with_status(warp::reply::json(&response), status);
    let reply = warp::reply::with_header(reply, "etag", format!("\"{}\"", response.stream_version));
    Ok(warp::reply::with_header(reply, "x-request-id", request_id.to_string()).into_response())
}

/// `If-Match`: the cluster stream version the caller saw.
fn if_match_header(headers: &warp::http::HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(text) = header(headers, "if-match")? else {
        return Ok(None);
    };
    text.trim_matches('"')
        .parse::<u64>()
        .map(Some)
        .map_err(|_| {
            ApiError::bad_request(
                "bad_header",
                format!("If-Match {text:?} is not a cluster version (a non-negative integer)"),
            )
        })
}

/// Who asks and why: the actor, a new request id (also the correlation id of
/// everything the request causes), `Idempotency-Key` and `X-Cairn-Reason`.
fn command_context(
    actor: Actor,
    headers: &warp::http::HeaderMap,
) -> Result<CommandContext, ApiError> {
    let idempotency_key = header(headers, "idempotency-key")?.map(str::to_string);
    if idempotency_key
        .as_ref()
        .is_some_and(|key| key.is_empty() || key.len() > 255)
    {
        return Err(ApiError::bad_request(
            "bad_header",
            "Idempotency-Key must be 1 to 255 characters",
        ));
    }
    // The webhook inbox keys its deliveries and actions under `hook/`; a
    // client that could claim one could stop a delivery from acting.
    if idempotency_key
        .as_ref()
        .is_some_and(|key| key.starts_with(crate::webhook::inbox::KEY_PREFIX))
    {
        return Err(ApiError::bad_request(
            "bad_header",
            "Idempotency-Key must not start with hook/ (the webhook inbox's keys)",
        ));
    }
    let reason = header(headers, "x-cairn-reason")?.map(str::to_string);
    if reason
        .as_ref()
        .is_some_and(|reason| reason.len() > MAX_REASON_BYTES)
    {
        return Err(ApiError::bad_request(
            "bad_header",
            format!("X-Cairn-Reason is over {MAX_REASON_BYTES} bytes"),
        ));
    }
    if let Some(Err(problem)) = reason.as_deref().map(crate::model::check_text) {
        return Err(ApiError::bad_request(
            "bad_header",
            format!("X-Cairn-Reason {problem}"),
        ));
    }
    Ok(CommandContext {
        idempotency_key,
        reason,
        ..CommandContext::new(actor)
    })
}

/// The manifest's format from its Content-Type. The content types a web page
/// can send without a CORS preflight (text/plain, forms) are refused.
fn manifest_format(content_type: Option<&str>) -> Result<ManifestFormat, ApiError> {
    let Some(content_type) = content_type else {
        return Ok(ManifestFormat::Yaml);
    };
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media_type.as_str() {
        "application/json" => Ok(ManifestFormat::Json),
        "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" => {
            Ok(ManifestFormat::Yaml)
        }
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "Content-Type {other:?} is not a manifest type: use application/yaml or application/json"
            ),
        )),
    }
}

fn cluster_handler(name: &str, state: &ApiState) -> Result<Response, ApiError> {
    check_cluster_name(name)?;
    let view = state.ledger.read(|projections| {
        let cluster = projections.desired.cluster(name)?;
        let observed = projections
            .observed
            .cluster(name)
            .cloned()
            .unwrap_or_default();
        Some(ClusterView::from_state(cluster, &observed))
    });
    let Some(view) = view else {
        return Err(LedgerError::ClusterNotFound(name.to_string()).into());
    };
    let etag = format!("\"{}\"", view.stream_version);
    Ok(warp::reply::with_header(warp::reply::json(&view), "etag", etag).into_response())
}

async fn history_handler(
    name: String,
    _actor: Actor,
    state: ApiState,
    query: HashMap<String, String>,
) -> Response {
    let result = async {
        check_cluster_name(&name)?;
        check_known_parameters(&query, &["after", "limit"])?;
        let after = query_u64(&query, "after")?.unwrap_or(0);
        let limit = query_limit(&query)?;
        let page = state.ledger.history(&name, after, limit).await?;
        Ok(warp::reply::json(&EventPageView::from_page(&page)))
    }
    .await;
    problem::respond(result)
}

async fn events_handler(
    _actor: Actor,
    state: ApiState,
    query: HashMap<String, String>,
) -> Response {
    let result = async {
        let query = audit::event_query(&query)?;
        let page = state.ledger.events(&query).await?;
        Ok(warp::reply::json(&EventPageView::from_page(&page)))
    }
    .await;
    problem::respond(result)
}
