//! The ring task against an in-memory ring (the kernel's consumer semantics) and a real
//! replay log: records are committed only once durable, exactly the durable part of a batch
//! is committed when the log refuses the rest, and every record ends up in the log once, in
//! order, decoded or marked undecodable.

mod poller_support;

use std::sync::Arc;

use opha_common::ports::SNAP_LEN;
use opha_common::ringbuf::{RingKind, RingRecord};
use opha_common::wire::{EventKind, PeerId, Record};
use opha_log::{BudgetConfig, Log, LogConfig};
use opha_sidecar::decode::DecodeContext;
use opha_sidecar::poller::ring::{RingSettings, RingTask, Step};
use opha_sidecar::poller::shared::{Shared, get};
use opha_sidecar::ring::RingItem;
use poller_support::{FakeRing, records};

fn syslog(i: u16) -> RingItem {
    // Padded, so that a few hundred fill a small log budget.
    let text = format!(
        "<13>Jan  1 00:00:00 host app: message {i} {}",
        "x".repeat(300)
    );
    record(RingKind::Syslog as u8, 40_000 + i, text.as_bytes())
}

fn record(kind: u8, src_port: u16, payload: &[u8]) -> RingItem {
    let mut data = [0u8; SNAP_LEN];
    data[..payload.len()].copy_from_slice(payload);
    let mut src = [0u8; 16];
    src[10] = 0xff;
    src[11] = 0xff;
    src[12..].copy_from_slice(&[198, 18, 0, 7]);
    RingItem::Record(Box::new(RingRecord {
        ts_ns: 1_000_000 + u64::from(src_port),
        ifindex: 2,
        tenant: 1,
        src,
        vlan: 0,
        src_port,
        dst_port: 514,
        kind,
        _pad: 0,
        orig_len: payload.len() as u16,
        cap_len: payload.len() as u16,
        _pad2: 0,
        data,
    }))
}

fn task(ring: &FakeRing, log: &Arc<Log>) -> (RingTask<FakeRing>, Arc<Shared>) {
    let shared = Arc::new(Shared::new(PeerId::new("p1").unwrap(), log.clone()));
    let settings = RingSettings {
        batch: 32,
        ..RingSettings::default()
    };
    (
        RingTask::new(
            ring.clone(),
            shared.clone(),
            DecodeContext::fixed(0, 42),
            None,
            settings,
        ),
        shared,
    )
}

/// The message numbers of the syslog events in the log, in log order.
fn messages(log: &Log) -> Vec<u16> {
    records(log)
        .into_iter()
        .filter_map(|(_, r)| match r {
            Record::Event(e) => match e.kind {
                EventKind::Syslog(s) => s
                    .message
                    .strip_prefix("message ")
                    .and_then(|n| n.split(' ').next()?.parse().ok()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

#[test]
fn every_record_is_durable_before_it_is_committed_and_none_is_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::open(LogConfig::new(tmp.path())).unwrap());
    let ring = FakeRing::default();
    for i in 0..70 {
        ring.push(syslog(i));
    }
    ring.push(record(RingKind::Trap as u8, 1, b"\x30\x03not snmp"));
    ring.push(RingItem::Unexpected(17));
    let (mut t, shared) = task(&ring, &log);
    let mut steps = 0;
    while ring.waiting() > 0 {
        assert!(!matches!(t.step(), Step::Failed(_)));
        steps += 1;
        assert!(steps < 100);
    }
    assert_eq!(ring.committed(), 72);
    assert_eq!(messages(&log), (0..70).collect::<Vec<_>>());
    let undecodable: Vec<_> = records(&log)
        .into_iter()
        .filter_map(|(_, r)| match r {
            Record::Event(e) if matches!(e.kind, EventKind::Undecodable { .. }) => Some(e),
            _ => None,
        })
        .collect();
    assert_eq!(undecodable.len(), 2, "garbage and the unexpected record");
    assert!(undecodable[1].details.contains("17 bytes"));
    let c = &shared.counters;
    assert_eq!(get(&c.ring_records), 72);
    assert_eq!(get(&c.undecodable), 2);
    assert_eq!(get(&c.ring_unexpected), 1);
    assert_eq!(t.step(), Step::Idle);
}

#[test]
fn when_the_log_refuses_part_of_a_batch_exactly_the_durable_part_is_committed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = LogConfig::new(tmp.path());
    cfg.segment_bytes = 64 << 10;
    cfg.budget = BudgetConfig::new(128 << 10);
    let log = Arc::new(Log::open(cfg).unwrap());
    log.add_cursor("receiver").unwrap();
    let ring = FakeRing::default();
    let total = 600u16;
    for i in 0..total {
        ring.push(syslog(i));
    }
    let (mut t, shared) = task(&ring, &log);
    let mut failed = 0;
    for _ in 0..200 {
        if let Step::Failed(_) = t.step() {
            failed += 1;
            break;
        }
    }
    assert_eq!(failed, 1, "the budget must run out");
    // Whatever is committed is exactly what the log holds; the rest waits in the ring.
    let durable = messages(&log);
    assert_eq!(durable.len(), ring.committed());
    assert_eq!(durable, (0..durable.len() as u16).collect::<Vec<_>>());
    assert_eq!(ring.waiting(), usize::from(total) - ring.committed());
    // A receiver takes everything: space is freed and the rest flows, each record once.
    let mut seen = durable;
    let mut rounds = 0;
    while ring.waiting() > 0 {
        log.set_cursor("receiver", log.durable_next_seq()).unwrap();
        let before = log.durable_next_seq();
        while !matches!(t.step(), Step::Failed(_) | Step::Idle) {}
        let mut got: Vec<u16> = log
            .read_from(before)
            .filter_map(|r| r.ok())
            .filter_map(
                |r| match opha_sidecar::ingest::sink::decode_record(&r.payload) {
                    Ok(Record::Event(e)) => match e.kind {
                        EventKind::Syslog(s) => s
                            .message
                            .strip_prefix("message ")?
                            .split(' ')
                            .next()?
                            .parse()
                            .ok(),
                        _ => None,
                    },
                    _ => None,
                },
            )
            .collect();
        seen.append(&mut got);
        rounds += 1;
        assert!(rounds < 50);
    }
    assert_eq!(seen, (0..total).collect::<Vec<_>>());
    assert!(get(&shared.counters.ring_append_failures) >= 1);
}
