//! The poller runtime: `opha-sidecar poller --config FILE`.
//!
//! Wires the data plane ([`crate::loader`]), the trap/syslog decoder ([`crate::decode`]), the
//! aggregation core ([`crate::aggregate`]), local ingest ([`crate::ingest`]) and daemon health
//! ([`crate::daemons`]) to the replay log (`opha_log`), and serves its own metrics. Modules:
//!
//! - [`runtime`]: start-up (config, inventory, listeners, log, checkpoint, kernel), the
//!   [`Pipeline`] of tasks, signals;
//! - [`ring`]: the ring-buffer task; [`aggregate`]: sweep + snapshot + aggregator +
//!   checkpoint; [`checkpoint`]: the checkpoint file and the reconciliation at start;
//!   [`heartbeat`]: daemons, `DaemonHealth`, `PeerStatus`, log alarms;
//!   [`metrics`]: Prometheus text and `/v1/log`; [`shutdown`]: the stop signal;
//!   [`source`]: the kernel, ring and clock traits (fakes in tests); [`durable`]: appends
//!   with one outcome per record; [`shared`]: counters and snapshots the tasks share.
//!
//! # Zero loss: the orderings and why they are safe
//!
//! Everything below assumes what the replay log guarantees: an append returns only once its
//! record is fsynced (group commit), and after a crash recovery keeps every acknowledged
//! record and drops only unacknowledged torn tails.
//!
//! **Ring buffer (traps, syslog).** read batch -> decode (one event per record) -> append
//! batch -> wait durable -> commit the consumer position. The kernel's ring buffer is pinned,
//! so its unread records and its consumer position survive the sidecar. A kill -9 before the
//! commit leaves the records in the ring; the next start reads and appends them again. That
//! re-append is the only way a ring record can reach the log twice (kill -9 after the fsync,
//! before the commit): decoding is deterministic and the event id hashes the record and a
//! per-boot seed, so the two copies carry the same id and receivers store one. A record is
//! never committed before it is durable, so none is lost; when only part of a batch is
//! durable, exactly that part is committed.
//!
//! **Aggregator.** The kernel's counters are cumulative and pinned; the aggregator turns the
//! difference between two snapshots into interval sums. Each tick that produces records:
//!
//! 1. sweep timed-out requests (deleted from the kernel) and snapshot the counters;
//! 2. `poll` -> records R_k and state S_k (whose base for the next delta is this snapshot);
//! 3. write the checkpoint {S_k, R_k, log_end} atomically (temp file, fsync, rename, fsync
//!    directory), `log_end` being the log's durable end *before* R_k is appended;
//! 4. append R_k and wait until durable.
//!
//! On start, the checkpoint's state is restored and its records are compared (byte for byte)
//! with the log's records from `log_end` on; those missing are appended before the first new
//! snapshot. Crash cases:
//!
//! - before step 3 completes: the previous checkpoint {S_k-1, R_k-1} stands, and R_k-1 is in
//!   the log or is appended at start. R_k was never appended (step 4 comes after 3). The first
//!   snapshot after the restart takes its delta from S_k-1's snapshot, so it counts exactly
//!   what R_k would have, plus what came since: nothing skipped, nothing twice.
//! - between 3 and 4, or during 4: R_k is in the checkpoint; the records of it that did not
//!   reach the log are appended at start, those that did are found and not appended again.
//! - after 4: all of R_k is found in the log; nothing is appended.
//!
//! So every interval is appended exactly once. The brief's alternative, "state written only
//! after its records are durable", cannot be exactly-once: a crash between the records'
//! fsync and the state write restarts from the older state, whose next delta re-counts the
//! interval already in the log, and the snapshot that closed it is gone, so neither dropping
//! nor keeping the re-emitted record is right. Writing the state first *with* its records
//! makes the checkpoint an intent record that the log can be reconciled against.
//!
//! Ticks that produce nothing (no record, no timeout, no interval closed) are not
//! checkpointed (at most every 10 s): a crash replays them from the last checkpoint's
//! snapshot, which the cumulative counters make exact. Records are still identifiable should
//! anything go wrong beyond this (a damaged checkpoint is set aside and the next snapshot is a
//! baseline): metrics by (node, interval start), events by deterministic id.
//!
//! One window is not closed: timeouts swept in step 1 and lost by a kill -9 before step 3
//! (milliseconds) are gone from the kernel; `timeouts` of that interval then undercounts. The
//! node state machine still sees those failed polls through the request counters (a request
//! unanswered for the timeout counts as failed whether or not it was swept). Closing it
//! needs a two-phase sweep in the loader (list, checkpoint, delete).
//!
//! **Ingest.** A request is answered 2xx only after its records are durable (`LogSink`).
//!
//! **Heartbeat.** `PeerStatus`/`DaemonHealth` are periodic snapshots; daemon and log alarm
//! events are appended before anything else is done with them and queue (never dropped) while
//! the log refuses appends.
//!
//! **Log full.** At 100% of the budget metrics are thinned by the log; beyond, appends are
//! refused: every task keeps what it has (the ring in the kernel, the aggregator in its
//! checkpoint, ingest answers 503) and retries with backoff, and the budget alarm goes out as
//! an event. Nothing is dropped silently.
//!
//! **Shutdown** (SIGINT/SIGTERM): intake stops (listeners close), requests and batches in
//! flight finish (each task completes its current append), the log is closed; exit 0. The
//! programs stay attached and the maps pinned, so the kernel keeps counting and the next start
//! continues from the checkpoint.

pub mod aggregate;
pub mod bus;
pub mod checkpoint;
pub mod config_apply;
pub mod durable;
pub mod heartbeat;
pub mod metrics;
pub mod ring;
pub mod runtime;
pub mod shared;
pub mod shutdown;
pub mod source;

pub use runtime::{Listeners, Pipeline, PipelineParts, run};
pub use shutdown::Shutdown;
pub use source::{Clock, KernelSource, NoRing, RingSource, SystemClock};
