//! The fog node core: [`Node::spawn`] opens the store, loads the local meter state, builds the
//! swarm and starts the event loop that owns it; the [`NodeHandle`] gives the node's identity,
//! addresses and an in-process [`NodeClient`], and shuts it down in order. The core knows no
//! front end: HTTP and MQTT are started beside it by the application ([`crate::app`]).

mod answers;
mod dialer;
mod event_loop;
mod handoff;
mod identity;
mod local;
pub mod status;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hydromesh_proto::{ingest, query, Reading};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use event_loop::AskError;

use crate::config::{Config, ConfigError};
use crate::ingest::{self as writer, IngestError, LocalMeters, LocalSnapshot, Pipeline};
use crate::mesh::{self, Mesh};
use crate::metrics::Metrics;
use crate::p2p::{self, behaviour::Behaviour, SwarmKey, TransportError};
use crate::store::{Store, StoreError};

/// How long shutdown waits for in-flight requests before the store is flushed regardless.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why a node could not start, or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration is not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data folder or a file in it could not be used.
    #[error("cannot use data dir {path}: {source}")]
    DataDir {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The identity key file is not a key.
    #[error("identity key {path} is unreadable: {reason}")]
    Identity {
        /// The key file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The store could not be opened or flushed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The ingest writer could not start or stop.
    #[error("ingest writer: {0}")]
    Ingest(String),
    /// The network could not be set up.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The private mesh's key cannot be used.
    #[error(transparent)]
    SwarmKey(#[from] crate::p2p::SwarmKeyError),
    /// A gossipsub topic could not be subscribed to.
    #[error("cannot subscribe to {topic}: {reason}")]
    Subscribe {
        /// The topic.
        topic: String,
        /// Why.
        reason: String,
    },
    /// A listen address could not be used.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// A task of the node failed.
    #[error("a node task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl From<IngestError> for NodeError {
    fn from(error: IngestError) -> Self {
        match error {
            IngestError::Storage(error) => NodeError::Store(error),
            error => NodeError::Ingest(error.to_string()),
        }
    }
}

/// Starts fog nodes.
pub struct Node;

impl Node {
    /// Starts a node: checks its configuration, opens its store, listens, dials the bootstrap
    /// peers, and runs until [`NodeHandle::shutdown`].
    pub async fn spawn(config: Config) -> Result<NodeHandle, NodeError> {
        config.validate()?;
        let (config, swarm_key) = private_mesh(config)?;
        check_ports_free(&config.listen)?;
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|source| NodeError::DataDir { path: config.data_dir.clone(), source })?;
        let keypair = identity::load_or_create(&config.data_dir)?;
        let peer_id = keypair.public().to_peer_id();
        let config = Arc::new(config);
        let (store, meters) = {
            let (dir, settings) = (
                config.data_dir.join("db"),
                writer::Settings { burst_flow_lph: config.burst_flow_lph, top_k: config.top_k },
            );
            tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
                let store = Store::open(&dir)?;
                let meters = LocalMeters::load(&store, settings)?;
                Ok((Arc::new(store), meters))
            })
            .await??
        };
        let mesh = restore_mesh(peer_id, &config, &store)?;
        let metrics = Arc::new(Metrics::new());
        let (inputs_tx, inputs) = watch::channel(Arc::new(mesh.rationing_inputs(crate::clock::now_ms())));
        let (snapshot_tx, snapshot) = watch::channel(Arc::new(meters.snapshot()));
        let (accepted, _) = broadcast::channel(1024);
        let (arrivals_tx, arrivals) = mpsc::channel(handoff::MAX_QUEUED_ARRIVALS);
        let channels = writer::Channels {
            inputs: inputs.clone(),
            snapshot: snapshot_tx,
            accepted: accepted.clone(),
            metrics: metrics.clone(),
            arrivals: arrivals_tx,
        };
        let pipeline =
            Pipeline::start(store.clone(), meters, config.ingest_queue_batches, config.retain_raw, channels)
                .map_err(|e| NodeError::Ingest(format!("cannot start the ingest thread: {e}")))?;
        let status_words = Arc::new(status::StatusWords::default());
        let local = local::Local::new(
            peer_id,
            store.clone(),
            snapshot.clone(),
            inputs,
            accepted,
            status_words.clone(),
        );
        let settings = p2p::behaviour::Settings {
            mdns: config.mdns,
            max_incoming_connections: config.max_incoming_connections,
            gossip_heartbeat: config.gossip_heartbeat,
            // Twice per republish interval (30 s by default), at least 5 s apart: a cut link is
            // found within about a republish interval, and a busy node is not mistaken for a
            // dead one.
            ping_interval: (config.republish_interval / 2).max(Duration::from_secs(5)),
        };
        let behaviour = Behaviour::new(&keypair, &settings)?;
        let swarm = p2p::build_swarm(keypair.clone(), config.idle_connection_timeout, behaviour, swarm_key)?;
        let (addrs_tx, addrs) = watch::channel(Vec::new());
        let commands = mpsc::channel(config.max_pending_requests);
        let client = NodeClient {
            commands: commands.0.clone(),
            snapshot,
            admission: pipeline.admission(),
            metrics: metrics.clone(),
            status_words,
        };
        let cancel = CancellationToken::new();
        let event_loop = event_loop::EventLoop::new(event_loop::Parts {
            config,
            keypair,
            swarm,
            store,
            mesh,
            local,
            pipeline,
            arrivals,
            snapshot: client.snapshot.clone(),
            inputs: inputs_tx,
            metrics: metrics.clone(),
            commands,
            addrs_tx,
            cancel: cancel.clone(),
        })?;
        let task = tokio::spawn(event_loop.run());
        Ok(NodeHandle { peer_id, addrs, cancel, task, client, metrics })
    }
}

