//! Recovery on open: the driver side of `format::judge_segment`. Reads the segment files,
//! applies the verdicts (truncate a torn tail, quarantine a corrupt segment, discard a segment
//! torn at creation), loads the cursors, and says what it did. It never fails on damaged data,
//! only on I/O errors, so a damaged log cannot make the sidecar crash-loop.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::book::SegmentMeta;
use crate::cursor::{Cursors, decode_cursors};
use crate::error::Error;
use crate::format::{
    AfterDamage, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN, SegmentHeader, SegmentRole, SegmentScan,
    Verdict, judge_scan, scan_segment,
};

/// Name of the cursor file in the log directory.
pub const CURSOR_FILE: &str = "cursors";

/// What recovery found and did when the log was opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments in the log after recovery.
    pub segments: usize,
    /// Sequence number the next record gets.
    pub next_seq: u64,
    /// Torn tails cut off the last segment.
    pub truncated: Vec<TailTruncation>,
    /// Last segments removed because their header never reached the disk (no record in them).
    pub discarded: Vec<PathBuf>,
    /// Corrupt segments moved aside.
    pub quarantined: Vec<Quarantined>,
    /// Sequence numbers missing between segments (lost with a quarantined segment).
    pub gaps: Vec<Range<u64>>,
    /// Sequence numbers skipped so that none that may have been handed out is reused.
    pub skipped: Option<Range<u64>>,
    /// The cursor file could not be read: it was moved aside and the log opened without
    /// cursors (consumers re-register and replay from the oldest record: duplicates, no loss).
    pub cursor_file_error: Option<String>,
    /// Leftover temporary files removed.
    pub removed_temp_files: Vec<PathBuf>,
}

impl RecoveryReport {
    /// True when the log was intact: nothing cut, moved or missing.
    pub fn is_clean(&self) -> bool {
        self.truncated.is_empty()
            && self.discarded.is_empty()
            && self.quarantined.is_empty()
            && self.gaps.is_empty()
            && self.skipped.is_none()
            && self.cursor_file_error.is_none()
    }
}

/// A torn tail cut off the last segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TailTruncation {
    pub segment: PathBuf,
    /// Where the segment was cut.
    pub offset: u64,
    pub dropped_bytes: u64,
    /// Why the first dropped frame was refused.
    pub reason: String,
    /// Where the dropped bytes were kept, when valid-looking records followed the damage.
    pub preserved_as: Option<PathBuf>,
}

/// A corrupt segment moved aside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quarantined {
    pub segment: PathBuf,
    pub moved_to: PathBuf,
    pub reason: String,
    /// Valid records before the damage, kept in place of the segment.
    pub salvaged_records: u64,
}

/// The log as recovery leaves it.
pub(crate) struct Recovered {
    pub segments: Vec<SegmentMeta>,
    pub cursors: Cursors,
    pub report: RecoveryReport,
    /// The active (last) segment, open for writing.
    pub active: File,
}

/// File name of the segment starting at `first_seq`.
pub fn segment_file_name(first_seq: u64) -> String {
    format!("{first_seq:020}.log")
}

pub(crate) fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(segment_file_name(first_seq))
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Writes a new file with `bytes` and fsyncs it (the caller fsyncs the directory).
pub(crate) fn write_file_durably(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let context = || format!("writing {}", path.display());
    let mut file = File::create(path).map_err(|e| Error::io(context(), e))?;
    file.write_all(bytes).map_err(|e| Error::io(context(), e))?;
    file.sync_all().map_err(|e| Error::io(context(), e))
}

pub(crate) fn sync_dir(dir_file: &File, dir: &Path) -> Result<(), Error> {
    dir_file
        .sync_all()
        .map_err(|e| Error::io(format!("syncing directory {}", dir.display()), e))
}

