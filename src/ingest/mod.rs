//! The single writer: one thread writes batches to the store, acknowledges them only once they
//! are durable (group commit: every batch waiting when a flush starts shares it), and owns the
//! node's local meter state ([`LocalMeters`]): it judges each meter of a batch before
//! acknowledging it, so the acknowledgement of the reading that crosses a limit already carries
//! `valve: closed`, and it publishes the state as one [`LocalSnapshot`] after every change.

mod local;

pub use local::{LocalMeters, LocalSnapshot, Settings};

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hydromesh_proto::ingest::{MeterCommand, Outcome};
use hydromesh_proto::limits::MAX_BATCH_READINGS;
use hydromesh_proto::peer::Handoff;
use hydromesh_proto::{MeterId, Reading};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::clock::now_ms;
use crate::domain::rules::RationingInputs;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// Most readings written under one flush.
const MAX_GROUP_READINGS: usize = 100_000;
/// Least time between two checkpoints of the meter state while running (see
/// [`Writer::save_now_and_then`]).
const MIN_SAVE_INTERVAL: Duration = Duration::from_secs(120);
/// A checkpoint takes at most this share of the writer's time (1 in 20).
const SAVE_TIME_SHARE: u32 = 20;
/// With a raw retention, meters whose old readings are thinned at a time (see
/// [`Writer::thin_now_and_then`]).
const THIN_METERS: usize = 1_000;
/// Least time between two slices of thinning.
const THIN_EVERY: Duration = Duration::from_secs(1);

/// A batch's acknowledgement: per-reading outcomes and the valve commands of its meters.
#[derive(Debug)]
pub struct Ack {
    /// One outcome per reading, in order.
    pub outcomes: Vec<Outcome>,
    /// Valve commands for the batch's meters.
    pub commands: Vec<MeterCommand>,
}

/// Why a batch was not stored.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The store failed: nothing of the batch is acknowledged.
    #[error("storage failure: {0}")]
    Storage(#[from] StoreError),
    /// The writer stopped before the batch was durable.
    #[error("node is shutting down")]
    Stopped,
    /// The writer's queue is full.
    #[error("busy")]
    Busy,
    /// More readings than a batch may hold.
    #[error("{0} readings in one batch (at most {MAX_BATCH_READINGS})")]
    TooLarge(usize),
}

/// Work for the writer thread.
#[derive(Debug)]
enum Job {
    /// Store a batch and acknowledge it with its outcomes and the valve commands of its meters.
    Ingest { readings: Vec<Reading>, reply: oneshot::Sender<Result<Ack, IngestError>> },
    /// The rationing inputs changed (or time passed): judge every meter again.
    Reevaluate,
    /// Node `asker` asks for a meter it took a reading of at `newest_ts_ms`.
    Release {
        meter: MeterId,
        asker: String,
        newest_ts_ms: u64,
        reply: oneshot::Sender<Result<Handoff, String>>,
    },
    /// Node `from`'s answer to this node's handoff request, asked with a reading at `asked_ts_ms`.
    Settle { meter: MeterId, from: String, answer: Handoff, asked_ts_ms: u64 },
}

/// What the writer reads and writes besides its jobs.
pub struct Channels {
    /// The rationing inputs in force (from the mesh).
    pub inputs: watch::Receiver<Arc<RationingInputs>>,
    /// The local snapshot, replaced after every change.
    pub snapshot: watch::Sender<Arc<LocalSnapshot>>,
    /// Readings accepted, batch by batch, for followers.
    pub accepted: broadcast::Sender<Arc<Vec<Reading>>>,
    /// Where outcomes are counted.
    pub metrics: Arc<Metrics>,
    /// Meters that arrived here (new, or back after moving away), with their newest reading:
    /// their other homes are asked to hand them over. When it is full, the arrival is not
    /// sent (the meter then stays counted at both homes until its next arrival).
    pub arrivals: mpsc::Sender<(MeterId, u64)>,
}

/// The handle of the writer thread: a bounded queue in, acknowledgements out.
pub struct Pipeline {
    jobs: mpsc::Sender<Job>,
    thread: JoinHandle<LocalMeters>,
}

impl Pipeline {
    /// Starts the writer thread over `local` (loaded from `store`), with a queue of `capacity`
    /// batches.
    pub fn start(
        store: Arc<Store>,
        local: LocalMeters,
        capacity: usize,
        retain_raw: Option<Duration>,
        channels: Channels,
    ) -> std::io::Result<Self> {
        let (jobs, receiver) = mpsc::channel(capacity.max(1));
        let thread = std::thread::Builder::new().name("hydromesh-ingest".into()).spawn(move || {
            let loaded = store.loads();
            let saved = (local.unsaved() == 0).then(|| (store.fold_number(), Instant::now()));
            let save_every = MIN_SAVE_INTERVAL;
            let thin = retain_raw.map(|raw| Thinning { raw, after: None, at: Instant::now() });
            Writer { store, local, loaded, saved, save_every, thin, channels }.run(receiver)
        })?;
        Ok(Pipeline { jobs, thread })
    }

