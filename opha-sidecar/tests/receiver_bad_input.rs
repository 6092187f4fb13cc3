//! Bad input at a real primary while a good poller streams to it: forged and replayed sequence
//! numbers, lying batch headers, a broken stream, a batch before the handshake, junk UDP
//! datagrams on the QUIC port, and certificates from another CA, revoked or of another tenant.
//! Each is refused and counted; the good poller's records are all stored exactly once.

mod receiver_support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use opha_bus::compress::Compression;
use opha_bus::message::{Batch, BusFrame, BusMessage, EpochStart, Hello, RefuseReason};
use opha_common::wire::{PROTOCOL_VERSION, PeerId, PeerRole, TenantId};
use opha_identity::{ExpectPeer, RefusalReason, TlsIdentity, TransportSettings, ca};
use opha_sidecar::receiver::{self, RunningReceiver, stream::read_frame};
use rand::{Rng as _, RngCore as _, SeedableRng as _, rngs::StdRng};
use receiver_support::*;

const REGISTRY: &str = "[[poller]]\nid = \"poller-1\"\ntenants = [1]\n\
                        [[poller]]\nid = \"poller-2\"\ntenants = [2]\n";

/// A hand-driven poller session: raw frames out, decoded messages back.
struct RawSession {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    frame: BusFrame,
}

impl RawSession {
    async fn open(ep: &quinn::Endpoint, cfg: &quinn::ClientConfig, addr: SocketAddr) -> Self {
        let conn = ep
            .connect_with(cfg.clone(), addr, opha_identity::SERVER_NAME)
            .unwrap()
            .await
            .unwrap();
        let (send, recv) = conn.open_bi().await.unwrap();
        RawSession {
            conn,
            send,
            recv,
            frame: BusFrame::default(),
        }
    }

    async fn send(&mut self, msg: &BusMessage) {
        let bytes = self.frame.encode(msg).unwrap();
        self.send.write_all(&bytes).await.unwrap();
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.unwrap();
    }

    /// The next message from the receiver (at most 10 s), `None` when the stream ended.
    async fn next(&mut self) -> Option<BusMessage> {
        let f = tokio::time::timeout(
            Duration::from_secs(10),
            read_frame(&mut self.recv, &self.frame),
        )
        .await
        .expect("no answer within 10 s")
        .ok()??;
        Some(self.frame.decode(&f).unwrap())
    }

    async fn hello(&mut self, epoch: u64, head: u64) {
        self.send(&BusMessage::Hello(Hello {
            version: PROTOCOL_VERSION,
            epoch,
            oldest: 0,
            head,
            epochs: vec![EpochStart { epoch, start: 0 }],
        }))
        .await;
        let ack = self.next().await.expect("a hello ack");
        assert!(matches!(ack, BusMessage::HelloAck(_)), "{ack:?}");
    }

    /// A refusal that closes the connection: the refusal arrives first (the receiver waits
    /// for it to be acknowledged before closing), then the close, which must say `why`.
    async fn expect_refused_then_closed(&mut self, reason: RefuseReason, why: &str) {
        match self.next().await {
            Some(BusMessage::Refuse(r)) => assert_eq!(r.reason, reason, "{r:?}"),
            other => panic!("expected a refusal {reason:?}, got {other:?}"),
        }
        let closed = tokio::time::timeout(Duration::from_secs(5), self.conn.closed())
            .await
            .expect("closed within 5 s");
        assert!(
            closed.to_string().contains(why),
            "closed for another reason: {closed}"
        );
    }

    async fn expect_refused(&mut self, reason: RefuseReason) {
        match self.next().await {
            Some(BusMessage::Refuse(r)) => assert_eq!(r.reason, reason, "{r:?}"),
            other => panic!("expected a refusal {reason:?}, got {other:?}"),
        }
    }
}

