//! The HTTP server of a node: the JSON API (same answers as the CLI's `--json`), live
//! Server-Sent Events, the dashboard, and Prometheus metrics.
//!
//! Every handler asks the node through its [`NodeClient`], so HTTP clients go through the same
//! checks and bounds as libp2p clients: an overloaded node answers 503. The server itself is
//! bounded too: request bodies ([`MAX_BODY_BYTES`]), open connections ([`MAX_CONNECTIONS`]) and
//! idle connections ([`IDLE_TIMEOUT`]).
//!
//! - `api`: the read-only JSON routes and `POST /api/v1/readings`;
//! - `admin`: admin actions, allowed with a bearer token or a pre-signed command;
//! - `live`: one meter's new readings as Server-Sent Events;
//! - `dashboard`: the embedded single-page dashboard and the OpenAPI document.

mod admin;
mod api;
mod dashboard;
mod live;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::handler::Handler;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::{Json, Router};
use libp2p::identity::ed25519;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::{LogOnce, Metrics};
use crate::node::NodeClient;

/// Largest request body (a batch of readings, an admin command); larger ones get 413.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;
/// Most HTTP connections open at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 1024;
/// A connection with no byte read or written for this long is closed (live streams send a
/// keep-alive comment far more often).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

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
        .with_state(state)
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
        let listener = Bounded { inner: listener, permits: Arc::new(Semaphore::new(MAX_CONNECTIONS)) };
        let app = build(context, cancel).into_make_service_with_connect_info::<ClientAddr>();
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "HTTP server failed");
        }
    })
}

/// A listener that holds at most [`MAX_CONNECTIONS`] connections open, and sets `TCP_NODELAY`
/// (answers are small and written in pieces: Nagle's algorithm would hold them back).
struct Bounded {
    inner: TcpListener,
    permits: Arc<Semaphore>,
}

impl axum::serve::Listener for Bounded {
    type Io = Connection;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Connection, std::net::SocketAddr) {
        loop {
            // Wait for a free slot before accepting: the kernel's backlog holds the rest.
            let Ok(permit) = self.permits.clone().acquire_owned().await else {
                // The semaphore is never closed; wait forever rather than spin if it were.
                std::future::pending::<()>().await;
                continue;
            };
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(%error, "cannot set TCP_NODELAY");
                    }
                    let idle = Box::pin(tokio::time::sleep(IDLE_TIMEOUT));
                    return (Connection { stream, idle, _permit: permit }, addr);
                }
                Err(error) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(%error, "cannot accept an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }
}

/// The address of a client, for logging refusals once per client.
#[derive(Clone, Copy, Debug)]
struct ClientAddr(std::net::SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Bounded>> for ClientAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Bounded>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

/// An accepted connection: closed after [`IDLE_TIMEOUT`] without traffic; frees its slot when
/// dropped.
struct Connection {
    stream: TcpStream,
    idle: Pin<Box<tokio::time::Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    fn touch(&mut self) {
        self.idle.as_mut().reset(tokio::time::Instant::now() + IDLE_TIMEOUT);
    }

    /// A write's outcome: progress keeps the connection alive; a client that has not read for
    /// the idle timeout is dropped.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match written {
            Poll::Ready(Ok(written)) => {
                self.touch();
                Poll::Ready(Ok(written))
            }
            Poll::Pending if self.idle_expired(cx) => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "HTTP client stopped reading")))
            }
            other => other,
        }
    }

    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.idle.as_mut().poll(cx).is_ready()
    }
}

impl AsyncRead for Connection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.touch();
                }
                Poll::Ready(result)
            }
            Poll::Pending if this.idle_expired(cx) => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "idle HTTP connection")))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write(cx, data);
        this.after_write(cx, written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.after_write(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
