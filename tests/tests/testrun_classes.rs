//! BPF_PROG_TEST_RUN per packet class: every test loads its own instance, runs hand-built frames
//! through `opha_egress` / `opha_ingress` and asserts the exact per-node counters, the exact
//! global statistics (every statistic not named must be zero), the in-flight map, the RTT
//! bookkeeping and the verdict.

use std::net::Ipv4Addr;

use aya::maps::RingBuf;
use opha_common::{
    PROG_EGRESS, PROG_INGRESS,
    inflight::{InflightKey, InflightKind},
    node::{ClassCounters, NodeCounters, NodeKey, ProtoClass, rtt_bucket},
    ports::PortConfig,
    ringbuf::{RingKind, RingRecord},
    stats::Stat,
};
use opha_sidecar::loader::MonitoredPrefix;
use opha_tests::{
    packets::*,
    pins::{DEFAULT_TENANT, TestInstance},
    privilege::privileged,
};

/// TC_ACT_UNSPEC (-1) as test-run reports it.
const TC_ACT_UNSPEC: u32 = u32::MAX;

/// An unmatched response stamps `last_response_ns` with the coarse clock, which lags
/// CLOCK_MONOTONIC by up to one jiffy (10 ms at HZ=100).
const COARSE_SLACK_NS: u64 = 20_000_000;

const COMMUNITY: &[u8] = b"public";

fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec; CLOCK_MONOTONIC is what bpf_ktime_get_ns
    // reads.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn k4(a: Ipv4Addr, vlan: u16) -> NodeKey {
    NodeKey::v4(a.octets(), vlan)
}

fn k6(a: std::net::Ipv6Addr, vlan: u16) -> NodeKey {
    NodeKey::new(a.octets(), vlan)
}

fn prefix(s: &str) -> MonitoredPrefix {
    s.parse().expect("valid prefix")
}

/// Expected counters of one protocol class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Want {
    requests: u64,
    responses: u64,
    bytes_out: u64,
    bytes_in: u64,
    errors: u64,
    rtt_count: u64,
}

/// One test's data plane and the monotonic time it started (RTTs and timestamps must lie
/// between then and now).
struct Case {
    inst: TestInstance,
    t0: u64,
}

impl Case {
    /// Loaded and configured with the standard prefixes, ports and TCP check port.
    fn new(tag: &str) -> Self {
        let inst = TestInstance::configured(tag).expect("load and configure");
        Self {
            inst,
            t0: mono_ns(),
        }
    }

    /// Loaded, nothing configured.
    fn bare(tag: &str) -> Self {
        let inst = TestInstance::new(tag).expect("load");
        Self {
            inst,
            t0: mono_ns(),
        }
    }

    /// Loaded with default ports and TCP check port and the given prefixes only.
    fn with_prefixes(tag: &str, prefixes: &[&str]) -> Self {
        let mut c = Self::bare(tag);
        let p: Vec<MonitoredPrefix> = prefixes.iter().map(|s| prefix(s)).collect();
        c.inst.set_prefixes(&p).expect("set_prefixes");
        c.inst.set_ports(PortConfig::default()).expect("set_ports");
        c.inst
            .set_tcp_ports(&[TCP_CHECK_PORT])
            .expect("set_tcp_ports");
        c
    }

    fn run(&self, prog: &str, frame: &[u8]) {
        let r = self.inst.test_run(prog, frame, 1).expect("test_run");
        assert_eq!(
            r.return_value, TC_ACT_UNSPEC,
            "{prog} must return TC_ACT_UNSPEC"
        );
    }

    fn egress(&self, frame: &[u8]) {
        self.run(PROG_EGRESS, frame);
    }

    fn ingress(&self, frame: &[u8]) {
        self.run(PROG_INGRESS, frame);
    }

    /// Every global statistic: those listed have the given value, all others are 0.
    #[track_caller]
    fn stats(&self, want: &[(Stat, u64)]) {
        let s = self.inst.stats().expect("stats");
        let got: Vec<(Stat, u64)> = Stat::ALL
            .iter()
            .map(|&st| (st, s.get(st)))
            .filter(|&(_, v)| v != 0)
            .collect();
        let mut want: Vec<(Stat, u64)> = want.iter().copied().filter(|&(_, v)| v != 0).collect();
        want.sort_by_key(|&(st, _)| st as u32);
        assert_eq!(got, want, "global statistics");
        assert_eq!(s.inflight_evictions, 0, "no in-flight evictions");
    }

    fn node(&self, key: &NodeKey) -> NodeCounters {
        self.inst
            .node(key)
            .expect("node lookup")
            .unwrap_or_else(|| panic!("node {key:?} not in the map"))
    }

    /// The node exists with `tenant`; each listed class has exactly `Want`, the others are zero.
    #[track_caller]
    fn node_is(&self, key: &NodeKey, tenant: u32, want: &[(ProtoClass, Want)]) {
        let n = self.node(key);
        assert_eq!(n.tenant, tenant, "tenant of {key:?}");
        for class in ProtoClass::ALL {
            let c = n.class(class);
            match want.iter().find(|(cl, _)| *cl == class) {
                Some(&(_, w)) => self.check_class(class, c, w),
                None => assert_eq!(*c, ClassCounters::default(), "{class:?} must be untouched"),
            }
        }
    }

    #[track_caller]
    fn check_class(&self, class: ProtoClass, c: &ClassCounters, w: Want) {
        let got = Want {
            requests: c.requests,
            responses: c.responses,
            bytes_out: c.bytes_out,
            bytes_in: c.bytes_in,
            errors: c.errors,
            rtt_count: c.rtt_count,
        };
        assert_eq!(got, w, "{class:?} counters");
        let now = mono_ns();
        let hist: u64 = c.rtt_hist.iter().map(|&x| u64::from(x)).sum();
        assert_eq!(hist, c.rtt_count, "{class:?}: histogram sum == rtt_count");
        if c.rtt_count == 0 {
            assert_eq!(
                (c.rtt_sum_ns, c.rtt_min_ns, c.rtt_max_ns),
                (0, 0, 0),
                "{class:?}: no RTT without a match"
            );
        } else {
            assert!(c.rtt_min_ns > 0, "{class:?}: rtt_min set");
            if c.rtt_count == 1 {
                assert_eq!(
                    c.rtt_hist[rtt_bucket(c.rtt_sum_ns)],
                    1,
                    "{class:?}: the sample is in its log2 bucket"
                );
            }
            assert!(c.rtt_min_ns <= c.rtt_max_ns, "{class:?}: min <= max");
            assert!(
                c.rtt_sum_ns >= c.rtt_min_ns * c.rtt_count,
                "{class:?}: sum >= n*min"
            );
            assert!(
                c.rtt_sum_ns <= c.rtt_max_ns * c.rtt_count,
                "{class:?}: sum <= n*max"
            );
            assert!(
                c.rtt_max_ns <= now - self.t0,
                "{class:?}: RTT {} ns longer than the test",
                c.rtt_max_ns
            );
        }
        if c.responses == 0 {
            assert_eq!(c.last_response_ns, 0, "{class:?}: no response, no time");
        } else {
            assert!(
                c.last_response_ns > self.t0.saturating_sub(COARSE_SLACK_NS)
                    && c.last_response_ns <= now,
                "{class:?}: last_response_ns {} outside the test's time ({}..={now})",
                c.last_response_ns,
                self.t0
            );
        }
    }

    /// The node map holds exactly these keys.
    #[track_caller]
    fn nodes_are(&self, keys: &[NodeKey]) {
        let mut got: Vec<NodeKey> = self
            .inst
            .nodes()
            .expect("nodes")
            .iter()
            .map(|n| n.key)
            .collect();
        got.sort();
        let mut want = keys.to_vec();
        want.sort();
        assert_eq!(got, want, "nodes in the map");
    }

    fn inflight(&self) -> Vec<InflightKey> {
        let mut v: Vec<InflightKey> = self
            .inst
            .inflight()
            .expect("inflight")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        v.sort_by_key(|k| (k.node, k.kind, k.port, k.id));
        v
    }

    /// Every record in the ring buffer, oldest first (consumes them).
    fn ring(&mut self) -> Vec<RingRecord> {
        let map = self
            .inst
            .ebpf_mut()
            .map_mut("OPHA_EVENTS")
            .expect("OPHA_EVENTS map");
        let mut rb = RingBuf::try_from(map).expect("ring buffer");
        let mut out = Vec::new();
        while let Some(item) = rb.next() {
            assert_eq!(item.len(), size_of::<RingRecord>(), "record size");
            // SAFETY: the item holds one RingRecord (size checked); read_unaligned copies it.
            out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<RingRecord>()) });
            assert!(out.len() < 1000, "runaway ring buffer");
        }
        out
    }
}

