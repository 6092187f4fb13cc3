//! Gap fetch between receivers ("catchup"): a primary that returns after the poller's log
//! deleted what it missed fetches that gap from the mirror or another primary. Pure.
//!
//! # Who asks what
//!
//! After a poller's handshake the primary knows the poller's epochs, its `oldest` log position
//! (nothing below it can come from the poller any more) and what it holds itself.
//! [`gap_below_oldest`] is the part of each announced epoch below `oldest` that is not held.
//! A [`GapPlanner`] asks the configured peers for it, in preference order, one request at a
//! time; whatever a peer does not provide is asked of the next one (never of the same one
//! again); what no peer provides is reported as unavailable: a real loss, counted, never a
//! stall (the poller's stream goes on regardless).
//!
//! # Messages and frames
//!
//! Frames have the bus layout and codec ([`crate::frame`]), with kinds of their own:
//!
//! | kind  | message          | direction                          |
//! |-------|------------------|------------------------------------|
//! | 0x110 | [`FetchRequest`] | fetching primary -> serving peer   |
//! | 0x111 | [`FetchEntries`] | serving peer -> fetching primary   |
//! | 0x112 | [`FetchDone`]    | serving peer -> fetching primary   |
//! | 0x113 | [`FetchRefuse`]  | serving peer -> fetching primary   |
//!
//! A request names one (poller, epoch) and at most [`MAX_REQUEST_RANGES`] ranges covering at
//! most [`MAX_REQUEST_SEQS`] sequence numbers. The answer is any number of [`FetchEntries`]
//! (each at most [`MAX_REPLY_ENTRIES`] records, in increasing sequence order across the whole
//! answer, every one inside the request), then one [`FetchDone`] whose `unavailable` is
//! exactly the requested sequence numbers the answer did not carry. Entries are what a bus
//! [`crate::message::Batch`] carries: the sequence number and the record as the poller's
//! replay log held it.
//!
//! Decoding is strict (canonical postcard, bounds, internal order); [`FetchExchange`] checks
//! an answer against its request, so a peer cannot slip in records that were not asked for.
//! Which tenants a record may belong to is the driver's check (it knows the poller's
//! certificate and registry).

use crate::frame::{FrameHeader, FrameKinds, FrameMessage, frame_codec, strict};
use crate::message::{BusError, Entry};
use crate::ranges::RangeSet;
use opha_common::wire::PollerId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most ranges in one request.
pub const MAX_REQUEST_RANGES: usize = 256;
/// Most sequence numbers one request covers.
pub const MAX_REQUEST_SEQS: u64 = 65_536;
/// Most records in one [`FetchEntries`].
pub const MAX_REPLY_ENTRIES: usize = 4096;
/// Longest refusal detail.
pub const MAX_DETAIL: usize = 1024;
/// Default bound on a fetch frame's payload (as for bus frames).
pub const DEFAULT_MAX_PAYLOAD: u32 = crate::message::DEFAULT_MAX_PAYLOAD;
/// Record bytes [`FetchServe`] puts in one [`FetchEntries`] (a single larger record still goes
/// alone): well below the frame bound.
pub const DEFAULT_REPLY_BYTES: usize = 1 << 20;

/// A fetch frame's kind (0x110..=0x11f is reserved for fetch messages).
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FetchKind {
    Request = 0x110,
    Entries = 0x111,
    Done = 0x112,
    Refuse = 0x113,
}

impl FetchKind {
    pub const ALL: [FetchKind; 4] = [
        FetchKind::Request,
        FetchKind::Entries,
        FetchKind::Done,
        FetchKind::Refuse,
    ];

    pub const fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            0x110 => FetchKind::Request,
            0x111 => FetchKind::Entries,
            0x112 => FetchKind::Done,
            0x113 => FetchKind::Refuse,
            _ => return None,
        })
    }
}

/// Fetching primary -> serving peer: send me these records of `poller`'s `epoch`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FetchRequest {
    pub poller: PollerId,
    pub epoch: u64,
    pub ranges: RangeSet,
}

