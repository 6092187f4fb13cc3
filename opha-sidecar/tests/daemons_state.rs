//! The daemon health tracker and the heartbeat builder, with a fake clock: no processes, no
//! sleeping.

use opha_common::{
    stats::Stat,
    wire::{
        DaemonHealth, DaemonState, Event, EventKind, KernelCounter, PROTOCOL_VERSION, PeerId,
        PeerRole, Record, ReplayLogStatus, Severity, Subject, TenantId, TenantNodes,
    },
};
use opha_sidecar::{
    daemons::DaemonTracker,
    daemons::{
        Heartbeat, PeerStatusBuilder, PeerStatusInputs, ProbeResult, TrackerConfig,
        default_daemons, kernel_counters, state::PEER_TENANT,
    },
    loader::GlobalStats,
};

const T0: u64 = 1_700_000_000_000;

fn peer() -> PeerId {
    PeerId::new("poller-1").unwrap()
}

fn tracker(down_after: u32, up_after: u32) -> DaemonTracker {
    DaemonTracker::new(
        TrackerConfig {
            down_after,
            up_after,
            heartbeat_ms: 5000,
        },
        peer(),
        default_daemons().into_iter().map(|d| (d.name, d.severity)),
        0xabcd,
        T0,
    )
}

fn up(pid: u32) -> ProbeResult {
    ProbeResult::up(Some(pid), format!("process running (pid {pid})"))
}

fn down() -> ProbeResult {
    ProbeResult::down("no process running")
}

fn unknown() -> ProbeResult {
    ProbeResult::unknown("cannot read the process table")
}

/// Drains the tracker: (health records, events).
fn drain(t: &mut DaemonTracker) -> (Vec<DaemonHealth>, Vec<Event>) {
    let (mut h, mut e) = (Vec::new(), Vec::new());
    while let Some(r) = t.poll() {
        match r {
            Record::DaemonHealth(d) => h.push(d),
            Record::Event(ev) => e.push(ev),
            other => panic!("unexpected record {other:?}"),
        }
    }
    (h, e)
}

fn kinds(events: &[Event]) -> Vec<EventKind> {
    events.iter().map(|e| e.kind.clone()).collect()
}

#[test]
fn starts_unknown_and_the_first_heartbeat_says_so() {
    let mut t = tracker(2, 1);
    assert_eq!(drain(&mut t), (vec![], vec![]));
    t.handle_timeout(T0);
    let (h, e) = drain(&mut t);
    assert!(e.is_empty());
    assert_eq!(h.len(), 6);
    let names: Vec<&str> = h.iter().map(|d| d.daemon.as_str()).collect();
    assert_eq!(
        names,
        [
            "opchartsd",
            "opeventsd",
            "opconfigd",
            "nmis9d",
            "omkd",
            "ophad"
        ]
    );
    for d in &h {
        assert_eq!(d.state, DaemonState::Unknown);
        assert_eq!(d.detail, "not checked yet");
        assert_eq!((d.since_ms, d.checked_ms, d.pid), (T0, T0, None));
    }
}

#[test]
fn first_up_is_announced_once() {
    let mut t = tracker(2, 1);
    t.observe(1, T0 + 100, up(42));
    let (h, e) = drain(&mut t);
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].daemon, "opeventsd");
    assert_eq!(h[0].state, DaemonState::Up);
    assert_eq!(h[0].pid, Some(42));
    assert_eq!(h[0].since_ms, T0 + 100);
    assert_eq!(
        kinds(&e),
        [EventKind::DaemonUp {
            daemon: "opeventsd".into()
        }]
    );
    assert_eq!(e[0].severity, Severity::Info);
    assert_eq!(e[0].time_ms, T0 + 100);
    assert_eq!(e[0].tenant, PEER_TENANT);
    assert_eq!(e[0].subject, Subject::Peer(peer()));
    // Steady state: nothing more, but the health shows the last check.
    for i in 1..10 {
        t.observe(1, T0 + 100 + i * 5000, up(42));
    }
    assert_eq!(drain(&mut t), (vec![], vec![]));
    let now = &t.health()[1];
    assert_eq!(now.checked_ms, T0 + 100 + 9 * 5000);
    assert_eq!(now.since_ms, T0 + 100);
}

