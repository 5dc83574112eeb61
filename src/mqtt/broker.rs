//! The embedded MQTT broker (3.1.1 and 5): an ingest endpoint for meters and gateways, not a
//! general broker.
//!
//! Each connection is one task. It decodes packets in the version its CONNECT names
//! ([`codec`](super::codec), rumqttc's codecs), turns
//! publishes on reading topics into readings for the [batcher](super::batcher), and writes a
//! PUBACK (QoS 1) or PUBREC (QoS 2) for each publish in the order the publishes came, once its
//! reading is durable (or at once when the message is refused: it was received, and sending it
//! again would not help). Publishes on other topics are refused, counted and never forwarded;
//! subscribers (any valid filter, `+` and `#` included) receive only the node's valve commands,
//! at QoS 0 or 1.
//!
//! Not supported, on purpose: persistent sessions (every session starts clean and
//! `session_present` is false), retained messages, last wills, and authentication.
//!
//! Bounds: [`MAX_CONNECTIONS`] connections (with every one taken, a new connection closes the
//! one waiting longest for its CONNECT), [`MAX_PACKET_BYTES`] per packet (a larger packet
//! closes the connection), [`MAX_PENDING_ACKS`] messages awaiting storage per connection (the
//! connection stops reading beyond), queues of commands to deliver, subscriptions per
//! connection, a CONNECT within [`CONNECT_TIMEOUT`], and the keep-alive: a client silent for
//! 1.5 × its keep-alive is disconnected.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hydromesh_proto::ingest::MeterCommand;
use rumqttc::mqttbytes::v4::{Connect, Packet, Publish, Subscribe, Unsubscribe};
use rumqttc::mqttbytes::{Error as CodecError, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::codec::{self, ConnectRefusal, Out, Version};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::acks::{AckQueue, AckState};
use super::batcher::{Chunk, Completion, Gathered, MAX_CHUNK_READINGS};
use super::payload::{self, Refusal};
use super::topic;
use crate::metrics::LogOnce;
use crate::metrics::Metrics;

/// Largest MQTT packet accepted, in bytes; a larger one closes the connection.
pub const MAX_PACKET_BYTES: usize = 64 * 1024;
/// Most connections at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 10_000;
/// Messages of one connection awaiting storage before it stops reading.
pub const MAX_PENDING_ACKS: usize = 1024;
/// Longest wait for a new connection's CONNECT.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// With every connection slot taken, a connection that has waited this long without sending
/// its CONNECT is closed to make room for a new one.
pub const EVICT_AFTER: Duration = Duration::from_secs(1);
/// How long a closing connection may take to send its last packets.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Room made in a connection's read buffer before each read (it starts with this much too).
const READ_CHUNK: usize = 8 * 1024;
/// Bytes waiting to be written before a connection stops reading and delivering.
const MAX_WRITE_BUFFER: usize = 64 * 1024;
/// A client that takes nothing of what is written to it for this long is disconnected.
const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Subscriptions per connection.
const MAX_SUBSCRIPTIONS: usize = 64;
/// Commands waiting for one subscriber; more are dropped (the meter's next acknowledgement
/// carries its valve state again).
const DELIVERY_QUEUE: usize = 256;
/// QoS 1 commands sent to one subscriber and not yet acknowledged.
const MAX_OUTGOING_INFLIGHT: usize = 64;
/// Pause after a failed accept (such as too many open files), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// What every connection shares.
pub struct Shared {
    /// Where readings go.
    pub batcher: mpsc::Sender<Chunk>,
    /// Where refusals are counted.
    pub metrics: Arc<Metrics>,
    /// Refusals and rejections are logged once per client and reason.
    pub log: Arc<LogOnce>,
    /// Client ids and subscriptions.
    pub registry: Arc<Registry>,
}

impl Shared {
    /// Counts a refused message and logs it once per source and reason.
    fn refuse(&self, source: &str, refusal: &Refusal) {
        self.metrics.refuse("mqtt", refusal.reason());
        if self.log.first(source, refusal.reason()) {
            tracing::warn!(client = %source, %refusal, "refused an MQTT message (logged once per client and reason)");
        } else {
            tracing::debug!(client = %source, %refusal, "refused an MQTT message");
        }
    }
}

/// Starts the broker on `listener`, and the task that delivers valve commands to subscribers.
pub fn serve(
    listener: TcpListener,
    shared: Shared,
    commands: mpsc::Receiver<MeterCommand>,
    cancel: CancellationToken,
) -> Vec<JoinHandle<()>> {
    let deliver = tokio::spawn(deliver_commands(commands, shared.registry.clone()));
    let accept = tokio::spawn(accept(listener, Arc::new(shared), cancel, MAX_CONNECTIONS));
    vec![accept, deliver]
}

async fn deliver_commands(mut commands: mpsc::Receiver<MeterCommand>, registry: Arc<Registry>) {
    while let Some(command) = commands.recv().await {
        let topic = payload::command_topic(command.meter);
        registry.publish(&topic, Bytes::from(payload::command_payload(&command)));
    }
}

/// Accepts connections, at most `max` at once. With every slot taken, a new connection closes
/// the one that has waited longest for its CONNECT, once that one has waited [`EVICT_AFTER`]:
/// clients that connect and send nothing cannot lock meters out (a connected client is never
/// closed for another; with every slot held by connected clients, a new one is refused).
async fn accept(listener: TcpListener, shared: Arc<Shared>, cancel: CancellationToken, max: usize) {
    let permits = Arc::new(Semaphore::new(max));
    let waiting = Arc::new(Waiting::default());
    let mut connections = JoinSet::new();
    let mut next_id = 0u64;
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let free = permits.clone().try_acquire_owned();
                    let permit = match free.map_err(|_| waiting.oldest()) {
                        Ok(permit) => Some(permit),
                        // Every slot taken: room is made by closing the connection waiting
                        // longest for its CONNECT, once it has waited EVICT_AFTER.
                        Err(Some(waited)) => tokio::select! {
                            () = cancel.cancelled() => break,
                            permit = async {
                                tokio::time::sleep(EVICT_AFTER.saturating_sub(waited)).await;
                                waiting.evict();
                                tokio::time::timeout(EVICT_AFTER, permits.clone().acquire_owned()).await
                            } => permit.ok().and_then(Result::ok),
                        },
                        Err(None) => None,
                    };
                    let Some(permit) = permit else {
                        shared.metrics.refuse("mqtt", "too_many_connections");
                        if shared.log.first(&peer.ip().to_string(), "too_many_connections") {
                            tracing::warn!(%peer, max, "MQTT connection refused: too many connections");
                        }
                        continue;
                    };
                    next_id += 1;
                    let stop = cancel.child_token();
                    let evicted = waiting.add(next_id, &stop);
                    let waiting = (waiting.clone(), evicted);
                    connections.spawn(connection(stream, peer, next_id, shared.clone(), stop, waiting, permit));
                }
                Err(error) => {
                    if shared.log.first("listener", "accept_error") {
                        tracing::warn!(%error, "MQTT accept failed");
                    }
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                    }
                }
            },
        }
    }
    drop(listener);
    // Connections acknowledge what is being stored, then close, within their grace period.
    while connections.join_next().await.is_some() {}
    tracing::debug!("MQTT broker stopped");
}

