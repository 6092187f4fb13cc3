//! What both programs do with a packet: parse it, decide whether it is a request to or a
//! response from a monitored node, count it, and match it for RTT.

use aya_ebpf::{
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    programs::TcContext,
};
use opha_common::{
    inflight::{InflightKey, InflightKind},
    node::{ClassCounters, NodeKey, ProtoClass, rtt_bucket},
    ports::PortConfig,
    prefix::PrefixValue,
    ringbuf::RingKind,
    stats::Stat,
};

use crate::{
    maps::{config, events, inflight, nodes, prefixes, stats::count},
    parse::{
        headers::{
            ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, L3, Skip,
            parse_ipv4, parse_ipv6, parse_l2,
        },
        packet::Packet,
        snmp,
    },
};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Arriving at the poller: responses, traps, syslog.
    Ingress,
    /// Leaving the poller: requests.
    Egress,
}

/// Bytes of headers wanted in the linear part of the skb up front (Ethernet, VLANs, IP and the
/// transport header). Kept small so that paged TCP segments are not linearised for nothing.
const LINEAR_HEADERS: u32 = 64;
/// Bytes wanted linear for an SNMP message, pulled only on the SNMP path when needed.
const LINEAR_SNMP: usize = 512;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

#[inline(always)]
pub fn classify(ctx: &TcContext, dir: Direction) -> Result<(), ()> {
    count(Stat::PacketsSeen);
    let Some(ports) = config::ports() else {
        return Ok(());
    };
    if ports.configured == 0 {
        return Ok(());
    }
    let skb_len = ctx.len();
    // Headers normally sit in the linear part; pull them in when a driver left them paged.
    let want = if skb_len < LINEAR_HEADERS {
        skb_len
    } else {
        LINEAR_HEADERS
    };
    if ctx.data() + want as usize > ctx.data_end() {
        let _ = ctx.pull_data(want);
    }
    let pkt = Packet::new(ctx);
    match parse_and_count(ctx, &pkt, dir, ports, skb_len) {
        Ok(()) => {}
        Err(Skip::Malformed) => count(Stat::Malformed),
        Err(Skip::NotPolling) => count(Stat::NonPolling),
        Err(Skip::Fragment) => count(Stat::Fragments),
        Err(Skip::Counted) => {}
    }
    Ok(())
}

#[inline(always)]
fn skb_vlan(ctx: &TcContext) -> Option<u16> {
    let skb = ctx.skb.skb;
    let present = unsafe { (*skb).vlan_present };
    if present != 0 {
        Some(unsafe { (*skb).vlan_tci } as u16 & 0x0fff)
    } else {
        None
    }
}

#[inline(always)]
fn parse_and_count(
    ctx: &TcContext,
    pkt: &Packet,
    dir: Direction,
    ports: &PortConfig,
    skb_len: u32,
) -> Result<(), Skip> {
    let l2 = parse_l2(pkt, skb_vlan(ctx))?;
    let pkt_len = skb_len as usize;
    let l3 = match l2.ethertype {
        ETH_P_IP => parse_ipv4(pkt, l2.l3_off, pkt_len)?,
        ETH_P_IPV6 => parse_ipv6(pkt, l2.l3_off, pkt_len)?,
        _ => return Err(Skip::NotPolling),
    };
    match l3.proto {
        IPPROTO_UDP => udp(ctx, pkt, dir, ports, &l3, l2.vlan, skb_len),
        IPPROTO_TCP => tcp(pkt, dir, ports, &l3, l2.vlan, skb_len),
        IPPROTO_ICMP => icmp(pkt, dir, ports, &l3, l2.vlan, skb_len, false),
        IPPROTO_ICMPV6 => icmp(pkt, dir, ports, &l3, l2.vlan, skb_len, true),
        _ => Err(Skip::NotPolling),
    }
}

/// The tenant's prefix of a node, or None (counted as outside the monitored prefixes).
#[inline(always)]
fn monitored(node: &NodeKey) -> Option<&'static PrefixValue> {
    let p = prefixes::lookup(node);
    if p.is_none() {
        count(Stat::OutsidePrefix);
    }
    p
}

