//! Aggregation core: interval metrics (counts, loss, RTT percentiles), counter resets, new
//! nodes, missed intervals, 2,000 nodes. Fake clock and synthetic counters only.

use opha_common::node::{NodeKey, ProtoClass, RTT_BUCKETS, rtt_bucket};
use opha_common::wire::{NodeMetrics, PPM, TenantId};
use opha_sidecar::aggregate::sim::{FRAME_LEN, Poll, Reply, Scenario};
use opha_sidecar::aggregate::{AggConfig, Aggregator, Input, Output, loss_ppm, rtt};

use ProtoClass::{IcmpEcho as Icmp, Snmp, TcpCheck as Tcp};

const IV: u64 = 60_000;
const T0: u64 = 1_700_000_040_000 - 1_700_000_040_000 % IV + 5_000;

fn node(i: u16) -> NodeKey {
    NodeKey::v4([198, 18, (i >> 8) as u8, i as u8], 0)
}

fn cfg() -> AggConfig {
    AggConfig {
        poll_timeout_ms: 3_000,
        tcp_ports: vec![22],
        ..AggConfig::default()
    }
}

fn site() -> Scenario {
    Scenario::new(Aggregator::new(cfg()), T0, 10_000)
}

/// Idle rounds until an interval closes; its metrics.
fn close(s: &mut Scenario) -> Vec<NodeMetrics> {
    for _ in 0..100 {
        let out = s.round(&[]);
        if !out.metrics.is_empty() {
            return out.metrics;
        }
    }
    panic!("no interval closed with records");
}

/// One round of `polls`, then the metrics of the interval holding them (slow answers move
/// the fake clock, so the round itself may close it).
fn round_then_close(s: &mut Scenario, polls: &[Poll]) -> Vec<NodeMetrics> {
    let out = s.round(polls);
    if out.metrics.is_empty() {
        close(s)
    } else {
        out.metrics
    }
}

fn ok(us: u64) -> Reply {
    Reply::Answer { rtt_us: us }
}

#[test]
fn counts_loss_errors_bytes_timeouts_per_class() {
    let mut s = site();
    let n = node(1);
    let mut polls: Vec<Poll> = Vec::new();
    polls.extend([(n, Icmp, 0, ok(2_000)); 8]);
    polls.extend([(n, Icmp, 0, Reply::Lost); 2]);
    polls.extend([(n, Snmp, 0, ok(5_000)); 4]);
    polls.push((n, Snmp, 0, Reply::Refused { rtt_us: 5_000 }));
    polls.extend([(n, Tcp, 22, ok(1_000)); 2]);
    polls.push((n, Tcp, 22, Reply::Refused { rtt_us: 1_000 }));
    polls.push((n, Tcp, 22, Reply::Unreachable));
    s.round(&polls);
    let m = close(&mut s);
    assert_eq!(m.len(), 1);
    let m = &m[0];
    assert_eq!(m.node.key(), n);
    assert_eq!(m.tenant, TenantId(1));
    assert_eq!(m.interval_start_ms, T0 - 5_000);
    assert_eq!(m.interval_ms, IV as u32);

    let i = &m.icmp;
    assert_eq!(
        (i.requests, i.responses, i.timeouts, i.errors),
        (10, 8, 2, 0)
    );
    assert_eq!(i.loss_ppm, PPM / 5);
    assert_eq!((i.bytes_out, i.bytes_in), (10 * FRAME_LEN, 8 * FRAME_LEN));
    let r = i.rtt.unwrap();
    assert_eq!(r.samples, 8);
    assert_eq!(
        (r.min_us, r.avg_us, r.max_us, r.p50_us, r.p95_us, r.p99_us),
        (2_000, 2_000, 2_000, 2_000, 2_000, 2_000),
        "equal samples: every statistic exact"
    );

    let sn = &m.snmp;
    assert_eq!(
        (
            sn.requests,
            sn.responses,
            sn.timeouts,
            sn.errors,
            sn.loss_ppm
        ),
        (5, 5, 0, 1, 0)
    );
    assert_eq!(sn.rtt.unwrap().samples, 5);

    let t = &m.tcp;
    assert_eq!(
        (t.requests, t.responses, t.timeouts, t.errors),
        (4, 3, 1, 2)
    );
    assert_eq!(t.loss_ppm, PPM / 4);
    assert_eq!(
        t.bytes_in,
        4 * FRAME_LEN,
        "three answers and the ICMP unreachable"
    );
}

