//! The poller's side of the bus, one per receiver. Pure: no I/O, no clock.
//!
//! The driver tells the sender what the replay log holds ([`Sender::appended`],
//! [`Sender::truncated`]), connection changes ([`Sender::connect`],
//! [`Sender::disconnected`]) and what the receiver says ([`Sender::handle`]); it asks what to
//! send ([`Sender::poll_transmit`] -> a [`Plan`]: which log records), reads those records
//! from the log, builds the [`crate::message::Batch`], sends it and reports it
//! ([`Sender::on_sent`]). It applies [`SenderEvent::AdvanceCursor`] to the log
//! (`Log::set_cursor`) and wakes the sender at [`Sender::poll_timeout`].
//!
//! Policy:
//! - **Resume from the receiver's durable state**: on every connection the receiver's
//!   [`HelloAck`] says what it holds; everything else the log still has is sent again.
//! - **Live first**: records appended after the handshake (at or beyond the *live mark*) go
//!   out first, after at most the linger; the backlog below the live mark fills in behind
//!   them, capped by a token bucket (bytes/s and records/s) and kept out of the last batch
//!   of the in-flight window, which is reserved for live records.
//! - **Linger**: a live batch goes when it is full or when its oldest record has waited
//!   `linger`; so a lone event waits at most the linger and a burst goes in full batches.
//! - **Bounded in flight**: at most `window_records` sent and not acknowledged. A batch not
//!   acknowledged within `retransmit_after` is sent again (receivers dedupe), so a batch lost
//!   with a failed store or a misbehaving path cannot stall the stream.
//! - **Cursor**: the cursor is the first log position this receiver has not acknowledged;
//!   acks (cumulative per epoch plus ranges) move it, and the sender reports each move.

use crate::Nanos;
use crate::compress::Compression;
use crate::message::{Ack, BusMessage, EpochStart, Hello, HelloAck, Refuse};
use crate::ranges::RangeSet;
use opha_common::wire::PROTOCOL_VERSION;
use std::collections::{BTreeMap, VecDeque};

/// Sender settings.
#[derive(Clone, Debug, PartialEq)]
pub struct SenderConfig {
    /// Most records in one batch.
    pub max_batch_records: u64,
    /// Most body bytes the driver puts in one batch (it stops reading the log there; a single
    /// larger record still goes alone).
    pub max_batch_bytes: usize,
    /// How long a live record may wait for others to share its batch.
    pub linger: Nanos,
    /// Most records sent and not yet acknowledged. At least twice `max_batch_records`.
    pub window_records: u64,
    /// Replay (backlog) cap in bytes per second; 0 = unlimited.
    pub replay_bytes_per_sec: u64,
    /// Replay cap in records per second; 0 = unlimited.
    pub replay_records_per_sec: u64,
    /// Bucket depth, as time at the full rate: how much replay may go in one burst.
    pub replay_burst: Nanos,
    /// A batch not acknowledged for this long is sent again.
    pub retransmit_after: Nanos,
    /// Passed through to the driver that builds batches.
    pub compression: Compression,
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            max_batch_records: 512,
            max_batch_bytes: 256 << 10,
            linger: 2 * crate::MILLI,
            window_records: 8192,
            replay_bytes_per_sec: 1_000_000,
            replay_records_per_sec: 0,
            replay_burst: 100 * crate::MILLI,
            retransmit_after: 10 * crate::SECOND,
            compression: Compression::default(),
        }
    }
}

/// Why a sender could not be created.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SenderError {
    #[error(
        "the epoch table is empty, out of order, or does not cover the log from its oldest record"
    )]
    BadEpochs,
    #[error("window_records must be at least twice max_batch_records (which must be > 0)")]
    BadWindow,
    #[error("log positions out of order (oldest {oldest}, cursor {cursor}, head {head})")]
    BadPositions { oldest: u64, cursor: u64, head: u64 },
}

/// What the driver should send next: up to `max_records` log records from `first`, all of
/// epoch `epoch`, contiguous in the log and not yet acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub epoch: u64,
    pub first: u64,
    pub max_records: u64,
    pub max_bytes: usize,
    /// Live (beyond the live mark) rather than backlog.
    pub live: bool,
}