#[inline(always)]
fn class_of(
    node: &NodeKey,
    class: ProtoClass,
    ports: &PortConfig,
) -> Option<&'static mut ClassCounters> {
    let c = nodes::counters(node, ports.prefix_gen)?;
    let idx = class as usize;
    if idx >= c.classes.len() {
        return None;
    }
    Some(&mut c.classes[idx])
}

#[inline(always)]
fn request(c: &mut ClassCounters, bytes: u32) {
    c.requests += 1;
    c.bytes_out += bytes as u64;
}

/// A response from the node: counted as received; RTT only when it matches a request.
///
/// The precise clock costs ~30 ns in a VM (TSC read), so it is read only when there is an RTT
/// to compute; an unmatched response stamps `last_response_ns` with the coarse monotonic clock
/// (same clock, jiffy resolution), which is all that field needs.
#[inline(always)]
fn response(c: &mut ClassCounters, bytes: u32, key: &InflightKey) {
    c.responses += 1;
    c.bytes_in += bytes as u64;
    let Some(sent) = inflight::take(key) else {
        // The coarse clock can lag a precise stamp written a moment ago: never go back.
        let coarse = unsafe { bpf_ktime_get_coarse_ns() };
        if coarse > c.last_response_ns {
            c.last_response_ns = coarse;
        }
        return;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    if now > c.last_response_ns {
        c.last_response_ns = now;
    }
    let rtt = now.saturating_sub(sent);
    c.rtt_sum_ns += rtt;
    c.rtt_count += 1;
    if c.rtt_min_ns == 0 || rtt < c.rtt_min_ns {
        c.rtt_min_ns = rtt;
    }
    if rtt > c.rtt_max_ns {
        c.rtt_max_ns = rtt;
    }
    let b = rtt_bucket(rtt);
    if b < c.rtt_hist.len() {
        c.rtt_hist[b] += 1;
    }
}

#[inline(always)]
fn udp(
    ctx: &TcContext,
    pkt: &Packet,
    dir: Direction,
    ports: &PortConfig,
    l3: &L3,
    vlan: u16,
    skb_len: u32,
) -> Result<(), Skip> {
    let off = l3.l4_off;
    let sport = pkt.be16(off).ok_or(Skip::Malformed)?;
    let dport = pkt.be16(off + 2).ok_or(Skip::Malformed)?;
    let ulen = pkt.be16(off + 4).ok_or(Skip::Malformed)? as usize;
    if ulen < 8 || ulen > l3.l4_len {
        return Err(Skip::Malformed);
    }
    count(Stat::Parsed);
    let payload = off + 8;
    let payload_end = off + ulen;
    match dir {
        Direction::Egress if dport == ports.snmp_port => {
            let pkt = &linear_snmp(ctx, pkt, payload_end);
            let h = snmp::parse(pkt, payload, payload_end).ok_or(Skip::Malformed)?;
            match h.pdu {
                snmp::PDU_GET
                | snmp::PDU_GETNEXT
                | snmp::PDU_SET
                | snmp::PDU_GETBULK
                | snmp::PDU_ENCRYPTED => {}
                _ => return Err(Skip::NotPolling),
            }
            let node = NodeKey::new(l3.dst.0, vlan);
            let c = class_of(&node, ProtoClass::Snmp, ports).ok_or(Skip::Counted)?;
            request(c, skb_len);
            inflight::insert(&snmp_key(&node, &h, sport), unsafe { bpf_ktime_get_ns() });
            Ok(())
        }
        // Before the SNMP response arm: many agents send traps from port 161.
        Direction::Ingress if dport == ports.trap_port || dport == ports.syslog_port => {
            let kind = if dport == ports.trap_port {
                RingKind::Trap
            } else {
                RingKind::Syslog
            };
            let node = NodeKey::new(l3.src.0, vlan);
            let prefix = monitored(&node).ok_or(Skip::Counted)?;
            let plen = (payload_end - payload) as u32;
            // Offset of the payload from the start of the packet, for bpf_skb_load_bytes.
            events::copy(
                ctx,
                kind,
                &node,
                prefix.tenant,
                sport,
                dport,
                payload as u32,
                plen,
                ports.snap_len,
            );
            Ok(())
        }
        Direction::Ingress if sport == ports.snmp_port => {
            let pkt = &linear_snmp(ctx, pkt, payload_end);
            let h = snmp::parse(pkt, payload, payload_end).ok_or(Skip::Malformed)?;
            match h.pdu {
                snmp::PDU_RESPONSE | snmp::PDU_REPORT | snmp::PDU_ENCRYPTED => {}
                _ => return Err(Skip::NotPolling),
            }
            let node = NodeKey::new(l3.src.0, vlan);
            let c = class_of(&node, ProtoClass::Snmp, ports).ok_or(Skip::Counted)?;
            if h.pdu == snmp::PDU_RESPONSE && h.error_status != 0 {
                c.errors += 1;
            }
            response(c, skb_len, &snmp_key(&node, &h, dport));
            Ok(())
        }
        _ => Err(Skip::NotPolling),
    }
}

/// The packet with its SNMP message in the linear part (up to LINEAR_SNMP bytes), pulling it
/// in only when a driver left it paged. Pulling invalidates packet pointers, hence a new view.
#[inline(always)]
fn linear_snmp(ctx: &TcContext, pkt: &Packet, payload_end: usize) -> Packet {
    let want = if payload_end > LINEAR_SNMP {
        LINEAR_SNMP
    } else {
        payload_end
    };
    if !pkt.has(want) {
        let _ = ctx.pull_data(want as u32);
    }
    Packet::new(ctx)
}

#[inline(always)]
fn snmp_key(node: &NodeKey, h: &snmp::SnmpHeader, poller_port: u16) -> InflightKey {
    InflightKey {
        node: *node,
        kind: if h.version == 3 {
            InflightKind::SnmpMsgId as u8
        } else {
            InflightKind::SnmpRequestId as u8
        },
        _pad: 0,
        port: poller_port,
        id: h.id,
    }
}

#[inline(always)]
fn tcp(
    pkt: &Packet,
    dir: Direction,
    ports: &PortConfig,
    l3: &L3,
    vlan: u16,
    skb_len: u32,
) -> Result<(), Skip> {
    let off = l3.l4_off;
    let sport = pkt.be16(off).ok_or(Skip::Malformed)?;
    let dport = pkt.be16(off + 2).ok_or(Skip::Malformed)?;
    let flags = pkt.u8(off + 13).ok_or(Skip::Malformed)?;
    if l3.l4_len < 20 {
        return Err(Skip::Malformed);
    }
    count(Stat::Parsed);
    match dir {
        Direction::Egress if config::is_tcp_check_port(dport) => {
            let node = NodeKey::new(l3.dst.0, vlan);
            let c = class_of(&node, ProtoClass::TcpCheck, ports).ok_or(Skip::Counted)?;
            if flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN {
                request(c, skb_len);
                let key = tcp_key(&node, dport, sport);
                inflight::insert(&key, unsafe { bpf_ktime_get_ns() });
            } else {
                // The rest of the check's connection counts as its traffic.
                c.bytes_out += skb_len as u64;
            }
            Ok(())
        }
        Direction::Ingress if config::is_tcp_check_port(sport) => {
            let node = NodeKey::new(l3.src.0, vlan);
            let c = class_of(&node, ProtoClass::TcpCheck, ports).ok_or(Skip::Counted)?;
            let syn_ack = flags & (TCP_SYN | TCP_ACK) == (TCP_SYN | TCP_ACK);
            let rst = flags & TCP_RST != 0;
            if syn_ack || rst {
                if rst {
                    c.errors += 1;
                }
                response(c, skb_len, &tcp_key(&node, sport, dport));
            } else {
                c.bytes_in += skb_len as u64;
            }
            Ok(())
        }
        _ => Err(Skip::NotPolling),
    }
}

#[inline(always)]
fn tcp_key(node: &NodeKey, service_port: u16, poller_port: u16) -> InflightKey {
    InflightKey {
        node: *node,
        kind: InflightKind::TcpSyn as u8,
        _pad: 0,
        port: service_port,
        id: poller_port as u32,
    }
}

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_ECHO: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_TIME_EXCEEDED: u8 = 3;
const ICMPV6_ECHO: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

#[inline(always)]
fn icmp(
    pkt: &Packet,
    dir: Direction,
    ports: &PortConfig,
    l3: &L3,
    vlan: u16,
    skb_len: u32,
    v6: bool,
) -> Result<(), Skip> {
    let off = l3.l4_off;
    if l3.l4_len < 8 {
        return Err(Skip::Malformed);
    }
    let ty = pkt.u8(off).ok_or(Skip::Malformed)?;
    let echo_id = pkt.be16(off + 4).ok_or(Skip::Malformed)?;
    let echo_seq = pkt.be16(off + 6).ok_or(Skip::Malformed)?;
    count(Stat::Parsed);
    let (echo, reply, unreach, exceeded) = if v6 {
        (
            ICMPV6_ECHO,
            ICMPV6_ECHO_REPLY,
            ICMPV6_DEST_UNREACH,
            ICMPV6_TIME_EXCEEDED,
        )
    } else {
        (
            ICMP_ECHO,
            ICMP_ECHO_REPLY,
            ICMP_DEST_UNREACH,
            ICMP_TIME_EXCEEDED,
        )
    };
    let key_id = (echo_id as u32) << 16 | echo_seq as u32;
    match dir {
        Direction::Egress if ty == echo => {
            let node = NodeKey::new(l3.dst.0, vlan);
            let c = class_of(&node, ProtoClass::IcmpEcho, ports).ok_or(Skip::Counted)?;
            request(c, skb_len);
            inflight::insert(&icmp_key(&node, key_id), unsafe { bpf_ktime_get_ns() });
            Ok(())
        }
        Direction::Ingress if ty == reply => {
            let node = NodeKey::new(l3.src.0, vlan);
            let c = class_of(&node, ProtoClass::IcmpEcho, ports).ok_or(Skip::Counted)?;
            response(c, skb_len, &icmp_key(&node, key_id));
            Ok(())
        }
        Direction::Ingress if ty == unreach || ty == exceeded => {
            icmp_error(pkt, ports, off + 8, vlan, skb_len, v6)
        }
        _ => Err(Skip::NotPolling),
    }
}

#[inline(always)]
fn icmp_key(node: &NodeKey, id: u32) -> InflightKey {
    InflightKey {
        node: *node,
        kind: InflightKind::IcmpEcho as u8,
        _pad: 0,
        port: 0,
        id,
    }
}

/// An ICMP error quotes the start of the packet it is about: when that was one of our requests,
/// the error counts against the node it was sent to. Its in-flight entry is left to time out.
#[inline(always)]
fn icmp_error(
    pkt: &Packet,
    ports: &PortConfig,
    inner: usize,
    vlan: u16,
    skb_len: u32,
    v6: bool,
) -> Result<(), Skip> {
    let (dst, proto, l4) = if v6 {
        let next = pkt.u8(inner + 6).ok_or(Skip::Malformed)?;
        let dst = pkt.bytes::<16>(inner + 24).ok_or(Skip::Malformed)?;
        (dst, next, inner + 40)
    } else {
        let vihl = pkt.u8(inner).ok_or(Skip::Malformed)?;
        let ihl = ((vihl & 0x0f) as usize) * 4;
        if vihl >> 4 != 4 || ihl < 20 {
            return Err(Skip::Malformed);
        }
        let proto = pkt.u8(inner + 9).ok_or(Skip::Malformed)?;
        let dst = pkt.bytes::<4>(inner + 16).ok_or(Skip::Malformed)?;
        (opha_common::node::v4_mapped(dst), proto, inner + ihl)
    };
    let class = match proto {
        IPPROTO_ICMP | IPPROTO_ICMPV6 => ProtoClass::IcmpEcho,
        IPPROTO_UDP if pkt.be16(l4 + 2).ok_or(Skip::Malformed)? == ports.snmp_port => {
            ProtoClass::Snmp
        }
        IPPROTO_TCP if config::is_tcp_check_port(pkt.be16(l4 + 2).ok_or(Skip::Malformed)?) => {
            ProtoClass::TcpCheck
        }
        _ => return Err(Skip::NotPolling),
    };
    let node = NodeKey::new(dst, vlan);
    let c = class_of(&node, class, ports).ok_or(Skip::Counted)?;
    c.errors += 1;
    c.bytes_in += skb_len as u64;
    count(Stat::IcmpErrors);
    Ok(())
}