fn ikey(node: NodeKey, kind: InflightKind, port: u16, id: u32) -> InflightKey {
    InflightKey {
        node,
        kind: kind as u8,
        _pad: 0,
        port,
        id,
    }
}

fn req_v4() -> Frame {
    Frame::new().ipv4(POLLER_V4, NODE_V4)
}

fn rsp_v4() -> Frame {
    Frame::new()
        .macs(NODE_MAC, POLLER_MAC)
        .ipv4(NODE_V4, POLLER_V4)
}

fn vbs() -> Vec<VarBind> {
    vec![VarBind::null(SYS_UPTIME), VarBind::null(SYS_NAME)]
}

fn rsp_vbs() -> Vec<VarBind> {
    vec![
        VarBind::new(SYS_UPTIME, Value::TimeTicks(123_456)),
        VarBind::new(SYS_NAME, Value::Str(b"node-10".to_vec())),
    ]
}

// ---------------------------------------------------------------------------------------------
// SNMP v1/v2c
// ---------------------------------------------------------------------------------------------

/// One request (egress) and its response (ingress) for a v1/v2c request-shaped PDU.
fn snmp_pair(
    tag: &str,
    ber: Ber,
    version: i64,
    request: &[u8],
    request_id: i32,
    error_status: i32,
) {
    let c = Case::new(tag);
    let node = k4(NODE_V4, 0);
    let req = req_v4().udp(POLLER_PORT, SNMP_PORT, request);
    c.egress(&req);
    c.stats(&[
        (Stat::PacketsSeen, 1),
        (Stat::Parsed, 1),
        (Stat::InflightInserted, 1),
    ]);
    assert_eq!(
        c.inflight(),
        vec![ikey(
            node,
            InflightKind::SnmpRequestId,
            POLLER_PORT,
            request_id as u32
        )]
    );
    let out = Want {
        requests: 1,
        bytes_out: req.len() as u64,
        ..Want::default()
    };
    c.node_is(&node, DEFAULT_TENANT, &[(ProtoClass::Snmp, out)]);

    let msg = ber.snmp_v1_v2c(
        version,
        COMMUNITY,
        pdu::RESPONSE,
        request_id,
        error_status,
        &rsp_vbs(),
    );
    let rsp = rsp_v4().udp(SNMP_PORT, POLLER_PORT, &msg);
    c.ingress(&rsp);
    c.stats(&[
        (Stat::PacketsSeen, 2),
        (Stat::Parsed, 2),
        (Stat::InflightInserted, 1),
        (Stat::Matched, 1),
    ]);
    assert!(c.inflight().is_empty(), "matched request leaves the map");
    c.node_is(
        &node,
        DEFAULT_TENANT,
        &[(
            ProtoClass::Snmp,
            Want {
                responses: 1,
                bytes_in: rsp.len() as u64,
                errors: u64::from(error_status != 0),
                rtt_count: 1,
                ..out
            },
        )],
    );
    c.nodes_are(&[node]);
}

fn get(ber: Ber, version: i64, id: i32) -> Vec<u8> {
    ber.snmp_v1_v2c(version, COMMUNITY, pdu::GET, id, 0, &vbs())
}

#[test]
fn snmp_v1_get_short_form() {
    if !privileged("snmp_v1_get_short_form") {
        return;
    }
    let msg = get(Ber::MINIMAL, SNMP_V1, 0x1234_5678);
    assert!(msg[1] < 0x80, "short form");
    snmp_pair("v1short", Ber::MINIMAL, SNMP_V1, &msg, 0x1234_5678, 0);
}

#[test]
fn snmp_v1_get_long_form() {
    if !privileged("snmp_v1_get_long_form") {
        return;
    }
    let msg = get(Ber::LONG81, SNMP_V1, 77);
    assert_eq!(msg[1], 0x81, "long form");
    snmp_pair("v1long", Ber::LONG81, SNMP_V1, &msg, 77, 0);
}

#[test]
fn snmp_v2c_get_short_form() {
    if !privileged("snmp_v2c_get_short_form") {
        return;
    }
    // A negative request-id: a one-byte INTEGER that the kernel must sign-extend.
    let msg = get(Ber::MINIMAL, SNMP_V2C, -5);
    snmp_pair("v2cshort", Ber::MINIMAL, SNMP_V2C, &msg, -5, 0);
}

#[test]
fn snmp_v2c_get_long_form() {
    if !privileged("snmp_v2c_get_long_form") {
        return;
    }
    let msg = get(Ber::LONG82, SNMP_V2C, 0x7fff_fff0);
    assert_eq!(msg[1], 0x82, "long form");
    snmp_pair("v2clong", Ber::LONG82, SNMP_V2C, &msg, 0x7fff_fff0, 0);
}

#[test]
fn snmp_v2c_large_message_needs_long_form() {
    if !privileged("snmp_v2c_large_message_needs_long_form") {
        return;
    }
    // Enough varbinds that the minimal encoding itself uses 0x82 lengths (> 255 bytes).
    let many: Vec<VarBind> = (1..=20)
        .map(|i| VarBind::null(&[1, 3, 6, 1, 2, 1, 2, 2, 1, 10, i]))
        .collect();
    let msg = Ber::MINIMAL.snmp_v1_v2c(SNMP_V2C, COMMUNITY, pdu::GET, 4242, 0, &many);
    assert_eq!(msg[1], 0x82);
    snmp_pair("v2cbig", Ber::MINIMAL, SNMP_V2C, &msg, 4242, 0);
}

#[test]
fn snmp_v2c_getnext() {
    if !privileged("snmp_v2c_getnext") {
        return;
    }
    let msg = snmp_v1_v2c(SNMP_V2C, COMMUNITY, pdu::GETNEXT, 9001, 0, &vbs());
    snmp_pair("getnext", Ber::MINIMAL, SNMP_V2C, &msg, 9001, 0);
}

#[test]
fn snmp_v2c_getbulk() {
    if !privileged("snmp_v2c_getbulk") {
        return;
    }
    let msg = snmp_getbulk(COMMUNITY, 31337, 0, 10, &[VarBind::null(IF_TABLE)]);
    snmp_pair("getbulk", Ber::MINIMAL, SNMP_V2C, &msg, 31337, 0);
}

#[test]
fn snmp_v2c_getbulk_long_form() {
    if !privileged("snmp_v2c_getbulk_long_form") {
        return;
    }
    let msg = Ber::LONG81.snmp_getbulk(COMMUNITY, 31338, 1, 25, &[VarBind::null(IF_TABLE)]);
    snmp_pair("getbulklong", Ber::LONG81, SNMP_V2C, &msg, 31338, 0);
}

#[test]
fn snmp_v1_set() {
    if !privileged("snmp_v1_set") {
        return;
    }
    let set = [VarBind::new(SYS_NAME, Value::Str(b"renamed".to_vec()))];
    let msg = snmp_v1_v2c(SNMP_V1, b"private", pdu::SET, 555, 0, &set);
    snmp_pair("set", Ber::MINIMAL, SNMP_V1, &msg, 555, 0);
}

#[test]
fn snmp_response_with_error_status() {
    if !privileged("snmp_response_with_error_status") {
        return;
    }
    // noSuchName (2): a response, matched, with one error.
    let msg = get(Ber::MINIMAL, SNMP_V1, 1000);
    snmp_pair("errstat", Ber::MINIMAL, SNMP_V1, &msg, 1000, 2);
}

#[test]
fn snmp_retransmission_replaces_inflight() {
    if !privileged("snmp_retransmission_replaces_inflight") {
        return;
    }
    let c = Case::new("retrans");
    let node = k4(NODE_V4, 0);
    let req = req_v4().udp(POLLER_PORT, SNMP_PORT, &get(Ber::MINIMAL, SNMP_V2C, 42));
    c.egress(&req);
    c.egress(&req);
    let msg = snmp_v1_v2c(SNMP_V2C, COMMUNITY, pdu::RESPONSE, 42, 0, &rsp_vbs());
    let rsp = rsp_v4().udp(SNMP_PORT, POLLER_PORT, &msg);
    c.ingress(&rsp);
    c.stats(&[
        (Stat::PacketsSeen, 3),
        (Stat::Parsed, 3),
        (Stat::InflightInserted, 1),
        (Stat::InflightReplaced, 1),
        (Stat::Matched, 1),
    ]);
    c.node_is(
        &node,
        DEFAULT_TENANT,
        &[(
            ProtoClass::Snmp,
            Want {
                requests: 2,
                responses: 1,
                bytes_out: 2 * req.len() as u64,
                bytes_in: rsp.len() as u64,
                errors: 0,
                rtt_count: 1,
            },
        )],
    );
    assert!(c.inflight().is_empty());
}

