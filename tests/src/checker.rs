//! The fault tests' ledger: every record the test caused to be generated, checked against
//! what each receiver's store holds.
//!
//! A test registers what it caused, keyed the way the store dedupes: per poller
//! `(poller, epoch, seq)` (from the poller's own log, e.g. `opha-sidecar log dump`), and/or
//! the ids of the events it injected. At the end it hands each receiver's stored keys (any
//! iterator, duplicates included, in any order) to [`Checker::check`], which counts lost,
//! duplicated and unexpected records and names the first few of each.
//!
//! ```ignore
//! let mut ledger = Checker::new();
//! ledger.expect_seqs(&poller, epoch, 0..1000);
//! ledger.expect_event(event_id);
//! let report = ledger.check("primary-main", store_keys);
//! report.ensure_exact()?; // 0 lost, 0 duplicated, nothing unexpected
//! ```

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    ops::Range,
};

use anyhow::{Result, bail};
use opha_common::wire::{EventId, PollerId, Sequenced};

/// How many keys of each kind a [`Report`] names.
pub const DEFAULT_SHOWN: usize = 10;

/// The identity of one record as a receiver stores it exactly once.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordKey {
    /// The bus's dedupe key.
    Seq {
        poller: PollerId,
        epoch: u64,
        seq: u64,
    },
    /// An event's own id (one event must be stored once, whatever sequence carried it).
    Event(EventId),
}

impl RecordKey {
    pub fn seq(poller: &PollerId, epoch: u64, seq: u64) -> Self {
        Self::Seq {
            poller: poller.clone(),
            epoch,
            seq,
        }
    }

    /// Which poller the key belongs to (events: none).
    pub fn poller(&self) -> Option<&PollerId> {
        match self {
            Self::Seq { poller, .. } => Some(poller),
            Self::Event(_) => None,
        }
    }
}

impl From<&Sequenced> for RecordKey {
    fn from(s: &Sequenced) -> Self {
        Self::seq(&s.poller, s.epoch, s.seq)
    }
}

impl From<EventId> for RecordKey {
    fn from(id: EventId) -> Self {
        Self::Event(id)
    }
}

impl fmt::Display for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Seq { poller, epoch, seq } => write!(f, "{poller}/{epoch}/{seq}"),
            Self::Event(id) => write!(f, "event {id}"),
        }
    }
}

/// Every record a test caused.
#[derive(Clone, Debug, Default)]
pub struct Checker {
    expected: HashSet<RecordKey>,
    /// Keys registered twice: a bug in the test (or in the generator), reported by `check`.
    registered_twice: Vec<RecordKey>,
    shown: usize,
}

impl Checker {
    pub fn new() -> Self {
        Self {
            shown: DEFAULT_SHOWN,
            ..Self::default()
        }
    }

    /// How many keys of each kind reports name (default [`DEFAULT_SHOWN`]).
    pub fn show(mut self, n: usize) -> Self {
        self.shown = n;
        self
    }

    /// Registers one record the test caused. False (and remembered) if it was already known.
    pub fn expect(&mut self, key: impl Into<RecordKey>) -> bool {
        let key = key.into();
        if self.expected.contains(&key) {
            self.registered_twice.push(key);
            return false;
        }
        self.expected.insert(key)
    }

    /// Registers the sequences `seqs` of one poller's epoch.
    pub fn expect_seqs(&mut self, poller: &PollerId, epoch: u64, seqs: Range<u64>) {
        for seq in seqs {
            self.expect(RecordKey::seq(poller, epoch, seq));
        }
    }

    pub fn expect_event(&mut self, id: EventId) -> bool {
        self.expect(RecordKey::Event(id))
    }

    /// Records registered so far.
    pub fn len(&self) -> usize {
        self.expected.len()
    }

    pub fn is_empty(&self) -> bool {
        self.expected.is_empty()
    }

    /// Counts what `receiver` holds (`held`: every stored key, one item per stored copy)
    /// against what was expected.
    pub fn check<I>(&self, receiver: &str, held: I) -> Report
    where
        I: IntoIterator,
        I::Item: Into<RecordKey>,
    {
        let mut copies: HashMap<RecordKey, u64> = HashMap::with_capacity(self.expected.len());
        let mut held_total = 0u64;
        for key in held {
            held_total += 1;
            *copies.entry(key.into()).or_default() += 1;
        }
        let mut report = Report {
            receiver: receiver.to_string(),
            expected: self.expected.len() as u64,
            held: held_total,
            registered_twice: self.registered_twice.clone(),
            ..Report::default()
        };
        for key in &self.expected {
            match copies.get(key) {
                None => {
                    report.lost += 1;
                    *report.lost_by_poller.entry(poller_name(key)).or_default() += 1;
                    report.first_lost.push(key.clone());
                }
                Some(&n) if n > 1 => {
                    report.duplicated += n - 1;
                    report.duplicated_keys += 1;
                    report.first_duplicated.push((key.clone(), n));
                }
                Some(_) => {}
            }
        }
        for (key, &n) in &copies {
            if !self.expected.contains(key) {
                report.unexpected += n;
                report.unexpected_keys += 1;
                report.first_unexpected.push((key.clone(), n));
            }
        }
        // Sorted so the first keys shown are the first in sequence, and runs stay readable.
        report.first_lost.sort();
        report.first_lost.truncate(self.shown);
        report.first_duplicated.sort();
        report.first_duplicated.truncate(self.shown);
        report.first_unexpected.sort();
        report.first_unexpected.truncate(self.shown);
        report
    }
}

