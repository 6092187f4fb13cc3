//! Bad input: unknown or repeated parameters, bad values and encodings, wrong methods,
//! bodies, oversize targets: each a 4xx JSON error naming the parameter, never a panic.
//! The query-string parser and the whole request path are fuzzed with proptest.

mod common;

use common::*;
use opha_api::params::{parse_query, percent_decode};
use opha_api::{Reply, RequestParts};
use proptest::prelude::*;

fn bad(w: &World, target: &str) -> Reply {
    let r = w.get(target, Some(&w.operator));
    assert!(
        (400..500).contains(&r.status),
        "{target}: {} {}",
        r.status,
        r.body
    );
    assert!(
        r.body["error"].is_string() && r.body["message"].is_string(),
        "{target}"
    );
    r
}

#[test]
fn bad_parameters_are_400_naming_the_parameter() {
    let w = world();
    let cases: &[(&str, &str)] = &[
        ("/api/v1/events?colour=red", "colour"),
        ("/api/v1/events?tenant=1&tenant=2", "tenant"),
        ("/api/v1/events?tenant=-1", "tenant"),
        ("/api/v1/events?tenant=abc", "tenant"),
        ("/api/v1/events?tenant=99999999999", "tenant"),
        ("/api/v1/events?tenant=%zz", "tenant"),
        ("/api/v1/events?tenant=%ff", "tenant"),
        ("/api/v1/events?severity=loud", "severity"),
        ("/api/v1/events?severity=MAJOR", "severity"),
        ("/api/v1/events?kind=bogus", "kind"),
        ("/api/v1/events?from=yesterday", "from"),
        ("/api/v1/events?from=-5", "from"),
        ("/api/v1/events?to=1.5", "to"),
        ("/api/v1/events?from=10&to=5", "from"),
        ("/api/v1/events?limit=0", "limit"),
        ("/api/v1/events?limit=1001", "limit"),
        ("/api/v1/events?limit=ten", "limit"),
        ("/api/v1/events?node=300.1.1.1", "node"),
        ("/api/v1/events?node=5000@198.18.0.1", "node"),
        ("/api/v1/events?node=@", "node"),
        ("/api/v1/events?cursor=garbage", "cursor"),
        ("/api/v1/events?cursor=m1.1.1.1", "cursor"),
        ("/api/v1/events?cursor=e1.1.1", "cursor"),
        ("/api/v1/events?=5", "query"),
        ("/api/v1/events?%zz=1", "query"),
        ("/api/v1/nodes?cursor=n1.x.10@198.18.0.1", "cursor"),
        ("/api/v1/nodes?severity=major", "severity"),
        ("/api/v1/nodes/abc/198.18.0.1/metrics", "vlan"),
        ("/api/v1/nodes/5000/198.18.0.1/metrics", "vlan"),
        ("/api/v1/nodes/10/not-an-ip/metrics", "addr"),
        ("/api/v1/nodes/10/198.18.0.1/metrics?kind=node_down", "kind"),
        (
            "/api/v1/nodes/10/198.18.0.1/metrics?cursor=e1.1.1.1",
            "cursor",
        ),
        ("/api/v1/services?state=sideways", "state"),
        ("/api/v1/services?limit=5", "limit"),
        ("/api/v1/peers?role=king", "role"),
        ("/api/v1/tenants/usage?from=a", "from"),
        ("/api/v1/tenants/abc/usage", "tenant_id"),
        ("/api/v1/tenants/1/usage?tenant=1", "tenant"),
        ("/api/v1/%ff/events", "path"),
    ];
    for (target, param) in cases {
        let r = bad(&w, target);
        assert_eq!(r.status, 400, "{target}: {}", r.body);
        assert_eq!(r.body["param"], *param, "{target}: {}", r.body);
    }
    // Empty segments are nothing; a valueless parameter is an empty value.
    assert_eq!(
        w.get("/api/v1/events?&&limit=5&", Some(&w.operator)).status,
        200
    );
    assert_eq!(bad(&w, "/api/v1/events?limit").body["param"], "limit");
}

