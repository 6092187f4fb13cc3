//! The live stream: `GET /api/v1/live` over real HTTP on 127.0.0.1 (tenant isolation at
//! the source, authentication, limits, a client that goes away), and the hub's bounds.

mod common;

use common::*;
use opha_api::live::{LiveConfig, LiveHub, LiveItem, LiveMessage, StreamState};
use opha_api::{Api, ApiConfig, PrincipalScope, mint};
use opha_common::wire::{
    DaemonState, Event, EventKind, PeerId, PeerRole, Record, ServiceStatus, Severity, TenantId,
};
use opha_store::{Store, StoreConfig};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Server {
    _dir: tempfile::TempDir,
    addr: SocketAddr,
    hub: Arc<LiveHub>,
    api: Arc<Api>,
    operator: String,
    tenants: Vec<String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    async fn start(live: Option<LiveConfig>) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
        seed(&store);
        let op = mint("noc", None).unwrap();
        let mut cfg = ApiConfig::default();
        cfg.tokens.push(op.entry.clone());
        let mut tenants = Vec::new();
        for t in TENANTS {
            let m = mint(&format!("portal-{t}"), Some(TenantId(t))).unwrap();
            cfg.tokens.push(m.entry.clone());
            tenants.push(m.token);
        }
        let hub = LiveHub::new(live.clone().unwrap_or_default());
        let mut api = Api::new(Arc::new(store), cfg).unwrap();
        if live.is_some() {
            api = api.with_live(hub.clone());
        }
        let api = Arc::new(api);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(opha_api::server::serve(api.clone(), listener, async {
            let _ = rx.await;
        }));
        Server {
            _dir: dir,
            addr,
            hub,
            api,
            operator: op.token,
            tenants,
            stop: Some(tx),
            task: Some(task),
        }
    }

    async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .expect("server stops")
                .expect("server task");
        }
    }
}

/// One open live stream, read as raw bytes (chunked framing removed).
struct Stream {
    sock: TcpStream,
    raw: Vec<u8>,
    status: u16,
    head: String,
    /// The de-chunked body read so far.
    body: String,
}

impl Stream {
    async fn open(addr: SocketAddr, token: Option<&str>, extra: &str) -> Stream {
        Self::open_with(TcpStream::connect(addr).await.unwrap(), token, extra).await
    }

    async fn open_with(mut sock: TcpStream, token: Option<&str>, target_extra: &str) -> Stream {
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let req = format!(
            "GET /api/v1/live{target_extra} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\
             Accept: text/event-stream\r\n\r\n"
        );
        sock.write_all(req.as_bytes()).await.unwrap();
        let mut s = Stream {
            sock,
            raw: Vec::new(),
            status: 0,
            head: String::new(),
            body: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !s.raw.windows(4).any(|w| w == b"\r\n\r\n") {
            assert!(s.read_some(deadline).await, "no response head");
        }
        let at = s.raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        s.head = String::from_utf8_lossy(&s.raw[..at]).to_string();
        s.raw.drain(..at + 4);
        s.status = s
            .head
            .split_whitespace()
            .nth(1)
            .and_then(|x| x.parse().ok())
            .unwrap();
        s
    }

    /// Reads once (false on EOF or at the deadline).
    async fn read_some(&mut self, deadline: Instant) -> bool {
        let mut buf = vec![0u8; 65536];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.sock.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                self.raw.extend_from_slice(&buf[..n]);
                true
            }
            _ => false,
        }
    }

    /// Moves complete chunks from `raw` to `body`.
    fn dechunk(&mut self) {
        if !self
            .head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            let raw = std::mem::take(&mut self.raw);
            self.body.push_str(&String::from_utf8_lossy(&raw));
            return;
        }
        loop {
            let Some(eol) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size = usize::from_str_radix(std::str::from_utf8(&self.raw[..eol]).unwrap(), 16)
                .expect("chunk size");
            if self.raw.len() < eol + 2 + size + 2 {
                return;
            }
            let data = self.raw[eol + 2..eol + 2 + size].to_vec();
            self.body.push_str(std::str::from_utf8(&data).unwrap());
            self.raw.drain(..eol + 2 + size + 2);
        }
    }

    /// Reads until the body contains `needle`; panics after `secs`.
    async fn until(&mut self, needle: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            self.dechunk();
            if self.body.contains(needle) {
                return;
            }
            assert!(
                self.read_some(deadline).await,
                "{needle:?} not seen; body so far:\n{}",
                self.body
            );
        }
    }
}

