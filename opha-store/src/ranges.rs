//! Sets of sequence numbers as sorted, disjoint, non-adjacent half-open ranges.
//!
//! The dedupe state of one (poller, epoch) is such a set: a stream that arrives in order is one
//! range however long it is, so the state stays small (one row per gap, not per record).

use std::ops::Range;

/// A set of `u64` kept as sorted, disjoint, non-touching `start..end` ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RangeSet {
    ranges: Vec<Range<u64>>,
}

impl RangeSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a set from any ranges (overlapping, unsorted, empty ones are fine).
    pub fn from_ranges(ranges: impl IntoIterator<Item = Range<u64>>) -> Self {
        let mut s = Self::new();
        for r in ranges {
            s.insert_range(r);
        }
        s
    }

    pub fn ranges(&self) -> &[Range<u64>] {
        &self.ranges
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Number of values in the set.
    pub fn len(&self) -> u64 {
        self.ranges.iter().map(|r| r.end - r.start).sum()
    }

    pub fn contains(&self, v: u64) -> bool {
        // The first range whose end is past v is the only one that can hold it.
        let i = self.ranges.partition_point(|r| r.end <= v);
        self.ranges.get(i).is_some_and(|r| r.start <= v)
    }

    /// Adds `v`; returns false when it was already present.
    pub fn insert(&mut self, v: u64) -> bool {
        if self.contains(v) {
            return false;
        }
        // v < u64::MAX is not guaranteed; saturate so that u64::MAX itself is simply not
        // representable rather than a panic (the store never asks for it: seqs are <= i64::MAX).
        let Some(end) = v.checked_add(1) else {
            return false;
        };
        self.insert_range(v..end);
        true
    }

    /// Adds every value of `r`, merging with neighbours it overlaps or touches.
    pub fn insert_range(&mut self, r: Range<u64>) {
        if r.start >= r.end {
            return;
        }
        // Ranges ending before r.start (and not touching it) stay; so do those starting after r.end.
        let lo = self.ranges.partition_point(|x| x.end < r.start);
        let hi = self.ranges.partition_point(|x| x.start <= r.end);
        let mut merged = r;
        if lo < hi {
            merged.start = merged.start.min(self.ranges[lo].start);
            merged.end = merged.end.max(self.ranges[hi - 1].end);
        }
        self.ranges.splice(lo..hi, std::iter::once(merged));
    }

    /// Adds every value of `other`.
    pub fn union(&mut self, other: &RangeSet) {
        for r in &other.ranges {
            self.insert_range(r.clone());
        }
    }

    /// The highest `h` such that every value from `from` through `h` is in the set, or `None`
    /// when `from` itself is missing: a cumulative acknowledgement "everything through h".
    pub fn contiguous_through(&self, from: u64) -> Option<u64> {
        let i = self.ranges.partition_point(|r| r.end <= from);
        self.ranges
            .get(i)
            .filter(|r| r.start <= from)
            .map(|r| r.end - 1)
    }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)] // one-range sets are the point
mod tests {
    use super::*;

    #[test]
    fn merges_and_contains() {
        let mut s = RangeSet::new();
        assert!(s.insert(5));
        assert!(s.insert(7));
        assert!(!s.insert(5));
        assert_eq!(s.ranges(), &[5..6, 7..8]);
        assert!(s.insert(6));
        assert_eq!(s.ranges(), [5..8].as_slice());
        s.insert_range(0..3);
        s.insert_range(10..12);
        assert_eq!(s.ranges(), &[0..3, 5..8, 10..12]);
        s.insert_range(2..11);
        assert_eq!(s.ranges(), [0..12].as_slice());
        assert_eq!(s.len(), 12);
        assert!(s.contains(0) && s.contains(11) && !s.contains(12));
        assert_eq!(s.contiguous_through(0), Some(11));
        assert_eq!(s.contiguous_through(12), None);
    }

    #[test]
    fn matches_a_naive_set() {
        // A small deterministic pseudo-random walk against BTreeSet.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut s = RangeSet::new();
        let mut n = std::collections::BTreeSet::new();
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = x % 300;
            if x.is_multiple_of(3) {
                let e = v + x % 7;
                s.insert_range(v..e);
                n.extend(v..e);
            } else {
                assert_eq!(s.insert(v), n.insert(v));
            }
            for w in s.ranges().windows(2) {
                assert!(
                    w[0].end < w[1].start,
                    "ranges must not touch: {:?}",
                    s.ranges()
                );
            }
        }
        let flat: Vec<u64> = s.ranges().iter().flat_map(|r| r.clone()).collect();
        assert_eq!(flat, n.into_iter().collect::<Vec<_>>());
    }
}
