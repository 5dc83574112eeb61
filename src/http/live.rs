//! `GET /api/v1/meters/{id}/live`: a meter's new readings as Server-Sent Events, routed like
//! `hydromesh query meter ID --follow` (long polls through the node to the meter's home).
//!
//! The first event is the meter's latest reading, then one event per reading as its home stores
//! it: `data:` is the CLI's `--follow --json` line, `id:` the reading's time in ms, so a browser
//! that reconnects (with `Last-Event-ID`) resumes after the last reading it has. The stream
//! holds one long poll in the node at a time, and ends when the client goes away (the body is
//! dropped, and the long poll with it) or the server stops.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, StreamExt};
use hydromesh_proto::{query, MeterId, Reading};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::api::{meter_id, unexpected, Params};
use super::{ApiError, AppState};
use crate::node::NodeClient;
use crate::present::json::follow_json;

/// How often a keep-alive comment goes out: it keeps proxies from closing a quiet stream, and
/// writing it is how a vanished client is noticed.
const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// Wait before asking again when the node is busy (as the CLI's follow does).
const BUSY_RETRY: Duration = Duration::from_millis(200);

/// Where a stream is.
struct Follow {
    node: NodeClient,
    meter: MeterId,
    after_ts_ms: Option<u64>,
    cancel: CancellationToken,
    ended: bool,
}

/// The meter's live readings (404 for an unknown meter, 503 when the node is busy).
pub(super) async fn live(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let meter = meter_id(path)?;
    Params::new(query, &[])?;
    let resume = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    let node = state.context.node.clone();
    // Ask the first question before answering, so that an unknown meter or a busy node gets its
    // status instead of an empty stream.
    let (first, after_ts_ms) = match node.query(query::Request::Follow { meter, after_ts_ms: resume }).await {
        query::Response::Readings { home, readings } => {
            let after = readings.last().map(|r| r.ts_ms).or(resume).or(Some(0));
            (events(meter, &home, &readings), after)
        }
        other => return Err(unexpected(other)),
    };
    let follow = Follow { node, meter, after_ts_ms, cancel: state.cancel.clone(), ended: false };
    let rest = stream::unfold(follow, next).flat_map(stream::iter);
    let stream = stream::iter(first).chain(rest).map(Ok::<Event, Infallible>);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive")).into_response())
}

/// The next events of a stream: new readings (none after a long poll that saw nothing, or while
/// the node is busy); `None` once ended.
async fn next(mut follow: Follow) -> Option<(Vec<Event>, Follow)> {
    if follow.ended {
        return None;
    }
    let request = query::Request::Follow { meter: follow.meter, after_ts_ms: follow.after_ts_ms };
    let response = tokio::select! {
        () = follow.cancel.cancelled() => return None,
        response = follow.node.query(request) => response,
    };
    let events = match response {
        query::Response::Readings { home, readings } => {
            if let Some(last) = readings.last() {
                follow.after_ts_ms = Some(last.ts_ms);
            }
            events(follow.meter, &home, &readings)
        }
        query::Response::Busy => {
            tokio::select! {
                () = follow.cancel.cancelled() => return None,
                () = tokio::time::sleep(BUSY_RETRY) => Vec::new(),
            }
        }
        other => {
            // The home is gone or the node is stopping: say so and end; a browser reconnects
            // by itself and resumes after its last reading.
            follow.ended = true;
            let error = match other {
                query::Response::NotFound(what) | query::Response::Error(what) => what,
                other => format!("the node sent an answer to another question: {other:?}"),
            };
            vec![Event::default().event("error").data(json!({ "error": error }).to_string())]
        }
    };
    Some((events, follow))
}

fn events(meter: MeterId, home: &str, readings: &[Reading]) -> Vec<Event> {
    readings
        .iter()
        .map(|reading| {
            Event::default().id(reading.ts_ms.to_string()).data(follow_json(meter, home, reading).to_string())
        })
        .collect()
}
