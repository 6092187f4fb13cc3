//! Failover of `opha-bench bus`: a poller (in this process, the real bus sender) streams to
//! a main and a redundant primary (`opha-sidecar primary --config` processes on 127.0.0.1)
//! under a steady load of [`RATE`] records/s; the main one is killed with SIGKILL,
//! [`TRIALS`] times (restarted, and the poller back on it, between trials).
//!
//! One trial's figure is the time from the kill to the first moment at which all of these
//! hold:
//! 1. the poller has made the redundant primary the active one (what its
//!    `opha_bus_active_primary{receiver=...}` metric shows; read from the same status here);
//! 2. when the redundant primary exports `opha_receiver_acting{poller=...}` on its metrics
//!    endpoint (primaries that track the poller's grants), it reports 1 for this poller; a
//!    primary without that series is judged by 1 alone;
//! 3. a record submitted after the kill is durable at the redundant primary (the poller's
//!    cursor for it has passed the record).
//!
//! The poller uses the default `[bus]` and transport settings (as a deployment has them),
//! except `reconnect_max = 1s`, which only shortens the wait for the restarted main primary
//! between trials.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow, ensure};
use opha_common::wire::{PeerId, PeerRole};
use opha_log::RecordClass;
use serde_json::{Value, json};

use crate::bus_env::{self, Pki, Poller, Primary, Receiver, metric, record_100, wait_until};

pub const TRIALS: usize = 20;
/// Steady load during the trials, records/s.
const RATE: u64 = 200;
const POLLER: &str = "bench-fo";
const MAIN: &str = "bench-fo-main";
const REDUNDANT: &str = "bench-fo-red";
/// A trial that has not failed over by then counts as failed.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(30);

