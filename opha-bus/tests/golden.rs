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
