//! Daemon health: is each local daemon (by default the six NMIS daemons) running?
//!
//! Split in the quinn style:
//! - [`state`]: the pure, I/O-free tracker. Probe results go in with a time; `DaemonHealth`
//!   records and `DaemonDown`/`DaemonUp` events come out, events only on debounced changes.
//! - [`probe`]: the checks themselves: a scan of `/proc`, `systemctl show`, or a configured
//!   command run with a timeout and without a shell (unless one is configured explicitly).
//! - [`heartbeat`]: the `PeerStatus` builder and the heartbeat schedule.
//! - [`monitor`]: a thin driver that runs every probe of a round and feeds the tracker.

use std::time::Duration;

use opha_common::wire::Severity;

pub mod heartbeat;
pub mod monitor;
pub mod probe;
pub mod state;

pub use heartbeat::{Heartbeat, PeerStatusBuilder, PeerStatusInputs, kernel_counters};
pub use monitor::DaemonMonitor;
pub use probe::ProbeResult;
pub use state::{DaemonTracker, TrackerConfig};

/// The daemons every NMIS peer runs, checked by default.
pub const NMIS_DAEMONS: [&str; 6] = [
    "opchartsd",
    "opeventsd",
    "opconfigd",
    "nmis9d",
    "omkd",
    "ophad",
];

/// How one daemon is checked.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DaemonCheck {
    /// Up while a process with this name runs: its `comm` (the kernel's 15-byte name) or the
    /// file name of its argv[0]; a trailing ".pl" is ignored, as the NMIS daemons are Perl
    /// scripts (`opeventsd.pl`).
    Process(String),
    /// Up while a process whose command line (arguments joined by spaces) contains this text
    /// runs.
    Cmdline(String),
    /// Up while this systemd unit is active (`systemctl show`); unknown where systemd does not
    /// run.
    Systemd(String),
    /// Up when this command exits 0. Run directly, never through a shell; killed (its whole
    /// process group) at the timeout, which counts as unknown.
    Command(Vec<String>),
    /// Like `Command`, but the text is run by `/bin/sh -c`; only ever from an explicit `shell`
    /// key in the configuration.
    Shell(String),
}

impl DaemonCheck {
    /// A short description for details and logs.
    pub fn describe(&self) -> String {
        match self {
            DaemonCheck::Process(n) => format!("process {n}"),
            DaemonCheck::Cmdline(t) => format!("command line containing {t:?}"),
            DaemonCheck::Systemd(u) => format!("systemd unit {u}"),
            DaemonCheck::Command(argv) => format!("command {argv:?}"),
            DaemonCheck::Shell(s) => format!("shell command {s:?}"),
        }
    }
}

/// One daemon to watch.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DaemonSpec {
    pub name: String,
    pub check: DaemonCheck,
    /// Bound on a command or `systemctl` check.
    pub timeout: Duration,
    /// Severity of its down event (up events are `Info`).
    pub severity: Severity,
}

impl DaemonSpec {
    /// A process check for `name`, with a 5 s timeout and major severity.
    pub fn process(name: &str) -> Self {
        Self {
            name: name.to_string(),
            check: DaemonCheck::Process(name.to_string()),
            timeout: Duration::from_secs(5),
            severity: Severity::Major,
        }
    }
}

/// The default list: the six NMIS daemons, each checked by process name.
pub fn default_daemons() -> Vec<DaemonSpec> {
    NMIS_DAEMONS
        .iter()
        .map(|n| DaemonSpec::process(n))
        .collect()
}
