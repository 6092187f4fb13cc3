//! Malformed input through BPF_PROG_TEST_RUN: every valid test packet truncated at every byte,
//! and well over 100,000 random and mutated packets. The programs must always pass the packet
//! (TC_ACT_UNSPEC), never fail a run, count every packet as seen, and count as malformed every
//! packet that is malformed by construction.

use std::{
    net::{IpAddr, Ipv6Addr},
    path::Path,
};

use aya::maps::{Map, MapData, PerCpuArray, RingBuf};
use aya::programs::ProgramError;
use opha_common::{
    PROG_EGRESS, PROG_INGRESS,
    node::NodeKey,
    ports::SNAP_LEN,
    ringbuf::{RingKind, RingRecord},
    stats::{STAT_COUNT, Stat},
};
use opha_sidecar::loader::{LoaderError, MAP_EVENTS, MAP_STATS, MonitoredPrefix};
use opha_tests::{
    packets::*,
    pins::{DEFAULT_TENANT, TestInstance},
    privilege::privileged,
};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// TC_ACT_UNSPEC (-1) as test-run reports it.
const TC_ACT_UNSPEC: u32 = u32::MAX;

/// Random and mutated packets in the fuzz test (the issue asks for at least 100,000).
const FUZZ_PACKETS: usize = 120_000;

/// Default seed of the fuzz test; `OPHA_FUZZ_SEED=N` replays another run.
const DEFAULT_SEED: u64 = 0x0b5e_55ed_2025;

type Stats = [u64; STAT_COUNT as usize];

/// Counters that end the processing of a packet: at most one of them moves per packet. A
/// packet that moves none of them was counted as a request or response of a node (or was
/// other traffic of a TCP check's connection).
const OUTCOMES: [Stat; 9] = [
    Stat::Malformed,
    Stat::NonPolling,
    Stat::Fragments,
    Stat::OutsidePrefix,
    Stat::NodeMapFull,
    Stat::TrapsCopied,
    Stat::SyslogCopied,
    Stat::RingbufDrops,
    Stat::IcmpErrors,
];

/// The global counters, read straight from the pinned per-CPU array: `DataPlane::stats` also
/// walks the in-flight map, which the fuzz test fills, and it is read after every packet.
struct StatsReader(PerCpuArray<MapData, u64>);

impl StatsReader {
    fn open(pin_dir: &Path) -> Self {
        let md = MapData::from_pin(pin_dir.join(MAP_STATS)).expect("open the pinned stats map");
        Self(PerCpuArray::try_from(Map::PerCpuArray(md)).expect("stats map is a per-CPU array"))
    }

    fn read(&self) -> Stats {
        Stat::ALL.map(|s| {
            self.0
                .get(&(s as u32), 0)
                .expect("read a stat")
                .iter()
                .sum()
        })
    }
}

fn delta(before: &Stats, after: &Stats, s: Stat) -> u64 {
    after[s as usize] - before[s as usize]
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Which program a valid packet is meant for and what it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// An SNMP request (egress, to the SNMP port): its BER header is parsed.
    SnmpRequest,
    /// An SNMP response or report (ingress, from the SNMP port): its BER header is parsed.
    SnmpResponse,
    /// Anything else.
    Other,
}

struct Valid {
    name: String,
    prog: &'static str,
    kind: Kind,
    frame: Vec<u8>,
}

fn valid(name: &str, prog: &'static str, kind: Kind, frame: Vec<u8>) -> Valid {
    Valid {
        name: name.to_string(),
        prog,
        kind,
        frame,
    }
}

