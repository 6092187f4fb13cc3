//! The fault tests' checker: lost, duplicated and unexpected records per receiver.

use opha_common::wire::{EventId, PeerId, Record, Sequenced};
use opha_tests::checker::{Checker, DEFAULT_SHOWN, RecordKey, ensure_all_clean};

fn poller(name: &str) -> PeerId {
    PeerId::new(name).unwrap()
}

fn keys(p: &PeerId, epoch: u64, seqs: impl IntoIterator<Item = u64>) -> Vec<RecordKey> {
    seqs.into_iter()
        .map(|s| RecordKey::seq(p, epoch, s))
        .collect()
}

#[test]
fn a_receiver_holding_everything_once_is_exact() {
    let (p1, p2) = (poller("p1"), poller("p2"));
    let mut ledger = Checker::new();
    ledger.expect_seqs(&p1, 1, 0..100);
    ledger.expect_seqs(&p2, 3, 5..50);
    assert_eq!(ledger.len(), 145);
    // Any order: receivers hand back what their store holds, not what was sent.
    let mut held = keys(&p2, 3, 5..50);
    held.extend(keys(&p1, 1, (0..100).rev()));
    let r = ledger.check("main", held);
    assert!(r.is_exact(), "{r}");
    assert_eq!((r.expected, r.held, r.lost, r.duplicated), (145, 145, 0, 0));
    r.ensure_exact().unwrap();
}

#[test]
fn lost_records_are_counted_per_poller_and_named_in_order() {
    let (p1, p2) = (poller("p1"), poller("p2"));
    let mut ledger = Checker::new();
    ledger.expect_seqs(&p1, 1, 0..1000);
    ledger.expect_seqs(&p2, 1, 0..10);
    // p1 lost 100..130 (a WAN cut), p2 lost 7.
    let held: Vec<RecordKey> = keys(&p1, 1, (0..1000).filter(|s| !(100..130).contains(s)))
        .into_iter()
        .chain(keys(&p2, 1, (0..10).filter(|&s| s != 7)))
        .collect();
    let r = ledger.check("redundant", held);
    assert!(!r.is_clean());
    assert_eq!((r.lost, r.duplicated, r.unexpected), (31, 0, 0));
    assert_eq!(r.lost_by_poller["p1"], 30);
    assert_eq!(r.lost_by_poller["p2"], 1);
    assert_eq!(r.first_lost.len(), DEFAULT_SHOWN);
    assert_eq!(r.first_lost, keys(&p1, 1, 100..110));
    let text = r.to_string();
    assert!(
        text.starts_with("redundant: expected 1010, held 979: 31 lost"),
        "{text}"
    );
    assert!(text.contains("p1/1/100, p1/1/101"), "{text}");
    assert!(text.contains("(first 10 of 31 keys)"), "{text}");
    let err = r.ensure_clean().unwrap_err().to_string();
    assert!(err.contains("31 lost"), "{err}");
}

#[test]
fn duplicates_count_extra_copies() {
    let p = poller("p1");
    let mut ledger = Checker::new().show(2);
    ledger.expect_seqs(&p, 2, 0..10);
    let mut held = keys(&p, 2, 0..10);
    // Seq 3 stored three times (two extra copies), seq 8 twice, seq 9 twice.
    held.extend(keys(&p, 2, [3, 3, 8, 9]));
    let r = ledger.check("mirror", held);
    assert_eq!((r.lost, r.duplicated, r.duplicated_keys), (0, 4, 3));
    assert_eq!(
        r.first_duplicated,
        vec![(RecordKey::seq(&p, 2, 3), 3), (RecordKey::seq(&p, 2, 8), 2)]
    );
    assert!(!r.is_clean());
    let text = r.to_string();
    assert!(
        text.contains("duplicated (first 2 of 3 keys): p1/2/3 x3, p1/2/8 x2"),
        "{text}"
    );
}

#[test]
fn the_same_seq_of_another_epoch_is_another_record() {
    // A restarted sidecar starts a new epoch: (p, 1, 5) and (p, 2, 5) are different records.
    let p = poller("p1");
    let mut ledger = Checker::new();
    ledger.expect_seqs(&p, 1, 0..10);
    ledger.expect_seqs(&p, 2, 0..10);
    let r = ledger.check("main", keys(&p, 1, 0..10));
    assert_eq!(r.lost, 10);
    assert_eq!(r.first_lost[0], RecordKey::seq(&p, 2, 0));
    let mut held = keys(&p, 1, 0..10);
    held.extend(keys(&p, 2, 0..10));
    ledger.check("main", held).ensure_exact().unwrap();
}

