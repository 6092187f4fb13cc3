//! The poller config: the example parses and validates, defaults are the documented ones, the
//! effective config prints and parses back, and bad configs name the key and the problem.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use opha_common::wire::Severity;
use opha_sidecar::{
    config::{ConfigError, PollerConfig, SocketSetting},
    daemons::{DaemonCheck, NMIS_DAEMONS},
    inventory::Inventory,
};

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("examples")
        .join("poller.toml")
}

const MINIMAL: &str = r#"
poller_id = "p1"
interface = "eth1"

[[prefix]]
cidr = "198.18.0.0/15"
tenant = 1
"#;

fn load(text: &str) -> Result<PollerConfig, ConfigError> {
    PollerConfig::from_toml(text, "test.toml", Path::new("/etc/opha"))
}

/// The single problem of a config that must fail, as displayed.
fn error_of(text: &str) -> String {
    match load(text) {
        Ok(_) => panic!("config was accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn example_parses_and_validates() {
    let cfg = PollerConfig::load(&example_path()).expect("examples/poller.toml is valid");
    assert_eq!(cfg.poller_id.as_str(), "poller-chi-1");
    assert_eq!(cfg.instance(), "chi1");
    assert_eq!(cfg.prefixes.len(), 4);
    let prefixes = cfg.monitored_prefixes();
    assert_eq!(prefixes[2].vlan, 100);
    assert_eq!(prefixes[2].tenant, 2);
    assert_eq!(prefixes[3].addr.to_string(), "2001:db8::");
    assert_eq!(cfg.tcp_ports(), vec![22, 443]);
    let loader = cfg.loader_config();
    assert_eq!(loader.instance, "chi1");
    assert_eq!(loader.ringbuf_bytes, 4 << 20);
    assert_eq!(cfg.port_config().configured, 1);
    let log = cfg.log_config();
    assert_eq!(log.dir, PathBuf::from("/var/lib/opha/chi1/log"));
    assert_eq!(log.budget.limit_bytes, 1 << 30);
    assert_eq!(log.segment_bytes, 64 << 20);
    assert_eq!(
        cfg.thresholds.snmp.rtt_clear,
        Some(Duration::from_millis(800))
    );
    assert_eq!(cfg.thresholds.tcp.loss_ppm(), None, "loss = \"off\"");
    assert_eq!(cfg.thresholds.icmp.loss_ppm(), Some(200_000));
    let agg = cfg.aggregate_config();
    assert_eq!(agg.poller.as_str(), "poller-chi-1");
    assert_eq!((agg.interval_ms, agg.poll_timeout_ms), (60_000, 5_000));
    assert_eq!((agg.down_after, agg.up_after), (3, 2));
    assert_eq!(agg.tcp_ports, vec![22, 443]);
    assert_eq!(agg.icmp.rtt_above_us, Some(250_000));
    assert_eq!(agg.icmp.rtt_below_us, None, "the core's default band");
    assert_eq!(
        (agg.snmp.rtt_above_us, agg.snmp.rtt_below_us),
        (Some(1_000_000), Some(800_000))
    );
    assert_eq!(
        (agg.snmp.loss_above_ppm, agg.snmp.loss_below_ppm),
        (Some(200_000), Some(100_000))
    );
    assert_eq!(agg.tcp.loss_above_ppm, None);
    assert_eq!(agg.tcp.loss_min_requests, 1);
    let tc = cfg.tracker_config();
    assert_eq!((tc.down_after, tc.up_after, tc.heartbeat_ms), (2, 1, 5000));
    let specs = cfg.daemon_specs();
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, NMIS_DAEMONS);
    assert_eq!(specs[0].check, DaemonCheck::Process("opchartsd".into()));
    assert_eq!(specs[2].check, DaemonCheck::Cmdline("opconfigd.pl".into()));
    assert_eq!(
        specs[3].check,
        DaemonCheck::Systemd("nmis9d.service".into())
    );
    assert_eq!(specs[3].severity, Severity::Critical);
    assert_eq!(specs[4].timeout, Duration::from_secs(2));
    assert_eq!(
        specs[5].timeout,
        Duration::from_secs(4),
        "daemon_health.timeout"
    );
    // The inventory path is relative to the config file, and the example inventory fits the
    // example prefixes.
    let inv_path = cfg.inventory.clone().expect("inventory set");
    assert!(inv_path.is_absolute());
    let inv = Inventory::load(&inv_path, &prefixes).expect("examples/inventory.csv is valid");
    assert_eq!(inv.len(), 11);
    assert!(inv.warnings().is_empty(), "{:?}", inv.warnings());
}

#[test]
fn minimal_config_gets_the_documented_defaults() {
    let c = load(MINIMAL).unwrap();
    assert_eq!(c.instance(), "eth1");
    assert_eq!(c.region, "");
    assert_eq!(c.inventory, None);
    assert_eq!(c.prefixes[0].vlan, 0);
    assert_eq!(
        (c.ports.snmp, c.ports.trap, c.ports.syslog),
        (161, 162, 514)
    );
    assert!(c.ports.tcp_checks.is_empty());
    assert_eq!(c.ports.snap_len, 512);
    assert_eq!(c.intervals.metrics, Duration::from_secs(60));
    assert_eq!(c.intervals.poll_timeout, Duration::from_secs(5));
    assert_eq!(c.intervals.sweep, Duration::from_secs(1));
    assert_eq!(c.intervals.heartbeat, Duration::from_secs(5));
    assert_eq!((c.thresholds.down_after, c.thresholds.up_after), (3, 2));
    let ms = Duration::from_millis;
    assert_eq!(c.thresholds.icmp.rtt, Some(Some(ms(250))));
    assert_eq!(c.thresholds.snmp.rtt, Some(Some(ms(1000))));
    assert_eq!(c.thresholds.tcp.rtt, Some(Some(ms(500))));
    for class in [&c.thresholds.icmp, &c.thresholds.snmp, &c.thresholds.tcp] {
        assert_eq!(class.loss, Some(Some(200_000)));
        assert_eq!(class.loss_min_requests, Some(1));
        assert_eq!((class.rtt_clear, class.loss_clear), (None, None));
    }
    assert_eq!(c.daemon_health.interval, Duration::from_secs(5));
    assert_eq!(
        (c.daemon_health.down_after, c.daemon_health.up_after),
        (2, 1)
    );
    assert_eq!(c.daemon_health.timeout, Duration::from_secs(4));
    let specs = c.daemon_specs();
    assert_eq!(specs.len(), 6);
    for (s, n) in specs.iter().zip(NMIS_DAEMONS) {
        assert_eq!(s.check, DaemonCheck::Process(n.to_string()));
        assert_eq!(s.severity, Severity::Major);
    }
    assert_eq!(c.log_dir(), PathBuf::from("/var/lib/opha/eth1/log"));
    assert_eq!(c.log.budget, 1 << 30);
    assert_eq!(c.log.segment, 64 << 20);
    assert_eq!(c.log.warn_percent, 80);
    assert_eq!(c.log.thin_keep_every, 10);
    assert_eq!(c.log.commit_window, Duration::ZERO);
    assert_eq!(c.ingest.http, Some("127.0.0.1:8730".parse().unwrap()));
    assert_eq!(
        c.ingest_socket(),
        Some(PathBuf::from("/run/opha/eth1/ingest.sock"))
    );
    assert!(!c.ingest.allow_remote);
    assert_eq!(c.ingest.max_body, 1 << 20);
    assert_eq!(c.metrics.listen, Some("127.0.0.1:9730".parse().unwrap()));
    assert_eq!(c.kernel.max_nodes, 16384);
    assert_eq!(c.kernel.max_inflight, 65536);
    assert_eq!(c.kernel.max_prefixes, 16384);
    assert_eq!(c.kernel.ringbuf, 4 << 20);
    assert_eq!(c.kernel.pin_root, PathBuf::from("/sys/fs/bpf/opha"));
}

#[test]
fn defaults_agree_with_the_aggregation_core() {
    let mut ours = load(MINIMAL).unwrap().aggregate_config();
    let core = opha_sidecar::aggregate::AggConfig::default();
    ours.poller = core.poller.clone();
    assert_eq!(ours, core);
}

#[test]
fn effective_config_prints_and_parses_back() {
    for text in [
        MINIMAL.to_string(),
        std::fs::read_to_string(example_path()).unwrap(),
    ] {
        let cfg = load(&text).unwrap();
        let printed = cfg.to_toml().expect("serializes");
        let again = load(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}"));
        assert_eq!(again, cfg, "{printed}");
    }
}

#[test]
fn relative_paths_follow_the_config_file() {
    let text = r#"
poller_id = "p1"
interface = "eth1"
inventory = "nodes.json"
[[prefix]]
cidr = "198.18.0.0/15"
tenant = 1
[log]
dir = "state/log"
[ingest]
unix = "run/ingest.sock"
"#;
    let c = PollerConfig::from_toml(text, "x", Path::new("/srv/opha")).unwrap();
    assert_eq!(c.inventory, Some(PathBuf::from("/srv/opha/nodes.json")));
    assert_eq!(c.log_dir(), PathBuf::from("/srv/opha/state/log"));
    assert_eq!(
        c.ingest.unix,
        Some(SocketSetting::At(PathBuf::from(
            "/srv/opha/run/ingest.sock"
        )))
    );
    let off = format!("{MINIMAL}\n[ingest]\nunix = \"off\"\nhttp = \"off\"\n");
    let c = load(&off).unwrap();
    assert_eq!(c.ingest_socket(), None);
    assert_eq!(c.ingest.http, None);
}

#[test]
fn no_daemons_when_the_list_is_empty() {
    let text = MINIMAL.replacen("interface", "daemon = []\ninterface", 1);
    let c = load(&text).unwrap();
    assert!(c.daemon_specs().is_empty());
}

#[test]
fn bad_prefix_names_the_key_and_line() {
    let text = r#"poller_id = "p1"
interface = "eth1"

[[prefix]]
cidr = "198.18.0.0/16"
tenant = 1

[[prefix]]
cidr = "198.19.0.0/16"
tenant = 1

[[prefix]]
vlan = 7
cidr = "198.18.0.0/33"
tenant = 2
"#;
    assert_eq!(
        error_of(text),
        "test.toml: prefix[2].cidr: 198.18.0.0/33 is not a prefix: length 33 is above 32 (line 14, column 8)"
    );
}

#[test]
fn parse_errors_name_key_and_problem() {
    let with = |extra: &str| format!("{MINIMAL}\n{extra}\n");
    for (text, want) in [
        (
            with("[ports]\nsnpm = 161"),
            "ports.snpm: unknown key (known keys here: snmp, trap, syslog, tcp_checks, snap_len)",
        ),
        (
            with("[ports]\nsnmp = 70000"),
            "ports.snmp: 70000 is not a port: use 1-65535",
        ),
        (
            with("[ports]\ntcp_checks = [22, 0]"),
            "ports.tcp_checks[1]: 0 is not a port: use 1-65535",
        ),
        (
            with("[ports]\nsnmp = \"161\""),
            "ports.snmp: \"161\" is a string: write the port as a number",
        ),
        (
            with("[intervals]\nmetrics = 60"),
            "intervals.metrics: \"60\" has no unit: write e.g. \"60s\" or \"60ms\"",
        ),
        (
            with("[intervals]\nsweep = \"1.5s\""),
            "intervals.sweep: \"1.5s\": write whole numbers",
        ),
        (
            with("[log]\nbudget = \"1 GB\"\nsegment = \"1Gib\""),
            "log.segment: \"1Gib\": unknown unit \"Gib\"",
        ),
        (
            with("[thresholds.icmp]\nloss = 5"),
            "thresholds.icmp.loss: \"5\" has no unit",
        ),
        (
            with("[thresholds.icmp]\nloss = \"120%\""),
            "thresholds.icmp.loss: \"120%\" is above 100%",
        ),
        (
            with("[thresholds.udp]\nloss = \"1%\""),
            "thresholds.udp: unknown key",
        ),
        (
            with("[ingest]\nhttp = \"localhost:8730\""),
            "ingest.http: \"localhost:8730\": write an IP address rather than a name, e.g. \"127.0.0.1:8730\"",
        ),
        (
            with("[[daemon]]\nname = \"omkd\"\nseverity = \"urgent\""),
            "daemon[0].severity: unknown variant `urgent`",
        ),
        (
            with("[[daemon]]\nname = \"omkd\"\ntimeout = \"abc\""),
            "daemon[0].timeout: \"abc\" is not a duration",
        ),
        (
            with("[[daemon]]\nprocess = \"omkd\""),
            "daemon[0].name: is required",
        ),
        (
            MINIMAL.replace("tenant = 1", "tenant = 0"),
            "prefix[0].tenant: 0 is not a tenant (0 is reserved): use 1-4294967295",
        ),
        (
            MINIMAL.replace("cidr", "vlan = 5000\ncidr"),
            "prefix[0].vlan: 5000 is not a VLAN id (0 = untagged): use 0-4094",
        ),
        (
            MINIMAL.replace("198.18.0.0/15", "198.18.0.1/15"),
            "prefix[0].cidr: 198.18.0.1/15 has host bits set: did you mean 198.18.0.0/15?",
        ),
        (
            MINIMAL.replace("198.18.0.0/15", "198.18.0.0"),
            "prefix[0].cidr: 198.18.0.0 is not a prefix: expected ADDRESS/LEN",
        ),
        (
            MINIMAL.replace("198.18.0.0/15", "5@198.18.0.0/15"),
            "prefix[0].cidr: 5@198.18.0.0/15 is not a prefix: write the VLAN in the `vlan` key",
        ),
        (
            MINIMAL.replace("198.18.0.0/15", "example.net/15"),
            "prefix[0].cidr: example.net/15 is not a prefix: \"example.net\" is not an IP address",
        ),
        (
            MINIMAL.replace("\"p1\"", "\"Poller 1\""),
            "poller_id: peer id contains 'P'",
        ),
        (
            MINIMAL.replace("poller_id = \"p1\"", ""),
            "poller_id: is required",
        ),
        (
            MINIMAL.replace("[[prefix]]", "[[prefixes]]"),
            "prefixes: unknown key",
        ),
    ] {
        let got = error_of(&text);
        assert!(got.starts_with("test.toml: "), "{got}");
        assert!(got.contains(want), "want {want:?}\n got {got:?}");
        assert!(got.contains("(line "), "parse errors carry a line: {got:?}");
    }
}

#[test]
fn bus_transport_settings_name_the_key() {
    let with = |extra: &str| format!("{MINIMAL}\n{extra}\n");
    let got = error_of(&with("[bus.transport]\ncongestion = \"reno\""));
    assert!(
        got.contains("bus.transport.congestion: unknown variant `reno`"),
        "{got}"
    );
    let got = error_of(&with("[bus.transport]\nkeep_alive_ms = 0"));
    assert!(got.contains("bus.transport.keep_alive_ms"), "{got}");
    let got = error_of(&with("[bus.transport]\nrtt_ms = 0"));
    assert!(got.contains("bus.transport.rtt_ms"), "{got}");
    let cfg = load(&with("[bus.transport]\ncongestion = \"bbr\"\nrtt_ms = 200")).unwrap();
    assert_eq!(cfg.bus.transport.congestion, opha_identity::Congestion::Bbr);
    assert_eq!(cfg.bus.transport.rtt_ms, 200);
    assert_eq!(
        load(MINIMAL).unwrap().bus.transport.congestion,
        opha_identity::Congestion::Cubic
    );
}

#[test]
fn toml_syntax_errors_carry_the_line() {
    let text = "poller_id = \"p1\"\ninterface = eth1\n";
    let got = error_of(text);
    assert!(got.starts_with("test.toml: line 2, column 13: "), "{got}");
}

#[test]
fn validation_names_every_problem() {
    let text = r#"
poller_id = "p1"
interface = "a-much-too-long-interface"

[[prefix]]
cidr = "198.18.0.0/16"
tenant = 1

[[prefix]]
cidr = "198.18.0.0/16"
tenant = 2

[ports]
trap = 514
tcp_checks = [22, 443, 22]
snap_len = 1024

[intervals]
metrics = "10s"
poll_timeout = "15s"

[thresholds.snmp]
rtt = "1s"
rtt_clear = "2s"

[daemon_health]
interval = "2s"

[[daemon]]
name = "omkd"
systemd = "omkd.service"
command = ["/bin/true"]

[[daemon]]
name = "omkd"
command = ["/usr/bin/pgrep -x omkd"]
timeout = "3s"

[[daemon]]
name = "ophad"
command = []

[log]
budget = "100MiB"
segment = "64MiB"

[ingest]
http = "0.0.0.0:8730"

[metrics]
listen = "198.18.0.9:9730"

[kernel]
ringbuf = "3MiB"
pin_root = "bpf/opha"
"#;
    let err = load(text).unwrap_err();
    let got: Vec<String> = err.problems().iter().map(|p| p.to_string()).collect();
    let want = [
        "interface: \"a-much-too-long-interface\" is not an interface name: use 1-15 bytes",
        "prefix[1]: 198.18.0.0/16 on VLAN 0 is already prefix[0]",
        "ports.syslog: 514 is also ports.trap: traps and syslog need different ports",
        "ports.tcp_checks[2]: 22 is listed twice",
        "ports.snap_len: 1024 is outside 1-512",
        "intervals.poll_timeout: 15s must be shorter than intervals.metrics (10s)",
        "thresholds.snmp.rtt_clear: 2s is above rtt (1s)",
        "daemon_health.timeout: 4s is longer than daemon_health.interval (2s): checks would overlap",
        "daemon[0]: set only one of process, cmdline, systemd, command, shell (found systemd and command)",
        "daemon[1].name: \"omkd\" is already daemon[0]",
        "daemon[1].command: \"/usr/bin/pgrep -x omkd\" is one string with spaces: commands run without a shell",
        "daemon[1].timeout: 3s is longer than daemon_health.interval (2s)",
        "daemon[2].command: is empty",
        "log.budget: 100MiB must be at least twice log.segment (64MiB)",
        "ingest.http: 0.0.0.0:8730 is not a loopback address; local ingest has no authentication and stores what it is sent, so binding beyond localhost needs ingest.allow_remote = true",
        "metrics.listen: 198.18.0.9:9730 is not a loopback address",
        "kernel.ringbuf: 3MiB must be a power of two",
        "kernel.pin_root: bpf/opha is not an absolute path",
    ];
    for w in want {
        assert!(
            got.iter().any(|g| g.starts_with(w)),
            "missing {w:?} in\n{}",
            got.join("\n")
        );
    }
    assert_eq!(got.len(), want.len(), "{}", got.join("\n"));
    let shown = err.to_string();
    assert!(
        shown.starts_with(&format!("test.toml: {} problems:\n  ", want.len())),
        "{shown}"
    );
}

#[test]
fn remote_listeners_need_the_explicit_allow() {
    let text = format!(
        "{MINIMAL}\n[ingest]\nhttp = \"[::]:8730\"\nallow_remote = true\n[metrics]\nlisten = \"0.0.0.0:9730\"\nallow_remote = true\n"
    );
    let c = load(&text).unwrap();
    assert_eq!(
        c.ingest.http,
        Some("[::]:8730".parse::<SocketAddr>().unwrap())
    );
    let clash = format!("{MINIMAL}\n[metrics]\nlisten = \"127.0.0.1:8730\"\n");
    assert!(error_of(&clash).contains("metrics.listen: 127.0.0.1:8730 clashes with ingest.http"));
}

#[test]
fn no_prefix_is_an_error() {
    let text = "poller_id = \"p1\"\ninterface = \"eth1\"\n";
    assert!(error_of(text).contains("prefix: no monitored prefix"));
}

#[test]
fn missing_file_names_the_file() {
    let err = PollerConfig::load(Path::new("/nonexistent/opha.toml")).unwrap_err();
    assert!(
        err.to_string().starts_with("/nonexistent/opha.toml: "),
        "{err}"
    );
}

/// Every key of the effective config is documented in docs/configuration.md.
#[test]
fn every_key_is_documented() {
    let docs_path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("docs")
        .join("configuration.md");
    let docs = std::fs::read_to_string(&docs_path).expect("docs/configuration.md");
    let text = std::fs::read_to_string(example_path()).unwrap();
    let cfg = load(&text).unwrap();
    let value: toml::Value = toml::from_str(&cfg.to_toml().unwrap()).unwrap();
    let mut keys = Vec::new();
    collect_keys(&value, "", &mut keys);
    assert!(keys.len() > 40, "{keys:?}");
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !docs.contains(&format!("`{k}`")))
        .collect();
    assert!(missing.is_empty(), "undocumented keys: {missing:?}");
}

