//! `opha-pollgen`: the project's poll generator. Polls nodes like an NMIS poller (SNMP v2c Get
//! and GetBulk of the system and interface tables spread over a cycle, a ping of every node
//! each minute, TCP port checks), or at a fixed high rate for the benchmarks, and reports
//! exactly what it sent and got back per node and class.
//!
//! ```text
//! opha-pollgen --range 198.18.16.1-198.18.23.250 --community public --cycle 300s \
//!     --ping-every 60s --tcp-port 22 --duration 10m --json
//! opha-pollgen --targets nodes.txt --rate 50000 --kinds snmp,icmp --duration 30s --json
//! ```
//!
//! Targets must lie in 198.18.0.0/15, 2001:db8::/32 or loopback. Runs in the network
//! namespace it is started in (`nsenter --net=...`). Ctrl-C or SIGTERM ends sending early;
//! the answers still due are waited for and counted.

use std::{
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use clap::Parser;
use opha_common::node::ProtoClass;
use opha_tests::pollgen::{self, Config, Kind, PollGen, PollStats};

#[derive(Parser)]
#[command(
    name = "opha-pollgen",
    about = "Polls nodes like an NMIS poller (SNMP, ICMP, TCP) and counts every request and \
             answer per node"
)]
struct Args {
    /// File with one address or FIRST-LAST range per line (# comments).
    #[arg(long)]
    targets: Option<std::path::PathBuf>,
    /// FIRST-LAST address range (IPv4 skips .0 and .255); repeatable.
    #[arg(long)]
    range: Vec<String>,
    /// Single target address; repeatable.
    #[arg(long)]
    target: Vec<std::net::IpAddr>,
    #[arg(long, default_value = "public")]
    community: String,
    #[arg(long, default_value_t = 161)]
    snmp_port: u16,
    /// SNMP poll cycle per node (0: no SNMP).
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    cycle: Duration,
    /// Ping period per node (0: no pings).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    ping_every: Duration,
    /// TCP port to check on every node; repeatable.
    #[arg(long = "tcp-port")]
    tcp_ports: Vec<u16>,
    /// TCP check period per node and port (default: the cycle, or 300 s).
    #[arg(long, value_parser = parse_duration)]
    tcp_every: Option<Duration>,
    /// Per request (SNMP, ICMP) and per TCP connect.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    timeout: Duration,
    /// SNMP and ICMP retries after a timeout (cycle mode; the fixed rate never retries).
    #[arg(long, default_value_t = 1)]
    retries: u32,
    /// Global bound on packets per second, retries included.
    #[arg(long)]
    rate_limit: Option<f64>,
    /// Fixed-rate mode: this many single requests per second, regardless of the cycles.
    #[arg(long)]
    rate: Option<f64>,
    /// Request kinds of the fixed-rate mode, comma-separated (snmp, icmp, tcp).
    #[arg(long, default_value = "snmp,icmp", value_delimiter = ',')]
    kinds: Vec<Kind>,
    /// Polls (jobs) in flight at once.
    #[arg(long, default_value_t = 4096)]
    max_inflight: usize,
    #[arg(long, default_value_t = 25)]
    max_repetitions: u32,
    /// How long to send.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// How long to keep reading for late answers after the last request ended.
    #[arg(long, default_value = "300ms", value_parser = parse_duration)]
    linger: Duration,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Write "0 2147483647" to net.ipv4.ping_group_range of the current network namespace
    /// first (root; for the unprivileged ICMP sockets).
    #[arg(long)]
    set_ping_group_range: bool,
    /// Print the result as JSON (with per-node counts).
    #[arg(long)]
    json: bool,
}

