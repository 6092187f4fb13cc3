//! Bad input: the frame decoder and the handshake/batch path of the receiver get random and
//! mutated inputs (well over 100,000 in total). Nothing panics; every refusal is counted;
//! forged and replayed sequence numbers are refused with the right reason and the receiver
//! keeps serving honest batches afterwards.

mod common;

use common::Rng;
use opha_bus::compress::Compression;
use opha_bus::message::{
    Ack, Batch, BusFrame, BusKind, BusMessage, EpochHeld, EpochStart, Grant, Hello, HelloAck,
    Refuse, RefuseReason, Term,
};
use opha_bus::ranges::RangeSet;
use opha_bus::receiver::{EpochState, PollerState, Receiver, ReceiverConfig, ReceiverOutput};
use opha_common::wire::{PROTOCOL_VERSION, PeerId};
use std::collections::BTreeMap;

const DECODER_CASES: u64 = 120_000;
const HANDSHAKE_CASES: u64 = 100_000;

fn sample_messages(rng: &mut Rng) -> Vec<BusMessage> {
    let recs: Vec<Vec<u8>> = (0..1 + rng.below(6)).map(|i| vec![i as u8; 30]).collect();
    let first = rng.below(1000);
    let batch = |c| {
        Batch::build(
            7,
            recs.iter()
                .enumerate()
                .map(|(i, r)| (first + i as u64, r.as_slice())),
            c,
        )
        .unwrap()
    };
    vec![
        BusMessage::Hello(Hello {
            version: PROTOCOL_VERSION,
            epoch: 9,
            oldest: 3,
            head: 100,
            epochs: vec![
                EpochStart { epoch: 7, start: 0 },
                EpochStart {
                    epoch: 9,
                    start: 50,
                },
            ],
        }),
        BusMessage::HelloAck(HelloAck {
            epochs: vec![EpochHeld {
                epoch: 7,
                held: [0..10, 20..30].into_iter().collect(),
            }],
        }),
        BusMessage::Batch(batch(Compression::Off)),
        BusMessage::Batch(batch(Compression::Zstd { level: 1 })),
        BusMessage::Ack(Ack {
            epoch: 7,
            next: 10,
            sack: RangeSet::from(12..15),
        }),
        BusMessage::Refuse(Refuse {
            reason: RefuseReason::StaleEpoch,
            detail: "x".into(),
        }),
        BusMessage::Grant(Grant {
            term: 1 + rng.below(1 << 40),
            active: Some(PeerId::new("primary-main").unwrap()),
            lease_ms: 750,
        }),
        BusMessage::Grant(Grant {
            term: rng.below(3),
            active: None,
            lease_ms: 1,
        }),
        BusMessage::Term(Term {
            highest: 1 + rng.below(1 << 20),
            acting: rng.below(2) == 1,
        }),
    ]
}

fn mutate(rng: &mut Rng, mut f: Vec<u8>) -> Vec<u8> {
    match rng.below(6) {
        0 => {
            let n = rng.below(f.len() as u64 + 1) as usize;
            f.truncate(n);
        }
        1 | 2 => {
            for _ in 0..1 + rng.below(4) {
                if !f.is_empty() {
                    let i = rng.below(f.len() as u64) as usize;
                    f[i] ^= 1 << rng.below(8);
                }
            }
        }
        3 => {
            let n = rng.below(8) as usize + 1;
            let extra = rng.bytes(n);
            f.extend(extra);
        }
        4 if f.len() >= 10 => {
            // Random payload behind a valid header of a random bus kind.
            let len = rng.below(200) as usize;
            f.truncate(10);
            // Every bus kind, and one beyond the last.
            let kinds = BusKind::ALL.len() as u64 + 1;
            f[4..6].copy_from_slice(&(0x100 + rng.below(kinds) as u16).to_le_bytes());
            f[6..10].copy_from_slice(&(len as u32).to_le_bytes());
            f.extend(rng.bytes(len));
        }
        _ => {
            let len = rng.below(64) as usize;
            f = rng.bytes(len);
        }
    }
    f
}

