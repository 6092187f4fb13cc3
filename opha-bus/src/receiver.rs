//! The receiver's side of the bus (primary or mirror), one per connected poller. Pure.
//!
//! The driver loads the poller's durable dedupe state ([`PollerState`]) from its store,
//! creates a [`Receiver`] for the connection, and feeds it frames or messages. Outputs:
//! - [`ReceiverOutput::Transmit`]: a message for the poller (hello ack, ack, refusal);
//! - [`ReceiverOutput::Store`]: new records to make durable, with a ticket;
//! - [`ReceiverOutput::Close`]: the handshake was refused, close the connection.
//!
//! The driver commits stores in ticket order, each commit also writing the ranges it adds
//! to the poller's state ([`Receiver::state`] after [`Receiver::durable`] is what the store
//! holds), then calls [`Receiver::durable`] with the highest ticket committed. Only then does
//! the receiver acknowledge: an ack never covers a record that is not durable.
//!
//! A connection's stores must all be settled (durable or failed) before a new connection of
//! the same poller is served from the store's state.

use crate::Nanos;
use crate::message::{
    Ack, Batch, BusError, BusFrame, BusMessage, DEFAULT_MAX_BODY, Entry, EpochHeld, Hello,
    HelloAck, MAX_SACK_RANGES, Refuse, RefuseReason,
};
use crate::ranges::RangeSet;
use opha_common::wire::version_supported;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// What a receiver holds durably of one epoch of one poller.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochState {
    /// Log position of the epoch's first record (from the poller's hello).
    pub start: u64,
    /// Where the epoch ends, once a later epoch has been announced.
    pub end: Option<u64>,
    /// Durable records.
    pub held: RangeSet,
}

/// A receiver's durable dedupe state for one poller: persisted with the records, in the same
/// transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollerState {
    pub epochs: BTreeMap<u64, EpochState>,
}

impl PollerState {
    /// True when (epoch, seq) is held.
    pub fn holds(&self, epoch: u64, seq: u64) -> bool {
        self.epochs
            .get(&epoch)
            .is_some_and(|e| e.held.contains(seq))
    }
}

/// Receiver settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiverConfig {
    /// How far beyond the poller's head at the handshake (or the highest record seen since)
    /// a record of the current epoch may be: at least the sender's window. Anything beyond is
    /// refused as forged.
    pub max_ahead: u64,
    /// Bound on a decompressed batch body.
    pub max_body: usize,
    pub frame: BusFrame,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        Self {
            max_ahead: 1 << 20,
            max_body: DEFAULT_MAX_BODY,
            frame: BusFrame::default(),
        }
    }
}

/// New records for the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Store {
    pub ticket: u64,
    pub epoch: u64,
    pub entries: Vec<Entry>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceiverOutput {
    Transmit(BusMessage),
    Store(Store),
    /// Close the connection (after sending any refusal before it).
    Close,
}

/// Counters (the driver exports them as metrics).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    pub hellos: u64,
    pub batches: u64,
    pub records_new: u64,
    pub duplicates: u64,
    pub acks: u64,
    pub decode_errors: u64,
    pub refused: BTreeMap<String, u64>,
}

#[derive(Clone, Debug)]
struct Session {
    /// Announced epochs: start, end (None for the current one).
    announced: BTreeMap<u64, (u64, Option<u64>)>,
    /// Epochs already complete at the handshake: a batch for them is a replay.
    complete: BTreeSet<u64>,
    head: u64,
    /// Highest sequence seen per epoch on this connection.
    highest: BTreeMap<u64, u64>,
}

/// The receiver state machine.
#[derive(Clone, Debug)]
pub struct Receiver {
    cfg: ReceiverConfig,
    state: PollerState,
    session: Option<Session>,
    /// Handed to the store, not yet durable, per epoch.
    pending: BTreeMap<u64, RangeSet>,
    stores: VecDeque<(u64, u64, RangeSet)>,
    next_ticket: u64,
    closed: bool,
    stats: ReceiverStats,
}

impl Receiver {
    /// A receiver for one connection, from the poller's durable state.
    pub fn new(cfg: ReceiverConfig, state: PollerState) -> Self {
        Self {
            cfg,
            state,
            session: None,
            pending: BTreeMap::new(),
            stores: VecDeque::new(),
            next_ticket: 1,
            closed: false,
            stats: ReceiverStats::default(),
        }
    }

    /// The durable dedupe state (plus the epoch table learned from the hello).
    pub fn state(&self) -> &PollerState {
        &self.state
    }

