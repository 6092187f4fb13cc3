//! The Home view in a real browser, fed for real (issue 5 §5): a real `opha-sidecar primary`
//! serves the page and its API; a real `opha-sidecar poller` in a network namespace streams
//! to it over the bus (QUIC, mutual TLS) what it sees of real polls (`opha-pollgen`) of real
//! net-snmp `snmpd` devices. Headless Chromium, driven through chromedriver, runs the shared
//! scenario (`opha_tests::home::scenario`) against it.
//!
//! The deployment model is the shared poller: one poller, two tenants by prefix
//! (`198.18.16.0/30` is tenant 1, `198.18.16.4/30` tenant 2), the tenant of each node taken
//! from the kernel's prefix map. The poller checks six daemons, each a real process this test
//! runs (a `sleep` whose argv[0] names it, checked with `process =`): "stopping a daemon"
//! kills its process. A node is taken down by removing its address in the devices'
//! namespace, so polls to it vanish; the poller's aggregate needs `down_after` failed polls,
//! so the intervals are short.
//!
//! Topology (addresses only from 198.18.0.0/15 and loopback):
//!
//! ```text
//!  root ns: browser -> 127.0.0.1:API <- primary -- QUIC on 198.19.x.1 [veth] 198.19.x.2 -- poller ns
//!  poller ns [site veth] wan ns [veth] devices ns (snmpd, 198.18.16.1-6)
//! ```
//!
//! The primary runs in the root namespace so that the browser only ever reaches 127.0.0.1
//! (the harness allows nothing else); one veth pair joins it to the poller's namespace.
//!
//! Root only; every namespace, veth, process, pin and temp dir is removed by a guard, also
//! when the test fails.

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use opha_api::mint;
use opha_common::wire::TenantId;
use opha_tests::browser::{Browser, browser_paths};
use opha_tests::home::{DAEMONS, Expect, HomeTarget, LIVE, scenario};
use opha_tests::netns::{
    ConfigPrefix, PollerOptions, PollerSidecar, Site, SiteConfig, Snmpd, TempDir, sidecar_binary,
    tool,
};
use opha_tests::pins::unique_instance;
use opha_tests::privilege::privileged;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const PRIMARY: &str = "primary-home";
const TENANTS: [u32; 2] = [1, 2];
/// Nodes 198.18.16.1-3 are tenant 1's, .4-.6 tenant 2's (the site numbers them from .1).
const NODES: usize = 6;
const PREFIXES: [(&str, u32); 2] = [("198.18.16.0/30", 1), ("198.18.16.4/30", 2)];
/// Not started: red from the start.
const STOPPED: &str = "opeventsd";
/// Running at first; the test kills it.
const TO_STOP: &str = "nmis9d";
const BUS_PORT: u16 = 7443;
/// Short intervals: a node is down after 3 failed pings 300 ms apart, each timing out after
/// 500 ms; daemons are checked every 250 ms, down after 2 failed checks.
const POLLER_TOML: &str = r#"
[intervals]
metrics = "2s"
poll_timeout = "500ms"
sweep = "100ms"
heartbeat = "1s"

[thresholds]
down_after = 3
up_after = 2

[daemon_health]
interval = "250ms"
down_after = 2
up_after = 1
timeout = "250ms"
"#;
const TRANSPORT: &str = "keep_alive_ms = 250\nidle_timeout_ms = 3000\nrtt_ms = 10\n";
/// How often pollgen pings each node, and its own timeout.
const PING_EVERY: &str = "300ms";
const PING_TIMEOUT: &str = "400ms";
/// Bound on every polling process (it also dies with the test).
const POLL_FOR: &str = "240s";
/// A node taken down is a `node_down` row on the page within this (measured and printed):
/// poll timeout + 3 pings + a sweep + the bus and the page, with room for a busy host.
const NODE_DOWN_WITHIN: Duration = Duration::from_secs(10);
/// Setup waits (processes starting, the first heartbeat with every node).
const SETUP: Duration = Duration::from_secs(60);

