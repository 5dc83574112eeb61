//! The event loop's answers to questions: global ones from the merged view, windowed rankings
//! from every node, and one meter's history routed to its home.

use super::*;

/// One of the bounded follow slots, given back when the long poll ends (or is dropped).
struct FollowSlot(Arc<std::sync::atomic::AtomicUsize>);

impl FollowSlot {
    fn take(count: &Arc<std::sync::atomic::AtomicUsize>, limit: usize) -> Option<FollowSlot> {
        use std::sync::atomic::Ordering;
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit.max(1)).then_some(n + 1))
            .ok()
            .map(|_| FollowSlot(count.clone()))
    }
}

impl Drop for FollowSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl EventLoop {
    /// A follow long poll, if a slot is free: they hold their slot for seconds, so at most half
    /// of the pending questions may be follows.
    fn hold_follow(&self, follow: BoxFuture<'static, query::Response>) -> Answer {
        match FollowSlot::take(&self.follows, self.config.max_pending_requests / 2) {
            Some(slot) => Answer::Later(
                async move {
                    let _slot = slot;
                    follow.await
                }
                .boxed(),
            ),
            None => Answer::Now(query::Response::Busy),
        }
    }

    /// The answer to a question: at once, or later from a future.
    pub(super) fn answer(&mut self, request: query::Request) -> Answer {
        if self.closing {
            return Answer::Now(query::Response::Error("node is shutting down".into()));
        }
        if self.is_busy() {
            return Answer::Now(query::Response::Busy);
        }
        let (now, now_ms) = (Instant::now(), now_ms());
        let answer: BoxFuture<'static, query::Response> = match request {
            query::Request::Top { n, .. } | query::Request::LocalTop { n, .. } if n > limits::MAX_TOP_N => {
                let error = format!("n = {n} is too large (at most {})", limits::MAX_TOP_N);
                return Answer::Now(query::Response::Error(error));
            }
            query::Request::Top { n, since_ms: None } if n as usize <= self.config.top_k => {
                let answer = self.view.top(n as usize, now, now_ms);
                return Answer::Now(query::Response::Top(answer));
            }
            query::Request::Top { n, since_ms } => {
                let from_ms = since_ms.map_or(0, |since| now_ms.saturating_sub(since));
                self.top_from_every_node(n, from_ms, now, now_ms)
            }
            query::Request::Stats => {
                return Answer::Now(query::Response::Stats(self.view.stats(now, now_ms)));
            }
            query::Request::Peers => {
                let mut answer = self.view.peers(now, now_ms);
                for peer in &mut answer.peers {
                    peer.connected = peer.peer.parse().is_ok_and(|id| self.swarm.is_connected(&id));
                }
                return Answer::Now(query::Response::Peers(answer));
            }
            query::Request::Meter { meter, from_ms, to_ms } => {
                self.meter_from_its_homes(meter, from_ms, to_ms)
            }
            query::Request::LocalTop { n, from_ms } => {
                let store = self.store.clone();
                blocking(move || store.top_since(n as usize, from_ms))
                    .map(|spans| spans.map_or_else(query::Response::Error, query::Response::LocalTop))
                    .boxed()
            }
            query::Request::LocalMeter { meter, from_ms, to_ms } => {
                let local_view = self.local_view();
                blocking(move || local_view.meter(meter, from_ms, to_ms))
                    .map(|local| local.map_or_else(query::Response::Error, query::Response::LocalMeter))
                    .boxed()
            }
            query::Request::Blocked => {
                return Answer::Now(query::Response::Blocked(self.blocked_answer(now, now_ms)));
            }
            query::Request::Alerts { kind } => {
                let answer = self.alerts_answer(kind, now, now_ms);
                return Answer::Now(query::Response::Alerts(answer));
            }
            query::Request::Policy => {
                let (policy, origin) = self.control.policy();
                return Answer::Now(query::Response::Policy(policy, origin));
            }
            query::Request::Admin(signed) => match self.admin(signed) {
                Ok(answer) => answer,
                Err(error) => return Answer::Now(query::Response::Error(error)),
            },
            query::Request::Bill { meter, period_start_ms } => self.bill_from_home(meter, period_start_ms),
            query::Request::LocalBill { meter, period_start_ms } => {
                let local_view = self.local_view();
                blocking(move || local_view.bill(meter, period_start_ms))
                    .map(|bill| bill.map_or_else(query::Response::Error, query::Response::Bill))
                    .boxed()
            }
            query::Request::Follow { meter, after_ts_ms } => {
                return self.hold_follow(self.follow_from_home(meter, after_ts_ms));
            }
            query::Request::LocalFollow { meter, after_ts_ms } => {
                return self.hold_follow(self.local_follow(meter, after_ts_ms));
            }
        };
        Answer::Later(answer)
    }

    /// An exact top-N over any window: every live node ranks its own meters, and the answers are
    /// joined. Coverage names the nodes that did not answer.
    pub(super) fn top_from_every_node(
        &self,
        n: u32,
        from_ms: u64,
        now: Instant,
        now_ms: u64,
    ) -> BoxFuture<'static, query::Response> {
        let store = self.store.clone();
        let asker = self.asker();
        let remotes: Vec<_> =
            self.view.live_remotes(now).into_iter().map(|peer| (peer, self.addrs_of(&peer))).collect();
        let local = self.peer_id;
        async move {
            let mine = blocking(move || store.top_since(n as usize, from_ms));
            let theirs = join_all(remotes.iter().map(|(peer, addrs)| {
                asker.ask(*peer, addrs.clone(), query::Request::LocalTop { n, from_ms })
            }));
            let (mine, theirs) = futures::join!(mine, theirs);
            let mut parts: Vec<(PeerId, Vec<MeterSpan>)> = Vec::new();
            let mut missing = Vec::new();
            match mine {
                Ok(spans) => parts.push((local, spans)),
                Err(error) => return query::Response::Error(error),
            }
            for ((peer, _), answer) in remotes.iter().zip(theirs) {
                match answer {
                    Ok(query::Response::LocalTop(spans)) => parts.push((*peer, spans)),
                    _ => missing.push(peer.to_string()),
                }
            }
            let mut joined: HashMap<MeterId, (MeterSpan, PeerId)> = HashMap::new();
            for (peer, spans) in &parts {
                for span in spans {
                    joined
                        .entry(span.meter)
                        .and_modify(|(merged, home)| {
                            if span.last.ts_ms > merged.last.ts_ms {
                                *home = *peer;
                            }
                            *merged = domain::join_spans(*merged, *span);
                        })
                        .or_insert((*span, *peer));
                }
            }
            let homes: HashMap<MeterId, PeerId> = joined.iter().map(|(m, (_, home))| (*m, *home)).collect();
            let ranked = domain::rank(joined.into_values().map(|(span, _)| span).collect(), n as usize);
            let mut included: Vec<String> = parts.iter().map(|(peer, _)| peer.to_string()).collect();
            included.sort();
            missing.sort();
            let _ = now_ms;
            query::Response::Top(TopAnswer {
                entries: ranked
                    .iter()
                    .map(|span| TopEntry {
                        meter: span.meter,
                        consumption_l: domain::span_consumption(span),
                        home: homes.get(&span.meter).map(ToString::to_string).unwrap_or_default(),
                    })
                    .collect(),
                coverage: Coverage { included, stale: Vec::new(), missing, oldest_data_age_ms: 0 },
            })
        }
        .boxed()
    }

    /// A meter's history, from this node's store and from every node whose filter may hold it
    /// (normally its one home): routed, never broadcast.
    pub(super) fn meter_from_its_homes(
        &self,
        meter: MeterId,
        from_ms: Option<u64>,
        to_ms: Option<u64>,
    ) -> BoxFuture<'static, query::Response> {
        let local_view = self.local_view();
        let asker = self.asker();
        let homes: Vec<_> =
            self.view.homes_of(meter).into_iter().map(|peer| (peer, self.addrs_of(&peer))).collect();
        let local = self.peer_id;
        async move {
            let mine = blocking(move || local_view.meter(meter, from_ms, to_ms));
            let theirs = join_all(homes.iter().map(|(peer, addrs)| {
                asker.ask(*peer, addrs.clone(), query::Request::LocalMeter { meter, from_ms, to_ms })
            }));
            let (mine, theirs) = futures::join!(mine, theirs);
            let mut found = Vec::new();
            match mine {
                Ok(Some(history)) => found.push((local, history)),
                Ok(None) => {}
                Err(error) => return query::Response::Error(error),
            }
            let mut unreachable = 0;
            for ((peer, _), answer) in homes.iter().zip(theirs) {
                match answer {
                    Ok(query::Response::LocalMeter(Some(history))) => found.push((*peer, history)),
                    Ok(query::Response::LocalMeter(None)) => {}
                    _ => unreachable += 1,
                }
            }
            let latest = |local: &query::LocalMeter| local.history.readings.last().map_or(0, |r| r.ts_ms);
            let Some((home, status)) = found
                .iter()
                .max_by_key(|(_, local)| latest(local))
                .map(|(peer, local)| (*peer, local.status.clone()))
            else {
                let hint = if unreachable > 0 {
                    format!(" ({unreachable} possible home(s) did not answer)")
                } else {
                    String::new()
                };
                return query::Response::NotFound(format!(
                    "meter {meter} is not held by any known fog node{hint}"
                ));
            };
            let history = domain::merge_histories(found.into_iter().map(|(_, local)| local.history));
            query::Response::Meter(MeterAnswer {
                meter,
                home: home.to_string(),
                consumption_l: domain::history_consumption(meter, &history),
                history,
                status,
            })
        }
        .boxed()
    }
}
