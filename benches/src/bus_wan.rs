//! The WAN figures of `opha-bench bus` (root only): a poller (in this process, its runtime's
//! threads in namespace `a`) streams to a primary process in namespace `b` across the
//! userspace WAN emulator (`opha_tests::wan`; the kernel has no tc netem).
//!
//! The link is the issue's `tc qdisc add dev WAN root netem delay 100ms loss 1% rate 10mbit`.
//! A netem qdisc shapes what leaves the interface it sits on, so that line impairs one
//! direction: here the data direction, poller (a) -> primary (b); the way back (QUIC and bus
//! acknowledgements) is not delayed, lost or limited, and the round trip is 100 ms. That is
//! [`Impair::OneWay`], the issue's figure. [`Impair::BothWays`] applies the same to both
//! directions (netem on both ends: 200 ms round trip, 1% loss on acks too), the harsher link.
//! Queue: the emulator's default 256 KiB (netem's default limit is 1,000 packets, deeper).
//!
//! Each case runs with a congestion controller (`[bus.transport] congestion`, the same on the
//! primary's `[transport]`), and the transport's windows configured for the link as an
//! operator would: `bandwidth_bits_per_sec = 10000000`, `rtt_ms` = the link's round trip.
//!
//! One hour of a 2,000-node site is appended while the link is cut, once the poller has
//! noticed (its connection failed): one NodeMetrics per node per 60 s interval (120,000) plus
//! [`EVENTS_PER_HOUR`] events. The cut lasts until the poller's reconnect backoff has
//! reached its cap, as after a real outage. Then the link heals.
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
//!
//! Options (from `opha-bench bus`): `--wan-cc=cubic,bbr` (controllers; default both),
//! `--wan-impair=one-way,both-ways` (default both), `--wan-loss=SHARE` (default 0.01,
//! diagnosis only). The headline `wan_goodput_pct`/`catchup_s_1h_2000_nodes` is the
//! [`HEADLINE`] case when it ran, else the first case; `wan_headline` names it.

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
use opha_identity::Congestion;
use opha_log::RecordClass;
use opha_tests::wan::{LinkConfig, WanPair, WanPairConfig, Way};
use serde_json::{Map, Value, json};

use crate::bus_env::{
    Pki, Poller, Primary, Receiver, Rng, encode, event, node_metrics, wait_until,
};

const LINK_BPS: u64 = 10_000_000;
const DELAY: Duration = Duration::from_millis(100);
/// Replay cap in frame bytes per second: 92% of the link's 1.25 MB/s.
pub const REPLAY_CAP: u64 = LINK_BPS / 8 * 92 / 100;
/// `[bus] window_records` for this link with a controller that keeps it full (BBR): records
/// in flight must cover the replay rate for a round trip, the receiver's commit and a loss
/// recovery (a lost packet holds back every batch behind it for about 1.5 round trips):
/// 1.15 MB/s x ~0.5 s / ~41 bytes per record (compressed NodeMetrics) = ~14,000 records;
/// twice that for margin. The default 8,192 (about 330 KB of these records) held BBR near
/// 70% of the link at 1% loss.
const WINDOW_RECORDS_BBR: u64 = 32_768;

/// The window each controller runs with. Loss-based controllers (Cubic, NewReno) keep the
/// default 8,192: at their loss-limited ~0.15-0.3 MB/s a larger window only queues batches
/// in QUIC's send buffer for longer than `bus.retransmit_after` (10 s), and the bus then
/// sends them again (measured: 139 spurious batch retransmissions with Cubic both ways at
/// 32,768), wasting the link.
fn window_records(cc: Congestion) -> u64 {
    match cc {
        Congestion::Bbr => WINDOW_RECORDS_BBR,
        Congestion::Cubic | Congestion::NewReno => 8192,
    }
}
const NODES: u32 = 2000;
const INTERVALS: u64 = 60;
/// Events in the hour (node/SNMP/port up-downs, threshold crossings of a site with churn).
const EVENTS_PER_HOUR: u64 = 2000;
/// The case reported under the issue's field names: the issue's netem line (one way) with
/// the controller docs/bus.md recommends for a link with random loss.
pub const HEADLINE: Case = (Congestion::Bbr, Impair::OneWay);

/// One WAN run: the poller's congestion controller and the impaired directions.
type Case = (Congestion, Impair);
/// Report fields, in order.
type Fields = Vec<(String, Value)>;

/// Which directions of the link carry the impairment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impair {
    /// Data direction only (poller -> primary), as one `tc netem` qdisc on the WAN interface.
    OneWay,
    /// Both directions alike.
    BothWays,
}

