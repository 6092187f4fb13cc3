//! Round trips of every wire type: postcard (the wire), JSON (the API's human-readable forms of
//! OIDs, bytes, ids), and whole frames.

use opha_common::wire::strategies::*;
use opha_common::wire::*;
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;

fn round_trip<T>(v: &T) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let bytes = postcard::to_allocvec(v).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let back: T = postcard::from_bytes(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&back, v, "postcard");
    let json = serde_json::to_string(v).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let back: T = serde_json::from_str(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&back, v, "json {}", json);
    Ok(())
}

proptest! {
    #[test]
    fn peer_id_round_trips(v in peer_id()) { round_trip(&v)?; }

    #[test]
    fn tenant_round_trips(v in tenant()) { round_trip(&v)?; }

    #[test]
    fn node_ref_round_trips(v in node_ref()) {
        round_trip(&v)?;
        // Through the kernel key and back (names are not in the key).
        let mut unnamed = v.clone();
        unnamed.name = None;
        let via_key = NodeRef::from_key(&v.key(), None);
        if let std::net::IpAddr::V6(a) = v.addr && a.to_ipv4_mapped().is_some() {
            // IPv4-mapped IPv6 comes back as IPv4: one spelling per node.
            prop_assert!(via_key.addr.is_ipv4());
        } else {
            prop_assert_eq!(via_key, unnamed);
        }
    }

    #[test]
    fn rtt_stats_round_trip(v in rtt_stats()) { round_trip(&v)?; }

    #[test]
    fn class_metrics_round_trip(v in class_metrics()) { round_trip(&v)?; }

    #[test]
    fn node_metrics_round_trip(v in node_metrics()) { round_trip(&v)?; }

    #[test]
    fn oid_round_trips(v in oid()) {
        round_trip(&v)?;
        prop_assert_eq!(v.to_string().parse::<Oid>().ok(), Some(v.clone()));
    }

    #[test]
    fn bytes_round_trip(v in bytes(64)) {
        round_trip(&v)?;
        prop_assert_eq!(Bytes::from_hex(&v.to_hex()), Some(v.clone()));
    }

    #[test]
    fn var_bind_round_trips(v in var_bind()) { round_trip(&v)?; }

    #[test]
    fn trap_round_trips(v in trap()) { round_trip(&v)?; }

    #[test]
    fn syslog_round_trips(v in syslog()) { round_trip(&v)?; }

    #[test]
    fn event_id_round_trips(v in event_id()) {
        round_trip(&v)?;
        prop_assert_eq!(EventId::from_u128(v.as_u128()), v);
    }

    #[test]
    fn event_kind_round_trips(v in event_kind()) { round_trip(&v)?; }

    #[test]
    fn subject_round_trips(v in subject()) { round_trip(&v)?; }

    #[test]
    fn severity_round_trips(v in severity()) { round_trip(&v)?; }

    #[test]
    fn event_round_trips(v in event()) { round_trip(&v)?; }

    #[test]
    fn service_state_round_trips(v in service_state()) { round_trip(&v)?; }

    #[test]
    fn daemon_health_round_trips(v in daemon_health()) { round_trip(&v)?; }

    #[test]
    fn peer_status_round_trips(v in peer_status()) { round_trip(&v)?; }

    #[test]
    fn record_round_trips(v in record()) { round_trip(&v)?; }

    #[test]
    fn sequenced_round_trips(v in sequenced()) { round_trip(&v)?; }

    /// A frame decodes to the value it was made from, its header says the record's kind and
    /// length, and the payload is exactly the postcard encoding of the envelope.
    #[test]
    fn frame_round_trips(v in sequenced()) {
        let frame = encode_frame(&v).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let header = FrameCodec::default().header(&frame).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(header.kind, v.record.kind());
        prop_assert_eq!(header.version, PROTOCOL_VERSION);
        prop_assert_eq!(header.frame_len(), frame.len());
        prop_assert_eq!(&frame[HEADER_LEN..], &postcard::to_allocvec(&v).map_err(|e| TestCaseError::fail(e.to_string()))?[..]);
        let back: Sequenced = decode_frame(&frame).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, v);
    }

    /// Frames appended to one buffer walk back one by one with `decode_prefix`.
    #[test]
    fn concatenated_frames_walk(vs in proptest::collection::vec(sequenced(), 0..6)) {
        let codec = FrameCodec::default();
        let mut buf = Vec::new();
        let mut lens = Vec::new();
        for v in &vs {
            lens.push(codec.encode_into(v, &mut buf).map_err(|e| TestCaseError::fail(e.to_string()))?);
        }
        let mut at = 0;
        for (v, len) in vs.iter().zip(lens) {
            let (back, used) = codec
                .decode_prefix::<Sequenced>(&buf[at..])
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&back, v);
            prop_assert_eq!(used, len);
            at += used;
        }
        prop_assert_eq!(at, buf.len());
    }
}

/// Every frame kind, so that each record type is seen through the frame path as well.
#[test]
fn frame_round_trips_per_kind() {
    use proptest::test_runner::{Config, TestRunner};
    for kind in FrameKind::ALL {
        let mut runner = TestRunner::new(Config::with_cases(64));
        runner
            .run(&sequenced_of(kind), |v| {
                let frame = encode_frame(&v).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(u16::from_le_bytes([frame[4], frame[5]]), kind.as_u16());
                let back: Sequenced =
                    decode_frame(&frame).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(back, v);
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
    }
}

/// JSON forms that the API and the ingest endpoint rely on.
#[test]
fn human_readable_forms() {
    let oid: Oid = ".1.3.6.1.6.3.1.1.5.3".parse().expect("oid");
    assert_eq!(
        serde_json::to_string(&oid).expect("json"),
        "\"1.3.6.1.6.3.1.1.5.3\""
    );
    assert!("1..3".parse::<Oid>().is_err());
    assert!("1.+3".parse::<Oid>().is_err());
    assert!("1.99999999999".parse::<Oid>().is_err());
    assert_eq!(
        serde_json::to_string(&Bytes(vec![0, 0xab])).expect("json"),
        "\"00ab\""
    );
    assert!(serde_json::from_str::<Bytes>("\"0g\"").is_err());
    assert_eq!(
        serde_json::to_string(&EventId::from_u128(0x0102)).expect("json"),
        "\"00000000000000000000000000000102\""
    );
    assert!(serde_json::from_str::<EventId>("\"0102\"").is_err());
    assert_eq!(
        serde_json::to_string(&Severity::Critical).expect("json"),
        "\"critical\""
    );
    assert!(serde_json::from_str::<PeerId>("\"Chicago\"").is_err());
    assert!(PeerId::new("").is_err());
    assert!(PeerId::new("-a").is_err());
    assert!(PeerId::new("a".repeat(65)).is_err());
    assert!(PeerId::new("a".repeat(64)).is_ok());
    assert_eq!(
        ClassMetrics::ppm_from_ratio(0.25),
        250_000,
        "ratio to parts per million"
    );
    assert_eq!(ClassMetrics::ppm_from_ratio(f64::NAN), 0);
    assert_eq!(ClassMetrics::ppm_from_ratio(7.0), PPM);
}
