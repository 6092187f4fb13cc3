//! The epoch table: which epoch covers which log positions, and the fencing term, in one
//! small JSON file next to the log, replaced atomically (temp file, fsync, rename, fsync
//! directory).
//!
//! On every start the epoch is bumped and the table persisted *before* anything connects:
//! a receiver keys records by (poller, epoch, seq), so two runs must never share an epoch
//! unless they share the log positions it names. The highest epoch ever used is kept even
//! when old entries are pruned, so an epoch number is never reused.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use opha_bus::message::EpochStart;
use serde::{Deserialize, Serialize};

/// Format of the file.
pub const FORMAT: u32 = 1;
/// A table larger than this is refused (it is a few entries per start, pruned with the log).
const MAX_FILE_BYTES: u64 = 4 << 20;

/// What the file holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochTable {
    pub format: u32,
    /// Highest epoch ever used (0: none yet).
    pub last_epoch: u64,
    /// Highest fencing term granted (see `opha_bus::fencing::Arbiter`).
    pub term: u64,
    /// Epochs that may still have records in the log, oldest first.
    pub epochs: Vec<EpochStart>,
}

impl EpochTable {
    /// Reads the table; a missing file is an empty table (first start with a bus).
    pub fn load(path: &Path) -> Result<Self, String> {
        let shown = path.display();
        let meta = match fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(format!("{shown}: {e}")),
        };
        if meta.len() > MAX_FILE_BYTES {
            return Err(format!(
                "{shown}: {} bytes, larger than expected",
                meta.len()
            ));
        }
        let text = fs::read(path).map_err(|e| format!("{shown}: {e}"))?;
        let t: EpochTable = serde_json::from_slice(&text)
            .map_err(|e| format!("{shown}: not an epoch table: {e}"))?;
        if t.format != FORMAT {
            return Err(format!("{shown}: unknown format {}", t.format));
        }
        let ordered = t
            .epochs
            .windows(2)
            .all(|w| w[0].epoch < w[1].epoch && w[0].start <= w[1].start);
        if !ordered || t.epochs.last().is_some_and(|e| e.epoch > t.last_epoch) {
            return Err(format!("{shown}: epochs out of order"));
        }
        Ok(t)
    }

    /// Starts a new epoch at `head` for a log holding `oldest..head`, prunes what the log no
    /// longer holds, and returns the new epoch.
    ///
    /// - An entry starting beyond `head` means the log lost records the table knew of (a
    ///   deleted log directory): the table no longer describes this log, so it is cleared.
    /// - When the table does not reach back to `oldest` (first start with a bus, or a cleared
    ///   table), the new epoch starts at `oldest`, covering every record the log still has.
    pub fn bump(&mut self, oldest: u64, head: u64) -> u64 {
        if self.epochs.iter().any(|e| e.start > head) {
            self.epochs.clear();
        }
        let covers = self.epochs.first().is_some_and(|e| e.start <= oldest);
        let start = if covers { head } else { oldest };
        if !covers {
            self.epochs.clear();
        }
        // An epoch without records is replaced by the new one.
        while self.epochs.last().is_some_and(|e| e.start >= start) {
            self.epochs.pop();
        }
        // Epochs entirely below the oldest record have nothing left to send.
        while self.epochs.len() > 1 && self.epochs[1].start <= oldest {
            self.epochs.remove(0);
        }
        self.last_epoch = self.last_epoch.saturating_add(1);
        self.format = FORMAT;
        self.epochs.push(EpochStart {
            epoch: self.last_epoch,
            start,
        });
        self.last_epoch
    }

    /// Starts a new epoch at `head` that is the only one: a mirror taking over sends nothing
    /// of what its log held before (docs/mirror.md). Returns the new epoch.
    pub fn restart_at(&mut self, head: u64) -> u64 {
        self.epochs.clear();
        self.last_epoch = self.last_epoch.saturating_add(1);
        self.format = FORMAT;
        self.epochs.push(EpochStart {
            epoch: self.last_epoch,
            start: head,
        });
        self.last_epoch
    }

    /// Writes the table durably: after a crash the file is the old table or the new one.
    pub fn store(&self, path: &Path) -> Result<(), String> {
        let shown = path.display();
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| format!("{shown}: {e}"))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, path)?;
            fs::File::open(dir)?.sync_all()
        };
        write().map_err(|e| format!("{shown}: writing: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn starts(t: &EpochTable) -> Vec<(u64, u64)> {
        t.epochs.iter().map(|e| (e.epoch, e.start)).collect()
    }

    #[test]
    fn bump_covers_the_log_and_never_reuses_an_epoch() {
        let mut t = EpochTable::default();
        // First start with a bus on a log that already holds 10..50: the epoch covers it.
        assert_eq!(t.bump(10, 50), 1);
        assert_eq!(starts(&t), [(1, 10)]);
        assert_eq!(t.bump(10, 80), 2);
        assert_eq!(starts(&t), [(1, 10), (2, 80)]);
        // A start that appended nothing: its empty epoch is replaced.
        assert_eq!(t.bump(10, 80), 3);
        assert_eq!(starts(&t), [(1, 10), (3, 80)]);
        // The log deleted everything below 90: epoch 1 has nothing left.
        assert_eq!(t.bump(90, 100), 4);
        assert_eq!(starts(&t), [(3, 80), (4, 100)]);
        // The log was lost (head below known starts): cleared, the epoch number still rises.
        assert_eq!(t.bump(0, 5), 5);
        assert_eq!(starts(&t), [(5, 0)]);
    }

    #[test]
    fn restart_at_sends_nothing_before_the_head() {
        let mut t = EpochTable::default();
        t.bump(0, 40);
        assert_eq!(t.restart_at(90), 2);
        assert_eq!(starts(&t), [(2, 90)]);
        // A poller-style start afterwards still never reuses an epoch.
        assert_eq!(t.bump(90, 120), 3);
        assert_eq!(starts(&t), [(2, 90), (3, 120)]);
    }

    #[test]
    fn stores_and_loads_durably() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.json");
        assert_eq!(EpochTable::load(&path).unwrap(), EpochTable::default());
        let mut t = EpochTable::default();
        t.bump(0, 0);
        t.term = 7;
        t.store(&path).unwrap();
        assert_eq!(EpochTable::load(&path).unwrap(), t);
        fs::write(&path, b"{").unwrap();
        assert!(EpochTable::load(&path).is_err());
    }
}