pub fn run(root: &Path, pki: &Pki, rt: &tokio::runtime::Runtime) -> Result<Vec<(String, Value)>> {
    for (peer, role) in [
        (POLLER, PeerRole::Poller),
        (MAIN, PeerRole::Primary),
        (REDUNDANT, PeerRole::Primary),
    ] {
        pki.issue(peer, role)?;
    }
    let lo = Ipv4Addr::LOCALHOST;
    let pollers = [POLLER.to_string()];
    let mut main = Primary::start(
        root,
        MAIN,
        SocketAddr::from((lo, bus_env::free_udp_port(lo)?)),
        Some(SocketAddr::from((lo, bus_env::free_tcp_port(lo)?))),
        &pollers,
        None,
    )?;
    let red = Primary::start(
        root,
        REDUNDANT,
        SocketAddr::from((lo, bus_env::free_udp_port(lo)?)),
        Some(SocketAddr::from((lo, bus_env::free_tcp_port(lo)?))),
        &pollers,
        None,
    )?;
    let receivers = [
        Receiver {
            peer: MAIN.into(),
            address: main.listen,
        },
        Receiver {
            peer: REDUNDANT.into(),
            address: red.listen,
        },
    ];
    let mut p = Poller::open(root, POLLER, &receivers, "reconnect_max = \"1s\"")?;
    p.start(rt.handle())?;
    let main_id = PeerId::new(MAIN).map_err(|e| anyhow!("{e}"))?;
    let red_id = PeerId::new(REDUNDANT).map_err(|e| anyhow!("{e}"))?;
    let acting_label = format!("poller=\"{POLLER}\"");

    let stop = AtomicBool::new(false);
    let last_submitted = AtomicU64::new(0);
    let mut times: Vec<f64> = Vec::new();
    let mut switch_times: Vec<f64> = Vec::new();
    let mut failed = 0usize;
    let mut acting_seen = false;
    let result: Result<()> = thread::scope(|s| {
        // The steady load.
        let loader = s.spawn(|| -> Result<()> {
            let period = Duration::from_nanos(1_000_000_000 / RATE);
            let mut n = 0u64;
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let seq = p.submit(RecordClass::Event, &[record_100(n)])?;
                last_submitted.store(seq, Ordering::SeqCst);
                n += 1;
                next += period;
                if let Some(d) = next.checked_duration_since(Instant::now()) {
                    thread::sleep(d);
                }
            }
            Ok(())
        });
        let r = (|| -> Result<()> {
            for trial in 0..TRIALS {
                // Settled: main active, both links streaming and caught up.
                let settled = wait_until(Duration::from_secs(30), Duration::from_millis(5), || {
                    let head = p.log.durable_next_seq();
                    p.status().active_primary().0.as_ref() == Some(&main_id)
                        && p.link(0).is_connected()
                        && p.link(1).is_connected()
                        && p.link(0).cursor() + 5 >= head
                        && p.link(1).cursor() + 5 >= head
                });
                ensure!(
                    settled,
                    "trial {trial}: main primary not active and caught up within 30 s:\n{}",
                    main.output()
                );
                thread::sleep(Duration::from_millis(300));
                let t_kill = Instant::now();
                main.kill9();
                // The next record submitted is the first one after the kill.
                let after = last_submitted.load(Ordering::SeqCst) + 1;
                let mut switched: Option<Instant> = None;
                let done = wait_until(TRIAL_TIMEOUT, Duration::from_millis(2), || {
                    let active = p.status().active_primary().0.as_ref() == Some(&red_id);
                    if active && switched.is_none() {
                        switched = Some(Instant::now());
                    }
                    if !active || p.link(1).cursor() <= after {
                        return false;
                    }
                    match red.scrape() {
                        Some(text) => match metric(&text, "opha_receiver_acting", &acting_label) {
                            Some(v) => {
                                acting_seen = true;
                                v >= 1.0
                            }
                            None => true,
                        },
                        None => true,
                    }
                });
                if done {
                    let t = t_kill.elapsed().as_secs_f64();
                    times.push(t);
                    if let Some(sw) = switched {
                        switch_times.push((sw - t_kill).as_secs_f64());
                    }
                    println!("failover trial {:>2}: {t:.3} s", trial + 1);
                } else {
                    failed += 1;
                    println!(
                        "failover trial {:>2}: no failover within {TRIAL_TIMEOUT:?}",
                        trial + 1
                    );
                }
                main.spawn()?;
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        let l = loader.join().map_err(|_| anyhow!("load thread panicked"))?;
        r.and(l)
    });
    p.stop(rt);
    drop(red);
    drop(main);
    result?;
    ensure!(!times.is_empty(), "no trial failed over");
    let q = |v: &[f64], q: f64| quantile(v, q);
    let mut out = vec![
        ("failover_p50_s".to_string(), json!(round3(q(&times, 0.5)))),
        ("failover_p99_s".to_string(), json!(round3(q(&times, 0.99)))),
        ("failover_max_s".to_string(), json!(round3(q(&times, 1.0)))),
        ("failover_trials".to_string(), json!(TRIALS)),
        ("failover_trials_failed".to_string(), json!(failed)),
        (
            "failover_switch_p50_s".to_string(),
            json!(round3(q(&switch_times, 0.5))),
        ),
        (
            "failover_method".to_string(),
            json!(if acting_seen {
                "poller active_primary switch + redundant opha_receiver_acting=1 + post-kill record durable at the redundant"
            } else {
                "poller active_primary switch + post-kill record durable at the redundant (the primary exports no opha_receiver_acting)"
            }),
        ),
    ];
    if failed > 0 {
        // A failed trial is slower than any measured one: p99 over all trials is unknown.
        out[1].1 = Value::Null;
    }
    println!(
        "failover_p50_s             {:>14.3}\nfailover_p99_s             {:>14.3}",
        q(&times, 0.5),
        q(&times, 0.99)
    );
    Ok(out)
}

/// Nearest-rank quantile (p99 of 20 trials is the largest).
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}
