//! The poller's own metrics in the Prometheus text format, and the small HTTP server on
//! `[metrics] listen` (hyper, as ingest):
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /metrics` | the metrics below |
//! | `GET /healthz` | `{"status":"ok"}` |
//! | `GET /v1/log?from=SEQ&limit=N` | durable log records from `SEQ` as JSON lines (as `log dump --json`), at most `N` (default 10,000, at most 100,000) |
//!
//! Metrics (counters since the sidecar started unless the name says otherwise):
//! `opha_log_records_appended_total`, `opha_log_bytes_appended_total`, `opha_log_fsyncs_total`,
//! `opha_log_failed_commits_total`, `opha_log_fsync_seconds` (summary), `opha_log_depth_records`,
//! `opha_log_depth_bytes`, `opha_log_oldest_age_seconds`, `opha_log_used_bytes`,
//! `opha_log_budget_bytes`, `opha_log_budget_level` (0 normal, 1 warning, 2 thinning,
//! 3 blocked), `opha_log_metrics_thinned_total`, `opha_log_records_refused_total`,
//! `opha_log_segments`, `opha_log_next_seq`; `opha_kernel_<stat>_total` for every kernel
//! statistic (totals of the pinned maps, so across restarts),
//! `opha_kernel_inflight_evictions_total`, `opha_kernel_inflight_swept_total`,
//! `opha_kernel_inflight_live`; `opha_ring_records_total`, `opha_ring_unexpected_total`,
//! `opha_undecodable_total`, `opha_ring_pending_bytes`, `opha_ring_append_failures_total`;
//! `opha_ingest_requests_total`, `opha_ingest_accepted_records_total`,
//! `opha_ingest_rejected_total{reason}` (invalid, too_large, timeout, route, not_stored),
//! `opha_ingest_connections`; `opha_aggregate_*_total`; `opha_nodes{tenant,state}`;
//! `opha_daemon_up{daemon}`; `opha_heartbeat_records_total`, `opha_heartbeat_dropped_total`,
//! `opha_alarm_events_total`; `opha_uptime_seconds`.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use opha_common::{stats::Stat, wire::DaemonState};
use opha_log::BudgetLevel;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::{
    shared::{Shared, get},
    shutdown::Shutdown,
};

/// Most connections served at once.
const MAX_CONNECTIONS: usize = 32;
const DEFAULT_LOG_LIMIT: u64 = 10_000;
const MAX_LOG_LIMIT: u64 = 100_000;

struct Out(String);

impl Out {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn value(&mut self, name: &str, labels: &str, v: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {v}");
        } else {
            let _ = writeln!(self.0, "{name}{{{labels}}} {v}");
        }
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, v: impl std::fmt::Display) {
        self.head(name, kind, help);
        self.value(name, "", v);
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn level_number(l: BudgetLevel) -> u8 {
    match l {
        BudgetLevel::Normal => 0,
        BudgetLevel::Warning => 1,
        BudgetLevel::Thinning => 2,
        BudgetLevel::Blocked => 3,
    }
}

/// The metrics page.
pub fn render(shared: &Shared) -> String {
    let mut o = Out(String::with_capacity(16 << 10));
    let m = shared.log.metrics();
    o.one(
        "opha_log_records_appended_total",
        "counter",
        "Records made durable in the replay log since start.",
        m.records_appended,
    );
    o.one(
        "opha_log_bytes_appended_total",
        "counter",
        "Bytes appended to the replay log since start.",
        m.bytes_appended,
    );
    o.one(
        "opha_log_fsyncs_total",
        "counter",
        "fdatasync calls of the replay log.",
        m.fsyncs,
    );
    o.one(
        "opha_log_failed_commits_total",
        "counter",
        "Replay log batches whose write or fsync failed.",
        m.failed_commits,
    );
    let h = &m.fsync_latency_us;
    o.head(
        "opha_log_fsync_seconds",
        "summary",
        "Replay log fsync latency.",
    );
    for q in [0.5, 0.9, 0.99, 0.999] {
        let v = if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(q) as f64 / 1e6
        };
        o.value("opha_log_fsync_seconds", &format!("quantile=\"{q}\""), v);
    }
    let sum_us: u128 = h
        .iter_recorded()
        .map(|v| u128::from(v.value_iterated_to()) * u128::from(v.count_at_value()))
        .sum();
    o.value("opha_log_fsync_seconds_sum", "", sum_us as f64 / 1e6);
    o.value("opha_log_fsync_seconds_count", "", h.len());
    o.one(
        "opha_log_depth_records",
        "gauge",
        "Records not yet passed by every receiver's cursor.",
        m.depth_records,
    );
    o.one(
        "opha_log_depth_bytes",
        "gauge",
        "Bytes of the segments holding those records.",
        m.depth_bytes,
    );
    o.one(
        "opha_log_oldest_age_seconds",
        "gauge",
        "Age of the oldest record not passed by every cursor (0: none).",
        m.oldest_unacked_age.map_or(0.0, |d| d.as_secs_f64()),
    );
    o.one(
        "opha_log_used_bytes",
        "gauge",
        "Bytes the replay log uses on disk.",
        m.used_bytes,
    );
    o.one(
        "opha_log_budget_bytes",
        "gauge",
        "The replay log's disk budget.",
        m.budget_limit_bytes,
    );
    o.one(
        "opha_log_budget_level",
        "gauge",
        "Disk budget level: 0 normal, 1 warning, 2 thinning metrics, 3 intake blocked.",
        level_number(m.budget_level),
    );
    o.one(
        "opha_log_metrics_thinned_total",
        "counter",
        "Metric records thinned away by the disk budget.",
        m.metrics_thinned,
    );
    o.one(
        "opha_log_records_refused_total",
        "counter",
        "Records refused for lack of room (retried by their writer).",
        m.records_refused,
    );
    o.one("opha_log_segments", "gauge", "Segment files.", m.segments);
    o.one(
        "opha_log_next_seq",
        "gauge",
        "Sequence number the next record gets.",
        m.next_seq,
    );

    let k = shared.kernel_stats();
    let kv = |f: &dyn Fn(&crate::loader::GlobalStats) -> u64| k.as_ref().map_or(0, f);
    for stat in Stat::ALL {
        let name = format!("opha_kernel_{}_total", stat.name());
        o.one(
            &name,
            "counter",
            &format!(
                "Kernel statistic {} (pinned: counts across sidecar restarts).",
                stat.name()
            ),
            kv(&|s| s.get(stat)),
        );
    }
    o.one(
        "opha_kernel_inflight_evictions_total",
        "counter",
        "Requests evicted from the in-flight map without an answer or a sweep.",
        kv(&|s| s.inflight_evictions),
    );
    o.one(
        "opha_kernel_inflight_swept_total",
        "counter",
        "Requests swept from the in-flight map as timeouts.",
        kv(&|s| s.inflight_swept),
    );
    o.one(
        "opha_kernel_inflight_live",
        "gauge",
        "Requests in flight.",
        kv(&|s| s.inflight_live),
    );

    let c = &shared.counters;
    o.one(
        "opha_ring_records_total",
        "counter",
        "Trap and syslog records taken from the ring buffer once durable.",
        get(&c.ring_records),
    );
    o.one(
        "opha_ring_unexpected_total",
        "counter",
        "Ring buffer records of an unexpected size (another program version).",
        get(&c.ring_unexpected),
    );
    o.one(
        "opha_undecodable_total",
        "counter",
        "Trap and syslog packets that did not decode (stored as undecodable events).",
        get(&c.undecodable),
    );
    o.one(
        "opha_ring_pending_bytes",
        "gauge",
        "Ring buffer bytes produced and not yet durable.",
        shared
            .ring_pending_bytes
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    o.one(
        "opha_ring_append_failures_total",
        "counter",
        "Ring batches the replay log refused (retried).",
        get(&c.ring_append_failures),
    );

    let ingest = super::shared::lock(&shared.ingest)
        .as_ref()
        .map(|s| s.metrics())
        .unwrap_or_default();
    o.one(
        "opha_ingest_requests_total",
        "counter",
        "Local ingest requests.",
        ingest.requests,
    );
    o.one(
        "opha_ingest_accepted_records_total",
        "counter",
        "Records accepted by local ingest (durable before the answer).",
        ingest.accepted_records,
    );
    o.head(
        "opha_ingest_rejected_total",
        "counter",
        "Local ingest requests refused, by reason.",
    );
    for (reason, v) in [
        ("invalid", ingest.rejected_invalid),
        ("too_large", ingest.rejected_too_large),
        ("timeout", ingest.rejected_timeout),
        ("route", ingest.rejected_route),
        ("not_stored", ingest.sink_failures),
    ] {
        o.value(
            "opha_ingest_rejected_total",
            &format!("reason=\"{reason}\""),
            v,
        );
    }
    o.one(
        "opha_ingest_connections",
        "gauge",
        "Open local ingest connections.",
        ingest.connections_open,
    );

    for (name, help, v) in [
        ("polls", "Kernel snapshots aggregated.", &c.agg_polls),
        (
            "read_errors",
            "Kernel map reads that failed (retried).",
            &c.agg_read_errors,
        ),
        ("metrics", "NodeMetrics records produced.", &c.agg_metrics),
        ("events", "Node events produced.", &c.agg_events),
        (
            "timeouts",
            "Swept in-flight requests (poll timeouts).",
            &c.agg_timeouts,
        ),
        (
            "checkpoints",
            "Aggregator checkpoints written.",
            &c.agg_checkpoints,
        ),
        (
            "checkpoint_failures",
            "Aggregator checkpoint writes that failed (retried).",
            &c.agg_checkpoint_failures,
        ),
        (
            "append_failures",
            "Aggregator batches the replay log refused (retried).",
            &c.agg_append_failures,
        ),
        (
            "reconciled_records",
            "Checkpointed records found missing from the log at start and appended.",
            &c.agg_reconciled,
        ),
    ] {
        o.one(
            &format!("opha_aggregate_{name}_total"),
            "counter",
            help,
            get(v),
        );
    }
    o.head(
        "opha_nodes",
        "gauge",
        "Nodes by tenant and state (up, degraded, down, unknown).",
    );
    for t in shared.tenant_counts() {
        for (state, n) in [
            ("up", t.up),
            ("degraded", t.degraded),
            ("down", t.down),
            ("unknown", t.unknown),
        ] {
            o.value(
                "opha_nodes",
                &format!("tenant=\"{}\",state=\"{state}\"", t.tenant.0),
                n,
            );
        }
    }
    o.head(
        "opha_daemon_up",
        "gauge",
        "1 when the daemon is up, 0 when down, -1 when unknown.",
    );
    for d in shared.daemon_health() {
        let v: i8 = match d.state {
            DaemonState::Up => 1,
            DaemonState::Down => 0,
            DaemonState::Unknown => -1,
        };
        o.value(
            "opha_daemon_up",
            &format!("daemon=\"{}\"", label(&d.daemon)),
            v,
        );
    }
    o.one(
        "opha_heartbeat_records_total",
        "counter",
        "PeerStatus, DaemonHealth and daemon events made durable.",
        get(&c.heartbeat_records),
    );
    o.one(
        "opha_heartbeat_dropped_total",
        "counter",
        "PeerStatus/DaemonHealth snapshots dropped while the log refused appends (superseded).",
        get(&c.heartbeat_dropped),
    );
    o.one(
        "opha_alarm_events_total",
        "counter",
        "Replay log alarm events raised.",
        get(&c.alarm_events),
    );
    o.one(
        "opha_uptime_seconds",
        "gauge",
        "Seconds since the sidecar started.",
        shared.started.elapsed().as_secs_f64(),
    );
    if let Some(bus) = shared.bus.get() {
        bus.render(&mut o.0);
    }
    o.0
}

/// Serves `listener` until `stop`; in-flight requests finish (up to 5 s).
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: Shutdown) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = tokio::select! {
            () = stop.wait() => break,
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            () = stop.wait() => break,
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(e) => {
                    log::warn!("metrics: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc_shared = shared.clone();
            let service = service_fn(move |req| {
                let shared = svc_shared.clone();
                async move { Ok::<_, Infallible>(handle(shared, req).await) }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        log::debug!("metrics: connection ended: {e}");
                    }
                }
                () = stop.wait() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
            drop(slot);
        });
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        slots.acquire_many(MAX_CONNECTIONS as u32),
    )
    .await;
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    text(
        status,
        "application/json",
        serde_json::json!({"error": message}).to_string(),
    )
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "use GET");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return r;
    }
    match req.uri().path() {
        "/metrics" => {
            // Reads the log's metrics under its lock: brief, but not on an async worker.
            match tokio::task::spawn_blocking(move || render(&shared)).await {
                Ok(body) => text(StatusCode::OK, "text/plain; version=0.0.4", body),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            }
        }
        "/healthz" => text(
            StatusCode::OK,
            "application/json",
            "{\"status\":\"ok\"}".into(),
        ),
        "/v1/log" => {
            let (from, limit) = match log_query(req.uri().query().unwrap_or("")) {
                Ok(q) => q,
                Err(m) => return error(StatusCode::BAD_REQUEST, &m),
            };
            match tokio::task::spawn_blocking(move || log_lines(&shared, from, limit)).await {
                Ok(body) => text(StatusCode::OK, "application/x-ndjson", body),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            }
        }
        p => error(
            StatusCode::NOT_FOUND,
            &format!("no endpoint {p:?}; try /metrics, /healthz, /v1/log?from=SEQ"),
        ),
    }
}

/// `from` (default the oldest record) and `limit` of `/v1/log`.
pub fn log_query(q: &str) -> Result<(Option<u64>, u64), String> {
    let mut from = None;
    let mut limit = DEFAULT_LOG_LIMIT;
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let n: u64 = v
            .parse()
            .map_err(|_| format!("{k}: {v:?} is not a non-negative integer"))?;
        match k {
            "from" => from = Some(n),
            "limit" => limit = n.clamp(1, MAX_LOG_LIMIT),
            _ => return Err(format!("{k}: unknown parameter (from, limit)")),
        }
    }
    Ok((from, limit))
}

fn log_lines(shared: &Shared, from: Option<u64>, limit: u64) -> String {
    let log = &shared.log;
    let end = log.durable_next_seq();
    let from = from.unwrap_or_else(|| log.oldest_seq());
    let mut body = String::new();
    let mut n = 0;
    for item in log.read_from(from) {
        match item {
            Ok(r) if r.seq < end => {
                body.push_str(&crate::logdump::json_line(r.seq, r.class, &r.payload));
                body.push('\n');
                n += 1;
                if n >= limit {
                    break;
                }
            }
            Ok(_) => break,
            // Records no longer kept: skipped, as the reader does.
            Err(opha_log::Error::Gap { .. }) => {}
            Err(e) => {
                body.push_str(&serde_json::json!({"error": e.to_string()}).to_string());
                body.push('\n');
                break;
            }
        }
    }
    body
}