/// Creates the segment starting at `first_seq`: header written and fsynced, directory fsynced,
/// so a segment that exists after a crash has its header.
pub(crate) fn create_segment(
    dir: &Path,
    dir_file: &File,
    first_seq: u64,
    created_unix_ms: u64,
) -> io::Result<File> {
    let path = segment_path(dir, first_seq);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    let header = SegmentHeader {
        first_seq,
        created_unix_ms,
    };
    file.write_all(&header.encode())?;
    file.sync_data()?;
    dir_file.sync_all()?;
    Ok(file)
}

/// A name next to `path` with `suffix` that does not exist yet.
fn unused_name(path: &Path, suffix: &str) -> PathBuf {
    let base = path.as_os_str().to_string_lossy().into_owned();
    let first = PathBuf::from(format!("{base}{suffix}"));
    if !first.exists() {
        return first;
    }
    (1..)
        .map(|n| PathBuf::from(format!("{base}{suffix}.{n}")))
        .find(|candidate| !candidate.exists())
        .unwrap_or(first)
}

fn meta_of(scan: &SegmentScan<'_>, bytes: u64) -> SegmentMeta {
    SegmentMeta {
        first_seq: scan.header.first_seq,
        end_seq: scan.next_seq,
        bytes,
        created_unix_ms: scan.header.created_unix_ms,
    }
}

/// Reads at most the header of a segment, for the segments not verified in full.
fn read_header(path: &Path) -> io::Result<(Vec<u8>, u64)> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut header = Vec::with_capacity(SEGMENT_HEADER_LEN);
    Read::take(file, SEGMENT_HEADER_LEN as u64).read_to_end(&mut header)?;
    Ok((header, len))
}