/// Connections that have not sent their CONNECT yet, oldest first (ids grow with time), each
/// with when it was accepted and what closes it.
#[derive(Default)]
struct Waiting(std::sync::Mutex<BTreeMap<u64, (tokio::time::Instant, CancellationToken)>>);

impl Waiting {
    /// Registers connection `id` (closed with `stop`); returns what evicts it.
    fn add(&self, id: u64, stop: &CancellationToken) -> CancellationToken {
        let evicted = stop.child_token();
        self.lock().insert(id, (tokio::time::Instant::now(), evicted.clone()));
        evicted
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, (tokio::time::Instant, CancellationToken)>> {
        crate::sync::lock(&self.0)
    }

    /// How long the connection waiting longest for its CONNECT has waited.
    fn oldest(&self) -> Option<Duration> {
        self.lock().first_key_value().map(|(_, (since, _))| since.elapsed())
    }

    /// Closes the connection waiting longest for its CONNECT, if it has waited [`EVICT_AFTER`]
    /// (the one that had may have sent its CONNECT meanwhile: a younger one is not taken).
    fn evict(&self) {
        let mut waiting = self.lock();
        if let Some(entry) = waiting.first_entry() {
            if entry.get().0.elapsed() >= EVICT_AFTER {
                entry.remove().1.cancel();
            }
        }
    }
}

/// Client ids in use and the subscriptions of each connection.
#[derive(Default)]
pub struct Registry {
    clients: Mutex<HashMap<Arc<str>, (u64, CancellationToken)>>,
    subscribers: RwLock<HashMap<u64, Subscriber>>,
}

struct Subscriber {
    client_id: Arc<str>,
    filters: Vec<(String, QoS)>,
    deliveries: mpsc::Sender<Delivery>,
}

/// A message for a subscriber.
struct Delivery {
    topic: Arc<str>,
    payload: Bytes,
    qos: QoS,
}

impl Registry {
    /// Records that connection `conn` uses `client_id`; an older connection with the same id is
    /// told to stop, as MQTT requires.
    fn claim(&self, client_id: &Arc<str>, conn: u64, stop: CancellationToken) {
        let mut clients = self.clients.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, older)) = clients.insert(client_id.clone(), (conn, stop)) {
            tracing::info!(client = %client_id, "a new connection took over this MQTT client id");
            older.cancel();
        }
    }

    /// Forgets connection `conn`: its client id (unless taken over) and its subscriptions.
    fn release(&self, client_id: &Arc<str>, conn: u64) {
        let mut clients = self.clients.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if clients.get(client_id).is_some_and(|(owner, _)| *owner == conn) {
            clients.remove(client_id);
        }
        drop(clients);
        self.subscribe(conn, client_id, Vec::new(), None);
    }

    /// Sets the subscriptions of connection `conn` (none: it is no longer a subscriber).
    fn subscribe(
        &self,
        conn: u64,
        client_id: &Arc<str>,
        filters: Vec<(String, QoS)>,
        deliveries: Option<mpsc::Sender<Delivery>>,
    ) {
        let mut subscribers = self.subscribers.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        match deliveries {
            Some(deliveries) if !filters.is_empty() => {
                subscribers.insert(conn, Subscriber { client_id: client_id.clone(), filters, deliveries });
            }
            _ => {
                subscribers.remove(&conn);
            }
        }
    }

    /// Queues a message for every subscriber with a matching filter, at the highest QoS granted
    /// among its matching filters; a subscriber whose queue is full misses it.
    fn publish(&self, topic: &str, payload: Bytes) {
        let subscribers = self.subscribers.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let shared_topic: Arc<str> = topic.into();
        for subscriber in subscribers.values() {
            let qos = subscriber
                .filters
                .iter()
                .filter(|(filter, _)| topic::matches(filter, topic))
                .map(|(_, qos)| *qos)
                .max_by_key(|qos| *qos as u8);
            let Some(qos) = qos else { continue };
            let delivery = Delivery { topic: shared_topic.clone(), payload: payload.clone(), qos };
            if let Err(TrySendError::Full(_)) = subscriber.deliveries.try_send(delivery) {
                tracing::debug!(client = %subscriber.client_id, %topic, "subscriber queue full: command not delivered");
            }
        }
    }
}

