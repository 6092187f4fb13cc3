//! The Home view in a real browser (issue 5 §5): Debian's headless Chromium, driven through
//! chromedriver, pastes a token, connects, and watches the page follow the live stream.
//!
//! The scenario (`opha_tests::home::scenario`) only talks to a `HomeTarget`: where the page
//! is, which tokens to paste, what it should show at first, and two actions (stop a daemon
//! on a poller, take a node down). [`InProcess`] serves `opha_api` over a seeded store and
//! publishes into its `LiveHub` as a receiver would; `home_browser_real.rs` implements the
//! same trait with a primary fed by a real poller in network namespaces.

use anyhow::Result;
use opha_api::live::{LiveConfig, LiveHub, PeerView, StreamState};
use opha_api::{Api, ApiConfig, mint};
use opha_common::wire::{
    DaemonHealth, DaemonState, Event, EventId, EventKind, NodeRef, PeerId, PeerRole, PeerStatus,
    Record, ReplayLogStatus, ServiceKind, ServiceState, ServiceStatus, Severity, Subject, TenantId,
    TenantNodes,
};
use opha_store::{Store, StoreConfig};
use opha_tests::browser::{Browser, browser_paths};
use opha_tests::home::{DAEMONS, Expect, HomeTarget, Kpi, LIVE, scenario};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// Node `k` of tenant `t`: VLAN 10, 198.18.t.k.
fn node(t: u32, k: u8) -> NodeRef {
    NodeRef::new(
        10,
        IpAddr::V4(Ipv4Addr::new(198, 18, t as u8, k)),
        Some(format!("t{t}-n{k}")),
    )
}

fn event(t: u32, node: NodeRef, kind: EventKind, time_ms: u64, n: u64) -> Event {
    Event {
        id: EventId::from_u128(u128::from(t) << 96 | u128::from(time_ms) << 32 | u128::from(n)),
        time_ms,
        tenant: TenantId(t),
        subject: Subject::Node(node),
        kind,
        severity: Severity::Major,
        details: format!("tenant {t} event {n}"),
    }
}

fn service(t: u32, node: NodeRef, name: &str, state: ServiceStatus, now: u64) -> Record {
    Record::ServiceState(ServiceState {
        service: name.into(),
        kind: ServiceKind::Port { port: 443 },
        node,
        tenant: TenantId(t),
        state,
        reason: format!("{state:?}"),
        since_ms: now - 120_000,
        checked_ms: now,
    })
}

