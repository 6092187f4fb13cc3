//! Per-node counters in a bounded per-CPU hash.

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    macros::map,
    maps::{Array, PerCpuHashMap},
};
use opha_common::{
    node::{NodeCounters, NodeKey},
    stats::Stat,
};

use super::{prefixes, stats::count};

/// Not preallocated: memory follows the nodes actually seen (544 bytes per node per CPU), the
/// bound is max_entries.
#[map]
pub static OPHA_NODES: PerCpuHashMap<NodeKey, NodeCounters> =
    PerCpuHashMap::pinned(16384, BPF_F_NO_PREALLOC);

/// One all-zero value to insert new nodes from: NodeCounters is too large for the BPF stack.
/// Never written.
#[map]
static OPHA_ZERO_NODE: Array<NodeCounters> = Array::with_max_entries(1, 0);

const EEXIST: i32 = -17;

/// This CPU's counters of a monitored node, created on first sight. None when the node is
/// outside the monitored prefixes or the map is full (both counted).
///
/// A known node whose cached tenant is from the current prefix generation skips the LPM
/// lookup: the common case costs one hash lookup.
#[inline(always)]
pub fn counters(node: &NodeKey, prefix_gen: u32) -> Option<&'static mut NodeCounters> {
    if let Some(p) = OPHA_NODES.get_ptr_mut(node) {
        let c = unsafe { &mut *p };
        if c.tenant != 0 && c.prefix_gen == prefix_gen {
            return Some(c);
        }
        let Some(prefix) = prefixes::lookup(node) else {
            // No longer monitored since the prefixes changed: its counters stay as they were.
            count(Stat::OutsidePrefix);
            return None;
        };
        c.tenant = prefix.tenant;
        c.prefix_flags = prefix.flags;
        c.prefix_gen = prefix_gen;
        return Some(c);
    }
    let Some(prefix) = prefixes::lookup(node) else {
        count(Stat::OutsidePrefix);
        return None;
    };
    let zero = OPHA_ZERO_NODE.get(0)?;
    // EEXIST means another CPU created it first: fine, look it up below.
    if let Err(e) = OPHA_NODES.insert(node, zero, BPF_NOEXIST as u64) {
        if e != EEXIST {
            count(Stat::NodeMapFull);
            return None;
        }
    }
    let c = unsafe { &mut *OPHA_NODES.get_ptr_mut(node)? };
    c.tenant = prefix.tenant;
    c.prefix_flags = prefix.flags;
    c.prefix_gen = prefix_gen;
    Some(c)
}
