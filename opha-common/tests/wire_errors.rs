//! Every way a frame is refused, each with the error that names it.

use opha_common::wire::*;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

fn sample() -> Sequenced {
    let record = Record::DaemonHealth(DaemonHealth {
        daemon: "nmis9d".into(),
        state: DaemonState::Down,
        pid: None,
        since_ms: 0,
        checked_ms: 5,
        detail: String::new(),
    });
    Sequenced::new(PeerId::new("p1").expect("id"), 0, 1, record)
}

fn frame() -> Vec<u8> {
    encode_frame(&sample()).expect("encode")
}

/// A frame with the given header fields around `payload`.
fn raw_frame(version: u16, kind: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&MAGIC);
    f.extend_from_slice(&version.to_le_bytes());
    f.extend_from_slice(&kind.to_le_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(payload);
    f
}

fn decode(bytes: &[u8]) -> Result<Sequenced, WireError> {
    decode_frame(bytes)
}

#[test]
fn valid_frame_decodes() {
    assert_eq!(decode(&frame()), Ok(sample()));
    assert_eq!(PROTOCOL_VERSION, 0x0100);
    assert_eq!(&frame()[..2], b"OP");
}

#[test]
fn bad_magic() {
    let mut f = frame();
    f[0] = b'X';
    assert_eq!(decode(&f), Err(WireError::BadMagic { found: *b"XP" }));
    // Refused as soon as two bytes are there, not after waiting for a header.
    assert_eq!(decode(b"HT"), Err(WireError::BadMagic { found: *b"HT" }));
}

#[test]
fn unsupported_versions_name_both_versions() {
    let payload = &frame()[HEADER_LEN..];
    for version in [0x0200u16, 0x0101, 0x00ff, 0x0000, 0xffff] {
        let f = raw_frame(version, FrameKind::DaemonHealth.as_u16(), payload);
        let err = decode(&f).expect_err("must be refused");
        assert_eq!(
            err,
            WireError::UnsupportedVersion {
                found: version,
                supported: PROTOCOL_VERSION
            }
        );
        let msg = err.to_string();
        let found = format!("{}.{}", version >> 8, version & 0xff);
        assert!(msg.contains(&found) && msg.contains("1.0"), "{msg}");
    }
    assert!(version_supported(PROTOCOL_VERSION));
}

#[test]
fn unknown_kind() {
    let payload = &frame()[HEADER_LEN..];
    for kind in [0u16, 6, 0xff, 0x100, 0xffff] {
        let f = raw_frame(PROTOCOL_VERSION, kind, payload);
        assert_eq!(decode(&f), Err(WireError::UnknownKind { kind }));
    }
}

#[test]
fn truncated() {
    let f = frame();
    assert_eq!(
        decode(&[]),
        Err(WireError::Truncated {
            needed: HEADER_LEN,
            available: 0
        })
    );
    assert_eq!(
        decode(&f[..7]),
        Err(WireError::Truncated {
            needed: HEADER_LEN,
            available: 7
        })
    );
    for cut in [HEADER_LEN, f.len() - 1] {
        assert_eq!(
            decode(&f[..cut]),
            Err(WireError::Truncated {
                needed: f.len(),
                available: cut
            })
        );
    }
}

#[test]
fn too_long() {
    let f = frame();
    let len = f.len() - HEADER_LEN;
    let small = FrameCodec::new(len as u32 - 1);
    assert_eq!(
        small.decode::<Sequenced>(&f),
        Err(WireError::TooLong {
            len,
            max: len as u32 - 1
        })
    );
    // The length field alone is enough to refuse: no payload is buffered first.
    let huge = raw_frame(PROTOCOL_VERSION, 1, &[]);
    let mut huge = huge[..HEADER_LEN].to_vec();
    huge[6..10].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        decode(&huge),
        Err(WireError::TooLong {
            len: u32::MAX as usize,
            max: DEFAULT_MAX_PAYLOAD
        })
    );
    // Encoding applies the same bound and leaves the output untouched.
    let mut out = vec![1, 2, 3];
    assert_eq!(
        small.encode_into(&sample(), &mut out),
        Err(WireError::TooLong {
            len,
            max: len as u32 - 1
        })
    );
    assert_eq!(out, [1, 2, 3]);
    assert_eq!(FrameCodec::new(len as u32).encode(&sample()), Ok(f));
}

#[test]
fn trailing_bytes() {
    let mut f = frame();
    let n = f.len();
    f.extend_from_slice(&[0, 0, 0]);
    assert_eq!(decode(&f), Err(WireError::TrailingBytes { extra: 3 }));
    // A stream reader takes the frame and leaves the rest.
    let (v, used) = FrameCodec::default()
        .decode_prefix::<Sequenced>(&f)
        .expect("prefix");
    assert_eq!((v, used), (sample(), n));
}

