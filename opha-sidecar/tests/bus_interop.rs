//! The real poller bus sender (`poller::bus::start`, fed by a real replay log) against the
//! real receiver (`receiver::start`, primary role, SQLite store) on 127.0.0.1 with mTLS
//! certificates issued by `opha_identity::ca`: the two drivers written apart must agree on
//! the stream layout, the handshake, the framing, the acks and the cursor: delivery exactly
//! once, a sender restart (new epoch) that resends nothing durable, a primary restart that
//! answers from its store, and many small batches in flight (once a receiver deadlock).

mod bus_support;
mod receiver_support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bus_support::{
    PollerFile, ReceiverFile, append_events, peer, pki, start_bus, stop_bus, stored_events,
    wait_for,
};
use opha_common::wire::PeerRole;
use opha_log::Log;
use opha_sidecar::config::PollerConfig;
use opha_sidecar::config::receiver::ReceiverFileConfig;
use opha_sidecar::poller::bus::cursor_name;
use opha_sidecar::receiver::{self, Metrics, RunningReceiver};
use receiver_support::{Pki, count};

const POLLER: &str = "poller-i";
const PRIMARY: &str = "primary-i";
const TENANT: u32 = 4;

/// A temp dir under the target dir, with the CA and the peers' certificates.
fn interop_pki() -> Pki {
    pki(
        "bus-interop-",
        &[
            (POLLER, PeerRole::Poller, &[TENANT]),
            (PRIMARY, PeerRole::Primary, &[]),
        ],
    )
}

/// The primary's file, as `opha-sidecar primary --config` would read it.
fn receiver_config(root: &Path) -> ReceiverFileConfig {
    ReceiverFile::new(PRIMARY, "primary")
        .fast_failure()
        .poller(POLLER, &[TENANT])
        .build(root)
}

/// The poller's file with one `[[receiver]]`: the primary at `addr`. Batching, window, linger,
/// compression and the replay cap are the defaults; only reconnects and failure detection
/// are quicker, for the test's time.
fn poller_config(root: &Path, addr: SocketAddr) -> PollerConfig {
    poller_config_with(root, addr, "")
}

/// [`poller_config`] with extra `[bus]` keys.
fn poller_config_with(root: &Path, addr: SocketAddr, bus_extra: &str) -> PollerConfig {
    PollerFile::new(POLLER, "t-interop")
        .prefix("198.18.0.0/15", TENANT)
        .bus(bus_extra)
        .fast_failure()
        .receiver(PRIMARY, "primary", addr)
        .build(root)
}

fn append(log: &Log, from: u64, to: u64) {
    append_events(log, TENANT, "interop record", from, to);
}

/// Every (epoch, seq) the primary's tenant file holds, with the record's own number.
fn stored(rx: &RunningReceiver) -> Vec<(u64, u64, String)> {
    stored_events(rx, TENANT)
        .into_iter()
        .map(|e| {
            assert_eq!(e.poller.as_str(), POLLER);
            (e.epoch, e.seq, e.event.details)
        })
        .collect()
}

