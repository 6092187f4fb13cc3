//! The node states handed over between a poller and its mirror: what has been *reported* for
//! each node (the alarms whose "down" was sent and whose "up" was not yet), and how an
//! aggregation core is made to continue from them. Pure: no I/O.
//!
//! [`NodeStates`] is fed every state-change event that the active side reports (the poller's
//! stream as the mirror's receiver sees it while standby; the mirror's own outgoing events
//! while active). On a role change the side taking over calls [`NodeStates::seed`] on its
//! aggregator's state before its next poll: every alarm flag of the core is set to the reported
//! one, and every node is evaluated again at the next poll. The core then emits a "down" only
//! for a node reported up (or never reported) that its own evidence shows down, and an "up"
//! only for a node reported down that its evidence shows up: each event is a real transition
//! relative to the last report, so no node changes state twice and no transition is lost.
//!
//! [`NodeStates::observe`] also says whether an event is such a transition, so
//! [`NodeStates::filter`] can drop repeats (a guard for events produced before a seed).
//!
//! Threshold alarms (RTT, loss per class) are handed over the same way as node, SNMP and
//! service-port alarms.

use std::collections::{BTreeMap, BTreeSet};

use opha_common::node::PROTO_CLASSES;
use opha_common::wire::{Event, EventKind, PollClass, Record, Subject};
use serde::{Deserialize, Serialize};

use crate::aggregate::{AggState, NodeId, NodeState};

/// The reported alarms of one node (all clear: up, or never reported).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alarms {
    pub node_down: bool,
    pub snmp_down: bool,
    pub ports_down: BTreeSet<u16>,
    /// Per [`PollClass`] (icmp, snmp, tcp).
    pub rtt_above: [bool; PROTO_CLASSES],
    pub loss_above: [bool; PROTO_CLASSES],
}

impl Alarms {
    pub fn is_clear(&self) -> bool {
        *self == Alarms::default()
    }
}

/// What an event is to the reported state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// It changes the reported state (recorded).
    Transition,
    /// The reported state already says so: a repeat.
    Repeat,
    /// Not a node state change (external events, other subjects).
    Other,
}

/// Counts of a [`NodeStates::seed`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeedReport {
    /// Nodes whose alarm flags changed.
    pub changed: usize,
    /// Nodes added to the core (reported, not yet seen by it).
    pub added: usize,
}

fn class_index(c: PollClass) -> usize {
    match c {
        PollClass::Icmp => 0,
        PollClass::Snmp => 1,
        PollClass::Tcp => 2,
    }
}

/// The reported alarms of every node with at least one alarm raised.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStates {
    #[serde(with = "as_seq")]
    nodes: BTreeMap<NodeId, Alarms>,
}

impl NodeStates {
    pub fn new() -> Self {
        Self::default()
    }

    /// The alarms an aggregation core has raised (what it reported, if it was the active
    /// side).
    pub fn from_aggregator(state: &AggState) -> Self {
        let mut s = Self::new();
        for (id, n) in &state.nodes {
            let mut a = Alarms {
                node_down: n.node_alarm,
                snmp_down: n.snmp_alarm,
                ports_down: n
                    .ports
                    .iter()
                    .filter(|(_, p)| p.alarm)
                    .map(|(&p, _)| p)
                    .collect(),
                ..Alarms::default()
            };
            for (i, c) in n.classes.iter().enumerate() {
                a.rtt_above[i] = c.rtt_alarm;
                a.loss_above[i] = c.loss_alarm;
            }
            if !a.is_clear() {
                s.nodes.insert(*id, a);
            }
        }
        s
    }

    pub fn get(&self, id: &NodeId) -> Option<&Alarms> {
        self.nodes.get(id)
    }

    /// Whether the node is reported down.
    pub fn is_down(&self, id: &NodeId) -> bool {
        self.nodes.get(id).is_some_and(|a| a.node_down)
    }

