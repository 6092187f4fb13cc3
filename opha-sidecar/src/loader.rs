//! Loads, pins, configures, attaches and detaches the kernel programs of one instance.
//!
//! Everything an instance owns lives under `/sys/fs/bpf/opha/<instance>/`: the maps (pinned by
//! name) and the two TCX links (`link_ingress`, `link_egress`). A restarted sidecar reopens the
//! pinned maps, so counters and unread ring-buffer records survive, and atomically replaces the
//! programs behind the pinned links, so counting never stops.

use std::{
    collections::BTreeSet,
    fs, io,
    net::IpAddr,
    os::{fd::AsFd as _, unix::ffi::OsStrExt},
    path::{Path, PathBuf},
    str::FromStr,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap as LruHashMap, LpmTrie, MapData, PerCpuArray, PerCpuHashMap, lpm_trie::Key,
    },
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, TestRun, TestRunOptions,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
    },
};
use opha_common::{
    PIN_ROOT, PROG_EGRESS, PROG_INGRESS,
    inflight::{InflightKey, InflightValue},
    node::{NodeCounters, NodeKey},
    ports::{PortConfig, SNAP_LEN, TCP_PORT_WORDS, tcp_port_word},
    prefix::{PREFIX_VLAN_BITS, PrefixKeyData, PrefixValue},
    stats::{STAT_COUNT, Stat, USER_STAT_COUNT, UserStat},
};

use crate::ring::RingReader;

/// The kernel programs, built by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/opha"));

/// A classifier that does nothing (`opha_calibrate`), for benchmarks to measure the cost of
/// BPF_PROG_TEST_RUN itself. Never attached.
pub static CALIBRATE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/opha-calibrate"));
pub const PROG_CALIBRATE: &str = "opha_calibrate";

pub const MAP_NODES: &str = "OPHA_NODES";
pub const MAP_INFLIGHT: &str = "OPHA_INFLIGHT";
pub const MAP_PREFIXES: &str = "OPHA_PREFIXES";
pub const MAP_PORTS: &str = "OPHA_PORTS";
pub const MAP_TCP_PORTS: &str = "OPHA_TCP_PORTS";
pub const MAP_STATS: &str = "OPHA_STATS";
pub const MAP_EVENTS: &str = "OPHA_EVENTS";
pub const MAP_USERSPACE: &str = "OPHA_USERSPACE";

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("bpffs: {0}")]
    Bpffs(String),
    #[error("instance name {0:?} is invalid: use 1-64 characters from [A-Za-z0-9_.-]")]
    InstanceName(String),
    #[error("loading the kernel programs: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {0}: {1}")]
    Program(&'static str, aya::programs::ProgramError),
    #[error("map {0}: {1}")]
    Map(&'static str, aya::maps::MapError),
    #[error("map {0} is missing from the object file")]
    MissingMap(&'static str),
    #[error("link {path}: {error}")]
    Link { path: PathBuf, error: String },
    #[error("{0}")]
    Config(String),
    #[error("{context}: {error}")]
    Io { context: String, error: io::Error },
}

type Result<T> = std::result::Result<T, LoaderError>;

/// Bounds of the kernel maps. `ringbuf_bytes` must be a power of two and a multiple of the page
/// size.
#[derive(Clone, Debug)]
pub struct LoaderConfig {
    pub instance: String,
    pub pin_root: PathBuf,
    pub max_nodes: u32,
    pub max_inflight: u32,
    pub max_prefixes: u32,
    pub ringbuf_bytes: u32,
}

impl LoaderConfig {
    pub fn new(instance: &str) -> Self {
        Self {
            instance: instance.to_string(),
            pin_root: PathBuf::from(PIN_ROOT),
            max_nodes: 16384,
            max_inflight: 65536,
            max_prefixes: 16384,
            ringbuf_bytes: 4 << 20,
        }
    }

    pub fn pin_dir(&self) -> PathBuf {
        self.pin_root.join(&self.instance)
    }
}

/// A monitored prefix: `[VLAN@]ADDRESS/LEN=TENANT`, e.g. `198.18.0.0/16=1` or
/// `100@2001:db8::/32=7`. VLAN 0 (the default) means untagged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MonitoredPrefix {
    pub vlan: u16,
    pub addr: IpAddr,
    pub len: u8,
    pub tenant: u32,
    pub flags: u32,
}

impl MonitoredPrefix {
    /// The LPM trie key: VLAN bits, then the address mapped into IPv6.
    pub fn key(&self) -> Key<PrefixKeyData> {
        let (addr, bits) = match self.addr {
            IpAddr::V4(a) => (a.to_ipv6_mapped().octets(), 96 + self.len as u32),
            IpAddr::V6(a) => (a.octets(), self.len as u32),
        };
        Key::new(
            PREFIX_VLAN_BITS + bits,
            PrefixKeyData {
                vlan_be: self.vlan.to_be_bytes(),
                addr: mask(addr, bits),
            },
        )
    }
}

fn mask(mut addr: [u8; 16], bits: u32) -> [u8; 16] {
    for (i, b) in addr.iter_mut().enumerate() {
        let keep = bits.saturating_sub(i as u32 * 8).min(8);
        *b &= if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
    }
    addr
}

impl FromStr for MonitoredPrefix {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (net, tenant) = s
            .split_once('=')
            .ok_or_else(|| format!("prefix {s:?}: expected [VLAN@]ADDRESS/LEN=TENANT"))?;
        let tenant: u32 = tenant
            .parse()
            .map_err(|_| format!("prefix {s:?}: tenant {tenant:?} is not a number"))?;
        if tenant == 0 {
            return Err(format!("prefix {s:?}: tenant 0 is reserved, use 1 or more"));
        }
        let (vlan, net) = match net.split_once('@') {
            Some((v, n)) => {
                let vlan: u16 = v
                    .parse()
                    .map_err(|_| format!("prefix {s:?}: VLAN {v:?} is not a number"))?;
                if vlan > 4094 {
                    return Err(format!("prefix {s:?}: VLAN {vlan} is above 4094"));
                }
                (vlan, n)
            }
            None => (0, net),
        };
        let (addr, len) = net
            .split_once('/')
            .ok_or_else(|| format!("prefix {s:?}: expected ADDRESS/LEN"))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("prefix {s:?}: {addr:?} is not an IP address"))?;
        let len: u8 = len
            .parse()
            .map_err(|_| format!("prefix {s:?}: length {len:?} is not a number"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(format!("prefix {s:?}: length {len} is above {max}"));
        }
        Ok(Self {
            vlan,
            addr,
            len,
            tenant,
            flags: 0,
        })
    }
}

