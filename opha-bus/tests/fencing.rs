//! Fencing: random reachability changes, grants delivered late, out of order, duplicated or
//! lost, peer gossip, and poller restarts from the persisted term. Invariants at every step:
//! - the poller accepts actions from at most one primary, and only with the current term;
//! - no two primaries ever act with the same term, and a primary only acts with a term that
//!   was granted to it;
//! - the term never decreases (also across poller restarts), and rises on every change;
//! - once messages settle, exactly the first reachable primary acts, accepted by the poller.

use opha_bus::fencing::{Arbiter, Grant, Primary};
use proptest::prelude::*;
use std::collections::BTreeMap;

#[derive(Clone, Debug)]
enum Op {
    Reach(usize, bool),
    Deliver(usize),
    Duplicate(usize),
    Drop(usize),
    Gossip(usize, usize),
    ReportTerm(usize),
    RestartPoller,
}

fn op(n: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..n, any::<bool>()).prop_map(|(p, r)| Op::Reach(p, r)),
        4 => (0..64usize).prop_map(Op::Deliver),
        1 => (0..64usize).prop_map(Op::Duplicate),
        1 => (0..64usize).prop_map(Op::Drop),
        2 => (0..n, 0..n).prop_map(|(a, b)| Op::Gossip(a, b)),
        1 => (0..n).prop_map(Op::ReportTerm),
        1 => Just(Op::RestartPoller),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn never_two_active(n in 2usize..4, ops in prop::collection::vec(op(3), 1..80)) {
        let mut arbiter = Arbiter::new(n, 0);
        let mut persisted = 0u64;
        let mut prims: Vec<Primary> = (0..n).map(|i| Primary::new(i, 0)).collect();
        // (recipient, grant) in flight: grants go to every primary (relayed), in any order.
        let mut wire: Vec<(usize, Grant)> = Vec::new();
        let mut granted: BTreeMap<u64, Option<usize>> = BTreeMap::new();
        let send = |g: Grant, wire: &mut Vec<(usize, Grant)>, granted: &mut BTreeMap<u64, Option<usize>>| {
            assert!(granted.insert(g.term, g.primary).is_none(), "term {} granted twice", g.term);
            for p in 0..n { wire.push((p, g)); }
        };
        for o in ops {
            let before = arbiter.term();
            match o {
                Op::Reach(p, r) => {
                    let p = p % n;
                    if let Some(g) = arbiter.observe(p, r) {
                        persisted = g.term;
                        send(g, &mut wire, &mut granted);
                    }
                    if !r { prims[p].on_disconnected(); }
                }
                Op::Deliver(i) if !wire.is_empty() => {
                    let (p, g) = wire.remove(i % wire.len());
                    prims[p].on_grant(g);
                }
                Op::Duplicate(i) if !wire.is_empty() => {
                    let m = wire[i % wire.len()];
                    wire.push(m);
                }
                Op::Drop(i) if !wire.is_empty() => { wire.remove(i % wire.len()); }
                Op::Gossip(a, b) => {
                    let t = prims[a % n].highest_term();
                    prims[b % n].on_peer_term(t);
                }
                Op::ReportTerm(p) => {
                    if let Some(g) = arbiter.observe_term(prims[p % n].highest_term()) {
                        persisted = g.term;
                        send(g, &mut wire, &mut granted);
                    }
                }
                Op::RestartPoller => {
                    // State lost but the persisted term kept; reachability is re-observed.
                    arbiter = Arbiter::new(n, persisted);
                    // Primaries report what they have seen; a higher term is jumped over.
                    let seen = prims.iter().map(|p| p.highest_term()).max().unwrap_or(0);
                    let g = arbiter.resume(seen);
                    persisted = g.term;
                    send(g, &mut wire, &mut granted);
                }
                _ => {}
            }
            prop_assert!(arbiter.term() >= before);
            // Acting primaries: each with a term granted to it; terms all distinct.
            let mut terms = BTreeMap::new();
            for (i, p) in prims.iter().enumerate() {
                if let Some(t) = p.acting_term() {
                    prop_assert_eq!(granted.get(&t), Some(&Some(i)));
                    prop_assert!(terms.insert(t, i).is_none());
                }
            }
            let accepted = prims
                .iter()
                .enumerate()
                .filter(|(i, p)| p.acting_term().is_some_and(|t| arbiter.accepts(t, *i)))
                .count();
            prop_assert!(accepted <= 1);
        }
        // Settle: deliver everything; every primary learns the latest grant.
        for (p, g) in std::mem::take(&mut wire) { prims[p].on_grant(g); }
        // The poller re-sends the current grant on reconnects; with it delivered, exactly
        // the chosen primary acts (or none when none is reachable).
        let g = arbiter.grant();
        for p in prims.iter_mut() { p.on_grant(g); }
        let acting: Vec<usize> = (0..n).filter(|&i| prims[i].acting_term().is_some()).collect();
        let expected: Vec<usize> = g.primary.into_iter().filter(|&i| prims[i].highest_term() == g.term).collect();
        prop_assert_eq!(acting, expected);
    }
}

#[test]
fn returning_main_takes_over_with_a_higher_term() {
    let mut a = Arbiter::new(2, 0);
    let mut main = Primary::new(0, 0);
    let mut red = Primary::new(1, 0);
    let g1 = a.observe(0, true).unwrap();
    assert_eq!(a.observe(1, true), None); // the main stays active
    main.on_grant(g1);
    red.on_grant(g1);
    assert_eq!((main.acting_term(), red.acting_term()), (Some(1), None));
    // Main unreachable from the poller: the redundant takes over with term 2. The main, cut
    // off, still believes it is active with term 1, but the poller refuses term 1.
    let g2 = a.observe(0, false).unwrap();
    assert_eq!(
        g2,
        Grant {
            term: 2,
            primary: Some(1)
        }
    );
    red.on_grant(g2);
    assert_eq!(main.acting_term(), Some(1));
    assert!(!a.accepts(1, 0) && a.accepts(2, 1));
    // Main returns: term 3 is its; until the redundant hears of it, its term 2 is refused.
    let g3 = a.observe(0, true).unwrap();
    assert_eq!(
        g3,
        Grant {
            term: 3,
            primary: Some(0)
        }
    );
    main.on_grant(g3);
    assert_eq!((main.acting_term(), red.acting_term()), (Some(3), Some(2)));
    assert!(a.accepts(3, 0) && !a.accepts(2, 1));
    red.on_peer_term(main.highest_term());
    assert_eq!(red.acting_term(), None);
    // A late copy of the old grant cannot bring it back.
    red.on_grant(g2);
    assert_eq!(red.acting_term(), None);
}
