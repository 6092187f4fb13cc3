//! Torn tail: the last segment cut or garbled at its end (what a crash during a write leaves)
//! is truncated at the last whole record on open, with the dropped bytes reported; the log
//! opens, keeps every whole record, and appends go on with the right sequence numbers.

mod common;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use common::{
    ScratchDir, class_for, files_ending, payload_for, read_all, segment_files, small_segments,
};
use opha_log::format::{FRAME_HEADER_LEN, SEGMENT_HEADER_LEN, scan_segment};
use opha_log::{Appended, Log, RecordClass};

const SEGMENT_BYTES: u64 = 4096;

/// Appends `count` records and closes the log; returns the last segment's path.
fn write_log(dir: &Path, count: u64) -> PathBuf {
    let log = Log::open(small_segments(dir, SEGMENT_BYTES)).unwrap();
    for seq in 1..=count {
        log.append(class_for(seq), &payload_for(seq)).unwrap();
    }
    drop(log);
    segment_files(dir).pop().expect("a segment")
}

/// Offsets of the records of a segment file, and the sequence number of its first record.
fn record_offsets(path: &Path) -> (u64, Vec<usize>) {
    let bytes = std::fs::read(path).unwrap();
    let scan = scan_segment(&bytes, None).unwrap();
    (
        scan.header.first_seq,
        scan.records().map(|r| r.offset).collect(),
    )
}

fn assert_records_are(log: &Log, count: u64) {
    let records = read_all(log, 1);
    assert_eq!(records.len() as u64, count);
    for (i, record) in records.iter().enumerate() {
        let seq = i as u64 + 1;
        assert_eq!((record.seq, &record.payload), (seq, &payload_for(seq)));
    }
}

#[test]
fn truncated_last_segment_is_cut_at_the_last_whole_record() {
    // Cut inside a frame header, right after one, inside a payload, one byte short of the end.
    for cut_into_last_record in [1usize, 7, FRAME_HEADER_LEN, FRAME_HEADER_LEN + 3] {
        let dir = ScratchDir::new("torn-cut");
        let last = write_log(dir.path(), 200);
        let (first_seq, offsets) = record_offsets(&last);
        let last_record = *offsets.last().unwrap();
        let cut = last_record + cut_into_last_record;
        OpenOptions::new()
            .write(true)
            .open(&last)
            .unwrap()
            .set_len(cut as u64)
            .unwrap();

        let log = Log::open(small_segments(dir.path(), SEGMENT_BYTES)).unwrap();
        let report = log.recovery().clone();
        assert_eq!(report.truncated.len(), 1, "{report:?}");
        assert_eq!(report.truncated[0].offset, last_record as u64);
        assert_eq!(
            report.truncated[0].dropped_bytes,
            cut_into_last_record as u64
        );
        assert!(
            report.truncated[0].preserved_as.is_none(),
            "a plain torn tail is not kept"
        );
        assert!(report.quarantined.is_empty() && report.gaps.is_empty());
        // The record that was cut is gone, every one before it is there.
        let survivors = first_seq + offsets.len() as u64 - 2;
        assert_eq!(report.next_seq, survivors + 1);
        assert_records_are(&log, survivors);
        assert_eq!(std::fs::metadata(&last).unwrap().len(), last_record as u64);
        assert_eq!(
            log.append(RecordClass::Event, b"next").unwrap(),
            Appended::Durable(survivors + 1)
        );
        drop(log);
        let log = Log::open(small_segments(dir.path(), SEGMENT_BYTES)).unwrap();
        assert!(
            log.recovery().is_clean(),
            "second open: {:?}",
            log.recovery()
        );
    }
}

#[test]
fn garbled_last_bytes_are_dropped() {
    let dir = ScratchDir::new("torn-garble");
    let last = write_log(dir.path(), 150);
    let (first_seq, offsets) = record_offsets(&last);
    let len = std::fs::metadata(&last).unwrap().len();
    let mut bytes = std::fs::read(&last).unwrap();
    let garbled_from = len as usize - 10;
    for byte in &mut bytes[garbled_from..] {
        *byte = 0xA5;
    }
    std::fs::write(&last, &bytes).unwrap();

    let log = Log::open(small_segments(dir.path(), SEGMENT_BYTES)).unwrap();
    let report = log.recovery();
    assert_eq!(report.truncated.len(), 1);
    let last_record = *offsets.last().unwrap();
    assert_eq!(report.truncated[0].offset, last_record as u64);
    assert_eq!(report.truncated[0].dropped_bytes, len - last_record as u64);
    assert!(
        report.truncated[0].reason.contains("checksum"),
        "{}",
        report.truncated[0].reason
    );
    assert_records_are(&log, first_seq + offsets.len() as u64 - 2);
}

