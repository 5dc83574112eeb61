//! The event loop: the one task that owns the swarm and every pending request.
//!
//! One `select!`: cancellation first, then swarm events, finished requests, commands from
//! in-process clients and from the loop's own futures, the local snapshot (debounced summary
//! publish) and the republish timer. The application state it routes to has its own owners:
//! the mesh state ([`Mesh`]), the ingest writer ([`Pipeline`]) and this node's own data
//! ([`Local`]). Work that may block runs on the blocking pool and comes back as a finished
//! future; nothing a peer sends can stall the loop.

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use hydromesh_proto::control::{Command as AdminCommand, SignedCommand};
use hydromesh_proto::summary::{
    Alive, Gossip, MeterFilter, OriginFilter, SignedAlive, SignedSummary, SyncRequest, SyncResponse,
};
use hydromesh_proto::{ingest, limits, peer, protocols, query, Reading};
use libp2p::core::transport::ListenerId;
use libp2p::identity::Keypair;
use libp2p::metrics::Recorder;
use libp2p::request_response::{self, InboundFailure, InboundRequestId, OutboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{gossipsub, identify, mdns, ping, Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::dialer::{Dial, Dialer};
use super::handoff::{Handoffs, REFILL_EVERY};
use super::local::Local;
use super::{NodeError, SHUTDOWN_GRACE};
use crate::clock::{now_ms, sleep_until};
use crate::config::Config;
use crate::domain::rules::RationingInputs;
use crate::ingest::{LocalSnapshot, Pipeline};
use crate::mesh::{self, control, summary, Applied, Expanded, Liveness, Merged, Mesh};
use crate::metrics::{FormLabels, Metrics, OriginLabels, SyncLabels};
use crate::p2p::behaviour::{control_topic, summary_topic, Behaviour, BehaviourEvent};
use crate::store::Store;

/// Work handed to the loop by in-process clients and by the loop's own futures.
pub(crate) enum Command {
    /// A question from a client in this process.
    Query { request: query::Request, reply: oneshot::Sender<query::Response> },
    /// Ask a peer about its own meters.
    Ask(Ask),
    /// Apply a verified admin command (after its meter was found) and answer with the outcome.
    Apply { command: AdminCommand, signed: SignedCommand, reply: oneshot::Sender<query::Response> },
}

/// A question for a peer, from a routed query.
pub(crate) struct Ask {
    pub peer: PeerId,
    pub addrs: Vec<Multiaddr>,
    pub request: peer::Request,
    pub reply: oneshot::Sender<Result<peer::Response, AskError>>,
}

/// Why a peer did not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AskError {
    /// The request failed on the way (dial, stream, timeout at the transport).
    #[error("{0}")]
    Failed(String),
    /// No answer within the asker's deadline.
    #[error("no answer in time")]
    Timeout,
    /// This node is stopping.
    #[error("node is stopping")]
    Stopping,
}

/// Where an answer goes: back to a peer on its stream, or to a caller in this process.
pub(super) enum Reply<T> {
    Peer(ResponseChannel<T>, InboundRequestId),
    Local(oneshot::Sender<T>),
}

/// A request answered later, once its future completes.
pub(super) enum Finished {
    Ingest(Reply<ingest::Response>, ingest::Response),
    Query(Reply<query::Response>, Box<query::Response>),
    Peer(Reply<peer::Response>, Box<peer::Response>),
}

/// Requests in flight: one owner for their bookkeeping.
#[derive(Default)]
pub(super) struct Requests {
    /// Answers being computed.
    pub pending: FuturesUnordered<BoxFuture<'static, Finished>>,
    /// Questions to peers awaiting an answer.
    pub asks: HashMap<OutboundRequestId, oneshot::Sender<Result<peer::Response, AskError>>>,
    /// Responses handed to the swarm and not yet sent (or failed), by protocol: shutdown waits
    /// for them.
    pub responding: HashSet<(&'static str, InboundRequestId)>,
    /// Follow long polls held open, bounded apart from other questions.
    pub follows: Arc<std::sync::atomic::AtomicUsize>,
}

/// When this node's summary goes out: at most once per `publish_interval` however fast
/// readings arrive (the first change after a quiet spell goes at once, after the debounce), and
/// an unchanged summary is not sent again: a small signed liveness message says it still holds.
#[derive(Default)]
struct Publishing {
    /// When the next summary is due, if one is.
    at: Option<tokio::time::Instant>,
    /// The version, time and size in bytes of the last summary published.
    last: Option<(u64, tokio::time::Instant, usize)>,
    /// When to publish the summary again, once the node's gossip mesh has formed (after it had
    /// no fog peer): the last one went out when no one listened. Relayed by gossip, it reaches
    /// every node at once; pulls alone spread it from node to node over minutes in a large mesh.
    announce_at: Option<Instant>,
    /// The next summary goes whole, not as its changes: it is for nodes that may not hold the
    /// one before.
    whole: bool,
    /// Other nodes' new summaries heard within the rate window (see `publish_pace`): when and
    /// their size in bytes.
    heard: VecDeque<(Instant, usize)>,
}

impl Publishing {
    /// Counts another node's new summary of `bytes` heard at `now`, for a rate measured over
    /// `window`.
    fn heard(&mut self, now: Instant, bytes: usize, window: Duration) {
        self.forget_before(now, window);
        if self.heard.len() == MAX_HEARD {
            self.heard.pop_front();
        }
        self.heard.push_back((now, bytes));
    }

    /// Bytes a second of other nodes' new summaries over the last `window`.
    fn others_rate(&mut self, now: Instant, window: Duration) -> f64 {
        self.forget_before(now, window);
        self.heard.iter().map(|(_, bytes)| *bytes).sum::<usize>() as f64 / window.as_secs_f64().max(1e-3)
    }

    fn forget_before(&mut self, now: Instant, window: Duration) {
        while self.heard.front().is_some_and(|(at, _)| now.duration_since(*at) > window) {
            self.heard.pop_front();
        }
    }
}

/// The loop's listeners and the addresses it announces.
struct Listening {
    listeners: Vec<ListenerId>,
    addrs: Vec<Multiaddr>,
    addrs_tx: watch::Sender<Vec<Multiaddr>>,
}

pub(super) struct EventLoop {
    pub(super) config: Arc<Config>,
    keypair: Keypair,
    pub(super) peer_id: PeerId,
    pub(super) swarm: Swarm<Behaviour>,
    store: Arc<Store>,
    pub(super) mesh: Mesh,
    pub(super) local: Local,
    pub(super) pipeline: Pipeline,
    pub(super) handoffs: Handoffs,
    snapshot: watch::Receiver<Arc<LocalSnapshot>>,
    inputs: watch::Sender<Arc<RationingInputs>>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) requests: Requests,
    pub(super) commands: mpsc::Sender<Command>,
    command_rx: mpsc::Receiver<Command>,
    listening: Listening,
    publish: Publishing,
    /// Connected peers that speak sync (fog nodes), and since when.
    fog_peers: HashMap<PeerId, Instant>,
    /// Connections the dialer made (to whom, once established): only these count towards its
    /// target and are kept by `trim_connections`. Connections that routed questions opened are
    /// not among them: they are closed as spare ones.
    dialled: HashMap<ConnectionId, Dialled>,
    /// Who to dial to stay in the mesh.
    dialer: Dialer,
    sync_round: usize,
    /// Fog nodes a sync request is out to: one at a time per peer.
    syncing: HashSet<PeerId>,
    /// The local filter last published and its hash (hashed again only when it changes).
    filter_hash: Option<(Arc<MeterFilter>, Vec<u8>)>,
    /// Summary versions heard of (by an alive) but not held yet.
    wanted: HashMap<PeerId, u64>,
    /// When to next pull what is missing (wanted summaries, filters) from a peer, and the wait
    /// after that.
    pull: (Instant, Duration),
    pub(super) closing: bool,
    cancel: CancellationToken,
}

/// What the loop is built from.
pub(super) struct Parts {
    pub config: Arc<Config>,
    pub keypair: Keypair,
    pub swarm: Swarm<Behaviour>,
    pub store: Arc<Store>,
    pub mesh: Mesh,
    pub local: Local,
    pub pipeline: Pipeline,
    pub arrivals: mpsc::Receiver<(hydromesh_proto::MeterId, u64)>,
    pub snapshot: watch::Receiver<Arc<LocalSnapshot>>,
    pub inputs: watch::Sender<Arc<RationingInputs>>,
    pub metrics: Arc<Metrics>,
    pub commands: (mpsc::Sender<Command>, mpsc::Receiver<Command>),
    pub addrs_tx: watch::Sender<Vec<Multiaddr>>,
    pub cancel: CancellationToken,
}

impl EventLoop {
    /// Listens, dials the bootstrap peers and subscribes to the topics.
    pub(super) fn new(parts: Parts) -> Result<Self, NodeError> {
        let Parts {
            config,
            keypair,
            mut swarm,
            store,
            mesh,
            local,
            pipeline,
            arrivals,
            snapshot,
            inputs,
            metrics,
            commands,
            addrs_tx,
            cancel,
        } = parts;
        for topic in [summary_topic(), control_topic()] {
            swarm
                .behaviour_mut()
                .gossipsub
                .subscribe(&topic)
                .map_err(|e| NodeError::Subscribe { topic: topic.to_string(), reason: e.to_string() })?;
        }
        let mut listeners = Vec::new();
        for addr in &config.listen {
            let listener = swarm
                .listen_on(addr.clone())
                .map_err(|e| NodeError::Listen { addr: addr.clone(), reason: e.to_string() })?;
            listeners.push(listener);
        }
        let peer_id = keypair.public().to_peer_id();
        // A peer cut off and back is dialled again within a republish interval.
        let dialer = Dialer::new(
            config.bootstrap.clone(),
            DIAL_TARGET,
            config.republish_interval,
            peer_seed(&peer_id),
            Instant::now(),
        );
        let (commands, command_rx) = commands;
        Ok(EventLoop {
            config,
            keypair,
            peer_id,
            swarm,
            store,
            mesh,
            local,
            pipeline,
            handoffs: Handoffs::new(arrivals),
            snapshot,
            inputs,
            metrics,
            requests: Requests::default(),
            commands,
            command_rx,
            listening: Listening { listeners, addrs: Vec::new(), addrs_tx },
            publish: Publishing::default(),
            fog_peers: HashMap::new(),
            dialled: HashMap::new(),
            dialer,
            sync_round: 0,
            syncing: HashSet::new(),
            filter_hash: None,
            wanted: HashMap::new(),
            pull: (Instant::now(), REDIAL_EVERY),
            closing: false,
            cancel,
        })
    }

    /// Runs until cancelled, then shuts down in order; the result is the final flush's.
    pub(super) async fn run(mut self) -> Result<(), NodeError> {
        tracing::info!(peer_id = %self.peer_id, name = %self.config.name, "fog node started");
        // Each node's ticks at a phase of its own (from its peer id): nodes started together (a
        // mass restart after a power cut) would otherwise send their alives and syncs in bursts.
        let period = self.config.republish_interval;
        let offset = Duration::from_millis(peer_seed(&self.peer_id) % (period.as_millis().max(1) as u64));
        let mut republish = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
        // The first tick at once: the node's own summary is in its view from the start.
        self.on_republish_tick();
        republish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut redial = tokio::time::interval(REDIAL_EVERY);
        redial.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut handoff_refill = tokio::time::interval(REFILL_EVERY);
        handoff_refill.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let publish_at = self.publish.at;
            // Not biased: each ready branch has its turn, so that a swarm with events always
            // ready (a mesh forming, a flood of peers) does not starve the node's own clients
            // (HTTP, MQTT, embedders), nor they the swarm.
            tokio::select! {
                () = self.cancel.cancelled() => break,
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some(finished) = self.requests.pending.next(), if !self.requests.pending.is_empty() => self.on_finished(finished),
                Some(command) = self.command_rx.recv() => self.on_command(command),
                () = std::future::ready(()), if self.handoffs.ready() && !self.handoffs.due.is_empty() => self.on_retry_due(),
                Some((meter, newest_ts_ms)) = self.handoffs.arrivals.recv(), if self.handoffs.ready() => self.on_arrival(meter, newest_ts_ms),
                Some(retry) = self.handoffs.in_flight.next(), if !self.handoffs.in_flight.is_empty() => self.handoffs.ended(retry, &self.metrics),
                Some(retry) = self.handoffs.waiting.next(), if !self.handoffs.waiting.is_empty() => self.handoffs.due.push_back(retry),
                _ = handoff_refill.tick(), if self.handoffs.short() => self.handoffs.refill(Instant::now()),
                Ok(()) = self.snapshot.changed() => self.schedule_publish(),
                () = sleep_until(publish_at), if publish_at.is_some() => self.publish_summary(),
                _ = republish.tick() => self.on_republish_tick(),
                _ = redial.tick() => self.on_redial_tick(),
            }
        }
        self.shut_down().await
    }

    /// Stops accepting, finishes in-flight requests, then stops the ingest writer (which flushes
    /// the store).
    async fn shut_down(mut self) -> Result<(), NodeError> {
        tracing::info!("shutting down: finishing in-flight requests");
        self.closing = true;
        for listener in std::mem::take(&mut self.listening.listeners) {
            self.swarm.remove_listener(listener);
        }
        let mut grace = pin!(tokio::time::sleep(SHUTDOWN_GRACE));
        while !self.requests.pending.is_empty() || !self.requests.responding.is_empty() {
            tokio::select! {
                () = &mut grace => {
                    tracing::warn!(pending = self.requests.pending.len(), "shutdown grace period over");
                    break;
                }
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some(finished) = self.requests.pending.next(), if !self.requests.pending.is_empty() => self.on_finished(finished),
                Some(command) = self.command_rx.recv() => self.on_command(command),
            }
        }
        let mut local = self.pipeline.stop().await?;
        let store = self.store.clone();
        let flushed = super::local::blocking(move || {
            store.close()?;
            // The meters' rule state for a quick next start (a start without it rebuilds it).
            if let Err(error) = local.save_checkpoint(&store) {
                tracing::warn!(%error, "cannot save the meter state; the next start rebuilds it");
            }
            Ok::<_, crate::store::StoreError>(())
        })
        .await;
        match &flushed {
            Ok(()) => tracing::info!("store flushed; node stopped"),
            Err(error) => tracing::error!(%error, "final flush failed"),
        }
        Ok(flushed?)
    }

    fn on_republish_tick(&mut self) {
        // Time passes: debt grace times end and periods roll over.
        self.pipeline.reevaluate();
        match self.publish.last {
            // Unchanged since it went out (a change would have scheduled a summary): say so.
            Some((version, _, _)) if self.publish.at.is_none() => self.publish_alive(version),
            _ => self.publish_summary(),
        }
        self.anti_entropy();
        self.feel();
        self.update_view_metrics();
        for origin in self.mesh.forget_older_than(self.config.forget_after, Instant::now()) {
            tracing::info!(%origin, "forgetting a fog node not heard from for too long");
            if let Err(error) = self.store.forget_view(&origin.to_string()) {
                tracing::warn!(%error, "cannot forget a saved summary");
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.metrics.p2p.record(&event);
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Ingest(event)) => self.on_ingest_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Query(event)) => self.on_query_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Peer(event)) => self.on_peer_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Sync(event)) => self.on_sync_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(event)) => self.on_gossip_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(event)) => {
                self.metrics.p2p.record(&event);
                if let identify::Event::Received { peer_id, info, .. } = event {
                    self.on_identified(peer_id, info);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(event)) => {
                self.metrics.p2p.record(&event);
                if let Err(ping::Failure::Timeout) = event.result {
                    // A cut link: TCP would keep the connection (and what gossip queued on it)
                    // for minutes; closed, the peer is dialled again and synced on reconnection.
                    tracing::debug!(peer = %event.peer, "closing a connection that stopped answering pings");
                    self.swarm.close_connection(event.connection);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    tracing::debug!(%peer, %addr, "mDNS discovered a peer");
                    if !self.swarm.is_connected(&peer) {
                        let _ = self.swarm.dial(addr);
                    }
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                let full = address.with_p2p(self.peer_id).unwrap_or_else(|addr| addr);
                tracing::info!(addr = %full, "listening");
                self.listening.addrs.push(full);
                self.on_addrs_changed();
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                let full = address.with_p2p(self.peer_id).unwrap_or_else(|addr| addr);
                self.listening.addrs.retain(|addr| *addr != full);
                self.on_addrs_changed();
            }
            SwarmEvent::ListenerError { error, .. } => {
                // A bogus QUIC handshake ends here: anyone can send them, as fast as they like.
                self.metrics.refuse("p2p", "listener_error");
                if self.metrics.log_allowed("listener_error") {
                    tracing::warn!(%error, "listener error (at most 10 lines a minute)");
                }
            }
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, .. } => {
                tracing::debug!(%peer_id, addr = %endpoint.get_remote_address(), "connected");
                if let Some(dialled) = self.dialled.get_mut(&connection_id) {
                    *dialled = Dialled::To(peer_id);
                }
                if endpoint.is_dialer() {
                    self.dialer.reached(endpoint.get_remote_address(), &peer_id);
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, cause, num_established, .. } => {
                tracing::debug!(%peer_id, ?cause, "connection closed");
                self.dialled.remove(&connection_id);
                if num_established == 0 && self.fog_peers.remove(&peer_id).is_some() {
                    self.dialer.lost(&peer_id, Instant::now());
                }
            }
            SwarmEvent::OutgoingConnectionError { connection_id, peer_id, error } => {
                tracing::debug!(?peer_id, %error, "outgoing connection failed");
                self.dialled.remove(&connection_id);
            }
            SwarmEvent::IncomingConnectionError { error, send_back_addr, .. } => {
                tracing::debug!(%send_back_addr, %error, "incoming connection failed");
            }
            _ => {}
        }
    }

    /// Every second: publishes the summary again once the node's gossip mesh has formed, dials
    /// what keeps the node in the mesh, closes what it does not need, and pulls what is missing.
    fn on_redial_tick(&mut self) {
        if self.publish.announce_at.is_some_and(|at| Instant::now() >= at) {
            self.publish.announce_at = None;
            // A new version (the same bytes again would be a duplicate to gossip), whole.
            self.publish.whole = true;
            self.schedule_publish();
        }
        self.redial();
        self.trim_connections();
        self.pull_missing();
    }

    /// Keeps at most `MAX_FOG_PEERS` fog nodes connected. Gossipsub holds a stream open on every
    /// connection, so connections that peers opened to this node, or that routed questions
    /// opened, would never idle out, and a node of a large mesh (a bootstrap node above all)
    /// would end up connected to every other, paying for each (pings, gossip control). Extra
    /// ones that other nodes opened, outside the gossip mesh, with no sync in flight and open
    /// for `SPARE_AFTER` (time for the other node to learn the mesh from this one), are
    /// closed, picked at random; those nodes dial someone else, and the connections reopen
    /// when a question needs them.
    fn trim_connections(&mut self) {
        let excess = self.fog_peers.len().saturating_sub(MAX_FOG_PEERS);
        if excess == 0 {
            return;
        }
        let (dialled, now) = (self.dialled_fog_peers(), Instant::now());
        let gossip = &self.swarm.behaviour().gossipsub;
        let in_mesh: HashSet<PeerId> = [summary_topic().hash(), control_topic().hash()]
            .iter()
            .flat_map(|topic| gossip.mesh_peers(topic).copied().collect::<Vec<_>>())
            .collect();
        let mut spare: Vec<PeerId> = self
            .fog_peers
            .iter()
            .filter(|(peer, since)| {
                !in_mesh.contains(peer)
                    && !self.syncing.contains(peer)
                    && !dialled.contains(peer)
                    && now.duration_since(**since) >= SPARE_AFTER
            })
            .map(|(peer, _)| *peer)
            .collect();
        // In a set order first: the dialer's random pick is then the same for the same state.
        spare.sort();
        for peer in self.dialer.spare_to_close(spare, excess) {
            tracing::debug!(%peer, "closing a spare connection");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    /// While a summary heard of is not held, or a summary held names a filter not pulled yet,
    /// syncs with one connected node in turn: at once, then backing off to `republish_interval`
    /// (what no reachable node holds is not asked for every second). Gossip relays an alive
    /// before the relays hold the summary it names, so asking the relay alone is not enough.
    fn pull_missing(&mut self) {
        let now = Instant::now();
        let view = self.mesh.view();
        self.wanted.retain(|origin, version| view.version_of(origin).is_none_or(|held| held < *version));
        if now < self.pull.0 || (self.wanted.is_empty() && !view.lacks_filters()) {
            return;
        }
        let delay = self.pull.1;
        self.pull = (now + delay, (delay * 2).min(self.config.republish_interval));
        if let Some(peer) = self.next_fog_peer() {
            self.sync_with(peer);
        }
    }

    /// Something may be missing (a new summary's filter, a version heard of): pull it at the
    /// next tick, and back off from there.
    fn pull_soon(&mut self) {
        self.pull = (Instant::now(), REDIAL_EVERY);
    }

    /// The next connected fog node in turn (in peer id order, so every one gets its turn).
    fn next_fog_peer(&mut self) -> Option<PeerId> {
        let mut peers: Vec<PeerId> = self.fog_peers.keys().copied().collect();
        peers.sort();
        self.sync_round = self.sync_round.wrapping_add(1);
        (!peers.is_empty()).then(|| peers[self.sync_round % peers.len()])
    }

    /// Fog nodes connected through a connection this node dialled.
    fn dialled_fog_peers(&self) -> HashSet<PeerId> {
        let peers = self.dialled.values().filter_map(|dialled| match dialled {
            Dialled::To(peer) => Some(peer),
            Dialled::Since(_) => None,
        });
        peers.filter(|peer| self.fog_peers.contains_key(peer)).copied().collect()
    }

    /// Dials what the dialer says is due: bootstraps while alone, known fog nodes while fewer
    /// than the target are connected through connections this node dialled.
    fn redial(&mut self) {
        // A dial neither established nor failed within a minute is forgotten (the map stays
        // bounded whatever the swarm reports).
        self.dialled
            .retain(|_, dialled| !matches!(dialled, Dialled::Since(at) if at.elapsed() > DIAL_FORGOTTEN));
        let dialled = self.dialled_fog_peers().len();
        // Lazy: the dialer reads the known nodes' addresses only when it has dials to make.
        let view = self.mesh.view();
        let known = view.remotes().map(|peer| (peer, parse_addrs(&view.addrs_of(&peer))));
        let connected = self.fog_peers.keys().copied().collect();
        let dials = self.dialer.due(Instant::now(), &connected, dialled, known);
        self.dial(dials);
    }

    /// Once per republish interval, while this node has not dialled more than its target: a
    /// feeler to one known fog node not heard from lately and not connected. After a
    /// partition, this is what joins the two sides again (see `dialer`).
    fn feel(&mut self) {
        if self.dialled_fog_peers().len() > DIAL_TARGET {
            return;
        }
        let now = Instant::now();
        let view = self.mesh.view();
        let unheard = view
            .remotes()
            .filter(|peer| !self.fog_peers.contains_key(peer) && !self.heard_lately(peer, now))
            .map(|peer| (peer, parse_addrs(&view.addrs_of(&peer))))
            .collect::<Vec<_>>();
        let feeler = self.dialer.feeler(now, unheard);
        self.dial(feeler);
    }

    fn dial(&mut self, dials: impl IntoIterator<Item = Dial>) {
        for dial in dials {
            let (what, opts) = match dial {
                Dial::Bootstrap(addr) => (addr.to_string(), DialOpts::from(addr)),
                Dial::Known(peer, addrs) => {
                    (peer.to_string(), DialOpts::peer_id(peer).addresses(addrs).build())
                }
            };
            let connection = opts.connection_id();
            match self.swarm.dial(opts) {
                Ok(()) => {
                    tracing::debug!(peer = %what, "dialling to stay in the mesh");
                    self.dialled.insert(connection, Dialled::Since(Instant::now()));
                }
                Err(error) => tracing::debug!(peer = %what, %error, "cannot dial"),
            }
        }
    }

    /// Announces the new addresses: to the handle, in `DATA_DIR/addrs`, in the next summary.
    fn on_addrs_changed(&mut self) {
        let addrs = &self.listening.addrs;
        let _ = self.listening.addrs_tx.send(addrs.clone());
        let lines: String = addrs.iter().map(|addr| format!("{addr}\n")).collect();
        let path = self.config.data_dir.join("addrs");
        let tmp = self.config.data_dir.join("addrs.tmp");
        if let Err(error) = std::fs::write(&tmp, lines).and_then(|()| std::fs::rename(&tmp, &path)) {
            tracing::warn!(path = %path.display(), %error, "cannot write the addresses file");
        }
        self.schedule_publish();
    }

    fn schedule_publish(&mut self) {
        if self.publish.at.is_none() {
            let soonest = tokio::time::Instant::now() + self.config.publish_debounce;
            let paced = self.publish.last.map(|(_, at, _)| at + self.publish_pace());
            self.publish.at = Some(paced.map_or(soonest, |paced| paced.max(soonest)));
        }
    }

    /// The shortest time between two summaries: `publish_interval`, or longer (up to
    /// `MAX_PACE_INTERVALS` of them) so that the summaries every node receives stay within
    /// `summary_budget` bytes a second: this node takes what the others' summaries (heard over
    /// the last `RATE_WINDOW_INTERVALS` publish intervals) leave of the budget, and at least its
    /// fair share of it among the nodes publishing (those heard with two new summaries within a
    /// republish interval). A node that was quiet still publishes its first change at once.
    /// Every window is a multiple of the configured intervals, so a mesh whose timers all run
    /// slower (the simulation's `--slow`) paces itself the same in its own time.
    fn publish_pace(&mut self) -> Duration {
        let interval = self.config.publish_interval;
        let Some((_, _, bytes)) = self.publish.last else { return interval };
        let now = Instant::now();
        let budget = self.config.summary_budget.max(1) as f64;
        let publishers = self.mesh.view().publishers_within(self.config.republish_interval, now).max(1);
        let others = self.publish.others_rate(now, self.rate_window());
        let allowed = (budget / publishers as f64).max(budget - others);
        let longest = interval * MAX_PACE_INTERVALS;
        Duration::from_secs_f64((bytes as f64 / allowed).min(longest.as_secs_f64())).max(interval)
    }

    /// Over how long the other nodes' summary traffic is measured (see `publish_pace`).
    fn rate_window(&self) -> Duration {
        self.config.publish_interval * RATE_WINDOW_INTERVALS
    }

    fn on_ingest_event(&mut self, event: request_response::Event<ingest::Request, ingest::Response>) {
        match event {
            request_response::Event::Message {
                peer,
                message: request_response::Message::Request { request, channel, request_id },
                ..
            } => {
                tracing::debug!(%peer, count = request.readings.len(), "ingest batch");
                self.on_ingest(request.readings, Reply::Peer(channel, request_id));
            }
            request_response::Event::InboundFailure { peer, error, request_id, .. } => {
                self.on_inbound_failure("ingest", peer, request_id, error);
            }
            request_response::Event::ResponseSent { request_id, .. } => {
                self.requests.responding.remove(&("ingest", request_id));
            }
            _ => {}
        }
    }

    fn on_ingest(&mut self, readings: Vec<Reading>, reply: Reply<ingest::Response>) {
        if self.closing {
            let refused = ingest::Response::Refused { reason: "node is shutting down".into() };
            return self.respond(reply, refused);
        }
        // No check of pending questions here: long polls must not starve ingest. The writer's
        // bounded queue is what refuses batches (busy) under load.
        let queued = self.pipeline.submit(readings);
        let answer = super::acknowledged(queued, self.metrics.clone());
        self.requests.pending.push(async move { Finished::Ingest(reply, answer.await) }.boxed());
    }

    /// A peer that sent a request we could not decode is misbehaving: disconnect it.
    fn on_inbound_failure(
        &mut self,
        protocol: &'static str,
        peer: PeerId,
        request_id: InboundRequestId,
        error: InboundFailure,
    ) {
        self.requests.responding.remove(&(protocol, request_id));
        match error {
            InboundFailure::Io(error) if error.kind() == std::io::ErrorKind::InvalidData => {
                if self.metrics.log_allowed("malformed_request") {
                    tracing::warn!(%peer, protocol, %error, "refused a malformed request; disconnecting the peer");
                }
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            error => tracing::debug!(%peer, protocol, %error, "inbound request failed"),
        }
    }

    fn on_finished(&mut self, finished: Finished) {
        match finished {
            Finished::Ingest(reply, response) => self.respond(reply, response),
            Finished::Query(reply, response) => self.respond(reply, *response),
            Finished::Peer(reply, response) => self.respond(reply, *response),
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Query { request, reply } => self.on_query(request, Reply::Local(reply)),
            Command::Ask(ask) => {
                let behaviour = self.swarm.behaviour_mut();
                let id = behaviour.peer.send_request_with_addresses(&ask.peer, ask.request, ask.addrs);
                self.requests.asks.insert(id, ask.reply);
            }
            Command::Apply { command, signed, reply } => {
                let _ = reply.send(self.apply_admin(command, signed, true));
            }
        }
    }

    fn on_query_event(&mut self, event: request_response::Event<query::Request, query::Response>) {
        match event {
            request_response::Event::Message {
                message: request_response::Message::Request { request, channel, request_id },
                ..
            } => self.on_query(request, Reply::Peer(channel, request_id)),
            request_response::Event::InboundFailure { peer, error, request_id, .. } => {
                self.on_inbound_failure("query", peer, request_id, error)
            }
            request_response::Event::ResponseSent { request_id, .. } => {
                self.requests.responding.remove(&("query", request_id));
            }
            _ => {}
        }
    }

    fn on_peer_event(&mut self, event: request_response::Event<peer::Request, peer::Response>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, request_id } => {
                    let reply = Reply::Peer(channel, request_id);
                    if !self.mesh.view().admits(&peer) {
                        tracing::debug!(%peer, "refused a peer question from a node outside the mesh");
                        let refusal = peer::Response::Error("not a fog node of this mesh".into());
                        return self.respond(reply, refusal);
                    }
                    self.on_peer_question(peer, request, reply);
                }
                request_response::Message::Response { request_id, response } => {
                    if let Some(reply) = self.requests.asks.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure { request_id, error, peer, .. } => {
                tracing::debug!(%peer, %error, "question to a peer failed");
                if let Some(reply) = self.requests.asks.remove(&request_id) {
                    let _ = reply.send(Err(AskError::Failed(error.to_string())));
                }
            }
            request_response::Event::InboundFailure { peer, error, request_id, .. } => {
                self.on_inbound_failure("peer", peer, request_id, error)
            }
            request_response::Event::ResponseSent { request_id, .. } => {
                self.requests.responding.remove(&("peer", request_id));
            }
        }
    }

    fn on_sync_event(&mut self, event: request_response::Event<SyncRequest, SyncResponse>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, request_id } => {
                    self.metrics.syncs.get_or_create(&SyncLabels { side: "answered" }).inc();
                    let (response, behind) =
                        self.mesh.answer_sync(&request.digest, limits::SYNC_RESPONSE_BUDGET);
                    if self.swarm.behaviour_mut().sync.send_response(channel, response).is_ok() {
                        self.requests.responding.insert(("sync", request_id));
                    }
                    if behind {
                        // The asker holds something newer: pull it.
                        self.sync_with(peer);
                    }
                }
                request_response::Message::Response { response, .. } => {
                    self.syncing.remove(&peer);
                    let more = response.more;
                    self.merge_sync(peer, response);
                    if more {
                        self.sync_with(peer);
                    }
                }
            },
            request_response::Event::InboundFailure { peer, error, request_id, .. } => {
                self.on_inbound_failure("sync", peer, request_id, error)
            }
            request_response::Event::OutboundFailure { peer, error, .. } => {
                self.syncing.remove(&peer);
                tracing::debug!(%peer, %error, "sync with a peer failed");
            }
            request_response::Event::ResponseSent { request_id, .. } => {
                self.requests.responding.remove(&("sync", request_id));
            }
        }
    }

    fn merge_sync(&mut self, from: PeerId, response: SyncResponse) {
        for signed in response.summaries {
            if let Err(error) = self.merge_summary(signed) {
                if self.metrics.log_allowed("refused_summary") {
                    tracing::warn!(peer = %from, %error, "refused a summary in sync");
                }
            }
        }
        for OriginFilter { origin, filter } in response.filters {
            // A filter that is not the one its summary names is old or forged: dropped.
            if let Ok(origin) = PeerId::from_bytes(&origin) {
                self.mesh.set_filter(&origin, filter);
            }
        }
        for signed in response.commands {
            match self.mesh.verify_command(&signed, None) {
                // Older commands than those in force are superseded and change nothing.
                Ok(command) => {
                    self.apply_admin(command, signed, false);
                }
                Err(error) => tracing::debug!(peer = %from, %error, "not taking an admin command from sync"),
            }
        }
    }

    /// Merges a received summary into the mesh state and saves it when it is newer.
    fn merge_summary(&mut self, signed: SignedSummary) -> Result<Merged, summary::SummaryError> {
        let merged = self.mesh.merge_summary(signed.clone(), Instant::now(), false)?;
        match merged {
            Merged::Newer(origin) => {
                tracing::debug!(%origin, "merged a newer summary");
                // Meters both count (left owned by both after a move): asked about again.
                for span in self.mesh.view().counted_by_both(&origin) {
                    if self.handoffs.ready() {
                        self.on_arrival(span.meter, span.last.ts_ms);
                    }
                }
                // Its filter may be new.
                self.pull_soon();
                self.save_view(&origin.to_string(), &signed);
                // The mesh-wide average may have moved.
                self.update_inputs();
            }
            Merged::OwnAhead(version) => {
                tracing::warn!(
                    version,
                    "the mesh holds a newer summary of this node (store lost or restored?); skipping past it"
                );
                match self.store.skip_summary_versions_past(version) {
                    Ok(()) => {
                        // The mesh holds another summary of this node than the one before.
                        self.publish.whole = true;
                        self.publish_summary();
                    }
                    Err(error) => tracing::error!(%error, "cannot skip summary versions"),
                }
            }
            Merged::Known => {}
        }
        Ok(merged)
    }

    fn save_view(&self, origin: &str, signed: &SignedSummary) {
        let saved = hydromesh_proto::encode(signed)
            .map_err(|e| e.to_string())
            .and_then(|bytes| self.store.save_view(origin, &bytes).map_err(|e| e.to_string()));
        if let Err(error) = saved {
            tracing::warn!(%error, "cannot save a summary");
        }
    }

    fn on_gossip_event(&mut self, event: gossipsub::Event) {
        self.metrics.p2p.record(&event);
        let gossipsub::Event::Message { propagation_source, message_id, message } = event else {
            return;
        };
        let acceptance = if message.topic == control_topic().hash() {
            self.on_control_message(propagation_source, &message.data)
        } else {
            match self.on_summary_message(propagation_source, &message.data) {
                Ok(true) => gossipsub::MessageAcceptance::Accept,
                Ok(false) => gossipsub::MessageAcceptance::Ignore,
                Err(error) => {
                    if self.metrics.log_allowed("refused_summary") {
                        tracing::warn!(peer = %propagation_source, %error, "refused a gossiped summary");
                    }
                    gossipsub::MessageAcceptance::Reject
                }
            }
        };
        self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
            &message_id,
            &propagation_source,
            acceptance,
        );
    }

    /// Takes a summary (whole or as a delta) or a liveness message; whether it was news (to
    /// relay).
    fn on_summary_message(&mut self, source: PeerId, data: &[u8]) -> Result<bool, summary::SummaryError> {
        let (signed, form) = match hydromesh_proto::decode::<Gossip>(data, limits::MAX_SUMMARY_BYTES)? {
            Gossip::Summary(signed) => (signed, "whole"),
            Gossip::Delta(delta) => match self.mesh.view().expand(*delta)? {
                Expanded::Whole(signed) => (signed, "delta"),
                Expanded::Known => return Ok(false),
                Expanded::Behind => {
                    // Only a node that rebuilt the summary relays its delta: the relay holds it
                    // whole. Not relayed from here, as it cannot be checked.
                    self.sync_with(source);
                    self.metrics
                        .summaries_heard
                        .get_or_create(&FormLabels { form: "delta_without_base" })
                        .inc();
                    return Ok(false);
                }
            },
            Gossip::Alive(signed) => return self.on_alive(source, &signed),
        };
        let news = matches!(self.merge_summary(signed)?, Merged::Newer(_));
        if news {
            self.publish.heard(Instant::now(), data.len(), self.rate_window());
            self.metrics.summaries_heard.get_or_create(&FormLabels { form }).inc();
        }
        Ok(news)
    }

    /// Takes a liveness message; whether it was news (to relay).
    fn on_alive(&mut self, source: PeerId, signed: &SignedAlive) -> Result<bool, summary::SummaryError> {
        let (alive, origin) = summary::verify_alive(signed)?;
        match self.mesh.alive(origin, alive.version, alive.at_ms, Instant::now())? {
            Liveness::Refreshed => Ok(true),
            Liveness::Behind => {
                // The relay may hold the newer summary; if not, other peers are asked.
                self.sync_with(source);
                self.wanted.insert(origin, alive.version);
                self.pull_soon();
                Ok(true)
            }
            Liveness::Old => Ok(false),
        }
    }

    fn on_control_message(&mut self, source: PeerId, data: &[u8]) -> gossipsub::MessageAcceptance {
        let verified = hydromesh_proto::decode::<SignedCommand>(data, limits::MAX_COMMAND_BYTES)
            .map_err(|e| mesh::ControlError::Malformed(e.to_string()))
            .and_then(|signed| Ok((self.mesh.verify_command(&signed, None)?, signed)));
        match verified {
            Ok((command, signed)) => match self.apply_admin(command, signed, false) {
                query::Response::Applied(_) => gossipsub::MessageAcceptance::Accept,
                _ => gossipsub::MessageAcceptance::Ignore,
            },
            Err(error) => {
                if self.metrics.log_allowed("refused_command") {
                    tracing::warn!(peer = %source, %error, "refused a gossiped admin command");
                }
                gossipsub::MessageAcceptance::Reject
            }
        }
    }

    /// Applies a verified admin command; when it is new, saves it, spreads it (if asked) and
    /// has every meter judged again.
    pub(super) fn apply_admin(
        &mut self,
        command: AdminCommand,
        signed: SignedCommand,
        publish: bool,
    ) -> query::Response {
        let what = control::describe(&command.action);
        let subject = control::subject(&command.action);
        if self.mesh.apply_command(command, signed.clone()) == Applied::Superseded {
            return query::Response::Error(format!("{what}: a command issued later is already in force"));
        }
        tracing::info!(command = %what, "admin command applied");
        match hydromesh_proto::encode(&signed) {
            Ok(bytes) => {
                if let Err(error) = self.store.save_command(&subject, &bytes) {
                    tracing::error!(%error, "cannot save an admin command");
                }
                if publish {
                    match self.swarm.behaviour_mut().gossipsub.publish(control_topic(), bytes) {
                        Ok(_) | Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {}
                        Err(error) => tracing::warn!(%error, "cannot publish an admin command"),
                    }
                }
            }
            Err(error) => tracing::error!(%error, "cannot encode an admin command"),
        }
        self.update_inputs();
        self.pipeline.reevaluate();
        query::Response::Applied(format!("{what}: applied, and spreading to every node"))
    }

    /// Recomputes the rationing inputs; when they changed, every meter is judged again.
    fn update_inputs(&mut self) {
        let inputs = self.mesh.rationing_inputs(now_ms());
        let changed = self.inputs.send_if_modified(|current| {
            let changed = **current != inputs;
            if changed {
                *current = Arc::new(inputs);
            }
            changed
        });
        if changed {
            self.pipeline.reevaluate();
        }
    }

    fn on_identified(&mut self, peer: PeerId, info: identify::Info) {
        let speaks = |name: &str| info.protocols.iter().any(|p| p.as_ref() == name);
        if speaks(protocols::SYNC) && self.fog_peers.is_empty() {
            // Gossip meshes form over a few heartbeats.
            self.publish.announce_at = Some(Instant::now() + self.config.gossip_heartbeat * 3);
        }
        if speaks(protocols::SYNC) && self.fog_peers.insert(peer, Instant::now()).is_none() {
            self.dialer.connected(&peer, Instant::now());
            // Anti-entropy on every new connection: a late joiner converges without waiting
            // for the next publish.
            self.sync_with(peer);
        }
    }

    /// Asks `peer` for what it holds newer than this node's digest (once at a time per peer).
    fn sync_with(&mut self, peer: PeerId) {
        if self.syncing.insert(peer) {
            self.metrics.syncs.get_or_create(&SyncLabels { side: "asked" }).inc();
            let request = SyncRequest { digest: self.mesh.digest() };
            self.swarm.behaviour_mut().sync.send_request(&peer, request);
        }
    }

    /// Periodic anti-entropy: with one connected fog node in turn, so that whatever gossip lost
    /// (a command published before the mesh formed, a partition) is repaired within a few
    /// rounds; and with every connected fog node whose latest summary gossip did not bring in
    /// time (a partition cut its gossip paths), so that a connected node is never reported
    /// stale.
    fn anti_entropy(&mut self) {
        let now = Instant::now();
        let mut targets: Vec<PeerId> =
            self.fog_peers.keys().copied().filter(|peer| !self.heard_lately(peer, now)).collect();
        targets.extend(self.next_fog_peer());
        // One sync at a time per peer: a peer both late and next is asked once.
        for peer in targets {
            self.sync_with(peer);
        }
    }

    /// Whether `peer`'s latest summary or alive came within two republish intervals: one
    /// missed is chance, two mean its gossip paths are cut (or it is down).
    fn heard_lately(&self, peer: &PeerId, now: Instant) -> bool {
        self.mesh.view().heard_within(peer, self.config.republish_interval * 2, now)
    }

    /// Summary ages, stale nodes and disk use, for `/metrics`.
    fn update_view_metrics(&self) {
        let peers = self.mesh.view().peers(Instant::now(), now_ms());
        self.metrics.node_data_age_seconds.clear();
        for peer in &peers.peers {
            if let Some(ms) = peer.last_heard_ms_ago {
                let labels = OriginLabels { origin: peer.peer.clone() };
                self.metrics.node_data_age_seconds.get_or_create(&labels).set(ms as f64 / 1000.0);
            }
        }
        self.metrics.stale_nodes.set(peers.peers.iter().filter(|p| p.stale).count() as i64);
        if let Ok(bytes) = self.store.size_on_disk() {
            self.metrics.disk_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    }

    /// Builds this node's summary from the local snapshot, signs, saves and gossips it.
    fn publish_summary(&mut self) {
        self.publish.at = None;
        let version = match self.store.next_summary_version() {
            Ok(version) => version,
            Err(error) => return tracing::error!(%error, "cannot reserve a summary version"),
        };
        let local = self.snapshot.borrow_and_update().clone();
        let filter_hash = match &self.filter_hash {
            Some((filter, hash)) if Arc::ptr_eq(filter, &local.filter) => hash.clone(),
            _ => {
                let hash = summary::filter_hash(&local.filter);
                self.filter_hash = Some((local.filter.clone(), hash.clone()));
                hash
            }
        };
        let head = summary::Head {
            origin: self.peer_id,
            name: self.config.name.clone(),
            version,
            generated_at_ms: now_ms(),
            addrs: self.listening.addrs.iter().map(ToString::to_string).collect(),
            filter_hash,
        };
        let floor = self.mesh.view().kth_consumption(self.config.top_k);
        let built = summary::build(head, &local, self.config.top_k, floor);
        let signed = match summary::sign(&self.keypair, &built) {
            Ok(signed) => signed,
            Err(error) => return tracing::error!(%error, "cannot sign the summary"),
        };
        self.save_view(&built.origin, &signed);
        tracing::debug!(version = built.version, meters = built.meter_count, "publishing summary");
        let whole = std::mem::take(&mut self.publish.whole);
        let base = self.mesh.view().local_summary().filter(|_| !whole);
        let message = summary::gossip_form(base, &built, signed.clone());
        self.mesh.set_local(built, signed, local.filter.clone(), Instant::now());
        let bytes = self.gossip(&message);
        self.publish.last = Some((version, tokio::time::Instant::now(), bytes));
        // This node's own figures count in the mesh-wide average too (and alone, they are it).
        self.update_inputs();
    }

    /// Tells the mesh that this node's summary `version` still holds.
    fn publish_alive(&mut self, version: u64) {
        let alive = Alive { origin: self.peer_id.to_bytes(), version, at_ms: now_ms() };
        match summary::sign_alive(&self.keypair, &alive) {
            Ok(signed) => {
                self.gossip(&Gossip::Alive(signed));
            }
            Err(error) => tracing::error!(%error, "cannot sign a liveness message"),
        }
    }

    /// Publishes on the summary topic; returns the message's size.
    fn gossip(&mut self, message: &Gossip) -> usize {
        let bytes = match hydromesh_proto::encode(message) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::error!(%error, "cannot encode a summary message");
                return 0;
            }
        };
        let size = bytes.len();
        match self.swarm.behaviour_mut().gossipsub.publish(summary_topic(), bytes) {
            Ok(_) | Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {}
            Err(error) => tracing::warn!(%error, "cannot publish on the summary topic"),
        }
        size
    }

    /// Sends a response back where its request came from.
    pub(super) fn respond<T: Respond>(&mut self, reply: Reply<T>, response: T) {
        match reply {
            Reply::Peer(channel, request_id) => {
                if T::send(&mut self.swarm, channel, response) {
                    self.requests.responding.insert((T::PROTOCOL, request_id));
                }
            }
            Reply::Local(sender) => {
                let _ = sender.send(response);
            }
        }
    }

    /// The addresses a node announced in its summary.
    pub(super) fn addrs_of(&self, peer: &PeerId) -> Vec<Multiaddr> {
        parse_addrs(&self.mesh.view().addrs_of(peer))
    }
}

