//! The composition root: a fog node and the front ends its configuration asks for (the HTTP API
//! and dashboard, MQTT ingest), started in order and stopped in the reverse order.
//!
//! Start: the node (store, ingest writer, swarm), then HTTP, then MQTT, each on the node's
//! [`NodeClient`]; their bound addresses go to `DATA_DIR/http` and `DATA_DIR/mqtt`. A front end
//! that cannot start stops what already runs.
//!
//! Stop, with every wait named here:
//! 1. the front ends stop taking work and get [`FRONT_END_GRACE`] to finish with their clients
//!    (whose requests still reach the running node), then are aborted; within it, MQTT clients
//!    get [`mqtt::DRAIN_GRACE`] for the acknowledgements of what is being stored;
//! 2. the node stops listening and gets [`crate::node::SHUTDOWN_GRACE`] for its in-flight requests;
//! 3. the ingest writer acknowledges what is queued and the store is flushed: the result of
//!    that flush is the result of [`AppHandle::shutdown`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::http::{self, HttpContext};
use crate::metrics::Metrics;
use crate::mqtt::{self, MqttError};
use crate::node::{Node, NodeClient, NodeError, NodeHandle};

/// How long the front ends get at shutdown to finish with their clients.
pub const FRONT_END_GRACE: Duration = Duration::from_secs(10);

// MQTT's drain happens within the front ends' grace.
const _: () = assert!(mqtt::DRAIN_GRACE.as_millis() < FRONT_END_GRACE.as_millis());

/// Why the application could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The node failed.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The HTTP server could not start.
    #[error("cannot serve HTTP on {addr}: {reason}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The admin key for HTTP admin actions is not usable.
    #[error("admin key: {0}")]
    AdminKey(#[from] crate::keys::KeyError),
    /// MQTT ingest could not start.
    #[error(transparent)]
    Mqtt(#[from] MqttError),
    /// An address file could not be written.
    #[error("cannot write {path}: {source}")]
    AddressFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Starts a node with its front ends.
pub struct App;

impl App {
    /// Starts the node, then the front ends the configuration asks for.
    pub async fn spawn(config: Config) -> Result<AppHandle, AppError> {
        let node = Node::spawn(config.clone()).await?;
        let front_ends = CancellationToken::new();
        let mut app = AppHandle { node, front_ends, tasks: Vec::new(), http_addr: None, mqtt_addr: None };
        match app.start_front_ends(&config).await {
            Ok(()) => Ok(app),
            Err(error) => {
                if let Err(stop_error) = app.shutdown().await {
                    tracing::error!(error = %stop_error, "stopping after a failed start");
                }
                Err(error)
            }
        }
    }
}

/// A running node and its front ends.
pub struct AppHandle {
    node: NodeHandle,
    front_ends: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    http_addr: Option<SocketAddr>,
    mqtt_addr: Option<SocketAddr>,
}

impl AppHandle {
    async fn start_front_ends(&mut self, config: &Config) -> Result<(), AppError> {
        if let Some(addr) = config.http {
            // Token-authenticated admin actions are signed with this key; a configured key that
            // cannot be used stops the node rather than leaving them refused.
            let admin_signer = match &config.admin_key_file {
                Some(path) => {
                    let key = crate::keys::read_secret_key(path)?;
                    if !config.admin_keys.contains(&key.public()) {
                        tracing::warn!(
                            key = %crate::keys::to_hex(&key.public().to_bytes()),
                            "the admin key is not among the trusted admin keys: nodes will refuse what it signs"
                        );
                    }
                    Some(Arc::new(key))
                }
                None => None,
            };
            let http_error = |e: std::io::Error| AppError::Http { addr, reason: e.to_string() };
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(http_error)?;
            let bound = listener.local_addr().map_err(http_error)?;
            let context = HttpContext {
                node: self.node.client(),
                metrics: self.node.metrics(),
                admin_tokens: Arc::new(config.admin_tokens.clone()),
                admin_signer,
            };
            self.tasks.push(http::serve(listener, context, self.front_ends.clone()));
            tracing::info!(addr = %bound, "HTTP API and dashboard at http://{bound}/");
            self.http_addr = Some(bound);
        }
        let (tasks, mqtt_addr) =
            mqtt::start(config, self.node.client(), self.node.metrics(), self.front_ends.clone()).await?;
        self.tasks.extend(tasks);
        self.mqtt_addr = mqtt_addr;
        for (file, addr) in [("http", self.http_addr), ("mqtt", self.mqtt_addr)] {
            let path = config.data_dir.join(file);
            let written = match addr {
                Some(addr) => std::fs::write(&path, format!("{addr}\n")),
                None => std::fs::remove_file(&path).or_else(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => Ok(()),
                    _ => Err(e),
                }),
            };
            written.map_err(|source| AppError::AddressFile { path, source })?;
        }
        Ok(())
    }

    /// The node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.node.peer_id()
    }

    /// The node's dialable addresses with `/p2p/`, once it listens on at least one.
    pub async fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.node.listen_addrs().await
    }

    /// A client of the node for callers in the same process.
    pub fn client(&self) -> NodeClient {
        self.node.client()
    }

    /// The node's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.node.metrics()
    }

    /// Where the HTTP API listens, if it does.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Where the embedded MQTT broker listens, if it does.
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.mqtt_addr
    }

    /// Stops the front ends, then the node, in the order the module describes; an error when
    /// the node's final flush failed.
    pub async fn shutdown(self) -> Result<(), AppError> {
        self.front_ends.cancel();
        let deadline = tokio::time::Instant::now() + FRONT_END_GRACE;
        for mut task in self.tasks {
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(Err(error)) => tracing::error!(%error, "a front end ended abnormally"),
                Ok(Ok(())) => {}
                Err(_) => {
                    tracing::warn!("a front end did not stop in time; aborting it");
                    task.abort();
                }
            }
        }
        Ok(self.node.shutdown().await?)
    }
}
