//! `opha-bench log`: the replay log's durable throughput and latency, against redb in the same
//! run (opha-log's own benchmark), written to `target/bench/log.json`.
//!
//! `aggregate_ms_per_2000_nodes` is the aggregation core's CPU time for one 60 s interval of
//! 2,000 nodes as the poller runs it: a snapshot every second (the default sweep interval), each
//! node polled once per interval (ICMP and TCP every interval, SNMP every fifth). The report also
//! carries the core's least work (one snapshot per interval) and its worst case (every node
//! active in every snapshot).

use anyhow::{Result, bail};
use serde_json::{Value, json};

use crate::host;

/// Targets of issue 3 §7, shown beside the figures.
const TARGETS: [(&str, &str, f64); 4] = [
    ("durable_records_per_sec", ">=", 500_000.0),
    ("append_to_durable_p99_ms", "<=", 5.0),
    ("ratio_vs_redb", ">=", 3.0),
    ("aggregate_ms_per_2000_nodes", "<=", 5.0),
];

/// Intervals averaged per aggregation figure.
const AGG_ITERATIONS: u32 = 5;

pub fn run() -> Result<Value> {
    let mut report = opha_log::bench::run_log_bench();
    if let Some(error) = report.get("error") {
        bail!("the replay-log benchmark failed: {error}");
    }
    if let Some(obj) = report.as_object_mut() {
        use opha_sidecar::aggregate::{bench_aggregate, bench_aggregate_spread};
        obj.insert(
            "aggregate_ms_per_2000_nodes".into(),
            json!(bench_aggregate_spread(2000, 60, AGG_ITERATIONS)),
        );
        obj.insert(
            "aggregate_ms_per_2000_nodes_one_snapshot".into(),
            json!(bench_aggregate(2000, 1, AGG_ITERATIONS)),
        );
        obj.insert(
            "aggregate_ms_per_2000_nodes_worst_case".into(),
            json!(bench_aggregate(2000, 60, AGG_ITERATIONS)),
        );
    }
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
                "{key:<28} {v:>14.2}   target {cmp} {target:<10} {}",
                if met == Some(true) { "met" } else { "NOT met" }
            ),
            None => println!("{key:<28} {:>14}   target {cmp} {target}", "missing"),
        }
    }
    if let Some(obj) = report.as_object_mut() {
        obj.insert(
            "_meta".into(),
            json!({
                "date": host::utc_now(),
                "kernel": host::kernel_release(),
                "cpu_model": host::cpu_model(),
                "cpus": host::cpu_count(),
                "targets": rows,
            }),
        );
    }
    host::write_report("log", &report)?;
    Ok(report)
}
