//! `GET /v1/export`: the whole log as NDJSON (`backup`), streamed.
//!
//! Admin only: it is every event, with every actor, reason and manifest. The
//! export ends at the head when the request arrived, so it is a consistent
//! prefix of the log while appends continue. A task reads the log a page at a
//! time and hands chunks to the body through a channel of two, so memory stays
//! bounded whatever the log's size, and a client that goes away stops it. An
//! error part-way aborts the body: the file then has no trailer, and
//! `cairn import` refuses it as truncated.

use bytes::Bytes;
use tokio_stream::wrappers::ReceiverStream;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::{authenticated, with_state, ApiState};
use crate::backup::Export;
use crate::config::Role;
use crate::event::Actor;

/// Chunks waiting for the client, at most (each about 256 KiB).
const BUFFERED_CHUNKS: usize = 2;

pub(super) fn route(
    state: &ApiState,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    warp::path!("v1" / "export")
        .and(warp::get())
        .and(authenticated(state, Role::Admin))
        .and(with_state(state))
        .map(|actor: Actor, state: ApiState| export_response(actor, state))
}

fn export_response(actor: Actor, state: ApiState) -> Response {
    let mut export = Export::start(state.ledger.store().clone());
    let head = export.head();
    tracing::info!(actor = %actor.name, head_seq = head.seq, "export started");
    let (sender, receiver) =
        tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(BUFFERED_CHUNKS);
    tokio::spawn(async move {
        loop {
            match export.next_chunk().await {
                Ok(Some(chunk)) => {
                    if sender.send(Ok(Bytes::from(chunk))).await.is_err() {
                        tracing::info!(head_seq = head.seq, "export abandoned by the client");
                        return;
                    }
                }
                Ok(None) => return,
                Err(error) => {
                    tracing::error!(%error, head_seq = head.seq, "export failed part-way");
                    let _ = sender
                        .send(Err(std::io::Error::other(error.to_string())))
                        .await;
                    return;
                }
            }
        }
    });
    let reply = warp::reply::stream(ReceiverStream::new(receiver));
    let reply = warp::reply::with_header(reply, "content-type", "application/x-ndjson");
    let reply = warp::reply::with_header(reply, "cache-control", "no-store");
    warp::reply::with_header(reply, "x-cairn-head-seq", head.seq.to_string()).into_response()
}
