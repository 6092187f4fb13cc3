//! The aggregate task against a fake kernel and a real replay log: every interval reaches the
//! log exactly once, whatever point of a tick a crash hits (before the checkpoint, between the
//! checkpoint and the append, during the append, after it), and across restarts no count is
//! skipped or doubled. A crash is a copy of the log directory as it was at that point, opened
//! by a fresh task while the fake kernel keeps its counters (as pinned maps do).

mod poller_support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use opha_common::node::{NodeKey, ProtoClass};
use opha_common::wire::{EventKind, NodeRef, PeerId, Record};
use opha_log::Log;
use opha_sidecar::aggregate::AggConfig;
use opha_sidecar::aggregate::sim::Reply;
use opha_sidecar::poller::aggregate::{AggregateSettings, AggregateTask, Tick, resume};
use opha_sidecar::poller::checkpoint;
use opha_sidecar::poller::durable;
use opha_sidecar::poller::shared::Shared;
use poller_support::{SimKernel, copy_dir, open_log, records};

const IV_MS: u64 = 1_000;
const T0: u64 = 1_700_000_000_000 + 250;

fn node(i: u8) -> NodeKey {
    NodeKey::v4([198, 18, 0, i], 0)
}

fn config() -> AggConfig {
    AggConfig {
        interval_ms: IV_MS as u32,
        poll_timeout_ms: 300,
        down_after: 2,
        up_after: 1,
        ..AggConfig::default()
    }
}

fn task(dir: &Path, log: &Arc<Log>, kernel: &SimKernel) -> AggregateTask<SimKernel> {
    let r = resume(log, dir).expect("resume");
    let shared = Arc::new(Shared::new(PeerId::new("p1").unwrap(), log.clone()));
    AggregateTask::new(
        kernel.clone(),
        shared,
        config(),
        r,
        None,
        dir.to_path_buf(),
        Arc::new(kernel.clone()),
        AggregateSettings::new(Duration::from_millis(100), Duration::from_millis(300)),
    )
}

/// One round of polls: every node answers ICMP, except node 3 which is silent in rounds
/// 10..20 and 40..50 (down and up again), and node 2's SNMP every 4th round is lost.
fn polls(kernel: &SimKernel, round: usize) {
    kernel.with(|k| {
        for i in 1..=3u8 {
            let silent = i == 3 && ((10..20).contains(&round) || (40..50).contains(&round));
            let reply = if silent {
                Reply::Lost
            } else {
                Reply::Answer { rtt_us: 800 }
            };
            k.poll(node(i), ProtoClass::IcmpEcho, 0, reply);
        }
        let snmp = if round.is_multiple_of(4) {
            Reply::Lost
        } else {
            Reply::Answer { rtt_us: 2_000 }
        };
        k.poll(node(2), ProtoClass::Snmp, 0, snmp);
        let now = k.mono_ns();
        // Rounds of 150 ms: intervals close every 6 or 7 rounds.
        let end = now - now % 150_000_000 + 150_000_000;
        k.advance_ns(end - now);
    });
}

fn key_of(r: &NodeRef) -> NodeKey {
    r.key()
}

