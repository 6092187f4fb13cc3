//! The WAN figures of `opha-bench bus` (root only): a poller (in this process, its runtime's
//! threads in namespace `a`) streams to a primary process in namespace `b` across the
//! userspace WAN emulator (`opha_tests::wan`; the kernel has no tc netem) at 100 ms one-way
//! delay, 1% random loss and 10 Mbit/s each way (queue: the emulator's default 256 KiB).
//!
//! One hour of a 2,000-node site is appended while the link is cut: one NodeMetrics per node
//! per 60 s interval (120,000) plus [`EVENTS_PER_HOUR`] events. The cut lasts until the
//! poller's connection has timed out and its reconnect backoff has reached its cap, as after
//! a real outage. Then the link heals.
//!
//! - `catchup_s_1h_2000_nodes`: heal to the last record acknowledged durable by the primary.
//! - `wan_goodput_pct`: useful bytes per second over the transfer, as a share of the 10 Mbit/s
//!   cap. Useful bytes are the bus batch frames carrying the records (compressed records plus
//!   batch headers, each batch counted once: not QUIC/UDP/IP/Ethernet headers, QUIC
//!   retransmissions, acknowledgements or the handshake); the transfer runs from the
//!   moment the poller is streaming again (handshake done) to the last acknowledgement.
//!   The replay cap (`[bus] replay_bytes_per_sec`, counted in the same frame bytes) is set to
//!   [`REPLAY_CAP`], 92% of the link, leaving room for the per-packet headers; so 92% is this
//!   figure's ceiling.

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd as _,
    path::Path,
    sync::{Arc, atomic::Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use opha_common::wire::PeerRole;
use opha_log::RecordClass;
use opha_tests::wan::{LinkConfig, WanPair, WanPairConfig};
use serde_json::{Value, json};

use crate::bus_env::{
    Pki, Poller, Primary, Receiver, Rng, encode, event, node_metrics, wait_until,
};

const POLLER: &str = "bench-wan";
const PRIMARY: &str = "bench-wan-primary";
const LINK_BPS: u64 = 10_000_000;
/// Replay cap in frame bytes per second: 92% of the link's 1.25 MB/s.
pub const REPLAY_CAP: u64 = LINK_BPS / 8 * 92 / 100;
const NODES: u32 = 2000;
const INTERVALS: u64 = 60;
/// Events in the hour (node/SNMP/port up-downs, threshold crossings of a site with churn).
const EVENTS_PER_HOUR: u64 = 2000;

/// `loss`: the random loss share of each way (the issue's link: 0.01; other values only to
/// see what limits the figure).
pub fn run(root: &Path, pki: &Pki, loss: f64) -> Result<Vec<(String, Value)>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("needs root (network namespaces for the WAN emulator)");
    }
    pki.issue(POLLER, PeerRole::Poller)?;
    pki.issue(PRIMARY, PeerRole::Primary)?;
    let pair = WanPair::new(&WanPairConfig::new("bbw", 0x5eed))?;
    pair.link.set_both(
        LinkConfig::default()
            .delay(Duration::from_millis(100))
            .loss(loss)
            .rate(LINK_BPS),
    )?;
    let listen = SocketAddr::new(IpAddr::V4(pair.b_addr), 7443);
    let primary = Primary::start(
        root,
        PRIMARY,
        listen,
        None,
        &[POLLER.to_string()],
        Some(&pair.b.path()),
    )?;
    // Every thread of the poller's runtime (workers and blocking pool) enters namespace a,
    // so the bus's UDP sockets live there.
    let ns_a = Arc::new(
        fs::File::open(pair.a.path()).with_context(|| format!("opening {}", pair.a.name()))?,
    );
    let fd = ns_a.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || {
            // SAFETY: setns(2) on the calling thread with an open namespace fd.
            if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                log_error("setns into the poller's namespace failed");
            }
        })
        .build()?;
    let mut p = Poller::open(
        root,
        POLLER,
        &[Receiver {
            peer: PRIMARY.into(),
            address: listen,
        }],
        &format!("replay_bytes_per_sec = \"{REPLAY_CAP}\""),
    )?;
    p.start(rt.handle())?;
    let result = measure(&pair, &p);
    p.stop(&rt);
    drop(rt);
    let stats = [
        pair.link.stats(opha_tests::wan::Way::AtoB),
        pair.link.stats(opha_tests::wan::Way::BtoA),
    ];
    drop(primary);
    drop(pair);
    let mut out = result?;
    out.push((
        "wan_emulator_socket_drops".into(),
        json!(stats[0].socket_drops + stats[1].socket_drops),
    ));
    out.push((
        "wan_frames_dropped_queue".into(),
        json!(stats[0].dropped_queue + stats[1].dropped_queue),
    ));
    Ok(out)
}

fn log_error(msg: &str) {
    eprintln!("opha-bench bus: {msg}");
}

