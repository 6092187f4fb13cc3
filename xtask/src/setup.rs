//! `cargo xtask setup`: everything the build and the tests need, on a fresh Debian machine.
//!
//! Every item is checked first and skipped when present, so a second run changes nothing.
//! Debian packages and the bpffs mount need root: without root, setup changes nothing and fails
//! naming every missing item with the command that installs it. The rustup components and
//! bpf-linker live in the user's home, so any user may install those.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// The toolchain aya-build compiles the kernel programs with; it rebuilds `core` for the BPF
/// target, hence rust-src.
const NIGHTLY: &str = "nightly";
/// Components of the toolchain running xtask that `cargo xtask test` uses.
const HOST_COMPONENTS: &[&str] = &["rustfmt", "clippy"];
/// LLVM 22 and polly: bpf-linker is built against them. iproute2 (ip netns, tc netem), snmpd,
/// snmp (snmpget, snmpbulkwalk, snmptrap), fping: the test sites and the real polling tools.
/// tshark: decoding captured packets in tests. nats-server: the JetStream peer of
/// `cargo xtask bench bus`, which starts its own server on a free loopback port.
/// chromium, chromium-driver: the Home view's browser test (headless, driven by chromedriver).
const DEBIAN_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "iproute2",
    "snmpd",
    "snmp",
    "fping",
    "tshark",
    "nats-server",
    "chromium",
    "chromium-driver",
];
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_FEATURE: &str = "llvm-22";
const BPFFS: &str = "/sys/fs/bpf";
/// tshark's package asks whether users outside the wireshark group may capture; answer no
/// up front so the install never waits for a question.
const TSHARK_PRESEED: &str = "wireshark-common wireshark-common/install-setuid boolean false\n";

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `cargo xtask setup`.
pub fn run() -> Result<()> {
    println!("==> setup: checking what the build and the tests need");
    let root = is_root();

    let rust = RustState::check()?;
    let packages = missing_packages()?;
    let linker = BpfLinker::find();
    let bpffs = bpffs_mounted()?;

    rust.report();
    if packages.is_empty() {
        ok(
            "Debian packages",
            &format!("{} present, skipping", DEBIAN_PACKAGES.join(" ")),
        );
    } else {
        missing("Debian packages", &packages.join(" "));
    }
    linker.report();
    if bpffs {
        ok("bpffs", &format!("mounted at {BPFFS}, skipping"));
    } else {
        missing("bpffs", &format!("not mounted at {BPFFS}"));
    }

    if !root && (!packages.is_empty() || !bpffs) {
        bail!(needs_root_report(&rust, &packages, &linker, bpffs));
    }

    let mut changed = rust.install()?;
    changed |= install_packages(&packages)?;
    changed |= stop_service(
        root,
        "snmpd",
        "the tests start their own snmpd in namespaces",
    )?;
    changed |= stop_service(
        root,
        "nats-server",
        "the bus benchmark starts its own nats-server",
    )?;
    changed |= install_bpf_linker(linker)?;
    if !bpffs {
        mount_bpffs()?;
        changed = true;
    }
    if changed {
        println!("==> setup: done");
    } else {
        println!("==> setup: done, everything was present");
    }
    cmd::flush();
    Ok(())
}

fn ok(item: &str, detail: &str) {
    println!("setup: ok       {item}: {detail}");
}

fn missing(item: &str, detail: &str) {
    println!("setup: missing  {item}: {detail}");
}

fn action(item: &str, detail: &str) {
    println!("setup: install  {item}: {detail}");
}

/// Without root nothing is changed: one message lists every missing item and its fix.
fn needs_root_report(
    rust: &RustState,
    packages: &[&str],
    linker: &BpfLinker,
    bpffs: bool,
) -> String {
    let mut items: Vec<(String, String)> = Vec::new();
    if !packages.is_empty() {
        items.push((
            format!("Debian packages: {}", packages.join(" ")),
            format!(
                "as root: apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y \
                 --no-install-recommends {}",
                packages.join(" ")
            ),
        ));
    }
    if !bpffs {
        items.push((
            format!("bpffs mounted at {BPFFS}"),
            format!("as root: mount -t bpf bpf {BPFFS}"),
        ));
    }
    items.extend(rust.missing_items());
    if !linker.works() {
        items.push((
            "bpf-linker (after the Debian packages: it links against LLVM 22)".to_string(),
            bpf_linker_install_line(linker),
        ));
    }
    let mut msg = String::from(
        "setup needs root to install what is missing (nothing was changed). Missing:\n",
    );
    for (what, fix) in items {
        msg.push_str(&format!("  - {what}\n      fix: {fix}\n"));
    }
    msg.push_str("Or run `cargo xtask setup` as root, which installs all of it.");
    msg
}