/// Serving peer -> fetching primary: some of the requested records, in sequence order.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FetchEntries {
    pub epoch: u64,
    pub entries: Vec<Entry>,
}

/// Serving peer -> fetching primary: the answer is complete; `unavailable` are the requested
/// records it did not carry (not held, or no longer stored).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FetchDone {
    pub epoch: u64,
    pub unavailable: RangeSet,
}

/// Why a serving peer refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FetchRefuseReason {
    /// The frame did not decode, or was not a request.
    Malformed,
    /// The serving peer cannot read its store now.
    StoreFailed,
}

/// Serving peer -> fetching primary: the request is refused (the stream ends).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FetchRefuse {
    pub reason: FetchRefuseReason,
    /// For the operator's log (not interpreted).
    pub detail: String,
}

/// Any fetch message.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum FetchMessage {
    Request(FetchRequest),
    Entries(FetchEntries),
    Done(FetchDone),
    Refuse(FetchRefuse),
}

impl FetchMessage {
    pub fn kind(&self) -> FetchKind {
        match self {
            FetchMessage::Request(_) => FetchKind::Request,
            FetchMessage::Entries(_) => FetchKind::Entries,
            FetchMessage::Done(_) => FetchKind::Done,
            FetchMessage::Refuse(_) => FetchKind::Refuse,
        }
    }
}

/// A parsed fetch frame header.
pub type FetchHeader = FrameHeader<FetchKind>;

frame_codec!(
    /// Encodes and decodes fetch frames with a bound on the payload.
    FetchFrame,
    FetchMessage,
    DEFAULT_MAX_PAYLOAD
);

impl FrameKinds for FetchKind {
    fn from_u16(v: u16) -> Option<Self> {
        FetchKind::from_u16(v)
    }

    fn as_u16(self) -> u16 {
        self as u16
    }
}

impl FrameMessage for FetchMessage {
    type Kind = FetchKind;

    fn kind(&self) -> FetchKind {
        FetchMessage::kind(self)
    }

    fn to_payload(&self) -> Result<Vec<u8>, postcard::Error> {
        match self {
            FetchMessage::Request(m) => postcard::to_allocvec(m),
            FetchMessage::Entries(m) => postcard::to_allocvec(m),
            FetchMessage::Done(m) => postcard::to_allocvec(m),
            FetchMessage::Refuse(m) => postcard::to_allocvec(m),
        }
    }

    fn from_payload(kind: FetchKind, payload: &[u8]) -> Result<Self, BusError> {
        Ok(match kind {
            FetchKind::Request => FetchMessage::Request(strict(payload)?),
            FetchKind::Entries => FetchMessage::Entries(strict(payload)?),
            FetchKind::Done => FetchMessage::Done(strict(payload)?),
            FetchKind::Refuse => FetchMessage::Refuse(strict(payload)?),
        })
    }

    fn validate(&self) -> Result<(), BusError> {
        validate(self)
    }
}

/// Internal consistency and bounds of a decoded message (what postcard cannot check).
pub fn validate(msg: &FetchMessage) -> Result<(), BusError> {
    match msg {
        FetchMessage::Request(r) => {
            if r.ranges.is_empty() {
                return Err(BusError::Invalid("fetch request asks for nothing"));
            }
            if r.ranges.range_count() > MAX_REQUEST_RANGES || r.ranges.len() > MAX_REQUEST_SEQS {
                return Err(BusError::Invalid("fetch request asks for too much"));
            }
        }
        FetchMessage::Entries(e) => {
            if e.entries.is_empty() || e.entries.len() > MAX_REPLY_ENTRIES {
                return Err(BusError::Invalid(
                    "fetch reply carries no or too many records",
                ));
            }
            if e.entries.windows(2).any(|w| w[0].seq >= w[1].seq) {
                return Err(BusError::Invalid("fetch reply records out of order"));
            }
        }
        FetchMessage::Done(d) => {
            if d.unavailable.len() > MAX_REQUEST_SEQS {
                return Err(BusError::Invalid("fetch done names more than a request"));
            }
        }
        FetchMessage::Refuse(r) => {
            if r.detail.len() > MAX_DETAIL {
                return Err(BusError::Invalid("fetch refusal detail too long"));
            }
        }
    }
    Ok(())
}

