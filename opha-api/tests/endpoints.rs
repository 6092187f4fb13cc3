//! Every endpoint's filters and paging, as the operator (consolidated over three tenants) and
//! as a tenant, over a store seeded by the bus's own commit path.

mod common;

use common::*;
use serde_json::Value;

fn tenants_of(v: &[Value]) -> Vec<u64> {
    v.iter().map(|i| i["tenant"].as_u64().unwrap()).collect()
}

fn event_times(v: &[Value]) -> Vec<(u64, u64)> {
    v.iter()
        .map(|i| {
            (
                i["event"]["time_ms"].as_u64().unwrap(),
                i["tenant"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn events_consolidated_newest_first_and_pages_exactly() {
    let w = world();
    let all = all_pages(&w, &w.operator, "/api/v1/events?limit=1000");
    assert_eq!(all.len(), 3 * EVENTS_PER_TENANT);
    let keys = event_times(&all);
    // Newest first; at equal times, higher tenants first.
    assert!(keys.windows(2).all(|p| p[0] > p[1]), "{keys:?}");
    for size in [1, 2, 4, 7, 32] {
        let paged = all_pages(&w, &w.operator, &format!("/api/v1/events?limit={size}"));
        assert_eq!(event_times(&paged), keys, "page size {size}");
        let ids: std::collections::HashSet<_> =
            paged.iter().map(|i| i["event"]["id"].clone()).collect();
        assert_eq!(ids.len(), paged.len(), "no event twice at page size {size}");
    }
    // Each item says its kind and its place in its poller's stream.
    assert!(
        all.iter()
            .all(|i| i["kind"].is_string() && i["seq"].is_u64())
    );
}

#[test]
fn event_filters() {
    let w = world();
    let count = |q: &str| all_pages(&w, &w.operator, &format!("/api/v1/events?{q}")).len();
    assert_eq!(count("tenant=2"), EVENTS_PER_TENANT);
    assert!(
        tenants_of(&all_pages(&w, &w.operator, "/api/v1/events?tenant=2"))
            .iter()
            .all(|t| *t == 2)
    );
    // Tenant 1's node 1: events 0, 3, 6, 9 and the external one.
    assert_eq!(count("node=10@198.18.1.1"), 5);
    assert_eq!(count("node=10%40198.18.1.1"), 5, "percent-encoded @");
    assert_eq!(count("node=198.18.1.1"), 0, "VLAN 0 is another node");
    assert_eq!(count("kind=node_down"), 15);
    assert_eq!(count("kind=external"), 3);
    assert_eq!(count("kind=snmp_down"), 0);
    // major or worse: i % 5 in {3, 4}: i = 3, 4, 8, 9.
    assert_eq!(count("severity=major"), 12);
    assert_eq!(count("severity=info"), 33);
    assert_eq!(
        count(&format!("from={}&to={}", T0 + 2000, T0 + 5000)),
        9,
        "from inclusive, to exclusive"
    );
    assert_eq!(count(&format!("from={}", T0 + 9000)), 3);
    assert_eq!(count(&format!("to={}", T0 + 1)), 3);
    // node_up i = 1, 3, 5, 7, 9 with severities warning, major, info, minor, critical.
    let q = format!(
        "tenant=1&kind=node_up&severity=warning&from={T0}&to={}&limit=2",
        T0 + 10_000
    );
    let got = all_pages(&w, &w.operator, &format!("/api/v1/events?{q}"));
    assert_eq!(got.len(), 4);
    assert!(got.iter().all(|i| i["event"]["kind"] == "node_up"));
    // A tenant sees its own events only, with or without naming itself.
    for q in ["", "?tenant=3"] {
        let mine = all_pages(&w, w.tenant(3), &format!("/api/v1/events{q}"));
        assert_eq!(mine.len(), EVENTS_PER_TENANT);
        assert!(tenants_of(&mine).iter().all(|t| *t == 3));
    }
}

#[test]
fn metrics_series_merges_tenants_oldest_first() {
    let w = world();
    let base = "/api/v1/nodes/10/198.18.0.1/metrics";
    let all = all_pages(&w, &w.operator, base);
    let keys: Vec<(u64, u64)> = all
        .iter()
        .map(|i| {
            (
                i["metrics"]["interval_start_ms"].as_u64().unwrap(),
                i["tenant"].as_u64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(u64, u64)> = (0..METRIC_TIMES)
        .flat_map(|i| [(T0 + 60_000 * i, 1), (T0 + 60_000 * i, 2)])
        .collect();
    assert_eq!(keys, want);
    for size in [1, 3] {
        let paged = all_pages(&w, &w.operator, &format!("{base}?limit={size}"));
        assert_eq!(paged, all, "page size {size}");
    }
    let q = format!("{base}?from={}&to={}", T0 + 60_000, T0 + 180_000);
    assert_eq!(all_pages(&w, &w.operator, &q).len(), 4);
    assert_eq!(
        tenants_of(&all_pages(&w, &w.operator, &format!("{base}?tenant=2"))),
        vec![2; 5]
    );
    assert_eq!(tenants_of(&all_pages(&w, w.tenant(1), base)), vec![1; 5]);
    // IPv6, raw and percent-encoded; IPv4-mapped spelling of an IPv4 node.
    for path in [
        "/api/v1/nodes/0/2001:db8::3:1/metrics",
        "/api/v1/nodes/0/2001%3Adb8%3A%3A3%3A1/metrics",
    ] {
        assert_eq!(tenants_of(&all_pages(&w, &w.operator, path)), vec![3; 5]);
    }
    assert_eq!(
        all_pages(
            &w,
            &w.operator,
            "/api/v1/nodes/10/::ffff:198.18.0.1/metrics"
        )
        .len(),
        10
    );
    assert!(all_pages(&w, &w.operator, "/api/v1/nodes/11/198.18.0.1/metrics").is_empty());
}

#[test]
fn nodes_list_state_and_paging() {
    let w = world();
    let all = all_pages(&w, &w.operator, "/api/v1/nodes");
    assert_eq!(all.len(), 12);
    let keys: Vec<(u64, u64, String)> = all
        .iter()
        .map(|n| {
            (
                n["tenant"].as_u64().unwrap(),
                n["vlan"].as_u64().unwrap(),
                n["addr"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    for size in [1, 5] {
        let paged = all_pages(&w, &w.operator, &format!("/api/v1/nodes?limit={size}"));
        assert_eq!(paged, all, "page size {size}");
    }
    let find = |t: u64, addr: &str| {
        all.iter()
            .find(|n| n["tenant"] == t && n["addr"] == addr)
            .unwrap_or_else(|| panic!("node {t}/{addr}"))
    };
    // Last state events: node 1 up (i = 9), node 3 down (i = 8); the shared node has none.
    assert_eq!(find(2, "198.18.2.1")["state"], "up");
    assert_eq!(find(2, "198.18.2.1")["state_since_ms"], T0 + 9000);
    assert_eq!(find(2, "198.18.2.3")["state"], "down");
    assert_eq!(find(1, "198.18.0.1")["state"], "unknown");
    assert_eq!(find(1, "198.18.0.1")["name"], "shared");
    assert_eq!(
        find(3, "2001:db8::3:1")["latest_metrics"]["interval_start_ms"],
        T0 + 60_000 * (METRIC_TIMES - 1)
    );
    assert_eq!(find(3, "2001:db8::3:1")["vlan"], 0);
    assert_eq!(
        tenants_of(&all_pages(&w, &w.operator, "/api/v1/nodes?tenant=3")),
        vec![3; 4]
    );
    assert_eq!(
        tenants_of(&all_pages(&w, w.tenant(2), "/api/v1/nodes?limit=3")),
        vec![2; 4]
    );
}

#[test]
fn services_filters_and_summary() {
    let w = world();
    let all = w.op("/api/v1/services");
    assert_eq!(items(&all).len(), 9);
    assert_eq!(all["summary"]["up"], 3);
    assert_eq!(all["summary"]["degraded"], 3);
    assert_eq!(all["summary"]["down"], 3);
    let n = |q: &str| items(&w.op(&format!("/api/v1/services?{q}"))).len();
    assert_eq!(n("state=down"), 3);
    assert_eq!(n("service=https"), 3);
    assert_eq!(n("service=nope"), 0);
    assert_eq!(n("node=10@198.18.2.2"), 1);
    assert_eq!(n("tenant=1&state=up"), 1);
    let one = w.op("/api/v1/services?node=10@198.18.2.2");
    assert_eq!(items(&one)[0]["service"], "ssh");
    assert_eq!(items(&one)[0]["state"], "down");
    let mine = w.as_tenant(3, "/api/v1/services");
    assert_eq!(items(&mine).len(), 3);
    assert!(items(&mine).iter().all(|s| s["tenant"] == 3));
}

#[test]
fn peers_with_daemons_and_per_tenant_counts() {
    let w = world();
    let all = w.op("/api/v1/peers");
    let names: Vec<&str> = items(&all)
        .iter()
        .map(|p| p["peer"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["mirror-a", "poller-a", "poller-b"]);
    let pa = &items(&all)[1];
    assert_eq!(pa["nodes_total"], 8);
    assert_eq!(pa["status"]["role"], "poller");
    let daemons: Vec<(&str, &str)> = pa["daemons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["daemon"].as_str().unwrap(), d["state"].as_str().unwrap()))
        .collect();
    assert_eq!(daemons, [("nmis9d", "up"), ("opeventsd", "down")]);
    assert!(pa["heartbeat_age_ms"].as_u64().unwrap() > 0);
    let mirrors = w.op("/api/v1/peers?role=mirror");
    assert_eq!(items(&mirrors).len(), 1);
    let t3 = w.op("/api/v1/peers?tenant=3");
    assert_eq!(items(&t3).len(), 1);
    assert_eq!(items(&t3)[0]["peer"], "poller-b");
    // A tenant sees the peers carrying its nodes, with its own counts only.
    let mine = w.as_tenant(1, "/api/v1/peers");
    let names: Vec<&str> = items(&mine)
        .iter()
        .map(|p| p["peer"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["mirror-a", "poller-a"]);
    for p in items(&mine) {
        assert_eq!(p["nodes_total"], 4);
        let tenants: Vec<u64> = p["status"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["tenant"].as_u64().unwrap())
            .collect();
        assert_eq!(tenants, [1]);
    }
}

#[test]
fn tenant_usage_is_the_billing_surface() {
    let w = world();
    let all = w.op("/api/v1/tenants/usage");
    assert_eq!(tenants_of(items(&all)), vec![1, 2, 3]);
    for u in items(&all) {
        assert_eq!(u["events"], EVENTS_PER_TENANT as u64);
        assert_eq!(u["metrics"], 4 * METRIC_TIMES);
        assert_eq!(
            u["records"],
            EVENTS_PER_TENANT as u64 + 4 * METRIC_TIMES + 3
        );
        assert_eq!(u["nodes"], 4);
        assert!(u["bytes_received"].as_u64().unwrap() > 0);
    }
    assert_eq!(all["total"]["events"], 3 * EVENTS_PER_TENANT as u64);
    let total_bytes: u64 = items(&all)
        .iter()
        .map(|u| u["bytes_received"].as_u64().unwrap())
        .sum();
    assert_eq!(all["total"]["bytes_received"], total_bytes);
    // A billing period: events i = 0..4 and the external one, metrics of the first interval,
    // the service checks.
    let period = w.op(&format!("/api/v1/tenants/usage?from={T0}&to={}", T0 + 5000));
    for u in items(&period) {
        assert_eq!(u["events"], 6);
        assert_eq!(u["metrics"], 4);
        assert_eq!(u["records"], 13);
        assert!(u["bytes_received"].as_u64() < items(&all)[0]["bytes_received"].as_u64());
    }
    assert_eq!(
        tenants_of(items(&w.op("/api/v1/tenants/usage?tenant=2"))),
        vec![2]
    );
    assert_eq!(tenants_of(items(&w.op("/api/v1/tenants/2/usage"))), vec![2]);
    assert_eq!(
        tenants_of(items(&w.as_tenant(2, "/api/v1/tenants/usage"))),
        vec![2]
    );
    assert_eq!(
        tenants_of(items(&w.as_tenant(2, "/api/v1/tenants/2/usage"))),
        vec![2]
    );
    // A tenant with no data yet: an empty list, and no file is created by reading.
    assert!(items(&w.op("/api/v1/tenants/77/usage")).is_empty());
    assert!(!w.dir.path().join("tenant-77.sqlite3").exists());
}
