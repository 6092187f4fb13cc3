//! Decoding arbitrary bytes never panics: it returns an error, or a value whose encoding is
//! exactly the input (so nothing is silently reinterpreted).
//!
//! A seeded loop rather than proptest, for volume: 300,000 inputs in three corpora, from pure
//! noise (exercises the header checks) to single mutations of valid frames (exercises every
//! postcard path and the canonical check). The seed is fixed so a failure reproduces.

use opha_common::wire::strategies::sequenced;
use opha_common::wire::*;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};

const CASES_PER_CORPUS: usize = 100_000;

/// SplitMix64: tiny, seeded, good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[derive(Default)]
struct Tally {
    ok: usize,
    errors: BTreeMap<&'static str, usize>,
}

fn name(e: &WireError) -> &'static str {
    match e {
        WireError::BadMagic { .. } => "bad_magic",
        WireError::UnsupportedVersion { .. } => "unsupported_version",
        WireError::UnknownKind { .. } => "unknown_kind",
        WireError::UnexpectedKind { .. } => "unexpected_kind",
        WireError::Truncated { .. } => "truncated",
        WireError::TooLong { .. } => "too_long",
        WireError::TrailingBytes { .. } => "trailing_bytes",
        WireError::PayloadTrailing { .. } => "payload_trailing",
        WireError::KindMismatch { .. } => "kind_mismatch",
        WireError::NonCanonical => "non_canonical",
        WireError::Postcard(_) => "postcard",
    }
}

/// The property, for both the exact and the prefix decoder.
fn check(codec: &FrameCodec, input: &[u8], tally: &mut Tally) {
    let exact = catch_unwind(AssertUnwindSafe(|| codec.decode::<Sequenced>(input)))
        .unwrap_or_else(|_| panic!("decode panicked on {}", hex(input)));
    match exact {
        Ok(v) => {
            let again = codec.encode(&v).expect("a decoded value re-encodes");
            assert_eq!(hex(&again), hex(input), "decoded {v:?}");
            tally.ok += 1;
        }
        Err(e) => *tally.errors.entry(name(&e)).or_default() += 1,
    }
    let prefix = catch_unwind(AssertUnwindSafe(|| codec.decode_prefix::<Sequenced>(input)))
        .unwrap_or_else(|_| panic!("decode_prefix panicked on {}", hex(input)));
    if let Ok((v, used)) = prefix {
        let again = codec.encode(&v).expect("a decoded value re-encodes");
        assert_eq!(hex(&again), hex(&input[..used]), "decoded {v:?}");
    }
}

fn valid_frames(n: usize) -> Vec<Vec<u8>> {
    let mut runner = TestRunner::deterministic();
    let strategy = sequenced();
    (0..n)
        .map(|_| {
            let v = strategy.new_tree(&mut runner).expect("tree").current();
            encode_frame(&v).expect("encode")
        })
        .collect()
}

fn report(corpus: &str, t: &Tally) {
    eprintln!("{corpus}: ok {} errors {:?}", t.ok, t.errors);
}

/// Noise: random lengths and bytes, a quarter of them behind a valid magic and version.
#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x0b0e_5eed_0000_0001);
    let codec = FrameCodec::default();
    let mut t = Tally::default();
    for _ in 0..CASES_PER_CORPUS {
        let len = rng.below(64);
        let mut input = rng.bytes(len);
        if rng.below(4) == 0 && input.len() >= 4 {
            input[..2].copy_from_slice(&MAGIC);
            input[2..4].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        }
        check(&codec, &input, &mut t);
    }
    report("random", &t);
    assert!(t.errors["bad_magic"] > 0 && t.errors["unsupported_version"] > 0);
}

/// A valid header of a random record kind (or a random kind) and a random payload of the
/// declared length: noise that reaches postcard.
#[test]
fn random_payloads_never_panic() {
    let mut rng = Rng(0x0b0e_5eed_0000_0002);
    let codecs = [FrameCodec::default(), FrameCodec::new(64)];
    let mut t = Tally::default();
    for _ in 0..CASES_PER_CORPUS {
        let kind = if rng.below(8) == 0 {
            rng.next() as u16
        } else {
            FrameKind::ALL[rng.below(FrameKind::ALL.len())].as_u16()
        };
        let len = rng.below(160);
        let mut payload = rng.bytes(len);
        // Half start with a plausible envelope (short valid peer id, small epoch and seq).
        if rng.below(2) == 0 && len >= 6 {
            payload[..4].copy_from_slice(&[2, b'p', b'1', 0]);
            payload[4] &= 0x7f;
            payload[5] %= 6;
        }
        let mut input = Vec::with_capacity(HEADER_LEN + len);
        input.extend_from_slice(&MAGIC);
        input.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        input.extend_from_slice(&kind.to_le_bytes());
        input.extend_from_slice(&(len as u32).to_le_bytes());
        input.extend_from_slice(&payload);
        check(&codecs[rng.below(2)], &input, &mut t);
    }
    report("random payloads", &t);
    assert!(t.errors["postcard"] > 0);
}

/// One to three mutations of a valid frame: bit flips, byte overwrites, insertions,
/// deletions, truncations, length-field edits and splices of two frames.
#[test]
fn mutated_frames_never_panic() {
    let mut rng = Rng(0x0b0e_5eed_0000_0003);
    let frames = valid_frames(512);
    let codec = FrameCodec::default();
    let mut t = Tally::default();
    for _ in 0..CASES_PER_CORPUS {
        let mut input = frames[rng.below(frames.len())].clone();
        for _ in 0..1 + rng.below(3) {
            let n = input.len();
            match rng.below(8) {
                0 if n > 0 => {
                    let i = rng.below(n);
                    input[i] ^= 1 << rng.below(8);
                }
                1 if n > 0 => {
                    let i = rng.below(n);
                    input[i] = rng.next() as u8;
                }
                2 => {
                    let i = rng.below(n + 1);
                    input.insert(i, rng.next() as u8);
                }
                3 if n > 0 => {
                    input.remove(rng.below(n));
                }
                4 => input.truncate(rng.below(n + 1)),
                5 if n >= HEADER_LEN => {
                    // Keep the length field consistent with a mutated payload, so that the
                    // payload decoder (not the length check) meets the damage.
                    let i = HEADER_LEN + rng.below(n - HEADER_LEN + 1);
                    input.insert(i, rng.next() as u8);
                    let len = (input.len() - HEADER_LEN) as u32;
                    input[6..10].copy_from_slice(&len.to_le_bytes());
                }
                6 => {
                    let other = &frames[rng.below(frames.len())];
                    let cut = rng.below(other.len());
                    input.extend_from_slice(&other[cut..]);
                }
                _ if n > HEADER_LEN => {
                    // Overwrite a payload byte with a varint continuation byte: over-long
                    // encodings and varint overflows.
                    let i = HEADER_LEN + rng.below(n - HEADER_LEN);
                    input[i] = 0x80 | rng.next() as u8;
                }
                _ => {}
            }
        }
        check(&codec, &input, &mut t);
    }
    report("mutated", &t);
    assert!(t.ok > 0, "some mutations stay valid (e.g. inside strings)");
    assert!(t.errors["postcard"] > 0 && t.errors["truncated"] > 0);
}
