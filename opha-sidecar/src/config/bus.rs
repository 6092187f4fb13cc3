//! `[bus]` and `[[receiver]]`: where the poller streams its replay log (primaries and its
//! mirror) and how. Without any `[[receiver]]` the bus is off and the poller behaves exactly
//! as without these sections (no cursor is registered in the log, nothing connects).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use opha_common::wire::{PeerId, PeerRole};
use opha_identity::TransportSettings;
use serde::{Deserialize, Serialize};

use super::{PollerConfig, Problem, units};

/// File name of the epoch table in the log directory (the default `bus.epoch_file`).
pub const EPOCH_FILE: &str = "bus-epochs.json";
/// Largest batch body: well below the bus frame bound (4 MiB) after postcard overhead.
pub const MAX_BATCH_BYTES: u64 = 2 << 20;

/// A receiver's role, as its certificate must carry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiverRole {
    Primary,
    Mirror,
}

impl ReceiverRole {
    pub fn peer_role(self) -> PeerRole {
        match self {
            ReceiverRole::Primary => PeerRole::Primary,
            ReceiverRole::Mirror => PeerRole::Mirror,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ReceiverRole::Primary => "primary",
            ReceiverRole::Mirror => "mirror",
        }
    }
}

/// `[[receiver]]`: one primary or mirror this poller streams every record to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverEntry {
    /// The receiver's peer id: its certificate must carry it. Also the name of its cursor in
    /// the replay log.
    pub peer: PeerId,
    pub role: ReceiverRole,
    /// `host:port` of its QUIC endpoint.
    pub address: String,
    /// Primaries only: lower is preferred (the main primary first, then the redundant ones).
    /// Default: the position in the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<u32>,
}

/// `[bus]`: certificates, the epoch file, batching, replay caps and transport.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusSection {
    /// This poller's certificate (PEM). Required with receivers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM). Required with receivers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// The CA certificate receivers must chain to (PEM). Required with receivers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// The epoch table; default `<log.dir>/bus-epochs.json`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch_file: Option<PathBuf>,
    /// zstd level for batch bodies, 0 = off.
    pub zstd_level: i32,
    /// How long a live record may wait for others to share its batch.
    #[serde(with = "units::duration")]
    pub linger: Duration,
    pub max_batch_records: u64,
    #[serde(with = "units::bytes")]
    pub max_batch_bytes: u64,
    /// Records sent and not yet acknowledged, per receiver.
    pub window_records: u64,
    /// Backlog replay cap in bytes per second (0 = uncapped).
    #[serde(with = "units::bytes")]
    pub replay_bytes_per_sec: u64,
    /// Backlog replay cap in records per second (0 = uncapped).
    pub replay_records_per_sec: u64,
    /// How much replay may go in one burst, as time at the full rate.
    #[serde(with = "units::duration")]
    pub replay_burst: Duration,
    /// A batch unacknowledged this long is sent again.
    #[serde(with = "units::duration")]
    pub retransmit_after: Duration,
    /// First wait before reconnecting; doubles up to `reconnect_max`.
    #[serde(with = "units::duration")]
    pub reconnect_min: Duration,
    #[serde(with = "units::duration")]
    pub reconnect_max: Duration,
    /// Fencing: how often the current grant is sent again to every connected primary (an
    /// application heartbeat each primary answers).
    #[serde(with = "units::duration")]
    pub heartbeat: Duration,
    /// Fencing: a primary that has not answered for this long is unreachable: its link is
    /// torn down (and reconnected) and the next primary becomes active. Independent of the
    /// QUIC idle timeout, so failover takes about this long. Above `heartbeat`; the active
    /// primary's lease is `failover_after - heartbeat`.
    #[serde(with = "units::duration")]
    pub failover_after: Duration,
    /// `[bus.transport]`: QUIC keep-alive, idle timeout, windows.
    pub transport: TransportSettings,
}

impl Default for BusSection {
    fn default() -> Self {
        let s = opha_bus::sender::SenderConfig::default();
        Self {
            cert: None,
            key: None,
            ca: None,
            epoch_file: None,
            zstd_level: 3,
            linger: Duration::from_nanos(s.linger),
            max_batch_records: s.max_batch_records,
            max_batch_bytes: s.max_batch_bytes as u64,
            window_records: s.window_records,
            replay_bytes_per_sec: s.replay_bytes_per_sec,
            replay_records_per_sec: s.replay_records_per_sec,
            replay_burst: Duration::from_nanos(s.replay_burst),
            retransmit_after: Duration::from_nanos(s.retransmit_after),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            heartbeat: Duration::from_millis(250),
            failover_after: Duration::from_secs(1),
            transport: TransportSettings::default(),
        }
    }
}

impl BusSection {
    /// The bus sender's settings.
    pub fn sender_config(&self) -> opha_bus::sender::SenderConfig {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        opha_bus::sender::SenderConfig {
            max_batch_records: self.max_batch_records,
            max_batch_bytes: usize::try_from(self.max_batch_bytes).unwrap_or(usize::MAX),
            linger: ns(self.linger),
            window_records: self.window_records,
            replay_bytes_per_sec: self.replay_bytes_per_sec,
            replay_records_per_sec: self.replay_records_per_sec,
            replay_burst: ns(self.replay_burst),
            retransmit_after: ns(self.retransmit_after),
            compression: if self.zstd_level == 0 {
                opha_bus::compress::Compression::Off
            } else {
                opha_bus::compress::Compression::Zstd {
                    level: self.zstd_level,
                }
            },
        }
    }
}