#[test]
fn zeroed_tail_is_dropped_and_every_record_kept() {
    // What some file systems show after power loss: the size grew, the data never came.
    let dir = ScratchDir::new("torn-zeros");
    let last = write_log(dir.path(), 120);
    let len = std::fs::metadata(&last).unwrap().len();
    OpenOptions::new()
        .append(true)
        .open(&last)
        .unwrap()
        .write_all(&[0u8; 3000])
        .unwrap();

    let log = Log::open(small_segments(dir.path(), SEGMENT_BYTES)).unwrap();
    let report = log.recovery();
    assert_eq!(report.truncated.len(), 1);
    assert_eq!(
        (
            report.truncated[0].offset,
            report.truncated[0].dropped_bytes
        ),
        (len, 3000)
    );
    assert_records_are(&log, 120);
}

#[test]
fn damage_followed_by_valid_records_keeps_the_dropped_bytes_and_never_reuses_their_numbers() {
    let dir = ScratchDir::new("torn-middle");
    let last = write_log(dir.path(), 200);
    let (first_seq, offsets) = record_offsets(&last);
    assert!(offsets.len() >= 4, "need a few records in the last segment");
    let damaged = offsets.len() / 2;
    let mut bytes = std::fs::read(&last).unwrap();
    bytes[offsets[damaged] + FRAME_HEADER_LEN] ^= 0xFF;
    std::fs::write(&last, &bytes).unwrap();

    let log = Log::open(small_segments(dir.path(), SEGMENT_BYTES)).unwrap();
    let report = log.recovery().clone();
    assert_eq!(report.truncated.len(), 1);
    let preserved = report.truncated[0]
        .preserved_as
        .clone()
        .expect("dropped bytes kept aside");
    assert_eq!(
        std::fs::read(&preserved).unwrap(),
        bytes[offsets[damaged]..]
    );
    assert_eq!(files_ending(dir.path(), ".dropped"), [preserved]);
    // The records after the damage may have been handed out: their numbers are skipped.
    assert_eq!(report.skipped, Some(first_seq + damaged as u64..201));
    let kept: Vec<u64> = log
        .read_from(1)
        .map_while(Result::ok)
        .map(|r| r.seq)
        .collect();
    assert_eq!(kept, (1..first_seq + damaged as u64).collect::<Vec<_>>());
    assert_eq!(
        log.append(RecordClass::Event, b"x").unwrap(),
        Appended::Durable(201)
    );
    let mut reader = log.read_from(first_seq + damaged as u64);
    assert!(matches!(
        reader.next(),
        Some(Err(opha_log::Error::Gap { .. }))
    ));
    assert_eq!(reader.next().unwrap().unwrap().seq, 201);
}

#[test]
fn segment_torn_while_being_created_is_discarded() {
    for torn_len in [0usize, 5, SEGMENT_HEADER_LEN - 1] {
        let dir = ScratchDir::new("torn-create");
        let last = write_log(dir.path(), 100);
        let (first_seq, offsets) = record_offsets(&last);
        let next = first_seq + offsets.len() as u64;
        let torn = dir.path().join(opha_log::segment_file_name(next));
        let header = opha_log::format::SegmentHeader {
            first_seq: next,
            created_unix_ms: 0,
        }
        .encode();
        std::fs::write(&torn, &header[..torn_len]).unwrap();

        let log = Log::open(small_segments(dir.path(), SEGMENT_BYTES)).unwrap();
        assert_eq!(log.recovery().discarded, [torn]);
        assert!(log.recovery().quarantined.is_empty());
        assert_records_are(&log, 100);
        assert_eq!(
            log.append(RecordClass::Metric, b"m").unwrap(),
            Appended::Durable(101)
        );
    }
}