/// Exactly the records `first..to`, each once, under `epoch_of(seq)`, with their own payloads.
fn assert_exactly_once(rx: &RunningReceiver, first: u64, to: u64, epoch_of: impl Fn(u64) -> u64) {
    let rows = stored(rx);
    let count = count(rx, TENANT);
    let n = to - first;
    assert_eq!(count, n, "records in the tenant file");
    assert_eq!(rows.len() as u64, n, "events listed");
    let keys: BTreeSet<(u64, u64)> = rows.iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(keys.len() as u64, n, "a (epoch, seq) stored twice");
    for (epoch, seq, details) in &rows {
        assert!((first..to).contains(seq), "unexpected seq {seq}");
        assert_eq!(*epoch, epoch_of(*seq), "epoch of {seq}");
        assert_eq!(
            details,
            &format!("interop record {seq}"),
            "payload of {seq}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_sender_and_real_primary_deliver_exactly_once_across_a_sender_restart() {
    let pki = interop_pki();
    let rx = receiver::start(&receiver_config(&pki.root)).await.unwrap();
    let cfg = poller_config(&pki.root, rx.addr);
    let log = Arc::new(Log::open(cfg.log_config()).unwrap());
    // Record numbers are log positions (a fresh log need not start at 0).
    let first = log.durable_next_seq();
    const N: u64 = 2000;
    let end = first + N;
    append(&log, first, end);

    // Run 1: epoch 1 covers the whole log.
    let (bus1, stop1) = start_bus(&cfg, &log);
    assert_eq!(bus1.status.epoch, 1);
    let name = cursor_name(&peer(PRIMARY));
    wait_for("the cursor at N", Duration::from_secs(30), || {
        log.cursor(&name) == Some(end)
    })
    .await;
    assert!(bus1.status.links[0].is_connected());
    assert_eq!(bus1.status.links[0].cursor(), end);
    assert_eq!(
        bus1.status.links[0]
            .refused
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the primary refused something"
    );
    let m = &rx.shared.metrics;
    assert_exactly_once(&rx, first, end, |_| 1);
    assert_eq!(Metrics::get(&m.stored), N);
    assert_eq!(Metrics::get(&m.duplicates), 0);
    assert_eq!(Metrics::get(&m.received), N, "nothing sent twice");
    stop_bus(bus1, stop1).await;

    // While the sender is down the log grows: these K belong to epoch 1's span.
    const K: u64 = 300;
    append(&log, end, end + K);
    let end1 = end + K;

    // Run 2: a new epoch; the primary's handshake answer says what of epoch 1 is durable, so
    // only the K are sent; M records appended after the restart arrive under epoch 2.
    let (bus2, stop2) = start_bus(&cfg, &log);
    assert_eq!(bus2.status.epoch, 2);
    wait_for("the second run streaming", Duration::from_secs(10), || {
        bus2.status.links[0].is_connected()
    })
    .await;
    const M: u64 = 500;
    append(&log, end1, end1 + M);
    wait_for("the cursor at N+K+M", Duration::from_secs(30), || {
        log.cursor(&name) == Some(end1 + M)
    })
    .await;
    assert_eq!(
        bus2.status.links[0]
            .refused
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the primary refused something"
    );
    stop_bus(bus2, stop2).await;
    assert_exactly_once(&rx, first, end1 + M, |seq| if seq < end1 { 1 } else { 2 });
    assert_eq!(Metrics::get(&m.stored), N + K + M);
    assert_eq!(
        Metrics::get(&m.duplicates),
        0,
        "durable records were resent"
    );
    assert_eq!(
        Metrics::get(&m.received),
        N + K + M,
        "durable records were resent"
    );
    assert_eq!(
        m.rejects("wrong_tenant") + m.rejects("unregistered_tenant"),
        0
    );
    assert!(Metrics::get(&m.connections_total) >= 2);
    rx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_primary_answers_from_its_store_and_the_running_sender_resumes_there() {
    let pki = interop_pki();
    let rcfg = receiver_config(&pki.root);
    let rx = receiver::start(&rcfg).await.unwrap();
    let cfg = poller_config(&pki.root, rx.addr);
    let log = Arc::new(Log::open(cfg.log_config()).unwrap());
    let first = log.durable_next_seq();
    const N: u64 = 1000;
    let end = first + N;
    append(&log, first, end);
    let (bus, stop) = start_bus(&cfg, &log);
    let name = cursor_name(&peer(PRIMARY));
    wait_for("the cursor at N", Duration::from_secs(30), || {
        log.cursor(&name) == Some(end)
    })
    .await;

    // The primary goes away (its store stays) while the sender keeps running and the log
    // grows; it comes back on the same address with fresh counters.
    let addr = rx.addr;
    rx.shutdown().await;
    wait_for("the link down", Duration::from_secs(10), || {
        !bus.status.links[0].is_connected()
    })
    .await;
    const M: u64 = 700;
    append(&log, end, end + M);
    let mut rcfg2 = rcfg.clone();
    rcfg2.listen = addr;
    let rx = receiver::start(&rcfg2).await.unwrap();
    wait_for("the cursor at N+M", Duration::from_secs(30), || {
        log.cursor(&name) == Some(end + M)
    })
    .await;
    assert_eq!(
        bus.status.links[0]
            .refused
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the primary refused something"
    );
    stop_bus(bus, stop).await;
    assert_exactly_once(&rx, first, end + M, |_| 1);
    let m = &rx.shared.metrics;
    assert_eq!(Metrics::get(&m.stored), M, "only what the store missed");
    assert_eq!(
        Metrics::get(&m.duplicates),
        0,
        "durable records were resent"
    );
    rx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_batches_in_flight_do_not_stall_the_primary() {
    let pki = interop_pki();
    let rx = receiver::start(&receiver_config(&pki.root)).await.unwrap();
    // One record per batch and a wide window: far more batches in flight than the primary
    // has commits queued, as a live stream under a slow disk produces.
    let cfg = poller_config_with(
        &pki.root,
        rx.addr,
        "max_batch_records = 1\nwindow_records = 4096\nreplay_bytes_per_sec = \"0\"",
    );
    let log = Arc::new(Log::open(cfg.log_config()).unwrap());
    let first = log.durable_next_seq();
    const N: u64 = 1500;
    let end = first + N;
    append(&log, first, end);
    let (bus, stop) = start_bus(&cfg, &log);
    let name = cursor_name(&peer(PRIMARY));
    wait_for("the cursor at N", Duration::from_secs(60), || {
        log.cursor(&name) == Some(end)
    })
    .await;
    stop_bus(bus, stop).await;
    assert_exactly_once(&rx, first, end, |_| 1);
    assert_eq!(Metrics::get(&rx.shared.metrics.duplicates), 0);
    rx.shutdown().await;
}
