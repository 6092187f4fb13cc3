//! The harness of `opha-bench bus`: a scratch directory on the build disk, a CA with the
//! peers' certificates, `opha-sidecar primary --config` processes, in-process pollers (the
//! real bus sender, `opha_sidecar::poller::bus`, on a real replay log) and the records they
//! carry.
//!
//! Every process is started in its own process group with PDEATHSIG, and killed (-9) on Drop;
//! the scratch directory is removed on Drop.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use opha_common::wire::{
    ClassMetrics, Event, EventId, EventKind, NodeMetrics, NodeRef, PeerId, PeerRole, PollClass,
    Record, RttStats, Severity, Subject, TenantId,
};
use opha_identity::ca;
use opha_log::{Log, RecordClass};
use opha_sidecar::config::PollerConfig;
use opha_sidecar::ingest::sink::encode_record;
use opha_sidecar::poller::Shutdown;
use opha_sidecar::poller::bus::{self, Bus};

use crate::host;

/// The one tenant every poller of the benchmark sends for.
pub const TENANT: u32 = 1;

/// A directory under `target/bench/` (the build disk, so fsync costs what it costs on a real
/// disk, unlike a tmpfs), removed on Drop.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Result<Self> {
        let path = host::target_dir()
            .join("bench")
            .join(format!("tmp-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A CA (`<root>/ca`) and the peers' certificates (`<root>/certs/<peer>.{pem,key}`).
pub struct Pki {
    root: PathBuf,
    ca: ca::Ca,
}

impl Pki {
    pub fn new(root: &Path) -> Result<Self> {
        let ca = ca::init_ca(&root.join("ca"), "bench CA", 1, true)
            .map_err(|e| anyhow!("creating the CA: {e}"))?;
        Ok(Self {
            root: root.to_path_buf(),
            ca,
        })
    }

    pub fn issue(&self, peer: &str, role: PeerRole) -> Result<()> {
        let tenants = if role == PeerRole::Poller {
            vec![TenantId(TENANT)]
        } else {
            Vec::new()
        };
        let spec = ca::PeerSpec {
            peer_id: PeerId::new(peer).map_err(|e| anyhow!("peer id {peer}: {e}"))?,
            role,
            tenants,
            validity: ca::Validity::days_from_now(1),
        };
        self.ca
            .issue(&spec)
            .map_err(|e| anyhow!("issuing {peer}: {e}"))?
            .save(&self.root.join("certs"), true)
            .map_err(|e| anyhow!("saving {peer}: {e}"))?;
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// A port free on `ip` right now (bound and released; the OS does not hand it out again at
/// once).
pub fn free_udp_port(ip: Ipv4Addr) -> Result<u16> {
    Ok(UdpSocket::bind((ip, 0))?.local_addr()?.port())
}

pub fn free_tcp_port(ip: Ipv4Addr) -> Result<u16> {
    Ok(TcpListener::bind((ip, 0))?.local_addr()?.port())
}

/// A command in its own process group that gets SIGKILL when the spawning thread exits,
/// optionally in the network namespace at `netns` (a `/var/run/netns/<name>` path).
pub fn command(program: &Path, netns: Option<&Path>) -> Result<Command> {
    let mut cmd = Command::new(program);
    cmd.process_group(0);
    let ns = netns
        .map(|p| fs::File::open(p).with_context(|| format!("opening {}", p.display())))
        .transpose()?;
    // SAFETY: setns(2) and prctl(2) are async-signal-safe; nothing is allocated; the file is
    // owned by the closure, so its fd stays open until exec.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(f) = &ns
                && libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// A long-lived child process with its output kept (for error messages). Drop kills it.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    output: Arc<Mutex<String>>,
}

impl Proc {
    /// Spawns `cmd` and waits (at most 30 s) until its output contains `ready`.
    pub fn spawn(name: &str, mut cmd: Command, ready: Option<&str>) -> Result<Self> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let output = Arc::new(Mutex::new(String::new()));
        let pipes: [Option<Box<dyn std::io::Read + Send>>; 2] = [
            child.stdout.take().map(|p| Box::new(p) as _),
            child.stderr.take().map(|p| Box::new(p) as _),
        ];
        for pipe in pipes.into_iter().flatten() {
            let out = Arc::clone(&output);
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
                    // Bounded: keep the start and the most recent output.
                    if o.len() > 1 << 20 {
                        o.truncate(64 << 10);
                        o.push_str("\n[...]\n");
                    }
                    o.push_str(&line);
                    o.push('\n');
                }
            });
        }
        let mut p = Self {
            name: name.to_string(),
            child: Some(child),
            output,
        };
        if let Some(ready) = ready {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !p.output().contains(ready) {
                if let Some(c) = p.child.as_mut()
                    && let Some(status) = c.try_wait()?
                {
                    thread::sleep(Duration::from_millis(100));
                    bail!("{name} exited ({status}) at start:\n{}", p.output());
                }
                ensure!(
                    Instant::now() < deadline,
                    "{name} not ready within 30 s:\n{}",
                    p.output()
                );
                thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(p)
    }

    pub fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// An `opha-sidecar primary --config` process.
pub struct Primary {
    pub name: String,
    pub listen: SocketAddr,
    pub metrics: Option<SocketAddr>,
    config: PathBuf,
    netns: Option<PathBuf>,
    proc: Option<Proc>,
}

impl Primary {
    /// Writes `<root>/<name>.toml` (store `<root>/store-<name>`, every poller of `pollers`
    /// registered for [`TENANT`]) and starts the process. The transport settings are the
    /// defaults, as a deployment has them.
    pub fn start(
        root: &Path,
        name: &str,
        listen: SocketAddr,
        metrics: Option<SocketAddr>,
        pollers: &[String],
        netns: Option<&Path>,
    ) -> Result<Self> {
        Self::start_with(root, name, listen, metrics, pollers, netns, "")
    }

    /// [`Primary::start`] with `extra` appended to the config file (whole tables, e.g. a
    /// `[transport]` section).
    pub fn start_with(
        root: &Path,
        name: &str,
        listen: SocketAddr,
        metrics: Option<SocketAddr>,
        pollers: &[String],
        netns: Option<&Path>,
        extra: &str,
    ) -> Result<Self> {
        let mut text = format!(
            r#"peer_id = "{name}"
role = "primary"
listen = "{listen}"
[tls]
certificate = "certs/{name}.pem"
key = "certs/{name}.key"
ca = "ca/ca.pem"
[store]
dir = "store-{name}"
[metrics]
listen = "{metrics}"
"#,
            metrics = metrics.map_or("off".to_string(), |m| m.to_string())
        );
        for p in pollers {
            text.push_str(&format!("[[poller]]\nid = \"{p}\"\ntenants = [{TENANT}]\n"));
        }
        text.push_str(extra);
        let config = root.join(format!("{name}.toml"));
        fs::write(&config, text)?;
        let mut p = Self {
            name: name.to_string(),
            listen,
            metrics,
            config,
            netns: netns.map(Path::to_path_buf),
            proc: None,
        };
        p.spawn()?;
        Ok(p)
    }

    /// (Re)starts the process and waits until it listens.
    pub fn spawn(&mut self) -> Result<()> {
        let bin = opha_tests::netns::sidecar_binary()?;
        let mut cmd = command(&bin, self.netns.as_deref())?;
        cmd.arg("primary")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "warn,opha_sidecar::receiver=info");
        self.proc = Some(Proc::spawn(&self.name, cmd, Some("listening on"))?);
        Ok(())
    }

    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    pub fn output(&self) -> String {
        self.proc.as_ref().map(Proc::output).unwrap_or_default()
    }

    /// `GET /metrics` (None when it has no endpoint or it does not answer).
    pub fn scrape(&self) -> Option<String> {
        http_get(self.metrics?, "/metrics").ok()
    }
}

/// A plain HTTP/1.0 GET on loopback; the body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP header end"))?;
    ensure!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "{head}"
    );
    Ok(body.to_string())
}

