//! The poller's bus sender against in-process receivers (opha_bus::Receiver behind a quinn
//! server with opha-identity mTLS) on 127.0.0.1, with a real replay log: delivery and cursor,
//! restart with a new epoch, a receiver that is down at first, two receivers holding the log,
//! and no bus without receivers.

mod bus_support;
mod receiver_support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus_support::{start_bus, stop_bus, wait_for};
use opha_bus::message::{BusFrame, BusMessage};
use opha_bus::receiver::{PollerState, Receiver, ReceiverConfig, ReceiverOutput};
use opha_common::wire::{PeerId, PeerRole, TenantId};
use opha_identity::{Ca, PeerSpec, TlsIdentity, TransportSettings, Trust, Validity};
use opha_log::{Log, RecordClass};
use opha_sidecar::config::PollerConfig;
use opha_sidecar::poller::Shutdown;
use opha_sidecar::poller::bus::wire::{read_message, write_message};
use opha_sidecar::poller::bus::{self, cursor_name, epochs::EpochTable};

const POLLER: &str = "poller-t";

/// Test transport: fast failure detection on loopback.
fn transport() -> TransportSettings {
    TransportSettings {
        keep_alive_ms: 200,
        idle_timeout_ms: 1000,
        rtt_ms: 1,
        ..TransportSettings::default()
    }
}

struct Pki {
    ca: Ca,
}

impl Pki {
    fn new(dir: &Path) -> Self {
        let ca = Ca::create("test CA", Validity::days_from_now(2)).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
        let (cert, key) = ca
            .issue(&spec(POLLER, PeerRole::Poller))
            .unwrap()
            .save(dir, true)
            .unwrap();
        std::fs::rename(cert, dir.join("poller.pem")).unwrap();
        std::fs::rename(key, dir.join("poller.key")).unwrap();
        Self { ca }
    }

    fn trust(&self) -> Trust {
        Trust::new(self.ca.cert_der().clone()).unwrap()
    }

    fn identity(&self, peer: &str, role: PeerRole) -> TlsIdentity {
        TlsIdentity::from_issued(&self.ca.issue(&spec(peer, role)).unwrap()).unwrap()
    }
}

fn spec(peer: &str, role: PeerRole) -> PeerSpec {
    PeerSpec {
        peer_id: PeerId::new(peer).unwrap(),
        role,
        tenants: vec![TenantId(1)],
        validity: Validity::days_from_now(1),
    }
}

/// What a test receiver made "durable", across its connections and restarts.
#[derive(Default)]
struct Stored {
    /// (epoch, seq) -> (payload, times stored)
    rows: BTreeMap<(u64, u64), (Vec<u8>, u32)>,
    state: PollerState,
    /// Records carried by batches on the wire (duplicates included).
    entries_received: u64,
    connections: u64,
}

struct TestReceiver {
    endpoint: quinn::Endpoint,
    stored: Arc<Mutex<Stored>>,
}

impl TestReceiver {
    fn start(pki: &Pki, peer: &str, role: PeerRole, addr: SocketAddr) -> Self {
        Self::start_with(pki, peer, role, addr, Arc::default())
    }

    fn start_with(
        pki: &Pki,
        peer: &str,
        role: PeerRole,
        addr: SocketAddr,
        stored: Arc<Mutex<Stored>>,
    ) -> Self {
        let trust = pki.trust();
        let cfg = transport()
            .server_config(&trust, &pki.identity(peer, role))
            .unwrap();
        let endpoint = quinn::Endpoint::server(cfg, addr).unwrap();
        let (ep, st) = (endpoint.clone(), stored.clone());
        tokio::spawn(async move {
            while let Some(inc) = ep.accept().await {
                let (trust, st) = (trust.clone(), st.clone());
                tokio::spawn(async move {
                    let Ok((conn, id)) = trust.accept(inc).await else {
                        return;
                    };
                    assert_eq!(id.peer_id.as_str(), POLLER);
                    assert_eq!(id.role, PeerRole::Poller);
                    if let Ok((send, recv)) = conn.accept_bi().await {
                        serve(send, recv, st).await;
                    }
                });
            }
        });
        Self { endpoint, stored }
    }

