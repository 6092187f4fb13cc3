//! The aggregator's checkpoint: its state and the records that state produced, written
//! atomically *before* those records are appended to the replay log; and the reconciliation
//! at start that appends whatever part of them the log lacks.
//!
//! See [`super`] for why this order (and not "records first, then state") is the one that
//! gives exactly-once.
//!
//! File (`<log.dir>/aggregate.state`): `OPHA-AGG` magic, format (u32 LE), payload length
//! (u64 LE), a 64-bit FNV-1a checksum of the payload (u64 LE), then the payload: postcard of
//! [`Checkpoint`]. Written to `aggregate.state.new`, fsynced, renamed over the old file, and
//! the directory fsynced: after a crash the file is the old checkpoint or the new one, whole.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use opha_common::wire::Record;
use opha_log::Log;
use serde::{Deserialize, Serialize};

use crate::aggregate::AggState;
use crate::ingest::sink::encode_record;

/// File name of the checkpoint in the log directory.
pub const FILE_NAME: &str = "aggregate.state";
/// Its temporary name while being written (not `*.tmp`: the log's recovery owns those).
pub const NEW_SUFFIX: &str = ".new";
const MAGIC: &[u8; 8] = b"OPHA-AGG";
/// Version of the file layout and of [`Checkpoint`].
pub const CHECKPOINT_FORMAT: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 8 + 8;
/// A checkpoint larger than this is refused on load (bounded memory; 2,000 nodes take well
/// under 10 MiB).
pub const MAX_CHECKPOINT_BYTES: u64 = 512 << 20;
/// Most log records read at start to find which pending records are already durable; beyond
/// it the rest are appended again (at least once: their ids and interval starts identify the
/// duplicates). Only reached after a crash while the log grew by millions of records.
pub const MAX_RECONCILE_SCAN: u64 = 5_000_000;

/// What is persisted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Every record below this sequence number was durable before `pending` was produced, so
    /// any of `pending` that reached the log is at or after it.
    pub log_next_seq: u64,
    /// Wall time of the write, unix ms (for operators).
    pub written_ms: u64,
    /// The aggregator's state after producing `pending`.
    pub state: AggState,
    /// The records that state produced, in append order.
    pub pending: Vec<Record>,
}

/// Why a checkpoint could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("{path}: damaged: {why}")]
    Damaged { path: PathBuf, why: String },
}