/// Why a connection ends.
enum Close {
    /// The client went away, or said DISCONNECT.
    Gone,
    /// The node is stopping, or another connection took over the client id.
    Stopped,
    /// The client was silent for 1.5 × its keep-alive.
    KeepAlive,
    /// The client took nothing written to it for [`WRITE_STALL_TIMEOUT`].
    Stalled,
    /// The client broke the protocol or a bound: counted as refused input with this reason.
    Refused(&'static str, String),
    /// The node could not store readings of this connection: they are not acknowledged, and
    /// closing tells the client to send them again.
    NotStored,
}

impl Close {
    fn protocol(detail: impl Into<String>) -> Close {
        Close::Refused("protocol_error", detail.into())
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    shared: Arc<Shared>,
    stop: CancellationToken,
    (waiting, evicted): (Arc<Waiting>, CancellationToken),
    _permit: OwnedSemaphorePermit,
) {
    // Acknowledgements are small and latency matters more than packet count.
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
    // `evicted` is a child of `stop`: it is cancelled with it.
    let connect = tokio::select! {
        () = evicted.cancelled() => return,
        connect = tokio::time::timeout(CONNECT_TIMEOUT, read_connect(&mut reader, &mut rbuf)) => connect,
    };
    waiting.remove(id);
    let source = peer_source(peer.ip());
    let mut wbuf = BytesMut::with_capacity(1024);
    let (version, connect) = match connect {
        Ok(Ok(connect)) => connect,
        Ok(Err(Handshake::Unsupported)) => {
            // MQTT asks for this answer to a protocol version the server does not speak (in
            // 3.1.1's form, which 3.1 clients read too).
            Version::V311.write(&mut wbuf, Out::ConnAck(Some(ConnectRefusal::ProtocolVersion)));
            let close = Close::protocol(UNSUPPORTED);
            return finish(&shared, &source, close, &mut writer, wbuf).await;
        }
        Ok(Err(Handshake::Close(close))) => return finish(&shared, &source, close, &mut writer, wbuf).await,
        Err(_) => {
            let close = Close::protocol(format!("no CONNECT within {} s", CONNECT_TIMEOUT.as_secs()));
            return finish(&shared, &source, close, &mut writer, wbuf).await;
        }
    };
    if connect.client_id.is_empty() && !connect.clean_session {
        version.write(&mut wbuf, Out::ConnAck(Some(ConnectRefusal::ClientId)));
        let close = Close::protocol("an empty client id needs a clean session");
        return finish(&shared, &source, close, &mut writer, wbuf).await;
    }
    let client_id: Arc<str> = match connect.client_id.as_str() {
        "" => format!("auto-{id}").into(),
        named => named.into(),
    };
    shared.registry.claim(&client_id, id, stop.clone());
    version.write(&mut wbuf, Out::ConnAck(None));
    tracing::debug!(client = %client_id, %peer, ?version, keep_alive = connect.keep_alive, "MQTT client connected");
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let (deliveries_tx, deliveries_rx) = mpsc::channel(DELIVERY_QUEUE);
    let keep_alive =
        (connect.keep_alive > 0).then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1500));
    let mut session = Session {
        id,
        version,
        client_id: client_id.clone(),
        shared: shared.clone(),
        rbuf,
        wbuf,
        acks: AckQueue::default(),
        gathered: Gathered::default(),
        stalled: None,
        done_tx,
        done_rx,
        deliveries_tx,
        deliveries_rx,
        subscriptions: Vec::new(),
        out_inflight: HashSet::new(),
        next_pkid: 0,
        keep_alive,
        last_packet: Instant::now(),
    };
    let close = session.serve(&mut reader, &mut writer, &stop).await;
    shared.registry.release(&client_id, id);
    let wbuf = std::mem::take(&mut session.wbuf);
    finish(&shared, &client_id, close, &mut writer, wbuf).await;
}