    /// Nodes with an alarm raised.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, &Alarms)> {
        self.nodes.iter()
    }

    /// A record of the active side's stream.
    pub fn observe(&mut self, record: &Record) -> Seen {
        match record {
            Record::Event(e) => self.observe_event(e),
            _ => Seen::Other,
        }
    }

    /// A state-change event the active side reported.
    pub fn observe_event(&mut self, e: &Event) -> Seen {
        let Subject::Node(node) = &e.subject else {
            return Seen::Other;
        };
        let id = NodeId::from(&node.key());
        let mut a = self.nodes.get(&id).cloned().unwrap_or_default();
        let (flag, raise): (&mut bool, bool) = match &e.kind {
            EventKind::NodeDown => (&mut a.node_down, true),
            EventKind::NodeUp => (&mut a.node_down, false),
            EventKind::SnmpDown => (&mut a.snmp_down, true),
            EventKind::SnmpUp => (&mut a.snmp_down, false),
            EventKind::ServicePortDown { port } | EventKind::ServicePortUp { port } => {
                let raise = matches!(e.kind, EventKind::ServicePortDown { .. });
                let changed = if raise {
                    a.ports_down.insert(*port)
                } else {
                    a.ports_down.remove(port)
                };
                return self.store(id, a, changed);
            }
            EventKind::RttAboveThreshold { class, .. } => {
                (&mut a.rtt_above[class_index(*class)], true)
            }
            EventKind::RttBelowThreshold { class, .. } => {
                (&mut a.rtt_above[class_index(*class)], false)
            }
            EventKind::LossAboveThreshold { class, .. } => {
                (&mut a.loss_above[class_index(*class)], true)
            }
            EventKind::LossBelowThreshold { class, .. } => {
                (&mut a.loss_above[class_index(*class)], false)
            }
            _ => return Seen::Other,
        };
        let changed = *flag != raise;
        *flag = raise;
        self.store(id, a, changed)
    }

    fn store(&mut self, id: NodeId, a: Alarms, changed: bool) -> Seen {
        if !changed {
            return Seen::Repeat;
        }
        if a.is_clear() {
            self.nodes.remove(&id);
        } else {
            self.nodes.insert(id, a);
        }
        Seen::Transition
    }

    /// Keeps the events that are transitions (recording them), drops repeats; returns how
    /// many were dropped.
    pub fn filter(&mut self, events: &mut Vec<Event>) -> usize {
        let before = events.len();
        events.retain(|e| self.observe_event(e) != Seen::Repeat);
        before - events.len()
    }

    /// Makes `state` continue from these reported alarms (see the module docs): every alarm
    /// flag of every node is set to the reported one (clear when not reported), nodes reported
    /// with an alarm that the core has not seen yet are added (so that their alarm is not
    /// raised a second time when they appear), and every node is evaluated at the next poll.
    ///
    /// For a core that kept polling up to now (the mirror taking over): its evidence is
    /// current, so a node whose evidence contradicts the report changes state at the next poll.
    pub fn seed(&self, state: &mut AggState) -> SeedReport {
        self.seed_inner(state, None)
    }

    /// [`NodeStates::seed`] for a core whose evidence is older than the report (the poller
    /// returning after the mirror reported in its place; `now_ns` is the kernel's clock at the
    /// hand-over). What it knew of its nodes (health streaks, and the counters of the time it
    /// was away, which the mirror's metrics covered) is dropped: the next snapshot is a
    /// baseline, and each node changes state only on evidence from after the hand-over.
    ///
    /// The driver also drops the kernel's in-flight requests sent before `now_ns` without
    /// giving them to the core: the map kept them while the poller was away, and swept later
    /// they would count as failures of nodes the core does not know yet.
    pub fn seed_returning(&self, state: &mut AggState, now_ns: u64) -> SeedReport {
        self.seed_inner(state, Some(now_ns))
    }

    fn seed_inner(&self, state: &mut AggState, returning: Option<u64>) -> SeedReport {
        let mut report = SeedReport::default();
        let now = returning.unwrap_or(state.last_mono_ns.unwrap_or(0));
        for id in self.nodes.keys() {
            if !state.nodes.contains_key(id) {
                let mut n = NodeState {
                    id: *id,
                    // Kept for `forget_after` like a node the core saw now.
                    last_seen_ns: now,
                    ..NodeState::default()
                };
                n.scratch.settled = false;
                state.nodes.insert(*id, n);
                report.added += 1;
            }
        }
        let clear = Alarms::default();
        for (id, n) in state.nodes.iter_mut() {
            let a = self.nodes.get(id).unwrap_or(&clear);
            if apply(n, a) {
                report.changed += 1;
            }
            if let Some(now) = returning {
                forget_evidence(n, now);
            }
            // Idle nodes are skipped by the core until new evidence: evaluate each once.
            n.scratch.settled = false;
        }
        if returning.is_some() {
            // The next snapshot is a baseline: the counters since the core stopped are not
            // counted again (nodes are known, their `prev` is gone, so no delta is taken).
            state.last_mono_ns = None;
        }
        report
    }
}

