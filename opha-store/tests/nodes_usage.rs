//! The API's store queries: distinct nodes with their latest metrics and state (skip-scan
//! paging), per-row cursors of metrics series, and usage counts for billing.

mod common;

use common::*;
use opha_common::wire::{EventKind, Record, Severity, TenantId};
use opha_store::{NodeAddr, PageRequest};
use std::net::{IpAddr, Ipv6Addr};

#[test]
fn nodes_are_listed_once_in_order_with_latest_metrics_and_state() {
    let (_d, store) = store();
    let db = store.tenant(TenantId(1)).unwrap();
    let p = poller("n");
    let mut batch: Vec<(u64, Record)> = Vec::new();
    // Nodes 1..=40 with metrics; 41..=45 with events only; node 3 goes down then up, node 4
    // up then down; a trap-like event on node 5 after its state event.
    for n in 1..=40u16 {
        for t in 0..3 {
            batch.push((batch.len() as u64, metrics(1, n, 60_000 * t)));
        }
    }
    for n in 41..=45u16 {
        batch.push((batch.len() as u64, node_down(1, n, 5)));
    }
    batch.push((batch.len() as u64, node_down(1, 3, 10)));
    batch.push((
        batch.len() as u64,
        event(1, 3, EventKind::NodeUp, Severity::Info, 20),
    ));
    batch.push((
        batch.len() as u64,
        event(1, 4, EventKind::NodeUp, Severity::Info, 10),
    ));
    batch.push((batch.len() as u64, node_down(1, 4, 20)));
    batch.push((
        batch.len() as u64,
        event(1, 5, EventKind::NodeUp, Severity::Info, 10),
    ));
    batch.push((
        batch.len() as u64,
        event(1, 5, EventKind::SnmpDown, Severity::Minor, 30),
    ));
    db.commit_batch(&p, 1, &batch).unwrap();

    let mut all = Vec::new();
    let mut after: Option<NodeAddr> = None;
    for _ in 0..100 {
        let page = db.nodes(after.as_ref(), 7).unwrap();
        assert!(page.items.len() <= 7);
        all.extend(page.items);
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(all.len(), 45, "every node once");
    let mut want: Vec<String> = (1..=45u16).map(|n| node(n).addr.to_string()).collect();
    want.sort();
    let got: Vec<String> = all.iter().map(|n| n.node.addr.to_string()).collect();
    assert_eq!(got, want, "ordered by address text");
    let find = |n: u16| {
        all.iter()
            .find(|s| s.node == NodeAddr::from(&node(n)))
            .unwrap()
    };
    assert_eq!(
        find(7).latest_metrics.as_ref().unwrap().interval_start_ms,
        120_000
    );
    assert_eq!(find(7).name.as_deref(), Some("node-7"));
    assert!(find(7).state_event.is_none());
    assert_eq!(
        find(3).state_event.as_ref().unwrap().event.kind,
        EventKind::NodeUp
    );
    assert_eq!(
        find(4).state_event.as_ref().unwrap().event.kind,
        EventKind::NodeDown
    );
    assert_eq!(
        find(5).state_event.as_ref().unwrap().event.kind,
        EventKind::NodeUp
    );
    assert!(find(42).latest_metrics.is_none());
    assert_eq!(find(42).name.as_deref(), Some("node-42"));
    // One page of everything agrees.
    assert_eq!(db.nodes(None, 1000).unwrap().items, all);
    assert!(db.nodes(None, 1000).unwrap().next.is_none());
}

#[test]
fn vlans_and_address_families_are_distinct_nodes() {
    let (_d, store) = store();
    let db = store.tenant(TenantId(2)).unwrap();
    let mut m = metrics(2, 1, 0);
    let mut v6 = metrics(2, 1, 0);
    if let Record::NodeMetrics(x) = &mut m {
        x.node.vlan = 3;
    }
    if let Record::NodeMetrics(x) = &mut v6 {
        x.node.vlan = 0;
        x.node.addr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
    }
    db.commit_batch(&poller("v"), 1, &[(0, metrics(2, 1, 0)), (1, m), (2, v6)])
        .unwrap();
    let vlans: Vec<u16> = db
        .nodes(None, 10)
        .unwrap()
        .items
        .iter()
        .map(|n| n.node.vlan)
        .collect();
    assert_eq!(vlans, [0, 3, 10]);
    for limit in 1..=3 {
        let first = db.nodes(None, limit).unwrap();
        assert_eq!(first.items.len(), limit);
        assert_eq!(first.next.is_some(), limit < 3);
    }
}

#[test]
fn metrics_page_cursors_continue_the_series() {
    let (_d, store) = store();
    let db = store.tenant(TenantId(1)).unwrap();
    let records: Vec<(u64, Record)> = (0..20u64)
        .map(|i| (i, metrics(1, 1, 1000 * (i / 2))))
        .collect();
    db.commit_batch(&poller("m"), 1, &records).unwrap();
    let n = NodeAddr::from(&node(1));
    let page = db
        .metrics_page(n, None, None, &PageRequest::first(7))
        .unwrap();
    assert_eq!(page.items.len(), 7);
    assert_eq!(page.next, Some(page.items[6].cursor));
    assert!(page.items.windows(2).all(|w| w[0].cursor < w[1].cursor));
    let rest = db
        .metrics_page(
            n,
            None,
            None,
            &PageRequest {
                limit: 100,
                after: Some(page.items[2].cursor),
            },
        )
        .unwrap();
    assert_eq!(rest.items.len(), 17);
    assert_eq!(rest.items[0], page.items[3]);
    assert!(rest.next.is_none());
}

#[test]
fn usage_counts_match_the_file() {
    let (_d, store) = store();
    let db = store.tenant(TenantId(1)).unwrap();
    let mut batch: Vec<(u64, Record)> = Vec::new();
    for i in 0..30u64 {
        batch.push((batch.len() as u64, node_down(1, (i % 4) as u16, 1000 * i)));
        batch.push((batch.len() as u64, metrics(1, (i % 6) as u16, 1000 * i)));
    }
    batch.push((
        batch.len() as u64,
        service(1, 1, "https", opha_common::wire::ServiceStatus::Up, 500),
    ));
    db.commit_batch(&poller("u"), 1, &batch).unwrap();
    let u = db.usage(None, None).unwrap();
    assert_eq!((u.events, u.metrics, u.records, u.nodes), (30, 30, 61, 6));
    let c = inspect(db.path());
    let bytes: i64 = c
        .query_row("SELECT sum(length(frame)) FROM records", [], |r| r.get(0))
        .unwrap();
    assert_eq!(u.bytes_received, bytes as u64);
    let r = db.usage(Some(10_000), Some(20_000)).unwrap();
    assert_eq!((r.events, r.metrics, r.records), (10, 10, 20));
    let bytes: i64 = c
        .query_row(
            "SELECT sum(length(frame)) FROM records WHERE time_ms >= 10000 AND time_ms < 20000",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(r.bytes_received, bytes as u64);
    assert_eq!(r.nodes, 6, "nodes are counted over the whole file");
    let empty = store
        .tenant(TenantId(9))
        .unwrap()
        .usage(None, None)
        .unwrap();
    assert_eq!(empty, opha_store::Usage::default());
}
