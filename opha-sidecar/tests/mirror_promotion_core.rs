//! Mirror promotion, pure: a poller and its mirror polling the same devices (two fake kernels
//! fed the same answers), the promotion core deciding who reports, and the node-state
//! hand-over in both directions. The "primaries" are the merged stream of what each side
//! reported while it was the one reporting. No kernel, no sockets, fake clocks.

use std::collections::BTreeMap;

use opha_common::node::{NodeKey, ProtoClass};
use opha_common::wire::{Event, EventKind, PeerId, Subject};
use opha_sidecar::aggregate::sim::{Poll, Reply, Scenario};
use opha_sidecar::aggregate::{AggConfig, Aggregator, NodeId};
use opha_sidecar::mirror::{
    MirrorControl, MirrorState, NodeStates, PromotionConfig, Role, promotion::Nanos,
};
use proptest::prelude::*;

const T0: u64 = 1_700_000_000_000;
const ROUND_MS: u64 = 1_000;
const S: Nanos = 1_000_000_000;

fn node(i: u8) -> NodeKey {
    NodeKey::v4([198, 18, 1, i], 0)
}

fn cfg(id: &str) -> AggConfig {
    AggConfig {
        poller: PeerId::new(id).unwrap(),
        poll_timeout_ms: 500,
        ..AggConfig::default()
    }
}

/// Re-creates `s`'s core from its state after `f` changed it (what a driver does with the
/// checkpointed state before the next poll).
fn with_state(s: &mut Scenario, id: &str, f: impl FnOnce(&mut opha_sidecar::aggregate::AggState)) {
    let agg = std::mem::replace(&mut s.agg, Aggregator::new(cfg(id)));
    let mut st = agg.into_state();
    f(&mut st);
    s.agg = Aggregator::restore(cfg(id), st).unwrap();
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Poller,
    Mirror,
}

/// The two sides and what reached the primaries.
struct World {
    poller: Scenario,
    mirror: Scenario,
    control: MirrorControl,
    poller_alive: bool,
    /// The poller's kernel keeps counting (NMIS polls) while its sidecar is down.
    kernel_polls_while_dead: bool,
    /// Seed on role changes (off: the naive hand-over, for the control experiment).
    seed: bool,
    primaries: Vec<(Who, Event)>,
    nodes: Vec<NodeKey>,
    /// The truth of the last round per node (true: up), and how often it changed (from an
    /// initial "up").
    truth: Vec<bool>,
    truth_changes: Vec<usize>,
}

impl World {
    fn new(nodes: usize, takeover_s: u64, seed: bool) -> Self {
        let cfg = PromotionConfig {
            takeover_after: takeover_s * S,
            return_after: 0,
        };
        let w = Self {
            poller: Scenario::new(Aggregator::new(cfg_p()), T0, ROUND_MS),
            mirror: Scenario::new(Aggregator::new(cfg_m()), T0, ROUND_MS),
            control: MirrorControl::new(cfg, MirrorState::default(), 0),
            poller_alive: true,
            kernel_polls_while_dead: false,
            seed,
            primaries: Vec::new(),
            nodes: (1..=nodes as u8).map(node).collect(),
            truth: vec![true; nodes],
            truth_changes: vec![0; nodes],
        };
        w.control.poller_connected(true, 0);
        w
    }

    fn now(&self) -> Nanos {
        self.mirror.kernel.mono_ns() - 1_000_000_000_000
    }

