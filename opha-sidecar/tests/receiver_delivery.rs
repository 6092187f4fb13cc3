//! A real receiver task on 127.0.0.1 and a fake poller built directly on opha_bus::Sender and
//! a quinn client: exactly-once storage, replays after reconnect, tenant refusal, and a
//! client without a certificate.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use opha_bus::compress::Compression;
use opha_bus::message::{Batch, BusFrame, BusMessage, EpochStart};
use opha_bus::sender::{Sender, SenderConfig, SenderEvent};
use opha_common::wire::{
    Event, EventId, EventKind, NodeRef, PeerId, PeerRole, Record, Severity, Subject, TenantId,
};
use opha_identity::{ExpectPeer, RefusalReason, TlsIdentity, TransportSettings, Trust, ca};
use opha_sidecar::config::receiver::ReceiverFileConfig;
use opha_sidecar::ingest::sink::encode_record;
use opha_sidecar::receiver::{self, RunningReceiver, stream::read_frame};

struct Pki {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    ca: ca::Ca,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let ca = ca::init_ca(&root.join("ca"), "test CA", 1, false).unwrap();
        Pki {
            _dir: dir,
            root,
            ca,
        }
    }

    fn issue(&self, peer: &str, role: PeerRole, tenants: &[u32]) -> TlsIdentity {
        let spec = ca::PeerSpec {
            peer_id: PeerId::new(peer).unwrap(),
            role,
            tenants: tenants.iter().map(|&t| TenantId(t)).collect(),
            validity: ca::Validity::days_from_now(1),
        };
        let issued = self.ca.issue(&spec).unwrap();
        issued.save(&self.root.join("certs"), true).unwrap();
        TlsIdentity::from_issued(&issued).unwrap()
    }

    fn trust(&self) -> Trust {
        Trust::from_ca_pem(self.ca.cert_pem()).unwrap()
    }
}

fn receiver_config(root: &Path, registry: &str) -> ReceiverFileConfig {
    let text = format!(
        r#"
peer_id = "primary-1"
role = "primary"
listen = "127.0.0.1:7443"
[tls]
certificate = "certs/primary-1.pem"
key = "certs/primary-1.key"
ca = "ca/ca.pem"
[store]
dir = "store"
[transport]
rtt_ms = 1
{registry}
[metrics]
listen = "off"
"#
    );
    let mut cfg = ReceiverFileConfig::from_toml(&text, "test.toml", root).unwrap();
    // Tests bind an ephemeral port (files must name a fixed one).
    cfg.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    cfg
}

async fn start_receiver(pki: &Pki, registry: &str) -> RunningReceiver {
    pki.issue("primary-1", PeerRole::Primary, &[]);
    receiver::start(&receiver_config(&pki.root, registry))
        .await
        .unwrap()
}

fn event(tenant: u32, n: u64) -> Vec<u8> {
    let rec = Record::Event(Event {
        id: EventId::from_u128(u128::from(n) + 1),
        time_ms: 1_700_000_000_000 + n,
        tenant: TenantId(tenant),
        subject: Subject::Node(NodeRef::new(
            0,
            IpAddr::V4(Ipv4Addr::new(198, 18, 0, (n % 200) as u8 + 1)),
            None,
        )),
        kind: EventKind::NodeDown,
        severity: Severity::Major,
        details: format!("record {n}"),
    });
    encode_record(&rec).unwrap()
}

fn client_endpoint(pki: &Pki, own: &TlsIdentity) -> (quinn::Endpoint, quinn::ClientConfig) {
    let settings = TransportSettings {
        rtt_ms: 1,
        ..TransportSettings::default()
    };
    let cfg = settings
        .client_config(
            &pki.trust(),
            own,
            ExpectPeer::receiver(PeerId::new("primary-1").unwrap(), &[PeerRole::Primary]),
        )
        .unwrap();
    let ep = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    (ep, cfg)
}

