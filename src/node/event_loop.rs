//! The event loop that owns the swarm, the merged view and every pending request.
//!
//! One task, one `select!`: swarm events, finished requests, questions to peers from routed
//! queries, store changes (debounced summary publish), the republish timer, and cancellation,
//! first. Work that may block (sled reads) runs on the blocking pool and comes back as a
//! finished future; nothing a peer sends can stall the loop.

use std::collections::{HashMap, HashSet};
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::{join_all, BoxFuture};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use hydromesh_proto::control::SignedCommand;
use hydromesh_proto::query::{self, Coverage, MeterAnswer, TopAnswer, TopEntry};
use hydromesh_proto::summary::{
    MeterFilter, MeterSpan, NodeSummary, SignedSummary, SyncRequest, SyncResponse,
};
use hydromesh_proto::{ingest, limits, protocols, MeterId, Reading};
use libp2p::core::transport::ListenerId;
use libp2p::identity::Keypair;
use libp2p::metrics::Recorder;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, InboundFailure, InboundRequestId, OutboundRequestId, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::{gossipsub, identify, mdns, Multiaddr, PeerId, Swarm};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::behaviour::{Behaviour, BehaviourEvent};
use super::ingest_pipeline::{Channels, Job, LocalState, Pipeline};
use super::NodeError;
use crate::clock::{now_ms, sleep_until};
use crate::config::Config;
use crate::control::ControlState;
use crate::domain;
use crate::domain::rules::RationingInputs;
use crate::mesh::{Merged, View};
use crate::metrics::{Metrics, OriginLabels};
use crate::protocol::{self, summary};
use crate::store::{Store, StoreError};

/// How long a node waits for a peer's part of a routed or fanned-out answer.
const PEER_ANSWER_TIMEOUT: Duration = Duration::from_secs(3);
mod queries;
mod rules;

/// How long shutdown waits for in-flight requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A request answered later, once its future completes.
enum Finished {
    Ingest(Reply<ingest::Response>, ingest::Response),
    Query(Reply<query::Response>, Box<query::Response>),
}

/// An answer to a question.
#[allow(clippy::large_enum_variant)] // built and consumed at once, never stored
enum Answer {
    Now(query::Response),
    Later(BoxFuture<'static, query::Response>),
}

/// Where an answer goes: back to a peer on its stream, or to a caller in this process.
enum Reply<T> {
    Peer(ResponseChannel<T>, InboundRequestId),
    Local(oneshot::Sender<T>),
}

/// A client of this node inside its own process (the HTTP API, MQTT ingest, embedders): the
/// same questions and readings as over libp2p, through the same checks and bounds.
#[derive(Clone)]
pub struct LocalClient(mpsc::Sender<Internal>);

impl LocalClient {
    /// Asks the node a question. An overloaded node answers [`query::Response::Busy`].
    pub async fn query(&self, request: query::Request) -> query::Response {
        let (reply, answer) = oneshot::channel();
        match self.0.try_send(Internal::Query { request, reply }) {
            Ok(()) => answer.await.unwrap_or_else(|_| query::Response::Error("node is stopping".into())),
            Err(mpsc::error::TrySendError::Full(_)) => query::Response::Busy,
            Err(mpsc::error::TrySendError::Closed(_)) => query::Response::Error("node is stopping".into()),
        }
    }

    /// Sends readings; the answer comes once they are durable.
    pub async fn ingest(&self, readings: Vec<Reading>) -> ingest::Response {
        let stopping = || ingest::Response::Refused { reason: "node is stopping".into() };
        let (reply, answer) = oneshot::channel();
        match self.0.try_send(Internal::Ingest { readings, reply }) {
            Ok(()) => answer.await.unwrap_or_else(|_| stopping()),
            Err(mpsc::error::TrySendError::Full(_)) => ingest::Response::Busy { retry_after_ms: 100 },
            Err(mpsc::error::TrySendError::Closed(_)) => stopping(),
        }
    }
}

/// Work that futures and in-process clients hand to the event loop.
pub(crate) enum Internal {
    /// Ask a peer a question.
    Ask(Ask),
    /// Apply a verified admin command (after its meter was found) and answer with the outcome.
    Apply(rules::Apply),
    /// A question from a client in this process.
    Query { request: query::Request, reply: oneshot::Sender<query::Response> },
    /// Readings from a client in this process.
    Ingest { readings: Vec<Reading>, reply: oneshot::Sender<ingest::Response> },
}

/// A question for a peer, from a routed query.
pub(crate) struct Ask {
    peer: PeerId,
    addrs: Vec<Multiaddr>,
    request: query::Request,
    reply: oneshot::Sender<Result<query::Response, String>>,
}

/// Sends questions to peers through the event loop.
#[derive(Clone)]
struct Asker(mpsc::Sender<Internal>);

impl Asker {
    async fn ask(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: query::Request,
    ) -> Result<query::Response, String> {
        self.ask_within(peer, addrs, request, PEER_ANSWER_TIMEOUT).await
    }