impl Impair {
    pub fn as_str(self) -> &'static str {
        match self {
            Impair::OneWay => "one_way",
            Impair::BothWays => "both_ways",
        }
    }

    fn rtt_ms(self) -> u64 {
        match self {
            Impair::OneWay => 100,
            Impair::BothWays => 200,
        }
    }
}

/// The WAN options of `opha-bench bus`: (cases, loss, notes for the report).
fn parse(options: &[String]) -> Result<(Vec<Case>, f64, Vec<String>)> {
    let opt = |name: &str| options.iter().find_map(|o| o.strip_prefix(name));
    let mut notes = Vec::new();
    let loss = opt("--wan-loss=")
        .map(str::parse::<f64>)
        .transpose()
        .map_err(|e| anyhow!("--wan-loss: {e}"))?
        .unwrap_or(0.01);
    if loss != 0.01 {
        notes.push(format!(
            "wan: loss {loss} instead of the issue's 1% (diagnostic run)"
        ));
    }
    let ccs = opt("--wan-cc=")
        .unwrap_or("cubic,bbr")
        .split(',')
        .map(|c| {
            c.parse::<Congestion>()
                .map_err(|_| anyhow!("--wan-cc: {c:?}: use cubic, bbr or newreno"))
        })
        .collect::<Result<Vec<_>>>()?;
    let impairs = opt("--wan-impair=")
        .unwrap_or("one-way,both-ways")
        .split(',')
        .map(|i| match i {
            "one-way" => Ok(Impair::OneWay),
            "both-ways" => Ok(Impair::BothWays),
            _ => Err(anyhow!("--wan-impair: {i:?}: use one-way or both-ways")),
        })
        .collect::<Result<Vec<_>>>()?;
    let mut cases = Vec::new();
    for &i in &impairs {
        for &c in &ccs {
            cases.push((c, i));
        }
    }
    Ok((cases, loss, notes))
}

/// Runs every WAN case the options ask for. Returns the report's fields and notes; a case
/// that fails is a note (and nulls), not an error.
pub fn run(root: &Path, pki: &Pki, options: &[String]) -> Result<(Fields, Vec<String>)> {
    let (cases, loss, mut notes) = parse(options)?;
    let mut out = Vec::new();
    let mut runs = Map::new();
    let mut headline: Option<(String, Map<String, Value>)> = None;
    for (n, &(cc, impair)) in cases.iter().enumerate() {
        let name = format!("{cc}_{}", impair.as_str());
        println!("wan case {name}");
        let (goodput_key, catchup_key) = (
            format!("wan_goodput_pct_{name}"),
            format!("catchup_s_1h_2000_nodes_{name}"),
        );
        match run_case(root, pki, n, cc, impair, loss) {
            Ok(fields) => {
                let m: Map<String, Value> = fields.into_iter().collect();
                out.push((goodput_key, m["wan_goodput_pct"].clone()));
                out.push((catchup_key, m["catchup_s_1h_2000_nodes"].clone()));
                if headline.is_none() || (cc, impair) == HEADLINE {
                    headline = Some((name.clone(), m.clone()));
                }
                runs.insert(name, Value::Object(m));
            }
            Err(e) => {
                println!("wan {name}: not measured: {e:#}");
                notes.push(format!("wan {name}: not measured: {e:#}"));
                out.push((goodput_key, Value::Null));
                out.push((catchup_key, Value::Null));
            }
        }
    }
    match headline {
        Some((name, m)) => {
            out.push(("wan_goodput_pct".into(), m["wan_goodput_pct"].clone()));
            out.push((
                "catchup_s_1h_2000_nodes".into(),
                m["catchup_s_1h_2000_nodes"].clone(),
            ));
            out.push(("wan_headline".into(), json!(name)));
        }
        None => {
            out.push(("wan_goodput_pct".into(), Value::Null));
            out.push(("catchup_s_1h_2000_nodes".into(), Value::Null));
        }
    }
    out.push(("wan_runs".into(), Value::Object(runs)));
    Ok((out, notes))
}

