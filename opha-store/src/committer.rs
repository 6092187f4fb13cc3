//! Group commit: many callers' batches, one durable transaction.
//!
//! A durable commit costs about the same for 1 record as for 1,000 (it is fsync-bound), so a
//! thread per scope takes every batch queued while the previous commit was running and commits
//! them together. Each caller is answered only after that commit has returned, with its own
//! batch's outcome. No linger: a lone batch is committed at once, and batching grows by itself
//! with load.

use crate::db::{Batch, CommitOutcome, TenantDb};
use crate::error::StoreError;
use opha_common::wire::{PollerId, Record};
use std::sync::mpsc;
use std::thread::JoinHandle;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitterConfig {
    /// Most records in one group transaction (a batch is never split; the first batch is
    /// always taken whatever its size).
    pub max_group_records: usize,
    /// Batches that may wait for the committer before `submit` blocks (backpressure).
    pub queue: usize,
}

impl Default for CommitterConfig {
    fn default() -> Self {
        Self {
            max_group_records: 20_000,
            queue: 1024,
        }
    }
}

type Reply = Result<CommitOutcome, StoreError>;
/// The outcome and the batch's records, handed back so that a caller can still use them after
/// the commit (e.g. publish them) without having kept a copy.
type Answer = (Reply, Vec<(u64, Record)>);

struct Job {
    poller: PollerId,
    epoch: u64,
    records: Vec<(u64, Record)>,
    reply: mpsc::SyncSender<Answer>,
}

/// The group-commit thread of one [`TenantDb`]. Dropping it finishes the queued batches and
/// joins the thread.
pub struct Committer {
    tx: Option<mpsc::SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
}

/// The answer to one submitted batch.
pub struct Ticket(mpsc::Receiver<Answer>);

impl Ticket {
    /// Blocks until the batch's group is committed (or failed).
    pub fn wait(self) -> Reply {
        self.wait_with_records().0
    }

    /// As [`Ticket::wait`], and gives back the submitted records (empty if the committer
    /// thread died with them).
    pub fn wait_with_records(self) -> (Reply, Vec<(u64, Record)>) {
        self.0
            .recv()
            .unwrap_or((Err(StoreError::CommitterStopped), Vec::new()))
    }

    /// The answer if it is there already.
    pub fn try_wait(&self) -> Option<Reply> {
        match self.0.try_recv() {
            Ok((r, _)) => Some(r),
            Err(mpsc::TryRecvError::Empty) => None,
            Err(mpsc::TryRecvError::Disconnected) => Some(Err(StoreError::CommitterStopped)),
        }
    }
}

impl Committer {
    pub fn new(db: TenantDb, config: CommitterConfig) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::sync_channel::<Job>(config.queue.max(1));
        let name = format!("opha-store-commit-{}", db.scope());
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || run(db, rx, config))
            .map_err(|e| StoreError::io(std::path::Path::new("<committer thread>"), e))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues a batch; the ticket answers after its group has committed.
    pub fn submit(&self, poller: PollerId, epoch: u64, records: Vec<(u64, Record)>) -> Ticket {
        let (reply, rx) = mpsc::sync_channel(1);
        let job = Job {
            poller,
            epoch,
            records,
            reply,
        };
        if let Some(tx) = &self.tx {
            // On a dead thread the job (and its reply sender) is dropped: the ticket then
            // answers CommitterStopped.
            let _ = tx.send(job);
        }
        Ticket(rx)
    }

    /// Submits and waits.
    pub fn commit(&self, poller: PollerId, epoch: u64, records: Vec<(u64, Record)>) -> Reply {
        self.submit(poller, epoch, records).wait()
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(db: TenantDb, rx: mpsc::Receiver<Job>, config: CommitterConfig) {
    while let Ok(first) = rx.recv() {
        let mut records = first.records.len();
        let mut jobs = vec![first];
        while records < config.max_group_records {
            match rx.try_recv() {
                Ok(j) => {
                    records += j.records.len();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        let batches: Vec<Batch<'_>> = jobs
            .iter()
            .map(|j| Batch {
                poller: &j.poller,
                epoch: j.epoch,
                records: &j.records,
            })
            .collect();
        let results = db.commit_group(&batches);
        drop(batches);
        for (job, result) in jobs.into_iter().zip(results) {
            // A caller that gave up waiting is no error.
            let _ = job.reply.send((result, job.records));
        }
    }
}
