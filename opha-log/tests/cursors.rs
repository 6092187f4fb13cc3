//! Named cursors: durable across reopen, validated, and the only thing that lets segments go:
//! a segment is deleted only when every cursor has passed it.

mod common;

use common::{ScratchDir, class_for, payload_for, read_all, segment_files, small_segments};
use opha_log::{Error, Log};

const SEGMENT_BYTES: u64 = 2048;

fn append(log: &Log, range: std::ops::RangeInclusive<u64>) {
    for seq in range {
        log.append(class_for(seq), &payload_for(seq)).unwrap();
    }
}

#[test]
fn cursors_survive_reopen() {
    let dir = ScratchDir::new("cursor-reopen");
    {
        let log = Log::open(small_segments(dir.path(), SEGMENT_BYTES)).unwrap();
        append(&log, 1..=100);
        assert_eq!(log.add_cursor("primary-main").unwrap(), 1);
        assert_eq!(log.add_cursor("mirror-eu").unwrap(), 1);
        log.set_cursor("primary-main", 60).unwrap();
        log.set_cursor("mirror-eu", 42).unwrap();
        // Adding an existing cursor keeps its position.
        assert_eq!(log.add_cursor("mirror-eu").unwrap(), 42);
    }
    let log = Log::open(small_segments(dir.path(), SEGMENT_BYTES)).unwrap();
    assert!(log.recovery().is_clean());
    assert_eq!(log.cursor("primary-main"), Some(60));
    assert_eq!(log.cursor("mirror-eu"), Some(42));
    let from_cursor: Vec<u64> = log
        .read_cursor("mirror-eu")
        .unwrap()
        .map(|r| r.unwrap().seq)
        .collect();
    assert_eq!(from_cursor, (42..=100).collect::<Vec<_>>());
    log.remove_cursor("mirror-eu").unwrap();
    drop(log);
    let log = Log::open(small_segments(dir.path(), SEGMENT_BYTES)).unwrap();
    assert_eq!(
        log.cursors().into_iter().collect::<Vec<_>>(),
        [("primary-main".to_owned(), 60)]
    );
}

#[test]
fn cursor_moves_are_validated() {
    let dir = ScratchDir::new("cursor-validate");
    let log = Log::open(small_segments(dir.path(), SEGMENT_BYTES)).unwrap();
    append(&log, 1..=10);
    assert!(matches!(
        log.set_cursor("nobody", 3),
        Err(Error::UnknownCursor { .. })
    ));
    assert!(matches!(log.add_cursor(""), Err(Error::CursorName(_))));
    log.add_cursor("a").unwrap();
    let error = log.set_cursor("a", 12).unwrap_err();
    assert!(
        matches!(
            error,
            Error::CursorOutOfRange {
                position: 12,
                next: 11,
                ..
            }
        ),
        "{error}"
    );
    log.set_cursor("a", 11).unwrap();
    // Moving back (a consumer asking for a replay) is allowed while the records are kept.
    log.set_cursor("a", 5).unwrap();
    assert!(matches!(
        log.remove_cursor("b"),
        Err(Error::UnknownCursor { .. })
    ));
}

#[test]
fn segments_are_deleted_only_when_every_cursor_passed_them() {
    let dir = ScratchDir::new("cursor-gc");
    let log = Log::open(small_segments(dir.path(), SEGMENT_BYTES)).unwrap();
    append(&log, 1..=300);
    let all_segments = segment_files(dir.path()).len();
    assert!(all_segments >= 8, "{all_segments} segments");
    log.add_cursor("fast").unwrap();
    log.add_cursor("slow").unwrap();

    // The fast consumer has taken everything: nothing may go while the slow one has not.
    log.set_cursor("fast", 301).unwrap();
    assert_eq!(segment_files(dir.path()).len(), all_segments);
    assert_eq!(log.oldest_seq(), 1);

    // The slow one reaches 150: exactly the segments ending at or before 150 go.
    log.set_cursor("slow", 150).unwrap();
    let oldest = log.oldest_seq();
    assert!(oldest > 1 && oldest <= 150, "oldest {oldest}");
    let kept = segment_files(dir.path());
    assert!(kept.len() < all_segments);
    assert_eq!(
        kept[0].file_name().unwrap().to_string_lossy(),
        opha_log::segment_file_name(oldest)
    );
    // Nothing the slow consumer still needs was deleted.
    let records = read_all(&log, 150);
    assert_eq!(records.first().map(|r| r.seq), Some(150));
    assert_eq!(records.len(), 151);

    // A reader behind the oldest record learns what it missed.
    let mut reader = log.read_from(1);
    assert!(matches!(reader.next(), Some(Err(Error::Gap { from: 1, to })) if to == oldest));
    assert_eq!(reader.next().unwrap().unwrap().seq, oldest);
    // A reader keeps the directory open (and locked) until it is dropped.
    drop(reader);

    // Removing the slow consumer lets everything but the active segment go.
    log.remove_cursor("slow").unwrap();
    assert_eq!(segment_files(dir.path()).len(), 1);
    let metrics = log.metrics();
    assert_eq!(metrics.depth_records, 0);
    assert!(metrics.segments_deleted as usize >= all_segments - 1);
    drop(log);
    let log = Log::open(small_segments(dir.path(), SEGMENT_BYTES)).unwrap();
    assert!(log.recovery().is_clean(), "{:?}", log.recovery());
    assert_eq!(log.durable_next_seq(), 301);
}

#[test]
fn without_cursors_nothing_is_deleted() {
    let dir = ScratchDir::new("cursor-none");
    let log = Log::open(small_segments(dir.path(), SEGMENT_BYTES)).unwrap();
    append(&log, 1..=200);
    let before = segment_files(dir.path()).len();
    drop(log);
    let log = Log::open(small_segments(dir.path(), SEGMENT_BYTES)).unwrap();
    assert_eq!(segment_files(dir.path()).len(), before);
    assert_eq!(log.metrics().depth_records, 200);
    assert!(log.metrics().oldest_unacked_age.is_some());
}

#[test]
fn depth_follows_the_slowest_cursor() {
    let dir = ScratchDir::new("cursor-depth");
    let log = Log::open(small_segments(dir.path(), SEGMENT_BYTES)).unwrap();
    append(&log, 1..=100);
    log.add_cursor("a").unwrap();
    log.add_cursor("b").unwrap();
    log.set_cursor("a", 101).unwrap();
    log.set_cursor("b", 71).unwrap();
    let metrics = log.metrics();
    assert_eq!(metrics.depth_records, 30);
    assert!(metrics.depth_bytes > 0);
    assert!(metrics.oldest_unacked_age.is_some());
    log.set_cursor("b", 101).unwrap();
    let metrics = log.metrics();
    assert_eq!(metrics.depth_records, 0);
    assert_eq!(metrics.oldest_unacked_age, None);
}