#[test]
fn loss_ratio_in_ppm() {
    assert_eq!(loss_ppm(0, 0), 0);
    assert_eq!(loss_ppm(3, 2), 333_333);
    assert_eq!(loss_ppm(3, 1), 666_667);
    assert_eq!(loss_ppm(7, 0), PPM);
    assert_eq!(loss_ppm(5, 9), 0, "late answers never make loss negative");
    assert_eq!(loss_ppm(u64::MAX, 0), PPM);
}

fn same_bucket_or_close(reported_us: u32, true_us: u64) -> bool {
    let ratio = f64::from(reported_us) / true_us as f64;
    rtt_bucket(u64::from(reported_us) * 1000) == rtt_bucket(true_us * 1000)
        || (ratio >= 1.0 / (2f64.sqrt() * 1.01) && ratio <= 2f64.sqrt() * 1.01)
}

fn nearest_rank(sorted: &[u64], q: f64) -> u64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
    sorted[rank - 1]
}

#[test]
fn rtt_percentiles_from_buckets_within_bucket_precision() {
    // 1..=100 ms, then a pseudo-random spread over many buckets.
    let mut sets: Vec<Vec<u64>> = vec![(1..=100).map(|ms| ms * 1000).collect()];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    sets.push(
        (0..1000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // 50 us .. ~3.3 s, log-uniform-ish.
                50 * (1u64 << (x % 16)) + x % 997
            })
            .collect(),
    );
    for samples in sets {
        let mut s = site();
        let n = node(2);
        let polls: Vec<Poll> = samples.iter().map(|&us| (n, Icmp, 0, ok(us))).collect();
        let m = round_then_close(&mut s, &polls);
        let r = m[0].icmp.rtt.unwrap();
        let mut sorted = samples.clone();
        sorted.sort_unstable();
        assert_eq!(r.samples, samples.len() as u64);
        assert_eq!(u64::from(r.min_us), sorted[0], "new all-time min: exact");
        assert_eq!(
            u64::from(r.max_us),
            *sorted.last().unwrap(),
            "new all-time max: exact"
        );
        let avg = samples.iter().sum::<u64>() / samples.len() as u64;
        assert!(
            u64::from(r.avg_us).abs_diff(avg) <= 1,
            "{} vs {avg}",
            r.avg_us
        );
        for (q, got) in [(0.5, r.p50_us), (0.95, r.p95_us), (0.99, r.p99_us)] {
            let want = nearest_rank(&sorted, q);
            assert!(
                same_bucket_or_close(got, want),
                "p{}: reported {got} us, true {want} us",
                q * 100.0
            );
        }
        assert!(r.min_us <= r.p50_us && r.p50_us <= r.p95_us);
        assert!(r.p95_us <= r.p99_us && r.p99_us <= r.max_us);
    }
}

#[test]
fn rtt_min_max_bounded_when_not_all_time_extremes() {
    let mut s = site();
    let n = node(3);
    s.round(&[(n, Icmp, 0, ok(1_000)), (n, Icmp, 0, ok(100_000))]);
    close(&mut s);
    // 10..20 ms: neither a new all-time min (1 ms) nor max (100 ms).
    let polls: Vec<Poll> = (10..=20).map(|ms| (n, Icmp, 0, ok(ms * 1000))).collect();
    s.round(&polls);
    let r = close(&mut s)[0].icmp.rtt.unwrap();
    assert_eq!(r.samples, 11);
    assert_eq!(r.avg_us, 15_000, "avg is exact");
    assert_eq!(
        rtt_bucket(u64::from(r.min_us) * 1000),
        rtt_bucket(10_000_000)
    );
    assert_eq!(
        rtt_bucket(u64::from(r.max_us) * 1000),
        rtt_bucket(20_000_000)
    );
    assert!(r.min_us <= r.avg_us && r.avg_us <= r.max_us);
}

