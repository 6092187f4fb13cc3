//! The thin driver: one round runs every probe (commands in parallel, so a round takes about
//! the longest timeout rather than their sum) and feeds the results to the tracker.

use std::{
    path::{Path, PathBuf},
    thread,
};

use opha_common::wire::{PeerId, Record};

use super::{
    DaemonCheck, DaemonSpec,
    probe::{self, ProbeResult},
    state::{DaemonTracker, TrackerConfig},
};

/// Probes plus tracker. Call [`DaemonMonitor::check`] every `daemon_health.interval` and
/// [`DaemonMonitor::handle_timeout`] on every tick, then drain [`DaemonMonitor::poll`].
pub struct DaemonMonitor {
    specs: Vec<DaemonSpec>,
    proc_root: PathBuf,
    tracker: DaemonTracker,
}

impl DaemonMonitor {
    pub fn new(
        specs: Vec<DaemonSpec>,
        proc_root: impl Into<PathBuf>,
        cfg: TrackerConfig,
        peer: PeerId,
        id_prefix: u64,
        now_ms: u64,
    ) -> Self {
        let tracker = DaemonTracker::new(
            cfg,
            peer,
            specs.iter().map(|s| (s.name.clone(), s.severity)),
            id_prefix,
            now_ms,
        );
        Self {
            specs,
            proc_root: proc_root.into(),
            tracker,
        }
    }

    /// Runs one round of checks (blocking, at most about the longest timeout) and records
    /// the results as taken at `now_ms`.
    pub fn check(&mut self, now_ms: u64) {
        let results = probe_all(&self.specs, &self.proc_root);
        for (i, r) in results.into_iter().enumerate() {
            self.tracker.observe(i, now_ms, r);
        }
    }

    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.tracker.handle_timeout(now_ms);
    }

    pub fn poll(&mut self) -> Option<Record> {
        self.tracker.poll()
    }

    pub fn tracker(&self) -> &DaemonTracker {
        &self.tracker
    }

    pub fn specs(&self) -> &[DaemonSpec] {
        &self.specs
    }
}

/// Runs every check once; results in the order of `specs`.
pub fn probe_all(specs: &[DaemonSpec], proc_root: &Path) -> Vec<ProbeResult> {
    let needs_scan = specs
        .iter()
        .any(|s| matches!(s.check, DaemonCheck::Process(_) | DaemonCheck::Cmdline(_)));
    // One scan serves every process check of the round.
    let table = if needs_scan {
        Some(probe::scan_processes(proc_root).map_err(|e| e.to_string()))
    } else {
        None
    };
    let own = std::process::id();
    thread::scope(|scope| {
        let handles: Vec<_> = specs
            .iter()
            .map(|spec| match &spec.check {
                DaemonCheck::Process(name) => {
                    let what = format!("process {name}");
                    let r = from_table(&table, proc_root, |procs| {
                        probe::match_processes(procs, own, &what, |p| probe::name_matches(p, name))
                    });
                    Err(r)
                }
                DaemonCheck::Cmdline(text) => {
                    let what = format!("process with {text:?} in its command line");
                    let r = from_table(&table, proc_root, |procs| {
                        probe::match_processes(procs, own, &what, |p| {
                            probe::cmdline_matches(p, text)
                        })
                    });
                    Err(r)
                }
                DaemonCheck::Systemd(unit) => {
                    let t = spec.timeout;
                    Ok(scope.spawn(move || probe::probe_systemd(unit, t)))
                }
                DaemonCheck::Command(argv) => {
                    let t = spec.timeout;
                    Ok(scope.spawn(move || probe::probe_command(argv, t, "check command")))
                }
                DaemonCheck::Shell(script) => {
                    let t = spec.timeout;
                    let argv = vec!["/bin/sh".to_string(), "-c".to_string(), script.clone()];
                    Ok(scope.spawn(move || probe::probe_command(&argv, t, "check shell command")))
                }
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h {
                Err(done) => done,
                Ok(handle) => handle
                    .join()
                    .unwrap_or_else(|_| ProbeResult::unknown("the check panicked")),
            })
            .collect()
    })
}

fn from_table(
    table: &Option<Result<Vec<probe::ProcessInfo>, String>>,
    proc_root: &Path,
    f: impl FnOnce(&[probe::ProcessInfo]) -> ProbeResult,
) -> ProbeResult {
    match table {
        Some(Ok(procs)) => f(procs),
        Some(Err(e)) => ProbeResult::unknown(format!(
            "cannot read the process table at {}: {e}",
            proc_root.display()
        )),
        None => ProbeResult::unknown("process table not read"),
    }
}
