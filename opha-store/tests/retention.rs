//! Retention by age and by size, in chunks; dedupe state survives it.

// Single ranges are what a contiguous stream looks like.
#![allow(clippy::single_range_in_vec_init)]

mod common;

use common::*;
use opha_common::wire::{Record, TenantId};
use opha_store::{EventFilter, PageRequest, Retention};

const MIN: u64 = 60_000;

fn fill(db: &opha_store::TenantDb, epoch: u64, minutes: u64) -> Vec<(u64, Record)> {
    let records: Vec<(u64, Record)> = (0..minutes * 10)
        .map(|i| {
            let t = (i / 10) * MIN;
            let r = if i % 2 == 0 {
                metrics(1, (i % 10) as u16, t)
            } else {
                node_down(1, (i % 10) as u16, t)
            };
            (i, r)
        })
        .collect();
    db.commit_batch(&poller("r"), epoch, &records).unwrap();
    records
}

#[test]
fn by_age_deletes_old_records_in_chunks_and_keeps_dedupe_state() {
    let (_d, store) = store();
    let db = store.tenant(TenantId(1)).unwrap();
    let records = fill(&db, 1, 100); // 1,000 records, minutes 0..100
    let retention = Retention {
        max_age_ms: Some(30 * MIN),
        max_bytes: None,
        chunk_rows: 37,
    };
    let now = 100 * MIN;
    let report = db.apply_retention_at(&retention, now).unwrap();
    // Minutes 0..70 are older than 30 minutes before minute 100.
    assert_eq!(report.deleted_by_age, 700);
    assert_eq!(db.record_count().unwrap(), 300);
    let events = db
        .events(&EventFilter::default(), &PageRequest::first(10_000))
        .unwrap();
    assert!(events.items.iter().all(|e| e.event.time_ms >= 70 * MIN));
    assert_eq!(events.items.len(), 150);
    // The dedupe state still covers the deleted records: a replay of all of them stores none.
    assert_eq!(stored_ranges(db.path(), "r", 1), vec![0..1000]);
    let o = db.commit_batch(&poller("r"), 1, &records).unwrap();
    assert_eq!((o.stored, o.duplicates), (0, 1000));
    assert_eq!(db.record_count().unwrap(), 300);
    // Idempotent.
    assert_eq!(
        db.apply_retention_at(&retention, now)
            .unwrap()
            .deleted_by_age,
        0
    );
}

#[test]
fn by_size_deletes_oldest_until_under_the_cap() {
    let (_d, store) = store();
    let db = store.tenant(TenantId(1)).unwrap();
    fill(&db, 1, 600); // 6,000 records
    let before = db
        .apply_retention_at(
            &Retention {
                max_age_ms: None,
                max_bytes: None,
                chunk_rows: 100,
            },
            0,
        )
        .unwrap();
    let cap = before.used_bytes / 3;
    let report = db
        .apply_retention_at(
            &Retention {
                max_age_ms: None,
                max_bytes: Some(cap),
                chunk_rows: 100,
            },
            0,
        )
        .unwrap();
    assert!(report.used_bytes <= cap, "{report:?} cap {cap}");
    assert!(report.deleted_by_size > 3000, "{report:?}");
    let left = db.record_count().unwrap();
    assert_eq!(left, 6000 - report.deleted_by_size);
    // What is left is the newest: the oldest remaining time is later than every deleted one.
    let c = inspect(db.path());
    let (min_t, max_t): (i64, i64) = c
        .query_row("SELECT min(time_ms), max(time_ms) FROM records", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(max_t as u64, 599 * MIN);
    // Chunks of 100 rows of one kind span 20 minutes at most (5 rows of a kind per minute).
    let expected_min = (600 * MIN).saturating_sub(left / 10 * MIN + 20 * MIN);
    assert!(
        min_t as u64 >= expected_min,
        "min {min_t} vs {expected_min}"
    );
    // Space was handed back to the file system.
    let file = std::fs::metadata(db.path()).unwrap().len();
    assert!(
        file <= before.used_bytes,
        "file {file} vs used before {}",
        before.used_bytes
    );
    assert_eq!(stored_ranges(db.path(), "r", 1), vec![0..6000]);
}
