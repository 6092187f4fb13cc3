//! Trap decoding: real net-snmp bytes (v1, v2c, inform, v3), RFC 3584 translation, truncated
//! and non-notification records, tenant and ids.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use opha_common::ports::SNAP_LEN;
use opha_common::ringbuf::{RingKind, RingRecord};
use opha_common::wire::{
    Bytes, Event, EventKind, NodeRef, Oid, RawSource, Severity, SnmpVersion, Subject, TenantId,
    Trap, VarBind, VarValue,
};
use opha_sidecar::decode::{DecodeContext, decode};

// Captured from net-snmp 5.9 (`snmptrap`/`snmpinform` to a loopback UDP socket).

/// `snmptrap -v 1 -c public H 1.3.6.1.4.1.8072.2.3.1 198.18.0.7 6 17 12345
///  1.3.6.1.2.1.2.2.1.1.3 i 3 1.3.6.1.2.1.2.2.1.2.3 s eth2`
const V1_ENTERPRISE: &str = "305002010004067075626c6963a443060a2b06010401bf080203014004c6120007020106020111430230393025300f060a2b0601020102020101030201033012060a2b060102010202010203040465746832";
/// `snmptrap -v 1 -c public H 1.3.6.1.4.1.8072.3.2.10 198.18.0.8 2 0 '' 1.3.6.1.2.1.2.2.1.1.3 i 3`
const V1_LINKDOWN: &str = "303d02010004067075626c6963a430060a2b06010401bf0803020a4004c6120008020102020100430303f6593011300f060a2b060102010202010103020103";
/// `snmptrap -v 1 -c public H 1.3.6.1.4.1.8072.3.2.10 198.18.0.8 0 0 100` (no varbinds)
const V1_COLDSTART: &str =
    "302a02010004067075626c6963a41d060a2b06010401bf0803020a4004c61200080201000201004301643000";
/// `snmptrap -v 2c -c public H 4242 1.3.6.1.6.3.1.1.5.3` with i, i, x, c, a, o, u, C, t varbinds
const V2C_LINKDOWN: &str = "3081e102010104067075626c6963a781d30204175261120201000201003081c4300e06082b06010201010300430210923017060a2b06010603010104010006092b0601060301010503300f060a2b060102010202010103020103300f060a2b060102010202010703020102300f06072b0601040163010404deadbeef301006072b060104016302410500ee6b2800300f06072b0601040163034004c6120009301106072b06010401630406062b0601040163300c06072b06010401630542014d301406072b060104016306460900ffffffffffffffff300c06072b060104016307430164";
/// `snmpinform -v 2c -c public H 4242 1.3.6.1.6.3.1.1.5.4 1.3.6.1.2.1.2.2.1.1.3 i 3
///  1.3.6.1.2.1.2.2.1.2.3 s 'ge-0/0/3 uplink'`
const V2C_INFORM: &str = "307402010104067075626c6963a6670204456507ba0201000201003059300e06082b06010201010300430210923017060a2b06010603010104010006092b0601060301010504300f060a2b060102010202010103020103301d060a2b060102010202010203040f67652d302f302f332075706c696e6b";
/// `snmptrap -v 3 -l noAuthNoPriv -u opha -e 0x8000000001020304 H 4242 1.3.6.1.6.3.1.1.5.4
///  1.3.6.1.2.1.2.2.1.1.7 i 7`
const V3_NOAUTH: &str = "308197020103301102044d476575020300ffe3040100020103041e301c04088000000001020304020101020304773c04046f70686104000400305f041180001f88803efdc62c8b56016b000000000400a74802044b7f5d82020100020100303a300e06082b06010201010300430210923017060a2b06010603010104010006092b0601060301010504300f060a2b060102010202010107020107";
/// The same with `-l authPriv -a SHA -x AES`.
const V3_AUTHPRIV: &str = "3081ad02010330110204512c4b59020300ffe30401030201030432303004088000000001020304020101020304773d04046f706861040c30dcf2db030026b2063f8f4404086b11851346c215410461883300752ccd5878822beca4d405486328cd83e3e32e01260316184756dc549ab4d89a22a39955204fcce41c97c8c1f71c718c5b9e0d26c2d22a312ccd2c49b14bdb6c49b5586d241216f1ab53ce5a16096148a6ae73881b7934aed9161bce3471";

