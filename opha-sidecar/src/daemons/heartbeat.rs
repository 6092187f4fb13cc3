//! The heartbeat: a `PeerStatus` every few seconds, built from numbers other parts own (node
//! counts, replay-log depth, kernel counters) and passed in, so the builder stays pure.

use std::collections::BTreeMap;

use opha_common::{
    stats::Stat,
    wire::{
        KernelCounter, PROTOCOL_VERSION, PeerId, PeerRole, PeerStatus, ReplayLogStatus, TenantId,
        TenantNodes,
    },
};

use crate::loader::GlobalStats;

/// A fixed-rate schedule with no clock of its own: due at `start`, then every `every_ms`.
/// Missed beats are skipped, not caught up in a burst.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    every_ms: u64,
    next_ms: u64,
}

impl Heartbeat {
    pub fn new(every_ms: u64, start_ms: u64) -> Self {
        Self {
            every_ms: every_ms.max(1),
            next_ms: start_ms,
        }
    }

    /// True (and the next beat scheduled) when a beat is due at `now_ms`.
    pub fn due(&mut self, now_ms: u64) -> bool {
        if now_ms < self.next_ms {
            return false;
        }
        let behind = (now_ms - self.next_ms) / self.every_ms;
        self.next_ms += (behind + 1) * self.every_ms;
        true
    }

    /// When the next beat is due.
    pub fn next_ms(&self) -> u64 {
        self.next_ms
    }
}

/// The parts of a `PeerStatus` that stay the same for the life of the sidecar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatusBuilder {
    pub peer: PeerId,
    pub role: PeerRole,
    pub version: String,
    pub region: String,
}

/// What changes from one heartbeat to the next.
#[derive(Clone, Debug, Default)]
pub struct PeerStatusInputs<'a> {
    /// Wall clock, unix milliseconds.
    pub time_ms: u64,
    /// From a monotonic clock, so that a wall-clock step does not change it.
    pub uptime_ms: u64,
    /// Monitored nodes per tenant; a tenant listed twice is summed.
    pub nodes: &'a [(TenantId, u32)],
    pub replay_log: ReplayLogStatus,
    /// Kernel counters by name, e.g. from [`kernel_counters`].
    pub kernel: &'a [KernelCounter],
}

impl PeerStatusBuilder {
    /// A poller running this build.
    pub fn poller(peer: PeerId, region: impl Into<String>) -> Self {
        Self {
            peer,
            role: PeerRole::Poller,
            version: env!("CARGO_PKG_VERSION").to_string(),
            region: region.into(),
        }
    }

    /// One heartbeat. Tenants come out sorted by id, one entry each.
    pub fn build(&self, inputs: &PeerStatusInputs<'_>) -> PeerStatus {
        let mut per_tenant: BTreeMap<TenantId, u32> = BTreeMap::new();
        for &(tenant, n) in inputs.nodes {
            let slot = per_tenant.entry(tenant).or_default();
            *slot = slot.saturating_add(n);
        }
        PeerStatus {
            peer: self.peer.clone(),
            role: self.role,
            version: self.version.clone(),
            protocol: PROTOCOL_VERSION,
            uptime_ms: inputs.uptime_ms,
            region: self.region.clone(),
            time_ms: inputs.time_ms,
            nodes: per_tenant
                .into_iter()
                .map(|(tenant, nodes)| TenantNodes { tenant, nodes })
                .collect(),
            replay_log: inputs.replay_log,
            kernel: inputs.kernel.to_vec(),
        }
    }
}

/// The kernel statistics that count loss or trouble, in this order, then the in-flight
/// evictions (derived, see `GlobalStats`).
pub const KERNEL_DROP_STATS: [Stat; 6] = [
    Stat::RingbufDrops,
    Stat::NodeMapFull,
    Stat::Malformed,
    Stat::Fragments,
    Stat::InflightInsertFailed,
    Stat::UnmatchedResponses,
];

/// The drop and error counters of a kernel snapshot, for `PeerStatus.kernel`.
pub fn kernel_counters(stats: &GlobalStats) -> Vec<KernelCounter> {
    KERNEL_DROP_STATS
        .iter()
        .map(|s| KernelCounter {
            name: s.name().to_string(),
            value: stats.get(*s),
        })
        .chain(std::iter::once(KernelCounter {
            name: "inflight_evictions".to_string(),
            value: stats.inflight_evictions,
        }))
        .collect()
}
