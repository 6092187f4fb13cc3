//! Events: state changes and messages that operators act on.

use super::alloc::{string::String, vec::Vec};
use super::bytes::Bytes;
use super::ids::{PeerId, TenantId};
use super::metrics::PollClass;
use super::node::NodeRef;
use super::snmp::{Oid, SnmpVersion, VarBind};
use core::fmt;
use core::net::IpAddr;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// One event.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Event {
    /// Unique across the estate, so that an event forwarded twice (e.g. by a mirror) is known
    /// as the same event even outside its `Sequenced` envelope.
    pub id: EventId,
    /// When it happened, unix milliseconds.
    pub time_ms: u64,
    pub tenant: TenantId,
    pub subject: Subject,
    pub kind: EventKind,
    pub severity: Severity,
    /// Free text for people; machines read `kind`.
    pub details: String,
}

/// 128-bit event id; hex in human-readable formats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(pub [u8; 16]);

impl EventId {
    pub const fn from_u128(v: u128) -> Self {
        Self(v.to_be_bytes())
    }

    pub const fn as_u128(&self) -> u128 {
        u128::from_be_bytes(self.0)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.as_u128())
    }
}

impl Serialize for EventId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            // A fixed 16 bytes: ids are random-looking, so a varint u128 would only be longer.
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = EventId;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("32 hex digits")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<EventId, E> {
                match Bytes::from_hex(v) {
                    Some(b) => <[u8; 16]>::try_from(b.0.as_slice())
                        .map(EventId)
                        .map_err(|_| E::custom("event id must be 32 hex digits")),
                    None => Err(E::custom("event id must be 32 hex digits")),
                }
            }
        }
        if d.is_human_readable() {
            d.deserialize_str(V)
        } else {
            <[u8; 16]>::deserialize(d).map(EventId)
        }
    }
}

/// What an event is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Subject {
    Node(NodeRef),
    /// The peer itself (its daemons, its replay log).
    Peer(PeerId),
}

/// Ordered from least to most severe, so `>=` filters work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Minor,
    Major,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 5] = [
        Severity::Info,
        Severity::Warning,
        Severity::Minor,
        Severity::Major,
        Severity::Critical,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Minor => "minor",
            Severity::Major => "major",
            Severity::Critical => "critical",
        }
    }
}

/// The kind of an event, with the data that kind carries.
///
/// Append new variants at the end only (postcard encodes the variant index; see the versioning
/// rule in [`crate::wire`]). Paired kinds (down/up, above/below) let receivers close alarms
/// without knowing thresholds.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// No poll class answers (after the down hysteresis).
    NodeDown,
    NodeUp,
    /// SNMP stopped answering while ICMP still does: the node is degraded.
    SnmpDown,
    SnmpUp,
    /// A TCP service-check port stopped answering (RST or timeout).
    ServicePortDown {
        port: u16,
    },
    ServicePortUp {
        port: u16,
    },
    RttAboveThreshold {
        class: PollClass,
        rtt_us: u32,
        threshold_us: u32,
    },
    RttBelowThreshold {
        class: PollClass,
        rtt_us: u32,
        threshold_us: u32,
    },
    LossAboveThreshold {
        class: PollClass,
        loss_ppm: u32,
        threshold_ppm: u32,
    },
    LossBelowThreshold {
        class: PollClass,
        loss_ppm: u32,
        threshold_ppm: u32,
    },
    Trap(Trap),
    Syslog(Syslog),
    /// From local ingest (NMIS daemons, service checks).
    External {
        /// Who sent it (daemon or check name).
        source: String,
        /// The sender's own event name, e.g. NMIS's "Proactive Interface Utilisation".
        name: String,
    },
    /// A trap or syslog packet that could not be decoded: kept, never dropped.
    Undecodable {
        source: RawSource,
        from: IpAddr,
        raw: Bytes,
    },
    DaemonDown {
        daemon: String,
    },
    DaemonUp {
        daemon: String,
    },
    /// The replay log crossed its usage alarm (default 80% of the disk budget).
    ReplayLogUsageHigh {
        percent: u8,
    },
    ReplayLogUsageNormal {
        percent: u8,
    },
    /// The budget is full: metrics are thinned (one interval in `keep_every` kept).
    ReplayLogThinning {
        keep_every: u32,
    },
    /// Still full after thinning: intake is blocked.
    ReplayLogBlocked,
    ReplayLogUnblocked,
    /// Recovery on start dropped a torn tail and/or quarantined corrupt segments.
    ReplayLogRecovered {
        truncated_bytes: u64,
        quarantined_segments: u32,
    },
}

/// A decoded SNMP trap or inform.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Trap {
    pub version: SnmpVersion,
    pub inform: bool,
    /// snmpTrapOID (v1 traps translated per RFC 3584).
    pub oid: Oid,
    /// The v1 agent-addr, else the packet's source address.
    pub agent: IpAddr,
    pub varbinds: Vec<VarBind>,
}

/// A parsed syslog message (RFC 3164 or RFC 5424).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Syslog {
    /// 0..=23.
    pub facility: u8,
    /// 0 (emergency) ..= 7 (debug), syslog's own scale.
    pub severity: u8,
    pub host: String,
    /// RFC 3164 TAG or RFC 5424 APP-NAME.
    pub app: Option<String>,
    pub message: String,
}

/// Where an undecodable packet came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawSource {
    Trap,
    Syslog,
}