#[test]
fn down_needs_down_after_checks_and_dates_from_the_first() {
    let mut t = tracker(2, 1);
    t.observe(4, T0, up(7));
    drain(&mut t);
    t.observe(4, T0 + 5000, down());
    assert_eq!(drain(&mut t), (vec![], vec![]), "one check is not enough");
    let pending = &t.health()[4];
    assert_eq!(pending.state, DaemonState::Up);
    assert!(
        pending.detail.contains("looks down: 1 of 2 checks"),
        "{}",
        pending.detail
    );
    t.observe(4, T0 + 10_000, down());
    let (h, e) = drain(&mut t);
    assert_eq!(h.len(), 1);
    assert_eq!((h[0].state, h[0].pid), (DaemonState::Down, None));
    assert_eq!(h[0].since_ms, T0 + 5000);
    assert_eq!(
        kinds(&e),
        [EventKind::DaemonDown {
            daemon: "omkd".into()
        }]
    );
    assert_eq!(e[0].severity, Severity::Major);
    assert_eq!(e[0].time_ms, T0 + 5000, "when it was first seen down");
    assert_eq!(
        e[0].details,
        "omkd is down: no process running (2 consecutive checks)"
    );
    t.observe(4, T0 + 15_000, down());
    assert_eq!(drain(&mut t), (vec![], vec![]));
    t.observe(4, T0 + 20_000, up(8));
    let (h, e) = drain(&mut t);
    assert_eq!((h[0].state, h[0].pid), (DaemonState::Up, Some(8)));
    assert_eq!(
        kinds(&e),
        [EventKind::DaemonUp {
            daemon: "omkd".into()
        }]
    );
}

#[test]
fn a_daemon_down_at_start_is_announced_down() {
    let mut t = tracker(2, 1);
    t.observe(0, T0, down());
    t.observe(0, T0 + 5000, down());
    let (_, e) = drain(&mut t);
    assert_eq!(
        kinds(&e),
        [EventKind::DaemonDown {
            daemon: "opchartsd".into()
        }]
    );
}

#[test]
fn flapping_does_not_flap_the_state() {
    let mut t = tracker(2, 2);
    t.observe(2, T0, up(1));
    t.observe(2, T0 + 1, up(1));
    drain(&mut t);
    for i in 0..20 {
        let r = if i % 2 == 0 { down() } else { up(1) };
        t.observe(2, T0 + 10 + i, r);
    }
    assert_eq!(drain(&mut t), (vec![], vec![]));
    assert_eq!(t.health()[2].state, DaemonState::Up);
}

#[test]
fn unknown_checks_change_the_state_but_raise_no_event() {
    let mut t = tracker(2, 1);
    t.observe(5, T0, up(9));
    drain(&mut t);
    t.observe(5, T0 + 5000, unknown());
    t.observe(5, T0 + 10_000, unknown());
    let (h, e) = drain(&mut t);
    assert!(e.is_empty());
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].state, DaemonState::Unknown);
    assert_eq!(h[0].detail, "cannot read the process table");
    // Back up: it was announced up, so no second up event.
    t.observe(5, T0 + 15_000, up(9));
    let (h, e) = drain(&mut t);
    assert_eq!(h[0].state, DaemonState::Up);
    assert!(e.is_empty(), "{e:?}");
    // Unknown, then down: down is announced (the last announcement was up).
    t.observe(5, T0 + 20_000, unknown());
    t.observe(5, T0 + 25_000, unknown());
    t.observe(5, T0 + 30_000, down());
    t.observe(5, T0 + 35_000, down());
    let (_, e) = drain(&mut t);
    assert_eq!(
        kinds(&e),
        [EventKind::DaemonDown {
            daemon: "ophad".into()
        }]
    );
}

#[test]
fn a_replaced_process_is_reported_without_an_event() {
    let mut t = tracker(2, 1);
    t.observe(3, T0, up(100));
    drain(&mut t);
    t.observe(3, T0 + 5000, up(200));
    let (h, e) = drain(&mut t);
    assert!(e.is_empty());
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].pid, Some(200));
    assert!(
        h[0].detail.contains("restarted: pid 100 -> 200"),
        "{}",
        h[0].detail
    );
    assert_eq!(t.restarts(3), 1);
    assert_eq!(t.restarts(0), 0);
}

#[test]
fn heartbeat_sends_every_daemon_on_schedule_and_skips_missed_beats() {
    let mut t = tracker(2, 1);
    t.handle_timeout(T0);
    assert_eq!(drain(&mut t).0.len(), 6);
    assert_eq!(t.poll_timeout(), T0 + 5000);
    t.handle_timeout(T0 + 4999);
    assert_eq!(drain(&mut t).0.len(), 0);
    t.handle_timeout(T0 + 5000);
    assert_eq!(drain(&mut t).0.len(), 6);
    // Asleep for a while: one beat, not a burst of the missed ones.
    t.handle_timeout(T0 + 17_000);
    assert_eq!(drain(&mut t).0.len(), 6);
    assert_eq!(t.poll_timeout(), T0 + 20_000);
}

#[test]
fn event_ids_are_unique_and_carry_the_prefix() {
    let mut t = tracker(1, 1);
    for i in 0..10u64 {
        let r = if i % 2 == 0 { up(1) } else { down() };
        t.observe(0, T0 + i, r);
    }
    let (_, e) = drain(&mut t);
    assert_eq!(e.len(), 10);
    let mut ids: Vec<u128> = e.iter().map(|e| e.id.as_u128()).collect();
    assert!(ids.iter().all(|id| id >> 64 == 0xabcd));
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 10);
}