#[test]
fn bucket_midpoints_are_geometric() {
    for i in 1..RTT_BUCKETS {
        let (lo, hi) = rtt::bucket_bounds_ns(i);
        let mid = rtt::bucket_midpoint_us(i) as f64 * 1000.0;
        let want = ((lo as f64) * (hi.min(lo * 2) as f64)).sqrt();
        assert!(
            (mid / want - 1.0).abs() < 0.5 / (1u64 << i) as f64 + 1e-9,
            "bucket {i}"
        );
    }
}

#[test]
fn counter_reset_counts_new_values_from_zero() {
    let mut s = site();
    let (a, b) = (node(4), node(5));
    s.round(&[(a, Icmp, 0, ok(1_000)); 5]);
    // Counted but never snapshotted: lost with the maps.
    for _ in 0..3 {
        s.kernel.poll(a, Icmp, 0, ok(1_000));
    }
    s.kernel.recreate_maps();
    s.round(&[(a, Icmp, 0, ok(1_000)), (b, Icmp, 0, ok(1_000))]);
    s.round(&[(a, Icmp, 0, ok(1_000)); 3]);
    let m = close(&mut s);
    let ma = m.iter().find(|m| m.node.key() == a).unwrap();
    assert_eq!((ma.icmp.requests, ma.icmp.responses), (5 + 1 + 3, 9));
    assert_eq!(ma.icmp.rtt.unwrap().samples, 9);
    let mb = m.iter().find(|m| m.node.key() == b).unwrap();
    assert_eq!(mb.icmp.requests, 1);
}

#[test]
fn one_evicted_node_resets_alone() {
    let mut s = site();
    let (a, b) = (node(6), node(7));
    s.round(&[(a, Icmp, 0, ok(1_000)), (b, Icmp, 0, ok(1_000))]);
    close(&mut s);
    s.round(&[(a, Snmp, 0, ok(1_000)); 4]);
    s.kernel.evict(&a);
    s.round(&[(a, Snmp, 0, ok(1_000)), (b, Snmp, 0, ok(1_000))]);
    let m = close(&mut s);
    let ma = m.iter().find(|m| m.node.key() == a).unwrap();
    let mb = m.iter().find(|m| m.node.key() == b).unwrap();
    assert_eq!(ma.snmp.requests, 5);
    assert_eq!(ma.icmp.requests, 0);
    assert_eq!(mb.snmp.requests, 1);
}

#[test]
fn baseline_history_not_counted_new_nodes_counted_from_zero() {
    let mut k = opha_sidecar::aggregate::sim::FakeKernel::new(T0);
    let (old, new) = (node(8), node(9));
    for _ in 0..50 {
        k.poll(old, Icmp, 0, ok(1_000));
    }
    let mut s = Scenario {
        kernel: k,
        agg: Aggregator::new(cfg()),
        round_ms: 10_000,
        events: Vec::new(),
        metrics: Vec::new(),
    };
    s.feed(); // baseline: `old` has 50 requests of unknown age
    s.round(&[(old, Icmp, 0, ok(1_000)); 2]);
    s.round(&[(new, Icmp, 0, ok(1_000)); 3]); // appears mid-interval
    let m = close(&mut s);
    assert_eq!(
        m.iter()
            .find(|m| m.node.key() == old)
            .unwrap()
            .icmp
            .requests,
        2
    );
    assert_eq!(
        m.iter()
            .find(|m| m.node.key() == new)
            .unwrap()
            .icmp
            .requests,
        3
    );
}

