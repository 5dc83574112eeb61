//! Answers about this node's own meters (the peer protocol's questions): a meter's readings and
//! status, its bill, a window's top meters, and a long poll on a meter's new readings. Read from
//! the store and the ingest writer's snapshot; never routed further. Blocking reads run on the
//! blocking pool.

use std::sync::Arc;
use std::time::Duration;

use hydromesh_proto::peer;
use hydromesh_proto::query::{Bill, LocalMeter, MeterStatus};
use hydromesh_proto::summary::MeterSpan;
use hydromesh_proto::{limits, MeterId, Reading};
use libp2p::PeerId;
use tokio::sync::{broadcast, watch};

use super::status::StatusWords;
use crate::clock::now_ms;
use crate::domain::rules::RationingInputs;
use crate::ingest::LocalSnapshot;
use crate::store::{Store, StoreError};

/// How long a home holds a follow request open before answering it empty.
pub const FOLLOW_WAIT: Duration = Duration::from_secs(5);
/// Most readings one follow answer carries.
const MAX_FOLLOW_READINGS: usize = 1000;

/// This node's own data, for answering about it: cheap to clone into a future.
#[derive(Clone)]
pub struct Local {
    /// This node.
    pub peer_id: PeerId,
    store: Arc<Store>,
    snapshot: watch::Receiver<Arc<LocalSnapshot>>,
    inputs: watch::Receiver<Arc<RationingInputs>>,
    accepted: broadcast::Sender<Arc<Vec<Reading>>>,
    status_words: Arc<StatusWords>,
}

impl Local {
    /// The local side of node `peer_id`.
    pub fn new(
        peer_id: PeerId,
        store: Arc<Store>,
        snapshot: watch::Receiver<Arc<LocalSnapshot>>,
        inputs: watch::Receiver<Arc<RationingInputs>>,
        accepted: broadcast::Sender<Arc<Vec<Reading>>>,
        status_words: Arc<StatusWords>,
    ) -> Self {
        Local { peer_id, store, snapshot, inputs, accepted, status_words }
    }

    /// Whether this node holds readings of `meter`.
    pub fn holds(&self, meter: MeterId) -> bool {
        self.store.holds(meter)
    }

    /// The latest local snapshot.
    pub fn snapshot(&self) -> Arc<LocalSnapshot> {
        self.snapshot.borrow().clone()
    }

    /// Answers a peer's question about this node's own meters.
    pub async fn answer(self, request: peer::Request) -> peer::Response {
        let answer = match request {
            peer::Request::Top { n, from_ms } => {
                blocking(move || self.top_since(n, from_ms)).await.map(peer::Response::Top)
            }
            peer::Request::Meter { meter, from_ms, to_ms } => {
                blocking(move || self.meter(meter, from_ms, to_ms)).await.map(peer::Response::Meter)
            }
            peer::Request::Bill { meter, at_ms } => {
                blocking(move || self.bill(meter, at_ms)).await.map(peer::Response::Bill)
            }
            peer::Request::Follow { meter, after_ts_ms } => {
                self.follow(meter, after_ts_ms).await.map(peer::Response::Readings)
            }
            // The ingest writer answers handoffs (it owns the meters' state).
            peer::Request::Handoff { .. } => {
                Ok(peer::Response::Error("a handoff is not answered here".into()))
            }
        };
        answer.unwrap_or_else(|error| peer::Response::Error(error.to_string()))
    }

    fn top_since(&self, n: u32, from_ms: u64) -> Result<Vec<MeterSpan>, StoreError> {
        self.store.top_since(n.min(limits::MAX_TOP_N) as usize, from_ms)
    }

