//! The ingest pipeline: one thread that writes batches to the store and acknowledges them only
//! once they are durable, with group commit: every batch waiting when a flush starts shares it.

use std::sync::Arc;
use std::thread::JoinHandle;

use hydromesh_proto::ingest::Outcome;
use hydromesh_proto::Reading;
use tokio::sync::{mpsc, oneshot, watch};

use crate::store::Store;

/// Most readings written under one flush.
const MAX_GROUP_READINGS: usize = 100_000;

/// A batch waiting to be written, with where its outcomes go.
pub struct Job {
    pub readings: Vec<Reading>,
    pub reply: oneshot::Sender<Result<Vec<Outcome>, String>>,
}

/// The handle of the pipeline thread.
pub struct Pipeline {
    pub jobs: mpsc::Sender<Job>,
    thread: JoinHandle<()>,
}

impl Pipeline {
    /// Starts the thread. `changed` is bumped after every flush that stored something new.
    pub fn start(
        store: Arc<Store>,
        capacity: usize,
        changed: watch::Sender<u64>,
    ) -> std::io::Result<Self> {
        let (jobs, receiver) = mpsc::channel(capacity.max(1));
        let thread = std::thread::Builder::new()
            .name("hydromesh-ingest".into())
            .spawn(move || run(&store, receiver, &changed))?;
        Ok(Pipeline { jobs, thread })
    }

    /// Closes the queue, lets the thread write and acknowledge what is queued, and waits for it.
    pub async fn stop(self) {
        drop(self.jobs);
        let thread = self.thread;
        if tokio::task::spawn_blocking(move || thread.join())
            .await
            .is_err()
        {
            tracing::error!("ingest thread panicked");
        }
    }
}

fn run(store: &Store, mut receiver: mpsc::Receiver<Job>, changed: &watch::Sender<u64>) {
    while let Some(first) = receiver.blocking_recv() {
        let mut group = vec![first];
        let mut readings = group[0].readings.len();
        while readings < MAX_GROUP_READINGS {
            match receiver.try_recv() {
                Ok(job) => {
                    readings += job.readings.len();
                    group.push(job);
                }
                Err(_) => break,
            }
        }
        let now_ms = crate::clock::now_ms();
        let results: Vec<_> = group
            .iter()
            .map(|job| store.append(&job.readings, now_ms))
            .collect();
        let flushed = store.flush();
        let mut stored_new = false;
        for (job, result) in group.into_iter().zip(results) {
            let reply = match (&flushed, result) {
                (Ok(()), Ok(outcomes)) => {
                    stored_new |= outcomes.contains(&Outcome::Accepted);
                    Ok(outcomes)
                }
                (Err(error), _) => Err(error.to_string()),
                (_, Err(error)) => Err(error.to_string()),
            };
            if let Err(error) = &reply {
                tracing::error!(%error, "ingest batch not stored");
            }
            // The client may have gone; its readings are stored all the same.
            let _ = job.reply.send(reply);
        }
        if stored_new {
            changed.send_modify(|generation| *generation += 1);
        }
    }
    if let Err(error) = store.flush() {
        tracing::error!(%error, "final flush failed");
    }
}
