//! A running fog node: [`Node::spawn`] opens the store, builds the swarm and starts the event
//! loop that owns it; the [`NodeHandle`] gives the node's identity and addresses and shuts it
//! down in order.

mod behaviour;
mod event_loop;
mod identity;
mod ingest_pipeline;

pub use event_loop::LocalClient;

use std::net::SocketAddr;
use std::sync::Arc;

use libp2p::{Multiaddr, PeerId};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The data folder or a file in it could not be used.
    #[error("cannot use data dir {path}: {source}")]
    DataDir {
        /// The path.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The identity key file is not a key.
    #[error("identity key {path} is unreadable: {reason}")]
    Identity {
        /// The key file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The network could not be set up.
    #[error("{0}")]
    Network(String),
    /// The HTTP server or MQTT ingest could not start.
    #[error("{0}")]
    Service(String),
    /// A listen address could not be used.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
}

/// How long HTTP and MQTT get to finish with their clients at shutdown.
pub const SERVICE_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Starts fog nodes.
pub struct Node;

impl Node {
    /// Starts a node: opens its store, listens, dials the bootstrap peers, and runs until
    /// [`NodeHandle::shutdown`].
    pub async fn spawn(config: Config) -> Result<NodeHandle, NodeError> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|source| NodeError::DataDir { path: config.data_dir.clone(), source })?;
        let keypair = identity::load_or_create(&config.data_dir)?;
        let peer_id = keypair.public().to_peer_id();
        let db_dir = config.data_dir.join("db");
        let burst_flow_lph = config.burst_flow_lph;
        let store = Arc::new(
            tokio::task::spawn_blocking(move || Store::open(&db_dir, burst_flow_lph))
                .await
                .map_err(|e| NodeError::Network(e.to_string()))??,
        );
        let (addrs_tx, addrs_rx) = watch::channel(Vec::new());
        let cancel = CancellationToken::new();
        let metrics = Arc::new(Metrics::new());
        let services = config.clone();
        let event_loop =
            event_loop::EventLoop::new(config, keypair, store, addrs_tx, metrics.clone(), cancel.clone())?;
        let local = event_loop.local_client();
        let mut tasks = vec![tokio::spawn(event_loop.run())];
        let started = start_services(&services, &local, &metrics, &cancel).await;
        let (service_tasks, http_addr, mqtt_addr) = match started {
            Ok(started) => started,
            Err(error) => {
                // Stop the event loop already running before reporting the failure.
                cancel.cancel();
                for task in tasks {
                    let _ = task.await;
                }
                return Err(error);
            }
        };
        tasks.extend(service_tasks);
        Ok(NodeHandle { peer_id, addrs: addrs_rx, cancel, tasks, local, metrics, http_addr, mqtt_addr })
    }
}

/// A running node.
pub struct NodeHandle {
    peer_id: PeerId,
    addrs: watch::Receiver<Vec<Multiaddr>>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    local: LocalClient,
    metrics: Arc<Metrics>,
    http_addr: Option<SocketAddr>,
    mqtt_addr: Option<SocketAddr>,
}

type Services = (Vec<JoinHandle<()>>, Option<SocketAddr>, Option<SocketAddr>);

/// Starts the HTTP server and MQTT ingest the configuration asks for, and writes their bound
/// addresses to `DATA_DIR/http` and `DATA_DIR/mqtt`.
async fn start_services(
    config: &Config,
    local: &LocalClient,
    metrics: &Arc<Metrics>,
    cancel: &CancellationToken,
) -> Result<Services, NodeError> {
    let mut tasks = Vec::new();
    let mut http_addr = None;
    if let Some(addr) = config.http {
        // Token-authenticated admin actions are signed with this key; a configured key that
        // cannot be used stops the node rather than leaving them refused.
        let admin_signer = match &config.admin_key_file {
            Some(path) => {
                let key =
                    crate::control::read_secret_key(path).map_err(|e| NodeError::Service(e.to_string()))?;
                if !config.admin_keys.contains(&key.public()) {
                    tracing::warn!(
                        key = %crate::control::to_hex(&key.public().to_bytes()),
                        "the admin key is not among the trusted admin keys: nodes will refuse what it signs"
                    );
                }
                Some(Arc::new(key))
            }
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| NodeError::Service(format!("cannot serve HTTP on {addr}: {e}")))?;
        let bound = listener.local_addr().map_err(|e| NodeError::Service(e.to_string()))?;
        let context = crate::http::HttpContext {
            node: local.clone(),
            metrics: metrics.clone(),
            admin_tokens: Arc::new(config.admin_tokens.clone()),
            admin_signer,
        };
        tasks.push(crate::http::serve(listener, context, cancel.clone()));
        tracing::info!(addr = %bound, "HTTP API and dashboard at http://{bound}/");
        http_addr = Some(bound);
    }
    let (mqtt_tasks, mqtt_addr) =
        crate::mqtt::start(config, local.clone(), metrics.clone(), cancel.clone()).await?;
    tasks.extend(mqtt_tasks);
    for (file, addr) in [("http", http_addr), ("mqtt", mqtt_addr)] {
        let path = config.data_dir.join(file);
        let written = match addr {
            Some(addr) => std::fs::write(&path, format!("{addr}\n")),
            None => std::fs::remove_file(&path).or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            }),
        };
        written.map_err(|source| NodeError::DataDir { path, source })?;
    }
    Ok((tasks, http_addr, mqtt_addr))
}

impl NodeHandle {
    /// The node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The node's dialable addresses with `/p2p/`, once it listens on at least one.
    pub async fn listen_addrs(&self) -> Vec<Multiaddr> {
        let mut addrs = self.addrs.clone();
        let addrs = addrs.wait_for(|addrs| !addrs.is_empty()).await.map(|addrs| addrs.clone());
        addrs.unwrap_or_default()
    }

    /// The node's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Where the HTTP API listens, if it does.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Where the embedded MQTT broker listens, if it does.
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.mqtt_addr
    }

    /// A client of the node for callers in the same process (HTTP, MQTT, embedders).
    pub fn client(&self) -> LocalClient {
        self.local.clone()
    }

    /// A token cancelled when the node is asked to stop (for tying other tasks to it).
    pub fn cancellation(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Stops the node in order (stop accepting, finish in-flight requests, flush the store)
    /// and returns once every task has ended.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.join().await;
    }

    /// Waits until the node and its services have stopped. The event loop (which flushes the
    /// store) is always waited for; a service still draining a slow client after
    /// [`SERVICE_STOP_GRACE`] is aborted.
    pub async fn join(self) {
        let mut tasks = self.tasks.into_iter();
        if let Some(event_loop) = tasks.next() {
            if let Err(error) = event_loop.await {
                tracing::error!(%error, "node task ended abnormally");
            }
        }
        for mut task in tasks {
            match tokio::time::timeout(SERVICE_STOP_GRACE, &mut task).await {
                Ok(Err(error)) => tracing::error!(%error, "service task ended abnormally"),
                Ok(Ok(())) => {}
                Err(_) => {
                    tracing::warn!("a service did not stop in time; aborting it");
                    task.abort();
                }
            }
        }
    }
}
