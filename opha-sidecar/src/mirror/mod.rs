//! Mirror promotion (issue 5 §4): a mirror polls its poller's devices all the time and takes
//! the poller's place when it falls silent; see docs/mirror.md.
//!
//! - [`promotion`]: the pure decision core (when to promote, when to give back);
//! - [`handover`]: the pure node-state hand-over (what was reported per node, and how an
//!   aggregation core continues from it);
//! - [`control`]: the shared handle the receiver, the operator and the metrics use, the state
//!   file and the CLI's command file;
//! - [`config`]: the `[mirror]` table;
//! - [`driver`]: the running mirror (its pipeline, the receiver's hooks, promotion and
//!   demotion carried out).

pub mod config;
pub mod control;
pub mod driver;
pub mod handover;
pub mod promotion;

pub use control::{MirrorControl, MirrorState};
pub use handover::{Alarms, NodeStates, SeedReport, Seen};
pub use promotion::{Cause, Command, Decision, Promotion, PromotionConfig, Role};
