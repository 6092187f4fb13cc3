//! `opha-sidecar log dump`: print the replay log's records without consuming anything.
//!
//! Read-only and lock-free: it reads the segment files directly with the log's pure format
//! core (`opha_log::format::scan_segment`) instead of opening the log, which would take the
//! directory's lock (held by a running poller), run recovery (which may truncate or move
//! files) and could create the directory. So it works while the poller runs, moves no cursor,
//! and changes no file. What it sees of a running poller's last segment is every complete
//! record written so far; a frame still being written ends that segment's scan quietly.
//!
//! Output, one line per record from `--from` on: with `--json`,
//! `{"seq": N, "class": "event"|"metric", "record": <Record as JSON>}`, or
//! `{"seq": N, "class": ..., "error": "..."}` for a payload that does not decode; without it a
//! short text line. Damaged segments are reported on stderr and skipped.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use opha_common::wire::{EventKind, Record, Subject};
use opha_log::RecordClass;
use opha_log::format::scan_segment;

use crate::ingest::sink::decode_record;

/// What to print.
#[derive(Clone, Debug)]
pub struct DumpOptions {
    pub dir: PathBuf,
    /// First sequence number printed.
    pub from: u64,
    pub json: bool,
}

/// Counts of one dump.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DumpSummary {
    pub records: u64,
    pub undecodable: u64,
    pub damaged_segments: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("{0} is not a replay log directory (it does not exist)")]
    NoLog(PathBuf),
    #[error("{context}: {error}")]
    Io { context: String, error: io::Error },
}

fn class_name(c: RecordClass) -> &'static str {
    match c {
        RecordClass::Event => "event",
        RecordClass::Metric => "metric",
    }
}

/// The JSON line of one record (shared with the poller's `GET /v1/log`).
pub fn json_line(seq: u64, class: RecordClass, payload: &[u8]) -> String {
    let value = match decode_record(payload) {
        Ok(record) => match serde_json::to_value(&record) {
            Ok(v) => serde_json::json!({"seq": seq, "class": class_name(class), "record": v}),
            Err(e) => {
                serde_json::json!({"seq": seq, "class": class_name(class), "error": e.to_string()})
            }
        },
        Err(e) => serde_json::json!({"seq": seq, "class": class_name(class), "error": e}),
    };
    value.to_string()
}

/// A short human line for one record.
pub fn text_line(seq: u64, class: RecordClass, payload: &[u8]) -> String {
    let class = class_name(class);
    match decode_record(payload) {
        Ok(record) => format!("{seq:>10} {class:<6} {}", summarize(&record)),
        Err(e) => format!("{seq:>10} {class:<6} undecodable payload: {e}"),
    }
}

fn subject(s: &Subject) -> String {
    match s {
        Subject::Node(n) => match &n.name {
            Some(name) => format!("{name} ({}, vlan {})", n.addr, n.vlan),
            None => format!("{} vlan {}", n.addr, n.vlan),
        },
        Subject::Peer(p) => format!("peer {}", p.as_str()),
    }
}

fn kind_name(k: &EventKind) -> String {
    // The serde name is the tag operators also see in JSON.
    match serde_json::to_value(k) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(serde_json::Value::Object(m)) => m.keys().next().cloned().unwrap_or_default(),
        _ => "event".to_string(),
    }
}

