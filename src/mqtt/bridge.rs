//! A subscription to an existing MQTT broker (`--mqtt-broker mqtt://HOST:PORT`), for sites that
//! already run one: the node subscribes to the reading topics at QoS 1, acknowledges each
//! message only once its reading is stored (manual acks), and publishes valve commands back.
//!
//! The session is persistent (clean session off, a stable client id: `hydromesh-NAME` unless
//! the URL says `?client_id=ID`), so the broker keeps the messages that arrive while the node
//! is away and sends again those it never acknowledged. The connection is retried with
//! exponential backoff. Messages larger than [`MAX_INCOMING_BYTES`] break the connection: keep
//! the broker's `message_size_limit` below it.
//!
//! A broker holds only so many messages for an absent client and drops the rest (mosquitto: 1,000
//! by default). Where the broker says how many it dropped (mosquitto's retained
//! [`DROPPED_TOPIC`]), the node warns once it sees the count grow, and at its first sight of a
//! count above zero: readings may have been lost before they reached it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hydromesh_proto::ingest::MeterCommand;
use rumqttc::mqttbytes::v4::{Packet, Publish};
use rumqttc::mqttbytes::QoS;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::acks::{AckQueue, AckState};
use super::batcher::{Chunk, Completion, Gathered, MAX_CHUNK_READINGS};
use super::payload::{self, Refusal, SUBSCRIPTIONS};
use super::{LogOnce, MqttError};
use crate::metrics::Metrics;

/// Where mosquitto publishes how many messages it dropped since it started (queue and in-flight
/// limits), retained; other brokers have no such topic, and the subscription to it is optional.
pub const DROPPED_TOPIC: &str = "$SYS/broker/publish/messages/dropped";

/// Largest message accepted from the broker, in bytes.
pub const MAX_INCOMING_BYTES: usize = 1024 * 1024;
/// Messages from the broker awaiting storage before the node stops taking more.
const MAX_PENDING: usize = 1024;
/// Requests (acknowledgements, commands, subscriptions) queued for the client's event loop.
const REQUEST_QUEUE: usize = 8192;
/// Keep-alive asked of the broker.
const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Messages in flight each way.
const INFLIGHT: u16 = 100;
/// Reconnection delays: from the first to the longest.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long the client may take to say DISCONNECT when stopping.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How soon acknowledgements that did not fit the request queue are tried again.
const ACK_RETRY: Duration = Duration::from_millis(10);

/// Where the broker is and who the node is to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerUrl {
    /// Host name or address.
    pub host: String,
    /// Port (1883 when the URL names none).
    pub port: u16,
    /// The node's client id.
    pub client_id: String,
}

impl BrokerUrl {
    /// Parses `mqtt://HOST[:PORT][?client_id=ID]` (`tcp://` is accepted too); the client id
    /// defaults to `hydromesh-` and the node name.
    pub fn parse(url: &str, node_name: &str) -> Result<BrokerUrl, MqttError> {
        let invalid = |why: &str| MqttError::BrokerUrl { url: url.to_owned(), reason: why.to_owned() };
        let rest = url
            .trim()
            .strip_prefix("mqtt://")
            .or_else(|| url.trim().strip_prefix("tcp://"))
            .ok_or_else(|| invalid("expected mqtt://HOST:PORT (TLS and websockets are not supported)"))?;
        let (authority, query) = match rest.split_once('?') {
            Some((authority, query)) => (authority, Some(query)),
            None => (rest, None),
        };
        let authority = authority.strip_suffix('/').unwrap_or(authority);
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            // An IPv6 address: [::1]:1883
            let (host, after) = bracketed.split_once(']').ok_or_else(|| invalid("unclosed ["))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() || host.contains(['/', '@', ' ']) {
            return Err(invalid("no host name (user names and paths are not supported)"));
        }
        let port = match port {
            Some(port) => port.parse().ok().filter(|port| *port > 0).ok_or_else(|| invalid("bad port"))?,
            None => 1883,
        };
        let mut client_id = default_client_id(node_name);
        for pair in query.unwrap_or_default().split('&').filter(|pair| !pair.is_empty()) {
            match pair.split_once('=') {
                Some(("client_id", id)) if !id.is_empty() && id.len() <= 128 => client_id = id.to_owned(),
                _ => return Err(invalid("the only option is ?client_id=ID (1 to 128 characters)")),
            }
        }
        Ok(BrokerUrl { host: host.to_owned(), port, client_id })
    }
}

fn default_client_id(node_name: &str) -> String {
    let name: String = node_name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .take(64)
        .collect();
    format!("hydromesh-{name}")
}

