//! A receiver's metrics in the Prometheus text format, served on `[metrics] listen`
//! (`GET /metrics`; `GET /healthz` answers `{"status":"ok"}`).
//!
//! | metric | meaning |
//! | --- | --- |
//! | `opha_receiver_connections` | poller connections open now |
//! | `opha_receiver_connections_total` | poller connections accepted (TLS and role checks passed) |
//! | `opha_receiver_records_received_total` | records in batches, new or not |
//! | `opha_receiver_records_stored_total` | records made durable in the store |
//! | `opha_receiver_duplicates_total` | records dropped as already held (bus state or store) |
//! | `opha_receiver_gap_records_fetched_total` | records missing below a poller's log and fetched from a `[[peer]]` |
//! | `opha_receiver_gap_unavailable_records_total` | records missing below a poller's log that no peer had (lost here) |
//! | `opha_receiver_gap_records_served_total` | records sent to primaries fetching a gap from here |
//! | `opha_receiver_poller_lag_records{poller}` | poller's head minus what is durable here (current epoch) |
//! | `opha_receiver_ack_latency_seconds` | batch in to its ack out (summary: 0.5, 0.99, sum, count) |
//! | `opha_receiver_rejects_total{reason}` | refused after the handshake: tenants, unregistered pollers, protocol refusals, store failures |
//! | `opha_receiver_tls_refused_total{reason}` | refused in the TLS handshake, by reason (opha-identity's counters) |
//! | `opha_receiver_acting{poller}` | 1 while this primary acts as the poller's active primary (fencing) |
//! | `opha_receiver_fencing_term{poller}` | highest fencing term seen from the poller (persisted) |

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use opha_identity::RefusalCounters;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::stopped;

