//! The receiver's commit path in isolation: `cargo run --release -p opha-store --example
//! commit_path [DIR] [BATCH] [TOTAL]`. 100-byte events about 2,000 nodes (like `cargo xtask
//! bench bus`), one durable commit per batch, one caller; prints records/s and the commit
//! thread's CPU seconds per 100k records (the stable figure on a shared machine).
//! Experiments: `COMMIT_PATH_SQL` runs SQL on the fresh file first (e.g. `DROP INDEX ..` to
//! price an index), `COMMIT_PATH_CKPT` sets `wal_autocheckpoint`.

use opha_common::wire::{
    Event, EventId, EventKind, NodeRef, PeerId, Record, Severity, Subject, TenantId,
};
use opha_store::{Store, StoreConfig};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

fn record(seq: u64) -> Record {
    let n = (seq % 2000) as u16;
    Record::Event(Event {
        id: EventId::from_u128(u128::from(seq) + 1),
        time_ms: 1_700_000_000_000 + seq,
        tenant: TenantId(1),
        subject: Subject::Node(NodeRef::new(
            0,
            IpAddr::V4(Ipv4Addr::new(198, 18, (n >> 8) as u8, n as u8)),
            None,
        )),
        kind: EventKind::NodeDown,
        severity: Severity::Major,
        details: format!("bench {seq:08} xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"),
    })
}

fn cpu_secs() -> f64 {
    let s = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let f: Vec<&str> = s
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let base = args.get(1).map(std::path::PathBuf::from);
    let batch: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(512);
    let total: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let dir = match &base {
        Some(b) => tempfile::tempdir_in(b)?,
        None => tempfile::tempdir()?,
    };
    let mut config = StoreConfig::default();
    if let Some(n) = std::env::var("COMMIT_PATH_CKPT")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.wal_autocheckpoint = n;
    }
    let store = Store::open(dir.path(), config)?;
    let db = store.tenant(TenantId(1))?;
    // Experiments: SQL run on the fresh file before the commits (e.g. dropping an index).
    if let Ok(sql) = std::env::var("COMMIT_PATH_SQL") {
        rusqlite::Connection::open(db.path())?.execute_batch(&sql)?;
    }
    let p = PeerId::new("bench-p1")?;
    let batches: Vec<Vec<(u64, Record)>> = (0..total / batch)
        .map(|b| {
            (b * batch..(b + 1) * batch)
                .map(|s| (s, record(s)))
                .collect()
        })
        .collect();
    let t = Instant::now();
    let c0 = cpu_secs();
    for b in &batches {
        db.commit_batch(&p, 1, b)?;
    }
    let s = t.elapsed().as_secs_f64();
    let cpu = cpu_secs() - c0;
    let n = (total / batch * batch) as f64;
    println!(
        "batch {batch}: {:.0} records/s, {:.2} ms/commit, cpu {:.2} s per 100k records",
        n / s,
        s * 1000.0 / (total / batch) as f64,
        cpu * 100_000.0 / n
    );
    Ok(())
}
