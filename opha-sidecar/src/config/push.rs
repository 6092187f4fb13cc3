//! Config push, the pure part: validating a pushed poller config and planning how the
//! running poller takes it (in the style of quinn-proto: no I/O, tests without sockets).
//!
//! A push carries a whole poller config file (TOML) and a version. The poller:
//! 1. ignores a version at or below the one it runs ([`decide`] -> [`Decision::Current`]:
//!    answered "already current", idempotent);
//! 2. parses, resolves and validates the text exactly like a local file ([`parse_pushed`];
//!    every problem names its key);
//! 3. compares it with the running config ([`plan`]): keys that cannot change under a running
//!    poller (identity, interface, kernel bounds, log, listeners, bus) must be equal, or the
//!    push is rejected with the reason and the poller keeps its running version; the others
//!    make up a [`ConfigPlan`]: what goes to the kernel maps (prefixes with their tenants,
//!    ports, TCP check ports), what is swapped in the aggregator (intervals, thresholds, TCP
//!    ports), and what the heartbeat task takes (daemons, their checks, heartbeat, region).
//!
//! The primary runs step 2 too ([`validate_for`]) before it stores and versions a config, so
//! an operator's typo is reported at the form, with the key.

use std::path::Path;
use std::time::Duration;

use opha_common::ports::PortConfig;
use opha_common::wire::PeerId;

use super::{ConfigError, PollerConfig, Problem};
use crate::aggregate::AggConfig;
use crate::loader::MonitoredPrefix;

/// Paths in a pushed config are resolved against this directory (the primary does not know
/// the poller's file system): write them absolute, or leave them at their defaults.
pub const PUSH_BASE_DIR: &str = "/";

/// What a push does to the running poller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The push's version is not above the running one: nothing to do (answered as current).
    Current { running: u64 },
    /// Invalid, or not appliable live: the reason (keys named); the running config stays.
    Reject(String),
    /// Apply this plan, then run `config` as `version`.
    Apply {
        version: u64,
        config: Box<PollerConfig>,
        plan: Box<ConfigPlan>,
    },
}

/// The parts of a poller that change, each `Some` only when it differs from the running one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigPlan {
    /// New contents of the prefix (LPM) map: prefixes and their tenants.
    pub prefixes: Option<Vec<MonitoredPrefix>>,
    /// New port configuration (SNMP, trap, syslog ports, snap length).
    pub ports: Option<PortConfig>,
    /// New TCP check ports map.
    pub tcp_ports: Option<Vec<u16>>,
    /// New aggregator settings (intervals, hysteresis, thresholds, TCP ports).
    pub aggregate: Option<AggConfig>,
    /// New `(intervals.sweep, intervals.poll_timeout)` for the aggregate task.
    pub sweep: Option<(Duration, Duration)>,
    /// The heartbeat task's part changed (daemons, daemon checks, heartbeat, region).
    pub heartbeat: bool,
    /// Every changed key, for the log and the answer.
    pub changed: Vec<String>,
}

impl ConfigPlan {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty()
    }

    /// Whether the kernel maps change.
    pub fn touches_kernel(&self) -> bool {
        self.prefixes.is_some() || self.ports.is_some() || self.tcp_ports.is_some()
    }

    /// The plan that puts `running` back after this one was (partly) applied: every map and
    /// setting this plan changes, at `running`'s values.
    pub fn undo(&self, running: &PollerConfig) -> ConfigPlan {
        ConfigPlan {
            prefixes: self.prefixes.as_ref().map(|_| running.monitored_prefixes()),
            ports: self.ports.map(|_| running.port_config()),
            tcp_ports: self.tcp_ports.as_ref().map(|_| running.tcp_ports()),
            aggregate: self.aggregate.as_ref().map(|_| running.aggregate_config()),
            sweep: self
                .sweep
                .map(|_| (running.intervals.sweep, running.intervals.poll_timeout)),
            heartbeat: self.heartbeat,
            changed: self.changed.clone(),
        }
    }
}

/// Why the primary refused a config: every problem, each naming its key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(.problems))]
pub struct ValidationError {
    pub problems: Vec<Problem>,
}

impl ValidationError {
    pub fn one(key: &str, message: impl Into<String>) -> Self {
        Self {
            problems: vec![Problem::new(key, message)],
        }
    }
}