/// Recovers the log in `dir` (locked by the caller). With `verify_all`, every segment is read
/// and checked; otherwise only the last one, and the others' headers.
pub(crate) fn recover(
    dir: &Path,
    dir_file: &File,
    verify_all: bool,
    now_unix_ms: u64,
) -> Result<Recovered, Error> {
    let mut report = RecoveryReport::default();
    let mut found = Vec::new();
    let entries =
        fs::read_dir(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(first_seq) = parse_segment_name(&name) {
            found.push((first_seq, entry.path()));
        } else if name.ends_with(".tmp") {
            // A cursor update or a salvage interrupted by a crash: the old file still stands.
            fs::remove_file(entry.path())
                .map_err(|e| Error::io(format!("removing {}", entry.path().display()), e))?;
            report.removed_temp_files.push(entry.path());
        }
    }
    found.sort();

    let mut segments: Vec<SegmentMeta> = Vec::new();
    // New records are numbered at least from here, so that no sequence number a consumer may
    // have seen is handed out twice.
    let mut seq_floor = 1u64;
    for (index, (first_seq, path)) in found.iter().enumerate() {
        let role = if index + 1 == found.len() {
            SegmentRole::Last
        } else {
            SegmentRole::Sealed
        };
        let name = path.display();
        if role == SegmentRole::Sealed && !verify_all {
            let (header, len) =
                read_header(path).map_err(|e| Error::io(format!("reading {name}"), e))?;
            if let Ok(header) = SegmentHeader::decode(&header)
                && header.first_seq == *first_seq
            {
                // Not read in full: assume it runs up to the next segment; a damaged record will
                // be reported by the reader that meets it.
                push_segment(
                    &mut segments,
                    &mut report,
                    dir,
                    dir_file,
                    path,
                    SegmentMeta {
                        first_seq: *first_seq,
                        end_seq: found[index + 1].0,
                        bytes: len,
                        created_unix_ms: header.created_unix_ms,
                    },
                )?;
                continue;
            }
        }
        let bytes = fs::read(path).map_err(|e| Error::io(format!("reading {name}"), e))?;
        let scan = scan_segment(&bytes, Some(*first_seq));
        seq_floor = seq_floor.max(*first_seq);
        match judge_scan(&scan, &bytes, role) {
            Verdict::Clean => {
                if let Ok(scan) = &scan {
                    push_segment(
                        &mut segments,
                        &mut report,
                        dir,
                        dir_file,
                        path,
                        meta_of(scan, bytes.len() as u64),
                    )?;
                }
            }
            Verdict::TruncateTail {
                valid_len,
                dropped_bytes,
                preserve_dropped,
            } => {
                let Ok(scan) = &scan else { continue };
                let reason = scan
                    .damage
                    .as_ref()
                    .map_or_else(String::new, |d| d.error.to_string());
                let preserved_as = if preserve_dropped {
                    let aside = unused_name(path, &format!(".{valid_len}.dropped"));
                    write_file_durably(&aside, &bytes[valid_len..])?;
                    Some(aside)
                } else {
                    None
                };
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| Error::io(format!("opening {name}"), e))?;
                file.set_len(valid_len as u64)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| Error::io(format!("truncating {name}"), e))?;
                sync_dir(dir_file, dir)?;
                log::warn!(
                    "replay log: torn tail of {name}: dropped {dropped_bytes} bytes after offset {valid_len} ({reason}){}",
                    preserved_as.as_ref().map_or_else(String::new, |p| format!(
                        "; valid-looking records followed, the bytes are kept in {}",
                        p.display()
                    ))
                );
                if let Some(damage) = &scan.damage {
                    seq_floor = seq_floor.max(floor_after(damage.after, *first_seq, bytes.len()));
                }
                report.truncated.push(TailTruncation {
                    segment: path.clone(),
                    offset: valid_len as u64,
                    dropped_bytes: dropped_bytes as u64,
                    reason,
                    preserved_as,
                });
                push_segment(
                    &mut segments,
                    &mut report,
                    dir,
                    dir_file,
                    path,
                    meta_of(scan, valid_len as u64),
                )?;
            }
            Verdict::Quarantine {
                salvage_len,
                reason,
            } => {
                let moved_to = unused_name(path, ".corrupt");
                let mut salvaged_records = 0;
                match (salvage_len, &scan) {
                    (Some(len), Ok(scan)) => {
                        // Keep the valid prefix in place; `name` is the original or the salvage
                        // at every instant, so a crash here loses nothing.
                        let salvage = PathBuf::from(format!("{}.salvage.tmp", path.display()));
                        write_file_durably(&salvage, &bytes[..len])?;
                        fs::hard_link(path, &moved_to)
                            .map_err(|e| Error::io(format!("quarantining {name}"), e))?;
                        fs::rename(&salvage, path)
                            .map_err(|e| Error::io(format!("salvaging {name}"), e))?;
                        sync_dir(dir_file, dir)?;
                        salvaged_records = scan.records;
                        push_segment(
                            &mut segments,
                            &mut report,
                            dir,
                            dir_file,
                            path,
                            meta_of(scan, len as u64),
                        )?;
                    }
                    _ => {
                        fs::rename(path, &moved_to)
                            .map_err(|e| Error::io(format!("quarantining {name}"), e))?;
                        sync_dir(dir_file, dir)?;
                    }
                }
                if role == SegmentRole::Last {
                    let after = match &scan {
                        Ok(scan) => scan
                            .damage
                            .as_ref()
                            .map_or(AfterDamage::Nothing, |d| d.after),
                        Err(_) => AfterDamage::Undetermined,
                    };
                    seq_floor = seq_floor.max(floor_after(after, *first_seq, bytes.len()));
                }
                log::error!(
                    "replay log: corrupt segment {name} moved to {} ({reason}); {salvaged_records} records before the damage kept",
                    moved_to.display()
                );
                report.quarantined.push(Quarantined {
                    segment: path.clone(),
                    moved_to,
                    reason,
                    salvaged_records,
                });
            }
            Verdict::DiscardTornCreation => {
                fs::remove_file(path).map_err(|e| Error::io(format!("removing {name}"), e))?;
                sync_dir(dir_file, dir)?;
                log::warn!(
                    "replay log: removed {name}: created but its header never reached the disk (no records)"
                );
                report.discarded.push(path.clone());
            }
        }
    }

    let cursors = load_cursors(dir, &mut report)?;
    if let Some(max_cursor) = cursors.values().max() {
        seq_floor = seq_floor.max(*max_cursor);
    }

    let last_end = segments.last().map(|s| s.end_seq);
    let next_seq = last_end.unwrap_or(1).max(seq_floor);
    if last_end.is_none_or(|end| end < next_seq) {
        if let Some(end) = last_end {
            log::warn!(
                "replay log: skipping sequence numbers {end}..{next_seq} so that none is reused"
            );
            report.skipped = Some(end..next_seq);
        }
        create_segment(dir, dir_file, next_seq, now_unix_ms).map_err(|e| {
            Error::io(
                format!("creating segment {next_seq} in {}", dir.display()),
                e,
            )
        })?;
        segments.push(SegmentMeta::empty(next_seq, now_unix_ms));
    }
    let Some(active_meta) = segments.last() else {
        unreachable!("a segment was just created when none was left");
    };
    let active_path = segment_path(dir, active_meta.first_seq);
    let active = OpenOptions::new()
        .write(true)
        .open(&active_path)
        .map_err(|e| Error::io(format!("opening {}", active_path.display()), e))?;
    report.segments = segments.len();
    report.next_seq = next_seq;
    Ok(Recovered {
        segments,
        cursors,
        report,
        active,
    })
}

