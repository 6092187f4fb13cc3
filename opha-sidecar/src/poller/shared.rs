//! What the tasks share: the replay log, their counters (for Prometheus), and the latest
//! kernel statistics, node counts and daemon health (for the heartbeat and the metrics).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use opha_common::wire::{DaemonHealth, PeerId};
use opha_log::Log;

use crate::{
    aggregate::TenantCount,
    ingest::{IngestServer, LogSink},
    loader::GlobalStats,
};

/// Monotonic counters of the pipeline's own work.
#[derive(Debug, Default)]
pub struct Counters {
    /// Ring-buffer records made durable (and committed).
    pub ring_records: AtomicU64,
    /// Ring-buffer records of an unexpected size (another program version).
    pub ring_unexpected: AtomicU64,
    /// Ring-buffer records that did not decode (stored as undecodable events).
    pub undecodable: AtomicU64,
    pub ring_batches: AtomicU64,
    pub ring_append_failures: AtomicU64,
    /// Aggregator polls (kernel snapshots taken).
    pub agg_polls: AtomicU64,
    /// Kernel reads that failed (the poll is retried next tick).
    pub agg_read_errors: AtomicU64,
    pub agg_metrics: AtomicU64,
    pub agg_events: AtomicU64,
    pub agg_checkpoints: AtomicU64,
    pub agg_checkpoint_failures: AtomicU64,
    pub agg_append_failures: AtomicU64,
    /// Records of a checkpoint's output found missing from the log at start and appended.
    pub agg_reconciled: AtomicU64,
    /// Swept in-flight requests (poll timeouts) fed to the aggregator.
    pub agg_timeouts: AtomicU64,
    pub heartbeat_records: AtomicU64,
    pub heartbeat_append_failures: AtomicU64,
    /// Heartbeat records dropped because the queue was full while the log refused appends
    /// (`PeerStatus`/`DaemonHealth` only; events are never dropped).
    pub heartbeat_dropped: AtomicU64,
    pub alarm_events: AtomicU64,
}

pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

pub fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Shared by every task of one pipeline.
pub struct Shared {
    pub poller: PeerId,
    pub log: Arc<Log>,
    pub counters: Counters,
    /// Latest global kernel statistics (refreshed every aggregator tick).
    pub kernel: Mutex<Option<GlobalStats>>,
    /// Ring-buffer bytes produced and not yet committed.
    pub ring_pending_bytes: AtomicU64,
    /// Node counts per tenant from the aggregator.
    pub tenants: Mutex<Vec<TenantCount>>,
    /// Daemon health from the monitor.
    pub daemons: Mutex<Vec<DaemonHealth>>,
    /// The ingest server, for its counters.
    pub ingest: Mutex<Option<IngestServer<LogSink>>>,
    /// The bus sender's status, when receivers are configured.
    pub bus: std::sync::OnceLock<Arc<super::bus::BusStatus>>,
    pub started: Instant,
}

impl Shared {
    pub fn new(poller: PeerId, log: Arc<Log>) -> Self {
        Self {
            poller,
            log,
            counters: Counters::default(),
            kernel: Mutex::new(None),
            ring_pending_bytes: AtomicU64::new(0),
            tenants: Mutex::new(Vec::new()),
            daemons: Mutex::new(Vec::new()),
            ingest: Mutex::new(None),
            bus: std::sync::OnceLock::new(),
            started: Instant::now(),
        }
    }

    pub fn kernel_stats(&self) -> Option<GlobalStats> {
        lock(&self.kernel).clone()
    }

    pub fn tenant_counts(&self) -> Vec<TenantCount> {
        lock(&self.tenants).clone()
    }

    pub fn daemon_health(&self) -> Vec<DaemonHealth> {
        lock(&self.daemons).clone()
    }
}

/// Locks, taking over a lock poisoned by a panicking task: the data are plain snapshots.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