fn run_case(
    root: &Path,
    pki: &Pki,
    n: usize,
    cc: Congestion,
    impair: Impair,
    loss: f64,
) -> Result<Vec<(String, Value)>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("needs root (network namespaces for the WAN emulator)");
    }
    // Fresh peers per case: no log, epoch or store state carries over.
    let poller = format!("bench-wan{n}");
    let primary_id = format!("bench-wan{n}-primary");
    pki.issue(&poller, PeerRole::Poller)?;
    pki.issue(&primary_id, PeerRole::Primary)?;
    let pair = WanPair::new(&WanPairConfig::new(&format!("bbw{n}"), 0x5eed))?;
    let impaired = LinkConfig::default().delay(DELAY).loss(loss).rate(LINK_BPS);
    match impair {
        Impair::OneWay => {
            pair.link.set(Way::AtoB, impaired)?;
            pair.link.set(Way::BtoA, LinkConfig::default())?;
        }
        Impair::BothWays => pair.link.set_both(impaired)?,
    }
    let transport = format!(
        "congestion = \"{cc}\"\nbandwidth_bits_per_sec = {LINK_BPS}\nrtt_ms = {}\n",
        impair.rtt_ms()
    );
    let listen = SocketAddr::new(IpAddr::V4(pair.b_addr), 7443);
    let primary = Primary::start_with(
        root,
        &primary_id,
        listen,
        None,
        std::slice::from_ref(&poller),
        Some(&pair.b.path()),
        &format!("[transport]\n{transport}"),
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
        &poller,
        &[Receiver {
            peer: primary_id.clone(),
            address: listen,
        }],
        &format!(
            "replay_bytes_per_sec = \"{REPLAY_CAP}\"\nwindow_records = {}\n\
             [bus.transport]\n{transport}",
            window_records(cc)
        ),
    )?;
    p.start(rt.handle())?;
    let result = measure(&pair, &p);
    p.stop(&rt);
    drop(rt);
    let stats = [pair.link.stats(Way::AtoB), pair.link.stats(Way::BtoA)];
    drop(primary);
    drop(pair);
    let mut out = result?;
    out.push(("wan_congestion".into(), json!(cc.as_str())));
    out.push(("wan_impairment".into(), json!(impair.as_str())));
    out.push(("wan_loss".into(), json!(loss)));
    out.push(("wan_window_records".into(), json!(window_records(cc))));
    out.push((
        "wan_emulator_socket_drops".into(),
        json!(stats[0].socket_drops + stats[1].socket_drops),
    ));
    out.push((
        "wan_frames_dropped_queue".into(),
        json!(stats[0].dropped_queue + stats[1].dropped_queue),
    ));
    out.push((
        "wan_frames_dropped_loss_data_way".into(),
        json!(stats[0].dropped_loss),
    ));
    out.push((
        "wan_frames_dropped_loss_ack_way".into(),
        json!(stats[1].dropped_loss),
    ));
    out.push((
        "wan_queue_max_bytes_data_way".into(),
        json!(stats[0].queued_max_bytes),
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
    // The hour is appended once the poller knows the link is down, as in a real outage
    // (nearly all of an hour's records arrive long after the connection died). Appended
    // while the dead connection still counted as up, up to a window of batches would go into
    // it, and their bytes would be reported only after the heal (the link's counters are
    // exported when its send loop comes round), inflating the useful bytes.
    ensure!(
        wait_until(Duration::from_secs(60), Duration::from_millis(10), || !link
            .is_connected()),
        "the connection did not time out during the cut"
    );
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
    // As after a real outage: the reconnect attempts run at the backoff cap (5 s by
    // default) before the link returns.
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
    let sent_records =
        || link.records_live.load(Ordering::Relaxed) + link.records_backlog.load(Ordering::Relaxed);
    let (records0, batches0, connects0) = (
        sent_records(),
        link.batches.load(Ordering::Relaxed),
        link.connects.load(Ordering::Relaxed),
    );
    let data0 = pair.link.stats(Way::AtoB);
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
    let data1 = pair.link.stats(Way::AtoB);
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
        // Records and batches sent after the heal (above `wan_records` when something was
        // sent twice: a bus retransmission or a resend after a lost connection), and the
        // connections made (1 when the link held after the reconnect).
        ("wan_records_sent".into(), json!(sent_records() - records0)),
        (
            "wan_batches_sent".into(),
            json!(link.batches.load(Ordering::Relaxed) - batches0),
        ),
        (
            "wan_connects".into(),
            json!(link.connects.load(Ordering::Relaxed) - connects0),
        ),
        ("wan_cut_s".into(), json!(r(cut_s, 1))),
        ("wan_replay_cap_bytes_per_sec".into(), json!(REPLAY_CAP)),
        // Frames on the data way during the catch-up: their mean size tells whether MTU
        // discovery reached 1452-byte datagrams (1494-byte frames); the link's use includes
        // QUIC retransmissions and headers.
        (
            "wan_frame_bytes_avg_data_way".into(),
            json!(r(
                (data1.forwarded_bytes - data0.forwarded_bytes) as f64
                    / (data1.forwarded - data0.forwarded).max(1) as f64,
                0
            )),
        ),
        (
            "wan_link_use_pct_data_way".into(),
            json!(r(
                (data1.forwarded_bytes - data0.forwarded_bytes) as f64
                    / (t_done - t_heal).as_secs_f64()
                    / (LINK_BPS as f64 / 8.0)
                    * 100.0,
                1
            )),
        ),
    ])
}
