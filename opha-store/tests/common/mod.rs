//! Record builders and direct reads of a store file (as an operator's sqlite3 shell would).
#![allow(dead_code)] // each test file uses a different part

use opha_common::wire::{
    ClassMetrics, DaemonHealth, DaemonState, Event, EventId, EventKind, NodeMetrics, NodeRef,
    PeerId, PeerRole, PeerStatus, PollerId, Record, ReplayLogStatus, ServiceKind, ServiceState,
    ServiceStatus, Severity, Subject, TenantId,
};
use opha_store::{Store, StoreConfig};
use rusqlite::{Connection, OpenFlags};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

pub fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), StoreConfig::default()).expect("open store");
    (dir, store)
}

pub fn poller(name: &str) -> PollerId {
    PeerId::new(name).expect("valid peer id")
}

/// Node `n` on VLAN 10, in the benchmarking range.
pub fn node(n: u16) -> NodeRef {
    NodeRef::new(
        10,
        IpAddr::V4(Ipv4Addr::new(198, 18, (n >> 8) as u8, n as u8)),
        Some(format!("node-{n}")),
    )
}

pub fn event(tenant: u32, n: u16, kind: EventKind, severity: Severity, time_ms: u64) -> Record {
    Record::Event(Event {
        id: EventId::from_u128(u128::from(time_ms) << 32 | u128::from(n)),
        time_ms,
        tenant: TenantId(tenant),
        subject: Subject::Node(node(n)),
        kind,
        severity,
        details: format!("node {n} at {time_ms}"),
    })
}

pub fn node_down(tenant: u32, n: u16, time_ms: u64) -> Record {
    event(tenant, n, EventKind::NodeDown, Severity::Major, time_ms)
}

pub fn metrics(tenant: u32, n: u16, time_ms: u64) -> Record {
    let class = ClassMetrics {
        requests: 10,
        responses: 9,
        timeouts: 1,
        loss_ppm: 100_000,
        ..Default::default()
    };
    Record::NodeMetrics(NodeMetrics {
        node: node(n),
        tenant: TenantId(tenant),
        interval_start_ms: time_ms,
        interval_ms: 60_000,
        icmp: class.clone(),
        snmp: class,
        tcp: ClassMetrics::default(),
    })
}

pub fn service(tenant: u32, n: u16, name: &str, state: ServiceStatus, checked_ms: u64) -> Record {
    Record::ServiceState(ServiceState {
        service: name.to_string(),
        kind: ServiceKind::Port { port: 443 },
        node: node(n),
        tenant: TenantId(tenant),
        state,
        reason: format!("{state:?}"),
        since_ms: checked_ms,
        checked_ms,
    })
}

pub fn peer_status(peer: &str, time_ms: u64) -> Record {
    Record::PeerStatus(PeerStatus {
        peer: poller(peer),
        role: PeerRole::Poller,
        version: "0.1.0".into(),
        protocol: opha_common::wire::PROTOCOL_VERSION,
        uptime_ms: time_ms,
        region: "eu".into(),
        time_ms,
        nodes: vec![],
        replay_log: ReplayLogStatus::default(),
        kernel: vec![],
    })
}

pub fn daemon(name: &str, state: DaemonState, checked_ms: u64) -> Record {
    Record::DaemonHealth(DaemonHealth {
        daemon: name.into(),
        state,
        pid: Some(42),
        since_ms: checked_ms,
        checked_ms,
        detail: String::new(),
    })
}

/// A read-only connection on a store file.
pub fn inspect(path: &Path) -> Connection {
    Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open read-only")
}

/// The seqs stored in `records` for (poller, epoch), ascending, with repeats if any.
pub fn stored_seqs(path: &Path, poller: &str, epoch: u64) -> Vec<u64> {
    let c = inspect(path);
    let mut st = c
        .prepare("SELECT seq FROM records WHERE poller = ?1 AND epoch = ?2 ORDER BY seq")
        .expect("prepare");
    st.query_map(rusqlite::params![poller, epoch as i64], |r| {
        r.get::<_, i64>(0)
    })
    .expect("query")
    .map(|r| r.expect("row") as u64)
    .collect()
}

/// The ranges rows of (poller, epoch) as stored.
pub fn stored_ranges(path: &Path, poller: &str, epoch: u64) -> Vec<std::ops::Range<u64>> {
    let c = inspect(path);
    let mut st = c
        .prepare(
            "SELECT start_seq, end_seq FROM received_ranges
             WHERE poller = ?1 AND epoch = ?2 ORDER BY start_seq",
        )
        .expect("prepare");
    st.query_map(rusqlite::params![poller, epoch as i64], |r| {
        Ok(r.get::<_, i64>(0)? as u64..r.get::<_, i64>(1)? as u64)
    })
    .expect("query")
    .map(|r| r.expect("row"))
    .collect()
}
