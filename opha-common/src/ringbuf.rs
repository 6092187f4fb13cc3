//! Trap and syslog records: the `OPHA_EVENTS` ring buffer.

use crate::ports::SNAP_LEN;

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingKind {
    Trap = 1,
    Syslog = 2,
}

/// One trap or syslog datagram, copied with metadata. The payload is the UDP payload, cut at
/// `cap_len` bytes; `orig_len` is its full length.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingRecord {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    pub ifindex: u32,
    pub tenant: u32,
    /// Sender address (IPv4 mapped into IPv6), network byte order.
    pub src: [u8; 16],
    pub vlan: u16,
    pub src_port: u16,
    pub dst_port: u16,
    pub kind: u8,
    pub _pad: u8,
    pub orig_len: u16,
    pub cap_len: u16,
    pub _pad2: u32,
    pub data: [u8; SNAP_LEN],
}

impl RingRecord {
    pub fn payload(&self) -> &[u8] {
        let n = (self.cap_len as usize).min(SNAP_LEN);
        &self.data[..n]
    }
}
