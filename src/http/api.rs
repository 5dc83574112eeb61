//! The JSON API: the same answers as the CLI's `--json` (built by [`crate::present::json`]), and
//! readings in, checked like `hydromesh ingest`'s, with the same per-item report.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::Json;
use futures::StreamExt;
use hydromesh_proto::ingest;
use hydromesh_proto::limits::{MAX_BATCH_READINGS, MAX_TOP_N};
use hydromesh_proto::query::{self, MeterAnswer};
use hydromesh_proto::summary::AlertKind;
use hydromesh_proto::{MeterId, Reading};
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};

use super::{ApiError, AppState};
use crate::present::input::{parse_since, parse_window_time, reading_from_json, shown, InputError};
use crate::present::json;
use crate::present::report::Report;

/// How far back of a meter's latest reading its summary's readings go.
const SUMMARY_WINDOW_MS: u64 = 24 * 3_600_000;
/// Most readings a meter summary lists (the latest); the rest are in `/readings`.
const SUMMARY_READINGS: usize = 100;

/// A JSON answer, or an error answer.
pub(super) type ApiResult = Result<Json<Value>, ApiError>;

/// The parameters of a query string, checked against the ones a route knows.
pub(super) struct Params(Vec<(String, String)>);

impl Params {
    /// Refuses malformed query strings, unknown parameters and repeated ones.
    pub(super) fn new(
        query: Result<Query<Vec<(String, String)>>, QueryRejection>,
        known: &[&str],
    ) -> Result<Params, ApiError> {
        let Query(pairs) =
            query.map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))?;
        for (i, (name, _)) in pairs.iter().enumerate() {
            if !known.contains(&name.as_str()) {
                let expected = if known.is_empty() {
                    "this route takes no parameter".to_owned()
                } else {
                    format!("expected {}", known.join(", "))
                };
                return Err(ApiError::bad_request(format!(
                    "unknown parameter `{}` ({expected})",
                    shown(name)
                )));
            }
            if pairs[..i].iter().any(|(earlier, _)| earlier == name) {
                return Err(ApiError::bad_request(format!("parameter `{name}` is given twice")));
            }
        }
        Ok(Params(pairs))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, value)| value.as_str())
    }

    /// A time parameter: RFC 3339 or Unix milliseconds.
    fn time(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.get(name)
            .map(|text| parse_window_time(text).map_err(|e| ApiError::bad_request(format!("{name}: {e}"))))
            .transpose()
    }
}

/// The meter of a `/meters/{id}` path.
pub(super) fn meter_id(path: Result<Path<String>, PathRejection>) -> Result<MeterId, ApiError> {
    let Path(id) = path.map_err(|e| ApiError::bad_request(format!("bad meter id: {}", e.body_text())))?;
    MeterId::parse(&id)
        .map_err(|error| ApiError::bad_request(format!("`{}` is not a meter id ({error})", shown(&id))))
}

/// The error answer for a node's answer that is not the one expected.
pub(super) fn unexpected(response: query::Response) -> ApiError {
    match response {
        query::Response::NotFound(what) => ApiError::new(StatusCode::NOT_FOUND, what),
        query::Response::Busy => ApiError::busy(),
        query::Response::Error(error) => ApiError::internal(error),
        other => ApiError::internal(format!("the node sent an answer to another question: {other:?}")),
    }
}