fn batch(epoch: u64, log: &[Vec<u8>], seqs: std::ops::Range<u64>) -> Batch {
    Batch::build(
        epoch,
        seqs.map(|s| (s, log[s as usize].as_slice())),
        Compression::Off,
    )
    .unwrap()
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "{what} within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn stored(rx: &RunningReceiver, tenant: u32) -> u64 {
    rx.shared
        .store
        .tenant(TenantId(tenant))
        .unwrap()
        .record_count()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_and_malformed_batches_are_refused_while_a_good_poller_streams() {
    let pki = Pki::new();
    let rx = start_receiver(&pki, REGISTRY).await;
    let m = &rx.shared.metrics;

    // The good poller streams 2,000 records while the bad one misbehaves.
    const N: u64 = 2000;
    let good = pki.issue("poller-1", PeerRole::Poller, &[1]);
    let (good_ep, good_cfg) = client_endpoint(&pki, &good);
    let good_log: Vec<Vec<u8>> = (0..N).map(|n| event(1, n)).collect();
    let addr = rx.addr;
    let good_task = tokio::spawn(async move {
        let s = deliver(&good_ep, &good_cfg, addr, 3, &good_log, false).await;
        s.cursor()
    });

    let bad = pki.issue("poller-2", PeerRole::Poller, &[2]);
    let (ep, cfg) = client_endpoint(&pki, &bad);
    let log: Vec<Vec<u8>> = (0..100).map(|n| event(2, 10_000 + n)).collect();

    // A batch before the handshake: refused, the connection closed.
    let mut s = RawSession::open(&ep, &cfg, rx.addr).await;
    s.send(&BusMessage::Batch(batch(5, &log, 0..10))).await;
    s.expect_refused_then_closed(RefuseReason::NoHandshake, "no handshake")
        .await;
    assert_eq!(m.rejects("handshake"), 1);

    // The poller said its head is 50; records appended since may follow, but not beyond
    // the receiver's `max_ahead` window: a sequence number far ahead is forged.
    let mut s = RawSession::open(&ep, &cfg, rx.addr).await;
    s.hello(5, 50).await;
    let far = 50 + rx.shared.bus.max_ahead;
    let forged = Batch::build(
        5,
        (far..far + 3).map(|seq| (seq, log[0].as_slice())),
        Compression::Off,
    )
    .unwrap();
    s.send(&BusMessage::Batch(forged)).await;
    s.expect_refused(RefuseReason::SeqOutOfRange).await;
    // An epoch the hello did not announce.
    s.send(&BusMessage::Batch(batch(6, &log, 0..10))).await;
    s.expect_refused(RefuseReason::UnknownEpoch).await;
    // A header that lies about its body: count 10 on a body of 5 records.
    let mut lying = batch(5, &log, 0..5);
    lying.count = 10;
    lying.last_seq = 9;
    s.send(&BusMessage::Batch(lying)).await;
    s.expect_refused(RefuseReason::Malformed).await;
    // Still serving this connection: a good batch is stored and acknowledged.
    s.send(&BusMessage::Batch(batch(5, &log, 0..50))).await;
    match s.next().await {
        Some(BusMessage::Ack(a)) => assert_eq!(a.epoch, 5),
        other => panic!("expected an ack, got {other:?}"),
    }
    // The same records again (a replay): acknowledged, counted as duplicates, stored once.
    let dups = receiver::Metrics::get(&m.duplicates);
    s.send(&BusMessage::Batch(batch(5, &log, 0..50))).await;
    assert!(matches!(s.next().await, Some(BusMessage::Ack(_))));
    assert_eq!(receiver::Metrics::get(&m.duplicates), dups + 50);
    assert_eq!(stored(&rx, 2), 50);
    assert_eq!(m.rejects("seq_out_of_range"), 1);
    assert_eq!(m.rejects("unknown_epoch"), 1);
    // A stream that loses its framing (a frame header claiming 1 GiB): refused, closed.
    let mut junk = b"OP".to_vec();
    junk.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    junk.extend_from_slice(&0x102u16.to_le_bytes());
    junk.extend_from_slice(&(1u32 << 30).to_le_bytes());
    s.send_raw(&junk).await;
    s.expect_refused_then_closed(RefuseReason::Malformed, "malformed stream")
        .await;
    wait_until("the broken stream counted", || m.rejects("malformed") >= 2).await;

    // The good poller was never disturbed.
    let cursor = tokio::time::timeout(Duration::from_secs(60), good_task)
        .await
        .expect("the good poller finished within 60 s")
        .unwrap();
    assert_eq!(cursor, N);
    assert_eq!(stored(&rx, 1), N);
    // Nothing of the bad poller landed in the good one's tenant or under its key.
    let held = rx
        .shared
        .store
        .tenant(TenantId(1))
        .unwrap()
        .held_ranges(&PeerId::new("poller-2").unwrap())
        .unwrap();
    assert!(held.is_empty(), "{held:?}");
    assert_eq!(stored(&rx, 2), 50);
    rx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_datagrams_and_foreign_certificates_are_refused_while_a_good_poller_streams() {
    let pki = Pki::new();
    let rx = start_receiver(&pki, REGISTRY).await;
    let counters = rx.shared.trust.counters();

    const N: u64 = 2000;
    let good = pki.issue("poller-1", PeerRole::Poller, &[1]);
    let (good_ep, good_cfg) = client_endpoint(&pki, &good);
    let good_log: Vec<Vec<u8>> = (0..N).map(|n| event(1, n)).collect();
    let addr = rx.addr;
    let good_task = tokio::spawn(async move {
        let s = deliver(&good_ep, &good_cfg, addr, 3, &good_log, false).await;
        s.cursor()
    });

    // 5,000 junk datagrams, every 50th shaped as a QUIC v1 Initial that cannot decrypt (those
    // become refused handshakes); bounded in count and time.
    let seed: u64 = rand::rng().random();
    eprintln!("junk seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let junk = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = vec![0u8; 1500];
    let mut initials = 0u64;
    let started = Instant::now();
    for i in 0..5000u32 {
        if started.elapsed() > Duration::from_secs(10) {
            break;
        }
        let mut len = rng.random_range(1..=1400);
        rng.fill_bytes(&mut buf[..len]);
        if i % 50 == 0 {
            len = 1200;
            buf[0] = 0xc3;
            buf[1..5].copy_from_slice(&1u32.to_be_bytes());
            buf[5] = 8;
            buf[14] = 0;
            buf[15] = 0;
            let rest = (len - 18) as u16;
            let rest: u16 = 0x4000 | rest;
            buf[16..18].copy_from_slice(&rest.to_be_bytes());
            initials += 1;
        }
        let _ = junk.send_to(&buf[..len], rx.addr).await;
        if i % 200 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    wait_until("junk Initials refused as malformed handshakes", || {
        counters.get(RefusalReason::Malformed) >= 1
    })
    .await;
    assert!(counters.get(RefusalReason::Malformed) <= initials);

    // A poller certificate from another CA.
    let other_dir = tempfile::tempdir().unwrap();
    let other = ca::init_ca(&other_dir.path().join("ca"), "other CA", 1, false).unwrap();
    let issued = other
        .issue(&ca::PeerSpec {
            peer_id: PeerId::new("poller-1").unwrap(),
            role: PeerRole::Poller,
            tenants: vec![TenantId(1)],
            validity: ca::Validity::days_from_now(1),
        })
        .unwrap();
    let foreign = TlsIdentity::from_issued(&issued).unwrap();
    let cfg = TransportSettings {
        rtt_ms: 1,
        ..TransportSettings::default()
    }
    .client_config(
        &pki.trust(),
        &foreign,
        ExpectPeer::receiver(PeerId::new("primary-1").unwrap(), &[PeerRole::Primary]),
    )
    .unwrap();
    let ep = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    if let Ok(conn) = ep
        .connect_with(cfg, rx.addr, opha_identity::SERVER_NAME)
        .unwrap()
        .await
    {
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    }
    wait_until("the foreign CA refused", || {
        counters.get(RefusalReason::UnknownCa) == 1
    })
    .await;

    // Poller-2's certificate (tenant 2) sending records of tenant 1: refused per record,
    // counted, nothing stored in tenant 1's file under poller-2.
    let bad = pki.issue("poller-2", PeerRole::Poller, &[2]);
    let (ep, cfg) = client_endpoint(&pki, &bad);
    let log: Vec<Vec<u8>> = (0..20).map(|n| event(1, 50_000 + n)).collect();
    let s = deliver(&ep, &cfg, rx.addr, 9, &log, false).await;
    assert_eq!(
        s.cursor(),
        20,
        "refused records are consumed, not resent forever"
    );
    assert_eq!(rx.shared.metrics.rejects("wrong_tenant"), 20);

    let cursor = tokio::time::timeout(Duration::from_secs(60), good_task)
        .await
        .expect("the good poller finished within 60 s")
        .unwrap();
    assert_eq!(cursor, N);
    assert_eq!(
        stored(&rx, 1),
        N,
        "tenant 1 holds exactly the good poller's records"
    );
    assert_eq!(stored(&rx, 2), 0);
    rx.shutdown().await;
}
