//! Helpers shared by the log's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use opha_log::{Log, LogConfig, Record, RecordClass};

/// A scratch directory under the target dir, removed when dropped (also when a test fails).
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(tag: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("opha-log-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create scratch dir");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The payload the tests write for a sequence number: its length and bytes derive from it, so
/// a reader can check every byte of any record without remembering what was written.
pub fn payload_for(seq: u64) -> Vec<u8> {
    let len = (seq.wrapping_mul(2_654_435_761) % 97) as usize + 4;
    (0..len)
        .map(|i| (seq as usize).wrapping_mul(31).wrapping_add(i) as u8)
        .collect()
}

pub fn class_for(seq: u64) -> RecordClass {
    if seq.is_multiple_of(5) {
        RecordClass::Event
    } else {
        RecordClass::Metric
    }
}

/// Reads every record from `from` to the durable end, panicking on any error.
pub fn read_all(log: &Log, from: u64) -> Vec<Record> {
    log.read_from(from)
        .map(|r| r.expect("read record"))
        .collect()
}

pub fn small_segments(dir: &Path, segment_bytes: u64) -> LogConfig {
    let mut config = LogConfig::new(dir);
    config.segment_bytes = segment_bytes;
    config
}

/// Segment files in a directory, sorted.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

/// Files in a directory whose names end with `suffix`.
pub fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    files.sort();
    files
}