/// Every valid packet class of the issue, each with the program it is meant for.
fn valid_packets() -> Vec<Valid> {
    let out4 = Frame::new().ipv4(POLLER_V4, NODE_V4);
    let in4 = Frame::new()
        .macs(NODE_MAC, POLLER_MAC)
        .ipv4(NODE_V4, POLLER_V4);
    let out6 = Frame::new().ipv6(POLLER_V6, NODE_V6);
    let in6 = Frame::new()
        .macs(NODE_MAC, POLLER_MAC)
        .ipv6(NODE_V6, POLLER_V6);
    let get_vbs = [VarBind::null(SYS_DESCR), VarBind::null(SYS_UPTIME)];
    let resp_vbs = [
        VarBind::new(SYS_DESCR, Value::Str(b"opha test device".to_vec())),
        VarBind::new(SYS_UPTIME, Value::TimeTicks(4242)),
    ];
    let big_vbs = [VarBind::new(SYS_DESCR, Value::Str(vec![b'x'; 300]))];
    let req = |ber: Ber, version: i64, pdu_tag: u8| {
        ber.snmp_v1_v2c(version, b"public", pdu_tag, 0x0102_0304, 0, &get_vbs)
    };
    let resp = |ber: Ber, version: i64, status: i32| {
        ber.snmp_v1_v2c(
            version,
            b"public",
            pdu::RESPONSE,
            0x0102_0304,
            status,
            &resp_vbs,
        )
    };
    let v3_plain = |pdu_tag: u8, vbs: &[VarBind]| {
        snmp_v3(
            1001,
            &V3Data::Plain {
                pdu_tag,
                request_id: 5,
                error_status: 0,
                varbinds: vbs,
            },
        )
    };
    let snmp_out = |f: &Frame, msg: &[u8]| f.udp(POLLER_PORT, SNMP_PORT, msg);
    let snmp_in = |f: &Frame, msg: &[u8]| f.udp(SNMP_PORT, POLLER_PORT, msg);
    let (e, i) = (PROG_EGRESS, PROG_INGRESS);
    let (rq, rs, o) = (Kind::SnmpRequest, Kind::SnmpResponse, Kind::Other);
    let mut v = vec![
        valid(
            "v1 get",
            e,
            rq,
            snmp_out(&out4, &req(Ber::MINIMAL, SNMP_V1, pdu::GET)),
        ),
        valid(
            "v1 response",
            i,
            rs,
            snmp_in(&in4, &resp(Ber::MINIMAL, SNMP_V1, 0)),
        ),
        valid(
            "v2c get",
            e,
            rq,
            snmp_out(&out4, &req(Ber::MINIMAL, SNMP_V2C, pdu::GET)),
        ),
        valid(
            "v2c getnext",
            e,
            rq,
            snmp_out(&out4, &req(Ber::MINIMAL, SNMP_V2C, pdu::GETNEXT)),
        ),
        valid(
            "v2c set",
            e,
            rq,
            snmp_out(&out4, &req(Ber::MINIMAL, SNMP_V2C, pdu::SET)),
        ),
        valid(
            "v2c getbulk",
            e,
            rq,
            snmp_out(
                &out4,
                &snmp_getbulk(b"public", 77, 0, 10, &[VarBind::null(IF_TABLE)]),
            ),
        ),
        valid(
            "v2c response",
            i,
            rs,
            snmp_in(&in4, &resp(Ber::MINIMAL, SNMP_V2C, 0)),
        ),
        valid(
            "v2c error response",
            i,
            rs,
            snmp_in(&in4, &resp(Ber::MINIMAL, SNMP_V2C, 2)),
        ),
        valid(
            "v2c get long81",
            e,
            rq,
            snmp_out(&out4, &req(Ber::LONG81, SNMP_V2C, pdu::GET)),
        ),
        valid(
            "v2c get long82",
            e,
            rq,
            snmp_out(&out4, &req(Ber::LONG82, SNMP_V2C, pdu::GET)),
        ),
        valid(
            "v2c response long81",
            i,
            rs,
            snmp_in(&in4, &resp(Ber::LONG81, SNMP_V2C, 0)),
        ),
        valid(
            "v2c response long82",
            i,
            rs,
            snmp_in(&in4, &resp(Ber::LONG82, SNMP_V2C, 0)),
        ),
        valid(
            "v2c response 300-byte value",
            i,
            rs,
            snmp_in(
                &in4,
                &snmp_v1_v2c(SNMP_V2C, b"public", pdu::RESPONSE, 9, 0, &big_vbs),
            ),
        ),
        valid(
            "v3 get",
            e,
            rq,
            snmp_out(&out4, &v3_plain(pdu::GET, &get_vbs)),
        ),
        valid(
            "v3 response",
            i,
            rs,
            snmp_in(&in4, &v3_plain(pdu::RESPONSE, &resp_vbs)),
        ),
        valid(
            "v3 report",
            i,
            rs,
            snmp_in(&in4, &v3_plain(pdu::REPORT, &[])),
        ),
        valid(
            "v3 encrypted get",
            e,
            rq,
            snmp_out(&out4, &snmp_v3(1002, &V3Data::Encrypted(&[0x5a; 48]))),
        ),
        valid(
            "v3 encrypted response",
            i,
            rs,
            snmp_in(&in4, &snmp_v3(1002, &V3Data::Encrypted(&[0xa5; 64]))),
        ),
        valid(
            "v2c get ipv6",
            e,
            rq,
            snmp_out(&out6, &req(Ber::MINIMAL, SNMP_V2C, pdu::GET)),
        ),
        valid(
            "v2c response ipv6",
            i,
            rs,
            snmp_in(&in6, &resp(Ber::MINIMAL, SNMP_V2C, 0)),
        ),
        valid(
            "v2c get ipv6 ext headers",
            e,
            rq,
            snmp_out(
                &out6
                    .clone()
                    .ipv6_ext(&[Ipv6Ext::HopByHop, Ipv6Ext::Routing, Ipv6Ext::DestOpts]),
                &req(Ber::MINIMAL, SNMP_V2C, pdu::GET),
            ),
        ),
        valid(
            "v2c response ipv6 first fragment",
            i,
            rs,
            snmp_in(
                &in6.clone().ipv6_ext(&[Ipv6Ext::DestOpts]).fragment(0, true),
                &resp(Ber::MINIMAL, SNMP_V2C, 0),
            ),
        ),
        valid(
            "v2c get ipv4 options",
            e,
            rq,
            snmp_out(
                &out4.clone().ipv4_options(&[7, 7, 4, 0, 0, 0, 0]),
                &req(Ber::MINIMAL, SNMP_V2C, pdu::GET),
            ),
        ),
        valid(
            "v2c get vlan",
            e,
            rq,
            snmp_out(
                &out4.clone().vlan(100),
                &req(Ber::MINIMAL, SNMP_V2C, pdu::GET),
            ),
        ),
        valid(
            "v2c response double vlan",
            i,
            rs,
            snmp_in(
                &in4.clone().vlan(100).vlan(200),
                &resp(Ber::MINIMAL, SNMP_V2C, 0),
            ),
        ),
        valid(
            "v1 trap",
            i,
            o,
            in4.udp(40_162, TRAP_PORT, &snmp_v1_trap(b"public", NODE_V4, &[])),
        ),
        valid(
            "v2c trap",
            i,
            o,
            in4.udp(
                40_162,
                TRAP_PORT,
                &snmp_v2c_trap(b"public", pdu::TRAP_V2, 11, &[]),
            ),
        ),
        valid(
            "v2c inform",
            i,
            o,
            in4.udp(
                40_162,
                TRAP_PORT,
                &snmp_v2c_trap(b"public", pdu::INFORM, 12, &[]),
            ),
        ),
        valid(
            "syslog",
            i,
            o,
            in4.udp(40_514, SYSLOG_PORT, &syslog_line(13, "opha: link down")),
        ),
        valid("icmp echo request", e, o, out4.icmp_echo(true, 7, 1)),
        valid("icmp echo reply", i, o, in4.icmp_echo(false, 7, 1)),
        valid("icmpv6 echo request", e, o, out6.icmp_echo(true, 7, 1)),
        valid("icmpv6 echo reply", i, o, in6.icmp_echo(false, 7, 1)),
        valid(
            "icmp echo request vlan",
            e,
            o,
            out4.clone().vlan(100).icmp_echo(true, 7, 2),
        ),
        valid(
            "tcp syn",
            e,
            o,
            out4.tcp(POLLER_PORT, TCP_CHECK_PORT, tcp_flags::SYN),
        ),
        valid(
            "tcp syn-ack",
            i,
            o,
            in4.tcp(TCP_CHECK_PORT, POLLER_PORT, tcp_flags::SYN_ACK),
        ),
        valid(
            "tcp rst",
            i,
            o,
            in4.tcp(TCP_CHECK_PORT, POLLER_PORT, tcp_flags::RST_ACK),
        ),
        valid(
            "tcp syn ipv6",
            e,
            o,
            out6.tcp(POLLER_PORT, TCP_CHECK_PORT, tcp_flags::SYN),
        ),
        valid(
            "non-polling tcp",
            e,
            o,
            out4.tcp_full(50_000, TCP_OTHER_PORT, tcp_flags::ACK, 1, 2, &[0x42; 40]),
        ),
        valid("non-polling udp", i, o, in4.udp(53, 50_001, &[0x11; 24])),
        valid(
            "outside prefix get",
            e,
            rq,
            snmp_out(
                &Frame::new().ipv4(POLLER_V4, OUTSIDE_V4),
                &req(Ber::MINIMAL, SNMP_V2C, pdu::GET),
            ),
        ),
        valid(
            "non-first fragment",
            i,
            o,
            in4.clone()
                .fragment(185, false)
                .udp(SNMP_PORT, POLLER_PORT, &[0; 32]),
        ),
    ];
    // ICMP errors quoting one of our requests.
    let quoted4 = v[2].frame.clone();
    v.push(valid(
        "icmp port unreachable",
        i,
        o,
        in4.icmp_error(IcmpErrorKind::PortUnreachable, ip_bytes(&quoted4)),
    ));
    let quoted6 = snmp_out(&out6, &req(Ber::MINIMAL, SNMP_V2C, pdu::GET));
    v.push(valid(
        "icmpv6 time exceeded",
        i,
        o,
        in6.icmp_error(IcmpErrorKind::TimeExceeded, ip_bytes(&quoted6)),
    ));
    v
}

