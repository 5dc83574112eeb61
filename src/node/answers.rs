//! The node's answers: global questions from the merged view at once, windowed rankings from
//! every live node, and a meter's history, bill and live readings routed to its home, plus the
//! peer protocol's questions about this node's own meters.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::{join_all, BoxFuture};
use futures::FutureExt;
use hydromesh_proto::control::SignedCommand;
use hydromesh_proto::query::{self, Bill, Coverage, LocalMeter, MeterAnswer, MeterHistory, TopAnswer};
use hydromesh_proto::summary::MeterSpan;
use hydromesh_proto::{limits, peer, MeterId};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};

use super::event_loop::{Ask, AskError, Command, EventLoop, Finished, Reply, PEER_ANSWER_TIMEOUT};
use super::local::{Local, FOLLOW_WAIT};
use crate::clock::now_ms;
use crate::domain;
use crate::metrics::Metrics;

/// How long a proxying node waits for the home's answer to a follow request.
const FOLLOW_ASK_TIMEOUT: Duration = FOLLOW_WAIT.saturating_add(Duration::from_secs(3));

/// An answer to a question.
#[allow(clippy::large_enum_variant)] // built and consumed at once, never stored
pub(super) enum Answer<T> {
    Now(T),
    Later(BoxFuture<'static, T>),
}

/// Sends questions to peers through the event loop.
#[derive(Clone)]
pub(super) struct Asker(mpsc::Sender<Command>);

/// The nodes that may hold a meter: this one (when it does) and remote ones with their addresses.
#[derive(Clone)]
pub(super) struct Homes {
    local: Option<Local>,
    remote: Vec<(PeerId, Vec<Multiaddr>)>,
}

impl Asker {
    /// Asks one peer, giving up after `timeout`.
    pub(super) async fn ask(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: peer::Request,
        timeout: Duration,
    ) -> Result<peer::Response, AskError> {
        let (reply, answer) = oneshot::channel();
        let ask = Ask { peer, addrs, request, reply };
        self.0.send(Command::Ask(ask)).await.map_err(|_| AskError::Stopping)?;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(AskError::Stopping),
            Err(_) => Err(AskError::Timeout),
        }
    }

    /// Asks every possible home of a meter (this node without the network) at once, and
    /// returns each one's answer.
    async fn ask_homes(
        &self,
        homes: Homes,
        request: peer::Request,
        timeout: Duration,
    ) -> Vec<(PeerId, Result<peer::Response, AskError>)> {
        let local = async {
            match homes.local {
                Some(local) => vec![(local.peer_id, Ok(local.answer(request.clone()).await))],
                None => Vec::new(),
            }
        };
        let remote = join_all(homes.remote.into_iter().map(|(peer, addrs)| {
            let request = request.clone();
            async move { (peer, self.ask(peer, addrs, request, timeout).await) }
        }));
        let (mut answers, remote) = futures::join!(local, remote);
        answers.extend(remote);
        answers
    }
}

impl EventLoop {
    pub(super) fn asker(&self) -> Asker {
        Asker(self.commands.clone())
    }

    /// The possible homes of `meter`: this node alone when it holds the meter, unless
    /// `every_home` (a meter that moved has readings at both).
    fn homes(&self, meter: MeterId, every_home: bool) -> Homes {
        let held = self.local.holds(meter);
        let view = self.mesh.view();
        let remote = if held && !every_home {
            Vec::new()
        } else {
            let mut homes = view.homes_of(meter);
            if homes.is_empty() && !held {
                // A meter newer than every filter this node holds (its home's next summary, or
                // that summary's filter, is still on its way): ask every live node.
                homes = view.live_remotes(Instant::now());
            }
            homes.into_iter().map(|peer| (peer, self.addrs_of(&peer))).collect()
        };
        Homes { local: held.then(|| self.local.clone()), remote }
    }

