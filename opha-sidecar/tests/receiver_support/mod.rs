//! A real receiver on 127.0.0.1 and a fake poller built directly on opha_bus::Sender and a
//! quinn client, shared by the receiver tests (`mod receiver_support;`).
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use opha_bus::compress::Compression;
use opha_bus::message::{Batch, BusFrame, BusMessage, EpochStart};
use opha_bus::sender::{Sender, SenderConfig, SenderEvent};
use opha_common::wire::{
    Event, EventId, EventKind, NodeRef, PeerId, PeerRole, Record, Severity, Subject, TenantId,
};
use opha_identity::{ExpectPeer, TlsIdentity, TransportSettings, Trust, ca};
use opha_sidecar::config::receiver::ReceiverFileConfig;
use opha_sidecar::ingest::sink::encode_record;
use opha_sidecar::receiver::{self, RunningReceiver, stream::read_frame};

pub struct Pki {
    _dir: tempfile::TempDir,
    pub root: std::path::PathBuf,
    pub ca: ca::Ca,
}

impl Pki {
    pub fn new() -> Self {
        Self::in_dir(tempfile::tempdir().unwrap())
    }

    /// In a directory under the target dir whose name starts with `prefix`, with the test's
    /// logging on (the drivers log what they refuse: RUST_LOG=info shows it when a test fails).
    pub fn named(prefix: &str) -> Self {
        let _ = env_logger::builder().is_test(true).try_init();
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        Self::in_dir(dir)
    }

    fn in_dir(dir: tempfile::TempDir) -> Self {
        let root = dir.path().to_path_buf();
        let ca = ca::init_ca(&root.join("ca"), "test CA", 1, false).unwrap();
        Pki {
            _dir: dir,
            root,
            ca,
        }
    }

    pub fn issue(&self, peer: &str, role: PeerRole, tenants: &[u32]) -> TlsIdentity {
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

    pub fn trust(&self) -> Trust {
        Trust::from_ca_pem(self.ca.cert_pem()).unwrap()
    }
}

pub fn receiver_config(root: &Path, registry: &str) -> ReceiverFileConfig {
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

pub async fn start_receiver(pki: &Pki, registry: &str) -> RunningReceiver {
    pki.issue("primary-1", PeerRole::Primary, &[]);
    receiver::start(&receiver_config(&pki.root, registry))
        .await
        .unwrap()
}

pub fn event(tenant: u32, n: u64) -> Vec<u8> {
    encode_record(&event_record(tenant, n, "record")).unwrap()
}

/// Record `n`: a node-down event of `tenant` whose details are `"{label} {n}"` (so a test can
/// check every stored payload).
pub fn event_record(tenant: u32, n: u64, label: &str) -> Record {
    Record::Event(Event {
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
        details: format!("{label} {n}"),
    })
}

pub fn client_endpoint(pki: &Pki, own: &TlsIdentity) -> (quinn::Endpoint, quinn::ClientConfig) {
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
pub async fn deliver(
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

pub fn count(r: &RunningReceiver, tenant: u32) -> u64 {
    r.shared
        .store
        .tenant(TenantId(tenant))
        .unwrap()
        .record_count()
        .unwrap()
}
