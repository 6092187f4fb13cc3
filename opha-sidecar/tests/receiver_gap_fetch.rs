//! Gap fetch between receivers, in process on 127.0.0.1: the real poller bus sender on a real
//! replay log, a real mirror and a real main primary (`receiver::start`, SQLite stores), mTLS
//! certificates from `opha_identity::ca`.
//!
//! How the poller's log comes to no longer hold what the main primary missed: the log never
//! deletes a record a receiver's cursor still needs (cursors pin it; over budget it thins
//! metrics and then blocks intake, it does not drop records). What does drop a receiver's
//! claim is its cursor's removal: the poller removes the cursor of a receiver no longer in
//! its `[[receiver]]` list at start, as an operator does to keep a long-dead primary from
//! filling the log. So: the main primary stores epoch 1, goes down, the poller restarts with
//! the mirror only (main's cursor removed), the mirror acknowledges everything and the small
//! segments below its cursor are deleted; then the main comes back and the poller restarts
//! with both again: the main's new cursor starts at the log's oldest record, and what lies
//! between is only on the mirror.

mod bus_support;
mod receiver_support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bus_support::{
    PollerFile, ReceiverFile, append_events, ephemeral, peer, pki, start_bus, stop_bus,
    stored_events, wait_for,
};
use opha_common::wire::{EventKind, PeerRole};
use opha_log::Log;
use opha_sidecar::config::PollerConfig;
use opha_sidecar::config::receiver::ReceiverFileConfig;
use opha_sidecar::poller::bus::cursor_name;
use opha_sidecar::receiver::{self, Metrics, REPORT_TENANT, RunningReceiver};
use opha_store::{EventFilter, PageRequest};
use receiver_support::{Pki, count};

const POLLER: &str = "poller-g";
const MAIN: &str = "primary-g";
const MIRROR: &str = "mirror-g";
const EMPTY_MIRROR: &str = "mirror-e";
const TENANT: u32 = 6;

fn gap_pki() -> Pki {
    pki(
        "gap-fetch-",
        &[
            (POLLER, PeerRole::Poller, &[TENANT]),
            (MAIN, PeerRole::Primary, &[]),
            (MIRROR, PeerRole::Mirror, &[]),
            (EMPTY_MIRROR, PeerRole::Mirror, &[]),
        ],
    )
}

/// A receiver's file; `peers` are `(id, role, address)` `[[peer]]` entries.
fn receiver_config(
    root: &Path,
    id: &str,
    role: &str,
    peers: &[(&str, &str, SocketAddr)],
) -> ReceiverFileConfig {
    let file = ReceiverFile::new(id, role)
        .fast_failure()
        .poller(POLLER, &[TENANT]);
    peers
        .iter()
        .fold(file, |f, (pid, prole, addr)| f.peer(pid, prole, *addr))
        .build(root)
}

/// The poller's file: small log segments, and `receivers` as `(id, role, address)`.
fn poller_config(root: &Path, receivers: &[(&str, &str, SocketAddr)]) -> PollerConfig {
    let file = PollerFile::new(POLLER, "t-gap")
        .prefix("198.18.0.0/15", TENANT)
        .log_sizes(Some(("64KiB", "4MiB")))
        .fast_failure();
    receivers
        .iter()
        .fold(file, |f, (id, role, addr)| f.receiver(id, role, *addr))
        .build(root)
}

fn append(log: &Log, from: u64, to: u64) {
    append_events(log, TENANT, "gap record", from, to);
}

/// Every (epoch, seq) in the receiver's tenant file, checked: each at most once, with its own
/// payload. Returns the seqs with their epochs.
fn stored(rx: &RunningReceiver) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = stored_events(rx, TENANT)
        .into_iter()
        .map(|e| {
            assert_eq!(e.poller.as_str(), POLLER);
            assert_eq!(e.event.details, format!("gap record {}", e.seq));
            (e.epoch, e.seq)
        })
        .collect();
    let keys: BTreeSet<(u64, u64)> = out.iter().copied().collect();
    assert_eq!(keys.len(), out.len(), "an (epoch, seq) stored twice");
    let seqs: BTreeSet<u64> = out.iter().map(|k| k.1).collect();
    assert_eq!(seqs.len(), out.len(), "a seq stored under two epochs");
    assert_eq!(count(rx, TENANT), out.len() as u64);
    out.sort_by_key(|k| k.1);
    out
}

