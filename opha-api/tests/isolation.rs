//! Tenant isolation: a tenant token naming another tenant is refused (403, counted) on every
//! endpoint; without naming one it reads its own file only, whatever it asks for.

mod common;

use common::*;

/// Every endpoint, naming tenant 2 (query or path), and the parameter the refusal names.
const CROSS: &[(&str, &str)] = &[
    ("/api/v1/peers?tenant=2", "tenant"),
    ("/api/v1/nodes?tenant=2", "tenant"),
    ("/api/v1/events?tenant=2", "tenant"),
    ("/api/v1/events?tenant=2&kind=node_down&limit=5", "tenant"),
    ("/api/v1/nodes/10/198.18.0.1/metrics?tenant=2", "tenant"),
    ("/api/v1/services?tenant=2", "tenant"),
    ("/api/v1/tenants/usage?tenant=2", "tenant"),
    ("/api/v1/tenants/2/usage", "tenant_id"),
];

#[test]
fn cross_tenant_requests_are_403_counted_and_carry_no_data() {
    let w = world();
    for (i, (target, param)) in CROSS.iter().enumerate() {
        let r = w.get(target, Some(w.tenant(1)));
        assert_eq!(r.status, 403, "{target}: {}", r.body);
        assert_eq!(r.body["error"], "forbidden", "{target}");
        assert_eq!(r.body["param"], *param, "{target}");
        assert!(r.body.get("items").is_none(), "{target}");
        assert_eq!(w.api.metrics().forbidden_total(), i as u64 + 1, "{target}");
        // The owner and the operator are answered.
        assert_eq!(w.get(target, Some(w.tenant(2))).status, 200, "{target}");
        assert_eq!(w.get(target, Some(&w.operator)).status, 200, "{target}");
    }
    let n = CROSS.len() as u64;
    assert_eq!(w.api.metrics().forbidden_total(), n, "only refusals count");
    assert_eq!(w.api.metrics().responses(403), n);
    assert!(
        w.api
            .metrics()
            .render()
            .contains(&format!("opha_api_forbidden_total {n}\n"))
    );
}

#[test]
fn a_tenant_token_reads_only_its_own_file() {
    let w = world();
    // Tenant 2's node, asked for by tenant 1 without naming a tenant: tenant 1's file has no
    // such node, so nothing (isolation is in what is opened, not a filter on the answer).
    let r = w.as_tenant(1, "/api/v1/nodes/10/198.18.2.1/metrics");
    assert!(items(&r).is_empty());
    let r = w.as_tenant(1, "/api/v1/events?node=10@198.18.2.1");
    assert!(items(&r).is_empty());
    let r = w.as_tenant(1, "/api/v1/services?node=10@198.18.2.2");
    assert!(items(&r).is_empty());
    // A cursor made up to point into tenant 2's rows changes only the position.
    let r = w.as_tenant(1, &format!("/api/v1/events?cursor=e1.{}.2.1", T0 + 100_000));
    assert!(items(&r).iter().all(|e| e["tenant"] == 1));
    assert_eq!(items(&r).len(), EVENTS_PER_TENANT);
    let r = w.as_tenant(1, "/api/v1/nodes?cursor=n1.2.0@198.18.0.1");
    assert!(
        items(&r).is_empty(),
        "after tenant 2's position, tenant 1 has nothing"
    );
    // The shared address exists in tenants 1 and 2: each sees only its own series.
    let r = w.as_tenant(2, "/api/v1/nodes/10/198.18.0.1/metrics");
    assert_eq!(items(&r).len(), METRIC_TIMES as usize);
    assert!(
        items(&r)
            .iter()
            .all(|m| m["tenant"] == 2 && m["metrics"]["tenant"] == 2)
    );
    assert_eq!(w.api.metrics().forbidden_total(), 0);
}

#[test]
fn a_tenant_without_data_gets_empty_answers_and_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = opha_store::Store::open(dir.path(), opha_store::StoreConfig::default()).unwrap();
    seed(&store);
    let m = opha_api::mint("portal-5", Some(opha_common::wire::TenantId(5))).unwrap();
    let mut cfg = opha_api::ApiConfig::default();
    cfg.tokens.push(m.entry.clone());
    let api = opha_api::Api::new(std::sync::Arc::new(store), cfg).unwrap();
    for target in [
        "/api/v1/events",
        "/api/v1/nodes",
        "/api/v1/services",
        "/api/v1/peers",
        "/api/v1/tenants/usage",
        "/api/v1/nodes/10/198.18.1.1/metrics",
    ] {
        let r = api.handle(&opha_api::RequestParts::get(target, Some(&m.token)));
        assert_eq!(r.status, 200, "{target}: {}", r.body);
        assert!(items(&r.body).is_empty(), "{target}: {}", r.body);
    }
    assert!(!dir.path().join("tenant-5.sqlite3").exists());
}