impl PollerConfig {
    /// The epoch table's path.
    pub fn epoch_file(&self) -> PathBuf {
        self.bus
            .epoch_file
            .clone()
            .unwrap_or_else(|| self.log_dir().join(EPOCH_FILE))
    }

    /// The primaries in preference order (main first): indexes into `receivers`.
    pub fn primary_order(&self) -> Vec<usize> {
        let mut p: Vec<(u32, usize)> = self
            .receivers
            .iter()
            .enumerate()
            .filter(|(_, r)| r.role == ReceiverRole::Primary)
            .map(|(i, r)| (r.order.unwrap_or(u32::try_from(i).unwrap_or(u32::MAX)), i))
            .collect();
        p.sort();
        p.into_iter().map(|(_, i)| i).collect()
    }
}

/// Step 2 for `[bus]`: relative paths against the config file's directory, the epoch file
/// next to the log (after `log.dir` is resolved).
pub(super) fn resolve(cfg: &mut PollerConfig, base_dir: &Path) {
    let abs = |p: &Option<PathBuf>| {
        p.as_ref().map(|p| {
            if p.is_absolute() {
                p.clone()
            } else {
                base_dir.join(p)
            }
        })
    };
    cfg.bus.cert = abs(&cfg.bus.cert);
    cfg.bus.key = abs(&cfg.bus.key);
    cfg.bus.ca = abs(&cfg.bus.ca);
    cfg.bus.epoch_file = Some(abs(&cfg.bus.epoch_file).unwrap_or_else(|| cfg.epoch_file()));
}

/// Step 3 for `[bus]` and `[[receiver]]`.
pub(super) fn validate(c: &PollerConfig, p: &mut Vec<Problem>) {
    let b = &c.bus;
    if let Err(e) = b.transport.validate() {
        p.push(Problem::new(format!("bus.transport.{}", e.key), e.why));
    }
    if !(-7..=22).contains(&b.zstd_level) {
        p.push(Problem::new(
            "bus.zstd_level",
            "use 1-22 (zstd levels), negative for faster, or 0 for off",
        ));
    }
    if b.linger > Duration::from_secs(1) {
        p.push(Problem::new("bus.linger", "at most 1s"));
    }
    if b.max_batch_records == 0 || b.max_batch_records > 65_536 {
        p.push(Problem::new("bus.max_batch_records", "use 1-65536"));
    }
    if !(1024..=MAX_BATCH_BYTES).contains(&b.max_batch_bytes) {
        p.push(Problem::new("bus.max_batch_bytes", "use 1KiB-2MiB"));
    }
    if b.window_records < 2 * b.max_batch_records {
        p.push(Problem::new(
            "bus.window_records",
            "must be at least twice bus.max_batch_records",
        ));
    }
    if b.retransmit_after < Duration::from_millis(100) {
        p.push(Problem::new("bus.retransmit_after", "at least 100ms"));
    }
    if b.reconnect_min.is_zero() || b.reconnect_max < b.reconnect_min {
        p.push(Problem::new(
            "bus.reconnect_max",
            "bus.reconnect_min must be above 0 and at most bus.reconnect_max",
        ));
    }
    if b.heartbeat < Duration::from_millis(10) || b.heartbeat > Duration::from_secs(60) {
        p.push(Problem::new("bus.heartbeat", "use 10ms-60s"));
    }
    // The lease (failover_after - heartbeat) must be at least 1 ms and fit a grant.
    let lease_max = Duration::from_millis(u64::from(opha_bus::message::MAX_LEASE_MS));
    if b.failover_after < b.heartbeat + Duration::from_millis(1)
        || b.failover_after > b.heartbeat + lease_max
    {
        p.push(Problem::new(
            "bus.failover_after",
            "must be above bus.heartbeat (and at most 10 minutes above it)",
        ));
    }
    if c.receivers.is_empty() {
        return;
    }
    for key in ["cert", "key", "ca"] {
        let set = match key {
            "cert" => b.cert.is_some(),
            "key" => b.key.is_some(),
            _ => b.ca.is_some(),
        };
        if !set {
            p.push(Problem::new(
                format!("bus.{key}"),
                "is required when a [[receiver]] is configured",
            ));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, r) in c.receivers.iter().enumerate() {
        if !seen.insert(r.peer.as_str()) {
            p.push(Problem::new(
                format!("receiver[{i}].peer"),
                format!("{} is listed twice", r.peer),
            ));
        }
        if r.peer == c.poller_id {
            p.push(Problem::new(
                format!("receiver[{i}].peer"),
                "is this poller's own id",
            ));
        }
        let ok = r
            .address
            .rsplit_once(':')
            .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok_and(|n| n > 0));
        if !ok {
            p.push(Problem::new(
                format!("receiver[{i}].address"),
                format!("{:?} is not host:port", r.address),
            ));
        }
        if r.order.is_some() && r.role == ReceiverRole::Mirror {
            p.push(Problem::new(
                format!("receiver[{i}].order"),
                "only primaries are ordered",
            ));
        }
    }
}
