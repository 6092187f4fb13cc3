//! `cargo xtask lab [ARGS...]`: the runnable site. A small site in network namespaces with real
//! snmpd and the poller sidecar, run by opha-tests' `opha-lab` program with ARGS passed through.

use anyhow::{Context as _, Result, bail};

use crate::{cmd, setup};

/// `cargo xtask lab`: root first, because everything the lab does needs it.
pub fn run(args: &[String]) -> Result<()> {
    if !setup::is_root() {
        bail!(
            "cargo xtask lab needs root: it creates network namespaces and veth pairs, runs \
             snmpd in them, and loads eBPF programs. Run it as root"
        );
    }
    setup::run().context("setup failed, so the lab was not started")?;
    println!("==> lab");
    cmd::run(
        cmd::cargo()
            .args([
                "run",
                "--release",
                "--package",
                "opha-tests",
                "--bin",
                "opha-lab",
            ])
            .arg("--")
            .args(args),
    )
    .context("the lab failed")
}
