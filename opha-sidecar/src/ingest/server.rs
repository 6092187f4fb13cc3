//! The HTTP driver of ingest: listeners, connections, routing, and the answer once durable.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Bytes};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use opha_common::wire::{EventId, Record};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, watch};

use super::IngestConfig;
use super::sink::{DurableSink, SinkError};
use super::validate::{self, FieldError, Rules};

/// How long `serve_*` waits for open connections to finish after shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Binds the TCP listener. Only loopback addresses: ingest is for daemons on this host, and
/// its requests carry no credentials.
pub async fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    if !addr.ip().is_loopback() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("ingest listen address {addr} is not a loopback address"),
        ));
    }
    TcpListener::bind(addr).await
}

/// Binds the Unix socket at `path` with permissions `mode` (e.g. 0o660). A socket file left by
/// a previous run is replaced; any other file there is an error, never deleted.
pub fn bind_unix(path: &Path, mode: u32) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "ingest socket path {} exists and is not a socket",
                    path.display()
                ),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// Counters of the ingest endpoints (for the poller's Prometheus metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IngestMetrics {
    pub requests: u64,
    /// Requests answered 2xx (records durable).
    pub accepted_requests: u64,
    pub accepted_records: u64,
    /// 400, 403, 415: invalid bodies, fields, tenants, content types.
    pub rejected_invalid: u64,
    /// 413.
    pub rejected_too_large: u64,
    /// 408.
    pub rejected_timeout: u64,
    /// 404 and 405.
    pub rejected_route: u64,
    /// 503 and 422: the sink could not make the records durable.
    pub sink_failures: u64,
    pub connections_open: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    accepted_requests: AtomicU64,
    accepted_records: AtomicU64,
    rejected_invalid: AtomicU64,
    rejected_too_large: AtomicU64,
    rejected_timeout: AtomicU64,
    rejected_route: AtomicU64,
    sink_failures: AtomicU64,
    connections_open: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

struct Shared<S> {
    config: IngestConfig,
    sink: S,
    appends: Semaphore,
    counters: Counters,
}

/// The ingest server: one per poller, serving any number of listeners.
pub struct IngestServer<S> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for IngestServer<S> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

/// A stream listener (TCP or Unix).
trait Listener: Send {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

impl Listener for TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> io::Result<Self::Io> {
        let (stream, _) = TcpListener::accept(self).await?;
        // Answers are small and sent once: no reason to let Nagle hold them.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

impl Listener for UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> io::Result<Self::Io> {
        UnixListener::accept(self).await.map(|(s, _)| s)
    }
}

impl<S: DurableSink> IngestServer<S> {
    pub fn new(config: IngestConfig, sink: S) -> Self {
        let appends = Semaphore::new(config.max_inflight_appends.max(1));
        Self {
            shared: Arc::new(Shared {
                config,
                sink,
                appends,
                counters: Counters::default(),
            }),
        }
    }

    pub fn config(&self) -> &IngestConfig {
        &self.shared.config
    }

    pub fn sink(&self) -> &S {
        &self.shared.sink
    }

    pub fn metrics(&self) -> IngestMetrics {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        IngestMetrics {
            requests: get(&c.requests),
            accepted_requests: get(&c.accepted_requests),
            accepted_records: get(&c.accepted_records),
            rejected_invalid: get(&c.rejected_invalid),
            rejected_too_large: get(&c.rejected_too_large),
            rejected_timeout: get(&c.rejected_timeout),
            rejected_route: get(&c.rejected_route),
            sink_failures: get(&c.sink_failures),
            connections_open: get(&c.connections_open),
        }
    }

    /// Serves `listener` until `shutdown` resolves, then lets open connections finish their
    /// requests (up to 30 s). Accept errors (e.g. out of file descriptors) are logged and
    /// retried, never returned.
    pub async fn serve_tcp(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        self.serve(listener, shutdown).await
    }

    /// As [`serve_tcp`](Self::serve_tcp), on a Unix socket.
    pub async fn serve_unix(
        &self,
        listener: UnixListener,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        self.serve(listener, shutdown).await
    }

    async fn serve<L: Listener>(
        &self,
        listener: L,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let max = self.shared.config.max_connections.clamp(1, 1 << 20);
        let slots = Arc::new(Semaphore::new(max));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            // A slot first: beyond the limit, connections wait in the kernel's backlog.
            let slot = tokio::select! {
                () = &mut shutdown => break,
                slot = slots.clone().acquire_owned() => match slot {
                    Ok(s) => s,
                    Err(_) => break,
                },
            };
            let io = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(io) => io,
                    Err(e) => {
                        log::warn!("ingest: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let shared = self.shared.clone();
            let stop = stop_rx.clone();
            tokio::spawn(async move {
                bump(&shared.counters.connections_open);
                serve_connection(shared.clone(), io, stop).await;
                shared
                    .counters
                    .connections_open
                    .fetch_sub(1, Ordering::Relaxed);
                drop(slot);
            });
        }
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, slots.acquire_many(max as u32)).await;
        Ok(())
    }

    /// Answers one request (what the listeners call; usable without a socket).
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        handle(&self.shared, req).await
    }
}