fn sidecar(args: &[&str]) -> Result<()> {
    let out = Command::new(sidecar_binary()?).args(args).output()?;
    ensure!(
        out.status.success(),
        "opha-sidecar {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new(tool("ip")).args(args).output()?;
    ensure!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A command that gets SIGKILL when the thread that spawned it exits (the test's main
/// thread), in its own process group.
fn dies_with_test(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.process_group(0);
    // SAFETY: prctl(2) is async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// A child process killed and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A veth pair from the root namespace into `ns`: `root_if` (root side) has `.1/30`, the
/// other end `.2/30`. Drop deletes it (the namespace's end goes with it).
struct RootVeth {
    root_if: String,
}

impl RootVeth {
    fn new(ns: &str, net: Ipv4Addr) -> Result<(RootVeth, Ipv4Addr, Ipv4Addr)> {
        let tag = format!("{:x}", std::process::id() & 0xff_ffff);
        let (root_if, ns_if) = (format!("ohr{tag}r"), format!("ohr{tag}n"));
        ip(&[
            "link", "add", &root_if, "type", "veth", "peer", "name", &ns_if, "netns", ns,
        ])?;
        let v = RootVeth { root_if };
        let o = net.octets();
        let (a, b) = (
            Ipv4Addr::new(o[0], o[1], o[2], o[3] + 1),
            Ipv4Addr::new(o[0], o[1], o[2], o[3] + 2),
        );
        ip(&["addr", "add", &format!("{a}/30"), "dev", &v.root_if])?;
        ip(&["link", "set", &v.root_if, "up"])?;
        ip(&["-n", ns, "addr", "add", &format!("{b}/30"), "dev", &ns_if])?;
        ip(&["-n", ns, "link", "set", &ns_if, "up"])?;
        Ok((v, a, b))
    }
}

impl Drop for RootVeth {
    fn drop(&mut self) {
        let _ = Command::new(tool("ip"))
            .args(["link", "del", &self.root_if])
            .stderr(Stdio::null())
            .status();
    }
}

/// `opha-sidecar primary --config` in the root namespace; its output is kept for a failure's
/// report. Drop kills it.
struct Primary {
    child: Proc,
    output: Arc<Mutex<String>>,
}

impl Primary {
    fn start(config: &Path, api: SocketAddr) -> Result<Primary> {
        let mut child = dies_with_test(sidecar_binary()?)
            .arg("primary")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting opha-sidecar primary")?;
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
                    o.push_str(&line);
                    o.push('\n');
                }
            });
        }
        let mut p = Primary {
            child: Proc(child),
            output,
        };
        let deadline = Instant::now() + SETUP;
        loop {
            if let Some(st) = p.child.0.try_wait()? {
                thread::sleep(Duration::from_millis(100));
                bail!("the primary exited ({st}) at start:\n{}", p.output());
            }
            let listening = p.output().contains("listening on");
            if listening && TcpStream::connect_timeout(&api, Duration::from_millis(200)).is_ok() {
                return Ok(p);
            }
            if Instant::now() > deadline {
                bail!(
                    "the primary did not listen within {SETUP:?}:\n{}",
                    p.output()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// `GET path` with a bearer token on the primary's API (loopback); the status and JSON body.
fn api_get(addr: SocketAddr, token: &str, path: &str) -> Result<(u16, Value)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Connection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("GET {path}: no HTTP head in {text:?}"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("GET {path}: bad status line in {head:?}"))?;
    ensure!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "GET {path}: chunked answers are not expected from the API"
    );
    let v = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).with_context(|| format!("GET {path}: {body}"))?
    };
    Ok((status, v))
}

/// Polls `f` every 100 ms until it gives `Some` (at most `limit`); `what` names it in the error.
fn wait_until<T>(
    limit: Duration,
    what: &str,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {limit:?} (last error: {last})");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The whole system: declared in drop order (the browser goes first, in the test itself).
struct Real {
    api: SocketAddr,
    operator: String,
    tenant_tokens: BTreeMap<u32, String>,
    expect: Expect,
    poller_id: String,
    /// The daemons' processes by name; a stopped one is gone from here.
    daemons: BTreeMap<String, Proc>,
    /// Nodes of each tenant not taken down yet.
    up: BTreeMap<u32, Vec<Ipv4Addr>>,
    _pollgen: Proc,
    poller: PollerSidecar,
    primary: Primary,
    _veth: RootVeth,
    _snmpd: Snmpd,
    site: Site,
    _dir: TempDir,
}

impl Real {
    fn start() -> Result<Real> {
        let dir = TempDir::new("home-real")?;
        let root = dir.path();
        let site = Site::new(&SiteConfig::new("hbr", NODES, 0)).context("building the site")?;
        ensure!(
            site.v4.first() == Some(&Ipv4Addr::new(198, 18, 16, 1)),
            "the site's nodes moved: {:?}",
            site.v4
        );
        let snmpd = Snmpd::start(&site.devices, &[]).context("starting snmpd")?;
        // A /30 of its own per test process, far from the site's addresses.
        let net = Ipv4Addr::new(198, 19, 200 + (std::process::id() % 50) as u8, 0);
        let (veth, primary_addr, _) = RootVeth::new(site.poller.name(), net)?;
        let bus = SocketAddr::from((primary_addr, BUS_PORT));

        let instance = unique_instance("home-real");
        let mut opts = PollerOptions::new(&site.poller_if, &instance);
        let poller_id = opts.poller_id.clone();

        // Certificates: the primary, and the poller for both tenants.
        let (ca, certs) = (root.join("ca"), root.join("certs"));
        let (ca_s, certs_s) = (
            ca.to_str().context("temp path")?,
            certs.to_str().context("temp path")?,
        );
        sidecar(&["certs", "init", "--dir", ca_s, "--days", "2"])?;
        sidecar(&[
            "certs", "issue", "--ca", ca_s, "--out", certs_s, "--peer", PRIMARY, "--role",
            "primary", "--days", "2",
        ])?;
        sidecar(&[
            "certs", "issue", "--ca", ca_s, "--out", certs_s, "--peer", &poller_id, "--role",
            "poller", "--tenant", "1", "--tenant", "2", "--days", "2",
        ])?;

        // Tokens: an operator and one per tenant.
        let op = mint("noc", None)?;
        let mut tokens = op.to_toml();
        let mut tenant_tokens = BTreeMap::new();
        for t in TENANTS {
            let m = mint(&format!("portal-{t}"), Some(TenantId(t)))?;
            tokens.push('\n');
            tokens.push_str(&m.to_toml());
            tenant_tokens.insert(t, m.token);
        }
        let api = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let config = root.join("primary.toml");
        std::fs::write(
            &config,
            format!(
                r#"peer_id = "{PRIMARY}"
role = "primary"
listen = "{bus}"
[tls]
certificate = "{certs_s}/{PRIMARY}.pem"
key = "{certs_s}/{PRIMARY}.key"
ca = "{ca_s}/ca.pem"
[store]
dir = "{store}"
[transport]
{TRANSPORT}
[[poller]]
id = "{poller_id}"
tenants = [1, 2]
[metrics]
listen = "off"
[api]
listen = "{api}"
{tokens}"#,
                store = root.join("store").display(),
            ),
        )?;
        let primary = Primary::start(&config, api)?;

        // The daemons: a process each, named by its argv[0], unique to this test process.
        let mut daemons = BTreeMap::new();
        let mut daemon_toml = String::new();
        for d in DAEMONS {
            let pname = format!("ohr{}-{d}", std::process::id());
            let _ = write!(
                daemon_toml,
                "[[daemon]]\nname = \"{d}\"\nprocess = \"{pname}\"\n\n"
            );
            if d != STOPPED {
                let child = dies_with_test(tool("sleep"))
                    .arg0(&pname)
                    .arg("600")
                    .stdin(Stdio::null())
                    .spawn()
                    .with_context(|| format!("starting {pname}"))?;
                daemons.insert(d.to_string(), Proc(child));
            }
        }

        opts.prefixes = PREFIXES
            .iter()
            .map(|&(cidr, tenant)| ConfigPrefix {
                vlan: 0,
                cidr: cidr.into(),
                tenant,
            })
            .collect();
        opts.daemons = daemon_toml;
        let opts = opts.extra(POLLER_TOML).extra(&format!(
            r#"
[bus]
cert = "{certs_s}/{poller_id}.pem"
key = "{certs_s}/{poller_id}.key"
ca = "{ca_s}/ca.pem"
reconnect_min = "50ms"
reconnect_max = "500ms"
[bus.transport]
{TRANSPORT}
[[receiver]]
peer = "{PRIMARY}"
role = "primary"
address = "{bus}"
"#
        ));
        let poller = PollerSidecar::start(&site.poller, opts).context("starting the poller")?;

        // Polls of every node, like NMIS: pings every 300 ms, an SNMP cycle of 2 s.
        let first = site.v4[0];
        let last = site.v4[NODES - 1];
        let pollgen = site
            .poller
            .command(env!("CARGO_BIN_EXE_opha-pollgen"))
            .args(["--range", &format!("{first}-{last}")])
            .args(["--cycle", "2s", "--ping-every", PING_EVERY])
            .args(["--timeout", PING_TIMEOUT, "--retries", "0"])
            .args(["--duration", POLL_FOR, "--set-ping-group-range"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting opha-pollgen")?;

        let up: BTreeMap<u32, Vec<Ipv4Addr>> = TENANTS
            .iter()
            .map(|&t| {
                let nodes = site.v4[(t as usize - 1) * 3..t as usize * 3].to_vec();
                (t, nodes)
            })
            .collect();
        let real = Real {
            api,
            operator: op.token,
            tenant_tokens,
            expect: Expect {
                peers: vec![
                    (PRIMARY.to_string(), vec![]),
                    (poller_id.clone(), TENANTS.to_vec()),
                ],
                stopped: (poller_id.clone(), STOPPED.into()),
                to_stop: (poller_id.clone(), TO_STOP.into()),
                tenants: TENANTS,
                kpi: None,
                node_down_within: NODE_DOWN_WITHIN,
                shot: "home-browser-real".into(),
                // The poller's own daemon_down/daemon_up events carry the operator's tenant 0
                // (PEER_TENANT) and are stored in the operator's file, which the operator
                // sees as a tenant row (tenant tokens do not).
                operator_extra_tenants: vec![0],
            },
            poller_id,
            daemons,
            up,
            _pollgen: Proc(pollgen),
            poller,
            primary,
            _veth: veth,
            _snmpd: snmpd,
            site,
            _dir: dir,
        };
        real.wait_streaming()?;
        real.seed_events()?;
        Ok(real)
    }

    /// Until the primary's summary shows the poller's heartbeat with 3 nodes per tenant and
    /// its daemons as this test runs them (the stopped one down, every other one up).
    fn wait_streaming(&self) -> Result<()> {
        let took = Instant::now();
        wait_until(SETUP, "the poller's heartbeat with every node", || {
            let (st, v) = api_get(self.api, &self.operator, "/api/v1/summary")?;
            ensure!(st == 200, "summary: {st} {v}");
            let Some(card) = v["peers"]
                .as_array()
                .and_then(|a| a.iter().find(|p| p["peer"] == self.poller_id.as_str()))
            else {
                return Ok(None);
            };
            let nodes: BTreeMap<u64, u64> = card["nodes"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|n| Some((n["tenant"].as_u64()?, n["nodes"].as_u64()?)))
                        .collect()
                })
                .unwrap_or_default();
            let states: BTreeMap<String, String> = card["daemons"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|d| {
                            Some((d["daemon"].as_str()?.into(), d["state"].as_str()?.into()))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let want_daemons = DAEMONS.iter().all(|d| {
                let want = if *d == STOPPED { "down" } else { "up" };
                states.get(*d).map(String::as_str) == Some(want)
            });
            let want_nodes = nodes == BTreeMap::from([(1, 3), (2, 3)]);
            Ok((want_nodes && want_daemons).then_some(()))
        })
        .with_context(|| self.report())?;
        eprintln!(
            "home_browser_real: poller streaming, 3 nodes per tenant, daemons as run, after {:.2?}",
            took.elapsed()
        );
        Ok(())
    }

    /// One stored event per tenant before the page opens (a tenant's page lists its stored
    /// events): an NMIS event posted to the poller's local ingest about one of its nodes.
    fn seed_events(&self) -> Result<()> {
        for t in TENANTS {
            let node = self.up[&t][2];
            let body = serde_json::json!({
                "source": "nmis",
                "event": "Node Reset",
                "severity": "minor",
                "address": node.to_string(),
                "tenant": t,
                "details": format!("home_browser_real seed for tenant {t}"),
            });
            let r = self
                .poller
                .ingest_unix("POST", "/v1/events", body.to_string().as_bytes())?;
            ensure!(r.status == 200, "ingest: {} {}", r.status, r.text());
        }
        wait_until(SETUP, "the seeded events at the primary", || {
            let mut all = true;
            for t in TENANTS {
                let (st, v) = api_get(
                    self.api,
                    &self.tenant_tokens[&t],
                    "/api/v1/events?kind=external",
                )?;
                ensure!(st == 200, "events: {st} {v}");
                all &= v["items"].as_array().is_some_and(|a| !a.is_empty());
            }
            Ok(all.then_some(()))
        })
        .with_context(|| self.report())
    }

    /// Outputs of the processes, for a failure.
    fn report(&self) -> String {
        format!(
            "primary:\n{}\npoller:\n{}",
            tail(&self.primary.output(), 40),
            tail(&self.poller.output(), 40)
        )
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl HomeTarget for Real {
    fn url(&self) -> String {
        format!("http://{}/", self.api)
    }

    fn operator_token(&self) -> &str {
        &self.operator
    }

    fn tenant_token(&self, tenant: u32) -> &str {
        &self.tenant_tokens[&tenant]
    }

    fn expect(&self) -> &Expect {
        &self.expect
    }

    fn stop_daemon(&mut self, peer: &str, daemon: &str) -> Result<()> {
        ensure!(peer == self.poller_id, "only the poller runs daemons here");
        let p = self
            .daemons
            .remove(daemon)
            .ok_or_else(|| anyhow!("{daemon} does not run"))?;
        drop(p); // SIGKILL and reaped: gone from the process table
        Ok(())
    }

    fn take_node_down(&mut self, tenant: u32) -> Result<String> {
        let a = self
            .up
            .get_mut(&tenant)
            .and_then(|v| (!v.is_empty()).then(|| v.remove(0)))
            .ok_or_else(|| anyhow!("tenant {tenant} has no node left to take down"))?;
        self.site.make_unreachable(&[a.into()])?;
        Ok(format!("0@{a}"))
    }

    fn settle(&mut self, tenant: u32, node: &str) -> Result<()> {
        let path = format!("/api/v1/events?tenant={tenant}&kind=node_down&node={node}");
        wait_until(
            NODE_DOWN_WITHIN,
            &format!("node_down of {node} stored"),
            || {
                let (st, v) = api_get(self.api, &self.operator, &path)?;
                ensure!(st == 200, "events: {st} {v}");
                Ok(v["items"]
                    .as_array()
                    .is_some_and(|a| !a.is_empty())
                    .then_some(()))
            },
        )
    }
}

#[test]
fn home_view_of_a_real_primary_in_a_browser() {
    const NAME: &str = "home_view_of_a_real_primary_in_a_browser";
    if !privileged(NAME) {
        return;
    }
    let Some((chromium, driver)) = browser_paths(NAME) else {
        return;
    };
    let started = Instant::now();
    // Declared first, dropped last: the browser goes before the system it talks to.
    let mut target = Real::start().expect("the primary, the poller and the devices");
    let setup = started.elapsed();
    let browser = Browser::start(&chromium, &driver).expect("browser starts");
    let took = scenario(&mut target, &browser);
    match took {
        Ok(t) => eprintln!(
            "home_browser_real: setup {setup:.2?}; daemon red after {:.2?} (bound {LIVE:?}), \
             node_down shown after {:.2?}, tenant's node_down after {:.2?} (bound \
             {NODE_DOWN_WITHIN:?}); total {:.2?}",
            t.daemon_red,
            t.node_down,
            t.tenant_node_down,
            started.elapsed()
        ),
        Err(e) => {
            let shot = browser.screenshot("home-browser-real-failure").ok();
            let log = browser.driver_log();
            panic!(
                "{e:#}\nscreenshot: {shot:?}\nchromedriver log (tail):\n{}\n{}",
                tail(&log, 20),
                target.report()
            );
        }
    }
}
