//! The ring task: traps and syslog from the kernel's ring buffer into the replay log.
//!
//! One loop on a dedicated thread: read a batch (consumer position unchanged) -> decode every
//! record into exactly one event -> append the batch -> wait until durable -> commit. The
//! consumer position therefore never passes a record that is not durable: a kill -9 anywhere
//! in the loop leaves those records in the (pinned) ring buffer and the next start reads them
//! again. Decoding is deterministic (ids hash the record and a per-boot seed), so a record read
//! twice is the same event twice, never two different ones.
//!
//! When only part of a batch became durable (the log refused the rest: disk or budget full),
//! the task commits exactly that part (rewind, read the same number again, commit) and retries
//! the rest with backoff; meanwhile the kernel keeps writing into the ring until it is full and
//! then counts `ringbuf_drops`: loss is counted in the kernel, never silent.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opha_common::{
    ringbuf::RingRecord,
    wire::{Bytes, Event, EventKind, RawSource, Record, Severity, Subject},
};

use super::{
    durable::{self, Backoff},
    shared::{Shared, add},
    shutdown::Shutdown,
    source::RingSource,
};
use crate::{
    daemons::state::PEER_TENANT,
    decode::{DecodeContext, decode},
    inventory::Inventory,
    ring::RingItem,
};

/// Settings of the ring task.
#[derive(Clone, Copy, Debug)]
pub struct RingSettings {
    /// Most records per batch (one fsync).
    pub batch: usize,
    /// Wait between reads while the ring is empty.
    pub idle: Duration,
    /// How often the monotonic-to-wall clock offset is sampled again (NTP steps).
    pub resample_clock: Duration,
}

impl Default for RingSettings {
    fn default() -> Self {
        Self {
            batch: 256,
            idle: Duration::from_millis(20),
            resample_clock: Duration::from_secs(60),
        }
    }
}

/// The ring task; see the module docs.
pub struct RingTask<R: RingSource> {
    ring: R,
    shared: Arc<Shared>,
    ctx: DecodeContext,
    inventory: Option<Arc<Inventory>>,
    settings: RingSettings,
    items: Vec<RingItem>,
    backoff: Backoff,
    last_resample: Instant,
}

impl<R: RingSource> RingTask<R> {
    pub fn new(
        ring: R,
        shared: Arc<Shared>,
        ctx: DecodeContext,
        inventory: Option<Arc<Inventory>>,
        settings: RingSettings,
    ) -> Self {
        Self {
            ring,
            shared,
            ctx,
            inventory,
            settings,
            items: Vec::with_capacity(settings.batch),
            backoff: Backoff::new("ring buffer -> replay log"),
            last_resample: Instant::now(),
        }
    }

    /// Runs until `stop`; a batch being appended is finished (and committed) first.
    pub fn run(mut self, stop: &Shutdown) {
        loop {
            match self.step() {
                Step::Busy => {
                    if stop.is_stopped() {
                        break;
                    }
                }
                Step::Idle => {
                    if stop.sleep(self.settings.idle) {
                        break;
                    }
                }
                Step::Failed(wait) => {
                    if stop.sleep(wait) {
                        break;
                    }
                }
            }
        }
        // Whatever was read and not committed stays in the kernel for the next start.
        self.ring.rewind();
    }

    /// One batch: read, decode, append, commit what is durable.
    pub fn step(&mut self) -> Step {
        if self.last_resample.elapsed() >= self.settings.resample_clock {
            self.ctx.resample_clock();
            self.last_resample = Instant::now();
        }
        self.items.clear();
        let n = self.ring.read(self.settings.batch.max(1), &mut self.items);
        self.shared.ring_pending_bytes.store(
            self.ring.pending_bytes(),
            std::sync::atomic::Ordering::Relaxed,
        );
        if n == 0 {
            return Step::Idle;
        }
        let records: Vec<Record> = self.items.iter().map(|i| self.to_record(i)).collect();
        let encoded = durable::encode(&records, &self.shared.poller);
        let appended = durable::append(&self.shared.log, &encoded);
        let done = appended.done_prefix();
        let c = &self.shared.counters;
        add(&c.ring_batches, 1);
        if done == n {
            self.ring.commit();
            self.count(&records);
            self.backoff.succeeded();
            self.shared.ring_pending_bytes.store(
                self.ring.pending_bytes(),
                std::sync::atomic::Ordering::Relaxed,
            );
            return if n >= self.settings.batch {
                Step::Busy
            } else {
                Step::Idle
            };
        }
        // Commit exactly the durable prefix: the same records are read again in the same
        // order from the committed position, so reading `done` of them moves past exactly
        // those.
        self.ring.rewind();
        if done > 0 {
            let mut again = Vec::with_capacity(done);
            let m = self.ring.read(done, &mut again);
            debug_assert_eq!(m, done);
            self.ring.commit();
            self.count(&records[..done]);
        }
        add(&c.ring_append_failures, 1);
        let error = appended
            .first_error()
            .map(|(e, _)| e.to_string())
            .unwrap_or_default();
        Step::Failed(self.backoff.failed(&format!(
            "{} of {n} trap/syslog records not durable, kept in the kernel ring buffer: {error}",
            n - done
        )))
    }

    fn count(&self, records: &[Record]) {
        let c = &self.shared.counters;
        add(&c.ring_records, records.len() as u64);
        let undecodable = records
            .iter()
            .filter(|r| {
                matches!(
                    r,
                    Record::Event(Event {
                        kind: EventKind::Undecodable { .. },
                        ..
                    })
                )
            })
            .count();
        add(&c.undecodable, undecodable as u64);
    }

    fn to_record(&self, item: &RingItem) -> Record {
        match item {
            RingItem::Record(r) => Record::Event(self.decode(r)),
            RingItem::Unexpected(len) => {
                add(&self.shared.counters.ring_unexpected, 1);
                Record::Event(unexpected_record(
                    *len,
                    &self.shared.poller,
                    self.ctx.time_ms(super::source::monotonic_ns()),
                ))
            }
        }
    }

    fn decode(&self, r: &RingRecord) -> Event {
        let mut event = decode(r, &self.ctx);
        if let (Some(inv), Subject::Node(node)) = (&self.inventory, &mut event.subject)
            && node.name.is_none()
        {
            node.name = inv.get(&node.key()).map(|n| n.name.clone());
        }
        event
    }
}

/// What one step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// A full batch: more may be waiting.
    Busy,
    /// Nothing (or less than a batch) was waiting.
    Idle,
    /// The log refused records: wait this long.
    Failed(Duration),
}

/// A ring record of a size this build does not know (a kernel program of another version
/// wrote it): its bytes are not available, but it is reported, not dropped.
fn unexpected_record(len: usize, poller: &opha_common::wire::PeerId, time_ms: u64) -> Event {
    Event {
        id: durable::random_event_id(),
        time_ms,
        tenant: PEER_TENANT,
        subject: Subject::Peer(poller.clone()),
        kind: EventKind::Undecodable {
            source: RawSource::Trap,
            from: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            raw: Bytes::from(&[][..]),
        },
        severity: Severity::Warning,
        details: format!(
            "a ring buffer record of {len} bytes, {} expected: the kernel programs are of another version than this sidecar",
            size_of::<RingRecord>()
        ),
    }
}