/// The nightly toolchain with rust-src, and rustfmt and clippy for the toolchain running xtask.
struct RustState {
    nightly: bool,
    rust_src: bool,
    /// None when the active toolchain's components cannot be listed (not managed by rustup).
    host_missing: Option<Vec<&'static str>>,
}

impl RustState {
    fn check() -> Result<Self> {
        if cmd::which("rustup").is_none() {
            bail!(
                "rustup not found on PATH: opha builds its kernel programs with nightly Rust \
                 through rustup. Install it with \
                 `curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y`, \
                 then run `cargo xtask setup` again"
            );
        }
        // Listing must not install a toolchain as a side effect; installing is done below,
        // where it is announced.
        let nightly_components = cmd::output(
            Command::new("rustup")
                .env("RUSTUP_AUTO_INSTALL", "0")
                .args(["component", "list", "--installed", "--toolchain", NIGHTLY]),
        );
        let rust_src = nightly_components
            .as_deref()
            .is_some_and(|out| has_component(out, "rust-src"));
        let host_missing = cmd::output(
            Command::new("rustup")
                .env("RUSTUP_AUTO_INSTALL", "0")
                .args(["component", "list", "--installed"]),
        )
        .map(|out| {
            HOST_COMPONENTS
                .iter()
                .copied()
                .filter(|c| !has_component(&out, c))
                .collect()
        });
        Ok(Self {
            nightly: nightly_components.is_some(),
            rust_src,
            host_missing,
        })
    }

    fn report(&self) {
        match (self.nightly, self.rust_src) {
            (true, true) => ok("rust", "nightly toolchain with rust-src present, skipping"),
            (true, false) => missing("rust", "rust-src for the nightly toolchain"),
            (false, _) => missing("rust", "the nightly toolchain (with rust-src)"),
        }
        match &self.host_missing {
            Some(m) if m.is_empty() => ok(
                "rust",
                &format!("{} present, skipping", HOST_COMPONENTS.join(" and ")),
            ),
            Some(m) => missing(
                "rust",
                &format!("{} (used by cargo xtask test)", m.join(" ")),
            ),
            None => println!(
                "setup: note     rust: cannot list the active toolchain's components (not managed \
                 by rustup?); assuming {} are present",
                HOST_COMPONENTS.join(" and ")
            ),
        }
    }

    fn nightly_command(&self) -> Option<Command> {
        let mut c = Command::new("rustup");
        if !self.nightly {
            c.args(["toolchain", "install", NIGHTLY, "--profile", "minimal"])
                .args(["--component", "rust-src"]);
        } else if !self.rust_src {
            c.args(["component", "add", "rust-src", "--toolchain", NIGHTLY]);
        } else {
            return None;
        }
        Some(c)
    }

    fn host_command(&self) -> Option<Command> {
        let missing = self.host_missing.as_ref().filter(|m| !m.is_empty())?;
        let mut c = Command::new("rustup");
        c.args(["component", "add"]).args(missing);
        // Name the toolchain that runs xtask (rustup's proxy sets it), so the fix lands there
        // even when the shell's default toolchain is another one.
        if let Ok(toolchain) = std::env::var("RUSTUP_TOOLCHAIN") {
            c.args(["--toolchain", &toolchain]);
        }
        Some(c)
    }

    fn missing_items(&self) -> Vec<(String, String)> {
        let mut items = Vec::new();
        if let Some(c) = self.nightly_command() {
            items.push(("nightly Rust with rust-src".to_string(), cmd::display(&c)));
        }
        if let Some(c) = self.host_command() {
            items.push(("rustfmt/clippy".to_string(), cmd::display(&c)));
        }
        items
    }

    /// Installs what is missing; true when something was installed.
    fn install(&self) -> Result<bool> {
        let mut changed = false;
        if let Some(mut c) = self.nightly_command() {
            action("rust", "nightly toolchain with rust-src");
            cmd::run(&mut c).context("installing rust-src for the nightly toolchain")?;
            changed = true;
        }
        if let Some(mut c) = self.host_command() {
            action("rust", "rustfmt and clippy");
            cmd::run(&mut c).context("installing rustfmt and clippy")?;
            changed = true;
        }
        Ok(changed)
    }
}

/// `rustup component list --installed` prints names like `rust-src` or `clippy-x86_64-...`.
fn has_component(list: &str, component: &str) -> bool {
    list.lines().map(str::trim).any(|line| {
        line == component
            || line
                .strip_prefix(component)
                .is_some_and(|rest| rest.starts_with('-'))
    })
}