    fn addr(&self) -> SocketAddr {
        self.endpoint.local_addr().unwrap()
    }

    fn stop(self) -> Arc<Mutex<Stored>> {
        self.endpoint.close(0u32.into(), b"test receiver down");
        self.stored
    }
}

/// One connection: the pure receiver, with stores committed at once (records and dedupe
/// state together, as the real store does in one transaction), then acked.
async fn serve(mut send: quinn::SendStream, mut recv: quinn::RecvStream, st: Arc<Mutex<Stored>>) {
    let frame = BusFrame::default();
    let state = {
        let mut s = st.lock().unwrap();
        s.connections += 1;
        s.state.clone()
    };
    let mut rx = Receiver::new(ReceiverConfig::default(), state);
    while let Ok(Some(msg)) = read_message(&mut recv, &frame).await {
        if let BusMessage::Batch(b) = &msg {
            st.lock().unwrap().entries_received += u64::from(b.count);
        }
        let mut outs = rx.handle(msg, 0);
        while !outs.is_empty() {
            let mut next = Vec::new();
            for o in outs {
                match o {
                    ReceiverOutput::Transmit(m) => {
                        assert!(!matches!(m, BusMessage::Refuse(_)), "refused: {m:?}");
                        if write_message(&mut send, &frame, &m).await.is_err() {
                            return;
                        }
                    }
                    ReceiverOutput::Store(s) => {
                        let mut g = st.lock().unwrap();
                        let mut state = rx.state().clone();
                        for e in &s.entries {
                            g.rows
                                .entry((s.epoch, e.seq))
                                .or_insert((e.payload.0.clone(), 0))
                                .1 += 1;
                            state
                                .epochs
                                .get_mut(&s.epoch)
                                .unwrap()
                                .held
                                .insert_one(e.seq);
                        }
                        g.state = state;
                        drop(g);
                        next.extend(rx.durable(s.ticket));
                    }
                    ReceiverOutput::Close => return,
                }
            }
            outs = next;
        }
    }
}

struct ReceiverSpec {
    peer: &'static str,
    role: &'static str,
    addr: SocketAddr,
}

fn config(dir: &Path, receivers: &[ReceiverSpec], segment: &str) -> PollerConfig {
    let mut text = format!(
        r#"
poller_id = "{POLLER}"
interface = "lo"
instance = "t-bus"
daemon = []
[[prefix]]
cidr = "198.18.0.0/15"
tenant = 1
[log]
dir = "{dir}/log"
segment = "{segment}"
budget = "64MiB"
[ingest]
http = "off"
unix = "off"
[metrics]
listen = "off"
[bus]
cert = "poller.pem"
key = "poller.key"
ca = "ca.pem"
linger = "1ms"
max_batch_records = 64
window_records = 256
replay_bytes_per_sec = "0"
reconnect_min = "50ms"
reconnect_max = "200ms"
[bus.transport]
keep_alive_ms = 200
idle_timeout_ms = 1000
rtt_ms = 1
"#,
        dir = dir.display()
    );
    for r in receivers {
        text.push_str(&format!(
            "[[receiver]]\npeer = \"{}\"\nrole = \"{}\"\naddress = \"{}\"\n",
            r.peer, r.role, r.addr
        ));
    }
    PollerConfig::from_toml(&text, "test.toml", dir).expect("valid config")
}

fn payload(i: u64) -> Vec<u8> {
    let mut p = format!("record {i} ").into_bytes();
    p.resize(40 + (i % 60) as usize, b'.');
    p
}

fn append(log: &Log, from: u64, to: u64) {
    for i in from..to {
        log.append(RecordClass::Event, &payload(i)).unwrap();
    }
}

