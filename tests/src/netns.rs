//! Test hosts in network namespaces: namespaces, veth pairs, a userspace delay line (the CI
//! kernel has no `sch_netem`), a whole poller site, real `snmpd`, the `opha-sidecar` binary and
//! the real polling tools (`fping`, `snmpget`, `snmpbulkwalk`) with what they report.
//!
//! ```ignore
//! let site = Site::new(&SiteConfig::new("rt", 500, 4))?; // poller <-> wan <-> devices
//! let _snmpd = Snmpd::start(&site.devices, &site.v6)?;
//! let sidecar = Sidecar::start(&site.poller, &site.poller_if, &unique_instance("rt"))?;
//! let tools = Tools::new(&site.poller)?;
//! let tally = tools.fping(&site.nodes(), 3, &FpingOpts::default())?;
//! assert!(tally.mismatches(&sidecar.dataplane()?.nodes()?).is_empty());
//! ```
//!
//! Every guard cleans up on Drop, also while a failing test unwinds: processes are killed,
//! namespaces (and with them their veths) deleted, pinned maps and links removed.
//! Addresses come only from 198.18.0.0/15 and 2001:db8::/32.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BTreeSet, BinaryHeap},
    ffi::OsStr,
    fmt::Write as _,
    fs,
    io::{self, BufRead as _, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::{
            net::UnixStream,
            process::{CommandExt as _, ExitStatusExt as _},
        },
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use opha_common::node::ProtoClass;
use opha_common::wire::{Event, Record};
use opha_sidecar::loader::{self, DataPlane, LoaderConfig, NodeSnapshot};

/// Where `ip netns add` puts its namespace files.
pub const NETNS_DIR: &str = "/var/run/netns";

/// The monitored prefixes every site uses (tenant 1).
pub const SITE_PREFIXES: [&str; 2] = ["198.18.0.0/15=1", "2001:db8::/32=1"];

/// Poller and devices ends of the site's link (the devices end is the poller's next hop).
pub const POLLER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const DEVICES_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const POLLER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1);
pub const DEVICES_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 2);

/// Fixed, locally administered MACs of the two site ends, so neighbours can be permanent.
const POLLER_MAC: &str = "02:6f:70:00:00:01";
const DEVICES_MAC: &str = "02:6f:70:00:00:02";

/// Frame overhead the kernel counts on top of a UDP payload / ICMP echo data (`skb->len` at TC
/// includes the Ethernet header): Ethernet 14 + IPv4 20 / IPv6 40 + UDP or ICMP header 8.
pub const V4_OVERHEAD: u64 = 14 + 20 + 8;
pub const V6_OVERHEAD: u64 = 14 + 40 + 8;

/// ICMP echo data bytes fping sends (`-b`).
pub const FPING_DATA: u64 = 56;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// `<prefix><pid hex><n hex>`: unique per process and call, short enough for interface names.
pub(crate) fn unique_base(prefix: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:x}{n:x}", std::process::id())
}

/// Finds a system tool in PATH or in the sbin directories (PATH may lack them outside a login
/// shell).
pub fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(
        ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .map(PathBuf::from),
    );
    for dir in dirs {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from(name)
}

/// Runs a command to completion and fails with its output when it fails.
fn run_checked(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Runs a command with its output captured and kills it if it is still running after `limit`,
/// so that no tool can hang a test.
pub fn output_within(mut cmd: Command, limit: Duration) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let read = |pipe: Option<Box<dyn io::Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = read(child.stdout.take().map(|p| Box::new(p) as _));
    let err = read(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + limit;
    let mut nap = Duration::from_millis(1);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} still ran after {limit:?}; killed it");
        }
        thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// A directory under the system temp dir, removed on Drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(unique_base(&format!("opha-{tag}-")));
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A network namespace (`ip netns add`). Drop kills every process still in it and deletes it,
/// which also removes the interfaces inside.
pub struct NetNs {
    name: String,
    /// Open handle of `/var/run/netns/<name>`, shared with the commands that enter it.
    fd: Arc<OwnedFd>,
}