fn missing_packages() -> Result<Vec<&'static str>> {
    if cmd::which("dpkg-query").is_none() {
        bail!(
            "dpkg-query not found: `cargo xtask setup` supports Debian (it installs with apt-get). \
             On another system install the equivalents of {} yourself, build bpf-linker with \
             `{}`, and mount bpffs at {BPFFS}",
            DEBIAN_PACKAGES.join(" "),
            bpf_linker_install_line(&BpfLinker::Absent)
        );
    }
    Ok(DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| !package_installed(p))
        .collect())
}

fn package_installed(package: &str) -> bool {
    // "install ok installed" (or "hold ok installed"); anything else is not usable.
    cmd::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|status| status.split_whitespace().last() == Some("installed"))
}

/// Installs the missing Debian packages (root only; checked by the caller).
fn install_packages(packages: &[&str]) -> Result<bool> {
    if packages.is_empty() {
        return Ok(false);
    }
    action("Debian packages", &packages.join(" "));
    if packages.contains(&"tshark") {
        preseed_tshark();
    }
    // Once, and only now: nothing is fetched when everything is present.
    cmd::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .arg("update"),
    )
    .context("updating the apt package lists")?;
    cmd::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(packages),
    )
    .with_context(|| format!("installing Debian packages {}", packages.join(" ")))?;
    let still_missing: Vec<_> = packages.iter().filter(|p| !package_installed(p)).collect();
    if !still_missing.is_empty() {
        bail!(
            "apt-get succeeded but these packages are still not installed: {still_missing:?}; \
             check `dpkg-query -W {}`",
            packages.join(" ")
        );
    }
    Ok(true)
}

/// Best effort: without it, DEBIAN_FRONTEND=noninteractive takes the same default (no).
fn preseed_tshark() {
    println!(
        "$ echo '{}' | debconf-set-selections",
        TSHARK_PRESEED.trim_end()
    );
    let result = Command::new("debconf-set-selections")
        .stdin(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(TSHARK_PRESEED.as_bytes())?;
            }
            child.wait()
        });
    match result {
        Ok(status) if status.success() => {}
        Ok(status) => println!(
            "setup: note     debconf-set-selections failed ({status}); relying on \
             DEBIAN_FRONTEND=noninteractive"
        ),
        Err(e) => println!(
            "setup: note     cannot run debconf-set-selections ({e}); relying on \
             DEBIAN_FRONTEND=noninteractive"
        ),
    }
}

/// The tests start their own snmpd inside network namespaces and the bus benchmark its own
/// nats-server; the Debian packages' system services are not needed, so if the install
/// started one, stop and disable it (`why` says why). Service managers may be absent
/// (containers): then there is nothing to stop. True when something was changed.
fn stop_service(root: bool, service: &str, why: &str) -> Result<bool> {
    let item = format!("{service} service");
    let item = item.as_str();
    let (running, fixes): (bool, Vec<Command>) = if Path::new("/run/systemd/system").exists() {
        let active = cmd::succeeds("systemctl", ["is-active", "--quiet", service]);
        let enabled = cmd::succeeds("systemctl", ["is-enabled", "--quiet", service]);
        let mut c = Command::new("systemctl");
        c.args(["disable", "--now", service]);
        (active || enabled, vec![c])
    } else if Path::new("/etc/init.d").join(service).exists() && cmd::which("service").is_some() {
        let running = cmd::succeeds("service", [service, "status"]);
        let mut stop = Command::new("service");
        stop.args([service, "stop"]);
        let mut disable = Command::new("update-rc.d");
        disable.args([service, "disable"]);
        (running, vec![stop, disable])
    } else {
        ok(item, "no service manager runs it, skipping");
        return Ok(false);
    };
    if !running {
        ok(item, &format!("not running ({why}), skipping"));
        return Ok(false);
    }
    let fix_line: Vec<String> = fixes.iter().map(cmd::display).collect();
    if !root {
        println!(
            "setup: note     {item}: running; not needed ({why}). To stop it, as root: {}",
            fix_line.join(" && ")
        );
        return Ok(false);
    }
    println!("setup: stop     {item}: {why}");
    for mut c in fixes {
        // Not fatal: a service that will not stop affects neither the namespaced tests nor
        // the benchmark's own server on its own port.
        if let Err(e) = cmd::run(&mut c) {
            cmd::check_interrupted()?;
            println!("setup: note     {item}: {e:#}; carrying on");
        }
    }
    Ok(true)
}

enum BpfLinker {
    Works {
        path: PathBuf,
        version: String,
        on_path: bool,
    },
    /// Present but `--version` fails, e.g. its LLVM library is gone.
    Broken {
        path: PathBuf,
    },
    Absent,
}

