//! `opha-bench bus`: the message bus end to end (issue 4 §5), written to
//! `target/bench/bus.json`.
//!
//! Everything runs the real code: pollers are the real bus sender
//! (`opha_sidecar::poller::bus`) on real replay logs in this process; primaries are real
//! `opha-sidecar primary --config` processes (SQLite store, synchronous=FULL, group commit;
//! a batch is acknowledged only after its commit). A record counts as delivered when the
//! poller's cursor for the primary has passed it, i.e. the primary acknowledged it durable.
//! Loopback (127.0.0.1) only, except the WAN figures, which run across the userspace WAN
//! emulator between two network namespaces (root only).
//!
//! Figures (method of each in `docs/benchmarks.md`):
//! - `records_per_sec`: one poller, 100-byte records, first append to last acknowledged;
//!   `records_per_sec_50_pollers`: the same with 50 pollers (each its own certificate, log and
//!   epoch file) to one primary.
//! - `latency_p50_ms`, `latency_p99_ms`: scheduled append to acknowledged, at a steady 250
//!   records/s (2,000 nodes' metrics every 10 s plus 50 events/s).
//! - `wire_bytes_per_record`: batch frame bytes (zstd level 3, the default) per record for
//!   five 60 s intervals of 2,000 nodes' metrics plus events.
//! - `nats_records_per_sec`, `ratio_vs_nats`: the same 100-byte records to NATS JetStream.
//! - `failover_p50_s`, `failover_p99_s`: see [`crate::bus_failover`].
//! - `wan_goodput_pct`, `catchup_s_1h_2000_nodes`: see [`crate::bus_wan`].
//!
//! Options: `--only=PART[,PART]` runs some parts (throughput, nats, latency, wire, failover,
//! wan); `--wan-cc=cubic,bbr`, `--wan-impair=one-way,both-ways` choose the WAN cases and
//! `--wan-loss=SHARE` changes the WAN's loss (diagnosis only; noted in the report); see
//! [`crate::bus_wan`].
//! `OPHA_BENCH_TRACE=1` prints the WAN catch-up's progress every 500 ms. `OPHA_SIDECAR`
//! names the `opha-sidecar` binary instead of `target/release/opha-sidecar`.

use std::{
    collections::VecDeque,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, ensure};
use opha_common::wire::PeerRole;
use opha_log::RecordClass;
use serde_json::{Map, Value, json};

use crate::bus_env::{
    self, Pki, Poller, Primary, Receiver, Rng, Scratch, class_of, encode, event, node_metrics,
    record_100, wait_until,
};
use crate::{bus_failover, bus_nats, bus_wan, host};

/// Targets of issue 4 §5: key, comparison, target.
const TARGETS: [(&str, &str, f64); 5] = [
    ("ratio_vs_nats", ">=", 1.5),
    ("latency_p99_ms", "<=", 50.0),
    ("failover_p99_s", "<=", 2.0),
    ("wan_goodput_pct", ">=", 80.0),
    ("catchup_s_1h_2000_nodes", "<=", 60.0),
];

/// Records of the throughput runs (one poller; and in total over 50 pollers).
const THROUGHPUT_RECORDS: u64 = 200_000;
const POLLERS: usize = 50;
/// Steady load of the latency run and how long it lasts.
const LATENCY_RATE: u64 = 250;
const LATENCY_SECS: u64 = 20;
/// 60 s intervals of 2,000 nodes in the wire-size run.
const WIRE_INTERVALS: u64 = 5;
const NODES: u32 = 2000;
/// Events per interval in the wire-size run (a 2,000-node site with some churn).
const WIRE_EVENTS: u64 = 10;

const PRIMARY: &str = "bench-primary";

