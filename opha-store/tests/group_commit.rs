//! The group committer: concurrent callers, overlapping batches of the same stream, one
//! transaction per group, each caller answered with its own outcome.

// Single ranges are what a contiguous stream looks like.
#![allow(clippy::single_range_in_vec_init)]

mod common;

use common::*;
use opha_common::wire::{Record, TenantId};
use opha_store::{Committer, CommitterConfig, StoreError};

#[test]
fn concurrent_overlapping_callers_store_each_record_once() {
    let (_d, store) = store();
    let db = store.tenant(TenantId(1)).unwrap();
    let committer = Committer::new(db.clone(), CommitterConfig::default()).unwrap();
    let p = poller("g");
    // Four threads send the same stream 0..2000 in batches of 40, starting at different
    // offsets, so groups contain overlapping batches of one (poller, epoch).
    let totals: Vec<(u64, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4u64)
            .map(|t| {
                let committer = &committer;
                let p = p.clone();
                s.spawn(move || {
                    let mut stored = 0;
                    let mut dups = 0;
                    for b in 0..50u64 {
                        let start = ((b + t * 13) % 50) * 40;
                        let records: Vec<(u64, Record)> = (start..start + 40)
                            .map(|s| (s, node_down(1, (s % 9) as u16, s)))
                            .collect();
                        let o = committer.commit(p.clone(), 1, records).unwrap();
                        assert_eq!(o.stored + o.duplicates, 40);
                        assert!(o.held.len() >= 40);
                        stored += o.stored;
                        dups += o.duplicates;
                    }
                    (stored, dups)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let stored: u64 = totals.iter().map(|t| t.0).sum();
    let dups: u64 = totals.iter().map(|t| t.1).sum();
    assert_eq!(stored, 2000);
    assert_eq!(dups, 3 * 2000);
    assert_eq!(
        stored_seqs(db.path(), "g", 1),
        (0..2000).collect::<Vec<_>>()
    );
    assert_eq!(stored_ranges(db.path(), "g", 1), vec![0..2000]);
}

#[test]
fn a_bad_batch_in_a_group_fails_alone() {
    let (_d, store) = store();
    let db = store.tenant(TenantId(1)).unwrap();
    let committer = Committer::new(db.clone(), CommitterConfig::default()).unwrap();
    let p = poller("g");
    // Queue several tickets before waiting on any, so they can share a group.
    let good1 = committer.submit(p.clone(), 1, vec![(0, node_down(1, 1, 0))]);
    let bad = committer.submit(
        p.clone(),
        1,
        vec![(1, node_down(1, 1, 1)), (2, node_down(2, 1, 2))],
    );
    let good2 = committer.submit(
        p.clone(),
        1,
        vec![(3, node_down(1, 1, 3)), (0, node_down(1, 1, 0))],
    );
    assert_eq!(good1.wait().unwrap().stored, 1);
    assert!(matches!(
        bad.wait(),
        Err(StoreError::WrongScope { seq: 2, .. })
    ));
    let o = good2.wait().unwrap();
    assert_eq!((o.stored, o.duplicates), (1, 1));
    assert_eq!(stored_seqs(db.path(), "g", 1), vec![0, 3]);
    assert_eq!(stored_ranges(db.path(), "g", 1), vec![0..1, 3..4]);
    // Dropping the committer drains and joins; tickets of a dropped committer say so.
    drop(committer);
}

/// Batches submitted without waiting (as a receiver pipelines a poller's batches) are
/// answered in submission order, each with its own outcome and its records handed back.
#[test]
fn pipelined_submits_are_answered_in_order_with_their_records() {
    let (_d, store) = store();
    let db = store.tenant(TenantId(1)).unwrap();
    let committer = Committer::new(db.clone(), CommitterConfig::default()).unwrap();
    let p = poller("pipe");
    let tickets: Vec<_> = (0..20u64)
        .map(|b| {
            // Batch 10 repeats batch 9: all duplicates, whichever group they land in.
            let start = if b == 10 { 9 * 50 } else { b * 50 };
            let records: Vec<(u64, Record)> = (start..start + 50)
                .map(|s| (s, node_down(1, (s % 7) as u16, s)))
                .collect();
            (start, committer.submit(p.clone(), 1, records))
        })
        .collect();
    for (start, t) in tickets {
        let (outcome, records) = t.wait_with_records();
        let o = outcome.unwrap();
        let seqs: Vec<u64> = records.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (start..start + 50).collect::<Vec<_>>());
        if start == 9 * 50 && o.stored == 0 {
            assert_eq!(o.duplicates, 50);
        } else {
            assert_eq!((o.stored, o.duplicates), (50, 0));
        }
        assert!(o.held.contains(start + 49));
    }
    let want: Vec<u64> = (0..20 * 50).filter(|s| !(500..550).contains(s)).collect();
    assert_eq!(stored_seqs(db.path(), "pipe", 1), want);
}
