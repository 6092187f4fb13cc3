//! opha's bus protocol as pure, I/O-free state machines (in the style of quinn-proto).
//!
//! Nothing here touches a socket, a file or a clock: the driver feeds in messages, log
//! positions, store completions and the current time (nanoseconds on any monotonic clock,
//! as `u64`), and applies what comes out (messages to transmit, "advance the cursor",
//! "store these records").
//!
//! - [`message`]: the bus messages and their frames ([`message::BusFrame`]).
//! - [`frame`]: the frame codec that `message`, `fetch` and `config_push` share.
//! - [`compress`]: zstd for batch bodies, as pure functions.
//! - [`ranges`]: a set of sequence ranges (received/acknowledged), serde for the store.
//! - [`sender`]: the poller's side, one per receiver.
//! - [`receiver`]: the primary's or mirror's side, one per connected poller.
//! - [`fencing`]: which primary is active for a poller, with a term that fences the others.
//! - [`fetch`]: gap fetch between receivers (a returning primary asks the mirror or another
//!   primary for what the poller's log no longer holds).
//! - [`config_push`]: the active primary's config pushes to a poller, and its answers.
//!
//! # Sequence numbers and epochs
//!
//! A record's sequence number is its position in the poller's replay log (opha-log), which
//! only grows, so a receiver's cursor in the log is a single number. The epoch is bumped on
//! every start of the poller's sidecar; epoch `e` covers the log positions from its start to
//! the next epoch's start. (poller, epoch, seq) is the dedupe key, so a log that was lost and
//! starts again from 0 still produces fresh keys under its new epoch.

pub mod compress;
pub mod config_push;
pub mod fencing;
pub mod fetch;
pub mod frame;
pub mod message;
pub mod ranges;
pub mod receiver;
pub mod sender;

/// Nanoseconds on the caller's monotonic clock.
pub type Nanos = u64;

/// One second in [`Nanos`].
pub const SECOND: Nanos = 1_000_000_000;
/// One millisecond in [`Nanos`].
pub const MILLI: Nanos = 1_000_000;