/// Counters of one receiver.
#[derive(Debug)]
pub struct Metrics {
    pub connections: AtomicU64,
    pub connections_total: AtomicU64,
    pub received: AtomicU64,
    pub stored: AtomicU64,
    pub duplicates: AtomicU64,
    pub gap_fetched: AtomicU64,
    pub gap_unavailable: AtomicU64,
    pub gap_served: AtomicU64,
    rejects: Mutex<BTreeMap<String, u64>>,
    lag: Mutex<BTreeMap<String, u64>>,
    /// Microseconds.
    ack_latency: Mutex<Histogram<u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            connections: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            received: AtomicU64::new(0),
            stored: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            gap_fetched: AtomicU64::new(0),
            gap_unavailable: AtomicU64::new(0),
            gap_served: AtomicU64::new(0),
            rejects: Mutex::new(BTreeMap::new()),
            lag: Mutex::new(BTreeMap::new()),
            // 3 significant digits, auto-resizing: never fails.
            ack_latency: Mutex::new(
                Histogram::new(3).unwrap_or_else(|_| Histogram::new(2).expect("histogram")),
            ),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Metrics {
    pub fn reject(&self, reason: &str, n: u64) {
        *lock(&self.rejects).entry(reason.to_string()).or_default() += n;
    }

    pub fn rejects(&self, reason: &str) -> u64 {
        lock(&self.rejects).get(reason).copied().unwrap_or(0)
    }

    pub fn set_lag(&self, poller: &str, lag: u64) {
        lock(&self.lag).insert(poller.to_string(), lag);
    }

    pub fn lag(&self, poller: &str) -> Option<u64> {
        lock(&self.lag).get(poller).copied()
    }

    pub fn ack_latency(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        let _ = lock(&self.ack_latency).record(us);
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// The Prometheus text.
    pub fn render(&self, tls: &RefusalCounters) -> String {
        let mut o = String::new();
        let head = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        let scalar = [
            (
                "opha_receiver_connections",
                "gauge",
                "Poller connections open now.",
                &self.connections,
            ),
            (
                "opha_receiver_connections_total",
                "counter",
                "Poller connections accepted.",
                &self.connections_total,
            ),
            (
                "opha_receiver_records_received_total",
                "counter",
                "Records received in batches, new or not.",
                &self.received,
            ),
            (
                "opha_receiver_records_stored_total",
                "counter",
                "Records made durable in the store.",
                &self.stored,
            ),
            (
                "opha_receiver_duplicates_total",
                "counter",
                "Records dropped as already held.",
                &self.duplicates,
            ),
            (
                "opha_receiver_gap_records_fetched_total",
                "counter",
                "Records missing below a poller's log, fetched from a peer receiver.",
                &self.gap_fetched,
            ),
            (
                "opha_receiver_gap_unavailable_records_total",
                "counter",
                "Records missing below a poller's log that no peer receiver had.",
                &self.gap_unavailable,
            ),
            (
                "opha_receiver_gap_records_served_total",
                "counter",
                "Records sent to primaries fetching a gap.",
                &self.gap_served,
            ),
        ];
        for (name, kind, help, v) in scalar {
            head(&mut o, name, kind, help);
            let _ = writeln!(o, "{name} {}", Self::get(v));
        }
        head(
            &mut o,
            "opha_receiver_poller_lag_records",
            "gauge",
            "Poller head minus records durable here, current epoch.",
        );
        for (p, v) in lock(&self.lag).iter() {
            let _ = writeln!(o, "opha_receiver_poller_lag_records{{poller=\"{p}\"}} {v}");
        }
        head(
            &mut o,
            "opha_receiver_ack_latency_seconds",
            "summary",
            "Batch received to its acknowledgement sent.",
        );
        {
            let h = lock(&self.ack_latency);
            for q in [0.5, 0.99] {
                let v = h.value_at_quantile(q) as f64 / 1e6;
                let _ = writeln!(
                    o,
                    "opha_receiver_ack_latency_seconds{{quantile=\"{q}\"}} {v}"
                );
            }
            let sum = h.mean() * h.len() as f64 / 1e6;
            let _ = writeln!(o, "opha_receiver_ack_latency_seconds_sum {sum}");
            let _ = writeln!(o, "opha_receiver_ack_latency_seconds_count {}", h.len());
        }
        head(
            &mut o,
            "opha_receiver_rejects_total",
            "counter",
            "Refused after the handshake, by reason.",
        );
        for (r, v) in lock(&self.rejects).iter() {
            let _ = writeln!(o, "opha_receiver_rejects_total{{reason=\"{r}\"}} {v}");
        }
        head(
            &mut o,
            "opha_receiver_tls_refused_total",
            "counter",
            "Peers refused in the TLS handshake, by reason.",
        );
        for (r, v) in tls.snapshot() {
            let _ = writeln!(
                o,
                "opha_receiver_tls_refused_total{{reason=\"{}\"}} {v}",
                r.name()
            );
        }
        o
    }
}

/// Appends the fencing gauges: `(poller, acting, highest term)` rows.
pub fn render_fencing(o: &mut String, rows: &[(opha_common::wire::PeerId, bool, u64)]) {
    let _ = writeln!(
        o,
        "# HELP opha_receiver_acting 1 while this primary acts as the poller's active primary.\n# TYPE opha_receiver_acting gauge"
    );
    for (p, acting, _) in rows {
        let _ = writeln!(
            o,
            "opha_receiver_acting{{poller=\"{p}\"}} {}",
            u8::from(*acting)
        );
    }
    let _ = writeln!(
        o,
        "# HELP opha_receiver_fencing_term Highest fencing term seen from the poller.\n# TYPE opha_receiver_fencing_term gauge"
    );
    for (p, _, term) in rows {
        let _ = writeln!(o, "opha_receiver_fencing_term{{poller=\"{p}\"}} {term}");
    }
}

/// Serves `/metrics` until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    render: std::sync::Arc<dyn Fn() -> String + Send + Sync>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            () = stopped(&mut stop) => break,
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(e) => {
                    log::warn!("metrics: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let render = render.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let render = render.clone();
                async move {
                    let (status, ctype, body) = match req.uri().path() {
                        "/metrics" => (StatusCode::OK, "text/plain; version=0.0.4", render()),
                        "/healthz" => (
                            StatusCode::OK,
                            "application/json",
                            "{\"status\":\"ok\"}".to_string(),
                        ),
                        _ => (
                            StatusCode::NOT_FOUND,
                            "application/json",
                            "{\"error\":\"not found\"}".to_string(),
                        ),
                    };
                    let mut r = Response::new(Full::new(Bytes::from(body)));
                    *r.status_mut() = status;
                    r.headers_mut()
                        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
                    Ok::<_, Infallible>(r)
                }
            });
            let mut b = http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
            let _ = tokio::time::timeout(
                Duration::from_secs(30),
                b.serve_connection(TokioIo::new(stream), service),
            )
            .await;
        });
    }
}
