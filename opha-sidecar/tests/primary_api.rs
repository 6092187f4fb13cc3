//! The primary serves its API and Home view over what its receiver stores (issue 5 §1-2, end
//! to end, in-process on 127.0.0.1): the real poller bus sender (a real replay log) streams
//! events of two tenants, a heartbeat and daemon health to a real primary with `[api]`; then,
//! over real HTTP, an operator token sees both tenants, a tenant token only its own (403 for
//! the other), the summary shows the poller's card streaming with its daemons, the live
//! stream delivers newly appended events and never another tenant's, and `/metrics` carries
//! the API's and the hub's counters.

mod bus_support;
mod receiver_support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bus_support::{PollerFile, ReceiverFile, peer, pki, start_bus, stop_bus};
use opha_common::wire::{
    DaemonHealth, DaemonState, Event, EventId, EventKind, NodeRef, PROTOCOL_VERSION, PeerRole,
    PeerStatus, Record, ReplayLogStatus, ServiceKind, ServiceState, ServiceStatus, Severity,
    Subject, TenantId, TenantNodes,
};
use opha_log::{Appended, Log, RecordClass};
use opha_sidecar::config::PollerConfig;
use opha_sidecar::config::receiver::ReceiverFileConfig;
use opha_sidecar::ingest::sink::encode_record;
use opha_sidecar::poller::bus::cursor_name;
use opha_sidecar::receiver::{self, RunningReceiver};
use receiver_support::Pki;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const POLLER: &str = "poller-api";
const PRIMARY: &str = "primary-api";
/// Generous bound for anything to arrive (loopback; no timing is asserted).
const WAIT: Duration = Duration::from_secs(20);

fn api_pki() -> Pki {
    pki(
        "primary-api-",
        &[
            (POLLER, PeerRole::Poller, &[1, 2]),
            (PRIMARY, PeerRole::Primary, &[]),
        ],
    )
}

/// The three tokens: operator, tenant 1, tenant 2.
struct Tokens {
    noc: String,
    t1: String,
    t2: String,
    toml: String,
}

fn tokens() -> Tokens {
    let noc = opha_api::mint("noc", None).unwrap();
    let t1 = opha_api::mint("tenant-one", Some(TenantId(1))).unwrap();
    let t2 = opha_api::mint("tenant-two", Some(TenantId(2))).unwrap();
    let toml = format!("{}{}{}", noc.to_toml(), t1.to_toml(), t2.to_toml());
    Tokens {
        noc: noc.token,
        t1: t1.token,
        t2: t2.token,
        toml,
    }
}

fn receiver_config(root: &Path, tokens: &Tokens) -> ReceiverFileConfig {
    let api = format!("[api]\nlisten = \"127.0.0.1:8080\"\n{}", tokens.toml);
    let cfg = ReceiverFile::new(PRIMARY, "primary")
        .fast_failure()
        .metrics()
        .poller(POLLER, &[1, 2])
        .extra(&api)
        .build(root);
    assert_eq!(cfg.api.as_ref().unwrap().tokens.len(), 3);
    cfg
}