/// Logs and counts why a connection ends, sends what is left to send, and closes it.
async fn finish(shared: &Shared, source: &str, close: Close, writer: &mut OwnedWriteHalf, wbuf: BytesMut) {
    match close {
        Close::Gone => tracing::debug!(client = %source, "MQTT client disconnected"),
        Close::Stopped => tracing::debug!(client = %source, "MQTT connection closed: stopping or taken over"),
        Close::KeepAlive => {
            tracing::info!(client = %source, "MQTT client silent beyond 1.5 × its keep-alive: disconnected")
        }
        Close::Stalled => tracing::info!(
            client = %source,
            "MQTT client read nothing for {} s: disconnected",
            WRITE_STALL_TIMEOUT.as_secs()
        ),
        Close::Refused(reason, detail) => {
            shared.metrics.refuse("mqtt", reason);
            if shared.log.first(source, reason) {
                tracing::warn!(client = %source, reason, %detail, "MQTT connection closed (logged once per client and reason)");
            } else {
                tracing::debug!(client = %source, reason, %detail, "MQTT connection closed");
            }
        }
        Close::NotStored => tracing::warn!(
            client = %source,
            "readings of this MQTT client could not be stored: closing without acknowledging them, so that it sends them again"
        ),
    }
    if !wbuf.is_empty() {
        let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, writer.write_all(&wbuf)).await;
    }
    let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, writer.shutdown()).await;
}