    /// The meter's readings and status, if this node holds it.
    fn meter(
        &self,
        meter: MeterId,
        from_ms: Option<u64>,
        to_ms: Option<u64>,
    ) -> Result<Option<LocalMeter>, StoreError> {
        let Some(history) = self.store.meter_history(meter, from_ms, to_ms, limits::MAX_HISTORY_READINGS)?
        else {
            return Ok(None);
        };
        let snapshot = self.snapshot();
        let status = MeterStatus {
            blocked: snapshot.blocked.get(&meter).cloned(),
            alerts: snapshot.alerts.get(&meter).cloned().unwrap_or_default(),
            bill: self.bill(meter, None)?,
            unknown_status: self.status_words.of(meter).map(|(_, words)| words).unwrap_or_default(),
        };
        Ok(Some(LocalMeter { history, status }))
    }

    /// The meter's bill for the period holding `at_ms` (default: now), if this node holds it.
    fn bill(&self, meter: MeterId, at_ms: Option<u64>) -> Result<Option<Bill>, StoreError> {
        if !self.holds(meter) {
            return Ok(None);
        }
        let inputs = self.inputs.borrow().clone();
        let policy = inputs.policy;
        let period_start_ms = policy.period_start(at_ms.unwrap_or_else(now_ms));
        let period_end_ms = period_start_ms.saturating_add(policy.period_ms);
        let consumption_l = self.store.window_consumption(meter, period_start_ms, period_end_ms)?;
        Ok(Some(self.bill_for(meter, (period_start_ms, period_end_ms), consumption_l, self.peer_id)))
    }

    /// The bill of `consumption_l` over `period` (start, end), by this node's tariff and the
    /// payments the mesh recorded.
    pub fn bill_for(&self, meter: MeterId, period: (u64, u64), consumption_l: u64, home: PeerId) -> Bill {
        let inputs = self.inputs.borrow().clone();
        let (period_start_ms, period_end_ms) = period;
        Bill {
            meter,
            period_start_ms,
            period_end_ms,
            consumption_l,
            amount_cents: inputs.tariff.amount_cents(consumption_l),
            currency: inputs.tariff.currency.clone(),
            paid: inputs.paid_through_ms.get(&meter).is_some_and(|through| *through >= period_end_ms),
            home: home.to_string(),
        }
    }

    /// A long poll on this node's readings of a meter: the readings after `after_ts_ms` as soon
    /// as there is one (or the latest reading when `None`), empty after [`FOLLOW_WAIT`]; `None`
    /// when this node holds no reading of the meter.
    async fn follow(
        &self,
        meter: MeterId,
        after_ts_ms: Option<u64>,
    ) -> Result<Option<Vec<Reading>>, StoreError> {
        // Subscribe before reading the store, so that no reading stored in between is missed.
        let mut accepted = self.accepted.subscribe();
        let deadline = tokio::time::Instant::now() + FOLLOW_WAIT;
        let stored = self.stored_after(meter, after_ts_ms).await?;
        let Some(readings) = stored else { return Ok(None) };
        let Some(after) = after_ts_ms.filter(|_| readings.is_empty()) else {
            return Ok(Some(readings));
        };
        loop {
            tokio::select! {
                batch = accepted.recv() => match batch {
                    Ok(batch) => {
                        let mut readings: Vec<Reading> =
                            batch.iter().filter(|r| r.meter == meter && r.ts_ms > after).copied().collect();
                        if !readings.is_empty() {
                            readings.sort_by_key(|r| r.ts_ms);
                            return Ok(Some(readings));
                        }
                    }
                    // Too far behind the stream: read what was stored instead.
                    Err(broadcast::error::RecvError::Lagged(_)) => return self.stored_after(meter, Some(after)).await,
                    Err(broadcast::error::RecvError::Closed) => return Ok(Some(Vec::new())),
                },
                () = tokio::time::sleep_until(deadline) => return Ok(Some(Vec::new())),
            }
        }
    }