fn heartbeat(peer: &str, role: PeerRole, nodes: &[(u32, u32)], now: u64) -> Record {
    Record::PeerStatus(PeerStatus {
        peer: PeerId::new(peer).expect("peer id"),
        role,
        version: "0.1.0".into(),
        protocol: opha_common::wire::PROTOCOL_VERSION,
        uptime_ms: 60_000,
        region: "eu-west".into(),
        time_ms: now,
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

fn health(daemon: &str, state: DaemonState, now: u64) -> DaemonHealth {
    DaemonHealth {
        daemon: daemon.into(),
        state,
        pid: (state == DaemonState::Up).then_some(4242),
        since_ms: now - 60_000,
        checked_ms: now,
        detail: if state == DaemonState::Down {
            "not running".into()
        } else {
            String::new()
        },
    }
}

/// `opha_api` served on 127.0.0.1:0 by a runtime of its own, over a store seeded with two
/// tenants: poller-a carries tenant 1 (5 nodes; opeventsd stopped), poller-b tenant 2
/// (7 nodes; catching up), mirror-a mirrors poller-a, and primary-1 is this primary.
/// Its actions store the record first and then publish it, as the receiver does.
struct InProcess {
    _rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    hub: Arc<LiveHub>,
    url: String,
    operator: String,
    tenant_tokens: Vec<(u32, String)>,
    expect: Expect,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    seq: AtomicU64,
}

impl InProcess {
    fn start() -> Result<InProcess> {
        let dir = tempfile::tempdir()?;
        let store = Arc::new(Store::open(dir.path(), StoreConfig::default())?);
        let now = now_ms();
        let a = PeerId::new("poller-a")?;
        let b = PeerId::new("poller-b")?;
        let m = PeerId::new("mirror-a")?;

        // Tenant 1: 3 events within the hour, https up and ssh down; tenant 2: 2 events,
        // dns degraded.
        for (t, poller, n_events) in [(1u32, &a, 3u64), (2, &b, 2)] {
            let mut recs: Vec<(u64, Record)> = (0..n_events)
                .map(|i| {
                    let kind = if i % 2 == 0 {
                        EventKind::NodeDown
                    } else {
                        EventKind::NodeUp
                    };
                    let time = now - 600_000 + i * 1000;
                    (i, Record::Event(event(t, node(t, 1), kind, time, i)))
                })
                .collect();
            let services: &[(&str, ServiceStatus)] = if t == 1 {
                &[("https", ServiceStatus::Up), ("ssh", ServiceStatus::Down)]
            } else {
                &[("dns", ServiceStatus::Degraded)]
            };
            for (k, (name, st)) in services.iter().enumerate() {
                recs.push((
                    100 + k as u64,
                    service(t, node(t, 2 + k as u8), name, *st, now),
                ));
            }
            store.tenant(TenantId(t))?.commit_batch(poller, 1, &recs)?;
        }
        let sys = store.system()?;
        for (peer, role, nodes, down) in [
            (&a, PeerRole::Poller, &[(1u32, 5u32)][..], Some("opeventsd")),
            (&b, PeerRole::Poller, &[(2, 7)][..], None),
            (&m, PeerRole::Mirror, &[(1, 5)][..], None),
        ] {
            let mut recs = vec![(1u64, heartbeat(peer.as_str(), role, nodes, now))];
            for (i, d) in DAEMONS.iter().enumerate() {
                let st = if Some(*d) == down {
                    DaemonState::Down
                } else {
                    DaemonState::Up
                };
                recs.push((2 + i as u64, Record::DaemonHealth(health(d, st, now))));
            }
            sys.commit_batch(peer, 1, &recs)?;
        }

        let hub = LiveHub::new(LiveConfig::default());
        hub.set_link(&a, PeerRole::Poller, StreamState::Streaming);
        hub.set_link(
            &b,
            PeerRole::Poller,
            StreamState::CatchingUp { lag_records: 42 },
        );
        hub.set_link(&m, PeerRole::Mirror, StreamState::Streaming);
        let mut own = PeerView::new("primary-1");
        own.role = Some(PeerRole::Primary);
        own.region = Some("eu-west".into());
        own.stream = Some(StreamState::Local);
        hub.publish_peer(own);

        let op = mint("noc", None)?;
        let mut cfg = ApiConfig::default();
        cfg.tokens.push(op.entry.clone());
        let mut tenant_tokens = Vec::new();
        for t in [1u32, 2] {
            let m = mint(&format!("portal-{t}"), Some(TenantId(t)))?;
            cfg.tokens.push(m.entry.clone());
            tenant_tokens.push((t, m.token));
        }
        let api = Arc::new(Api::new(store.clone(), cfg)?.with_live(hub.clone()));

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        rt.spawn(opha_api::server::serve(api, listener, async {
            let _ = rx.await;
        }));

        let peers = vec![
            ("primary-1".to_string(), vec![]),
            ("poller-a".to_string(), vec![1]),
            ("poller-b".to_string(), vec![2]),
            ("mirror-a".to_string(), vec![1]),
        ];
        Ok(InProcess {
            _rt: rt,
            _dir: dir,
            store,
            hub,
            url: format!("http://{addr}/"),
            operator: op.token,
            tenant_tokens,
            expect: Expect {
                peers,
                stopped: ("poller-a".into(), "opeventsd".into()),
                to_stop: ("poller-b".into(), "nmis9d".into()),
                tenants: [1, 2],
                kpi: Some(Kpi {
                    peers_up: 4,
                    peers_total: 4,
                    nodes: 12,
                    events_hour: 5,
                    services: [1, 1, 1],
                }),
                node_down_within: LIVE,
                shot: "home-browser".into(),
                operator_extra_tenants: vec![],
            },
            stop: Some(tx),
            seq: AtomicU64::new(1000),
        })
    }
}

impl HomeTarget for InProcess {
    fn url(&self) -> String {
        self.url.clone()
    }

    fn operator_token(&self) -> &str {
        &self.operator
    }

    fn tenant_token(&self, tenant: u32) -> &str {
        self.tenant_tokens
            .iter()
            .find(|(t, _)| *t == tenant)
            .map(|(_, tok)| tok.as_str())
            .expect("a token for every tenant of the seed")
    }

    fn expect(&self) -> &Expect {
        &self.expect
    }

    fn stop_daemon(&mut self, peer: &str, daemon: &str) -> Result<()> {
        let peer = PeerId::new(peer)?;
        let h = health(daemon, DaemonState::Down, now_ms());
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        self.store
            .system()?
            .commit_batch(&peer, 1, &[(seq, Record::DaemonHealth(h.clone()))])?;
        self.hub.publish_daemon(&peer, &h);
        Ok(())
    }

    fn take_node_down(&mut self, tenant: u32) -> Result<String> {
        let poller = PeerId::new(if tenant == 1 { "poller-a" } else { "poller-b" })?;
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let n = node(tenant, 77);
        let key = format!("{}@{}", n.vlan, n.addr);
        let e = event(tenant, n, EventKind::NodeDown, now_ms(), seq);
        self.store.tenant(TenantId(tenant))?.commit_batch(
            &poller,
            1,
            &[(seq, Record::Event(e.clone()))],
        )?;
        self.hub.publish_event(&poller, 1, seq, &e);
        Ok(key)
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        // Open live streams are tasks of the runtime: they end when it drops, after this.
    }
}

#[test]
fn home_view_in_a_browser() {
    let Some((chromium, driver)) = browser_paths("home_view_in_a_browser") else {
        return;
    };
    // Declared first, dropped last: the browser goes before the server it talks to.
    let mut target = InProcess::start().expect("in-process primary");
    let browser = Browser::start(&chromium, &driver).expect("browser starts");
    let took = scenario(&mut target, &browser);
    if let Ok(t) = &took {
        eprintln!("home_view_in_a_browser: shown after {t:?}");
    }
    if let Err(e) = took {
        let shot = browser.screenshot("home-browser-failure").ok();
        let log = browser.driver_log();
        let tail: String = log
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        panic!("{e:#}\nscreenshot: {shot:?}\nchromedriver log (tail):\n{tail}");
    }
}
