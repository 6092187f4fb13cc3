//! Requests waiting for their response: the `OPHA_INFLIGHT` LRU hash.

use crate::node::NodeKey;

/// What identifies a request/response pair.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InflightKind {
    /// `port` 0, `id` = ICMP identifier << 16 | sequence.
    IcmpEcho = 0,
    /// SNMP v1/v2c: `port` = the poller's request source port, `id` = request-id.
    SnmpRequestId = 1,
    /// SNMP v3: `port` = the poller's request source port, `id` = msgID.
    SnmpMsgId = 2,
    /// TCP check: `port` = the service port, `id` = the poller's source port.
    TcpSyn = 3,
}

/// 32 bytes, 8-byte aligned (through NodeKey), no implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InflightKey {
    pub node: NodeKey,
    pub kind: u8,
    pub _pad: u8,
    pub port: u16,
    pub id: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InflightValue {
    /// `bpf_ktime_get_ns()` when the request left.
    pub sent_ns: u64,
}

crate::impl_pod!(InflightKey, InflightValue);