fn poller_name(key: &RecordKey) -> String {
    key.poller()
        .map_or_else(|| "(events)".to_string(), |p| p.to_string())
}

/// What one receiver holds compared with what the test caused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub receiver: String,
    /// Records the test caused, and stored copies the receiver returned.
    pub expected: u64,
    pub held: u64,
    /// Expected records the receiver does not hold.
    pub lost: u64,
    /// Extra copies of records held more than once (a record held 3 times counts 2).
    pub duplicated: u64,
    /// Held copies of records the test did not cause (forged, or not registered).
    pub unexpected: u64,
    /// Distinct keys held more than once, and distinct unexpected keys.
    pub duplicated_keys: u64,
    pub unexpected_keys: u64,
    /// Lost records per poller ("(events)" for event ids).
    pub lost_by_poller: BTreeMap<String, u64>,
    /// The first lost keys, in key order.
    pub first_lost: Vec<RecordKey>,
    /// The first duplicated keys with their number of copies.
    pub first_duplicated: Vec<(RecordKey, u64)>,
    /// The first unexpected keys with their number of copies.
    pub first_unexpected: Vec<(RecordKey, u64)>,
    /// Keys the test registered twice (its own bug).
    pub registered_twice: Vec<RecordKey>,
}

impl Report {
    /// 0 lost and 0 duplicated (records the test did not register are allowed).
    pub fn is_clean(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.registered_twice.is_empty()
    }

    /// Clean, and the receiver holds nothing the test did not cause.
    pub fn is_exact(&self) -> bool {
        self.is_clean() && self.unexpected == 0
    }

    /// Fails with the whole report unless [`Report::is_clean`].
    pub fn ensure_clean(&self) -> Result<()> {
        if !self.is_clean() {
            bail!("{self}");
        }
        Ok(())
    }

    /// Fails with the whole report unless [`Report::is_exact`].
    pub fn ensure_exact(&self) -> Result<()> {
        if !self.is_exact() {
            bail!("{self}");
        }
        Ok(())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: expected {}, held {}: {} lost, {} duplicated, {} unexpected",
            self.receiver, self.expected, self.held, self.lost, self.duplicated, self.unexpected
        )?;
        if !self.lost_by_poller.is_empty() {
            let per: Vec<String> = self
                .lost_by_poller
                .iter()
                .map(|(p, n)| format!("{p}: {n}"))
                .collect();
            write!(f, "\n  lost per poller: {}", per.join(", "))?;
        }
        // Lost keys are one copy each; the other lists name keys with their copy counts.
        for (what, keys, distinct) in [
            (
                "lost",
                self.first_lost
                    .iter()
                    .map(|k| k.to_string())
                    .collect::<Vec<_>>(),
                self.lost,
            ),
            (
                "duplicated",
                self.first_duplicated
                    .iter()
                    .map(|(k, n)| format!("{k} x{n}"))
                    .collect(),
                self.duplicated_keys,
            ),
            (
                "unexpected",
                self.first_unexpected
                    .iter()
                    .map(|(k, n)| format!("{k} x{n}"))
                    .collect(),
                self.unexpected_keys,
            ),
        ] {
            if keys.is_empty() {
                continue;
            }
            let tail = if distinct > keys.len() as u64 {
                format!(" (first {} of {distinct} keys)", keys.len())
            } else {
                String::new()
            };
            write!(f, "\n  {what}{tail}: {}", keys.join(", "))?;
        }
        if !self.registered_twice.is_empty() {
            let keys: Vec<String> = self
                .registered_twice
                .iter()
                .take(DEFAULT_SHOWN)
                .map(|k| k.to_string())
                .collect();
            write!(f, "\n  registered twice by the test: {}", keys.join(", "))?;
        }
        Ok(())
    }
}

/// Checks several receivers at once; the error names every receiver that is not clean.
pub fn ensure_all_clean<'a>(reports: impl IntoIterator<Item = &'a Report>) -> Result<()> {
    let bad: Vec<String> = reports
        .into_iter()
        .filter(|r| !r.is_clean())
        .map(|r| r.to_string())
        .collect();
    if !bad.is_empty() {
        bail!("{}", bad.join("\n"));
    }
    Ok(())
}
