//! What the pipeline reads: the kernel's counters and in-flight map, the trap/syslog ring
//! buffer, and the clocks. Traits, so that the tasks run against the real data plane in
//! production and against fakes in tests.

use opha_common::{
    inflight::InflightKey,
    node::{NodeCounters, NodeKey},
    ports::PortConfig,
};

use crate::{
    loader::{DataPlane, GlobalStats, MonitoredPrefix},
    ring::{RingItem, RingReader},
};

/// The kernel's per-node counters, in-flight requests and global statistics.
pub trait KernelSource: Send {
    /// Removes in-flight requests older than `timeout_ns` at `now_ns` (`CLOCK_MONOTONIC`) and
    /// returns them with their send times: the poll timeouts.
    fn sweep(&mut self, now_ns: u64, timeout_ns: u64) -> Result<Vec<(InflightKey, u64)>, String>;
    /// Every node's counters, summed across CPUs.
    fn nodes(&mut self) -> Result<Vec<(NodeKey, NodeCounters)>, String>;
    /// Global statistics.
    fn stats(&mut self) -> Result<GlobalStats, String>;

    // Live configuration (config push, [`super::config_apply`]): the maps are updated in
    // place, the programs stay attached. A source that cannot be configured refuses.

    /// New contents of the monitored prefix (LPM) map.
    fn set_prefixes(&mut self, _prefixes: &[MonitoredPrefix]) -> Result<(), String> {
        Err("this kernel source cannot be configured live".into())
    }
    /// New port configuration.
    fn set_ports(&mut self, _ports: PortConfig) -> Result<(), String> {
        Err("this kernel source cannot be configured live".into())
    }
    /// New TCP check ports.
    fn set_tcp_ports(&mut self, _ports: &[u16]) -> Result<(), String> {
        Err("this kernel source cannot be configured live".into())
    }
}

impl KernelSource for DataPlane {
    fn sweep(&mut self, now_ns: u64, timeout_ns: u64) -> Result<Vec<(InflightKey, u64)>, String> {
        self.sweep_inflight(now_ns, timeout_ns)
            .map(|v| v.into_iter().map(|(k, v)| (k, v.sent_ns)).collect())
            .map_err(|e| e.to_string())
    }

    fn nodes(&mut self) -> Result<Vec<(NodeKey, NodeCounters)>, String> {
        DataPlane::nodes(self)
            .map(|v| v.into_iter().map(|n| (n.key, n.counters)).collect())
            .map_err(|e| e.to_string())
    }

    fn stats(&mut self) -> Result<GlobalStats, String> {
        DataPlane::stats(self).map_err(|e| e.to_string())
    }

    fn set_prefixes(&mut self, prefixes: &[MonitoredPrefix]) -> Result<(), String> {
        DataPlane::set_prefixes(self, prefixes).map_err(|e| e.to_string())
    }

    fn set_ports(&mut self, ports: PortConfig) -> Result<(), String> {
        DataPlane::set_ports(self, ports).map_err(|e| e.to_string())
    }

    fn set_tcp_ports(&mut self, ports: &[u16]) -> Result<(), String> {
        DataPlane::set_tcp_ports(self, ports).map_err(|e| e.to_string())
    }
}

/// A ring buffer read in batches whose consumer position moves only on `commit`
/// (see [`RingReader`]).
pub trait RingSource: Send {
    /// Reads up to `max` records past those read and not committed; one item per record.
    fn read(&mut self, max: usize, out: &mut Vec<RingItem>) -> usize;
    /// Marks everything read so far as consumed.
    fn commit(&mut self);
    /// Forgets what was read since the last commit.
    fn rewind(&mut self);
    /// Bytes produced and not yet committed.
    fn pending_bytes(&self) -> u64;
}

impl RingSource for RingReader {
    fn read(&mut self, max: usize, out: &mut Vec<RingItem>) -> usize {
        RingReader::read(self, max, out)
    }

    fn commit(&mut self) {
        RingReader::commit(self)
    }

    fn rewind(&mut self) {
        RingReader::rewind(self)
    }

    fn pending_bytes(&self) -> u64 {
        RingReader::pending_bytes(self)
    }
}

/// A ring source that never has records (a pipeline without a ring buffer).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoRing;

impl RingSource for NoRing {
    fn read(&mut self, _max: usize, _out: &mut Vec<RingItem>) -> usize {
        0
    }
    fn commit(&mut self) {}
    fn rewind(&mut self) {}
    fn pending_bytes(&self) -> u64 {
        0
    }
}

/// The two clocks the pipeline needs.
pub trait Clock: Send + Sync {
    /// `CLOCK_MONOTONIC`, ns: the clock the kernel stamps requests with.
    fn mono_ns(&self) -> u64;
    /// Unix time, ms: record timestamps and interval boundaries.
    fn wall_ms(&self) -> u64;
}

/// The system's clocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn mono_ns(&self) -> u64 {
        monotonic_ns()
    }

    fn wall_ms(&self) -> u64 {
        unix_ms()
    }
}

/// `CLOCK_MONOTONIC` in ns (what `bpf_ktime_get_ns` returns).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Unix time in ms (0 before 1970).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