/// Global statistics summed across CPUs, plus the in-flight evictions derived from them.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct GlobalStats {
    pub counters: Vec<(String, u64)>,
    /// Requests that left the in-flight map without a response and without being swept:
    /// `inserted - matched - swept - still in flight`. The LRU evicts silently, so this is how
    /// evictions are counted.
    pub inflight_evictions: u64,
    pub inflight_live: u64,
    /// Requests the sweep removed as timed out, over the instance's life.
    pub inflight_swept: u64,
}

impl GlobalStats {
    pub fn get(&self, stat: Stat) -> u64 {
        self.counters
            .iter()
            .find(|(n, _)| n == stat.name())
            .map(|(_, v)| *v)
            .unwrap_or(0)
    }
}

/// One node's counters summed across CPUs.
#[derive(Clone, Debug)]
pub struct NodeSnapshot {
    pub key: NodeKey,
    pub counters: NodeCounters,
}

impl NodeSnapshot {
    pub fn addr(&self) -> IpAddr {
        let a = std::net::Ipv6Addr::from(self.key.addr);
        match a.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(a),
        }
    }
}

/// The loaded kernel programs and maps of one instance.
pub struct DataPlane {
    ebpf: Ebpf,
    pin_dir: PathBuf,
}

impl DataPlane {
    /// Loads the programs, creating the pinned maps or reopening those a previous run left.
    pub fn load(cfg: &LoaderConfig) -> Result<Self> {
        validate_instance(&cfg.instance)?;
        if cfg.pin_root.starts_with("/sys/fs/bpf") {
            ensure_bpffs(Path::new("/sys/fs/bpf"))?;
        }
        let pin_dir = cfg.pin_dir();
        fs::create_dir_all(&pin_dir).map_err(|error| LoaderError::Io {
            context: format!("creating {}", pin_dir.display()),
            error,
        })?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pin_dir)
            .map_max_entries(MAP_NODES, cfg.max_nodes)
            .map_max_entries(MAP_INFLIGHT, cfg.max_inflight)
            .map_max_entries(MAP_PREFIXES, cfg.max_prefixes)
            .map_max_entries(MAP_EVENTS, cfg.ringbuf_bytes)
            .load(EBPF_OBJECT)?;
        for name in [PROG_INGRESS, PROG_EGRESS] {
            program_mut(&mut ebpf, name)?
                .load()
                .map_err(|e| LoaderError::Program(static_name(name), e))?;
        }
        Ok(Self { ebpf, pin_dir })
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Attaches both programs to `interface` (TCX, kernel 6.6 or later). If links of this
    /// instance are pinned already (a restart), the new programs replace the old ones
    /// atomically; otherwise new links are created and pinned.
    pub fn attach(&mut self, interface: &str) -> Result<()> {
        for (name, attach_type, link_name) in [
            (PROG_INGRESS, TcAttachType::Ingress, "link_ingress"),
            (PROG_EGRESS, TcAttachType::Egress, "link_egress"),
        ] {
            let path = self.pin_dir.join(link_name);
            let link_err = |error: String| LoaderError::Link {
                path: path.clone(),
                error,
            };
            let prog = program_mut(&mut self.ebpf, name)?;
            let link_id = match PinnedLink::from_pin(&path) {
                Ok(old) => {
                    let link = SchedClassifierLink::try_from(FdLink::from(old))
                        .map_err(|e| link_err(e.to_string()))?;
                    prog.attach_to_link(link)
                        .map_err(|e| LoaderError::Program(static_name(name), e))?
                }
                Err(_) if !path.exists() => prog
                    .attach_with_options(
                        interface,
                        attach_type,
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                    .map_err(|e| LoaderError::Program(static_name(name), e))?,
                Err(e) => return Err(link_err(e.to_string())),
            };
            let link = prog
                .take_link(link_id)
                .map_err(|e| LoaderError::Program(static_name(name), e))?;
            let fd_link: FdLink = link
                .try_into()
                .map_err(|e: aya::programs::links::LinkError| link_err(e.to_string()))?;
            // An existing pin is already this link; pinning again would fail with EEXIST.
            if !path.exists() {
                fd_link.pin(&path).map_err(|e| link_err(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// Writes the port configuration and marks the data plane configured.
    pub fn set_ports(&mut self, ports: PortConfig) -> Result<()> {
        if ports.snap_len == 0 || ports.snap_len as usize > SNAP_LEN {
            return Err(LoaderError::Config(format!(
                "snap length {} is outside 1..={SNAP_LEN}",
                ports.snap_len
            )));
        }
        let mut map: Array<&mut MapData, PortConfig> = self.map_mut(MAP_PORTS)?;
        // The prefix generation is the loader's to manage (set_prefixes): keep it.
        let current = map.get(&0, 0).map_err(|e| LoaderError::Map(MAP_PORTS, e))?;
        let ports = PortConfig {
            prefix_gen: current.prefix_gen,
            ..ports
        };
        map.set(0, ports, 0)
            .map_err(|e| LoaderError::Map(MAP_PORTS, e))
    }

    /// The port configuration the programs currently use.
    pub fn ports(&self) -> Result<PortConfig> {
        let map: Array<&MapData, PortConfig> = self.map(MAP_PORTS)?;
        map.get(&0, 0).map_err(|e| LoaderError::Map(MAP_PORTS, e))
    }

    /// Tells the programs that the prefixes changed, so nodes look their tenant up again.
    fn bump_prefix_gen(&mut self) -> Result<()> {
        let mut map: Array<&mut MapData, PortConfig> = self.map_mut(MAP_PORTS)?;
        let mut current = map.get(&0, 0).map_err(|e| LoaderError::Map(MAP_PORTS, e))?;
        // 0 never names a generation, so a fresh node slot (all zero) is never taken as cached.
        current.prefix_gen = current.prefix_gen.wrapping_add(1).max(1);
        map.set(0, current, 0)
            .map_err(|e| LoaderError::Map(MAP_PORTS, e))
    }

    /// Replaces the set of TCP service-check ports.
    pub fn set_tcp_ports(&mut self, ports: &[u16]) -> Result<()> {
        let mut words = vec![0u64; TCP_PORT_WORDS as usize];
        for &p in ports {
            let (w, bit) = tcp_port_word(p);
            words[w as usize] |= bit;
        }
        let mut map: Array<&mut MapData, u64> = self.map_mut(MAP_TCP_PORTS)?;
        for (i, w) in words.into_iter().enumerate() {
            // Only words that changed are written, so a live update touches few entries.
            if map
                .get(&(i as u32), 0)
                .map_err(|e| LoaderError::Map(MAP_TCP_PORTS, e))?
                != w
            {
                map.set(i as u32, w, 0)
                    .map_err(|e| LoaderError::Map(MAP_TCP_PORTS, e))?;
            }
        }
        Ok(())
    }

    /// Replaces the monitored prefixes: new and changed ones are written first, then removed
    /// ones are deleted, so an address that stays monitored never misses a lookup.
    pub fn set_prefixes(&mut self, prefixes: &[MonitoredPrefix]) -> Result<()> {
        let mut map: LpmTrie<&mut MapData, PrefixKeyData, PrefixValue> =
            self.map_mut(MAP_PREFIXES)?;
        let wanted: BTreeSet<(u32, [u8; 2], [u8; 16])> = prefixes
            .iter()
            .map(|p| {
                let k = p.key();
                (k.prefix_len(), k.data().vlan_be, k.data().addr)
            })
            .collect();
        if wanted.len() != prefixes.len() {
            return Err(LoaderError::Config(
                "the same prefix is configured twice".to_string(),
            ));
        }
        for p in prefixes {
            let value = PrefixValue {
                tenant: p.tenant,
                flags: p.flags,
            };
            map.insert(&p.key(), value, 0)
                .map_err(|e| LoaderError::Map(MAP_PREFIXES, e))?;
        }
        let existing: Vec<Key<PrefixKeyData>> = map.keys().filter_map(|k| k.ok()).collect();
        for k in existing {
            if !wanted.contains(&(k.prefix_len(), k.data().vlan_be, k.data().addr)) {
                map.remove(&k)
                    .map_err(|e| LoaderError::Map(MAP_PREFIXES, e))?;
            }
        }
        self.bump_prefix_gen()
    }

    /// Every node's counters, summed across CPUs.
    pub fn nodes(&self) -> Result<Vec<NodeSnapshot>> {
        let map: PerCpuHashMap<&MapData, NodeKey, NodeCounters> = self.map(MAP_NODES)?;
        let mut out = Vec::new();
        for item in map.iter() {
            let (key, values) = item.map_err(|e| LoaderError::Map(MAP_NODES, e))?;
            let mut sum = NodeCounters::default();
            for v in values.iter() {
                sum.merge(v);
            }
            out.push(NodeSnapshot { key, counters: sum });
        }
        out.sort_by_key(|n| (n.key.vlan, n.key.addr));
        Ok(out)
    }

    /// One node's counters, summed across CPUs; None if the kernel has not seen it.
    pub fn node(&self, key: &NodeKey) -> Result<Option<NodeCounters>> {
        let map: PerCpuHashMap<&MapData, NodeKey, NodeCounters> = self.map(MAP_NODES)?;
        match map.get(key, 0) {
            Ok(values) => {
                let mut sum = NodeCounters::default();
                for v in values.iter() {
                    sum.merge(v);
                }
                Ok(Some(sum))
            }
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(LoaderError::Map(MAP_NODES, e)),
        }
    }

    /// Requests still waiting for a response.
    pub fn inflight(&self) -> Result<Vec<(InflightKey, InflightValue)>> {
        let map: LruHashMap<&MapData, InflightKey, InflightValue> = self.map(MAP_INFLIGHT)?;
        map.iter()
            .map(|r| r.map_err(|e| LoaderError::Map(MAP_INFLIGHT, e)))
            .collect()
    }

    /// Global statistics summed across CPUs, with the in-flight evictions derived from them and
    /// from the requests the sweep removed (kept pinned, see `sweep_inflight`).
    pub fn stats(&self) -> Result<GlobalStats> {
        let swept = self.user_stat(UserStat::InflightSwept)?;
        let map: PerCpuArray<&MapData, u64> = self.map(MAP_STATS)?;
        let mut counters = Vec::with_capacity(STAT_COUNT as usize);
        for stat in Stat::ALL {
            let values = map
                .get(&(stat as u32), 0)
                .map_err(|e| LoaderError::Map(MAP_STATS, e))?;
            counters.push((stat.name().to_string(), values.iter().sum()));
        }
        let live = self.inflight()?.len() as u64;
        let mut s = GlobalStats {
            counters,
            inflight_evictions: 0,
            inflight_live: live,
            inflight_swept: swept,
        };
        s.inflight_evictions = s
            .get(Stat::InflightInserted)
            .saturating_sub(s.get(Stat::Matched))
            .saturating_sub(swept)
            .saturating_sub(live);
        Ok(s)
    }

    /// Removes requests that have waited longer than `timeout_ns` at `now_ns` (both
    /// `CLOCK_MONOTONIC`, as the kernel stamps them) and returns them: they are the poll
    /// timeouts. A request answered while the sweep runs is not returned (its delete fails).
    /// The total swept is kept in the pinned userspace counters, so that in-flight evictions stay
    /// right across restarts.
    pub fn sweep_inflight(
        &mut self,
        now_ns: u64,
        timeout_ns: u64,
    ) -> Result<Vec<(InflightKey, InflightValue)>> {
        let mut map: LruHashMap<&mut MapData, InflightKey, InflightValue> =
            self.map_mut(MAP_INFLIGHT)?;
        let expired: Vec<(InflightKey, InflightValue)> = map
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(_, v)| now_ns.saturating_sub(v.sent_ns) > timeout_ns)
            .collect();
        let mut swept = Vec::with_capacity(expired.len());
        for (k, v) in expired {
            match map.remove(&k) {
                Ok(()) => swept.push((k, v)),
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(LoaderError::Map(MAP_INFLIGHT, e)),
            }
        }
        self.add_user_stat(UserStat::InflightSwept, swept.len() as u64)?;
        Ok(swept)
    }

    /// A counter kept by userspace in the pinned `OPHA_USERSPACE` map.
    pub fn user_stat(&self, stat: UserStat) -> Result<u64> {
        let map: Array<&MapData, u64> = self.map(MAP_USERSPACE)?;
        map.get(&(stat as u32), 0)
            .map_err(|e| LoaderError::Map(MAP_USERSPACE, e))
    }

    fn add_user_stat(&mut self, stat: UserStat, n: u64) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        debug_assert!((stat as u32) < USER_STAT_COUNT);
        let current = self.user_stat(stat)?;
        let mut map: Array<&mut MapData, u64> = self.map_mut(MAP_USERSPACE)?;
        map.set(stat as u32, current.saturating_add(n), 0)
            .map_err(|e| LoaderError::Map(MAP_USERSPACE, e))
    }

    /// A batch reader of the trap and syslog ring buffer; see [`RingReader`].
    pub fn ring_reader(&self) -> Result<RingReader> {
        let map = self
            .ebpf
            .map(MAP_EVENTS)
            .ok_or(LoaderError::MissingMap(MAP_EVENTS))?;
        let aya::maps::Map::RingBuf(data) = map else {
            return Err(LoaderError::Config(format!(
                "{MAP_EVENTS} is not a ring buffer"
            )));
        };
        let info = data.info().map_err(|e| LoaderError::Map(MAP_EVENTS, e))?;
        RingReader::new(data.fd().as_fd(), info.max_entries() as usize).map_err(|error| {
            LoaderError::Io {
                context: format!("mapping {MAP_EVENTS}"),
                error,
            }
        })
    }

    /// A program, for BPF_PROG_TEST_RUN.
    pub fn program(&self, name: &str) -> Result<&SchedClassifier> {
        let prog = self
            .ebpf
            .program(name)
            .ok_or_else(|| LoaderError::Config(format!("no program {name}")))?;
        prog.try_into()
            .map_err(|e| LoaderError::Program(static_name(name), e))
    }

    /// Runs a program on one packet with BPF_PROG_TEST_RUN; returns the verdict and the
    /// kernel-measured duration per run.
    pub fn test_run(
        &self,
        name: &str,
        packet: &[u8],
        repeat: u32,
    ) -> Result<aya::programs::TestRunResult> {
        let prog = self.program(name)?;
        let opts = TestRunOptions {
            data_in: Some(packet),
            repeat,
            ..TestRunOptions::new()
        };
        prog.test_run(opts)
            .map_err(|e| LoaderError::Program(static_name(name), e))
    }

    /// The aya handle, for maps this module does not wrap (the ring buffer).
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    fn map<'a, T>(&'a self, name: &'static str) -> Result<T>
    where
        T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
    {
        let m = self.ebpf.map(name).ok_or(LoaderError::MissingMap(name))?;
        T::try_from(m).map_err(|e| LoaderError::Map(name, e))
    }

    fn map_mut<'a, T>(&'a mut self, name: &'static str) -> Result<T>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        let m = self
            .ebpf
            .map_mut(name)
            .ok_or(LoaderError::MissingMap(name))?;
        T::try_from(m).map_err(|e| LoaderError::Map(name, e))
    }
}

/// Detaches the programs of an instance (unpinning its links) and, unless `keep_maps`, removes
/// its pinned maps. Missing pins are not an error, so this is safe to run twice.
pub fn detach(cfg: &LoaderConfig, keep_maps: bool) -> Result<()> {
    validate_instance(&cfg.instance)?;
    let dir = cfg.pin_dir();
    for link_name in ["link_ingress", "link_egress"] {
        let path = dir.join(link_name);
        if path.exists() {
            // Removing the last reference to a TCX link detaches it.
            fs::remove_file(&path).map_err(|error| LoaderError::Io {
                context: format!("unpinning {}", path.display()),
                error,
            })?;
        }
    }
    if !keep_maps && dir.exists() {
        fs::remove_dir_all(&dir).map_err(|error| LoaderError::Io {
            context: format!("removing {}", dir.display()),
            error,
        })?;
    }
    Ok(())
}

fn validate_instance(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(LoaderError::InstanceName(name.to_string()))
    }
}

/// Mounts bpffs at `dir` unless it is mounted there already.
pub fn ensure_bpffs(dir: &Path) -> Result<()> {
    if is_bpffs(dir) {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|error| LoaderError::Io {
        context: format!("creating {}", dir.display()),
        error,
    })?;
    let target = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| LoaderError::Bpffs(format!("{} contains a NUL byte", dir.display())))?;
    // SAFETY: plain mount(2) with NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(LoaderError::Bpffs(format!(
            "mounting bpffs at {}: {} (needs root or CAP_SYS_ADMIN; or run `mount -t bpf bpf {}`)",
            dir.display(),
            io::Error::last_os_error(),
            dir.display()
        )));
    }
    Ok(())
}

