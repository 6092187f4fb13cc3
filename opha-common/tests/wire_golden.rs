//! Golden bytes: one frame of each kind, byte for byte.
//!
//! If one of these fails, the wire format changed. That is only allowed as described by the
//! versioning rule in `opha_common::wire`: an additive change bumps the minor version and
//! leaves these bytes decodable (add a new golden frame for the new shape, keep the old ones);
//! anything else bumps the major version. Never just paste the new bytes over the old.

use opha_common::wire::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

fn poller() -> PeerId {
    PeerId::new("chi-poller-1").expect("valid id")
}

fn node() -> NodeRef {
    NodeRef::new(
        100,
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
        Some("core-rtr-1".into()),
    )
}

fn metrics() -> Sequenced {
    let icmp = ClassMetrics {
        requests: 60,
        responses: 59,
        timeouts: 1,
        loss_ppm: 16_667,
        errors: 0,
        bytes_in: 5_900,
        bytes_out: 6_000,
        rtt: Some(RttStats {
            samples: 59,
            min_us: 210,
            avg_us: 350,
            max_us: 1_900,
            p50_us: 300,
            p95_us: 600,
            p99_us: 1_200,
        }),
    };
    let record = Record::NodeMetrics(NodeMetrics {
        node: node(),
        tenant: TenantId(7),
        interval_start_ms: 1_750_000_000_000,
        interval_ms: 60_000,
        icmp,
        snmp: ClassMetrics {
            requests: 10,
            responses: 10,
            ..ClassMetrics::default()
        },
        tcp: ClassMetrics::default(),
    });
    Sequenced::new(poller(), 3, 1_000, record)
}

fn event() -> Sequenced {
    let trap = Trap {
        version: SnmpVersion::V2c,
        inform: false,
        oid: "1.3.6.1.6.3.1.1.5.3".parse().expect("oid"),
        agent: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
        varbinds: vec![
            VarBind {
                oid: "1.3.6.1.2.1.2.2.1.1.2".parse().expect("oid"),
                value: VarValue::Integer(2),
            },
            VarBind {
                oid: "1.3.6.1.2.1.2.2.1.2.2".parse().expect("oid"),
                value: VarValue::OctetString(Bytes(b"ge-0/0/1".to_vec())),
            },
        ],
    };
    let record = Record::Event(Event {
        id: EventId::from_u128(0x0123_4567_89ab_cdef_0011_2233_4455_6677),
        time_ms: 1_750_000_012_345,
        tenant: TenantId(7),
        subject: Subject::Node(node()),
        kind: EventKind::Trap(trap),
        severity: Severity::Major,
        details: "linkDown ge-0/0/1".into(),
    });
    Sequenced::new(poller(), 3, 1_001, record)
}

fn service() -> Sequenced {
    let record = Record::ServiceState(ServiceState {
        service: "https-portal".into(),
        kind: ServiceKind::SslExpiry,
        node: NodeRef::new(
            0,
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 5)),
            None,
        ),
        tenant: TenantId(9),
        state: ServiceStatus::Degraded,
        reason: "certificate expires in 9 days".into(),
        since_ms: 1_749_990_000_000,
        checked_ms: 1_750_000_000_000,
    });
    Sequenced::new(poller(), 3, 1_002, record)
}

fn daemon() -> Sequenced {
    let record = Record::DaemonHealth(DaemonHealth {
        daemon: "opeventsd".into(),
        state: DaemonState::Up,
        pid: Some(4242),
        since_ms: 1_749_000_000_000,
        checked_ms: 1_750_000_000_000,
        detail: "process opeventsd in /proc".into(),
    });
    Sequenced::new(poller(), 3, 1_003, record)
}

