//! The poller's configuration file (TOML), as documented key by key in docs/configuration.md
//! and by example in examples/poller.toml.
//!
//! Loading has three steps:
//! 1. parse: TOML into these types, with `deny_unknown_fields` everywhere and per-value checks
//!    (ports, VLANs, prefixes, units); the first error names its key path and line;
//! 2. resolve: defaults that depend on other keys (instance, log directory, ingest socket) and
//!    relative paths (against the config file's directory);
//! 3. validate: rules across keys (duplicate prefixes, port clashes, budget vs segment size,
//!    non-loopback listeners, ...); every violated rule is reported, not only the first.

use std::{
    fmt, fs, io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use opha_common::{
    ports::{PortConfig, SNAP_LEN},
    wire::{PeerId, Severity},
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{
    daemons::{DaemonCheck, DaemonSpec, NMIS_DAEMONS},
    loader::{LoaderConfig, MonitoredPrefix},
};

pub mod bus;
pub mod push;
pub mod receiver;
pub mod units;
mod validate;

use units::port::Port;

/// Default address of the local ingest HTTP endpoint.
pub const DEFAULT_INGEST_HTTP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8730);
/// Default address of the Prometheus endpoint.
pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9730);

/// The whole file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollerConfig {
    /// This poller's id: the first part of every record's dedupe key. Required.
    pub poller_id: PeerId,
    /// Free text shown on the peer card (e.g. "us-central").
    #[serde(default)]
    pub region: String,
    /// The polling interface. Required.
    pub interface: String,
    /// Instance name (pins under `<kernel.pin_root>/<instance>/`); default: the interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Node inventory (CSV or JSON); optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<PathBuf>,
    /// Monitored prefixes, `[[prefix]]`. At least one.
    #[serde(default, rename = "prefix")]
    pub prefixes: Vec<PrefixConfig>,
    #[serde(default)]
    pub ports: PortsConfig,
    #[serde(default)]
    pub intervals: IntervalsConfig,
    #[serde(default)]
    pub thresholds: ThresholdsConfig,
    #[serde(default)]
    pub daemon_health: DaemonHealthConfig,
    /// Daemons to check, `[[daemon]]`; absent: the six NMIS daemons by process name;
    /// `daemon = []`: none.
    #[serde(default, rename = "daemon", skip_serializing_if = "Option::is_none")]
    pub daemons: Option<Vec<DaemonConfig>>,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub ingest: IngestConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub kernel: KernelConfig,
    /// Bus settings (certificates, batching, transport); used only with receivers.
    #[serde(default)]
    pub bus: bus::BusSection,
    /// Primaries and the mirror to stream to, `[[receiver]]`; none: the bus is off.
    #[serde(default, rename = "receiver", skip_serializing_if = "Vec::is_empty")]
    pub receivers: Vec<bus::ReceiverEntry>,
}

/// `[[prefix]]`: addresses on one VLAN that belong to one tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixConfig {
    /// Outermost VLAN id, 0 (default) for untagged.
    #[serde(default, with = "vlan")]
    pub vlan: u16,
    pub cidr: Cidr,
    #[serde(with = "tenant")]
    pub tenant: u32,
}

impl PrefixConfig {
    pub fn monitored(&self) -> MonitoredPrefix {
        MonitoredPrefix {
            vlan: self.vlan,
            addr: self.cidr.addr,
            len: self.cidr.len,
            tenant: self.tenant,
            flags: 0,
        }
    }
}

