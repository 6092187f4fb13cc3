//! `opha-lab` (`cargo xtask lab`): a small poller site in network namespaces, running for a
//! while so you can watch the kernel count it.
//!
//! A devices namespace where real `snmpd` answers for `--nodes` addresses (a few of them IPv6),
//! some of them made unreachable and one whose responses are delayed; a poller namespace with
//! the real `opha-sidecar` attached to its link; `fping`, `snmpget` and `snmpbulkwalk` polling
//! every node for `--duration` seconds while the kernel counters table
//! (`opha-sidecar dataplane dump`) is printed every `--dump-every` seconds. At the end the
//! kernel's counts are compared with what the tools report. Everything is torn down on exit,
//! also on Ctrl-C or SIGTERM.

use std::{
    net::IpAddr,
    process::{Command, ExitCode},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use opha_common::node::ProtoClass;
use opha_tests::netns::{
    FpingOpts, Sidecar, Site, SiteConfig, Snmpd, Tally, Tools, describe, kernel_rtt_ms,
    sidecar_binary,
};

#[derive(Parser)]
#[command(
    name = "opha-lab",
    about = "A poller site in network namespaces, polled by real tools and counted by opha"
)]
struct Args {
    /// Device addresses (IPv4 from 198.18.16.1, plus --v6 of them from 2001:db8:1::1).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(2..=20_000))]
    nodes: u32,
    /// How many of the nodes are IPv6.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(0..=1000))]
    v6: u32,
    /// Nodes made unreachable (their addresses removed); default: one in twenty.
    #[arg(long)]
    unreachable: Option<u32>,
    /// Delay of the one slow node's responses, in milliseconds (0: none).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=2000))]
    delay_ms: u64,
    /// How long to poll, in seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    duration: u64,
    /// Seconds between two prints of the kernel counters table.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    dump_every: u64,
    /// Most tool processes at once (more load the host, and snmpd's answers come later).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    parallel: u32,
}

/// sysDescr.0, sysUpTime.0, sysName.0.
const OIDS: [&str; 3] = [
    "1.3.6.1.2.1.1.1.0",
    "1.3.6.1.2.1.1.3.0",
    "1.3.6.1.2.1.1.5.0",
];

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn stopping() -> bool {
    STOP.load(Ordering::SeqCst)
}

