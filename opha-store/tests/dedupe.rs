//! Exactly once per (poller, epoch, seq): re-sent, overlapping, out-of-order batches, also
//! across a reopen of the store.

// Single ranges are what a contiguous stream looks like.
#![allow(clippy::single_range_in_vec_init)]

mod common;

use common::*;
use opha_common::wire::{Record, TenantId};
use opha_store::{RangeSet, Store, StoreConfig, StoreError};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};

fn batch(range: std::ops::Range<u64>) -> Vec<(u64, Record)> {
    range
        .map(|s| (s, metrics(1, (s % 50) as u16, 1_000 * s)))
        .collect()
}

#[test]
fn resent_batch_is_all_duplicates() {
    let (_d, store) = store();
    let db = store.tenant(TenantId(1)).unwrap();
    let p = poller("poller-a");
    let first = db.commit_batch(&p, 1, &batch(0..100)).unwrap();
    assert_eq!((first.stored, first.duplicates), (100, 0));
    assert_eq!(first.durable_through, Some(99));
    let again = db.commit_batch(&p, 1, &batch(0..100)).unwrap();
    assert_eq!((again.stored, again.duplicates), (0, 100));
    assert_eq!(db.record_count().unwrap(), 100);
    assert_eq!(
        stored_seqs(db.path(), "poller-a", 1),
        (0..100).collect::<Vec<_>>()
    );
}

#[test]
fn overlapping_and_out_of_order_batches() {
    let (_d, store) = store();
    let db = store.tenant(TenantId(1)).unwrap();
    let p = poller("poller-a");
    let o = db.commit_batch(&p, 7, &batch(200..300)).unwrap();
    assert_eq!((o.stored, o.duplicates), (100, 0));
    assert_eq!(o.held.iter().collect::<Vec<_>>(), [200..300].to_vec());
    let o = db.commit_batch(&p, 7, &batch(0..100)).unwrap();
    assert_eq!(
        o.held.iter().collect::<Vec<_>>(),
        [0..100, 200..300].to_vec()
    );
    assert_eq!(o.durable_through, Some(99));
    // Overlaps both neighbours: only the gap is new.
    let o = db.commit_batch(&p, 7, &batch(50..250)).unwrap();
    assert_eq!((o.stored, o.duplicates), (100, 100));
    assert_eq!(o.held.iter().collect::<Vec<_>>(), [0..300].to_vec());
    assert_eq!(o.durable_through, Some(299));
    // The same seq twice within one batch is stored once.
    let mut twice = batch(300..310);
    twice.extend(batch(305..312));
    let o = db.commit_batch(&p, 7, &twice).unwrap();
    assert_eq!((o.stored, o.duplicates), (12, 5));
    assert_eq!(
        stored_seqs(db.path(), "poller-a", 7),
        (0..312).collect::<Vec<_>>()
    );
    assert_eq!(stored_ranges(db.path(), "poller-a", 7), vec![0..312]);
    // Epochs and pollers are separate streams.
    let o = db.commit_batch(&p, 8, &batch(0..10)).unwrap();
    assert_eq!(o.stored, 10);
    let o = db
        .commit_batch(&poller("poller-b"), 7, &batch(0..10))
        .unwrap();
    assert_eq!(o.stored, 10);
    let held = db.held_ranges(&p).unwrap();
    assert_eq!(
        held,
        vec![
            (7, [0..312].into_iter().collect::<RangeSet>()),
            (8, [0..10].into_iter().collect::<RangeSet>())
        ]
    );
}

