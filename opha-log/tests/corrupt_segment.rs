//! Corrupt middle segment: a damaged sealed segment is quarantined (moved aside as `*.corrupt`)
//! and reported, its valid records before the damage kept; the log opens and the records lost
//! are reported as a gap. A damaged cursor file does not stop the log either.

mod common;

use std::path::Path;

use common::{ScratchDir, class_for, files_ending, payload_for, segment_files, small_segments};
use opha_log::format::{FRAME_HEADER_LEN, scan_segment};
use opha_log::{Appended, Error, Log, RecordClass};

const SEGMENT_BYTES: u64 = 4096;

fn write_log(dir: &Path, count: u64) {
    let log = Log::open(small_segments(dir, SEGMENT_BYTES)).unwrap();
    for seq in 1..=count {
        log.append(class_for(seq), &payload_for(seq)).unwrap();
    }
}

/// (first sequence, record offsets, end sequence) of a segment file.
fn describe(path: &Path) -> (u64, Vec<usize>, u64) {
    let bytes = std::fs::read(path).unwrap();
    let scan = scan_segment(&bytes, None).unwrap();
    (
        scan.header.first_seq,
        scan.records().map(|r| r.offset).collect(),
        scan.next_seq,
    )
}

/// Reads everything, collecting records and gaps.
fn read_with_gaps(log: &Log) -> (Vec<u64>, Vec<(u64, u64)>) {
    let (mut seqs, mut gaps) = (Vec::new(), Vec::new());
    for item in log.read_from(1) {
        match item {
            Ok(record) => {
                assert_eq!(record.payload, payload_for(record.seq));
                seqs.push(record.seq);
            }
            Err(Error::Gap { from, to }) => gaps.push((from, to)),
            Err(other) => panic!("unexpected read error: {other}"),
        }
    }
    (seqs, gaps)
}

#[test]
fn damaged_record_in_a_middle_segment_quarantines_it_and_keeps_the_rest() {
    let dir = ScratchDir::new("corrupt-record");
    write_log(dir.path(), 400);
    let segments = segment_files(dir.path());
    assert!(segments.len() >= 5);
    let victim = segments[2].clone();
    let (first, offsets, end) = describe(&victim);
    let original = std::fs::read(&victim).unwrap();
    let mut bytes = original.clone();
    let damaged = 3;
    bytes[offsets[damaged] + FRAME_HEADER_LEN + 1] ^= 0x08;
    std::fs::write(&victim, &bytes).unwrap();

    let log = Log::open(small_segments(dir.path(), SEGMENT_BYTES)).unwrap();
    let report = log.recovery().clone();
    assert_eq!(report.quarantined.len(), 1, "{report:?}");
    let quarantined = &report.quarantined[0];
    assert_eq!(quarantined.segment, victim);
    assert_eq!(quarantined.salvaged_records, damaged as u64);
    assert!(
        quarantined.reason.contains("checksum"),
        "{}",
        quarantined.reason
    );
    // The damaged file is kept aside untouched; the valid prefix stays in place.
    assert_eq!(std::fs::read(&quarantined.moved_to).unwrap(), bytes);
    assert_eq!(
        files_ending(dir.path(), ".corrupt"),
        std::slice::from_ref(&quarantined.moved_to)
    );
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        original[..offsets[damaged]]
    );
    let lost = first + damaged as u64..end;
    assert_eq!(report.gaps, std::slice::from_ref(&lost));

    let (seqs, gaps) = read_with_gaps(&log);
    assert_eq!(gaps, [(lost.start, lost.end)]);
    let expected: Vec<u64> = (1..=400).filter(|s| !lost.contains(s)).collect();
    assert_eq!(seqs, expected);
    assert_eq!(
        log.append(RecordClass::Event, b"still works").unwrap(),
        Appended::Durable(401)
    );
    drop(log);
    // Reopening does not quarantine again: the salvaged segment is clean, the gap remains.
    let log = Log::open(small_segments(dir.path(), SEGMENT_BYTES)).unwrap();
    assert!(log.recovery().quarantined.is_empty());
    assert_eq!(log.recovery().gaps, vec![lost]);
}

#[test]
fn middle_segment_with_a_garbled_header_is_moved_aside_whole() {
    let dir = ScratchDir::new("corrupt-header");
    write_log(dir.path(), 300);
    let segments = segment_files(dir.path());
    let victim = segments[1].clone();
    let (first, _, end) = describe(&victim);
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[3] = b'X';
    std::fs::write(&victim, &bytes).unwrap();

    let log = Log::open(small_segments(dir.path(), SEGMENT_BYTES)).unwrap();
    let report = log.recovery();
    assert_eq!(report.quarantined.len(), 1);
    assert_eq!(report.quarantined[0].salvaged_records, 0);
    assert!(!victim.exists());
    assert_eq!(report.gaps, vec![first..end]);
    let (seqs, gaps) = read_with_gaps(&log);
    assert_eq!(gaps, [(first, end)]);
    assert_eq!(seqs.len() as u64, 300 - (end - first));
}

#[test]
fn unverified_segments_report_damage_when_read() {
    let dir = ScratchDir::new("corrupt-lazy");
    write_log(dir.path(), 300);
    let victim = segment_files(dir.path())[1].clone();
    let (first, offsets, _) = describe(&victim);
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[offsets[2] + FRAME_HEADER_LEN] ^= 1;
    std::fs::write(&victim, &bytes).unwrap();

    let mut config = small_segments(dir.path(), SEGMENT_BYTES);
    config.verify_all_on_open = false;
    let log = Log::open(config).unwrap();
    assert!(
        log.recovery().is_clean(),
        "only headers of sealed segments were checked"
    );
    let mut last_good = 0;
    let mut error = None;
    for item in log.read_from(1) {
        match item {
            Ok(record) => last_good = record.seq,
            Err(e) => error = Some(e),
        }
    }
    assert_eq!(last_good, first + 1);
    assert!(
        matches!(error, Some(Error::CorruptRecord { .. })),
        "{error:?}"
    );
}

#[test]
fn damaged_cursor_file_is_moved_aside_and_the_log_opens_without_cursors() {
    let dir = ScratchDir::new("corrupt-cursors");
    {
        let log = Log::open(small_segments(dir.path(), SEGMENT_BYTES)).unwrap();
        log.add_cursor("primary").unwrap();
        log.append(RecordClass::Event, b"e").unwrap();
    }
    std::fs::write(dir.path().join("cursors"), b"OPHACURS garbage").unwrap();
    let log = Log::open(small_segments(dir.path(), SEGMENT_BYTES)).unwrap();
    assert!(log.recovery().cursor_file_error.is_some());
    assert!(log.cursors().is_empty());
    assert_eq!(files_ending(dir.path(), "cursors.corrupt").len(), 1);
    // Without cursors nothing is deleted: the consumer re-registers and replays everything.
    assert_eq!(log.add_cursor("primary").unwrap(), 1);
}
