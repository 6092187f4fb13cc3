//! `GET /api/v1/summary` over the seeded store (three tenants; poller-a carries tenants 1
//! and 2 and reports nmis9d up and opeventsd down, poller-b carries tenant 3, mirror-a
//! mirrors poller-a), plus recent events and the receiver's live link states.

mod common;

use common::*;
use opha_api::live::{LiveConfig, LiveHub, StreamState};
use opha_api::{Api, ApiConfig, RequestParts, mint};
use opha_common::wire::{EventKind, PeerId, PeerRole, Severity, TenantId};
use opha_store::{Store, StoreConfig};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

struct Home {
    _dir: tempfile::TempDir,
    api: Api,
    hub: Arc<LiveHub>,
    operator: String,
    tenants: Vec<String>,
}

impl Home {
    fn get(&self, target: &str, token: &str) -> (u16, Value) {
        let r = self.api.handle(&RequestParts::get(target, Some(token)));
        (r.status, r.body)
    }

    fn ok(&self, target: &str, token: &str) -> Value {
        let (s, b) = self.get(target, token);
        assert_eq!(s, 200, "{target}: {b}");
        b
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The common seed plus, within the last hour, 3 events of tenant 1 and 2 of tenant 2.
fn home() -> Home {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    seed(&store);
    let now = now_ms();
    let poller = PeerId::new("poller-a").unwrap();
    for (t, n) in [(1u32, 3u32), (2, 2)] {
        let recs: Vec<_> = (0..n)
            .map(|i| {
                (
                    1000 + u64::from(i),
                    event(
                        t,
                        node(t, 1),
                        EventKind::NodeDown,
                        Severity::Major,
                        now - 1000 * u64::from(i + 1),
                        500 + i,
                    ),
                )
            })
            .collect();
        store
            .tenant(TenantId(t))
            .unwrap()
            .commit_batch(&poller, 1, &recs)
            .unwrap();
    }
    let op = mint("noc", None).unwrap();
    let mut cfg = ApiConfig::default();
    cfg.tokens.push(op.entry.clone());
    let mut tenants = Vec::new();
    for t in TENANTS {
        let m = mint(&format!("portal-{t}"), Some(TenantId(t))).unwrap();
        cfg.tokens.push(m.entry.clone());
        tenants.push(m.token);
    }
    let hub = LiveHub::new(LiveConfig::default());
    let api = Api::new(Arc::new(store), cfg)
        .unwrap()
        .with_live(hub.clone());
    Home {
        _dir: dir,
        api,
        hub,
        operator: op.token,
        tenants,
    }
}

fn peer<'a>(v: &'a Value, id: &str) -> &'a Value {
    v["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["peer"] == id)
        .unwrap_or_else(|| panic!("no card {id} in {}", v["peers"]))
}

fn peer_ids(v: &Value) -> Vec<&str> {
    v["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["peer"].as_str().unwrap())
        .collect()
}

fn daemon_state<'a>(card: &'a Value, d: &str) -> Option<&'a str> {
    card["daemons"]
        .as_array()?
        .iter()
        .find(|x| x["daemon"] == d)
        .and_then(|x| x["state"].as_str())
}

#[test]
fn operator_summary_has_cards_kpis_and_tenants() {
    let h = home();
    h.hub.set_link(
        &PeerId::new("poller-a").unwrap(),
        PeerRole::Poller,
        StreamState::Streaming,
    );
    h.hub.set_link(
        &PeerId::new("poller-b").unwrap(),
        PeerRole::Poller,
        StreamState::CatchingUp { lag_records: 1234 },
    );
    h.hub.set_link(
        &PeerId::new("poller-new").unwrap(),
        PeerRole::Poller,
        StreamState::Streaming,
    );
    let v = h.ok("/api/v1/summary", &h.operator);
    assert_eq!(v["scope"], json!({"role": "operator"}));
    assert_eq!(v["live"], true);
    assert_eq!(
        v["daemons"],
        json!([
            "opchartsd",
            "opeventsd",
            "opconfigd",
            "nmis9d",
            "omkd",
            "ophad"
        ])
    );
    assert_eq!(
        peer_ids(&v),
        ["mirror-a", "poller-a", "poller-b", "poller-new"]
    );

    let a = peer(&v, "poller-a");
    assert_eq!(a["role"], "poller");
    assert_eq!(a["region"], "eu");
    assert_eq!(a["nodes_total"], 8);
    assert_eq!(a["stream"], json!({"state": "streaming"}));
    assert_eq!(a["up"], true);
    assert_eq!(a["heartbeat_ms"], T0);
    // Seeded at T0 (1970): decades old.
    assert!(
        a["heartbeat_words"].as_str().unwrap().ends_with("days ago"),
        "{a}"
    );
    assert_eq!(daemon_state(a, "nmis9d"), Some("up"));
    assert_eq!(daemon_state(a, "opeventsd"), Some("down"));
    assert_eq!(daemon_state(a, "omkd"), None, "never reported");

    let b = peer(&v, "poller-b");
    assert_eq!(
        b["stream"],
        json!({"state": "catching_up", "lag_records": 1234})
    );
    assert_eq!(b["up"], true);
    assert_eq!(b["daemons"], json!([]));

    // No live link and an old heartbeat: down.
    let m = peer(&v, "mirror-a");
    assert_eq!(m["stream"], json!({"state": "unknown"}));
    assert_eq!(m["up"], false);
    assert_eq!(m["role"], "mirror");

    // Connected but no heartbeat stored yet: a card with what is known.
    let n = peer(&v, "poller-new");
    assert_eq!(n["heartbeat_words"], "never");
    assert_eq!(n["up"], true);
    assert!(n.get("nodes").is_none());

    let k = &v["kpi"];
    assert_eq!(k["peers_total"], 4);
    assert_eq!(k["peers_up"], 3);
    // Pollers only: poller-a 8 + poller-b 4 (mirror-a's replica is not counted twice).
    assert_eq!(k["nodes_monitored"], 12);
    assert_eq!(k["events_last_hour"], 5);
    assert_eq!(k["services"], json!({"up": 3, "degraded": 3, "down": 3}));

    let tenants = v["tenants"].as_array().unwrap();
    assert_eq!(tenants.len(), 3);
    assert_eq!(tenants[0]["tenant"], 1);
    assert_eq!(tenants[0]["nodes"], 4);
    assert_eq!(tenants[0]["events_last_hour"], 3);
    assert_eq!(tenants[0]["pollers"], json!(["poller-a"]));
    assert!(tenants[0]["bytes_last_hour"].as_u64().unwrap() > 0);
    assert_eq!(tenants[1]["events_last_hour"], 2);
    assert_eq!(tenants[2]["tenant"], 3);
    assert_eq!(tenants[2]["events_last_hour"], 0);
    assert_eq!(tenants[2]["bytes_last_hour"], 0);
    assert_eq!(tenants[2]["pollers"], json!(["poller-b"]));
    // The shared node (tenants 1 and 2) plus three own nodes each, over the whole file.
    assert_eq!(tenants[0]["nodes_stored"], 4);

    // Disconnected wins over a fresh heartbeat: down.
    h.hub.set_link(
        &PeerId::new("poller-a").unwrap(),
        PeerRole::Poller,
        StreamState::Disconnected { since_ms: 5 },
    );
    let v = h.ok("/api/v1/summary", &h.operator);
    assert_eq!(peer(&v, "poller-a")["up"], false);
    assert_eq!(
        peer(&v, "poller-a")["stream"],
        json!({"state": "disconnected", "since_ms": 5})
    );
    assert_eq!(v["kpi"]["peers_up"], 2);
}

