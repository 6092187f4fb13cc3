//! RTT statistics of an interval from the kernel's log2 histogram.
//!
//! The kernel counts each matched RTT in bucket `floor(log2(rtt_us))` (`[2^i, 2^(i+1))` us;
//! bucket 0 also holds everything below 1 us, the last one everything above). Percentiles are
//! read from an hdrhistogram into which every bucket's count is recorded at the bucket's
//! **geometric midpoint** `2^(i + 0.5)` us: the estimate whose worst-case ratio to any value
//! in the bucket is smallest (at most sqrt(2) either way), where the arithmetic midpoint would
//! be off by up to 1.5x at the bottom of the bucket. They are then clamped into the interval's
//! `[min, max]`, which is exact at the extremes (e.g. when every sample is equal).
//!
//! The kernel's `rtt_min_ns`/`rtt_max_ns` are all-time values, not per snapshot. An interval's
//! maximum is exact when one of its snapshots raised the all-time maximum (or the counters are
//! new); otherwise it is estimated inside the interval's highest non-empty bucket, capped by
//! the all-time maximum. Likewise for the minimum. Average and sample count are exact.

use super::state::Accum;
use hdrhistogram::Histogram;
use opha_common::node::RTT_BUCKETS;

/// Lower and upper bound of bucket `i` in nanoseconds (upper exclusive; `u64::MAX` for the
/// last bucket).
pub fn bucket_bounds_ns(i: usize) -> (u64, u64) {
    let lo = if i == 0 { 0 } else { (1u64 << i) * 1000 };
    let hi = if i + 1 >= RTT_BUCKETS {
        u64::MAX
    } else {
        (1u64 << (i + 1)) * 1000
    };
    (lo, hi)
}

/// The value recorded for bucket `i`: `2^(i + 0.5)` microseconds, rounded.
pub fn bucket_midpoint_us(i: usize) -> u64 {
    (2f64.powf(i as f64 + 0.5)).round() as u64
}

/// Geometric middle of `[lo, hi]` nanoseconds (`lo` taken as at least 1 us).
fn geo_mid(lo: u64, hi: u64) -> u64 {
    let lo = lo.max(1000);
    let hi = hi.max(lo);
    ((lo as f64) * (hi as f64)).sqrt() as u64
}

/// The (min, max) RTT of an interval, in nanoseconds; see the module docs. `a.rtt_max_ns` is
/// the largest all-time maximum a tick of the interval set (0: none did), which is the
/// interval's maximum: any later, larger sample would have set a new one. Without one, the
/// maximum lies in the interval's highest non-empty bucket, at most the all-time maximum at
/// its end (`all_time.1`); the estimate is the geometric middle of that range. Likewise for
/// the minimum.
pub(crate) fn interval_extremes(a: &Accum, all_time: (u64, u64)) -> (u64, u64) {
    let (all_min, all_max) = all_time;
    let max = if a.rtt_max_ns != 0 {
        a.rtt_max_ns
    } else if let Some(b) = a.rtt_hist.iter().rposition(|&n| n > 0) {
        let (lo, hi) = bucket_bounds_ns(b);
        let hi = if all_max != 0 { hi.min(all_max) } else { hi };
        geo_mid(lo, hi)
    } else {
        all_max
    };
    let min = if a.rtt_min_ns != 0 {
        a.rtt_min_ns
    } else if let Some(b) = a.rtt_hist.iter().position(|&n| n > 0) {
        let (lo, hi) = bucket_bounds_ns(b);
        let lo = lo.max(all_min);
        geo_mid(lo, hi.saturating_sub(1).max(lo))
    } else {
        all_min
    };
    (min.min(max), max)
}

/// Percentile estimator; one per core, reused (its counts are cleared after each use).
pub(crate) struct Percentiles {
    hist: Histogram<u64>,
}

impl Percentiles {
    pub(crate) fn new() -> Self {
        // 1 us .. 2^25 us covers every midpoint. One significant figure: the histogram's own
        // quantisation (at most 1/16) stays far below the kernel buckets' factor of 2, and
        // its 336 counters (2.7 KB) are cheap to scan and clear 6,000 times an interval,
        // where two figures (2,432 counters) cost more than the rest of the interval.
        let hist = Histogram::new_with_bounds(1, 1 << 25, 1).expect("static histogram bounds");
        Self { hist }
    }

    /// (p50, p95, p99) in microseconds of the counts in `buckets`, or `None` when all are 0.
    pub(crate) fn compute(&mut self, buckets: &[u64; RTT_BUCKETS]) -> Option<[u64; 3]> {
        let mut any = false;
        for (i, &n) in buckets.iter().enumerate() {
            if n > 0 {
                self.hist.saturating_record_n(bucket_midpoint_us(i), n);
                any = true;
            }
        }
        if !any {
            return None;
        }
        let mut out = [0u64; 3];
        for (o, v) in out
            .iter_mut()
            .zip(self.hist.value_at_quantiles([0.5, 0.95, 0.99]))
        {
            *o = v;
        }
        self.hist.reset();
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opha_common::node::rtt_bucket;

    #[test]
    fn midpoints_sit_in_their_buckets() {
        for i in 1..RTT_BUCKETS {
            let (lo, hi) = bucket_bounds_ns(i);
            let m = bucket_midpoint_us(i) * 1000;
            assert!(m >= lo && m < hi, "bucket {i}");
            assert_eq!(rtt_bucket(m), i);
        }
    }

    #[test]
    fn extremes_exact_when_raised_else_bounded() {
        let mut a = Accum::default();
        a.rtt_hist[rtt_bucket(3_000_000)] = 1; // 3 ms -> bucket 11 (2048..4096 us)
        a.rtt_max_ns = 3_000_000;
        a.rtt_min_ns = 3_000_000;
        assert_eq!(
            interval_extremes(&a, (1_000, 3_000_000)),
            (3_000_000, 3_000_000)
        );
        // No raise in the interval; all-time max 9 ms: inside the bucket, below 4.096 ms.
        a.rtt_max_ns = 0;
        a.rtt_min_ns = 0;
        let (min, max) = interval_extremes(&a, (1_000, 9_000_000));
        assert!((2_048_000..4_096_000).contains(&max), "{max}");
        assert!((2_048_000..4_096_000).contains(&min), "{min}");
        // Capped by the all-time max when that is inside the bucket.
        let (_, max) = interval_extremes(&a, (1_000, 2_500_000));
        assert!((2_048_000..=2_500_000).contains(&max), "{max}");
    }
}