#[test]
fn missed_polls_give_one_longer_record_nothing_lost() {
    let mut s = site();
    let n = node(10);
    s.round(&[(n, Icmp, 0, ok(1_000))]);
    close(&mut s);
    // No driver poll for 3.5 minutes; the kernel keeps counting.
    let mut sent = 0;
    for _ in 0..21 {
        s.kernel.poll(n, Icmp, 0, ok(1_000));
        sent += 1;
        s.kernel.advance_ms(10_000);
    }
    let m = s.feed().metrics;
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].icmp.requests, sent);
    assert_eq!(m[0].interval_ms as u64 % IV, 0);
    assert!(m[0].interval_ms as u64 >= 3 * IV);
    let prev = &s.metrics[s.metrics.len() - 2];
    assert_eq!(
        prev.interval_start_ms + u64::from(prev.interval_ms),
        m[0].interval_start_ms,
        "contiguous"
    );
}

#[test]
fn only_active_nodes_get_records() {
    let mut s = site();
    s.round(&[
        (node(11), Icmp, 0, ok(1_000)),
        (node(12), Icmp, 0, ok(1_000)),
    ]);
    assert_eq!(close(&mut s).len(), 2);
    s.round(&[(node(11), Icmp, 0, ok(1_000))]);
    let m = close(&mut s);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].node.key(), node(11));
}

#[test]
fn two_thousand_nodes_in_one_interval() {
    let mut s = site();
    let nodes: Vec<NodeKey> = (0..2000).map(node).collect();
    for (i, n) in nodes.iter().enumerate() {
        s.kernel.set_tenant(*n, 1 + (i % 4) as u32);
    }
    let mut polls: Vec<Poll> = Vec::new();
    for (i, &n) in nodes.iter().enumerate() {
        for _ in 0..1 + i % 3 {
            polls.push((n, Icmp, 0, ok(500 + i as u64)));
        }
        polls.push((n, Snmp, 0, ok(3_000)));
        if i.is_multiple_of(7) {
            polls.push((n, Icmp, 0, Reply::Lost));
        }
    }
    // Answers move the fake clock by their RTT: keep the round inside the interval.
    s.round_ms = 20_000;
    s.round(&polls);
    let m = close(&mut s);
    assert_eq!(m.len(), 2000);
    assert!(
        m.windows(2).all(|w| w[0].node.key() < w[1].node.key()),
        "ordered by node"
    );
    for (i, (mm, &n)) in m.iter().zip(nodes.iter()).enumerate() {
        assert_eq!(mm.node.key(), n);
        assert_eq!(mm.tenant, TenantId(1 + (i % 4) as u32));
        let lost = u64::from(i.is_multiple_of(7));
        let answered = 1 + (i % 3) as u64;
        assert_eq!(mm.icmp.requests, answered + lost);
        assert_eq!(mm.icmp.responses, answered);
        assert_eq!(mm.icmp.timeouts, lost);
        assert_eq!(mm.icmp.loss_ppm, loss_ppm(answered + lost, answered));
        assert_eq!(mm.icmp.rtt.unwrap().max_us, 500 + i as u32);
        assert_eq!(mm.snmp.requests, 1);
    }
    let counts = s.agg.tenant_counts();
    assert_eq!(counts.len(), 4);
    assert_eq!(counts.iter().map(|c| c.nodes).sum::<u32>(), 2000);
}

#[test]
fn wall_clock_going_back_never_reopens_an_interval() {
    let mut agg = Aggregator::new(cfg());
    let mut out = Output::default();
    let n = node(13);
    let mut c = opha_common::node::NodeCounters::default();
    let mut feed =
        |agg: &mut Aggregator, mono: u64, wall: u64, c: &opha_common::node::NodeCounters| {
            let nodes = [(n, *c)];
            agg.poll(
                &Input {
                    mono_ns: mono,
                    wall_ms: wall,
                    nodes: &nodes,
                    timeouts: &[],
                },
                &mut out,
            );
        };
    feed(&mut agg, 1_000, T0, &c);
    c.classes[0].requests = 4;
    feed(&mut agg, 2_000, T0 - 3_600_000, &c); // an hour back
    c.classes[0].requests = 6;
    feed(&mut agg, 3_000, T0 + IV, &c);
    assert_eq!(out.metrics.len(), 1);
    assert_eq!(out.metrics[0].interval_start_ms, T0 - 5_000);
    assert_eq!(out.metrics[0].icmp.requests, 6);
}