/// Refusals before a client id is known are logged once per address.
fn peer_source(ip: IpAddr) -> String {
    format!("address {ip}")
}

/// Why a connection ends before its CONNECT is accepted.
enum Handshake {
    /// For this reason.
    Close(Close),
    /// The client speaks another protocol version: it is told so before the connection closes.
    Unsupported,
}

/// Why a CONNECT is answered "unacceptable protocol version".
const UNSUPPORTED: &str = "only MQTT 3.1.1 and 5 are supported";

/// Reads the first packet, which must be a CONNECT, in the version it names.
async fn read_connect(
    reader: &mut OwnedReadHalf,
    rbuf: &mut BytesMut,
) -> Result<(Version, Connect), Handshake> {
    loop {
        // The protocol level decides the codec; 3.1.1's reads anything else far enough to fail.
        let version = match codec::connect_level(rbuf) {
            Some(level) if rbuf.first().is_some_and(|byte| byte >> 4 == 1) => {
                Version::of_level(level).ok_or(Handshake::Unsupported)?
            }
            _ => Version::V311,
        };
        match version.read(rbuf, MAX_PACKET_BYTES) {
            Ok(Packet::Connect(connect)) => return Ok((version, connect)),
            Ok(_) => return Err(Handshake::Close(Close::protocol("the first packet is not CONNECT"))),
            Err(CodecError::InsufficientBytes(_)) => {
                rbuf.reserve(READ_CHUNK);
                match reader.read_buf(rbuf).await {
                    Ok(0) | Err(_) => return Err(Handshake::Close(Close::Gone)),
                    Ok(_) => {}
                }
            }
            Err(CodecError::InvalidProtocol | CodecError::InvalidProtocolLevel(_)) => {
                return Err(Handshake::Unsupported)
            }
            Err(error) => return Err(Handshake::Close(codec_close(error))),
        }
    }
}

fn codec_close(error: CodecError) -> Close {
    match error {
        CodecError::PayloadSizeLimitExceeded(size) => Close::Refused(
            "packet_too_large",
            format!("a packet of {size} bytes (at most {MAX_PACKET_BYTES})"),
        ),
        error => Close::protocol(format!("malformed packet: {error}")),
    }
}

/// One connected client.
struct Session {
    id: u64,
    /// The protocol version its CONNECT named.
    version: Version,
    client_id: Arc<str>,
    shared: Arc<Shared>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    acks: AckQueue,
    /// The chunk being built.
    gathered: Gathered,
    /// A chunk the batcher had no room for yet; nothing more is read until it is taken.
    stalled: Option<Chunk>,
    done_tx: mpsc::UnboundedSender<Completion>,
    /// Unbounded, yet bounded: a completion is sent only for chunks this connection submitted,
    /// and it stops reading at `MAX_PENDING_ACKS` messages awaiting storage.
    done_rx: mpsc::UnboundedReceiver<Completion>,
    deliveries_tx: mpsc::Sender<Delivery>,
    deliveries_rx: mpsc::Receiver<Delivery>,
    subscriptions: Vec<(String, QoS)>,
    out_inflight: HashSet<u16>,
    next_pkid: u16,
    keep_alive: Option<Duration>,
    last_packet: Instant,
}

