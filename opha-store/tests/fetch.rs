//! Serving a gap fetch: stored records of (poller, epoch) within seq ranges, across the files
//! a poller writes, in seq order, bounded, as the payload the poller's log held.

mod common;

use common::*;
use opha_common::wire::{Record, TenantId};
use opha_store::{RangeSet, Scope, StoredRecord};

fn payload(r: &Record) -> Vec<u8> {
    postcard::to_allocvec(r).unwrap()
}

#[test]
fn records_in_ranges_across_scopes_in_seq_order_and_bounded() {
    let (_dir, store) = store();
    let p = poller("poller-g");
    let other = poller("poller-h");
    let t1 = store.tenant(TenantId(1)).unwrap();
    let t2 = store.tenant(TenantId(2)).unwrap();
    // Epoch 5: even seqs in tenant 1, odd seqs in tenant 2, 0..100 except 40..50.
    let mut want = Vec::new();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for seq in (0..100u64).filter(|s| !(40..50).contains(s)) {
        let r = if seq % 2 == 0 {
            node_down(1, seq as u16, 1_000 + seq)
        } else {
            metrics(2, seq as u16, 1_000 + seq)
        };
        want.push(StoredRecord {
            seq,
            payload: payload(&r),
        });
        if seq % 2 == 0 {
            a.push((seq, r));
        } else {
            b.push((seq, r));
        }
    }
    t1.commit_batch(&p, 5, &a).unwrap();
    t2.commit_batch(&p, 5, &b).unwrap();
    // Same seqs under another epoch and another poller: never returned.
    t1.commit_batch(&p, 6, &[(10, node_down(1, 1, 5))]).unwrap();
    t1.commit_batch(&other, 5, &[(10, node_down(1, 1, 5))])
        .unwrap();

    let scopes = [
        Scope::Tenant(TenantId(1)),
        Scope::Tenant(TenantId(2)),
        Scope::System,
    ];
    let ranges: RangeSet = [5..15, 38..60, 95..200].into_iter().collect();
    let got = store.records_in(&p, 5, &ranges, &scopes, 1000).unwrap();
    let expect: Vec<StoredRecord> = want
        .iter()
        .filter(|r| ranges.contains(r.seq))
        .cloned()
        .collect();
    assert_eq!(got, expect);
    // The payload decodes to the record that was stored.
    let first: Record = postcard::from_bytes(&got[0].payload).unwrap();
    assert_eq!(first, metrics(2, 5, 1_005));

    // Bounded: the first `limit` in seq order, across both files.
    let got = store.records_in(&p, 5, &ranges, &scopes, 7).unwrap();
    assert_eq!(got, expect[..7].to_vec());
    // A per-file read sees its own file only.
    let only1 = t1.records_in(&p, 5, &ranges, 1000).unwrap();
    assert!(only1.iter().all(|r| r.seq % 2 == 0));
    assert_eq!(
        only1.len(),
        expect.iter().filter(|r| r.seq % 2 == 0).count()
    );
    // Scopes the poller may not write are not read.
    let got = store
        .records_in(&p, 5, &ranges, &[Scope::Tenant(TenantId(2))], 1000)
        .unwrap();
    assert!(got.iter().all(|r| r.seq % 2 == 1));
    // Nothing held in range, unknown epoch, zero limit.
    assert!(
        store
            .records_in(&p, 5, &RangeSet::from(40..50), &scopes, 10)
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .records_in(&p, 9, &ranges, &scopes, 10)
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .records_in(&p, 5, &ranges, &scopes, 0)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_damaged_row_is_skipped_not_served() {
    let (dir, store) = store();
    let p = poller("poller-d");
    let t = store.tenant(TenantId(3)).unwrap();
    let recs: Vec<(u64, Record)> = (0..5).map(|s| (s, node_down(3, s as u16, s))).collect();
    t.commit_batch(&p, 1, &recs).unwrap();
    // Swap two rows' frames: each frame now names another seq than its row.
    {
        let conn = rusqlite::Connection::open(dir.path().join("tenant-3.sqlite3")).unwrap();
        let f1: Vec<u8> = conn
            .query_row("SELECT frame FROM records WHERE seq = 1", [], |r| r.get(0))
            .unwrap();
        let f2: Vec<u8> = conn
            .query_row("SELECT frame FROM records WHERE seq = 2", [], |r| r.get(0))
            .unwrap();
        conn.execute("UPDATE records SET frame = ?1 WHERE seq = 1", [&f2])
            .unwrap();
        conn.execute("UPDATE records SET frame = ?1 WHERE seq = 2", [&f1])
            .unwrap();
    }
    let got = t.records_in(&p, 1, &RangeSet::from(0..5), 100).unwrap();
    assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![0, 3, 4]);
}
