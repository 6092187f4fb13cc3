//! Store errors. Cloneable, so that one failed group commit can answer every caller in it.

use crate::Scope;
use opha_common::wire::WireError;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: Arc<std::io::Error>,
    },
    #[error("store directory {dir} is in use by another process (store.lock is held)")]
    Locked { dir: PathBuf },
    /// The file exists but is not a usable opha store (garbage, another program's SQLite file,
    /// another scope's file under this name, a newer schema). Only this scope is affected.
    #[error("{scope} database {path} is unusable: {reason}")]
    Unusable {
        scope: Scope,
        path: PathBuf,
        reason: String,
    },
    #[error("{scope} database: {context}: {source}")]
    Sqlite {
        scope: Scope,
        context: &'static str,
        source: Arc<rusqlite::Error>,
    },
    /// A record of another tenant (or of no tenant) offered to this scope; nothing of the
    /// batch was written.
    #[error("record seq {seq} belongs to {record_scope}, not to {scope}")]
    WrongScope {
        scope: Scope,
        record_scope: Scope,
        seq: u64,
    },
    /// Epochs and seqs are stored as SQLite integers (i64); larger values are refused.
    #[error("{what} {value} is out of range (at most {max})", max = i64::MAX)]
    OutOfRange { what: &'static str, value: u64 },
    #[error("record seq {seq} could not be encoded: {source}")]
    Encode { seq: u64, source: WireError },
    /// A stored row did not decode: the file was altered or damaged.
    #[error("{scope} database: stored row {id} does not decode: {source}")]
    CorruptRow {
        scope: Scope,
        id: i64,
        source: WireError,
    },
    #[error("bad cursor {0:?}: expected <time_ms>.<id>")]
    BadCursor(String),
    /// The committer thread is gone (the store is shutting down).
    #[error("the committer has stopped")]
    CommitterStopped,
}

impl StoreError {
    pub(crate) fn io(path: &Path, e: std::io::Error) -> Self {
        StoreError::Io {
            path: path.to_path_buf(),
            source: Arc::new(e),
        }
    }

    pub(crate) fn sqlite(scope: Scope, context: &'static str, e: rusqlite::Error) -> Self {
        StoreError::Sqlite {
            scope,
            context,
            source: Arc::new(e),
        }
    }
}
