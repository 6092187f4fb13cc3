//! A real receiver task on 127.0.0.1 and a fake poller built directly on opha_bus::Sender and
//! a quinn client: exactly-once storage, replays after reconnect, tenant refusal, and a
//! client without a certificate.

mod receiver_support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use opha_common::wire::PeerRole;
use opha_identity::{ExpectPeer, RefusalReason, TransportSettings};
use opha_sidecar::receiver;
use receiver_support::*;

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

    // A mirror may stream records only in place of the poller it is paired with
    // (`[[poller]] mirror = ...`); this one is paired with none.
    let own = pki.issue("mirror-1", PeerRole::Mirror, &[1]);
    let (ep, cfg) = client_endpoint(&pki, &own);
    let conn = ep
        .connect_with(cfg, rx.addr, opha_identity::SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    assert_eq!(rx.shared.metrics.rejects("unregistered"), 2);
    assert_eq!(rx.shared.metrics.rejects("wrong_role"), 0);
    rx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pollers_events_about_itself_go_to_the_operators_file_and_nothing_else_does() {
    use opha_common::wire::{
        Event, EventId, EventKind, PeerId, Record, Severity, Subject, TenantId,
    };
    let pki = Pki::new();
    let rx = start_receiver(&pki, "[[poller]]\nid = \"poller-1\"\ntenants = [1]\n").await;
    let own = pki.issue("poller-1", PeerRole::Poller, &[1]);
    let (ep, cfg) = client_endpoint(&pki, &own);
    let peer_event = |n: u128, about: &str| {
        opha_sidecar::ingest::sink::encode_record(&Record::Event(Event {
            id: EventId::from_u128(1000 + n),
            time_ms: 1_700_000_000_000,
            tenant: TenantId(0),
            subject: Subject::Peer(PeerId::new(about).unwrap()),
            kind: EventKind::DaemonDown {
                daemon: "nmis9d".into(),
            },
            severity: Severity::Major,
            details: "nmis9d not running".into(),
        }))
        .unwrap()
    };
    let log = vec![
        peer_event(1, "poller-1"), // about itself: the operator's file
        event(0, 7),               // tenant 0 about a node: refused
        peer_event(2, "poller-2"), // about another peer: refused
        event(1, 8),
    ];
    let s = deliver(&ep, &cfg, rx.addr, 1, &log, false).await;
    assert_eq!(s.cursor(), 4);
    assert_eq!(count(&rx, 1), 1);
    // Tenant 0's file: the poller's own event, plus the receiver's report of the 2 refusals.
    let db = rx.shared.store.tenant(TenantId(0)).unwrap();
    let held = db.held_ranges(&PeerId::new("poller-1").unwrap()).unwrap();
    let seqs: Vec<u64> = held
        .iter()
        .flat_map(|(_, r)| r.iter().flat_map(|x| x.start..x.end).collect::<Vec<_>>())
        .collect();
    assert_eq!(
        seqs,
        vec![0],
        "only the poller's own event is stored under its key"
    );
    assert_eq!(rx.shared.metrics.rejects("wrong_tenant"), 2);
    rx.shutdown().await;
}
