//! Fencing on the wire: a real poller bus (`poller::bus::start`) and two real in-process
//! primaries (`receiver::start`) on 127.0.0.1, the main one behind a UDP relay the test can
//! cut, so a "kill -9" sends nothing (no QUIC close reaches the poller):
//! - the main primary acts; cut off and gone, the redundant one acts, detected by the grant
//!   heartbeat (`bus.failover_after`), not by the QUIC idle timeout (5 s here);
//! - the main primary restarted on its store loads its persisted term, and acts again with a
//!   higher term once the redundant one has stepped down: a sampler never sees both acting;
//! - by hand (raw quinn client with the poller's certificate): a stale grant is ignored and
//!   counted, the highest term survives a restart, the lease runs out, a disconnect stops the
//!   acting, and a mirror drops grants unanswered.

mod bus_support;
mod receiver_support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bus_support::{PollerFile, ReceiverFile, peer, pki, start_bus, stop_bus, wait_for};
use opha_bus::message::{BusFrame, BusMessage, EpochStart, Grant, Hello, Term};
use opha_common::wire::{PROTOCOL_VERSION, PeerRole};
use opha_identity::{ExpectPeer, TransportSettings};
use opha_log::Log;
use opha_sidecar::config::PollerConfig;
use opha_sidecar::config::receiver::ReceiverFileConfig;
use opha_sidecar::poller::bus::wire::{read_message, write_message};
use opha_sidecar::receiver::{self, Shared};
use receiver_support::Pki;
use tokio::net::UdpSocket;

const POLLER: &str = "poller-f";
const MAIN: &str = "primary-main";
const RED: &str = "primary-red";
const MIRROR: &str = "mirror-f";
const TENANT: u32 = 6;

fn fencing_pki() -> Pki {
    pki(
        "bus-fencing-",
        &[
            (POLLER, PeerRole::Poller, &[TENANT]),
            (MAIN, PeerRole::Primary, &[]),
            (RED, PeerRole::Primary, &[]),
            (MIRROR, PeerRole::Mirror, &[]),
        ],
    )
}

/// A receiver's file (default transport: keep-alive 1 s, idle timeout 5 s).
fn receiver_config(root: &Path, id: &str, role: &str) -> ReceiverFileConfig {
    ReceiverFile::new(id, role)
        .poller(POLLER, &[TENANT])
        .build(root)
}

/// The poller with the main primary at `main` and the redundant one at `red`. The QUIC idle
/// timeout stays at its 5 s default: failover must come from the grant heartbeat.
fn poller_config(root: &Path, main: SocketAddr, red: SocketAddr) -> PollerConfig {
    PollerFile::new(POLLER, "t-fencing")
        .prefix("198.18.0.0/15", TENANT)
        .ordered_receiver(RED, "primary", red, 2)
        .ordered_receiver(MAIN, "primary", main, 1)
        .build(root)
}