fn main() -> ExitCode {
    let args = Args::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "opha-lab: needs root: it creates network namespaces and veth pairs, runs snmpd in \
             them and loads eBPF programs. Run it as root, e.g. `sudo cargo xtask lab`."
        );
        return ExitCode::from(2);
    }
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("opha-lab: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Builds the site, polls, reports; the guards tear everything down when this returns.
/// Ok(false) when the kernel's counts differ from the tools'.
fn run(args: &Args) -> Result<bool> {
    if args.v6 >= args.nodes {
        bail!("--v6 {} must be below --nodes {}", args.v6, args.nodes);
    }
    let v6 = args.v6 as usize;
    let v4 = (args.nodes - args.v6) as usize;
    let unreachable_n = args
        .unreachable
        .unwrap_or((args.nodes / 20).max(1))
        .min(args.nodes - 1) as usize;

    println!("==> opha-sidecar binary");
    let bin = sidecar_binary()?;
    println!("    {}", bin.display());

    println!("==> site: {v4} IPv4 and {v6} IPv6 devices");
    let site = Site::new(&SiteConfig::new("lab", v4, v6))?;
    let _snmpd = Snmpd::start(&site.devices, &site.v6)?;
    let nodes = site.nodes();
    // Dead nodes spread over the range, the last IPv6 one among them; never the slow node.
    let mut dead: Vec<IpAddr> = Vec::new();
    if v6 >= 2 && unreachable_n > 0 {
        dead.push(*nodes.last().context("no nodes")?);
    }
    let step = (v4 / unreachable_n.max(1)).max(1);
    dead.extend(
        // Index 0 is the slow node and 1 is walked: both stay reachable.
        (2..v4)
            .rev()
            .step_by(step)
            .map(|i| nodes[i])
            .take(unreachable_n - dead.len()),
    );
    site.make_unreachable(&dead)?;
    let slow = nodes[0];
    let delay = Duration::from_millis(args.delay_ms);
    if !delay.is_zero() {
        site.delay_responses(delay, Some(&[slow]));
    }
    let instance = format!("lab-{}", std::process::id());
    let sidecar = Sidecar::start(&site.poller, &site.poller_if, &instance)?;
    println!(
        "    namespaces: poller {} (interface {}), wan {}, devices {} (interface {})",
        site.poller.name(),
        site.poller_if,
        site.wan.name(),
        site.devices.name(),
        site.devices_if
    );
    println!(
        "    opha-sidecar pid {} attached, instance {instance}, maps in {}",
        sidecar.pid().unwrap_or(0),
        sidecar.pin_dir().display()
    );
    println!(
        "    unreachable: {}",
        dead.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    if !delay.is_zero() {
        println!("    slow: {slow} (responses delayed {delay:?})");
    }
    println!(
        "    look around meanwhile: nsenter --net={} bash; {} dataplane dump --instance {instance}",
        site.poller.path().display(),
        bin.display()
    );

    let mut tools = Tools::new(&site.poller)?;
    tools.parallel = args.parallel as usize;
    let walked: Vec<IpAddr> = [Some(nodes[1]), site.v6.first().map(|&a| a.into())]
        .into_iter()
        .flatten()
        .collect();
    let fping = FpingOpts::default();

    println!(
        "==> polling {} nodes for {} s (Ctrl-C stops early)",
        nodes.len(),
        args.duration
    );
    let start = Instant::now();
    let end = start + Duration::from_secs(args.duration);
    let every = Duration::from_secs(args.dump_every);
    let mut next_dump = start + every;
    let mut tally = Tally::default();
    let mut rounds = 0u64;
    let mut dumped = false;
    // Bounded by time (the deadline) and by count (one round per second at most).
    while Instant::now() < end && !stopping() {
        let round_start = Instant::now();
        tally.merge(&tools.fping(&nodes, 1, &fping)?);
        if !stopping() {
            tally.merge(&tools.snmpget(&nodes, &OIDS, 1)?);
        }
        if !stopping() {
            tally.merge(&tools.snmpbulkwalk(&walked, "1.3.6.1.2.1.1", 10)?);
        }
        rounds += 1;
        dumped = false;
        if Instant::now() >= next_dump && !stopping() {
            dump(&bin, &instance, start)?;
            dumped = true;
            while next_dump <= Instant::now() {
                next_dump += every;
            }
        }
        let spent = round_start.elapsed();
        if spent < Duration::from_secs(1) {
            sleep_unless_stopped(Duration::from_secs(1) - spent);
        }
    }
    if stopping() {
        println!("==> interrupted after {:?}", start.elapsed());
    }
    if !dumped {
        dump(&bin, &instance, start)?;
    }

    println!("==> {rounds} rounds: {}", describe(&tally));
    let dp = sidecar.dataplane()?;
    let kernel = dp.nodes()?;
    if let Some(n) = kernel.iter().find(|n| n.addr() == slow)
        && !delay.is_zero()
    {
        for class in [ProtoClass::IcmpEcho, ProtoClass::Snmp] {
            if let Some((min, avg, max)) = kernel_rtt_ms(n, class) {
                println!(
                    "    slow node {slow} {}: RTT min/avg/max {min:.3}/{avg:.3}/{max:.3} ms",
                    class.name()
                );
            }
        }
    }
    let bad = tally.mismatches(&kernel);
    if bad.is_empty() {
        println!(
            "    the kernel's counts equal what the tools report, for all {} nodes",
            tally.nodes().len()
        );
    } else {
        println!(
            "    {} differences between the tools and the kernel:",
            bad.len()
        );
        for b in bad.iter().take(50) {
            println!("      {b}");
        }
    }
    println!("==> tearing down");
    Ok(bad.is_empty())
}

fn sleep_unless_stopped(d: Duration) {
    let end = Instant::now() + d;
    while !stopping() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50).min(end - Instant::now()));
    }
}

/// Prints the kernel counters table with the sidecar's own command.
fn dump(bin: &std::path::Path, instance: &str, start: Instant) -> Result<()> {
    let out = Command::new(bin)
        .args(["dataplane", "dump", "--instance", instance])
        .output()
        .context("running opha-sidecar dataplane dump")?;
    if !out.status.success() {
        bail!(
            "opha-sidecar dataplane dump failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!(
        "---- kernel counters after {:.0} s ----",
        start.elapsed().as_secs_f64()
    );
    print!("{}", String::from_utf8_lossy(&out.stdout));
    Ok(())
}
