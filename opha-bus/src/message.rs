//! The bus messages and their frames.
//!
//! # Frames
//!
//! Bus frames have exactly the layout of opha-common's record frames
//! (`opha_common::wire::frame`): magic "OP", protocol version (u16 LE), kind (u16 LE),
//! payload length (u32 LE), then the postcard payload. The kinds are in the range
//! 0x100..=0x1ff that opha-common reserves for the bus:
//!
//! | kind  | message    | direction          |
//! |-------|------------|--------------------|
//! | 0x100 | [`Hello`]    | poller -> receiver |
//! | 0x101 | [`HelloAck`] | receiver -> poller |
//! | 0x102 | [`Batch`]    | poller -> receiver |
//! | 0x103 | [`Ack`]      | receiver -> poller |
//! | 0x104 | [`Refuse`]   | receiver -> poller |
//! | 0x105 | [`Grant`]    | poller -> primary  |
//! | 0x106 | [`Term`]     | primary -> poller  |
//!
//! The codec is [`crate::frame`]'s, shared with the other bus message families. They are
//! decoded there rather than by `opha_common::wire::FrameCodec`, whose `FrameKind`
//! lists record kinds only (its tests pin 0x100 as unknown to the record decoder): the header
//! is shared, so one stream reader reads both, and a record decoder handed a bus frame refuses
//! it as an unknown kind instead of misreading it. The version rule is opha-common's.
//!
//! Decoding is strict, as for records: the payload must be the canonical postcard encoding of
//! its value, and each message is checked for internal consistency ([`BusError::Invalid`]).
//!
//! # Batch body
//!
//! A [`Batch`] carries its records as one body: the postcard encoding of a `Vec<Entry>`
//! (each entry a sequence number and the record's bytes as the replay log holds them),
//! compressed as a whole with zstd when that helps ([`crate::compress`]). The batch header
//! repeats the epoch, first and last sequence number and count, so a receiver can refuse a
//! forged batch before spending anything on decompression.

use crate::compress::{self, BodyCodec, Compression, DecompressError};
use crate::frame::{FrameHeader, FrameKinds, FrameMessage, frame_codec, strict};
use crate::ranges::RangeSet;
use opha_common::wire::{Bytes, PROTOCOL_VERSION};
use serde::{Deserialize, Serialize};

/// Default bound on a bus frame's payload (a batch body is bounded by the batch size).
pub const DEFAULT_MAX_PAYLOAD: u32 = 4 << 20;
/// Default bound on a decompressed batch body.
pub const DEFAULT_MAX_BODY: usize = 16 << 20;
/// Most epochs a [`Hello`] or [`HelloAck`] may list.
pub const MAX_EPOCHS: usize = 4096;
/// Most ranges an [`Ack`] carries beyond its cumulative point.
pub const MAX_SACK_RANGES: usize = 64;

/// A bus frame's kind.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BusKind {
    Hello = 0x100,
    HelloAck = 0x101,
    Batch = 0x102,
    Ack = 0x103,
    Refuse = 0x104,
    Grant = 0x105,
    Term = 0x106,
}

impl BusKind {
    pub const ALL: [BusKind; 7] = [
        BusKind::Hello,
        BusKind::HelloAck,
        BusKind::Batch,
        BusKind::Ack,
        BusKind::Refuse,
        BusKind::Grant,
        BusKind::Term,
    ];

    pub const fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            0x100 => BusKind::Hello,
            0x101 => BusKind::HelloAck,
            0x102 => BusKind::Batch,
            0x103 => BusKind::Ack,
            0x104 => BusKind::Refuse,
            0x105 => BusKind::Grant,
            0x106 => BusKind::Term,
            _ => return None,
        })
    }
}

/// Where an epoch starts in the poller's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EpochStart {
    pub epoch: u64,
    /// Log position of the epoch's first record. The epoch ends where the next one starts.
    pub start: u64,
}