#[test]
fn snmp_unmatched_response() {
    if !privileged("snmp_unmatched_response") {
        return;
    }
    let c = Case::new("unmatched");
    let node = k4(NODE_V4, 0);
    let msg = snmp_v1_v2c(SNMP_V2C, COMMUNITY, pdu::RESPONSE, 99, 0, &rsp_vbs());
    let rsp = rsp_v4().udp(SNMP_PORT, POLLER_PORT, &msg);
    c.ingress(&rsp);
    c.stats(&[
        (Stat::PacketsSeen, 1),
        (Stat::Parsed, 1),
        (Stat::UnmatchedResponses, 1),
    ]);
    let want = Want {
        responses: 1,
        bytes_in: rsp.len() as u64,
        ..Want::default()
    };
    c.node_is(&node, DEFAULT_TENANT, &[(ProtoClass::Snmp, want)]);

    // A response to another poller port than the request's does not match either, and neither
    // does a duplicate of a response that already matched.
    let req = req_v4().udp(POLLER_PORT, SNMP_PORT, &get(Ber::MINIMAL, SNMP_V2C, 100));
    c.egress(&req);
    let msg = snmp_v1_v2c(SNMP_V2C, COMMUNITY, pdu::RESPONSE, 100, 0, &rsp_vbs());
    let wrong_port = rsp_v4().udp(SNMP_PORT, POLLER_PORT + 1, &msg);
    c.ingress(&wrong_port);
    let right = rsp_v4().udp(SNMP_PORT, POLLER_PORT, &msg);
    c.ingress(&right);
    c.ingress(&right);
    c.stats(&[
        (Stat::PacketsSeen, 5),
        (Stat::Parsed, 5),
        (Stat::InflightInserted, 1),
        (Stat::Matched, 1),
        (Stat::UnmatchedResponses, 3),
    ]);
    c.node_is(
        &node,
        DEFAULT_TENANT,
        &[(
            ProtoClass::Snmp,
            Want {
                requests: 1,
                responses: 4,
                bytes_out: req.len() as u64,
                bytes_in: rsp.len() as u64 + wrong_port.len() as u64 + 2 * right.len() as u64,
                errors: 0,
                rtt_count: 1,
            },
        )],
    );
    assert!(c.inflight().is_empty());
}

// ---------------------------------------------------------------------------------------------
// SNMP v3
// ---------------------------------------------------------------------------------------------

#[test]
fn snmp_v3_discovery_report_and_response_by_msgid() {
    if !privileged("snmp_v3_discovery_report_and_response_by_msgid") {
        return;
    }
    let c = Case::new("v3plain");
    let node = k4(NODE_V4, 0);
    // Discovery: empty GET with msgID A, answered by a Report with msgID A. The request-ids
    // differ from the msgIDs (and the Report's from the request's), so only a msgID match works.
    let (msg_a, msg_b) = (0x0101_0101, 0x0202_0202);
    let disc = req_v4().udp(POLLER_PORT, SNMP_PORT, &v3_plain(msg_a, pdu::GET, 7, 0));
    c.egress(&disc);
    assert_eq!(
        c.inflight(),
        vec![ikey(
            node,
            InflightKind::SnmpMsgId,
            POLLER_PORT,
            msg_a as u32
        )]
    );
    let report = rsp_v4().udp(SNMP_PORT, POLLER_PORT, &v3_plain(msg_a, pdu::REPORT, 0, 0));
    c.ingress(&report);
    assert!(c.inflight().is_empty());
    // The real request (msgID B) and its Response.
    let get = req_v4().udp(POLLER_PORT, SNMP_PORT, &v3_plain(msg_b, pdu::GET, 8, 0));
    c.egress(&get);
    let rsp = rsp_v4().udp(
        SNMP_PORT,
        POLLER_PORT,
        &v3_plain(msg_b, pdu::RESPONSE, 8, 0),
    );
    c.ingress(&rsp);
    c.stats(&[
        (Stat::PacketsSeen, 4),
        (Stat::Parsed, 4),
        (Stat::InflightInserted, 2),
        (Stat::Matched, 2),
    ]);
    assert!(c.inflight().is_empty());
    c.node_is(
        &node,
        DEFAULT_TENANT,
        &[(
            ProtoClass::Snmp,
            Want {
                requests: 2,
                responses: 2,
                bytes_out: (disc.len() + get.len()) as u64,
                bytes_in: (report.len() + rsp.len()) as u64,
                errors: 0,
                rtt_count: 2,
            },
        )],
    );
}

/// A plaintext (noAuthNoPriv) v3 message.
fn v3_plain(msg_id: i32, pdu_tag: u8, request_id: i32, error_status: i32) -> Vec<u8> {
    let v = if pdu_tag == pdu::GET {
        vbs()
    } else {
        rsp_vbs()
    };
    snmp_v3(
        msg_id,
        &V3Data::Plain {
            pdu_tag,
            request_id,
            error_status,
            varbinds: &v,
        },
    )
}

#[test]
fn snmp_v3_response_with_error_status_long_form() {
    if !privileged("snmp_v3_response_with_error_status_long_form") {
        return;
    }
    let c = Case::new("v3long");
    let node = k4(NODE_V4, 0);
    let v = vbs();
    let req_msg = Ber::LONG82.snmp_v3(
        5000,
        &V3Data::Plain {
            pdu_tag: pdu::GETNEXT,
            request_id: 1,
            error_status: 0,
            varbinds: &v,
        },
    );
    let rv = rsp_vbs();
    let rsp_msg = Ber::LONG81.snmp_v3(
        5000,
        &V3Data::Plain {
            pdu_tag: pdu::RESPONSE,
            request_id: 1,
            error_status: 5,
            varbinds: &rv,
        },
    );
    let req = req_v4().udp(POLLER_PORT, SNMP_PORT, &req_msg);
    let rsp = rsp_v4().udp(SNMP_PORT, POLLER_PORT, &rsp_msg);
    c.egress(&req);
    c.ingress(&rsp);
    c.stats(&[
        (Stat::PacketsSeen, 2),
        (Stat::Parsed, 2),
        (Stat::InflightInserted, 1),
        (Stat::Matched, 1),
    ]);
    c.node_is(
        &node,
        DEFAULT_TENANT,
        &[(
            ProtoClass::Snmp,
            Want {
                requests: 1,
                responses: 1,
                bytes_out: req.len() as u64,
                bytes_in: rsp.len() as u64,
                errors: 1,
                rtt_count: 1,
            },
        )],
    );
}

#[test]
fn snmp_v3_encrypted_pair() {
    if !privileged("snmp_v3_encrypted_pair") {
        return;
    }
    let c = Case::new("v3enc");
    let node = k4(NODE_V4, 0);
    let req_msg = snmp_v3(0x00c0_ffee, &V3Data::Encrypted(&[0x5a; 48]));
    let rsp_msg = snmp_v3(0x00c0_ffee, &V3Data::Encrypted(&[0xa5; 96]));
    let req = req_v4().udp(POLLER_PORT, SNMP_PORT, &req_msg);
    c.egress(&req);
    assert_eq!(
        c.inflight(),
        vec![ikey(
            node,
            InflightKind::SnmpMsgId,
            POLLER_PORT,
            0x00c0_ffee
        )]
    );
    let rsp = rsp_v4().udp(SNMP_PORT, POLLER_PORT, &rsp_msg);
    c.ingress(&rsp);
    c.stats(&[
        (Stat::PacketsSeen, 2),
        (Stat::Parsed, 2),
        (Stat::InflightInserted, 1),
        (Stat::Matched, 1),
    ]);
    assert!(c.inflight().is_empty());
    c.node_is(
        &node,
        DEFAULT_TENANT,
        &[(
            ProtoClass::Snmp,
            Want {
                requests: 1,
                responses: 1,
                bytes_out: req.len() as u64,
                bytes_in: rsp.len() as u64,
                errors: 0,
                rtt_count: 1,
            },
        )],
    );
}