#[test]
fn every_interval_reaches_the_log_exactly_once_whatever_the_crash_point() {
    let tmp = tempfile::tempdir().unwrap();
    let live = tmp.path().join("log");
    let before = tmp.path().join("before");
    let image = tmp.path().join("image");
    let kernel = SimKernel::new(T0);
    let mut log = open_log(&live);
    let mut t = task(&live, &log, &kernel);
    assert!(matches!(t.tick(), Tick::Polled { .. }), "baseline");
    let mut crashes = [0usize; 5];
    for round in 0..70 {
        polls(&kernel, round);
        copy_dir(&live, &before);
        let tick = t.tick();
        assert!(matches!(tick, Tick::Polled { .. }), "{tick:?}");
        let point = (round * 7 + 3) % 5;
        if point == 0 {
            continue;
        }
        crashes[point] += 1;
        match point {
            // Killed before the checkpoint was renamed into place.
            1 => copy_dir(&before, &image),
            // Killed after the checkpoint, before the append reached the disk.
            2 => {
                copy_dir(&before, &image);
                fs::copy(checkpoint::path_in(&live), checkpoint::path_in(&image)).unwrap();
            }
            // Killed during the append: the first half of the records is durable.
            3 => {
                copy_dir(&before, &image);
                fs::copy(checkpoint::path_in(&live), checkpoint::path_in(&image)).unwrap();
                let c = checkpoint::read(&image).unwrap().unwrap();
                let half = &c.pending[..c.pending.len() / 2];
                let img = Log::open(opha_log::LogConfig::new(&image)).unwrap();
                let a = durable::append(&img, &durable::encode(half, &PeerId::new("p1").unwrap()));
                assert!(a.all_done());
            }
            // Killed after the append.
            _ => copy_dir(&live, &image),
        }
        drop(t);
        drop(log);
        fs::remove_dir_all(&live).unwrap();
        fs::rename(&image, &live).unwrap();
        log = open_log(&live);
        t = task(&live, &log, &kernel);
    }
    // Close the last interval.
    kernel.with(|k| k.advance_ms(2 * IV_MS));
    assert!(matches!(t.tick(), Tick::Polled { .. }));
    assert!(t.pending().is_empty());
    assert!(crashes[1..].iter().all(|&n| n >= 10), "{crashes:?}");

    let recs = records(&log);
    let mut seen_intervals = BTreeSet::new();
    let mut per_node: BTreeMap<NodeKey, Vec<(u64, u32)>> = BTreeMap::new();
    let mut sums: BTreeMap<(NodeKey, usize), (u64, u64)> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    let mut node3 = Vec::new();
    for (_, r) in &recs {
        match r {
            Record::NodeMetrics(m) => {
                let k = key_of(&m.node);
                assert!(
                    seen_intervals.insert((k, m.interval_start_ms)),
                    "interval {} of {:?} twice",
                    m.interval_start_ms,
                    m.node
                );
                per_node
                    .entry(k)
                    .or_default()
                    .push((m.interval_start_ms, m.interval_ms));
                for (ci, c) in [&m.icmp, &m.snmp, &m.tcp].into_iter().enumerate() {
                    let s = sums.entry((k, ci)).or_default();
                    s.0 += c.requests;
                    s.1 += c.responses;
                }
            }
            Record::Event(e) => {
                assert!(ids.insert(e.id), "event {} twice: {e:?}", e.id);
                if let opha_common::wire::Subject::Node(n) = &e.subject
                    && n.key() == node(3)
                {
                    node3.push(e.kind.clone());
                }
            }
            other => panic!("unexpected record {other:?}"),
        }
    }
    // Intervals of a node never overlap.
    for (k, mut ivs) in per_node {
        ivs.sort();
        for w in ivs.windows(2) {
            assert!(w[0].0 + u64::from(w[0].1) <= w[1].0, "{k:?}: {w:?}");
        }
    }
    // Every request and response the kernel counted is in exactly one interval.
    for i in 1..=3u8 {
        let k = node(i);
        let kc = kernel.with(|kk| *kk.counters(&k).unwrap());
        for ci in 0..3 {
            let (req, resp) = sums.get(&(k, ci)).copied().unwrap_or_default();
            assert_eq!(
                (req, resp),
                (kc.classes[ci].requests, kc.classes[ci].responses),
                "node {i} class {ci}"
            );
        }
    }
    // Node 3 went down and came back twice: exactly that, in order, despite the crashes.
    assert_eq!(
        node3
            .iter()
            .filter(|k| matches!(k, EventKind::NodeDown | EventKind::NodeUp))
            .cloned()
            .collect::<Vec<_>>(),
        vec![
            EventKind::NodeDown,
            EventKind::NodeUp,
            EventKind::NodeDown,
            EventKind::NodeUp
        ]
    );
}

#[test]
fn a_damaged_checkpoint_is_set_aside_and_the_task_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let kernel = SimKernel::new(T0);
    let log = open_log(&dir);
    let mut t = task(&dir, &log, &kernel);
    t.tick();
    drop(t);
    fs::write(checkpoint::path_in(&dir), b"OPHA-AGG garbage").unwrap();
    let r = resume(&log, &dir).expect("a damaged checkpoint is not fatal");
    assert!(r.state.is_none());
    assert!(!checkpoint::path_in(&dir).exists());
    let aside: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("damaged"))
        .collect();
    assert_eq!(aside.len(), 1);
    let mut t = task(&dir, &log, &kernel);
    assert!(matches!(t.tick(), Tick::Polled { .. }));
    assert!(checkpoint::path_in(&dir).exists());
}

