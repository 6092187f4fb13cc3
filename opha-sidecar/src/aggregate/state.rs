//! The core's persistent state: everything needed to continue exactly after a restart.

use super::health::{Health, Hysteresis};
use opha_common::node::{ClassCounters, NodeKey, PROTO_CLASSES, RTT_BUCKETS};
use opha_common::wire::TenantId;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;

/// Version of [`AggState`]'s layout; a checkpoint of another version is refused.
pub const STATE_FORMAT: u32 = 1;

/// A node as the core keys it (the kernel's [`NodeKey`] without padding, and serializable).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct NodeId {
    pub addr: [u8; 16],
    pub vlan: u16,
}

impl From<&NodeKey> for NodeId {
    fn from(k: &NodeKey) -> Self {
        Self {
            addr: k.addr,
            vlan: k.vlan,
        }
    }
}

impl NodeId {
    pub fn key(&self) -> NodeKey {
        NodeKey::new(self.addr, self.vlan)
    }
}

/// A node's health as the per-tenant counts see it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeHealth {
    #[default]
    Unknown,
    Up,
    /// Up, with SNMP or a service port down.
    Degraded,
    Down,
}

/// The kernel's counters of one class as last seen (the base of the next delta).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassSnap {
    pub requests: u64,
    pub responses: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub errors: u64,
    pub rtt_sum_ns: u64,
    pub rtt_min_ns: u64,
    pub rtt_max_ns: u64,
    pub rtt_count: u64,
    pub last_response_ns: u64,
    pub rtt_hist: [u32; RTT_BUCKETS],
}

impl From<&ClassCounters> for ClassSnap {
    fn from(c: &ClassCounters) -> Self {
        Self {
            requests: c.requests,
            responses: c.responses,
            bytes_out: c.bytes_out,
            bytes_in: c.bytes_in,
            errors: c.errors,
            rtt_sum_ns: c.rtt_sum_ns,
            rtt_min_ns: c.rtt_min_ns,
            rtt_max_ns: c.rtt_max_ns,
            rtt_count: c.rtt_count,
            last_response_ns: c.last_response_ns,
            rtt_hist: c.rtt_hist,
        }
    }
}

impl ClassSnap {
    /// The node was idle in this class since the last snapshot: its packet counters did not
    /// move. They share the first cache line of the class; the RTT fields and
    /// `last_response_ns` only ever change together with `responses` and `bytes_in`.
    pub(crate) fn same_as(&self, c: &ClassCounters) -> bool {
        self.requests == c.requests
            && self.responses == c.responses
            && self.bytes_out == c.bytes_out
            && self.bytes_in == c.bytes_in
            && self.errors == c.errors
    }

    /// True when a counter that only ever grows is lower in `cur`: the kernel's entry was
    /// recreated (maps reloaded, or the node evicted and seen again).
    pub(crate) fn went_backwards(&self, cur: &ClassCounters) -> bool {
        cur.requests < self.requests
            || cur.responses < self.responses
            || cur.bytes_out < self.bytes_out
            || cur.bytes_in < self.bytes_in
            || cur.errors < self.errors
            || cur.rtt_count < self.rtt_count
            || cur.rtt_sum_ns < self.rtt_sum_ns
    }
}

/// One class's sums over the open interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accum {
    pub requests: u64,
    pub responses: u64,
    pub errors: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub timeouts: u64,
    pub rtt_count: u64,
    pub rtt_sum_ns: u64,
    /// The lowest all-time minimum a snapshot of the interval set, 0 if none did.
    pub rtt_min_ns: u64,
    /// The highest all-time maximum a snapshot of the interval set, 0 if none did.
    pub rtt_max_ns: u64,
    pub rtt_hist: [u64; RTT_BUCKETS],
}

impl Accum {
    pub(crate) fn is_empty(&self) -> bool {
        self.requests == 0
            && self.responses == 0
            && self.errors == 0
            && self.bytes_in == 0
            && self.bytes_out == 0
            && self.timeouts == 0
            && self.rtt_count == 0
    }
}