#[test]
fn decoder_never_panics() {
    let mut rng = Rng(0xdec0_de00);
    let codecs = [BusFrame::default(), BusFrame { max_payload: 64 }];
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut ok = 0u64;
    let samples: Vec<Vec<u8>> = sample_messages(&mut rng)
        .iter()
        .map(|m| BusFrame::default().encode(m).unwrap())
        .collect();
    // Inputs whose header names each kind: every kind's payload decoder gets its share.
    let mut by_kind: BTreeMap<u16, u64> = BTreeMap::new();
    for case in 0..DECODER_CASES {
        let base = samples[(case % samples.len() as u64) as usize].clone();
        let input = mutate(&mut rng, base);
        let codec = codecs[(case % 2) as usize];
        if let Ok(h) = BusFrame::default().header(&input) {
            *by_kind.entry(h.kind as u16).or_default() += 1;
        }
        match codec.decode(&input) {
            Ok(BusMessage::Batch(b)) => {
                ok += 1;
                if let Err(e) = b.entries(1 << 16) {
                    *errors
                        .entry(format!("body: {e:?}").chars().take(24).collect())
                        .or_default() += 1;
                }
            }
            Ok(_) => ok += 1,
            Err(e) => {
                let name: String = format!("{e:?}")
                    .chars()
                    .take_while(|c| c.is_alphanumeric())
                    .collect();
                *errors.entry(name).or_default() += 1;
            }
        }
        let _ = codec.decode_prefix(&input);
    }
    println!("{DECODER_CASES} inputs: {ok} decoded, errors {errors:?}, by kind {by_kind:x?}");
    for k in BusKind::ALL {
        let n = by_kind.get(&(k as u16)).copied().unwrap_or(0);
        assert!(n >= 1000, "only {n} inputs of kind {k:?}");
    }
    let total: u64 = errors.values().sum();
    assert!(
        total > DECODER_CASES / 2,
        "mutations should mostly be refused"
    );
    for kind in [
        "BadMagic",
        "Truncated",
        "TrailingBytes",
        "Postcard",
        "UnknownKind",
        "TooLong",
    ] {
        assert!(
            errors.get(kind).copied().unwrap_or(0) > 0,
            "never saw {kind}"
        );
    }
}

/// Every message round-trips and re-encodes to the same bytes.
#[test]
fn messages_round_trip() {
    let mut rng = Rng(1);
    for m in sample_messages(&mut rng) {
        let f = BusFrame::default().encode(&m).unwrap();
        assert_eq!(BusFrame::default().decode(&f).unwrap(), m);
    }
}

fn random_state(rng: &mut Rng) -> PollerState {
    let mut epochs = BTreeMap::new();
    let mut start = 0;
    for e in 1..=rng.below(4) {
        let len = rng.below(50);
        let held: RangeSet = (0..rng.below(4))
            .map(|_| {
                let s = start + rng.below(len + 1);
                s..s + rng.below(10)
            })
            .collect();
        epochs.insert(
            e * 2,
            EpochState {
                start,
                end: Some(start + len),
                held,
            },
        );
        start += len;
    }
    if let Some((_, last)) = epochs.iter_mut().next_back()
        && rng.one_in(2)
    {
        last.end = None;
    }
    PollerState { epochs }
}

fn random_hello(rng: &mut Rng) -> Hello {
    let n = 1 + rng.below(4);
    let mut epochs = Vec::new();
    let (mut e, mut s) = (rng.below(4) * 2, 0);
    for _ in 0..n {
        epochs.push(EpochStart { epoch: e, start: s });
        e += 1 + rng.below(3);
        s += rng.below(60);
    }
    let head = s + rng.below(100);
    let mut h = Hello {
        version: PROTOCOL_VERSION,
        epoch: epochs.last().unwrap().epoch,
        oldest: rng.below(head + 1),
        head,
        epochs,
    };
    // Some are broken on purpose.
    match rng.below(8) {
        0 => h.version = rng.next() as u16,
        1 => h.epoch = rng.next(),
        2 => h.epochs.reverse(),
        3 => h.head = 0,
        _ => {}
    }
    h
}