    /// Queues a batch; the receiver gets its acknowledgement once it is durable. A full queue
    /// refuses at once ([`IngestError::Busy`]).
    pub fn submit(
        &self,
        readings: Vec<Reading>,
    ) -> Result<oneshot::Receiver<Result<Ack, IngestError>>, IngestError> {
        reserve(self.jobs.clone())?.submit(readings)
    }

    /// Takes places in the queue for clients that decide to read a batch only once it has one.
    pub fn admission(&self) -> Admission {
        Admission(self.jobs.downgrade())
    }

    /// Hands meters over between this node and others, through the writer.
    pub fn handoffs(&self) -> Handoffs {
        Handoffs(self.jobs.downgrade())
    }

    /// Asks for every meter to be judged again (if the queue is full, the writer sees changed
    /// inputs at its next batch anyway).
    pub fn reevaluate(&self) {
        let _ = self.jobs.try_send(Job::Reevaluate);
    }

    /// Closes the queue, lets the thread write and acknowledge what is queued and flush, and
    /// waits for it. Returns the local meter state as the thread left it.
    pub async fn stop(self) -> Result<LocalMeters, IngestError> {
        drop(self.jobs);
        let thread = self.thread;
        match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(local)) => Ok(local),
            _ => Err(IngestError::Stopped),
        }
    }
}

/// Takes places in the writer's queue; it does not keep the writer running (a place taken
/// after the writer stopped is refused as [`IngestError::Stopped`]).
#[derive(Clone, Debug)]
pub struct Admission(mpsc::WeakSender<Job>);

impl Admission {
    /// A place for one batch, waiting at most `patience` for one to free up (places are given
    /// in the order they were asked for), else [`IngestError::Busy`].
    pub async fn reserve(&self, patience: Duration) -> Result<Slot, IngestError> {
        let jobs = self.0.upgrade().ok_or(IngestError::Stopped)?;
        match tokio::time::timeout(patience, jobs.reserve_owned()).await {
            Ok(Ok(permit)) => Ok(Slot(permit)),
            Ok(Err(_)) => Err(IngestError::Stopped),
            Err(_) => Err(IngestError::Busy),
        }
    }
}

/// Hands meters over through the writer (see [`LocalMeters::release`] and
/// [`LocalMeters::settle`]); it does not keep the writer running.
#[derive(Clone, Debug)]
pub struct Handoffs(mpsc::WeakSender<Job>);

