//! Aggregation core across sidecar restarts: the state is serialized, the core rebuilt, and
//! the kernel's (pinned) counters went on meanwhile. No interval is counted twice, none is
//! skipped, and state machines continue. Fake clock and synthetic counters only.

use opha_common::node::{NodeKey, ProtoClass};
use opha_common::wire::{EventKind, NodeMetrics};
use opha_sidecar::aggregate::sim::{Poll, Reply, Scenario};
use opha_sidecar::aggregate::{
    AggConfig, AggState, Aggregator, Output, RestoreError, STATE_FORMAT, Thresholds,
};
use std::collections::BTreeMap;

use ProtoClass::{IcmpEcho as Icmp, Snmp};

const IV: u64 = 60_000;
const T0: u64 = 1_700_000_100_000 - 1_700_000_100_000 % IV + 5_000;

fn node(i: u8) -> NodeKey {
    NodeKey::v4([198, 18, 1, i], 0)
}

fn cfg() -> AggConfig {
    let off = Thresholds {
        rtt_above_us: None,
        loss_above_ppm: None,
        ..Thresholds::default()
    };
    AggConfig {
        poll_timeout_ms: 3_000,
        icmp: off.clone(),
        snmp: off.clone(),
        tcp: off,
        ..AggConfig::default()
    }
}

const OK: Reply = Reply::Answer { rtt_us: 4_000 };
const LOST: Reply = Reply::Lost;

/// Round `r` of a script with outages, degraded periods and interval closes.
fn script(r: usize) -> Vec<Poll> {
    let (a, b, c) = (node(1), node(2), node(3));
    let a_reply = if (20..28).contains(&r) { LOST } else { OK };
    let b_snmp = if (5..14).contains(&r) || r.is_multiple_of(11) {
        LOST
    } else {
        OK
    };
    let mut v = vec![
        (a, Icmp, 0, a_reply),
        (a, Icmp, 0, a_reply),
        (b, Icmp, 0, OK),
        (b, Snmp, 0, b_snmp),
    ];
    if r >= 9 {
        v.push((c, Icmp, 0, if r.is_multiple_of(3) { LOST } else { OK }));
    }
    v
}

/// Serializes the state (JSON, as a driver might persist it), reads it back, rebuilds.
fn persist_and_restore(s: &mut Scenario) {
    let json = serde_json::to_vec(s.agg.state()).unwrap();
    let state: AggState = serde_json::from_slice(&json).unwrap();
    s.agg = Aggregator::restore(cfg(), state).unwrap();
}

fn run(
    rounds: usize,
    restart_every: Option<usize>,
) -> (Vec<NodeMetrics>, Vec<opha_common::wire::Event>) {
    let mut s = Scenario::new(Aggregator::new(cfg()), T0, 10_000);
    for r in 0..rounds {
        s.round(&script(r));
        if restart_every.is_some_and(|k| r % k == k - 1) {
            persist_and_restore(&mut s);
        }
    }
    (s.metrics, s.events)
}

#[test]
fn restored_core_continues_exactly_as_if_never_stopped() {
    let straight = run(60, None);
    assert!(straight.0.len() >= 20, "several intervals of metrics");
    let k: Vec<EventKind> = straight.1.iter().map(|e| e.kind.clone()).collect();
    assert!(k.contains(&EventKind::NodeDown) && k.contains(&EventKind::NodeUp));
    assert!(k.contains(&EventKind::SnmpDown) && k.contains(&EventKind::SnmpUp));
    for every in [1, 2, 7] {
        let restarted = run(60, Some(every));
        assert_eq!(
            restarted.0, straight.0,
            "metrics with a restart every {every} rounds"
        );
        assert_eq!(
            restarted.1, straight.1,
            "events with a restart every {every} rounds"
        );
    }
}

/// Per node: the sum of ICMP requests over all records, and the records are contiguous.
fn totals(metrics: &[NodeMetrics]) -> BTreeMap<NodeKey, u64> {
    let mut by: BTreeMap<NodeKey, Vec<&NodeMetrics>> = BTreeMap::new();
    for m in metrics {
        by.entry(m.node.key()).or_default().push(m);
    }
    by.into_iter()
        .map(|(k, v)| {
            for w in v.windows(2) {
                assert!(
                    w[0].interval_start_ms + u64::from(w[0].interval_ms) <= w[1].interval_start_ms,
                    "overlapping intervals for {k:?}"
                );
            }
            (k, v.iter().map(|m| m.icmp.requests).sum())
        })
        .collect()
}

#[test]
fn down_for_several_intervals_nothing_skipped_nothing_doubled() {
    let n = node(10);
    let mut s = Scenario::new(Aggregator::new(cfg()), T0, 10_000);
    let mut polled = 0;
    for _ in 0..9 {
        s.round(&[(n, Icmp, 0, OK)]);
        polled += 1;
    }
    let checkpoint = serde_json::to_string(s.agg.state()).unwrap();
    // The sidecar is gone for 2.5 intervals; pinned maps keep counting, including losses.
    for i in 0..15u32 {
        s.kernel
            .poll(n, Icmp, 0, if i.is_multiple_of(5) { LOST } else { OK });
        polled += 1;
        s.kernel.advance_ms(10_000);
    }
    s.agg = Aggregator::restore(cfg(), serde_json::from_str(&checkpoint).unwrap()).unwrap();
    for _ in 0..12 {
        s.round(&[(n, Icmp, 0, OK)]);
        polled += 1;
    }
    // Everything up to the last closed interval is in the records; the rest is open.
    let open = s.agg.node(&n).unwrap().classes[0].acc.requests;
    assert_eq!(totals(&s.metrics)[&n] + open, polled);
    let timeouts: u64 = s.metrics.iter().map(|m| m.icmp.timeouts).sum();
    assert_eq!(timeouts, 3, "losses during the gap swept after the restart");
    let gap = s
        .metrics
        .iter()
        .find(|m| u64::from(m.interval_ms) > IV)
        .expect("one record spans the gap");
    assert_eq!(u64::from(gap.interval_ms) % IV, 0);
}