/// The swarm key the configuration names, if any, and the configuration to run a private mesh
/// with: the default QUIC listener dropped (the key protects TCP only); QUIC addresses given
/// explicitly are refused.
fn private_mesh(mut config: Config) -> Result<(Config, Option<SwarmKey>), NodeError> {
    let Some(path) = &config.swarm_key else { return Ok((config, None)) };
    let key = SwarmKey::load(path)?;
    if config.listen == Config::default().listen {
        config.listen.retain(|addr| SwarmKey::check_addr(addr).is_ok());
    }
    for addr in config.listen.iter().chain(&config.bootstrap) {
        SwarmKey::check_addr(addr)?;
    }
    tracing::info!(fingerprint = %key.fingerprint(), "private mesh: only peers holding this swarm key can connect");
    Ok((config, Some(key)))
}

/// The mesh state saved on disk: summaries (stale until heard again) and the admin commands of
/// keys still trusted.
/// Refuses a listen address whose fixed port something else holds. libp2p binds its listeners
/// with `SO_REUSEPORT`, so a second node on a taken TCP port would otherwise start and share
/// the first one's incoming connections; a probe socket without that option finds the port
/// taken. Port 0 (any free port) is not checked.
fn check_ports_free(listen: &[Multiaddr]) -> Result<(), NodeError> {
    use libp2p::multiaddr::Protocol;
    for addr in listen {
        let (mut ip, mut tcp, mut udp) = (None, None, None);
        for protocol in addr.iter() {
            match protocol {
                Protocol::Ip4(v4) => ip = Some(std::net::IpAddr::V4(v4)),
                Protocol::Ip6(v6) => ip = Some(std::net::IpAddr::V6(v6)),
                Protocol::Tcp(port) => tcp = Some(port),
                Protocol::Udp(port) => udp = Some(port),
                _ => {}
            }
        }
        let taken = match (ip, tcp, udp) {
            (Some(ip), Some(port), _) if port != 0 => std::net::TcpListener::bind((ip, port)).err(),
            (Some(ip), None, Some(port)) if port != 0 => std::net::UdpSocket::bind((ip, port)).err(),
            _ => None,
        };
        if let Some(error) = taken {
            let reason = if error.kind() == std::io::ErrorKind::AddrInUse {
                "the port is in use (another hydromesh node, or another program, listens there): \
                 stop it or choose another port"
                    .to_owned()
            } else {
                error.to_string()
            };
            return Err(NodeError::Listen { addr: addr.clone(), reason });
        }
    }
    Ok(())
}

fn restore_mesh(peer_id: PeerId, config: &Config, store: &Store) -> Result<Mesh, NodeError> {
    if config.fog_nodes.is_empty() {
        tracing::warn!("no fog_nodes configured: any peer may join this mesh and publish figures");
    }
    let mut mesh = Mesh::new(
        peer_id,
        mesh::Settings {
            stale_after: config.stale_after,
            fog_nodes: config.fog_nodes.clone(),
            admin_keys: config.admin_keys.clone(),
            debt_grace: config.debt_grace,
            tariff: config.tariff.clone(),
        },
    );
    let now = std::time::Instant::now();
    for bytes in store.views()? {
        let restored = hydromesh_proto::decode(&bytes, hydromesh_proto::limits::MAX_SUMMARY_BYTES)
            .map_err(mesh::SummaryError::from)
            .and_then(|signed| mesh.merge_summary(signed, now, true));
        if let Err(error) = restored {
            tracing::warn!(%error, "dropping an unreadable saved summary");
        }
    }
    for bytes in store.commands()? {
        let restored = hydromesh_proto::decode(&bytes, hydromesh_proto::limits::MAX_COMMAND_BYTES)
            .map_err(|e| mesh::ControlError::Malformed(e.to_string()))
            .and_then(|signed| Ok((mesh.verify_command(&signed, None)?, signed)));
        match restored {
            Ok((command, signed)) => {
                mesh.apply_command(command, signed);
            }
            Err(error) => tracing::warn!(%error, "not restoring a saved admin command"),
        }
    }
    Ok(mesh)
}