fn poller_config(root: &Path, addr: SocketAddr) -> PollerConfig {
    PollerFile::new(POLLER, "t-api")
        .prefix("198.18.0.0/16", 1)
        .prefix("198.19.0.0/16", 2)
        .fast_failure()
        .receiver(PRIMARY, "primary", addr)
        .build(root)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// An event of `tenant` about one of its nodes; `details` identifies it.
fn event(tenant: u32, n: u64, details: &str) -> Record {
    Record::Event(Event {
        id: EventId::from_u128(u128::from(tenant) << 64 | u128::from(n)),
        time_ms: now_ms(),
        tenant: TenantId(tenant),
        subject: Subject::Node(NodeRef::new(
            0,
            IpAddr::V4(Ipv4Addr::new(
                198,
                17 + tenant as u8,
                0,
                (n % 200) as u8 + 1,
            )),
            None,
        )),
        kind: EventKind::NodeDown,
        severity: Severity::Major,
        details: details.to_string(),
    })
}

fn heartbeat() -> Record {
    Record::PeerStatus(PeerStatus {
        peer: peer(POLLER),
        role: PeerRole::Poller,
        version: "0.1.0".into(),
        protocol: PROTOCOL_VERSION,
        uptime_ms: 1000,
        region: "lab".into(),
        time_ms: now_ms(),
        nodes: vec![
            TenantNodes {
                tenant: TenantId(1),
                nodes: 3,
            },
            TenantNodes {
                tenant: TenantId(2),
                nodes: 2,
            },
        ],
        replay_log: ReplayLogStatus::default(),
        kernel: Vec::new(),
    })
}

fn daemon(name: &str, state: DaemonState) -> Record {
    Record::DaemonHealth(DaemonHealth {
        daemon: name.into(),
        state,
        pid: None,
        since_ms: now_ms(),
        checked_ms: now_ms(),
        detail: "test".into(),
    })
}

fn service(tenant: u32, name: &str) -> Record {
    Record::ServiceState(ServiceState {
        service: name.into(),
        kind: ServiceKind::Port { port: 22 },
        node: NodeRef::new(
            0,
            IpAddr::V4(Ipv4Addr::new(198, 17 + tenant as u8, 0, 9)),
            None,
        ),
        tenant: TenantId(tenant),
        state: ServiceStatus::Down,
        reason: "refused".into(),
        since_ms: now_ms(),
        checked_ms: now_ms(),
    })
}

fn append(log: &Log, records: &[Record]) -> u64 {
    let mut last = 0;
    for r in records {
        let class = match r {
            Record::Event(_) => RecordClass::Event,
            _ => RecordClass::Metric,
        };
        match log.append(class, &encode_record(r).unwrap()).unwrap() {
            Appended::Durable(seq) => last = seq,
            Appended::Thinned => panic!("thinned"),
        }
    }
    last + 1
}

async fn wait_for(what: &str, f: impl FnMut() -> bool) {
    bus_support::wait_for(what, WAIT, f).await;
}

/// One GET over a fresh connection: (status, body).
async fn get(addr: SocketAddr, target: &str, token: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!("GET {target} HTTP/1.1\r\nHost: test\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("answer in time")
        .unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status");
    (status, body.to_string())
}

async fn get_json(addr: SocketAddr, target: &str, token: &str) -> Value {
    let (status, body) = get(addr, target, Some(token)).await;
    assert_eq!(status, 200, "GET {target}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Every event stored for the token, following `next`.
async fn all_events(addr: SocketAddr, token: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut target = "/api/v1/events?limit=7".to_string();
    loop {
        let page = get_json(addr, &target, token).await;
        out.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next"].as_str() {
            Some(c) => target = format!("/api/v1/events?limit=7&cursor={c}"),
            None => return out,
        }
    }
}

/// An open `/api/v1/live` stream: its (event, data) frames as they come.
struct Live {
    stream: TcpStream,
    raw: String,
    frames: Vec<(String, Value)>,
}

impl Live {
    async fn open(addr: SocketAddr, token: &str) -> Live {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET /api/v1/live HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut live = Live {
            stream,
            raw: String::new(),
            frames: Vec::new(),
        };
        live.until("the hello frame", |f| f.0 == "hello").await;
        assert!(live.raw.starts_with("HTTP/1.1 200"), "{}", live.raw);
        live
    }

    /// Reads until a frame satisfies `f` (bounded by [`WAIT`]).
    async fn until(&mut self, what: &str, f: impl Fn(&(String, Value)) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(x) = self.frames.iter().find(|x| f(x)) {
                return x.1.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "live stream: timed out waiting for {what}");
            let mut buf = [0u8; 16 * 1024];
            let n = tokio::time::timeout(left, self.stream.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("live stream: timed out waiting for {what}"))
                .unwrap();
            assert!(n > 0, "live stream closed while waiting for {what}");
            self.raw.push_str(std::str::from_utf8(&buf[..n]).unwrap());
            self.parse();
        }
    }

    /// Frames from the raw text (chunk-size lines of the chunked body are skipped; each SSE
    /// frame is written as one chunk, so its lines are never split).
    fn parse(&mut self) {
        self.frames.clear();
        let mut name: Option<String> = None;
        for line in self.raw.split('\n').map(|l| l.trim_end_matches('\r')) {
            if let Some(n) = line.strip_prefix("event: ") {
                name = Some(n.to_string());
            } else if let Some(d) = line.strip_prefix("data: ")
                && let Some(n) = name.take()
                && let Ok(v) = serde_json::from_str(d)
            {
                self.frames.push((n, v));
            }
        }
    }

    fn events(&self) -> Vec<&Value> {
        self.frames
            .iter()
            .filter(|f| f.0 == "event" || f.0 == "service")
            .map(|f| &f.1)
            .collect()
    }
}

fn is_event(details: &'static str) -> impl Fn(&(String, Value)) -> bool {
    move |f| f.0 == "event" && f.1["event"]["details"] == details
}

fn card<'a>(summary: &'a Value, peer: &str) -> Option<&'a Value> {
    summary["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["peer"] == peer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_serves_api_home_and_live_stream_per_tenant() {
    let pki = api_pki();
    let tokens = tokens();
    let rx: RunningReceiver = receiver::start(&receiver_config(&pki.root, &tokens))
        .await
        .unwrap();
    let api = rx.api_addr.expect("[api] serves");
    let metrics = rx.metrics_addr.expect("metrics serve");

    // The poller's log: 5 events of tenant 1, 4 of tenant 2, a heartbeat, two daemons.
    let cfg = poller_config(&pki.root, rx.addr);
    let log = Arc::new(Log::open(cfg.log_config()).unwrap());
    let mut records: Vec<Record> = (0..5).map(|n| event(1, n, &format!("t1-{n}"))).collect();
    records.extend((0..4).map(|n| event(2, n, &format!("t2-{n}"))));
    records.push(heartbeat());
    records.push(daemon("ophad", DaemonState::Up));
    records.push(daemon("nmis9d", DaemonState::Down));
    let end = append(&log, &records);
    let (bus, stop) = start_bus(&cfg, &log);
    let name = cursor_name(&peer(PRIMARY));
    wait_for("every record acknowledged", || {
        log.cursor(&name) == Some(end)
    })
    .await;

    // Without a token: 401.
    let (status, _) = get(api, "/api/v1/events", None).await;
    assert_eq!(status, 401);

    // The operator sees both tenants' events.
    let all = all_events(api, &tokens.noc).await;
    let mut seen: Vec<String> = all
        .iter()
        .map(|e| e["event"]["details"].as_str().unwrap().to_string())
        .collect();
    seen.sort();
    let mut want: Vec<String> = (0..5).map(|n| format!("t1-{n}")).collect();
    want.extend((0..4).map(|n| format!("t2-{n}")));
    assert_eq!(seen, want, "operator's events");
    for e in &all {
        assert_eq!(e["poller"], POLLER);
    }

    // A tenant token sees its own only, and is refused the other tenant.
    let t1 = all_events(api, &tokens.t1).await;
    assert_eq!(t1.len(), 5);
    assert!(t1.iter().all(|e| e["tenant"] == 1), "{t1:?}");
    let (status, body) = get(api, "/api/v1/events?tenant=2", Some(&tokens.t1)).await;
    assert_eq!(status, 403, "{body}");
    let t2 = all_events(api, &tokens.t2).await;
    assert_eq!(t2.len(), 4);
    assert!(t2.iter().all(|e| e["tenant"] == 2), "{t2:?}");

    // The summary: the poller's card streaming, with its daemons and node counts; this
    // primary's own card is local.
    let summary = get_json(api, "/api/v1/summary", &tokens.noc).await;
    let c = card(&summary, POLLER).unwrap_or_else(|| panic!("no poller card: {summary}"));
    assert_eq!(c["stream"]["state"], "streaming", "{c}");
    assert_eq!(c["role"], "poller");
    assert_eq!(c["region"], "lab");
    assert_eq!(c["nodes_total"], 5);
    assert_eq!(c["up"], true);
    let daemons: Vec<(String, String)> = c["daemons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["daemon"].as_str().unwrap().to_string(),
                d["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(daemons.contains(&("ophad".into(), "up".into())), "{c}");
    assert!(daemons.contains(&("nmis9d".into(), "down".into())), "{c}");
    let own = card(&summary, PRIMARY).unwrap_or_else(|| panic!("no own card: {summary}"));
    assert_eq!(own["stream"]["state"], "local", "{own}");
    assert_eq!(summary["kpi"]["nodes_monitored"], 5);
    // A tenant's summary: the poller's card with that tenant's counts only.
    let s1 = get_json(api, "/api/v1/summary", &tokens.t1).await;
    let c1 = card(&s1, POLLER).unwrap_or_else(|| panic!("no poller card: {s1}"));
    assert_eq!(c1["nodes_total"], 3, "{c1}");
    assert!(card(&s1, PRIMARY).is_none(), "{s1}");

    // Live: three streams open; tenant 2's event and service state go first, then
    // tenant 1's event. Each record's publication is complete before the next job's, and a
    // channel is FIFO: once tenant 1's stream shows its event, tenant 2's would be ahead of it.
    let mut live_noc = Live::open(api, &tokens.noc).await;
    let mut live_t1 = Live::open(api, &tokens.t1).await;
    let mut live_t2 = Live::open(api, &tokens.t2).await;
    append(&log, &[event(2, 100, "live-t2"), service(2, "ssh-t2")]);
    live_noc
        .until("tenant 2's live event", is_event("live-t2"))
        .await;
    live_t2.until("its live event", is_event("live-t2")).await;
    live_t2
        .until("its service state", |f| {
            f.0 == "service" && f.1["state"]["service"] == "ssh-t2"
        })
        .await;
    append(&log, &[event(1, 100, "live-t1"), heartbeat()]);
    live_t1.until("its live event", is_event("live-t1")).await;
    live_noc
        .until("tenant 1's live event", is_event("live-t1"))
        .await;
    let peer1 = live_t1
        .until("the poller's card update", |f| {
            f.0 == "peer" && f.1["peer"] == POLLER && f.1["nodes_total"].is_u64()
        })
        .await;
    assert_eq!(peer1["nodes_total"], 3, "tenant 1's counts only: {peer1}");
    assert_eq!(peer1["nodes"].as_array().unwrap().len(), 1, "{peer1}");
    for e in live_t1.events() {
        assert_eq!(e["tenant"], 1, "tenant 1's stream carried {e}");
    }
    assert!(!live_t1.raw.contains("live-t2"), "{}", live_t1.raw);
    assert!(!live_t1.raw.contains("ssh-t2"), "{}", live_t1.raw);
    for e in live_t2.events() {
        assert_eq!(e["tenant"], 2, "tenant 2's stream carried {e}");
    }

    // /metrics carries the API's and the hub's counters: exactly one 403 and one 401 so far,
    // three live streams open.
    let (status, text) = get(metrics, "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(text.contains("opha_api_requests_total "), "{text}");
    assert!(text.contains("opha_api_forbidden_total 1\n"), "{text}");
    assert!(text.contains("opha_api_unauthorized_total 1\n"), "{text}");
    assert!(text.contains("opha_live_subscribers 3\n"), "{text}");
    assert!(text.contains("opha_live_published_total "), "{text}");
    assert!(text.contains("opha_live_lagged_total 0\n"), "{text}");

    // The poller goes away: its card says disconnected, live and in the summary.
    stop_bus(bus, stop).await;
    live_noc
        .until("the poller disconnected", |f| {
            f.0 == "peer" && f.1["peer"] == POLLER && f.1["stream"]["state"] == "disconnected"
        })
        .await;
    let summary = get_json(api, "/api/v1/summary", &tokens.noc).await;
    let c = card(&summary, POLLER).unwrap();
    assert_eq!(c["stream"]["state"], "disconnected", "{c}");

    drop((live_noc, live_t1, live_t2));
    tokio::time::timeout(WAIT, rx.shutdown())
        .await
        .expect("the primary stops");
}

/// `[api]` in a receiver's file: absent means not served, present defaults to loopback:8080,
/// and every error names its key.
#[test]
fn api_config_errors_name_the_key() {
    let base = r#"
peer_id = "primary-1"
role = "primary"
[tls]
certificate = "c.pem"
key = "c.key"
ca = "ca.pem"
[store]
dir = "store"
[[poller]]
id = "poller-1"
tenants = [1]
"#;
    let parse = |extra: &str| {
        ReceiverFileConfig::from_toml(&format!("{base}{extra}"), "t.toml", Path::new("/etc"))
    };
    let keys = |extra: &str| -> Vec<String> {
        parse(extra)
            .unwrap_err()
            .problems()
            .iter()
            .map(|p| p.key.clone())
            .collect()
    };
    assert_eq!(parse("").unwrap().api, None);
    let on = parse("[api]\n").unwrap();
    let api = on.api.as_ref().unwrap();
    assert_eq!(api.listen, Some(SocketAddr::from(([127, 0, 0, 1], 8080))));
    assert_eq!(api.api_config(), opha_api::ApiConfig::default());
    // The effective config parses back to itself.
    let again = ReceiverFileConfig::from_toml(&on.to_toml().unwrap(), "t", Path::new("/")).unwrap();
    assert_eq!(again, on);
    assert_eq!(
        parse("[api]\nlisten = \"off\"\n")
            .unwrap()
            .api
            .unwrap()
            .listen,
        None
    );

    let minted = opha_api::mint("acme", Some(TenantId(7))).unwrap();
    let with_token = parse(&format!("[api]\n{}", minted.to_toml())).unwrap();
    assert_eq!(with_token.api.unwrap().tokens, vec![minted.entry.clone()]);

    assert_eq!(keys("[api]\ncolour = 1\n"), ["api.colour"]);
    assert_eq!(keys("[api]\nlisten = \"nowhere\"\n"), ["api.listen"]);
    assert_eq!(keys("[api]\nlisten = \"127.0.0.1:0\"\n"), ["api.listen"]);
    assert_eq!(
        keys("[metrics]\nlisten = \"127.0.0.1:9000\"\n[api]\nlisten = \"127.0.0.1:9000\"\n"),
        ["api.listen"]
    );
    assert_eq!(keys("[api]\nmax_page = 0\n"), ["api.max_page"]);
    let no_tenant = minted.to_toml().replace("tenant = 7\n", "");
    assert_eq!(
        keys(&format!("[api]\n{no_tenant}")),
        ["api.token[0].tenant"]
    );
    let bad_hash = minted.to_toml().replace(&minted.entry.sha256, "not-a-hash");
    assert_eq!(keys(&format!("[api]\n{bad_hash}")), ["api.token[0].sha256"]);
    let role = minted.to_toml().replace("\"tenant\"", "\"admin\"");
    assert_eq!(keys(&format!("[api]\n{role}")), ["api.token[0].role"]);
}