/// An IPv4 or IPv6 network, "198.18.0.0/15" or "2001:db8::/32", with no host bits set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// Checked by the same parser as `--prefix` (`loader::MonitoredPrefix`), so the command
    /// line and the file accept exactly the same networks.
    fn from_str(s: &str) -> Result<Self, String> {
        let not = |why: &str| format!("{s} is not a prefix: {why}");
        if s.contains('@') {
            return Err(not("write the VLAN in the `vlan` key, not as VLAN@"));
        }
        if s.contains('=') {
            return Err(not("write the tenant in the `tenant` key, not as =TENANT"));
        }
        let probe = format!("{s}=1");
        let p: MonitoredPrefix = probe.parse().map_err(|e: String| {
            let lead = format!("prefix {probe:?}: ");
            not(e.strip_prefix(&lead).unwrap_or(&e))
        })?;
        let masked = mask(p.addr, p.len);
        if masked != p.addr {
            return Err(format!(
                "{s} has host bits set: did you mean {masked}/{}?",
                p.len
            ));
        }
        Ok(Cidr {
            addr: p.addr,
            len: p.len,
        })
    }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `[ports]`: what the kernel programs classify.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PortsConfig {
    /// The agents' SNMP port (requests go to it, responses come from it).
    #[serde(with = "units::port")]
    pub snmp: u16,
    /// Port traps and informs arrive on.
    #[serde(with = "units::port")]
    pub trap: u16,
    /// Port syslog arrives on.
    #[serde(with = "units::port")]
    pub syslog: u16,
    /// TCP service-check ports (a SYN to one is a check request).
    pub tcp_checks: Vec<Port>,
    /// Bytes of each trap and syslog packet copied to the ring buffer, 1-512.
    pub snap_len: u32,
}

impl Default for PortsConfig {
    fn default() -> Self {
        let d = PortConfig::default();
        Self {
            snmp: d.snmp_port,
            trap: d.trap_port,
            syslog: d.syslog_port,
            tcp_checks: Vec::new(),
            snap_len: SNAP_LEN as u32,
        }
    }
}

/// `[intervals]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntervalsConfig {
    /// Length of a `NodeMetrics` interval.
    #[serde(with = "units::duration")]
    pub metrics: Duration,
    /// A request without a response after this long is a timeout (a failed poll).
    #[serde(with = "units::duration")]
    pub poll_timeout: Duration,
    /// How often the in-flight map is swept for timed-out requests.
    #[serde(with = "units::duration")]
    pub sweep: Duration,
    /// How often `PeerStatus` and `DaemonHealth` go out.
    #[serde(with = "units::duration")]
    pub heartbeat: Duration,
}

impl Default for IntervalsConfig {
    fn default() -> Self {
        Self {
            metrics: Duration::from_secs(60),
            poll_timeout: Duration::from_secs(5),
            sweep: Duration::from_secs(1),
            heartbeat: Duration::from_secs(5),
        }
    }
}

/// `[thresholds]`: when nodes change state and when alarms are raised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThresholdsConfig {
    /// Consecutive failed polls before a class, port or node is down.
    pub down_after: u32,
    /// Consecutive answered polls before it is up again.
    pub up_after: u32,
    /// `[thresholds.icmp]`; default RTT alarm above 250ms.
    pub icmp: ClassThresholds,
    /// `[thresholds.snmp]`; default RTT alarm above 1s.
    pub snmp: ClassThresholds,
    /// `[thresholds.tcp]`; default RTT alarm above 500ms.
    pub tcp: ClassThresholds,
}

impl Default for ThresholdsConfig {
    fn default() -> Self {
        Self {
            down_after: 3,
            up_after: 2,
            icmp: ClassThresholds::default(),
            snmp: ClassThresholds::default(),
            tcp: ClassThresholds::default(),
        }
    }
}

/// Default RTT alarm thresholds per class (ICMP, SNMP, TCP): an agent answering SNMP does
/// more work than a kernel answering a ping.
pub const DEFAULT_RTT: [Duration; 3] = [
    Duration::from_millis(250),
    Duration::from_millis(1000),
    Duration::from_millis(500),
];
/// Default loss alarm threshold: 20%.
pub const DEFAULT_LOSS_PPM: u32 = 200_000;