/// Every state machine of the node re-learns from `now_ns` on; the counter base is dropped.
fn forget_evidence(n: &mut NodeState, now_ns: u64) {
    n.prev = None;
    n.last_seen_ns = now_ns;
    for c in n.classes.iter_mut() {
        c.health.rearm(now_ns, now_ns, c.requests_total);
        c.last_response_ns = c.last_response_ns.min(now_ns);
    }
    for p in n.ports.values_mut() {
        p.health.rearm(now_ns, now_ns, 0);
    }
}

/// Sets the node's alarm flags to `a`; true if any changed.
fn apply(n: &mut NodeState, a: &Alarms) -> bool {
    let mut changed = false;
    let mut set = |flag: &mut bool, v: bool| {
        changed |= *flag != v;
        *flag = v;
    };
    set(&mut n.node_alarm, a.node_down);
    set(&mut n.snmp_alarm, a.snmp_down);
    for (i, c) in n.classes.iter_mut().enumerate() {
        set(&mut c.rtt_alarm, a.rtt_above[i]);
        set(&mut c.loss_alarm, a.loss_above[i]);
    }
    for (port, p) in n.ports.iter_mut() {
        set(&mut p.alarm, a.ports_down.contains(port));
    }
    for &port in &a.ports_down {
        n.ports.entry(port).or_insert_with(|| {
            changed = true;
            crate::aggregate::state::PortState {
                alarm: true,
                ..Default::default()
            }
        });
    }
    changed
}

// As a sequence: a map keyed by a struct is not representable in every format (JSON).
mod as_seq {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(m: &BTreeMap<NodeId, Alarms>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(m.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<NodeId, Alarms>, D::Error> {
        Ok(Vec::<(NodeId, Alarms)>::deserialize(d)?
            .into_iter()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opha_common::wire::{EventId, NodeRef, Severity, TenantId};

    fn ev(addr: &str, kind: EventKind) -> Event {
        Event {
            id: EventId::from_u128(1),
            time_ms: 1,
            tenant: TenantId(1),
            subject: Subject::Node(NodeRef::new(0, addr.parse().unwrap(), None)),
            kind,
            severity: Severity::Info,
            details: String::new(),
        }
    }

    #[test]
    fn transitions_and_repeats() {
        let mut s = NodeStates::new();
        let down = ev("198.18.0.1", EventKind::NodeDown);
        let up = ev("198.18.0.1", EventKind::NodeUp);
        assert_eq!(s.observe_event(&up), Seen::Repeat, "never reported down");
        assert_eq!(s.observe_event(&down), Seen::Transition);
        assert_eq!(s.observe_event(&down), Seen::Repeat);
        let port = ev("198.18.0.1", EventKind::ServicePortDown { port: 22 });
        assert_eq!(s.observe_event(&port), Seen::Transition);
        assert_eq!(s.observe_event(&up), Seen::Transition);
        assert_eq!(s.len(), 1, "the port alarm is still raised");
        let port_up = ev("198.18.0.1", EventKind::ServicePortUp { port: 22 });
        assert_eq!(s.observe_event(&port_up), Seen::Transition);
        assert!(s.is_empty());
        let mut v = vec![down.clone(), down.clone(), up.clone(), up];
        assert_eq!(s.filter(&mut v), 2);
        assert_eq!(v.len(), 2);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<NodeStates>(&json).unwrap(), s);
    }
}