fn collect_keys(v: &toml::Value, prefix: &str, out: &mut Vec<String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if !v.is_table()
                    && !matches!(v, toml::Value::Array(a) if a.iter().any(|x| x.is_table()))
                {
                    out.push(key.clone());
                }
                collect_keys(v, &key, out);
            }
        }
        toml::Value::Array(a) => {
            for item in a.iter().filter(|x| x.is_table()) {
                // Arrays of tables are documented as `prefix[].cidr`.
                collect_keys(item, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn a_relative_config_path_still_resolves_to_absolute_paths() {
    // `opha-sidecar poller --config examples/poller.toml`: the file's directory is relative.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.toml"),
        "poller_id = \"p1\"\ninterface = \"eth1\"\ninventory = \"nodes.json\"\n\
         [[prefix]]\ncidr = \"198.18.0.0/15\"\ntenant = 1\n[log]\ndir = \"state/log\"\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("nodes.json"), "[]").unwrap();
    let cwd = std::env::current_dir().unwrap();
    let relative: PathBuf = pathdiff(dir.path(), &cwd).join("p.toml");
    assert!(relative.is_relative(), "{}", relative.display());
    let c: PollerConfig = opha_sidecar::config::load_file(&relative)
        .unwrap_or_else(|e| panic!("{}: {e}", relative.display()));
    // Absolute (not normalized: `..` steps may remain, as std::path::absolute keeps them).
    assert!(c.log_dir().is_absolute(), "{}", c.log_dir().display());
    assert!(c.log_dir().ends_with("state/log"));
    let inventory = c.inventory.unwrap();
    assert!(
        inventory.is_absolute() && inventory.exists(),
        "{}",
        inventory.display()
    );
}

/// `to` relative to `from` (both absolute), with `..` steps.
fn pathdiff(to: &Path, from: &Path) -> PathBuf {
    let (to, from): (Vec<_>, Vec<_>) = (to.components().collect(), from.components().collect());
    let common = to.iter().zip(&from).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for c in &to[common..] {
        out.push(c);
    }
    out
}
