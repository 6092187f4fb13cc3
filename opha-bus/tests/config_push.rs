//! Config push frames: pinned bytes, the consistency rules, and bad input (seeded, 120,000
//! random and mutated frames): nothing panics, almost everything is refused, and whatever
//! decodes obeys the bounds and re-encodes to the same bytes.

mod common;

use common::Rng;
use opha_bus::config_push::{
    ConfigFrame, ConfigMessage, ConfigOutcome, ConfigPush, ConfigResult, ConfigState,
    MAX_CONFIG_BYTES, MAX_REASON, validate,
};
use opha_bus::message::BusError;
use std::collections::BTreeMap;

const CASES: u64 = 120_000;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn golden_bytes() {
    let f = ConfigFrame::default();
    let cases = [
        (
            ConfigMessage::Push(ConfigPush {
                version: 3,
                term: 7,
                config: "a=1".into(),
            }),
            // "OP", version 1.0, kind 0x120, len 6; version 3, term 7, "a=1" (len 3).
            "4f50000120010600000003070361 3d31",
        ),
        (
            ConfigMessage::Result(ConfigResult {
                version: 3,
                running: 3,
                outcome: ConfigOutcome::Applied,
            }),
            "4f50000121010300000003 03 00",
        ),
        (
            ConfigMessage::Result(ConfigResult {
                version: 4,
                running: 3,
                outcome: ConfigOutcome::Rejected("no".into()),
            }),
            "4f500001210106000000 04 03 02 02 6e6f",
        ),
        (
            ConfigMessage::State(ConfigState { running: 300 }),
            "4f500001220102000000 ac02",
        ),
    ];
    for (msg, golden) in cases {
        let golden = golden.replace(' ', "");
        let bytes = f.encode(&msg).unwrap();
        assert_eq!(hex(&bytes), golden, "{:?}", msg.kind());
        assert_eq!(f.decode(&bytes).unwrap(), msg);
    }
}

#[test]
fn inconsistent_messages_are_refused_both_ways() {
    let push = |version, term, config: &str| {
        ConfigMessage::Push(ConfigPush {
            version,
            term,
            config: config.into(),
        })
    };
    let result = |version, running, outcome| {
        ConfigMessage::Result(ConfigResult {
            version,
            running,
            outcome,
        })
    };
    let bad = [
        push(0, 1, "x"),
        push(1, 0, "x"),
        push(1, 1, ""),
        push(1, 1, &"x".repeat(MAX_CONFIG_BYTES + 1)),
        result(0, 0, ConfigOutcome::AlreadyCurrent),
        result(2, 1, ConfigOutcome::Applied),
        result(2, 1, ConfigOutcome::AlreadyCurrent),
        result(2, 1, ConfigOutcome::Rejected(String::new())),
        result(2, 1, ConfigOutcome::NotActive("x".repeat(MAX_REASON + 1))),
    ];
    let f = ConfigFrame::default();
    for m in bad {
        assert!(
            matches!(validate(&m), Err(BusError::Invalid(_))),
            "{m:?} passed"
        );
        assert!(f.encode(&m).is_err(), "encoded {m:?}");
        // Forged on the wire (encoded without the check): refused by the decoder.
        let payload = match &m {
            ConfigMessage::Push(p) => postcard::to_allocvec(p).unwrap(),
            ConfigMessage::Result(r) => postcard::to_allocvec(r).unwrap(),
            ConfigMessage::State(s) => postcard::to_allocvec(s).unwrap(),
        };
        let mut frame = vec![0x4f, 0x50, 0x00, 0x01];
        frame.extend_from_slice(&(m.kind() as u16).to_le_bytes());
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&payload);
        assert!(f.decode(&frame).is_err());
    }
    // At the bounds: accepted.
    assert!(validate(&push(1, 1, &"x".repeat(MAX_CONFIG_BYTES))).is_ok());
    assert!(validate(&result(5, 9, ConfigOutcome::AlreadyCurrent)).is_ok());
    assert!(
        validate(&result(
            5,
            4,
            ConfigOutcome::Rejected("x".repeat(MAX_REASON))
        ))
        .is_ok()
    );
}

#[test]
fn bus_and_fetch_kinds_are_not_config_kinds() {
    let f = ConfigFrame::default();
    for kind in [0x100u16, 0x106, 0x110, 0x11f, 0x123, 0x12f, 0x130] {
        let mut frame = vec![0x4f, 0x50, 0x00, 0x01];
        frame.extend_from_slice(&kind.to_le_bytes());
        frame.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(f.header(&frame), Err(BusError::UnknownKind { kind }));
    }
    // And the core bus decoder refuses config frames.
    let bytes = f
        .encode(&ConfigMessage::State(ConfigState { running: 1 }))
        .unwrap();
    assert!(matches!(
        opha_bus::message::BusFrame::default().decode(&bytes),
        Err(BusError::UnknownKind { kind: 0x122 })
    ));
}

fn samples(rng: &mut Rng) -> Vec<ConfigMessage> {
    let text: String = (0..1 + rng.below(40))
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    vec![
        ConfigMessage::Push(ConfigPush {
            version: 1 + rng.below(1000),
            term: 1 + rng.below(50),
            config: format!("poller_id = \"{text}\"\n"),
        }),
        ConfigMessage::Result(ConfigResult {
            version: 9,
            running: 9,
            outcome: ConfigOutcome::Applied,
        }),
        ConfigMessage::Result(ConfigResult {
            version: 9,
            running: 8,
            outcome: ConfigOutcome::Rejected(format!("interface: {text}")),
        }),
        ConfigMessage::Result(ConfigResult {
            version: 9,
            running: 12,
            outcome: ConfigOutcome::NotActive("term 3 is not current".into()),
        }),
        ConfigMessage::State(ConfigState {
            running: rng.below(1 << 40),
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
            // Random payload behind a valid header of a random kind near the config range.
            let len = rng.below(200) as usize;
            f.truncate(10);
            f[4..6].copy_from_slice(&(0x11e + rng.below(8) as u16).to_le_bytes());
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
fn config_decoder_never_panics() {
    let mut rng = Rng(0xc0f1_9120);
    let codecs = [ConfigFrame::default(), ConfigFrame { max_payload: 32 }];
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut ok = 0u64;
    for case in 0..CASES {
        let frames = samples(&mut rng);
        let base = ConfigFrame::default()
            .encode(&frames[(case % frames.len() as u64) as usize])
            .unwrap();
        let input = mutate(&mut rng, base);
        let codec = codecs[(case % 2) as usize];
        let _ = codec.decode_prefix(&input);
        match codec.decode(&input) {
            Ok(m) => {
                ok += 1;
                assert!(validate(&m).is_ok());
                if let ConfigMessage::Push(p) = &m {
                    assert!(p.version > 0 && p.term > 0);
                    assert!(!p.config.is_empty() && p.config.len() <= MAX_CONFIG_BYTES);
                }
                // Canonical: what decodes is exactly what the encoder writes.
                assert_eq!(codec.encode(&m).unwrap(), input);
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
    println!("{CASES} inputs: {ok} decoded, errors {errors:?}");
    let total: u64 = errors.values().sum();
    assert_eq!(total + ok, CASES);
    assert!(total > CASES / 2, "mutations should mostly be refused");
    for kind in [
        "BadMagic",
        "Truncated",
        "TrailingBytes",
        "Postcard",
        "UnknownKind",
        "TooLong",
        "Invalid",
    ] {
        assert!(errors.contains_key(kind), "no {kind} error in {errors:?}");
    }
}
