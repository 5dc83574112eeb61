//! Meters that move between fog nodes: when a meter's reading arrives at a node that does not
//! own it (a meter new here, or back after moving away), the node asks the other nodes whose
//! filter may hold it to hand it over. The newest home owns a meter (see the ingest writer's
//! `LocalMeters::release` and `LocalMeters::settle`); this module only carries the questions.
//!
//! Bounded: arrivals wait in a queue of [`MAX_QUEUED_ARRIVALS`] (the writer drops, and counts,
//! what does not fit), at most [`ARRIVALS_PER_SECOND`] are looked up a second and
//! [`MAX_IN_FLIGHT`] asked at once: a node taking its first readings of many meters (a new
//! node, a bulk load) asks about a few of them, not all. A question a possible home did not
//! answer (unreachable, partitioned) is asked again after each of [`RETRY_AFTER`], at most
//! [`MAX_WAITING`] meters waiting at a time.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::FutureExt;
use hydromesh_proto::{peer, MeterId};
use tokio::sync::mpsc;

use super::event_loop::EventLoop;
use crate::metrics::Metrics;

/// Arrivals waiting to be looked up.
pub(super) const MAX_QUEUED_ARRIVALS: usize = 256;
/// Arrivals looked up a second.
const ARRIVALS_PER_SECOND: u32 = 10;
/// Handoff questions out at once.
const MAX_IN_FLIGHT: usize = 16;
/// How long a former home has to answer.
const HANDOFF_TIMEOUT: Duration = Duration::from_secs(5);
/// The waits before asking again a meter's possible homes that did not answer.
const RETRY_AFTER: [Duration; 3] =
    [Duration::from_secs(30), Duration::from_secs(120), Duration::from_secs(600)];
/// Most meters waiting to be asked about again.
const MAX_WAITING: usize = 1024;
/// Most nodes asked about one arrival: more possible homes (filters' false positives in a
/// large mesh, or filters not held yet) and the arrival is left (counted).
const MAX_ASKED: usize = 16;

/// The loop's handoff questions: one owner, the event loop.
pub(super) struct Handoffs {
    pub arrivals: mpsc::Receiver<(MeterId, u64)>,
    /// Questions out: each ends with the meter to ask about again, if a home did not answer.
    pub in_flight: FuturesUnordered<BoxFuture<'static, Option<Retry>>>,
    /// Meters waiting to be asked about again, then due.
    pub waiting: FuturesUnordered<BoxFuture<'static, Retry>>,
    pub due: VecDeque<Retry>,
    /// Lookups that may start now (a token bucket of [`ARRIVALS_PER_SECOND`], refilled by
    /// [`Handoffs::refill`]), and when it was last refilled.
    tokens: u32,
    refilled: Instant,
}

impl Handoffs {
    pub fn new(arrivals: mpsc::Receiver<(MeterId, u64)>) -> Self {
        let (tokens, refilled) = (ARRIVALS_PER_SECOND, Instant::now());
        let (in_flight, waiting, due) = (FuturesUnordered::new(), FuturesUnordered::new(), VecDeque::new());
        Handoffs { arrivals, in_flight, waiting, due, tokens, refilled }
    }

    /// Whether an arrival may be looked up now (else it waits in the queue).
    pub fn ready(&self) -> bool {
        self.tokens > 0 && self.in_flight.len() < MAX_IN_FLIGHT
    }

    /// A question that ended: its meter waits to be asked about again if a home did not answer.
    pub fn ended(&mut self, retry: Option<Retry>, metrics: &Metrics) {
        let Some(retry) = retry else { return };
        let Some(wait) = RETRY_AFTER.get(usize::from(retry.attempt)) else {
            metrics.refuse("handoff", "unanswered");
            return;
        };
        if self.waiting.len() + self.due.len() >= MAX_WAITING {
            metrics.refuse("handoff", "retries_full");
            return;
        }
        self.waiting.push(tokio::time::sleep(*wait).map(move |()| retry).boxed());
    }

    /// Whether the bucket is short of tokens (the loop then wakes to refill it).
    pub fn short(&self) -> bool {
        self.tokens < ARRIVALS_PER_SECOND
    }

    /// Gives back the tokens of the time passed.
    pub fn refill(&mut self, now: Instant) {
        let elapsed_ms = now.duration_since(self.refilled).as_millis() as u64;
        let earned =
            (elapsed_ms * u64::from(ARRIVALS_PER_SECOND) / 1000).min(u64::from(ARRIVALS_PER_SECOND)) as u32;
        if earned > 0 {
            self.tokens = (self.tokens + earned).min(ARRIVALS_PER_SECOND);
            self.refilled = now;
        }
    }
}

/// How often a short token bucket is refilled.
pub(super) const REFILL_EVERY: Duration = Duration::from_millis(1000 / ARRIVALS_PER_SECOND as u64);

/// A meter to ask about again.
pub(super) struct Retry {
    meter: MeterId,
    newest_ts_ms: u64,
    /// Questions asked before this one.
    attempt: u8,
}

impl EventLoop {
    /// A meter that arrived here with a reading at `newest_ts_ms` is asked about.
    pub(super) fn on_arrival(&mut self, meter: MeterId, newest_ts_ms: u64) {
        self.ask_former_homes(Retry { meter, newest_ts_ms, attempt: 0 });
    }

    /// A meter due to be asked about again.
    pub(super) fn on_retry_due(&mut self) {
        if let Some(retry) = self.handoffs.due.pop_front() {
            self.ask_former_homes(retry);
        }
    }

    /// Asks a meter's possible former homes to hand it over, and gives their answers to the
    /// writer.
    fn ask_former_homes(&mut self, Retry { meter, newest_ts_ms, attempt }: Retry) {
        self.handoffs.tokens = self.handoffs.tokens.saturating_sub(1);
        // Nodes whose filter is not held yet may hold it too.
        let holders = self.mesh.view().homes_of(meter);
        if holders.len() > MAX_ASKED {
            self.metrics.refuse("handoff", "too_many_possible_homes");
            return;
        }
        let asks: Vec<_> = holders.into_iter().map(|peer| (peer, self.addrs_of(&peer))).collect();
        let (asker, writer) = (self.asker(), self.pipeline.handoffs());
        let ask = async move {
            let (mut claimed, mut unanswered) = (false, false);
            for (peer, addrs) in asks {
                let request = peer::Request::Handoff { meter, newest_ts_ms };
                match asker.ask(peer, addrs, request, HANDOFF_TIMEOUT).await {
                    Ok(peer::Response::Handoff(peer::Handoff::NotOwner)) => {}
                    Ok(peer::Response::Handoff(answer)) => {
                        claimed = true;
                        writer.settle(meter, peer.to_string(), answer, newest_ts_ms).await.ok()?;
                    }
                    other => {
                        tracing::debug!(%meter, %peer, ?other, "a handoff question got no answer");
                        unanswered = true;
                    }
                }
            }
            // Every other possible home says it does not own the meter: this node does.
            if !claimed && !unanswered {
                writer.settle(meter, String::new(), peer::Handoff::NotOwner, newest_ts_ms).await.ok()?;
            }
            unanswered.then_some(Retry { meter, newest_ts_ms, attempt: attempt + 1 })
        };
        self.handoffs.in_flight.push(ask.boxed());
    }
}