/// `500ms`, `2s`, `5m`, `1h`, or plain seconds.
fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((s, ""), |i| s.split_at(i));
    let v: f64 = num
        .parse()
        .with_context(|| format!("duration {s:?}: want e.g. 500ms, 2s, 5m"))?;
    let secs = match unit {
        "" | "s" => v,
        "ms" => v / 1e3,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        u => bail!("duration {s:?}: unknown unit {u:?}"),
    };
    ensure!(
        secs.is_finite() && (0.0..=86_400.0 * 7.0).contains(&secs),
        "duration {s:?} out of range"
    );
    Ok(Duration::from_secs_f64(secs))
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn main() -> ExitCode {
    let args = Args::parse();
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("opha-pollgen: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    let mut targets = Vec::new();
    if let Some(f) = &args.targets {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        targets.extend(pollgen::parse_targets(&text)?);
    }
    for r in &args.range {
        targets.extend(pollgen::parse_range(r)?);
    }
    targets.extend(args.target.iter().copied());
    ensure!(
        !targets.is_empty(),
        "no targets: give --targets FILE, --range FIRST-LAST or --target ADDR"
    );
    if args.set_ping_group_range {
        std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647")
            .context("writing net.ipv4.ping_group_range")?;
    }
    let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
    let mut cfg = Config::new(targets);
    cfg.community = args.community.clone();
    cfg.snmp_port = args.snmp_port;
    cfg.cycle = nonzero(args.cycle);
    cfg.ping_every = nonzero(args.ping_every);
    cfg.tcp_ports = args.tcp_ports.clone();
    cfg.tcp_every = args
        .tcp_every
        .or(cfg.cycle)
        .unwrap_or(Duration::from_secs(300));
    cfg.timeout = args.timeout;
    cfg.retries = args.retries;
    cfg.rate_limit = args.rate_limit;
    cfg.max_inflight = args.max_inflight;
    cfg.max_repetitions = args.max_repetitions;
    cfg.linger = args.linger;
    cfg.fixed_rate = args.rate.map(|r| (r, args.kinds.clone()));
    let generator = PollGen::new(cfg)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.clamp(1, 64))
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let stats = rt.block_on(generator.run(args.duration, &STOP))?;
    if args.json {
        println!("{}", stats.to_json(true));
    } else {
        print_summary(&stats);
    }
    Ok(())
}

fn print_summary(s: &PollStats) {
    println!(
        "{} nodes, {:.1} s, {} jobs, {:.0} requests/s{}{}",
        s.nodes.len(),
        s.elapsed.as_secs_f64(),
        s.jobs,
        s.sent_per_second(),
        s.rate.map_or(String::new(), |r| format!(
            " (asked {r:.0}/s, {} dropped as behind)",
            s.behind
        )),
        if s.unknown_sources > 0 {
            format!(", {} datagrams from unknown sources", s.unknown_sources)
        } else {
            String::new()
        }
    );
    println!(
        "{:<6} {:>10} {:>10} {:>10} {:>8} {:>8} {:>8} {:>9} {:>9}",
        "class",
        "sent",
        "responses",
        "matched",
        "late",
        "timeouts",
        "errors",
        "malformed",
        "rtt avg"
    );
    for c in ProtoClass::ALL {
        let t = s.total(c);
        println!(
            "{:<6} {:>10} {:>10} {:>10} {:>8} {:>8} {:>8} {:>9} {:>9}",
            c.name(),
            t.sent,
            t.responses,
            t.matched,
            t.late,
            t.timeouts,
            t.errors,
            t.malformed,
            t.rtt_avg_ms()
                .map_or("-".to_string(), |ms| format!("{ms:.3}ms"))
        );
    }
    let down: Vec<String> = s
        .nodes
        .iter()
        .filter(|(_, n)| n.icmp.failed > 0 || n.snmp.failed > 0)
        .map(|(a, _)| a.to_string())
        .collect();
    if !down.is_empty() {
        println!(
            "{} nodes with failed polls: {}{}",
            down.len(),
            down.iter().take(20).cloned().collect::<Vec<_>>().join(" "),
            if down.len() > 20 { " ..." } else { "" }
        );
    }
}
