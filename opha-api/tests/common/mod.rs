//! A store seeded with three tenants, tokens for each and an operator, and request helpers.
#![allow(dead_code)] // each test file uses a different part

use opha_api::{Api, ApiConfig, Reply, RequestParts, mint};
use opha_common::wire::{
    ClassMetrics, DaemonHealth, DaemonState, Event, EventId, EventKind, NodeMetrics, NodeRef,
    PeerId, PeerRole, PeerStatus, Record, ReplayLogStatus, ServiceKind, ServiceState,
    ServiceStatus, Severity, Subject, TenantId, TenantNodes,
};
use opha_store::{Store, StoreConfig};
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

pub const T0: u64 = 1_000_000;
pub const EVENTS_PER_TENANT: usize = 11;
pub const METRIC_TIMES: u64 = 5;
pub const TENANTS: [u32; 3] = [1, 2, 3];

pub struct World {
    pub dir: tempfile::TempDir,
    pub api: Api,
    pub operator: String,
    /// Token of tenant 1, 2, 3 (index t - 1).
    pub tenant_tokens: Vec<String>,
}

impl World {
    pub fn tenant(&self, t: u32) -> &str {
        &self.tenant_tokens[(t - 1) as usize]
    }

    pub fn get(&self, target: &str, token: Option<&str>) -> Reply {
        self.api.handle(&RequestParts::get(target, token))
    }

    /// GET as the operator, asserting 200.
    pub fn op(&self, target: &str) -> Value {
        let r = self.get(target, Some(&self.operator));
        assert_eq!(r.status, 200, "{target}: {}", r.body);
        r.body
    }

    /// GET as tenant `t`, asserting 200.
    pub fn as_tenant(&self, t: u32, target: &str) -> Value {
        let r = self.get(target, Some(self.tenant(t)));
        assert_eq!(r.status, 200, "{target}: {}", r.body);
        r.body
    }
}

/// Node `k` of tenant `t`: VLAN 10, 198.18.t.k.
pub fn node(t: u32, k: u8) -> NodeRef {
    NodeRef::new(
        10,
        IpAddr::V4(Ipv4Addr::new(198, 18, t as u8, k)),
        Some(format!("t{t}-n{k}")),
    )
}

/// The node tenants 1 and 2 both have (overlapping address plans).
pub fn shared_node() -> NodeRef {
    NodeRef::new(
        10,
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
        Some("shared".into()),
    )
}

/// Tenant 3's IPv6 node, untagged.
pub fn v6_node() -> NodeRef {
    NodeRef::new(
        0,
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 3, 1)),
        Some("t3-v6".into()),
    )
}

pub fn event(
    t: u32,
    node: NodeRef,
    kind: EventKind,
    sev: Severity,
    time_ms: u64,
    n: u32,
) -> Record {
    Record::Event(Event {
        id: EventId::from_u128(u128::from(t) << 64 | u128::from(time_ms) << 16 | u128::from(n)),
        time_ms,
        tenant: TenantId(t),
        subject: Subject::Node(node),
        kind,
        severity: sev,
        details: format!("tenant {t} event {n}"),
    })
}

pub fn metrics(t: u32, node: NodeRef, time_ms: u64) -> Record {
    let class = ClassMetrics {
        requests: 10,
        responses: 9,
        timeouts: 1,
        loss_ppm: 100_000,
        ..Default::default()
    };
    Record::NodeMetrics(NodeMetrics {
        node,
        tenant: TenantId(t),
        interval_start_ms: time_ms,
        interval_ms: 60_000,
        icmp: class.clone(),
        snmp: class,
        tcp: ClassMetrics::default(),
    })
}

pub fn service(t: u32, node: NodeRef, name: &str, state: ServiceStatus) -> Record {
    Record::ServiceState(ServiceState {
        service: name.into(),
        kind: ServiceKind::Port { port: 443 },
        node,
        tenant: TenantId(t),
        state,
        reason: format!("{state:?}"),
        since_ms: T0,
        checked_ms: T0,
    })
}

pub fn peer(name: &str, role: PeerRole, nodes: &[(u32, u32)]) -> Record {
    Record::PeerStatus(PeerStatus {
        peer: PeerId::new(name).expect("peer id"),
        role,
        version: "0.1.0".into(),
        protocol: opha_common::wire::PROTOCOL_VERSION,
        uptime_ms: 1000,
        region: "eu".into(),
        time_ms: T0,
        nodes: nodes
            .iter()
            .map(|&(t, n)| TenantNodes {
                tenant: TenantId(t),
                nodes: n,
            })
            .collect(),
        replay_log: ReplayLogStatus::default(),
        kernel: vec![],
    })
}

