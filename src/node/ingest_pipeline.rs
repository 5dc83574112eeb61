//! The ingest pipeline: one thread that writes batches to the store, acknowledges them only once
//! they are durable (group commit: every batch waiting when a flush starts shares it), and owns
//! rationing at this node: it judges each meter of a batch before acknowledging it, so the
//! acknowledgement of the reading that crosses a limit already carries `valve: closed`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::thread::JoinHandle;

use hydromesh_proto::ingest::{MeterCommand, Outcome, Valve};
use hydromesh_proto::summary::Blocked;
use hydromesh_proto::{MeterId, Reading};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::domain::rules::RationingInputs;
use crate::store::{Store, StoreError};

/// Most readings written under one flush.
const MAX_GROUP_READINGS: usize = 100_000;

/// The acknowledgement of a batch: per-reading outcomes and valve commands, or why it failed.
pub type Ack = Result<(Vec<Outcome>, Vec<MeterCommand>), String>;

/// Work for the pipeline thread.
pub enum Job {
    /// Store a batch and acknowledge it with its outcomes and the valve commands of its meters.
    Ingest { readings: Vec<Reading>, reply: oneshot::Sender<Ack> },
    /// The rationing inputs changed (or time passed): judge every meter again.
    Reevaluate,
}

/// What the pipeline tells the rest of the node after every change.
#[derive(Clone, Debug, Default)]
pub struct LocalState {
    /// This node's meters whose supply is cut.
    pub blocked: BTreeMap<MeterId, Blocked>,
    /// The period the figures below are for.
    pub period_start_ms: u64,
    /// Σ consumption of this node's meters in the period, litres.
    pub period_consumption_l: u64,
    /// This node's meters with a reading in the period.
    pub period_meters: u64,
}

/// The handle of the pipeline thread.
pub struct Pipeline {
    pub jobs: mpsc::Sender<Job>,
    thread: JoinHandle<()>,
}