    /// Answers a client's question, now or through a future, and times it.
    pub(super) fn on_query(&mut self, request: query::Request, reply: Reply<query::Response>) {
        let started = Instant::now();
        // Long polls wait by design: they would only blur the latency figure.
        let timed = !matches!(request, query::Request::Follow { .. });
        let metrics = self.metrics.clone();
        let observe = move || {
            if timed {
                Metrics::observe(&metrics.query_seconds, started.elapsed());
            }
        };
        match self.answer(request) {
            Answer::Now(response) => {
                observe();
                self.respond(reply, response);
            }
            Answer::Later(answer) => self.requests.pending.push(
                answer
                    .map(move |response| {
                        observe();
                        Finished::Query(reply, Box::new(response))
                    })
                    .boxed(),
            ),
        }
    }

    /// Answers a peer's question about this node's own meters.
    pub(super) fn on_peer_question(
        &mut self,
        from: PeerId,
        request: peer::Request,
        reply: Reply<peer::Response>,
    ) {
        let answer = if self.closing {
            Answer::Now(peer::Response::Error("node is shutting down".into()))
        } else if self.is_busy() {
            Answer::Now(peer::Response::Busy)
        } else {
            let follow = matches!(request, peer::Request::Follow { .. });
            let answer = match request {
                // The writer owns the meters' state.
                peer::Request::Handoff { meter, newest_ts_ms } => {
                    let writer = self.pipeline.handoffs();
                    async move {
                        match writer.release(meter, from.to_string(), newest_ts_ms).await {
                            Ok(answer) => peer::Response::Handoff(answer),
                            Err(error) => peer::Response::Error(error),
                        }
                    }
                    .boxed()
                }
                request => self.local.clone().answer(request).boxed(),
            };
            if follow {
                self.hold_follow(answer, peer::Response::Busy)
            } else {
                Answer::Later(answer)
            }
        };
        match answer {
            Answer::Now(response) => self.respond(reply, response),
            Answer::Later(answer) => self
                .requests
                .pending
                .push(answer.map(move |response| Finished::Peer(reply, Box::new(response))).boxed()),
        }
    }

    fn is_busy(&self) -> bool {
        self.requests.pending.len() >= self.config.max_pending_requests
    }