/// The value of the series `name{labels}` in Prometheus text (labels as written, e.g.
/// `poller="p1"`), if present.
pub fn metric(text: &str, name: &str, label: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let rest = rest.strip_prefix('{')?;
        let (labels, value) = rest.split_once("} ")?;
        labels
            .split(',')
            .any(|x| x == label)
            .then(|| value.trim().parse().ok())?
    })
}

/// One receiver of a poller: peer id, role ("primary"/"mirror"), address.
pub struct Receiver {
    pub peer: String,
    pub address: SocketAddr,
}

/// A poller in this process: its config, its replay log and its running bus.
pub struct Poller {
    pub id: String,
    pub cfg: PollerConfig,
    pub log: Arc<Log>,
    bus: Option<(Bus, Shutdown)>,
}

impl Poller {
    /// Writes its config under `<root>/<id>/` (log, epoch file there) with `receivers` as
    /// primaries in the order given, and opens its log. `bus_extra`: more `[bus]` keys.
    pub fn open(root: &Path, id: &str, receivers: &[Receiver], bus_extra: &str) -> Result<Self> {
        let dir = root.join(id);
        fs::create_dir_all(&dir)?;
        let mut text = format!(
            r#"poller_id = "{id}"
interface = "lo"
instance = "bench-{id}"
daemon = []
[[prefix]]
cidr = "198.18.0.0/15"
tenant = {TENANT}
[log]
dir = "{log}"
budget = "2GiB"
[ingest]
http = "off"
unix = "off"
[metrics]
listen = "off"
[bus]
cert = "{root}/certs/{id}.pem"
key = "{root}/certs/{id}.key"
ca = "{root}/ca/ca.pem"
{bus_extra}
"#,
            log = dir.join("log").display(),
            root = root.display(),
        );
        for r in receivers {
            text.push_str(&format!(
                "[[receiver]]\npeer = \"{}\"\nrole = \"primary\"\naddress = \"{}\"\n",
                r.peer, r.address
            ));
        }
        let cfg = PollerConfig::from_toml(&text, "poller.toml", &dir)
            .map_err(|e| anyhow!("poller config of {id}: {e}\n{text}"))?;
        let log = Arc::new(
            Log::open(cfg.log_config()).map_err(|e| anyhow!("opening the log of {id}: {e}"))?,
        );
        Ok(Self {
            id: id.to_string(),
            cfg,
            log,
            bus: None,
        })
    }