    pub fn stats(&self) -> &ReceiverStats {
        &self.stats
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Stores handed out and not yet settled.
    pub fn unsettled(&self) -> usize {
        self.stores.len()
    }

    fn refuse(&mut self, reason: RefuseReason, detail: String, close: bool) -> Vec<ReceiverOutput> {
        *self.stats.refused.entry(format!("{reason:?}")).or_default() += 1;
        let mut out = vec![ReceiverOutput::Transmit(BusMessage::Refuse(Refuse {
            reason,
            detail,
        }))];
        if close {
            self.closed = true;
            out.push(ReceiverOutput::Close);
        }
        out
    }

    /// One frame from the poller.
    pub fn handle_frame(&mut self, bytes: &[u8], now: Nanos) -> Vec<ReceiverOutput> {
        match self.cfg.frame.decode(bytes) {
            Ok(msg) => self.handle(msg, now),
            Err(e) => {
                self.stats.decode_errors += 1;
                self.refuse(RefuseReason::Malformed, e.to_string(), false)
            }
        }
    }

    /// One message from the poller.
    pub fn handle(&mut self, msg: BusMessage, _now: Nanos) -> Vec<ReceiverOutput> {
        if self.closed {
            return Vec::new();
        }
        match msg {
            BusMessage::Hello(h) => self.handle_hello(h),
            BusMessage::Batch(b) => self.handle_batch(b),
            other => self.refuse(
                RefuseReason::Malformed,
                format!("a poller does not send {:?}", other.kind()),
                false,
            ),
        }
    }

    fn handle_hello(&mut self, h: Hello) -> Vec<ReceiverOutput> {
        self.stats.hellos += 1;
        if self.session.is_some() {
            return self.refuse(RefuseReason::NoHandshake, "second hello".into(), true);
        }
        if !version_supported(h.version) {
            return self.refuse(
                RefuseReason::UnsupportedVersion,
                format!("version {:#06x}", h.version),
                true,
            );
        }
        // A hello built in memory skipped the decoder's checks: run them here too.
        if let Err(e) = crate::message::validate(&BusMessage::Hello(h.clone())) {
            return self.refuse(RefuseReason::Malformed, e.to_string(), true);
        }
        if let Some((&known, _)) = self.state.epochs.last_key_value()
            && h.epoch < known
        {
            return self.refuse(
                RefuseReason::EpochRegressed,
                format!("epoch {} after {known}", h.epoch),
                true,
            );
        }
        let mut announced = BTreeMap::new();
        for (i, e) in h.epochs.iter().enumerate() {
            let end = h.epochs.get(i + 1).map(|n| n.start);
            if let Some(known) = self.state.epochs.get(&e.epoch) {
                let moved = known.start != e.start;
                let end_changed = matches!((known.end, end), (Some(a), Some(b)) if a != b)
                    || (known.end.is_some() && end.is_none());
                let beyond_end = end.is_some_and(|end| known.held.next_held(end).is_some());
                let before_start = known.held.iter().next().is_some_and(|r| r.start < e.start);
                if moved || end_changed || beyond_end || before_start {
                    return self.refuse(
                        RefuseReason::EpochConflict,
                        format!("epoch {} does not match what is held", e.epoch),
                        true,
                    );
                }
            }
            announced.insert(e.epoch, (e.start, end));
        }
        let mut complete = BTreeSet::new();
        let mut ack = Vec::new();
        for (&epoch, &(start, end)) in &announced {
            let st = self.state.epochs.entry(epoch).or_default();
            st.start = start;
            st.end = end;
            if let Some(end) = end
                && st.held.covers(start..end)
            {
                complete.insert(epoch);
            }
            ack.push(EpochHeld {
                epoch,
                held: st.held.clone(),
            });
        }
        self.session = Some(Session {
            announced,
            complete,
            head: h.head,
            highest: BTreeMap::new(),
        });
        vec![ReceiverOutput::Transmit(BusMessage::HelloAck(HelloAck {
            epochs: ack,
        }))]
    }

    fn handle_batch(&mut self, b: Batch) -> Vec<ReceiverOutput> {
        self.stats.batches += 1;
        let Some(session) = &self.session else {
            return self.refuse(
                RefuseReason::NoHandshake,
                "batch before hello".into(),
                false,
            );
        };
        let Some(&(start, end)) = session.announced.get(&b.epoch) else {
            return self.refuse(
                RefuseReason::UnknownEpoch,
                format!("epoch {} was not announced", b.epoch),
                false,
            );
        };
        if session.complete.contains(&b.epoch) {
            return self.refuse(
                RefuseReason::StaleEpoch,
                format!("epoch {} was already complete", b.epoch),
                false,
            );
        }
        // Checked on the header, before spending anything on the body.
        let limit = match end {
            Some(end) => end,
            None => {
                let seen = session.highest.get(&b.epoch).map_or(0, |h| h + 1);
                session.head.max(seen).saturating_add(self.cfg.max_ahead)
            }
        };
        if b.first_seq < start || b.last_seq >= limit || b.last_seq < b.first_seq {
            return self.refuse(
                RefuseReason::SeqOutOfRange,
                format!(
                    "records {}..={} outside {start}..{limit} of epoch {}",
                    b.first_seq, b.last_seq, b.epoch
                ),
                false,
            );
        }
        let entries = match b.entries(self.cfg.max_body) {
            Ok(e) => e,
            Err(e) => {
                self.stats.decode_errors += 1;
                let detail = match e {
                    BusError::Body(d) => d.to_string(),
                    other => other.to_string(),
                };
                return self.refuse(RefuseReason::Malformed, detail, false);
            }
        };
        if let Some(s) = self.session.as_mut() {
            let h = s.highest.entry(b.epoch).or_insert(b.last_seq);
            *h = (*h).max(b.last_seq);
        }
        let held = self
            .state
            .epochs
            .get(&b.epoch)
            .map(|e| e.held.clone())
            .unwrap_or_default();
        let pending = self.pending.entry(b.epoch).or_default();
        let mut fresh = Vec::new();
        let mut fresh_ranges = RangeSet::new();
        let mut any_pending = false;
        for entry in entries {
            if held.contains(entry.seq) {
                self.stats.duplicates += 1;
            } else if pending.contains(entry.seq) {
                self.stats.duplicates += 1;
                any_pending = true;
            } else {
                pending.insert_one(entry.seq);
                fresh_ranges.insert_one(entry.seq);
                fresh.push(entry);
            }
        }
        if fresh.is_empty() {
            // All already held: ack at once so that the sender stops resending. (Records only
            // pending are acked when they become durable.)
            if any_pending {
                return Vec::new();
            }
            return vec![self.ack(b.epoch)];
        }
        self.stats.records_new += fresh.len() as u64;
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.stores.push_back((ticket, b.epoch, fresh_ranges));
        vec![ReceiverOutput::Store(Store {
            ticket,
            epoch: b.epoch,
            entries: fresh,
        })]
    }

    /// The ack for `epoch` from what is durable.
    fn ack(&mut self, epoch: u64) -> ReceiverOutput {
        self.stats.acks += 1;
        let (start, held) = self
            .state
            .epochs
            .get(&epoch)
            .map(|e| (e.start, &e.held))
            .unwrap_or((0, &EMPTY));
        let next = held.contiguous_end(start);
        // The newest ranges: live records are the ones the sender waits for most.
        let mut above: Vec<_> = held
            .iter()
            .rev()
            .filter(|r| r.start > next)
            .take(MAX_SACK_RANGES)
            .collect();
        above.reverse();
        ReceiverOutput::Transmit(BusMessage::Ack(Ack {
            epoch,
            next,
            sack: above.into_iter().collect(),
        }))
    }

    /// The store has made every ticket up to `upto` durable (committed in ticket order).
    pub fn durable(&mut self, upto: u64) -> Vec<ReceiverOutput> {
        let mut epochs = BTreeSet::new();
        while self.stores.front().is_some_and(|(t, _, _)| *t <= upto) {
            let Some((_, epoch, ranges)) = self.stores.pop_front() else {
                break;
            };
            let st = self.state.epochs.entry(epoch).or_default();
            let pending = self.pending.entry(epoch).or_default();
            for r in ranges.iter() {
                st.held.insert(r.clone());
                pending.remove(r);
            }
            epochs.insert(epoch);
        }
        if self.closed {
            return Vec::new();
        }
        epochs.into_iter().map(|e| self.ack(e)).collect()
    }

    /// The store failed a ticket: its records are not held (the sender sends them again).
    /// Later tickets are unaffected.
    pub fn store_failed(&mut self, ticket: u64) {
        if let Some(i) = self.stores.iter().position(|(t, _, _)| *t == ticket)
            && let Some((_, epoch, ranges)) = self.stores.remove(i)
        {
            let pending = self.pending.entry(epoch).or_default();
            for r in ranges.iter() {
                pending.remove(r);
            }
        }
    }
}

static EMPTY: RangeSet = RangeSet::EMPTY;