    /// A follow long poll, if a slot is free: they hold their slot for seconds, so at most half
    /// of the pending questions may be follows.
    fn hold_follow<T: Send + 'static>(&self, follow: BoxFuture<'static, T>, busy: T) -> Answer<T> {
        match FollowSlot::take(&self.requests.follows, self.config.max_pending_requests / 2) {
            Some(slot) => Answer::Later(
                async move {
                    let _slot = slot;
                    follow.await
                }
                .boxed(),
            ),
            None => Answer::Now(busy),
        }
    }

    /// The answer to a client's question: at once, or later from a future.
    fn answer(&mut self, request: query::Request) -> Answer<query::Response> {
        if self.closing {
            return Answer::Now(query::Response::Error("node is shutting down".into()));
        }
        if self.is_busy() {
            return Answer::Now(query::Response::Busy);
        }
        let (now, now_ms) = (Instant::now(), now_ms());
        let view = self.mesh.view();
        let later = match request {
            query::Request::Top { n, .. } if n > limits::MAX_TOP_N => {
                let error = format!("n = {n} is too large (at most {})", limits::MAX_TOP_N);
                return Answer::Now(query::Response::Error(error));
            }
            query::Request::Top { n, since_ms: None } if n as usize <= self.config.top_k => {
                return Answer::Now(query::Response::Top(view.top(n as usize, now, now_ms)));
            }
            query::Request::Top { n, since_ms } => {
                let from_ms = since_ms.map_or(0, |since| now_ms.saturating_sub(since));
                self.top_from_every_node(n, from_ms, now)
            }
            query::Request::Stats => return Answer::Now(query::Response::Stats(view.stats(now, now_ms))),
            query::Request::Peers => {
                let mut answer = view.peers(now, now_ms);
                for peer in &mut answer.peers {
                    peer.connected = peer.peer.parse().is_ok_and(|id| self.swarm.is_connected(&id));
                }
                return Answer::Now(query::Response::Peers(answer));
            }
            query::Request::Blocked => {
                return Answer::Now(query::Response::Blocked(view.blocked(now, now_ms)))
            }
            query::Request::Alerts { kind } => {
                return Answer::Now(query::Response::Alerts(view.alerts(kind, now, now_ms)));
            }
            query::Request::Policy => {
                let (policy, origin) = self.mesh.policy();
                return Answer::Now(query::Response::Policy(policy, origin));
            }
            query::Request::Meter { meter, from_ms, to_ms } => {
                let (asker, homes, local) = (self.asker(), self.homes(meter, true), self.local.clone());
                async move {
                    let request = peer::Request::Meter { meter, from_ms, to_ms };
                    let answers = asker.ask_homes(homes.clone(), request, PEER_ANSWER_TIMEOUT).await;
                    let held = answers
                        .iter()
                        .filter(|(_, a)| matches!(a, Ok(peer::Response::Meter(Some(_)))))
                        .count();
                    let mut response = meter_answer(meter, answers);
                    // A meter that moved: its bill is over every home's readings.
                    if let (query::Response::Meter(answer), true) = (&mut response, held > 1) {
                        answer.status.bill = joined_bill(&asker, homes, &local, meter, None).await;
                    }
                    response
                }
                .boxed()
            }
            query::Request::Bill { meter, period_start_ms } => {
                let (asker, homes, local) = (self.asker(), self.homes(meter, true), self.local.clone());
                async move {
                    match joined_bill(&asker, homes, &local, meter, period_start_ms).await {
                        Some(bill) => query::Response::Bill(Some(bill)),
                        None => not_held(meter),
                    }
                }
                .boxed()
            }
            query::Request::Follow { meter, after_ts_ms } => {
                let (asker, homes) = (self.asker(), self.homes(meter, false));
                let follow = async move {
                    let request = peer::Request::Follow { meter, after_ts_ms };
                    let answers = asker.ask_homes(homes, request, FOLLOW_ASK_TIMEOUT).await;
                    answers
                        .into_iter()
                        .find_map(|(home, answer)| match answer {
                            Ok(peer::Response::Readings(Some(readings))) => {
                                Some(query::Response::Readings { home: home.to_string(), readings })
                            }
                            _ => None,
                        })
                        .unwrap_or_else(|| not_held(meter))
                }
                .boxed();
                return self.hold_follow(follow, query::Response::Busy);
            }
            query::Request::Admin(signed) => match self.admin(signed) {
                Ok(answer) => return answer,
                Err(error) => return Answer::Now(query::Response::Error(error)),
            },
        };
        Answer::Later(later)
    }

    /// An admin command from a client: verified here; a command about a meter is applied once
    /// a fog node is found to hold the meter.
    fn admin(&mut self, signed: SignedCommand) -> Result<Answer<query::Response>, String> {
        let command = self.mesh.verify_command(&signed, Some(now_ms())).map_err(|e| e.to_string())?;
        let Some(meter) = crate::mesh::control::meter_of(&command.action).filter(|m| !self.local.holds(*m))
        else {
            return Ok(Answer::Now(self.apply_admin(command, signed, true)));
        };
        let homes = self.homes(meter, false);
        if homes.remote.is_empty() {
            return Err(format!("meter {meter} is unknown: no fog node holds readings of it"));
        }
        let (asker, commands) = (self.asker(), self.commands.clone());
        Ok(Answer::Later(
            async move {
                let request = peer::Request::Bill { meter, at_ms: None };
                let answers = asker.ask_homes(homes, request, PEER_ANSWER_TIMEOUT).await;
                if !answers.iter().any(|(_, answer)| matches!(answer, Ok(peer::Response::Bill(Some(_))))) {
                    return query::Response::Error(format!(
                        "meter {meter} is unknown: no fog node holds readings of it"
                    ));
                }
                let (reply, response) = oneshot::channel();
                if commands.send(Command::Apply { command, signed, reply }).await.is_err() {
                    return query::Response::Error("node is stopping".into());
                }
                response.await.unwrap_or_else(|_| query::Response::Error("node is stopping".into()))
            }
            .boxed(),
        ))
    }

    /// An exact top-N over any window: every live node ranks its own meters, and the answers are
    /// joined. Coverage names the nodes that did not answer.
    fn top_from_every_node(&self, n: u32, from_ms: u64, now: Instant) -> BoxFuture<'static, query::Response> {
        let homes = Homes {
            local: Some(self.local.clone()),
            remote: self
                .mesh
                .view()
                .live_remotes(now)
                .into_iter()
                .map(|peer| (peer, self.addrs_of(&peer)))
                .collect(),
        };
        let asker = self.asker();
        async move {
            let answers =
                asker.ask_homes(homes, peer::Request::Top { n, from_ms }, PEER_ANSWER_TIMEOUT).await;
            top_answer(n, from_ms, answers)
        }
        .boxed()
    }
}

