//! Config push, primary side: the desired config of every poller, stored durably and
//! versioned, pushed by the active primary only, with a status per poller for the page.
//!
//! - [`ConfigPushes::set`] (through [`super::Shared::push_config`]) validates a poller's
//!   config text (errors name the key; the poller must be in the `[[poller]]` registry),
//!   gives it the next version (above every version this primary stored or saw the poller
//!   run) and writes `<store.dir>/config/<poller>.toml` (version and text; temporary file,
//!   fsync, rename, directory fsync) before it counts. Blocking: call off the async workers.
//! - Per poller connection, [`serve`] takes the poller's config stream (opened by the poller
//!   once its link streams, [`crate::poller::bus::config`]), learns the version it runs, and
//!   pushes the desired config when this primary acts for the poller
//!   ([`super::Shared::acting_term`]; the push carries the term) and the poller runs an older
//!   version: on every change and on every (re)connect, so a poller that was offline gets
//!   the latest version when it returns. A rejected version is not pushed again (the reason
//!   stays on the status until a newer version); a push refused as "not active" is tried
//!   again once this primary acts with another term.
//! - [`ConfigPushes::status`] is what the page shows per poller: desired, running, pending,
//!   last failure; the same as metrics in [`ConfigPushes::render`].
//!
//! Each primary keeps its own desired configs: the one that acts pushes its own. Versions
//! stay monotonic per poller across primaries because a primary numbers above what it saw
//! the poller run, and a poller ignores versions at or below its own.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opha_bus::config_push::{ConfigFrame, ConfigMessage, ConfigOutcome, ConfigPush};
use opha_common::wire::{PeerId, PeerRole};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::Shared;
use crate::config::push::{ValidationError, validate_for};
use crate::poller::bus::config::{read, write};

/// Directory under the store's directory that holds the desired configs.
pub const CONFIG_DIR: &str = "config";
const SUFFIX: &str = ".toml";
/// How often a connection task looks at whether this primary acts (fencing has no
/// notification; a change is pushed within this after the primary starts acting).
pub const ACTING_POLL: Duration = Duration::from_millis(20);
/// A push unanswered this long is sent again (the poller answers in milliseconds unless its
/// kernel is stuck; a second push of the same version is harmless).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A desired config as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Desired {
    pub version: u64,
    pub config: String,
}

/// The last failure of a push to a poller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PushFailure {
    pub version: u64,
    /// `rejected` (the poller refused the config) or `not_active` (fencing).
    pub kind: &'static str,
    pub reason: String,
}

/// What the page shows for one poller.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PollerConfigStatus {
    pub poller: String,
    /// The version stored here to run (none: never set on this primary).
    pub desired_version: Option<u64>,
    /// The version the poller said it runs (none: not heard since this primary started).
    pub running_version: Option<u64>,
    /// A push sent and not answered yet.
    pub pending_version: Option<u64>,
    pub last_failure: Option<PushFailure>,
    /// The poller's config stream to this primary is up.
    pub connected: bool,
}

#[derive(Debug, Default)]
struct PollerState {
    desired: Option<Desired>,
    running: Option<u64>,
    pending: Option<(u64, Instant)>,
    failure: Option<PushFailure>,
    /// The version last rejected (not pushed again).
    rejected: Option<u64>,
    /// The term a push was refused as not active with (tried again under another term).
    refused_term: Option<u64>,
    connected: bool,
}

/// Counters for the metrics.
#[derive(Debug, Default)]
pub struct PushCounters {
    pub sent: AtomicU64,
    pub applied: AtomicU64,
    pub current: AtomicU64,
    pub rejected: AtomicU64,
    pub not_active: AtomicU64,
}

/// Desired configs and push status of every poller; see the module docs.
#[derive(Debug)]
pub struct ConfigPushes {
    dir: PathBuf,
    pollers: Mutex<HashMap<PeerId, PollerState>>,
    /// Bumped on every new desired version; connection tasks watch it.
    changes: watch::Sender<u64>,
    pub counters: PushCounters,
}