/// A UDP relay in front of a receiver: `cut` drops everything both ways (the receiver is
/// gone without a word), `target` can move (a restarted receiver on a new port).
struct Relay {
    addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    cut: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Self {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = front.local_addr().unwrap();
        let target = Arc::new(Mutex::new(target));
        let cut = Arc::new(AtomicBool::new(false));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
        let (t, c, cl) = (target.clone(), cut.clone(), client.clone());
        let task = tokio::spawn(async move {
            let mut a = vec![0u8; 65536];
            let mut b = vec![0u8; 65536];
            loop {
                tokio::select! {
                    r = front.recv_from(&mut a) => {
                        let Ok((n, from)) = r else { return };
                        *cl.lock().unwrap() = Some(from);
                        if !c.load(Ordering::Relaxed) {
                            let to = *t.lock().unwrap();
                            let _ = back.send_to(&a[..n], to).await;
                        }
                    }
                    r = back.recv_from(&mut b) => {
                        let Ok((n, _)) = r else { return };
                        let to = *cl.lock().unwrap();
                        if let (false, Some(to)) = (c.load(Ordering::Relaxed), to) {
                            let _ = front.send_to(&b[..n], to).await;
                        }
                    }
                }
            }
        });
        Relay {
            addr,
            target,
            cut,
            task,
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Samples both primaries' acting state until stopped; counts samples and instants where
/// both acted.
struct Sampler {
    main: Arc<Mutex<Option<Arc<Shared>>>>,
    samples: Arc<AtomicU64>,
    both: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(main: Arc<Shared>, red: Arc<Shared>) -> Self {
        let main = Arc::new(Mutex::new(Some(main)));
        let samples = Arc::new(AtomicU64::new(0));
        let both = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s, b, st) = (main.clone(), samples.clone(), both.clone(), stop.clone());
        let p = peer(POLLER);
        let task = tokio::spawn(async move {
            while !st.load(Ordering::Relaxed) {
                let main_acts = m.lock().unwrap().as_ref().and_then(|x| x.acting_term(&p));
                let red_acts = red.acting_term(&p);
                if let (Some(a), Some(b2)) = (main_acts, red_acts) {
                    eprintln!("both acting: main term {a}, redundant term {b2}");
                    b.fetch_add(1, Ordering::Relaxed);
                }
                s.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        Sampler {
            main,
            samples,
            both,
            stop,
            task,
        }
    }

    fn set_main(&self, m: Option<Arc<Shared>>) {
        *self.main.lock().unwrap() = m;
    }

    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        (
            self.samples.load(Ordering::Relaxed),
            self.both.load(Ordering::Relaxed),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_fails_over_to_redundant_and_takes_over_again_never_both_acting() {
    let pki = fencing_pki();
    let p = peer(POLLER);
    let main_cfg = receiver_config(&pki.root, MAIN, "primary");
    let main = receiver::start(&main_cfg).await.unwrap();
    let red = receiver::start(&receiver_config(&pki.root, RED, "primary"))
        .await
        .unwrap();
    let relay = Relay::start(main.addr).await;
    let cfg = poller_config(&pki.root, relay.addr, red.addr);
    assert_eq!(
        cfg.bus.failover_after,
        Duration::from_secs(1),
        "the default"
    );
    let log = Arc::new(Log::open(cfg.log_config()).unwrap());
    let (bus, stop) = start_bus(&cfg, &log);
    // Links are in file order: the redundant one first, the main one (order = 1) second.
    let (red_link, main_link) = (&bus.status.links[0], &bus.status.links[1]);
    assert_eq!(main_link.receiver.peer, peer(MAIN));
    let sampler = Sampler::start(main.shared.clone(), red.shared.clone());

    // 1. The main primary acts; the redundant one knows the term and does not.
    wait_for("the main primary acting", Duration::from_secs(10), || {
        main.shared.acting_term(&p).is_some()
    })
    .await;
    let (active, t1) = bus.status.active_primary();
    assert_eq!(active, Some(peer(MAIN)));
    assert_eq!(main.shared.acting_term(&p), Some(t1));
    wait_for(
        "the redundant primary at the term",
        Duration::from_secs(5),
        || red.shared.fencing.highest_term(&p) >= t1,
    )
    .await;
    assert_eq!(red.shared.acting_term(&p), None);
    assert!(main_link.acting.load(Ordering::Relaxed) || main_link.is_connected());

    // 2. kill -9 of the main primary: cut off, then gone (its close never arrives).
    relay.cut.store(true, Ordering::Relaxed);
    let killed = Instant::now();
    main.shutdown().await;
    sampler.set_main(None);
    wait_for(
        "the redundant primary acting",
        Duration::from_secs(10),
        || red.shared.acting_term(&p).is_some(),
    )
    .await;
    let failover = killed.elapsed();
    let (active, t2) = bus.status.active_primary();
    assert_eq!(active, Some(peer(RED)));
    assert!(t2 > t1, "term {t2} after {t1}");
    assert_eq!(red.shared.acting_term(&p), Some(t2));
    assert!(
        main_link.fence_timeouts.load(Ordering::Relaxed) >= 1,
        "the failover was not detected by the grant heartbeat"
    );
    eprintln!("failover after the cut: {failover:?}");

    // 3. The main primary restarts on its store: it knows t1 before any grant, and acts
    //    again with a newer term once the redundant one has stepped down.
    let main2 = receiver::start(&main_cfg).await.unwrap();
    assert_eq!(main2.shared.fencing.highest_term(&p), t1, "persisted term");
    assert_eq!(main2.shared.acting_term(&p), None);
    sampler.set_main(Some(main2.shared.clone()));
    *relay.target.lock().unwrap() = main2.addr;
    relay.cut.store(false, Ordering::Relaxed);
    wait_for(
        "the main primary acting again",
        Duration::from_secs(10),
        || main2.shared.acting_term(&p).is_some(),
    )
    .await;
    let (active, t3) = bus.status.active_primary();
    assert_eq!(active, Some(peer(MAIN)));
    assert!(t3 > t2, "term {t3} after {t2}");
    assert_eq!(main2.shared.acting_term(&p), Some(t3));
    assert_eq!(red.shared.acting_term(&p), None);
    assert!(red.shared.fencing.highest_term(&p) >= t3);
    // Heartbeats keep it so (leases renewed, nothing flaps).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(main2.shared.acting_term(&p), Some(t3));
    assert_eq!(bus.status.active_primary(), (Some(peer(MAIN)), t3));
    assert!(red_link.grants_sent.load(Ordering::Relaxed) > 4);
    let text = main2.shared.render_metrics();
    assert!(
        text.contains(&format!("opha_receiver_acting{{poller=\"{POLLER}\"}} 1")),
        "{text}"
    );
    assert!(text.contains(&format!(
        "opha_receiver_fencing_term{{poller=\"{POLLER}\"}} {t3}"
    )));

    let (samples, both) = sampler.finish().await;
    assert!(samples > 100, "only {samples} samples");
    assert_eq!(
        both, 0,
        "both primaries acted at {both} of {samples} samples"
    );

    stop_bus(bus, stop).await;
    // The poller is gone: no primary acts for it any more.
    wait_for("nobody acting", Duration::from_secs(10), || {
        main2.shared.acting_term(&p).is_none() && red.shared.acting_term(&p).is_none()
    })
    .await;
    main2.shutdown().await;
    red.shutdown().await;
}

/// A raw poller connection: handshake done, frames on its control stream.
struct Raw {
    _ep: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl Raw {
    async fn connect(pki: &Pki, to: &str, role: PeerRole, addr: SocketAddr) -> Raw {
        let own = pki.issue(POLLER, PeerRole::Poller, &[TENANT]);
        let trust = pki.trust();
        let settings = TransportSettings {
            rtt_ms: 1,
            ..TransportSettings::default()
        };
        let cfg = settings
            .client_config(&trust, &own, ExpectPeer::receiver(peer(to), &[role]))
            .unwrap();
        let ep = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let conn = ep
            .connect_with(cfg, addr, opha_identity::SERVER_NAME)
            .unwrap()
            .await
            .unwrap();
        let (send, recv) = conn.open_bi().await.unwrap();
        let mut raw = Raw {
            _ep: ep,
            conn,
            send,
            recv,
        };
        raw.send(BusMessage::Hello(Hello {
            version: PROTOCOL_VERSION,
            epoch: 1,
            oldest: 0,
            head: 0,
            epochs: vec![EpochStart { epoch: 1, start: 0 }],
        }))
        .await;
        let ack = raw.next().await;
        assert!(matches!(ack, Some(BusMessage::HelloAck(_))), "{ack:?}");
        raw
    }

    async fn send(&mut self, m: BusMessage) {
        write_message(&mut self.send, &BusFrame::default(), &m)
            .await
            .unwrap();
    }

    /// The next frame within 2 s (`None`: nothing came).
    async fn next(&mut self) -> Option<BusMessage> {
        tokio::time::timeout(
            Duration::from_secs(2),
            read_message(&mut self.recv, &BusFrame::default()),
        )
        .await
        .ok()
        .map(|r| r.unwrap().expect("a frame"))
    }

    async fn grant(&mut self, term: u64, active: Option<&str>, lease_ms: u32) -> Option<Term> {
        self.send(BusMessage::Grant(Grant {
            term,
            active: active.map(peer),
            lease_ms,
        }))
        .await;
        match self.next().await {
            Some(BusMessage::Term(t)) => Some(t),
            None => None,
            Some(other) => panic!("expected a term, got {other:?}"),
        }
    }

    async fn close(self) {
        self.conn.close(0u32.into(), b"done");
        self._ep.wait_idle().await;
    }
}

fn term(highest: u64, acting: bool) -> Option<Term> {
    Some(Term { highest, acting })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_grants_are_ignored_and_the_highest_term_survives_a_restart() {
    let pki = fencing_pki();
    let p = peer(POLLER);
    let cfg = receiver_config(&pki.root, MAIN, "primary");
    let rx = receiver::start(&cfg).await.unwrap();
    let term_file = pki.root.join(format!("store-{MAIN}/fencing/{POLLER}.term"));
    assert_eq!(rx.shared.fencing.highest_term(&p), 0);

    let mut raw = Raw::connect(&pki, MAIN, PeerRole::Primary, rx.addr).await;
    assert_eq!(raw.grant(5, Some(MAIN), 60_000).await, term(5, true));
    assert_eq!(rx.shared.acting_term(&p), Some(5));
    assert_eq!(std::fs::read_to_string(&term_file).unwrap().trim(), "5");
    // Stale: ignored (still acting with 5), counted, answered with the higher term.
    assert_eq!(raw.grant(3, Some(MAIN), 60_000).await, term(5, true));
    assert_eq!(rx.shared.metrics.rejects("stale_grant"), 1);
    assert_eq!(rx.shared.acting_term(&p), Some(5));
    // Another primary granted a newer term: step down.
    assert_eq!(raw.grant(6, Some(RED), 60_000).await, term(6, false));
    assert_eq!(rx.shared.acting_term(&p), None);
    assert_eq!(std::fs::read_to_string(&term_file).unwrap().trim(), "6");
    raw.close().await;
    rx.shutdown().await;

    // Restarted: the persisted term holds before and after the poller's grants.
    let rx = receiver::start(&cfg).await.unwrap();
    assert_eq!(rx.shared.fencing.highest_term(&p), 6);
    let mut raw = Raw::connect(&pki, MAIN, PeerRole::Primary, rx.addr).await;
    assert_eq!(raw.grant(5, Some(MAIN), 60_000).await, term(6, false));
    assert_eq!(rx.shared.metrics.rejects("stale_grant"), 1);
    assert_eq!(rx.shared.acting_term(&p), None);
    // A grant naming nobody at a new term: no acting, the term rises.
    assert_eq!(raw.grant(7, None, 60_000).await, term(7, false));
    assert_eq!(raw.grant(7, Some(MAIN), 60_000).await, term(7, true));
    assert_eq!(rx.shared.acting_term(&p), Some(7));
    // The lease runs out without renewal.
    assert_eq!(raw.grant(8, Some(MAIN), 200).await, term(8, true));
    wait_for("the lease to end", Duration::from_secs(5), || {
        rx.shared.acting_term(&p).is_none()
    })
    .await;
    // A renewal reactivates; a disconnect ends the acting at once.
    assert_eq!(raw.grant(8, Some(MAIN), 60_000).await, term(8, true));
    assert_eq!(rx.shared.acting_term(&p), Some(8));
    raw.close().await;
    wait_for(
        "acting ends with the connection",
        Duration::from_secs(5),
        || rx.shared.acting_term(&p).is_none(),
    )
    .await;
    assert_eq!(rx.shared.fencing.highest_term(&p), 8);
    rx.shutdown().await;

    // A mirror never acts: grants are dropped unanswered and counted.
    let mirror = receiver::start(&receiver_config(&pki.root, MIRROR, "mirror"))
        .await
        .unwrap();
    let mut raw = Raw::connect(&pki, MIRROR, PeerRole::Mirror, mirror.addr).await;
    assert_eq!(raw.grant(9, Some(MIRROR), 60_000).await, None);
    assert_eq!(mirror.shared.metrics.rejects("not_primary"), 1);
    assert_eq!(mirror.shared.acting_term(&p), None);
    raw.close().await;
    mirror.shutdown().await;
}