/// Alarm thresholds of one protocol class, evaluated once per metrics interval. Absent keys
/// take the class defaults (filled in by `resolve`); "off" disables an alarm.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassThresholds {
    /// Average RTT above which `RttAboveThreshold` is raised, or "off".
    #[serde(skip_serializing_if = "Option::is_none", with = "units::off_duration")]
    pub rtt: Option<Option<Duration>>,
    /// RTT at or below which it clears; default 80% of `rtt`.
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_duration")]
    pub rtt_clear: Option<Duration>,
    /// Loss above which `LossAboveThreshold` is raised ("20%", "50000ppm"), or "off".
    #[serde(skip_serializing_if = "Option::is_none", with = "units::off_ppm")]
    pub loss: Option<Option<u32>>,
    /// Loss at or below which it clears; default half of `loss`.
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_ppm")]
    pub loss_clear: Option<u32>,
    /// Intervals with fewer requests than this are not judged for loss.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_min_requests: Option<u64>,
}

impl ClassThresholds {
    /// RTT alarm threshold with the class default applied (None: off).
    pub fn rtt_or(&self, default: Duration) -> Option<Duration> {
        self.rtt.unwrap_or(Some(default))
    }

    /// Loss alarm threshold with the default applied (None: off).
    pub fn loss_ppm(&self) -> Option<u32> {
        self.loss.unwrap_or(Some(DEFAULT_LOSS_PPM))
    }

    pub fn loss_min_requests(&self) -> u64 {
        self.loss_min_requests.unwrap_or(1)
    }

    fn fill(&mut self, default_rtt: Duration) {
        self.rtt = Some(self.rtt_or(default_rtt));
        self.loss = Some(self.loss_ppm());
        self.loss_min_requests = Some(self.loss_min_requests());
    }
}

/// `[daemon_health]`: how the `[[daemon]]` list is checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonHealthConfig {
    /// Time between two checks of every daemon.
    #[serde(with = "units::duration")]
    pub interval: Duration,
    /// Consecutive "down" checks before a daemon is reported down.
    pub down_after: u32,
    /// Consecutive "up" checks before it is reported up again.
    pub up_after: u32,
    /// Bound on each command or systemctl check (per-daemon `timeout` overrides it).
    #[serde(with = "units::duration")]
    pub timeout: Duration,
    /// Directory of the process table (for tests and containers).
    pub proc_root: PathBuf,
}

impl Default for DaemonHealthConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            down_after: 2,
            up_after: 1,
            timeout: Duration::from_secs(4),
            proc_root: PathBuf::from("/proc"),
        }
    }
}

/// `[[daemon]]`: one daemon and how to check it. At most one of `process`, `cmdline`,
/// `systemd`, `command`, `shell`; none means `process = name`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub systemd: Option<String>,
    /// argv, run without a shell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// A script for `/bin/sh -c`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_duration"
    )]
    pub timeout: Option<Duration>,
    /// Severity of the down event; default "major".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
}

impl DaemonConfig {
    /// A daemon checked by process name.
    pub fn process(name: &str) -> Self {
        Self {
            name: name.to_string(),
            process: None,
            cmdline: None,
            systemd: None,
            command: None,
            shell: None,
            timeout: None,
            severity: None,
        }
    }

    /// The configured check keys, by name, for the "only one" rule.
    fn check_keys(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        for (set, key) in [
            (self.process.is_some(), "process"),
            (self.cmdline.is_some(), "cmdline"),
            (self.systemd.is_some(), "systemd"),
            (self.command.is_some(), "command"),
            (self.shell.is_some(), "shell"),
        ] {
            if set {
                keys.push(key);
            }
        }
        keys
    }

    /// The check; with several keys set (refused by `validate`) the first in the order above.
    pub fn check(&self) -> DaemonCheck {
        if let Some(p) = &self.process {
            DaemonCheck::Process(p.clone())
        } else if let Some(c) = &self.cmdline {
            DaemonCheck::Cmdline(c.clone())
        } else if let Some(u) = &self.systemd {
            DaemonCheck::Systemd(u.clone())
        } else if let Some(argv) = &self.command {
            DaemonCheck::Command(argv.clone())
        } else if let Some(s) = &self.shell {
            DaemonCheck::Shell(s.clone())
        } else {
            DaemonCheck::Process(self.name.clone())
        }
    }
}