/// Things the driver must act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SenderEvent {
    /// Move this receiver's cursor in the replay log to this position.
    AdvanceCursor(u64),
    /// The receiver refused something (log it, count it; after a refused hello it closes).
    Refused(Refuse),
}

/// Counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SenderStats {
    pub batches: u64,
    pub records_live: u64,
    pub records_backlog: u64,
    pub bytes: u64,
    pub retransmit_timeouts: u64,
    pub acks: u64,
    /// Acks for epochs this sender does not know, or messages out of place.
    pub ignored: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Conn {
    Disconnected,
    AwaitingHelloAck,
    Streaming,
}

#[derive(Clone, Copy, Debug)]
struct Flight {
    end: u64,
    sent_at: Nanos,
}

/// A token bucket, in units scaled by 1e9 so that refills need no fractions. Sends may take
/// it below zero (a batch's size is known only once it is built); it then refills first.
#[derive(Clone, Debug)]
struct Bucket {
    per_sec: u64,
    capacity: i128,
    tokens: i128,
    last: Nanos,
}

impl Bucket {
    fn new(per_sec: u64, burst: Nanos, now: Nanos) -> Self {
        let capacity = (i128::from(per_sec) * i128::from(burst)).max(i128::from(crate::SECOND));
        Self {
            per_sec,
            capacity,
            tokens: capacity,
            last: now,
        }
    }

    fn unlimited(&self) -> bool {
        self.per_sec == 0
    }

    fn refill(&mut self, now: Nanos) {
        if now > self.last {
            let add = i128::from(now - self.last) * i128::from(self.per_sec);
            self.tokens = (self.tokens + add).min(self.capacity);
            self.last = now;
        }
    }

    /// Whole units available (unbounded when unlimited).
    fn whole(&self) -> u64 {
        if self.unlimited() {
            return u64::MAX;
        }
        u64::try_from(self.tokens.max(0) / i128::from(crate::SECOND)).unwrap_or(u64::MAX)
    }

    fn positive(&self) -> bool {
        self.unlimited() || self.tokens > 0
    }

    fn take(&mut self, units: u64) {
        if !self.unlimited() {
            self.tokens -= i128::from(units) * i128::from(crate::SECOND);
        }
    }

    /// When at least `units` whole units will be there.
    fn ready_at(&self, units: u64) -> Nanos {
        if self.unlimited() {
            return self.last;
        }
        let need = i128::from(units) * i128::from(crate::SECOND) - self.tokens;
        if need < 0 || (need == 0 && units > 0) {
            return self.last;
        }
        // +1: at exactly `need` the bucket is at zero, and sending needs it positive.
        let wait = need / i128::from(self.per_sec) + 1;
        self.last
            .saturating_add(u64::try_from(wait).unwrap_or(u64::MAX))
    }
}

/// The sender state machine.
#[derive(Clone, Debug)]
pub struct Sender {
    cfg: SenderConfig,
    /// Oldest first; the last is the current epoch.
    epochs: Vec<EpochStart>,
    oldest: u64,
    head: u64,
    cursor: u64,
    conn: Conn,
    /// Acknowledged (or held, per the last hello ack) at or above the cursor.
    acked: RangeSet,
    /// Sent on this connection and not acknowledged.
    sent: RangeSet,
    flights: BTreeMap<u64, Flight>,
    live_mark: u64,
    /// (head after an append, when): when each record became available, for the linger.
    arrivals: VecDeque<(u64, Nanos)>,
    bytes: Bucket,
    records: Bucket,
    events: VecDeque<SenderEvent>,
    stats: SenderStats,
}

/// Arrivals remembered for the linger; older ones count as already due.
const MAX_ARRIVALS: usize = 4096;