const SYS_UPTIME_0: &[u64] = &[1, 3, 6, 1, 2, 1, 1, 3, 0];
const SNMP_TRAP_OID_0: &[u64] = &[1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0];

fn unhex(s: &str) -> Vec<u8> {
    Bytes::from_hex(s).expect("fixture is hex").0
}

fn oid(s: &str) -> Oid {
    s.parse().expect("dotted oid")
}

fn ctx() -> DecodeContext {
    // Monotonic 0 is 2024-01-01T00:00:00Z.
    DecodeContext::fixed(1_704_067_200_000_000_000, 0x0123_4567_89ab_cdef)
}

fn record(kind: RingKind, src: IpAddr, vlan: u16, tenant: u32, payload: &[u8]) -> RingRecord {
    let src16 = match src {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    let cap = payload.len().min(SNAP_LEN);
    let mut data = [0u8; SNAP_LEN];
    data[..cap].copy_from_slice(&payload[..cap]);
    RingRecord {
        ts_ns: 5_000_000_000,
        ifindex: 7,
        tenant,
        src: src16,
        vlan,
        src_port: 40000,
        dst_port: 162,
        kind: kind as u8,
        _pad: 0,
        orig_len: payload.len() as u16,
        cap_len: cap as u16,
        _pad2: 0,
        data,
    }
}

const SRC: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 7));

fn decode_trap(payload: &[u8]) -> Event {
    decode(&record(RingKind::Trap, SRC, 0, 3, payload), &ctx())
}

fn expect_trap(ev: &Event) -> &Trap {
    match &ev.kind {
        EventKind::Trap(t) => t,
        other => panic!("expected a trap, got {other:?} ({})", ev.details),
    }
}

fn expect_undecodable(ev: &Event, payload: &[u8]) {
    match &ev.kind {
        EventKind::Undecodable { source, from, raw } => {
            assert_eq!(*source, RawSource::Trap);
            assert_eq!(*from, SRC);
            assert_eq!(raw.0, payload, "raw bytes kept as captured");
        }
        other => panic!("expected undecodable, got {other:?}"),
    }
    assert_eq!(ev.severity, Severity::Warning);
    assert!(
        ev.details
            .starts_with("undecodable trap packet from 198.18.0.7"),
        "{}",
        ev.details
    );
}

fn vb(o: &str, value: VarValue) -> VarBind {
    VarBind { oid: oid(o), value }
}

#[test]
fn v1_enterprise_specific_translated_per_rfc3584() {
    let ev = decode_trap(&unhex(V1_ENTERPRISE));
    let t = expect_trap(&ev);
    assert_eq!(t.version, SnmpVersion::V1);
    assert!(!t.inform);
    // enterprise.0.specific-trap
    assert_eq!(t.oid, oid("1.3.6.1.4.1.8072.2.3.1.0.17"));
    assert_eq!(t.agent, IpAddr::V4(Ipv4Addr::new(198, 18, 0, 7)));
    assert_eq!(
        t.varbinds,
        vec![
            vb("1.3.6.1.2.1.1.3.0", VarValue::TimeTicks(12345)),
            vb(
                "1.3.6.1.6.3.1.1.4.1.0",
                VarValue::ObjectId(oid("1.3.6.1.4.1.8072.2.3.1.0.17"))
            ),
            vb("1.3.6.1.2.1.2.2.1.1.3", VarValue::Integer(3)),
            vb(
                "1.3.6.1.2.1.2.2.1.2.3",
                VarValue::OctetString(Bytes::from(&b"eth2"[..]))
            ),
            vb(
                "1.3.6.1.6.3.18.1.3.0",
                VarValue::IpAddress(Ipv4Addr::new(198, 18, 0, 7))
            ),
            vb(
                "1.3.6.1.6.3.1.1.4.3.0",
                VarValue::ObjectId(oid("1.3.6.1.4.1.8072.2.3.1"))
            ),
        ]
    );
    assert_eq!(ev.severity, Severity::Warning);
    assert!(
        !ev.details.contains("public") && !format!("{:?}", t.varbinds).contains("public"),
        "the community never leaves the poller"
    );
    assert_eq!(
        ev.details,
        "v1 trap 1.3.6.1.4.1.8072.2.3.1.0.17 from 198.18.0.7: 1.3.6.1.2.1.2.2.1.1.3=3, \
         1.3.6.1.2.1.2.2.1.2.3=eth2, 1.3.6.1.6.3.18.1.3.0=198.18.0.7, \
         1.3.6.1.6.3.1.1.4.3.0=1.3.6.1.4.1.8072.2.3.1"
    );
}