/// A response type of a request-response protocol the node answers.
pub(super) trait Respond: Sized {
    /// The protocol's name in the bookkeeping of responses in flight.
    const PROTOCOL: &'static str;
    /// Hands the response to the swarm; false when the stream is gone.
    fn send(swarm: &mut Swarm<Behaviour>, channel: ResponseChannel<Self>, response: Self) -> bool;
}

impl Respond for ingest::Response {
    const PROTOCOL: &'static str = "ingest";
    fn send(swarm: &mut Swarm<Behaviour>, channel: ResponseChannel<Self>, response: Self) -> bool {
        swarm.behaviour_mut().ingest.send_response(channel, response).is_ok()
    }
}

impl Respond for query::Response {
    const PROTOCOL: &'static str = "query";
    fn send(swarm: &mut Swarm<Behaviour>, channel: ResponseChannel<Self>, response: Self) -> bool {
        swarm.behaviour_mut().query.send_response(channel, response).is_ok()
    }
}

impl Respond for peer::Response {
    const PROTOCOL: &'static str = "peer";
    fn send(swarm: &mut Swarm<Behaviour>, channel: ResponseChannel<Self>, response: Self) -> bool {
        swarm.behaviour_mut().peer.send_response(channel, response).is_ok()
    }
}

/// A number of this node's own, from its peer id: the phase of its ticks, the seed of its
/// random picks.
fn peer_seed(peer: &PeerId) -> u64 {
    peer.to_bytes().iter().fold(0u64, |h, b| h.rotate_left(8) ^ u64::from(*b))
}