/// `GET /api/v1/top?n=&since=`.
pub(super) async fn top(
    State(state): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult {
    let params = Params::new(query, &["n", "since"])?;
    let n = match params.get("n") {
        None => 10,
        Some(text) => text.parse::<u32>().ok().filter(|n| (1..=MAX_TOP_N).contains(n)).ok_or_else(|| {
            ApiError::bad_request(format!("n: `{}` is not a whole number from 1 to {MAX_TOP_N}", shown(text)))
        })?,
    };
    let since_ms = params
        .get("since")
        .map(|text| {
            parse_since(text, crate::clock::now_ms())
                .map_err(|e| ApiError::bad_request(format!("since: {e}")))
        })
        .transpose()?;
    match state.context.node.query(query::Request::Top { n, since_ms }).await {
        query::Response::Top(answer) => Ok(Json(json::top_json(&answer))),
        other => Err(unexpected(other)),
    }
}

/// `GET /api/v1/stats`.
pub(super) async fn stats(
    State(state): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult {
    Params::new(query, &[])?;
    match state.context.node.query(query::Request::Stats).await {
        query::Response::Stats(answer) => Ok(Json(json::stats_json(&answer))),
        other => Err(unexpected(other)),
    }
}

/// `GET /api/v1/peers`.
pub(super) async fn peers(
    State(state): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult {
    Params::new(query, &[])?;
    match state.context.node.query(query::Request::Peers).await {
        query::Response::Peers(answer) => Ok(Json(json::peers_json(&answer))),
        other => Err(unexpected(other)),
    }
}

/// `GET /api/v1/blocked`.
pub(super) async fn blocked(
    State(state): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult {
    Params::new(query, &[])?;
    match state.context.node.query(query::Request::Blocked).await {
        query::Response::Blocked(answer) => Ok(Json(json::blocked_json(&answer))),
        other => Err(unexpected(other)),
    }
}

/// `GET /api/v1/alerts?kind=`.
pub(super) async fn alerts(
    State(state): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult {
    let params = Params::new(query, &["kind"])?;
    let kind = params
        .get("kind")
        .map(|text| {
            AlertKind::from_name(text).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "kind: unknown alert kind `{}` (expected leak, burst, tamper, backflow, dry or other)",
                    shown(text)
                ))
            })
        })
        .transpose()?;
    match state.context.node.query(query::Request::Alerts { kind }).await {
        query::Response::Alerts(answer) => Ok(Json(json::alerts_json(&answer))),
        other => Err(unexpected(other)),
    }
}

/// `GET /api/v1/policy`.
pub(super) async fn policy(
    State(state): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult {
    Params::new(query, &[])?;
    match state.context.node.query(query::Request::Policy).await {
        query::Response::Policy(policy, origin) => Ok(Json(json::policy_json(&policy, origin.as_ref()))),
        other => Err(unexpected(other)),
    }
}

async fn meter_answer(
    state: &AppState,
    meter: MeterId,
    from_ms: Option<u64>,
    to_ms: Option<u64>,
) -> Result<MeterAnswer, ApiError> {
    match state.context.node.query(query::Request::Meter { meter, from_ms, to_ms }).await {
        query::Response::Meter(answer) => Ok(*answer),
        other => Err(unexpected(other)),
    }
}

/// `GET /api/v1/meters/{id}`: the meter's state, current bill and latest readings — the CLI's
/// `query meter ID --from T --json` for T 24 h before its latest reading, listing at most the
/// latest [`SUMMARY_READINGS`] (`truncated` says when some were left out).
pub(super) async fn meter(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult {
    let meter = meter_id(path)?;
    Params::new(query, &[])?;
    // A follow without a last reading answers at once with the latest one: it anchors the
    // window, so a meter that stopped reporting still shows its last day of data.
    let latest = match state.context.node.query(query::Request::Follow { meter, after_ts_ms: None }).await {
        query::Response::Readings { readings, .. } => readings.last().map(|r| r.ts_ms),
        other => return Err(unexpected(other)),
    };
    let from_ms = latest.map(|ts| ts.saturating_sub(SUMMARY_WINDOW_MS));
    let answer = meter_answer(&state, meter, from_ms, None).await?;
    Ok(Json(summary_json(&answer)))
}

/// The meter JSON with only the latest [`SUMMARY_READINGS`] readings.
pub(super) fn summary_json(answer: &MeterAnswer) -> Value {
    let mut value = json::meter_json(answer);
    if let Some(readings) = value.get_mut("readings").and_then(Value::as_array_mut) {
        if readings.len() > SUMMARY_READINGS {
            readings.drain(..readings.len() - SUMMARY_READINGS);
            value["truncated"] = json!(true);
        }
    }
    value
}

/// `GET /api/v1/meters/{id}/readings?from=&to=`: the CLI's `query meter ID --json`.
pub(super) async fn readings(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult {
    let meter = meter_id(path)?;
    let params = Params::new(query, &["from", "to"])?;
    // A window that ends at or before its start is empty: answered, with no reading.
    let (from_ms, to_ms) = (params.time("from")?, params.time("to")?);
    let answer = meter_answer(&state, meter, from_ms, to_ms).await?;
    Ok(Json(json::meter_json(&answer)))
}

/// `GET /api/v1/meters/{id}/bill?period_start=`.
pub(super) async fn bill(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult {
    let meter = meter_id(path)?;
    let params = Params::new(query, &["period_start"])?;
    let period_start_ms = params.time("period_start")?;
    match state.context.node.query(query::Request::Bill { meter, period_start_ms }).await {
        query::Response::Bill(Some(bill)) => Ok(Json(json::bill_json(&bill))),
        query::Response::Bill(None) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("meter {meter} is not held by any known fog node"),
        )),
        other => Err(unexpected(other)),
    }
}

/// The body of a request, or the error answer for it (413 over [`super::MAX_BODY_BYTES`]).
pub(super) fn body(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            state.context.metrics.refuse("http", "oversized");
            ApiError::too_large()
        } else {
            ApiError::new(status, format!("cannot read the request body: {}", rejection.body_text()))
        }
    })
}