// ---------------------------------------------------------------------------------------------
// Traps and syslog: the ring buffer
// ---------------------------------------------------------------------------------------------

/// What a ring-buffer record must hold.
struct WantRec<'a> {
    kind: RingKind,
    src: NodeKey,
    tenant: u32,
    sport: u16,
    dport: u16,
    payload: &'a [u8],
    snap: usize,
}

#[track_caller]
fn check_record(c: &Case, r: &RingRecord, w: &WantRec<'_>) {
    let WantRec {
        kind,
        src,
        tenant,
        sport,
        dport,
        payload,
        snap,
    } = *w;
    assert_eq!(r.kind, kind as u8, "kind");
    assert_eq!(r.src, src.addr, "source");
    assert_eq!(r.vlan, src.vlan, "vlan");
    assert_eq!(r.tenant, tenant, "tenant");
    assert_eq!((r.src_port, r.dst_port), (sport, dport), "ports");
    assert_eq!(usize::from(r.orig_len), payload.len(), "orig_len");
    let cap = payload.len().min(snap);
    assert_eq!(usize::from(r.cap_len), cap, "cap_len");
    assert_eq!(r.payload(), &payload[..cap], "payload bytes");
    // Test-run packets arrive on the loopback device of the current namespace.
    assert_eq!(r.ifindex, 1, "ifindex");
    assert!(r.ts_ns > c.t0 && r.ts_ns <= mono_ns(), "timestamp");
}

#[test]
fn traps_v1_v2c_and_inform_to_ring_buffer() {
    if !privileged("traps_v1_v2c_and_inform_to_ring_buffer") {
        return;
    }
    let mut c = Case::new("traps");
    let src = k4(NODE_V4, 0);
    let v1 = snmp_v1_trap(COMMUNITY, NODE_V4, &rsp_vbs());
    let v2 = snmp_v2c_trap(COMMUNITY, pdu::TRAP_V2, 11, &rsp_vbs());
    let inform = Ber::LONG81.snmp_v2c_trap(COMMUNITY, pdu::INFORM, 12, 99, LINK_DOWN, &[]);
    let traps = [(40001, &v1), (40002, &v2), (40003, &inform)];
    for (sport, msg) in traps {
        c.ingress(&rsp_v4().udp(sport, TRAP_PORT, msg));
    }
    c.stats(&[
        (Stat::PacketsSeen, 3),
        (Stat::Parsed, 3),
        (Stat::TrapsCopied, 3),
    ]);
    // Traps are events, not polls: no node counters.
    c.nodes_are(&[]);
    let recs = c.ring();
    assert_eq!(recs.len(), 3);
    for (r, (sport, msg)) in recs.iter().zip(traps) {
        check_record(
            &c,
            r,
            &WantRec {
                kind: RingKind::Trap,
                src,
                tenant: DEFAULT_TENANT,
                sport,
                dport: TRAP_PORT,
                payload: msg,
                snap: opha_common::ports::SNAP_LEN,
            },
        );
    }
    assert!(c.ring().is_empty(), "records are consumed once");
}

#[test]
fn trap_cut_at_snap_len() {
    if !privileged("trap_cut_at_snap_len") {
        return;
    }
    let mut c = Case::new("snap");
    c.inst
        .set_ports(PortConfig {
            snap_len: 16,
            ..PortConfig::default()
        })
        .expect("set_ports");
    // Longer than SNAP_LEN too: orig_len still says the full length.
    let big: Vec<VarBind> = (0..8)
        .map(|i| VarBind::new(SYS_DESCR, Value::Str(vec![b'a' + i; 80])))
        .collect();
    let v2 = snmp_v2c_trap(COMMUNITY, pdu::TRAP_V2, 13, &big);
    assert!(v2.len() > opha_common::ports::SNAP_LEN);
    let v6src = Frame::new()
        .ipv6(NODE_V6, POLLER_V6)
        .udp(50000, TRAP_PORT, &v2);
    c.ingress(&v6src);
    c.stats(&[
        (Stat::PacketsSeen, 1),
        (Stat::Parsed, 1),
        (Stat::TrapsCopied, 1),
    ]);
    let recs = c.ring();
    assert_eq!(recs.len(), 1);
    check_record(
        &c,
        &recs[0],
        &WantRec {
            kind: RingKind::Trap,
            src: k6(NODE_V6, 0),
            tenant: DEFAULT_TENANT,
            sport: 50000,
            dport: TRAP_PORT,
            payload: &v2,
            snap: 16,
        },
    );
}

#[test]
fn syslog_to_ring_buffer() {
    if !privileged("syslog_to_ring_buffer") {
        return;
    }
    let mut c = Case::new("syslog");
    let line = syslog_line(
        189,
        "Nov 21 07:47:00 node-10 %LINK-3-UPDOWN: Interface Gi0/1, changed state to down",
    );
    c.ingress(&rsp_v4().udp(514, SYSLOG_PORT, &line));
    c.stats(&[
        (Stat::PacketsSeen, 1),
        (Stat::Parsed, 1),
        (Stat::SyslogCopied, 1),
    ]);
    c.nodes_are(&[]);
    let recs = c.ring();
    assert_eq!(recs.len(), 1);
    check_record(
        &c,
        &recs[0],
        &WantRec {
            kind: RingKind::Syslog,
            src: k4(NODE_V4, 0),
            tenant: DEFAULT_TENANT,
            sport: 514,
            dport: SYSLOG_PORT,
            payload: &line,
            snap: opha_common::ports::SNAP_LEN,
        },
    );
}

#[test]
fn trap_from_snmp_source_port_is_copied() {
    if !privileged("trap_from_snmp_source_port_is_copied") {
        return;
    }
    // Many agents send traps and informs from their SNMP port: 161 -> 162 is a trap, not a
    // response.
    let mut c = Case::new("trap161");
    let v2 = snmp_v2c_trap(COMMUNITY, pdu::TRAP_V2, 21, &[]);
    let inform = snmp_v2c_trap(COMMUNITY, pdu::INFORM, 22, &[]);
    c.ingress(&rsp_v4().udp(SNMP_PORT, TRAP_PORT, &v2));
    c.ingress(&rsp_v4().udp(SNMP_PORT, TRAP_PORT, &inform));
    c.stats(&[
        (Stat::PacketsSeen, 2),
        (Stat::Parsed, 2),
        (Stat::TrapsCopied, 2),
    ]);
    c.nodes_are(&[]);
    let recs = c.ring();
    assert_eq!(recs.len(), 2);
    for (r, msg) in recs.iter().zip([&v2, &inform]) {
        check_record(
            &c,
            r,
            &WantRec {
                kind: RingKind::Trap,
                src: k4(NODE_V4, 0),
                tenant: DEFAULT_TENANT,
                sport: SNMP_PORT,
                dport: TRAP_PORT,
                payload: msg,
                snap: opha_common::ports::SNAP_LEN,
            },
        );
    }
}

// ---------------------------------------------------------------------------------------------
// ICMP
// ---------------------------------------------------------------------------------------------

#[test]
fn icmp_echo_and_reply() {
    if !privileged("icmp_echo_and_reply") {
        return;
    }
    let c = Case::new("icmp4");
    let node = k4(NODE_V4, 0);
    let req = req_v4().icmp_echo(true, 0x4242, 7);
    c.egress(&req);
    assert_eq!(
        c.inflight(),
        vec![ikey(node, InflightKind::IcmpEcho, 0, 0x4242_0007)]
    );
    // A reply with another sequence number does not match; the right one does.
    let other = rsp_v4().icmp_echo(false, 0x4242, 8);
    c.ingress(&other);
    let rsp = rsp_v4().icmp_echo(false, 0x4242, 7);
    c.ingress(&rsp);
    c.stats(&[
        (Stat::PacketsSeen, 3),
        (Stat::Parsed, 3),
        (Stat::InflightInserted, 1),
        (Stat::Matched, 1),
        (Stat::UnmatchedResponses, 1),
    ]);
    assert!(c.inflight().is_empty());
    c.node_is(
        &node,
        DEFAULT_TENANT,
        &[(
            ProtoClass::IcmpEcho,
            Want {
                requests: 1,
                responses: 2,
                bytes_out: req.len() as u64,
                bytes_in: (other.len() + rsp.len()) as u64,
                errors: 0,
                rtt_count: 1,
            },
        )],
    );
}

