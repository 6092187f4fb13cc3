//! opha's durable replay log.
//!
//! Everything the poller observes is appended here before anything else happens to it; it is
//! deleted only after every consumer (receiver) has moved its cursor past it. Built like quinn:
//! a pure, I/O-free core and a thin driver.
//!
//! - Core (no file system, no clock): [`format`] (segment header, record frames with length,
//!   CRC32C and sequence number, the scan and the recovery verdicts), [`cursor`] (cursor file
//!   encoding), [`budget`] (disk budget policy), [`book`] (sequence numbers, segments, cursors,
//!   what may be deleted, depth).
//! - Driver: [`Log`] (segment files, group commit on a writer thread, durable cursors,
//!   recovery on open, metrics) and [`LogReader`].
//! - [`bench`]: the `cargo xtask bench log` measurements.

pub mod bench;
pub mod book;
pub mod budget;
pub mod cursor;
mod error;
pub mod format;
mod log;
mod reader;
mod recovery;

pub use crate::budget::{BudgetConfig, BudgetLevel, BudgetTransition};
pub use crate::error::Error;
pub use crate::format::RecordClass;
pub use crate::log::{Appended, Log, LogConfig, LogMetrics, Submitted, Ticket};
pub use crate::reader::{LogReader, Record};
pub use crate::recovery::{Quarantined, RecoveryReport, TailTruncation, segment_file_name};
