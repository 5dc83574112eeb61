//! Batching of MQTT readings: readings from every connection are gathered for up to
//! [`BATCH_WINDOW`] or [`BATCH_READINGS`] readings and sent to the node as one ingest batch, so a
//! thousand publishes cost one request and share one flush. Each connection learns which of its
//! messages are durable (and may be acknowledged) through its own completion channel; valve
//! commands of the acknowledgement go to the command queue.
//!
//! A batch the node answers "busy" is sent again after a delay, as often as needed: a reading
//! is never dropped and never acknowledged before it is stored.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use hydromesh_proto::ingest::{self, MeterCommand, Outcome, Rejection};
use hydromesh_proto::{MeterId, Reading};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::payload::Parsed;
use crate::metrics::LogOnce;
use crate::node::NodeClient;

/// Readings that make a batch full: it is sent at once.
pub const BATCH_READINGS: usize = 1000;
/// Longest a reading waits for others before its batch is sent.
pub const BATCH_WINDOW: Duration = Duration::from_millis(2);
/// Most readings in one chunk from a connection (a batch is at most this over
/// [`BATCH_READINGS`]).
pub const MAX_CHUNK_READINGS: usize = 256;
/// Chunks waiting for the batcher before connections wait (and stop reading their socket).
const QUEUE_CHUNKS: usize = 1024;
/// Batches sent to the node and not yet answered.
const MAX_BATCHES_IN_FLIGHT: usize = 8;
/// Bounds of the delay before a batch the node found busy is sent again.
const RETRY_MIN: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// Readings from one connection, in the order they arrived.
pub struct Chunk {
    /// Who sent them (a client id), for logs.
    pub source: Arc<str>,
    /// The readings.
    pub readings: Vec<Reading>,
    /// The sequence numbers of the messages to acknowledge once the chunk is stored (QoS 1 and 2).
    pub seqs: Vec<u64>,
    /// Where to say that they are stored; `None` when nothing waits for it.
    pub done: Option<mpsc::UnboundedSender<Completion>>,
    /// The status words hydromesh does not know, of readings among them (meter, reading time,
    /// words): noted on the meter once the readings are stored.
    pub unknown_status: Vec<UnknownStatus>,
}

/// A reading's status words that hydromesh does not know: its meter, its time, the words.
pub type UnknownStatus = (MeterId, u64, Vec<String>);

/// What one connection's messages carried, gathered for its next chunk.
#[derive(Default)]
pub struct Gathered {
    readings: Vec<Reading>,
    seqs: Vec<u64>,
    unknown_status: Vec<UnknownStatus>,
}

impl Gathered {
    /// Adds a message's reading, with the sequence number of its acknowledgement if one is owed.
    pub fn push(&mut self, Parsed { reading, unknown_status }: Parsed, seq: Option<u64>) {
        self.seqs.extend(seq);
        if !unknown_status.is_empty() {
            self.unknown_status.push((reading.meter, reading.ts_ms, unknown_status));
        }
        self.readings.push(reading);
    }

    /// How many readings are gathered.
    pub fn len(&self) -> usize {
        self.readings.len()
    }

    /// The chunk of what is gathered (which is then empty); `None` when nothing is.
    pub fn take_chunk(&mut self, source: Arc<str>, done: mpsc::UnboundedSender<Completion>) -> Option<Chunk> {
        if self.readings.is_empty() {
            return None;
        }
        let Gathered { readings, seqs, unknown_status } = std::mem::take(self);
        Some(Chunk { source, readings, seqs, done: Some(done), unknown_status })
    }
}

/// The fate of messages of one connection.
#[derive(Debug)]
pub struct Completion {
    /// The messages' sequence numbers.
    pub seqs: Vec<u64>,
    /// Stored (acknowledge them), or not (never acknowledge them).
    pub stored: bool,
}

