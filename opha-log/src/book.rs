//! The log's bookkeeping, pure: which segments exist and what they hold, which sequence number
//! comes next, where the cursors are, which segments may be deleted, how deep the backlog is.
//!
//! The driver keeps one `LogBook` under its lock. `place` is called for every record as it is
//! queued, so the book is a projection that includes records not yet durable; `rollback` returns
//! it to the durable state when a write fails.

use std::collections::VecDeque;

use crate::cursor::Cursors;
use crate::format::SEGMENT_HEADER_LEN;

/// One segment as the book knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentMeta {
    /// Sequence number of its first record (its file name).
    pub first_seq: u64,
    /// Sequence number after its last record (`first_seq` when empty).
    pub end_seq: u64,
    /// Its length in bytes, header included.
    pub bytes: u64,
    /// When it was created, Unix milliseconds (from its header).
    pub created_unix_ms: u64,
}

impl SegmentMeta {
    /// A new, empty segment.
    pub fn empty(first_seq: u64, created_unix_ms: u64) -> Self {
        Self {
            first_seq,
            end_seq: first_seq,
            bytes: SEGMENT_HEADER_LEN as u64,
            created_unix_ms,
        }
    }
}

/// How far the log is durable: everything before `next_seq`, and the active segment up to
/// `active_bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurableMark {
    pub next_seq: u64,
    pub active_first_seq: u64,
    pub active_bytes: u64,
}

/// Where a queued record goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub seq: u64,
    /// True when the record starts a new segment (the previous one is full).
    pub starts_segment: bool,
}

/// How much the consumers still have to take.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Depth {
    /// Records not yet passed by every cursor (all records when there is no cursor).
    pub records: u64,
    /// Bytes of the segments holding them (whole segments: the granularity of deletion).
    pub bytes: u64,
}

/// The log's bookkeeping.
#[derive(Clone, Debug)]
pub struct LogBook {
    segment_limit: u64,
    segments: VecDeque<SegmentMeta>,
    next_seq: u64,
    used_bytes: u64,
    cursors: Cursors,
}

impl LogBook {
    /// A book over `segments` (ascending, contiguous or with gaps, at least one), the last of
    /// which is the active one. Segments roll over when a record would take one past
    /// `segment_limit` bytes.
    pub fn new(segments: Vec<SegmentMeta>, cursors: Cursors, segment_limit: u64) -> Self {
        let next_seq = segments.last().map_or(1, |s| s.end_seq);
        let used_bytes = segments.iter().map(|s| s.bytes).sum();
        Self {
            segment_limit,
            segments: segments.into(),
            next_seq,
            used_bytes,
            cursors,
        }
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Sequence number of the oldest record still on disk.
    pub fn oldest_seq(&self) -> u64 {
        self.segments.front().map_or(self.next_seq, |s| s.first_seq)
    }

    /// Bytes of every segment, including records queued but not yet durable.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes
    }

    pub fn segments(&self) -> impl Iterator<Item = &SegmentMeta> {
        self.segments.iter()
    }

    pub fn cursors(&self) -> &Cursors {
        &self.cursors
    }

    pub fn set_cursors(&mut self, cursors: Cursors) {
        self.cursors = cursors;
    }

    /// The lowest cursor position: every record below it has been taken by every consumer.
    pub fn min_cursor(&self) -> Option<u64> {
        self.cursors.values().copied().min()
    }

    /// Assigns the next sequence number to a record of `frame_bytes`, rolling over to a new
    /// segment when the active one would pass the limit (a record larger than the limit still
    /// gets a segment of its own).
    pub fn place(&mut self, frame_bytes: u64, now_unix_ms: u64) -> Placement {
        let seq = self.next_seq;
        let needs_new = match self.segments.back() {
            Some(active) => {
                active.end_seq > active.first_seq && active.bytes + frame_bytes > self.segment_limit
            }
            None => true,
        };
        if needs_new {
            let segment = SegmentMeta::empty(seq, now_unix_ms);
            self.used_bytes += segment.bytes;
            self.segments.push_back(segment);
        }
        if let Some(active) = self.segments.back_mut() {
            active.end_seq = seq + 1;
            active.bytes += frame_bytes;
        }
        self.used_bytes += frame_bytes;
        self.next_seq = seq + 1;
        Placement {
            seq,
            starts_segment: needs_new,
        }
    }

    /// Forgets every record and segment past the durable mark (after a failed write).
    pub fn rollback(&mut self, durable: DurableMark) {
        while self
            .segments
            .back()
            .is_some_and(|s| s.first_seq > durable.active_first_seq)
        {
            if let Some(dropped) = self.segments.pop_back() {
                self.used_bytes -= dropped.bytes;
            }
        }
        if let Some(active) = self.segments.back_mut() {
            self.used_bytes = self.used_bytes - active.bytes + durable.active_bytes;
            active.bytes = durable.active_bytes;
            active.end_seq = durable.next_seq;
        }
        self.next_seq = durable.next_seq;
    }

