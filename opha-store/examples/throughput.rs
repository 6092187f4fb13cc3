//! Durable commit throughput of the store: `cargo run --release -p opha-store --example
//! throughput [DIR]`. Records are ~100-byte events; every commit is WAL + synchronous=FULL.
//! Prints one line per mode (a later bench reads the figures from the report, not from here).

use opha_common::wire::{
    Event, EventId, EventKind, NodeRef, PeerId, Record, Severity, Subject, TenantId,
};
use opha_store::{Committer, CommitterConfig, Store, StoreConfig};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

fn record(tenant: u32, seq: u64) -> Record {
    let n = (seq % 2000) as u16;
    Record::Event(Event {
        id: EventId::from_u128(u128::from(seq) * 0x9e37_79b9_7f4a_7c15),
        time_ms: 1_700_000_000_000 + seq,
        tenant: TenantId(tenant),
        subject: Subject::Node(NodeRef::new(
            10,
            IpAddr::V4(Ipv4Addr::new(198, 18, (n >> 8) as u8, n as u8)),
            Some(format!("router-{n:04}")),
        )),
        kind: EventKind::NodeDown,
        severity: Severity::Major,
        details: "no answer to icmp, snmp, tcp".into(),
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base = std::env::args().nth(1).map(std::path::PathBuf::from);
    let dir = match &base {
        Some(b) => tempfile::tempdir_in(b)?,
        None => tempfile::tempdir()?,
    };
    let frame = opha_common::wire::encode_frame(&opha_common::wire::Sequenced::new(
        PeerId::new("poller-0001")?,
        1,
        123_456,
        record(1, 123_456),
    ))?;
    println!(
        "record frame: {} bytes; dir {}",
        frame.len(),
        dir.path().display()
    );
    let store = Store::open(dir.path(), StoreConfig::default())?;
    // Each mode writes a fresh tenant file, so no mode pays for an earlier one's data.
    let mut tenant = 0;

    // One caller, one durable transaction per batch.
    let mut epoch = 0;
    for batch in [1u64, 10, 100, 1000] {
        epoch += 1;
        let p = PeerId::new("direct")?;
        tenant += 1;
        let db = store.tenant(TenantId(tenant))?;
        let total = (batch * 300).clamp(300, 200_000);
        let t = Instant::now();
        let mut seq = 0;
        while seq < total {
            let records: Vec<(u64, Record)> =
                (seq..seq + batch).map(|s| (s, record(tenant, s))).collect();
            db.commit_batch(&p, epoch, &records)?;
            seq += batch;
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "direct   batch {batch:>5}: {:>9.0} records/s, {:>6.0} commits/s",
            total as f64 / s,
            (total / batch) as f64 / s
        );
    }

    // Group commit: many pollers' receivers submit concurrently, one transaction per group.
    for (callers, batch) in [(1u64, 100u64), (8, 100), (50, 100), (50, 10)] {
        tenant += 1;
        let committer =
            Committer::new(store.tenant(TenantId(tenant))?, CommitterConfig::default())?;
        epoch += 1;
        let per_caller = 200_000 / callers / batch * batch;
        let t = Instant::now();
        std::thread::scope(|s| {
            for c in 0..callers {
                let committer = &committer;
                s.spawn(move || {
                    let p = PeerId::new(format!("poller-{c}")).expect("valid id");
                    let mut seq = 0;
                    while seq < per_caller {
                        let records: Vec<(u64, Record)> =
                            (seq..seq + batch).map(|s| (s, record(tenant, s))).collect();
                        committer.commit(p.clone(), epoch, records).expect("commit");
                        seq += batch;
                    }
                });
            }
        });
        let s = t.elapsed().as_secs_f64();
        println!(
            "grouped  {callers:>2} callers x batch {batch:>4}: {:>9.0} records/s",
            (per_caller * callers) as f64 / s
        );
    }
    Ok(())
}