/// `[log]`: the replay log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// Directory of the segments; default `/var/lib/opha/<instance>/log`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Disk budget.
    #[serde(with = "units::bytes")]
    pub budget: u64,
    /// Segment size: the unit of deletion.
    #[serde(with = "units::bytes")]
    pub segment: u64,
    /// Usage (percent of the budget) that raises the usage alarm.
    pub warn_percent: u8,
    /// While the budget is full, one metric interval in this many is kept.
    pub thin_keep_every: u32,
    /// Longest wait for more records to share an fsync.
    #[serde(with = "units::duration")]
    pub commit_window: Duration,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            dir: None,
            budget: 1 << 30,
            segment: 64 << 20,
            warn_percent: 80,
            thin_keep_every: 10,
            commit_window: Duration::ZERO,
        }
    }
}

/// Where the ingest Unix socket is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SocketSetting {
    Off,
    At(PathBuf),
}

impl<'de> Deserialize<'de> for SocketSetting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match units::off_path::deserialize(d)? {
            None => SocketSetting::Off,
            Some(p) => SocketSetting::At(p),
        })
    }
}

impl Serialize for SocketSetting {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            SocketSetting::Off => s.serialize_str("off"),
            SocketSetting::At(p) => s.serialize_str(&p.to_string_lossy()),
        }
    }
}

/// `[ingest]`: local ingest of events and service states from NMIS and its checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// HTTP listen address, or "off".
    #[serde(with = "units::listen")]
    pub http: Option<SocketAddr>,
    /// Unix socket path, or "off"; default `/run/opha/<instance>/ingest.sock`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unix: Option<SocketSetting>,
    /// Allow `http` on a non-loopback address. Ingest has no authentication of its own.
    pub allow_remote: bool,
    /// Largest request body accepted.
    #[serde(with = "units::bytes")]
    pub max_body: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            http: Some(DEFAULT_INGEST_HTTP),
            unix: None,
            allow_remote: false,
            max_body: 1 << 20,
        }
    }
}

/// `[metrics]`: the sidecar's own Prometheus endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Listen address, or "off".
    #[serde(with = "units::listen")]
    pub listen: Option<SocketAddr>,
    /// Allow a non-loopback listen address.
    pub allow_remote: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: Some(DEFAULT_METRICS_LISTEN),
            allow_remote: false,
        }
    }
}

/// `[kernel]`: bounds of the kernel maps and where they are pinned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KernelConfig {
    pub max_nodes: u32,
    pub max_inflight: u32,
    pub max_prefixes: u32,
    /// Ring buffer for traps and syslog: a power of two, a multiple of the page size.
    #[serde(with = "units::bytes")]
    pub ringbuf: u64,
    pub pin_root: PathBuf,
}

impl Default for KernelConfig {
    fn default() -> Self {
        let d = LoaderConfig::new("default");
        Self {
            max_nodes: d.max_nodes,
            max_inflight: d.max_inflight,
            max_prefixes: d.max_prefixes,
            ringbuf: u64::from(d.ringbuf_bytes),
            pin_root: d.pin_root,
        }
    }
}

/// One thing wrong with a config: the key path, what is wrong, and where when known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, `prefix[2].cidr`; empty for TOML syntax errors.
    pub key: String,
    pub message: String,
    /// 1-based line and column.
    pub at: Option<(usize, usize)>,
}

impl Problem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
            at: None,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.key.is_empty(), self.at) {
            (true, Some((l, c))) => write!(f, "line {l}, column {c}: {}", self.message),
            (true, None) => f.write_str(&self.message),
            (false, Some((l, c))) => {
                write!(f, "{}: {} (line {l}, column {c})", self.key, self.message)
            }
            (false, None) => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {error}")]
    Read { file: String, error: io::Error },
    #[error("{file}: {}", render(problems))]
    Invalid {
        file: String,
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The problems found (empty for a read error).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { problems, .. } => problems,
        }
    }
}

