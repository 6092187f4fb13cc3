//! Service-level state (SSL expiry, port checks, application checks).

use super::alloc::string::String;
use super::ids::TenantId;
use super::node::NodeRef;
use serde::{Deserialize, Serialize};

/// The current state of one service check on one node. Sent on every change and periodically,
/// so a receiver that missed history still converges on the current state.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServiceState {
    pub service: String,
    pub kind: ServiceKind,
    pub node: NodeRef,
    pub tenant: TenantId,
    pub state: ServiceStatus,
    /// Why it is in this state, for people.
    pub reason: String,
    /// Since when it has been in this state, unix milliseconds.
    pub since_ms: u64,
    /// When it was last checked, unix milliseconds.
    pub checked_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceStatus {
    Up,
    Degraded,
    Down,
}

/// What kind of check a service is, so the services table can group and label it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceKind {
    Port {
        port: u16,
    },
    SslExpiry,
    Application,
    /// Anything else NMIS or opCharts tracks, by its own name.
    Other(String),
}