async fn serve_connection<S: DurableSink, I>(
    shared: Arc<Shared<S>>,
    io: I,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = &shared.config;
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .keep_alive(true)
        .max_buf_size(64 * 1024);
    let svc_shared = shared.clone();
    let service = service_fn(move |req| {
        let shared = svc_shared.clone();
        async move { Ok::<_, Infallible>(handle(&shared, req).await) }
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                log::debug!("ingest: connection ended: {e}");
            }
        }
        // Reduced to a bool so that no (non-Send) watch guard is held across the awaits.
        _ = async { stop.wait_for(|stopped| *stopped).await.is_ok() } => {
            // Finish the request in progress, if any, then close.
            conn.as_mut().graceful_shutdown();
            if let Err(e) = conn.await {
                log::debug!("ingest: connection ended during shutdown: {e}");
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Events,
    Services,
    Health,
}

async fn handle<S, B>(shared: &Shared<S>, req: Request<B>) -> Response<Full<Bytes>>
where
    S: DurableSink,
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let c = &shared.counters;
    bump(&c.requests);
    let (route, allowed) = match req.uri().path() {
        "/v1/events" => (Route::Events, Method::POST),
        "/v1/services" => (Route::Services, Method::POST),
        "/healthz" => (Route::Health, Method::GET),
        path => {
            bump(&c.rejected_route);
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                "path",
                &format!(
                    "no endpoint {path:?}; try POST /v1/events, POST /v1/services, GET /healthz"
                ),
            );
        }
    };
    if *req.method() != allowed {
        bump(&c.rejected_route);
        let mut resp = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method",
            &format!("{} is not allowed here; use {allowed}", req.method()),
        );
        if let Ok(v) = HeaderValue::from_str(allowed.as_str()) {
            resp.headers_mut().insert(header::ALLOW, v);
        }
        return resp;
    }
    if route == Route::Health {
        return json_response(StatusCode::OK, &json!({"status": "ok"}));
    }
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
        let is_json = ct.to_str().is_ok_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        });
        if !is_json {
            bump(&c.rejected_invalid);
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "content-type",
                "the body must be JSON (Content-Type: application/json, or none)",
            );
        }
    }
    let max = shared.config.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        bump(&c.rejected_too_large);
        return too_large(max);
    }
    let body = Limited::new(req.into_body(), max);
    let body = match tokio::time::timeout(shared.config.body_timeout, body.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            bump(&c.rejected_too_large);
            return too_large(max);
        }
        Ok(Err(e)) => {
            bump(&c.rejected_invalid);
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                "body",
                &format!("the body could not be read: {e}"),
            );
        }
        Err(_) => {
            bump(&c.rejected_timeout);
            let mut resp = error(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                "body",
                &format!(
                    "the body did not arrive within {} ms",
                    shared.config.body_timeout.as_millis()
                ),
            );
            close(&mut resp);
            return resp;
        }
    };
    let rules = Rules {
        tenants: &shared.config.tenants,
        resolver: shared.config.resolver.as_ref(),
        max_batch: shared.config.max_batch,
        now_ms: now_ms(),
    };
    let parsed = match route {
        Route::Events => validate::events(&body, &rules, &mut random_event_id),
        _ => validate::services(&body, &rules),
    };
    let records = match parsed {
        Ok(r) => r,
        Err(e) => {
            bump(&c.rejected_invalid);
            return field_error(&e);
        }
    };
    let ids: Vec<String> = records
        .iter()
        .filter_map(|r| match r {
            Record::Event(e) => Some(e.id.to_string()),
            _ => None,
        })
        .collect();
    let count = records.len();
    let appended = match shared.appends.acquire().await {
        Ok(_permit) => shared.sink.append(records).await,
        Err(_) => Err(SinkError::Unavailable("ingest is shutting down".into())),
    };
    match appended {
        Ok(seqs) => {
            bump(&c.accepted_requests);
            c.accepted_records
                .fetch_add(count as u64, Ordering::Relaxed);
            let body = if route == Route::Events {
                json!({"accepted": count, "seq": seqs, "ids": ids})
            } else {
                json!({"accepted": count, "seq": seqs})
            };
            json_response(StatusCode::OK, &body)
        }
        Err(e) => {
            bump(&c.sink_failures);
            log::warn!("ingest: {count} records not stored: {e}");
            let status = match e {
                SinkError::Rejected(_) => StatusCode::UNPROCESSABLE_ENTITY,
                SinkError::Full(_) | SinkError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            let mut resp = error(
                status,
                "not_stored",
                "body",
                &format!("nothing was acknowledged: {e}"),
            );
            if status == StatusCode::SERVICE_UNAVAILABLE {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            resp
        }
    }
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn error(status: StatusCode, kind: &str, field: &str, message: &str) -> Response<Full<Bytes>> {
    json_response(
        status,
        &json!({"error": kind, "field": field, "message": message}),
    )
}

fn field_error(e: &FieldError) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    let kind = if status == StatusCode::FORBIDDEN {
        "forbidden"
    } else {
        "invalid"
    };
    error(status, kind, &e.field, &e.message)
}

fn too_large(max: usize) -> Response<Full<Bytes>> {
    let mut resp = error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        "body",
        &format!("the body is larger than {max} bytes"),
    );
    // The rest of the body is not read: the connection cannot carry another request.
    close(&mut resp);
    resp
}

fn close(resp: &mut Response<Full<Bytes>>) {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A random event id (the kernel's CSPRNG); if that fails, time and a counter, still unique
/// within this process.
fn random_event_id() -> EventId {
    let mut buf = [0u8; 16];
    // SAFETY: getrandom writes at most `buf.len()` bytes into the valid, exclusively borrowed
    // buffer.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n == buf.len() as isize {
        return EventId(buf);
    }
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    EventId::from_u128((u128::from(nanos) << 64) | u128::from(count))
}