fn summarize(r: &Record) -> String {
    match r {
        Record::NodeMetrics(m) => {
            let node = Subject::Node(m.node.clone());
            let class = |name: &str, c: &opha_common::wire::ClassMetrics| {
                if c.requests == 0 && c.responses == 0 && c.timeouts == 0 {
                    return String::new();
                }
                let rtt = c
                    .rtt
                    .map(|r| format!(" rtt avg {}us p99 {}us", r.avg_us, r.p99_us))
                    .unwrap_or_default();
                format!(
                    " {name} {}/{} req/resp, {} timeouts, loss {}ppm{rtt};",
                    c.requests, c.responses, c.timeouts, c.loss_ppm
                )
            };
            format!(
                "node_metrics tenant {} {} interval {}+{}ms:{}{}{}",
                m.tenant.0,
                subject(&node),
                m.interval_start_ms,
                m.interval_ms,
                class("icmp", &m.icmp),
                class("snmp", &m.snmp),
                class("tcp", &m.tcp)
            )
        }
        Record::Event(e) => format!(
            "event {} {} tenant {} {}: {} [{}]",
            kind_name(&e.kind),
            e.severity.name(),
            e.tenant.0,
            subject(&e.subject),
            e.details,
            e.id
        ),
        Record::ServiceState(s) => format!("service_state {s:?}"),
        Record::DaemonHealth(d) => format!(
            "daemon_health {} {:?} pid {:?}: {}",
            d.daemon, d.state, d.pid, d.detail
        ),
        Record::PeerStatus(p) => format!(
            "peer_status {} uptime {}ms log depth {} records",
            p.peer.as_str(),
            p.uptime_ms,
            p.replay_log.records
        ),
    }
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The log's segment files, by first sequence number.
fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, DumpError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(DumpError::NoLog(dir.to_path_buf()));
        }
        Err(error) => {
            return Err(DumpError::Io {
                context: format!("listing {}", dir.display()),
                error,
            });
        }
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|error| DumpError::Io {
            context: format!("listing {}", dir.display()),
            error,
        })?;
        if let Some(first) = parse_segment_name(&entry.file_name().to_string_lossy()) {
            out.push((first, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Prints the records of the log in `opts.dir` to `out`; problems go to `err`.
pub fn dump(
    opts: &DumpOptions,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<DumpSummary, DumpError> {
    let segs = segments(&opts.dir)?;
    let mut summary = DumpSummary::default();
    let write_err = |error| DumpError::Io {
        context: "writing the output".into(),
        error,
    };
    for (i, (first, path)) in segs.iter().enumerate() {
        // A segment ends where the next begins: skip those entirely before `from`.
        if segs.get(i + 1).is_some_and(|(next, _)| *next <= opts.from) {
            continue;
        }
        let last = i + 1 == segs.len();
        let bytes = match fs::read(path) {
            Ok(b) => b,
            // Deleted since it was listed: every receiver had taken it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => {
                return Err(DumpError::Io {
                    context: format!("reading {}", path.display()),
                    error,
                });
            }
        };
        let scan = match scan_segment(&bytes, Some(*first)) {
            Ok(s) => s,
            // A last segment being created right now may not have its header yet.
            Err(_) if last && bytes.len() <= opha_log::format::SEGMENT_HEADER_LEN => continue,
            Err(e) => {
                summary.damaged_segments += 1;
                let _ = writeln!(err, "{}: damaged header, skipped: {e}", path.display());
                continue;
            }
        };
        for rec in scan.records() {
            if rec.seq < opts.from {
                continue;
            }
            let line = if opts.json {
                json_line(rec.seq, rec.class, rec.payload)
            } else {
                text_line(rec.seq, rec.class, rec.payload)
            };
            if decode_record(rec.payload).is_err() {
                summary.undecodable += 1;
            }
            match writeln!(out, "{line}") {
                Ok(()) => {}
                // The reader went away (`| head`): not an error of the dump.
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(summary),
                Err(e) => return Err(write_err(e)),
            }
            summary.records += 1;
        }
        if let Some(d) = &scan.damage {
            // The last segment's tail may be a batch being written right now: not damage.
            let quiet = last && d.is_torn_tail();
            if !quiet {
                summary.damaged_segments += 1;
                let _ = writeln!(
                    err,
                    "{}: damaged at offset {} ({}); {} records after it not shown",
                    path.display(),
                    d.offset,
                    d.error,
                    match d.after {
                        opha_log::format::AfterDamage::ValidLooking { records, .. } =>
                            records.to_string(),
                        _ => "no".to_string(),
                    }
                );
            }
        }
    }
    match out.flush() {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(write_err(e)),
        _ => Ok(summary),
    }
}