    /// Starts the bus on `rt`. Blocking (files): call from a thread that is not one of the
    /// runtime's workers.
    pub fn start(&mut self, rt: &tokio::runtime::Handle) -> Result<()> {
        let stop = Shutdown::new();
        let b = bus::start(&self.cfg, self.log.clone(), stop.clone(), rt)?
            .ok_or_else(|| anyhow!("no receiver configured"))?;
        self.bus = Some((b, stop));
        Ok(())
    }

    pub fn status(&self) -> &bus::BusStatus {
        match &self.bus {
            Some((b, _)) => &b.status,
            None => unreachable!("the bus is started before its status is read"),
        }
    }

    pub fn link(&self, i: usize) -> &bus::LinkStatus {
        &self.status().links[i]
    }

    /// Stops the bus and waits (at most 10 s) for its tasks.
    pub fn stop(&mut self, rt: &tokio::runtime::Runtime) {
        if let Some((b, stop)) = self.bus.take() {
            stop.trigger();
            rt.block_on(async {
                let _ = tokio::time::timeout(Duration::from_secs(10), b.join()).await;
            });
        }
    }

    /// Submits `payloads` (as one class) without waiting; returns the last sequence number.
    pub fn submit(&self, class: RecordClass, payloads: &[Vec<u8>]) -> Result<u64> {
        let mut out = Vec::with_capacity(payloads.len());
        self.log
            .submit_batch(payloads.iter().map(|p| (class, p.as_slice())), &mut out)
            .map_err(|e| anyhow!("appending: {e}"))?;
        let mut last = None;
        for s in &out {
            match s {
                opha_log::Submitted::Queued(t) => last = Some(t.seq()),
                opha_log::Submitted::Thinned => bail!("the log thinned a record (budget)"),
            }
        }
        last.ok_or_else(|| anyhow!("nothing submitted"))
    }

