//! Settings of the aggregation core.

use opha_common::wire::{PPM, PeerId, PollClass, PollerId};
use serde::{Deserialize, Serialize};

/// What the core needs to know; everything has a default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AggConfig {
    /// This poller's id: the first input of every event id.
    pub poller: PollerId,
    /// Length of a metrics interval in milliseconds (default 60 s). Intervals are aligned to
    /// multiples of this length in wall-clock time.
    pub interval_ms: u32,
    /// A request without a response after this long is lost. The driver sweeps in-flight
    /// entries older than this; the core uses it to age requests it only knows from counters.
    pub poll_timeout_ms: u32,
    /// Consecutive failed polls before a class, port or node is down (N, default 3).
    pub down_after: u32,
    /// Consecutive answered polls before it is up again (M, default 2).
    pub up_after: u32,
    /// The TCP service-check ports the kernel was given (`DataPlane::set_tcp_ports`). With one
    /// port every TCP answer and RST of a node belongs to it; see [`super`] for several.
    pub tcp_ports: Vec<u16>,
    /// A node missing from the kernel's map (evicted, or no longer polled) for this long is
    /// forgotten, so that the core's state stays bounded by the map (default 1 h).
    pub forget_after_ms: u64,
    pub icmp: Thresholds,
    pub snmp: Thresholds,
    pub tcp: Thresholds,
}

impl Default for AggConfig {
    fn default() -> Self {
        Self {
            poller: PeerId::new("poller").expect("a valid literal peer id"),
            interval_ms: 60_000,
            poll_timeout_ms: 5_000,
            down_after: 3,
            up_after: 2,
            tcp_ports: Vec::new(),
            forget_after_ms: 3_600_000,
            icmp: Thresholds::with_rtt_ms(250),
            snmp: Thresholds::with_rtt_ms(1_000),
            tcp: Thresholds::with_rtt_ms(500),
        }
    }
}

impl AggConfig {
    pub fn thresholds(&self, c: PollClass) -> &Thresholds {
        match c {
            PollClass::Icmp => &self.icmp,
            PollClass::Snmp => &self.snmp,
            PollClass::Tcp => &self.tcp,
        }
    }

    /// N and M, at least 1 each (0 would mean "down before any failure").
    pub(crate) fn limits(&self) -> (u64, u64) {
        (
            u64::from(self.down_after.max(1)),
            u64::from(self.up_after.max(1)),
        )
    }

    pub(crate) fn poll_timeout_ns(&self) -> u64 {
        u64::from(self.poll_timeout_ms) * 1_000_000
    }
}

/// Per protocol class alarm thresholds, evaluated once per interval. An alarm is raised when
/// the interval's value is above `*_above`, and cleared when a later interval is at or below
/// `*_below` (a band, so that a value hovering at the threshold does not flap).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Thresholds {
    /// Average RTT in microseconds; `None` disables RTT alarms for the class.
    pub rtt_above_us: Option<u32>,
    /// Default: 80% of `rtt_above_us`.
    pub rtt_below_us: Option<u32>,
    /// Loss in parts per million; `None` disables loss alarms for the class.
    pub loss_above_ppm: Option<u32>,
    /// Default: half of `loss_above_ppm`.
    pub loss_below_ppm: Option<u32>,
    /// Intervals with fewer requests say too little about loss and are skipped.
    pub loss_min_requests: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            rtt_above_us: None,
            rtt_below_us: None,
            loss_above_ppm: Some(PPM / 5),
            loss_below_ppm: None,
            loss_min_requests: 1,
        }
    }
}

impl Thresholds {
    /// The defaults with an RTT alarm above `ms` milliseconds.
    pub fn with_rtt_ms(ms: u32) -> Self {
        Self {
            rtt_above_us: Some(ms.saturating_mul(1000)),
            ..Self::default()
        }
    }

    /// (above, below) for RTT.
    pub(crate) fn rtt(&self) -> Option<(u32, u32)> {
        let above = self.rtt_above_us?;
        let below = self
            .rtt_below_us
            .unwrap_or((u64::from(above) * 4 / 5) as u32);
        Some((above, below.min(above)))
    }

    /// (above, below) for loss.
    pub(crate) fn loss(&self) -> Option<(u32, u32)> {
        let above = self.loss_above_ppm?;
        let below = self.loss_below_ppm.unwrap_or(above / 2);
        Some((above, below.min(above)))
    }
}
