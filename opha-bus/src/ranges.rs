//! A set of `u64` sequence numbers kept as sorted, disjoint, non-adjacent half-open ranges.
//!
//! Receivers keep one per (poller, epoch) for what they hold durably; senders keep one for
//! what is acknowledged and one for what is in flight. Serde writes the ranges as a list of
//! `[start, end)` pairs; decoding checks that list (sorted, disjoint, non-adjacent, non-empty
//! ranges), so a damaged or hostile copy is refused instead of breaking the invariants.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ops::Range;

/// Sorted, disjoint, non-adjacent half-open ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Vec<(u64, u64)>", into = "Vec<(u64, u64)>")]
pub struct RangeSet {
    /// start -> end (exclusive).
    map: BTreeMap<u64, u64>,
}

/// Why a list of pairs is not a [`RangeSet`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RangeSetError {
    #[error("range {index} is empty or reversed ({start}..{end})")]
    Empty { index: usize, start: u64, end: u64 },
    #[error("range {index} overlaps, touches or precedes the one before it")]
    Unordered { index: usize },
}

impl TryFrom<Vec<(u64, u64)>> for RangeSet {
    type Error = RangeSetError;

    fn try_from(pairs: Vec<(u64, u64)>) -> Result<Self, RangeSetError> {
        let mut map = BTreeMap::new();
        let mut prev_end: Option<u64> = None;
        for (index, (start, end)) in pairs.into_iter().enumerate() {
            if start >= end {
                return Err(RangeSetError::Empty { index, start, end });
            }
            if prev_end.is_some_and(|p| start <= p) {
                return Err(RangeSetError::Unordered { index });
            }
            prev_end = Some(end);
            map.insert(start, end);
        }
        Ok(Self { map })
    }
}

impl From<RangeSet> for Vec<(u64, u64)> {
    fn from(set: RangeSet) -> Self {
        set.map.into_iter().collect()
    }
}

impl From<Range<u64>> for RangeSet {
    fn from(r: Range<u64>) -> Self {
        let mut set = RangeSet::new();
        set.insert(r);
        set
    }
}

impl FromIterator<Range<u64>> for RangeSet {
    fn from_iter<I: IntoIterator<Item = Range<u64>>>(iter: I) -> Self {
        let mut set = RangeSet::new();
        for r in iter {
            set.insert(r);
        }
        set
    }
}

impl RangeSet {
    /// The empty set, for statics.
    pub const EMPTY: RangeSet = RangeSet {
        map: BTreeMap::new(),
    };

    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Number of disjoint ranges.
    pub fn range_count(&self) -> usize {
        self.map.len()
    }

    /// Number of values held.
    pub fn len(&self) -> u64 {
        self.map.iter().map(|(s, e)| e - s).sum()
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = Range<u64>> + '_ {
        self.map.iter().map(|(&s, &e)| s..e)
    }

    /// The range holding `value`, if any.
    fn range_of(&self, value: u64) -> Option<Range<u64>> {
        let (&s, &e) = self.map.range(..=value).next_back()?;
        (value < e).then_some(s..e)
    }

    pub fn contains(&self, value: u64) -> bool {
        self.range_of(value).is_some()
    }

    /// True when every value of `r` is held (an empty `r` is covered).
    pub fn covers(&self, r: Range<u64>) -> bool {
        if r.start >= r.end {
            return true;
        }
        self.range_of(r.start).is_some_and(|h| h.end >= r.end)
    }

    /// First value at or after `from` that is held, if any.
    pub fn next_held(&self, from: u64) -> Option<u64> {
        if self.contains(from) {
            return Some(from);
        }
        self.map.range(from..).next().map(|(&s, _)| s)
    }

    /// First value in `from..limit` that is not held.
    pub fn first_gap(&self, from: u64, limit: u64) -> Option<u64> {
        let x = self.contiguous_end(from);
        (x < limit).then_some(x)
    }

    /// End of the run of held values that starts at `from` (`from` itself when not held).
    pub fn contiguous_end(&self, from: u64) -> u64 {
        self.range_of(from).map_or(from, |r| r.end)
    }

    /// Number of held values in `r`.
    pub fn count_in(&self, r: Range<u64>) -> u64 {
        self.clipped(r).map(|c| c.end - c.start).sum()
    }