#[test]
fn v1_generic_traps_map_to_snmp_traps() {
    let ev = decode_trap(&unhex(V1_LINKDOWN));
    let t = expect_trap(&ev);
    assert_eq!(t.oid, oid("1.3.6.1.6.3.1.1.5.3"), "linkDown");
    // agent-addr differs from the packet source: it is the agent.
    assert_eq!(t.agent, IpAddr::V4(Ipv4Addr::new(198, 18, 0, 8)));
    assert_eq!(
        t.varbinds[0],
        vb("1.3.6.1.2.1.1.3.0", VarValue::TimeTicks(259_673))
    );
    assert_eq!(t.varbinds.len(), 5);
    assert_eq!(ev.severity, Severity::Major);
    assert!(
        ev.details.starts_with(
            "v1 trap linkDown (1.3.6.1.6.3.1.1.5.3) from 198.18.0.7 (agent 198.18.0.8)"
        ),
        "{}",
        ev.details
    );

    let ev = decode_trap(&unhex(V1_COLDSTART));
    let t = expect_trap(&ev);
    assert_eq!(t.oid, oid("1.3.6.1.6.3.1.1.5.1"), "coldStart");
    assert_eq!(
        t.varbinds,
        vec![
            vb("1.3.6.1.2.1.1.3.0", VarValue::TimeTicks(100)),
            vb(
                "1.3.6.1.6.3.1.1.4.1.0",
                VarValue::ObjectId(oid("1.3.6.1.6.3.1.1.5.1"))
            ),
            vb(
                "1.3.6.1.6.3.18.1.3.0",
                VarValue::IpAddress(Ipv4Addr::new(198, 18, 0, 8))
            ),
            vb(
                "1.3.6.1.6.3.1.1.4.3.0",
                VarValue::ObjectId(oid("1.3.6.1.4.1.8072.3.2.10"))
            ),
        ]
    );
    assert_eq!(ev.severity, Severity::Warning);

    // agent-addr 0.0.0.0 (an agent that does not know its address): the sender is the agent.
    let mut payload = unhex(V1_COLDSTART);
    let at = payload
        .windows(6)
        .position(|w| w == [0x40, 0x04, 198, 18, 0, 8])
        .unwrap();
    payload[at + 2..at + 6].fill(0);
    let t = expect_trap(&decode_trap(&payload)).clone();
    assert_eq!(t.agent, SRC);
}