    /// Appends `payloads` and waits until they are durable in the log.
    pub fn append(&self, class: RecordClass, payloads: &[Vec<u8>]) -> Result<u64> {
        let mut out = Vec::with_capacity(payloads.len());
        self.log
            .submit_batch(payloads.iter().map(|p| (class, p.as_slice())), &mut out)
            .map_err(|e| anyhow!("appending: {e}"))?;
        self.log
            .wait_all(&out)
            .map_err(|e| anyhow!("appending: {e}"))?;
        match out.last() {
            Some(opha_log::Submitted::Queued(t)) => Ok(t.seq()),
            _ => bail!("the last record was not queued"),
        }
    }
}

/// Waits until `f` holds, polling every `every`; false on timeout.
pub fn wait_until(timeout: Duration, every: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(every);
    }
}

// ---------------------------------------------------------------------------------------------
// Records.

/// Size of the benchmark's fixed records, as the issue asks.
pub const RECORD_BYTES: usize = 100;

const T0_MS: u64 = 1_790_000_000_000;

/// The address of node `i` of a 2,000-node site (198.18.0.0/15).
pub fn node_addr(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, (i / 250) as u8, (i % 250) as u8 + 1))
}

/// Record `n` as exactly [`RECORD_BYTES`] bytes of encoded `Record` (an event about a node,
/// its details padded), so the primary decodes and stores it like any other.
pub fn record_100(n: u64) -> Vec<u8> {
    let mut pad = 0usize;
    loop {
        let r = Record::Event(Event {
            id: EventId::from_u128(u128::from(n) + 1),
            time_ms: T0_MS + n,
            tenant: TenantId(TENANT),
            subject: Subject::Node(NodeRef::new(0, node_addr((n % 2000) as u32), None)),
            kind: EventKind::NodeDown,
            severity: Severity::Major,
            details: format!("bench {n:08} {}", "x".repeat(pad)),
        });
        let bytes = encode_record(&r).unwrap_or_default();
        match bytes.len().cmp(&RECORD_BYTES) {
            std::cmp::Ordering::Equal => return bytes,
            std::cmp::Ordering::Less => pad += RECORD_BYTES - bytes.len(),
            std::cmp::Ordering::Greater if pad > 0 => pad -= 1,
            std::cmp::Ordering::Greater => return bytes,
        }
    }
}

/// A small deterministic generator (xorshift), so the realistic records are the same in
/// every run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

fn class_metrics(rng: &mut Rng, requests: u64, base_rtt_us: u32, frame: u64) -> ClassMetrics {
    // Most nodes answer everything; a few lose some.
    let lost = if rng.below(50) == 0 {
        rng.below(requests + 1)
    } else {
        0
    };
    let responses = requests - lost;
    let rtt = (responses > 0).then(|| {
        let avg = base_rtt_us + rng.below(u64::from(base_rtt_us / 2) + 1) as u32;
        RttStats {
            samples: responses,
            min_us: avg * 3 / 4,
            avg_us: avg,
            max_us: avg * 2 + rng.below(1000) as u32,
            p50_us: avg,
            p95_us: avg * 3 / 2,
            p99_us: avg * 2,
        }
    });
    ClassMetrics {
        requests,
        responses,
        timeouts: lost,
        loss_ppm: ClassMetrics::ppm_from_ratio(lost as f64 / requests.max(1) as f64),
        errors: u64::from(rng.below(200) == 0),
        bytes_in: responses * (frame + rng.below(40)),
        bytes_out: requests * frame,
        rtt,
    }
}