impl NetNs {
    /// Creates `opha-<tag>-<pid hex><n hex>` with its loopback up.
    pub fn new(tag: &str) -> Result<Self> {
        let name = unique_base(&format!("opha-{tag}-"));
        run_checked(Command::new(tool("ip")).args(["netns", "add", &name]))?;
        let path = Path::new(NETNS_DIR).join(&name);
        let file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                let _ = Command::new(tool("ip"))
                    .args(["netns", "del", &name])
                    .status();
                return Err(e).with_context(|| format!("opening {}", path.display()));
            }
        };
        // From here on Drop deletes the namespace.
        let ns = Self {
            name,
            fd: Arc::new(OwnedFd::from(file)),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// A command that runs in this namespace. Only the network namespace changes (setns in
    /// the child, like `nsenter --net=`), unlike `ip netns exec`, which also makes a mount
    /// namespace and remounts /sys so that /sys/fs/bpf pins disappear. The child runs in its
    /// own process group and gets SIGKILL when the thread that spawned it exits, so an aborted
    /// test leaves no tool running: spawn long-lived children from a thread that outlives them.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        command_in(&self.fd, program)
    }

    /// `ip netns exec <name> PROGRAM`, for tools that want the full `ip netns exec` treatment
    /// (its own /sys, /etc/netns files). Never for opha-sidecar: it would not see the pins.
    pub fn ip_netns_exec(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(tool("ip"));
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// `ip -n <name> ARGS...`.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        run_checked(Command::new(tool("ip")).args(["-n", &self.name]).args(args))?;
        Ok(())
    }

    /// Many `ip` commands in one process (`ip -n <name> -batch -`), one per line.
    pub fn ip_batch(&self, lines: &[String]) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut child = Command::new(tool("ip"))
            .args(["-n", &self.name, "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting ip -batch")?;
        let mut input = String::new();
        for l in lines {
            input.push_str(l);
            input.push('\n');
        }
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "ip -n {} -batch failed ({}): {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Runs `f` on a thread that has entered this namespace (sockets it creates stay in it).
    pub fn in_thread<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        let fd = Arc::clone(&self.fd);
        thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: setns(2) on this thread only; the fd is open.
                if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error()).context("setns");
                }
                f()
            })
            .join()
            .map_err(|_| anyhow!("thread in namespace panicked"))?
        })
    }

    /// Writes `/proc/sys/<key>` (e.g. `net/ipv6/conf/all/disable_ipv6`) inside this namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = Path::new("/proc/sys").join(key);
        self.in_thread(|| {
            fs::write(&path, value).with_context(|| format!("writing {}", path.display()))
        })
    }

    /// Processes whose network namespace is this one (`ip netns pids`).
    pub fn pids(&self) -> Vec<i32> {
        let Ok(out) = Command::new(tool("ip"))
            .args(["netns", "pids", &self.name])
            .stderr(Stdio::null())
            .output()
        else {
            return Vec::new();
        };
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

/// See [`NetNs::command`].
fn command_in(ns_fd: &Arc<OwnedFd>, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    // Its own process group: a Ctrl-C meant for the lab or the test run reaches only them,
    // and they stop their children in order (PDEATHSIG covers an abrupt end).
    cmd.process_group(0);
    let fd = Arc::clone(ns_fd);
    // SAFETY: setns(2) and prctl(2) are async-signal-safe syscalls; the closure allocates
    // nothing, and `fd` stays open because the closure owns a reference to it.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Only processes inside this namespace, which this harness started, are killed.
        for _ in 0..100 {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                // SAFETY: kill(2) with a pid listed for this namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new(tool("ip"))
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Interface names are limited to 15 bytes (IFNAMSIZ - 1).
fn check_ifname(name: &str) -> Result<()> {
    ensure!(
        !name.is_empty() && name.len() <= 15,
        "interface name {name:?} is not 1-15 bytes"
    );
    Ok(())
}

/// A veth pair created directly inside two namespaces (it never exists in the host's).
pub struct Veth {
    ns_a: String,
    pub name_a: String,
    pub name_b: String,
}

impl Veth {
    /// `name_a` in `a`, `name_b` in `b`, both up. MACs are chosen by the kernel unless given.
    pub fn new(
        a: &NetNs,
        name_a: &str,
        mac_a: Option<&str>,
        b: &NetNs,
        name_b: &str,
        mac_b: Option<&str>,
    ) -> Result<Self> {
        check_ifname(name_a)?;
        check_ifname(name_b)?;
        let mut cmd = Command::new(tool("ip"));
        cmd.args(["link", "add", name_a, "netns", a.name()]);
        if let Some(m) = mac_a {
            cmd.args(["address", m]);
        }
        cmd.args(["type", "veth", "peer", "name", name_b, "netns", b.name()]);
        if let Some(m) = mac_b {
            cmd.args(["address", m]);
        }
        run_checked(&mut cmd)?;
        let veth = Self {
            ns_a: a.name().to_string(),
            name_a: name_a.to_string(),
            name_b: name_b.to_string(),
        };
        a.ip(&["link", "set", name_a, "up"])?;
        b.ip(&["link", "set", name_b, "up"])?;
        Ok(veth)
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        // Usually gone with its namespace already; deleting one end removes both.
        let _ = Command::new(tool("ip"))
            .args(["-n", &self.ns_a, "link", "del", &self.name_a])
            .stderr(Stdio::null())
            .status();
    }
}

/// `tc qdisc replace dev DEV root netem SPEC` in `ns`, e.g. `netem(&ns, "eth0", "delay 20ms")`.
/// Fails with a clear message on kernels without sch_netem (the CI kernel has none: use
/// [`Site::delay_responses`], which works everywhere).
pub fn netem(ns: &NetNs, dev: &str, spec: &str) -> Result<()> {
    let mut cmd = Command::new(tool("tc"));
    cmd.args([
        "-n",
        ns.name(),
        "qdisc",
        "replace",
        "dev",
        dev,
        "root",
        "netem",
    ])
    .args(spec.split_whitespace());
    run_checked(&mut cmd).map(|_| ()).map_err(|e| {
        if e.to_string().contains("qdisc kind is unknown") {
            anyhow!("this kernel has no sch_netem (CONFIG_NET_SCH_NETEM): {e}")
        } else {
            e
        }
    })
}

/// Removes a root qdisc set by [`netem`].
pub fn netem_clear(ns: &NetNs, dev: &str) -> Result<()> {
    run_checked(Command::new(tool("tc")).args([
        "-n",
        ns.name(),
        "qdisc",
        "del",
        "dev",
        dev,
        "root",
    ]))
    .map(|_| ())
}

/// True when the running kernel has sch_netem (tried on a throwaway namespace's loopback).
pub fn netem_available() -> bool {
    NetNs::new("probe").is_ok_and(|ns| netem(&ns, "lo", "delay 1ms").is_ok())
}

// ---------------------------------------------------------------------------------------------
// Delay line: netem in userspace.

/// Which way frames travel through a [`DelayLine`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Toward {
    /// From the `b` interface out of the `a` interface.
    A,
    /// From the `a` interface out of the `b` interface.
    B,
}

/// How long frames travelling one way are held; `only_from`, when set, limits the delay to
/// IP packets whose source address is in the set (others pass at once).
#[derive(Clone, Debug, Default)]
pub struct DelayRule {
    pub delay: Duration,
    pub only_from: Option<BTreeSet<IpAddr>>,
}

/// Frames the line moved, held, or failed to send.
#[derive(Debug, Default)]
pub struct DelayStats {
    pub forwarded: AtomicU64,
    pub delayed: AtomicU64,
    pub send_errors: AtomicU64,
}

/// A userspace bridge between two interfaces of one namespace that can delay frames: every
/// frame read from one side (AF_PACKET) is written out of the other, after the configured
/// delay. Between the poller and the devices it plays the part of `tc netem delay` on kernels
/// without sch_netem. Checksum offload state passes through in the virtio-net header
/// (PACKET_VNET_HDR), so partially checksummed UDP from veth stays valid.
pub struct DelayLine {
    rules: Arc<Mutex<[DelayRule; 2]>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub stats: Arc<DelayStats>,
}

const PACKET_VNET_HDR: libc::c_int = 15;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
pub(crate) const VNET_HDR_LEN: usize = 10;
pub(crate) const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;

pub(crate) fn packet_socket(ifname: &str) -> Result<OwnedFd> {
    let name = std::ffi::CString::new(ifname)?;
    // SAFETY: plain syscalls on a socket this function owns.
    unsafe {
        let ifindex = libc::if_nametoindex(name.as_ptr());
        if ifindex == 0 {
            return Err(io::Error::last_os_error()).context(format!("no interface {ifname}"));
        }
        let proto = (libc::ETH_P_ALL as u16).to_be();
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            proto as libc::c_int,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("AF_PACKET socket");
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let set = |level, opt, val: libc::c_int| {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                opt,
                &val as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if set(libc::SOL_PACKET, PACKET_VNET_HDR, 1) != 0 {
            return Err(io::Error::last_os_error()).context("PACKET_VNET_HDR");
        }
        // Our own sends on this interface must not come back as input; also checked per frame.
        let _ = set(libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, 1);
        let _ = set(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 8 << 20);
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        if libc::bind(
            fd.as_raw_fd(),
            &sll as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        ) != 0
        {
            return Err(io::Error::last_os_error()).context(format!("binding to {ifname}"));
        }
        Ok(fd)
    }
}

/// Source address of an Ethernet frame carrying IPv4 or IPv6 (after up to two VLAN tags).
fn frame_source(frame: &[u8]) -> Option<IpAddr> {
    let mut off = 12;
    let mut ethertype = u16::from_be_bytes(frame.get(off..off + 2)?.try_into().ok()?);
    for _ in 0..2 {
        if ethertype == 0x8100 || ethertype == 0x88a8 {
            off += 4;
            ethertype = u16::from_be_bytes(frame.get(off..off + 2)?.try_into().ok()?);
        }
    }
    let ip = off + 2;
    match ethertype {
        0x0800 => {
            let b: [u8; 4] = frame.get(ip + 12..ip + 16)?.try_into().ok()?;
            Some(IpAddr::from(b))
        }
        0x86dd => {
            let b: [u8; 16] = frame.get(ip + 8..ip + 24)?.try_into().ok()?;
            Some(IpAddr::from(b))
        }
        _ => None,
    }
}

impl DelayLine {
    /// Bridges `a` and `b`, two interfaces of `ns` (up, promiscuous, no addresses).
    pub fn start(ns: &NetNs, a: &str, b: &str) -> Result<Self> {
        ns.ip(&["link", "set", a, "promisc", "on"])?;
        ns.ip(&["link", "set", b, "promisc", "on"])?;
        let (fa, fb) = ns.in_thread(|| Ok((packet_socket(a)?, packet_socket(b)?)))?;
        let (fa, fb) = (Arc::new(fa), Arc::new(fb));
        let mut line = Self {
            rules: Arc::new(Mutex::new(Default::default())),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            stats: Arc::new(DelayStats::default()),
        };
        for (from, to, dir) in [
            (Arc::clone(&fa), Arc::clone(&fb), Toward::B),
            (fb, fa, Toward::A),
        ] {
            let rules = Arc::clone(&line.rules);
            let stop = Arc::clone(&line.stop);
            let stats = Arc::clone(&line.stats);
            line.threads.push(
                thread::Builder::new()
                    .name(format!("delay-{dir:?}"))
                    .spawn(move || pump(&from, &to, dir, &rules, &stop, &stats))?,
            );
        }
        Ok(line)
    }

    /// Sets the delay of frames travelling `toward` one side. Frames already held keep theirs.
    pub fn set(&self, toward: Toward, rule: DelayRule) {
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        rules[toward as usize] = rule;
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Moves frames from `from` to `to`, holding each for its rule's delay. Bounded: the loop
/// wakes at least every 20 ms to check `stop`, and at most 100,000 frames are held.
fn pump(
    from: &OwnedFd,
    to: &OwnedFd,
    dir: Toward,
    rules: &Mutex<[DelayRule; 2]>,
    stop: &AtomicBool,
    stats: &DelayStats,
) {
    const MAX_HELD: usize = 100_000;
    let mut buf = vec![0u8; VNET_HDR_LEN + 65_536];
    let mut held: BinaryHeap<Reverse<(Instant, u64, Vec<u8>)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let send = |frame: &mut [u8]| {
        // "Checksum verified" is receive-only information; NEEDS_CSUM travels on.
        frame[0] &= !VIRTIO_NET_HDR_F_DATA_VALID;
        // SAFETY: send(2) from a valid buffer on an open socket.
        let n = unsafe {
            libc::send(
                to.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
            )
        };
        if n < 0 {
            stats.send_errors.fetch_add(1, Ordering::Relaxed);
        } else {
            stats.forwarded.fetch_add(1, Ordering::Relaxed);
        }
    };
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while held.peek().is_some_and(|Reverse((due, _, _))| *due <= now) {
            if let Some(Reverse((_, _, mut frame))) = held.pop() {
                send(&mut frame);
            }
        }
        let wait = held
            .peek()
            .map(|Reverse((due, _, _))| due.saturating_duration_since(now))
            .unwrap_or(Duration::from_millis(20))
            .min(Duration::from_millis(20));
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: wait.as_nanos() as libc::c_long,
        };
        let mut pfd = libc::pollfd {
            fd: from.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: ppoll(2) on one valid pollfd.
        let ready = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
        if ready <= 0 {
            continue;
        }
        loop {
            // SAFETY: recvfrom(2) into buffers owned here.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            let n = unsafe {
                libc::recvfrom(
                    from.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    &mut sll as *mut _ as *mut libc::sockaddr,
                    &mut len,
                )
            };
            if n <= VNET_HDR_LEN as isize {
                break;
            }
            if sll.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let frame = &mut buf[..n as usize];
            let delay = {
                let rules = rules.lock().unwrap_or_else(|e| e.into_inner());
                let rule = &rules[dir as usize];
                let applies = match &rule.only_from {
                    None => true,
                    Some(set) => {
                        frame_source(&frame[VNET_HDR_LEN..]).is_some_and(|s| set.contains(&s))
                    }
                };
                if applies { rule.delay } else { Duration::ZERO }
            };
            if delay.is_zero() || held.len() >= MAX_HELD {
                send(frame);
            } else {
                stats.delayed.fetch_add(1, Ordering::Relaxed);
                seq += 1;
                held.push(Reverse((Instant::now() + delay, seq, frame.to_vec())));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A poller site.

/// Shape of a [`Site`].
#[derive(Clone, Debug)]
pub struct SiteConfig {
    /// Short tag in every name (namespaces, interfaces).
    pub tag: String,
    /// Device addresses: `v4_nodes` from 198.18.16.1 on, `v6_nodes` from 2001:db8:1::1 on.
    pub v4_nodes: usize,
    pub v6_nodes: usize,
}

impl SiteConfig {
    pub fn new(tag: &str, v4_nodes: usize, v6_nodes: usize) -> Self {
        Self {
            tag: tag.to_string(),
            v4_nodes,
            v6_nodes,
        }
    }
}

/// The `i`-th device IPv4 address: 198.18.16.1 onwards, skipping .0 and .255.
pub fn node_v4(i: usize) -> Ipv4Addr {
    let block = (i / 254) as u32;
    let host = (i % 254) as u32 + 1;
    assert!(
        block < 496,
        "node index {i} is outside 198.18.16.0-198.19.255.255"
    );
    let third = 16 + block;
    Ipv4Addr::new(
        198,
        18 + (third / 256) as u8,
        (third % 256) as u8,
        host as u8,
    )
}

/// The `i`-th device IPv6 address: 2001:db8:1::1 onwards.
pub fn node_v6(i: usize) -> Ipv6Addr {
    let n = i as u32 + 1;
    Ipv6Addr::new(
        0x2001,
        0xdb8,
        1,
        0,
        0,
        0,
        (n >> 16) as u16,
        (n & 0xffff) as u16,
    )
}

/// A poller site: three namespaces in a row joined by two veth pairs,
///
/// ```text
///  poller [poller_if] <-veth-> [wan_a] wan [wan_b] <-veth-> [devices_if] devices
/// ```
///
/// `poller` has 198.18.0.1/30 and 2001:db8:ffff::1/64 and routes 198.18.0.0/15 and
/// 2001:db8::/32 via the devices end (198.18.0.2, 2001:db8:ffff::2). `devices` holds every
/// device address on `devices_if` and a blackhole route for both prefixes, so a device address
/// that is removed drops polls silently (no ICMP error), like a dead node. `wan` bridges the two
/// links in userspace and can delay frames ([`Site::delay_responses`]). Neighbours are
/// permanent, so no poll waits for ARP/ND.
pub struct Site {
    // Field order is drop order: the bridge stops before its namespace goes.
    pub wan_line: DelayLine,
    _links: Vec<Veth>,
    pub poller: NetNs,
    pub wan: NetNs,
    pub devices: NetNs,
    pub poller_if: String,
    pub devices_if: String,
    pub v4: Vec<Ipv4Addr>,
    pub v6: Vec<Ipv6Addr>,
    unreachable: Mutex<BTreeSet<IpAddr>>,
}

impl Site {
    pub fn new(cfg: &SiteConfig) -> Result<Self> {
        let poller = NetNs::new(&format!("{}-p", cfg.tag))?;
        let wan = NetNs::new(&format!("{}-w", cfg.tag))?;
        let devices = NetNs::new(&format!("{}-d", cfg.tag))?;
        // The bridge namespace must stay silent: no IPv6 link-local, ND or MLD of its own.
        wan.sysctl("net/ipv6/conf/all/disable_ipv6", "1")?;
        wan.sysctl("net/ipv6/conf/default/disable_ipv6", "1")?;
        let base = unique_base("o");
        let (poller_if, wan_a, wan_b, devices_if) = (
            format!("{base}p"),
            format!("{base}w"),
            format!("{base}x"),
            format!("{base}d"),
        );
        let links = vec![
            Veth::new(&poller, &poller_if, Some(POLLER_MAC), &wan, &wan_a, None)?,
            Veth::new(&wan, &wan_b, None, &devices, &devices_if, Some(DEVICES_MAC))?,
        ];
        let wan_line = DelayLine::start(&wan, &wan_a, &wan_b)?;
        let p = |s: &str| s.to_string();
        poller.ip_batch(&[
            format!("addr add {POLLER_V4}/30 dev {poller_if}"),
            format!("addr add {POLLER_V6}/64 dev {poller_if} nodad"),
            format!("route add 198.18.0.0/15 via {DEVICES_V4}"),
            format!("route add 2001:db8::/32 via {DEVICES_V6}"),
            format!(
                "neigh replace {DEVICES_V4} lladdr {DEVICES_MAC} dev {poller_if} nud permanent"
            ),
            format!(
                "neigh replace {DEVICES_V6} lladdr {DEVICES_MAC} dev {poller_if} nud permanent"
            ),
        ])?;
        let v4: Vec<Ipv4Addr> = (0..cfg.v4_nodes).map(node_v4).collect();
        let v6: Vec<Ipv6Addr> = (0..cfg.v6_nodes).map(node_v6).collect();
        let mut lines = vec![
            format!("addr add {DEVICES_V4}/30 dev {devices_if}"),
            format!("addr add {DEVICES_V6}/64 dev {devices_if} nodad"),
            p("route add blackhole 198.18.0.0/15"),
            p("route add blackhole 2001:db8::/32"),
            format!("neigh replace {POLLER_V4} lladdr {POLLER_MAC} dev {devices_if} nud permanent"),
            format!("neigh replace {POLLER_V6} lladdr {POLLER_MAC} dev {devices_if} nud permanent"),
        ];
        lines.extend(
            v4.iter()
                .map(|a| format!("addr add {a}/32 dev {devices_if}")),
        );
        lines.extend(
            v6.iter()
                .map(|a| format!("addr add {a}/128 dev {devices_if} nodad")),
        );
        devices.ip_batch(&lines)?;
        Ok(Self {
            wan_line,
            _links: links,
            poller,
            wan,
            devices,
            poller_if,
            devices_if,
            v4,
            v6,
            unreachable: Mutex::new(BTreeSet::new()),
        })
    }

    /// Every device address, IPv4 first.
    pub fn nodes(&self) -> Vec<IpAddr> {
        self.v4
            .iter()
            .map(|&a| IpAddr::V4(a))
            .chain(self.v6.iter().map(|&a| IpAddr::V6(a)))
            .collect()
    }

    /// Removes the addresses from the devices, so polls to them vanish without any answer.
    pub fn make_unreachable(&self, addrs: &[IpAddr]) -> Result<()> {
        let mut gone = self.unreachable.lock().unwrap_or_else(|e| e.into_inner());
        let lines: Vec<String> = addrs
            .iter()
            .filter(|a| !gone.contains(a))
            .map(|a| format!("addr del {a}/{} dev {}", host_len(a), self.devices_if))
            .collect();
        self.devices.ip_batch(&lines)?;
        gone.extend(addrs.iter().copied());
        Ok(())
    }

    /// Gives removed addresses back to the devices.
    pub fn make_reachable(&self, addrs: &[IpAddr]) -> Result<()> {
        let mut gone = self.unreachable.lock().unwrap_or_else(|e| e.into_inner());
        let lines: Vec<String> = addrs
            .iter()
            .filter(|a| gone.contains(a))
            .map(|a| {
                let nodad = if a.is_ipv6() { " nodad" } else { "" };
                format!(
                    "addr add {a}/{} dev {}{nodad}",
                    host_len(a),
                    self.devices_if
                )
            })
            .collect();
        self.devices.ip_batch(&lines)?;
        for a in addrs {
            gone.remove(a);
        }
        Ok(())
    }

    /// Delays every frame from the devices to the poller by `delay` (all devices, or only the
    /// packets from `only` when given), like `tc netem delay` on the devices' egress.
    pub fn delay_responses(&self, delay: Duration, only: Option<&[IpAddr]>) {
        self.wan_line.set(
            Toward::A,
            DelayRule {
                delay,
                only_from: only.map(|o| o.iter().copied().collect()),
            },
        );
    }
}

fn host_len(a: &IpAddr) -> u8 {
    if a.is_ipv4() { 32 } else { 128 }
}

// ---------------------------------------------------------------------------------------------
// snmpd.

/// Environment that keeps net-snmp away from the host's configuration, MIB files and
/// /var/lib/snmp: config path, persistent dir and MIB dir all point into `dir`.
fn snmp_env(cmd: &mut Command, dir: &Path) {
    let mibs = dir.join("mibs");
    let _ = fs::create_dir_all(&mibs);
    cmd.env("SNMPCONFPATH", dir)
        .env("SNMP_PERSISTENT_DIR", dir.join("persist"))
        .env("MIBDIRS", &mibs)
        .env("MIBS", "");
}

/// Real net-snmp `snmpd` in a namespace, answering v2c/v1 community `public` on UDP 161 for
/// every IPv4 address there (from the address polled) and for the given IPv6 addresses.
/// IPv6 needs one listening socket per address: bound to `[::]`, snmpd answers from the
/// route's source address instead of the one polled.
pub struct Snmpd {
    child: Child,
    dir: TempDir,
}

impl Snmpd {
    pub fn start(ns: &NetNs, v6: &[Ipv6Addr]) -> Result<Self> {
        let dir = TempDir::new("snmpd")?;
        fs::create_dir_all(dir.path().join("persist"))?;
        let mut agent = vec!["udp:0.0.0.0:161".to_string()];
        agent.extend(v6.iter().map(|a| format!("udp6:[{a}]:161")));
        let conf = dir.path().join("snmpd.conf");
        fs::write(
            &conf,
            format!(
                "agentaddress {}\nrocommunity public 198.18.0.0/15\nrocommunity6 public \
                 2001:db8::/32\nsysDescr opha test device\nsysName opha-device\n\
                 sysLocation opha lab\nsysContact nobody\n",
                agent.join(",")
            ),
        )?;
        let log = dir.path().join("snmpd.log");
        let logf = fs::File::create(&log)?;
        let mut cmd = ns.command(tool("snmpd"));
        snmp_env(&mut cmd, dir.path());
        cmd.arg("-f")
            .arg("-Lo")
            .arg("-C")
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(dir.path().join("snmpd.pid"))
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf);
        let child = cmd.spawn().context("starting snmpd")?;
        let mut snmpd = Self { child, dir };
        // snmpd logs its version once its sockets are open.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = fs::read_to_string(&log).unwrap_or_default();
            if text.contains("NET-SNMP version") {
                return Ok(snmpd);
            }
            if let Some(status) = snmpd.child.try_wait()? {
                bail!("snmpd exited ({status}) during start-up: {text}");
            }
            if Instant::now() >= deadline {
                bail!("snmpd did not start within 30 s: {text}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What snmpd logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("snmpd.log")).unwrap_or_default()
    }
}

impl Drop for Snmpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// opha-sidecar.

/// The `opha-sidecar` binary of the profile this executable was built with
/// (`target/<profile>/opha-sidecar`), built first with `cargo build -p opha-sidecar` (a no-op
/// when it is up to date; cargo does not hold the build lock while tests run). `OPHA_SIDECAR`
/// overrides the path. The result is remembered for the process.
pub fn sidecar_binary() -> Result<PathBuf> {
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| find_or_build_sidecar().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn find_or_build_sidecar() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("OPHA_SIDECAR") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("locating this executable")?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| anyhow!("{} has no directory", exe.display()))?;
    if dir.file_name() == Some(OsStr::new("deps")) {
        dir = dir.parent().unwrap_or(dir);
    }
    let bin = dir.join("opha-sidecar");
    let profile = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_string();
    let target_dir = dir.parent().unwrap_or(dir);
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace)
        .args([
            "build",
            "--quiet",
            "-p",
            "opha-sidecar",
            "--bin",
            "opha-sidecar",
        ])
        .arg("--target-dir")
        .arg(target_dir);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => bail!("{cmd:?} failed ({s}); build opha-sidecar or set OPHA_SIDECAR"),
        // Without cargo (a copied test binary), a binary that is already there will do.
        Err(e) if bin.is_file() => {
            eprintln!("could not run cargo ({e}); using {}", bin.display())
        }
        Err(e) => bail!("running {cmd:?}: {e}; build opha-sidecar or set OPHA_SIDECAR"),
    }
    ensure!(
        bin.is_file(),
        "{} is missing after the build",
        bin.display()
    );
    Ok(bin)
}

/// The real `opha-sidecar poller` process attached to an interface of a namespace, with
/// [`SITE_PREFIXES`] monitored. Drop kills it and removes the instance's links and pinned
/// maps (`/sys/fs/bpf/opha/<instance>`).
pub struct Sidecar {
    child: Option<Child>,
    ns_fd: Arc<OwnedFd>,
    interface: String,
    instance: String,
    log: Arc<Mutex<String>>,
}

impl Sidecar {
    /// Starts the sidecar and waits (at most 60 s) until it has attached.
    pub fn start(ns: &NetNs, interface: &str, instance: &str) -> Result<Self> {
        let cfg = LoaderConfig::new(instance);
        // Stale pins under this name (a crashed earlier run) would carry old counters.
        loader::detach(&cfg, false)?;
        let mut s = Self {
            child: None,
            ns_fd: Arc::clone(&ns.fd),
            interface: interface.to_string(),
            instance: instance.to_string(),
            log: Arc::new(Mutex::new(String::new())),
        };
        s.spawn()?;
        Ok(s)
    }

    fn spawn(&mut self) -> Result<()> {
        let bin = sidecar_binary()?;
        let mut cmd = command_in(&self.ns_fd, &bin);
        cmd.args(["poller", "--interface", &self.interface])
            .args(["--instance", &self.instance])
            .args(SITE_PREFIXES.iter().flat_map(|p| ["--prefix", p]))
            .args(["--interval", "1", "--count", "0"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
        let log = Arc::new(Mutex::new(String::new()));
        self.log = Arc::clone(&log);
        if let Some(stderr) = child.stderr.take() {
            thread::spawn(move || {
                for line in io::BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.log().contains("attached to") {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                self.child = None;
                bail!(
                    "opha-sidecar exited ({status}) before attaching: {}",
                    self.log()
                );
            }
            if Instant::now() >= deadline {
                bail!("opha-sidecar did not attach within 60 s: {}", self.log());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The running process's id, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// What the current process logged (stderr).
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// SIGKILL, as a crash would: the process gets no chance to clean up. Returns its status.
    pub fn kill9(&mut self) -> Result<ExitStatus> {
        kill9_child(&mut self.child, "opha-sidecar")
    }

    /// Starts the sidecar again under the same instance (after [`Sidecar::kill9`]); it reopens
    /// the pinned maps and replaces the programs behind the pinned links.
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            self.kill9()?;
        }
        self.spawn()
    }

    /// The instance's pinned maps, opened in this process (reading needs no namespace).
    pub fn dataplane(&self) -> Result<DataPlane> {
        ensure!(
            self.pin_dir().exists(),
            "{} does not exist",
            self.pin_dir().display()
        );
        Ok(DataPlane::load(&LoaderConfig::new(&self.instance))?)
    }

    pub fn pin_dir(&self) -> PathBuf {
        LoaderConfig::new(&self.instance).pin_dir()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Err(e) = loader::detach(&LoaderConfig::new(&self.instance), false) {
            eprintln!("removing pins of {}: {e}", self.instance);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The whole poller pipeline: `opha-sidecar poller --config`, its replay log and its HTTP APIs.

/// One `[[prefix]]` of a [`PollerOptions`] config.
#[derive(Clone, Debug)]
pub struct ConfigPrefix {
    pub vlan: u16,
    pub cidr: String,
    pub tenant: u32,
}

/// What [`PollerSidecar`] writes into its `poller.toml`. The log directory and the ingest
/// socket are always inside the guard's own temp dir, and `daemon = []` unless
/// [`PollerOptions::daemons`] are given: a test host runs no NMIS daemons, and their down
/// events would only be noise.
#[derive(Clone, Debug)]
pub struct PollerOptions {
    pub poller_id: String,
    pub interface: String,
    pub instance: String,
    pub prefixes: Vec<ConfigPrefix>,
    /// `[ingest] http`, in the poller's namespace (its own loopback), or `None` for "off".
    pub ingest_http: Option<SocketAddr>,
    /// `[ingest] unix` at `<dir>/ingest.sock`, or "off".
    pub ingest_unix: bool,
    /// `[metrics] listen`, in the poller's namespace, or `None` for "off".
    pub metrics: Option<SocketAddr>,
    /// `[ingest] max_body` (e.g. `"4KiB"`), or the default.
    pub ingest_max_body: Option<String>,
    /// TOML appended verbatim: whole tables other than `[log]`, `[ingest]` and `[metrics]`
    /// (written by the guard), e.g. `[intervals]` and `[thresholds]`.
    pub extra: String,
    /// `[[daemon]]` tables (TOML) of daemons the test runs itself; empty: `daemon = []`.
    pub daemons: String,
}

/// Local ingest and Prometheus addresses of a [`PollerSidecar`]. Every namespace has its own
/// loopback, so fixed ports never collide between tests.
pub const INGEST_HTTP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8730);
pub const METRICS_HTTP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9730);

impl PollerOptions {
    /// The site's networks (198.18.0.0/15 and 2001:db8::/32) for tenant 1, ingest over
    /// [`INGEST_HTTP`] and the Unix socket, metrics on [`METRICS_HTTP`], defaults otherwise.
    pub fn new(interface: &str, instance: &str) -> Self {
        // poller_id: 1-64 of a-z 0-9 . _ -, starting with a letter or digit.
        let poller_id: String = instance
            .to_ascii_lowercase()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .take(64)
            .collect();
        Self {
            poller_id,
            interface: interface.to_string(),
            instance: instance.to_string(),
            prefixes: vec![
                ConfigPrefix {
                    vlan: 0,
                    cidr: "198.18.0.0/15".into(),
                    tenant: 1,
                },
                ConfigPrefix {
                    vlan: 0,
                    cidr: "2001:db8::/32".into(),
                    tenant: 1,
                },
            ],
            ingest_http: Some(INGEST_HTTP),
            ingest_unix: true,
            metrics: Some(METRICS_HTTP),
            ingest_max_body: None,
            extra: String::new(),
            daemons: String::new(),
        }
    }

    /// One more monitored prefix (e.g. a carve-out for another tenant).
    pub fn prefix(mut self, vlan: u16, cidr: &str, tenant: u32) -> Self {
        self.prefixes.push(ConfigPrefix {
            vlan,
            cidr: cidr.to_string(),
            tenant,
        });
        self
    }

    /// More TOML tables (see [`PollerOptions::extra`]).
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }

    /// The config file's text, with paths under `dir`.
    pub fn render(&self, dir: &Path) -> String {
        let listen = |a: &Option<SocketAddr>| a.map_or("off".to_string(), |a| a.to_string());
        let unix = if self.ingest_unix {
            dir.join("ingest.sock").display().to_string()
        } else {
            "off".to_string()
        };
        let mut s = String::new();
        let _ = writeln!(s, "poller_id = {}", toml_str(&self.poller_id));
        let _ = writeln!(s, "interface = {}", toml_str(&self.interface));
        let _ = writeln!(s, "instance = {}", toml_str(&self.instance));
        if self.daemons.is_empty() {
            s.push_str("daemon = []\n");
        }
        for p in &self.prefixes {
            let _ = writeln!(
                s,
                "\n[[prefix]]\nvlan = {}\ncidr = {}\ntenant = {}",
                p.vlan,
                toml_str(&p.cidr),
                p.tenant
            );
        }
        let _ = writeln!(
            s,
            "\n[log]\ndir = {}\n\n[ingest]\nhttp = {}\nunix = {}",
            toml_str(&dir.join("log").display().to_string()),
            toml_str(&listen(&self.ingest_http)),
            toml_str(&unix),
        );
        if let Some(max) = &self.ingest_max_body {
            let _ = writeln!(s, "max_body = {}", toml_str(max));
        }
        let _ = writeln!(
            s,
            "\n[metrics]\nlisten = {}\n",
            toml_str(&listen(&self.metrics))
        );
        s.push_str(&self.extra);
        s.push('\n');
        s.push_str(&self.daemons);
        s
    }
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One line of `opha-sidecar log dump --json`: `{"seq", "class", "record"}`, or a record the
/// dump could not decode (`{"seq", "error"}`), kept as `Err` so a test can fail on it.
#[derive(Clone, Debug)]
pub struct LogEntry {
    pub seq: u64,
    /// "event" or "metric" (empty for an undecodable record).
    pub class: String,
    pub record: std::result::Result<Record, String>,
}

impl LogEntry {
    pub fn event(&self) -> Option<&Event> {
        match &self.record {
            Ok(Record::Event(e)) => Some(e),
            _ => None,
        }
    }
}

/// Parses `log dump --json` output. A line that is not such an object, or whose record does
/// not deserialize into this build's [`Record`], is an error: the contract is broken.
pub fn parse_log_dump(text: &str) -> Result<Vec<LogEntry>> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("log dump line {line:?}"))?;
        let seq = v
            .get("seq")
            .and_then(|s| s.as_u64())
            .ok_or_else(|| anyhow!("log dump line without a seq: {line}"))?;
        if let Some(err) = v.get("error") {
            out.push(LogEntry {
                seq,
                class: String::new(),
                record: Err(err.as_str().map_or_else(|| err.to_string(), str::to_string)),
            });
            continue;
        }
        let class = v
            .get("class")
            .and_then(|c| c.as_str())
            .ok_or_else(|| anyhow!("log dump line without a class: {line}"))?
            .to_string();
        let record = v
            .get("record")
            .ok_or_else(|| anyhow!("log dump line without a record: {line}"))?;
        let record = serde_json::from_value::<Record>(record.clone())
            .with_context(|| format!("log dump record does not deserialize: {line}"))?;
        out.push(LogEntry {
            seq,
            class,
            record: Ok(record),
        });
    }
    Ok(out)
}

/// An HTTP answer.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// The header lines after the status line, as received.
    pub headers: String,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("HTTP {} body is not JSON: {}", self.status, self.text()))
    }
}

/// One HTTP/1.1 request with `Connection: close` on `stream`, reading the answer to EOF (the
/// stream should have read and write timeouts). Enough for the sidecar's own endpoints:
/// Content-Length or chunked bodies.
pub fn http_exchange<S: io::Read + io::Write>(
    stream: &mut S,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<HttpResponse> {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    if let Some(ct) = content_type {
        let _ = write!(req, "Content-Type: {ct}\r\n");
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the answer to {method} {path}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("{method} {path}: no complete HTTP header in {raw:?}"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let (status_line, headers) = head.split_once("\r\n").unwrap_or((head.as_str(), ""));
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("{method} {path}: bad status line {status_line:?}"))?;
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    if chunked {
        body = dechunk(&body).with_context(|| format!("{method} {path}: chunked body"))?;
    }
    Ok(HttpResponse {
        status,
        headers: headers.to_string(),
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("chunk size line without CRLF"))?;
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("chunk size {size_text:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        ensure!(data.len() >= size + 2, "chunk of {size} bytes is cut short");
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

impl NetNs {
    /// One HTTP request to `addr` from inside this namespace (see [`http_exchange`]), bounded
    /// by 5 s to connect and 30 s per read or write.
    pub fn http(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<HttpResponse> {
        http_in(&self.fd, addr, method, path, content_type, body)
    }
}

/// Runs `f` on a thread that has entered the namespace of `ns_fd`.
fn in_ns<T: Send>(ns_fd: &Arc<OwnedFd>, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let fd = Arc::clone(ns_fd);
    thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns(2) on this thread only; the fd is open.
            if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error()).context("setns");
            }
            f()
        })
        .join()
        .map_err(|_| anyhow!("thread in namespace panicked"))?
    })
}

/// See [`NetNs::http`].
fn http_in(
    ns_fd: &Arc<OwnedFd>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<HttpResponse> {
    in_ns(ns_fd, || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connecting to {addr}"))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.set_write_timeout(Some(Duration::from_secs(30)))?;
        http_exchange(&mut s, method, path, content_type, body)
    })
}

/// What `opha-sidecar poller --config` logs (info) once the whole pipeline runs.
pub const POLLER_RUNNING: &str = " running on ";

/// The real `opha-sidecar poller --config FILE`: the whole pipeline (data plane, aggregation,
/// trap/syslog decoding, local ingest, replay log) in a network namespace, with its config,
/// replay log and ingest socket in a temp dir of its own. Drop kills it and removes the
/// instance's links and pinned maps and the temp dir.
///
/// Start, restart and kill it from a thread that outlives the process (the test's main
/// thread): like every command of [`NetNs::command`] it dies with the thread that spawned it.
pub struct PollerSidecar {
    child: Option<Child>,
    ns: String,
    ns_fd: Arc<OwnedFd>,
    opts: PollerOptions,
    /// Everything every run printed (stdout and stderr), a marker line before each run.
    output: Arc<Mutex<String>>,
    /// Where the current run's output starts in `output`.
    run_start: usize,
    runs: u32,
    dir: TempDir,
}

impl PollerSidecar {
    /// Writes the config and starts the poller; returns once it is ready (see
    /// [`PollerSidecar::wait_ready`]), at most 60 s.
    pub fn start(ns: &NetNs, opts: PollerOptions) -> Result<Self> {
        // Stale pins under this name (a crashed earlier run) would carry old counters.
        loader::detach(&LoaderConfig::new(&opts.instance), false)?;
        let dir = TempDir::new("poller")?;
        fs::write(dir.path().join("poller.toml"), opts.render(dir.path()))?;
        let mut s = Self {
            child: None,
            ns: ns.name().to_string(),
            ns_fd: Arc::clone(&ns.fd),
            opts,
            output: Arc::new(Mutex::new(String::new())),
            run_start: 0,
            runs: 0,
            dir,
        };
        s.spawn()?;
        Ok(s)
    }

    fn spawn(&mut self) -> Result<()> {
        let bin = sidecar_binary()?;
        let mut cmd = command_in(&self.ns_fd, &bin);
        cmd.arg("poller")
            .arg("--config")
            .arg(self.config_path())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.runs += 1;
        {
            let mut out = self.output.lock().unwrap_or_else(|e| e.into_inner());
            let _ = writeln!(out, "=== opha-sidecar poller run {} ===", self.runs);
            self.run_start = out.len();
        }
        let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
        let pipes: [Option<Box<dyn io::Read + Send>>; 2] = [
            child.stdout.take().map(|p| Box::new(p) as _),
            child.stderr.take().map(|p| Box::new(p) as _),
        ];
        for pipe in pipes.into_iter().flatten() {
            let out = Arc::clone(&self.output);
            thread::spawn(move || {
                for line in io::BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
                    o.push_str(&line);
                    o.push('\n');
                }
            });
        }
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(60))
    }

    /// Waits until the current process says it runs ([`POLLER_RUNNING`] in its log, written
    /// once every task has started), its programs are attached (both links pinned) and its
    /// configured TCP listeners (ingest, metrics) accept connections.
    pub fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        let pins = self.pin_dir();
        loop {
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                self.child = None;
                // Let the pipe readers catch the last lines.
                thread::sleep(Duration::from_millis(100));
                bail!(
                    "opha-sidecar poller exited ({status}) during start-up:\n{}",
                    self.run_output()
                );
            }
            let attached = pins.join("link_ingress").exists() && pins.join("link_egress").exists();
            let listening = [self.opts.ingest_http, self.opts.metrics]
                .into_iter()
                .flatten()
                .all(|a| self.tcp_listening(a));
            let running = self.run_output().contains(POLLER_RUNNING);
            if attached && listening && running {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "opha-sidecar poller was not ready within {limit:?} (links pinned: \
                     {attached}, listeners up: {listening}, {POLLER_RUNNING:?} logged: \
                     {running}):\n{}",
                    self.run_output()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn tcp_listening(&self, addr: SocketAddr) -> bool {
        in_ns(&self.ns_fd, || {
            Ok(TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok())
        })
        .unwrap_or(false)
    }

    pub fn options(&self) -> &PollerOptions {
        &self.opts
    }

    pub fn instance(&self) -> &str {
        &self.opts.instance
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("poller.toml")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    pub fn ingest_socket(&self) -> PathBuf {
        self.dir.path().join("ingest.sock")
    }

    pub fn pin_dir(&self) -> PathBuf {
        LoaderConfig::new(&self.opts.instance).pin_dir()
    }

    /// The running process's id, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// What every run printed so far.
    pub fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// What the current (or last) run printed.
    pub fn run_output(&self) -> String {
        let out = self.output.lock().unwrap_or_else(|e| e.into_inner());
        out.get(self.run_start..).unwrap_or_default().to_string()
    }

    /// SIGTERM, then waits (at most `limit`) for the process to exit; SIGKILL and an error if
    /// it does not. Returns its exit status.
    pub fn terminate(&mut self, limit: Duration) -> Result<ExitStatus> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("opha-sidecar poller is not running"))?;
        // SAFETY: kill(2) on our own child, not yet reaped (so its pid is still ours).
        if unsafe { libc::kill(child.id() as i32, libc::SIGTERM) } != 0 {
            return Err(io::Error::last_os_error()).context("SIGTERM to opha-sidecar");
        }
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait()? {
                thread::sleep(Duration::from_millis(50));
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "opha-sidecar poller still ran {limit:?} after SIGTERM; killed it:\n{}",
                    self.run_output()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a crash would: no chance to clean up or flush anything.
    pub fn kill9(&mut self) -> Result<ExitStatus> {
        kill9_child(&mut self.child, "opha-sidecar poller")
    }

    /// Starts the poller again with the same config (after [`PollerSidecar::kill9`] or
    /// [`PollerSidecar::terminate`]; a running one is killed first) and waits until ready.
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            self.kill9()?;
        }
        self.spawn()
    }

    /// `opha-sidecar log dump --dir DIR --json`, run in the poller's namespace (so that a dump
    /// that has to ask the running poller over its loopback HTTP endpoint can), at most 60 s.
    pub fn dump_log(&self) -> Result<Vec<LogEntry>> {
        let mut cmd = command_in(&self.ns_fd, sidecar_binary()?);
        cmd.args(["log", "dump", "--dir"])
            .arg(self.log_dir())
            .arg("--json");
        let out = output_within(cmd, Duration::from_secs(60))?;
        ensure!(
            out.status.success(),
            "opha-sidecar log dump failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        parse_log_dump(&String::from_utf8_lossy(&out.stdout))
    }

    /// An HTTP request to the local ingest's TCP listener, from inside the namespace.
    pub fn ingest_http(&self, method: &str, path: &str, json: &[u8]) -> Result<HttpResponse> {
        let addr = self
            .opts
            .ingest_http
            .ok_or_else(|| anyhow!("ingest over HTTP is off"))?;
        self.http(addr, method, path, json)
    }

    /// An HTTP request over the local ingest's Unix socket (no namespace needed).
    pub fn ingest_unix(&self, method: &str, path: &str, json: &[u8]) -> Result<HttpResponse> {
        let path_sock = self.ingest_socket();
        let mut s = UnixStream::connect(&path_sock)
            .with_context(|| format!("connecting to {}", path_sock.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.set_write_timeout(Some(Duration::from_secs(30)))?;
        http_exchange(&mut s, method, path, Some("application/json"), json)
    }

    /// `GET /metrics` (Prometheus text) from the metrics listener.
    pub fn metrics_text(&self) -> Result<String> {
        let addr = self
            .opts
            .metrics
            .ok_or_else(|| anyhow!("the metrics endpoint is off"))?;
        let r = self.http(addr, "GET", "/metrics", &[])?;
        ensure!(r.status == 200, "GET /metrics: {} {}", r.status, r.text());
        Ok(r.text())
    }

    fn http(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<HttpResponse> {
        let ct = (!body.is_empty()).then_some("application/json");
        http_in(&self.ns_fd, addr, method, path, ct, body)
    }

    /// The instance's pinned maps, opened in this process (they outlive the poller process).
    pub fn dataplane(&self) -> Result<DataPlane> {
        ensure!(
            self.pin_dir().exists(),
            "{} does not exist",
            self.pin_dir().display()
        );
        Ok(DataPlane::load(&LoaderConfig::new(&self.opts.instance))?)
    }

    /// The namespace the poller runs in.
    pub fn netns_name(&self) -> &str {
        &self.ns
    }
}

impl Drop for PollerSidecar {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Err(e) = loader::detach(&LoaderConfig::new(&self.opts.instance), false) {
            eprintln!("removing pins of {}: {e}", self.opts.instance);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Polling tools and what they report.

/// What the tools report for one node and protocol class. Bytes are whole frames as the kernel
/// counts them (payload plus [`V4_OVERHEAD`] / [`V6_OVERHEAD`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub sent: u64,
    pub received: u64,
    /// Responses that carried an SNMP error-status.
    pub errors: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.sent += o.sent;
        self.received += o.received;
        self.errors += o.errors;
        self.bytes_out += o.bytes_out;
        self.bytes_in += o.bytes_in;
    }
}

/// Per-node counts of what the tools sent and received, per protocol class.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub icmp: BTreeMap<IpAddr, Counts>,
    pub snmp: BTreeMap<IpAddr, Counts>,
    /// fping's own min/avg/max RTT in ms of the last run that got replies, per node.
    pub fping_rtt_ms: BTreeMap<IpAddr, (f64, f64, f64)>,
    /// Tool invocations.
    pub runs: u64,
}

fn overhead(a: &IpAddr) -> u64 {
    if a.is_ipv4() {
        V4_OVERHEAD
    } else {
        V6_OVERHEAD
    }
}

impl Tally {
    pub fn class(&self, c: ProtoClass) -> Option<&BTreeMap<IpAddr, Counts>> {
        match c {
            ProtoClass::IcmpEcho => Some(&self.icmp),
            ProtoClass::Snmp => Some(&self.snmp),
            ProtoClass::TcpCheck => None,
        }
    }

    pub fn merge(&mut self, o: &Tally) {
        for (a, c) in &o.icmp {
            self.icmp.entry(*a).or_default().add(c);
        }
        for (a, c) in &o.snmp {
            self.snmp.entry(*a).or_default().add(c);
        }
        self.fping_rtt_ms
            .extend(o.fping_rtt_ms.iter().map(|(a, r)| (*a, *r)));
        self.runs += o.runs;
    }

    /// Every node the tools polled.
    pub fn nodes(&self) -> BTreeSet<IpAddr> {
        self.icmp.keys().chain(self.snmp.keys()).copied().collect()
    }

    /// Totals over all nodes of one class.
    pub fn total(&self, c: ProtoClass) -> Counts {
        let mut t = Counts::default();
        for v in self.class(c).into_iter().flat_map(|m| m.values()) {
            t.add(v);
        }
        t
    }

    /// Everything in which the kernel counters differ from what the tools reported, one line
    /// each: per node and class, requests, responses, errors, bytes out and in must be equal,
    /// every response must have been matched to its request (RTT samples == responses), and
    /// nodes the tools never polled must not appear at all.
    pub fn mismatches(&self, nodes: &[NodeSnapshot]) -> Vec<String> {
        let mut out = Vec::new();
        let kernel: BTreeMap<IpAddr, &NodeSnapshot> = nodes.iter().map(|n| (n.addr(), n)).collect();
        for n in nodes {
            if n.key.vlan != 0 {
                out.push(format!("{}: unexpected VLAN {}", n.addr(), n.key.vlan));
            }
        }
        let all: BTreeSet<IpAddr> = self
            .nodes()
            .into_iter()
            .chain(kernel.keys().copied())
            .collect();
        for addr in all {
            for class in ProtoClass::ALL {
                let want = self
                    .class(class)
                    .and_then(|m| m.get(&addr))
                    .copied()
                    .unwrap_or_default();
                let Some(node) = kernel.get(&addr) else {
                    if want != Counts::default() {
                        out.push(format!(
                            "{addr} {}: tools {want:?}, kernel has no node",
                            class.name()
                        ));
                    }
                    continue;
                };
                let k = node.counters.class(class);
                let got = Counts {
                    sent: k.requests,
                    received: k.responses,
                    errors: k.errors,
                    bytes_out: k.bytes_out,
                    bytes_in: k.bytes_in,
                };
                if got != want {
                    out.push(format!(
                        "{addr} {}: tools {want:?}, kernel {got:?}",
                        class.name()
                    ));
                }
                if k.rtt_count != k.responses {
                    out.push(format!(
                        "{addr} {}: {} responses but {} matched (RTT samples)",
                        class.name(),
                        k.responses,
                        k.rtt_count
                    ));
                }
            }
        }
        out
    }
}

/// fping timing: `-p` period per target, `-i` interval between any two pings, `-t` timeout.
#[derive(Clone, Debug)]
pub struct FpingOpts {
    pub period: Duration,
    pub interval: Duration,
    pub timeout: Duration,
}

impl Default for FpingOpts {
    fn default() -> Self {
        Self {
            period: Duration::from_millis(1000),
            interval: Duration::from_millis(1),
            // Generous: a reply fping gives up on still reaches the kernel, and then the
            // counts would differ although both are right.
            timeout: Duration::from_millis(1000),
        }
    }
}

/// One SNMP tool run: `program options... target oids...`.
struct SnmpJob {
    target: IpAddr,
    program: &'static str,
    args: Vec<String>,
}

/// The real polling tools, run in a namespace with net-snmp's environment kept private.
pub struct Tools<'a> {
    ns: &'a NetNs,
    dir: TempDir,
    /// Most tool processes at once.
    pub parallel: usize,
    /// Longest one tool process may run before it is killed.
    pub limit: Duration,
}

/// The agent address net-snmp tools take: `udp:A:161` or `udp6:[A]:161`.
pub fn snmp_target(a: &IpAddr) -> String {
    match a {
        IpAddr::V4(v4) => format!("udp:{v4}:161"),
        IpAddr::V6(v6) => format!("udp6:[{v6}]:161"),
    }
}

impl<'a> Tools<'a> {
    pub fn new(ns: &'a NetNs) -> Result<Self> {
        let dir = TempDir::new("tools")?;
        fs::create_dir_all(dir.path().join("persist"))?;
        Ok(Self {
            ns,
            dir,
            parallel: 32,
            limit: Duration::from_secs(60),
        })
    }

    /// `fping -q -c COUNT` to every target at once; counts from its per-target summary
    /// (`xmt/rcv/%loss = X/Y/Z%`).
    pub fn fping(&self, targets: &[IpAddr], count: u32, opts: &FpingOpts) -> Result<Tally> {
        ensure!(
            count > 0 && count <= 1000,
            "fping count {count} is outside 1-1000"
        );
        if targets.is_empty() {
            return Ok(Tally::default());
        }
        let mut cmd = self.ns.command(tool("fping"));
        cmd.arg("-q")
            .args(["-c", &count.to_string()])
            .args(["-p", &opts.period.as_millis().to_string()])
            .args(["-i", &opts.interval.as_millis().max(1).to_string()])
            .args(["-t", &opts.timeout.as_millis().to_string()])
            .args(["-b", &FPING_DATA.to_string()])
            .args(targets.iter().map(|t| t.to_string()));
        // Bounded: the sending schedule plus the last timeout, with slack.
        let rounds = opts.period.max(opts.interval * targets.len() as u32);
        let limit = rounds * count + opts.timeout + Duration::from_secs(10);
        let out = output_within(cmd, limit)?;
        // 0: all answered, 1: some did not; anything else is a failure of fping itself.
        ensure!(
            matches!(out.status.code(), Some(0 | 1)),
            "fping failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stderr);
        let tally = parse_fping(&text)?;
        let want: BTreeSet<IpAddr> = targets.iter().copied().collect();
        ensure!(
            tally.icmp.keys().copied().collect::<BTreeSet<_>>() == want,
            "fping reported on other targets than asked: {text}"
        );
        Ok(tally)
    }

    /// `snmpget -v2c -r 0` (exactly one request per run, no retries) of `oids` from every
    /// target, `times` runs per target, all runs in parallel (at most `parallel` at once).
    pub fn snmpget(&self, targets: &[IpAddr], oids: &[&str], times: u32) -> Result<Tally> {
        self.run_snmp(
            (0..times)
                .flat_map(|_| targets.iter())
                .map(|t| SnmpJob {
                    target: *t,
                    program: "snmpget",
                    args: snmp_args("2c", &[], oids),
                })
                .collect(),
        )
    }

    /// `snmpget -v1 -Cf` of an object that does not exist: the agent answers with
    /// error-status noSuchName, which the kernel counts as an error.
    pub fn snmpget_v1_missing(&self, targets: &[IpAddr]) -> Result<Tally> {
        self.run_snmp(
            targets
                .iter()
                .map(|t| SnmpJob {
                    target: *t,
                    program: "snmpget",
                    args: snmp_args("1", &["-Cf"], &["1.3.6.1.2.1.1.99.0"]),
                })
                .collect(),
        )
    }

    /// `snmpbulkwalk -v2c -Cr<max_rep>` of a subtree on every target: as many GetBulk requests
    /// as the walk needs, each counted from the tool's packet dump.
    pub fn snmpbulkwalk(&self, targets: &[IpAddr], oid: &str, max_rep: u32) -> Result<Tally> {
        let cr = format!("-Cr{max_rep}");
        self.run_snmp(
            targets
                .iter()
                .map(|t| SnmpJob {
                    target: *t,
                    program: "snmpbulkwalk",
                    args: snmp_args("2c", &[&cr], &[oid]),
                })
                .collect(),
        )
    }

    /// Runs `program args...` in the namespace with net-snmp's environment kept private (as
    /// for every tool here), at most [`Tools::limit`]; fails unless it exits 0. For the tools
    /// that send rather than poll: `snmptrap`, `logger`.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<Output> {
        let mut cmd = self.ns.command(tool(program));
        snmp_env(&mut cmd, self.dir.path());
        cmd.args(args);
        let shown = format!("{program} {}", args.join(" "));
        let out = output_within(cmd, self.limit)?;
        ensure!(
            out.status.success(),
            "{shown} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out)
    }

    fn run_snmp(&self, jobs: Vec<SnmpJob>) -> Result<Tally> {
        let queue = Mutex::new(jobs.into_iter().collect::<std::collections::VecDeque<_>>());
        let total = Mutex::new(Tally::default());
        let first_err: Mutex<Option<anyhow::Error>> = Mutex::new(None);
        let workers = self.parallel.max(1);
        thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    loop {
                        if first_err.lock().is_ok_and(|e| e.is_some()) {
                            return;
                        }
                        let Some(job) = queue.lock().ok().and_then(|mut q| q.pop_front()) else {
                            return;
                        };
                        match self.snmp_once(&job) {
                            Ok(t) => {
                                if let Ok(mut total) = total.lock() {
                                    total.merge(&t);
                                }
                            }
                            Err(e) => {
                                if let Ok(mut f) = first_err.lock() {
                                    f.get_or_insert(e);
                                }
                                return;
                            }
                        }
                    }
                });
            }
        });
        if let Some(e) = first_err.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(e);
        }
        Ok(total.into_inner().unwrap_or_else(|e| e.into_inner()))
    }

    fn snmp_once(&self, job: &SnmpJob) -> Result<Tally> {
        let mut cmd = self.ns.command(tool(job.program));
        snmp_env(&mut cmd, self.dir.path());
        let split = job
            .args
            .iter()
            .position(|a| a == "--")
            .unwrap_or(job.args.len());
        cmd.args(&job.args[..split])
            .arg(snmp_target(&job.target))
            .args(job.args.get(split + 1..).unwrap_or_default());
        let out = output_within(cmd, self.limit)?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let tally = parse_snmp_dump(&job.target, &text)?;
        ensure!(
            tally.snmp.values().map(|c| c.sent).sum::<u64>() > 0,
            "{} to {} sent nothing ({}): {text}",
            job.program,
            job.target,
            out.status
        );
        Ok(tally)
    }
}