/// Every log position from..to stored exactly once with its bytes, under `epoch_of(seq)`.
fn assert_exactly_once(st: &Stored, first: u64, to: u64, epoch_of: impl Fn(u64) -> u64) {
    assert_eq!(st.rows.len() as u64, to - first, "rows stored");
    for seq in first..to {
        let (bytes, n) = st
            .rows
            .get(&(epoch_of(seq), seq))
            .unwrap_or_else(|| panic!("({}, {seq}) missing", epoch_of(seq)));
        assert_eq!(*n, 1, "({seq}) stored {n} times");
        assert_eq!(bytes, &payload(seq), "payload of {seq}");
    }
}

fn free_udp_port() -> SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_every_record_and_resumes_after_a_restart_without_resending() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let rx = TestReceiver::start(&pki, "primary-a", PeerRole::Primary, free_udp_port());
    let cfg = config(
        dir.path(),
        &[ReceiverSpec {
            peer: "primary-a",
            role: "primary",
            addr: rx.addr(),
        }],
        "1MiB",
    );
    let log = Arc::new(Log::open(cfg.log_config()).unwrap());
    let first = log.durable_next_seq();
    const N: u64 = 3000;
    append(&log, first, first + N);

    // Run 1: epoch 1 covers the whole log.
    let (bus1, stop1) = start_bus(&cfg, &log);
    assert_eq!(bus1.status.epoch, 1);
    let name = cursor_name(&PeerId::new("primary-a").unwrap());
    let end = first + N;
    wait_for("cursor at N", Duration::from_secs(30), || {
        log.cursor(&name) == Some(end)
    })
    .await;
    assert!(bus1.status.links[0].is_connected());
    assert_eq!(
        bus1.status.active_primary().0.unwrap().as_str(),
        "primary-a"
    );
    let mut text = String::new();
    bus1.status.render(&mut text);
    assert!(
        text.contains("opha_bus_cursor{receiver=\"primary-a\",role=\"primary\"}"),
        "{text}"
    );
    assert!(
        text.contains("opha_bus_active_primary{receiver=\"primary-a\"} 1"),
        "{text}"
    );
    {
        let st = rx.stored.lock().unwrap();
        assert_exactly_once(&st, first, end, |_| 1);
        assert_eq!(st.entries_received, N, "nothing sent twice");
    }
    let term1 = bus1.status.active_primary().1;
    stop_bus(bus1, stop1).await;

    // While the sender is down, the log grows (these records belong to epoch 1's span).
    const M: u64 = 500;
    append(&log, end, end + M);
    // Run 2: a new epoch, durable before connecting; resumes from the receiver's state.
    let (bus2, stop2) = start_bus(&cfg, &log);
    assert_eq!(bus2.status.epoch, 2);
    let table = EpochTable::load(&cfg.epoch_file()).unwrap();
    assert_eq!(table.last_epoch, 2);
    assert_eq!(table.epochs.last().unwrap().start, end + M);
    const K: u64 = 300;
    append(&log, end + M, end + M + K);
    let all = end + M + K;
    wait_for("cursor at N+M+K", Duration::from_secs(30), || {
        log.cursor(&name) == Some(all)
    })
    .await;
    // The fencing term only rises, also across restarts.
    assert!(bus2.status.active_primary().1 > term1);
    stop_bus(bus2, stop2).await;
    let st = rx.stored.lock().unwrap();
    assert_exactly_once(&st, first, all, |seq| if seq < end + M { 1 } else { 2 });
    assert_eq!(
        st.entries_received,
        N + M + K,
        "what was durable at the receiver was not sent again"
    );
    assert!(st.connections >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_at_first_gets_everything_when_it_comes_up() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let addr = free_udp_port();
    let cfg = config(
        dir.path(),
        &[ReceiverSpec {
            peer: "mirror-m",
            role: "mirror",
            addr,
        }],
        "1MiB",
    );
    let log = Arc::new(Log::open(cfg.log_config()).unwrap());
    let first = log.durable_next_seq();
    const N: u64 = 1000;
    append(&log, first, first + N);
    let (bus, stop) = start_bus(&cfg, &log);
    let name = cursor_name(&PeerId::new("mirror-m").unwrap());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(log.cursor(&name), Some(first), "nothing acknowledged yet");
    assert!(!bus.status.links[0].is_connected());
    assert!(
        bus.status.active_primary().0.is_none(),
        "a mirror is never the active primary"
    );

    let rx = TestReceiver::start(&pki, "mirror-m", PeerRole::Mirror, addr);
    append(&log, first + N, first + 2 * N);
    let end = first + 2 * N;
    wait_for("cursor at 2N", Duration::from_secs(30), || {
        log.cursor(&name) == Some(end)
    })
    .await;
    stop_bus(bus, stop).await;
    let st = rx.stored.lock().unwrap();
    assert_exactly_once(&st, first, end, |_| 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_are_deleted_only_when_every_receiver_has_passed_them() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let primary = TestReceiver::start(&pki, "primary-a", PeerRole::Primary, free_udp_port());
    let mirror_addr = free_udp_port();
    let cfg = config(
        dir.path(),
        &[
            ReceiverSpec {
                peer: "primary-a",
                role: "primary",
                addr: primary.addr(),
            },
            ReceiverSpec {
                peer: "mirror-m",
                role: "mirror",
                addr: mirror_addr,
            },
        ],
        "64KiB",
    );
    let log = Arc::new(Log::open(cfg.log_config()).unwrap());
    let first = log.durable_next_seq();
    // About 100 KiB per 1,500 records: several 64 KiB segments.
    const N: u64 = 4000;
    append(&log, first, first + N);
    let end = first + N;
    let (bus, stop) = start_bus(&cfg, &log);
    let p = cursor_name(&PeerId::new("primary-a").unwrap());
    let m = cursor_name(&PeerId::new("mirror-m").unwrap());
    wait_for("primary cursor at N", Duration::from_secs(30), || {
        log.cursor(&p) == Some(end)
    })
    .await;
    assert_eq!(log.cursor(&m), Some(first));
    assert_eq!(
        log.oldest_seq(),
        first,
        "the mirror still needs every segment"
    );

    let mirror = TestReceiver::start(&pki, "mirror-m", PeerRole::Mirror, mirror_addr);
    wait_for("mirror cursor at N", Duration::from_secs(30), || {
        log.cursor(&m) == Some(end)
    })
    .await;
    wait_for("old segments deleted", Duration::from_secs(10), || {
        log.oldest_seq() > first
    })
    .await;
    stop_bus(bus, stop).await;
    assert_exactly_once(&primary.stop().lock().unwrap(), first, end, |_| 1);
    assert_exactly_once(&mirror.stop().lock().unwrap(), first, end, |_| 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_receivers_there_is_no_bus_and_no_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &[], "1MiB");
    assert!(cfg.receivers.is_empty());
    let log = Arc::new(Log::open(cfg.log_config()).unwrap());
    append(&log, 0, 10);
    let started = bus::start(
        &cfg,
        log.clone(),
        Shutdown::new(),
        &tokio::runtime::Handle::current(),
    )
    .unwrap();
    assert!(started.is_none());
    assert!(
        log.cursors().is_empty(),
        "the log keeps everything, as before"
    );
    assert!(!cfg.epoch_file().exists(), "no epoch is taken");
}

#[test]
fn receiver_config_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
poller_id = "{POLLER}"
interface = "lo"
[[prefix]]
cidr = "198.18.0.0/15"
tenant = 1
[log]
dir = "{}/log"
[bus]
window_records = 10
max_batch_records = 64
[[receiver]]
peer = "primary-a"
role = "primary"
address = "nowhere"
[[receiver]]
peer = "primary-a"
role = "mirror"
address = "127.0.0.1:7000"
order = 1
"#,
        dir.path().display()
    );
    let err = PollerConfig::from_toml(&text, "t.toml", dir.path()).unwrap_err();
    let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
    for k in [
        "bus.cert",
        "bus.key",
        "bus.ca",
        "bus.window_records",
        "receiver[0].address",
        "receiver[1].peer",
        "receiver[1].order",
    ] {
        assert!(keys.contains(&k), "{k} not reported: {keys:?}");
    }
}