/// A UDP port nothing answers on (bound, then released).
fn dead_addr() -> SocketAddr {
    let s = std::net::UdpSocket::bind(ephemeral()).unwrap();
    s.local_addr().unwrap()
}

/// What the scenario left behind.
struct Outcome {
    main: RunningReceiver,
    mirror: RunningReceiver,
    spare: Option<RunningReceiver>,
    /// Epoch 1: `base..n1`; epoch 2: `n1..h2`; epoch 3: `h2..end` (a fresh log need not
    /// start at 0; record numbers are log positions).
    base: u64,
    n1: u64,
    h2: u64,
    end: u64,
    /// The log's oldest record when the main returned.
    oldest: u64,
}

/// The scenario of the module docs. `with_mirror_peer`: the main's `[[peer]]` list is the
/// mirror; otherwise a dead address and a mirror that never received this poller.
async fn scenario(pki: &Pki, with_mirror_peer: bool) -> Outcome {
    let root = pki.root.as_path();
    let mirror = receiver::start(&receiver_config(root, MIRROR, "mirror", &[]))
        .await
        .unwrap();
    let spare = if with_mirror_peer {
        None
    } else {
        Some(
            receiver::start(&receiver_config(root, EMPTY_MIRROR, "mirror", &[]))
                .await
                .unwrap(),
        )
    };
    let main_peers: Vec<(&str, &str, SocketAddr)> = match &spare {
        None => vec![(MIRROR, "mirror", mirror.addr)],
        Some(s) => vec![
            (MIRROR, "mirror", dead_addr()),
            (EMPTY_MIRROR, "mirror", s.addr),
        ],
    };
    let main_cfg = receiver_config(root, MAIN, "primary", &main_peers);
    let main = receiver::start(&main_cfg).await.unwrap();
    let both = poller_config(
        root,
        &[
            (MAIN, "primary", main.addr),
            (MIRROR, "mirror", mirror.addr),
        ],
    );
    let mirror_only = poller_config(root, &[(MIRROR, "mirror", mirror.addr)]);
    let log = Arc::new(Log::open(both.log_config()).unwrap());
    let main_cursor = cursor_name(&peer(MAIN));
    let mirror_cursor = cursor_name(&peer(MIRROR));

    // Run 1 (epoch 1): both receivers get base..n1.
    let base = log.durable_next_seq();
    let n1 = base + 1000;
    append(&log, base, n1);
    let (b, s) = start_bus(&both, &log);
    wait_for("both cursors at n1", Duration::from_secs(30), || {
        log.cursor(&main_cursor) == Some(n1) && log.cursor(&mirror_cursor) == Some(n1)
    })
    .await;
    stop_bus(b, s).await;

    // The main goes down for long; the poller is restarted without it (epoch 2): its cursor
    // goes, and the mirror's acks let the log delete segments the main never got.
    let main_addr = main.addr;
    main.shutdown().await;
    let (b, s) = start_bus(&mirror_only, &log);
    assert_eq!(
        log.cursor(&main_cursor),
        None,
        "the main's cursor is removed"
    );
    let h_mid = n1 + 4000;
    append(&log, n1, h_mid);
    wait_for(
        "the mirror's cursor at h_mid",
        Duration::from_secs(60),
        || log.cursor(&mirror_cursor) == Some(h_mid),
    )
    .await;
    stop_bus(b, s).await;
    let oldest = log.oldest_seq();
    assert!(
        oldest > n1 + 1000,
        "the log should have deleted most of epoch 2 (oldest {oldest})"
    );

    // The main returns with its store; the poller is restarted with both (epoch 3). Records
    // appended before the restart are epoch 2's; after it, epoch 3's.
    let h2 = h_mid + 200;
    append(&log, h_mid, h2);
    let mut cfg2 = main_cfg.clone();
    cfg2.listen = main_addr;
    let main = receiver::start(&cfg2).await.unwrap();
    let (b, s) = start_bus(&both, &log);
    assert_eq!(b.status.epoch, 3);
    let end = h2 + 500;
    append(&log, h2, end);
    wait_for("both cursors at the end", Duration::from_secs(60), || {
        log.cursor(&main_cursor) == Some(end) && log.cursor(&mirror_cursor) == Some(end)
    })
    .await;
    // The fetch runs beside the stream: wait until it has settled.
    let m = main.shared.clone();
    let gap = oldest - n1;
    wait_for("the gap fetch to finish", Duration::from_secs(60), || {
        Metrics::get(&m.metrics.gap_fetched) + Metrics::get(&m.metrics.gap_unavailable) >= gap
    })
    .await;
    for link in &b.status.links {
        assert_eq!(
            link.refused.load(std::sync::atomic::Ordering::Relaxed),
            0,
            "a receiver refused something"
        );
    }
    stop_bus(b, s).await;
    Outcome {
        main,
        mirror,
        spare,
        base,
        n1,
        h2,
        end,
        oldest,
    }
}