#[test]
fn v2c_trap_with_every_value_type() {
    let ev = decode_trap(&unhex(V2C_LINKDOWN));
    let t = expect_trap(&ev);
    assert_eq!(t.version, SnmpVersion::V2c);
    assert!(!t.inform);
    assert_eq!(t.oid, oid("1.3.6.1.6.3.1.1.5.3"));
    assert_eq!(t.agent, SRC, "v2 traps: the agent is the source");
    assert_eq!(
        t.varbinds,
        vec![
            vb("1.3.6.1.2.1.1.3.0", VarValue::TimeTicks(4242)),
            vb(
                "1.3.6.1.6.3.1.1.4.1.0",
                VarValue::ObjectId(oid("1.3.6.1.6.3.1.1.5.3"))
            ),
            vb("1.3.6.1.2.1.2.2.1.1.3", VarValue::Integer(3)),
            vb("1.3.6.1.2.1.2.2.1.7.3", VarValue::Integer(2)),
            vb(
                "1.3.6.1.4.1.99.1",
                VarValue::OctetString(Bytes(vec![0xde, 0xad, 0xbe, 0xef]))
            ),
            vb("1.3.6.1.4.1.99.2", VarValue::Counter32(4_000_000_000)),
            vb(
                "1.3.6.1.4.1.99.3",
                VarValue::IpAddress(Ipv4Addr::new(198, 18, 0, 9))
            ),
            vb(
                "1.3.6.1.4.1.99.4",
                VarValue::ObjectId(oid("1.3.6.1.4.1.99"))
            ),
            vb("1.3.6.1.4.1.99.5", VarValue::Gauge32(77)),
            vb("1.3.6.1.4.1.99.6", VarValue::Counter64(u64::MAX)),
            vb("1.3.6.1.4.1.99.7", VarValue::TimeTicks(100)),
        ]
    );
    assert_eq!(ev.severity, Severity::Major);
    assert!(
        ev.details.contains("1.3.6.1.4.1.99.1=deadbeef"),
        "{}",
        ev.details
    );
}

#[test]
fn v2c_inform() {
    let ev = decode_trap(&unhex(V2C_INFORM));
    let t = expect_trap(&ev);
    assert_eq!(t.version, SnmpVersion::V2c);
    assert!(t.inform);
    assert_eq!(t.oid, oid("1.3.6.1.6.3.1.1.5.4"));
    assert_eq!(t.varbinds.len(), 4);
    assert_eq!(
        t.varbinds[3],
        vb(
            "1.3.6.1.2.1.2.2.1.2.3",
            VarValue::OctetString(Bytes::from(&b"ge-0/0/3 uplink"[..]))
        )
    );
    assert_eq!(ev.severity, Severity::Info, "linkUp");
    assert!(
        ev.details
            .starts_with("v2c inform linkUp (1.3.6.1.6.3.1.1.5.4) from 198.18.0.7: "),
        "{}",
        ev.details
    );
}

#[test]
fn v3_plaintext_trap_decodes_and_encrypted_is_kept_raw() {
    let ev = decode_trap(&unhex(V3_NOAUTH));
    let t = expect_trap(&ev);
    assert_eq!(t.version, SnmpVersion::V3);
    assert_eq!(t.oid, oid("1.3.6.1.6.3.1.1.5.4"));
    assert_eq!(
        t.varbinds[2],
        vb("1.3.6.1.2.1.2.2.1.1.7", VarValue::Integer(7))
    );

    let raw = unhex(V3_AUTHPRIV);
    let ev = decode_trap(&raw);
    expect_undecodable(&ev, &raw);
    assert!(ev.details.contains("encrypted"), "{}", ev.details);
}

#[test]
fn tenant_subject_time_and_id_come_from_the_record() {
    let payload = unhex(V2C_LINKDOWN);
    let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x42));
    let rec = record(RingKind::Trap, v6, 120, 9, &payload);
    let ev = decode(&rec, &ctx());
    assert_eq!(ev.tenant, TenantId(9));
    assert_eq!(ev.subject, Subject::Node(NodeRef::new(120, v6, None)));
    assert_eq!(ev.time_ms, 1_704_067_205_000);
    assert_eq!(expect_trap(&ev).agent, v6);

    // The same record decodes to the same id; any other record, or another poller, does not.
    assert_eq!(decode(&rec, &ctx()).id, ev.id);
    let mut later = rec;
    later.ts_ns += 1;
    assert_ne!(decode(&later, &ctx()).id, ev.id);
    let other_poller = DecodeContext::fixed(ctx().mono_to_unix_ns, 1);
    assert_ne!(decode(&rec, &other_poller).id, ev.id);
    assert_ne!(
        DecodeContext::new("poller-a").id_seed,
        DecodeContext::new("poller-b").id_seed
    );
}

