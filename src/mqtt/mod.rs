//! MQTT ingest: an embedded broker for meters and gateways, or a subscription to an existing
//! broker. Readings go through the node like any client's; a reading is acknowledged (PUBACK)
//! only once it is durable.
//!
//! - [`payload`]: the topics (`hydromesh/meters/{meter}/reading`, wmbusmeters' `wmbusmeters/#`,
//!   `hydromesh/meters/{meter}/command`) and their JSON.
//! - `broker`: the embedded MQTT 3.1.1 server (`--mqtt ADDR`, default 127.0.0.1:1883).
//! - `bridge`: the subscription to an existing broker (`--mqtt-broker mqtt://HOST:PORT`, which
//!   replaces the embedded broker).
//! - `batcher`: readings from every connection share ingest batches (and flushes); valve
//!   commands of each acknowledgement go back to subscribers on the command topic.
//!
//! Refused input (malformed JSON, unknown topics, oversized payloads or packets, protocol
//! errors) is counted as `hydromesh_refused_total{source="mqtt",reason=…}` and logged once per
//! client and reason; readings the node rejects (its validation rules) are acknowledged, counted
//! by the node and logged the same way.

mod acks;
mod batcher;
mod bridge;
mod broker;
mod codec;
pub mod payload;
mod topic;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use bridge::BrokerUrl;
pub use broker::{MAX_CONNECTIONS, MAX_PACKET_BYTES};

use crate::config::Config;
use crate::metrics::{LogOnce, Metrics};
use crate::node::NodeClient;

/// How long, when stopping, MQTT clients may wait for the acknowledgement of what is being
/// stored: within the application's front-end grace ([`crate::app`] checks it).
pub const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Valve commands waiting to be published.
const COMMAND_QUEUE: usize = 4096;

/// Why MQTT ingest could not start.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// The embedded broker's address could not be used.
    #[error("cannot serve MQTT on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// `--mqtt-broker` is not a usable URL.
    #[error("--mqtt-broker `{url}`: {reason}")]
    BrokerUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Starts what the configuration asks for, and returns the tasks to wait for at shutdown and
/// the embedded broker's address.
pub async fn start(
    config: &Config,
    node: NodeClient,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> Result<(Vec<JoinHandle<()>>, Option<SocketAddr>), MqttError> {
    let log = Arc::new(LogOnce::default());
    if let Some(url) = &config.mqtt_broker {
        let url = BrokerUrl::parse(url, &config.name)?;
        if config.mqtt.is_some() {
            tracing::info!("--mqtt-broker is set: the embedded MQTT broker is not started");
        }
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE);
        let (chunks, batcher) = batcher::start(node, commands_tx, log.clone(), cancel.clone());
        let mut tasks = bridge::start(url, chunks, commands_rx, metrics, log, cancel);
        tasks.push(batcher);
        return Ok((tasks, None));
    }
    let Some(addr) = config.mqtt else {
        return Ok((Vec::new(), None));
    };
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|source| MqttError::Bind { addr, source })?;
    let bound = listener.local_addr().map_err(|source| MqttError::Bind { addr, source })?;
    let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE);
    let (chunks, batcher) = batcher::start(node, commands_tx, log.clone(), cancel.clone());
    let shared = broker::Shared { batcher: chunks, metrics, log, registry: Arc::default() };
    let mut tasks = broker::serve(listener, shared, commands_rx, cancel);
    tasks.push(batcher);
    tracing::info!(addr = %bound, "MQTT broker at mqtt://{bound}");
    Ok((tasks, Some(bound)))
}