/// One node's metrics for the 60 s interval `interval` as the poller's aggregation writes
/// them: ICMP and a TCP check every interval, SNMP on most nodes.
pub fn node_metrics(rng: &mut Rng, node: u32, interval: u64) -> Record {
    let snmp = if node.is_multiple_of(5) {
        ClassMetrics::default()
    } else {
        class_metrics(rng, 12, 2_500, 180)
    };
    Record::NodeMetrics(NodeMetrics {
        node: NodeRef::new(0, node_addr(node), None),
        tenant: TenantId(TENANT),
        interval_start_ms: T0_MS + interval * 60_000,
        interval_ms: 60_000,
        icmp: class_metrics(rng, 60, 800, 98),
        snmp,
        tcp: class_metrics(rng, 1, 1_200, 74),
    })
}

/// A realistic event: node and SNMP up/down, service ports, RTT and loss thresholds.
pub fn event(rng: &mut Rng, n: u64, interval: u64) -> Record {
    let node = rng.below(2000) as u32;
    let (kind, severity, details) = match rng.below(6) {
        0 => (
            EventKind::NodeDown,
            Severity::Major,
            "no ICMP echo reply for 3 intervals".to_string(),
        ),
        1 => (
            EventKind::NodeUp,
            Severity::Info,
            "ICMP echo replies again".to_string(),
        ),
        2 => (
            EventKind::SnmpDown,
            Severity::Minor,
            "SNMP agent stopped answering".to_string(),
        ),
        3 => (
            EventKind::ServicePortDown { port: 22 },
            Severity::Minor,
            "TCP 22: connection refused (RST)".to_string(),
        ),
        4 => (
            EventKind::RttAboveThreshold {
                class: PollClass::Icmp,
                rtt_us: 150_000 + rng.below(50_000) as u32,
                threshold_us: 100_000,
            },
            Severity::Warning,
            "ICMP RTT above threshold".to_string(),
        ),
        _ => (
            EventKind::LossAboveThreshold {
                class: PollClass::Snmp,
                loss_ppm: 200_000 + rng.below(300_000) as u32,
                threshold_ppm: 100_000,
            },
            Severity::Warning,
            "SNMP loss above threshold".to_string(),
        ),
    };
    Record::Event(Event {
        id: EventId::from_u128((u128::from(interval) << 64) | u128::from(n) | (1 << 100)),
        time_ms: T0_MS + interval * 60_000 + rng.below(60_000),
        tenant: TenantId(TENANT),
        subject: Subject::Node(NodeRef::new(0, node_addr(node), None)),
        kind,
        severity,
        details,
    })
}

pub fn encode(r: &Record) -> Vec<u8> {
    encode_record(r).unwrap_or_default()
}

pub fn class_of(r: &Record) -> RecordClass {
    match r {
        Record::NodeMetrics(_) => RecordClass::Metric,
        _ => RecordClass::Event,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_records_are_100_bytes_and_decode() {
        for n in [0, 1, 99, 123_456, 9_999_999] {
            let r = record_100(n);
            assert_eq!(r.len(), RECORD_BYTES, "record {n}");
            opha_sidecar::ingest::sink::decode_record(&r).unwrap();
        }
    }

    #[test]
    fn metric_lookup() {
        let t = "# HELP x\nopha_receiver_acting{poller=\"p1\"} 1\nopha_receiver_acting{poller=\"p2\"} 0\n";
        assert_eq!(
            metric(t, "opha_receiver_acting", "poller=\"p2\""),
            Some(0.0)
        );
        assert_eq!(
            metric(t, "opha_receiver_acting", "poller=\"p1\""),
            Some(1.0)
        );
        assert_eq!(metric(t, "opha_receiver_acting", "poller=\"p3\""), None);
    }
}