impl BpfLinker {
    /// Looks on PATH, then in cargo's bin directory (where `cargo install` puts it).
    fn find() -> Self {
        let on_path = cmd::which("bpf-linker");
        let in_cargo_home = cargo_home_bin()
            .map(|bin| bin.join("bpf-linker"))
            .filter(|p| cmd::is_executable(p));
        let mut broken = None;
        for path in on_path.iter().chain(in_cargo_home.iter()) {
            let version = cmd::output(Command::new(path).arg("--version"));
            match version {
                Some(v) => {
                    return BpfLinker::Works {
                        path: path.clone(),
                        version: v.lines().next().unwrap_or("").trim().to_string(),
                        on_path: on_path.as_ref() == Some(path),
                    };
                }
                None => {
                    broken.get_or_insert_with(|| path.clone());
                }
            }
        }
        match broken {
            Some(path) => BpfLinker::Broken { path },
            None => BpfLinker::Absent,
        }
    }

    fn works(&self) -> bool {
        matches!(self, BpfLinker::Works { .. })
    }

    fn report(&self) {
        self.report_as("present, skipping");
    }

    fn report_as(&self, state: &str) {
        match self {
            BpfLinker::Works {
                path,
                version,
                on_path,
            } => {
                ok(
                    "bpf-linker",
                    &format!("{version} at {} {state}", path.display()),
                );
                if !on_path {
                    let dir = path.parent().unwrap_or(path);
                    println!(
                        "setup: note     bpf-linker: {} is not on PATH and the eBPF build looks \
                         for it there; add it: export PATH=\"{}:$PATH\"",
                        dir.display(),
                        dir.display()
                    );
                }
            }
            BpfLinker::Broken { path } => missing(
                "bpf-linker",
                &format!(
                    "{} does not run (`bpf-linker --version` fails)",
                    path.display()
                ),
            ),
            BpfLinker::Absent => missing("bpf-linker", "not on PATH or in cargo's bin directory"),
        }
    }
}

fn cargo_home_bin() -> Option<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    Some(home.join("bin"))
}

fn bpf_linker_install_command(linker: &BpfLinker) -> Command {
    let mut c = cmd::cargo();
    c.env("LLVM_PREFIX", LLVM_PREFIX).args([
        "install",
        "bpf-linker",
        "--no-default-features",
        "--features",
        BPF_LINKER_FEATURE,
    ]);
    // cargo install skips a crate it believes installed, even when the binary no longer runs.
    if matches!(linker, BpfLinker::Broken { .. }) {
        c.arg("--force");
    }
    c
}

fn bpf_linker_install_line(linker: &BpfLinker) -> String {
    cmd::display(&bpf_linker_install_command(linker))
}

/// Builds bpf-linker against the Debian LLVM when it is absent or broken (after the packages,
/// which a broken one may only have been missing).
fn install_bpf_linker(before: BpfLinker) -> Result<bool> {
    if before.works() {
        return Ok(false);
    }
    let now = BpfLinker::find();
    if now.works() {
        now.report_as("runs now");
        return Ok(true);
    }
    if !Path::new(LLVM_PREFIX).join("bin/llvm-config").exists() {
        bail!(
            "bpf-linker needs LLVM 22 in {LLVM_PREFIX} (Debian packages llvm-22-dev \
             libpolly-22-dev); install them as root first: apt-get install -y llvm-22-dev \
             libpolly-22-dev"
        );
    }
    action("bpf-linker", &format!("building against {LLVM_PREFIX}"));
    cmd::run(&mut bpf_linker_install_command(&now)).context("building bpf-linker")?;
    match BpfLinker::find() {
        found @ BpfLinker::Works { .. } => {
            found.report_as("installed");
            Ok(true)
        }
        _ => bail!(
            "bpf-linker was installed but `bpf-linker --version` still does not run; \
             check {}",
            cargo_home_bin()
                .map(|b| b.display().to_string())
                .unwrap_or_else(|| "~/.cargo/bin".to_string())
        ),
    }
}

fn bpffs_mounted() -> Result<bool> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    Ok(mounts.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some(BPFFS) && fields.next() == Some("bpf")
    }))
}

fn mount_bpffs() -> Result<()> {
    if !Path::new(BPFFS).is_dir() {
        bail!(
            "{BPFFS} does not exist: this kernel offers no bpffs (opha needs a kernel with \
             CONFIG_BPF_SYSCALL), or /sys is not sysfs"
        );
    }
    action("bpffs", &format!("mounting at {BPFFS}"));
    cmd::run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
        .with_context(|| format!("mounting bpffs at {BPFFS}"))?;
    if !bpffs_mounted()? {
        bail!("mount reported success but /proc/mounts shows no bpf mount at {BPFFS}");
    }
    Ok(())
}
