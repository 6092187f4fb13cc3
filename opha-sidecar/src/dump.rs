//! Human and JSON renderings of the kernel counters.

use std::fmt::Write as _;

use opha_common::node::ProtoClass;

use crate::loader::{GlobalStats, NodeSnapshot};

/// A table: one line per node and protocol class with traffic, then the global statistics.
pub fn render_text(nodes: &[NodeSnapshot], stats: &GlobalStats) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<5} {:<39} {:>6} {:<5} {:>9} {:>9} {:>7} {:>11} {:>11} {:>9} {:>9} {:>9}",
        "vlan",
        "node",
        "tenant",
        "class",
        "requests",
        "responses",
        "errors",
        "bytes_out",
        "bytes_in",
        "rtt_min",
        "rtt_avg",
        "rtt_max"
    );
    for n in nodes {
        for class in ProtoClass::ALL {
            let c = n.counters.class(class);
            if c.requests == 0 && c.responses == 0 && c.errors == 0 && c.bytes_out == 0 {
                continue;
            }
            let avg = c.rtt_sum_ns.checked_div(c.rtt_count).unwrap_or(0);
            let _ = writeln!(
                out,
                "{:<5} {:<39} {:>6} {:<5} {:>9} {:>9} {:>7} {:>11} {:>11} {:>9} {:>9} {:>9}",
                n.key.vlan,
                n.addr().to_string(),
                n.counters.tenant,
                class.name(),
                c.requests,
                c.responses,
                c.errors,
                c.bytes_out,
                c.bytes_in,
                us(c.rtt_min_ns),
                us(avg),
                us(c.rtt_max_ns),
            );
        }
    }
    let _ = writeln!(out, "global:");
    for (name, v) in &stats.counters {
        let _ = writeln!(out, "  {name:<24} {v}");
    }
    let _ = writeln!(out, "  {:<24} {}", "inflight_live", stats.inflight_live);
    let _ = writeln!(
        out,
        "  {:<24} {}",
        "inflight_evictions", stats.inflight_evictions
    );
    let _ = writeln!(out, "  {:<24} {}", "inflight_swept", stats.inflight_swept);
    out
}

fn us(ns: u64) -> String {
    if ns == 0 {
        "-".to_string()
    } else {
        format!("{:.0}us", ns as f64 / 1000.0)
    }
}

/// `{"nodes": [...], "stats": {...}}`, one object per node with its classes.
pub fn render_json(nodes: &[NodeSnapshot], stats: &GlobalStats) -> serde_json::Value {
    let nodes: Vec<serde_json::Value> = nodes
        .iter()
        .map(|n| {
            let mut classes = serde_json::Map::new();
            for class in ProtoClass::ALL {
                let c = n.counters.class(class);
                classes.insert(
                    class.name().to_string(),
                    serde_json::json!({
                        "requests": c.requests,
                        "responses": c.responses,
                        "errors": c.errors,
                        "bytes_out": c.bytes_out,
                        "bytes_in": c.bytes_in,
                        "rtt_count": c.rtt_count,
                        "rtt_sum_ns": c.rtt_sum_ns,
                        "rtt_min_ns": c.rtt_min_ns,
                        "rtt_max_ns": c.rtt_max_ns,
                        "rtt_hist": c.rtt_hist.to_vec(),
                        "last_response_ns": c.last_response_ns,
                    }),
                );
            }
            serde_json::json!({
                "vlan": n.key.vlan,
                "addr": n.addr().to_string(),
                "tenant": n.counters.tenant,
                "classes": classes,
            })
        })
        .collect();
    let mut st = serde_json::Map::new();
    for (name, v) in &stats.counters {
        st.insert(name.clone(), (*v).into());
    }
    st.insert("inflight_live".into(), stats.inflight_live.into());
    st.insert("inflight_evictions".into(), stats.inflight_evictions.into());
    st.insert("inflight_swept".into(), stats.inflight_swept.into());
    serde_json::json!({ "nodes": nodes, "stats": st })
}
