//! The `aggregate_ms_per_2000_nodes` benchmark (issue 3 §7): CPU time of the core to turn
//! one interval of snapshots into records.

use super::{AggConfig, Aggregator, Input, Output};
use opha_common::inflight::{InflightKey, InflightKind};
use opha_common::node::{NodeCounters, NodeKey, rtt_bucket};

/// CPU time of this thread, ns (wall time if the clock cannot be read).
fn cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc == 0 {
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    } else {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    }
}

/// Milliseconds of CPU time per interval of 2,000 nodes, one snapshot per interval (the
/// driver's least work), averaged over `iterations` intervals. See [`bench_aggregate`].
pub fn bench_aggregate_2000(iterations: u32) -> f64 {
    bench_aggregate(2000, 1, iterations)
}

/// Milliseconds of CPU time the core spends per interval with `nodes` nodes and
/// `ticks_per_interval` snapshots in each interval, averaged over `iterations` intervals.
///
/// Every node is polled in all three classes in every tick (RTT samples spread over several
/// buckets), one node in 20 has an ICMP timeout per tick and one in 50 a TCP timeout, and
/// each interval ends with one `NodeMetrics` per node. Only [`Aggregator::poll`] is timed,
/// not building the synthetic snapshots.
pub fn bench_aggregate(nodes: usize, ticks_per_interval: u32, iterations: u32) -> f64 {
    run(nodes, ticks_per_interval, iterations, false)
}

/// Like [`bench_aggregate`], with a poller's real load instead of the worst case: each node is
/// polled in one tick of each interval (spread evenly, as a 1-minute ping cycle does), its
/// ICMP and TCP every interval and its SNMP every fifth; the other ticks only find it idle.
pub fn bench_aggregate_spread(nodes: usize, ticks_per_interval: u32, iterations: u32) -> f64 {
    run(nodes, ticks_per_interval, iterations, true)
}

fn run(nodes: usize, ticks_per_interval: u32, iterations: u32, spread: bool) -> f64 {
    let config = AggConfig {
        tcp_ports: vec![22, 443],
        ..AggConfig::default()
    };
    let interval_ms = u64::from(config.interval_ms);
    let ticks = u64::from(ticks_per_interval.max(1));
    let mut agg = Aggregator::new(config);
    let mut snap: Vec<(NodeKey, NodeCounters)> = (0..nodes)
        .map(|i| {
            let key = NodeKey::v4([198, 18, (i >> 8) as u8, i as u8], (i % 3) as u16);
            let counters = NodeCounters {
                tenant: 1 + (i % 4) as u32,
                ..NodeCounters::default()
            };
            (key, counters)
        })
        .collect();
    let mut mono: u64 = 1_000_000_000_000;
    let mut wall: u64 = 1_700_000_000_000 - 1_700_000_000_000 % interval_ms;
    let mut out = Output::default();
    let mut timeouts: Vec<(InflightKey, u64)> = Vec::new();
    agg.poll(
        &Input {
            mono_ns: mono,
            wall_ms: wall,
            nodes: &snap,
            timeouts: &[],
        },
        &mut out,
    );
    let tick_ms = interval_ms / ticks;
    let mut total_ns = 0u64;
    let mut records = 0usize;
    for it in 0..iterations.max(1) {
        for t in 0..ticks {
            let step_ms = if t + 1 == ticks {
                interval_ms - tick_ms * (ticks - 1)
            } else {
                tick_ms
            };
            mono += step_ms * 1_000_000;
            wall += step_ms;
            timeouts.clear();
            for (i, (key, c)) in snap.iter_mut().enumerate() {
                if spread && i as u64 % ticks != t {
                    continue;
                }
                for (ci, cc) in c.classes.iter_mut().enumerate() {
                    if spread && ci == 1 && !(i + it as usize).is_multiple_of(5) {
                        continue;
                    }
                    let rtt_ns = 200_000 * (1 + ((i + ci) % 40) as u64);
                    cc.requests += 5;
                    cc.responses += if i.is_multiple_of(20) { 4 } else { 5 };
                    cc.bytes_out += 5 * 90;
                    cc.bytes_in += 5 * 120;
                    cc.rtt_count += 4;
                    cc.rtt_sum_ns += 4 * rtt_ns;
                    cc.rtt_hist[rtt_bucket(rtt_ns)] += 3;
                    cc.rtt_hist[rtt_bucket(rtt_ns * 3)] += 1;
                    if cc.rtt_min_ns == 0 || rtt_ns < cc.rtt_min_ns {
                        cc.rtt_min_ns = rtt_ns;
                    }
                    cc.rtt_max_ns = cc.rtt_max_ns.max(rtt_ns * 3);
                    cc.last_response_ns = mono - 1_000_000;
                }
                let sent = mono - 6_000_000_000;
                if i.is_multiple_of(20) {
                    timeouts.push((inflight(*key, InflightKind::IcmpEcho, 0), sent));
                }
                if i.is_multiple_of(50) {
                    timeouts.push((inflight(*key, InflightKind::TcpSyn, 443), sent));
                }
            }
            let input = Input {
                mono_ns: mono,
                wall_ms: wall,
                nodes: &snap,
                timeouts: &timeouts,
            };
            let start = cpu_ns();
            agg.poll(&input, &mut out);
            total_ns += cpu_ns().saturating_sub(start);
            records += out.metrics.len();
            out.clear();
        }
    }
    debug_assert!(records >= nodes * iterations.max(1) as usize);
    total_ns as f64 / 1e6 / f64::from(iterations.max(1))
}

fn inflight(node: NodeKey, kind: InflightKind, port: u16) -> InflightKey {
    InflightKey {
        node,
        kind: kind as u8,
        _pad: 0,
        port,
        id: 1,
    }
}