fn is_bpffs(dir: &Path) -> bool {
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: statfs(2) into a zeroed struct.
    let rc = unsafe { libc::statfs(path.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

fn program_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| LoaderError::Config(format!("no program {name} in the object file")))?;
    prog.try_into()
        .map_err(|e| LoaderError::Program(static_name(name), e))
}

fn static_name(name: &str) -> &'static str {
    if name == PROG_INGRESS {
        PROG_INGRESS
    } else if name == PROG_EGRESS {
        PROG_EGRESS
    } else {
        "program"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_parses_and_masks() {
        let p: MonitoredPrefix = "100@198.18.7.9/16=7".parse().unwrap();
        assert_eq!(p.vlan, 100);
        assert_eq!(p.tenant, 7);
        let k = p.key();
        assert_eq!(k.prefix_len(), 16 + 96 + 16);
        assert_eq!(&k.data().addr[12..], &[198, 18, 0, 0]);
        assert_eq!(k.data().vlan_be, 100u16.to_be_bytes());
        let v6: MonitoredPrefix = "2001:db8::/32=2".parse().unwrap();
        assert_eq!(v6.vlan, 0);
        assert_eq!(v6.key().prefix_len(), 16 + 32);
    }

    #[test]
    fn bad_prefixes_name_the_problem() {
        for (s, want) in [
            ("198.18.0.0/16", "expected"),
            ("198.18.0.0/33=1", "above 32"),
            ("5000@198.18.0.0/16=1", "above 4094"),
            ("198.18.0.0/16=0", "reserved"),
            ("nope/16=1", "not an IP"),
            ("198.18.0.0/16=x", "not a number"),
        ] {
            let err = s.parse::<MonitoredPrefix>().unwrap_err();
            assert!(err.contains(want), "{s}: {err}");
        }
    }

    #[test]
    fn instance_names_are_checked() {
        assert!(validate_instance("poller-1.eth0").is_ok());
        for bad in ["", "..", "a/b", "x y"] {
            assert!(validate_instance(bad).is_err(), "{bad}");
        }
    }
}
