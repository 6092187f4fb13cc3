//! Counters kept by userspace that must survive a sidecar restart like the kernel's own, so
//! they live in a pinned map beside them. The programs never touch it.

use aya_ebpf::{macros::map, maps::Array};
use opha_common::stats::USER_STAT_COUNT;

#[map]
pub static OPHA_USERSPACE: Array<u64> = Array::pinned(USER_STAT_COUNT, 0);