impl Session {
    async fn serve(
        &mut self,
        reader: &mut OwnedReadHalf,
        writer: &mut OwnedWriteHalf,
        stop: &CancellationToken,
    ) -> Close {
        let mut draining: Option<Instant> = None;
        let now = Instant::now();
        let mut keep_alive_check = pin!(tokio::time::sleep_until(now + self.keep_alive.unwrap_or_default()));
        // Since when bytes have waited to be written without any being taken.
        let mut write_waiting: Option<Instant> = None;
        // A handle of its own: a permit borrows the sender while the session is changed.
        let batcher = self.shared.batcher.clone();
        loop {
            let mut need_bytes = false;
            if draining.is_none() {
                match self.decode() {
                    Ok(more) => need_bytes = more,
                    Err(close) => return close,
                }
            }
            if let Err(close) = self.flush_acks() {
                // When stopping, the node refuses new batches: nothing unusual to report.
                return if draining.is_some() { Close::Stopped } else { close };
            }
            if draining.is_some() && self.acks.is_empty() && self.stalled.is_none() && self.wbuf.is_empty() {
                return Close::Stopped;
            }
            if self.wbuf.is_empty() {
                write_waiting = None;
            } else if write_waiting.is_none() {
                write_waiting = Some(Instant::now());
            }
            let can_deliver = draining.is_none()
                && self.wbuf.len() < MAX_WRITE_BUFFER
                && self.out_inflight.len() < MAX_OUTGOING_INFLIGHT;
            tokio::select! {
                () = stop.cancelled(), if draining.is_none() => {
                    // Acknowledge what is being stored, take nothing new.
                    draining = Some(Instant::now() + super::DRAIN_GRACE);
                    if let Some(chunk) = self.stalled.take() {
                        self.acks.complete(&chunk.seqs, false);
                    }
                }
                () = tokio::time::sleep_until(draining.unwrap_or(now)), if draining.is_some() => {
                    return Close::Stopped;
                }
                Some(done) = self.done_rx.recv() => self.acks.complete(&done.seqs, done.stored),
                permit = batcher.reserve(), if self.stalled.is_some() => {
                    match (permit, self.stalled.take()) {
                        (Ok(permit), Some(chunk)) => permit.send(chunk),
                        (Err(_), Some(chunk)) => self.acks.complete(&chunk.seqs, false),
                        (_, None) => {}
                    }
                }
                written = writer.write(&self.wbuf), if !self.wbuf.is_empty() => match written {
                    Ok(0) | Err(_) => return Close::Gone,
                    Ok(n) => {
                        self.wbuf.advance(n);
                        write_waiting = None;
                    }
                },
                () = tokio::time::sleep_until(write_waiting.unwrap_or(now) + WRITE_STALL_TIMEOUT), if write_waiting.is_some() => {
                    return Close::Stalled;
                }
                Some(delivery) = self.deliveries_rx.recv(), if can_deliver => self.deliver(delivery),
                read = reader.read_buf(&mut self.rbuf), if need_bytes && draining.is_none() => match read {
                    Ok(0) | Err(_) => return Close::Gone,
                    Ok(_) => {}
                },
                () = &mut keep_alive_check, if self.keep_alive.is_some() && draining.is_none() => {
                    let expires = self.last_packet + self.keep_alive.unwrap_or_default();
                    if expires <= Instant::now() {
                        return Close::KeepAlive;
                    }
                    keep_alive_check.as_mut().reset(expires);
                }
            }
        }
    }

    /// Handles the buffered packets until more bytes are needed (`Ok(true)`) or a bound stops
    /// it (`Ok(false)`: acknowledgements owed, a stalled chunk, or too much to write).
    fn decode(&mut self) -> Result<bool, Close> {
        let mut heard = false;
        let result = loop {
            if self.stalled.is_some()
                || self.acks.len() >= MAX_PENDING_ACKS
                || self.wbuf.len() >= MAX_WRITE_BUFFER
            {
                break Ok(false);
            }
            if self.gathered.len() >= MAX_CHUNK_READINGS {
                self.submit();
                continue;
            }
            match self.version.read(&mut self.rbuf, MAX_PACKET_BYTES) {
                Ok(packet) => {
                    heard = true;
                    if let Err(close) = self.handle(packet) {
                        break Err(close);
                    }
                }
                Err(CodecError::InsufficientBytes(_)) => {
                    self.rbuf.reserve(READ_CHUNK);
                    break Ok(true);
                }
                Err(error) => break Err(codec_close(error)),
            }
        };
        if heard {
            self.last_packet = Instant::now();
        }
        self.submit();
        result
    }

