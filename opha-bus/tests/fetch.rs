//! Gap fetch between receivers, without sockets: the gap below the poller's `oldest`, the
//! planner's peer order and bounds, the serving side's answers, the fetching side's checks of
//! an answer, and a whole fetch over in-memory "peers" (each a set of stored records).

// `set(&[a..b])` is a list of ranges, not a range to collect.
#![allow(clippy::single_range_in_vec_init)]

mod common;

use opha_bus::fetch::{
    ExchangeEvent, FetchDone, FetchEntries, FetchExchange, FetchFrame, FetchMessage, FetchRefuse,
    FetchRefuseReason, FetchRequest, FetchServe, FetchViolation, GapPlanner, MAX_REPLY_ENTRIES,
    MAX_REQUEST_RANGES, MAX_REQUEST_SEQS, PlanStep, gap_below_oldest,
};
use opha_bus::message::{Entry, EpochStart, Hello};
use opha_bus::ranges::RangeSet;
use opha_common::wire::{Bytes, PROTOCOL_VERSION, PeerId};
use std::collections::{BTreeMap, BTreeSet};

fn poller() -> PeerId {
    PeerId::new("poller-f").unwrap()
}

fn hello(oldest: u64, head: u64, epochs: &[(u64, u64)]) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        epoch: epochs.last().unwrap().0,
        oldest,
        head,
        epochs: epochs
            .iter()
            .map(|&(epoch, start)| EpochStart { epoch, start })
            .collect(),
    }
}

fn set(ranges: &[std::ops::Range<u64>]) -> RangeSet {
    ranges.iter().cloned().collect()
}

#[test]
fn the_gap_is_what_is_missing_below_oldest_per_epoch() {
    // Epoch 1: 0..100, epoch 2: 100..(head 300). The log kept 150.. only.
    let h = hello(150, 300, &[(1, 0), (2, 100)]);
    let mut held = BTreeMap::new();
    held.insert(1, set(&[0..10, 50..60]));
    held.insert(2, set(&[120..130, 140..200]));
    let gap = gap_below_oldest(&h, &held);
    assert_eq!(gap.get(&1), Some(&set(&[10..50, 60..100])));
    assert_eq!(gap.get(&2), Some(&set(&[100..120, 130..140])));
    // Nothing below oldest is missing: no gap.
    assert!(gap_below_oldest(&hello(0, 300, &[(1, 0)]), &BTreeMap::new()).is_empty());
    let mut full = BTreeMap::new();
    full.insert(1, set(&[0..150]));
    assert!(gap_below_oldest(&hello(150, 300, &[(1, 0)]), &full).is_empty());
}

fn entry(seq: u64) -> Entry {
    Entry {
        seq,
        payload: Bytes(format!("record {seq}").into_bytes()),
    }
}

/// A peer's store: the records it holds per epoch.
type PeerStore = BTreeMap<u64, BTreeSet<u64>>;

/// Serves `req` from `store` as a driver would: queries of `limit` rows at a time.
fn serve(store: &PeerStore, req: FetchRequest, limit: usize) -> Vec<FetchMessage> {
    let held = store.get(&req.epoch).cloned().unwrap_or_default();
    let mut s = FetchServe::with_reply_bytes(req, 200);
    let mut out = Vec::new();
    while !s.is_finished() {
        // As the store's query: range by range, in order, at most `limit`.
        let rows: Vec<Entry> = s
            .pending()
            .iter()
            .flat_map(|r| held.range(r).copied())
            .take(limit)
            .map(entry)
            .collect();
        let exhausted = rows.len() < limit;
        out.extend(s.found(rows, exhausted));
    }
    out.push(s.done());
    out
}