fn epoch_of(o: &Outcome, seq: u64) -> u64 {
    if seq < o.n1 {
        1
    } else if seq < o.h2 {
        2
    } else {
        3
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_primary_fetches_what_the_log_lost_from_the_mirror_exactly_once() {
    let pki = gap_pki();
    let o = scenario(&pki, true).await;
    let gap = o.oldest - o.n1;
    let m = &o.main.shared.metrics;
    assert_eq!(Metrics::get(&m.gap_fetched), gap);
    assert_eq!(Metrics::get(&m.gap_unavailable), 0);
    assert_eq!(
        Metrics::get(&o.mirror.shared.metrics.gap_served),
        gap,
        "the mirror served exactly the gap"
    );
    assert_eq!(m.rejects("gap_wrong_tenant"), 0);
    // Every record 0..end exactly once, under its own epoch.
    let rows = stored(&o.main);
    assert_eq!(rows.len() as u64, o.end - o.base);
    for (i, &(epoch, seq)) in rows.iter().enumerate() {
        assert_eq!(seq, o.base + i as u64);
        assert_eq!(epoch, epoch_of(&o, seq), "epoch of {seq}");
    }
    // The mirror too (it never missed anything).
    assert_eq!(stored(&o.mirror).len() as u64, o.end - o.base);
    let text = o.main.shared.render_metrics();
    assert!(text.contains(&format!("opha_receiver_gap_records_fetched_total {gap}")));
    assert!(text.contains("opha_receiver_gap_unavailable_records_total 0"));
    o.main.shutdown().await;
    o.mirror.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_no_peer_holds_is_counted_and_reported_and_the_stream_goes_on() {
    let pki = gap_pki();
    let o = scenario(&pki, false).await;
    let gap = o.oldest - o.n1;
    let m = &o.main.shared.metrics;
    assert_eq!(Metrics::get(&m.gap_fetched), 0);
    assert_eq!(Metrics::get(&m.gap_unavailable), gap);
    // Everything but the gap, exactly once: the live stream was not held up.
    let rows = stored(&o.main);
    let seqs: Vec<u64> = rows.iter().map(|r| r.1).collect();
    let want: Vec<u64> = (o.base..o.n1).chain(o.oldest..o.end).collect();
    assert_eq!(seqs, want);
    for &(epoch, seq) in &rows {
        assert_eq!(epoch, epoch_of(&o, seq), "epoch of {seq}");
    }
    // The loss is reported as an event in the report tenant's file.
    let reports = o.main.shared.store.tenant(REPORT_TENANT).unwrap();
    let page = reports
        .events(&EventFilter::default(), &PageRequest::first(100))
        .unwrap();
    assert!(
        page.items.iter().any(|e| matches!(
            &e.event.kind,
            EventKind::External { name, .. } if name == "gap_unavailable"
        ) && e.event.details.contains(&format!("{gap} record(s)"))),
        "no gap_unavailable report"
    );
    o.main.shutdown().await;
    o.mirror.shutdown().await;
    if let Some(s) = o.spare {
        s.shutdown().await;
    }
}