#[test]
fn icmpv6_echo_and_reply() {
    if !privileged("icmpv6_echo_and_reply") {
        return;
    }
    let c = Case::new("icmp6");
    let node = k6(NODE_V6, 0);
    let req = Frame::new()
        .ipv6(POLLER_V6, NODE_V6)
        .icmp_echo(true, 9, 65535);
    c.egress(&req);
    assert_eq!(
        c.inflight(),
        vec![ikey(node, InflightKind::IcmpEcho, 0, 0x0009_ffff)]
    );
    let rsp = Frame::new()
        .ipv6(NODE_V6, POLLER_V6)
        .icmp_echo(false, 9, 65535);
    c.ingress(&rsp);
    c.stats(&[
        (Stat::PacketsSeen, 2),
        (Stat::Parsed, 2),
        (Stat::InflightInserted, 1),
        (Stat::Matched, 1),
    ]);
    assert!(c.inflight().is_empty());
    c.node_is(
        &node,
        DEFAULT_TENANT,
        &[(
            ProtoClass::IcmpEcho,
            Want {
                requests: 1,
                responses: 1,
                bytes_out: req.len() as u64,
                bytes_in: rsp.len() as u64,
                errors: 0,
                rtt_count: 1,
            },
        )],
    );
    c.nodes_are(&[node]);
}

#[test]
fn icmp_unreachable_quoting_snmp_request() {
    if !privileged("icmp_unreachable_quoting_snmp_request") {
        return;
    }
    let c = Case::new("unreach");
    let node = k4(NODE_V4, 0);
    let req = req_v4().udp(POLLER_PORT, SNMP_PORT, &get(Ber::MINIMAL, SNMP_V2C, 3));
    c.egress(&req);
    // From a router (another monitored address): the error counts against the quoted node.
    let err = Frame::new()
        .ipv4(node_v4(254), POLLER_V4)
        .icmp_error(IcmpErrorKind::HostUnreachable, ip_bytes(&req));
    c.ingress(&err);
    c.stats(&[
        (Stat::PacketsSeen, 2),
        (Stat::Parsed, 2),
        (Stat::InflightInserted, 1),
        (Stat::IcmpErrors, 1),
    ]);
    c.node_is(
        &node,
        DEFAULT_TENANT,
        &[(
            ProtoClass::Snmp,
            Want {
                requests: 1,
                responses: 0,
                bytes_out: req.len() as u64,
                bytes_in: err.len() as u64,
                errors: 1,
                rtt_count: 0,
            },
        )],
    );
    // Not a response: the request stays in flight, and the router is no node.
    assert_eq!(c.inflight().len(), 1);
    c.nodes_are(&[node]);
}

#[test]
fn icmpv6_time_exceeded_quoting_echo() {
    if !privileged("icmpv6_time_exceeded_quoting_echo") {
        return;
    }
    let c = Case::new("exceeded6");
    let node = k6(NODE_V6, 0);
    let req = Frame::new().ipv6(POLLER_V6, NODE_V6).icmp_echo(true, 1, 1);
    c.egress(&req);
    let err = Frame::new()
        .ipv6(node_v6(0xfe), POLLER_V6)
        .icmp_error(IcmpErrorKind::TimeExceeded, ip_bytes(&req));
    c.ingress(&err);
    c.stats(&[
        (Stat::PacketsSeen, 2),
        (Stat::Parsed, 2),
        (Stat::InflightInserted, 1),
        (Stat::IcmpErrors, 1),
    ]);
    c.node_is(
        &node,
        DEFAULT_TENANT,
        &[(
            ProtoClass::IcmpEcho,
            Want {
                requests: 1,
                bytes_out: req.len() as u64,
                bytes_in: err.len() as u64,
                errors: 1,
                ..Want::default()
            },
        )],
    );
    c.nodes_are(&[node]);
}

#[test]
fn icmp_unreachable_quoting_tcp_check() {
    if !privileged("icmp_unreachable_quoting_tcp_check") {
        return;
    }
    let c = Case::new("unreachtcp");
    let node = k4(NODE2_V4, 0);
    let syn =
        Frame::new()
            .ipv4(POLLER_V4, NODE2_V4)
            .tcp(POLLER_PORT, TCP_CHECK_PORT, tcp_flags::SYN);
    c.egress(&syn);
    // ICMP errors quote at least the IP header and 8 bytes: the ports are all there is.
    let quoted = &ip_bytes(&syn)[..28];
    let err = Frame::new()
        .ipv4(node_v4(254), POLLER_V4)
        .icmp_error(IcmpErrorKind::HostUnreachable, quoted);
    c.ingress(&err);
    c.stats(&[
        (Stat::PacketsSeen, 2),
        (Stat::Parsed, 2),
        (Stat::InflightInserted, 1),
        (Stat::IcmpErrors, 1),
    ]);
    c.node_is(
        &node,
        DEFAULT_TENANT,
        &[(
            ProtoClass::TcpCheck,
            Want {
                requests: 1,
                bytes_out: syn.len() as u64,
                bytes_in: err.len() as u64,
                errors: 1,
                ..Want::default()
            },
        )],
    );
    c.nodes_are(&[node]);
}

#[test]
fn icmp_error_quoting_other_traffic_is_not_polling() {
    if !privileged("icmp_error_quoting_other_traffic_is_not_polling") {
        return;
    }
    let c = Case::new("unreachdns");
    let dns = req_v4().udp(POLLER_PORT, 53, b"\x12\x34\x01\x00\x00\x01");
    let err = rsp_v4().icmp_error(IcmpErrorKind::PortUnreachable, ip_bytes(&dns));
    c.ingress(&err);
    c.stats(&[
        (Stat::PacketsSeen, 1),
        (Stat::Parsed, 1),
        (Stat::NonPolling, 1),
    ]);
    c.nodes_are(&[]);
}

// ---------------------------------------------------------------------------------------------
// TCP service checks
// ---------------------------------------------------------------------------------------------

#[test]
fn tcp_syn_then_syn_ack() {
    if !privileged("tcp_syn_then_syn_ack") {
        return;
    }
    let c = Case::new("synack");
    let node = k4(NODE_V4, 0);
    let syn = req_v4().tcp(POLLER_PORT, TCP_CHECK_PORT, tcp_flags::SYN);
    c.egress(&syn);
    assert_eq!(
        c.inflight(),
        vec![ikey(
            node,
            InflightKind::TcpSyn,
            TCP_CHECK_PORT,
            u32::from(POLLER_PORT)
        )]
    );
    let syn_ack = rsp_v4().tcp(TCP_CHECK_PORT, POLLER_PORT, tcp_flags::SYN_ACK);
    c.ingress(&syn_ack);
    // The rest of the check's connection is traffic of the class, not requests or responses.
    let ack = req_v4().tcp(POLLER_PORT, TCP_CHECK_PORT, tcp_flags::ACK);
    c.egress(&ack);
    let fin = rsp_v4().tcp(TCP_CHECK_PORT, POLLER_PORT, tcp_flags::FIN | tcp_flags::ACK);
    c.ingress(&fin);
    c.stats(&[
        (Stat::PacketsSeen, 4),
        (Stat::Parsed, 4),
        (Stat::InflightInserted, 1),
        (Stat::Matched, 1),
    ]);
    assert!(c.inflight().is_empty());
    c.node_is(
        &node,
        DEFAULT_TENANT,
        &[(
            ProtoClass::TcpCheck,
            Want {
                requests: 1,
                responses: 1,
                bytes_out: (syn.len() + ack.len()) as u64,
                bytes_in: (syn_ack.len() + fin.len()) as u64,
                errors: 0,
                rtt_count: 1,
            },
        )],
    );
}

#[test]
fn tcp_syn_then_rst() {
    if !privileged("tcp_syn_then_rst") {
        return;
    }
    let c = Case::new("synrst");
    let node = k6(NODE_V6, 0);
    let syn =
        Frame::new()
            .ipv6(POLLER_V6, NODE_V6)
            .tcp(POLLER_PORT, TCP_CHECK_PORT, tcp_flags::SYN);
    c.egress(&syn);
    let rst =
        Frame::new()
            .ipv6(NODE_V6, POLLER_V6)
            .tcp(TCP_CHECK_PORT, POLLER_PORT, tcp_flags::RST_ACK);
    c.ingress(&rst);
    c.stats(&[
        (Stat::PacketsSeen, 2),
        (Stat::Parsed, 2),
        (Stat::InflightInserted, 1),
        (Stat::Matched, 1),
    ]);
    assert!(c.inflight().is_empty());
    c.node_is(
        &node,
        DEFAULT_TENANT,
        &[(
            ProtoClass::TcpCheck,
            Want {
                requests: 1,
                responses: 1,
                bytes_out: syn.len() as u64,
                bytes_in: rst.len() as u64,
                errors: 1,
                rtt_count: 1,
            },
        )],
    );
}

