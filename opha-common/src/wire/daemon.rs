//! Health of one local daemon (opchartsd, opeventsd, opconfigd, nmis9d, omkd, ophad, ...).

use super::alloc::string::String;
use serde::{Deserialize, Serialize};

/// Sent every few seconds with the heartbeat and on every change; the peer it belongs to is the
/// sender of the `Sequenced` envelope.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DaemonHealth {
    pub daemon: String,
    pub state: DaemonState,
    pub pid: Option<u32>,
    /// Since when it has been in this state, unix milliseconds.
    pub since_ms: u64,
    /// When it was checked, unix milliseconds.
    pub checked_ms: u64,
    /// How it was checked and what was seen, for people.
    pub detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DaemonState {
    Up,
    Down,
    /// The check itself failed (e.g. the configured command could not run): neither up nor
    /// down is known, and the page must not show green.
    Unknown,
}