#[test]
fn tenant_is_never_taken_from_the_packet() {
    // The community and every varbind say "tenant 77"; the record says 4.
    let payload = v2_message(
        b"tenant=77",
        0xa7,
        &[
            (SYS_UPTIME_0.to_vec(), ber_uint(0x43, 1)),
            (
                SNMP_TRAP_OID_0.to_vec(),
                ber_oid(&[1, 3, 6, 1, 4, 1, 99, 0, 1]),
            ),
            (vec![1, 3, 6, 1, 4, 1, 99, 77], tlv(0x04, b"tenant 77")),
        ],
    );
    let ev = decode(&record(RingKind::Trap, SRC, 0, 4, &payload), &ctx());
    expect_trap(&ev);
    assert_eq!(ev.tenant, TenantId(4));
}

#[test]
fn truncated_trap_is_undecodable_and_says_so() {
    // A trap longer than the snap length, cut by the kernel.
    let big = "x".repeat(600);
    let payload = v2_message(
        b"public",
        0xa7,
        &[
            (SYS_UPTIME_0.to_vec(), ber_uint(0x43, 1)),
            (
                SNMP_TRAP_OID_0.to_vec(),
                ber_oid(&[1, 3, 6, 1, 4, 1, 99, 0, 1]),
            ),
            (vec![1, 3, 6, 1, 4, 1, 99, 1], tlv(0x04, big.as_bytes())),
        ],
    );
    assert!(payload.len() > SNAP_LEN);
    let rec = record(RingKind::Trap, SRC, 0, 3, &payload);
    assert_eq!(usize::from(rec.cap_len), SNAP_LEN);
    let ev = decode(&rec, &ctx());
    expect_undecodable(&ev, &payload[..SNAP_LEN]);
    assert!(
        ev.details.contains(&format!(
            "truncated: {SNAP_LEN} of {} bytes captured",
            payload.len()
        )),
        "{}",
        ev.details
    );

    // Every cut of a real trap: never a trap, always the captured bytes.
    let full = unhex(V2C_LINKDOWN);
    for cut in 0..full.len() {
        let mut rec = record(RingKind::Trap, SRC, 0, 3, &full[..cut]);
        rec.orig_len = full.len() as u16;
        let ev = decode(&rec, &ctx());
        expect_undecodable(&ev, &full[..cut]);
        assert!(ev.details.contains("truncated"), "{}", ev.details);
    }
}

