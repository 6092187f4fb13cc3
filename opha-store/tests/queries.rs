//! Queries: events by node, kind, severity and time range with keyset paging (against a
//! model), metrics series per node, latest service states.

mod common;

use common::*;
use opha_common::wire::{EventKind, Record, ServiceStatus, Severity, TenantId};
use opha_store::{Cursor, EventFilter, NodeAddr, PageRequest, StoreError, TenantDb};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

struct Model {
    /// (insertion index = row id order, time, node, kind name, severity)
    events: Vec<(usize, u64, u16, &'static str, Severity)>,
}

type KindCtor = fn() -> EventKind;

const KINDS: [(&str, KindCtor); 3] = [
    ("node_down", || EventKind::NodeDown),
    ("node_up", || EventKind::NodeUp),
    ("snmp_down", || EventKind::SnmpDown),
];

fn fill(db: &TenantDb) -> Model {
    let mut rng = StdRng::seed_from_u64(7);
    let mut events = Vec::new();
    let mut seq = 0u64;
    let p = poller("q");
    for chunk in 0..10 {
        let mut batch: Vec<(u64, Record)> = Vec::new();
        for _ in 0..60 {
            // Times collide often, so the id tie-break is exercised; metrics interleave.
            let time = rng.random_range(0..40u64) * 1000;
            let n = rng.random_range(1..4u16);
            let (kname, k) = KINDS[rng.random_range(0..3)];
            let sev = Severity::ALL[rng.random_range(0..5)];
            batch.push((seq, event(1, n, k(), sev, time)));
            events.push((events.len(), time, n, kname, sev));
            seq += 1;
            batch.push((seq, metrics(1, n, time + chunk)));
            seq += 1;
        }
        db.commit_batch(&p, 1, &batch).unwrap();
    }
    Model { events }
}

fn expected(m: &Model, f: &EventFilter) -> Vec<(u64, u16, Severity)> {
    let mut v: Vec<_> = m
        .events
        .iter()
        .filter(|e| f.node.is_none_or(|n| n == (&node(e.2)).into()))
        .filter(|e| f.kind.as_deref().is_none_or(|k| k == e.3))
        .filter(|e| f.min_severity.is_none_or(|s| e.4 >= s))
        .filter(|e| f.from_ms.is_none_or(|t| e.1 >= t))
        .filter(|e| f.to_ms.is_none_or(|t| e.1 < t))
        .collect();
    v.sort_by_key(|e| std::cmp::Reverse((e.1, e.0)));
    v.into_iter().map(|e| (e.1, e.2, e.4)).collect()
}

fn all_pages(db: &TenantDb, f: &EventFilter, size: usize) -> Vec<(u64, u16, Severity)> {
    let mut out = Vec::new();
    let mut req = PageRequest::first(size);
    for _ in 0..10_000 {
        let page = db.events(f, &req).unwrap();
        assert!(page.items.len() <= size);
        for e in &page.items {
            let n = match &e.event.subject {
                opha_common::wire::Subject::Node(n) => n.addr,
                other => panic!("unexpected subject {other:?}"),
            };
            let idx = (1..4u16).find(|i| node(*i).addr == n).unwrap();
            out.push((e.event.time_ms, idx, e.event.severity));
        }
        match page.next {
            Some(c) => req.after = Some(c),
            None => return out,
        }
    }
    panic!("paging did not end");
}

#[test]
fn event_filters_and_paging_match_the_model() {
    let (_d, store) = store();
    let db = store.tenant(TenantId(1)).unwrap();
    let m = fill(&db);
    let n2 = Some(NodeAddr::from(&node(2)));
    let filters = [
        EventFilter::default(),
        EventFilter {
            node: n2,
            ..Default::default()
        },
        EventFilter {
            kind: Some("node_up".into()),
            ..Default::default()
        },
        EventFilter {
            min_severity: Some(Severity::Major),
            ..Default::default()
        },
        EventFilter {
            from_ms: Some(10_000),
            to_ms: Some(20_000),
            ..Default::default()
        },
        EventFilter {
            node: n2,
            kind: Some("node_down".into()),
            min_severity: Some(Severity::Minor),
            from_ms: Some(5_000),
            to_ms: Some(35_000),
        },
        EventFilter {
            kind: Some("snmp_down".into()),
            min_severity: Some(Severity::Warning),
            ..Default::default()
        },
        EventFilter {
            min_severity: Some(Severity::Warning),
            from_ms: Some(3_000),
            to_ms: Some(30_000),
            ..Default::default()
        },
        EventFilter {
            kind: Some("no_such_kind".into()),
            ..Default::default()
        },
    ];
    for f in &filters {
        let want = expected(&m, f);
        for size in [1, 7, 1000] {
            assert_eq!(
                all_pages(&db, f, size),
                want,
                "filter {f:?}, page size {size}"
            );
        }
    }
    // Sanity: the model is not trivially empty for the interesting filters.
    assert!(expected(&m, &filters[5]).len() >= 3);
}

#[test]
fn cursor_is_stable_while_rows_are_added() {
    let (_d, store) = store();
    let db = store.tenant(TenantId(1)).unwrap();
    let m = fill(&db);
    let f = EventFilter::default();
    let first = db.events(&f, &PageRequest::first(50)).unwrap();
    let cursor = first.next.unwrap();
    // New events, newer and older than the cursor, and at the cursor's own time.
    let p = poller("late");
    let late: Vec<(u64, Record)> = [100_000, cursor.time_ms, 0]
        .into_iter()
        .enumerate()
        .map(|(i, t)| (i as u64, node_down(1, 1, t)))
        .collect();
    db.commit_batch(&p, 1, &late).unwrap();
    let mut rest = Vec::new();
    let mut req = PageRequest {
        limit: 50,
        after: Some(cursor),
    };
    loop {
        let page = db.events(&f, &req).unwrap();
        rest.extend(page.items.iter().map(|e| e.cursor));
        match page.next {
            Some(c) => req.after = Some(c),
            None => break,
        }
    }
    // No row of page one comes again; every later original row comes once; rows added
    // before the cursor position appear, the newer one does not.
    let firsts: Vec<Cursor> = first.items.iter().map(|e| e.cursor).collect();
    assert!(rest.iter().all(|c| !firsts.contains(c)));
    assert!(
        rest.windows(2)
            .all(|w| (w[0].time_ms, w[0].id) > (w[1].time_ms, w[1].id))
    );
    assert_eq!(
        rest.len(),
        m.events.len() - 50 + 1,
        "the old (time 0) late event follows"
    );
    assert!(rest.iter().all(|c| c.time_ms <= cursor.time_ms));
}

#[test]
fn metrics_series_per_node_pages_oldest_first() {
    let (_d, store) = store();
    let db = store.tenant(TenantId(1)).unwrap();
    let p = poller("m");
    let records: Vec<(u64, Record)> = (0..300u64)
        .map(|i| (i, metrics(1, (i % 3) as u16, 60_000 * (i / 3))))
        .collect();
    db.commit_batch(&p, 1, &records).unwrap();
    let node1 = NodeAddr::from(&node(1));
    let mut got = Vec::new();
    let mut req = PageRequest::first(9);
    loop {
        let page = db
            .metrics_series(node1, Some(60_000 * 10), Some(60_000 * 50), &req)
            .unwrap();
        got.extend(page.items.iter().map(|m| {
            assert_eq!(m.node.addr, node(1).addr);
            m.interval_start_ms
        }));
        match page.next {
            Some(c) => req.after = Some(c),
            None => break,
        }
    }
    assert_eq!(got, (10..50).map(|i| 60_000 * i).collect::<Vec<_>>());
    // Another VLAN with the same address is another node.
    let other = NodeAddr { vlan: 11, ..node1 };
    assert!(
        db.metrics_series(other, None, None, &req)
            .unwrap()
            .items
            .is_empty()
    );
}

#[test]
fn services_show_the_latest_state_even_when_replays_come_late() {
    let (_d, store) = store();
    let db = store.tenant(TenantId(1)).unwrap();
    let p = poller("s");
    db.commit_batch(
        &p,
        1,
        &[
            (0, service(1, 1, "https", ServiceStatus::Up, 1_000)),
            (1, service(1, 1, "https", ServiceStatus::Down, 3_000)),
            (2, service(1, 2, "https", ServiceStatus::Degraded, 2_000)),
            (3, service(1, 1, "ssh", ServiceStatus::Up, 2_000)),
        ],
    )
    .unwrap();
    // A replay of an older check from another epoch arrives after the newer state.
    db.commit_batch(
        &p,
        0,
        &[(9, service(1, 1, "https", ServiceStatus::Up, 2_500))],
    )
    .unwrap();
    let s = db.services().unwrap();
    let view: Vec<_> = s
        .iter()
        .map(|s| (s.service.as_str(), s.node.addr, s.state))
        .collect();
    assert_eq!(
        view,
        vec![
            ("https", node(1).addr, ServiceStatus::Down),
            ("https", node(2).addr, ServiceStatus::Degraded),
            ("ssh", node(1).addr, ServiceStatus::Up),
        ]
    );
}

#[test]
fn cursors_round_trip_and_bad_ones_are_refused() {
    let c = Cursor {
        time_ms: 1_700_000_000_000,
        id: 42,
    };
    assert_eq!(c.to_string().parse::<Cursor>().unwrap(), c);
    for bad in ["", "12", "a.b", "1.2.3", "-1.5"] {
        assert!(
            matches!(bad.parse::<Cursor>(), Err(StoreError::BadCursor(_))),
            "{bad}"
        );
    }
}