fn peer() -> Sequenced {
    let record = Record::PeerStatus(PeerStatus {
        peer: poller(),
        role: PeerRole::Poller,
        version: "0.1.0".into(),
        protocol: 0x0100,
        uptime_ms: 86_400_000,
        region: "us-central".into(),
        time_ms: 1_750_000_000_000,
        nodes: vec![
            TenantNodes {
                tenant: TenantId(7),
                nodes: 1_500,
            },
            TenantNodes {
                tenant: TenantId(9),
                nodes: 420,
            },
        ],
        replay_log: ReplayLogStatus {
            records: 12,
            bytes: 1_536,
            oldest_age_ms: 250,
            budget_bytes: 10 << 30,
        },
        kernel: vec![
            KernelCounter {
                name: "ringbuf_drops".into(),
                value: 0,
            },
            KernelCounter {
                name: "malformed".into(),
                value: 3,
            },
        ],
    });
    Sequenced::new(poller(), 3, 1_004, record)
}

const GOLDEN: [(FrameKind, &str); 5] = [
    (
        FrameKind::NodeMetrics,
        "4f5000010100560000000c6368692d706f6c6c65722d3103e807006400c6120001010a636f72652d\
         7274722d310780b883a1f732e0d4033c3b019b8201008c2ef02e013bd201de02ec0eac02d804b009\
         0a0a0000000000000000000000000000",
    ),
    (
        FrameKind::Event,
        "4f5000010200860000000c6368692d706f6c6c65722d3103e907010123456789abcdef0011223344\
         556677b99884a1f73207006400c6120001010a636f72652d7274722d310a01000a01030601060301\
         01050300c6120001020b010306010201020201010200040b0103060102010202010202010867652d\
         302f302f3103116c696e6b446f776e2067652d302f302f31",
    ),
    (
        FrameKind::ServiceState,
        "4f50000103005e0000000c6368692d706f6c6c65722d3103ea07020c68747470732d706f7274616c\
         01000120010db80000000000000000000000050009011d6365727469666963617465206578706972\
         657320696e20392064617973808ba19cf73280b883a1f732",
    ),
    (
        FrameKind::DaemonHealth,
        "4f5000010400460000000c6368692d706f6c6c65722d3103eb0703096f706576656e747364000192\
         2180a498c4f33280b883a1f7321a70726f63657373206f706576656e74736420696e202f70726f63",
    ),
    (
        FrameKind::PeerStatus,
        "4f5000010500680000000c6368692d706f6c6c65722d3103ec07040c6368692d706f6c6c65722d31\
         0005302e312e30800280b899290a75732d63656e7472616c80b883a1f7320207dc0b09a4030c800c\
         fa018080808028020d72696e676275665f64726f707300096d616c666f726d656403",
    ),
];

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn sample(kind: FrameKind) -> Sequenced {
    match kind {
        FrameKind::NodeMetrics => metrics(),
        FrameKind::Event => event(),
        FrameKind::ServiceState => service(),
        FrameKind::DaemonHealth => daemon(),
        FrameKind::PeerStatus => peer(),
    }
}

#[test]
fn golden_frames_encode_byte_for_byte() {
    let mut failures = Vec::new();
    for (kind, golden) in GOLDEN {
        let v = sample(kind);
        assert_eq!(v.record.kind(), kind);
        let frame = encode_frame(&v).expect("encode");
        if frame != unhex(golden) {
            failures.push(format!("{kind:?}: encoded as\n{}", hex(&frame)));
        }
    }
    assert!(
        failures.is_empty(),
        "wire format changed (see the versioning rule):\n{}",
        failures.join("\n")
    );
}

/// Old bytes must stay readable: the stronger half of the versioning promise.
#[test]
fn golden_frames_decode() {
    for (kind, golden) in GOLDEN {
        let back: Sequenced = decode_frame(&unhex(golden))
            .unwrap_or_else(|e| panic!("{kind:?}: golden frame no longer decodes: {e}"));
        assert_eq!(back, sample(kind), "{kind:?}");
    }
}

#[test]
fn every_kind_has_a_golden_frame() {
    let kinds: Vec<FrameKind> = GOLDEN.iter().map(|(k, _)| *k).collect();
    assert_eq!(kinds, FrameKind::ALL.to_vec());
}