impl Handoffs {
    /// This node's answer to node `asker`'s request for `meter` (waits for a place in the
    /// queue); an error when it cannot tell (the asker asks again later).
    pub async fn release(&self, meter: MeterId, asker: String, newest_ts_ms: u64) -> Result<Handoff, String> {
        let stopped = || IngestError::Stopped.to_string();
        let jobs = self.0.upgrade().ok_or_else(stopped)?;
        let (reply, answer) = oneshot::channel();
        jobs.send(Job::Release { meter, asker, newest_ts_ms, reply }).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Takes node `from`'s answer about `meter`, asked with a reading at `asked_ts_ms` (waits
    /// for a place in the queue).
    pub async fn settle(
        &self,
        meter: MeterId,
        from: String,
        answer: Handoff,
        asked_ts_ms: u64,
    ) -> Result<(), IngestError> {
        let jobs = self.0.upgrade().ok_or(IngestError::Stopped)?;
        jobs.send(Job::Settle { meter, from, answer, asked_ts_ms }).await.map_err(|_| IngestError::Stopped)
    }
}

fn reserve(jobs: mpsc::Sender<Job>) -> Result<Slot, IngestError> {
    jobs.try_reserve_owned().map(Slot).map_err(|error| match error {
        mpsc::error::TrySendError::Full(_) => IngestError::Busy,
        mpsc::error::TrySendError::Closed(_) => IngestError::Stopped,
    })
}

/// A place in the writer's queue for one batch, taken before the batch is read or parsed:
/// work the node cannot queue is refused at the cost of this check, and a batch read is
/// never refused for want of room. Dropped unused, the place is given back.
#[derive(Debug)]
pub struct Slot(mpsc::OwnedPermit<Job>);

impl Slot {
    /// Queues the batch in this place; the receiver gets its acknowledgement once it is
    /// durable.
    pub fn submit(
        self,
        readings: Vec<Reading>,
    ) -> Result<oneshot::Receiver<Result<Ack, IngestError>>, IngestError> {
        if readings.len() > MAX_BATCH_READINGS {
            return Err(IngestError::TooLarge(readings.len()));
        }
        let (reply, ack) = oneshot::channel();
        self.0.send(Job::Ingest { readings, reply });
        Ok(ack)
    }
}

type Group = Vec<(Vec<Reading>, oneshot::Sender<Result<Ack, IngestError>>)>;

struct Writer {
    store: Arc<Store>,
    local: LocalMeters,
    /// The store's [`Store::loads`] the local state was built from.
    loaded: u64,
    /// The store's fold at the last checkpoint of the local state, and when it was saved.
    saved: Option<(u64, Instant)>,
    /// Least time until the next checkpoint.
    save_every: Duration,
    /// With a raw retention, where thinning is.
    thin: Option<Thinning>,
    channels: Channels,
}

/// A raw retention's progress: old readings are thinned to hourly registers a slice of meters
/// at a time, round and round.
struct Thinning {
    /// How long raw readings are kept.
    raw: Duration,
    /// The meter the next slice starts after (`None`: from the first).
    after: Option<hydromesh_proto::MeterId>,
    /// When the last slice ran.
    at: Instant,
}

impl Writer {
    fn run(mut self, mut receiver: mpsc::Receiver<Job>) -> LocalMeters {
        self.reevaluate();
        while let Some(first) = receiver.blocking_recv() {
            let mut group: Group = Vec::new();
            let mut reevaluate = false;
            let mut readings = 0;
            let mut next = Some(first);
            while let Some(job) = next.take() {
                match job {
                    Job::Ingest { readings: batch, reply } => {
                        readings += batch.len();
                        group.push((batch, reply));
                    }
                    Job::Reevaluate => reevaluate = true,
                    Job::Release { meter, asker, newest_ts_ms, reply } => {
                        let inputs = self.channels.inputs.borrow().clone();
                        let answer =
                            self.local.release(&self.store, meter, (&asker, newest_ts_ms), &inputs, now_ms());
                        let _ = reply.send(answer.map_err(|error| {
                            tracing::error!(%meter, %error, "cannot hand a meter over");
                            error.to_string()
                        }));
                        self.publish();
                    }
                    Job::Settle { meter, from, answer, asked_ts_ms } => {
                        let inputs = self.channels.inputs.borrow().clone();
                        let settled = self.local.settle(
                            &self.store,
                            meter,
                            (&from, answer, asked_ts_ms),
                            &inputs,
                            now_ms(),
                        );
                        if let Err(error) = settled {
                            tracing::error!(%meter, %error, "cannot take a meter over");
                        }
                        self.publish();
                    }
                }
                if readings < MAX_GROUP_READINGS {
                    next = receiver.try_recv().ok();
                }
            }
            let inputs_changed = self.channels.inputs.has_changed().unwrap_or(false);
            let period_start = self.channels.inputs.borrow().policy.period_start(now_ms());
            if reevaluate || inputs_changed || period_start != self.local.period_start_ms() {
                self.reevaluate();
            }
            if !group.is_empty() {
                self.ingest(group);
            }
            self.save_now_and_then();
            self.thin_now_and_then();
        }
        if let Err(error) = self.store.flush() {
            tracing::error!(%error, "final flush failed");
        }
        self.local
    }

