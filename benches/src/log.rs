//! `opha-bench log`: the replay log's durable throughput and latency, against redb in the same
//! run (opha-log's own benchmark), written to `target/bench/log.json`.
//!
//! `aggregate_ms_per_2000_nodes` joins this report when the aggregation core lands.

use anyhow::{Result, bail};
use serde_json::{Value, json};

use crate::host;

/// Targets of issue 3 §7, shown beside the figures.
const TARGETS: [(&str, &str, f64); 3] = [
    ("durable_records_per_sec", ">=", 500_000.0),
    ("append_to_durable_p99_ms", "<=", 5.0),
    ("ratio_vs_redb", ">=", 3.0),
];

pub fn run() -> Result<Value> {
    let mut report = opha_log::bench::run_log_bench();
    if let Some(error) = report.get("error") {
        bail!("the replay-log benchmark failed: {error}");
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