    /// One round in which node i answers iff `up[i]`.
    fn round(&mut self, up: &[bool]) {
        for (i, &u) in up.iter().enumerate() {
            if u != self.truth[i] {
                self.truth[i] = u;
                self.truth_changes[i] += 1;
            }
        }
        let polls: Vec<Poll> = self
            .nodes
            .iter()
            .zip(up)
            .map(|(&n, &u)| {
                let r = if u {
                    Reply::Answer { rtt_us: 1_000 }
                } else {
                    Reply::Lost
                };
                (n, ProtoClass::IcmpEcho, 0, r)
            })
            .collect();
        if self.poller_alive {
            let out = self.poller.round(&polls);
            self.primaries
                .extend(out.events.iter().cloned().map(|e| (Who::Poller, e)));
            let records = out.clone().into_records();
            let now = self.now();
            self.apply(|c| c.poller_records(records.iter(), now));
        } else if self.kernel_polls_while_dead {
            let start = self.poller.kernel.mono_ns();
            for &(n, c, p, r) in &polls {
                self.poller.kernel.poll(n, c, p, r);
            }
            let now = self.poller.kernel.mono_ns();
            self.poller
                .kernel
                .advance_ns((start + ROUND_MS * 1_000_000).saturating_sub(now));
        } else {
            self.poller.kernel.advance_ms(ROUND_MS);
        }
        let mut events = self.mirror.round(&polls).events;
        if self.control.role() == Role::Active {
            if self.seed {
                self.control.own_events(&mut events);
            }
            self.primaries
                .extend(events.into_iter().map(|e| (Who::Mirror, e)));
        }
        let now = self.now();
        self.apply(|c| c.tick(now));
    }

    /// Carries out the core's decisions: a promotion seeds the mirror's core.
    fn apply(&mut self, f: impl FnOnce(&MirrorControl) -> Vec<opha_sidecar::mirror::Decision>) {
        for d in f(&self.control) {
            if d.role == Role::Active && self.seed {
                let states = self.control.states();
                with_state(&mut self.mirror, "mirror-1", |st| {
                    states.seed(st);
                });
            }
        }
    }

    fn poller_dies(&mut self) {
        self.poller_alive = false;
        let now = self.now();
        self.apply(|c| c.poller_connected(false, now));
    }

    /// The poller comes back: its hello demotes the mirror, the mirror answers with the
    /// reported states, the poller seeds its core with them before its next poll.
    fn poller_returns(&mut self) {
        let now = self.now();
        self.apply(|c| c.poller_connected(true, now));
        self.apply(|c| c.poller_records(std::iter::empty(), now));
        assert_eq!(self.control.role(), Role::Standby, "the hello gives back");
        if self.seed {
            let states = self.control.states();
            let now_ns = self.poller.kernel.mono_ns();
            with_state(&mut self.poller, "poller-1", |st| {
                states.seed_returning(st, now_ns);
            });
            // Requests of the time it was away: covered by the mirror, not failures now.
            self.poller.kernel.sweep(0);
        }
        self.poller_alive = true;
    }

    /// Per node, the node events that reached the primaries, in order.
    fn node_events(&self) -> BTreeMap<NodeId, Vec<(Who, bool)>> {
        let mut m: BTreeMap<NodeId, Vec<(Who, bool)>> = BTreeMap::new();
        for (who, e) in &self.primaries {
            let down = match e.kind {
                EventKind::NodeDown => true,
                EventKind::NodeUp => false,
                _ => continue,
            };
            let Subject::Node(n) = &e.subject else {
                continue;
            };
            m.entry(NodeId::from(&n.key()))
                .or_default()
                .push((*who, down));
        }
        m
    }

    /// The checker: per node, downs and ups alternate, starting with a down; there are no
    /// more of them than the truth changed (no spurious flap); and the last reported state is
    /// `truth`. Err describes the first violation.
    fn check(&self, truth: &[bool]) -> Result<(), String> {
        let ev = self.node_events();
        for (i, n) in self.nodes.iter().enumerate() {
            let seq = ev.get(&NodeId::from(n)).cloned().unwrap_or_default();
            let mut down = false;
            for (who, d) in &seq {
                if *d == down {
                    return Err(format!(
                        "node {i}: {} repeated (by {who:?}) in {seq:?}",
                        if *d { "down" } else { "up" }
                    ));
                }
                down = *d;
            }
            if seq.len() > self.truth_changes[i] {
                return Err(format!(
                    "node {i}: {} transitions reported, the truth changed {} times: {seq:?}",
                    seq.len(),
                    self.truth_changes[i]
                ));
            }
            if down == truth[i] {
                return Err(format!(
                    "node {i}: reported {} at the end, truth is {}: {seq:?}",
                    if down { "down" } else { "up" },
                    if truth[i] { "up" } else { "down" },
                ));
            }
        }
        Ok(())
    }
}