pub fn path_in(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The file's bytes.
pub fn encode(c: &Checkpoint) -> Result<Vec<u8>, String> {
    let payload = postcard::to_allocvec(c).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&CHECKPOINT_FORMAT.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&fnv64(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Parses the file's bytes. Never panics.
pub fn decode(bytes: &[u8]) -> Result<Checkpoint, String> {
    let header = bytes
        .get(..HEADER_LEN)
        .ok_or_else(|| format!("{} bytes, shorter than the header", bytes.len()))?;
    if &header[..8] != MAGIC {
        return Err("not an aggregator checkpoint (bad magic)".into());
    }
    let word = |r: std::ops::Range<usize>| {
        let mut b = [0u8; 8];
        b[..r.len()].copy_from_slice(&header[r]);
        u64::from_le_bytes(b)
    };
    let format = word(8..12) as u32;
    if format != CHECKPOINT_FORMAT {
        return Err(format!(
            "format {format}, this build reads format {CHECKPOINT_FORMAT}"
        ));
    }
    let len = word(12..20);
    let sum = word(20..28);
    let payload = &bytes[HEADER_LEN..];
    if payload.len() as u64 != len {
        return Err(format!(
            "payload is {} bytes, the header says {len}",
            payload.len()
        ));
    }
    if fnv64(payload) != sum {
        return Err("checksum mismatch".into());
    }
    postcard::from_bytes(payload).map_err(|e| format!("payload does not decode: {e}"))
}

/// Writes the checkpoint atomically (see the module docs).
pub fn write(dir: &Path, c: &Checkpoint) -> Result<(), CheckpointError> {
    let bytes = encode(c).map_err(|why| CheckpointError::Damaged {
        path: path_in(dir),
        why: format!("cannot encode: {why}"),
    })?;
    write_bytes(dir, &bytes)
}

fn write_bytes(dir: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let path = path_in(dir);
    let tmp = dir.join(format!("{FILE_NAME}{NEW_SUFFIX}"));
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |error| CheckpointError::Io { path, error }
    };
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Reads the checkpoint; `Ok(None)` when there is none.
pub fn read(dir: &Path) -> Result<Option<Checkpoint>, CheckpointError> {
    let path = path_in(dir);
    let meta = match fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(CheckpointError::Io { path, error }),
    };
    if meta.len() > MAX_CHECKPOINT_BYTES {
        return Err(CheckpointError::Damaged {
            path,
            why: format!(
                "{} bytes, more than the {MAX_CHECKPOINT_BYTES} allowed",
                meta.len()
            ),
        });
    }
    let bytes = fs::read(&path).map_err(|error| CheckpointError::Io {
        path: path.clone(),
        error,
    })?;
    decode(&bytes)
        .map(Some)
        .map_err(|why| CheckpointError::Damaged { path, why })
}

/// Moves a damaged checkpoint aside (`aggregate.state.damaged-<ms>`) so that the sidecar can
/// start, and keeps it for inspection. Returns where it went.
pub fn quarantine(dir: &Path, now_ms: u64) -> io::Result<PathBuf> {
    let to = dir.join(format!("{FILE_NAME}.damaged-{now_ms}"));
    fs::rename(path_in(dir), &to)?;
    Ok(to)
}

/// Which of `pending` are not in the log: compares their encodings with the payloads of the
/// log's records from `from_seq` on (a multiset: each log record accounts for one pending
/// record). Pending records are the aggregator's, and unique (metrics by node and interval
/// start, events by id), so equal bytes mean the same record.
pub fn missing(pending: &[Record], log_payloads: impl IntoIterator<Item = Vec<u8>>) -> Vec<Record> {
    let encoded: Vec<Option<Vec<u8>>> = pending.iter().map(|r| encode_record(r).ok()).collect();
    let mut want: HashMap<&[u8], usize> = HashMap::new();
    for p in encoded.iter().flatten() {
        *want.entry(p.as_slice()).or_default() += 1;
    }
    let mut found: HashMap<Vec<u8>, usize> = HashMap::new();
    if !want.is_empty() {
        for payload in log_payloads {
            if let Some(&n) = want.get(payload.as_slice()) {
                let f = found.entry(payload).or_default();
                if *f < n {
                    *f += 1;
                }
            }
        }
    }
    let mut out = Vec::new();
    for (r, p) in pending.iter().zip(&encoded) {
        match p.as_ref().and_then(|p| found.get_mut(p.as_slice())) {
            Some(n) if *n > 0 => *n -= 1,
            _ => out.push(r.clone()),
        }
    }
    out
}

/// The log's payloads from `from_seq` up to what is durable now (at most
/// [`MAX_RECONCILE_SCAN`]); gaps are skipped, a damaged record ends the scan (what follows it
/// counts as absent: appended again).
pub fn log_payloads_from(log: &Log, from_seq: u64) -> Vec<Vec<u8>> {
    let end = log.durable_next_seq();
    let mut out = Vec::new();
    if from_seq >= end {
        return out;
    }
    let mut scanned = 0u64;
    for item in log.read_from(from_seq) {
        match item {
            Ok(rec) => {
                if rec.seq >= end {
                    break;
                }
                out.push(rec.payload);
                scanned += 1;
                if scanned >= MAX_RECONCILE_SCAN {
                    log::warn!(
                        "aggregate: reconciliation stopped after {scanned} log records; the rest of the checkpoint's records are appended again (duplicates carry the same ids)"
                    );
                    break;
                }
            }
            Err(opha_log::Error::Gap { from, to }) => {
                log::warn!("aggregate: reconciliation: log records {from}..{to} are missing");
            }
            Err(e) => {
                log::warn!("aggregate: reconciliation stopped at a log error: {e}");
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use opha_common::wire::{Event, EventId, EventKind, NodeRef, Severity, Subject, TenantId};

    fn event(i: u128) -> Record {
        Record::Event(Event {
            id: EventId::from_u128(i),
            time_ms: 1,
            tenant: TenantId(1),
            subject: Subject::Node(NodeRef::new(0, "198.18.0.1".parse().unwrap(), None)),
            kind: EventKind::NodeDown,
            severity: Severity::Critical,
            details: String::new(),
        })
    }

    #[test]
    fn round_trip_and_damage_is_detected() {
        let c = Checkpoint {
            log_next_seq: 42,
            written_ms: 7,
            state: AggState::default(),
            pending: vec![event(1)],
        };
        let bytes = encode(&c).unwrap();
        assert_eq!(decode(&bytes).unwrap(), c);
        for cut in [0, 5, HEADER_LEN, bytes.len() - 1] {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(decode(&flipped).unwrap_err().contains("checksum"));
        let mut other = bytes.clone();
        other[8] = 9;
        assert!(decode(&other).unwrap_err().contains("format 9"));
    }

    #[test]
    fn write_is_atomic_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path()).unwrap().is_none());
        let mut c = Checkpoint {
            log_next_seq: 1,
            written_ms: 1,
            state: AggState::default(),
            pending: vec![],
        };
        write(dir.path(), &c).unwrap();
        c.log_next_seq = 2;
        write(dir.path(), &c).unwrap();
        assert_eq!(read(dir.path()).unwrap().unwrap().log_next_seq, 2);
        assert!(!dir.path().join("aggregate.state.new").exists());
        fs::write(path_in(dir.path()), b"garbage").unwrap();
        assert!(matches!(
            read(dir.path()),
            Err(CheckpointError::Damaged { .. })
        ));
        let moved = quarantine(dir.path(), 5).unwrap();
        assert!(moved.exists());
        assert!(read(dir.path()).unwrap().is_none());
    }

    #[test]
    fn missing_finds_what_the_log_lacks_as_a_multiset() {
        let pending = vec![event(1), event(2), event(3)];
        let in_log = vec![
            encode_record(&event(9)).unwrap(),
            encode_record(&event(2)).unwrap(),
            encode_record(&event(2)).unwrap(),
        ];
        assert_eq!(missing(&pending, in_log), vec![event(1), event(3)]);
        assert_eq!(missing(&pending, Vec::new()), pending);
        let all: Vec<Vec<u8>> = pending.iter().map(|r| encode_record(r).unwrap()).collect();
        assert!(missing(&pending, all).is_empty());
    }
}
