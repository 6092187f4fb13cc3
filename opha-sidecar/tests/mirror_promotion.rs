//! Mirror promotion in running processes' parts, in-process on 127.0.0.1: a real poller
//! pipeline (fake kernel) streaming to a real primary and a real mirror receiver; the mirror's
//! own pipeline (another fake kernel polling the same nodes) driven by the promotion core.
//! The poller stops -> after `takeover_after` the mirror is promoted and the primary stores the
//! mirror's records (under the mirror's peer id, accepted through `[[poller]] mirror`); node
//! state events across both streams: exactly one down and one up per change, no repeat, and
//! none of the mirror's standby records; the poller returns -> the mirror is demoted and its
//! links drain and stop; operator commands through the command file.

mod bus_support;
mod poller_support;
mod receiver_support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bus_support::{PollerFile, ReceiverFile, wait_for_sync as wait_for};
use opha_common::node::{NodeKey, ProtoClass};
use opha_common::wire::{EventKind, PeerId, PeerRole, Subject, TenantId};
use opha_sidecar::aggregate::NodeId;
use opha_sidecar::aggregate::sim::Reply;
use opha_sidecar::config::PollerConfig;
use opha_sidecar::config::receiver::ReceiverFileConfig;
use opha_sidecar::decode::DecodeContext;
use opha_sidecar::mirror::driver::{Hook, MirrorDriver};
use opha_sidecar::mirror::{Command, Role, control};
use opha_sidecar::poller::{
    Listeners, NoRing, Pipeline, PipelineParts, aggregate::resume, runtime::open_log,
};
use opha_sidecar::receiver::{self, RunningReceiver};
use opha_store::{EventFilter, PageRequest, Scope};
use poller_support::SimKernel;
use receiver_support::{Pki, start_receiver};

const T0: u64 = 1_700_000_000_000;
const TAKEOVER: Duration = Duration::from_secs(1);

fn node(i: u8) -> NodeKey {
    NodeKey::v4([198, 18, 1, i], 0)
}

fn peer(s: &str) -> PeerId {
    PeerId::new(s).unwrap()
}

fn poller_config(
    pki: &Pki,
    dir: &Path,
    id: &str,
    receivers: &[(&str, &str, SocketAddr)],
) -> PollerConfig {
    let file = PollerFile::new(id, &format!("t-mp-{id}"))
        .prefix("198.18.0.0/15", 1)
        .log_dir(dir.join(format!("log-{id}")))
        .log_sizes(None)
        .bus("linger = \"1ms\"")
        .fast_failure()
        .extra(
            "[intervals]\nmetrics = \"1s\"\npoll_timeout = \"500ms\"\nsweep = \"50ms\"\n\
             heartbeat = \"200ms\"\n",
        );
    receivers
        .iter()
        .fold(file, |f, (p, role, addr)| f.receiver(p, role, *addr))
        .build(&pki.root)
}

fn parts(cfg: &PollerConfig, kernel: &SimKernel) -> PipelineParts<SimKernel, NoRing> {
    let log = open_log(cfg).unwrap();
    let resume = resume(&log, &cfg.log_dir()).unwrap();
    PipelineParts {
        config: cfg.clone(),
        log,
        kernel: kernel.clone(),
        ring: NoRing,
        inventory: None,
        resume,
        listeners: Listeners::default(),
        clock: Arc::new(kernel.clone()),
        decode: DecodeContext::new(cfg.poller_id.as_str()),
    }
}

fn mirror_receiver_config(root: &Path) -> ReceiverFileConfig {
    let mirror = format!(
        "[mirror]\npoller = \"poller-1\"\ntakeover_after = \"{}ms\"\nreturn_after = \"0s\"\n",
        TAKEOVER.as_millis()
    );
    ReceiverFile::new("mirror-1", "mirror")
        .poller("poller-1", &[1])
        .extra(&mirror)
        .build(root)
}