    /// Stored readings after `after_ts_ms`, or the latest one when `None`.
    async fn stored_after(
        &self,
        meter: MeterId,
        after_ts_ms: Option<u64>,
    ) -> Result<Option<Vec<Reading>>, StoreError> {
        let store = self.store.clone();
        let history = blocking(move || match after_ts_ms {
            Some(after) => {
                store.meter_history(meter, Some(after.saturating_add(1)), None, MAX_FOLLOW_READINGS)
            }
            None => store.meter_history(meter, None, None, 1),
        })
        .await?;
        Ok(history.map(|history| history.readings))
    }
}

/// Runs blocking store work on the blocking pool.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work).await.map_err(|error| StoreError::Task(error.to_string()))?
}

#[cfg(test)]
mod tests {
    use hydromesh_proto::Alarms;

    use super::*;

    const T0: u64 = 1_795_000_000_000;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Arc<Store>,
        accepted: broadcast::Sender<Arc<Vec<Reading>>>,
        local: Local,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(dir.path()).expect("open"));
        let (_, snapshot) = watch::channel(Arc::new(LocalSnapshot::default()));
        let (_, inputs) = watch::channel(Arc::new(RationingInputs::default()));
        let (accepted, _) = broadcast::channel(16);
        let peer_id = libp2p::identity::Keypair::generate_ed25519().public().to_peer_id();
        let local = Local::new(peer_id, store.clone(), snapshot, inputs, accepted.clone(), Arc::default());
        Fixture { _dir: dir, store, accepted, local }
    }

    fn reading(meter: MeterId, ts_ms: u64, litres: u64) -> Reading {
        Reading { meter, ts_ms, litres, flow_lph: None, alarms: Alarms::empty() }
    }

    #[tokio::test]
    async fn meters_not_held_are_none_and_held_ones_answer() {
        let f = fixture();
        let unknown = f.local.clone().answer(peer::Request::Bill { meter: 9.into(), at_ms: None }).await;
        assert_eq!(unknown, peer::Response::Bill(None));
        let now = now_ms();
        f.store
            .append(&[reading(9.into(), now - 2000, 10), reading(9.into(), now - 1000, 25)], now)
            .expect("append");
        match f.local.clone().answer(peer::Request::Bill { meter: 9.into(), at_ms: None }).await {
            peer::Response::Bill(Some(bill)) => assert_eq!(bill.consumption_l, 15),
            other => panic!("expected a bill, got {other:?}"),
        }
        match f
            .local
            .clone()
            .answer(peer::Request::Meter { meter: 9.into(), from_ms: None, to_ms: None })
            .await
        {
            peer::Response::Meter(Some(local)) => assert_eq!(local.history.readings.len(), 2),
            other => panic!("expected the meter, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn follow_answers_with_the_latest_then_waits_for_the_next() {
        let f = fixture();
        f.store.append(&[reading(3.into(), T0, 10)], T0).expect("append");
        let latest =
            f.local.clone().answer(peer::Request::Follow { meter: 3.into(), after_ts_ms: None }).await;
        assert_eq!(latest, peer::Response::Readings(Some(vec![reading(3.into(), T0, 10)])));
        let waiting = tokio::spawn(
            f.local.clone().answer(peer::Request::Follow { meter: 3.into(), after_ts_ms: Some(T0) }),
        );
        // Wait until the long poll has subscribed, then a reading of another meter and one of
        // this meter arrive.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while f.accepted.receiver_count() == 0 {
            assert!(tokio::time::Instant::now() < deadline, "the follow never subscribed");
            tokio::task::yield_now().await;
        }
        let next = reading(3.into(), T0 + 1000, 12);
        f.store.append(&[next], T0 + 1000).expect("append");
        f.accepted.send(Arc::new(vec![reading(4.into(), T0 + 1000, 1), next])).expect("a subscriber");
        let answer = waiting.await.expect("follow task");
        assert_eq!(answer, peer::Response::Readings(Some(vec![next])));
        let unknown =
            f.local.clone().answer(peer::Request::Follow { meter: 8.into(), after_ts_ms: Some(T0) }).await;
        assert_eq!(unknown, peer::Response::Readings(None));
    }
}