impl ConfigPushes {
    /// Loads every stored desired config from `<store_dir>/config` (blocking).
    pub fn open(store_dir: &Path) -> anyhow::Result<Self> {
        let dir = store_dir.join(CONFIG_DIR);
        fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        let mut pollers = HashMap::new();
        let rd = fs::read_dir(&dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        for entry in rd {
            let entry = entry.map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(SUFFIX)) else {
                continue; // temporary files of an interrupted write
            };
            let path = entry.path();
            let poller = PeerId::new(id)
                .map_err(|e| anyhow::anyhow!("{}: not a poller's config: {e}", path.display()))?;
            let text = fs::read_to_string(&path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let desired: Desired =
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            pollers.insert(
                poller,
                PollerState {
                    desired: Some(desired),
                    ..PollerState::default()
                },
            );
        }
        Ok(Self {
            dir,
            pollers: Mutex::new(pollers),
            changes: watch::channel(0).0,
            counters: PushCounters::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, PollerState>> {
        self.pollers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Validates and stores `text` as `poller`'s desired config; returns its version.
    /// Blocking (fsync).
    pub fn set(&self, poller: &PeerId, text: &str) -> Result<u64, ValidationError> {
        validate_for(poller, text)?;
        // One writer at a time per primary: the version is decided and written under the lock.
        let mut p = self.lock();
        let st = p.entry(poller.clone()).or_default();
        let version = st
            .desired
            .as_ref()
            .map_or(0, |d| d.version)
            .max(st.running.unwrap_or(0))
            + 1;
        let desired = Desired {
            version,
            config: text.to_string(),
        };
        self.persist(poller, &desired)
            .map_err(|e| ValidationError::one("", format!("storing the config: {e}")))?;
        st.desired = Some(desired);
        drop(p);
        self.changes.send_modify(|g| *g += 1);
        log::info!("config version {version} stored for {poller}");
        Ok(version)
    }

    fn persist(&self, poller: &PeerId, d: &Desired) -> anyhow::Result<()> {
        let text = toml::to_string(d)?;
        let path = self.dir.join(format!("{}{SUFFIX}", poller.as_str()));
        let tmp = self.dir.join(format!("{}{SUFFIX}.tmp", poller.as_str()));
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// The stored desired config of `poller`.
    pub fn desired(&self, poller: &PeerId) -> Option<Desired> {
        self.lock().get(poller).and_then(|s| s.desired.clone())
    }

    /// The page's view of `poller`.
    pub fn status(&self, poller: &PeerId) -> PollerConfigStatus {
        let p = self.lock();
        status_of(poller, p.get(poller))
    }

    /// Every poller with a desired config or a config stream, by id.
    pub fn statuses(&self) -> Vec<PollerConfigStatus> {
        let p = self.lock();
        let sorted: BTreeMap<&PeerId, &PollerState> = p.iter().collect();
        sorted
            .into_iter()
            .map(|(id, s)| status_of(id, Some(s)))
            .collect()
    }

    /// What to push now, if anything: the desired config when this primary acts with `term`,
    /// the poller runs an older version, and no push of it is waiting for its answer.
    fn next_push(&self, poller: &PeerId, term: Option<u64>, now: Instant) -> Option<ConfigPush> {
        let term = term?;
        let mut p = self.lock();
        let st = p.get_mut(poller)?;
        let d = st.desired.as_ref()?;
        let running = st.running?;
        if d.version <= running
            || st.rejected == Some(d.version)
            || st.refused_term == Some(term)
            || st
                .pending
                .is_some_and(|(v, at)| v == d.version && now < at + ANSWER_TIMEOUT)
        {
            return None;
        }
        let push = ConfigPush {
            version: d.version,
            term,
            config: d.config.clone(),
        };
        st.pending = Some((d.version, now));
        Some(push)
    }

    fn connected(&self, poller: &PeerId, running: u64) {
        let mut p = self.lock();
        let st = p.entry(poller.clone()).or_default();
        st.connected = true;
        st.running = Some(running);
        st.pending = None;
        st.refused_term = None;
    }

    /// The poller runs another version now (applied from another primary).
    fn running(&self, poller: &PeerId, running: u64) {
        if let Some(st) = self.lock().get_mut(poller) {
            st.running = Some(running);
        }
    }

    fn disconnected(&self, poller: &PeerId) {
        if let Some(st) = self.lock().get_mut(poller) {
            st.connected = false;
            st.pending = None;
        }
    }

    /// The poller's answer to a push sent with `term`.
    fn answered(&self, poller: &PeerId, term: u64, r: opha_bus::config_push::ConfigResult) {
        let c = &self.counters;
        let mut p = self.lock();
        let st = p.entry(poller.clone()).or_default();
        if st.pending.is_some_and(|(v, _)| v == r.version) {
            st.pending = None;
        }
        st.running = Some(r.running);
        match r.outcome {
            ConfigOutcome::Applied => {
                c.applied.fetch_add(1, Ordering::Relaxed);
                st.failure = None;
                log::info!("{poller} runs config version {}", r.version);
            }
            ConfigOutcome::AlreadyCurrent => {
                c.current.fetch_add(1, Ordering::Relaxed);
            }
            ConfigOutcome::Rejected(reason) => {
                c.rejected.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "{poller} rejected config version {} (runs {}): {reason}",
                    r.version,
                    r.running
                );
                st.rejected = Some(r.version);
                st.failure = Some(PushFailure {
                    version: r.version,
                    kind: "rejected",
                    reason,
                });
            }
            ConfigOutcome::NotActive(reason) => {
                c.not_active.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "{poller} refused config version {} as not from its active primary: {reason}",
                    r.version
                );
                st.refused_term = Some(term);
                st.failure = Some(PushFailure {
                    version: r.version,
                    kind: "not_active",
                    reason,
                });
            }
        }
    }

    /// Prometheus text.
    pub fn render(&self, out: &mut String) {
        let statuses = self.statuses();
        let _ = writeln!(
            out,
            "# HELP opha_receiver_config_version Config versions per poller: desired here, running on the poller.\n# TYPE opha_receiver_config_version gauge"
        );
        for s in &statuses {
            for (kind, v) in [
                ("desired", s.desired_version),
                ("running", s.running_version),
            ] {
                if let Some(v) = v {
                    let _ = writeln!(
                        out,
                        "opha_receiver_config_version{{poller=\"{}\",kind=\"{kind}\"}} {v}",
                        s.poller
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP opha_receiver_config_pending 1 while a config push to the poller awaits its answer.\n# TYPE opha_receiver_config_pending gauge"
        );
        for s in &statuses {
            let _ = writeln!(
                out,
                "opha_receiver_config_pending{{poller=\"{}\"}} {}",
                s.poller,
                u8::from(s.pending_version.is_some())
            );
        }
        let _ = writeln!(
            out,
            "# HELP opha_receiver_config_pushes_total Config pushes sent, and the pollers' answers by outcome.\n# TYPE opha_receiver_config_pushes_total counter"
        );
        let c = &self.counters;
        for (outcome, v) in [
            ("sent", &c.sent),
            ("applied", &c.applied),
            ("current", &c.current),
            ("rejected", &c.rejected),
            ("not_active", &c.not_active),
        ] {
            let _ = writeln!(
                out,
                "opha_receiver_config_pushes_total{{outcome=\"{outcome}\"}} {}",
                v.load(Ordering::Relaxed)
            );
        }
    }
}

fn status_of(poller: &PeerId, s: Option<&PollerState>) -> PollerConfigStatus {
    let Some(s) = s else {
        return PollerConfigStatus {
            poller: poller.to_string(),
            ..PollerConfigStatus::default()
        };
    };
    PollerConfigStatus {
        poller: poller.to_string(),
        desired_version: s.desired.as_ref().map(|d| d.version),
        running_version: s.running,
        pending_version: s.pending.map(|(v, _)| v),
        last_failure: s.failure.clone(),
        connected: s.connected,
    }
}

/// Aborts the task when dropped (the session ended).
pub struct TaskGuard(Option<tokio::task::JoinHandle<()>>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.abort();
        }
    }
}

/// Starts the config task of a poller connection (primaries only; a mirror never pushes).
/// Call after the session took the poller's control stream: the next bidirectional stream
/// the poller opens is its config stream.
pub fn spawn(shared: &Arc<Shared>, conn: &quinn::Connection, poller: &PeerId) -> TaskGuard {
    if shared.role != PeerRole::Primary {
        return TaskGuard(None);
    }
    let (s, c, p) = (shared.clone(), conn.clone(), poller.clone());
    TaskGuard(Some(tokio::spawn(async move {
        if let Err(e) = serve(&s, &c, &p).await {
            log::debug!("config stream of {p}: {e:#}");
        }
        s.configs.disconnected(&p);
    })))
}

/// One poller's config stream (see the module docs).
pub async fn serve(
    shared: &Arc<Shared>,
    conn: &quinn::Connection,
    poller: &PeerId,
) -> anyhow::Result<()> {
    let frame = ConfigFrame::default();
    let (mut send, mut recv) = conn.accept_bi().await?;
    let running = match read(&mut recv, &frame).await? {
        Some(ConfigMessage::State(s)) => s.running,
        Some(m) => anyhow::bail!("expected the config state, got a {:?}", m.kind()),
        None => return Ok(()),
    };
    let configs = &shared.configs;
    configs.connected(poller, running);
    let mut changes = configs.changes.subscribe();
    let (tx, mut answers) = tokio::sync::mpsc::channel(4);
    let reader = tokio::spawn(async move {
        loop {
            let r = read(&mut recv, &frame).await;
            let end = !matches!(r, Ok(Some(_)));
            if tx.send(r).await.is_err() || end {
                return;
            }
        }
    });
    let _reader = TaskGuard(Some(reader));
    // The term each version was sent with (an answer is judged against it).
    let mut sent_terms: HashMap<u64, u64> = HashMap::new();
    loop {
        changes.borrow_and_update();
        let term = shared.acting_term(poller);
        if let Some(push) = configs.next_push(poller, term, Instant::now()) {
            log::info!(
                "pushing config version {} to {poller} (term {})",
                push.version,
                push.term
            );
            sent_terms.insert(push.version, push.term);
            configs.counters.sent.fetch_add(1, Ordering::Relaxed);
            write(&mut send, &frame, &ConfigMessage::Push(push)).await?;
        }
        tokio::select! {
            _ = tokio::time::sleep(ACTING_POLL) => {}
            r = changes.changed() => r?,
            a = answers.recv() => match a {
                Some(Ok(Some(ConfigMessage::Result(r)))) => {
                    let term = sent_terms.remove(&r.version).unwrap_or(0);
                    configs.answered(poller, term, r);
                }
                Some(Ok(Some(ConfigMessage::State(s)))) => configs.running(poller, s.running),
                Some(Ok(Some(m))) => anyhow::bail!("expected a config result, got a {:?}", m.kind()),
                Some(Ok(None)) | None => return Ok(()),
                Some(Err(e)) => return Err(e),
            },
        }
    }
}
