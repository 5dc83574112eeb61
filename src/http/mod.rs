//! The HTTP server of a node: the JSON API (same answers as the CLI's `--json`), live
//! Server-Sent Events, the dashboard, and Prometheus metrics.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::node::LocalClient;

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct HttpContext {
    /// The node, asked like any client.
    pub node: LocalClient,
    /// The node's metrics.
    pub metrics: Arc<Metrics>,
    /// Bearer tokens that allow admin actions.
    pub admin_tokens: Arc<Vec<String>>,
}

/// The routes of the server.
pub fn router(context: HttpContext) -> Router {
    Router::new().route("/metrics", get(metrics)).with_state(context)
}

async fn metrics(State(context): State<HttpContext>) -> String {
    context.metrics.encode()
}

/// Serves `router` on `listener` until `cancel`.
pub fn serve(
    listener: tokio::net::TcpListener,
    context: HttpContext,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let shutdown = cancel.clone();
        let served =
            axum::serve(listener, router(context).into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
        if let Err(error) = served {
            tracing::error!(%error, "HTTP server failed");
        }
    })
}
