//! Traps and syslog copied to userspace through a ring buffer.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes},
    macros::map,
    maps::RingBuf,
    programs::TcContext,
};
use opha_common::{
    node::NodeKey,
    ports::SNAP_LEN,
    ringbuf::{RingKind, RingRecord},
    stats::Stat,
};

use super::stats::count;

#[map]
pub static OPHA_EVENTS: RingBuf = RingBuf::pinned(4 << 20, 0);

/// Copies `payload_len` bytes (cut at `snap_len`) from `payload_off` with metadata.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn copy(
    ctx: &TcContext,
    kind: RingKind,
    src: &NodeKey,
    tenant: u32,
    src_port: u16,
    dst_port: u16,
    payload_off: u32,
    payload_len: u32,
    snap_len: u32,
) {
    let Some(mut entry) = OPHA_EVENTS.reserve::<RingRecord>(0) else {
        count(Stat::RingbufDrops);
        return;
    };
    let rec = entry.as_mut_ptr();
    let mut cap = payload_len;
    if cap > snap_len {
        cap = snap_len;
    }
    // Bound the length for the verifier: 1..=SNAP_LEN.
    let cap = cap & 0x3ff;
    unsafe {
        (*rec).ts_ns = bpf_ktime_get_ns();
        (*rec).ifindex = (*ctx.skb.skb).ifindex;
        (*rec).tenant = tenant;
        (*rec).src = src.addr;
        (*rec).vlan = src.vlan;
        (*rec).src_port = src_port;
        (*rec).dst_port = dst_port;
        (*rec).kind = kind as u8;
        (*rec)._pad = 0;
        (*rec).orig_len = payload_len as u16;
        (*rec)._pad2 = 0;
        let mut copied = 0u32;
        if cap > 0 && cap <= SNAP_LEN as u32 {
            let r = bpf_skb_load_bytes(
                ctx.skb.skb as *const _,
                payload_off,
                (*rec).data.as_mut_ptr() as *mut _,
                cap,
            );
            if r == 0 {
                copied = cap;
            }
        }
        (*rec).cap_len = copied as u16;
    }
    entry.submit(0);
    count(match kind {
        RingKind::Trap => Stat::TrapsCopied,
        RingKind::Syslog => Stat::SyslogCopied,
    });
}
