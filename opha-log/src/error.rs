//! The log's errors.

use std::io;
use std::path::PathBuf;

use crate::cursor::CursorNameError;
use crate::format::FrameError;

/// Everything the replay log can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("replay log directory {dir} is locked by another process")]
    Locked { dir: PathBuf },

    #[error("replay log: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    /// The file system is full: nothing of the refused records is durable; records appended
    /// before are intact. Appends work again once space is freed.
    #[error("replay log: no space left on the device ({message}); the records were not appended")]
    NoSpace { message: String },

    /// A write or fsync failed: nothing of the refused records is durable.
    #[error("replay log: write failed ({kind}: {message}); the records were not appended")]
    WriteFailed {
        kind: io::ErrorKind,
        message: String,
    },

    /// The log could not return to a known state after a failed write; it refuses appends until
    /// it is reopened (which runs recovery).
    #[error("replay log stopped after an unrecoverable error, reopen it to recover: {reason}")]
    Poisoned { reason: String },

    /// The disk budget has no room even for events: intake must block until consumers advance.
    #[error(
        "replay log disk budget exhausted: {used_bytes} bytes used, hard limit {hard_limit_bytes}; intake must wait for consumers to free space"
    )]
    BudgetExhausted {
        used_bytes: u64,
        hard_limit_bytes: u64,
    },

    #[error("record payload is {len} bytes, more than the maximum {max}")]
    RecordTooLarge { len: usize, max: usize },

    #[error("invalid cursor name: {0}")]
    CursorName(#[from] CursorNameError),

    #[error("no cursor named {name:?}")]
    UnknownCursor { name: String },

    #[error("the log already has the maximum of {max} cursors")]
    TooManyCursors { max: usize },

    #[error("cursor {name:?} cannot move to {position}: the log holds {oldest}..{next}")]
    CursorOutOfRange {
        name: String,
        position: u64,
        oldest: u64,
        next: u64,
    },

    /// Records a reader asked for are no longer (or never were) in the log: deleted after every
    /// cursor passed them, or lost with a quarantined segment. The reader continues after it.
    #[error("records {from}..{to} are not in the log")]
    Gap { from: u64, to: u64 },

    #[error("corrupt record in {path} at offset {offset}: {error}")]
    CorruptRecord {
        path: PathBuf,
        offset: u64,
        error: FrameError,
    },

    #[error("replay log is closed")]
    Closed,
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// The error an append gets when its batch could not be written.
    pub(crate) fn write_failed(kind: io::ErrorKind, message: &str) -> Self {
        if kind == io::ErrorKind::StorageFull {
            Self::NoSpace {
                message: message.to_owned(),
            }
        } else {
            Self::WriteFailed {
                kind,
                message: message.to_owned(),
            }
        }
    }

    /// True for a full file system or an exhausted disk budget: appends work again after space
    /// is freed.
    pub fn is_out_of_space(&self) -> bool {
        matches!(self, Self::NoSpace { .. } | Self::BudgetExhausted { .. })
    }
}