#[test]
fn tcp_padded_frames_count_their_wire_length() {
    if !privileged("tcp_padded_frames_count_their_wire_length") {
        return;
    }
    // A SYN and a RST are 54 bytes; on Ethernet they are padded to 60. The IP length says 40,
    // the frame (and the byte counters) 60.
    let c = Case::new("tcppad");
    let node = k4(NODE_V4, 0);
    let mut syn = req_v4().tcp(POLLER_PORT, TCP_CHECK_PORT, tcp_flags::SYN);
    let mut rst = rsp_v4().tcp(TCP_CHECK_PORT, POLLER_PORT, tcp_flags::RST_ACK);
    assert_eq!((syn.len(), rst.len()), (54, 54));
    syn.resize(60, 0);
    rst.resize(60, 0);
    c.egress(&syn);
    c.ingress(&rst);
    c.stats(&[
        (Stat::PacketsSeen, 2),
        (Stat::Parsed, 2),
        (Stat::InflightInserted, 1),
        (Stat::Matched, 1),
    ]);
    c.node_is(
        &node,
        DEFAULT_TENANT,
        &[(
            ProtoClass::TcpCheck,
            Want {
                requests: 1,
                responses: 1,
                bytes_out: 60,
                bytes_in: 60,
                errors: 1,
                rtt_count: 1,
            },
        )],
    );
}

#[test]
fn tcp_syn_to_unconfigured_port_is_not_polling() {
    if !privileged("tcp_syn_to_unconfigured_port_is_not_polling") {
        return;
    }
    let c = Case::new("tcpother");
    c.egress(&req_v4().tcp(POLLER_PORT, TCP_OTHER_PORT, tcp_flags::SYN));
    c.ingress(&rsp_v4().tcp(TCP_OTHER_PORT, POLLER_PORT, tcp_flags::SYN_ACK));
    c.stats(&[
        (Stat::PacketsSeen, 2),
        (Stat::Parsed, 2),
        (Stat::NonPolling, 2),
    ]);
    c.nodes_are(&[]);
    assert!(c.inflight().is_empty());
}

// ---------------------------------------------------------------------------------------------
// VLANs
// ---------------------------------------------------------------------------------------------

/// A v2c GET/Response pair on the given tags; returns (request, response) frames.
fn vlan_pair(c: &Case, tags: &[u16], id: i32) -> (Vec<u8>, Vec<u8>) {
    let mut req_f = req_v4();
    let mut rsp_f = rsp_v4();
    for &t in tags {
        req_f = req_f.vlan(t);
        rsp_f = rsp_f.vlan(t);
    }
    let req = req_f.udp(POLLER_PORT, SNMP_PORT, &get(Ber::MINIMAL, SNMP_V2C, id));
    let msg = snmp_v1_v2c(SNMP_V2C, COMMUNITY, pdu::RESPONSE, id, 0, &rsp_vbs());
    let rsp = rsp_f.udp(SNMP_PORT, POLLER_PORT, &msg);
    c.egress(&req);
    c.ingress(&rsp);
    (req, rsp)
}

fn pair_want(req: &[u8], rsp: &[u8]) -> Want {
    Want {
        requests: 1,
        responses: 1,
        bytes_out: req.len() as u64,
        bytes_in: rsp.len() as u64,
        errors: 0,
        rtt_count: 1,
    }
}

#[test]
fn single_vlan_tag() {
    if !privileged("single_vlan_tag") {
        return;
    }
    let c = Case::with_prefixes("vlan1", &["100@198.18.0.0/16=5"]);
    let (req, rsp) = vlan_pair(&c, &[100], 1);
    let node = k4(NODE_V4, 100);
    c.node_is(&node, 5, &[(ProtoClass::Snmp, pair_want(&req, &rsp))]);
    // The same address untagged, or on another VLAN, is outside the monitored prefixes.
    c.egress(&req_v4().icmp_echo(true, 1, 1));
    c.egress(&req_v4().vlan(101).icmp_echo(true, 1, 1));
    c.stats(&[
        (Stat::PacketsSeen, 4),
        (Stat::Parsed, 4),
        (Stat::InflightInserted, 1),
        (Stat::Matched, 1),
        (Stat::OutsidePrefix, 2),
    ]);
    c.nodes_are(&[node]);
    // Priority and DEI bits are not part of the VLAN id.
    let echo = req_v4()
        .vlan_raw(ETH_P_8021Q, 0xb000 | 100)
        .icmp_echo(true, 2, 2);
    c.egress(&echo);
    c.node_is(
        &node,
        5,
        &[
            (ProtoClass::Snmp, pair_want(&req, &rsp)),
            (
                ProtoClass::IcmpEcho,
                Want {
                    requests: 1,
                    bytes_out: echo.len() as u64,
                    ..Want::default()
                },
            ),
        ],
    );
}

#[test]
fn double_vlan_tags_use_outer_id() {
    if !privileged("double_vlan_tags_use_outer_id") {
        return;
    }
    let c = Case::with_prefixes("vlan2", &["200@198.18.0.0/16=6"]);
    let (req, rsp) = vlan_pair(&c, &[200, 300], 2);
    assert_eq!(&req[12..14], &ETH_P_8021AD.to_be_bytes());
    let node = k4(NODE_V4, 200);
    c.node_is(&node, 6, &[(ProtoClass::Snmp, pair_want(&req, &rsp))]);
    // Inner id 200 under another outer id: not the configured VLAN.
    c.egress(&req_v4().vlan(300).vlan(200).icmp_echo(true, 1, 1));
    c.stats(&[
        (Stat::PacketsSeen, 3),
        (Stat::Parsed, 3),
        (Stat::InflightInserted, 1),
        (Stat::Matched, 1),
        (Stat::OutsidePrefix, 1),
    ]);
    c.nodes_are(&[node]);
}

#[test]
fn same_address_on_two_vlans_is_two_tenants() {
    if !privileged("same_address_on_two_vlans_is_two_tenants") {
        return;
    }
    let c = Case::with_prefixes(
        "vlantenants",
        &["10@198.18.1.0/24=11", "20@198.18.1.0/24=22"],
    );
    // Same address, same poller port, same request-id: only the VLAN tells them apart.
    let req10 = req_v4()
        .vlan(10)
        .udp(POLLER_PORT, SNMP_PORT, &get(Ber::MINIMAL, SNMP_V2C, 5));
    c.egress(&req10);
    let (req20, rsp20) = vlan_pair(&c, &[20], 5);
    // VLAN 10's request is still waiting: VLAN 20's response did not take it.
    let n10 = k4(NODE_V4, 10);
    let n20 = k4(NODE_V4, 20);
    assert_eq!(
        c.inflight(),
        vec![ikey(n10, InflightKind::SnmpRequestId, POLLER_PORT, 5)]
    );
    let msg = snmp_v1_v2c(SNMP_V2C, COMMUNITY, pdu::RESPONSE, 5, 0, &rsp_vbs());
    let rsp10 = rsp_v4().vlan(10).udp(SNMP_PORT, POLLER_PORT, &msg);
    c.ingress(&rsp10);
    c.stats(&[
        (Stat::PacketsSeen, 4),
        (Stat::Parsed, 4),
        (Stat::InflightInserted, 2),
        (Stat::Matched, 2),
    ]);
    c.nodes_are(&[n10, n20]);
    c.node_is(&n10, 11, &[(ProtoClass::Snmp, pair_want(&req10, &rsp10))]);
    c.node_is(&n20, 22, &[(ProtoClass::Snmp, pair_want(&req20, &rsp20))]);
}

#[test]
fn three_vlan_tags_are_not_polling() {
    if !privileged("three_vlan_tags_are_not_polling") {
        return;
    }
    let c = Case::new("vlan3");
    let f = req_v4()
        .vlan_raw(ETH_P_8021AD, 1)
        .vlan_raw(ETH_P_8021Q, 2)
        .vlan_raw(ETH_P_8021Q, 3)
        .icmp_echo(true, 1, 1);
    c.egress(&f);
    c.stats(&[(Stat::PacketsSeen, 1), (Stat::NonPolling, 1)]);
    c.nodes_are(&[]);
}