/// The announced addresses that parse.
fn parse_addrs(addrs: &[String]) -> Vec<Multiaddr> {
    addrs.iter().filter_map(|addr| addr.parse().ok()).collect()
}

/// Over how many publish intervals (10 s by default) the other nodes' summary traffic is
/// measured (see `publish_pace`): two of the longest paces, so that every publishing node is
/// heard in it.
const RATE_WINDOW_INTERVALS: u32 = 10;
/// Most summaries counted in that window: the budget's worth many times over.
const MAX_HEARD: usize = 1024;
/// The longest the summary budget may delay a node's summary, in publish intervals (5 s by
/// default): a new meter is routable, and a change counted, within this (plus the gossip)
/// however busy the mesh.
const MAX_PACE_INTERVALS: u32 = 5;

/// Most fog nodes a node stays connected to (see `trim_connections`).
const MAX_FOG_PEERS: usize = 12;
/// How long a connection another node opened is kept whatever the budget: a joining node
/// learns the mesh from its bootstrap node (a sync, a few gossip heartbeats) before that node
/// closes the connection.
const SPARE_AFTER: Duration = Duration::from_secs(10);

/// A dial the dialer made: in progress since then, or connected to that fog node.
#[derive(Clone, Copy, Debug)]
enum Dialled {
    Since(Instant),
    To(PeerId),
}

/// How long a dial may stay in progress before it is forgotten (see `redial`).
const DIAL_FORGOTTEN: Duration = Duration::from_secs(60);

/// How many fog nodes a node keeps connected by dialling (gossipsub's mesh degree).
const DIAL_TARGET: usize = 4;
/// How often the dialer is asked what is due.
const REDIAL_EVERY: Duration = Duration::from_secs(1);

/// How long a node waits for a peer's part of a routed or fanned-out answer.
pub(super) const PEER_ANSWER_TIMEOUT: Duration = Duration::from_secs(3);
