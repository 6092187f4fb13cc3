//! The bus frame layout, pinned: these bytes must keep decoding (and encoding) exactly.

use opha_bus::compress::BodyCodec;
use opha_bus::message::{Ack, Batch, BusFrame, BusMessage, EpochStart, Hello};
use opha_bus::ranges::RangeSet;
use opha_common::wire::{Bytes, FrameCodec, Sequenced, WireError};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn hello_ack_and_batch_bytes() {
    let hello = BusMessage::Hello(Hello {
        version: 0x0100,
        epoch: 2,
        oldest: 5,
        head: 300,
        epochs: vec![
            EpochStart { epoch: 1, start: 0 },
            EpochStart {
                epoch: 2,
                start: 200,
            },
        ],
    });
    // magic "OP", version 1.0, kind 0x100, len 11; postcard: version 0x0100 as varint
    // (80 02), epoch 2, oldest 5, head 300 (ac 02), 2 epochs: (1, 0), (2, 200 = c8 01).
    let golden_hello = "4f50000100010c00000080020205ac0202010002c801";
    let ack = BusMessage::Ack(Ack {
        epoch: 2,
        next: 250,
        sack: RangeSet::from(260..270),
    });
    // epoch 2, next 250 (fa 01), one range 260..270 (84 02, 8e 02).
    let golden_ack = "4f50000103010800000002fa010184028e02".to_owned();
    let batch = BusMessage::Batch(Batch {
        epoch: 2,
        first_seq: 200,
        last_seq: 200,
        count: 1,
        codec: BodyCodec::Raw,
        body: Bytes(vec![1, 0xc8, 0x01, 2, 0xaa, 0xbb]),
    });
    // epoch 2, first 200, last 200, count 1, codec Raw (0), body of 6 bytes.
    let golden_batch = "4f50000102010e00000002c801c801010006 01c80102aabb".replace(' ', "");
    let codec = BusFrame::default();
    for (msg, golden) in [
        (hello, golden_hello.to_owned()),
        (ack, golden_ack),
        (batch, golden_batch),
    ] {
        let bytes = codec.encode(&msg).unwrap();
        assert_eq!(hex(&bytes), golden, "{:?}", msg.kind());
        assert_eq!(codec.decode(&bytes).unwrap(), msg);
    }
}

/// A record decoder handed a bus frame refuses it by kind (the ranges do not overlap).
#[test]
fn record_codec_refuses_bus_frames() {
    let f = BusFrame::default()
        .encode(&BusMessage::Ack(Ack {
            epoch: 1,
            next: 1,
            sack: Default::default(),
        }))
        .unwrap();
    assert_eq!(
        FrameCodec::default().decode::<Sequenced>(&f),
        Err(WireError::UnknownKind { kind: 0x103 })
    );
}

/// The fencing messages (kinds 0x105, 0x106), pinned, and their strict checks.
#[test]
fn grant_and_term_bytes() {
    use opha_bus::message::{BusError, Grant, Term};
    use opha_common::wire::PeerId;
    let codec = BusFrame::default();
    let grant = BusMessage::Grant(Grant {
        term: 7,
        active: Some(PeerId::new("primary-b").unwrap()),
        lease_ms: 750,
    });
    // kind 0x105, len 14; term 7, Some (01), 9 bytes "primary-b", lease 750 (ee 05).
    let golden_grant = golden_grant_bytes();
    let none = BusMessage::Grant(Grant {
        term: 8,
        active: None,
        lease_ms: 1,
    });
    let golden_none = "4f500001050103000000 08 00 01".replace(' ', "");
    let term = BusMessage::Term(Term {
        highest: 300,
        acting: true,
    });
    // kind 0x106, len 3; highest 300 (ac 02), acting (01).
    let golden_term = "4f500001060103000000 ac02 01".replace(' ', "");
    for (msg, golden) in [
        (grant, golden_grant),
        (none, golden_none),
        (term, golden_term),
    ] {
        let bytes = codec.encode(&msg).unwrap();
        assert_eq!(hex(&bytes), golden, "{:?}", msg.kind());
        assert_eq!(codec.decode(&bytes).unwrap(), msg);
    }

    let refused = |msg: BusMessage| {
        let bytes = codec.encode(&msg).unwrap();
        codec.decode(&bytes).unwrap_err()
    };
    // A primary named with term 0, a zero or huge lease, acting with term 0.
    for bad in [
        BusMessage::Grant(Grant {
            term: 0,
            active: Some(PeerId::new("p").unwrap()),
            lease_ms: 10,
        }),
        BusMessage::Grant(Grant {
            term: 3,
            active: None,
            lease_ms: 0,
        }),
        BusMessage::Grant(Grant {
            term: 3,
            active: None,
            lease_ms: opha_bus::message::MAX_LEASE_MS + 1,
        }),
        BusMessage::Term(Term {
            highest: 0,
            acting: true,
        }),
    ] {
        assert!(matches!(refused(bad), BusError::Invalid(_)));
    }
    // A peer id that is not one ("Primary" has an upper-case letter) does not decode.
    let mut bytes = hex_to_bytes(&golden_grant_bytes());
    bytes[13] = b'P';
    assert!(matches!(codec.decode(&bytes), Err(BusError::Postcard(_))));
    // A non-canonical varint (term 7 as 87 00) is refused.
    let nc = hex_to_bytes("4f500001050104000000 8700 00 01");
    assert_eq!(codec.decode(&nc), Err(BusError::NonCanonical));
}

fn golden_grant_bytes() -> String {
    "4f50000105010e000000 07 01 09 7072696d6172792d62 ee05".replace(' ', "")
}

fn hex_to_bytes(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