/// The channels the pipeline reads and writes besides its jobs.
pub struct Channels {
    /// The rationing inputs in force (from the event loop).
    pub inputs: watch::Receiver<Arc<RationingInputs>>,
    /// The local state, bumped after every change.
    pub state: watch::Sender<Arc<LocalState>>,
    /// Readings accepted, batch by batch, for followers.
    pub accepted: broadcast::Sender<Arc<Vec<Reading>>>,
    /// Where outcomes are counted.
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Pipeline {
    /// Starts the thread.
    pub fn start(store: Arc<Store>, capacity: usize, channels: Channels) -> std::io::Result<Self> {
        let (jobs, receiver) = mpsc::channel(capacity.max(1));
        let thread = std::thread::Builder::new().name("hydromesh-ingest".into()).spawn(move || {
            let mut worker = Worker { store, channels, rationing: Rationing::default() };
            worker.run(receiver);
        })?;
        Ok(Pipeline { jobs, thread })
    }

    /// Closes the queue, lets the thread write and acknowledge what is queued, and waits for it.
    pub async fn stop(self) {
        drop(self.jobs);
        let thread = self.thread;
        if tokio::task::spawn_blocking(move || thread.join()).await.is_err() {
            tracing::error!("ingest thread panicked");
        }
    }
}

/// This node's rationing state: one owner, the pipeline thread.
#[derive(Default)]
struct Rationing {
    state: LocalState,
    /// Each meter's consumption in the current period and whether it reported in it (their
    /// sum and count are `period_consumption_l` and `period_meters`).
    current: HashMap<MeterId, (u64, bool)>,
    /// Meters unblocked since their last acknowledgement: the next one carries `valve: open`.
    released: HashSet<MeterId>,
}

struct Worker {
    store: Arc<Store>,
    channels: Channels,
    rationing: Rationing,
}

type Group = Vec<(Vec<Reading>, oneshot::Sender<Result<(Vec<Outcome>, Vec<MeterCommand>), String>>)>;

impl Worker {
    fn run(&mut self, mut receiver: mpsc::Receiver<Job>) {
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
                }
                if readings < MAX_GROUP_READINGS {
                    next = receiver.try_recv().ok();
                }
            }
            let inputs_changed = self.channels.inputs.has_changed().unwrap_or(false);
            if reevaluate || inputs_changed || self.period_start() != self.rationing.state.period_start_ms {
                self.reevaluate();
            }
            if !group.is_empty() {
                self.ingest(group);
            }
        }
        if let Err(error) = self.store.flush() {
            tracing::error!(%error, "final flush failed");
        }
    }

    fn inputs(&self) -> Arc<RationingInputs> {
        self.channels.inputs.borrow().clone()
    }

    fn period_start(&self) -> u64 {
        self.inputs().policy.period_start(crate::clock::now_ms())
    }

    fn ingest(&mut self, group: Group) {
        let now_ms = crate::clock::now_ms();
        let results: Vec<_> = group.iter().map(|(readings, _)| self.store.append(readings, now_ms)).collect();
        let flushed = self.store.flush();
        let inputs = self.inputs();
        let mut accepted = Vec::new();
        for ((readings, reply), result) in group.into_iter().zip(results) {
            let reply_with = match (&flushed, result) {
                (Ok(()), Ok(outcomes)) => {
                    self.channels.metrics.record_outcomes(&outcomes);
                    accepted.extend(
                        readings
                            .iter()
                            .zip(&outcomes)
                            .filter(|(_, o)| **o == Outcome::Accepted)
                            .map(|(r, _)| *r),
                    );
                    let commands = self.judge_batch(&readings, &inputs, now_ms);
                    Ok((outcomes, commands))
                }
                (Err(error), _) => Err(error.to_string()),
                (_, Err(error)) => Err(error.to_string()),
            };
            if let Err(error) = &reply_with {
                tracing::error!(%error, "ingest batch not stored");
            }
            // The client may have gone; its readings are stored all the same.
            let _ = reply.send(reply_with);
        }
        if !accepted.is_empty() {
            let _ = self.channels.accepted.send(Arc::new(accepted));
            self.publish();
        }
    }

    /// Judges the meters of a batch and returns their valve commands: closed for every blocked
    /// meter, open for a meter unblocked since its last acknowledgement.
    fn judge_batch(
        &mut self,
        readings: &[Reading],
        inputs: &RationingInputs,
        now_ms: u64,
    ) -> Vec<MeterCommand> {
        let mut meters: Vec<MeterId> = readings.iter().map(|r| r.meter).collect();
        meters.sort_unstable();
        meters.dedup();
        let mut commands = Vec::new();
        for meter in meters {
            if let Err(error) = self.judge(meter, inputs, now_ms) {
                tracing::error!(meter, %error, "cannot judge a meter");
            }
            if self.rationing.state.blocked.contains_key(&meter) {
                commands.push(MeterCommand { meter, valve: Valve::Closed });
            } else if self.rationing.released.remove(&meter) {
                commands.push(MeterCommand { meter, valve: Valve::Open });
            }
        }
        commands
    }

    /// Judges one meter: updates its period consumption and its block.
    fn judge(&mut self, meter: MeterId, inputs: &RationingInputs, now_ms: u64) -> Result<(), StoreError> {
        let consumption = self.store.consumption(meter, inputs.policy.period_ms, now_ms)?;
        let rationing = &mut self.rationing;
        let now = (consumption.current_l, consumption.reported);
        let (old_l, old_reported) = rationing.current.insert(meter, now).unwrap_or((0, false));
        let state = &mut rationing.state;
        state.period_consumption_l = state.period_consumption_l - old_l + consumption.current_l;
        state.period_meters = state.period_meters + u64::from(consumption.reported) - u64::from(old_reported);
        match inputs.judge(meter, consumption, now_ms) {
            Some((reason, detail)) => {
                let since_ms = match state.blocked.get(&meter) {
                    Some(current) if current.reason == reason => current.since_ms,
                    _ => inputs.manual.get(&meter).map_or(now_ms, |(_, since)| *since),
                };
                if !state.blocked.contains_key(&meter) {
                    tracing::info!(meter, reason = reason.as_str(), %detail, "cutting supply");
                }
                state.blocked.insert(meter, Blocked { meter, reason, since_ms, detail });
                rationing.released.remove(&meter);
            }
            None => {
                if state.blocked.remove(&meter).is_some() {
                    tracing::info!(meter, "restoring supply");
                    rationing.released.insert(meter);
                }
            }
        }
        Ok(())
    }

    /// Judges every meter again and recomputes the period figures.
    fn reevaluate(&mut self) {
        let inputs = self.channels.inputs.borrow_and_update().clone();
        let now_ms = crate::clock::now_ms();
        let period_start_ms = inputs.policy.period_start(now_ms);
        if period_start_ms != self.rationing.state.period_start_ms {
            self.rationing.current.clear();
            self.rationing.state.period_consumption_l = 0;
            self.rationing.state.period_meters = 0;
            self.rationing.state.period_start_ms = period_start_ms;
        }
        // Manual blocks of meters this node does not hold yet still apply when they arrive.
        for meter in self.store.meter_ids() {
            if let Err(error) = self.judge(meter, &inputs, now_ms) {
                tracing::error!(meter, %error, "cannot judge a meter");
            }
        }
        self.publish();
    }

    fn publish(&self) {
        self.channels.state.send_replace(Arc::new(self.rationing.state.clone()));
    }
}