/// Joins every node's ranking of its own meters into the global one.
fn top_answer(
    n: u32,
    from_ms: u64,
    answers: Vec<(PeerId, Result<peer::Response, AskError>)>,
) -> query::Response {
    let mut parts: Vec<(PeerId, Vec<MeterSpan>)> = Vec::new();
    let mut missing = Vec::new();
    for (peer, answer) in answers {
        match answer {
            Ok(peer::Response::Top(spans)) => parts.push((peer, spans)),
            _ => missing.push(peer.to_string()),
        }
    }
    let mut included: Vec<String> = parts.iter().map(|(peer, _)| peer.to_string()).collect();
    included.sort();
    missing.sort();
    let spans = parts.iter().flat_map(|(peer, spans)| spans.iter().map(move |span| (peer, *span)));
    query::Response::Top(TopAnswer {
        entries: domain::rank_joined(spans, n as usize, from_ms),
        coverage: Coverage { included: included.into(), stale: Vec::new(), missing, oldest_data_age_ms: 0 },
    })
}

/// Joins the homes' parts of a meter's history: every reading once, consumption over the
/// window, status from the home with the latest reading.
fn meter_answer(meter: MeterId, answers: Vec<(PeerId, Result<peer::Response, AskError>)>) -> query::Response {
    let mut found: Vec<(PeerId, LocalMeter)> = Vec::new();
    let mut unreachable = 0;
    for (peer, answer) in answers {
        match answer {
            Ok(peer::Response::Meter(Some(local))) => found.push((peer, local)),
            Ok(peer::Response::Meter(None)) => {}
            _ => unreachable += 1,
        }
    }
    let Some((home, status)) = found
        .iter()
        .max_by_key(|(_, local)| latest_ts(&local.history))
        .map(|(peer, local)| (*peer, local.status.clone()))
    else {
        let hint = if unreachable > 0 {
            format!(" ({unreachable} possible home(s) did not answer)")
        } else {
            String::new()
        };
        return query::Response::NotFound(format!("meter {meter} is not held by any known fog node{hint}"));
    };
    let history = domain::merge_histories(found.into_iter().map(|(_, local)| local.history));
    query::Response::Meter(Box::new(MeterAnswer {
        meter,
        home: home.to_string(),
        consumption_l: domain::history_consumption(meter, &history),
        history,
        status,
    }))
}

/// A meter's bill for the period holding `at_ms` (default: now) over every home: the one home's
/// own bill, or, for a meter that moved within the period, the bill of its homes' readings of
/// the period joined (by this node's tariff; the home named is the one with the latest reading).
async fn joined_bill(
    asker: &Asker,
    homes: Homes,
    local: &Local,
    meter: MeterId,
    at_ms: Option<u64>,
) -> Option<Bill> {
    let answers =
        asker.ask_homes(homes.clone(), peer::Request::Bill { meter, at_ms }, PEER_ANSWER_TIMEOUT).await;
    let mut bills = answers.into_iter().filter_map(|(_, answer)| match answer {
        Ok(peer::Response::Bill(Some(bill))) => Some(bill),
        _ => None,
    });
    let first = bills.next()?;
    if bills.next().is_none() {
        return Some(first);
    }
    let period = (first.period_start_ms, first.period_end_ms);
    let request = peer::Request::Meter { meter, from_ms: Some(period.0), to_ms: Some(period.1) };
    let mut parts = Vec::new();
    for (peer, answer) in asker.ask_homes(homes, request, PEER_ANSWER_TIMEOUT).await {
        if let Ok(peer::Response::Meter(Some(held))) = answer {
            parts.push((peer, held.history));
        }
    }
    let home = parts.iter().max_by_key(|(_, history)| latest_ts(history)).map(|(peer, _)| *peer)?;
    let history = domain::merge_histories(parts.into_iter().map(|(_, history)| history));
    Some(local.bill_for(meter, period, domain::history_consumption(meter, &history), home))
}

