//! A running fog node: [`Node::spawn`] opens the store, builds the swarm and starts the event
//! loop that owns it; the [`NodeHandle`] gives the node's identity and addresses and shuts it
//! down in order.

mod behaviour;
mod event_loop;
mod identity;
mod ingest_pipeline;

pub use event_loop::LocalClient;

use std::sync::Arc;

use libp2p::{Multiaddr, PeerId};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
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
    /// A listen address could not be used.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
}

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
        let event_loop = event_loop::EventLoop::new(config, keypair, store, addrs_tx, cancel.clone())?;
        let local = event_loop.local_client();
        let task = tokio::spawn(event_loop.run());
        Ok(NodeHandle { peer_id, addrs: addrs_rx, cancel, task, local })
    }
}

/// A running node.
pub struct NodeHandle {
    peer_id: PeerId,
    addrs: watch::Receiver<Vec<Multiaddr>>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
    local: LocalClient,
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

    /// Waits until the node has stopped.
    pub async fn join(self) {
        if let Err(error) = self.task.await {
            tracing::error!(%error, "node task ended abnormally");
        }
    }
}