#[test]
fn methods_bodies_paths_and_sizes() {
    let w = world();
    let auth = Some(format!("Bearer {}", w.operator));
    for m in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW"] {
        let req = RequestParts {
            method: m.into(),
            path: "/api/v1/events".into(),
            authorization: auth.clone(),
            body_len: 17, // e.g. `{"malformed": tru`
            ..Default::default()
        };
        assert_eq!(w.api.handle(&req).status, 405, "{m}");
    }
    let with_body = |n: usize| {
        w.api.handle(&RequestParts {
            body_len: n,
            ..RequestParts::get("/api/v1/events", Some(&w.operator))
        })
    };
    let r = with_body(10);
    assert_eq!((r.status, r.body["param"].as_str()), (400, Some("body")));
    assert_eq!(with_body(10 << 20).status, 413);
    for target in [
        "/",
        "/api",
        "/api/v2/events",
        "/api/v1/",
        "/api/v1/events/1",
        "/metrics",
    ] {
        let r = w.get(target, Some(&w.operator));
        assert_eq!(r.status, 404, "{target}");
    }
    let long = format!("/api/v1/events?node={}", "1".repeat(10_000));
    assert_eq!(w.get(&long, Some(&w.operator)).status, 414);
    let many: Vec<String> = (0..40).map(|i| format!("p{i}=1")).collect();
    let r = bad(&w, &format!("/api/v1/events?{}", many.join("&")));
    assert_eq!(r.body["param"], "query");
    // Still answering.
    assert_eq!(w.get("/api/v1/events", Some(&w.operator)).status, 200);
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any query string: parsed or refused, never a panic.
    #[test]
    fn parser_never_panics(raw in ".{0,200}", bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
        let _ = parse_query(Some(&raw), 32);
        let _ = percent_decode(&raw);
        let lossy = String::from_utf8_lossy(&bytes);
        let _ = parse_query(Some(&lossy), 32);
    }

    /// Query-shaped strings of `%`, `&`, `=`, `+`, hex and UTF-8: never a panic.
    #[test]
    fn parser_never_panics_on_query_shaped_input(raw in "[a-z%&=+0-9A-Fé]{0,80}") {
        if let Ok(p) = parse_query(Some(&raw), 1024) {
            prop_assert!(p.len() <= raw.len());
        }
    }

    /// Percent-encoded names and values decode back exactly.
    #[test]
    fn parser_round_trips(pairs in proptest::collection::btree_map("[a-z]{1,8}", ".{0,20}", 0..8)) {
        let raw: Vec<String> = pairs.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect();
        let mut p = parse_query(Some(&raw.join("&")), 32).unwrap();
        for (k, v) in &pairs {
            let got = p.take(k);
            prop_assert_eq!(got.as_deref(), Some(v.as_str()));
        }
        prop_assert!(p.is_empty());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// The whole request path with arbitrary paths and queries: a JSON answer with a known
    /// status, never a panic.
    #[test]
    fn handle_never_panics(
        path in "/api/v1/(events|nodes|peers|services|tenants/usage|tenants/[0-9a-z%]{0,4}/usage|nodes/[0-9a-z%]{0,6}/[0-9a-f:.%]{0,12}/metrics|[a-z/%]{0,12})",
        query in proptest::option::of("[a-z%&=+0-9@.:]{0,60}"),
        tenant_token in any::<bool>(),
    ) {
        let w = world_fuzz();
        let token = if tenant_token { w.tenant(1).to_string() } else { w.operator.clone() };
        let target = match &query { Some(q) => format!("{path}?{q}"), None => path.clone() };
        let r = w.get(&target, Some(&token));
        prop_assert!([200, 400, 403, 404, 414].contains(&r.status), "{} {}: {}", target, r.status, r.body);
        if r.status != 200 {
            prop_assert!(r.body["error"].is_string());
        }
    }
}

/// One seeded world shared by the fuzz cases (seeding per case would dominate the run).
fn world_fuzz() -> &'static World {
    static W: std::sync::OnceLock<World> = std::sync::OnceLock::new();
    W.get_or_init(world)
}