#[test]
fn non_notifications_and_malformed_notifications_are_undecodable() {
    let vbs = [(vec![1, 3, 6, 1, 2, 1, 1, 1, 0], vec![0x05, 0x00])];
    // GetRequest (0xa0) and Response (0xa2) on the trap port.
    for tag in [0xa0, 0xa2] {
        let payload = v2_message(b"public", tag, &vbs);
        let ev = decode_trap(&payload);
        expect_undecodable(&ev, &payload);
        assert!(ev.details.contains("not a notification"), "{}", ev.details);
    }
    // A TrapV2 without snmpTrapOID.0.
    let payload = v2_message(
        b"public",
        0xa7,
        &[(SYS_UPTIME_0.to_vec(), ber_uint(0x43, 5))],
    );
    let ev = decode_trap(&payload);
    expect_undecodable(&ev, &payload);
    assert!(
        ev.details.contains("without snmpTrapOID.0"),
        "{}",
        ev.details
    );
    // snmpTrapOID.0 that is not an OID.
    let payload = v2_message(
        b"public",
        0xa7,
        &[(SNMP_TRAP_OID_0.to_vec(), ber_uint(0x02, 5))],
    );
    let ev = decode_trap(&payload);
    expect_undecodable(&ev, &payload);
    assert!(
        ev.details.contains("not an OBJECT IDENTIFIER"),
        "{}",
        ev.details
    );
    // An arc beyond 32 bits.
    let payload = v2_message(
        b"public",
        0xa7,
        &[(
            SNMP_TRAP_OID_0.to_vec(),
            ber_oid(&[1, 3, 6, 1, 4, 1, 1 << 33]),
        )],
    );
    let ev = decode_trap(&payload);
    expect_undecodable(&ev, &payload);
    assert!(ev.details.contains("beyond 32 bits"), "{}", ev.details);
    // A v1 Trap-PDU inside a v2c message (net-snmp's v1 coldStart with the version set to 1).
    let mut payload = unhex(V1_COLDSTART);
    assert_eq!(payload[4], 0x00);
    payload[4] = 0x01;
    let ev = decode_trap(&payload);
    expect_undecodable(&ev, &payload);
    assert!(
        ev.details
            .contains("v1 Trap-PDU inside an SNMP V2c message"),
        "{}",
        ev.details
    );
    // A community that is not UTF-8: snmp-parser refuses the message (a documented limit).
    let payload = v2_message(
        b"\xffpublic",
        0xa7,
        &[(
            SNMP_TRAP_OID_0.to_vec(),
            ber_oid(&[1, 3, 6, 1, 4, 1, 99, 0, 1]),
        )],
    );
    expect_undecodable(&decode_trap(&payload), &payload);
    // A ring record kind the kernel never writes.
    let payload = unhex(V2C_LINKDOWN);
    let mut rec = record(RingKind::Trap, SRC, 0, 3, &payload);
    rec.kind = 9;
    let ev = decode(&rec, &ctx());
    expect_undecodable(&ev, &payload);
    assert!(
        ev.details.contains("unknown ring record kind 9"),
        "{}",
        ev.details
    );
    // Garbage and an empty payload.
    for payload in [
        &b"hello, world"[..],
        &[][..],
        &[0x30, 0x03, 0x02, 0x01, 0x09][..],
    ] {
        let ev = decode_trap(payload);
        expect_undecodable(&ev, payload);
    }
    // In JSON the raw bytes are hex.
    let json = serde_json::to_value(decode_trap(b"hello")).unwrap();
    assert_eq!(json["kind"]["undecodable"]["raw"], "68656c6c6f", "{json}");
    assert_eq!(json["kind"]["undecodable"]["source"], "trap");
}

#[test]
fn v2c_exception_values_and_misordered_trap_oid() {
    let payload = v2_message(
        b"public",
        0xa7,
        &[
            (vec![1, 3, 6, 1, 4, 1, 99, 1], vec![0x80, 0x00]),
            (vec![1, 3, 6, 1, 4, 1, 99, 2], vec![0x81, 0x00]),
            (vec![1, 3, 6, 1, 4, 1, 99, 3], vec![0x82, 0x00]),
            (vec![1, 3, 6, 1, 4, 1, 99, 4], vec![0x05, 0x00]),
            (vec![1, 3, 6, 1, 4, 1, 99, 5], tlv(0x44, &[1, 2, 3])),
            (
                SNMP_TRAP_OID_0.to_vec(),
                ber_oid(&[1, 3, 6, 1, 4, 1, 99, 0, 9]),
            ),
        ],
    );
    let ev = decode_trap(&payload);
    let t = expect_trap(&ev);
    assert_eq!(t.oid, oid("1.3.6.1.4.1.99.0.9"));
    let values: Vec<_> = t.varbinds.iter().map(|v| v.value.clone()).collect();
    assert_eq!(
        values[..5],
        [
            VarValue::NoSuchObject,
            VarValue::NoSuchInstance,
            VarValue::EndOfMibView,
            VarValue::Null,
            VarValue::Opaque(Bytes(vec![1, 2, 3])),
        ]
    );
}

