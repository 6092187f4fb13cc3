//! The primary's side of fencing: one [`opha_bus::fencing::Primary`] per poller, fed by the
//! poller's [`Grant`]s.
//!
//! - A grant names the active primary by peer id; this primary maps its own id to index 0 and
//!   any other id to another index, so it needs nothing of the poller's configuration.
//! - The highest term seen is persisted (`<store.dir>/fencing/<poller>.term`, written to a
//!   temporary file, fsync'd, renamed, directory fsync'd) *before* the grant is applied, and
//!   loaded at start: a restarted primary never acts on a term older than one it has seen.
//! - Grants below the highest term are stale: ignored, counted
//!   (`opha_receiver_rejects_total{reason="stale_grant"}`), and answered with the current state
//!   so the poller learns the higher term.
//! - Acting is a lease: a grant naming this primary lets it act for the grant's `lease_ms`
//!   (shorter than the poller's `failover_after`), renewed by every later grant that names it.
//!   A primary cut off from its poller stops acting when the lease runs out, before the poller
//!   grants another primary; it also stops at once when the poller's connection ends.
//! - Every grant is answered with a [`Term`]: the highest term and whether this primary acts.
//!   A mirror never acts: it drops grants (`rejects_total{reason="not_primary"}`) unanswered.

use std::collections::HashMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use opha_bus::fencing::{self, Primary};
use opha_bus::message::{Grant, Term};
use opha_common::wire::PeerId;

/// Directory under the store's directory that holds the per-poller term files.
pub const FENCING_DIR: &str = "fencing";
/// Suffix of a term file.
const SUFFIX: &str = ".term";

/// This primary's index in its own [`Primary`]s (any other primary is [`OTHER`]).
const ME: usize = 0;
const OTHER: usize = 1;

/// Fencing state of every poller this primary has heard from.
#[derive(Debug)]
pub struct Fencing {
    me: PeerId,
    dir: PathBuf,
    pollers: Mutex<HashMap<PeerId, PollerFence>>,
}

#[derive(Debug)]
struct PollerFence {
    primary: Primary,
    /// Highest term durable in the term file.
    persisted: u64,
    /// While acting: until when the last grant naming this primary lets it act.
    lease_until: Option<Instant>,
}

impl PollerFence {
    fn new(persisted: u64) -> Self {
        Self {
            primary: Primary::new(ME, persisted),
            persisted,
            lease_until: None,
        }
    }

    fn acting_term(&self, now: Instant) -> Option<u64> {
        let term = self.primary.acting_term()?;
        self.lease_until.is_some_and(|t| now < t).then_some(term)
    }

    fn answer(&self, now: Instant) -> Term {
        Term {
            highest: self.primary.highest_term(),
            acting: self.acting_term(now).is_some(),
        }
    }
}

/// What became of one grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantOutcome {
    /// The answer for the poller.
    pub answer: Term,
    /// The grant's term was below the highest seen: ignored.
    pub stale: bool,
}