/// `a` without `b`.
fn minus(a: &RangeSet, b: &RangeSet) -> RangeSet {
    let mut out = a.clone();
    for r in b.iter() {
        out.remove(r);
    }
    out
}

// ---------------------------------------------------------------------------------------
// Serving side.

/// Answers one request from a store, pure: the driver queries the store for
/// [`FetchServe::pending`] (in sequence order, at most some limit), hands the rows to
/// [`FetchServe::found`], transmits what comes out, and ends with [`FetchServe::done`].
#[derive(Clone, Debug)]
pub struct FetchServe {
    request: FetchRequest,
    pending: RangeSet,
    sent: RangeSet,
    reply_bytes: usize,
}

impl FetchServe {
    pub fn new(request: FetchRequest) -> Self {
        Self::with_reply_bytes(request, DEFAULT_REPLY_BYTES)
    }

    pub fn with_reply_bytes(request: FetchRequest, reply_bytes: usize) -> Self {
        Self {
            pending: request.ranges.clone(),
            request,
            sent: RangeSet::new(),
            reply_bytes: reply_bytes.max(1),
        }
    }

    pub fn request(&self) -> &FetchRequest {
        &self.request
    }

    /// What is still to look up.
    pub fn pending(&self) -> &RangeSet {
        &self.pending
    }

    pub fn is_finished(&self) -> bool {
        self.pending.is_empty()
    }

    /// The store's rows for [`Self::pending`], in sequence order. `exhausted`: the store has
    /// nothing more in `pending` (it returned fewer rows than the limit asked). Rows outside
    /// `pending` or out of order are dropped (a query bug must not break the answer's order).
    pub fn found(&mut self, rows: Vec<Entry>, exhausted: bool) -> Vec<FetchMessage> {
        let mut out = Vec::new();
        let mut chunk: Vec<Entry> = Vec::new();
        let mut bytes = 0usize;
        let mut last: Option<u64> = None;
        for e in rows {
            if !self.pending.contains(e.seq) || last.is_some_and(|l| e.seq <= l) {
                continue;
            }
            last = Some(e.seq);
            let size = e.payload.0.len() + 16;
            if !chunk.is_empty()
                && (chunk.len() >= MAX_REPLY_ENTRIES || bytes + size > self.reply_bytes)
            {
                out.push(self.entries(std::mem::take(&mut chunk)));
                bytes = 0;
            }
            bytes += size;
            self.sent.insert_one(e.seq);
            chunk.push(e);
        }
        if !chunk.is_empty() {
            out.push(self.entries(chunk));
        }
        match (exhausted, last) {
            (true, _) => self.pending = RangeSet::new(),
            // Everything up to the last row was looked up.
            (false, Some(l)) => {
                self.pending.remove(0..l.saturating_add(1));
            }
            // Not exhausted yet nothing usable: stop rather than loop on the same query.
            (false, None) => self.pending = RangeSet::new(),
        }
        out
    }

    fn entries(&self, entries: Vec<Entry>) -> FetchMessage {
        FetchMessage::Entries(FetchEntries {
            epoch: self.request.epoch,
            entries,
        })
    }

    /// The final message: everything requested and not sent is unavailable.
    pub fn done(&self) -> FetchMessage {
        FetchMessage::Done(FetchDone {
            epoch: self.request.epoch,
            unavailable: minus(&self.request.ranges, &self.sent),
        })
    }

    /// Records sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.len()
    }
}

// ---------------------------------------------------------------------------------------
// Fetching side.

/// How a serving peer broke the protocol (the fetching side drops that peer).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FetchViolation {
    #[error("answer for epoch {got}, request was for epoch {want}")]
    WrongEpoch { want: u64, got: u64 },
    #[error("record {0} was not requested")]
    NotRequested(u64),
    #[error("record {0} out of order")]
    OutOfOrder(u64),
    #[error("done names {named} unavailable records, {missing} were not sent")]
    DoneMismatch { named: u64, missing: u64 },
    #[error("message after done")]
    AfterDone,
    #[error("a {0:?} is not an answer")]
    Unexpected(FetchKind),
    #[error("refused: {0:?}: {1}")]
    Refused(FetchRefuseReason, String),
}