fn measure(pair: &WanPair, p: &Poller) -> Result<Vec<(String, Value)>> {
    let link = p.link(0);
    ensure!(
        wait_until(Duration::from_secs(30), Duration::from_millis(10), || link
            .is_connected()),
        "the poller did not connect across the WAN within 30 s"
    );
    pair.link.cut();
    let t_cut = Instant::now();
    let mut rng = Rng::new(23);
    let (mut payload_bytes, mut records) = (0u64, 0u64);
    let mut last = 0;
    for interval in 0..INTERVALS {
        let mut batch: Vec<(RecordClass, Vec<u8>)> = Vec::new();
        for e in 0..EVENTS_PER_HOUR / INTERVALS + u64::from(interval < EVENTS_PER_HOUR % INTERVALS)
        {
            let r = event(&mut rng, e, interval);
            batch.push((RecordClass::Event, encode(&r)));
        }
        for n in 0..NODES {
            batch.push((
                RecordClass::Metric,
                encode(&node_metrics(&mut rng, n, interval)),
            ));
        }
        payload_bytes += batch.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
        records += batch.len() as u64;
        for (class, b) in &batch {
            last = p.submit(*class, std::slice::from_ref(b))?;
        }
    }
    let end = last + 1;
    ensure!(
        wait_until(Duration::from_secs(60), Duration::from_millis(5), || p
            .log
            .durable_next_seq()
            >= end),
        "the log did not make the hour durable within 60 s"
    );
    // As after a real outage: the connection has timed out and the reconnect attempts run
    // at the backoff cap (5 s by default) before the link returns.
    ensure!(
        wait_until(Duration::from_secs(60), Duration::from_millis(10), || !link
            .is_connected()),
        "the connection did not time out during the cut"
    );
    let failures0 = link.failures.load(Ordering::Relaxed);
    ensure!(
        wait_until(Duration::from_secs(60), Duration::from_millis(50), || {
            link.failures.load(Ordering::Relaxed) >= failures0 + 2
        }),
        "the poller stopped retrying during the cut"
    );
    thread::sleep(Duration::from_secs(2));
    let cut_s = t_cut.elapsed().as_secs_f64();
    let bytes0 = link.bytes.load(Ordering::Relaxed);
    let rtx0 = link.retransmit_timeouts.load(Ordering::Relaxed);
    pair.link.heal();
    let t_heal = Instant::now();
    let mut t_stream: Option<Instant> = None;
    let mut bytes_at_stream = bytes0;
    let trace = std::env::var_os("OPHA_BENCH_TRACE").is_some();
    let mut next_trace = t_heal;
    let done = wait_until(Duration::from_secs(300), Duration::from_millis(2), || {
        if trace && Instant::now() >= next_trace {
            next_trace += Duration::from_millis(500);
            println!(
                "  t={:>5.1}s bytes={} cursor_lag={} batches={} acks={}",
                t_heal.elapsed().as_secs_f64(),
                link.bytes.load(Ordering::Relaxed) - bytes0,
                end.saturating_sub(link.cursor()),
                link.batches.load(Ordering::Relaxed),
                link.acks.load(Ordering::Relaxed)
            );
        }
        if t_stream.is_none() && link.is_connected() {
            t_stream = Some(Instant::now());
            bytes_at_stream = link.bytes.load(Ordering::Relaxed);
        }
        link.cursor() >= end
    });
    let t_done = Instant::now();
    ensure!(
        done,
        "catch-up incomplete after 300 s: cursor {} of {end}",
        link.cursor()
    );
    thread::sleep(Duration::from_millis(20));
    let catchup = (t_done - t_heal).as_secs_f64();
    let t_stream = t_stream.ok_or_else(|| anyhow!("never saw the link streaming"))?;
    let transfer = (t_done - t_stream).as_secs_f64();
    // Batches sent before the streaming flag was seen (within 2 ms of it) count too.
    let useful = link.bytes.load(Ordering::Relaxed) - bytes0.min(bytes_at_stream);
    let rtx = link.retransmit_timeouts.load(Ordering::Relaxed) - rtx0;
    let goodput_pct = useful as f64 / transfer / (LINK_BPS as f64 / 8.0) * 100.0;
    println!("catchup_s_1h_2000_nodes    {catchup:>14.2}");
    println!("wan_goodput_pct            {goodput_pct:>14.1}");
    let r = |v: f64, d: i32| (v * 10f64.powi(d)).round() / 10f64.powi(d);
    Ok(vec![
        ("catchup_s_1h_2000_nodes".into(), json!(r(catchup, 2))),
        ("wan_goodput_pct".into(), json!(r(goodput_pct, 1))),
        (
            "wan_reconnect_s".into(),
            json!(r((t_stream - t_heal).as_secs_f64(), 2)),
        ),
        ("wan_transfer_s".into(), json!(r(transfer, 2))),
        ("wan_records".into(), json!(records)),
        ("wan_record_bytes_uncompressed".into(), json!(payload_bytes)),
        ("wan_frame_bytes_sent".into(), json!(useful)),
        (
            "wan_record_payload_mbit_per_sec".into(),
            json!(r(payload_bytes as f64 * 8.0 / transfer / 1e6, 2)),
        ),
        ("wan_bus_retransmits".into(), json!(rtx)),
        ("wan_cut_s".into(), json!(r(cut_s, 1))),
        ("wan_replay_cap_bytes_per_sec".into(), json!(REPLAY_CAP)),
    ])
}