#[test]
fn handshake_and_batches_never_panic() {
    let mut rng = Rng(0x4a4d_5348);
    let mut refusals: BTreeMap<String, u64> = BTreeMap::new();
    let (mut accepted, mut stores) = (0u64, 0u64);
    for _ in 0..HANDSHAKE_CASES {
        let state = random_state(&mut rng);
        let mut rx = Receiver::new(
            ReceiverConfig {
                max_ahead: 1000,
                ..Default::default()
            },
            state.clone(),
        );
        let hello = random_hello(&mut rng);
        let frame = BusFrame::default()
            .encode(&BusMessage::Hello(hello.clone()))
            .unwrap();
        let input = if rng.one_in(4) {
            mutate(&mut rng, frame)
        } else {
            frame
        };
        let outs = rx.handle_frame(&input, 0);
        if let Some(ReceiverOutput::Transmit(BusMessage::HelloAck(ack))) = outs.first() {
            accepted += 1;
            // The answer is exactly what was durable, for the announced epochs.
            for held in &ack.epochs {
                let before = state
                    .epochs
                    .get(&held.epoch)
                    .map(|e| e.held.clone())
                    .unwrap_or_default();
                assert_eq!(held.held, before);
            }
        }
        // Then a few batches, honest-looking or not.
        for _ in 0..3 {
            let epoch = if rng.one_in(3) {
                rng.below(12)
            } else {
                hello.epoch
            };
            let first = rng.below(hello.head + 2000);
            let n = 1 + rng.below(5);
            let recs: Vec<(u64, Vec<u8>)> =
                (first..first + n).map(|s| (s, vec![1, 2, 3])).collect();
            let mut b = Batch::build(
                epoch,
                recs.iter().map(|(s, p)| (*s, p.as_slice())),
                Compression::Off,
            )
            .unwrap();
            if rng.one_in(4) {
                b.count = 1 + rng.below(10) as u32;
                b.last_seq = b.first_seq + rng.below(10);
            }
            let f = BusFrame::default().encode(&BusMessage::Batch(b));
            let Ok(f) = f else { continue };
            for o in rx.handle_frame(&f, 0) {
                if let ReceiverOutput::Store(s) = o {
                    stores += 1;
                    for e in &s.entries {
                        assert!(!state.holds(s.epoch, e.seq), "stored a held record again");
                    }
                    rx.durable(s.ticket);
                }
            }
        }
        for (k, v) in &rx.stats().refused {
            *refusals.entry(k.clone()).or_default() += v;
        }
    }
    println!(
        "{HANDSHAKE_CASES} handshakes: {accepted} accepted, {stores} stores, refusals {refusals:?}"
    );
    for reason in [
        "UnsupportedVersion",
        "EpochRegressed",
        "Malformed",
        "UnknownEpoch",
        "SeqOutOfRange",
    ] {
        assert!(
            refusals.get(reason).copied().unwrap_or(0) > 0,
            "never refused {reason}"
        );
    }
    assert!(accepted > HANDSHAKE_CASES / 10 && stores > 0);
}

fn refusal(outs: &[ReceiverOutput]) -> Option<RefuseReason> {
    outs.iter().find_map(|o| match o {
        ReceiverOutput::Transmit(BusMessage::Refuse(r)) => Some(r.reason),
        _ => None,
    })
}