fn render(problems: &[Problem]) -> String {
    match problems {
        [one] => one.to_string(),
        many => {
            let mut s = format!("{} problems:", many.len());
            for p in many {
                s.push_str("\n  ");
                s.push_str(&p.to_string());
            }
            s
        }
    }
}

/// A TOML config file type (the poller's, a receiver's): it fills in derived values and checks
/// cross-field rules; reading, key-path errors and the order of the steps are shared.
pub trait ConfigFile: serde::de::DeserializeOwned {
    /// Fills in defaults derived from other keys and makes relative paths absolute.
    fn resolve(&mut self, base_dir: &Path);
    /// Every cross-field rule that is broken.
    fn validate(&self) -> Vec<Problem>;
}

/// Reads, resolves and validates a config file; relative paths in it are relative to the file's
/// directory.
pub fn load_file<T: ConfigFile>(path: &Path) -> Result<T, ConfigError> {
    let file = path.display().to_string();
    let text = fs::read_to_string(path).map_err(|error| ConfigError::Read {
        file: file.clone(),
        error,
    })?;
    // Absolute, so that `--config examples/poller.toml` resolves its relative paths to
    // absolute ones too (the rules require absolute paths after resolving).
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let base = std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf());
    from_toml_text(&text, &file, &base)
}

/// Parses, resolves (relative paths against `base_dir`) and validates. `file` names the source
/// in errors.
pub fn from_toml_text<T: ConfigFile>(
    text: &str,
    file: &str,
    base_dir: &Path,
) -> Result<T, ConfigError> {
    let invalid = |problems| ConfigError::Invalid {
        file: file.to_string(),
        problems,
    };
    let mut cfg: T = parse_toml(text).map_err(|p| invalid(vec![p]))?;
    cfg.resolve(base_dir);
    let problems = cfg.validate();
    if problems.is_empty() {
        Ok(cfg)
    } else {
        Err(invalid(problems))
    }
}

/// TOML into the types, per-value checks only. The error names the key path.
pub fn parse_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, Problem> {
    let de = toml::Deserializer::parse(text).map_err(|e| toml_problem(text, String::new(), &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        toml_problem(text, path, e.inner())
    })
}

impl ConfigFile for PollerConfig {
    fn resolve(&mut self, base_dir: &Path) {
        PollerConfig::resolve(self, base_dir)
    }
    fn validate(&self) -> Vec<Problem> {
        PollerConfig::validate(self)
    }
}