pub fn daemon(name: &str, state: DaemonState) -> Record {
    Record::DaemonHealth(DaemonHealth {
        daemon: name.into(),
        state,
        pid: Some(42),
        since_ms: T0,
        checked_ms: T0,
        detail: String::new(),
    })
}

/// Events of tenant `t`: 10 node_down/node_up over nodes 1-3 (severity cycling through all
/// five, at T0 + i*1000: the same times in every tenant, so merges have ties), then one
/// external info event at T0 + 500.
pub fn tenant_records(t: u32) -> Vec<Record> {
    let mut out = Vec::new();
    for i in 0..10u32 {
        let k = (i % 3 + 1) as u8;
        let kind = if i % 2 == 0 {
            EventKind::NodeDown
        } else {
            EventKind::NodeUp
        };
        out.push(event(
            t,
            node(t, k),
            kind,
            Severity::ALL[(i % 5) as usize],
            T0 + u64::from(i) * 1000,
            i,
        ));
    }
    out.push(event(
        t,
        node(t, 1),
        EventKind::External {
            source: "nmis9d".into(),
            name: "Proactive".into(),
        },
        Severity::Info,
        T0 + 500,
        99,
    ));
    for i in 0..METRIC_TIMES {
        for k in 1..=3 {
            out.push(metrics(t, node(t, k), T0 + 60_000 * i));
        }
        if t != 3 {
            out.push(metrics(t, shared_node(), T0 + 60_000 * i));
        } else {
            out.push(metrics(t, v6_node(), T0 + 60_000 * i));
        }
    }
    out.push(service(t, node(t, 1), "https", ServiceStatus::Up));
    out.push(service(t, node(t, 2), "ssh", ServiceStatus::Down));
    out.push(service(t, node(t, 3), "dns", ServiceStatus::Degraded));
    out
}

pub fn seed(store: &Store) {
    for t in TENANTS {
        let poller = PeerId::new(if t == 3 { "poller-b" } else { "poller-a" }).expect("id");
        let records: Vec<(u64, Record)> = tenant_records(t)
            .into_iter()
            .enumerate()
            .map(|(i, r)| (i as u64, r))
            .collect();
        store
            .tenant(TenantId(t))
            .expect("tenant")
            .commit_batch(&poller, 1, &records)
            .expect("commit");
    }
    let sys = store.system().expect("system");
    sys.commit_batch(
        &PeerId::new("poller-a").expect("id"),
        1,
        &[
            (100, peer("poller-a", PeerRole::Poller, &[(1, 4), (2, 4)])),
            (101, daemon("nmis9d", DaemonState::Up)),
            (102, daemon("opeventsd", DaemonState::Down)),
        ],
    )
    .expect("commit system");
    sys.commit_batch(
        &PeerId::new("poller-b").expect("id"),
        1,
        &[(100, peer("poller-b", PeerRole::Poller, &[(3, 4)]))],
    )
    .expect("commit system");
    sys.commit_batch(
        &PeerId::new("mirror-a").expect("id"),
        1,
        &[(1, peer("mirror-a", PeerRole::Mirror, &[(1, 4), (2, 4)]))],
    )
    .expect("commit system");
}

pub fn world_with(config: impl FnOnce(&mut ApiConfig)) -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), StoreConfig::default()).expect("store");
    seed(&store);
    let op = mint("noc", None).expect("mint");
    let mut cfg = ApiConfig::default();
    cfg.tokens.push(op.entry.clone());
    let mut tenant_tokens = Vec::new();
    for t in TENANTS {
        let m = mint(&format!("portal-{t}"), Some(TenantId(t))).expect("mint");
        cfg.tokens.push(m.entry.clone());
        tenant_tokens.push(m.token);
    }
    config(&mut cfg);
    let api = Api::new(Arc::new(store), cfg).expect("api");
    World {
        dir,
        api,
        operator: op.token,
        tenant_tokens,
    }
}

pub fn world() -> World {
    world_with(|_| {})
}

/// `items` of a list answer.
pub fn items(v: &Value) -> &Vec<Value> {
    v["items"].as_array().expect("items array")
}

/// Follows `next` through every page of `target` (which must not carry `cursor`).
pub fn all_pages(w: &World, token: &str, target: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let sep = if target.contains('?') { '&' } else { '?' };
    let mut next: Option<String> = None;
    for _ in 0..1000 {
        let t = match &next {
            Some(c) => format!("{target}{sep}cursor={c}"),
            None => target.to_string(),
        };
        let r = w.get(&t, Some(token));
        assert_eq!(r.status, 200, "{t}: {}", r.body);
        out.extend(items(&r.body).iter().cloned());
        match r.body["next"].as_str() {
            Some(c) => next = Some(c.to_string()),
            None => return out,
        }
    }
    panic!("paging of {target} did not end");
}