/// Connects, handshakes, and streams `log` (seq = index) until every record is acknowledged.
/// With `resend_all`, also sends every record again as one raw batch after the handshake.
async fn deliver(
    ep: &quinn::Endpoint,
    cfg: &quinn::ClientConfig,
    addr: SocketAddr,
    epoch: u64,
    log: &[Vec<u8>],
    resend_all: bool,
) -> Sender {
    let t0 = Instant::now();
    let now = || t0.elapsed().as_nanos() as u64;
    let scfg = SenderConfig {
        max_batch_records: 64,
        window_records: 1024,
        linger: 0,
        replay_bytes_per_sec: 0,
        compression: Compression::Zstd { level: 1 },
        ..SenderConfig::default()
    };
    let head = log.len() as u64;
    let mut sender = Sender::new(
        scfg.clone(),
        vec![EpochStart { epoch, start: 0 }],
        0,
        0,
        head,
        now(),
    )
    .unwrap();
    let frame = BusFrame::default();
    let conn = ep
        .connect_with(cfg.clone(), addr, opha_identity::SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let hello = sender.connect();
    send.write_all(&frame.encode(&hello).unwrap())
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        while let Ok(Some(f)) = read_frame(&mut recv, &frame).await {
            if tx.send(f).await.is_err() {
                break;
            }
        }
    });
    // Hello ack first.
    let f = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    sender.handle(frame.decode(&f).unwrap(), now());
    if resend_all {
        let batch = Batch::build(
            epoch,
            log.iter()
                .enumerate()
                .map(|(i, p)| (i as u64, p.as_slice())),
            Compression::Off,
        )
        .unwrap();
        send.write_all(&frame.encode(&BusMessage::Batch(batch)).unwrap())
            .await
            .unwrap();
        // Everything is held already: the receiver answers with an ack at once.
        let f = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        let msg = frame.decode(&f).unwrap();
        assert!(matches!(msg, BusMessage::Ack(_)), "{msg:?}");
        sender.handle(msg, now());
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sender.caught_up() {
        assert!(
            Instant::now() < deadline,
            "not all records were acknowledged"
        );
        while let Some(plan) = sender.poll_transmit(now()) {
            let first = plan.first as usize;
            let end = (first + plan.max_records as usize).min(log.len());
            let batch = Batch::build(
                plan.epoch,
                (first..end).map(|i| (i as u64, log[i].as_slice())),
                scfg.compression,
            )
            .unwrap();
            let bytes = frame.encode(&BusMessage::Batch(batch)).unwrap();
            send.write_all(&bytes).await.unwrap();
            sender.on_sent(&plan, (end - first) as u64, bytes.len() as u64, now());
        }
        if let Ok(Some(f)) = tokio::time::timeout(Duration::from_millis(20), rx.recv()).await {
            let msg = frame.decode(&f).unwrap();
            if let BusMessage::Refuse(r) = &msg {
                panic!("refused: {r:?}");
            }
            sender.handle(msg, now());
        }
        while let Some(ev) = sender.poll_event() {
            if let SenderEvent::Refused(r) = ev {
                panic!("refused: {r:?}");
            }
        }
    }
    conn.close(0u32.into(), b"done");
    sender
}