    fn ingest(&mut self, group: Group) {
        let now_ms = now_ms();
        let results: Vec<_> = group.iter().map(|(readings, _)| self.store.append(readings, now_ms)).collect();
        if let Err(error) = self.store.flush() {
            // Nothing of the group is acknowledged; the store dropped what the sync covered.
            tracing::error!(%error, "ingest batches not durable");
            let reason = error.to_string();
            for (_, reply) in group {
                let _ = reply.send(Err(IngestError::Storage(StoreError::Durability(reason.clone()))));
            }
            self.follow_store();
            return;
        }
        // The store read its memory state again (after an earlier failed sync): the local state
        // is read again from it, this group's readings included.
        let reloaded = self.follow_store();
        let inputs = self.channels.inputs.borrow().clone();
        let mut accepted = Vec::new();
        for ((readings, reply), result) in group.into_iter().zip(results) {
            let appended = match result {
                Ok(appended) => appended,
                Err(error) => {
                    tracing::error!(%error, "ingest batch not stored");
                    let _ = reply.send(Err(error.into()));
                    continue;
                }
            };
            if !reloaded {
                if let Err(error) = self.local.observe(&self.store, &readings, &appended) {
                    tracing::error!(%error, "cannot update the local meter state");
                }
            }
            self.channels.metrics.record_outcomes(&appended.outcomes);
            accepted.extend(
                readings
                    .iter()
                    .zip(&appended.outcomes)
                    .filter(|(_, outcome)| **outcome == Outcome::Accepted)
                    .map(|(reading, _)| *reading),
            );
            let commands = self.local.judge_batch(&self.store, &readings, &inputs, now_ms);
            // The client may have gone; its readings are stored all the same.
            let _ = reply.send(Ok(Ack { outcomes: appended.outcomes, commands }));
        }
        if !accepted.is_empty() {
            let _ = self.channels.accepted.send(Arc::new(accepted));
        }
        let mut arrivals = self.local.take_arrivals().into_iter();
        while let Some(arrival) = arrivals.next() {
            if self.channels.arrivals.try_send(arrival).is_err() {
                // Full: so would be the rest.
                let dropped = 1 + arrivals.len() as u64;
                self.channels.metrics.refuse_many("handoff", "arrivals_full", dropped);
                break;
            }
        }
        self.publish();
    }

    /// Reads the local state again from the store if the store read its own memory state again
    /// since (a failed sync made it drop batches this state had taken in). Whether it did.
    fn follow_store(&mut self) -> bool {
        let loads = self.store.loads();
        if loads == self.loaded {
            return false;
        }
        match LocalMeters::load(&self.store, self.local.settings()) {
            Ok(local) => {
                let old = std::mem::replace(&mut self.local, local);
                self.loaded = loads;
                self.reevaluate();
                self.local.owe_valves_of(&old);
                true
            }
            Err(error) => {
                tracing::error!(%error, "cannot read the local meter state back from the store");
                false
            }
        }
    }

    /// Saves a checkpoint of the local state, so that a start after a crash rebuilds only the
    /// meters changed since, when it changed and the store folded since the last one: a
    /// checkpoint covers the meters whose readings were folded when it was saved (the others
    /// are rebuilt at a start anyway). At most every [`MIN_SAVE_INTERVAL`], and at most
    /// 1/[`SAVE_TIME_SHARE`] of the writer's time (acknowledgements wait meanwhile).
    fn save_now_and_then(&mut self) {
        let fold = self.store.fold_number();
        let due =
            self.saved.is_none_or(|(saved_fold, at)| saved_fold != fold && at.elapsed() >= self.save_every);
        if self.local.unsaved() == 0 || !due {
            return;
        }
        let started = Instant::now();
        if let Err(error) = self.local.save_checkpoint(&self.store) {
            tracing::warn!(%error, "cannot save the meter state; a start after a crash rebuilds it");
        }
        let took = started.elapsed();
        tracing::debug!(ms = took.as_millis() as u64, fold, "meter state saved");
        self.saved = Some((fold, Instant::now()));
        self.save_every = MIN_SAVE_INTERVAL.max(took * SAVE_TIME_SHARE);
    }

    /// With a raw retention, thins the next [`THIN_METERS`] meters' readings older than it to
    /// hourly registers, at most every [`THIN_EVERY`] (so a round over a million meters takes a
    /// quarter of an hour or more; readings only cross the cutoff once).
    fn thin_now_and_then(&mut self) {
        let Some(thin) = &mut self.thin else { return };
        if thin.at.elapsed() < THIN_EVERY {
            return;
        }
        thin.at = Instant::now();
        let cutoff = now_ms().saturating_sub(thin.raw.as_millis() as u64);
        match self.store.thin_before(cutoff, thin.after, THIN_METERS) {
            Ok((after, rewritten)) => {
                thin.after = after;
                if rewritten > 0 {
                    tracing::debug!(rewritten, "older readings kept as hourly registers");
                }
            }
            Err(error) => tracing::warn!(%error, "cannot thin older readings; trying again later"),
        }
    }

    /// Judges every meter again and recomputes the period figures.
    fn reevaluate(&mut self) {
        let inputs = self.channels.inputs.borrow_and_update().clone();
        self.local.reevaluate(&self.store, &inputs, now_ms());
        self.publish();
    }

    /// Publishes the snapshot if it changed: an unchanged one would make the node publish an
    /// identical summary under a new version (every republish tick re-evaluates the meters).
    fn publish(&self) {
        let snapshot = self.local.snapshot();
        self.channels.snapshot.send_if_modified(|current| {
            let changed = **current != snapshot;
            if changed {
                *current = Arc::new(snapshot);
            }
            changed
        });
    }
}