/// The devices: each step, every live kernel polls every node once (answered iff the node is
/// up), then both fake clocks move to the same next second.
struct World {
    truth: Arc<Mutex<Vec<bool>>>,
    poller_polls: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl World {
    fn start(poller: SimKernel, mirror: SimKernel, nodes: usize) -> Self {
        let truth = Arc::new(Mutex::new(vec![true; nodes]));
        let poller_polls = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, p, s) = (truth.clone(), poller_polls.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut target = poller.with(|k| k.mono_ns());
            while !s.load(Ordering::Relaxed) {
                let up = t.lock().unwrap().clone();
                target += 1_000_000_000;
                for (k, polls) in [(&poller, p.load(Ordering::Relaxed)), (&mirror, true)] {
                    k.with(|k| {
                        if polls {
                            for (i, &u) in up.iter().enumerate() {
                                let r = if u {
                                    Reply::Answer { rtt_us: 1_000 }
                                } else {
                                    Reply::Lost
                                };
                                k.poll(node(i as u8 + 1), ProtoClass::IcmpEcho, 0, r);
                            }
                        }
                        let now = k.mono_ns();
                        k.advance_ns(target.saturating_sub(now));
                    });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Self {
            truth,
            poller_polls,
            stop,
            thread: Some(thread),
        }
    }

    fn set(&self, i: usize, up: bool) {
        self.truth.lock().unwrap()[i] = up;
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Node up/down events stored at the primary: (time, stream, node index, down).
fn node_events(r: &RunningReceiver) -> Vec<(u64, String, usize, bool)> {
    let db = r.shared.store.tenant(TenantId(1)).unwrap();
    let page = db
        .events(&EventFilter::default(), &PageRequest::first(10_000))
        .unwrap();
    assert!(page.next.is_none(), "more events than expected");
    let mut v: Vec<_> = page
        .items
        .into_iter()
        .filter_map(|e| {
            let down = match e.event.kind {
                EventKind::NodeDown => true,
                EventKind::NodeUp => false,
                _ => return None,
            };
            let Subject::Node(n) = &e.event.subject else {
                return None;
            };
            let i = (1..=9u8).position(|i| NodeId::from(&node(i)) == NodeId::from(&n.key()))?;
            Some((e.event.time_ms, e.poller.as_str().to_string(), i, down))
        })
        .collect();
    v.sort();
    v
}

fn has(r: &RunningReceiver, who: &str, i: usize, down: bool) -> bool {
    node_events(r)
        .iter()
        .any(|(_, w, n, d)| w == who && *n == i && *d == down)
}

fn held(r: &RunningReceiver, who: &str) -> Vec<(u64, opha_store::RangeSet)> {
    r.shared
        .store
        .held_ranges(&peer(who), &[Scope::Tenant(TenantId(1)), Scope::System])
        .unwrap()
}

fn metrics(r: &RunningReceiver) -> String {
    r.shared.render_metrics()
}

#[test]
fn mirror_takes_over_on_silence_and_gives_back() {
    let _ = env_logger::builder().is_test(true).try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pki = Pki::new();
    pki.issue("poller-1", PeerRole::Poller, &[1]);
    pki.issue("mirror-1", PeerRole::Mirror, &[1]);
    let primary = rt.block_on(start_receiver(
        &pki,
        "[[poller]]\nid = \"poller-1\"\ntenants = [1]\nmirror = \"mirror-1\"\n",
    ));
    let mcfg = mirror_receiver_config(&pki.root);
    let mirror_rx = rt.block_on(receiver::start(&mcfg)).unwrap();
    let hook: Arc<Hook> = mirror_rx.shared.mirror.clone().expect("a [mirror] hook");
    let dir = pki.root.clone();

    let nodes = 2;
    let (a, b) = (0, 1);
    let pk = SimKernel::new(T0);
    let mk = SimKernel::new(T0);
    let world = World::start(pk.clone(), mk.clone(), nodes);

    let pcfg = poller_config(
        &pki,
        &dir,
        "poller-1",
        &[
            ("primary-1", "primary", primary.addr),
            ("mirror-1", "mirror", mirror_rx.addr),
        ],
    );
    let poller = Pipeline::start(parts(&pcfg, &pk), rt.handle()).unwrap();
    let mcfg_poll = poller_config(
        &pki,
        &dir,
        "mirror-1",
        &[("primary-1", "primary", primary.addr)],
    );
    let driver = MirrorDriver::start(hook.clone(), parts(&mcfg_poll, &mk), rt.handle()).unwrap();

    // Standby: the poller reports A down to both receivers; the mirror keeps its own.
    wait_for("the poller streaming", Duration::from_secs(20), || {
        !held(&primary, "poller-1").is_empty()
    });
    std::thread::sleep(Duration::from_millis(500));
    world.set(a, false);
    wait_for("A down from the poller", Duration::from_secs(20), || {
        has(&primary, "poller-1", a, true)
    });
    wait_for(
        "the mirror's states: A down",
        Duration::from_secs(20),
        || hook.control.states().is_down(&NodeId::from(&node(1))),
    );
    // The mirror's own pipeline has seen A down too, by now (same devices).
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(hook.control.role(), Role::Standby);
    assert!(
        held(&primary, "mirror-1").is_empty(),
        "standby: nothing sent"
    );
    assert!(metrics(&mirror_rx).contains("opha_mirror_streaming{poller=\"poller-1\"} 0"));

    // The poller stops: promoted after the takeover delay, the primary gets the mirror's records.
    let silent_at = Instant::now();
    poller.shutdown();
    world.poller_polls.store(false, Ordering::Relaxed);
    wait_for("promotion", Duration::from_secs(10), || {
        hook.control.role() == Role::Active
    });
    let promoted_after = silent_at.elapsed();
    assert!(
        promoted_after >= TAKEOVER.saturating_sub(Duration::from_millis(250)),
        "promoted after {promoted_after:?}, before the takeover delay"
    );
    wait_for(
        "a record from the mirror at the primary",
        Duration::from_secs(10),
        || !held(&primary, "mirror-1").is_empty(),
    );
    let first_record = silent_at.elapsed();
    let ranges = held(&primary, "mirror-1");
    assert_eq!(ranges.len(), 1, "one epoch: {ranges:?}");
    let low = ranges[0].1.iter().next().unwrap().start;
    assert!(
        low > 0,
        "the mirror's standby records (from 0) are not sent"
    );
    eprintln!(
        "promoted {promoted_after:?} after the poller stopped; first record stored at the primary after {first_record:?}"
    );
    let m = metrics(&mirror_rx);
    assert!(
        m.contains("opha_mirror_promoted{poller=\"poller-1\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("opha_mirror_promotions_total{poller=\"poller-1\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("opha_mirror_streaming{poller=\"poller-1\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("opha_bus_connected{receiver=\"primary-1\",role=\"primary\"}"),
        "{m}"
    );

    // Nodes change while the mirror reports: A up, B down, both from the mirror.
    world.set(a, true);
    world.set(b, false);
    wait_for(
        "A up and B down from the mirror",
        Duration::from_secs(20),
        || has(&primary, "mirror-1", a, false) && has(&primary, "mirror-1", b, true),
    );
    // A few more polls: nothing repeats.
    std::thread::sleep(Duration::from_secs(1));
    let ev = node_events(&primary);
    let per_node = |i: usize| -> Vec<(String, bool)> {
        ev.iter()
            .filter(|e| e.2 == i)
            .map(|e| (e.1.clone(), e.3))
            .collect()
    };
    assert_eq!(
        per_node(a),
        [
            ("poller-1".to_string(), true),
            ("mirror-1".to_string(), false)
        ],
        "A: one down (poller), one up (mirror): {ev:?}"
    );
    assert_eq!(
        per_node(b),
        [("mirror-1".to_string(), true)],
        "B: one down (mirror): {ev:?}"
    );

    // The poller returns: its hello demotes the mirror, whose links drain and stop.
    let mirror_events = node_events(&primary)
        .iter()
        .filter(|e| e.1 == "mirror-1")
        .count();
    let poller = Pipeline::start(parts(&pcfg, &pk), rt.handle()).unwrap();
    world.poller_polls.store(true, Ordering::Relaxed);
    wait_for("demotion", Duration::from_secs(10), || {
        hook.control.role() == Role::Standby
    });
    wait_for(
        "the mirror's links drained and stopped",
        Duration::from_secs(10),
        || metrics(&mirror_rx).contains("opha_mirror_streaming{poller=\"poller-1\"} 0"),
    );
    let m = metrics(&mirror_rx);
    assert!(
        m.contains("opha_mirror_demotions_total{poller=\"poller-1\"} 1"),
        "{m}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        node_events(&primary)
            .iter()
            .filter(|e| e.1 == "mirror-1")
            .count(),
        mirror_events,
        "a demoted mirror sends no more events"
    );
    let saved = control::load_state(hook.state_file()).unwrap();
    assert_eq!(saved.role, Role::Standby);
    assert!(
        saved.states.is_down(&NodeId::from(&node(2))),
        "B reported down, persisted"
    );

    // Operator commands through the command file (what `opha-sidecar mirror promote` writes).
    control::request(hook.command_dir(), Command::Promote).unwrap();
    wait_for("operator promotion", Duration::from_secs(5), || {
        metrics(&mirror_rx).contains("opha_mirror_streaming{poller=\"poller-1\"} 1")
    });
    assert!(metrics(&mirror_rx).contains("opha_mirror_forced{poller=\"poller-1\"} 1"));
    control::request(hook.command_dir(), Command::Auto).unwrap();
    wait_for(
        "back to standby (the poller streams)",
        Duration::from_secs(10),
        || {
            hook.control.role() == Role::Standby
                && metrics(&mirror_rx).contains("opha_mirror_streaming{poller=\"poller-1\"} 0")
        },
    );
    assert!(metrics(&mirror_rx).contains("opha_mirror_forced{poller=\"poller-1\"} 0"));

    driver.shutdown();
    poller.shutdown();
    drop(world);
    rt.block_on(async {
        mirror_rx.shutdown().await;
        primary.shutdown().await;
    });
}
