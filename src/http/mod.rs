//! The HTTP server of a node: the JSON API (same answers as the CLI's `--json`), live
//! Server-Sent Events, the dashboard, and Prometheus metrics.
//!
//! Every handler asks the node through its [`NodeClient`], so HTTP clients go through the same
//! checks and bounds as libp2p clients: an overloaded node answers 503. The server itself is
//! bounded too: request bodies ([`MAX_BODY_BYTES`]), open connections ([`MAX_CONNECTIONS`], a
//! waiting one closed to make room for a new one), slow requests ([`REQUEST_DEADLINE`]) and
//! idle connections ([`IDLE_TIMEOUT`]): see `connections`.
//!
//! - `api`: the read-only JSON routes and `POST /api/v1/readings`;
//! - `admin`: admin actions, allowed with a bearer token or a pre-signed command;
//! - `live`: one meter's new readings as Server-Sent Events;
//! - `dashboard`: the embedded single-page dashboard and the OpenAPI document.

mod admin;
mod api;
mod connections;
mod dashboard;
mod live;

use connections::Bounded;
pub use connections::{EVICT_AFTER, IDLE_TIMEOUT, MAX_CONNECTIONS, REQUEST_DEADLINE};

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::handler::Handler;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::{Json, Router};
use libp2p::identity::ed25519;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::{LogOnce, Metrics};
use crate::node::NodeClient;

/// Largest request body (a batch of readings, an admin command); larger ones get 413.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct HttpContext {
    /// The node, asked like any client.
    pub node: NodeClient,
    /// The node's metrics.
    pub metrics: Arc<Metrics>,
    /// Bearer tokens that allow admin actions.
    pub admin_tokens: Arc<Vec<String>>,
    /// The node's admin key: admin actions authenticated by a token are signed with it, since
    /// other nodes apply only commands signed by a trusted key. `None`: token-authenticated
    /// actions answer 503 (pre-signed commands still work).
    pub admin_signer: Option<Arc<ed25519::Keypair>>,
}

/// The state of the handlers: the context, and the server's cancellation (which ends live
/// streams, so that a graceful shutdown does not wait for them forever).
#[derive(Clone)]
struct AppState {
    context: HttpContext,
    cancel: CancellationToken,
    /// Clients whose bad requests were already logged.
    logged: Arc<LogOnce>,
}

/// An HTTP method a route answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    /// `GET` (and `HEAD`).
    Get,
    /// `POST`.
    Post,
    /// `PUT`.
    Put,
}

impl Verb {
    /// The method's name, as in a request line.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Post => "POST",
            Verb::Put => "PUT",
        }
    }

    fn filter(self) -> MethodFilter {
        match self {
            Verb::Get => MethodFilter::GET,
            Verb::Post => MethodFilter::POST,
            Verb::Put => MethodFilter::PUT,
        }
    }
}

/// One route: the router is built from the same table that [`routes`] lists, so the list (and
/// the OpenAPI document checked against it) cannot miss a route.
struct Route {
    verb: Verb,
    path: &'static str,
    handler: MethodRouter<AppState>,
}

