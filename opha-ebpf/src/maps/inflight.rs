//! Requests in flight, waiting for their response: a bounded LRU shared by all CPUs (a response
//! may arrive on another CPU than its request left on).

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    macros::map,
    maps::LruHashMap,
};
use opha_common::{
    inflight::{InflightKey, InflightValue},
    stats::Stat,
};

use super::stats::count;

#[map]
pub static OPHA_INFLIGHT: LruHashMap<InflightKey, InflightValue> = LruHashMap::pinned(65536, 0);

/// Records a request. A retransmission with the same key restarts its clock.
#[inline(always)]
pub fn insert(key: &InflightKey, now: u64) {
    let v = InflightValue { sent_ns: now };
    match OPHA_INFLIGHT.insert(key, &v, BPF_NOEXIST as u64) {
        Ok(()) => count(Stat::InflightInserted),
        Err(_) => {
            if OPHA_INFLIGHT.insert(key, &v, BPF_ANY as u64).is_ok() {
                count(Stat::InflightReplaced);
            } else {
                count(Stat::InflightInsertFailed);
            }
        }
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