#[test]
fn a_full_log_blocks_new_snapshots_and_nothing_is_lost_once_it_has_room() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let kernel = SimKernel::new(T0);
    let mut cfg = opha_log::LogConfig::new(&dir);
    cfg.segment_bytes = 64 << 10;
    cfg.budget = opha_log::BudgetConfig::new(128 << 10);
    let log = Arc::new(Log::open(cfg).unwrap());
    log.add_cursor("receiver").unwrap();
    // Fill the log with events up to its hard limit.
    let filler = vec![0u8; 1000];
    while log.append(opha_log::RecordClass::Event, &filler).is_ok() {}
    let mut t = task(&dir, &log, &kernel);
    t.tick();
    let mut blocked = 0;
    for round in 0..30 {
        polls(&kernel, round);
        if matches!(t.tick(), Tick::Blocked(_)) {
            blocked += 1;
        }
    }
    kernel.with(|k| k.advance_ms(2 * IV_MS));
    t.tick();
    assert!(blocked > 0, "the full log must block the task");
    assert!(!t.pending().is_empty(), "records wait, none dropped");
    // The receiver catches up: segments are freed, the task carries on.
    log.set_cursor("receiver", log.durable_next_seq()).unwrap();
    for _ in 0..3 {
        kernel.with(|k| k.advance_ms(2 * IV_MS));
        t.tick();
    }
    assert!(t.pending().is_empty());
    let mut req = 0;
    for (_, r) in records(&log) {
        if let Record::NodeMetrics(m) = r {
            req += m.icmp.requests;
        }
    }
    let total: u64 = (1..=3u8)
        .map(|i| kernel.with(|k| k.counters(&node(i)).unwrap().classes[0].requests))
        .sum();
    assert_eq!(req, total);
}

#[test]
fn a_checkpoint_of_2000_nodes_stays_small() {
    use opha_common::node::{NodeCounters, rtt_bucket};
    use opha_sidecar::aggregate::{Aggregator, Input, Output};
    let mut agg = Aggregator::new(config());
    let mut snap: Vec<(NodeKey, NodeCounters)> = (0..2000u32)
        .map(|i| {
            let key = NodeKey::v4([198, 18, (i >> 8) as u8, i as u8], 0);
            (
                key,
                NodeCounters {
                    tenant: 1,
                    ..NodeCounters::default()
                },
            )
        })
        .collect();
    let mut out = Output::default();
    let mono = 1_000_000_000_000u64;
    for tick in 0..3u64 {
        for (_, c) in snap.iter_mut() {
            for cc in c.classes.iter_mut() {
                cc.requests += 1_000_000;
                cc.responses += 999_000;
                cc.bytes_out += 90_000_000;
                cc.bytes_in += 120_000_000;
                cc.rtt_count += 999_000;
                cc.rtt_sum_ns += 999_000 * 3_000_000;
                cc.rtt_min_ns = 200_000;
                cc.rtt_max_ns = 90_000_000;
                for b in [200_000, 3_000_000, 90_000_000] {
                    cc.rtt_hist[rtt_bucket(b)] += 333_000;
                }
                cc.last_response_ns = mono + tick * 1_000_000_000;
            }
        }
        agg.poll(
            &Input {
                mono_ns: mono + tick * 1_000_000_000,
                wall_ms: T0 + tick * 1000,
                nodes: &snap,
                timeouts: &[],
            },
            &mut out,
        );
    }
    let c = checkpoint::Checkpoint {
        log_next_seq: 1,
        written_ms: 0,
        state: agg.state().clone(),
        pending: std::mem::take(&mut out).into_records(),
    };
    let bytes = checkpoint::encode(&c).unwrap();
    let state_only = checkpoint::encode(&checkpoint::Checkpoint {
        pending: Vec::new(),
        ..c.clone()
    })
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    checkpoint::write(tmp.path(), &c).unwrap();
    eprintln!(
        "2000 nodes: checkpoint {} bytes ({} without its {} pending records), written in {:?}",
        bytes.len(),
        state_only.len(),
        c.pending.len(),
        started.elapsed()
    );
    assert!(bytes.len() < 10 << 20, "{} bytes", bytes.len());
    // Caches (inventory lookups) are not persisted: compare what is.
    let back = checkpoint::read(tmp.path()).unwrap().unwrap();
    assert_eq!(checkpoint::encode(&back).unwrap(), bytes);
    assert_eq!(back.pending, c.pending);
}
