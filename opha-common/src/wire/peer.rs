//! A peer's heartbeat: what the Home view's peer card shows.

use super::alloc::{string::String, vec::Vec};
use super::ids::{PeerId, TenantId};
use serde::{Deserialize, Serialize};

/// Sent every few seconds; its arrival time is the heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerStatus {
    pub peer: PeerId,
    pub role: PeerRole,
    /// Software version of the sender, e.g. "0.1.0".
    pub version: String,
    /// Wire protocol version the sender writes (`PROTOCOL_VERSION`).
    pub protocol: u16,
    pub uptime_ms: u64,
    pub region: String,
    /// When this status was taken, unix milliseconds.
    pub time_ms: u64,
    /// Monitored nodes per tenant.
    pub nodes: Vec<TenantNodes>,
    pub replay_log: ReplayLogStatus,
    /// The kernel's drop and error counters (cumulative), by their `Stat` names, so a counter
    /// added to the kernel needs no protocol change.
    pub kernel: Vec<KernelCounter>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerRole {
    Poller,
    Primary,
    Mirror,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TenantNodes {
    pub tenant: TenantId,
    pub nodes: u32,
}

/// How much the replay log holds that some receiver has not acknowledged yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReplayLogStatus {
    pub records: u64,
    pub bytes: u64,
    /// Age of the oldest unacknowledged record, 0 when there is none.
    pub oldest_age_ms: u64,
    /// The disk budget.
    pub budget_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KernelCounter {
    pub name: String,
    pub value: u64,
}
