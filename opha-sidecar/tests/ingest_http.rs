//! The ingest server over real sockets (loopback TCP and a Unix socket): status codes, limits,
//! sink failures, and concurrent writers whose accepted records are in a real replay log
//! exactly once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use opha_common::wire::{EventId, EventKind, Record, TenantId};
use opha_log::{BudgetConfig, Log, LogConfig};
use opha_sidecar::ingest::sink::decode_record;
use opha_sidecar::ingest::{IngestConfig, IngestServer, LogSink, MemorySink, bind_tcp, bind_unix};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::oneshot;

/// A running server on loopback; stopped (and its tasks drained) on drop of the sender.
struct Running<S> {
    addr: SocketAddr,
    server: IngestServer<S>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl<S: opha_sidecar::ingest::DurableSink> Running<S> {
    async fn start(config: IngestConfig, sink: S) -> Self {
        let listener = bind_tcp("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = IngestServer::new(config, sink);
        let (tx, rx) = oneshot::channel();
        let s = server.clone();
        let task = tokio::spawn(async move {
            s.serve_tcp(listener, async {
                let _ = rx.await;
            })
            .await
        });
        Self {
            addr,
            server,
            stop: Some(tx),
            task: Some(task),
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl<S> Drop for Running<S> {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A keep-alive HTTP/1.1 client connection.
struct Client {
    sender: SendRequest<Full<Bytes>>,
}

impl Client {
    async fn tcp(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        Self::over(stream).await
    }

    async fn unix(path: &Path) -> Self {
        let stream = UnixStream::connect(path).await.unwrap();
        Self::over(stream).await
    }

    async fn over<T>(io: T) -> Self
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = http1::handshake(TokioIo::new(io)).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Self { sender }
    }

    async fn request(
        &mut self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, hyper::HeaderMap, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let req = req.body(Full::new(Bytes::from(body))).unwrap();
        self.sender.ready().await.unwrap();
        let resp = self.sender.send_request(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {bytes:?}"));
        (status, headers, value)
    }

    async fn post(&mut self, path: &str, body: &Value) -> (StatusCode, Value) {
        let (s, _, v) = self
            .request(
                Method::POST,
                path,
                Some("application/json"),
                body.to_string().into_bytes(),
            )
            .await;
        (s, v)
    }
}

fn config() -> IngestConfig {
    IngestConfig::new(TenantId(3))
}

fn event(n: u64) -> Value {
    json!({
        "source": "opeventsd",
        "event": "Node Down",
        "severity": "critical",
        "address": "198.18.0.5",
        "details": format!("event {n}"),
        "id": format!("{:032x}", n),
    })
}

/// A replay log in a fresh directory under the target dir, removed on drop.
struct TempLog {
    dir: PathBuf,
    log: Option<Arc<Log>>,
}

impl TempLog {
    fn open(tag: &str, budget: Option<u64>) -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("ingest-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cfg = LogConfig::new(&dir);
        if let Some(limit) = budget {
            cfg.budget = BudgetConfig::new(limit);
            cfg.segment_bytes = 4096;
        }
        let log = Arc::new(Log::open(cfg).unwrap());
        Self {
            dir,
            log: Some(log),
        }
    }

    fn log(&self) -> Arc<Log> {
        self.log.clone().unwrap()
    }

    /// Every record in the log: seq -> record.
    fn records(&self) -> Vec<(u64, Record)> {
        let log = self.log();
        log.read_from(log.oldest_seq())
            .map(|r| {
                let r = r.unwrap();
                (r.seq, decode_record(&r.payload).unwrap())
            })
            .collect()
    }
}

impl Drop for TempLog {
    fn drop(&mut self) {
        self.log.take();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn event_id(r: &Record) -> EventId {
    match r {
        Record::Event(e) => e.id,
        other => panic!("not an event: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_events_and_services_are_acknowledged_once_stored() {
    let sink = Arc::new(MemorySink::new());
    let srv = Running::start(config(), sink.clone()).await;
    let mut c = Client::tcp(srv.addr).await;

    let (status, body) = c.post("/v1/events", &json!([event(1), event(2)])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["accepted"], 2);
    assert_eq!(body["seq"], json!([0, 1]));
    assert_eq!(
        body["ids"],
        json!([format!("{:032x}", 1), format!("{:032x}", 2)])
    );

    let (status, body) = c
        .post(
            "/v1/services",
            &json!({"service": "ssl", "kind": "ssl_expiry", "address": "198.18.0.6",
                    "state": "degraded", "reason": "expires in 9 days"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["seq"], json!([2]));

    // An event without an id gets a fresh random one.
    let mut e = event(3);
    e.as_object_mut().unwrap().remove("id");
    let (status, body) = c.post("/v1/events", &e).await;
    assert_eq!(status, StatusCode::OK);
    let id = body["ids"][0].as_str().unwrap().to_string();
    assert_eq!(id.len(), 32);

    let stored = sink.records();
    assert_eq!(stored.len(), 4);
    assert_eq!(event_id(&stored[0].1), EventId::from_u128(1));
    assert!(matches!(stored[2].1, Record::ServiceState(_)));
    assert_eq!(event_id(&stored[3].1).to_string(), id);
    for (_, r) in &stored {
        assert_eq!(r.tenant(), Some(TenantId(3)), "the configured tenant");
    }

    let (status, _, body) = c.request(Method::GET, "/healthz", None, vec![]).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    let m = srv.server.metrics();
    assert_eq!((m.accepted_requests, m.accepted_records), (3, 4));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_get_4xx_naming_the_field_and_store_nothing() {
    let sink = Arc::new(MemorySink::new());
    let srv = Running::start(config(), sink.clone()).await;
    let mut c = Client::tcp(srv.addr).await;

    let mut bad = event(1);
    bad["severity"] = json!("apocalyptic");
    let (status, body) = c.post("/v1/events", &json!([event(2), bad])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "[1].severity");
    assert_eq!(body["error"], "invalid");
    assert!(body["message"].as_str().unwrap().contains("apocalyptic"));

    let mut forged = event(3);
    forged["tenant"] = json!(4);
    let (status, body) = c.post("/v1/events", &forged).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["field"], "tenant");

    let (status, _, body) = c
        .request(
            Method::POST,
            "/v1/events",
            Some("application/json"),
            b"{\"source\":".to_vec(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "body");
    assert!(body["message"].as_str().unwrap().contains("not valid JSON"));

    let (status, _, body) = c
        .request(
            Method::POST,
            "/v1/events",
            Some("text/plain"),
            event(4).to_string().into_bytes(),
        )
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(body["field"], "content-type");

    // No content type, or JSON with parameters: fine.
    let (status, _, _) = c
        .request(
            Method::POST,
            "/v1/events",
            None,
            event(5).to_string().into_bytes(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = c
        .request(
            Method::POST,
            "/v1/events",
            Some("Application/JSON; charset=utf-8"),
            event(6).to_string().into_bytes(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let (status, _, body) = c.request(Method::GET, "/v1/nope", None, vec![]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["field"], "path");
    let (status, headers, body) = c.request(Method::GET, "/v1/events", None, vec![]).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["allow"], "POST");
    assert_eq!(body["field"], "method");
    let (status, headers, _) = c.request(Method::DELETE, "/healthz", None, vec![]).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["allow"], "GET");

    let stored: Vec<_> = sink.records().iter().map(|(_, r)| event_id(r)).collect();
    assert_eq!(stored, vec![EventId::from_u128(5), EventId::from_u128(6)]);
    let m = srv.server.metrics();
    assert_eq!(m.rejected_invalid, 4);
    assert_eq!(m.rejected_route, 3);
    srv.stop().await;
}

/// Sends raw bytes and reads the answer's status line (the connection is closed after).
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_refused() {
    let sink = Arc::new(MemorySink::new());
    let mut cfg = config();
    cfg.max_body_bytes = 4096;
    let srv = Running::start(cfg, sink.clone()).await;

    // Declared too large: refused from the header.
    let mut e = event(1);
    e["details"] = json!("x".repeat(5000));
    let mut c = Client::tcp(srv.addr).await;
    let (status, body) = c.post("/v1/events", &e).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["field"], "body");

    // Exactly at the limit: accepted (a body padded with spaces to 4096 bytes).
    let mut text = event(2).to_string();
    text.push_str(&" ".repeat(4096 - text.len()));
    let mut c = Client::tcp(srv.addr).await;
    let (status, _, body) = c
        .request(Method::POST, "/v1/events", None, text.into_bytes())
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Chunked, no length: refused once the limit is crossed.
    let chunk = "y".repeat(3000);
    let req = format!(
        "POST /v1/events HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len(),
        chunk.len()
    );
    let answer = raw(srv.addr, req.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );

    assert_eq!(sink.records().len(), 1);
    assert_eq!(srv.server.metrics().rejected_too_large, 2);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_slow_clients_never_take_the_server_down() {
    let sink = Arc::new(MemorySink::new());
    let mut cfg = config();
    cfg.body_timeout = Duration::from_millis(300);
    cfg.header_timeout = Duration::from_millis(300);
    let srv = Running::start(cfg, sink.clone()).await;

    let answer = raw(
        srv.addr,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n",
    )
    .await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer:?}"
    );
    let answer = raw(
        srv.addr,
        b"POST /v1/events HTTP/1.1\r\ncontent-length: nope\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");

    // A body that never finishes: 408 after the body timeout.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"POST /v1/events HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"so")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the server closes a stalled request")
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");

    // Headers that never finish: the connection is closed.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"POST /v1/events HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the server closes a connection whose headers stall")
        .unwrap();

    // Still serving.
    let mut c = Client::tcp(srv.addr).await;
    let (status, _) = c.post("/v1/events", &event(1)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sink.records().len(), 1);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_failure_is_503_and_nothing_is_acknowledged() {
    let sink = Arc::new(MemorySink::new());
    let srv = Running::start(config(), sink.clone()).await;
    let mut c = Client::tcp(srv.addr).await;

    sink.set_failing(true);
    let (status, headers, body) = c
        .request(
            Method::POST,
            "/v1/events",
            Some("application/json"),
            json!([event(1), event(2)]).to_string().into_bytes(),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(body["error"], "not_stored");
    assert!(body.get("seq").is_none() && body.get("accepted").is_none());
    assert!(sink.records().is_empty());

    sink.set_failing(false);
    let (status, body) = c.post("/v1/events", &event(1)).await;
    assert_eq!(status, StatusCode::OK, "the same connection works again");
    assert_eq!(body["seq"], json!([0]));
    assert_eq!(srv.server.metrics().sink_failures, 1);
    srv.stop().await;
}

/// The real replay log with a tiny disk budget: requests are acknowledged while it has room,
/// refused with 503 once it is full, and exactly the acknowledged events are in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_replay_log_is_503_and_only_acknowledged_events_are_stored() {
    let tmp = TempLog::open("full", Some(16 * 1024));
    let srv = Running::start(config(), LogSink::new(tmp.log())).await;
    let mut c = Client::tcp(srv.addr).await;
    let mut acked = Vec::new();
    let mut refused = 0;
    for n in 0..400u64 {
        let mut e = event(n);
        e["details"] = json!("z".repeat(200));
        let (status, body) = c.post("/v1/events", &e).await;
        match status {
            StatusCode::OK => acked.push((
                body["seq"][0].as_u64().unwrap(),
                EventId::from_u128(n.into()),
            )),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(body["message"].as_str().unwrap().contains("full"), "{body}");
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    eprintln!("acknowledged {}, refused {refused}", acked.len());
    assert!(
        !acked.is_empty() && refused > 0,
        "acked {} refused {refused}",
        acked.len()
    );
    let stored: Vec<(u64, EventId)> = tmp
        .records()
        .iter()
        .map(|(s, r)| (*s, event_id(r)))
        .collect();
    assert_eq!(stored, acked);
    srv.stop().await;
}

/// 8 writers x 500 requests over keep-alive connections into a real replay log: every
/// acknowledged event is in the log exactly once, at the sequence number it was acknowledged
/// with, and nothing else is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_into_a_real_replay_log() {
    const WRITERS: u64 = 8;
    const REQUESTS: u64 = 500;
    let tmp = TempLog::open("concurrent", None);
    let srv = Running::start(config(), LogSink::new(tmp.log())).await;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let addr = srv.addr;
        tasks.push(tokio::spawn(async move {
            let mut c = Client::tcp(addr).await;
            let mut acked = Vec::new();
            for i in 0..REQUESTS {
                let n = w * 1_000_000 + i;
                let (status, body) = c.post("/v1/events", &event(n)).await;
                assert_eq!(status, StatusCode::OK, "{body}");
                acked.push((
                    body["seq"][0].as_u64().unwrap(),
                    EventId::from_u128(n.into()),
                ));
            }
            acked
        }));
    }
    let mut acked = HashMap::new();
    for t in tasks {
        for (seq, id) in t.await.unwrap() {
            assert!(
                acked.insert(id, seq).is_none(),
                "id {id} acknowledged twice"
            );
        }
    }
    assert_eq!(acked.len() as u64, WRITERS * REQUESTS);
    let stored = tmp.records();
    assert_eq!(
        stored.len() as u64,
        WRITERS * REQUESTS,
        "nothing extra, nothing missing"
    );
    let mut seen = HashMap::new();
    for (seq, record) in &stored {
        let Record::Event(e) = record else { panic!() };
        assert!(matches!(e.kind, EventKind::External { .. }));
        assert_eq!(e.tenant, TenantId(3));
        assert!(seen.insert(e.id, *seq).is_none(), "{} stored twice", e.id);
        assert_eq!(
            acked.get(&e.id),
            Some(seq),
            "{} stored at another seq",
            e.id
        );
    }
    assert_eq!(srv.server.metrics().accepted_records, WRITERS * REQUESTS);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_serves_the_same_api() {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ingest-unix-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    let path = dir.join("ingest.sock");

    // A regular file in the way is an error, never deleted.
    std::fs::write(&path, b"precious").unwrap();
    assert!(bind_unix(&path, 0o660).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    std::fs::remove_file(&path).unwrap();

    let sink = Arc::new(MemorySink::new());
    let server = IngestServer::new(config(), sink.clone());
    let listener = bind_unix(&path, 0o660).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o660);
    }
    let (tx, rx) = oneshot::channel::<()>();
    let s = server.clone();
    let task = tokio::spawn(async move {
        s.serve_unix(listener, async {
            let _ = rx.await;
        })
        .await
    });

    let mut c = Client::unix(&path).await;
    let (status, body) = c.post("/v1/events", &event(9)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = c
        .post(
            "/v1/services",
            &json!({"service": "x", "kind": "port", "state": "up", "address": "198.18.0.1"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "port");
    assert_eq!(sink.records().len(), 1);

    let _ = tx.send(());
    task.await.unwrap().unwrap();

    // A socket file left behind by a previous run is replaced.
    let again = bind_unix(&path, 0o600);
    assert!(again.is_ok(), "{again:?}");
}

#[tokio::test]
async fn tcp_listener_must_be_loopback() {
    let err = bind_tcp("198.18.0.1:8080".parse().unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a loopback address"), "{err}");
    let err = bind_tcp("0.0.0.0:0".parse().unwrap()).await.unwrap_err();
    assert!(err.to_string().contains("not a loopback address"), "{err}");
    assert!(
        bind_tcp("[::1]:0".parse().unwrap()).await.is_ok()
            || std::net::TcpListener::bind("[::1]:0").is_err()
    );
}

/// In-flight appends are bounded: with a slow sink and a limit of 2, never more than 2 wait on
/// it, and every request still completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_in_flight_are_bounded() {
    struct Counting {
        inner: MemorySink,
        now: std::sync::atomic::AtomicUsize,
        max: std::sync::atomic::AtomicUsize,
    }
    impl opha_sidecar::ingest::DurableSink for Counting {
        async fn append(
            &self,
            records: Vec<Record>,
        ) -> Result<Vec<u64>, opha_sidecar::ingest::SinkError> {
            use std::sync::atomic::Ordering::SeqCst;
            let n = self.now.fetch_add(1, SeqCst) + 1;
            self.max.fetch_max(n, SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            let r = self.inner.append(records).await;
            self.now.fetch_sub(1, SeqCst);
            r
        }
    }
    let sink = Arc::new(Counting {
        inner: MemorySink::new(),
        now: 0.into(),
        max: 0.into(),
    });
    let mut cfg = config();
    cfg.max_inflight_appends = 2;
    let srv = Running::start(cfg, sink.clone()).await;
    let mut tasks = Vec::new();
    for w in 0..6u64 {
        let addr = srv.addr;
        tasks.push(tokio::spawn(async move {
            let mut c = Client::tcp(addr).await;
            for i in 0..5 {
                let (status, _) = c.post("/v1/events", &event(w * 100 + i)).await;
                assert_eq!(status, StatusCode::OK);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(sink.inner.records().len(), 30);
    let max = sink.max.load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..=2).contains(&max), "{max} appends in flight");
    srv.stop().await;
}
