//! The Home view in a real browser (issue 5 §5): Debian's headless Chromium, driven through
//! chromedriver, pastes a token, connects, and watches the page follow the live stream.
//!
//! The scenario ([`scenario`]) only talks to a [`HomeTarget`]: where the page is, which
//! tokens to paste, what it should show at first, and two actions (stop a daemon on a
//! poller, take a node down). [`InProcess`] serves `opha_api` over a seeded store and
//! publishes into its `LiveHub` as a receiver would; a primary fed by a real poller in
//! network namespaces implements the same trait by stopping a real daemon and taking a
//! real node down.

use anyhow::{Context as _, Result, anyhow, ensure};
use opha_api::live::{LiveConfig, LiveHub, PeerView, StreamState};
use opha_api::{Api, ApiConfig, mint};
use opha_common::wire::{
    DaemonHealth, DaemonState, Event, EventId, EventKind, NodeRef, PeerId, PeerRole, PeerStatus,
    Record, ReplayLogStatus, ServiceKind, ServiceState, ServiceStatus, Severity, Subject, TenantId,
    TenantNodes,
};
use opha_store::{Store, StoreConfig};
use opha_tests::browser::{Browser, browser_paths};
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a change on a peer may take to show on the page (the issue's bound).
const LIVE: Duration = Duration::from_secs(5);
/// Loading the page and its first snapshot.
const LOAD: Duration = Duration::from_secs(20);
/// `--down` of home.css: the red of a stopped daemon's light.
const RED: &str = "rgb(217, 45, 32)";
const GREEN: &str = "rgb(31, 157, 85)";

/// What the page should show right after connecting as the operator.
struct Expect {
    /// Every card the operator sees, with the tenants each carries nodes for (none: only
    /// operators see it, e.g. the primary itself).
    peers: Vec<(String, Vec<u32>)>,
    /// A daemon already stopped on a poller: its light is red from the start.
    stopped: (String, String),
    /// A daemon running on a poller (its light green) that the test stops.
    to_stop: (String, String),
    /// Two tenants with their own tokens; the second is the one the test reconnects as.
    tenants: [u32; 2],
    /// Exact KPIs when the target knows them (the in-process seed does).
    kpi: Option<Kpi>,
}

#[derive(Clone, Copy, Debug)]
struct Kpi {
    peers_up: u64,
    peers_total: u64,
    nodes: u64,
    events_hour: u64,
    services: [u64; 3],
}

/// The system under test, as the browser scenario sees it.
trait HomeTarget {
    /// The page's URL (`http://127.0.0.1:PORT/`).
    fn url(&self) -> String;
    fn operator_token(&self) -> &str;
    fn tenant_token(&self, tenant: u32) -> &str;
    fn expect(&self) -> &Expect;
    /// Stops `daemon` on `peer`; returns once the change is made (not once it is visible).
    fn stop_daemon(&mut self, peer: &str, daemon: &str) -> Result<()>;
    /// Takes one of `tenant`'s nodes down; returns the node as the page keys it (`vlan@addr`).
    fn take_node_down(&mut self, tenant: u32) -> Result<String>;
}

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

const DAEMONS: [&str; 6] = [
    "opchartsd",
    "opeventsd",
    "opconfigd",
    "nmis9d",
    "omkd",
    "ophad",
];

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

/// The light of `daemon` on `peer`'s card.
fn light(peer: &str, daemon: &str) -> String {
    format!(r#"#peers article[data-peer="{peer}"] li.light[data-daemon="{daemon}"]"#)
}

/// The color the light's dot is painted in (its `::before`).
fn light_color(b: &Browser, peer: &str, daemon: &str) -> Result<String> {
    let v = b.eval(
        "const e = document.querySelector(arguments[0]);\
         return e ? getComputedStyle(e, '::before').backgroundColor : null;",
        &[json!(light(peer, daemon))],
    )?;
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no light {daemon} on {peer}"))
}

fn kpi(b: &Browser, id: &str) -> Result<Option<u64>> {
    let v = b.attrs(&format!("#{id}"), "data-value")?;
    Ok(v.first()
        .cloned()
        .flatten()
        .and_then(|s| s.parse::<u64>().ok()))
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The card ids shown, sorted.
fn cards(b: &Browser) -> Result<Vec<String>> {
    Ok(sorted(
        b.attrs("#peers article.peer", "data-peer")?
            .into_iter()
            .flatten()
            .collect(),
    ))
}

/// Pastes `token`, connects, and waits for the snapshot and the live stream.
fn connect(b: &Browser, token: &str, scope: &str) -> Result<()> {
    b.type_into("#token", token)?;
    b.click("#connect")?;
    b.wait_attr("#scope", "data-scope", scope, LOAD)?;
    b.wait_attr("#app", "data-ready", "true", LOAD)?;
    b.wait_attr("#live-status", "data-live", "live", LOAD)?;
    Ok(())
}

fn scenario(t: &mut dyn HomeTarget, b: &Browser) -> Result<()> {
    b.goto(&t.url())?;
    b.wait_attr("#live-status", "data-live", "idle", LOAD)?;
    ensure!(
        b.count("#peers article.peer")? == 0,
        "cards before a token was given"
    );

    // ---- the operator's consolidated view ----
    connect(b, t.operator_token(), "operator")?;
    let exp = t.expect();
    let want: Vec<String> = sorted(exp.peers.iter().map(|(p, _)| p.clone()).collect());
    b.wait_count("#peers article.peer", want.len(), LOAD)?;
    ensure!(
        cards(b)? == want,
        "cards {:?}, expected {want:?}",
        cards(b)?
    );
    for (p, _) in &exp.peers {
        let card = format!(r#"#peers article[data-peer="{p}"]"#);
        ensure!(
            b.text(&format!("{card} .peer-id"))? == *p,
            "card title of {p}"
        );
        ensure!(
            b.attrs(&card, "data-up")? == [Some("true".into())],
            "{p} is not shown up"
        );
        ensure!(
            b.count(&format!("{card} li.light"))? >= DAEMONS.len(),
            "{p}: fewer lights than daemons"
        );
    }
    // Every poller's heartbeat is fresh.
    for (p, tenants) in &exp.peers {
        if !tenants.is_empty() {
            let words = b.text(&format!(r#"#peers article[data-peer="{p}"] .heartbeat"#))?;
            ensure!(words == "a few seconds ago", "{p}: heartbeat {words:?}");
        }
    }
    let (sp, sd) = exp.stopped.clone();
    b.wait_attr(&light(&sp, &sd), "data-state", "down", LIVE)?;
    ensure!(
        light_color(b, &sp, &sd)? == RED,
        "stopped {sd} on {sp} is not red"
    );
    let (lp, ld) = exp.to_stop.clone();
    b.wait_attr(&light(&lp, &ld), "data-state", "up", LIVE)?;
    ensure!(
        light_color(b, &lp, &ld)? == GREEN,
        "running {ld} on {lp} is not green"
    );
    let others_up = |b: &Browser, peer: &str, except: &[&str]| -> Result<()> {
        for d in DAEMONS.iter().filter(|d| !except.contains(d)) {
            let st = b.attrs(&light(peer, d), "data-state")?;
            ensure!(
                st == [Some("up".into())],
                "{peer}: {d} shows {st:?}, expected up"
            );
        }
        Ok(())
    };
    others_up(b, &sp, &[&sd])?;
    if let Some(k) = exp.kpi {
        for (id, v) in [
            ("kpi-peers-up", k.peers_up),
            ("kpi-peers-total", k.peers_total),
            ("kpi-nodes-monitored", k.nodes),
            ("kpi-events-hour", k.events_hour),
            ("kpi-services-up", k.services[0]),
            ("kpi-services-degraded", k.services[1]),
            ("kpi-services-down", k.services[2]),
        ] {
            b.wait_attr(&format!("#{id}"), "data-value", &v.to_string(), LIVE)
                .with_context(|| format!("KPI {id}"))?;
        }
        ensure!(b.text("#kpi-nodes-monitored")? == k.nodes.to_string());
    }
    let [t_a, t_b] = exp.tenants;
    ensure!(
        sorted(
            b.attrs("#tenants-body tr", "data-tenant")?
                .into_iter()
                .flatten()
                .collect()
        ) == sorted(vec![t_a.to_string(), t_b.to_string()]),
        "tenant rows"
    );

    // ---- a daemon stops: its light turns red live, the others keep their state ----
    let events_before = kpi(b, "kpi-events-hour")?.unwrap_or(0);
    t.stop_daemon(&lp, &ld)?;
    b.wait_attr(&light(&lp, &ld), "data-state", "down", LIVE)
        .context("the stopped daemon's light did not turn red in time")?;
    ensure!(light_color(b, &lp, &ld)? == RED, "{ld} on {lp} is not red");
    others_up(b, &lp, &[&ld])?;

    // ---- a node goes down: the event appears in the live list ----
    let down = t.take_node_down(t_a)?;
    let row = format!(r#"#events li[data-kind="node_down"][data-node="{down}"]"#);
    b.wait_attr(&row, "data-tenant", &t_a.to_string(), LIVE)
        .context("the node_down event did not appear live")?;
    b.wait_for(
        "#kpi-events-hour",
        "data-value",
        |v| v.and_then(|v| v.parse::<u64>().ok()) == Some(events_before + 1),
        LIVE,
    )?;
    ensure!(
        b.attrs("#events li", "data-event-id")?.len() > 1,
        "the stored events are listed too"
    );
    let shot = b.screenshot("home-browser")?;
    eprintln!("screenshot: {}", shot.display());

    // ---- a tenant token: only that tenant's peers and events ----
    connect(b, t.tenant_token(t_b), &format!("tenant-{t_b}"))?;
    let exp = t.expect();
    let theirs: Vec<String> = sorted(
        exp.peers
            .iter()
            .filter(|(_, ts)| ts.contains(&t_b))
            .map(|(p, _)| p.clone())
            .collect(),
    );
    b.wait_count("#peers article.peer", theirs.len(), LOAD)?;
    ensure!(
        cards(b)? == theirs,
        "tenant {t_b} sees cards {:?}",
        cards(b)?
    );
    let rows: Vec<String> = b
        .attrs("#tenants-body tr", "data-tenant")?
        .into_iter()
        .flatten()
        .collect();
    ensure!(
        rows == [t_b.to_string()],
        "tenant {t_b} sees tenant rows {rows:?}"
    );
    let offered: Vec<String> = b
        .attrs("#f-tenant option", "value")?
        .into_iter()
        .flatten()
        .filter(|v| !v.is_empty())
        .collect();
    ensure!(
        offered == [t_b.to_string()],
        "tenant {t_b}'s filter offers tenants {offered:?}"
    );
    let tenants_of = |b: &Browser| -> Result<Vec<String>> {
        Ok(b.attrs("#events li", "data-tenant")?
            .into_iter()
            .flatten()
            .collect())
    };
    let evs = tenants_of(b)?;
    ensure!(!evs.is_empty(), "tenant {t_b} sees none of its events");
    ensure!(
        evs.iter().all(|x| *x == t_b.to_string()),
        "tenant {t_b} sees events of tenants {evs:?}"
    );
    ensure!(b.count(&row)? == 0, "tenant {t_b} sees {t_a}'s node_down");
    let svc: Vec<String> = b
        .attrs("#services-body tr", "data-tenant")?
        .into_iter()
        .flatten()
        .collect();
    ensure!(
        svc.iter().all(|x| *x == t_b.to_string()),
        "tenant {t_b} sees services of tenants {svc:?}"
    );

    // Live: the other tenant's node goes down first, then this tenant's; once this one is
    // shown, the other must not be (one stream, in order).
    let other = t.take_node_down(t_a)?;
    let own = t.take_node_down(t_b)?;
    b.wait_attr(
        &format!(r#"#events li[data-kind="node_down"][data-node="{own}"]"#),
        "data-tenant",
        &t_b.to_string(),
        LIVE,
    )
    .context("the tenant's own node_down did not appear live")?;
    let evs = tenants_of(b)?;
    ensure!(
        evs.iter().all(|x| *x == t_b.to_string()),
        "tenant {t_b} sees events of tenants {evs:?} (other tenant's node {other})"
    );
    let shot = b.screenshot("home-browser-tenant")?;
    eprintln!("screenshot: {}", shot.display());
    Ok(())
}

#[test]
fn home_view_in_a_browser() {
    let Some((chromium, driver)) = browser_paths("home_view_in_a_browser") else {
        return;
    };
    // Declared first, dropped last: the browser goes before the server it talks to.
    let mut target = InProcess::start().expect("in-process primary");
    let browser = Browser::start(&chromium, &driver).expect("browser starts");
    if let Err(e) = scenario(&mut target, &browser) {
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
