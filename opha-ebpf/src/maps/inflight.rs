//! Requests in flight, waiting for their response: a bounded LRU shared by all CPUs (a response
//! may arrive on another CPU than its request left on). Per-CPU LRU lists
//! (BPF_F_NO_COMMON_LRU) avoid the global LRU lock on every insert; each CPU then evicts from
//! its own share of max_entries.

use aya_ebpf::{
    bindings::{BPF_F_NO_COMMON_LRU, BPF_NOEXIST},
    macros::map,
    maps::LruHashMap,
};
use opha_common::{
    inflight::{InflightKey, InflightValue},
    stats::Stat,
};

use super::stats::count;

#[map]
pub static OPHA_INFLIGHT: LruHashMap<InflightKey, InflightValue> =
    LruHashMap::pinned(65536, BPF_F_NO_COMMON_LRU);

/// Records a request. A retransmission with the same key restarts its clock in place.
#[inline(always)]
pub fn insert(key: &InflightKey, now: u64) {
    if let Some(v) = OPHA_INFLIGHT.get_ptr_mut(key) {
        unsafe { (*v).sent_ns = now };
        count(Stat::InflightReplaced);
        return;
    }
    let v = InflightValue { sent_ns: now };
    // EEXIST: the same request left on another CPU at the same moment; it is in flight.
    match OPHA_INFLIGHT.insert(key, &v, BPF_NOEXIST as u64) {
        Ok(()) => count(Stat::InflightInserted),
        Err(-17) => count(Stat::InflightReplaced),
        Err(_) => count(Stat::InflightInsertFailed),
    }
}

/// Takes the request a response answers: its send time, or None (counted as unmatched).
#[inline(always)]
pub fn take(key: &InflightKey) -> Option<u64> {
    let sent = match OPHA_INFLIGHT.get_ptr(key) {
        Some(v) => unsafe { (*v).sent_ns },
        None => {
            count(Stat::UnmatchedResponses);
            return None;
        }
    };
    // Losing a race with a duplicate response on another CPU means this one is the duplicate.
    if OPHA_INFLIGHT.remove(key).is_err() {
        count(Stat::UnmatchedResponses);
        return None;
    }
    count(Stat::Matched);
    Some(sent)
}
