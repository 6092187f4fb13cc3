//! Disk full: the log on a 1 MiB tmpfs. When the file system fills up, `append` returns a clear
//! error, nothing already durable is lost or damaged, and once space is freed appends work
//! again with no gap in the sequence numbers. Needs root (mount); skipped with a reason
//! elsewhere, except in CI where it must run.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{ScratchDir, payload_for, small_segments};
use opha_log::{Appended, Error, Log, RecordClass};

/// True when the caller may mount: root. Without root, CI (CI=true) fails, elsewhere the test is
/// skipped with a printed reason. (Same rule as opha_tests::privilege.)
fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: needs root (mount a tmpfs), and CI must run it as root");
    }
    eprintln!("skipped {test}: needs root to mount a tmpfs; run as root or in CI");
    false
}

/// A tmpfs mounted for the test, unmounted when dropped (also when the test fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount -t tmpfs failed: {status}");
        Self(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Appends until the file system is full; returns the durable sequence numbers and the error.
fn fill(log: &Log, first_counter: u64) -> (Vec<u64>, Error) {
    let mut durable = Vec::new();
    for counter in first_counter.. {
        match log.append(RecordClass::Event, &payload_for(counter)) {
            Ok(Appended::Durable(seq)) => durable.push(seq),
            Ok(Appended::Thinned) => panic!("an event was thinned"),
            Err(error) => return (durable, error),
        }
        assert!(
            counter < first_counter + 100_000,
            "the 1 MiB file system never filled up"
        );
    }
    unreachable!()
}

fn check_contents(log: &Log, expected_next: u64) {
    let mut expected = 1u64;
    for record in log.read_from(1) {
        let record = record.expect("read back");
        assert_eq!(record.seq, expected, "records contiguous and in order");
        assert_eq!(
            record.payload,
            payload_for(record.seq),
            "record {} intact",
            record.seq
        );
        expected += 1;
    }
    assert_eq!(expected, expected_next);
}

#[test]
fn full_file_system_gives_a_clear_error_and_recovers_when_space_is_freed() {
    if !privileged("full_file_system_gives_a_clear_error_and_recovers_when_space_is_freed") {
        return;
    }
    for segment_bytes in [64 << 10, 8 << 10] {
        let scratch = ScratchDir::new("disk-full");
        let tmpfs = Tmpfs::mount(&scratch.path().join("mnt"), "1m");
        // Leave the log about half the file system; the filler is what gets freed later.
        let filler = tmpfs.0.join("filler");
        std::fs::write(&filler, vec![1u8; 512 << 10]).unwrap();
        let dir = tmpfs.0.join("log");
        let log = Log::open(small_segments(&dir, segment_bytes)).unwrap();

        let (durable, error) = fill(&log, 1);
        assert!(
            durable.len() > 100,
            "segment {segment_bytes}: only {} records fit",
            durable.len()
        );
        assert!(
            matches!(error, Error::NoSpace { .. }),
            "segment {segment_bytes}: {error}"
        );
        assert!(error.is_out_of_space());
        assert!(error.to_string().contains("no space left"), "{error}");
        let next = log.durable_next_seq();
        assert_eq!(durable, (1..next).collect::<Vec<_>>());
        assert!(log.metrics().failed_commits >= 1);
        // Still full: still a clear error, and still nothing lost.
        assert!(
            log.append(RecordClass::Event, &payload_for(next))
                .unwrap_err()
                .is_out_of_space()
        );
        check_contents(&log, next);

        // Free space: appends work again, numbered on from the last durable record.
        std::fs::remove_file(&filler).unwrap();
        for seq in next..next + 200 {
            assert_eq!(
                log.append(RecordClass::Event, &payload_for(seq)).unwrap(),
                Appended::Durable(seq),
                "segment {segment_bytes}"
            );
        }
        check_contents(&log, next + 200);
        drop(log);

        let log = Log::open(small_segments(&dir, segment_bytes)).unwrap();
        let report = log.recovery();
        assert!(
            report.quarantined.is_empty() && report.gaps.is_empty() && report.discarded.is_empty(),
            "{report:?}"
        );
        assert!(
            report.truncated.is_empty(),
            "failed writes were cut back at once: {report:?}"
        );
        check_contents(&log, next + 200);
        drop(log);
        drop(tmpfs);
    }
}