#[test]
fn cold_start_on_pinned_maps_counts_nothing_twice() {
    let n = node(11);
    let mut s = Scenario::new(Aggregator::new(cfg()), T0, 10_000);
    for _ in 0..10 {
        s.round(&[(n, Icmp, 0, OK)]);
    }
    let before: u64 = totals(&s.metrics)[&n];
    // No checkpoint: the new core's first poll is a baseline of the kernel's totals.
    s.agg = Aggregator::new(cfg());
    s.metrics.clear();
    s.feed();
    let mut after = 0;
    for _ in 0..13 {
        s.round(&[(n, Icmp, 0, OK)]);
        after += 1;
    }
    let open = s.agg.node(&n).unwrap().classes[0].acc.requests;
    assert_eq!(totals(&s.metrics)[&n] + open, after);
    assert!(before > 0);
}

#[test]
fn states_survive_a_restart_one_down_one_up() {
    let n = node(12);
    let mut s = Scenario::new(Aggregator::new(cfg()), T0, 10_000);
    s.rounds(2, &[(n, Icmp, 0, OK)]);
    s.rounds(4, &[(n, Icmp, 0, LOST)]);
    persist_and_restore(&mut s);
    s.rounds(4, &[(n, Icmp, 0, LOST)]);
    // Half-way through the up hysteresis.
    s.rounds(1, &[(n, Icmp, 0, OK)]);
    persist_and_restore(&mut s);
    s.rounds(4, &[(n, Icmp, 0, OK)]);
    let k: Vec<EventKind> = s.events.iter().map(|e| e.kind.clone()).collect();
    assert_eq!(k, vec![EventKind::NodeDown, EventKind::NodeUp]);
}

#[test]
fn replaying_a_poll_from_its_checkpoint_is_identical() {
    // A crash after the output was computed but before it was durable: the driver restores
    // the checkpoint and polls again on the same input. Same records, same event ids.
    let n = node(13);
    let mut s = Scenario::new(Aggregator::new(cfg()), T0, 10_000);
    s.rounds(2, &[(n, Icmp, 0, OK)]);
    s.rounds(2, &[(n, Icmp, 0, LOST)]);
    let checkpoint = s.agg.state().clone();
    s.kernel.poll(n, Icmp, 0, LOST);
    s.kernel.advance_ms(60_000);
    let timeouts = s.kernel.sweep(3_000_000_000);
    let nodes = s.kernel.snapshot();
    let input = opha_sidecar::aggregate::Input {
        mono_ns: s.kernel.mono_ns(),
        wall_ms: s.kernel.wall_ms(),
        nodes: &nodes,
        timeouts: &timeouts,
    };
    let outs: Vec<Output> = (0..2)
        .map(|_| {
            let mut agg = Aggregator::restore(cfg(), checkpoint.clone()).unwrap();
            let mut out = Output::default();
            agg.poll(&input, &mut out);
            out
        })
        .collect();
    assert_eq!(outs[0], outs[1]);
    assert_eq!(outs[0].events.len(), 1);
    assert_eq!(outs[0].events[0].kind, EventKind::NodeDown);
    assert_eq!(outs[0].metrics.len(), 1);
}

#[test]
fn reboot_clock_restarts_counters_from_zero() {
    let n = node(14);
    let mut s = Scenario::new(Aggregator::new(cfg()), T0, 10_000);
    s.rounds(3, &[(n, Icmp, 0, OK)]);
    s.rounds(3, &[(n, Icmp, 0, LOST)]);
    let json = serde_json::to_string(s.agg.state()).unwrap();
    // Counted before the reboot, not emitted yet: the restored core still owes it.
    let owed = s.agg.node(&n).unwrap().classes[0].acc.requests;
    s.kernel.reboot(120_000);
    s.agg = Aggregator::restore(cfg(), serde_json::from_str(&json).unwrap()).unwrap();
    s.metrics.clear();
    s.feed();
    let mut polled = 0;
    for _ in 0..9 {
        s.round(&[(n, Icmp, 0, OK)]);
        polled += 1;
    }
    let open = s.agg.node(&n).unwrap().classes[0].acc.requests;
    assert_eq!(totals(&s.metrics)[&n] + open, owed + polled);
    let k: Vec<EventKind> = s.events.iter().map(|e| e.kind.clone()).collect();
    assert_eq!(k, vec![EventKind::NodeDown, EventKind::NodeUp]);
}

#[test]
fn a_checkpoint_of_another_format_is_refused() {
    let mut st = Aggregator::new(cfg()).into_state();
    st.format = STATE_FORMAT + 1;
    assert_eq!(
        Aggregator::restore(cfg(), st).unwrap_err(),
        RestoreError::Format {
            found: STATE_FORMAT + 1,
            expected: STATE_FORMAT
        }
    );
}