/// The forged and replayed cases, one by one, and the receiver keeps serving afterwards.
#[test]
fn forged_and_replayed_sequences_are_refused() {
    // Epoch 1 (0..10) is complete; epoch 2 started at 10, holds 10..12.
    let mut state = PollerState::default();
    state.epochs.insert(
        1,
        EpochState {
            start: 0,
            end: Some(10),
            held: RangeSet::from(0..10),
        },
    );
    state.epochs.insert(
        2,
        EpochState {
            start: 10,
            end: None,
            held: RangeSet::from(10..12),
        },
    );
    let mut rx = Receiver::new(
        ReceiverConfig {
            max_ahead: 100,
            ..Default::default()
        },
        state.clone(),
    );
    let hello = Hello {
        version: PROTOCOL_VERSION,
        epoch: 3,
        oldest: 0,
        head: 20,
        epochs: vec![
            EpochStart { epoch: 1, start: 0 },
            EpochStart {
                epoch: 2,
                start: 10,
            },
            EpochStart {
                epoch: 3,
                start: 15,
            },
        ],
    };
    let outs = rx.handle(BusMessage::Hello(hello.clone()), 0);
    assert!(matches!(
        &outs[0],
        ReceiverOutput::Transmit(BusMessage::HelloAck(_))
    ));
    let batch = |epoch, seqs: std::ops::Range<u64>| {
        let p = [0u8; 4];
        BusMessage::Batch(Batch::build(epoch, seqs.map(|s| (s, &p[..])), Compression::Off).unwrap())
    };
    let cases = [
        (batch(1, 3..5), RefuseReason::StaleEpoch), // replay of a complete epoch
        (batch(5, 20..21), RefuseReason::UnknownEpoch), // never announced
        (batch(0, 0..1), RefuseReason::UnknownEpoch),
        (batch(2, 14..16), RefuseReason::SeqOutOfRange), // beyond the epoch's end (15)
        (batch(3, 12..16), RefuseReason::SeqOutOfRange), // before the epoch's start
        (batch(3, 120..121), RefuseReason::SeqOutOfRange), // beyond head + max_ahead
        (batch(3, 30..31).clone(), RefuseReason::Malformed),
    ];
    for (i, (msg, reason)) in cases.into_iter().enumerate() {
        let msg = if reason == RefuseReason::Malformed {
            // Header says 2 records, body has 1.
            let BusMessage::Batch(mut b) = msg else {
                unreachable!()
            };
            b.count = 2;
            b.last_seq += 1;
            BusMessage::Batch(b)
        } else {
            msg
        };
        assert_eq!(refusal(&rx.handle(msg, 0)), Some(reason), "case {i}");
    }
    // Still serving: an honest batch of epoch 3 is stored and acked once durable.
    let outs = rx.handle(batch(3, 15..18), 0);
    let ReceiverOutput::Store(s) = &outs[0] else {
        panic!("{outs:?}")
    };
    assert_eq!(s.entries.len(), 3);
    let acks = rx.durable(s.ticket);
    assert_eq!(
        acks,
        vec![ReceiverOutput::Transmit(BusMessage::Ack(Ack {
            epoch: 3,
            next: 18,
            sack: RangeSet::new()
        }))]
    );
    // The same batch again: duplicates, dropped, acked at once from the durable state.
    let outs = rx.handle(batch(3, 15..18), 0);
    assert!(matches!(
        &outs[..],
        [ReceiverOutput::Transmit(BusMessage::Ack(_))]
    ));
    assert_eq!(rx.stats().duplicates, 3);
    assert_eq!(rx.stats().refused.values().sum::<u64>(), 7);

    // A hello that regresses the epoch, or moves an epoch, closes the connection.
    let mut old = hello.clone();
    old.epoch = 2;
    old.epochs.pop();
    let mut rx2 = Receiver::new(ReceiverConfig::default(), rx.state().clone());
    let outs = rx2.handle(BusMessage::Hello(old), 0);
    assert_eq!(refusal(&outs), Some(RefuseReason::EpochRegressed));
    assert!(rx2.is_closed());
    let mut moved = hello;
    moved.epochs[1].start = 11;
    let mut rx3 = Receiver::new(ReceiverConfig::default(), rx.state().clone());
    assert_eq!(
        refusal(&rx3.handle(BusMessage::Hello(moved), 0)),
        Some(RefuseReason::EpochConflict)
    );
}