/// Kernel 6.x's test-run (`bpf_prog_test_run_skb` in net/bpf/test_run.c) refuses with EINVAL,
/// before running the program, an untagged frame whose ethertype is IPv4 with fewer than 20
/// bytes after the Ethernet header, or IPv6 with fewer than 40. Such a packet cannot be put
/// through test-run; the truncation test runs it VLAN-tagged instead.
fn refused_by_test_run(pkt: &[u8]) -> bool {
    match u16::from_be_bytes([pkt[12], pkt[13]]) {
        ETH_P_IPV4 => pkt.len() < ETH_HLEN + 20,
        ETH_P_IPV6 => pkt.len() < ETH_HLEN + 40,
        _ => false,
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Ran {
    Yes,
    /// Refused by test-run itself (see `refused_by_test_run`): the program did not run.
    Refused,
}

/// How a valid packet ends on its own program: None when it is counted as a request or
/// response of its node (no global outcome counter moves).
fn intended_outcome(name: &str) -> Option<Stat> {
    if name.starts_with("outside prefix") {
        Some(Stat::OutsidePrefix)
    } else if name.contains("trap") || name.contains("inform") {
        Some(Stat::TrapsCopied)
    } else if name == "syslog" {
        Some(Stat::SyslogCopied)
    } else if name.starts_with("non-polling") {
        Some(Stat::NonPolling)
    } else if name == "non-first fragment" {
        Some(Stat::Fragments)
    } else if name.contains("unreachable") || name.contains("time exceeded") {
        Some(Stat::IcmpErrors)
    } else {
        None
    }
}

/// Runs one packet; the run must succeed and pass the packet, unless test-run itself refuses
/// the packet.
fn run(inst: &TestInstance, prog: &str, pkt: &[u8]) -> Ran {
    match inst.dp().test_run(prog, pkt, 1) {
        Ok(r) => {
            assert_eq!(
                r.return_value,
                TC_ACT_UNSPEC,
                "{prog} did not pass {}",
                hex(pkt)
            );
            Ran::Yes
        }
        Err(LoaderError::Program(_, ProgramError::SyscallError(e)))
            if e.io_error.raw_os_error() == Some(libc::EINVAL) && refused_by_test_run(pkt) =>
        {
            Ran::Refused
        }
        Err(e) => panic!("test-run of {prog} failed on {}: {e:?}", hex(pkt)),
    }
}

/// `pkt` with an 802.1Q priority tag (VLAN 0, the node's VLAN stays 0) after the MACs.
fn priority_tagged(pkt: &[u8]) -> Vec<u8> {
    let mut m = pkt[..12].to_vec();
    m.extend_from_slice(&[0x81, 0x00, 0x00, 0x00]);
    m.extend_from_slice(&pkt[12..]);
    m
}

fn other_outcomes(before: &Stats, after: &Stats, except: Stat) -> Vec<(&'static str, u64)> {
    OUTCOMES
        .iter()
        .filter(|&&s| s != except)
        .map(|&s| (s.name(), delta(before, after, s)))
        .filter(|&(_, d)| d != 0)
        .collect()
}

#[test]
fn every_truncation_of_every_valid_packet_is_malformed() {
    if !privileged("every_truncation_of_every_valid_packet_is_malformed") {
        return;
    }
    let mut inst = TestInstance::configured("trunc").expect("load and configure");
    // The VLAN-tagged test packets are polling traffic of a tenant on VLAN 100.
    let prefixes: Vec<MonitoredPrefix> = [
        format!("{MONITORED_V4}={DEFAULT_TENANT}"),
        format!("{MONITORED_V6}={DEFAULT_TENANT}"),
        format!("100@{MONITORED_V4}=2"),
    ]
    .iter()
    .map(|p| p.parse().expect("prefix"))
    .collect();
    inst.dp_mut().set_prefixes(&prefixes).expect("set prefixes");
    let stats = StatsReader::open(&inst.config().pin_dir());
    let packets = valid_packets();
    // The untruncated packets are well-formed: none of them is malformed, and on its own
    // program each ends as intended.
    for p in &packets {
        for prog in [PROG_INGRESS, PROG_EGRESS] {
            let before = stats.read();
            assert_eq!(run(&inst, prog, &p.frame), Ran::Yes);
            let after = stats.read();
            assert_eq!(
                delta(&before, &after, Stat::Malformed),
                0,
                "{} (untruncated) counted malformed by {prog}: {}",
                p.name,
                hex(&p.frame)
            );
            if prog == p.prog {
                let got: Vec<Stat> = OUTCOMES
                    .into_iter()
                    .filter(|&s| delta(&before, &after, s) != 0)
                    .collect();
                let want: Vec<Stat> = intended_outcome(&p.name).into_iter().collect();
                assert_eq!(got, want, "{} on {prog}: {}", p.name, hex(&p.frame));
            }
        }
    }
    let baseline = stats.read();
    let nodes_before = inst.dp().nodes().expect("nodes").len();
    let (mut runs, mut refused) = (0u64, 0u64);
    let mut failures = Vec::new();
    for p in &packets {
        for cut in truncations(&p.frame) {
            for prog in [PROG_INGRESS, PROG_EGRESS] {
                let before = stats.read();
                let mut pkt = cut.to_vec();
                if run(&inst, prog, &pkt) == Ran::Refused {
                    // Test-run would not run it (see `refused_by_test_run`): nothing was
                    // counted. The same bytes behind a priority tag reach the same IP parser.
                    assert_eq!(stats.read(), before, "a refused run counted something");
                    refused += 1;
                    pkt = priority_tagged(cut);
                    assert_eq!(run(&inst, prog, &pkt), Ran::Yes);
                }
                let after = stats.read();
                runs += 1;
                let malformed = delta(&before, &after, Stat::Malformed);
                let seen = delta(&before, &after, Stat::PacketsSeen);
                let others = other_outcomes(&before, &after, Stat::Malformed);
                if malformed != 1 || seen != 1 || !others.is_empty() {
                    failures.push(format!(
                        "{} cut at {} of {} bytes, {prog}: malformed +{malformed}, seen +{seen}, \
                         other outcomes {others:?}; packet {}",
                        p.name,
                        cut.len(),
                        p.frame.len(),
                        hex(&pkt)
                    ));
                }
            }
        }
    }
    let after = stats.read();
    println!(
        "{} valid packets, {runs} truncated runs ({refused} refused by test-run untagged and run \
         behind a priority tag), {} failures",
        packets.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {runs} truncated packets were not counted exactly once as malformed:\n{}",
        failures.len(),
        failures[..failures.len().min(40)].join("\n")
    );
    assert_eq!(delta(&baseline, &after, Stat::PacketsSeen), runs);
    assert_eq!(delta(&baseline, &after, Stat::Malformed), runs);
    // Nothing truncated reached a node, the in-flight map or the ring buffer.
    assert_eq!(delta(&baseline, &after, Stat::Parsed), 0);
    assert_eq!(delta(&baseline, &after, Stat::InflightInserted), 0);
    assert_eq!(delta(&baseline, &after, Stat::InflightReplaced), 0);
    assert_eq!(delta(&baseline, &after, Stat::Matched), 0);
    assert_eq!(delta(&baseline, &after, Stat::UnmatchedResponses), 0);
    assert_eq!(inst.dp().nodes().expect("nodes").len(), nodes_before);
}

/// What a fuzz case must do besides passing the packet and counting it as seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Counted as malformed, and nothing else.
    Malformed,
    /// Counted as non-polling, and nothing else.
    NonPolling,
    /// Anything but malformed (a well-formed packet).
    NotMalformed,
    /// At most one outcome.
    Any,
}

/// Where the layers of a valid frame start.
struct Layout {
    /// Offset of the innermost ethertype.
    ethertype_off: usize,
    l3_off: usize,
    v6: bool,
    /// Offset of the UDP header when the frame is UDP (and not a non-first fragment).
    udp_off: Option<usize>,
}

/// The transport protocol of a valid frame, or None for a non-first fragment.
fn l4_proto(ip: &[u8]) -> Option<u8> {
    if ip[0] >> 4 == 4 {
        let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff;
        return (frag == 0).then_some(ip[9]);
    }
    let (mut next, mut off) = (ip[6], 40);
    loop {
        match next {
            0 | 43 | 60 => {
                let len = 8 + 8 * usize::from(ip[off + 1]);
                next = ip[off];
                off += len;
            }
            44 => {
                if u16::from_be_bytes([ip[off + 2], ip[off + 3]]) & 0xfff8 != 0 {
                    return None;
                }
                next = ip[off];
                off += 8;
            }
            p => return Some(p),
        }
    }
}

fn layout(v: &Valid) -> Layout {
    let f = &v.frame;
    let ip = ip_bytes(f);
    let l3_off = f.len() - ip.len();
    Layout {
        ethertype_off: l3_off - 2,
        l3_off,
        v6: ip[0] >> 4 == 6,
        udp_off: (l4_proto(ip) == Some(IPPROTO_UDP)).then(|| f.len() - udp_payload(f).len() - 8),
    }
}

/// Content offset and length of the BER TLV at `off`, and the offset of its first length byte.
fn tlv(f: &[u8], off: usize) -> (usize, usize, usize) {
    let b = &f[off..];
    let (_, content, rest) = ber_read(b).expect("valid BER in a valid packet");
    (
        off + b.len() - rest.len() - content.len(),
        content.len(),
        off + 1,
    )
}

/// The header TLVs the kernel parses in an SNMP message, as (tag offset, limit): the TLV must
/// end by `limit`.
fn snmp_tlvs(f: &[u8]) -> Vec<(usize, usize)> {
    let start = f.len() - udp_payload(f).len();
    let end = f.len();
    let (msg, msg_len, _) = tlv(f, start);
    let msg_end = msg + msg_len;
    let (ver, ver_len, _) = tlv(f, msg);
    let mut out = vec![(start, end), (msg, msg_end)];
    let after_ver = ver + ver_len;
    if f[ver] == 3 {
        // v3: msgGlobalData and its msgID.
        let (global, _, _) = tlv(f, after_ver);
        out.push((after_ver, msg_end));
        out.push((global, global + tlv(f, after_ver).1));
    } else {
        let (comm, comm_len, _) = tlv(f, after_ver);
        let pdu_off = comm + comm_len;
        let (pdu, pdu_len, _) = tlv(f, pdu_off);
        out.push((after_ver, msg_end));
        out.push((pdu_off, msg_end));
        out.push((pdu, pdu + pdu_len));
    }
    out
}

/// Sets the BER length at `len_off` (keeping its form) to a value that makes the TLV end past
/// `limit`. None when the form cannot express such a length.
fn ber_length_past(
    f: &mut [u8],
    len_off: usize,
    content_off: usize,
    limit: usize,
    rng: &mut StdRng,
) -> Option<()> {
    let min = limit - content_off + 1;
    match f[len_off] {
        l if l < 0x80 => {
            if min > 0x7f {
                return None;
            }
            f[len_off] = rng.random_range(min..=0x7f) as u8;
        }
        0x81 => {
            if min > 0xff {
                return None;
            }
            f[len_off + 1] = rng.random_range(min..=0xff) as u8;
        }
        0x82 => {
            let n = rng.random_range(min..=0xffff) as u16;
            f[len_off + 1..len_off + 3].copy_from_slice(&n.to_be_bytes());
        }
        _ => return None,
    }
    Some(())
}

/// A BER mutation that makes the SNMP header malformed, or None if the one drawn does not
/// apply to this message.
fn ber_mutation(f: &[u8], rng: &mut StdRng) -> Option<(Vec<u8>, &'static str)> {
    let tlvs = snmp_tlvs(f);
    let mut m = f.to_vec();
    let (tag_off, limit) = tlvs[rng.random_range(0..tlvs.len())];
    let (content_off, _, len_off) = tlv(f, tag_off);
    let what = match rng.random_range(0..5) {
        0 => {
            ber_length_past(&mut m, len_off, content_off, limit, rng)?;
            "length past its enclosing end"
        }
        1 => {
            // Indefinite (0x80) and long forms of 5 or more bytes are not SNMP.
            m[len_off] = if rng.random() {
                0x80
            } else {
                rng.random_range(0x85..=0xff)
            };
            "unsupported length form"
        }
        2 if tag_off == tlvs[0].0 => {
            m[tag_off] = loop {
                let t: u8 = rng.random();
                if t != 0x30 {
                    break t;
                }
            };
            "message tag not SEQUENCE"
        }
        3 => {
            // The version INTEGER (first TLV inside the message) to a version that is not SNMP.
            let (ver, ver_len, ver_len_off) = tlv(f, tlvs[1].0);
            if ver_len != 1 || m[ver_len_off] != 1 {
                return None;
            }
            m[ver] = loop {
                let v: u8 = rng.random_range(0..0x80);
                if !matches!(v, 0 | 1 | 3) {
                    break v;
                }
            };
            "unknown version"
        }
        4 => {
            // The first INTEGER of the PDU (request-id) or of msgGlobalData (msgID) with a
            // length of 0 or above 5, still inside its enclosing TLV.
            let (int_tag, limit) = *tlvs.last()?;
            let (int_content, _, int_len_off) = tlv(f, int_tag);
            if f[int_tag] != 0x02 || f[int_len_off] >= 0x80 {
                return None;
            }
            let room = limit - int_content;
            m[int_len_off] = if rng.random() || room < 6 {
                0
            } else {
                rng.random_range(6..=room.min(0x7f)) as u8
            };
            "request-id/msgID length 0 or above 5"
        }
        _ => return None,
    };
    Some((m, what))
}

struct FuzzCase {
    what: &'static str,
    prog: &'static str,
    pkt: Vec<u8>,
    expect: Expect,
}

fn random_prog(rng: &mut StdRng) -> &'static str {
    if rng.random() {
        PROG_INGRESS
    } else {
        PROG_EGRESS
    }
}