    async fn ask_within(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: query::Request,
        timeout: Duration,
    ) -> Result<query::Response, String> {
        let (reply, answer) = oneshot::channel();
        let ask = Ask { peer, addrs, request, reply };
        self.0.send(Internal::Ask(ask)).await.map_err(|_| "node is stopping".to_owned())?;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err("node is stopping".to_owned()),
            Err(_) => Err("no answer in time".to_owned()),
        }
    }
}

pub struct EventLoop {
    config: Config,
    keypair: Keypair,
    peer_id: PeerId,
    swarm: Swarm<Behaviour>,
    store: Arc<Store>,
    view: View,
    pipeline: Pipeline,
    metrics: Arc<Metrics>,
    local_state: watch::Receiver<Arc<LocalState>>,
    inputs: watch::Sender<Arc<RationingInputs>>,
    accepted: broadcast::Sender<Arc<Vec<Reading>>>,
    control: ControlState,
    pending: FuturesUnordered<BoxFuture<'static, Finished>>,
    asks: HashMap<OutboundRequestId, oneshot::Sender<Result<query::Response, String>>>,
    ask_tx: mpsc::Sender<Internal>,
    ask_rx: mpsc::Receiver<Internal>,
    listeners: Vec<ListenerId>,
    listen_addrs: Vec<Multiaddr>,
    addrs_tx: watch::Sender<Vec<Multiaddr>>,
    publish_at: Option<tokio::time::Instant>,
    /// Responses handed to the swarm and not yet sent (or failed), by protocol: shutdown waits
    /// for them.
    responding: HashSet<(&'static str, InboundRequestId)>,
    /// Follow long polls held open, bounded apart from other questions.
    follows: Arc<std::sync::atomic::AtomicUsize>,
    /// Connected peers that speak sync (fog nodes), for periodic anti-entropy.
    fog_peers: HashSet<PeerId>,
    sync_round: usize,
    closing: bool,
    cancel: CancellationToken,
}

impl EventLoop {
    pub fn new(
        config: Config,
        keypair: Keypair,
        store: Arc<Store>,
        addrs_tx: watch::Sender<Vec<Multiaddr>>,
        metrics: Arc<Metrics>,
        cancel: CancellationToken,
    ) -> Result<Self, NodeError> {
        let peer_id = keypair.public().to_peer_id();
        let behaviour = Behaviour::new(&keypair, &config).map_err(NodeError::Network)?;
        let mut swarm = protocol::build_swarm(keypair.clone(), config.idle_connection_timeout, behaviour)
            .map_err(|e| NodeError::Network(e.to_string()))?;
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&summary::topic())
            .map_err(|e| NodeError::Network(format!("cannot subscribe to the summary topic: {e}")))?;
        let mut listeners = Vec::new();
        for addr in &config.listen {
            let listener = swarm
                .listen_on(addr.clone())
                .map_err(|e| NodeError::Listen { addr: addr.clone(), reason: e.to_string() })?;
            listeners.push(listener);
        }
        for addr in &config.bootstrap {
            if let Some((peer, bare)) = split_peer(addr) {
                swarm.behaviour_mut().kad.add_address(&peer, bare);
            }
            if let Err(error) = swarm.dial(addr.clone()) {
                tracing::warn!(%addr, %error, "cannot dial bootstrap peer");
            }
        }
        let mut view = View::new(peer_id, config.stale_after);
        if config.fog_nodes.is_empty() {
            tracing::warn!("no fog_nodes configured: any peer may join this mesh and publish figures");
        } else {
            view.restrict_to(config.fog_nodes.iter().copied());
        }
        for bytes in store.views()? {
            let restored = hydromesh_proto::decode::<SignedSummary>(&bytes, limits::MAX_SUMMARY_BYTES)
                .map_err(|e| e.to_string())
                .and_then(|signed| view.merge(signed, Instant::now(), true).map_err(|e| e.to_string()));
            if let Err(error) = restored {
                tracing::warn!(%error, "dropping an unreadable saved summary");
            }
        }
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&rules::control_topic())
            .map_err(|e| NodeError::Network(format!("cannot subscribe to the control topic: {e}")))?;
        let control = rules::restore_control(&store, &config.admin_keys)?;
        let (inputs, inputs_rx) = watch::channel(Arc::new(rules::rationing_inputs(&config, &control, None)));
        let (state_tx, local_state) = watch::channel(Arc::new(LocalState::default()));
        let (accepted, _) = broadcast::channel(1024);
        let channels = Channels {
            inputs: inputs_rx,
            state: state_tx,
            accepted: accepted.clone(),
            metrics: metrics.clone(),
        };
        let pipeline = Pipeline::start(store.clone(), config.ingest_queue_batches, channels)
            .map_err(|e| NodeError::Network(format!("cannot start the ingest thread: {e}")))?;
        let (ask_tx, ask_rx) = mpsc::channel(config.max_pending_requests.max(1));
        Ok(EventLoop {
            config,
            keypair,
            peer_id,
            swarm,
            store,
            view,
            pipeline,
            metrics,
            local_state,
            inputs,
            accepted,
            control,
            pending: FuturesUnordered::new(),
            asks: HashMap::new(),
            ask_tx,
            ask_rx,
            listeners,
            listen_addrs: Vec::new(),
            addrs_tx,
            publish_at: None,
            responding: HashSet::new(),
            follows: Arc::default(),
            fog_peers: HashSet::new(),
            sync_round: 0,
            closing: false,
            cancel,
        })
    }

    /// A client of this node for callers in the same process.
    pub fn local_client(&self) -> LocalClient {
        LocalClient(self.ask_tx.clone())
    }

    pub async fn run(mut self) {
        tracing::info!(peer_id = %self.peer_id, name = %self.config.name, "fog node started");
        let mut republish = tokio::time::interval(self.config.republish_interval);
        republish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let publish_at = self.publish_at;
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => break,
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some(finished) = self.pending.next(), if !self.pending.is_empty() => self.on_finished(finished),
                Some(internal) = self.ask_rx.recv() => self.on_internal(internal),
                Ok(()) = self.local_state.changed() => {
                    if self.publish_at.is_none() {
                        self.publish_at = Some(tokio::time::Instant::now() + self.config.publish_debounce);
                    }
                }
                () = sleep_until(publish_at), if publish_at.is_some() => self.publish_summary(),
                _ = republish.tick() => {
                    // Time passes: debt grace times end and periods roll over.
                    self.reevaluate();
                    self.publish_summary();
                    self.sync_with_next_peer();
                    self.update_view_metrics();
                    for origin in self.view.forget_older_than(self.config.forget_after, Instant::now()) {
                        tracing::info!(%origin, "forgetting a fog node not heard from for too long");
                        if let Err(error) = self.store.forget_view(&origin.to_string()) {
                            tracing::warn!(%error, "cannot forget a saved summary");
                        }
                    }
                }
            }
        }
        self.shut_down().await;
    }

    /// Stops accepting, finishes in-flight requests, then stops the ingest thread (which
    /// flushes the store).
    async fn shut_down(mut self) {
        tracing::info!("shutting down: finishing in-flight requests");
        self.closing = true;
        for listener in std::mem::take(&mut self.listeners) {
            self.swarm.remove_listener(listener);
        }
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        let mut grace = pin!(tokio::time::sleep_until(deadline));
        while !self.pending.is_empty() || !self.responding.is_empty() {
            tokio::select! {
                () = &mut grace => {
                    tracing::warn!(pending = self.pending.len(), "shutdown grace period over");
                    break;
                }
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some(finished) = self.pending.next(), if !self.pending.is_empty() => self.on_finished(finished),
                Some(internal) = self.ask_rx.recv() => self.on_internal(internal),
            }
        }
        self.pipeline.stop().await;
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.flush()).await {
            Ok(Ok(())) => tracing::info!("store flushed; node stopped"),
            Ok(Err(error)) => tracing::error!(%error, "final flush failed"),
            Err(error) => tracing::error!(%error, "final flush task failed"),
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.metrics.p2p.record(&event);
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Ingest(event)) => self.on_ingest_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Query(event)) => self.on_query_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Sync(event)) => self.on_sync_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(event)) => self.on_gossip_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(event)) => {
                self.metrics.p2p.record(&event);
                if let identify::Event::Received { peer_id, info, .. } = event {
                    self.on_identified(peer_id, info);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.metrics.p2p.record(&event),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(event)) => self.metrics.p2p.record(&event),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    tracing::debug!(%peer, %addr, "mDNS discovered a peer");
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                    if !self.swarm.is_connected(&peer) {
                        let _ = self.swarm.dial(addr);
                    }
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                let full = address.with_p2p(self.peer_id).unwrap_or_else(|addr| addr);
                tracing::info!(addr = %full, "listening");
                self.listen_addrs.push(full);
                self.on_addrs_changed();
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                let full = address.with_p2p(self.peer_id).unwrap_or_else(|addr| addr);
                self.listen_addrs.retain(|addr| *addr != full);
                self.on_addrs_changed();
            }
            SwarmEvent::ListenerError { error, .. } => tracing::warn!(%error, "listener error"),
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                tracing::debug!(%peer_id, addr = %endpoint.get_remote_address(), "connected");
            }
            SwarmEvent::ConnectionClosed { peer_id, cause, num_established, .. } => {
                tracing::debug!(%peer_id, ?cause, "connection closed");
                if num_established == 0 {
                    self.fog_peers.remove(&peer_id);
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(?peer_id, %error, "outgoing connection failed");
            }
            SwarmEvent::IncomingConnectionError { error, send_back_addr, .. } => {
                tracing::debug!(%send_back_addr, %error, "incoming connection failed");
            }
            _ => {}
        }
    }

    fn on_addrs_changed(&mut self) {
        let _ = self.addrs_tx.send(self.listen_addrs.clone());
        let lines: String = self.listen_addrs.iter().map(|addr| format!("{addr}\n")).collect();
        let path = self.config.data_dir.join("addrs");
        let tmp = self.config.data_dir.join("addrs.tmp");
        if let Err(error) = std::fs::write(&tmp, lines).and_then(|()| std::fs::rename(&tmp, &path)) {
            tracing::warn!(path = %path.display(), %error, "cannot write the addresses file");
        }
        self.schedule_publish();
    }

    fn schedule_publish(&mut self) {
        if self.publish_at.is_none() {
            self.publish_at = Some(tokio::time::Instant::now() + self.config.publish_debounce);
        }
    }

    fn is_busy(&self) -> bool {
        self.pending.len() >= self.config.max_pending_requests
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
                self.responding.remove(&("ingest", request_id));
            }
            _ => {}
        }
    }

    fn on_ingest(&mut self, readings: Vec<Reading>, channel: Reply<ingest::Response>) {
        let count = readings.len();
        if self.closing {
            let reason = "node is shutting down".to_owned();
            return self.respond_ingest(channel, ingest::Response::Refused { reason });
        }
        if count > limits::MAX_BATCH_READINGS {
            let reason = format!("{count} readings in one batch (at most {})", limits::MAX_BATCH_READINGS);
            return self.respond_ingest(channel, ingest::Response::Refused { reason });
        }
        // No check of pending questions here: long polls must not starve ingest. The pipeline's
        // bounded queue is what refuses batches (busy) under load.
        let (reply, outcomes) = oneshot::channel();
        let (started, metrics) = (Instant::now(), self.metrics.clone());
        match self.pipeline.jobs.try_send(Job::Ingest { readings, reply }) {
            Ok(()) => self.pending.push(
                async move {
                    let outcomes = outcomes.await;
                    Metrics::observe(&metrics.ingest_batch_seconds, started.elapsed());
                    let response = match outcomes {
                        Ok(Ok((outcomes, commands))) => ingest::Response::Done { outcomes, commands },
                        Ok(Err(error)) => {
                            ingest::Response::Refused { reason: format!("storage failure: {error}") }
                        }
                        Err(_) => ingest::Response::Refused { reason: "node is shutting down".into() },
                    };
                    Finished::Ingest(channel, response)
                }
                .boxed(),
            ),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.respond_ingest(channel, ingest::Response::Busy { retry_after_ms: 100 })
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                let reason = "node is shutting down".to_owned();
                self.respond_ingest(channel, ingest::Response::Refused { reason })
            }
        }
    }

    /// A peer that sent a request we could not decode is misbehaving: disconnect it.
    fn on_inbound_failure(
        &mut self,
        protocol: &'static str,
        peer: PeerId,
        request_id: InboundRequestId,
        error: InboundFailure,
    ) {
        self.responding.remove(&(protocol, request_id));
        match error {
            InboundFailure::Io(error) if error.kind() == std::io::ErrorKind::InvalidData => {
                tracing::warn!(%peer, protocol, %error, "refused a malformed request; disconnecting the peer");
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            error => tracing::debug!(%peer, protocol, %error, "inbound request failed"),
        }
    }

    fn respond_ingest(&mut self, reply: Reply<ingest::Response>, response: ingest::Response) {
        match reply {
            Reply::Peer(channel, request_id) => {
                if self.swarm.behaviour_mut().ingest.send_response(channel, response).is_ok() {
                    self.responding.insert(("ingest", request_id));
                }
            }
            Reply::Local(sender) => {
                let _ = sender.send(response);
            }
        }
    }

    fn respond_query(&mut self, reply: Reply<query::Response>, response: query::Response) {
        match reply {
            Reply::Peer(channel, request_id) => {
                if self.swarm.behaviour_mut().query.send_response(channel, response).is_ok() {
                    self.responding.insert(("query", request_id));
                }
            }
            Reply::Local(sender) => {
                let _ = sender.send(response);
            }
        }
    }

    fn on_finished(&mut self, finished: Finished) {
        match finished {
            Finished::Ingest(channel, response) => self.respond_ingest(channel, response),
            Finished::Query(channel, response) => self.respond_query(channel, *response),
        }
    }

    fn on_internal(&mut self, internal: Internal) {
        match internal {
            Internal::Ask(ask) => self.on_ask(ask),
            Internal::Apply(apply) => self.on_apply(apply),
            Internal::Query { request, reply } => self.on_query(request, Reply::Local(reply)),
            Internal::Ingest { readings, reply } => self.on_ingest(readings, Reply::Local(reply)),
        }
    }

    fn on_ask(&mut self, ask: Ask) {
        let id =
            self.swarm.behaviour_mut().query.send_request_with_addresses(&ask.peer, ask.request, ask.addrs);
        self.asks.insert(id, ask.reply);
    }

    fn on_query_event(&mut self, event: request_response::Event<query::Request, query::Response>) {
        match event {
            request_response::Event::Message { message, .. } => match message {
                request_response::Message::Request { request, channel, request_id } => {
                    self.on_query(request, Reply::Peer(channel, request_id))
                }
                request_response::Message::Response { request_id, response } => {
                    if let Some(reply) = self.asks.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure { request_id, error, peer, .. } => {
                tracing::debug!(%peer, %error, "question to a peer failed");
                if let Some(reply) = self.asks.remove(&request_id) {
                    let _ = reply.send(Err(error.to_string()));
                }
            }
            request_response::Event::InboundFailure { peer, error, request_id, .. } => {
                self.on_inbound_failure("query", peer, request_id, error)
            }
            request_response::Event::ResponseSent { request_id, .. } => {
                self.responding.remove(&("query", request_id));
            }
        }
    }

    fn on_query(&mut self, request: query::Request, channel: Reply<query::Response>) {
        let started = Instant::now();
        // Long polls wait by design: they would only blur the latency figure.
        let timed = !matches!(request, query::Request::Follow { .. } | query::Request::LocalFollow { .. });
        let metrics = self.metrics.clone();
        let observe = move || {
            if timed {
                Metrics::observe(&metrics.query_seconds, started.elapsed());
            }
        };
        match self.answer(request) {
            Answer::Now(response) => {
                observe();
                self.respond_query(channel, response);
            }
            Answer::Later(answer) => self.pending.push(
                answer
                    .map(move |response| {
                        observe();
                        Finished::Query(channel, Box::new(response))
                    })
                    .boxed(),
            ),
        }
    }

    fn asker(&self) -> Asker {
        Asker(self.ask_tx.clone())
    }

    fn addrs_of(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.view.addrs_of(peer).iter().filter_map(|addr| addr.parse().ok()).collect()
    }

    fn on_sync_event(&mut self, event: request_response::Event<SyncRequest, SyncResponse>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, request_id } => {
                    self.merge_all(peer, request.summaries);
                    self.merge_commands(peer, request.commands);
                    let response =
                        SyncResponse { summaries: self.view.signed(), commands: self.control.signed() };
                    if self.swarm.behaviour_mut().sync.send_response(channel, response).is_ok() {
                        self.responding.insert(("sync", request_id));
                    }
                }
                request_response::Message::Response { response, .. } => {
                    self.merge_all(peer, response.summaries);
                    self.merge_commands(peer, response.commands);
                }
            },
            request_response::Event::InboundFailure { peer, error, request_id, .. } => {
                self.on_inbound_failure("sync", peer, request_id, error)
            }
            request_response::Event::OutboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "sync with a peer failed");
            }
            request_response::Event::ResponseSent { request_id, .. } => {
                self.responding.remove(&("sync", request_id));
            }
        }
    }

    fn merge_all(&mut self, from: PeerId, summaries: Vec<SignedSummary>) {
        for signed in summaries {
            if let Err(error) = self.merge(signed) {
                tracing::warn!(peer = %from, %error, "refused a summary in sync");
            }
        }
    }

    /// Merges a received summary into the view and saves it when it is newer.
    fn merge(&mut self, signed: SignedSummary) -> Result<Merged, summary::SummaryError> {
        let merged = self.view.merge(signed.clone(), Instant::now(), false)?;
        if let Merged::Newer(origin) = merged {
            tracing::debug!(%origin, "merged a newer summary");
            let saved = hydromesh_proto::encode(&signed).map_err(|e| e.to_string()).and_then(|bytes| {
                self.store.save_view(&origin.to_string(), &bytes).map_err(|e| e.to_string())
            });
            if let Err(error) = saved {
                tracing::warn!(%error, "cannot save a merged summary");
            }
            // The mesh-wide average may have moved.
            self.update_inputs();
        }
        if let Merged::OwnAhead(version) = merged {
            tracing::warn!(
                version,
                "the mesh holds a newer summary of this node (store lost or restored?); skipping past it"
            );
            match self.store.skip_summary_versions_past(version) {
                Ok(()) => self.publish_summary(),
                Err(error) => tracing::error!(%error, "cannot skip summary versions"),
            }
        }
        Ok(merged)
    }

    fn on_gossip_event(&mut self, event: gossipsub::Event) {
        self.metrics.p2p.record(&event);
        let gossipsub::Event::Message { propagation_source, message_id, message } = event else {
            return;
        };
        if message.topic == rules::control_topic().hash() {
            let acceptance = self.on_control_message(propagation_source, &message.data);
            self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                &message_id,
                &propagation_source,
                acceptance,
            );
            return;
        }
        let acceptance =
            match hydromesh_proto::decode::<SignedSummary>(&message.data, limits::MAX_SUMMARY_BYTES)
                .map_err(summary::SummaryError::from)
                .and_then(|signed| self.merge(signed))
            {
                Ok(Merged::Newer(_)) => gossipsub::MessageAcceptance::Accept,
                Ok(Merged::Known | Merged::OwnAhead(_)) => gossipsub::MessageAcceptance::Ignore,
                Err(error) => {
                    tracing::warn!(peer = %propagation_source, %error, "refused a gossiped summary");
                    gossipsub::MessageAcceptance::Reject
                }
            };
        self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
            &message_id,
            &propagation_source,
            acceptance,
        );
    }

    fn on_identified(&mut self, peer: PeerId, info: identify::Info) {
        let speaks = |name: &str| info.protocols.iter().any(|p| p.as_ref() == name);
        if speaks(protocols::KAD) {
            for addr in &info.listen_addrs {
                self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
            }
        }
        if speaks(protocols::SYNC) && self.fog_peers.insert(peer) {
            // Anti-entropy on every new connection: a late joiner converges without waiting
            // for the next publish.
            self.sync_with(peer);
        }
    }

    fn sync_with(&mut self, peer: PeerId) {
        let request = SyncRequest { summaries: self.view.signed(), commands: self.control.signed() };
        self.swarm.behaviour_mut().sync.send_request(&peer, request);
    }

    /// Periodic anti-entropy with one connected fog node, in turn: whatever gossip lost (a
    /// command published before the mesh formed, a partition) is repaired within a few rounds.
    fn sync_with_next_peer(&mut self) {
        self.sync_round = self.sync_round.wrapping_add(1);
        let peers: Vec<PeerId> = self.fog_peers.iter().copied().collect();
        if !peers.is_empty() {
            self.sync_with(peers[self.sync_round % peers.len()]);
        }
    }

    /// Summary ages, stale nodes and disk use, for `/metrics`.
    fn update_view_metrics(&self) {
        let peers = self.view.peers(Instant::now(), now_ms());
        self.metrics.summary_age_seconds.clear();
        for peer in &peers.peers {
            if let Some(ms) = peer.last_heard_ms_ago {
                let labels = OriginLabels { origin: peer.peer.clone() };
                self.metrics.summary_age_seconds.get_or_create(&labels).set(ms as f64 / 1000.0);
            }
        }
        self.metrics.stale_nodes.set(peers.peers.iter().filter(|p| p.stale).count() as i64);
        if let Ok(bytes) = self.store.size_on_disk() {
            self.metrics.disk_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    }

    fn publish_summary(&mut self) {
        self.publish_at = None;
        let summary = match self.build_summary() {
            Ok(summary) => summary,
            Err(error) => return tracing::error!(%error, "cannot build the summary"),
        };
        let signed = match summary::sign(&self.keypair, &summary) {
            Ok(signed) => signed,
            Err(error) => return tracing::error!(%error, "cannot sign the summary"),
        };
        let bytes = match hydromesh_proto::encode(&signed) {
            Ok(bytes) => bytes,
            Err(error) => return tracing::error!(%error, "cannot encode the summary"),
        };
        if let Err(error) = self.store.save_view(&summary.origin, &bytes) {
            tracing::warn!(%error, "cannot save the own summary");
        }
        tracing::debug!(version = summary.version, meters = summary.meter_count, "publishing summary");
        self.view.set_local(summary, signed, Instant::now());
        match self.swarm.behaviour_mut().gossipsub.publish(summary::topic(), bytes) {
            Ok(_) | Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {}
            Err(error) => tracing::warn!(%error, "cannot publish the summary"),
        }
        // This node's own figures count in the mesh-wide average too (and alone, they are it).
        self.update_inputs();
    }

    fn build_summary(&self) -> Result<NodeSummary, crate::store::StoreError> {
        let version = self.store.next_summary_version()?;
        let local = self.local_state.borrow().clone();
        let mut alerts = self.store.all_alerts();
        let truncated =
            alerts.len() > limits::MAX_SUMMARY_ENTRIES || local.blocked.len() > limits::MAX_SUMMARY_ENTRIES;
        alerts.truncate(limits::MAX_SUMMARY_ENTRIES);
        let blocked = local
            .blocked
            .values()
            .take(limits::MAX_SUMMARY_ENTRIES)
            .map(|b| hydromesh_proto::summary::Blocked { detail: truncate(&b.detail, 64), ..b.clone() })
            .collect();
        let top_k = self.config.top_k.min(summary::MAX_TOP_K);
        let (meter_count, total_consumption_l, top, filter) = self.store.with_meters(|meters| {
            let mut filter = MeterFilter::with_capacity(meters.len());
            let mut total = 0u64;
            for span in meters.values() {
                filter.insert(span.meter);
                total = total.saturating_add(domain::span_consumption(span));
            }
            let top = domain::rank(meters.values().copied().collect(), top_k);
            (meters.len() as u64, total, top, filter)
        });
        Ok(NodeSummary {
            origin: self.peer_id.to_string(),
            name: truncate(&self.config.name, limits::MAX_NAME_BYTES),
            version,
            generated_at_ms: now_ms(),
            addrs: self.listen_addrs.iter().map(ToString::to_string).take(16).collect(),
            meter_count,
            total_consumption_l,
            top,
            filter,
            period_start_ms: local.period_start_ms,
            period_consumption_l: local.period_consumption_l,
            period_meters: local.period_meters,
            blocked,
            alerts,
            truncated,
        })
    }
}

/// Runs blocking store work (sled reads) on the blocking pool.
fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> BoxFuture<'static, Result<T, String>> {
    async move {
        match tokio::task::spawn_blocking(work).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(error) => Err(format!("internal error: {error}")),
        }
    }
    .boxed()
}

/// The peer id at the end of an address, and the address without it.
fn split_peer(addr: &Multiaddr) -> Option<(PeerId, Multiaddr)> {
    let mut bare = addr.clone();
    match bare.pop() {
        Some(Protocol::P2p(peer)) => Some((peer, bare)),
        _ => None,
    }
}

fn truncate(text: &str, max_bytes: usize) -> String {
    let mut end = text.len().min(max_bytes);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}