/// `-d` (packet dump, which is how the counts are read), one try (`-r 0`) with a 1 s timeout,
/// numeric OIDs; `--` separates the options from the OIDs that follow the target.
fn snmp_args(version: &str, extra: &[&str], oids: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "-d", "-v", version, "-c", "public", "-r", "0", "-t", "1", "-On",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a.push("--".to_string());
    a.extend(oids.iter().map(|s| s.to_string()));
    a
}

/// Counts from net-snmp's `-d` dump: `Sending N bytes to UDP: [A]:161...` per request and
/// `Received N byte packet from UDP: [A]:161...` per response (attributed to the address in
/// the line), `Error in packet` per response with an error-status (attributed to `target`).
pub fn parse_snmp_dump(target: &IpAddr, text: &str) -> Result<Tally> {
    let mut t = Tally {
        runs: 1,
        ..Tally::default()
    };
    for line in text.lines() {
        let (sending, rest) = if let Some(r) = line.strip_prefix("Sending ") {
            (true, r)
        } else if let Some(r) = line.strip_prefix("Received ") {
            (false, r)
        } else {
            if line.starts_with("Error in packet") {
                t.snmp.entry(*target).or_default().errors += 1;
            }
            continue;
        };
        let bytes: u64 = rest
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow!("no byte count in {line:?}"))?;
        let addr: IpAddr = rest
            .split_once('[')
            .and_then(|(_, r)| r.split_once(']'))
            .and_then(|(a, _)| a.parse().ok())
            .ok_or_else(|| anyhow!("no address in {line:?}"))?;
        let c = t.snmp.entry(addr).or_default();
        if sending {
            c.sent += 1;
            c.bytes_out += bytes + overhead(&addr);
        } else {
            c.received += 1;
            c.bytes_in += bytes + overhead(&addr);
        }
    }
    Ok(t)
}