fn cfg_p() -> AggConfig {
    cfg("poller-1")
}

fn cfg_m() -> AggConfig {
    cfg("mirror-1")
}

/// The issue's sequence: the poller reports A down and goes silent; the mirror is promoted;
/// A comes up and B goes down; the poller returns. Exactly one up for A and one down for B
/// across both streams; nothing repeated.
fn issue_sequence(seed: bool, kernel_polls_while_dead: bool) -> World {
    let mut w = World::new(2, 5, seed);
    w.kernel_polls_while_dead = kernel_polls_while_dead;
    for _ in 0..4 {
        w.round(&[true, true]);
    }
    for _ in 0..6 {
        w.round(&[false, true]);
    }
    w.poller_dies();
    for _ in 0..8 {
        w.round(&[false, true]);
    }
    assert_eq!(w.control.role(), Role::Active, "promoted after 5 s");
    for _ in 0..8 {
        w.round(&[true, false]);
    }
    w.poller_returns();
    for _ in 0..8 {
        w.round(&[true, false]);
    }
    w
}

#[test]
fn promotion_and_return_report_each_change_exactly_once() {
    for polls_while_dead in [false, true] {
        let w = issue_sequence(true, polls_while_dead);
        let ev = w.node_events();
        let a = &ev[&NodeId::from(&node(1))];
        let b = &ev[&NodeId::from(&node(2))];
        assert_eq!(
            a,
            &vec![(Who::Poller, true), (Who::Mirror, false)],
            "A: one down by the poller, one up by the mirror"
        );
        assert_eq!(b, &vec![(Who::Mirror, true)], "B: one down by the mirror");
        w.check(&[true, false]).unwrap();
        // Nothing else crossed (no SNMP/port/threshold noise in this scenario).
        assert_eq!(w.primaries.len(), 3, "{:?}", w.primaries);
    }
}

#[test]
fn after_the_return_the_poller_reports_the_next_change_once() {
    let mut w = issue_sequence(true, false);
    for _ in 0..6 {
        w.round(&[true, true]);
    }
    let b = &w.node_events()[&NodeId::from(&node(2))];
    assert_eq!(b, &vec![(Who::Mirror, true), (Who::Poller, false)]);
    w.check(&[true, true]).unwrap();
}

/// The control experiment: the same sequence without the hand-over repeats transitions, so
/// the checker above can fail.
#[test]
fn without_the_hand_over_transitions_repeat_or_go_missing() {
    let w = issue_sequence(false, false);
    let err = w.check(&[true, false]).unwrap_err();
    assert!(
        err.contains("repeated") || err.contains("reported"),
        "{err}"
    );
}

/// A node that goes down while the poller is silent and before the mirror takes over is
/// reported once, by the mirror (its own core saw it, nothing reported it yet).
#[test]
fn a_change_during_the_takeover_delay_is_reported_by_the_mirror() {
    let mut w = World::new(1, 5, true);
    for _ in 0..4 {
        w.round(&[true]);
    }
    w.poller_dies();
    for _ in 0..3 {
        w.round(&[false]);
    }
    assert_eq!(w.control.role(), Role::Standby);
    for _ in 0..6 {
        w.round(&[false]);
    }
    assert_eq!(w.control.role(), Role::Active);
    let ev = &w.node_events()[&NodeId::from(&node(1))];
    assert_eq!(ev, &vec![(Who::Mirror, true)]);
}

/// An operator promote (the poller stopped for maintenance): no waiting for the delay, and
/// the mirror's first events are transitions relative to the poller's last reports.
#[test]
fn operator_promote_seeds_from_the_poller_reports() {
    let mut w = World::new(2, 30, true);
    for _ in 0..4 {
        w.round(&[true, true]);
    }
    for _ in 0..5 {
        w.round(&[false, true]);
    }
    // The poller is stopped by the operator, who promotes the mirror at once.
    w.poller_dies();
    let now = w.now();
    w.apply(|c| c.promote(now));
    assert_eq!(w.control.role(), Role::Active);
    for _ in 0..5 {
        w.round(&[true, true]);
    }
    let a = &w.node_events()[&NodeId::from(&node(1))];
    assert_eq!(a, &vec![(Who::Poller, true), (Who::Mirror, false)]);
    w.check(&[true, true]).unwrap();
}