impl PollerConfig {
    /// Reads, resolves and validates a config file. Relative paths in it are relative to the
    /// file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        load_file(path)
    }

    /// Parses, resolves (relative paths against `base_dir`) and validates. `file` names the
    /// source in errors.
    pub fn from_toml(text: &str, file: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        from_toml_text(text, file, base_dir)
    }

    /// Step 1 only: TOML into the types, per-value checks. The error names the key path.
    pub fn parse(text: &str) -> Result<Self, Problem> {
        parse_toml(text)
    }

    /// Step 2: fills in defaults derived from other keys and makes paths absolute.
    pub fn resolve(&mut self, base_dir: &Path) {
        let instance = self.instance().to_string();
        self.instance = Some(instance.clone());
        let abs = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base_dir.join(p)
            }
        };
        self.inventory = self.inventory.as_deref().map(abs);
        self.log.dir = Some(match &self.log.dir {
            Some(d) => abs(d),
            None => PathBuf::from("/var/lib/opha").join(&instance).join("log"),
        });
        self.ingest.unix = Some(match &self.ingest.unix {
            Some(SocketSetting::At(p)) => SocketSetting::At(abs(p)),
            Some(SocketSetting::Off) => SocketSetting::Off,
            None => SocketSetting::At(
                PathBuf::from("/run/opha")
                    .join(&instance)
                    .join("ingest.sock"),
            ),
        });
        let t = &mut self.thresholds;
        for (class, rtt) in [&mut t.icmp, &mut t.snmp, &mut t.tcp]
            .into_iter()
            .zip(DEFAULT_RTT)
        {
            class.fill(rtt);
        }
        bus::resolve(self, base_dir);
        if self.daemons.is_none() {
            self.daemons = Some(
                NMIS_DAEMONS
                    .iter()
                    .map(|n| DaemonConfig::process(n))
                    .collect(),
            );
        }
    }

    /// Step 3: rules across keys. Empty when the config is good.
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = validate::validate(self);
        bus::validate(self, &mut p);
        p
    }

    /// The effective config as TOML (after `resolve`, every default spelled out).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }

    /// The instance name: `instance`, else the interface.
    pub fn instance(&self) -> &str {
        self.instance.as_deref().unwrap_or(&self.interface)
    }

    /// The replay log's directory.
    pub fn log_dir(&self) -> PathBuf {
        self.log.dir.clone().unwrap_or_else(|| {
            PathBuf::from("/var/lib/opha")
                .join(self.instance())
                .join("log")
        })
    }

    /// The ingest socket path; None when "off".
    pub fn ingest_socket(&self) -> Option<PathBuf> {
        match &self.ingest.unix {
            Some(SocketSetting::At(p)) => Some(p.clone()),
            Some(SocketSetting::Off) => None,
            None => Some(
                PathBuf::from("/run/opha")
                    .join(self.instance())
                    .join("ingest.sock"),
            ),
        }
    }

    pub fn monitored_prefixes(&self) -> Vec<MonitoredPrefix> {
        self.prefixes.iter().map(PrefixConfig::monitored).collect()
    }

    pub fn tcp_ports(&self) -> Vec<u16> {
        self.ports.tcp_checks.iter().map(|p| p.0).collect()
    }

    /// The loader's settings: instance, pin root and map bounds.
    pub fn loader_config(&self) -> LoaderConfig {
        let mut c = LoaderConfig::new(self.instance());
        c.pin_root = self.kernel.pin_root.clone();
        c.max_nodes = self.kernel.max_nodes;
        c.max_inflight = self.kernel.max_inflight;
        c.max_prefixes = self.kernel.max_prefixes;
        // validate() bounds it far below u32::MAX.
        c.ringbuf_bytes = u32::try_from(self.kernel.ringbuf).unwrap_or(u32::MAX);
        c
    }

    /// The kernel port configuration (marked configured).
    pub fn port_config(&self) -> PortConfig {
        PortConfig {
            snmp_port: self.ports.snmp,
            trap_port: self.ports.trap,
            syslog_port: self.ports.syslog,
            snap_len: self.ports.snap_len,
            ..PortConfig::default()
        }
    }

    /// The replay log's settings.
    pub fn log_config(&self) -> opha_log::LogConfig {
        let mut c = opha_log::LogConfig::new(self.log_dir());
        c.segment_bytes = self.log.segment;
        c.commit_window = self.log.commit_window;
        c.budget = opha_log::BudgetConfig::new(self.log.budget);
        c.budget.warn_percent = u64::from(self.log.warn_percent);
        c.budget.thin_keep_every = u64::from(self.log.thin_keep_every);
        c
    }

    /// The aggregation core's settings: intervals, hysteresis, per-class alarm thresholds.
    pub fn aggregate_config(&self) -> crate::aggregate::AggConfig {
        let ms32 = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        let us32 = |d: Duration| u32::try_from(d.as_micros()).unwrap_or(u32::MAX);
        let t = &self.thresholds;
        let class = |c: &ClassThresholds, default_rtt: Duration| crate::aggregate::Thresholds {
            rtt_above_us: c.rtt_or(default_rtt).map(us32),
            rtt_below_us: c.rtt_clear.map(us32),
            loss_above_ppm: c.loss_ppm(),
            loss_below_ppm: c.loss_clear,
            loss_min_requests: c.loss_min_requests(),
        };
        crate::aggregate::AggConfig {
            poller: self.poller_id.clone(),
            interval_ms: ms32(self.intervals.metrics),
            poll_timeout_ms: ms32(self.intervals.poll_timeout),
            down_after: t.down_after,
            up_after: t.up_after,
            tcp_ports: self.tcp_ports(),
            icmp: class(&t.icmp, DEFAULT_RTT[0]),
            snmp: class(&t.snmp, DEFAULT_RTT[1]),
            tcp: class(&t.tcp, DEFAULT_RTT[2]),
            ..crate::aggregate::AggConfig::default()
        }
    }

    /// The daemon tracker's debounce and heartbeat settings.
    pub fn tracker_config(&self) -> crate::daemons::TrackerConfig {
        crate::daemons::TrackerConfig {
            down_after: self.daemon_health.down_after,
            up_after: self.daemon_health.up_after,
            heartbeat_ms: u64::try_from(self.intervals.heartbeat.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// The daemons to check, with defaults applied.
    pub fn daemon_specs(&self) -> Vec<DaemonSpec> {
        let list: Vec<DaemonConfig> = match &self.daemons {
            Some(d) => d.clone(),
            None => NMIS_DAEMONS
                .iter()
                .map(|n| DaemonConfig::process(n))
                .collect(),
        };
        list.iter()
            .map(|d| DaemonSpec {
                name: d.name.clone(),
                check: d.check(),
                timeout: d.timeout.unwrap_or(self.daemon_health.timeout),
                severity: d.severity.unwrap_or(Severity::Major),
            })
            .collect()
    }
}

/// A serde/TOML error as a problem: the key path, the message, and the line when known.
fn toml_problem(text: &str, mut key: String, e: &toml::de::Error) -> Problem {
    let mut message = e.message().trim().replace('\n', "; ");
    // serde reports unknown and missing keys at their parent: name the key itself.
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((field, tail)) = rest.split_once('`') {
            // serde_path_to_error has usually entered the key already.
            if key != field && !key.ends_with(&format!(".{field}")) {
                key = join_key(&key, field);
            }
            let known = tail
                .strip_prefix(", expected one of ")
                .or_else(|| tail.strip_prefix(", expected "))
                .map(|k| k.replace('`', ""));
            message = match known {
                Some(k) => format!("unknown key (known keys here: {k})"),
                None => "unknown key".to_string(),
            };
        }
    } else if let Some(rest) = message.strip_prefix("missing field `")
        && let Some((field, _)) = rest.split_once('`')
    {
        key = join_key(&key, field);
        message = "is required".to_string();
    }
    Problem {
        key,
        message,
        at: e.span().map(|s| line_col(text, s.start)),
    }
}

fn join_key(parent: &str, field: &str) -> String {
    if parent.is_empty() {
        field.to_string()
    } else {
        format!("{parent}.{field}")
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

/// `Option<Duration>` with units, for optional keys.
mod opt_duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        units::duration::deserialize(d).map(Some)
    }

    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => units::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }
}

