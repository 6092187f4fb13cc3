//! Appending, reading back, reopening, concurrent appenders.

mod common;

use std::sync::Arc;

use common::{ScratchDir, class_for, payload_for, read_all, small_segments};
use opha_log::{Appended, Log, LogConfig, RecordClass, Submitted};

#[test]
fn appended_records_read_back_in_order_and_survive_reopen() {
    let dir = ScratchDir::new("append");
    {
        let log = Log::open(small_segments(dir.path(), 4096)).unwrap();
        assert!(log.recovery().is_clean());
        assert_eq!(log.durable_next_seq(), 1);
        for seq in 1..=500u64 {
            assert_eq!(
                log.append(class_for(seq), &payload_for(seq)).unwrap(),
                Appended::Durable(seq)
            );
        }
        let records = read_all(&log, 1);
        assert_eq!(records.len(), 500);
        for (i, record) in records.iter().enumerate() {
            let seq = i as u64 + 1;
            assert_eq!(
                (record.seq, record.class, &record.payload),
                (seq, class_for(seq), &payload_for(seq))
            );
        }
        let metrics = log.metrics();
        assert_eq!(metrics.records_appended, 500);
        assert!(
            metrics.segments > 5,
            "4 KiB segments roll over: {}",
            metrics.segments
        );
        assert!(metrics.fsyncs >= metrics.commits);
        assert_eq!(metrics.depth_records, 500);
    }
    let log = Log::open(small_segments(dir.path(), 4096)).unwrap();
    assert!(log.recovery().is_clean(), "{:?}", log.recovery());
    assert_eq!(log.durable_next_seq(), 501);
    let from_middle = read_all(&log, 250);
    assert_eq!(from_middle.first().map(|r| r.seq), Some(250));
    assert_eq!(from_middle.len(), 251);
    assert_eq!(
        log.append(RecordClass::Event, b"after reopen").unwrap(),
        Appended::Durable(501)
    );
}

#[test]
fn a_reader_at_the_end_continues_after_new_appends() {
    let dir = ScratchDir::new("tail");
    let log = Log::open(small_segments(dir.path(), 2048)).unwrap();
    let mut reader = log.read_from(1);
    assert!(reader.next().is_none());
    for seq in 1..=40u64 {
        log.append(class_for(seq), &payload_for(seq)).unwrap();
    }
    let first: Vec<u64> = reader.by_ref().map(|r| r.unwrap().seq).collect();
    assert_eq!(first, (1..=40).collect::<Vec<_>>());
    for seq in 41..=80u64 {
        log.append(class_for(seq), &payload_for(seq)).unwrap();
    }
    let second: Vec<u64> = reader.map(|r| r.unwrap().seq).collect();
    assert_eq!(second, (41..=80).collect::<Vec<_>>());
}

#[test]
fn concurrent_appenders_share_fsyncs_and_lose_nothing() {
    let dir = ScratchDir::new("concurrent");
    let log = Arc::new(Log::open(small_segments(dir.path(), 64 << 10)).unwrap());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut seqs = Vec::new();
                for i in 0..300u64 {
                    let payload = format!("thread {t} record {i}");
                    match log.append(RecordClass::Event, payload.as_bytes()).unwrap() {
                        Appended::Durable(seq) => seqs.push((seq, payload)),
                        Appended::Thinned => panic!("events are never thinned"),
                    }
                }
                seqs
            })
        })
        .collect();
    let mut appended: Vec<(u64, String)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    appended.sort();
    assert_eq!(appended.len(), 2400);
    let records = read_all(&log, 1);
    assert_eq!(records.len(), 2400);
    for (record, (seq, payload)) in records.iter().zip(&appended) {
        assert_eq!(record.seq, *seq);
        assert_eq!(record.payload, payload.as_bytes());
    }
    let metrics = log.metrics();
    assert!(
        metrics.commits < 2400,
        "appends were batched: {} commits",
        metrics.commits
    );
}

#[test]
fn submit_and_wait_pipeline_many_records_per_fsync() {
    let dir = ScratchDir::new("submit");
    let log = Log::open(LogConfig::new(dir.path())).unwrap();
    let tickets: Vec<_> = (1..=10_000u64)
        .map(
            |seq| match log.submit(class_for(seq), &payload_for(seq)).unwrap() {
                Submitted::Queued(ticket) => ticket,
                Submitted::Thinned => panic!("no thinning below the budget"),
            },
        )
        .collect();
    for (i, ticket) in tickets.into_iter().enumerate() {
        assert_eq!(log.wait(ticket).unwrap(), i as u64 + 1);
    }
    assert!(log.metrics().commits < 1000);
    assert_eq!(read_all(&log, 1).len(), 10_000);
}

#[test]
fn oversized_records_get_a_clear_error() {
    let dir = ScratchDir::new("oversized");
    let log = Log::open(LogConfig::new(dir.path())).unwrap();
    let error = log
        .append(RecordClass::Event, &vec![0u8; (4 << 20) + 1])
        .unwrap_err();
    assert!(
        matches!(error, opha_log::Error::RecordTooLarge { .. }),
        "{error}"
    );
    assert_eq!(
        log.append(RecordClass::Event, b"ok").unwrap(),
        Appended::Durable(1)
    );
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = ScratchDir::new("locked");
    let _log = Log::open(LogConfig::new(dir.path())).unwrap();
    let error = Log::open(LogConfig::new(dir.path()))
        .err()
        .expect("second open must fail");
    assert!(matches!(error, opha_log::Error::Locked { .. }), "{error}");
}
