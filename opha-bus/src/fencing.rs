//! Which primary is active for a poller, fenced by a term. Pure.
//!
//! Primaries are ordered (main first, then redundant ones). The poller's [`Arbiter`] makes
//! the first reachable primary active and raises the term on every change of the active
//! primary (the term is persisted with the poller's state, so it never goes back, also
//! across restarts). It tells the chosen primary with a [`Grant`] (term, primary).
//!
//! Each primary runs a [`Primary`]: it acts as active only with the highest term it has
//! seen, and steps down as soon as it sees a higher term anywhere (a grant to another
//! primary, relayed by the poller, or a peer primary's term, as primaries watch each other).
//! Every action of the active primary (config push, next issue) carries its term, and the
//! poller accepts it only when [`Arbiter::accepts`] says so: the current term and the current
//! active primary. So a main primary that returns while the redundant one still believes it
//! is active can never have both acting: at most one term is current, and each term belongs
//! to exactly one primary.

use serde::{Deserialize, Serialize};

/// "Primary `primary` is active for this poller with `term`" (`None`: no primary is
/// reachable; the term still rises, so that whoever was active steps down).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Grant {
    pub term: u64,
    pub primary: Option<usize>,
}

/// On the poller: chooses the active primary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arbiter {
    reachable: Vec<bool>,
    term: u64,
    active: Option<usize>,
}

impl Arbiter {
    /// `primaries` in configured order; `term`: the persisted term (0 on first start). Nothing
    /// is reachable until observed.
    pub fn new(primaries: usize, term: u64) -> Self {
        Self {
            reachable: vec![false; primaries],
            term,
            active: None,
        }
    }

    pub fn term(&self) -> u64 {
        self.term
    }

    pub fn active(&self) -> Option<usize> {
        self.active
    }

    /// The current grant.
    pub fn grant(&self) -> Grant {
        Grant {
            term: self.term,
            primary: self.active,
        }
    }

    /// A reachability observation (connection up or down, keep-alive lost). Returns the new
    /// grant when the active primary changed: persist the term first, then send the grant to
    /// every primary (the chosen one acts, the others step down).
    pub fn observe(&mut self, primary: usize, reachable: bool) -> Option<Grant> {
        let slot = self.reachable.get_mut(primary)?;
        *slot = reachable;
        self.choose()
    }

    /// A primary reports a term (its own or one it has seen). A term above ours means our
    /// persisted state was lost or restored from an old copy: jump beyond it and grant again,
    /// so that no term is ever granted twice.
    pub fn observe_term(&mut self, term: u64) -> Option<Grant> {
        (term > self.term).then(|| self.regrant(term))
    }

    /// After a restart (from the persisted term), with the highest term the primaries
    /// report: grants anew above both, so whatever was granted before is fenced.
    pub fn resume(&mut self, seen: u64) -> Grant {
        self.regrant(seen)
    }

    fn regrant(&mut self, seen: u64) -> Grant {
        self.term = self.term.max(seen).saturating_add(1);
        self.active = self.reachable.iter().position(|&r| r);
        self.grant()
    }

    fn choose(&mut self) -> Option<Grant> {
        let first = self.reachable.iter().position(|&r| r);
        if first == self.active {
            return None;
        }
        self.active = first;
        self.term = self.term.saturating_add(1);
        Some(self.grant())
    }

    /// Whether an action by `primary` carrying `term` is accepted now.
    pub fn accepts(&self, term: u64, primary: usize) -> bool {
        term == self.term && self.active == Some(primary)
    }
}

/// On each primary: whether it acts as active for one poller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Primary {
    index: usize,
    highest: u64,
    active: Option<u64>,
}

impl Primary {
    pub fn new(index: usize, highest_term_seen: u64) -> Self {
        Self {
            index,
            highest: highest_term_seen,
            active: None,
        }
    }

    /// The term this primary acts with, when it believes it is active.
    pub fn acting_term(&self) -> Option<u64> {
        self.active
    }

    pub fn highest_term(&self) -> u64 {
        self.highest
    }

    /// A grant arrived (for this primary or relayed about another). Grants below the highest
    /// term seen are ignored, so a delayed old grant cannot reactivate it; the current grant
    /// sent again (after a reconnect) reactivates the primary it names.
    pub fn on_grant(&mut self, grant: Grant) {
        if grant.term < self.highest
            || (grant.term == self.highest && grant.primary != Some(self.index))
        {
            return;
        }
        self.highest = grant.term;
        self.active = (grant.primary == Some(self.index)).then_some(grant.term);
    }

    /// A term seen from a peer primary or the poller (not a grant): step down if it is newer.
    pub fn on_peer_term(&mut self, term: u64) {
        if term > self.highest {
            self.highest = term;
            self.active = None;
        }
    }

    /// This primary lost the poller (connection down): it stops acting for it.
    pub fn on_disconnected(&mut self) {
        self.active = None;
    }
}