/// Starts the batcher. It runs until every sender of the returned channel is dropped and the
/// batches in flight are answered.
pub fn start(
    node: NodeClient,
    commands: mpsc::Sender<MeterCommand>,
    log: Arc<LogOnce>,
    cancel: CancellationToken,
) -> (mpsc::Sender<Chunk>, JoinHandle<()>) {
    let (chunks, receiver) = mpsc::channel(QUEUE_CHUNKS);
    let batcher = Batcher { node, commands, log, cancel };
    (chunks, tokio::spawn(batcher.run(receiver)))
}

struct Batcher {
    node: NodeClient,
    commands: mpsc::Sender<MeterCommand>,
    log: Arc<LogOnce>,
    cancel: CancellationToken,
}

/// Readings on their way to the node, and whose they are.
#[derive(Default)]
struct Batch {
    readings: Vec<Reading>,
    unknown_status: Vec<UnknownStatus>,
    parts: Vec<Part>,
    attempts: u32,
}

/// The readings of one chunk within a batch.
struct Part {
    len: usize,
    source: Arc<str>,
    seqs: Vec<u64>,
    done: Option<mpsc::UnboundedSender<Completion>>,
}

impl Batch {
    fn add(&mut self, chunk: Chunk) {
        let Chunk { source, mut readings, seqs, done, mut unknown_status } = chunk;
        self.parts.push(Part { len: readings.len(), source, seqs, done });
        self.readings.append(&mut readings);
        self.unknown_status.append(&mut unknown_status);
    }

    fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Tells every connection whether its messages are stored.
    fn complete(self, stored: bool) {
        for part in self.parts {
            if let (false, Some(done)) = (part.seqs.is_empty(), part.done) {
                // A connection that has gone no longer needs to know.
                let _ = done.send(Completion { seqs: part.seqs, stored });
            }
        }
    }
}

type InFlight = FuturesUnordered<BoxFuture<'static, (Batch, ingest::Response)>>;

impl Batcher {
    async fn run(self, mut chunks: mpsc::Receiver<Chunk>) {
        let mut in_flight = InFlight::new();
        let mut batch = Batch::default();
        let mut deadline = Instant::now();
        let mut open = true;
        loop {
            let can_send = !batch.is_empty() && in_flight.len() < MAX_BATCHES_IN_FLIGHT;
            // An idle node gets a reading at once; a busy one gets full batches, or whatever
            // waited a window.
            if can_send && (batch.readings.len() >= BATCH_READINGS || in_flight.is_empty() || !open) {
                in_flight.push(self.send(std::mem::take(&mut batch), None));
                continue;
            }
            if !open && batch.is_empty() && in_flight.is_empty() {
                break;
            }
            tokio::select! {
                Some((sent, response)) = in_flight.next(), if !in_flight.is_empty() => {
                    if let Some(retry) = self.answered(sent, response) {
                        in_flight.push(retry);
                    }
                }
                chunk = chunks.recv(), if open && batch.readings.len() < BATCH_READINGS => match chunk {
                    Some(chunk) => {
                        if batch.is_empty() {
                            deadline = Instant::now() + BATCH_WINDOW;
                        }
                        batch.add(chunk);
                    }
                    None => open = false,
                },
                () = tokio::time::sleep_until(deadline), if can_send => {
                    in_flight.push(self.send(std::mem::take(&mut batch), None));
                }
            }
        }
        tracing::debug!("MQTT batcher stopped");
    }