#[test]
fn node_states_survive_json() {
    let mut w = World::new(1, 5, true);
    for _ in 0..6 {
        w.round(&[false]);
    }
    let s = w.control.states();
    assert!(s.is_down(&NodeId::from(&node(1))));
    let back: NodeStates = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(back, s);
}

/// One step of a random schedule.
#[derive(Clone, Debug)]
enum Step {
    /// Hold this truth for n rounds.
    Hold(Vec<bool>, u8),
    PollerDies,
    PollerReturns,
}

fn schedule(nodes: usize) -> impl Strategy<Value = Vec<Step>> {
    let hold = (proptest::collection::vec(any::<bool>(), nodes), 1u8..12)
        .prop_map(|(t, n)| Step::Hold(t, n));
    let step = prop_oneof![
        6 => hold,
        1 => Just(Step::PollerDies),
        1 => Just(Step::PollerReturns),
    ];
    proptest::collection::vec(step, 4..24)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any schedule of node changes, poller deaths and returns: across both streams every
    /// node's downs and ups alternate, and once things settle (the last truth held with the
    /// poller back) the last report is the truth.
    #[test]
    fn random_schedules_never_repeat_or_miss(
        steps in schedule(3),
        polls_while_dead in any::<bool>(),
        last in proptest::collection::vec(any::<bool>(), 3),
    ) {
        let mut w = World::new(3, 5, true);
        w.kernel_polls_while_dead = polls_while_dead;
        for s in &steps {
            match s {
                Step::Hold(t, n) => {
                    for _ in 0..*n {
                        w.round(t);
                    }
                }
                Step::PollerDies if w.poller_alive => w.poller_dies(),
                Step::PollerReturns if !w.poller_alive => w.poller_returns(),
                _ => {}
            }
        }
        if !w.poller_alive {
            w.poller_returns();
        }
        for _ in 0..10 {
            w.round(&last);
        }
        prop_assert_eq!(w.control.role(), Role::Standby);
        if let Err(e) = w.check(&last) {
            prop_assert!(false, "{} after {:?}", e, steps);
        }
    }
}

/// The primaries' registry: a poller's paired mirror may send for the poller's tenants; a
/// mirror not paired with any poller is not in the registry (the connection is refused as
/// unregistered); a mirror's `[mirror]` table names a registered poller.
#[test]
fn registry_pairs_mirrors_with_their_pollers() {
    use opha_common::wire::TenantId;
    use opha_sidecar::config::receiver::ReceiverFileConfig;
    let dir = std::path::Path::new("/nonexistent");
    let primary = r#"
peer_id = "primary-1"
role = "primary"
listen = "127.0.0.1:7443"
[tls]
certificate = "c.pem"
key = "c.key"
ca = "ca.pem"
[store]
dir = "store"
[[poller]]
id = "poller-1"
tenants = [1, 2]
mirror = "mirror-1"
[[poller]]
id = "poller-2"
tenants = [3]
"#;
    let cfg = ReceiverFileConfig::from_toml(primary, "primary.toml", dir).unwrap();
    let reg = cfg.registry();
    let tenants = |id: &str| reg.get(&PeerId::new(id).unwrap()).cloned();
    assert_eq!(tenants("mirror-1"), tenants("poller-1"));
    assert_eq!(
        tenants("mirror-1").unwrap().into_iter().collect::<Vec<_>>(),
        vec![TenantId(1), TenantId(2)]
    );
    assert_eq!(tenants("mirror-2"), None, "a mirror paired with nobody");

    let clash = primary.replace("mirror = \"mirror-1\"", "mirror = \"poller-2\"");
    let err = ReceiverFileConfig::from_toml(&clash, "primary.toml", dir).unwrap_err();
    assert!(err.to_string().contains("poller[0].mirror"), "{err}");

    let mirror = r#"
peer_id = "mirror-1"
role = "mirror"
listen = "127.0.0.1:7444"
[tls]
certificate = "c.pem"
key = "c.key"
ca = "ca.pem"
[store]
dir = "store"
[[poller]]
id = "poller-1"
tenants = [1, 2]
mirror = "mirror-1"
[mirror]
poller = "poller-1"
takeover_after = "5s"
poller_config = "poller.toml"
"#;
    let cfg = ReceiverFileConfig::from_toml(mirror, "mirror.toml", dir).unwrap();
    let m = cfg.mirror.as_ref().unwrap();
    assert_eq!(m.promotion_config().takeover_after, 5 * S);
    assert_eq!(
        m.poller_config.as_deref(),
        Some(dir.join("poller.toml").as_path())
    );
    assert!(
        !cfg.registry()
            .contains_key(&PeerId::new("mirror-1").unwrap())
    );
    let unpaired = mirror.replace(
        "poller = \"poller-1\"\ntakeover",
        "poller = \"poller-9\"\ntakeover",
    );
    let err = ReceiverFileConfig::from_toml(&unpaired, "mirror.toml", dir).unwrap_err();
    assert!(err.to_string().contains("mirror.poller"), "{err}");
}