/// net-snmp's own tools, live, over loopback: what they send decodes as they meant it.
#[test]
fn live_net_snmp_traps_decode() {
    let have = Command::new("snmptrap")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !have {
        eprintln!("skip live_net_snmp_traps_decode: net-snmp's snmptrap is not installed");
        return;
    }
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let target = format!("127.0.0.1:{}", sock.local_addr().unwrap().port());
    let cases: [(&[&str], &str, bool); 3] = [
        (
            &[
                "snmptrap",
                "-v",
                "1",
                "-c",
                "public",
                &target,
                "1.3.6.1.4.1.99",
                "198.18.0.7",
                "6",
                "5",
                "77",
                "1.3.6.1.4.1.99.1",
                "s",
                "hello",
            ],
            "1.3.6.1.4.1.99.0.5",
            false,
        ),
        (
            &[
                "snmptrap",
                "-v",
                "2c",
                "-c",
                "public",
                &target,
                "",
                "1.3.6.1.6.3.1.1.5.3",
                "1.3.6.1.2.1.2.2.1.1.2",
                "i",
                "2",
            ],
            "1.3.6.1.6.3.1.1.5.3",
            false,
        ),
        (
            &[
                "snmpinform",
                "-r",
                "0",
                "-t",
                "1",
                "-v",
                "2c",
                "-c",
                "public",
                &target,
                "",
                "1.3.6.1.4.1.99.0.1",
            ],
            "1.3.6.1.4.1.99.0.1",
            true,
        ),
    ];
    for (argv, trap_oid, inform) in cases {
        let mut child = Command::new(argv[0])
            .args(&argv[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut buf = [0u8; 2048];
        let (n, _) = sock.recv_from(&mut buf).expect("net-snmp sent a datagram");
        let _ = child.wait();
        let ev = decode_trap(&buf[..n]);
        let t = expect_trap(&ev);
        assert_eq!(t.oid, oid(trap_oid), "{argv:?}");
        assert_eq!(t.inform, inform);
    }
}

// A minimal BER encoder, for shapes net-snmp will not send.

fn len(n: usize) -> Vec<u8> {
    if n < 0x80 {
        vec![n as u8]
    } else if n < 0x100 {
        vec![0x81, n as u8]
    } else {
        vec![0x82, (n >> 8) as u8, n as u8]
    }
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend(len(content.len()));
    v.extend_from_slice(content);
    v
}

fn ber_uint(tag: u8, v: u64) -> Vec<u8> {
    let mut bytes = v.to_be_bytes().to_vec();
    while bytes.len() > 1 && bytes[0] == 0 && bytes[1] & 0x80 == 0 {
        bytes.remove(0);
    }
    if bytes[0] & 0x80 != 0 {
        bytes.insert(0, 0);
    }
    tlv(tag, &bytes)
}

fn ber_oid(arcs: &[u64]) -> Vec<u8> {
    let mut content = vec![(arcs[0] * 40 + arcs[1]) as u8];
    for &a in &arcs[2..] {
        let mut groups = vec![(a & 0x7f) as u8];
        let mut rest = a >> 7;
        while rest > 0 {
            groups.push((rest & 0x7f) as u8 | 0x80);
            rest >>= 7;
        }
        groups.reverse();
        content.extend(groups);
    }
    tlv(0x06, &content)
}

fn v2_message(community: &[u8], pdu_tag: u8, vbs: &[(Vec<u64>, Vec<u8>)]) -> Vec<u8> {
    let mut list = Vec::new();
    for (name, value) in vbs {
        let mut vb = ber_oid(name);
        vb.extend_from_slice(value);
        list.extend(tlv(0x30, &vb));
    }
    let mut pdu = ber_uint(0x02, 1234);
    pdu.extend(ber_uint(0x02, 0));
    pdu.extend(ber_uint(0x02, 0));
    pdu.extend(tlv(0x30, &list));
    let mut msg = ber_uint(0x02, 1);
    msg.extend(tlv(0x04, community));
    msg.extend(tlv(pdu_tag, &pdu));
    tlv(0x30, &msg)
}