/// Over many pseudo-random probe sequences: events alternate between down and up, each one
/// follows exactly the run of results the debounce asks for, and the reported state always
/// equals the state of the last event unless unknown.
#[test]
fn events_follow_the_debounce_rule_for_random_sequences() {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..300 {
        let down_after = (next() % 3 + 1) as u32;
        let up_after = (next() % 3 + 1) as u32;
        let mut t = tracker(down_after, up_after);
        let mut raw: Vec<DaemonState> = Vec::new();
        let mut last_event: Option<DaemonState> = None;
        for step in 0..60u64 {
            let r = match next() % 5 {
                0 | 1 => up(1),
                2 | 3 => down(),
                _ => unknown(),
            };
            raw.push(r.state);
            t.observe(0, T0 + step, r);
            let (_, e) = drain(&mut t);
            assert!(e.len() <= 1);
            if let Some(ev) = e.first() {
                let (state, needed) = match ev.kind {
                    EventKind::DaemonDown { .. } => (DaemonState::Down, down_after),
                    EventKind::DaemonUp { .. } => (DaemonState::Up, up_after),
                    ref k => panic!("{k:?}"),
                };
                assert_ne!(
                    last_event,
                    Some(state),
                    "round {round}: two {state:?} in a row"
                );
                let tail = &raw[raw.len().saturating_sub(needed as usize)..];
                assert!(
                    tail.len() == needed as usize && tail.iter().all(|s| *s == state),
                    "round {round} step {step}: {state:?} after {raw:?}"
                );
                last_event = Some(state);
            }
            let shown = t.health()[0].state;
            if shown != DaemonState::Unknown {
                assert_eq!(Some(shown), last_event, "round {round} step {step}");
            }
        }
    }
}

#[test]
fn peer_status_is_built_from_what_is_passed_in() {
    let b = PeerStatusBuilder::poller(peer(), "us-central");
    let kernel = vec![KernelCounter {
        name: "ringbuf_drops".into(),
        value: 3,
    }];
    let nodes = [
        (TenantId(2), 40),
        (TenantId(1), 1500),
        (TenantId(2), 10),
        (TenantId(7), 0),
    ];
    let log = ReplayLogStatus {
        records: 12,
        bytes: 3400,
        oldest_age_ms: 2500,
        budget_bytes: 1 << 30,
    };
    let s = b.build(&PeerStatusInputs {
        time_ms: T0,
        uptime_ms: 61_000,
        nodes: &nodes,
        replay_log: log,
        kernel: &kernel,
    });
    assert_eq!(s.peer, peer());
    assert_eq!(s.role, PeerRole::Poller);
    assert_eq!(s.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(s.protocol, PROTOCOL_VERSION);
    assert_eq!(s.region, "us-central");
    assert_eq!((s.time_ms, s.uptime_ms), (T0, 61_000));
    assert_eq!(
        s.nodes,
        vec![
            TenantNodes {
                tenant: TenantId(1),
                nodes: 1500
            },
            TenantNodes {
                tenant: TenantId(2),
                nodes: 50
            },
            TenantNodes {
                tenant: TenantId(7),
                nodes: 0
            },
        ]
    );
    assert_eq!(s.replay_log, log);
    assert_eq!(s.kernel, kernel);
}

#[test]
fn kernel_counters_pick_the_drop_counters() {
    let stats = GlobalStats {
        counters: Stat::ALL
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name().to_string(), 100 + i as u64))
            .collect(),
        inflight_evictions: 5,
        inflight_live: 9,
        ..GlobalStats::default()
    };
    let k = kernel_counters(&stats);
    let got: Vec<(&str, u64)> = k.iter().map(|c| (c.name.as_str(), c.value)).collect();
    assert_eq!(
        got,
        [
            ("ringbuf_drops", 100 + Stat::RingbufDrops as u64),
            ("node_map_full", 100 + Stat::NodeMapFull as u64),
            ("malformed", 100 + Stat::Malformed as u64),
            ("fragments", 100 + Stat::Fragments as u64),
            (
                "inflight_insert_failed",
                100 + Stat::InflightInsertFailed as u64
            ),
            ("unmatched_responses", 100 + Stat::UnmatchedResponses as u64),
            ("inflight_evictions", 5),
        ]
    );
}

#[test]
fn heartbeat_schedule() {
    let mut hb = Heartbeat::new(5000, T0);
    assert!(hb.due(T0));
    assert!(!hb.due(T0 + 1));
    assert!(!hb.due(T0 + 4999));
    assert!(hb.due(T0 + 5000));
    assert!(hb.due(T0 + 23_000));
    assert_eq!(hb.next_ms(), T0 + 25_000);
    assert!(!hb.due(T0 + 24_999));
}