impl Fencing {
    /// Loads every poller's persisted term from `<store_dir>/fencing` (blocking). A term file
    /// that does not parse is an error: acting without knowing the highest term could act on
    /// an old one.
    pub fn open(me: PeerId, store_dir: &Path) -> anyhow::Result<Self> {
        let dir = store_dir.join(FENCING_DIR);
        fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        let mut pollers = HashMap::new();
        let rd = fs::read_dir(&dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        for entry in rd {
            let entry = entry.map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(SUFFIX)) else {
                continue; // temporary files of an interrupted write, anything else
            };
            let path = entry.path();
            let poller = PeerId::new(id).map_err(|e| {
                anyhow::anyhow!("{}: not a poller's term file: {e}", path.display())
            })?;
            let text = fs::read_to_string(&path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let term: u64 = text.trim().parse().map_err(|e| {
                anyhow::anyhow!("{}: not a fencing term ({e}); {text:?}", path.display())
            })?;
            pollers.insert(poller, PollerFence::new(term));
        }
        Ok(Self {
            me,
            dir,
            pollers: Mutex::new(pollers),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, PollerFence>> {
        self.pollers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The term this primary acts with for `poller`, if it acts now.
    pub fn acting_term(&self, poller: &PeerId) -> Option<u64> {
        let now = Instant::now();
        self.lock().get(poller).and_then(|f| f.acting_term(now))
    }

    /// The highest term seen from `poller` (0: none).
    pub fn highest_term(&self, poller: &PeerId) -> u64 {
        self.lock()
            .get(poller)
            .map_or(0, |f| f.primary.highest_term())
    }

    /// Whether applying `grant` first needs a term file write ([`Fencing::on_grant`] blocks).
    pub fn needs_persist(&self, poller: &PeerId, grant: &Grant) -> bool {
        let persisted = self.lock().get(poller).map_or(0, |f| f.persisted);
        grant.term > persisted
    }

    /// A grant from `poller`. Blocking when the term is new (see [`Fencing::needs_persist`]):
    /// the term is durable before it counts. On a write error the grant is not applied.
    pub fn on_grant(&self, poller: &PeerId, grant: &Grant) -> anyhow::Result<GrantOutcome> {
        if self.needs_persist(poller, grant) {
            self.persist(poller, grant.term)?;
            let mut p = self.lock();
            let f = p
                .entry(poller.clone())
                .or_insert_with(|| PollerFence::new(0));
            f.persisted = f.persisted.max(grant.term);
        }
        let now = Instant::now();
        let mut p = self.lock();
        let f = p
            .entry(poller.clone())
            .or_insert_with(|| PollerFence::new(0));
        if grant.term < f.primary.highest_term() {
            return Ok(GrantOutcome {
                answer: f.answer(now),
                stale: true,
            });
        }
        let was = f.primary.acting_term();
        let mapped = fencing::Grant {
            term: grant.term,
            primary: grant
                .active
                .as_ref()
                .map(|a| if *a == self.me { ME } else { OTHER }),
        };
        f.primary.on_grant(mapped);
        let names_me = grant.active.as_ref() == Some(&self.me);
        match f.primary.acting_term() {
            Some(t) if names_me && t == grant.term => {
                f.lease_until = Some(now + Duration::from_millis(u64::from(grant.lease_ms)));
            }
            Some(_) => {}
            None => f.lease_until = None,
        }
        let now_acting = f.acting_term(now);
        if was != now_acting {
            match now_acting {
                Some(t) => log::info!("acting as the active primary of {poller} (term {t})"),
                None => log::info!(
                    "no longer the active primary of {poller} (term {})",
                    f.primary.highest_term()
                ),
            }
        }
        Ok(GrantOutcome {
            answer: f.answer(now),
            stale: false,
        })
    }

    /// The poller's connection ended: this primary stops acting for it.
    pub fn disconnected(&self, poller: &PeerId) {
        if let Some(f) = self.lock().get_mut(poller) {
            if f.primary.acting_term().is_some() {
                log::info!("lost {poller}: no longer its active primary");
            }
            f.primary.on_disconnected();
            f.lease_until = None;
        }
    }

    /// `(poller, acting, highest term)` of every poller, for the metrics.
    pub fn snapshot(&self) -> Vec<(PeerId, bool, u64)> {
        let now = Instant::now();
        let mut v: Vec<_> = self
            .lock()
            .iter()
            .map(|(p, f)| {
                (
                    p.clone(),
                    f.acting_term(now).is_some(),
                    f.primary.highest_term(),
                )
            })
            .collect();
        v.sort();
        v
    }

    /// Writes `term` as `poller`'s highest durably: after a crash the file holds the old term
    /// or the new one.
    fn persist(&self, poller: &PeerId, term: u64) -> anyhow::Result<()> {
        let path = self.dir.join(format!("{}{SUFFIX}", poller.as_str()));
        let tmp = self.dir.join(format!("{}{SUFFIX}.tmp", poller.as_str()));
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            writeln!(f, "{term}")?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| anyhow::anyhow!("{}: writing term {term}: {e}", path.display()))
    }
}
