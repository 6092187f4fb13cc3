//! Event ids.
//!
//! By default an id is a fixed 128-bit hash (FNV-1a) of (poller id, node, kind, the node's
//! event sequence number). The sequence number is part of the core's persisted state, so a
//! core restored from a checkpoint that re-emits an event (because the driver crashed before
//! the event was durable) gives it the same id, and receivers see one event. The algorithm is
//! spelled out here rather than taken from `std::hash`, whose output may change between Rust
//! releases. A driver may supply its own generator instead.

use opha_common::node::NodeKey;
use opha_common::wire::{EventId, EventKind, PollerId};

/// What an event id is derived from.
#[derive(Clone, Copy, Debug)]
pub struct IdInput<'a> {
    pub poller: &'a PollerId,
    pub node: &'a NodeKey,
    pub kind: &'a EventKind,
    /// Counts the events of this node, from 0; never reused.
    pub seq: u64,
}

/// Supplies event ids.
pub trait EventIdGen: Send {
    fn id(&mut self, input: &IdInput<'_>) -> EventId;
}

impl<F: FnMut(&IdInput<'_>) -> EventId + Send> EventIdGen for F {
    fn id(&mut self, input: &IdInput<'_>) -> EventId {
        self(input)
    }
}

/// The default: deterministic ids (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct DeterministicIds;

impl EventIdGen for DeterministicIds {
    fn id(&mut self, input: &IdInput<'_>) -> EventId {
        deterministic_id(input)
    }
}

const FNV_OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
const FNV_PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;

struct Fnv(u128);

impl Fnv {
    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= u128::from(x);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }
}

/// The kind's identity without its measured values: (tag, port or class).
fn kind_identity(kind: &EventKind) -> (u8, u16) {
    let class = |c: &opha_common::wire::PollClass| *c as u16;
    match kind {
        EventKind::NodeDown => (0, 0),
        EventKind::NodeUp => (1, 0),
        EventKind::SnmpDown => (2, 0),
        EventKind::SnmpUp => (3, 0),
        EventKind::ServicePortDown { port } => (4, *port),
        EventKind::ServicePortUp { port } => (5, *port),
        EventKind::RttAboveThreshold { class: c, .. } => (6, class(c)),
        EventKind::RttBelowThreshold { class: c, .. } => (7, class(c)),
        EventKind::LossAboveThreshold { class: c, .. } => (8, class(c)),
        EventKind::LossBelowThreshold { class: c, .. } => (9, class(c)),
        // The core emits none of the others; they still get distinct, stable tags.
        _ => (0xff, 0),
    }
}

/// The default id of an event.
pub fn deterministic_id(input: &IdInput<'_>) -> EventId {
    let mut h = Fnv(FNV_OFFSET);
    h.bytes(b"opha-aggregate-event\0");
    h.bytes(input.poller.as_str().as_bytes());
    h.bytes(&[0]);
    h.bytes(&input.node.addr);
    h.bytes(&input.node.vlan.to_le_bytes());
    let (tag, extra) = kind_identity(input.kind);
    h.bytes(&[tag]);
    h.bytes(&extra.to_le_bytes());
    h.bytes(&input.seq.to_le_bytes());
    EventId::from_u128(h.0)
}
