//! The mirror's control surface: one handle ([`MirrorControl`]) shared by the receiver (what it
//! sees of the paired poller), the operator (API or CLI) and the metrics; the state file; and
//! the CLI's command file.
//!
//! Every input goes through the pure [`Promotion`] core and returns the decisions the driver
//! must carry out (seed the aggregator and start streaming; stop streaming).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use opha_common::wire::{Event, Record};
use serde::{Deserialize, Serialize};

use super::handover::{NodeStates, Seen};
use super::promotion::{Command, Decision, Nanos, Promotion, PromotionConfig, Role};

struct Inner {
    promotion: Promotion,
    /// What has been reported for the poller's nodes (by the poller, or by this mirror while
    /// active).
    states: NodeStates,
    /// The poller's events that repeated the reported state (counted, not applied twice).
    repeats: u64,
}

/// The shared handle; cheap to clone.
#[derive(Clone)]
pub struct MirrorControl {
    inner: Arc<Mutex<Inner>>,
}

/// What is persisted across mirror restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorState {
    pub role: Role,
    pub forced: Option<Role>,
    pub states: NodeStates,
}

impl MirrorControl {
    /// A standby mirror at `now` with the reported states it persisted (if any). A mirror that
    /// was active when it stopped starts standby and takes over again after the delay (or at
    /// once if the operator had pinned it active).
    pub fn new(config: PromotionConfig, saved: MirrorState, now: Nanos) -> Self {
        let mut promotion = Promotion::new(config, now);
        match saved.forced {
            Some(Role::Active) => promotion.command(Command::Promote, now),
            Some(Role::Standby) => promotion.command(Command::Demote, now),
            None => {}
        }
        Self {
            inner: Arc::new(Mutex::new(Inner {
                promotion,
                states: saved.states,
                repeats: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn drain(i: &mut Inner) -> Vec<Decision> {
        std::iter::from_fn(|| i.promotion.poll_decision()).collect()
    }

    /// The poller's connection came up or went down.
    pub fn poller_connected(&self, up: bool, now: Nanos) -> Vec<Decision> {
        let mut i = self.lock();
        i.promotion.poller_connected(up, now);
        Self::drain(&mut i)
    }

    /// Records arrived from the poller. While standby its state-change events are what is
    /// reported; while active they are not applied (this mirror is the one reporting).
    pub fn poller_records<'a>(
        &self,
        records: impl IntoIterator<Item = &'a Record>,
        now: Nanos,
    ) -> Vec<Decision> {
        let mut i = self.lock();
        i.promotion.poller_seen(now);
        if !i.promotion.is_active() {
            for r in records {
                if i.states.observe(r) == Seen::Repeat {
                    i.repeats += 1;
                }
            }
        }
        Self::drain(&mut i)
    }

    /// This mirror's own events of one poll while active: repeats of the reported state are
    /// dropped, the rest recorded as reported. Returns how many were dropped.
    pub fn own_events(&self, events: &mut Vec<Event>) -> usize {
        self.lock().states.filter(events)
    }

    pub fn tick(&self, now: Nanos) -> Vec<Decision> {
        let mut i = self.lock();
        i.promotion.tick(now);
        Self::drain(&mut i)
    }

    /// The operator's "promote" (API or CLI).
    pub fn promote(&self, now: Nanos) -> Vec<Decision> {
        self.command(Command::Promote, now)
    }

    /// The operator's "demote".
    pub fn demote(&self, now: Nanos) -> Vec<Decision> {
        self.command(Command::Demote, now)
    }

    pub fn command(&self, cmd: Command, now: Nanos) -> Vec<Decision> {
        let mut i = self.lock();
        i.promotion.command(cmd, now);
        Self::drain(&mut i)
    }

    pub fn role(&self) -> Role {
        self.lock().promotion.role()
    }

    pub fn poll_timeout(&self) -> Option<Nanos> {
        self.lock().promotion.poll_timeout()
    }

    /// The reported node states: what a promoted mirror seeds its aggregator with, and what
    /// the returning poller seeds its own with.
    pub fn states(&self) -> NodeStates {
        self.lock().states.clone()
    }

    /// What to persist.
    pub fn saved(&self) -> MirrorState {
        let i = self.lock();
        MirrorState {
            role: i.promotion.role(),
            forced: i.promotion.forced(),
            states: i.states.clone(),
        }
    }

    /// Prometheus text for the mirror.
    pub fn render(&self, poller: &str, now: Nanos, out: &mut String) {
        let i = self.lock();
        let p = &i.promotion;
        let s = p.stats();
        let secs = p.silent_for(now) as f64 / 1e9;
        let rows: [(&str, &str, &str, String); 6] = [
            (
                "opha_mirror_promoted",
                "gauge",
                "1 while this mirror reports for its poller.",
                u8::from(p.is_active()).to_string(),
            ),
            (
                "opha_mirror_forced",
                "gauge",
                "1 while an operator command pins the role (until `auto`).",
                u8::from(p.forced().is_some()).to_string(),
            ),
            (
                "opha_mirror_poller_silent_seconds",
                "gauge",
                "Time since the last record or heartbeat from the poller.",
                format!("{secs:.3}"),
            ),
            (
                "opha_mirror_promotions_total",
                "counter",
                "Promotions (automatic and by command).",
                s.promotions.to_string(),
            ),
            (
                "opha_mirror_demotions_total",
                "counter",
                "Demotions (automatic and by command).",
                s.demotions.to_string(),
            ),
            (
                "opha_mirror_reported_alarm_nodes",
                "gauge",
                "Nodes of the poller with an alarm reported (down, snmp, port, threshold).",
                i.states.len().to_string(),
            ),
        ];
        for (name, kind, help, v) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{poller=\"{poller}\"}} {v}"
            );
        }
    }
}

/// Reads the state file; a missing file is a fresh mirror.
pub fn load_state(path: &Path) -> Result<MirrorState, String> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(MirrorState::default()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename, fsync directory).
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Persists the state (before a promotion streams anything, and after each demotion).
pub fn store_state(path: &Path, s: &MirrorState) -> Result<(), String> {
    let bytes = serde_json::to_vec(s).map_err(|e| e.to_string())?;
    write_atomic(path, &bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// File name of the CLI's command file, next to the state file.
pub const COMMAND_FILE: &str = "mirror-command";

/// `opha-sidecar mirror promote|demote|auto --config FILE`: leaves the command for the
/// running mirror, which takes it within its tick.
pub fn request(dir: &Path, cmd: Command) -> Result<(), String> {
    let text = serde_json::to_vec(&cmd).map_err(|e| e.to_string())?;
    let path = dir.join(COMMAND_FILE);
    write_atomic(&path, &text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Takes the pending command (the running mirror, each tick). A file that does not hold a
/// command is removed and reported.
pub fn take_request(dir: &Path) -> Result<Option<Command>, String> {
    let path = dir.join(COMMAND_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| format!("{}: not a mirror command: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(take_request(dir.path()).unwrap(), None);
        request(dir.path(), Command::Promote).unwrap();
        assert_eq!(take_request(dir.path()).unwrap(), Some(Command::Promote));
        assert_eq!(take_request(dir.path()).unwrap(), None);
        std::fs::write(dir.path().join(COMMAND_FILE), b"nonsense").unwrap();
        assert!(take_request(dir.path()).is_err());
        assert_eq!(take_request(dir.path()).unwrap(), None, "removed");
    }

    #[test]
    fn state_persists_and_metrics_render() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        assert_eq!(load_state(&path).unwrap(), MirrorState::default());
        let c = MirrorControl::new(PromotionConfig::default(), MirrorState::default(), 0);
        let d = c.promote(5);
        assert_eq!(d.len(), 1);
        store_state(&path, &c.saved()).unwrap();
        let saved = load_state(&path).unwrap();
        assert_eq!(saved.forced, Some(Role::Active));
        let again = MirrorControl::new(PromotionConfig::default(), saved, 0);
        assert_eq!(
            again.role(),
            Role::Active,
            "an operator's promote survives a restart"
        );
        let mut text = String::new();
        again.render("poller-1", 2_000_000_000, &mut text);
        assert!(text.contains("opha_mirror_promoted{poller=\"poller-1\"} 1"));
        assert!(text.contains("opha_mirror_poller_silent_seconds{poller=\"poller-1\"} 2.000"));
        assert!(text.contains("opha_mirror_promotions_total{poller=\"poller-1\"} 1"));
    }
}