fn render(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Parses, resolves (paths against [`PUSH_BASE_DIR`]) and validates a pushed config.
pub fn parse_pushed(text: &str) -> Result<PollerConfig, ValidationError> {
    PollerConfig::from_toml(text, "pushed config", Path::new(PUSH_BASE_DIR)).map_err(|e| match e {
        ConfigError::Invalid { problems, .. } => ValidationError { problems },
        ConfigError::Read { error, .. } => ValidationError::one("", error.to_string()),
    })
}

/// The primary's check before it stores a config for `poller`: valid, and for that poller.
pub fn validate_for(poller: &PeerId, text: &str) -> Result<PollerConfig, ValidationError> {
    if text.len() > opha_bus::config_push::MAX_CONFIG_BYTES {
        return Err(ValidationError::one(
            "",
            format!(
                "the config is {} bytes, more than the {} a push carries",
                text.len(),
                opha_bus::config_push::MAX_CONFIG_BYTES
            ),
        ));
    }
    let cfg = parse_pushed(text)?;
    if &cfg.poller_id != poller {
        return Err(ValidationError::one(
            "poller_id",
            format!(
                "is {}, but this config is for poller {poller}",
                cfg.poller_id
            ),
        ));
    }
    Ok(cfg)
}

/// What the running poller (`running` at `running_version`) does with a push.
pub fn decide(running: &PollerConfig, running_version: u64, version: u64, text: &str) -> Decision {
    if version <= running_version {
        return Decision::Current {
            running: running_version,
        };
    }
    let pushed = match validate_for(&running.poller_id, text) {
        Ok(c) => c,
        Err(e) => return Decision::Reject(format!("invalid config: {e}")),
    };
    match plan(running, &pushed) {
        Ok(plan) => Decision::Apply {
            version,
            config: Box::new(pushed),
            plan: Box::new(plan),
        },
        Err(e) => Decision::Reject(format!("cannot be applied live: {e}")),
    }
}

/// Compares two resolved configs: the plan that takes `running` to `pushed`, or the keys that
/// differ and cannot change while the poller runs.
pub fn plan(running: &PollerConfig, pushed: &PollerConfig) -> Result<ConfigPlan, ValidationError> {
    let mut fixed = Vec::new();
    let restart = "cannot change while the poller runs: edit its local config file and restart it";
    let mut fixed_key = |key: &str, differs: bool, detail: Option<(String, String)>| {
        if differs {
            let message = match detail {
                Some((was, now)) => format!("{restart} (running {was}, pushed {now})"),
                None => restart.to_string(),
            };
            fixed.push(Problem::new(key, message));
        }
    };
    let show = |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| {
        Some((format!("{a:?}"), format!("{b:?}")))
    };
    let (r, p) = (running, pushed);
    fixed_key(
        "poller_id",
        r.poller_id != p.poller_id,
        show(&r.poller_id, &p.poller_id),
    );
    fixed_key(
        "interface",
        r.interface != p.interface,
        show(&r.interface, &p.interface),
    );
    fixed_key(
        "instance",
        r.instance() != p.instance(),
        show(&r.instance(), &p.instance()),
    );
    fixed_key(
        "inventory",
        r.inventory != p.inventory,
        show(&r.inventory, &p.inventory),
    );
    fixed_key(
        "log.dir",
        r.log_dir() != p.log_dir(),
        show(&r.log_dir(), &p.log_dir()),
    );
    let (mut rl, mut pl) = (r.log.clone(), p.log.clone());
    (rl.dir, pl.dir) = (None, None);
    fixed_key("log", rl != pl, None);
    fixed_key("ingest", r.ingest != p.ingest, None);
    fixed_key("metrics", r.metrics != p.metrics, None);
    fixed_key("kernel", r.kernel != p.kernel, None);
    fixed_key("bus", r.bus != p.bus, None);
    fixed_key("receiver", r.receivers != p.receivers, None);
    if !fixed.is_empty() {
        return Err(ValidationError { problems: fixed });
    }

    let mut plan = ConfigPlan::default();
    let mut changed = |key: &str, differs: bool| {
        if differs {
            plan.changed.push(key.to_string());
        }
        differs
    };
    if changed("prefix", r.prefixes != p.prefixes) {
        plan.prefixes = Some(p.monitored_prefixes());
    }
    let ports = changed("ports.snmp", r.ports.snmp != p.ports.snmp)
        | changed("ports.trap", r.ports.trap != p.ports.trap)
        | changed("ports.syslog", r.ports.syslog != p.ports.syslog)
        | changed("ports.snap_len", r.ports.snap_len != p.ports.snap_len);
    if ports {
        plan.ports = Some(p.port_config());
    }
    if changed("ports.tcp_checks", r.ports.tcp_checks != p.ports.tcp_checks) {
        plan.tcp_ports = Some(p.tcp_ports());
    }
    let sweep = changed("intervals.sweep", r.intervals.sweep != p.intervals.sweep)
        | changed(
            "intervals.poll_timeout",
            r.intervals.poll_timeout != p.intervals.poll_timeout,
        );
    if sweep {
        plan.sweep = Some((p.intervals.sweep, p.intervals.poll_timeout));
    }
    changed(
        "intervals.metrics",
        r.intervals.metrics != p.intervals.metrics,
    );
    changed("thresholds", r.thresholds != p.thresholds);
    if r.aggregate_config() != p.aggregate_config() {
        plan.aggregate = Some(p.aggregate_config());
    }
    plan.heartbeat = changed(
        "intervals.heartbeat",
        r.intervals.heartbeat != p.intervals.heartbeat,
    ) | changed("daemon", r.daemon_specs() != p.daemon_specs())
        | changed("daemon_health", r.daemon_health != p.daemon_health)
        | changed("region", r.region != p.region);
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
poller_id = "poller-a"
interface = "eth1"
daemon = []
[[prefix]]
cidr = "198.18.0.0/24"
tenant = 1
[log]
dir = "/var/lib/opha/t/log"
[ingest]
http = "off"
unix = "off"
[metrics]
listen = "off"
"#;

    fn cfg(text: &str) -> PollerConfig {
        parse_pushed(text).unwrap()
    }

    #[test]
    fn the_same_config_plans_nothing() {
        let p = plan(&cfg(BASE), &cfg(BASE)).unwrap();
        assert!(p.is_empty(), "{p:?}");
        assert!(!p.touches_kernel() && p.aggregate.is_none() && !p.heartbeat);
    }

    #[test]
    fn prefixes_ports_and_thresholds_are_planned() {
        let pushed = format!(
            "{BASE}\n[[prefix]]\ncidr = \"198.19.0.0/24\"\ntenant = 2\n[ports]\nsnmp = 1161\ntcp_checks = [22, 443]\n[thresholds]\ndown_after = 5\n[intervals]\nsweep = \"500ms\"\n"
        );
        let p = plan(&cfg(BASE), &cfg(&pushed)).unwrap();
        let prefixes = p.prefixes.as_ref().unwrap();
        assert_eq!(prefixes.len(), 2);
        assert_eq!(prefixes[1].tenant, 2);
        assert_eq!(p.ports.unwrap().snmp_port, 1161);
        assert_eq!(p.tcp_ports.as_deref(), Some(&[22, 443][..]));
        let agg = p.aggregate.as_ref().unwrap();
        assert_eq!(agg.down_after, 5);
        assert_eq!(agg.tcp_ports, vec![22, 443]);
        assert_eq!(
            p.sweep,
            Some((Duration::from_millis(500), Duration::from_secs(5)))
        );
        assert!(!p.heartbeat);
        for key in [
            "prefix",
            "ports.snmp",
            "ports.tcp_checks",
            "thresholds",
            "intervals.sweep",
        ] {
            assert!(
                p.changed.iter().any(|k| k == key),
                "{key} in {:?}",
                p.changed
            );
        }
        // The undo plan puts every touched part back.
        let u = p.undo(&cfg(BASE));
        assert_eq!(u.prefixes.unwrap().len(), 1);
        assert_eq!(u.ports.unwrap().snmp_port, 161);
        assert_eq!(u.tcp_ports, Some(vec![]));
        assert_eq!(u.aggregate.unwrap().down_after, 3);
    }

    #[test]
    fn daemons_and_region_go_to_the_heartbeat() {
        let pushed = BASE.replace(
            "daemon = []",
            "region = \"eu\"\n[[daemon]]\nname = \"omkd\"",
        );
        let p = plan(&cfg(BASE), &cfg(&pushed)).unwrap();
        assert!(p.heartbeat && !p.touches_kernel() && p.aggregate.is_none());
        assert_eq!(p.changed, vec!["daemon", "region"]);
    }

    #[test]
    fn keys_that_cannot_change_live_are_rejected_by_name() {
        let pushed = BASE
            .replace("interface = \"eth1\"", "interface = \"eth2\"")
            .replace("/var/lib/opha/t/log", "/srv/log");
        let e = plan(&cfg(BASE), &cfg(&pushed)).unwrap_err();
        let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
        // The instance defaults to the interface, so it changes with it; the bus's epoch file
        // defaults into the log directory, so it moves with it.
        assert_eq!(keys, vec!["interface", "instance", "log.dir", "bus"]);
        assert!(
            e.to_string().contains("running \"eth1\", pushed \"eth2\""),
            "{e}"
        );
        let d = decide(&cfg(BASE), 4, 5, &pushed);
        let Decision::Reject(why) = d else {
            panic!("{d:?}")
        };
        assert!(
            why.contains("cannot be applied live") && why.contains("interface"),
            "{why}"
        );
    }

    #[test]
    fn versions_at_or_below_the_running_one_are_current() {
        let running = cfg(BASE);
        for v in [0, 3, 7] {
            assert_eq!(
                decide(&running, 7, v, "not even toml"),
                Decision::Current { running: 7 }
            );
        }
        let d = decide(&running, 7, 8, BASE);
        assert!(
            matches!(&d, Decision::Apply { version: 8, plan, .. } if plan.is_empty()),
            "{d:?}"
        );
    }

    #[test]
    fn invalid_configs_name_the_key() {
        let p = PeerId::new("poller-a").unwrap();
        let e = validate_for(&p, &BASE.replace("198.18.0.0/24", "198.18.0.1/24")).unwrap_err();
        assert_eq!(e.problems[0].key, "prefix[0].cidr", "{e}");
        let e = validate_for(&p, &format!("{BASE}\n[thresholds]\ndown_afterr = 3\n")).unwrap_err();
        assert_eq!(e.problems[0].key, "thresholds.down_afterr", "{e}");
        let e = validate_for(&PeerId::new("poller-b").unwrap(), BASE).unwrap_err();
        assert_eq!(e.problems[0].key, "poller_id", "{e}");
        let d = decide(&cfg(BASE), 1, 2, "poller_id = 3");
        assert!(
            matches!(&d, Decision::Reject(w) if w.contains("poller_id")),
            "{d:?}"
        );
    }
}