/// Poller -> receiver, first message of a connection. The poller's id is not here: the
/// receiver takes it from the connection's verified certificate.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version the poller speaks (also in the frame header; here so that the
    /// handshake answer can name it).
    pub version: u16,
    /// The poller's current epoch (bumped on every start of its sidecar).
    pub epoch: u64,
    /// Oldest record still in the poller's log: anything missing below it cannot come from
    /// this poller any more.
    pub oldest: u64,
    /// Next log position: every record below it is durable in the poller's log.
    pub head: u64,
    /// Every epoch that may still have records in the log, oldest first, ending with `epoch`.
    pub epochs: Vec<EpochStart>,
}

/// What the receiver holds durably of one epoch.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EpochHeld {
    pub epoch: u64,
    pub held: RangeSet,
}

/// Receiver -> poller: the answer to [`Hello`], for every epoch the hello listed. The poller
/// resumes exactly after it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HelloAck {
    pub epochs: Vec<EpochHeld>,
}

/// One record in a batch.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    /// The record as the replay log holds it (opaque to the bus).
    pub payload: Bytes,
}

/// Poller -> receiver: records of one epoch, in increasing sequence order.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Batch {
    pub epoch: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub count: u32,
    pub codec: BodyCodec,
    /// postcard `Vec<Entry>`, compressed as `codec` says.
    pub body: Bytes,
}

/// Receiver -> poller: what is durable of one epoch.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ack {
    pub epoch: u64,
    /// Cumulative: every record of the epoch below `next` (from the epoch's start) is durable.
    pub next: u64,
    /// Further durable ranges above `next` (selective acks), at most [`MAX_SACK_RANGES`].
    pub sack: RangeSet,
}

/// Why a receiver refused a hello or a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RefuseReason {
    /// The poller speaks a protocol version this receiver does not.
    UnsupportedVersion,
    /// A batch before the handshake, or a second hello.
    NoHandshake,
    /// The hello's epoch is older than one the receiver has already seen from this poller.
    EpochRegressed,
    /// The hello places an epoch at another log position than before, or ends it below
    /// records the receiver holds.
    EpochConflict,
    /// A batch for an epoch the hello did not announce.
    UnknownEpoch,
    /// A batch for an epoch that was already complete at the handshake (a replay).
    StaleEpoch,
    /// Sequence numbers outside the epoch, or beyond anything the poller could have yet.
    SeqOutOfRange,
    /// A frame or batch body that does not decode, or a batch whose header and body disagree.
    Malformed,
    /// The poller is not allowed to send this (tenant, role); decided by the driver.
    Unauthorized,
}

/// Receiver -> poller: a refusal. After a refused hello the receiver closes the connection;
/// after a refused batch it keeps serving.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Refuse {
    pub reason: RefuseReason,
    /// For the operator's log (not interpreted).
    pub detail: String,
}

/// Longest lease a [`Grant`] may give (a primary acts at most this long unheard).
pub const MAX_LEASE_MS: u32 = 600_000;

/// Poller -> primary (never to a mirror): which primary is active for this poller, fenced by
/// `term` ([`crate::fencing`]). Sent to every connected primary after the handshake, on every
/// change, and again as a heartbeat; each primary answers with a [`Term`].
///
/// The active primary is named by its peer id, not by its place in the poller's list, so a
/// primary needs no knowledge of the poller's configuration: it compares the name with its own
/// id (as its certificate carries it).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Grant {
    /// Terms start at 1 (0 is "nothing granted yet").
    pub term: u64,
    /// The primary that acts with `term`; `None`: none does (yet). A primary not named steps
    /// down when `term` is above what it has seen.
    pub active: Option<opha_common::wire::PeerId>,
    /// How long the named primary may act after receiving this grant unless a newer one
    /// renews it, in milliseconds: shorter than the poller waits before it grants another
    /// primary, so a primary cut off from the poller stops acting before anyone else starts.
    pub lease_ms: u32,
}

/// Primary -> poller: the answer to every [`Grant`]: the highest term this primary has seen
/// (persisted; the poller jumps above it if it lost its own) and whether it acts now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Term {
    pub highest: u64,
    pub acting: bool,
}

/// Any bus message.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum BusMessage {
    Hello(Hello),
    HelloAck(HelloAck),
    Batch(Batch),
    Ack(Ack),
    Refuse(Refuse),
    Grant(Grant),
    Term(Term),
}

