//! Admin actions over HTTP, never anonymous: with a bearer token from the node's configuration
//! (the node signs the command with its admin key, since the mesh applies only signed commands),
//! or as a command already signed by an admin (`hydromesh_proto::encode`d, in hex), which the
//! node verifies like any other.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use hydromesh_proto::control::{Action, Command, Policy, SignedCommand};
use hydromesh_proto::{limits, query, MeterId};
use libp2p::identity::ed25519;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use super::api::{body, unexpected, ApiResult, Params};
use super::{ApiError, AppState};
use crate::clock::now_ms;
use crate::keys::from_hex;
use crate::mesh::control::{self, ControlError};
use crate::present::input::shown;

/// `POST /api/v1/admin/block` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlockBody {
    meter: MeterId,
    reason: Option<String>,
}

/// `POST /api/v1/admin/unblock` and `/paid` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MeterBody {
    meter: MeterId,
}

/// `PUT /api/v1/admin/policy` body: fields left out keep their value; 0 turns a rule off.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyBody {
    period: Option<String>,
    cap_l: Option<u64>,
    above_average: Option<f64>,
}

/// The admin key to sign with, once the request carries one of the node's tokens.
fn signer(state: &AppState, headers: &HeaderMap) -> Result<ed25519::Keypair, ApiError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let Some(given) = given.filter(|token| !token.is_empty()) else {
        state.context.metrics.refuse("http", "unauthorized");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "admin actions need `Authorization: Bearer <token>` with one of the node's admin tokens",
        ));
    };
    // Compare with every token, whatever matches, so the time taken says nothing of which.
    let matched = state
        .context
        .admin_tokens
        .iter()
        .filter(|token| !token.is_empty())
        .fold(false, |matched, token| matched | same_secret(given.as_bytes(), token.as_bytes()));
    if !matched {
        state.context.metrics.refuse("http", "unauthorized");
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "the admin token is not one of this node's"));
    }
    match &state.context.admin_signer {
        Some(key) => Ok(key.as_ref().clone()),
        None => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node has no admin key to sign with (start it with --admin-key FILE)",
        )),
    }
}

/// Whether two secrets are equal, in a time that depends only on the length of `given`.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != expected.len());
    for (i, byte) in given.iter().enumerate() {
        let other = expected.get(i % expected.len().max(1)).copied().unwrap_or(0);
        diff |= byte ^ other;
    }
    std::hint::black_box(diff) == 0
}

/// The JSON body of an admin action.
fn parse<T: DeserializeOwned>(state: &AppState, bytes: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body(state, bytes)?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// 404 when no fog node holds the meter (the node would refuse the command anyway; this says so
/// with the right status).
async fn check_meter(state: &AppState, meter: MeterId) -> Result<(), ApiError> {
    match state.context.node.query(query::Request::Bill { meter, period_start_ms: None }).await {
        query::Response::Bill(Some(_)) => Ok(()),
        query::Response::Bill(None) | query::Response::NotFound(_) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("meter {meter} is unknown: no fog node holds readings of it"),
        )),
        other => Err(unexpected(other)),
    }
}

/// Sends a signed command to the node, which verifies, applies and spreads it.
async fn send(state: &AppState, signed: SignedCommand) -> ApiResult {
    match state.context.node.query(query::Request::Admin(signed)).await {
        query::Response::Applied(message) => Ok(Json(json!({"applied": true, "message": message}))),
        query::Response::Error(reason) => {
            Err(ApiError::new(StatusCode::FORBIDDEN, format!("the node refused the command: {reason}")))
        }
        other => Err(unexpected(other)),
    }
}

/// Signs `action` with the node's admin key and sends it.
async fn sign_and_send(state: &AppState, key: &ed25519::Keypair, action: Action) -> ApiResult {
    if let Some(meter) = control::meter_of(&action) {
        check_meter(state, meter).await?;
    }
    let command = Command { issued_at_ms: now_ms(), action };
    let signed = control::sign(key, &command).map_err(|e| ApiError::internal(e.to_string()))?;
    send(state, signed).await
}

/// `POST /api/v1/admin/block` `{"meter":N,"reason":"…"}`.
pub(super) async fn block(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let key = signer(&state, &headers)?;
    Params::new(query, &[])?;
    let BlockBody { meter, reason } = parse(&state, bytes)?;
    let reason = reason.unwrap_or_else(|| "blocked by an admin".to_owned());
    if reason.chars().count() > limits::MAX_REASON_CHARS {
        return Err(ApiError::bad_request(format!(
            "reason: longer than {} characters",
            limits::MAX_REASON_CHARS
        )));
    }
    sign_and_send(&state, &key, Action::Block { meter, reason }).await
}

