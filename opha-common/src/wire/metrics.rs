//! Per-node metrics of one interval.

use super::{ids::TenantId, node::NodeRef};
use crate::node::ProtoClass;
use serde::{Deserialize, Serialize};

/// One node's polling metrics over one interval (default 60 s), per protocol class.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeMetrics {
    pub node: NodeRef,
    pub tenant: TenantId,
    /// Start of the interval, unix milliseconds.
    pub interval_start_ms: u64,
    /// Length of the interval in milliseconds.
    pub interval_ms: u32,
    pub icmp: ClassMetrics,
    pub snmp: ClassMetrics,
    pub tcp: ClassMetrics,
}

impl NodeMetrics {
    pub fn class(&self, c: PollClass) -> &ClassMetrics {
        match c {
            PollClass::Icmp => &self.icmp,
            PollClass::Snmp => &self.snmp,
            PollClass::Tcp => &self.tcp,
        }
    }

    pub fn class_mut(&mut self, c: PollClass) -> &mut ClassMetrics {
        match c {
            PollClass::Icmp => &mut self.icmp,
            PollClass::Snmp => &mut self.snmp,
            PollClass::Tcp => &mut self.tcp,
        }
    }
}

/// A protocol class of polling, as records name it (the kernel's [`ProtoClass`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PollClass {
    Icmp,
    Snmp,
    Tcp,
}

impl PollClass {
    pub const ALL: [PollClass; 3] = [PollClass::Icmp, PollClass::Snmp, PollClass::Tcp];
}

impl From<ProtoClass> for PollClass {
    fn from(c: ProtoClass) -> Self {
        match c {
            ProtoClass::IcmpEcho => PollClass::Icmp,
            ProtoClass::Snmp => PollClass::Snmp,
            ProtoClass::TcpCheck => PollClass::Tcp,
        }
    }
}

impl From<PollClass> for ProtoClass {
    fn from(c: PollClass) -> Self {
        match c {
            PollClass::Icmp => ProtoClass::IcmpEcho,
            PollClass::Snmp => ProtoClass::Snmp,
            PollClass::Tcp => ProtoClass::TcpCheck,
        }
    }
}

/// One protocol class of one node over one interval. Counts are deltas within the interval.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub requests: u64,
    pub responses: u64,
    /// Requests that got no response within the poll timeout.
    pub timeouts: u64,
    /// Loss ratio in parts per million (1_000_000 = every request lost). Fixed point rather than
    /// a float so that records compare and hash exactly and encode canonically.
    pub loss_ppm: u32,
    /// SNMP error-status, ICMP unreachable/time-exceeded, TCP RST.
    pub errors: u64,
    /// Whole frames, as the kernel counts them.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// `None` when no response was matched to its request in this interval.
    pub rtt: Option<RttStats>,
}

/// The scale of [`ClassMetrics::loss_ppm`].
pub const PPM: u32 = 1_000_000;

impl ClassMetrics {
    pub fn loss_ratio(&self) -> f64 {
        f64::from(self.loss_ppm) / f64::from(PPM)
    }

    /// `ratio` in 0..=1 as parts per million, rounded and clamped (NaN counts as 0).
    pub fn ppm_from_ratio(ratio: f64) -> u32 {
        if ratio.is_nan() || ratio <= 0.0 {
            0
        } else if ratio >= 1.0 {
            PPM
        } else {
            // In range 0..=1e6 after the checks above, so the cast cannot truncate.
            (ratio * f64::from(PPM) + 0.5) as u32
        }
    }
}

/// Round-trip times of the matched requests of one interval, in microseconds. Percentiles come
/// from the kernel's log2 histogram, so they are bucket estimates; min, max and avg are exact.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RttStats {
    /// Number of matched request/response pairs.
    pub samples: u64,
    pub min_us: u32,
    pub avg_us: u32,
    pub max_us: u32,
    pub p50_us: u32,
    pub p95_us: u32,
    pub p99_us: u32,
}
