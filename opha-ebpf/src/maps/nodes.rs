//! Per-node counters in a bounded per-CPU hash.

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    macros::map,
    maps::{Array, PerCpuHashMap},
};
use opha_common::{
    node::{NodeCounters, NodeKey},
    prefix::PrefixValue,
    stats::Stat,
};

use super::stats::count;

/// Not preallocated: memory follows the nodes actually seen (536 bytes per node per CPU), the
/// bound is max_entries.
#[map]
pub static OPHA_NODES: PerCpuHashMap<NodeKey, NodeCounters> =
    PerCpuHashMap::pinned(16384, BPF_F_NO_PREALLOC);

/// One all-zero value to insert new nodes from: NodeCounters is too large for the BPF stack.
/// Never written.
#[map]
static OPHA_ZERO_NODE: Array<NodeCounters> = Array::with_max_entries(1, 0);

/// This CPU's counters of `node`, created on first sight. None when the map is full (counted).
#[inline(always)]
pub fn counters(node: &NodeKey, prefix: &PrefixValue) -> Option<&'static mut NodeCounters> {
    let p = match OPHA_NODES.get_ptr_mut(node) {
        Some(p) => p,
        None => {
            let zero = OPHA_ZERO_NODE.get(0)?;
            // EEXIST means another CPU created it first: fine, look it up below.
            if let Err(e) = OPHA_NODES.insert(node, zero, BPF_NOEXIST as u64) {
                if e != -17 {
                    count(Stat::NodeMapFull);
                    return None;
                }
            }
            OPHA_NODES.get_ptr_mut(node)?
        }
    };
    let c = unsafe { &mut *p };
    c.tenant = prefix.tenant;
    c.prefix_flags = prefix.flags;
    Some(c)
}