    fn handle(&mut self, packet: Packet) -> Result<(), Close> {
        match packet {
            Packet::Publish(publish) => self.on_publish(publish),
            Packet::PubAck(ack) => {
                self.out_inflight.remove(&ack.pkid);
                Ok(())
            }
            Packet::PubRel(release) => {
                // The PUBREC before it was sent once the message was stored.
                self.version.write(&mut self.wbuf, Out::PubComp(release.pkid));
                Ok(())
            }
            // This server never sends QoS 2 messages, so never expects these.
            Packet::PubRec(_) | Packet::PubComp(_) => Ok(()),
            Packet::Subscribe(subscribe) => {
                self.on_subscribe(subscribe);
                Ok(())
            }
            Packet::Unsubscribe(unsubscribe) => {
                self.on_unsubscribe(unsubscribe);
                Ok(())
            }
            Packet::PingReq => {
                self.version.write(&mut self.wbuf, Out::PingResp);
                Ok(())
            }
            Packet::Disconnect => Err(Close::Gone),
            Packet::Connect(_) => Err(Close::protocol("a second CONNECT")),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                Err(Close::protocol("a server packet from a client"))
            }
        }
    }

    fn on_publish(&mut self, publish: Publish) -> Result<(), Close> {
        if publish.topic.contains(['+', '#']) {
            return Err(Close::protocol("a wildcard in a PUBLISH topic"));
        }
        let ack = match publish.qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => Some(false),
            QoS::ExactlyOnce => Some(true),
        };
        match payload::parse_publish(&publish.topic, &publish.payload) {
            Ok(parsed) => {
                let seq = ack.map(|rec| self.acks.push(publish.pkid, rec, AckState::Waiting));
                self.gathered.push(parsed, seq);
            }
            Err(refusal) => {
                self.shared.refuse(&self.client_id, &refusal);
                // Received, but useless: acknowledged in its turn, so the client does not send
                // it again and again.
                if let Some(rec) = ack {
                    self.acks.push(publish.pkid, rec, AckState::Refused);
                }
            }
        }
        Ok(())
    }

    /// Hands the chunk being built to the batcher, or keeps it as stalled when it is full.
    fn submit(&mut self) {
        let Some(chunk) = self.gathered.take_chunk(self.client_id.clone(), self.done_tx.clone()) else {
            return;
        };
        match self.shared.batcher.try_send(chunk) {
            Ok(()) => {}
            Err(TrySendError::Full(chunk)) => self.stalled = Some(chunk),
            Err(TrySendError::Closed(chunk)) => self.acks.complete(&chunk.seqs, false),
        }
    }

    /// Writes the acknowledgements now due, in order; fails if a message could not be stored.
    fn flush_acks(&mut self) -> Result<(), Close> {
        while let Some(ready) = self.acks.pop_ready() {
            let Ok(ack) = ready else { return Err(Close::NotStored) };
            let (pkid, refused) = (ack.pkid, ack.state == AckState::Refused);
            let packet = if ack.rec { Out::PubRec { pkid, refused } } else { Out::PubAck { pkid, refused } };
            self.version.write(&mut self.wbuf, packet);
        }
        Ok(())
    }

    fn on_subscribe(&mut self, subscribe: Subscribe) {
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        for filter in subscribe.filters {
            if !topic::valid_filter(&filter.path) {
                codes.push(None);
                continue;
            }
            // Commands go out at QoS 0 or 1; a QoS 2 subscription is granted QoS 1.
            let qos = if filter.qos == QoS::AtMostOnce { QoS::AtMostOnce } else { QoS::AtLeastOnce };
            if let Some(existing) = self.subscriptions.iter_mut().find(|(path, _)| *path == filter.path) {
                existing.1 = qos;
            } else if self.subscriptions.len() < MAX_SUBSCRIPTIONS {
                self.subscriptions.push((filter.path, qos));
            } else {
                codes.push(None);
                continue;
            }
            codes.push(Some(qos));
        }
        self.shared.registry.subscribe(
            self.id,
            &self.client_id,
            self.subscriptions.clone(),
            Some(self.deliveries_tx.clone()),
        );
        self.version.write(&mut self.wbuf, Out::SubAck(subscribe.pkid, &codes));
    }

    fn on_unsubscribe(&mut self, unsubscribe: Unsubscribe) {
        let filters = unsubscribe.topics.len();
        self.subscriptions.retain(|(path, _)| !unsubscribe.topics.contains(path));
        self.shared.registry.subscribe(
            self.id,
            &self.client_id,
            self.subscriptions.clone(),
            Some(self.deliveries_tx.clone()),
        );
        self.version.write(&mut self.wbuf, Out::UnsubAck(unsubscribe.pkid, filters));
    }

    /// Writes a command for this subscriber; at QoS 1 it waits for a PUBACK (without
    /// retransmission: sessions are not persistent).
    fn deliver(&mut self, delivery: Delivery) {
        let pkid = match delivery.qos {
            QoS::AtMostOnce => 0,
            _ => {
                let pkid = self.free_pkid();
                self.out_inflight.insert(pkid);
                pkid
            }
        };
        let publish = Publish {
            dup: false,
            qos: delivery.qos,
            retain: false,
            topic: delivery.topic.to_string(),
            pkid,
            payload: delivery.payload,
        };
        self.version.write(&mut self.wbuf, Out::Publish(&publish));
    }

    /// A packet id not in use (there are at most `MAX_OUTGOING_INFLIGHT` in use).
    fn free_pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            if !self.out_inflight.contains(&self.next_pkid) {
                return self.next_pkid;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::mqttbytes::v4::Connect;
    use tokio::io::AsyncReadExt;

    /// A broker of `max` connections on loopback, and its address.
    async fn broker(max: usize) -> (SocketAddr, CancellationToken, mpsc::Receiver<Chunk>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (batcher, chunks) = mpsc::channel(16);
        let shared = Shared {
            batcher,
            metrics: Arc::new(Metrics::new()),
            log: Arc::default(),
            registry: Arc::default(),
        };
        let cancel = CancellationToken::new();
        tokio::spawn(accept(listener, Arc::new(shared), cancel.clone(), max));
        (addr, cancel, chunks)
    }

    /// A client that sends its CONNECT; its first 4 bytes back, or `None` when closed first.
    async fn connect(addr: SocketAddr, id: &str) -> (TcpStream, Option<[u8; 4]>) {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut buf = BytesMut::new();
        Connect::new(id).write(&mut buf).expect("encode CONNECT");
        stream.write_all(&buf).await.expect("send CONNECT");
        let mut connack = [0u8; 4];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut connack)).await;
        let answer = matches!(read, Ok(Ok(_))).then_some(connack);
        (stream, answer)
    }

    async fn closed(stream: &mut TcpStream) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn connections_that_never_send_connect_make_room_and_connected_clients_do_not() {
        let (addr, cancel, _chunks) = broker(3).await;
        let mut silent = Vec::new();
        for _ in 0..3 {
            silent.push(TcpStream::connect(addr).await.expect("connect"));
        }
        // Every slot held by a connection that sends nothing: a meter still gets in, once the
        // oldest has waited a second, well before the CONNECT timeout.
        let started = tokio::time::Instant::now();
        let (_meter, answer) = connect(addr, "meter-1").await;
        assert_eq!(answer, Some([0x20, 0x02, 0x00, 0x00]), "CONNACK, accepted");
        assert!(started.elapsed() < CONNECT_TIMEOUT / 2, "{:?}", started.elapsed());
        assert!(closed(&mut silent[0]).await, "the oldest silent connection was closed for it");
        // Connected clients are never closed for a new one: with every slot theirs, it is refused.
        let (_second, answer) = connect(addr, "meter-2").await;
        assert_eq!(answer, Some([0x20, 0x02, 0x00, 0x00]));
        let (_third, answer) = connect(addr, "meter-3").await;
        assert_eq!(answer, Some([0x20, 0x02, 0x00, 0x00]));
        let (_fourth, answer) = connect(addr, "meter-4").await;
        assert_eq!(answer, None, "no room: refused");
        cancel.cancel();
    }
}