/// `POST /api/v1/admin/unblock` `{"meter":N}`.
pub(super) async fn unblock(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult {
    meter_action(&state, &headers, query, bytes, |meter| Action::Unblock { meter }).await
}

/// `POST /api/v1/admin/paid` `{"meter":N}`.
pub(super) async fn paid(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult {
    meter_action(&state, &headers, query, bytes, |meter| Action::Paid { meter }).await
}

/// An admin action whose body is just `{"meter":"ID"}`.
async fn meter_action(
    state: &AppState,
    headers: &HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    bytes: Result<Bytes, BytesRejection>,
    action: fn(MeterId) -> Action,
) -> ApiResult {
    let key = signer(state, headers)?;
    Params::new(query, &[])?;
    let MeterBody { meter } = parse(state, bytes)?;
    sign_and_send(state, &key, action(meter)).await
}

/// `PUT /api/v1/admin/policy` `{"period":"30d","cap_l":N,"above_average":1.5}`.
pub(super) async fn policy(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let key = signer(&state, &headers)?;
    Params::new(query, &[])?;
    let PolicyBody { period, cap_l, above_average } = parse(&state, bytes)?;
    let period_ms = period
        .map(|text| {
            humantime::parse_duration(&text)
                .map(|period| period.as_millis().min(u128::from(u64::MAX)) as u64)
                .map_err(|e| {
                    ApiError::bad_request(format!(
                        "period: `{}` is not a duration like 30d: {e}",
                        shown(&text)
                    ))
                })
        })
        .transpose()?;
    let permille = above_average.map(permille).transpose()?;
    let current = match state.context.node.query(query::Request::Policy).await {
        query::Response::Policy(policy, _) => policy,
        other => return Err(unexpected(other)),
    };
    let policy = Policy {
        period_ms: period_ms.unwrap_or(current.period_ms),
        cap_l: cap_l.map_or(current.cap_l, |cap| (cap > 0).then_some(cap)),
        above_average_permille: permille.unwrap_or(current.above_average_permille),
    };
    if let Some(problem) = policy.problem() {
        return Err(ApiError::bad_request(problem));
    }
    sign_and_send(&state, &key, Action::Policy(policy)).await
}

/// A factor as thousandths of the average: `None` for 0 (rule off).
fn permille(factor: f64) -> Result<Option<u32>, ApiError> {
    Policy::permille_of_factor(factor)
        .map_err(|problem| ApiError::bad_request(format!("above_average: {problem}")))
}

/// `POST /api/v1/admin/signed`: the hex of a `hydromesh_proto::encode`d `SignedCommand`.
pub(super) async fn signed(
    State(state): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    bytes: Result<Bytes, BytesRejection>,
) -> ApiResult {
    Params::new(query, &[])?;
    let bytes = body(&state, bytes)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| ApiError::bad_request("the body is not hex text"))?;
    if text.trim().len() > 2 * limits::MAX_COMMAND_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a signed command is at most {} bytes", limits::MAX_COMMAND_BYTES),
        ));
    }
    let encoded = from_hex(text)
        .ok_or_else(|| ApiError::bad_request("the body is not the hex of an encoded signed command"))?;
    let signed: SignedCommand = hydromesh_proto::decode(&encoded, limits::MAX_COMMAND_BYTES)
        .map_err(|e| ApiError::bad_request(format!("the body is not an encoded signed command: {e}")))?;
    // The node checks that it trusts the key; here, that the command is well-formed and signed
    // by the key it names, for a precise status before asking the node.
    let key = ed25519::PublicKey::try_from_bytes(&signed.admin_key)
        .map_err(|_| ApiError::bad_request("the command's admin key is not an ed25519 public key"))?;
    let command = control::verify(&signed, &[key]).map_err(|error| match error {
        ControlError::Signature => ApiError::new(StatusCode::FORBIDDEN, error.to_string()),
        error => ApiError::bad_request(error.to_string()),
    })?;
    if let Some(meter) = control::meter_of(&command.action) {
        check_meter(&state, meter).await?;
    }
    send(&state, signed).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3cre", b"s3cret"));
        assert!(!same_secret(b"s3cretx", b"s3cret"));
        assert!(!same_secret(b"s3creT", b"s3cret"));
        assert!(!same_secret(b"", b"s3cret"));
        assert!(!same_secret(b"x", b""));
    }

    #[test]
    fn factors_become_permille() {
        assert_eq!(permille(0.0).ok(), Some(None));
        assert_eq!(permille(1.5).ok(), Some(Some(1500)));
        assert!(permille(0.5).is_err() && permille(f64::NAN).is_err() && permille(1001.0).is_err());
    }
}