/// An item of a `POST /api/v1/readings` array: a reading, or why it is not one.
struct Item(Result<Reading, InputError>);

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Value::deserialize(deserializer).map(|item| Item(reading_from_json(&item)))
    }
}

/// `POST /api/v1/readings`: a JSON array of readings, each checked like a line of
/// `hydromesh ingest` (the bad ones are rejected by index, the good ones stored).
///
/// Busy is decided before the body is read: the request first takes a place in the node's
/// ingest queue (waiting briefly for one), and a queue that stays full answers 503 at the cost
/// of that check and of the body's bytes (discarded as they arrive, never parsed), so that
/// refusing work under overload leaves the node's time to the work it accepted.
pub(super) async fn ingest(
    State(state): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    request: Request,
) -> ApiResult {
    Params::new(query, &[])?;
    let slot = match state.context.node.reserve_ingest().await {
        Ok(slot) => slot,
        Err(refusal) => {
            // Answered at once; the body is read away behind the answer.
            tokio::spawn(discard_body(request));
            return Err(ingest_refused(refusal));
        }
    };
    let bytes = body(&state, Bytes::from_request(request, &state).await)?;
    let items: Vec<Item> = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not a JSON array of readings: {e}")))?;
    if items.len() > MAX_BATCH_READINGS {
        state.context.metrics.refuse("http", "too_many_readings");
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{} readings in one request (at most {MAX_BATCH_READINGS})", items.len()),
        ));
    }
    let mut report = Report::default();
    let (mut readings, mut indices) = (Vec::new(), Vec::new());
    for (index, Item(item)) in items.into_iter().enumerate() {
        match item {
            Ok(reading) => {
                readings.push(reading);
                indices.push(index);
            }
            Err(error) => report.rejected.push((index, error.to_string())),
        }
    }
    if !readings.is_empty() {
        match slot.ingest(readings).await {
            done @ ingest::Response::Done { .. } => report.record(&indices, done),
            refusal => return Err(ingest_refused(refusal)),
        }
    }
    Ok(Json(report.json("index")))
}

/// The error answer to a batch the node did not store.
fn ingest_refused(refusal: ingest::Response) -> ApiError {
    match refusal {
        ingest::Response::Busy { .. } => ApiError::busy(),
        ingest::Response::Unavailable { reason } => ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            format!(
                "the node could not store the readings ({reason}); none was stored: send them again later"
            ),
        ),
        ingest::Response::Refused { reason } => {
            ApiError::internal(format!("the node refused the batch: {reason}"))
        }
        ingest::Response::Done { .. } => ApiError::internal("the node stored the batch".to_owned()),
    }
}

/// Reads a refused request's body to its end without keeping any of it (at most
/// [`super::MAX_BODY_BYTES`]; past that, or at the connection's request deadline, the
/// connection is closed), so that the client, which may still be sending it, reads its answer
/// and keeps its connection. A client waiting for `100 Continue` before it sends the body is
/// not asked for it.
async fn discard_body(request: Request) {
    if request.headers().contains_key(header::EXPECT) {
        return;
    }
    let mut body = request.into_body().into_data_stream();
    let mut read = 0;
    while let Some(Ok(chunk)) = body.next().await {
        read += chunk.len();
        if read > super::MAX_BODY_BYTES {
            return;
        }
    }
}