/// One protocol class of one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassState {
    pub acc: Accum,
    pub health: Hysteresis,
    /// Running sum of request deltas (immune to counter resets).
    pub requests_total: u64,
    /// Newest kernel `last_response_ns` seen.
    pub last_response_ns: u64,
    /// The class has been polled (requests or timeouts seen).
    pub tracked: bool,
    pub rtt_alarm: bool,
    pub loss_alarm: bool,
}

/// One TCP service-check port of one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortState {
    pub health: Hysteresis,
    /// A ServicePortDown was sent and no ServicePortUp since.
    pub alarm: bool,
}

/// What the inventory says about a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: Option<String>,
    /// Overrides the tenant of the kernel's prefix map when set.
    pub tenant: Option<TenantId>,
}

/// One tick's counter evidence of one class (not persisted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TickClass {
    pub responses: u64,
    pub errors: u64,
    pub requests_before: u64,
}

/// Everything about one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    pub id: NodeId,
    /// Tenant from the kernel's prefix map (0 until seen).
    pub tenant: u32,
    /// The kernel's counters at the last snapshot that listed the node; `None` when the node
    /// is only known from timeouts.
    pub prev: Option<[ClassSnap; PROTO_CLASSES]>,
    /// Monotonic time of the last snapshot that listed the node (or of its first timeout).
    pub last_seen_ns: u64,
    pub classes: [ClassState; PROTO_CLASSES],
    pub ports: BTreeMap<u16, PortState>,
    /// A NodeDown was sent and no NodeUp since.
    pub node_alarm: bool,
    /// An SnmpDown was sent and no SnmpUp since.
    pub snmp_alarm: bool,
    pub health: NodeHealth,
    /// Events emitted for this node so far: the sequence part of event ids.
    pub event_seq: u64,
    /// Inventory lookup cache; looked up again after a restore or `set_inventory`.
    #[serde(skip)]
    pub(crate) info: Option<NodeInfo>,
    #[serde(skip)]
    pub(crate) scratch: Scratch,
}

/// Per-tick working state of a node, kept together so that skipping an idle node reads one
/// cache line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Scratch {
    /// `tick` holds this tick's counter deltas (else the node's counters did not change).
    pub absorbed: bool,
    /// New evidence this tick: changed counters or swept timeouts.
    pub dirty: bool,
    /// The last evaluation left nothing to age: an idle tick cannot change the node. False
    /// after a restore, so every node is evaluated once.
    pub settled: bool,
    pub tick: [TickClass; PROTO_CLASSES],
}

impl NodeState {
    pub(crate) fn new(id: NodeId) -> Self {
        Self {
            id,
            ..Self::default()
        }
    }

    pub fn class_health(&self, c: usize) -> Health {
        self.classes[c].health.state
    }
}

/// The core's whole state: serialize it to persist "the last snapshot emitted from" and the
/// node states; [`super::Aggregator::restore`] continues from it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AggState {
    pub format: u32,
    /// Monotonic time of the last snapshot; `None` before the first.
    pub last_mono_ns: Option<u64>,
    /// Wall time of the last snapshot, unix ms.
    pub last_wall_ms: u64,
    /// Start of the open interval (aligned), unix ms.
    pub open_interval_ms: Option<u64>,
    /// Intervals closed so far.
    pub intervals_closed: u64,
    #[serde(serialize_with = "ser_nodes", deserialize_with = "de_nodes")]
    pub nodes: BTreeMap<NodeId, NodeState>,
}

impl Default for AggState {
    fn default() -> Self {
        Self {
            format: STATE_FORMAT,
            last_mono_ns: None,
            last_wall_ms: 0,
            open_interval_ms: None,
            intervals_closed: 0,
            nodes: BTreeMap::new(),
        }
    }
}

// As a sequence: a map keyed by a struct is not representable in every format (JSON).
fn ser_nodes<S: Serializer>(m: &BTreeMap<NodeId, NodeState>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(m.values())
}

fn de_nodes<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<NodeId, NodeState>, D::Error> {
    let v = Vec::<NodeState>::deserialize(d)?;
    Ok(v.into_iter().map(|n| (n.id, n)).collect())
}
