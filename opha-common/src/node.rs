//! Per-node counters: the `OPHA_NODES` per-CPU hash.

/// Protocol classes counted per node.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtoClass {
    IcmpEcho = 0,
    Snmp = 1,
    TcpCheck = 2,
}

pub const PROTO_CLASSES: usize = 3;

impl ProtoClass {
    pub const ALL: [ProtoClass; PROTO_CLASSES] =
        [ProtoClass::IcmpEcho, ProtoClass::Snmp, ProtoClass::TcpCheck];

    pub const fn name(self) -> &'static str {
        match self {
            ProtoClass::IcmpEcho => "icmp",
            ProtoClass::Snmp => "snmp",
            ProtoClass::TcpCheck => "tcp",
        }
    }
}

/// Buckets of the RTT histogram. Bucket `i` counts RTTs in `[2^i, 2^(i+1))` microseconds;
/// bucket 0 also holds everything below 1 us, the last bucket everything from 2^23 us (~8.4 s).
pub const RTT_BUCKETS: usize = 24;

/// A monitored node: the device address (IPv4 mapped into IPv6, `::ffff:a.b.c.d`) on a VLAN
/// (0 when untagged). Two customers with the same private address on different VLANs are
/// different nodes.
///
/// 8-byte aligned, with the padding spelled out: the kernel programs then copy keys in words
/// rather than byte by byte, and no uninitialised padding byte can reach the map's hash.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeKey {
    /// Network byte order.
    pub addr: [u8; 16],
    pub vlan: u16,
    pub _pad: u16,
    pub _pad2: u32,
}

impl NodeKey {
    pub const fn new(addr: [u8; 16], vlan: u16) -> Self {
        Self {
            addr,
            vlan,
            _pad: 0,
            _pad2: 0,
        }
    }

    /// Maps an IPv4 address (network byte order) to `::ffff:a.b.c.d`.
    pub const fn v4(addr: [u8; 4], vlan: u16) -> Self {
        Self::new(v4_mapped(addr), vlan)
    }

    /// True when `addr` is an IPv4-mapped address.
    pub fn is_v4(&self) -> bool {
        self.addr[..10] == [0; 10] && self.addr[10] == 0xff && self.addr[11] == 0xff
    }
}

/// `::ffff:a.b.c.d` for an IPv4 address.
pub const fn v4_mapped(a: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

/// Counters of one protocol class of one node, on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassCounters {
    pub requests: u64,
    pub responses: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// SNMP error-status != 0, ICMP unreachable or time-exceeded about a request to the node,
    /// TCP RST from a service port.
    pub errors: u64,
    /// Sum, minimum and maximum of matched RTTs, in nanoseconds. `rtt_min_ns` is 0 while no
    /// RTT has been measured.
    pub rtt_sum_ns: u64,
    pub rtt_min_ns: u64,
    pub rtt_max_ns: u64,
    /// Number of RTT samples (matched request/response pairs).
    pub rtt_count: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the last response, 0 if none.
    pub last_response_ns: u64,
    /// Log2 histogram of RTTs (see `RTT_BUCKETS`). u32 per CPU keeps a node at 544 bytes per CPU.
    pub rtt_hist: [u32; RTT_BUCKETS],
}

/// Value of the per-node map on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeCounters {
    pub classes: [ClassCounters; PROTO_CLASSES],
    /// Tenant of the monitored prefix the node matched last.
    pub tenant: u32,
    /// Flags of that prefix.
    pub prefix_flags: u32,
    /// `PortConfig::prefix_gen` when `tenant` was looked up (per CPU).
    pub prefix_gen: u32,
    pub _pad: u32,
}

impl NodeCounters {
    pub fn class(&self, c: ProtoClass) -> &ClassCounters {
        &self.classes[c as usize]
    }

    /// Adds another CPU's counters: sums, min of non-zero minimums, max of maximums.
    pub fn merge(&mut self, other: &NodeCounters) {
        for (a, b) in self.classes.iter_mut().zip(other.classes.iter()) {
            a.requests += b.requests;
            a.responses += b.responses;
            a.bytes_out += b.bytes_out;
            a.bytes_in += b.bytes_in;
            a.errors += b.errors;
            a.rtt_sum_ns += b.rtt_sum_ns;
            a.rtt_count += b.rtt_count;
            if b.rtt_min_ns != 0 && (a.rtt_min_ns == 0 || b.rtt_min_ns < a.rtt_min_ns) {
                a.rtt_min_ns = b.rtt_min_ns;
            }
            if b.rtt_max_ns > a.rtt_max_ns {
                a.rtt_max_ns = b.rtt_max_ns;
            }
            if b.last_response_ns > a.last_response_ns {
                a.last_response_ns = b.last_response_ns;
            }
            for (x, y) in a.rtt_hist.iter_mut().zip(b.rtt_hist.iter()) {
                *x = x.wrapping_add(*y);
            }
        }
        // Tenant and flags are the same on every CPU unless the prefix map changed in between;
        // the non-zero one wins so that a CPU which never saw the node does not hide it.
        if other.tenant != 0 && other.prefix_gen >= self.prefix_gen {
            self.tenant = other.tenant;
            self.prefix_flags = other.prefix_flags;
            self.prefix_gen = other.prefix_gen;
        }
    }
}

/// Histogram bucket for an RTT in nanoseconds: `floor(log2(rtt_us))`, clamped.
#[inline(always)]
pub fn rtt_bucket(rtt_ns: u64) -> usize {
    let us = rtt_ns / 1000;
    let b = 63 - (us | 1).leading_zeros() as usize;
    if b >= RTT_BUCKETS { RTT_BUCKETS - 1 } else { b }
}

crate::impl_pod!(NodeKey, NodeCounters);