fn count(r: &RunningReceiver, tenant: u32) -> u64 {
    r.shared
        .store
        .tenant(TenantId(tenant))
        .unwrap()
        .record_count()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_records_stored_exactly_once_also_after_reconnect_and_resend() {
    let pki = Pki::new();
    let rx = start_receiver(&pki, "[[poller]]\nid = \"poller-1\"\ntenants = [1]\n").await;
    let own = pki.issue("poller-1", PeerRole::Poller, &[1]);
    let (ep, cfg) = client_endpoint(&pki, &own);
    const N: u64 = 1000;
    let log: Vec<Vec<u8>> = (0..N).map(|n| event(1, n)).collect();

    let s = deliver(&ep, &cfg, rx.addr, 7, &log, false).await;
    assert_eq!(s.cursor(), N);
    assert_eq!(count(&rx, 1), N);
    let m = &rx.shared.metrics;
    assert_eq!(receiver::Metrics::get(&m.stored), N);

    // Reconnect from cursor 0 (a poller that lost its cursor) and push everything again raw.
    let s = deliver(&ep, &cfg, rx.addr, 7, &log, true).await;
    assert_eq!(s.cursor(), N);
    assert_eq!(count(&rx, 1), N, "a replay stored something twice");
    assert_eq!(receiver::Metrics::get(&m.stored), N);
    // The raw resend may still be in flight when the sender is caught up (all was held).
    let deadline = Instant::now() + Duration::from_secs(5);
    while receiver::Metrics::get(&m.duplicates) < N && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(receiver::Metrics::get(&m.duplicates), N);
    assert_eq!(count(&rx, 1), N);

    // A restarted receiver answers from the store alone.
    rx.shutdown().await;
    let rx = receiver::start(&receiver_config(
        &pki.root,
        "[[poller]]\nid = \"poller-1\"\ntenants = [1]\n",
    ))
    .await
    .unwrap();
    let s = deliver(&ep, &cfg, rx.addr, 7, &log, true).await;
    assert_eq!(s.cursor(), N);
    assert_eq!(count(&rx, 1), N);
    assert_eq!(receiver::Metrics::get(&rx.shared.metrics.stored), 0);
    rx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_for_a_tenant_outside_the_certificate_is_refused_counted_and_reported() {
    let pki = Pki::new();
    let rx = start_receiver(&pki, "[[poller]]\nid = \"poller-1\"\ntenants = [1, 3]\n").await;
    // The certificate allows tenants 1 and 2; the registry 1 and 3: only 1 is allowed.
    let own = pki.issue("poller-1", PeerRole::Poller, &[1, 2]);
    let (ep, cfg) = client_endpoint(&pki, &own);
    let log = vec![event(1, 0), event(3, 1), event(1, 2), event(2, 3)];
    let s = deliver(&ep, &cfg, rx.addr, 1, &log, false).await;
    // Refused records are consumed (acknowledged) so the stream does not stall.
    assert_eq!(s.cursor(), 4);
    assert_eq!(count(&rx, 1), 2);
    assert_eq!(count(&rx, 2), 0);
    assert_eq!(count(&rx, 3), 0);
    let m = &rx.shared.metrics;
    assert_eq!(m.rejects("wrong_tenant"), 1);
    assert_eq!(m.rejects("unregistered_tenant"), 1);
    assert_eq!(
        rx.shared.trust.counters().get(RefusalReason::WrongTenant),
        1
    );
    // Reported as events in the receiver's report file.
    assert!(count(&rx, receiver::REPORT_TENANT.0) >= 1);
    let text = rx.shared.render_metrics();
    assert!(text.contains("opha_receiver_rejects_total{reason=\"wrong_tenant\"} 1"));
    rx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_poller_and_client_without_certificate_are_refused() {
    let pki = Pki::new();
    let rx = start_receiver(&pki, "[[poller]]\nid = \"poller-1\"\ntenants = [1]\n").await;

    // No client certificate at all.
    let trust = pki.trust();
    let mut tls = rustls::ClientConfig::builder_with_provider(trust.provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(trust.server_cert_verifier(ExpectPeer::default()))
        .with_no_client_auth();
    tls.alpn_protocols = vec![opha_identity::ALPN.to_vec()];
    let cfg = TransportSettings::default()
        .client_config_from_tls(tls)
        .unwrap();
    let ep = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    if let Ok(conn) = ep
        .connect_with(cfg, rx.addr, opha_identity::SERVER_NAME)
        .unwrap()
        .await
    {
        // TLS 1.3: the client may finish before the server refuses; the stream then fails.
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    }
    let counters = rx.shared.trust.counters();
    let deadline = Instant::now() + Duration::from_secs(5);
    while counters.get(RefusalReason::NoCertificate) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(counters.get(RefusalReason::NoCertificate), 1);

    // A valid poller certificate, but not in the registry.
    let own = pki.issue("poller-9", PeerRole::Poller, &[1]);
    let (ep, cfg) = client_endpoint(&pki, &own);
    let conn = ep
        .connect_with(cfg, rx.addr, opha_identity::SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    assert_eq!(rx.shared.metrics.rejects("unregistered"), 1);

    // Another receiver may not open a record stream.
    let own = pki.issue("mirror-1", PeerRole::Mirror, &[1]);
    let (ep, cfg) = client_endpoint(&pki, &own);
    let conn = ep
        .connect_with(cfg, rx.addr, opha_identity::SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    assert_eq!(rx.shared.metrics.rejects("wrong_role"), 1);
    rx.shutdown().await;
}