// ---------------------------------------------------------------------------------------------
// IPv6 extension headers, IPv4 options, fragments
// ---------------------------------------------------------------------------------------------

fn v6_snmp_pair(c: &Case, ext: &[Ipv6Ext], id: i32) -> (Vec<u8>, Vec<u8>) {
    let req = Frame::new().ipv6(POLLER_V6, NODE_V6).ipv6_ext(ext).udp(
        POLLER_PORT,
        SNMP_PORT,
        &get(Ber::MINIMAL, SNMP_V2C, id),
    );
    let msg = snmp_v1_v2c(SNMP_V2C, COMMUNITY, pdu::RESPONSE, id, 0, &rsp_vbs());
    let rsp = Frame::new()
        .ipv6(NODE_V6, POLLER_V6)
        .ipv6_ext(ext)
        .udp(SNMP_PORT, POLLER_PORT, &msg);
    c.egress(&req);
    c.ingress(&rsp);
    (req, rsp)
}

#[test]
fn ipv6_hop_by_hop_and_destination_options() {
    if !privileged("ipv6_hop_by_hop_and_destination_options") {
        return;
    }
    let c = Case::new("v6ext");
    let (req, rsp) = v6_snmp_pair(&c, &[Ipv6Ext::HopByHop, Ipv6Ext::DestOpts], 61);
    c.stats(&[
        (Stat::PacketsSeen, 2),
        (Stat::Parsed, 2),
        (Stat::InflightInserted, 1),
        (Stat::Matched, 1),
    ]);
    let node = k6(NODE_V6, 0);
    c.node_is(
        &node,
        DEFAULT_TENANT,
        &[(ProtoClass::Snmp, pair_want(&req, &rsp))],
    );
    c.nodes_are(&[node]);
}

#[test]
fn ipv6_routing_header() {
    if !privileged("ipv6_routing_header") {
        return;
    }
    let c = Case::new("v6rt");
    let (req, rsp) = v6_snmp_pair(&c, &[Ipv6Ext::HopByHop, Ipv6Ext::Routing], 62);
    c.stats(&[
        (Stat::PacketsSeen, 2),
        (Stat::Parsed, 2),
        (Stat::InflightInserted, 1),
        (Stat::Matched, 1),
    ]);
    c.node_is(
        &k6(NODE_V6, 0),
        DEFAULT_TENANT,
        &[(ProtoClass::Snmp, pair_want(&req, &rsp))],
    );
}

#[test]
fn ipv6_fragments() {
    if !privileged("ipv6_fragments") {
        return;
    }
    let c = Case::new("v6frag");
    // First fragment (offset 0, more fragments): the transport header is there, so it counts.
    let (req, rsp) = v6_snmp_pair(
        &c,
        &[
            Ipv6Ext::DestOpts,
            Ipv6Ext::Fragment {
                offset: 0,
                more: true,
            },
        ],
        63,
    );
    c.stats(&[
        (Stat::PacketsSeen, 2),
        (Stat::Parsed, 2),
        (Stat::InflightInserted, 1),
        (Stat::Matched, 1),
    ]);
    // A non-first fragment: counted as a fragment, nothing else.
    let later = Frame::new()
        .ipv6(POLLER_V6, NODE_V6)
        .fragment(185, false)
        .udp(POLLER_PORT, SNMP_PORT, &get(Ber::MINIMAL, SNMP_V2C, 64));
    c.egress(&later);
    c.stats(&[
        (Stat::PacketsSeen, 3),
        (Stat::Parsed, 2),
        (Stat::InflightInserted, 1),
        (Stat::Matched, 1),
        (Stat::Fragments, 1),
    ]);
    c.node_is(
        &k6(NODE_V6, 0),
        DEFAULT_TENANT,
        &[(ProtoClass::Snmp, pair_want(&req, &rsp))],
    );
}

#[test]
fn ipv4_with_options() {
    if !privileged("ipv4_with_options") {
        return;
    }
    let c = Case::new("v4opts");
    // Record route with room for 2 addresses (11 bytes), then padding: 12 bytes of options.
    let rr = [7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0];
    let req =
        req_v4()
            .ipv4_options(&rr)
            .udp(POLLER_PORT, SNMP_PORT, &get(Ber::MINIMAL, SNMP_V1, 71));
    assert_eq!(ip_bytes(&req)[0], 0x48);
    let msg = snmp_v1_v2c(SNMP_V1, COMMUNITY, pdu::RESPONSE, 71, 0, &rsp_vbs());
    let rsp = rsp_v4()
        .ipv4_options(&[1; 40]) // 40 NOPs: the longest IPv4 header
        .udp(SNMP_PORT, POLLER_PORT, &msg);
    assert_eq!(ip_bytes(&rsp)[0], 0x4f);
    c.egress(&req);
    c.ingress(&rsp);
    c.stats(&[
        (Stat::PacketsSeen, 2),
        (Stat::Parsed, 2),
        (Stat::InflightInserted, 1),
        (Stat::Matched, 1),
    ]);
    c.node_is(
        &k4(NODE_V4, 0),
        DEFAULT_TENANT,
        &[(ProtoClass::Snmp, pair_want(&req, &rsp))],
    );
}

#[test]
fn ipv4_fragments() {
    if !privileged("ipv4_fragments") {
        return;
    }
    let c = Case::new("v4frag");
    let later =
        req_v4()
            .fragment(100, true)
            .udp(POLLER_PORT, SNMP_PORT, &get(Ber::MINIMAL, SNMP_V2C, 81));
    c.egress(&later);
    c.stats(&[(Stat::PacketsSeen, 1), (Stat::Fragments, 1)]);
    c.nodes_are(&[]);
    assert!(c.inflight().is_empty());
    // The first fragment (MF, offset 0) carries the headers and is counted as a request.
    let first =
        req_v4()
            .fragment(0, true)
            .udp(POLLER_PORT, SNMP_PORT, &get(Ber::MINIMAL, SNMP_V2C, 82));
    c.egress(&first);
    c.stats(&[
        (Stat::PacketsSeen, 2),
        (Stat::Fragments, 1),
        (Stat::Parsed, 1),
        (Stat::InflightInserted, 1),
    ]);
    c.node_is(
        &k4(NODE_V4, 0),
        DEFAULT_TENANT,
        &[(
            ProtoClass::Snmp,
            Want {
                requests: 1,
                bytes_out: first.len() as u64,
                ..Want::default()
            },
        )],
    );
}

// ---------------------------------------------------------------------------------------------
// Non-polling, outside prefixes, unconfigured
// ---------------------------------------------------------------------------------------------

#[test]
fn non_polling_traffic() {
    if !privileged("non_polling_traffic") {
        return;
    }
    let c = Case::new("nonpoll");
    let dns_q = req_v4().udp(POLLER_PORT, 53, b"\x12\x34\x01\x00\x00\x01\x00\x00");
    c.egress(&dns_q);
    c.ingress(&rsp_v4().udp(53, POLLER_PORT, b"\x12\x34\x81\x80\x00\x01\x00\x01"));
    c.egress(&req_v4().tcp(POLLER_PORT, TCP_OTHER_PORT, tcp_flags::SYN));
    // Wrong direction: a request arriving, a response or trap leaving, an echo reply leaving.
    c.ingress(&req_v4().udp(POLLER_PORT, SNMP_PORT, &get(Ber::MINIMAL, SNMP_V2C, 1)));
    let response = snmp_v1_v2c(SNMP_V2C, COMMUNITY, pdu::RESPONSE, 1, 0, &rsp_vbs());
    c.egress(&rsp_v4().udp(SNMP_PORT, POLLER_PORT, &response));
    c.egress(&rsp_v4().udp(40000, TRAP_PORT, &snmp_v1_trap(COMMUNITY, NODE_V4, &[])));
    c.egress(&rsp_v4().icmp_echo(false, 1, 1));
    c.ingress(&req_v4().icmp_echo(true, 1, 1));
    // A trap PDU sent to the SNMP port is not a request.
    c.egress(&req_v4().udp(
        POLLER_PORT,
        SNMP_PORT,
        &snmp_v1_trap(COMMUNITY, POLLER_V4, &[]),
    ));
    // Other IP protocols (GRE) and non-IP (ARP).
    c.egress(&req_v4().ip_raw(47, &[0; 8]));
    c.egress(&Frame::new().arp_request(POLLER_V4, NODE_V4));
    c.stats(&[
        (Stat::PacketsSeen, 11),
        (Stat::Parsed, 9),
        (Stat::NonPolling, 11),
    ]);
    c.nodes_are(&[]);
    assert!(c.inflight().is_empty());
}