    /// The oldest segments that every cursor has passed, excluding the durable active segment
    /// (the one starting at `active_first_seq`) and anything after it. None without cursors:
    /// records nobody has taken are kept.
    pub fn collectable(&self, active_first_seq: u64) -> Vec<SegmentMeta> {
        let Some(min_cursor) = self.min_cursor() else {
            return Vec::new();
        };
        self.segments
            .iter()
            .take_while(|s| s.first_seq < active_first_seq && s.end_seq <= min_cursor)
            .copied()
            .collect()
    }

    /// Removes the oldest segment if it starts at `first_seq` (after its file was deleted).
    pub fn remove_oldest(&mut self, first_seq: u64) -> bool {
        if self
            .segments
            .front()
            .is_some_and(|s| s.first_seq == first_seq)
        {
            if let Some(removed) = self.segments.pop_front() {
                self.used_bytes -= removed.bytes;
            }
            true
        } else {
            false
        }
    }

    /// The durable segment holding `seq`, or the first one after it when `seq` falls in a gap.
    pub fn segment_for(&self, seq: u64, durable: &DurableMark) -> Option<SegmentMeta> {
        self.segments
            .iter()
            .take_while(|s| s.first_seq <= durable.active_first_seq)
            .find(|s| seq < s.end_seq || s.first_seq == durable.active_first_seq)
            .copied()
    }

    /// The backlog behind the slowest cursor.
    pub fn depth(&self) -> Depth {
        let from = self
            .min_cursor()
            .unwrap_or_else(|| self.oldest_seq())
            .max(self.oldest_seq());
        let bytes = self
            .segments
            .iter()
            .filter(|s| s.end_seq > from)
            .map(|s| s.bytes)
            .sum();
        Depth {
            records: self.next_seq.saturating_sub(from),
            bytes,
        }
    }
}

/// When records were appended, sampled: enough to tell the age of the oldest unacknowledged
/// record within `granularity_ms`, in bounded memory.
#[derive(Clone, Debug)]
pub struct AgeIndex {
    samples: VecDeque<(u64, u64)>,
    granularity_ms: u64,
    capacity: usize,
}

impl AgeIndex {
    pub fn new(granularity_ms: u64, capacity: usize) -> Self {
        Self {
            samples: VecDeque::new(),
            granularity_ms,
            capacity: capacity.max(2),
        }
    }

    /// Notes that the records from `seq` on were appended at (or after) `unix_ms`.
    pub fn note(&mut self, seq: u64, unix_ms: u64) {
        if let Some(&(last_seq, last_ms)) = self.samples.back()
            && (seq <= last_seq || unix_ms < last_ms.saturating_add(self.granularity_ms))
        {
            return;
        }
        if self.samples.len() >= self.capacity {
            // Halve the resolution rather than forget the oldest times.
            let mut keep = 0usize;
            self.samples.retain(|_| {
                keep += 1;
                keep % 2 == 1
            });
        }
        self.samples.push_back((seq, unix_ms));
    }

    /// Forgets samples that only cover records below `seq`.
    pub fn prune_below(&mut self, seq: u64) {
        while self.samples.len() >= 2 && self.samples[1].0 <= seq {
            self.samples.pop_front();
        }
    }