/// The time of a home's latest reading in a history (the newest home holds the latest).
fn latest_ts(history: &MeterHistory) -> u64 {
    history.readings.last().map_or(0, |reading| reading.ts_ms)
}

fn not_held(meter: MeterId) -> query::Response {
    query::Response::NotFound(format!("meter {meter} is not held by any known fog node"))
}

/// One of the bounded follow slots, given back when the long poll ends (or is dropped).
struct FollowSlot(Arc<AtomicUsize>);

impl FollowSlot {
    fn take(count: &Arc<AtomicUsize>, limit: usize) -> Option<FollowSlot> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit.max(1)).then_some(n + 1))
            .ok()
            .map(|_| FollowSlot(count.clone()))
    }
}

impl Drop for FollowSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use hydromesh_proto::query::{MeterHistory, MeterStatus};
    use hydromesh_proto::summary::Point;
    use hydromesh_proto::{Alarms, Reading};

    use super::*;

    fn peer() -> PeerId {
        libp2p::identity::Keypair::generate_ed25519().public().to_peer_id()
    }

    fn reading(ts_ms: u64, litres: u64) -> Reading {
        Reading { meter: 5.into(), ts_ms, litres, flow_lph: None, alarms: Alarms::empty() }
    }

    fn part(readings: Vec<Reading>) -> peer::Response {
        let history = MeterHistory { baseline: None, readings, truncated: false };
        peer::Response::Meter(Some(LocalMeter { history, status: MeterStatus::default() }))
    }

    #[test]
    fn a_meter_held_by_two_homes_is_joined_and_the_latest_home_answers() {
        let (old_home, new_home, silent) = (peer(), peer(), peer());
        let answers = vec![
            (old_home, Ok(part(vec![reading(10, 100), reading(20, 110)]))),
            (new_home, Ok(part(vec![reading(20, 110), reading(30, 140)]))),
            (silent, Err(AskError::Timeout)),
        ];
        match meter_answer(5.into(), answers) {
            query::Response::Meter(answer) => {
                assert_eq!(answer.home, new_home.to_string());
                assert_eq!(answer.history.readings.len(), 3, "the shared reading counts once");
                assert_eq!(answer.consumption_l, 40);
            }
            other => panic!("expected a meter answer, got {other:?}"),
        }
        let nowhere = meter_answer(
            5.into(),
            vec![(old_home, Ok(peer::Response::Meter(None))), (silent, Err(AskError::Timeout))],
        );
        assert!(
            matches!(nowhere, query::Response::NotFound(text) if text.contains("1 possible home(s) did not answer"))
        );
    }

    #[test]
    fn a_windowed_top_joins_every_node_and_names_the_missing() {
        let (a, b, silent) = (peer(), peer(), peer());
        let span = |meter, first: u64, last: u64| MeterSpan {
            meter,
            first: Point { ts_ms: first, litres: first * 10 },
            last: Point { ts_ms: last, litres: last * 10 },
        };
        let answers = vec![
            (a, Ok(peer::Response::Top(vec![span(1.into(), 0, 5), span(2.into(), 0, 3)]))),
            (b, Ok(peer::Response::Top(vec![span(1.into(), 5, 9), span(3.into(), 0, 4)]))),
            (silent, Ok(peer::Response::Busy)),
        ];
        let query::Response::Top(top) = top_answer(2, 0, answers) else { panic!("expected a ranking") };
        let got: Vec<_> = top.entries.iter().map(|e| (e.meter, e.consumption_l, e.home.clone())).collect();
        assert_eq!(got, vec![(1.into(), 90, b.to_string()), (3.into(), 40, b.to_string())]);
        assert_eq!(top.coverage.missing, vec![silent.to_string()]);
        assert_eq!(top.coverage.included.len(), 2);
    }
}