#[test]
fn tenant_summary_sees_only_its_tenant() {
    let h = home();
    h.hub.set_link(
        &PeerId::new("poller-new").unwrap(),
        PeerRole::Poller,
        StreamState::Streaming,
    );
    let v = h.ok("/api/v1/summary", &h.tenants[2]);
    assert_eq!(v["scope"], json!({"role": "tenant", "tenant": 3}));
    // Only the peer carrying tenant 3; not poller-new (its tenants are not known yet).
    assert_eq!(peer_ids(&v), ["poller-b"]);
    assert_eq!(v["tenants"].as_array().unwrap().len(), 1);
    assert_eq!(v["tenants"][0]["tenant"], 3);
    assert_eq!(v["kpi"]["events_last_hour"], 0);
    assert_eq!(
        v["kpi"]["services"],
        json!({"up": 1, "degraded": 1, "down": 1})
    );

    let v = h.ok("/api/v1/summary", &h.tenants[0]);
    assert_eq!(peer_ids(&v), ["mirror-a", "poller-a"]);
    let a = peer(&v, "poller-a");
    assert_eq!(
        a["nodes"],
        json!([{"tenant": 1, "nodes": 4}]),
        "no tenant 2"
    );
    assert_eq!(a["nodes_total"], 4);
    assert_eq!(v["kpi"]["nodes_monitored"], 4);
    assert_eq!(v["kpi"]["events_last_hour"], 3);
    let text = v.to_string();
    assert!(!text.contains("\"tenant\":2"), "{text}");
    assert!(!text.contains("\"tenant\":3"), "{text}");

    // Naming another tenant: 403, counted. Its own: fine.
    let before = h.api.metrics().forbidden_total();
    let (s, b) = h.get("/api/v1/summary?tenant=2", &h.tenants[0]);
    assert_eq!(s, 403, "{b}");
    assert_eq!(b["param"], "tenant");
    assert_eq!(h.api.metrics().forbidden_total(), before + 1);
    h.ok("/api/v1/summary?tenant=1", &h.tenants[0]);

    // An operator narrowing to tenant 2.
    let v = h.ok("/api/v1/summary?tenant=2", &h.operator);
    assert_eq!(peer_ids(&v), ["mirror-a", "poller-a"]);
    assert_eq!(v["kpi"]["events_last_hour"], 2);

    // Bad input.
    let (s, b) = h.get("/api/v1/summary?tenant=x", &h.operator);
    assert_eq!((s, b["param"].as_str()), (400, Some("tenant")));
    let (s, b) = h.get("/api/v1/summary?colour=red", &h.operator);
    assert_eq!((s, b["param"].as_str()), (400, Some("colour")));
    let r = h.api.handle(&RequestParts::get("/api/v1/summary", None));
    assert_eq!(r.status, 401);
}

#[test]
fn summary_without_a_hub_or_a_system_file() {
    // No hub: stream states are unknown, up is by heartbeat age only.
    let w = world();
    let v = w.op("/api/v1/summary");
    assert_eq!(v["live"], false);
    assert_eq!(peer(&v, "poller-a")["stream"], json!({"state": "unknown"}));
    assert_eq!(v["kpi"]["peers_up"], 0);

    // An empty store: an empty view, not an error.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let op = mint("noc", None).unwrap();
    let mut cfg = ApiConfig::default();
    cfg.tokens.push(op.entry.clone());
    let api = Api::new(Arc::new(store), cfg).unwrap();
    let r = api.handle(&RequestParts::get("/api/v1/summary", Some(&op.token)));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["peers"], json!([]));
    assert_eq!(r.body["kpi"]["peers_total"], 0);
    assert_eq!(r.body["tenants"], json!([]));
}
