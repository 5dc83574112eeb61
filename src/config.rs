//! Node configuration: one struct, every field documented, defaults that work on a laptop.

use std::path::PathBuf;
use std::time::Duration;

use libp2p::identity::ed25519;
use libp2p::Multiaddr;

use crate::domain::rules::Tariff;

/// Everything a fog node needs to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Folder of the node's identity key (`identity.key`), its database (`db/`) and its
    /// dialable addresses (`addrs`). Created if missing.
    pub data_dir: PathBuf,
    /// Addresses to listen on. Default: TCP and QUIC on port 4001, all interfaces.
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start, with or without `/p2p/<peer id>`.
    pub bootstrap: Vec<Multiaddr>,
    /// A label shown in answers (default: the host name, or `hydromesh`).
    pub name: String,
    /// Discover peers on the LAN with mDNS (never finds loopback-only nodes).
    pub mdns: bool,
    /// Publish the summary at least this often, even with no change (liveness).
    pub republish_interval: Duration,
    /// Shortest time between two summaries after a change (debounce).
    pub publish_debounce: Duration,
    /// A node not heard from within this is reported stale.
    pub stale_after: Duration,
    /// A node not heard from within this is dropped from the view.
    pub forget_after: Duration,
    /// Gossipsub heartbeat.
    pub gossip_heartbeat: Duration,
    /// How many top meters each summary carries: global top-N answers are exact for N up to
    /// this; larger N are computed by asking every node.
    pub top_k: usize,
    /// Ingest batches waiting for the store before clients are told "busy".
    pub ingest_queue_batches: usize,
    /// Requests being answered at once before clients are told "busy".
    pub max_pending_requests: usize,
    /// Most inbound connections at once (clients and peers); more are refused.
    pub max_incoming_connections: u32,
    /// Close connections idle for this long.
    pub idle_connection_timeout: Duration,
    /// Admin public keys whose signed commands this node applies.
    pub admin_keys: Vec<ed25519::PublicKey>,
    /// The increasing-block tariff bills are computed with.
    pub tariff: Tariff,
    /// Flow above this, in litres per hour, for 30 minutes or more is a burst.
    pub burst_flow_lph: u32,
    /// A closed period's bill unpaid this long after the period ended cuts the meter (debt).
    pub debt_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("hydromesh-data"),
            listen: vec![
                "/ip4/0.0.0.0/tcp/4001".parse().unwrap_or_else(|_| Multiaddr::empty()),
                "/ip4/0.0.0.0/udp/4001/quic-v1".parse().unwrap_or_else(|_| Multiaddr::empty()),
            ],
            bootstrap: Vec::new(),
            name: default_name(),
            mdns: false,
            republish_interval: Duration::from_secs(10),
            publish_debounce: Duration::from_millis(200),
            stale_after: Duration::from_secs(35),
            forget_after: Duration::from_secs(24 * 3600),
            gossip_heartbeat: Duration::from_millis(500),
            top_k: 100,
            ingest_queue_batches: 64,
            max_pending_requests: 256,
            max_incoming_connections: 1024,
            idle_connection_timeout: Duration::from_secs(3600),
            admin_keys: Vec::new(),
            tariff: Tariff::default(),
            burst_flow_lph: 1200,
            debt_grace: Duration::from_secs(10 * 86_400),
        }
    }
}

fn default_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "hydromesh".to_owned())
}