    /// Sends `batch` to the node, after `delay`.
    fn send(
        &self,
        mut batch: Batch,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, (Batch, ingest::Response)> {
        let node = self.node.clone();
        batch.attempts += 1;
        async move {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            // The readings are kept (cheap copies) in case the node is busy and they go again.
            let response = node.ingest(batch.readings.clone()).await;
            (batch, response)
        }
        .boxed()
    }

    /// Acts on the node's answer; returns the batch to send again if the node was busy.
    fn answered(
        &self,
        batch: Batch,
        response: ingest::Response,
    ) -> Option<BoxFuture<'static, (Batch, ingest::Response)>> {
        match response {
            ingest::Response::Done { outcomes, commands } if outcomes.len() == batch.readings.len() => {
                self.log_rejections(&batch, &outcomes);
                // The words of readings the node took (stored now, or before).
                let taken: HashSet<(MeterId, u64)> = batch
                    .readings
                    .iter()
                    .zip(&outcomes)
                    .filter(|(_, outcome)| matches!(outcome, Outcome::Accepted | Outcome::Duplicate))
                    .map(|(reading, _)| (reading.meter, reading.ts_ms))
                    .collect();
                let status_words = self.node.status_words();
                for (meter, ts_ms, words) in &batch.unknown_status {
                    if taken.contains(&(*meter, *ts_ms)) {
                        status_words.note(*meter, *ts_ms, words);
                    }
                }
                for command in commands {
                    let full =
                        matches!(self.commands.try_send(command), Err(mpsc::error::TrySendError::Full(_)));
                    if full && self.log.first("commands", "queue_full") {
                        // The meter's next acknowledgement carries its valve state again.
                        tracing::warn!(
                            meter = %command.meter,
                            "MQTT command queue full: a valve command was not published"
                        );
                    }
                }
                batch.complete(true);
                None
            }
            ingest::Response::Done { outcomes, .. } => {
                tracing::error!(
                    sent = batch.readings.len(),
                    outcomes = outcomes.len(),
                    "the node answered a batch with a wrong number of outcomes; not acknowledging it"
                );
                batch.complete(false);
                None
            }
            ingest::Response::Busy { retry_after_ms } => {
                let delay = Duration::from_millis(u64::from(retry_after_ms)).clamp(RETRY_MIN, RETRY_MAX);
                tracing::debug!(
                    readings = batch.readings.len(),
                    attempts = batch.attempts,
                    ?delay,
                    "node busy; sending the batch again"
                );
                Some(self.send(batch, Some(delay)))
            }
            // A storage failure too: no PUBACK, so the client (or the bridge) sends them again.
            ingest::Response::Refused { reason } | ingest::Response::Unavailable { reason } => {
                if self.cancel.is_cancelled() {
                    tracing::debug!(%reason, "batch refused while stopping; its messages are not acknowledged");
                } else {
                    tracing::warn!(%reason, readings = batch.readings.len(), "the node refused an MQTT batch; its messages are not acknowledged");
                }
                batch.complete(false);
                None
            }
        }
    }

    /// Logs rejected readings once per source and rule (the node counts them in its metrics).
    fn log_rejections(&self, batch: &Batch, outcomes: &[Outcome]) {
        let mut offset = 0;
        for part in &batch.parts {
            let readings = batch.readings.iter().skip(offset).take(part.len);
            for (reading, outcome) in readings.zip(outcomes.iter().skip(offset).take(part.len)) {
                if let Outcome::Rejected(rule) = outcome {
                    if self.log.first(&part.source, rejection_label(rule)) {
                        tracing::warn!(
                            source = %part.source,
                            meter = %reading.meter,
                            ts_ms = reading.ts_ms,
                            %rule,
                            "MQTT reading rejected (logged once per client and rule)"
                        );
                    } else {
                        tracing::debug!(source = %part.source, meter = %reading.meter, %rule, "MQTT reading rejected");
                    }
                }
            }
            offset += part.len;
        }
    }
}

fn rejection_label(rule: &Rejection) -> &'static str {
    match rule {
        Rejection::RegisterDecreased { .. } | Rejection::RegisterAboveLater { .. } => "register_decreased",
        Rejection::FutureTimestamp { .. } => "future_timestamp",
        Rejection::ConflictingDuplicate { .. } => "conflicting_duplicate",
        Rejection::OutOfRange { .. } => "out_of_range",
    }
}