fn fuzz_case(valids: &[Valid], rng: &mut StdRng) -> FuzzCase {
    let v = &valids[rng.random_range(0..valids.len())];
    let lay = layout(v);
    let f = &v.frame;
    let pick = rng.random_range(0..100);
    let case = |what, prog, pkt, expect| FuzzCase {
        what,
        prog,
        pkt,
        expect,
    };
    match pick {
        0..10 => {
            let n = rng.random_range(ETH_HLEN..=300);
            let mut pkt: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            // Two in three behind an IPv4 or IPv6 ethertype and version, so that the random
            // bytes reach the IP and transport parsers.
            let what = match rng.random_range(0..3) {
                0 => "random bytes",
                1 => {
                    pkt[12..14].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
                    if n > ETH_HLEN {
                        pkt[ETH_HLEN] = 0x40 | (pkt[ETH_HLEN] & 0x0f);
                    }
                    "random bytes after IPv4 ethertype"
                }
                _ => {
                    pkt[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
                    if n > ETH_HLEN {
                        pkt[ETH_HLEN] = 0x60 | (pkt[ETH_HLEN] & 0x0f);
                    }
                    "random bytes after IPv6 ethertype"
                }
            };
            case(what, random_prog(rng), pkt, Expect::Any)
        }
        10..40 => {
            let prog = if rng.random() {
                v.prog
            } else {
                random_prog(rng)
            };
            case("random flips", prog, mutate(f, rng), Expect::Any)
        }
        40..48 => {
            let n = rng.random_range(ETH_HLEN..f.len());
            case(
                "truncated",
                random_prog(rng),
                f[..n].to_vec(),
                Expect::Malformed,
            )
        }
        48..56 => {
            // IPv4 total length or IPv6 payload length.
            let mut m = f.clone();
            let n: u16 = rng.random();
            let present = f.len() - lay.l3_off;
            let expect = if lay.v6 {
                m[lay.l3_off + 4..lay.l3_off + 6].copy_from_slice(&n.to_be_bytes());
                if 40 + usize::from(n) > present {
                    Expect::Malformed
                } else {
                    Expect::Any
                }
            } else {
                m[lay.l3_off + 2..lay.l3_off + 4].copy_from_slice(&n.to_be_bytes());
                let ihl = usize::from(f[lay.l3_off] & 0x0f) * 4;
                if usize::from(n) > present || usize::from(n) < ihl {
                    Expect::Malformed
                } else {
                    Expect::Any
                }
            };
            case("random IP length", random_prog(rng), m, expect)
        }
        56..62 if !lay.v6 => {
            let mut m = f.clone();
            let ihl: u8 = rng.random_range(0..16);
            m[lay.l3_off] = 0x40 | ihl;
            let tot = usize::from(u16::from_be_bytes([f[lay.l3_off + 2], f[lay.l3_off + 3]]));
            let expect = if ihl < 5 || usize::from(ihl) * 4 > tot {
                Expect::Malformed
            } else {
                Expect::Any
            };
            case("random IHL", random_prog(rng), m, expect)
        }
        56..67 => {
            // IP version nibble that does not match the ethertype.
            let mut m = f.clone();
            let want = if lay.v6 { 6 } else { 4 };
            let ver = loop {
                let x: u8 = rng.random_range(0..16);
                if x != want {
                    break x;
                }
            };
            m[lay.l3_off] = (ver << 4) | (f[lay.l3_off] & 0x0f);
            case("wrong IP version", random_prog(rng), m, Expect::Malformed)
        }
        67..74 => {
            let mut m = f.clone();
            let et: u16 = rng.random();
            m[lay.ethertype_off..lay.ethertype_off + 2].copy_from_slice(&et.to_be_bytes());
            let expect = if matches!(et, 0x0800 | 0x86dd | 0x8100 | 0x88a8) {
                Expect::Any
            } else {
                Expect::NonPolling
            };
            case("random ethertype", random_prog(rng), m, expect)
        }
        74..80 => {
            // A VLAN tag with a random TCI in front of the frame's own tags: still well-formed
            // while the frame had at most one tag.
            let tags = (lay.ethertype_off - 12) / 4;
            let tpid: u16 = if rng.random() { 0x8100 } else { 0x88a8 };
            let tci: u16 = rng.random();
            let mut m = f[..12].to_vec();
            m.extend_from_slice(&tpid.to_be_bytes());
            m.extend_from_slice(&tci.to_be_bytes());
            m.extend_from_slice(&f[12..]);
            let expect = if tags < 2 {
                Expect::NotMalformed
            } else {
                Expect::NonPolling
            };
            case("random VLAN tag", random_prog(rng), m, expect)
        }
        80..88 if lay.udp_off.is_some() => {
            let off = lay.udp_off.unwrap_or_default();
            let mut m = f.clone();
            let n: u16 = rng.random();
            m[off + 4..off + 6].copy_from_slice(&n.to_be_bytes());
            let ulen = f.len() - off;
            let expect = if n < 8 || usize::from(n) > ulen {
                Expect::Malformed
            } else {
                Expect::Any
            };
            case("random UDP length", random_prog(rng), m, expect)
        }
        _ if matches!(v.kind, Kind::SnmpRequest | Kind::SnmpResponse) => {
            match ber_mutation(f, rng) {
                Some((m, what)) => case(what, v.prog, m, Expect::Malformed),
                None => case("random flips", v.prog, mutate(f, rng), Expect::Any),
            }
        }
        _ => case(
            "random flips",
            random_prog(rng),
            mutate(f, rng),
            Expect::Any,
        ),
    }
}

fn prefix_contains(prefix: &str, addr: IpAddr) -> bool {
    let (net, len) = prefix.split_once('/').expect("CIDR");
    let len: u32 = len.parse().expect("prefix length");
    match (net.parse::<IpAddr>().expect("address"), addr) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

fn node_addr(k: &NodeKey) -> IpAddr {
    let a = Ipv6Addr::from(k.addr);
    match a.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(a),
    }
}

fn monitored(k: &NodeKey) -> bool {
    let a = node_addr(k);
    k.vlan == 0 && (prefix_contains(MONITORED_V4, a) || prefix_contains(MONITORED_V6, a))
}

/// Reads every ring-buffer record, checking each; returns how many there were.
fn drain_ring(rb: &mut RingBuf<MapData>) -> u64 {
    let mut n = 0;
    while let Some(item) = rb.next() {
        assert!(item.len() >= std::mem::size_of::<RingRecord>());
        // SAFETY: the record is at least a RingRecord long and RingRecord is plain data.
        let rec: RingRecord = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
        let src = NodeKey::new(rec.src, rec.vlan);
        assert!(monitored(&src), "ring record from {:?}", node_addr(&src));
        assert!(
            rec.kind == RingKind::Trap as u8 || rec.kind == RingKind::Syslog as u8,
            "ring record kind {}",
            rec.kind
        );
        assert!(rec.dst_port == TRAP_PORT || rec.dst_port == SYSLOG_PORT);
        assert!(
            usize::from(rec.cap_len) <= SNAP_LEN && rec.cap_len <= rec.orig_len,
            "cap_len {} orig_len {}",
            rec.cap_len,
            rec.orig_len
        );
        assert_eq!(rec.tenant, DEFAULT_TENANT);
        n += 1;
    }
    n
}

#[test]
fn random_and_mutated_packets_are_passed_and_counted() {
    if !privileged("random_and_mutated_packets_are_passed_and_counted") {
        return;
    }
    let seed = std::env::var("OPHA_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    println!("fuzz seed {seed} (replay with OPHA_FUZZ_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let inst = TestInstance::configured("fuzz").expect("load and configure");
    let pin_dir = inst.config().pin_dir();
    let stats = StatsReader::open(&pin_dir);
    let mut ring = RingBuf::try_from(Map::RingBuf(
        MapData::from_pin(pin_dir.join(MAP_EVENTS)).expect("open the ring buffer pin"),
    ))
    .expect("ring buffer");
    let valids = valid_packets();
    let start = stats.read();
    let mut per_kind: std::collections::BTreeMap<(&str, &str), (u64, u64)> = Default::default();
    let (mut silent, mut records) = (0u64, 0u64);
    let (mut i, mut refused) = (0usize, 0u64);
    while i < FUZZ_PACKETS {
        let c = fuzz_case(&valids, &mut rng);
        let before = stats.read();
        if run(&inst, c.prog, &c.pkt) == Ran::Refused {
            assert_eq!(stats.read(), before, "a refused run counted something");
            refused += 1;
            continue;
        }
        i += 1;
        let after = stats.read();
        let ctx = || {
            format!(
                "case {i} ({}, {:?}, {}): {}",
                c.what,
                c.expect,
                c.prog,
                hex(&c.pkt)
            )
        };
        assert_eq!(delta(&before, &after, Stat::PacketsSeen), 1, "{}", ctx());
        let outcomes: Vec<(&str, u64)> = OUTCOMES
            .iter()
            .map(|&s| (s.name(), delta(&before, &after, s)))
            .filter(|&(_, d)| d != 0)
            .collect();
        let total: u64 = outcomes.iter().map(|(_, d)| d).sum();
        assert!(total <= 1, "{}: several outcomes {outcomes:?}", ctx());
        let malformed = delta(&before, &after, Stat::Malformed);
        match c.expect {
            Expect::Malformed => assert!(
                malformed == 1 && total == 1,
                "{}: expected malformed only, got {outcomes:?}",
                ctx()
            ),
            Expect::NonPolling => assert!(
                delta(&before, &after, Stat::NonPolling) == 1 && total == 1,
                "{}: expected non_polling only, got {outcomes:?}",
                ctx()
            ),
            Expect::NotMalformed => {
                assert_eq!(
                    malformed,
                    0,
                    "{}: well-formed packet counted malformed",
                    ctx()
                )
            }
            Expect::Any => {}
        }
        if total == 0 {
            silent += 1;
        }
        let e = per_kind.entry((c.what, c.prog)).or_default();
        e.0 += 1;
        e.1 += malformed;
        if i % 1000 == 999 {
            records += drain_ring(&mut ring);
        }
    }
    records += drain_ring(&mut ring);
    let end = stats.read();
    println!("{refused} more packets were refused by test-run itself (not counted above)");
    for ((what, prog), (n, malformed)) in &per_kind {
        println!("  {what:<40} {prog:<13} {n:>7} cases, {malformed:>7} malformed");
    }
    let d = |s| delta(&start, &end, s);
    println!(
        "{FUZZ_PACKETS} packets: malformed {}, non_polling {}, outside_prefix {}, fragments {}, \
         traps {}, syslog {}, ringbuf drops {}, icmp errors {}, matched {}, parsed {}; \
         {records} ring records checked",
        d(Stat::Malformed),
        d(Stat::NonPolling),
        d(Stat::OutsidePrefix),
        d(Stat::Fragments),
        d(Stat::TrapsCopied),
        d(Stat::SyslogCopied),
        d(Stat::RingbufDrops),
        d(Stat::IcmpErrors),
        d(Stat::Matched),
        d(Stat::Parsed),
    );
    assert_eq!(d(Stat::PacketsSeen), FUZZ_PACKETS as u64);
    assert_eq!(
        records,
        d(Stat::TrapsCopied) + d(Stat::SyslogCopied),
        "every copied trap/syslog is in the ring buffer"
    );
    assert_eq!(d(Stat::InflightInsertFailed), 0);
    // Mutations never create nodes outside the monitored prefixes (or on another VLAN), and
    // every node and in-flight request belongs to one.
    let nodes = inst.dp().nodes().expect("nodes");
    let mut counted = 0u64;
    for n in &nodes {
        assert!(
            monitored(&n.key),
            "node {:?} vlan {} is not monitored",
            n.addr(),
            n.key.vlan
        );
        assert_eq!(n.counters.tenant, DEFAULT_TENANT);
        counted += n
            .counters
            .classes
            .iter()
            .map(|c| c.requests + c.responses)
            .sum::<u64>();
    }
    assert!(
        counted <= silent,
        "{counted} requests+responses counted on nodes, but only {silent} packets ended without \
         another outcome"
    );
    for (k, _) in inst.dp().inflight().expect("in-flight") {
        assert!(
            monitored(&k.node),
            "in-flight request to {:?}",
            node_addr(&k.node)
        );
    }
    println!(
        "{} nodes, {counted} requests+responses, {silent} packets without another outcome",
        nodes.len()
    );
}