impl BusMessage {
    pub fn kind(&self) -> BusKind {
        match self {
            BusMessage::Hello(_) => BusKind::Hello,
            BusMessage::HelloAck(_) => BusKind::HelloAck,
            BusMessage::Batch(_) => BusKind::Batch,
            BusMessage::Ack(_) => BusKind::Ack,
            BusMessage::Refuse(_) => BusKind::Refuse,
            BusMessage::Grant(_) => BusKind::Grant,
            BusMessage::Term(_) => BusKind::Term,
        }
    }
}

/// Every way a bus frame or batch body can be refused. Decoding returns one of these for any
/// input; it never panics.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    #[error("bad frame magic {found:02x?}")]
    BadMagic { found: [u8; 2] },
    #[error(
        "unsupported protocol version {found:#06x} (this build speaks {PROTOCOL_VERSION:#06x})"
    )]
    UnsupportedVersion { found: u16 },
    #[error("frame kind {kind:#06x} is not a bus message")]
    UnknownKind { kind: u16 },
    #[error("truncated frame: {available} of {needed} bytes")]
    Truncated { needed: usize, available: usize },
    #[error("frame payload of {len} bytes exceeds the maximum of {max}")]
    TooLong { len: usize, max: u32 },
    #[error("{extra} trailing bytes after the frame")]
    TrailingBytes { extra: usize },
    #[error("{extra} bytes left over inside the frame payload")]
    PayloadTrailing { extra: usize },
    #[error("frame payload is not canonically encoded")]
    NonCanonical,
    #[error("invalid frame payload: {0}")]
    Postcard(#[from] postcard::Error),
    #[error("batch body: {0}")]
    Body(#[from] DecompressError),
    #[error("inconsistent message: {0}")]
    Invalid(&'static str),
}

/// A parsed bus frame header.
pub type BusHeader = FrameHeader<BusKind>;

frame_codec!(
    /// Encodes and decodes bus frames with a bound on the payload.
    BusFrame,
    BusMessage,
    DEFAULT_MAX_PAYLOAD
);

impl FrameKinds for BusKind {
    fn from_u16(v: u16) -> Option<Self> {
        BusKind::from_u16(v)
    }

    fn as_u16(self) -> u16 {
        self as u16
    }
}

impl FrameMessage for BusMessage {
    type Kind = BusKind;

    fn kind(&self) -> BusKind {
        BusMessage::kind(self)
    }

    fn to_payload(&self) -> Result<Vec<u8>, postcard::Error> {
        match self {
            BusMessage::Hello(m) => postcard::to_allocvec(m),
            BusMessage::HelloAck(m) => postcard::to_allocvec(m),
            BusMessage::Batch(m) => postcard::to_allocvec(m),
            BusMessage::Ack(m) => postcard::to_allocvec(m),
            BusMessage::Refuse(m) => postcard::to_allocvec(m),
            BusMessage::Grant(m) => postcard::to_allocvec(m),
            BusMessage::Term(m) => postcard::to_allocvec(m),
        }
    }

    fn from_payload(kind: BusKind, payload: &[u8]) -> Result<Self, BusError> {
        Ok(match kind {
            BusKind::Hello => BusMessage::Hello(strict(payload)?),
            BusKind::HelloAck => BusMessage::HelloAck(strict(payload)?),
            BusKind::Batch => BusMessage::Batch(strict(payload)?),
            BusKind::Ack => BusMessage::Ack(strict(payload)?),
            BusKind::Refuse => BusMessage::Refuse(strict(payload)?),
            BusKind::Grant => BusMessage::Grant(strict(payload)?),
            BusKind::Term => BusMessage::Term(strict(payload)?),
        })
    }

    fn validate(&self) -> Result<(), BusError> {
        validate(self)
    }
}

/// Internal consistency of a decoded message (what postcard cannot check).
pub fn validate(msg: &BusMessage) -> Result<(), BusError> {
    match msg {
        BusMessage::Hello(h) => {
            if h.epochs.is_empty() || h.epochs.len() > MAX_EPOCHS {
                return Err(BusError::Invalid("hello lists no epochs or too many"));
            }
            if h.epochs
                .windows(2)
                .any(|w| w[0].epoch >= w[1].epoch || w[0].start > w[1].start)
            {
                return Err(BusError::Invalid("hello epochs are not in order"));
            }
            let last = h.epochs[h.epochs.len() - 1];
            if last.epoch != h.epoch {
                return Err(BusError::Invalid("hello epochs do not end with its epoch"));
            }
            if last.start > h.head || h.oldest > h.head {
                return Err(BusError::Invalid("hello positions beyond its head"));
            }
        }
        BusMessage::HelloAck(a) => {
            if a.epochs.len() > MAX_EPOCHS || a.epochs.windows(2).any(|w| w[0].epoch >= w[1].epoch)
            {
                return Err(BusError::Invalid("hello ack epochs are not in order"));
            }
        }
        BusMessage::Batch(b) => {
            let fits = b.count > 0
                && b.last_seq
                    .checked_sub(b.first_seq)
                    .is_some_and(|span| span >= u64::from(b.count) - 1);
            if !fits {
                return Err(BusError::Invalid(
                    "batch count does not fit its sequence span",
                ));
            }
        }
        BusMessage::Ack(a) => {
            if a.sack.range_count() > MAX_SACK_RANGES {
                return Err(BusError::Invalid("ack carries too many ranges"));
            }
            if a.sack.iter().next().is_some_and(|r| r.start <= a.next) {
                return Err(BusError::Invalid("ack ranges overlap its cumulative point"));
            }
        }
        BusMessage::Refuse(_) => {}
        BusMessage::Grant(g) => {
            if g.term == 0 && g.active.is_some() {
                return Err(BusError::Invalid("grant names a primary with term 0"));
            }
            if g.lease_ms == 0 || g.lease_ms > MAX_LEASE_MS {
                return Err(BusError::Invalid("grant lease out of range"));
            }
        }
        BusMessage::Term(t) => {
            if t.acting && t.highest == 0 {
                return Err(BusError::Invalid("acting with term 0"));
            }
        }
    }
    Ok(())
}

impl Batch {
    /// Builds a batch of one epoch from `(seq, record bytes)` in strictly increasing order.
    pub fn build<'a>(
        epoch: u64,
        records: impl IntoIterator<Item = (u64, &'a [u8])>,
        compression: Compression,
    ) -> Result<Batch, BusError> {
        let entries: Vec<Entry> = records
            .into_iter()
            .map(|(seq, p)| Entry {
                seq,
                payload: Bytes(p.to_vec()),
            })
            .collect();
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Err(BusError::Invalid("empty batch"));
        };
        if entries.windows(2).any(|w| w[0].seq >= w[1].seq) {
            return Err(BusError::Invalid("batch records out of order"));
        }
        let count =
            u32::try_from(entries.len()).map_err(|_| BusError::Invalid("batch too large"))?;
        let (first_seq, last_seq) = (first.seq, last.seq);
        let raw = postcard::to_allocvec(&entries)?;
        let (codec, body) = compress::compress(&raw, compression);
        Ok(Batch {
            epoch,
            first_seq,
            last_seq,
            count,
            codec,
            body: Bytes(body),
        })
    }

    /// Decompresses and decodes the records, checking them against the header: exactly
    /// `count` entries, strictly increasing, from `first_seq` to `last_seq`.
    pub fn entries(&self, max_body: usize) -> Result<Vec<Entry>, BusError> {
        let raw = compress::decompress(self.codec, &self.body.0, max_body)?;
        let (entries, rest) = postcard::take_from_bytes::<Vec<Entry>>(&raw)?;
        if !rest.is_empty() {
            return Err(BusError::PayloadTrailing { extra: rest.len() });
        }
        if entries.len() != self.count as usize {
            return Err(BusError::Invalid("batch count disagrees with its body"));
        }
        if entries.first().map(|e| e.seq) != Some(self.first_seq)
            || entries.last().map(|e| e.seq) != Some(self.last_seq)
            || entries.windows(2).any(|w| w[0].seq >= w[1].seq)
        {
            return Err(BusError::Invalid(
                "batch sequence numbers disagree with its header",
            ));
        }
        Ok(entries)
    }
}