#[test]
fn payload_trailing() {
    let mut payload = frame()[HEADER_LEN..].to_vec();
    payload.push(0);
    let f = raw_frame(PROTOCOL_VERSION, FrameKind::DaemonHealth.as_u16(), &payload);
    assert_eq!(decode(&f), Err(WireError::PayloadTrailing { extra: 1 }));
}

#[test]
fn kind_mismatch() {
    let payload = &frame()[HEADER_LEN..];
    let f = raw_frame(PROTOCOL_VERSION, FrameKind::Event.as_u16(), payload);
    assert_eq!(
        decode(&f),
        Err(WireError::KindMismatch {
            header: FrameKind::Event,
            payload: FrameKind::DaemonHealth
        })
    );
}

#[test]
fn non_canonical_varint() {
    // Payload: peer id (len 2, "p1"), epoch 0, seq 1, ... Spell epoch 0 as 0x80 0x00.
    let payload = &frame()[HEADER_LEN..];
    assert_eq!(&payload[..4], &[2, b'p', b'1', 0]);
    let mut long = payload[..3].to_vec();
    long.extend_from_slice(&[0x80, 0x00]);
    long.extend_from_slice(&payload[4..]);
    // postcard alone accepts it...
    assert_eq!(postcard::from_bytes::<Sequenced>(&long), Ok(sample()));
    // ...the frame decoder does not.
    let f = raw_frame(PROTOCOL_VERSION, FrameKind::DaemonHealth.as_u16(), &long);
    assert_eq!(decode(&f), Err(WireError::NonCanonical));
}

#[test]
fn postcard_errors() {
    let payload = frame()[HEADER_LEN..].to_vec();
    let kind = FrameKind::DaemonHealth.as_u16();
    // An invalid peer id ("P1": upper case) is refused at decode, not only at construction.
    let mut bad_id = payload.clone();
    bad_id[1] = b'P';
    let err = decode(&raw_frame(PROTOCOL_VERSION, kind, &bad_id)).expect_err("bad id");
    assert!(matches!(err, WireError::Postcard(_)), "{err:?}");
    // Invalid UTF-8 in the id.
    let mut bad_utf8 = payload.clone();
    bad_utf8[1] = 0xff;
    let err = decode(&raw_frame(PROTOCOL_VERSION, kind, &bad_utf8)).expect_err("utf8");
    assert!(matches!(err, WireError::Postcard(_)), "{err:?}");
    // A record variant this version does not have (tag right after id, epoch, seq).
    let mut bad_tag = payload.clone();
    assert_eq!(bad_tag[5], 3, "DaemonHealth is variant 3");
    bad_tag[5] = 9;
    let err = decode(&raw_frame(PROTOCOL_VERSION, kind, &bad_tag)).expect_err("tag");
    assert!(matches!(err, WireError::Postcard(_)), "{err:?}");
    // A payload cut short but with a consistent length field.
    let err = decode(&raw_frame(
        PROTOCOL_VERSION,
        kind,
        &payload[..payload.len() - 1],
    ))
    .expect_err("short");
    assert_eq!(
        err,
        WireError::Postcard(postcard::Error::DeserializeUnexpectedEnd)
    );
    assert!(err.to_string().contains("invalid frame payload"));
}

/// A payload type that accepts only some kinds, as the bus's own messages will.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct EventsOnly(Sequenced);

impl FramePayload for EventsOnly {
    fn frame_kind(&self) -> FrameKind {
        self.0.record.kind()
    }

    fn accepts(kind: FrameKind) -> bool {
        kind == FrameKind::Event
    }
}

#[test]
fn unexpected_kind() {
    assert_eq!(
        decode_frame::<EventsOnly>(&frame()),
        Err(WireError::UnexpectedKind {
            kind: FrameKind::DaemonHealth
        })
    );
    let event = Sequenced::new(
        PeerId::new("p1").expect("id"),
        1,
        2,
        Record::Event(Event {
            id: EventId::from_u128(1),
            time_ms: 1,
            tenant: TenantId(1),
            subject: Subject::Node(NodeRef::from(Ipv4Addr::new(198, 18, 0, 9))),
            kind: EventKind::NodeDown,
            severity: Severity::Critical,
            details: String::new(),
        }),
    );
    let f = encode_frame(&event).expect("encode");
    assert_eq!(decode_frame::<EventsOnly>(&f), Ok(EventsOnly(event)));
}

#[test]
fn header_only_peek() {
    let f = frame();
    let h = FrameCodec::default()
        .header(&f[..HEADER_LEN])
        .expect("header");
    assert_eq!(h.kind, FrameKind::DaemonHealth);
    assert_eq!(h.version, PROTOCOL_VERSION);
    assert_eq!(h.frame_len(), f.len());
    assert_eq!(h.to_bytes().as_slice(), &f[..HEADER_LEN]);
}
