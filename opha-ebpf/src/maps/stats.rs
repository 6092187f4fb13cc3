//! Global per-CPU statistics.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use opha_common::stats::{STAT_COUNT, Stat};

#[map]
pub static OPHA_STATS: PerCpuArray<u64> = PerCpuArray::pinned(STAT_COUNT, 0);

#[inline(always)]
pub fn count(stat: Stat) {
    if let Some(p) = OPHA_STATS.get_ptr_mut(stat as u32) {
        // Per-CPU slot: no other writer, no atomics needed.
        unsafe { *p += 1 };
    }
}