fn ev(t: u32, n: u32, details: &str) -> Event {
    match event(t, node(t, 1), EventKind::NodeDown, Severity::Major, T0, n) {
        Record::Event(mut e) => {
            e.details = details.to_string();
            e
        }
        _ => unreachable!(),
    }
}

fn pid(s: &str) -> PeerId {
    PeerId::new(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_streams_carry_only_their_tenant() {
    let srv = Server::start(Some(LiveConfig::default())).await;
    let mut op = Stream::open(srv.addr, Some(&srv.operator), "").await;
    let mut t1 = Stream::open(srv.addr, Some(&srv.tenants[0]), "").await;
    let mut t2 = Stream::open(srv.addr, Some(&srv.tenants[1]), "").await;
    for s in [&op, &t1, &t2] {
        assert_eq!(s.status, 200, "{}", s.head);
        let h = s.head.to_ascii_lowercase();
        assert!(h.contains("content-type: text/event-stream"), "{h}");
        assert!(h.contains("cache-control: no-cache"), "{h}");
    }
    op.until("event: hello", 5).await;
    t1.until("event: hello", 5).await;
    t2.until("event: hello", 5).await;
    assert!(op.body.contains("\"role\":\"operator\""), "{}", op.body);
    assert!(t1.body.contains("\"tenant\":1"), "{}", t1.body);
    assert_eq!(srv.hub.subscribers(), 3);

    let a = pid("poller-a");
    let b = pid("poller-b");
    for i in 0..20 {
        srv.hub
            .publish_event(&a, 1, i, &ev(1, i as u32, &format!("secret-one-{i}")));
        srv.hub
            .publish_event(&a, 1, 100 + i, &ev(2, i as u32, &format!("secret-two-{i}")));
    }
    let mut svc = match service(2, node(2, 1), "https", ServiceStatus::Down) {
        Record::ServiceState(s) => s,
        _ => unreachable!(),
    };
    svc.reason = "secret-two-service".into();
    srv.hub.publish_service(&a, &svc);
    // poller-a carries tenants 1 and 2; poller-b only tenant 3.
    let Record::PeerStatus(pa) = peer("poller-a", PeerRole::Poller, &[(1, 4), (2, 6)]) else {
        unreachable!()
    };
    srv.hub.publish_heartbeat(&pa);
    let Record::PeerStatus(pb) = peer("poller-b", PeerRole::Poller, &[(3, 9)]) else {
        unreachable!()
    };
    srv.hub.publish_heartbeat(&pb);
    let Record::DaemonHealth(d) = daemon("opeventsd", DaemonState::Down) else {
        unreachable!()
    };
    srv.hub.publish_daemon(&b, &d);
    srv.hub.set_link(
        &b,
        PeerRole::Poller,
        StreamState::CatchingUp { lag_records: 7 },
    );
    // Sentinels, last: each stream has read everything before them once it sees them.
    srv.hub.publish_event(&a, 1, 999, &ev(1, 999, "end-one"));
    srv.hub.publish_event(&a, 1, 998, &ev(2, 998, "end-two"));

    op.until("end-two", 5).await;
    t1.until("end-one", 5).await;
    t2.until("end-two", 5).await;

    // The operator sees everything.
    for i in 0..20 {
        assert!(op.body.contains(&format!("secret-one-{i}\"")));
        assert!(op.body.contains(&format!("secret-two-{i}\"")));
    }
    assert!(op.body.contains("secret-two-service"));
    assert!(op.body.contains("\"lag_records\":7"));
    assert!(op.body.contains("\"nodes_total\":10"), "{}", op.body);

    // Tenant 1: its 20 events, poller-a's card cut to its own count; nothing of tenant 2
    // or of poller-b (which carries only tenant 3).
    for i in 0..20 {
        assert!(t1.body.contains(&format!("secret-one-{i}\"")));
    }
    assert!(!t1.body.contains("secret-two"), "{}", t1.body);
    assert!(!t1.body.contains("\"tenant\":2"), "{}", t1.body);
    assert!(!t1.body.contains("poller-b"), "{}", t1.body);
    assert!(!t1.body.contains("end-two"));
    assert!(t1.body.contains("\"nodes_total\":4"), "{}", t1.body);
    assert_eq!(t1.body.matches("event: event\n").count(), 21);

    // Tenant 2: the mirror image, plus its service state.
    assert!(!t2.body.contains("secret-one"), "{}", t2.body);
    assert!(!t2.body.contains("\"tenant\":1"), "{}", t2.body);
    assert!(t2.body.contains("secret-two-service"));
    assert!(t2.body.contains("\"nodes_total\":6"), "{}", t2.body);
    assert!(!t2.body.contains("poller-b"));

    // Every data line is one JSON value.
    for line in op.body.lines().filter(|l| l.starts_with("data: ")) {
        serde_json::from_str::<serde_json::Value>(&line[6..]).expect("JSON data line");
    }

    drop(op);
    drop(t1);
    drop(t2);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_limits_and_departures() {
    let cfg = LiveConfig {
        max_subscribers: 2,
        keepalive: Duration::from_millis(100),
        ..LiveConfig::default()
    };
    let srv = Server::start(Some(cfg)).await;
    let s = Stream::open(srv.addr, None, "").await;
    assert_eq!(s.status, 401);
    assert!(s.head.to_ascii_lowercase().contains("www-authenticate"));
    let s = Stream::open(srv.addr, Some("opha_nope"), "").await;
    assert_eq!(s.status, 401);
    // Tokens do not go in URLs, and the stream takes no parameters.
    let s = Stream::open(srv.addr, Some(&srv.operator), "?token=x").await;
    assert_eq!(s.status, 400);
    assert!(srv.api.metrics().unauthorized_total() >= 2);

    let mut a = Stream::open(srv.addr, Some(&srv.operator), "").await;
    let mut b = Stream::open(srv.addr, Some(&srv.tenants[0]), "").await;
    a.until("event: hello", 5).await;
    b.until("event: hello", 5).await;
    let mut c = Stream::open(srv.addr, Some(&srv.tenants[1]), "").await;
    assert_eq!(c.status, 503, "{}", c.head);
    c.until("too many live streams", 5).await;

    // Keep-alive comments flow on an idle stream.
    a.until(": keepalive", 5).await;

    // A client that goes away frees its slot.
    drop(a);
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(5);
    while srv.hub.subscribers() > 0 {
        assert!(Instant::now() < deadline, "slots not freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut d = Stream::open(srv.addr, Some(&srv.tenants[1]), "").await;
    assert_eq!(d.status, 200);
    d.until("event: hello", 5).await;
    drop(d);

    // The server still answers the API.
    let mut s = Stream::open(srv.addr, Some(&srv.operator), "").await;
    s.until("event: hello", 5).await;
    drop(s);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_hub_is_503() {
    let srv = Server::start(None).await;
    let mut s = Stream::open(srv.addr, Some(&srv.operator), "").await;
    assert_eq!(s.status, 503);
    s.until("no live hub", 5).await;
    srv.shutdown().await;
}

/// A client that stops reading: its subscription lags (bounded by the hub's capacity), it
/// is told so, and it then continues with the newest messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_is_told_it_lagged() {
    let cfg = LiveConfig {
        capacity: 16,
        ..LiveConfig::default()
    };
    let srv = Server::start(Some(cfg)).await;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let sock = sock.connect(srv.addr).await.unwrap();
    let mut s = Stream::open_with(sock, Some(&srv.operator), "").await;
    s.until("event: hello", 5).await;
    // 8 MB: about twice what loopback socket buffers hold (tcp_wmem max 4 MB by default),
    // far more than the body channel and the hub's capacity.
    let pad = "x".repeat(1000);
    let a = pid("poller-a");
    let n = 8_000u64;
    for i in 0..n {
        srv.hub
            .publish_event(&a, 1, i, &ev(1, i as u32, &format!("{pad}-{i}")));
    }
    srv.hub.publish_event(&a, 1, n, &ev(1, 0, "the-last-one"));
    s.until("the-last-one", 30).await;
    assert!(s.body.contains("event: lagged"), "no lagged frame");
    let got = s.body.matches("event: event\n").count() as u64;
    assert!(got < n, "all {got} delivered: nothing was dropped");
    assert!(srv.hub.lagged_total() >= 1);
    drop(s);
    srv.shutdown().await;
}

#[test]
fn hub_bounds_and_isolation_without_http() {
    let hub = LiveHub::new(LiveConfig {
        capacity: 8,
        ..LiveConfig::default()
    });
    let mut op = hub.subscribe(PrincipalScope::Operator).unwrap();
    let mut t1 = hub.subscribe(PrincipalScope::Tenant(TenantId(1))).unwrap();
    let a = pid("poller-a");
    for i in 0..20u32 {
        hub.publish_event(&a, 1, u64::from(i), &ev(1 + i % 2, i, "x"));
    }
    // Bounded: at most `capacity` queued per subscriber, whatever was published.
    assert_eq!((op.behind(), op.queued()), (20, 8));
    assert_eq!((t1.behind(), t1.queued()), (10, 8));
    match op.try_next() {
        Some(LiveItem::Lagged(n)) => assert_eq!(n, 12),
        other => panic!("expected lagged, got {other:?}"),
    }
    let mut seqs = Vec::new();
    while let Some(LiveItem::Message(m)) = op.try_next() {
        let LiveMessage::Event { body, .. } = &*m else {
            panic!("{m:?}")
        };
        seqs.push(body["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs, (12..20).collect::<Vec<_>>(), "the newest 8 remain");
    // Tenant 1's channel got only its 10 events: 2 dropped, 8 kept, all tenant 1.
    match t1.try_next() {
        Some(LiveItem::Lagged(2)) => {}
        other => panic!("expected lagged 2, got {other:?}"),
    }
    let mut n = 0;
    while let Some(LiveItem::Message(m)) = t1.try_next() {
        match &*m {
            LiveMessage::Event { tenant, .. } => assert_eq!(*tenant, TenantId(1)),
            other => panic!("{other:?}"),
        }
        n += 1;
    }
    assert_eq!(n, 8);
    assert_eq!(hub.lagged_total(), 2);

    // Lag changes alone are rate-limited; a change of kind is not.
    let b = pid("poller-b");
    hub.set_link(
        &b,
        PeerRole::Poller,
        StreamState::CatchingUp { lag_records: 10 },
    );
    hub.set_link(
        &b,
        PeerRole::Poller,
        StreamState::CatchingUp { lag_records: 5 },
    );
    hub.set_link(&b, PeerRole::Poller, StreamState::Streaming);
    hub.set_link(&b, PeerRole::Poller, StreamState::Streaming);
    let mut states = Vec::new();
    while let Some(LiveItem::Message(m)) = op.try_next() {
        if let LiveMessage::Peer(v) = &*m {
            states.push(v.stream);
        }
    }
    assert_eq!(
        states,
        [
            Some(StreamState::CatchingUp { lag_records: 10 }),
            Some(StreamState::Streaming)
        ]
    );
    assert_eq!(hub.link("poller-b"), Some(StreamState::Streaming));
    // Link-only updates (tenants unknown) never reach a tenant channel.
    assert!(t1.try_next().is_none());

    assert!(hub.render().contains("opha_live_subscribers 2\n"));
    assert!(hub.render().contains("opha_live_lagged_total 2\n"));
    drop(op);
    drop(t1);
    assert_eq!(hub.subscribers(), 0);
}