/// What one answer message means for the fetching side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExchangeEvent {
    /// Records to store (checked: requested, in order, not seen before in this answer).
    Entries(Vec<Entry>),
    /// The answer is complete: `received` arrived, `not_provided` did not.
    Done {
        received: RangeSet,
        not_provided: RangeSet,
    },
}

/// Checks one answer against its request.
#[derive(Clone, Debug)]
pub struct FetchExchange {
    request: FetchRequest,
    received: RangeSet,
    last: Option<u64>,
    done: bool,
}

impl FetchExchange {
    pub fn new(request: FetchRequest) -> Self {
        Self {
            request,
            received: RangeSet::new(),
            last: None,
            done: false,
        }
    }

    pub fn request(&self) -> &FetchRequest {
        &self.request
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// One message of the answer.
    pub fn handle(&mut self, msg: FetchMessage) -> Result<ExchangeEvent, FetchViolation> {
        if self.done {
            return Err(FetchViolation::AfterDone);
        }
        let want = self.request.epoch;
        match msg {
            FetchMessage::Entries(e) => {
                if e.epoch != want {
                    return Err(FetchViolation::WrongEpoch { want, got: e.epoch });
                }
                for x in &e.entries {
                    if !self.request.ranges.contains(x.seq) {
                        return Err(FetchViolation::NotRequested(x.seq));
                    }
                    if self.last.is_some_and(|l| x.seq <= l) {
                        return Err(FetchViolation::OutOfOrder(x.seq));
                    }
                    self.last = Some(x.seq);
                    self.received.insert_one(x.seq);
                }
                Ok(ExchangeEvent::Entries(e.entries))
            }
            FetchMessage::Done(d) => {
                if d.epoch != want {
                    return Err(FetchViolation::WrongEpoch { want, got: d.epoch });
                }
                let not_provided = minus(&self.request.ranges, &self.received);
                if d.unavailable != not_provided {
                    return Err(FetchViolation::DoneMismatch {
                        named: d.unavailable.len(),
                        missing: not_provided.len(),
                    });
                }
                self.done = true;
                Ok(ExchangeEvent::Done {
                    received: self.received.clone(),
                    not_provided,
                })
            }
            FetchMessage::Refuse(r) => {
                self.done = true;
                Err(FetchViolation::Refused(r.reason, r.detail))
            }
            FetchMessage::Request(_) => Err(FetchViolation::Unexpected(FetchKind::Request)),
        }
    }
}

/// What a receiver misses of the epochs a poller's hello announces, below the hello's
/// `oldest` (which the poller can no longer send): per epoch, the part of
/// `[start, min(end, oldest))` not in `held` (an epoch ends where the next one starts, the
/// last one at the hello's head). Epochs the hello no longer announces are not known here.
pub fn gap_below_oldest(
    hello: &crate::message::Hello,
    held: &BTreeMap<u64, RangeSet>,
) -> BTreeMap<u64, RangeSet> {
    let mut out = BTreeMap::new();
    for (i, e) in hello.epochs.iter().enumerate() {
        let end = hello.epochs.get(i + 1).map_or(hello.head, |n| n.start);
        let below = e.start..end.min(hello.oldest);
        if below.start >= below.end {
            continue;
        }
        let mut gap = RangeSet::from(below.clone());
        if let Some(h) = held.get(&e.epoch) {
            for r in h.clipped(below) {
                gap.remove(r);
            }
        }
        if !gap.is_empty() {
            out.insert(e.epoch, gap);
        }
    }
    out
}

/// What the planner wants next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanStep {
    /// Send this request to peer number `peer` (an index into the configured order).
    Fetch { peer: usize, request: FetchRequest },
    /// A request is outstanding: wait for its answer.
    Wait,
    /// Nothing more to ask anyone.
    Finished(GapReport),
}

/// The outcome of a gap fetch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GapReport {
    /// Records fetched and stored here.
    pub fetched: u64,
    /// What no peer provided, per epoch: lost for this receiver.
    pub unavailable: BTreeMap<u64, RangeSet>,
}