#[derive(Clone, Debug)]
enum Input {
    Seen,
    Connected(bool),
    Wait(u64),
}

fn inputs() -> impl Strategy<Value = Vec<Input>> {
    let i = prop_oneof![
        4 => Just(Input::Seen),
        1 => any::<bool>().prop_map(Input::Connected),
        4 => (1u64..40).prop_map(Input::Wait),
    ];
    proptest::collection::vec(i, 1..80)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// The promotion core alone: decisions alternate; an automatic promotion comes only after
    /// `takeover_after` of silence and at most once per silence; a poller that streams again
    /// gets its place back within `return_after` (so both never report for long).
    #[test]
    fn promotion_core_decides_once_per_silence(
        script in inputs(),
        return_after_s in 0u64..5,
    ) {
        use opha_sidecar::mirror::{Cause, Promotion};
        let takeover = 10 * S;
        let cfg = PromotionConfig { takeover_after: takeover, return_after: return_after_s * S };
        let mut p = Promotion::new(cfg, 0);
        let (mut now, mut last_seen) = (0u64, 0u64);
        // (role as decided so far, an automatic promotion happened in the current silence)
        let mut t = (Role::Standby, false);
        let check = |p: &mut Promotion, t: &mut (Role, bool), now: u64, last_seen: u64|
            -> Result<(), TestCaseError> {
            while let Some(d) = p.poll_decision() {
                prop_assert_ne!(d.role, t.0, "decisions alternate");
                t.0 = d.role;
                if let Cause::PollerSilent { silent_ns } = d.cause {
                    prop_assert!(silent_ns >= takeover);
                    prop_assert!(now - last_seen >= takeover);
                    prop_assert!(!t.1, "one promotion per silence");
                    t.1 = true;
                }
            }
            Ok(())
        };
        for i in &script {
            match i {
                Input::Seen => {
                    if now - last_seen >= takeover {
                        t.1 = false;
                    }
                    last_seen = now;
                    p.poller_seen(now);
                }
                Input::Connected(up) => p.poller_connected(*up, now),
                Input::Wait(s) => {
                    // Ticks every second, as a driver would.
                    for _ in 0..*s {
                        now += S;
                        p.tick(now);
                        check(&mut p, &mut t, now, last_seen)?;
                    }
                }
            }
            check(&mut p, &mut t, now, last_seen)?;
        }
        // The poller streams steadily: the mirror gives back within return_after (+1 tick).
        p.poller_connected(true, now);
        for _ in 0..(return_after_s + 2) {
            p.poller_seen(now);
            last_seen = now;
            p.tick(now);
            check(&mut p, &mut t, now, last_seen)?;
            now += S;
        }
        prop_assert_eq!(p.role(), Role::Standby);
    }
}