impl Sender {
    /// A sender for one receiver. `epochs`: this poller's epochs that may still have records
    /// in the log, oldest first, the current one last (its start is where this run began);
    /// `oldest`..`head` is what the log holds; `cursor` is this receiver's cursor in the log.
    pub fn new(
        cfg: SenderConfig,
        epochs: Vec<EpochStart>,
        oldest: u64,
        cursor: u64,
        head: u64,
        now: Nanos,
    ) -> Result<Self, SenderError> {
        if cfg.max_batch_records == 0 || cfg.window_records < 2 * cfg.max_batch_records {
            return Err(SenderError::BadWindow);
        }
        let ordered = epochs
            .windows(2)
            .all(|w| w[0].epoch < w[1].epoch && w[0].start <= w[1].start);
        let covers = epochs
            .first()
            .is_some_and(|e| e.start <= oldest.max(cursor))
            && epochs.last().is_some_and(|e| e.start <= head);
        if !ordered || !covers {
            return Err(SenderError::BadEpochs);
        }
        if !(oldest <= head && cursor <= head) {
            return Err(SenderError::BadPositions {
                oldest,
                cursor,
                head,
            });
        }
        let bytes = Bucket::new(cfg.replay_bytes_per_sec, cfg.replay_burst, now);
        let records = Bucket::new(cfg.replay_records_per_sec, cfg.replay_burst, now);
        Ok(Self {
            cfg,
            epochs,
            oldest,
            head,
            cursor: cursor.max(oldest),
            conn: Conn::Disconnected,
            acked: RangeSet::new(),
            sent: RangeSet::new(),
            flights: BTreeMap::new(),
            live_mark: head,
            arrivals: VecDeque::new(),
            bytes,
            records,
            events: VecDeque::new(),
            stats: SenderStats::default(),
        })
    }

    pub fn config(&self) -> &SenderConfig {
        &self.cfg
    }

    pub fn stats(&self) -> &SenderStats {
        &self.stats
    }