pub fn run(options: &[String]) -> Result<Value> {
    let only: Vec<&str> = options
        .iter()
        .filter_map(|o| o.strip_prefix("--only="))
        .flat_map(|s| s.split(','))
        .collect();
    let want = |part: &str| only.is_empty() || only.contains(&part);
    let mut report = Map::new();
    let mut notes: Vec<String> = Vec::new();

    let scratch = Scratch::new("bus")?;
    let root = scratch.path();
    let pki = Pki::new(root)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    let mut pollers: Vec<String> = vec!["bench-p1".into(), "bench-lat".into(), "bench-wire".into()];
    pollers.extend((0..POLLERS).map(|i| format!("bench-m{i:02}")));
    if want("throughput") || want("latency") || want("wire") || want("nats") {
        pki.issue(PRIMARY, PeerRole::Primary)?;
        for p in &pollers {
            pki.issue(p, PeerRole::Poller)?;
        }
    }

    if want("throughput") || want("nats") {
        let listen = SocketAddr::from((
            Ipv4Addr::LOCALHOST,
            bus_env::free_udp_port(Ipv4Addr::LOCALHOST)?,
        ));
        let primary = Primary::start(root, PRIMARY, listen, None, &pollers, None)?;
        let (rate, bytes) = one_poller(root, &rt, &primary, "bench-p1")?;
        println!("records_per_sec            {rate:>14.0}");
        report.insert("records_per_sec".into(), json!(round(rate, 0)));
        report.insert("wire_bytes_per_record_100b".into(), json!(round(bytes, 1)));
        if want("throughput") {
            let many = fifty_pollers(root, &rt, &primary, &pollers[3..])?;
            println!("records_per_sec_50_pollers {many:>14.0}");
            report.insert("records_per_sec_50_pollers".into(), json!(round(many, 0)));
        }
        drop(primary);
        if want("nats") {
            match bus_nats::run(root, &rt, THROUGHPUT_RECORDS) {
                Ok(n) => {
                    let rate_n = n.records_per_sec;
                    println!("nats_records_per_sec       {rate_n:>14.0}");
                    report.insert("nats_records_per_sec".into(), json!(round(rate_n, 0)));
                    report.insert("ratio_vs_nats".into(), json!(round(rate / rate_n, 2)));
                    report.insert("nats_server_version".into(), json!(n.version));
                    report.insert("nats_max_ack_inflight".into(), json!(n.in_flight));
                }
                Err(e) => {
                    println!("nats: skipped: {e:#}");
                    notes.push(format!("nats: not measured: {e:#}"));
                    report.insert("nats_records_per_sec".into(), Value::Null);
                    report.insert("ratio_vs_nats".into(), Value::Null);
                }
            }
        }
    }

    if want("latency") || want("wire") {
        let listen = SocketAddr::from((
            Ipv4Addr::LOCALHOST,
            bus_env::free_udp_port(Ipv4Addr::LOCALHOST)?,
        ));
        let primary = Primary::start(root, PRIMARY, listen, None, &pollers, None)?;
        if want("latency") {
            let (p50, p99, max, n) = latency(root, &rt, &primary)?;
            println!("latency_p50_ms             {p50:>14.2}");
            println!("latency_p99_ms             {p99:>14.2}");
            report.insert("latency_p50_ms".into(), json!(round(p50, 2)));
            report.insert("latency_p99_ms".into(), json!(round(p99, 2)));
            report.insert("latency_max_ms".into(), json!(round(max, 2)));
            report.insert("latency_samples".into(), json!(n));
            report.insert("latency_rate_per_sec".into(), json!(LATENCY_RATE));
        }
        if want("wire") {
            let w = wire_bytes(root, &rt, &primary)?;
            println!("wire_bytes_per_record      {:>14.1}", w.all);
            report.insert("wire_bytes_per_record".into(), json!(round(w.all, 1)));
            report.insert(
                "wire_bytes_per_node_metrics".into(),
                json!(round(w.metrics, 1)),
            );
            report.insert("wire_bytes_per_event".into(), json!(round(w.events, 1)));
            report.insert(
                "record_bytes_uncompressed_avg".into(),
                json!(round(w.raw, 1)),
            );
        }
    }

    if want("failover") {
        match bus_failover::run(root, &pki, &rt) {
            Ok(f) => {
                for (k, v) in f {
                    report.insert(k, v);
                }
            }
            Err(e) => {
                println!("failover: failed: {e:#}");
                notes.push(format!("failover: not measured: {e:#}"));
                report.insert("failover_p50_s".into(), Value::Null);
                report.insert("failover_p99_s".into(), Value::Null);
            }
        }
    }

    if want("wan") {
        match bus_wan::run(root, &pki, options) {
            Ok((w, wan_notes)) => {
                for (k, v) in w {
                    report.insert(k, v);
                }
                notes.extend(wan_notes);
            }
            Err(e) => {
                println!("wan: not measured: {e:#}");
                notes.push(format!("wan: not measured: {e:#}"));
                report.insert("wan_goodput_pct".into(), Value::Null);
                report.insert("catchup_s_1h_2000_nodes".into(), Value::Null);
            }
        }
    }
    drop(rt);

    let mut report = Value::Object(report);
    let rows = targets(&report);
    if let Some(obj) = report.as_object_mut() {
        obj.insert(
            "_meta".into(),
            json!({
                "date": host::utc_now(),
                "kernel": host::kernel_release(),
                "cpu_model": host::cpu_model(),
                "cpus": host::cpu_count(),
                "targets": rows,
                "notes": notes,
            }),
        );
    }
    host::write_report("bus", &report)?;
    Ok(report)
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

fn targets(report: &Value) -> Vec<Value> {
    let mut rows = Vec::new();
    for (key, cmp, target) in TARGETS {
        let value = report.get(key).and_then(Value::as_f64);
        let met = value.map(|v| {
            if cmp == ">=" {
                v >= target
            } else {
                v <= target
            }
        });
        rows.push(
            json!({ "key": key, "value": value, "target": format!("{cmp} {target}"), "met": met }),
        );
        match value {
            Some(v) => println!(
                "{key:<26} {v:>14.2}   target {cmp} {target:<6} {}",
                if met == Some(true) { "met" } else { "NOT met" }
            ),
            None => println!("{key:<26} {:>14}   target {cmp} {target}", "not measured"),
        }
    }
    rows
}

fn receiver_of(primary: &Primary) -> Vec<Receiver> {
    vec![Receiver {
        peer: primary.name.clone(),
        address: primary.listen,
    }]
}

fn wait_connected(p: &Poller, link: usize) -> Result<()> {
    ensure!(
        wait_until(Duration::from_secs(20), Duration::from_millis(5), || p
            .link(link)
            .is_connected()),
        "poller {} did not connect to its receiver {link} within 20 s",
        p.id
    );
    Ok(())
}

/// Waits until the link's cursor has passed `end` (every record before it acknowledged).
fn wait_acked(p: &Poller, link: usize, end: u64, timeout: Duration) -> Result<()> {
    ensure!(
        wait_until(timeout, Duration::from_micros(500), || p
            .link(link)
            .cursor()
            >= end),
        "poller {}: cursor {} short of {end} after {timeout:?}",
        p.id,
        p.link(link).cursor()
    );
    Ok(())
}

/// One poller, 100-byte records submitted as fast as the log takes them while the bus runs;
/// records/s from the first submit to the last acknowledgement, and frame bytes per record.
fn one_poller(
    root: &std::path::Path,
    rt: &tokio::runtime::Runtime,
    primary: &Primary,
    id: &str,
) -> Result<(f64, f64)> {
    let mut p = Poller::open(root, id, &receiver_of(primary), "")?;
    p.start(rt.handle())?;
    wait_connected(&p, 0)?;
    let first = p.log.durable_next_seq();
    let payloads: Vec<Vec<u8>> = (0..THROUGHPUT_RECORDS)
        .map(|n| record_100(first + n))
        .collect();
    let bytes0 = p.link(0).bytes.load(Ordering::Relaxed);
    let t0 = Instant::now();
    for chunk in payloads.chunks(1000) {
        p.submit(RecordClass::Event, chunk)?;
    }
    let end = first + THROUGHPUT_RECORDS;
    wait_acked(&p, 0, end, Duration::from_secs(180)).with_context(|| primary.output())?;
    let secs = t0.elapsed().as_secs_f64();
    thread::sleep(Duration::from_millis(20));
    let bytes = p.link(0).bytes.load(Ordering::Relaxed) - bytes0;
    p.stop(rt);
    Ok((
        THROUGHPUT_RECORDS as f64 / secs,
        bytes as f64 / THROUGHPUT_RECORDS as f64,
    ))
}

/// 50 pollers to one primary, [`THROUGHPUT_RECORDS`] in total, submitted round-robin in
/// chunks of 1000; records/s from the first submit to the last poller fully acknowledged.
fn fifty_pollers(
    root: &std::path::Path,
    rt: &tokio::runtime::Runtime,
    primary: &Primary,
    ids: &[String],
) -> Result<f64> {
    let mut ps = Vec::new();
    for id in ids.iter().take(POLLERS) {
        let mut p = Poller::open(root, id, &receiver_of(primary), "")?;
        p.start(rt.handle())?;
        ps.push(p);
    }
    for p in &ps {
        wait_connected(p, 0)?;
    }
    let per = THROUGHPUT_RECORDS / POLLERS as u64;
    let firsts: Vec<u64> = ps.iter().map(|p| p.log.durable_next_seq()).collect();
    let payloads: Vec<Vec<Vec<u8>>> = firsts
        .iter()
        .map(|&f| (0..per).map(|n| record_100(f + n)).collect())
        .collect();
    let t0 = Instant::now();
    for c in 0..per.div_ceil(1000) as usize {
        for (p, pl) in ps.iter().zip(&payloads) {
            let lo = c * 1000;
            let hi = (lo + 1000).min(pl.len());
            if lo < hi {
                p.submit(RecordClass::Event, &pl[lo..hi])?;
            }
        }
    }
    for (p, f) in ps.iter().zip(&firsts) {
        wait_acked(p, 0, f + per, Duration::from_secs(180)).with_context(|| primary.output())?;
    }
    let secs = t0.elapsed().as_secs_f64();
    for p in &mut ps {
        p.stop(rt);
    }
    Ok((per * POLLERS as u64) as f64 / secs)
}

/// Steady [`LATENCY_RATE`] records/s for [`LATENCY_SECS`]: each record's latency is from its
/// scheduled submit time (so a late submitter cannot hide a stall) to the moment the
/// poller's cursor for the primary passes it, observed by a thread polling every 100 µs.
fn latency(
    root: &std::path::Path,
    rt: &tokio::runtime::Runtime,
    primary: &Primary,
) -> Result<(f64, f64, f64, u64)> {
    let mut p = Poller::open(root, "bench-lat", &receiver_of(primary), "")?;
    p.start(rt.handle())?;
    wait_connected(&p, 0)?;
    let total = LATENCY_RATE * LATENCY_SECS;
    let period = Duration::from_nanos(1_000_000_000 / LATENCY_RATE);
    let pending: Mutex<VecDeque<(u64, Instant)>> = Mutex::new(VecDeque::new());
    let done = AtomicBool::new(false);
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)
        .map_err(|e| anyhow!("histogram: {e}"))?;
    let mut rng = Rng::new(7);
    // Every 5th record an event, the rest NodeMetrics of the next node.
    let records: Vec<(RecordClass, Vec<u8>)> = (0..total)
        .map(|n| {
            let r = if n % 5 == 4 {
                event(&mut rng, n, n / 2000)
            } else {
                node_metrics(&mut rng, (n % u64::from(NODES)) as u32, n / 2000)
            };
            (class_of(&r), encode(&r))
        })
        .collect();
    let result: Result<()> = thread::scope(|s| {
        let watcher = s.spawn(|| {
            let link = p.link(0);
            loop {
                let c = link.cursor();
                let now = Instant::now();
                {
                    let mut q = pending.lock().unwrap_or_else(|e| e.into_inner());
                    while q.front().is_some_and(|&(seq, _)| seq < c) {
                        if let Some((_, at)) = q.pop_front() {
                            let us = now.saturating_duration_since(at).as_micros() as u64;
                            let _ = hist.record(us.max(1));
                        }
                    }
                    if q.is_empty() && done.load(Ordering::Relaxed) {
                        return;
                    }
                }
                thread::sleep(Duration::from_micros(100));
            }
        });
        let t0 = Instant::now() + Duration::from_millis(10);
        let mut r = Ok(());
        for (i, (class, payload)) in records.iter().enumerate() {
            let at = t0 + period * i as u32;
            if let Some(d) = at.checked_duration_since(Instant::now()) {
                thread::sleep(d);
            }
            // The pending entry goes in under the lock before the record can be acknowledged.
            let mut q = pending.lock().unwrap_or_else(|e| e.into_inner());
            match p.submit(*class, std::slice::from_ref(payload)) {
                Ok(seq) => q.push_back((seq, at)),
                Err(e) => {
                    r = Err(e);
                    break;
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !pending.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
            if Instant::now() > deadline {
                r = r.and(Err(anyhow!("latency: records unacknowledged after 30 s")));
                pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        done.store(true, Ordering::Relaxed);
        let _ = watcher.join();
        r
    });
    p.stop(rt);
    result.with_context(|| primary.output())?;
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Ok((ms(0.5), ms(0.99), hist.max() as f64 / 1000.0, hist.len()))
}

struct Wire {
    all: f64,
    metrics: f64,
    events: f64,
    raw: f64,
}

/// [`WIRE_INTERVALS`] intervals as a poller produces them: [`WIRE_EVENTS`] events spread
/// over the interval (each goes alone, as live events do), then the interval's 2,000
/// NodeMetrics in one burst (the aggregation writes them together at the interval's end).
fn wire_bytes(
    root: &std::path::Path,
    rt: &tokio::runtime::Runtime,
    primary: &Primary,
) -> Result<Wire> {
    let mut p = Poller::open(root, "bench-wire", &receiver_of(primary), "")?;
    p.start(rt.handle())?;
    wait_connected(&p, 0)?;
    let mut rng = Rng::new(11);
    let (mut ev_bytes, mut ev_n, mut m_bytes, mut m_n, mut raw) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let settle = |p: &Poller, end: u64| -> Result<u64> {
        wait_acked(p, 0, end, Duration::from_secs(60))?;
        thread::sleep(Duration::from_millis(10));
        Ok(p.link(0).bytes.load(Ordering::Relaxed))
    };
    let mut before = p.link(0).bytes.load(Ordering::Relaxed);
    for interval in 0..WIRE_INTERVALS {
        for e in 0..WIRE_EVENTS {
            let r = event(&mut rng, e, interval);
            let payload = encode(&r);
            raw += payload.len() as u64;
            let seq = p.append(class_of(&r), &[payload])?;
            let after = settle(&p, seq + 1)?;
            ev_bytes += after - before;
            ev_n += 1;
            before = after;
        }
        let batch: Vec<Vec<u8>> = (0..NODES)
            .map(|n| encode(&node_metrics(&mut rng, n, interval)))
            .collect();
        raw += batch.iter().map(|b| b.len() as u64).sum::<u64>();
        let seq = p.append(RecordClass::Metric, &batch)?;
        let after = settle(&p, seq + 1)?;
        m_bytes += after - before;
        m_n += u64::from(NODES);
        before = after;
    }
    p.stop(rt);
    let n = (ev_n + m_n) as f64;
    Ok(Wire {
        all: (ev_bytes + m_bytes) as f64 / n,
        metrics: m_bytes as f64 / m_n as f64,
        events: ev_bytes as f64 / ev_n as f64,
        raw: raw as f64 / n,
    })
}