    /// The time the record `seq` was appended at the latest (the sample at or before it).
    pub fn appended_by(&self, seq: u64) -> Option<u64> {
        self.samples
            .iter()
            .rev()
            .find(|(sample_seq, _)| *sample_seq <= seq)
            .map(|(_, ms)| *ms)
            .or_else(|| self.samples.front().map(|(_, ms)| *ms))
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HEADER: u64 = SEGMENT_HEADER_LEN as u64;

    fn book(limit: u64) -> LogBook {
        LogBook::new(vec![SegmentMeta::empty(1, 0)], Cursors::new(), limit)
    }

    #[test]
    fn records_roll_over_at_the_segment_limit() {
        let mut book = book(HEADER + 300);
        let placements: Vec<_> = (0..7).map(|_| book.place(100, 0)).collect();
        let starts: Vec<_> = placements
            .iter()
            .map(|p| (p.seq, p.starts_segment))
            .collect();
        assert_eq!(
            starts,
            [
                (1, false),
                (2, false),
                (3, false),
                (4, true),
                (5, false),
                (6, false),
                (7, true)
            ]
        );
        let segments: Vec<_> = book
            .segments()
            .map(|s| (s.first_seq, s.end_seq, s.bytes))
            .collect();
        assert_eq!(
            segments,
            [
                (1, 4, HEADER + 300),
                (4, 7, HEADER + 300),
                (7, 8, HEADER + 100)
            ]
        );
        assert_eq!(book.used_bytes(), 3 * HEADER + 700);
        // A record larger than the limit gets a segment of its own rather than failing.
        assert!(book.place(10_000, 0).starts_segment);
    }

    #[test]
    fn rollback_forgets_undurable_records_and_segments() {
        let mut book = book(HEADER + 300);
        for _ in 0..3 {
            book.place(100, 0);
        }
        let durable = DurableMark {
            next_seq: 3,
            active_first_seq: 1,
            active_bytes: HEADER + 200,
        };
        for _ in 0..5 {
            book.place(100, 0);
        }
        book.rollback(durable);
        assert_eq!(book.next_seq(), 3);
        assert_eq!(book.used_bytes(), HEADER + 200);
        assert_eq!(book.segments().count(), 1);
        assert_eq!(book.place(100, 0).seq, 3);
    }

    #[test]
    fn segments_are_collected_only_when_every_cursor_passed_them() {
        let mut book = book(HEADER + 200);
        for _ in 0..6 {
            book.place(100, 0);
        }
        // Segments [1,3) [3,5) [5,7), the last one active.
        assert!(book.collectable(5).is_empty(), "no cursor: keep everything");
        book.set_cursors([("a".to_owned(), 4), ("b".to_owned(), 6)].into());
        let firsts: Vec<_> = book.collectable(5).iter().map(|s| s.first_seq).collect();
        assert_eq!(firsts, [1]);
        book.set_cursors([("a".to_owned(), 7), ("b".to_owned(), 7)].into());
        let firsts: Vec<_> = book.collectable(5).iter().map(|s| s.first_seq).collect();
        assert_eq!(firsts, [1, 3], "the active segment is never collected");
        assert!(book.remove_oldest(1));
        assert!(!book.remove_oldest(5));
        assert_eq!(book.oldest_seq(), 3);
        assert_eq!(book.used_bytes(), 2 * HEADER + 400);
    }

    #[test]
    fn depth_counts_from_the_slowest_cursor() {
        let mut book = book(HEADER + 200);
        for _ in 0..6 {
            book.place(100, 0);
        }
        assert_eq!(book.depth().records, 6);
        book.set_cursors([("a".to_owned(), 5), ("b".to_owned(), 7)].into());
        assert_eq!(
            book.depth(),
            Depth {
                records: 2,
                bytes: HEADER + 200
            }
        );
    }

    #[test]
    fn segment_lookup_skips_gaps() {
        let segments = vec![
            SegmentMeta {
                first_seq: 1,
                end_seq: 5,
                bytes: 100,
                created_unix_ms: 0,
            },
            SegmentMeta {
                first_seq: 9,
                end_seq: 12,
                bytes: 100,
                created_unix_ms: 0,
            },
        ];
        let book = LogBook::new(segments, Cursors::new(), 1 << 20);
        let durable = DurableMark {
            next_seq: 12,
            active_first_seq: 9,
            active_bytes: 100,
        };
        assert_eq!(book.segment_for(3, &durable).map(|s| s.first_seq), Some(1));
        assert_eq!(book.segment_for(6, &durable).map(|s| s.first_seq), Some(9));
        assert_eq!(book.segment_for(12, &durable).map(|s| s.first_seq), Some(9));
    }

    #[test]
    fn age_index_is_bounded_and_answers_conservatively() {
        let mut index = AgeIndex::new(1000, 8);
        for i in 0..100u64 {
            index.note(i * 10 + 1, i * 1000);
        }
        assert!(index.len() <= 8);
        // Record 500 was appended at 49,000 ms; the index may answer earlier, never later.
        let at = index.appended_by(500).unwrap();
        assert!(at <= 49_000);
        index.prune_below(900);
        assert!(index.appended_by(900).unwrap() <= 89_000);
        assert!(index.appended_by(1).is_some());
    }

    proptest! {
        #[test]
        fn used_bytes_always_matches_the_segments(ops in prop::collection::vec((1u64..500, any::<bool>()), 1..100)) {
            let mut book = book(HEADER + 1000);
            let mut mark = DurableMark { next_seq: 1, active_first_seq: 1, active_bytes: HEADER };
            for (size, commit) in ops {
                book.place(size, 0);
                if commit {
                    let active = *book.segments().last().unwrap();
                    mark = DurableMark { next_seq: book.next_seq(), active_first_seq: active.first_seq, active_bytes: active.bytes };
                } else if size % 7 == 0 {
                    book.rollback(mark);
                    prop_assert_eq!(book.next_seq(), mark.next_seq);
                }
                let sum: u64 = book.segments().map(|s| s.bytes).sum();
                prop_assert_eq!(sum, book.used_bytes());
                let mut expected_first = 1;
                for segment in book.segments() {
                    prop_assert_eq!(segment.first_seq, expected_first);
                    prop_assert!(segment.bytes <= HEADER + 1000);
                    expected_first = segment.end_seq;
                }
                prop_assert_eq!(expected_first, book.next_seq());
            }
        }
    }
}