/// A whole fetch: `peers` in order; `down` peers fail. Returns the report and the records
/// stored here (with how often each was stored).
fn fetch(
    missing: BTreeMap<u64, RangeSet>,
    peers: &[PeerStore],
    down: &[usize],
) -> (
    opha_bus::fetch::GapReport,
    BTreeMap<(u64, u64), u32>,
    Vec<usize>,
) {
    let mut plan = GapPlanner::new(poller(), missing, peers.len());
    let mut stored: BTreeMap<(u64, u64), u32> = BTreeMap::new();
    let mut asked = Vec::new();
    let frame = FetchFrame::default();
    loop {
        match plan.step() {
            PlanStep::Fetch { peer, request } => {
                asked.push(peer);
                assert!(request.ranges.range_count() <= MAX_REQUEST_RANGES);
                assert!(request.ranges.len() <= MAX_REQUEST_SEQS);
                if down.contains(&peer) {
                    plan.peer_failed();
                    continue;
                }
                // Over the wire and back.
                let req = match frame
                    .decode(
                        &frame
                            .encode(&FetchMessage::Request(request.clone()))
                            .unwrap(),
                    )
                    .unwrap()
                {
                    FetchMessage::Request(r) => r,
                    other => panic!("{other:?}"),
                };
                let mut ex = FetchExchange::new(request);
                for msg in serve(&peers[peer], req, 7) {
                    let msg = frame.decode(&frame.encode(&msg).unwrap()).unwrap();
                    match ex.handle(msg).unwrap() {
                        ExchangeEvent::Entries(es) => {
                            let epoch = ex.request().epoch;
                            let mut seqs = RangeSet::new();
                            for e in es {
                                assert_eq!(e.payload.0, format!("record {}", e.seq).into_bytes());
                                *stored.entry((epoch, e.seq)).or_default() += 1;
                                seqs.insert_one(e.seq);
                            }
                            plan.stored(epoch, &seqs);
                        }
                        ExchangeEvent::Done { .. } => plan.answered(),
                    }
                }
                assert!(ex.is_done());
            }
            PlanStep::Wait => panic!("nothing is outstanding"),
            PlanStep::Finished(r) => return (r, stored, asked),
        }
    }
}