/// A client of a node in the same process (HTTP, MQTT, embedders): the same questions and
/// readings as over libp2p, through the same checks and bounds.
#[derive(Clone)]
pub struct NodeClient {
    commands: mpsc::Sender<event_loop::Command>,
    snapshot: watch::Receiver<Arc<LocalSnapshot>>,
    admission: writer::Admission,
    metrics: Arc<Metrics>,
    status_words: Arc<status::StatusWords>,
}

/// How long an in-process client waits for a place in a full ingest queue before it is told
/// "busy": a fraction of the queue's worth of work, so that a client is slowed rather than
/// refused when places free up soon, and told "busy" when the node stays behind.
pub const INGEST_PATIENCE: Duration = Duration::from_millis(250);

/// A place for one batch in the node's ingest queue, taken before the batch is read (see
/// [`NodeClient::reserve_ingest`]).
pub struct IngestSlot {
    slot: writer::Slot,
    metrics: Arc<Metrics>,
}

impl IngestSlot {
    /// Sends the readings in the place taken; the answer comes once they are durable.
    pub async fn ingest(self, readings: Vec<Reading>) -> ingest::Response {
        acknowledged(self.slot.submit(readings), self.metrics).await
    }
}

impl NodeClient {
    /// Where front ends note the status words a meter sent that hydromesh does not know (its
    /// answers show them).
    pub fn status_words(&self) -> Arc<status::StatusWords> {
        self.status_words.clone()
    }

    /// Asks the node a question. An overloaded node answers [`query::Response::Busy`].
    pub async fn query(&self, request: query::Request) -> query::Response {
        let (reply, answer) = oneshot::channel();
        let stopping = || query::Response::Error("node is stopping".into());
        match self.commands.try_send(event_loop::Command::Query { request, reply }) {
            Ok(()) => answer.await.unwrap_or_else(|_| stopping()),
            Err(mpsc::error::TrySendError::Full(_)) => query::Response::Busy,
            Err(mpsc::error::TrySendError::Closed(_)) => stopping(),
        }
    }

    /// Takes a place for one batch in the ingest queue, before the batch is read or parsed,
    /// waiting at most [`INGEST_PATIENCE`] for one: an overloaded node answers busy here, so
    /// that refusing costs almost nothing, and a brief wait spares clients a retry.
    pub async fn reserve_ingest(&self) -> Result<IngestSlot, ingest::Response> {
        match self.admission.reserve(INGEST_PATIENCE).await {
            Ok(slot) => Ok(IngestSlot { slot, metrics: self.metrics.clone() }),
            Err(error) => Err(ingest_refusal(error)),
        }
    }

    /// Sends readings; the answer comes once they are durable.
    pub async fn ingest(&self, readings: Vec<Reading>) -> ingest::Response {
        match self.reserve_ingest().await {
            Ok(slot) => slot.ingest(readings).await,
            Err(refusal) => refusal,
        }
    }

    /// What the node knows of its own meters now (meter count, totals, blocks, alerts).
    pub fn local_snapshot(&self) -> Arc<LocalSnapshot> {
        self.snapshot.borrow().clone()
    }
}

/// The answer to a batch queued (or refused) by the ingest writer, once it is durable; the
/// time to it is counted in the metrics.
fn acknowledged(
    queued: Result<oneshot::Receiver<Result<writer::Ack, IngestError>>, IngestError>,
    metrics: Arc<Metrics>,
) -> impl std::future::Future<Output = ingest::Response> {
    let started = std::time::Instant::now();
    async move {
        let ack = match queued {
            Ok(ack) => ack.await.unwrap_or(Err(IngestError::Stopped)),
            Err(error) => return ingest_refusal(error),
        };
        Metrics::observe(&metrics.ingest_batch_seconds, started.elapsed());
        match ack {
            Ok(ack) => ingest::Response::Done { outcomes: ack.outcomes, commands: ack.commands },
            Err(error) => ingest_refusal(error),
        }
    }
}

/// What a client is told when its batch was not stored.
fn ingest_refusal(error: IngestError) -> ingest::Response {
    match error {
        IngestError::Busy => ingest::Response::Busy { retry_after_ms: 100 },
        IngestError::Storage(error) => ingest::Response::Unavailable { reason: error.to_string() },
        error => ingest::Response::Refused { reason: error.to_string() },
    }
}

/// A running node.
pub struct NodeHandle {
    peer_id: PeerId,
    addrs: watch::Receiver<Vec<Multiaddr>>,
    cancel: CancellationToken,
    task: JoinHandle<Result<(), NodeError>>,
    client: NodeClient,
    metrics: Arc<Metrics>,
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

    /// A client of the node for callers in the same process.
    pub fn client(&self) -> NodeClient {
        self.client.clone()
    }

    /// Stops the node in order (stop accepting, finish in-flight requests for at most
    /// [`SHUTDOWN_GRACE`], flush the store) and returns once it has stopped: an error when
    /// the final flush failed.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        self.cancel.cancel();
        self.join().await
    }

    /// Waits until the node has stopped.
    pub async fn join(self) -> Result<(), NodeError> {
        self.task.await?
    }
}