/// Starts the subscription: one task drives the MQTT client, one matches messages with their
/// acknowledgements.
pub fn start(
    url: BrokerUrl,
    chunks: mpsc::Sender<Chunk>,
    commands: mpsc::Receiver<MeterCommand>,
    metrics: Arc<Metrics>,
    log: Arc<LogOnce>,
    cancel: CancellationToken,
) -> Vec<JoinHandle<()>> {
    let mut options = MqttOptions::new(url.client_id.clone(), url.host.clone(), url.port);
    options
        .set_keep_alive(KEEP_ALIVE)
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_inflight(INFLIGHT)
        .set_max_packet_size(MAX_INCOMING_BYTES, MAX_INCOMING_BYTES)
        .set_request_channel_capacity(REQUEST_QUEUE);
    let (client, eventloop) = AsyncClient::new(options, REQUEST_QUEUE);
    let (publishes_tx, publishes_rx) = mpsc::channel(MAX_PENDING);
    let handler_done = CancellationToken::new();
    let source: Arc<str> = format!("broker {}:{}", url.host, url.port).into();
    tracing::info!(broker = %source, client_id = %url.client_id, "subscribing to an existing MQTT broker");
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let handler = Handler {
        client: client.clone(),
        source: source.clone(),
        chunks,
        metrics,
        log,
        acks: AckQueue::default(),
        connection: 0,
        unacked: VecDeque::new(),
        stalled: None,
        done_tx,
    };
    let poll = Poll {
        client,
        eventloop,
        source,
        publishes: publishes_tx,
        connections: 0,
        dropped: None,
        metrics: handler.metrics.clone(),
    };
    vec![
        tokio::spawn(poll.run(cancel.clone(), handler_done.clone())),
        tokio::spawn(handler.run(publishes_rx, done_rx, commands, cancel, handler_done)),
    ]
}

/// Drives rumqttc's event loop, which must be polled without pause (its `poll` is not safe to
/// cancel, so it has a task of its own).
struct Poll {
    client: AsyncClient,
    eventloop: EventLoop,
    source: Arc<str>,
    /// Publishes with the number of the connection they arrived on.
    publishes: mpsc::Sender<(u64, Publish)>,
    /// Connections made so far.
    connections: u64,
    /// The broker's count of dropped messages, as last seen.
    dropped: Option<u64>,
    metrics: Arc<Metrics>,
}