fn route<H, T>(verb: Verb, path: &'static str, handler: H) -> Route
where
    H: Handler<T, AppState>,
    T: 'static,
{
    Route { verb, path, handler: on(verb.filter(), handler) }
}

fn table() -> Vec<Route> {
    use Verb::{Get, Post, Put};
    vec![
        route(Get, "/", dashboard::index),
        route(Get, "/app.js", dashboard::script),
        route(Get, "/style.css", dashboard::style),
        route(Get, "/metrics", metrics),
        route(Get, "/api/v1/openapi.json", dashboard::openapi),
        route(Get, "/api/v1/top", api::top),
        route(Get, "/api/v1/stats", api::stats),
        route(Get, "/api/v1/peers", api::peers),
        route(Get, "/api/v1/blocked", api::blocked),
        route(Get, "/api/v1/alerts", api::alerts),
        route(Get, "/api/v1/policy", api::policy),
        route(Get, "/api/v1/meters/{id}", api::meter),
        route(Get, "/api/v1/meters/{id}/readings", api::readings),
        route(Get, "/api/v1/meters/{id}/bill", api::bill),
        route(Get, "/api/v1/meters/{id}/live", live::live),
        route(Post, "/api/v1/readings", api::ingest),
        route(Post, "/api/v1/admin/block", admin::block),
        route(Post, "/api/v1/admin/unblock", admin::unblock),
        route(Post, "/api/v1/admin/paid", admin::paid),
        route(Put, "/api/v1/admin/policy", admin::policy),
        route(Post, "/api/v1/admin/signed", admin::signed),
    ]
}

/// Every route the server answers, as (method, path with `{id}` parameters).
pub fn routes() -> Vec<(Verb, &'static str)> {
    table().into_iter().map(|route| (route.verb, route.path)).collect()
}

/// The routes of the server; live streams end when their client goes away or at `cancel`.
fn build(context: HttpContext, cancel: CancellationToken) -> Router {
    let mut router = Router::new();
    for route in table() {
        router = router.route(route.path, route.handler);
    }
    let state = AppState { context, cancel, logged: Arc::default() };
    router
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        // Bodies are read whole into memory: bound them (413 beyond).
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(state.clone(), count_bad_requests))
        .layer(axum::middleware::from_fn_with_state(state.clone(), refuse_oversized))
        .with_state(state)
}

/// Answers 413 at once to a request that announces a body over [`MAX_BODY_BYTES`], without
/// waiting for any of it (the body extractors would, up to the request deadline).
async fn refuse_oversized(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        state.context.metrics.refuse("http", "oversized");
        return ApiError::too_large().into_response();
    }
    next.run(request).await
}

/// Counts every 400 answer (a bad parameter or body) in the metrics, in one place whatever the
/// route, and logs it once per client; other refusals (401, 413) are counted where their reason
/// is known.
async fn count_bad_requests(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let client = request
        .extensions()
        .get::<axum::extract::ConnectInfo<ClientAddr>>()
        .map_or_else(|| "unknown".to_owned(), |info| info.0 .0.ip().to_string());
    let target = format!("{} {}", request.method(), request.uri().path());
    let response = next.run(request).await;
    if response.status() == StatusCode::BAD_REQUEST {
        state.context.metrics.refuse("http", "bad_request");
        if state.logged.first(&client, "bad_request") {
            tracing::warn!(%client, request = %target, "refused a bad HTTP request (logged once per client)");
        }
    }
    response
}

/// `GET /metrics`: OpenMetrics to a scraper that asks for it (Prometheus does), else the
/// classic text format; each with the Content-Type of what it is.
async fn metrics(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|accept| accept.contains("application/openmetrics-text"));
    let metrics = &state.context.metrics;
    if openmetrics {
        let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
        ([(header::CONTENT_TYPE, content_type)], metrics.encode()).into_response()
    } else {
        ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], metrics.encode_classic())
            .into_response()
    }
}

async fn no_route(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route {method} {} (the API is described at /api/v1/openapi.json)", uri.path()),
    )
}

async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not answer {method} (see /api/v1/openapi.json)", uri.path()),
    )
}

/// An error answer: `{"error":"…"}` with its status.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into() }
    }

    /// 400: a parameter or body is wrong (the message says which and why).
    fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 413: a body over [`MAX_BODY_BYTES`].
    fn too_large() -> Self {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {MAX_BODY_BYTES} bytes"),
        )
    }

    /// 503: the node is overloaded.
    fn busy() -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the node is busy; try again shortly")
    }

    /// 500: anything else.
    fn internal(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "error": self.message }))).into_response();
        let headers = response.headers_mut();
        match self.status {
            // Busy is brief: the node's own hint is 100 ms, and HTTP counts in seconds.
            StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            StatusCode::UNAUTHORIZED => {
                headers
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"hydromesh\""));
            }
            _ => {}
        }
        response
    }
}

/// Serves the routes on `listener` until `cancel`.
pub fn serve(listener: TcpListener, context: HttpContext, cancel: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let shutdown = cancel.clone();
        let listener = Bounded::new(listener);
        let app = build(context, cancel).into_make_service_with_connect_info::<ClientAddr>();
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "HTTP server failed");
        }
    })
}

/// The address of a client, for logging refusals once per client.
#[derive(Clone, Copy, Debug)]
struct ClientAddr(std::net::SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Bounded>> for ClientAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Bounded>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}