#[test]
fn unexpected_records_are_reported_apart() {
    let (p, forger) = (poller("p1"), poller("evil"));
    let mut ledger = Checker::new();
    ledger.expect_seqs(&p, 1, 0..5);
    let mut held = keys(&p, 1, 0..5);
    held.extend(keys(&forger, 1, [0, 0]));
    held.extend(keys(&p, 9, [1]));
    let r = ledger.check("main", held);
    assert!(r.is_clean(), "lost and duplicated are 0: {r}");
    assert!(!r.is_exact());
    assert_eq!((r.unexpected, r.unexpected_keys), (3, 2));
    assert!(r.ensure_exact().is_err());
    assert!(
        r.to_string().contains("unexpected: evil/1/0 x2, p1/9/1 x1"),
        "{r}"
    );
}

#[test]
fn events_are_checked_by_id_and_sequenced_records_by_key() {
    let p = poller("p1");
    let mut ledger = Checker::new();
    assert!(ledger.expect_event(EventId::from_u128(1)));
    assert!(ledger.expect_event(EventId::from_u128(2)));
    let s = Sequenced::new(p.clone(), 4, 17, Record::Event(sample_event(3)));
    assert!(ledger.expect(&s));
    // Items may be anything that converts into a key.
    let held: Vec<RecordKey> = vec![
        EventId::from_u128(1).into(),
        EventId::from_u128(1).into(),
        (&s).into(),
    ];
    let r = ledger.check("main", held);
    assert_eq!((r.lost, r.duplicated), (1, 1));
    assert_eq!(r.first_lost, vec![RecordKey::Event(EventId::from_u128(2))]);
    assert_eq!(r.lost_by_poller["(events)"], 1);
    assert!(
        r.to_string()
            .contains(&format!("event {}", EventId::from_u128(2)))
    );
    let held = [EventId::from_u128(1), EventId::from_u128(2)];
    let r = ledger.check("main", held);
    assert_eq!(r.first_lost, vec![RecordKey::seq(&p, 4, 17)]);
}

#[test]
fn a_key_registered_twice_is_a_test_bug_and_fails_the_check() {
    let p = poller("p1");
    let mut ledger = Checker::new();
    assert!(ledger.expect(RecordKey::seq(&p, 1, 1)));
    assert!(!ledger.expect(RecordKey::seq(&p, 1, 1)));
    let r = ledger.check("main", keys(&p, 1, [1]));
    assert!(!r.is_clean());
    assert!(
        r.to_string()
            .contains("registered twice by the test: p1/1/1"),
        "{r}"
    );
}

#[test]
fn every_receiver_is_named_when_several_fail() {
    let p = poller("p1");
    let mut ledger = Checker::new();
    ledger.expect_seqs(&p, 1, 0..3);
    let reports = [
        ledger.check("main", keys(&p, 1, 0..3)),
        ledger.check("redundant", keys(&p, 1, 0..2)),
        ledger.check("mirror", keys(&p, 1, [0, 1, 2, 2])),
    ];
    let err = ensure_all_clean(&reports).unwrap_err().to_string();
    assert!(!err.contains("main:"), "{err}");
    assert!(
        err.contains("redundant: expected 3, held 2: 1 lost"),
        "{err}"
    );
    assert!(
        err.contains("mirror: expected 3, held 4: 0 lost, 1 duplicated"),
        "{err}"
    );
    ensure_all_clean(&reports[..1]).unwrap();
}

#[test]
fn two_hundred_thousand_records_are_checked() {
    // More than a long fault test causes.
    let p = poller("p1");
    let mut ledger = Checker::new();
    ledger.expect_seqs(&p, 1, 0..200_000);
    let r = ledger.check("main", (0..200_000).map(|s| RecordKey::seq(&p, 1, s)));
    assert!(r.is_exact());
}

fn sample_event(n: u128) -> opha_common::wire::Event {
    use opha_common::wire::{Event, EventKind, NodeRef, Severity, Subject, TenantId};
    Event {
        id: EventId::from_u128(n),
        time_ms: 1,
        tenant: TenantId(1),
        subject: Subject::Node(NodeRef::from(std::net::Ipv4Addr::new(198, 18, 16, 1))),
        kind: EventKind::NodeDown,
        severity: Severity::Major,
        details: "down".into(),
    }
}
