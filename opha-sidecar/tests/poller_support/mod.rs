//! Fakes and helpers shared by the poller tests (`mod poller_support;`).
#![allow(dead_code)]

use std::collections::VecDeque;
use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex};

use opha_common::inflight::InflightKey;
use opha_common::node::{NodeCounters, NodeKey};
use opha_common::wire::Record;
use opha_log::{Log, LogConfig};
use opha_sidecar::aggregate::sim::FakeKernel;
use opha_sidecar::ingest::sink::decode_record;
use opha_sidecar::loader::GlobalStats;
use opha_sidecar::poller::{Clock, KernelSource, RingSource};
use opha_sidecar::ring::RingItem;

/// The aggregate core's fake kernel as a kernel source and a clock (they share its clock).
#[derive(Clone)]
pub struct SimKernel(pub Arc<Mutex<FakeKernel>>);

impl SimKernel {
    pub fn new(wall_ms: u64) -> Self {
        Self(Arc::new(Mutex::new(FakeKernel::new(wall_ms))))
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut FakeKernel) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }
}

impl KernelSource for SimKernel {
    fn sweep(&mut self, _now_ns: u64, timeout_ns: u64) -> Result<Vec<(InflightKey, u64)>, String> {
        Ok(self.with(|k| k.sweep(timeout_ns)))
    }

    fn nodes(&mut self) -> Result<Vec<(NodeKey, NodeCounters)>, String> {
        Ok(self.with(|k| k.snapshot()))
    }

    fn stats(&mut self) -> Result<GlobalStats, String> {
        Ok(GlobalStats::default())
    }
}

impl Clock for SimKernel {
    fn mono_ns(&self) -> u64 {
        self.0.lock().unwrap().mono_ns()
    }

    fn wall_ms(&self) -> u64 {
        self.0.lock().unwrap().wall_ms()
    }
}

/// A ring buffer in memory with the kernel's consumer semantics: `read` continues after what
/// was read, `commit` consumes it, `rewind` forgets the reads since the last commit.
#[derive(Clone, Default)]
pub struct FakeRing(pub Arc<Mutex<FakeRingInner>>);

#[derive(Default)]
pub struct FakeRingInner {
    pub items: VecDeque<RingItem>,
    /// Items read and not committed (from the front of `items`).
    pub read: usize,
    pub committed: usize,
}

impl FakeRing {
    pub fn push(&self, item: RingItem) {
        self.0.lock().unwrap().items.push_back(item);
    }

    pub fn committed(&self) -> usize {
        self.0.lock().unwrap().committed
    }

    pub fn waiting(&self) -> usize {
        self.0.lock().unwrap().items.len()
    }
}

impl RingSource for FakeRing {
    fn read(&mut self, max: usize, out: &mut Vec<RingItem>) -> usize {
        let mut g = self.0.lock().unwrap();
        let start = g.read;
        let n = max.min(g.items.len() - start);
        out.extend(g.items.iter().skip(start).take(n).cloned());
        g.read += n;
        n
    }

    fn commit(&mut self) {
        let mut g = self.0.lock().unwrap();
        let n = g.read;
        g.items.drain(..n);
        g.committed += n;
        g.read = 0;
    }

    fn rewind(&mut self) {
        self.0.lock().unwrap().read = 0;
    }

    fn pending_bytes(&self) -> u64 {
        self.0.lock().unwrap().items.len() as u64
    }
}

pub fn open_log(dir: &Path) -> Arc<Log> {
    Arc::new(Log::open(LogConfig::new(dir)).expect("open log"))
}

/// Every record of the log that decodes as a `Record` (fillers do not), with its sequence.
pub fn records(log: &Log) -> Vec<(u64, Record)> {
    log.read_from(0)
        .filter_map(|r| match r {
            // Deleted after every cursor passed them.
            Err(opha_log::Error::Gap { .. }) => None,
            Err(e) => panic!("log record: {e}"),
            Ok(r) => decode_record(&r.payload).ok().map(|d| (r.seq, d)),
        })
        .collect()
}

/// Copies every regular file of `from` into a fresh `to` (a crash image of a log directory
/// whose writer has fsynced everything it acknowledged).
pub fn copy_dir(from: &Path, to: &Path) {
    let _ = fs::remove_dir_all(to);
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}
