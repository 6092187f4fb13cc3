//! The record union and its sequencing envelope.

use super::daemon::DaemonHealth;
use super::event::Event;
use super::frame::FrameKind;
use super::ids::{PollerId, TenantId};
use super::metrics::NodeMetrics;
use super::peer::PeerStatus;
use super::service::ServiceState;
use serde::{Deserialize, Serialize};

/// Everything a peer streams. Append new variants at the end only, each with its own
/// [`FrameKind`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Record {
    NodeMetrics(NodeMetrics),
    Event(Event),
    ServiceState(ServiceState),
    DaemonHealth(DaemonHealth),
    PeerStatus(PeerStatus),
}

impl Record {
    /// The frame kind that carries this record, so that the replay log and the bus can route
    /// or thin (metrics first) by reading the frame header alone.
    pub const fn kind(&self) -> FrameKind {
        match self {
            Record::NodeMetrics(_) => FrameKind::NodeMetrics,
            Record::Event(_) => FrameKind::Event,
            Record::ServiceState(_) => FrameKind::ServiceState,
            Record::DaemonHealth(_) => FrameKind::DaemonHealth,
            Record::PeerStatus(_) => FrameKind::PeerStatus,
        }
    }

    /// The tenant whose data this is; `None` for records about the peer itself.
    pub const fn tenant(&self) -> Option<TenantId> {
        match self {
            Record::NodeMetrics(m) => Some(m.tenant),
            Record::Event(e) => Some(e.tenant),
            Record::ServiceState(s) => Some(s.tenant),
            Record::DaemonHealth(_) | Record::PeerStatus(_) => None,
        }
    }

    /// The time the record is about, unix milliseconds (for indexing and retention).
    pub const fn time_ms(&self) -> u64 {
        match self {
            Record::NodeMetrics(m) => m.interval_start_ms,
            Record::Event(e) => e.time_ms,
            Record::ServiceState(s) => s.checked_ms,
            Record::DaemonHealth(d) => d.checked_ms,
            Record::PeerStatus(p) => p.time_ms,
        }
    }
}

/// A record with its place in its poller's stream: (poller, epoch, seq) is unique, and
/// receivers store each such key once.
///
/// `epoch` is bumped on every start of the poller's sidecar; `seq` counts up within an epoch.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Sequenced {
    pub poller: PollerId,
    pub epoch: u64,
    pub seq: u64,
    pub record: Record,
}

impl Sequenced {
    pub fn new(poller: PollerId, epoch: u64, seq: u64, record: Record) -> Self {
        Self {
            poller,
            epoch,
            seq,
            record,
        }
    }
}
