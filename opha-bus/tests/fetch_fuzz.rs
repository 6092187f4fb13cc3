//! Bad input for the gap fetch: the fetch frame decoder gets random and mutated frames
//! (seeded, 120,000 cases), and every decoded answer goes through the fetching side's checks.
//! Nothing panics; almost everything is refused; what decodes obeys the bounds.

mod common;

use common::Rng;
use opha_bus::fetch::{
    FetchDone, FetchEntries, FetchExchange, FetchFrame, FetchMessage, FetchRefuse,
    FetchRefuseReason, FetchRequest, MAX_REPLY_ENTRIES, MAX_REQUEST_RANGES, MAX_REQUEST_SEQS,
};
use opha_bus::message::Entry;
use opha_common::wire::{Bytes, PeerId};
use std::collections::BTreeMap;

const CASES: u64 = 120_000;

fn samples(rng: &mut Rng) -> Vec<FetchMessage> {
    let entries: Vec<Entry> = (0..1 + rng.below(6))
        .map(|i| Entry {
            seq: 20 + i * 2,
            payload: Bytes(vec![i as u8; 20]),
        })
        .collect();
    vec![
        FetchMessage::Request(FetchRequest {
            poller: PeerId::new("poller-z").unwrap(),
            epoch: 3,
            ranges: [0..10, 20..40].into_iter().collect(),
        }),
        FetchMessage::Entries(FetchEntries { epoch: 3, entries }),
        FetchMessage::Done(FetchDone {
            epoch: 3,
            unavailable: [0..10, 20..40].into_iter().collect(),
        }),
        FetchMessage::Refuse(FetchRefuse {
            reason: FetchRefuseReason::StoreFailed,
            detail: "disk".into(),
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
            f.extend(rng.bytes(n));
        }
        4 if f.len() >= 10 => {
            // Random payload behind a valid header of a random kind near the fetch range.
            let len = rng.below(200) as usize;
            f.truncate(10);
            f[4..6].copy_from_slice(&(0x10e + rng.below(8) as u16).to_le_bytes());
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
fn fetch_decoder_never_panics() {
    let mut rng = Rng(0xfe7c_4000);
    let codecs = [FetchFrame::default(), FetchFrame { max_payload: 64 }];
    let frames: Vec<Vec<u8>> = samples(&mut rng)
        .iter()
        .map(|m| FetchFrame::default().encode(m).unwrap())
        .collect();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let (mut ok, mut violations) = (0u64, 0u64);
    for case in 0..CASES {
        let base = frames[(case % frames.len() as u64) as usize].clone();
        let input = mutate(&mut rng, base);
        let codec = codecs[(case % 2) as usize];
        let _ = codec.decode_prefix(&input);
        match codec.decode(&input) {
            Ok(m) => {
                ok += 1;
                match &m {
                    FetchMessage::Request(r) => {
                        assert!(!r.ranges.is_empty());
                        assert!(r.ranges.range_count() <= MAX_REQUEST_RANGES);
                        assert!(r.ranges.len() <= MAX_REQUEST_SEQS);
                    }
                    FetchMessage::Entries(e) => {
                        assert!(!e.entries.is_empty() && e.entries.len() <= MAX_REPLY_ENTRIES);
                        assert!(e.entries.windows(2).all(|w| w[0].seq < w[1].seq));
                    }
                    FetchMessage::Done(d) => assert!(d.unavailable.len() <= MAX_REQUEST_SEQS),
                    FetchMessage::Refuse(_) => {}
                }
                // Whatever decodes is checked against a request like the samples'.
                let mut ex = FetchExchange::new(FetchRequest {
                    poller: PeerId::new("poller-z").unwrap(),
                    epoch: 3,
                    ranges: [0..10, 20..40].into_iter().collect(),
                });
                if ex.handle(m).is_err() {
                    violations += 1;
                }
            }
            Err(e) => {
                let name: String = format!("{e:?}")
                    .chars()
                    .take_while(|c| c.is_alphanumeric())
                    .collect();
                *errors.entry(name).or_default() += 1;
            }
        }
    }
    println!(
        "{CASES} inputs: {ok} decoded ({violations} refused by the exchange), errors {errors:?}"
    );
    let total: u64 = errors.values().sum();
    assert_eq!(total + ok, CASES);
    // Unchanged answers pass the exchange; mutated ones that still decode mostly do not.
    assert!(violations > 0 && violations < ok, "{violations} of {ok}");
    assert!(total > CASES / 2, "mutations should mostly be refused");
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