/// The lowest sequence number new records may take after damage in the last segment: past
/// anything valid-looking that followed the damage, or, when that is unknown, past anything the
/// segment could have held.
fn floor_after(after: AfterDamage, first_seq: u64, segment_len: usize) -> u64 {
    match after {
        AfterDamage::Nothing => first_seq,
        AfterDamage::ValidLooking { max_seq, .. } => max_seq.saturating_add(1),
        AfterDamage::Undetermined => {
            first_seq.saturating_add((segment_len / FRAME_HEADER_LEN) as u64 + 1)
        }
    }
}

/// Adds a recovered segment, quarantining it instead when its sequence numbers overlap the
/// previous segment's (which the writer never produces).
fn push_segment(
    segments: &mut Vec<SegmentMeta>,
    report: &mut RecoveryReport,
    dir: &Path,
    dir_file: &File,
    path: &Path,
    meta: SegmentMeta,
) -> Result<(), Error> {
    if let Some(previous) = segments.last() {
        if previous.end_seq > meta.first_seq {
            let moved_to = unused_name(path, ".corrupt");
            fs::rename(path, &moved_to)
                .map_err(|e| Error::io(format!("quarantining {}", path.display()), e))?;
            sync_dir(dir_file, dir)?;
            let reason = format!(
                "starts at sequence {} but the previous segment runs to {}",
                meta.first_seq, previous.end_seq
            );
            log::error!(
                "replay log: corrupt segment {} moved aside: {reason}",
                path.display()
            );
            report.quarantined.push(Quarantined {
                segment: path.to_path_buf(),
                moved_to,
                reason,
                salvaged_records: 0,
            });
            return Ok(());
        }
        if previous.end_seq < meta.first_seq {
            log::error!(
                "replay log: records {}..{} are missing before {}",
                previous.end_seq,
                meta.first_seq,
                path.display()
            );
            report.gaps.push(previous.end_seq..meta.first_seq);
        }
    }
    segments.push(meta);
    Ok(())
}

fn load_cursors(dir: &Path, report: &mut RecoveryReport) -> Result<Cursors, Error> {
    let path = dir.join(CURSOR_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Cursors::new()),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    match decode_cursors(&bytes) {
        Ok(cursors) => Ok(cursors),
        Err(error) => {
            let moved_to = unused_name(&path, ".corrupt");
            fs::rename(&path, &moved_to)
                .map_err(|e| Error::io(format!("moving {} aside", path.display()), e))?;
            log::error!(
                "replay log: cursor file {} is unreadable ({error}), moved to {}; opening without cursors",
                path.display(),
                moved_to.display()
            );
            report.cursor_file_error = Some(error.to_string());
            Ok(Cursors::new())
        }
    }
}