/// Random batches (shuffled, overlapping, repeated seqs; two pollers, three epochs) against a
/// set model, with a reopen of the store halfway: every key is stored once, nothing is lost.
#[test]
fn random_replays_store_each_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let pollers = [poller("p1"), poller("p2")];
    let mut model: BTreeMap<(String, u64), BTreeSet<u64>> = BTreeMap::new();
    for phase in 0..2 {
        // A fresh Store each phase: dedupe state must come from the file, not from memory.
        let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
        let db = store.tenant(TenantId(1)).unwrap();
        for _ in 0..150 {
            let p = &pollers[rng.random_range(0..2)];
            let epoch = rng.random_range(1..4u64);
            let start = rng.random_range(0..400u64);
            let len = rng.random_range(1..60u64);
            let mut seqs: Vec<u64> = (start..start + len).collect();
            seqs.shuffle(&mut rng);
            if rng.random_bool(0.3) {
                let extra = seqs[0];
                seqs.push(extra);
            }
            let records: Vec<(u64, Record)> = seqs
                .iter()
                .map(|&s| (s, node_down(1, (s % 7) as u16, s)))
                .collect();
            let set = model.entry((p.to_string(), epoch)).or_default();
            let expect_new = seqs
                .iter()
                .collect::<BTreeSet<_>>()
                .iter()
                .filter(|s| !set.contains(s))
                .count();
            let o = db.commit_batch(p, epoch, &records).unwrap();
            assert_eq!(o.stored as usize, expect_new, "phase {phase}");
            assert_eq!(o.stored + o.duplicates, seqs.len() as u64);
            set.extend(seqs);
        }
        drop(db);
        drop(store);
    }
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let db = store.tenant(TenantId(1)).unwrap();
    let mut total = 0;
    for ((p, epoch), set) in &model {
        let seqs = stored_seqs(db.path(), p, *epoch);
        assert_eq!(seqs, set.iter().copied().collect::<Vec<_>>(), "{p}/{epoch}");
        total += seqs.len() as u64;
        let held: Vec<u64> = db
            .held_ranges(&poller(p))
            .unwrap()
            .into_iter()
            .find(|(e, _)| e == epoch)
            .map(|(_, r)| r.iter().flatten().collect())
            .unwrap_or_default();
        assert_eq!(held, seqs, "held ranges of {p}/{epoch}");
    }
    assert_eq!(db.record_count().unwrap(), total);
}

#[test]
fn out_of_range_and_wrong_tenant_batches_write_nothing() {
    let (_d, store) = store();
    let db = store.tenant(TenantId(1)).unwrap();
    let p = poller("poller-a");
    let mut records = batch(0..5);
    records.push((u64::MAX, metrics(1, 1, 1)));
    let e = db.commit_batch(&p, 1, &records).unwrap_err();
    assert!(
        matches!(e, StoreError::OutOfRange { what: "seq", .. }),
        "{e}"
    );
    let e = db.commit_batch(&p, u64::MAX, &batch(0..5)).unwrap_err();
    assert!(
        matches!(e, StoreError::OutOfRange { what: "epoch", .. }),
        "{e}"
    );
    let mut records = batch(0..5);
    records.push((5, metrics(2, 1, 1)));
    let e = db.commit_batch(&p, 1, &records).unwrap_err();
    assert!(matches!(e, StoreError::WrongScope { seq: 5, .. }), "{e}");
    assert_eq!(db.record_count().unwrap(), 0);
    assert!(db.held_ranges(&p).unwrap().is_empty());
    // The refused batches left no dedupe state behind: the good batch is stored in full.
    assert_eq!(db.commit_batch(&p, 1, &batch(0..5)).unwrap().stored, 5);
}

#[test]
fn union_of_held_ranges_across_scopes() {
    let (_d, store) = store();
    let p = poller("shared-poller");
    // One poller stream split over two tenants and the system scope, as the bus routes it.
    let t1 = store.tenant(TenantId(1)).unwrap();
    let t2 = store.tenant(TenantId(2)).unwrap();
    let sys = store.system().unwrap();
    t1.commit_batch(&p, 3, &[(0, node_down(1, 1, 0)), (2, node_down(1, 1, 2))])
        .unwrap();
    t2.commit_batch(&p, 3, &[(1, node_down(2, 1, 1)), (4, node_down(2, 1, 4))])
        .unwrap();
    sys.commit_batch(&p, 3, &[(3, peer_status("shared-poller", 3))])
        .unwrap();
    let scopes = [
        opha_store::Scope::Tenant(TenantId(1)),
        opha_store::Scope::Tenant(TenantId(2)),
        opha_store::Scope::System,
    ];
    let held = store.held_ranges(&p, &scopes).unwrap();
    assert_eq!(held, vec![(3, [0..5].into_iter().collect::<RangeSet>())]);
    let only_t1 = store.held_ranges(&p, &scopes[..1]).unwrap();
    assert_eq!(
        only_t1,
        vec![(3, [0..1, 2..3].into_iter().collect::<RangeSet>())]
    );
}