#[test]
fn outside_monitored_prefixes() {
    if !privileged("outside_monitored_prefixes") {
        return;
    }
    let mut c = Case::new("outside");
    let req = Frame::new().ipv4(POLLER_V4, OUTSIDE_V4).udp(
        POLLER_PORT,
        SNMP_PORT,
        &get(Ber::MINIMAL, SNMP_V2C, 1),
    );
    c.egress(&req);
    let msg = snmp_v1_v2c(SNMP_V2C, COMMUNITY, pdu::RESPONSE, 1, 0, &rsp_vbs());
    c.ingress(
        &Frame::new()
            .ipv4(OUTSIDE_V4, POLLER_V4)
            .udp(SNMP_PORT, POLLER_PORT, &msg),
    );
    c.egress(
        &Frame::new()
            .ipv6(POLLER_V6, OUTSIDE_V6)
            .icmp_echo(true, 1, 1),
    );
    c.egress(&Frame::new().ipv4(POLLER_V4, OUTSIDE_V4).tcp(
        POLLER_PORT,
        TCP_CHECK_PORT,
        tcp_flags::SYN,
    ));
    // A trap from outside is not copied.
    c.ingress(&Frame::new().ipv4(OUTSIDE_V4, POLLER_V4).udp(
        40000,
        TRAP_PORT,
        &snmp_v2c_trap(COMMUNITY, pdu::TRAP_V2, 1, &[]),
    ));
    c.stats(&[
        (Stat::PacketsSeen, 5),
        (Stat::Parsed, 5),
        (Stat::OutsidePrefix, 5),
    ]);
    c.nodes_are(&[]);
    assert!(c.inflight().is_empty());
    assert!(c.ring().is_empty());
}

#[test]
fn unconfigured_counts_only_packets_seen() {
    if !privileged("unconfigured_counts_only_packets_seen") {
        return;
    }
    let mut c = Case::bare("unconf");
    // Prefixes and TCP ports written, but the ports (and the configured flag) not yet.
    let p = [prefix(&format!("{MONITORED_V4}=1"))];
    c.inst.set_prefixes(&p).expect("set_prefixes");
    c.inst
        .set_tcp_ports(&[TCP_CHECK_PORT])
        .expect("set_tcp_ports");
    let req = req_v4().udp(POLLER_PORT, SNMP_PORT, &get(Ber::MINIMAL, SNMP_V2C, 1));
    c.egress(&req);
    let msg = snmp_v1_v2c(SNMP_V2C, COMMUNITY, pdu::RESPONSE, 1, 0, &rsp_vbs());
    c.ingress(&rsp_v4().udp(SNMP_PORT, POLLER_PORT, &msg));
    c.egress(&req_v4().icmp_echo(true, 1, 1));
    c.ingress(&rsp_v4().udp(
        40000,
        TRAP_PORT,
        &snmp_v2c_trap(COMMUNITY, pdu::TRAP_V2, 1, &[]),
    ));
    c.egress(&req_v4().fragment(9, false).udp(1, 2, b"x"));
    c.stats(&[(Stat::PacketsSeen, 5)]);
    c.nodes_are(&[]);
    assert!(c.inflight().is_empty());
    assert!(c.ring().is_empty());
    // Once configured, the same request counts.
    c.inst.set_ports(PortConfig::default()).expect("set_ports");
    c.egress(&req);
    c.stats(&[
        (Stat::PacketsSeen, 6),
        (Stat::Parsed, 1),
        (Stat::InflightInserted, 1),
    ]);
}

// ---------------------------------------------------------------------------------------------
// Restart
// ---------------------------------------------------------------------------------------------

#[test]
fn counters_survive_restart_and_are_not_counted_twice() {
    if !privileged("counters_survive_restart_and_are_not_counted_twice") {
        return;
    }
    let mut c = Case::new("restart");
    let node = k4(NODE_V4, 0);
    let pair = |c: &Case, id: i32| {
        let req = req_v4().udp(POLLER_PORT, SNMP_PORT, &get(Ber::MINIMAL, SNMP_V2C, id));
        let msg = snmp_v1_v2c(SNMP_V2C, COMMUNITY, pdu::RESPONSE, id, 0, &rsp_vbs());
        let rsp = rsp_v4().udp(SNMP_PORT, POLLER_PORT, &msg);
        c.egress(&req);
        c.ingress(&rsp);
        (req.len() as u64, rsp.len() as u64)
    };
    let (out1, in1) = pair(&c, 1);
    // One request left in flight across the restart, one trap left unread.
    let pending = req_v4().udp(POLLER_PORT, SNMP_PORT, &get(Ber::MINIMAL, SNMP_V2C, 2));
    c.egress(&pending);
    let trap = snmp_v2c_trap(COMMUNITY, pdu::TRAP_V2, 3, &[]);
    c.ingress(&rsp_v4().udp(40000, TRAP_PORT, &trap));
    let before_stats = [
        (Stat::PacketsSeen, 4),
        (Stat::Parsed, 4),
        (Stat::InflightInserted, 2),
        (Stat::Matched, 1),
        (Stat::TrapsCopied, 1),
    ];
    let before = Want {
        requests: 2,
        responses: 1,
        bytes_out: out1 + pending.len() as u64,
        bytes_in: in1,
        errors: 0,
        rtt_count: 1,
    };
    c.stats(&before_stats);
    c.node_is(&node, DEFAULT_TENANT, &[(ProtoClass::Snmp, before)]);
    let node_before = c.node(&node);

    // Restart: drop the data plane keeping the pins and load again. The configuration is
    // pinned too, so counting goes on before the sidecar writes it again.
    c.inst.reopen().expect("reopen");
    c.stats(&before_stats);
    assert_eq!(
        c.node(&node),
        node_before,
        "node counters unchanged by the restart"
    );
    assert_eq!(c.inflight().len(), 1, "in-flight request survives");
    let recs = c.ring();
    assert_eq!(recs.len(), 1, "unread trap survives");
    assert_eq!(recs[0].payload(), &trap[..]);

    // The pending request's response matches after the restart; a new pair adds once.
    let msg = snmp_v1_v2c(SNMP_V2C, COMMUNITY, pdu::RESPONSE, 2, 0, &rsp_vbs());
    let rsp2 = rsp_v4().udp(SNMP_PORT, POLLER_PORT, &msg);
    c.ingress(&rsp2);
    // Writing the same configuration again (as a starting sidecar does) resets nothing.
    opha_tests::pins::configure_default(c.inst.dp_mut()).expect("configure");
    let (out3, in3) = pair(&c, 3);
    c.stats(&[
        (Stat::PacketsSeen, 7),
        (Stat::Parsed, 7),
        (Stat::InflightInserted, 3),
        (Stat::Matched, 3),
        (Stat::TrapsCopied, 1),
    ]);
    c.node_is(
        &node,
        DEFAULT_TENANT,
        &[(
            ProtoClass::Snmp,
            Want {
                requests: 3,
                responses: 3,
                bytes_out: before.bytes_out + out3,
                bytes_in: in1 + rsp2.len() as u64 + in3,
                errors: 0,
                rtt_count: 3,
            },
        )],
    );
    assert!(c.inflight().is_empty());
    c.nodes_are(&[node]);

    // A second restart without any traffic changes nothing.
    let node_after = c.node(&node);
    c.inst.reopen().expect("second reopen");
    assert_eq!(c.node(&node), node_after);
    assert!(
        c.ring().is_empty(),
        "a consumed record is not delivered again"
    );
}

#[test]
fn instance_cleanup_removes_pins() {
    if !privileged("instance_cleanup_removes_pins") {
        return;
    }
    let dir = {
        let c = Case::new("cleanup");
        let dir = c.inst.pin_dir().to_path_buf();
        assert!(dir.join("OPHA_NODES").exists(), "maps are pinned");
        dir
    };
    assert!(!dir.exists(), "{} removed on drop", dir.display());
    // Also when the test panics.
    let dir = std::panic::catch_unwind(|| {
        let c = Case::new("cleanuppanic");
        let dir = c.inst.pin_dir().to_path_buf();
        std::panic::panic_any(dir);
    })
    .expect_err("panicked");
    let dir = dir.downcast::<std::path::PathBuf>().expect("path payload");
    assert!(!dir.exists(), "{} removed after a panic", dir.display());
}