    /// The held ranges clipped to `r`.
    pub fn clipped(&self, r: Range<u64>) -> impl Iterator<Item = Range<u64>> + '_ {
        let first = self.range_of(r.start).map_or(r.start, |h| h.start);
        self.map
            .range(first..r.end.max(first))
            .map(move |(&s, &e)| s.max(r.start)..e.min(r.end))
            .filter(|c| c.start < c.end)
    }

    /// Adds `r`; returns how many values were new.
    pub fn insert(&mut self, r: Range<u64>) -> u64 {
        if r.start >= r.end {
            return 0;
        }
        let added = (r.end - r.start) - self.count_in(r.clone());
        if added == 0 {
            return 0;
        }
        let mut start = r.start;
        let mut end = r.end;
        // Merge with a range that holds or touches `start`.
        if let Some((&s, &e)) = self.map.range(..=start).next_back()
            && e >= start
        {
            start = s;
            end = end.max(e);
        }
        // Swallow every range that begins inside or right after the new one.
        let swallowed: Vec<u64> = self.map.range(start..=end).map(|(&s, _)| s).collect();
        for s in swallowed {
            if let Some(e) = self.map.remove(&s) {
                end = end.max(e);
            }
        }
        self.map.insert(start, end);
        added
    }

    /// Adds one value; true when it was new.
    pub fn insert_one(&mut self, value: u64) -> bool {
        value
            .checked_add(1)
            .is_some_and(|end| self.insert(value..end) == 1)
    }

    /// Removes `r`; returns how many values were removed.
    pub fn remove(&mut self, r: Range<u64>) -> u64 {
        if r.start >= r.end {
            return 0;
        }
        let removed = self.count_in(r.clone());
        if removed == 0 {
            return 0;
        }
        let touched: Vec<(u64, u64)> = self
            .clipped(r.clone())
            .filter_map(|c| self.range_of(c.start).map(|h| (h.start, h.end)))
            .collect();
        for (s, e) in touched {
            self.map.remove(&s);
            if s < r.start {
                self.map.insert(s, r.start);
            }
            if e > r.end {
                self.map.insert(r.end, e);
            }
        }
        removed
    }

    /// Drops everything below `value` (pruning what no longer matters).
    pub fn remove_below(&mut self, value: u64) {
        if value > 0 {
            self.remove(0..value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn model(set: &RangeSet) -> BTreeSet<u64> {
        set.iter().flatten().collect()
    }

    #[test]
    fn merges_and_splits() {
        let mut s = RangeSet::new();
        assert_eq!(s.insert(5..10), 5);
        assert_eq!(s.insert(10..12), 2);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![5..12]);
        assert_eq!(s.insert(0..3), 3);
        assert_eq!(s.insert(2..6), 2);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0..12]);
        assert_eq!(s.remove(4..6), 2);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0..4, 6..12]);
        assert_eq!(s.first_gap(0, 100), Some(4));
        assert_eq!(s.first_gap(6, 12), None);
        assert_eq!(s.contiguous_end(7), 12);
        assert_eq!(s.next_held(4), Some(6));
        assert!(s.insert_one(u64::MAX - 1));
        assert!(!s.insert_one(u64::MAX));
    }

    #[test]
    fn decode_refuses_broken_lists() {
        let bad: [Vec<(u64, u64)>; 3] = [vec![(3, 3)], vec![(0, 5), (5, 6)], vec![(4, 6), (0, 2)]];
        for b in bad {
            assert!(RangeSet::try_from(b).is_err());
        }
    }

    proptest! {
        #[test]
        fn behaves_like_a_set(ops in prop::collection::vec((any::<bool>(), 0u64..200, 0u64..20), 0..60)) {
            let mut s = RangeSet::new();
            let mut m = BTreeSet::new();
            for (ins, start, len) in ops {
                let r = start..start + len;
                if ins {
                    let new = r.clone().filter(|v| m.insert(*v)).count() as u64;
                    prop_assert_eq!(s.insert(r), new);
                } else {
                    let gone = r.clone().filter(|v| m.remove(v)).count() as u64;
                    prop_assert_eq!(s.remove(r), gone);
                }
                prop_assert_eq!(&model(&s), &m);
                // Invariant: sorted, disjoint, non-adjacent.
                let v: Vec<(u64, u64)> = s.clone().into();
                prop_assert!(RangeSet::try_from(v.clone()).is_ok());
                let back: RangeSet = postcard::from_bytes(&postcard::to_allocvec(&s).unwrap()).unwrap();
                prop_assert_eq!(&back, &s);
            }
            for probe in 0..230 {
                prop_assert_eq!(s.contains(probe), m.contains(&probe));
                let gap = (probe..230).find(|v| !m.contains(v));
                prop_assert_eq!(s.first_gap(probe, 230), gap);
            }
        }
    }
}