#[test]
fn peers_are_asked_in_order_and_only_for_what_is_still_missing() {
    let mut missing = BTreeMap::new();
    missing.insert(1, set(&[0..100]));
    missing.insert(2, set(&[200..210]));
    // The mirror has epoch 1 except 40..60; the other primary has 50..55 of it and epoch 2.
    let mirror: PeerStore = [(1, (0..40).chain(60..100).collect())].into();
    let other: PeerStore = [(1, (50..55).collect()), (2, (200..210).collect())].into();
    let (report, stored, asked) = fetch(missing, &[mirror, other], &[]);
    assert_eq!(report.fetched, 80 + 5 + 10);
    assert_eq!(report.unavailable.get(&1), Some(&set(&[40..50, 55..60])));
    assert_eq!(report.unavailable_records(), 15);
    assert!(stored.values().all(|&n| n == 1), "a record stored twice");
    assert_eq!(stored.len(), 95);
    // The mirror first (both epochs), then the other primary.
    assert_eq!(asked.first(), Some(&0));
    assert_eq!(asked.last(), Some(&1));
    assert!(asked.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn an_unreachable_peer_is_skipped_and_a_gap_nobody_has_is_reported_not_retried() {
    let mut missing = BTreeMap::new();
    missing.insert(3, set(&[10..20]));
    let a: PeerStore = [(3, (10..20).collect())].into();
    let (report, stored, asked) = fetch(missing.clone(), &[a.clone(), a.clone()], &[0]);
    assert_eq!(report.fetched, 10);
    assert!(report.unavailable.is_empty());
    assert_eq!(stored.len(), 10);
    assert_eq!(asked, vec![0, 1]);
    // Nobody holds it: one request per peer, then finished with all of it unavailable.
    let (report, stored, asked) = fetch(missing, &[PeerStore::new(), PeerStore::new()], &[]);
    assert_eq!(report.fetched, 0);
    assert_eq!(report.unavailable_records(), 10);
    assert!(stored.is_empty());
    assert_eq!(asked, vec![0, 1]);
    // No peers at all: finished at once.
    let mut p = GapPlanner::new(poller(), [(1, set(&[0..5]))].into(), 0);
    assert!(matches!(p.step(), PlanStep::Finished(r) if r.unavailable_records() == 5));
}

#[test]
fn requests_stay_within_bounds_for_large_and_fragmented_gaps() {
    // 600 ranges and 120,000 seqs in one epoch: many bounded requests, all answered.
    let mut gap = RangeSet::new();
    for i in 0..600u64 {
        gap.insert(i * 300..i * 300 + 200);
    }
    let all: BTreeSet<u64> = gap.iter().flatten().collect();
    let peer: PeerStore = [(9, all.clone())].into();
    let (report, stored, asked) = fetch([(9, gap)].into(), &[peer], &[]);
    // Queries of 7 rows: many answers per request, all in bounds.
    assert_eq!(report.fetched, all.len() as u64);
    assert!(report.unavailable.is_empty());
    assert_eq!(stored.len(), all.len());
    assert!(asked.len() >= 600 / MAX_REQUEST_RANGES);
}

#[test]
fn planner_waits_while_a_request_is_outstanding() {
    let mut p = GapPlanner::new(poller(), [(1, set(&[0..5]))].into(), 2);
    assert!(matches!(p.step(), PlanStep::Fetch { peer: 0, .. }));
    assert_eq!(p.step(), PlanStep::Wait);
    p.stored(1, &set(&[0..2]));
    p.answered();
    // The same peer is not asked again for 2..5: the next one is.
    let PlanStep::Fetch { peer, request } = p.step() else {
        panic!()
    };
    assert_eq!((peer, request.ranges), (1, set(&[2..5])));
    p.stored(1, &set(&[2..5]));
    p.answered();
    assert!(
        matches!(p.step(), PlanStep::Finished(r) if r.fetched == 5 && r.unavailable.is_empty())
    );
}

fn req(ranges: &[std::ops::Range<u64>]) -> FetchRequest {
    FetchRequest {
        poller: poller(),
        epoch: 4,
        ranges: set(ranges),
    }
}

#[test]
fn an_answer_is_checked_against_its_request() {
    let entries = |epoch, seqs: &[u64]| {
        FetchMessage::Entries(FetchEntries {
            epoch,
            entries: seqs.iter().map(|&s| entry(s)).collect(),
        })
    };
    let done = |epoch, r: &[std::ops::Range<u64>]| {
        FetchMessage::Done(FetchDone {
            epoch,
            unavailable: set(r),
        })
    };
    let cases: Vec<(Vec<FetchMessage>, FetchViolation)> = vec![
        (
            vec![entries(5, &[1])],
            FetchViolation::WrongEpoch { want: 4, got: 5 },
        ),
        (vec![entries(4, &[10])], FetchViolation::NotRequested(10)),
        (
            vec![entries(4, &[3]), entries(4, &[2])],
            FetchViolation::OutOfOrder(2),
        ),
        (
            vec![entries(4, &[1]), entries(4, &[1])],
            FetchViolation::OutOfOrder(1),
        ),
        // Done that hides a record neither sent nor declared unavailable.
        (
            vec![entries(4, &[1]), done(4, &[2..5])],
            FetchViolation::DoneMismatch {
                named: 3,
                missing: 4,
            },
        ),
        // Done that declares a sent record unavailable.
        (
            vec![entries(4, &[1]), done(4, &[0..5])],
            FetchViolation::DoneMismatch {
                named: 5,
                missing: 4,
            },
        ),
        (
            vec![done(4, &[0..5]), entries(4, &[1])],
            FetchViolation::AfterDone,
        ),
        (
            vec![FetchMessage::Request(req(&[0..1]))],
            FetchViolation::Unexpected(opha_bus::fetch::FetchKind::Request),
        ),
        (
            vec![FetchMessage::Refuse(FetchRefuse {
                reason: FetchRefuseReason::StoreFailed,
                detail: "x".into(),
            })],
            FetchViolation::Refused(FetchRefuseReason::StoreFailed, "x".into()),
        ),
    ];
    for (i, (msgs, want)) in cases.into_iter().enumerate() {
        let mut ex = FetchExchange::new(req(&[0..5]));
        let mut got = None;
        for m in msgs {
            if let Err(e) = ex.handle(m) {
                got = Some(e);
                break;
            }
        }
        assert_eq!(got, Some(want), "case {i}");
    }
    // The honest answer.
    let mut ex = FetchExchange::new(req(&[0..5]));
    assert_eq!(
        ex.handle(entries(4, &[0, 2])).unwrap(),
        ExchangeEvent::Entries(vec![entry(0), entry(2)])
    );
    assert_eq!(
        ex.handle(done(4, &[1..2, 3..5])).unwrap(),
        ExchangeEvent::Done {
            received: set(&[0..1, 2..3]),
            not_provided: set(&[1..2, 3..5]),
        }
    );
}

#[test]
fn the_serving_side_splits_answers_and_names_exactly_what_it_lacks() {
    // 10,000 records of 100 bytes, 3 holes; answers of at most 200 bytes or MAX_REPLY_ENTRIES.
    let held: BTreeSet<u64> = (0..10_000u64)
        .filter(|s| ![17, 5000, 9999].contains(s))
        .collect();
    let mut s = FetchServe::with_reply_bytes(req(&[0..10_000, 20_000..20_010]), 1000);
    let mut msgs = Vec::new();
    while !s.is_finished() {
        let rows: Vec<Entry> = s
            .pending()
            .iter()
            .flat_map(|r| held.range(r).copied())
            .take(3000)
            .map(|seq| Entry {
                seq,
                payload: Bytes(vec![7; 100]),
            })
            .collect();
        let exhausted = rows.len() < 3000;
        msgs.extend(s.found(rows, exhausted));
    }
    msgs.push(s.done());
    let frame = FetchFrame::default();
    let mut ex = FetchExchange::new(req(&[0..10_000, 20_000..20_010]));
    let mut n = 0;
    for m in msgs {
        if let FetchMessage::Entries(e) = &m {
            assert!(e.entries.len() <= MAX_REPLY_ENTRIES && e.entries.len() <= 10);
        }
        let m = frame.decode(&frame.encode(&m).unwrap()).unwrap();
        match ex.handle(m).unwrap() {
            ExchangeEvent::Entries(es) => n += es.len(),
            ExchangeEvent::Done { not_provided, .. } => {
                assert_eq!(
                    not_provided,
                    set(&[17..18, 5000..5001, 9999..10_000, 20_000..20_010])
                );
            }
        }
    }
    assert_eq!(n, held.len());
    assert_eq!(s.sent(), held.len() as u64);
}

#[test]
fn decoder_refuses_out_of_bounds_messages() {
    let frame = FetchFrame::default();
    let too_many_ranges: RangeSet = (0..=MAX_REQUEST_RANGES as u64)
        .map(|i| i * 3..i * 3 + 1)
        .collect();
    let bad = [
        FetchMessage::Request(FetchRequest {
            poller: poller(),
            epoch: 1,
            ranges: RangeSet::new(),
        }),
        FetchMessage::Request(FetchRequest {
            poller: poller(),
            epoch: 1,
            ranges: too_many_ranges,
        }),
        FetchMessage::Request(FetchRequest {
            poller: poller(),
            epoch: 1,
            ranges: set(&[0..MAX_REQUEST_SEQS + 1]),
        }),
        FetchMessage::Entries(FetchEntries {
            epoch: 1,
            entries: vec![],
        }),
        FetchMessage::Entries(FetchEntries {
            epoch: 1,
            entries: vec![entry(2), entry(1)],
        }),
        FetchMessage::Entries(FetchEntries {
            epoch: 1,
            entries: (0..=MAX_REPLY_ENTRIES as u64).map(entry).collect(),
        }),
        FetchMessage::Done(FetchDone {
            epoch: 1,
            unavailable: set(&[0..MAX_REQUEST_SEQS + 1]),
        }),
        FetchMessage::Refuse(FetchRefuse {
            reason: FetchRefuseReason::Malformed,
            detail: "x".repeat(2000),
        }),
    ];
    for (i, m) in bad.iter().enumerate() {
        let bytes = frame.encode(m).unwrap();
        assert!(frame.decode(&bytes).is_err(), "case {i} decoded");
    }
    // A bus kind is not a fetch kind, and the other way round.
    let ok = frame.encode(&FetchMessage::Request(req(&[0..3]))).unwrap();
    assert!(opha_bus::message::BusFrame::default().decode(&ok).is_err());
}