impl GapReport {
    pub fn unavailable_records(&self) -> u64 {
        self.unavailable.values().map(RangeSet::len).sum()
    }
}

/// Plans the fetch of a gap from peers in preference order, one request at a time. Pure.
///
/// The driver loops: [`GapPlanner::step`]; on `Fetch`, sends the request to that peer and
/// reports [`GapPlanner::stored`] for records it made durable, then
/// [`GapPlanner::answered`] at the answer's end or [`GapPlanner::peer_failed`] if the peer
/// could not be reached or broke the protocol. Records not stored stay missing and are asked
/// of the next peer, never of the same one again.
#[derive(Clone, Debug)]
pub struct GapPlanner {
    poller: PollerId,
    peers: usize,
    missing: BTreeMap<u64, RangeSet>,
    peer: usize,
    /// Asked of the current peer.
    asked: BTreeMap<u64, RangeSet>,
    outstanding: bool,
    fetched: u64,
}

impl GapPlanner {
    pub fn new(poller: PollerId, missing: BTreeMap<u64, RangeSet>, peers: usize) -> Self {
        let missing = missing.into_iter().filter(|(_, s)| !s.is_empty()).collect();
        Self {
            poller,
            peers,
            missing,
            peer: 0,
            asked: BTreeMap::new(),
            outstanding: false,
            fetched: 0,
        }
    }

    /// What is still missing, per epoch.
    pub fn missing(&self) -> &BTreeMap<u64, RangeSet> {
        &self.missing
    }

    /// The peer being asked now.
    pub fn current_peer(&self) -> usize {
        self.peer
    }

    pub fn step(&mut self) -> PlanStep {
        if self.outstanding {
            return PlanStep::Wait;
        }
        while self.peer < self.peers {
            if let Some(request) = self.next_request() {
                self.outstanding = true;
                return PlanStep::Fetch {
                    peer: self.peer,
                    request,
                };
            }
            // This peer was asked for everything still missing: on to the next one.
            self.peer += 1;
            self.asked.clear();
        }
        PlanStep::Finished(GapReport {
            fetched: self.fetched,
            unavailable: self.missing.clone(),
        })
    }

    /// The first missing ranges not yet asked of the current peer, within one request's
    /// bounds.
    fn next_request(&mut self) -> Option<FetchRequest> {
        for (&epoch, missing) in &self.missing {
            let todo = match self.asked.get(&epoch) {
                Some(a) => minus(missing, a),
                None => missing.clone(),
            };
            if todo.is_empty() {
                continue;
            }
            let mut ranges = RangeSet::new();
            let mut seqs = 0u64;
            for r in todo.iter() {
                if ranges.range_count() >= MAX_REQUEST_RANGES || seqs >= MAX_REQUEST_SEQS {
                    break;
                }
                let take = (r.end - r.start).min(MAX_REQUEST_SEQS - seqs);
                ranges.insert(r.start..r.start + take);
                seqs += take;
            }
            let asked = self.asked.entry(epoch).or_default();
            for r in ranges.iter() {
                asked.insert(r);
            }
            return Some(FetchRequest {
                poller: self.poller.clone(),
                epoch,
                ranges,
            });
        }
        None
    }

    /// Records of `epoch` made durable here from a fetch (new or found already stored).
    pub fn stored(&mut self, epoch: u64, seqs: &RangeSet) {
        if let Some(m) = self.missing.get_mut(&epoch) {
            let before = m.len();
            for r in seqs.iter() {
                m.remove(r);
            }
            self.fetched += before - m.len();
            if m.is_empty() {
                self.missing.remove(&epoch);
            }
        }
    }

    /// The outstanding request's answer is complete.
    pub fn answered(&mut self) {
        self.outstanding = false;
    }

    /// The current peer cannot be used (unreachable, refused, broke the protocol): whatever
    /// is still missing goes to the next one.
    pub fn peer_failed(&mut self) {
        self.outstanding = false;
        self.peer += 1;
        self.asked.clear();
    }
}