/// Counts from `fping -q -c` summaries:
/// `198.18.16.1 : xmt/rcv/%loss = 3/3/0%, min/avg/max = 0.04/0.05/0.06`.
pub fn parse_fping(text: &str) -> Result<Tally> {
    let mut t = Tally {
        runs: 1,
        ..Tally::default()
    };
    for line in text.lines() {
        let Some((addr, rest)) = line.split_once(" : xmt/rcv/%loss = ") else {
            continue;
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .with_context(|| format!("fping line {line:?}"))?;
        let mut nums = rest.split(['/', '%', ',']).map(str::trim);
        let xmt: u64 = nums
            .next()
            .and_then(|n| n.parse().ok())
            .context(line.to_string())?;
        let rcv: u64 = nums
            .next()
            .and_then(|n| n.parse().ok())
            .context(line.to_string())?;
        ensure!(
            t.icmp
                .insert(
                    addr,
                    Counts {
                        sent: xmt,
                        received: rcv,
                        errors: 0,
                        bytes_out: xmt * (FPING_DATA + overhead(&addr)),
                        bytes_in: rcv * (FPING_DATA + overhead(&addr)),
                    }
                )
                .is_none(),
            "fping reported {addr} twice"
        );
        if let Some((_, r)) = rest.split_once("min/avg/max = ") {
            let v: Vec<f64> = r.trim().split('/').filter_map(|x| x.parse().ok()).collect();
            if let [min, avg, max] = v[..] {
                t.fping_rtt_ms.insert(addr, (min, avg, max));
            }
        }
    }
    Ok(t)
}

/// Per-class RTT figures of one node from the kernel: (min, avg, max) in ms, if any sample.
pub fn kernel_rtt_ms(node: &NodeSnapshot, class: ProtoClass) -> Option<(f64, f64, f64)> {
    let c = node.counters.class(class);
    let avg = c.rtt_sum_ns.checked_div(c.rtt_count)?;
    Some((
        c.rtt_min_ns as f64 / 1e6,
        avg as f64 / 1e6,
        c.rtt_max_ns as f64 / 1e6,
    ))
}

/// A short human summary of a tally: nodes and totals per class.
pub fn describe(t: &Tally) -> String {
    let mut s = String::new();
    for class in [ProtoClass::IcmpEcho, ProtoClass::Snmp] {
        let n = t.class(class).map_or(0, |m| m.len());
        let c = t.total(class);
        let _ = write!(
            s,
            "{}: {n} nodes, {} sent, {} received, {} errors; ",
            class.name(),
            c.sent,
            c.received,
            c.errors
        );
    }
    s.push_str(&format!("{} tool runs", t.runs));
    s
}

/// SIGKILLs a running child (taking it out of `child`) and checks that the signal ended it.
fn kill9_child(child: &mut Option<Child>, what: &str) -> Result<ExitStatus> {
    let mut child = child
        .take()
        .ok_or_else(|| anyhow!("{what} is not running"))?;
    // SAFETY: kill(2) on our own child, not yet reaped (so its pid is still ours).
    if unsafe { libc::kill(child.id() as i32, libc::SIGKILL) } != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("kill -9 {what}"));
    }
    let status = child.wait()?;
    ensure!(
        status.signal() == Some(libc::SIGKILL),
        "{what} ended with {status}, not by SIGKILL"
    );
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opha_common::node::{NodeCounters, NodeKey};

    #[test]
    fn node_addresses_stay_in_the_benchmarking_range() {
        assert_eq!(node_v4(0), Ipv4Addr::new(198, 18, 16, 1));
        assert_eq!(node_v4(253), Ipv4Addr::new(198, 18, 16, 254));
        assert_eq!(node_v4(254), Ipv4Addr::new(198, 18, 17, 1));
        assert_eq!(node_v4(254 * 240), Ipv4Addr::new(198, 19, 0, 1));
        assert_eq!(node_v4(254 * 496 - 1), Ipv4Addr::new(198, 19, 255, 254));
        assert_eq!(node_v6(0), "2001:db8:1::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            node_v6(0xffff),
            "2001:db8:1::1:0".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn fping_summaries_are_counted() {
        let t = parse_fping(
            "198.18.16.1   : xmt/rcv/%loss = 3/3/0%, min/avg/max = 0.040/0.049/0.061\n\
             2001:db8:1::2 : xmt/rcv/%loss = 3/0/100%\n\
             ICMP Host Unreachable from 198.18.0.2 for ICMP Echo sent to 198.18.16.9\n",
        )
        .unwrap();
        let a: IpAddr = "198.18.16.1".parse().unwrap();
        let b: IpAddr = "2001:db8:1::2".parse().unwrap();
        assert_eq!(
            t.icmp[&a],
            Counts {
                sent: 3,
                received: 3,
                errors: 0,
                bytes_out: 3 * 98,
                bytes_in: 3 * 98
            }
        );
        assert_eq!((t.icmp[&b].sent, t.icmp[&b].received), (3, 0));
        assert_eq!(t.icmp[&b].bytes_out, 3 * 118);
        assert_eq!(t.fping_rtt_ms[&a], (0.040, 0.049, 0.061));
        assert!(
            parse_fping(
                "198.18.16.1 : xmt/rcv/%loss = 1/1/0%\n198.18.16.1 : xmt/rcv/%loss = 1/1/0%"
            )
            .is_err()
        );
    }

    #[test]
    fn snmp_dumps_are_counted() {
        let target: IpAddr = "198.18.16.1".parse().unwrap();
        let t = parse_snmp_dump(
            &target,
            "Sending 43 bytes to UDP: [198.18.16.1]:161->[0.0.0.0]:35408\n\
             0000: 30 29 02 01  01 04 06 70  75 62 6C 69  63 A0 1C 02    0).....public...\n\
             Received 51 byte packet from UDP: [198.18.16.1]:161->[0.0.0.0]:35408\n\
             Error in packet\nReason: (noSuchName) There is no such variable name in this MIB.\n",
        )
        .unwrap();
        assert_eq!(
            t.snmp[&target],
            Counts {
                sent: 1,
                received: 1,
                errors: 1,
                bytes_out: 43 + 42,
                bytes_in: 51 + 42
            }
        );
        let v6: IpAddr = "2001:db8:1::1".parse().unwrap();
        let t = parse_snmp_dump(
            &v6,
            "Sending 43 bytes to UDP/IPv6: [2001:db8:1::1]:161\nTimeout: No Response from udp6:[2001:db8:1::1]:161.\n",
        )
        .unwrap();
        assert_eq!(
            (
                t.snmp[&v6].sent,
                t.snmp[&v6].received,
                t.snmp[&v6].bytes_out
            ),
            (1, 0, 43 + 62)
        );
    }

    fn snapshot(addr: Ipv4Addr, f: impl FnOnce(&mut NodeCounters)) -> NodeSnapshot {
        let mut counters = NodeCounters::default();
        f(&mut counters);
        NodeSnapshot {
            key: NodeKey::v4(addr.octets(), 0),
            counters,
        }
    }

    #[test]
    fn mismatches_name_every_difference() {
        let a = Ipv4Addr::new(198, 18, 16, 1);
        let mut tally = Tally::default();
        tally.icmp.insert(
            a.into(),
            Counts {
                sent: 2,
                received: 1,
                errors: 0,
                bytes_out: 196,
                bytes_in: 98,
            },
        );
        let good = snapshot(a, |c| {
            let i = &mut c.classes[ProtoClass::IcmpEcho as usize];
            (
                i.requests,
                i.responses,
                i.bytes_out,
                i.bytes_in,
                i.rtt_count,
            ) = (2, 1, 196, 98, 1);
        });
        assert!(tally.mismatches(std::slice::from_ref(&good)).is_empty());
        let mut double = good.clone();
        double.counters.classes[ProtoClass::IcmpEcho as usize].requests = 4;
        assert_eq!(tally.mismatches(&[double]).len(), 1);
        let mut unmatched = good.clone();
        unmatched.counters.classes[ProtoClass::IcmpEcho as usize].rtt_count = 0;
        assert_eq!(tally.mismatches(&[unmatched]).len(), 1);
        let stranger = snapshot(Ipv4Addr::new(198, 18, 16, 2), |c| {
            c.classes[ProtoClass::Snmp as usize].requests = 1;
        });
        assert_eq!(tally.mismatches(&[good, stranger]).len(), 1);
        assert_eq!(tally.mismatches(&[]).len(), 1, "a node the kernel missed");
    }

    #[test]
    fn frame_sources_are_read_through_vlan_tags() {
        let mut f = vec![0u8; 12];
        f.extend([0x81, 0x00, 0, 100, 0x08, 0x00]);
        let mut ip = vec![0u8; 20];
        ip[12..16].copy_from_slice(&[198, 18, 16, 7]);
        f.extend(ip);
        assert_eq!(frame_source(&f), Some("198.18.16.7".parse().unwrap()));
        assert_eq!(frame_source(&f[..20]), None);
    }

    #[test]
    fn log_dump_lines_parse_into_records() {
        use opha_common::wire::{EventId, EventKind, NodeRef, Severity, Subject, TenantId};
        let event = Record::Event(Event {
            id: EventId::from_u128(7),
            time_ms: 1,
            tenant: TenantId(2),
            subject: Subject::Node(NodeRef::from(Ipv4Addr::new(198, 18, 16, 1))),
            kind: EventKind::NodeDown,
            severity: Severity::Major,
            details: "down".into(),
        });
        let text = format!(
            "{}\n\n{{\"seq\": 4, \"error\": \"bad crc\"}}\n",
            serde_json::json!({"seq": 3, "class": "event", "record": event})
        );
        let entries = parse_log_dump(&text).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!((entries[0].seq, entries[0].class.as_str()), (3, "event"));
        assert_eq!(entries[0].record.as_ref().unwrap(), &event);
        assert_eq!(entries[1].record, Err("bad crc".to_string()));
        assert!(parse_log_dump("{\"seq\": 1, \"class\": \"event\", \"record\": 5}").is_err());
        assert!(parse_log_dump("not json").is_err());
    }

    #[test]
    fn http_answers_are_read_with_either_framing() {
        struct Canned(io::Cursor<Vec<u8>>, Vec<u8>);
        impl io::Read for Canned {
            fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                self.0.read(b)
            }
        }
        impl io::Write for Canned {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.1.extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut c = Canned(
            io::Cursor::new(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}".to_vec()),
            Vec::new(),
        );
        let r = http_exchange(
            &mut c,
            "POST",
            "/v1/events",
            Some("application/json"),
            b"[]",
        )
        .unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "{}"));
        let sent = String::from_utf8(c.1).unwrap();
        assert!(sent.starts_with("POST /v1/events HTTP/1.1\r\n"), "{sent}");
        assert!(sent.contains("Content-Length: 2\r\n") && sent.ends_with("\r\n\r\n[]"));
        let mut c = Canned(
            io::Cursor::new(
                b"HTTP/1.1 413 Payload Too Large\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
                    .to_vec(),
            ),
            Vec::new(),
        );
        let r = http_exchange(&mut c, "GET", "/", None, b"").unwrap();
        assert_eq!((r.status, r.text().as_str()), (413, "abcde"));
    }

    #[test]
    fn poller_configs_render_every_table_once() {
        let opts = PollerOptions::new("ifx", "t-1-0-E2E")
            .prefix(0, "198.18.16.8/29", 2)
            .extra("[intervals]\nmetrics = \"2s\"");
        let text = opts.render(Path::new("/tmp/x"));
        assert!(text.contains("poller_id = \"t-1-0-e2e\"\n"), "{text}");
        assert_eq!(text.matches("[[prefix]]").count(), 3, "{text}");
        for table in ["[log]", "[ingest]", "[metrics]", "[intervals]"] {
            assert_eq!(text.matches(table).count(), 1, "{table} in {text}");
        }
        assert!(text.contains("dir = \"/tmp/x/log\""), "{text}");
        assert!(text.contains("http = \"127.0.0.1:8730\""), "{text}");
        assert_eq!(toml_str("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }
}
