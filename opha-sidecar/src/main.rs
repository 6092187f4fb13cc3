//! `opha-sidecar`: the command.

use std::{
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use clap::{Args, Parser, Subcommand};
use opha_common::ports::{
    DEFAULT_SNMP_PORT, DEFAULT_SYSLOG_PORT, DEFAULT_TRAP_PORT, PortConfig, SNAP_LEN,
};
use opha_sidecar::config::receiver::ReceiverRole;
use opha_sidecar::{
    dump,
    loader::{self, DataPlane, LoaderConfig, MonitoredPrefix},
    logdump, poller, receiver,
};

#[derive(Parser)]
#[command(
    name = "opha-sidecar",
    version,
    about = "eBPF-accelerated poller sidecar"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run on a poller: with --config, the whole pipeline (kernel counters, traps, syslog,
    /// local ingest, daemon health -> replay log); with --interface, only load and attach the
    /// kernel programs (and print their counters with --dump).
    Poller(PollerArgs),
    /// Inspect or remove an instance's pinned programs and maps.
    #[command(subcommand)]
    Dataplane(DataplaneCommand),
    /// Inspect the replay log.
    #[command(subcommand)]
    Log(LogCommand),
    /// Run as a primary: accept poller streams, authorize tenants, store, acknowledge.
    Primary(ReceiverArgs),
    /// Run as a mirror: the same receiver, for the poller it is paired with (and, with
    /// `[mirror]`, its own pipeline that takes the poller's place); or tell the running mirror
    /// to promote, demote, or decide by itself again.
    Mirror(MirrorArgs),
    /// Create a CA and issue peer certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// The primary's HTTP API: bearer tokens.
    #[command(subcommand)]
    Api(ApiCommand),
}

#[derive(Subcommand)]
enum ApiCommand {
    /// Bearer tokens of the API and Home view.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Mint a token: prints it once, and the `[[api.token]]` block (its hash) to paste into the
    /// primary's config.
    Mint {
        /// Who the token is for (shown in logs, never the token); unique among the tokens.
        #[arg(long)]
        name: String,
        /// A tenant token that sees only this tenant; without it, an operator token (every
        /// tenant).
        #[arg(long)]
        tenant: Option<u32>,
    },
}

#[derive(Args)]
struct ReceiverArgs {
    /// The receiver's config file (TOML; see examples/primary.toml).
    #[arg(long, value_name = "FILE")]
    config: std::path::PathBuf,
    /// Load and validate the config and the receiver's own certificate, print the effective
    /// config, and exit.
    #[arg(long)]
    check: bool,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct MirrorArgs {
    #[command(subcommand)]
    action: Option<MirrorAction>,
    /// The mirror's config file (TOML; see examples/mirror.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// Load and validate the config and the mirror's own certificate, print the effective
    /// config, and exit.
    #[arg(long)]
    check: bool,
}

#[derive(Subcommand)]
enum MirrorAction {
    /// Take the poller's place now, and keep it until `demote` or `auto` (docs/mirror.md).
    Promote {
        /// The running mirror's config file.
        #[arg(long, value_name = "FILE")]
        config: std::path::PathBuf,
    },
    /// Give the poller's place back now, and stay standby until `promote` or `auto`.
    Demote {
        #[arg(long, value_name = "FILE")]
        config: std::path::PathBuf,
    },
    /// Back to the automatic rules (`takeover_after`, `return_after`).
    Auto {
        #[arg(long, value_name = "FILE")]
        config: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create a CA: writes ca.pem and ca.key (0600) into DIR.
    Init {
        #[arg(long)]
        dir: std::path::PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "opha CA")]
        name: String,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a peer certificate: writes <peer>.pem and <peer>.key (0600) into OUT.
    Issue {
        /// The CA directory (from `certs init`).
        #[arg(long)]
        ca: std::path::PathBuf,
        #[arg(long)]
        out: std::path::PathBuf,
        /// The peer id (a-z, 0-9, '.', '_', '-').
        #[arg(long)]
        peer: String,
        /// poller, primary or mirror.
        #[arg(long)]
        role: String,
        /// A tenant the peer may carry data for; repeatable.
        #[arg(long = "tenant")]
        tenants: Vec<u32>,
        /// Validity in days.
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
}

#[derive(Subcommand)]
enum LogCommand {
    /// Print the log's records (read-only: works while the poller runs, moves no cursor).
    Dump {
        /// The log directory (`log.dir` of the poller's config).
        #[arg(long)]
        dir: std::path::PathBuf,
        /// First sequence number to print.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// One JSON object per line: {"seq", "class", "record"} (or "error").
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct InstanceArgs {
    /// Instance name: maps and links are pinned under <pin-root>/<instance>/.
    #[arg(long)]
    instance: String,
    /// bpffs directory holding every instance.
    #[arg(long, default_value = opha_common::PIN_ROOT)]
    pin_root: std::path::PathBuf,
}

#[derive(Args)]
struct PollerArgs {
    /// Run the full pipeline from this config file (TOML; see docs/configuration.md) until
    /// SIGINT/SIGTERM.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = ["interface", "instance", "prefixes", "tcp_ports", "dump", "count", "detach_on_exit"]
    )]
    config: Option<std::path::PathBuf>,
    /// With --config: load and validate the config (and inventory), print the effective
    /// config, and exit 0 (valid) or 1, without touching the kernel.
    #[arg(long, requires = "config")]
    check: bool,
    /// The polling interface (TC ingress and egress are attached here).
    #[arg(long, required_unless_present = "config")]
    interface: Option<String>,
    /// Instance name; defaults to the interface name.
    #[arg(long)]
    instance: Option<String>,
    /// bpffs directory holding every instance.
    #[arg(long, default_value = opha_common::PIN_ROOT)]
    pin_root: std::path::PathBuf,
    /// Monitored prefix, repeatable: [VLAN@]ADDRESS/LEN=TENANT, e.g. 198.18.0.0/15=1.
    #[arg(long = "prefix")]
    prefixes: Vec<MonitoredPrefix>,
    /// SNMP agent port polled by the poller.
    #[arg(long, default_value_t = DEFAULT_SNMP_PORT)]
    snmp_port: u16,
    /// Port traps and informs arrive on.
    #[arg(long, default_value_t = DEFAULT_TRAP_PORT)]
    trap_port: u16,
    /// Port syslog arrives on.
    #[arg(long, default_value_t = DEFAULT_SYSLOG_PORT)]
    syslog_port: u16,
    /// TCP service-check port, repeatable.
    #[arg(long = "tcp-port")]
    tcp_ports: Vec<u16>,
    /// Bytes of trap and syslog payload copied to the ring buffer (1-512).
    #[arg(long, default_value_t = SNAP_LEN as u32)]
    snap_len: u32,
    /// Most nodes the kernel counts; more are counted as node_map_full.
    #[arg(long, default_value_t = 16384)]
    max_nodes: u32,
    /// Most requests in flight; older ones are evicted (counted).
    #[arg(long, default_value_t = 65536)]
    max_inflight: u32,
    /// Print the counters every --interval seconds.
    #[arg(long)]
    dump: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Seconds between dumps.
    #[arg(long, default_value_t = 10)]
    interval: u64,
    /// Exit after this many dumps (0: run until SIGINT/SIGTERM).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Detach the programs and remove the pinned maps on exit. Without it they stay, so a
    /// restarted sidecar carries on where this one stopped.
    #[arg(long)]
    detach_on_exit: bool,
}

#[derive(Subcommand)]
enum DataplaneCommand {
    /// Print an instance's counters from its pinned maps (loads nothing new if they exist).
    Dump {
        #[command(flatten)]
        instance: InstanceArgs,
        #[arg(long)]
        json: bool,
    },
    /// Detach an instance's programs and remove its pinned maps.
    Detach {
        #[command(flatten)]
        instance: InstanceArgs,
        /// Keep the pinned maps (counters) and only detach the programs.
        #[arg(long)]
        keep_maps: bool,
    },
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Poller(args) => run_poller(args),
        Command::Dataplane(DataplaneCommand::Dump { instance, json }) => {
            dump_instance(&instance, json)
        }
        Command::Dataplane(DataplaneCommand::Detach {
            instance,
            keep_maps,
        }) => loader::detach(&loader_config(&instance), keep_maps).map_err(Into::into),
        Command::Log(LogCommand::Dump { dir, from, json }) => dump_log(dir, from, json),
        Command::Primary(a) => receiver::run(&a.config, ReceiverRole::Primary, a.check),
        Command::Mirror(a) => run_mirror(a),
        Command::Certs(c) => run_certs(c),
        Command::Api(ApiCommand::Token(TokenCommand::Mint { name, tenant })) => {
            mint_token(&name, tenant)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("opha-sidecar: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn loader_config(i: &InstanceArgs) -> LoaderConfig {
    let mut cfg = LoaderConfig::new(&i.instance);
    cfg.pin_root = i.pin_root.clone();
    cfg
}

fn dump_instance(i: &InstanceArgs, json: bool) -> anyhow::Result<()> {
    if !loader_config(i).pin_dir().exists() {
        anyhow::bail!(
            "instance {:?} has no pinned maps under {}",
            i.instance,
            i.pin_root.display()
        );
    }
    let dp = DataPlane::load(&loader_config(i))?;
    print_dump(&dp, json)
}

fn print_dump(dp: &DataPlane, json: bool) -> anyhow::Result<()> {
    let nodes = dp.nodes()?;
    let stats = dp.stats()?;
    if json {
        println!("{}", dump::render_json(&nodes, &stats));
    } else {
        print!("{}", dump::render_text(&nodes, &stats));
    }
    Ok(())
}

fn dump_log(dir: std::path::PathBuf, from: u64, json: bool) -> anyhow::Result<()> {
    let opts = logdump::DumpOptions { dir, from, json };
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let summary = logdump::dump(&opts, &mut stdout.lock(), &mut stderr.lock())?;
    if summary.damaged_segments > 0 {
        anyhow::bail!(
            "{} damaged segments (see above); the records shown are intact",
            summary.damaged_segments
        );
    }
    Ok(())
}

fn mint_token(name: &str, tenant: Option<u32>) -> anyhow::Result<()> {
    if tenant == Some(0) {
        anyhow::bail!("--tenant 0: tenant 0 is reserved (the receiver's own reports)");
    }
    let minted = opha_api::mint(name, tenant.map(opha_common::wire::TenantId))
        .map_err(|e| anyhow::anyhow!("--name {name:?}: {}", e.message))?;
    let who = match tenant {
        Some(t) => format!("tenant {t}"),
        None => "operator, every tenant".to_string(),
    };
    println!("# token {name:?} ({who}): shown only now; the primary keeps only its hash");
    println!("{}", minted.token);
    println!();
    println!("# add to the primary's config file (after [api]), then restart it:");
    print!("{}", minted.to_toml());
    Ok(())
}

fn run_mirror(a: MirrorArgs) -> anyhow::Result<()> {
    use opha_sidecar::mirror::{Command as Cmd, driver::request_command};
    let (config, cmd) = match a.action {
        None => {
            let config = a
                .config
                .ok_or_else(|| anyhow::anyhow!("--config FILE is required"))?;
            return receiver::run(&config, ReceiverRole::Mirror, a.check);
        }
        Some(MirrorAction::Promote { config }) => (config, Cmd::Promote),
        Some(MirrorAction::Demote { config }) => (config, Cmd::Demote),
        Some(MirrorAction::Auto { config }) => (config, Cmd::Auto),
    };
    request_command(&config, cmd)?;
    println!(
        "{}: {cmd:?} requested; the running mirror takes it within its next tick (opha_mirror_promoted, opha_mirror_forced show the result)",
        config.display()
    );
    Ok(())
}

fn run_certs(c: CertsCommand) -> anyhow::Result<()> {
    use opha_identity::{ca, identity::parse_role};
    match c {
        CertsCommand::Init { dir, name, days } => {
            ca::init_ca(&dir, &name, days, false)?;
            println!("CA {name:?} written to {}", dir.display());
        }
        CertsCommand::Issue {
            ca: ca_dir,
            out,
            peer,
            role,
            tenants,
            days,
        } => {
            let role = parse_role(&role)
                .ok_or_else(|| anyhow::anyhow!("--role {role:?}: use poller, primary or mirror"))?;
            let peer_id = opha_common::wire::PeerId::new(peer.as_str())
                .map_err(|e| anyhow::anyhow!("--peer {peer:?}: {e}"))?;
            if tenants.contains(&0) {
                anyhow::bail!("--tenant 0: tenant 0 is reserved");
            }
            let spec = ca::PeerSpec {
                peer_id,
                role,
                tenants: tenants
                    .iter()
                    .map(|&t| opha_common::wire::TenantId(t))
                    .collect(),
                validity: ca::Validity::days_from_now(days),
            };
            let (issued, cert, key) = ca::issue_to_dir(&ca_dir, &out, &spec, false)?;
            println!(
                "{} ({role:?}, serial {}) written to {} and {}",
                peer,
                issued.serial(),
                cert.display(),
                key.display()
            );
        }
    }
    Ok(())
}

fn run_poller(args: PollerArgs) -> anyhow::Result<()> {
    if let Some(config) = &args.config {
        return poller::run(config, args.check);
    }
    // clap's `requires` does not hold `--check` back here: never attach when only asked to check.
    if args.check {
        anyhow::bail!("--check needs --config FILE (it validates a config file)");
    }
    // clap requires --interface without --config.
    let interface = args.interface.clone().unwrap_or_default();
    let instance = args.instance.clone().unwrap_or_else(|| interface.clone());
    let mut cfg = LoaderConfig::new(&instance);
    cfg.pin_root = args.pin_root.clone();
    cfg.max_nodes = args.max_nodes;
    cfg.max_inflight = args.max_inflight;
    let mut dp = DataPlane::load(&cfg)?;
    dp.set_prefixes(&args.prefixes)?;
    dp.set_tcp_ports(&args.tcp_ports)?;
    dp.set_ports(PortConfig {
        snmp_port: args.snmp_port,
        trap_port: args.trap_port,
        syslog_port: args.syslog_port,
        snap_len: args.snap_len,
        ..PortConfig::default()
    })?;
    dp.attach(&interface)?;
    log::info!(
        "attached to {} as instance {instance} ({} prefixes, maps in {})",
        interface,
        args.prefixes.len(),
        dp.pin_dir().display()
    );
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let mut dumps = 0u64;
    let mut next = Instant::now() + Duration::from_secs(args.interval);
    while !STOP.load(Ordering::SeqCst) {
        if Instant::now() >= next {
            if args.dump {
                print_dump(&dp, args.json)?;
            }
            dumps += 1;
            if args.count != 0 && dumps >= args.count {
                break;
            }
            next += Duration::from_secs(args.interval);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if args.detach_on_exit {
        drop(dp);
        loader::detach(&cfg, false)?;
        log::info!("detached instance {instance}");
    }
    Ok(())
}
