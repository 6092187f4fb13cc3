//! Guards that remove a test instance's pinned maps and links, also when the test fails.
//!
//! ```ignore
//! let mut inst = TestInstance::configured("snmp")?; // loaded, prefixes/ports set
//! inst.dp().test_run(PROG_EGRESS, &frame, 1)?;
//! inst.reopen()?; // a sidecar restart: same pins, new programs
//! // dropping `inst` unpins links and removes /sys/fs/bpf/opha/<instance>/
//! ```

use std::{
    ops::{Deref, DerefMut},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::Context;
use opha_common::ports::PortConfig;
use opha_sidecar::loader::{self, DataPlane, LoaderConfig, MonitoredPrefix};

use crate::packets::{MONITORED_V4, MONITORED_V6, TCP_CHECK_PORT};

/// Tenant of the default monitored prefixes.
pub const DEFAULT_TENANT: u32 = 1;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A unique instance name `t-<pid>-<n>-<tag>` (at most 64 characters, loader-valid), so tests in
/// one process and concurrent test processes never share pins.
pub fn unique_instance(tag: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let tag: String = tag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    format!("t-{}-{n}-{tag}", std::process::id())
}

/// A loaded data plane under a unique instance name. Drop removes its links and pinned maps,
/// also during a panic.
pub struct TestInstance {
    cfg: LoaderConfig,
    dp: Option<DataPlane>,
}

impl TestInstance {
    /// Loads the programs under a fresh instance name (not configured: `set_ports` not called).
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        Self::with_config(LoaderConfig::new(&unique_instance(tag)))
    }

    /// Loads with explicit map bounds. Pins left by an earlier run under the same name are
    /// removed first, so counters start at zero.
    pub fn with_config(cfg: LoaderConfig) -> anyhow::Result<Self> {
        loader::detach(&cfg, false)
            .with_context(|| format!("removing stale pins of {}", cfg.instance))?;
        // From here on Drop cleans up, also when loading fails half-way.
        let mut inst = Self { cfg, dp: None };
        let dp = DataPlane::load(&inst.cfg)
            .with_context(|| format!("loading instance {}", inst.cfg.instance))?;
        inst.dp = Some(dp);
        Ok(inst)
    }

    /// `new` plus the standard configuration (see `configure_default`).
    pub fn configured(tag: &str) -> anyhow::Result<Self> {
        let mut inst = Self::new(tag)?;
        configure_default(inst.dp_mut())?;
        Ok(inst)
    }

    pub fn name(&self) -> &str {
        &self.cfg.instance
    }

    pub fn config(&self) -> &LoaderConfig {
        &self.cfg
    }

    pub fn dp(&self) -> &DataPlane {
        self.dp.as_ref().expect("data plane is closed")
    }

    pub fn dp_mut(&mut self) -> &mut DataPlane {
        self.dp.as_mut().expect("data plane is closed")
    }

    /// Drops the data plane but keeps its pins (links and maps), as a sidecar that exits.
    pub fn close(&mut self) {
        self.dp = None;
    }

    /// Simulates a sidecar restart: closes the data plane, keeping the pins, and loads the
    /// same instance again, which reopens the pinned maps.
    pub fn reopen(&mut self) -> anyhow::Result<&mut DataPlane> {
        self.close();
        let dp = DataPlane::load(&self.cfg)
            .with_context(|| format!("reloading instance {}", self.cfg.instance))?;
        Ok(self.dp.insert(dp))
    }
}

impl Deref for TestInstance {
    type Target = DataPlane;

    fn deref(&self) -> &DataPlane {
        self.dp()
    }
}

impl DerefMut for TestInstance {
    fn deref_mut(&mut self) -> &mut DataPlane {
        self.dp_mut()
    }
}

impl Drop for TestInstance {
    fn drop(&mut self) {
        // Close the programs' file descriptors first, then remove the pins.
        self.dp = None;
        if let Err(e) = loader::detach(&self.cfg, false) {
            eprintln!("cleaning up instance {}: {e}", self.cfg.instance);
        }
    }
}

/// The standard test configuration: MONITORED_V4 and MONITORED_V6 untagged for tenant
/// DEFAULT_TENANT, default ports (161, 162, 514, full snap length), TCP check port
/// TCP_CHECK_PORT.
pub fn configure_default(dp: &mut DataPlane) -> anyhow::Result<()> {
    let prefixes: Vec<MonitoredPrefix> = [MONITORED_V4, MONITORED_V6]
        .iter()
        .map(|p| format!("{p}={DEFAULT_TENANT}").parse())
        .collect::<Result<_, String>>()
        .map_err(anyhow::Error::msg)?;
    dp.set_prefixes(&prefixes)?;
    dp.set_ports(PortConfig::default())?;
    dp.set_tcp_ports(&[TCP_CHECK_PORT])?;
    Ok(())
}