/// `Option<u32>` ratio, for optional keys.
mod opt_ppm {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        units::ppm::deserialize(d).map(Some)
    }

    pub fn serialize<S: Serializer>(v: &Option<u32>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(p) => units::ppm::serialize(p, s),
            None => s.serialize_none(),
        }
    }
}

/// Integers with a range and a message naming it.
struct IntInRange {
    min: i64,
    max: i64,
    what: &'static str,
}

impl serde::de::Visitor<'_> for IntInRange {
    type Value = i64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}-{})", self.what, self.min, self.max)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<i64, E> {
        if (self.min..=self.max).contains(&v) {
            Ok(v)
        } else {
            Err(E::custom(format!(
                "{v} is not a {}: use {}-{}",
                self.what, self.min, self.max
            )))
        }
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<i64, E> {
        self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

mod vlan {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
        let v = d.deserialize_any(IntInRange {
            min: 0,
            max: 4094,
            what: "VLAN id (0 = untagged)",
        })?;
        Ok(v as u16)
    }

    pub fn serialize<S: Serializer>(v: &u16, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(*v)
    }
}

mod tenant {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let v = d.deserialize_any(IntInRange {
            min: 1,
            max: i64::from(u32::MAX),
            what: "tenant (0 is reserved)",
        })?;
        Ok(v as u32)
    }

    pub fn serialize<S: Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(*v)
    }
}