impl Poll {
    async fn run(mut self, cancel: CancellationToken, handler_done: CancellationToken) {
        let mut backoff = BACKOFF_FIRST;
        let mut connected = false;
        loop {
            let event = tokio::select! {
                // Once the handler has sent its last acknowledgements, say goodbye.
                () = handler_done.cancelled() => break,
                event = self.eventloop.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                    backoff = BACKOFF_FIRST;
                    connected = true;
                    self.connections += 1;
                    tracing::info!(broker = %self.source, session_present = connack.session_present, "connected to the MQTT broker");
                    // Subscribing again is harmless when the session kept the subscriptions.
                    let client = self.client.clone();
                    tokio::spawn(async move {
                        // The readings' filters first (their refusal is reported), then the
                        // broker's count of dropped messages (at most once: it is a figure).
                        let filters = SUBSCRIPTIONS
                            .iter()
                            .map(|filter| {
                                rumqttc::SubscribeFilter::new((*filter).to_owned(), QoS::AtLeastOnce)
                            })
                            .chain([rumqttc::SubscribeFilter::new(
                                DROPPED_TOPIC.to_owned(),
                                QoS::AtMostOnce,
                            )]);
                        if let Err(error) = client.subscribe_many(filters).await {
                            tracing::warn!(%error, "cannot subscribe to the reading topics");
                        }
                    });
                }
                Ok(Event::Incoming(Packet::Publish(publish))) if publish.topic == DROPPED_TOPIC => {
                    self.on_dropped_count(&publish.payload);
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    // Waits when the handler has too much awaiting storage: backpressure on
                    // the broker through its in-flight window.
                    if self.publishes.send((self.connections, publish)).await.is_err() {
                        // The handler stopped: the broker keeps the message for next time.
                        tracing::debug!("MQTT message arrived while stopping; left to the broker");
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(suback))) => {
                    if suback
                        .return_codes
                        .iter()
                        .take(SUBSCRIPTIONS.len())
                        .any(|code| matches!(code, rumqttc::SubscribeReasonCode::Failure))
                    {
                        tracing::warn!(broker = %self.source, "the MQTT broker refused a subscription to the reading topics");
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    if cancel.is_cancelled() {
                        break;
                    }
                    if connected {
                        tracing::warn!(broker = %self.source, %error, "lost the MQTT broker; reconnecting");
                    } else if backoff == BACKOFF_FIRST {
                        tracing::warn!(broker = %self.source, %error, "cannot reach the MQTT broker; retrying");
                    } else {
                        tracing::debug!(broker = %self.source, %error, ?backoff, "cannot reach the MQTT broker");
                    }
                    connected = false;
                    tokio::select! {
                        () = handler_done.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        self.disconnect().await;
        tracing::debug!("MQTT broker subscription stopped");
    }

    /// Takes in the broker's count of dropped messages, and warns when it says readings may
    /// have been lost upstream.
    fn on_dropped_count(&mut self, payload: &[u8]) {
        let Some(count) = std::str::from_utf8(payload).ok().and_then(|text| text.trim().parse::<u64>().ok())
        else {
            return;
        };
        let lost = match self.dropped {
            None => count,
            // A lower count: the broker started again.
            Some(seen) if count < seen => count,
            Some(seen) => count - seen,
        };
        if lost > 0 {
            tracing::warn!(
                broker = %self.source,
                dropped = lost,
                since_start = count,
                "the MQTT broker dropped messages (its queue limits): readings sent while this node was away may be lost; \
                 raise the broker's max_queued_messages (see the README)"
            );
        }
        self.dropped = Some(count);
        self.metrics.mqtt_broker_dropped.set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Sends the acknowledgements still queued and a DISCONNECT, for a bounded time.
    async fn disconnect(&mut self) {
        if self.client.try_disconnect().is_err() {
            return;
        }
        let _ = tokio::time::timeout(DISCONNECT_TIMEOUT, async {
            loop {
                match self.eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
}

/// Turns messages into readings and acknowledges each once stored, in order.
struct Handler {
    client: AsyncClient,
    source: Arc<str>,
    chunks: mpsc::Sender<Chunk>,
    metrics: Arc<Metrics>,
    log: Arc<LogOnce>,
    acks: AckQueue,
    /// The connection the latest publish arrived on.
    connection: u64,
    /// Acknowledgements due that did not fit the client's request queue yet.
    unacked: VecDeque<Publish>,
    stalled: Option<Chunk>,
    done_tx: mpsc::UnboundedSender<Completion>,
}

impl Handler {
    async fn run(
        mut self,
        mut publishes: mpsc::Receiver<(u64, Publish)>,
        mut done: mpsc::UnboundedReceiver<Completion>,
        mut commands: mpsc::Receiver<MeterCommand>,
        cancel: CancellationToken,
        handler_done: CancellationToken,
    ) {
        let mut draining: Option<Instant> = None;
        let mut commands_open = true;
        // A handle of its own: a permit borrows the sender while the handler is changed.
        let chunks = self.chunks.clone();
        loop {
            self.flush_acks();
            if draining.is_some() && self.acks.is_empty() && self.unacked.is_empty() {
                break;
            }
            let can_take = draining.is_none() && self.stalled.is_none() && self.acks.len() < MAX_PENDING;
            tokio::select! {
                () = cancel.cancelled(), if draining.is_none() => {
                    draining = Some(Instant::now() + super::DRAIN_GRACE);
                    if let Some(chunk) = self.stalled.take() {
                        self.acks.complete(&chunk.seqs, false);
                    }
                    // Messages not taken yet stay with the broker.
                    publishes.close();
                }
                () = tokio::time::sleep_until(draining.unwrap_or_else(Instant::now)), if draining.is_some() => break,
                Some(completion) = done.recv() => self.acks.complete(&completion.seqs, completion.stored),
                Some(publish) = publishes.recv(), if can_take => {
                    let mut chunk = Gathered::default();
                    self.take(publish, &mut chunk);
                    while chunk.len() < MAX_CHUNK_READINGS && self.acks.len() < MAX_PENDING {
                        match publishes.try_recv() {
                            Ok(publish) => self.take(publish, &mut chunk),
                            Err(_) => break,
                        }
                    }
                    self.submit(chunk);
                }
                permit = chunks.reserve(), if self.stalled.is_some() => {
                    match (permit, self.stalled.take()) {
                        (Ok(permit), Some(chunk)) => permit.send(chunk),
                        (Err(_), Some(chunk)) => self.acks.complete(&chunk.seqs, false),
                        (_, None) => {}
                    }
                }
                command = commands.recv(), if commands_open => match command {
                    Some(command) => self.publish_command(&command),
                    None => commands_open = false,
                },
                () = tokio::time::sleep(ACK_RETRY), if !self.unacked.is_empty() => {}
            }
        }
        handler_done.cancel();
    }

    fn take(&mut self, (connection, publish): (u64, Publish), chunk: &mut Gathered) {
        if connection != self.connection {
            // A new connection: acknowledgements still owed on the old one must not be sent on
            // this one (their packet ids may now name other messages); the broker resends those
            // messages, which are stored again as duplicates and acknowledged then.
            self.connection = connection;
            self.acks.void_all();
            self.unacked.clear();
        }
        let ack = publish.qos != QoS::AtMostOnce;
        match payload::parse_publish(&publish.topic, &publish.payload) {
            Ok(parsed) => {
                let seq = ack.then(|| {
                    self.acks.push(publish.pkid, publish.qos == QoS::ExactlyOnce, AckState::Waiting)
                });
                chunk.push(parsed, seq);
            }
            Err(refusal) => {
                self.refuse(&refusal);
                if ack {
                    self.acks.push(publish.pkid, publish.qos == QoS::ExactlyOnce, AckState::Ready);
                }
            }
        }
    }

    fn refuse(&self, refusal: &Refusal) {
        self.metrics.refuse("mqtt", refusal.reason());
        if self.log.first(&self.source, refusal.reason()) {
            tracing::warn!(broker = %self.source, %refusal, "refused an MQTT message (logged once per reason)");
        } else {
            tracing::debug!(broker = %self.source, %refusal, "refused an MQTT message");
        }
    }

    fn submit(&mut self, mut chunk: Gathered) {
        let Some(chunk) = chunk.take_chunk(self.source.clone(), self.done_tx.clone()) else {
            return;
        };
        match self.chunks.try_send(chunk) {
            Ok(()) => {}
            Err(TrySendError::Full(chunk)) => self.stalled = Some(chunk),
            Err(TrySendError::Closed(chunk)) => self.acks.complete(&chunk.seqs, false),
        }
    }

    /// Acknowledges, in order, the messages now stored (or refused).
    fn flush_acks(&mut self) {
        while let Some(first) = self.unacked.front() {
            if self.client.try_ack(first).is_err() {
                return;
            }
            self.unacked.pop_front();
        }
        while let Some(ready) = self.acks.pop_ready() {
            match ready {
                Ok(ack) => {
                    let qos = if ack.rec { QoS::ExactlyOnce } else { QoS::AtLeastOnce };
                    let mut publish = Publish::from_bytes(String::new(), qos, Bytes::new());
                    publish.pkid = ack.pkid;
                    if self.client.try_ack(&publish).is_err() {
                        // The client's queue is full: keep the order, try again shortly.
                        self.unacked.push_back(publish);
                        return;
                    }
                }
                Err(()) => {
                    // Not stored: never acknowledged, so the broker sends it again when the
                    // session resumes. Later messages must not wait behind it.
                    if let Some(ack) = self.acks.skip_failed() {
                        if self.log.first(&self.source, "not_stored") {
                            tracing::warn!(broker = %self.source, pkid = ack.pkid, "an MQTT message could not be stored: left unacknowledged for the broker to send again");
                        } else {
                            tracing::debug!(broker = %self.source, pkid = ack.pkid, "MQTT message left unacknowledged");
                        }
                    }
                }
            }
        }
    }

    fn publish_command(&self, command: &MeterCommand) {
        let topic = payload::command_topic(command.meter);
        let sent = self.client.try_publish(topic, QoS::AtLeastOnce, false, payload::command_payload(command));
        if sent.is_err() && self.log.first(&self.source, "command_queue_full") {
            // The meter's next acknowledgement carries its valve state again.
            tracing::warn!(broker = %self.source, meter = %command.meter, "MQTT client queue full: a valve command was not published");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        let url = BrokerUrl::parse("mqtt://10.0.0.5:1884", "north").expect("url");
        assert_eq!(
            url,
            BrokerUrl { host: "10.0.0.5".into(), port: 1884, client_id: "hydromesh-north".into() }
        );
        let url = BrokerUrl::parse("mqtt://broker.example", "my node").expect("url");
        assert_eq!((url.port, url.client_id.as_str()), (1883, "hydromesh-my_node"));
        let url = BrokerUrl::parse("tcp://[::1]:1999/?client_id=fog-7", "x").expect("url");
        assert_eq!((url.host.as_str(), url.port, url.client_id.as_str()), ("::1", 1999, "fog-7"));
        for bad in [
            "10.0.0.5:1883",
            "mqtts://h:1",
            "mqtt://:1883",
            "mqtt://h:0",
            "mqtt://h:x",
            "mqtt://h?x=1",
            "mqtt://u@h",
        ] {
            assert!(BrokerUrl::parse(bad, "n").is_err(), "{bad}");
        }
    }
}