    /// First log position this receiver has not acknowledged.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    pub fn head(&self) -> u64 {
        self.head
    }

    pub fn live_mark(&self) -> u64 {
        self.live_mark
    }

    pub fn is_streaming(&self) -> bool {
        self.conn == Conn::Streaming
    }

    /// Records sent and not acknowledged.
    pub fn in_flight(&self) -> u64 {
        self.sent.len()
    }

    /// Everything the log holds is acknowledged.
    pub fn caught_up(&self) -> bool {
        self.cursor >= self.head
    }

    pub fn poll_event(&mut self) -> Option<SenderEvent> {
        self.events.pop_front()
    }

    /// The log's durable end moved to `head` (records below it may be sent).
    pub fn appended(&mut self, head: u64, now: Nanos) {
        if head > self.head {
            self.head = head;
            self.arrivals.push_back((head, now));
            if self.arrivals.len() > MAX_ARRIVALS {
                self.arrivals.pop_front();
            }
        }
    }

    /// The log deleted everything below `oldest`: it can no longer be sent (a receiver that
    /// still misses it must fetch it elsewhere).
    pub fn truncated(&mut self, oldest: u64) {
        if oldest > self.oldest {
            self.oldest = oldest.min(self.head);
            self.advance_cursor();
        }
    }

    /// A new connection is up: send this hello first.
    pub fn connect(&mut self) -> BusMessage {
        self.reset_flights();
        self.conn = Conn::AwaitingHelloAck;
        let first = self.oldest.min(self.cursor);
        // Only epochs that may still have records to send (the last one always).
        let keep_from = self
            .epochs
            .iter()
            .rposition(|e| e.start <= first)
            .unwrap_or(0);
        let epochs = self.epochs[keep_from..].to_vec();
        let epoch = self.epochs.last().map_or(0, |e| e.epoch);
        BusMessage::Hello(Hello {
            version: PROTOCOL_VERSION,
            epoch,
            oldest: self.oldest,
            head: self.head,
            epochs,
        })
    }

    /// The connection is gone: whatever was in flight is unacknowledged until the next
    /// hello ack says otherwise.
    pub fn disconnected(&mut self) {
        self.reset_flights();
        self.conn = Conn::Disconnected;
    }

    fn reset_flights(&mut self) {
        self.sent = RangeSet::new();
        self.flights.clear();
    }

    /// A message from the receiver.
    pub fn handle(&mut self, msg: BusMessage, now: Nanos) {
        match msg {
            BusMessage::HelloAck(a) if self.conn == Conn::AwaitingHelloAck => {
                self.handle_hello_ack(a, now)
            }
            BusMessage::Ack(a) if self.conn == Conn::Streaming => self.handle_ack(a),
            BusMessage::Refuse(r) => self.events.push_back(SenderEvent::Refused(r)),
            _ => self.stats.ignored += 1,
        }
    }

    /// The log span of `epoch` (up to the head), if it is in the table.
    fn span(&self, epoch: u64) -> Option<(u64, u64)> {
        let i = self.epochs.iter().position(|e| e.epoch == epoch)?;
        let start = self.epochs[i].start;
        let end = self.epochs.get(i + 1).map_or(self.head, |n| n.start);
        Some((start, end.min(self.head)))
    }

    /// The epoch of log position `seq` and where that epoch ends.
    fn epoch_of(&self, seq: u64) -> (u64, u64) {
        let i = self
            .epochs
            .iter()
            .rposition(|e| e.start <= seq)
            .unwrap_or(0);
        let end = self.epochs.get(i + 1).map_or(u64::MAX, |n| n.start);
        (self.epochs[i].epoch, end)
    }

    fn handle_hello_ack(&mut self, a: HelloAck, now: Nanos) {
        // The receiver's durable state is the truth: whatever it does not hold is sent again.
        self.acked = RangeSet::new();
        for held in a.epochs {
            let Some((start, end)) = self.span(held.epoch) else {
                self.stats.ignored += 1;
                continue;
            };
            let from = start.max(self.cursor);
            for r in held.held.clipped(from..end.max(from)) {
                self.acked.insert(r);
            }
        }
        self.conn = Conn::Streaming;
        self.live_mark = self.head;
        self.bytes.refill(now);
        self.records.refill(now);
        self.advance_cursor();
    }

    fn handle_ack(&mut self, a: Ack) {
        let Some((start, end)) = self.span(a.epoch) else {
            self.stats.ignored += 1;
            return;
        };
        self.stats.acks += 1;
        let cumulative = std::iter::once(start..a.next.min(end));
        let ranges: Vec<_> = cumulative
            .chain(a.sack.clipped(start..end.max(start)))
            .collect();
        for r in ranges {
            let r = r.start.max(self.cursor)..r.end;
            if r.start < r.end {
                self.acked.insert(r.clone());
                self.sent.remove(r);
            }
        }
        let acked = &self.acked;
        let cursor = self.cursor;
        self.flights
            .retain(|&first, f| !(f.end <= cursor || acked.covers(first.max(cursor)..f.end)));
        self.advance_cursor();
    }

    fn advance_cursor(&mut self) {
        let from = self.cursor.max(self.oldest);
        let to = self.acked.contiguous_end(from).min(self.head);
        if to > self.cursor {
            self.cursor = to;
            self.acked.remove_below(to);
            self.sent.remove_below(to);
            while self.arrivals.front().is_some_and(|(h, _)| *h <= to) {
                self.arrivals.pop_front();
            }
            self.events.push_back(SenderEvent::AdvanceCursor(to));
        }
    }

    /// First position in `from..limit` neither acknowledged nor in flight.
    fn first_unsent(&self, from: u64, limit: u64) -> Option<u64> {
        let mut x = from;
        loop {
            let y = self.sent.contiguous_end(self.acked.contiguous_end(x));
            if y == x {
                break;
            }
            x = y;
        }
        (x < limit).then_some(x)
    }

    /// Length of the unsent run at `first`, within `limit`, the epoch and one batch.
    fn run_len(&self, first: u64, limit: u64) -> u64 {
        let (_, epoch_end) = self.epoch_of(first);
        let mut end = limit
            .min(epoch_end)
            .min(first.saturating_add(self.cfg.max_batch_records));
        if let Some(h) = self.acked.next_held(first) {
            end = end.min(h);
        }
        if let Some(h) = self.sent.next_held(first) {
            end = end.min(h);
        }
        end.saturating_sub(first)
    }

    /// When the record at `seq` became available (`None`: before anything remembered).
    fn arrival(&self, seq: u64) -> Option<Nanos> {
        self.arrivals
            .iter()
            .find(|(head, _)| *head > seq)
            .map(|(_, t)| *t)
    }

    fn expire_flights(&mut self, now: Nanos) {
        let rto = self.cfg.retransmit_after;
        let expired: Vec<(u64, u64)> = self
            .flights
            .iter()
            .filter(|(_, f)| f.sent_at.saturating_add(rto) <= now)
            .map(|(&s, f)| (s, f.end))
            .collect();
        for (s, e) in expired {
            self.flights.remove(&s);
            if self.sent.remove(s..e) > 0 {
                self.stats.retransmit_timeouts += 1;
            }
        }
    }

    /// The live candidate: (first, count, due at).
    fn live_candidate(&self) -> Option<(u64, u64, Nanos)> {
        let from = self.live_mark.max(self.cursor);
        let first = self.first_unsent(from, self.head)?;
        let count = self.run_len(first, self.head);
        let room = self.cfg.window_records.saturating_sub(self.sent.len());
        let count = count.min(room);
        if count == 0 {
            return None;
        }
        // A full batch goes now; otherwise when its oldest record has lingered. A record
        // older than what is remembered (or sent before and timed out) is due at once.
        let due = if count >= self.cfg.max_batch_records {
            0
        } else {
            self.arrival(first)
                .map_or(0, |t| t.saturating_add(self.cfg.linger))
        };
        Some((first, count, due))
    }

    /// The backlog candidate: (first, count) ignoring the rate cap, and the count it allows.
    fn backlog_candidate(&self) -> Option<(u64, u64)> {
        let limit = self.live_mark.min(self.head);
        let from = self.cursor.max(self.oldest);
        let first = self.first_unsent(from, limit)?;
        let backlog_window = self.cfg.window_records - self.cfg.max_batch_records;
        let room = backlog_window.saturating_sub(self.sent.len());
        let count = self.run_len(first, limit).min(room);
        (count > 0).then_some((first, count))
    }

    /// What to send now, if anything. Follow with [`Sender::on_sent`] for what was sent.
    pub fn poll_transmit(&mut self, now: Nanos) -> Option<Plan> {
        if self.conn != Conn::Streaming {
            return None;
        }
        self.expire_flights(now);
        self.bytes.refill(now);
        self.records.refill(now);
        if let Some((first, count, due)) = self.live_candidate()
            && due <= now
        {
            return Some(self.plan(first, count, true));
        }
        let (first, count) = self.backlog_candidate()?;
        if !self.bytes.positive() {
            return None;
        }
        let count = count.min(self.records.whole());
        (count > 0).then(|| self.plan(first, count, false))
    }

    fn plan(&self, first: u64, max_records: u64, live: bool) -> Plan {
        Plan {
            epoch: self.epoch_of(first).0,
            first,
            max_records,
            max_bytes: self.cfg.max_batch_bytes,
            live,
        }
    }

    /// The driver sent `records` records of `plan` (1..=plan.max_records, from plan.first) in
    /// a frame of `wire_bytes` bytes.
    pub fn on_sent(&mut self, plan: &Plan, records: u64, wire_bytes: u64, now: Nanos) {
        let records = records.clamp(1, plan.max_records.max(1));
        let end = plan.first.saturating_add(records);
        self.sent.insert(plan.first..end);
        self.flights
            .insert(plan.first, Flight { end, sent_at: now });
        // Live records take from the replay budget too, so that live plus replay stays
        // within the cap when live traffic alone is below it.
        self.bytes.take(wire_bytes);
        self.records.take(records);
        self.stats.batches += 1;
        self.stats.bytes += wire_bytes;
        if plan.live {
            self.stats.records_live += records;
        } else {
            self.stats.records_backlog += records;
        }
    }

    /// When the driver should call [`Sender::poll_transmit`] again at the latest (`None`:
    /// only after new input).
    pub fn poll_timeout(&self) -> Option<Nanos> {
        if self.conn != Conn::Streaming {
            return None;
        }
        let mut at: Option<Nanos> = None;
        let mut consider = |t: Nanos| at = Some(at.map_or(t, |a| a.min(t)));
        if let Some((_, _, due)) = self.live_candidate() {
            consider(due);
        }
        if self.backlog_candidate().is_some() {
            consider(self.bytes.ready_at(0).max(self.records.ready_at(1)));
        }
        if let Some(f) = self.flights.values().map(|f| f.sent_at).min() {
            consider(f.saturating_add(self.cfg.retransmit_after));
        }
        at
    }
}
