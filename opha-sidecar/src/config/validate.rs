//! Rules across keys, run after parsing and resolving. Every violated rule becomes a
//! [`Problem`]; none stops the others from being checked.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::Path,
    time::Duration,
};

use opha_common::ports::SNAP_LEN;

use super::{DaemonConfig, PollerConfig, Problem, SocketSetting, units::format_bytes};

/// The smallest segment: comfortably more than a batch of records.
pub const MIN_SEGMENT: u64 = 64 << 10;
/// The largest ring buffer the loader will create.
pub const MAX_RINGBUF: u64 = 1 << 30;

pub fn validate(c: &PollerConfig) -> Vec<Problem> {
    let mut p = Vec::new();
    identity(c, &mut p);
    prefixes(c, &mut p);
    ports(c, &mut p);
    intervals(c, &mut p);
    thresholds(c, &mut p);
    daemons(c, &mut p);
    log(c, &mut p);
    listeners(c, &mut p);
    kernel(c, &mut p);
    p
}

fn identity(c: &PollerConfig, p: &mut Vec<Problem>) {
    let i = &c.interface;
    if i.is_empty() || i.len() > 15 {
        p.push(Problem::new(
            "interface",
            format!("{i:?} is not an interface name: use 1-15 bytes"),
        ));
    } else if i == "."
        || i == ".."
        || i.bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace())
    {
        p.push(Problem::new(
            "interface",
            format!("{i:?} is not an interface name: no '/', ':' or spaces"),
        ));
    }
    let inst = c.instance();
    let ok = !inst.is_empty()
        && inst.len() <= 64
        && inst != "."
        && inst != ".."
        && inst
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if !ok {
        p.push(Problem::new(
            "instance",
            format!("{inst:?} is not an instance name: use 1-64 characters from A-Z a-z 0-9 _ . -"),
        ));
    }
    if c.region.len() > 64 || c.region.chars().any(char::is_control) {
        p.push(Problem::new(
            "region",
            "use at most 64 bytes and no control characters",
        ));
    }
}

fn prefixes(c: &PollerConfig, p: &mut Vec<Problem>) {
    if c.prefixes.is_empty() {
        p.push(Problem::new(
            "prefix",
            "no monitored prefix: add at least one [[prefix]] (vlan, cidr, tenant); the kernel counts nothing outside them",
        ));
    }
    // The kernel's own key (VLAN, masked address, length), so "the same" means what the LPM
    // trie would take as the same entry.
    let mut seen: BTreeMap<(u32, [u8; 2], [u8; 16]), usize> = BTreeMap::new();
    for (i, pc) in c.prefixes.iter().enumerate() {
        let k = pc.monitored().key();
        let id = (k.prefix_len(), k.data().vlan_be, k.data().addr);
        if let Some(first) = seen.insert(id, i) {
            p.push(Problem::new(
                format!("prefix[{i}]"),
                format!("{} on VLAN {} is already prefix[{first}]", pc.cidr, pc.vlan),
            ));
            seen.insert(id, first);
        }
    }
    if c.prefixes.len() as u64 > u64::from(c.kernel.max_prefixes) {
        p.push(Problem::new(
            "prefix",
            format!(
                "{} prefixes, more than kernel.max_prefixes ({})",
                c.prefixes.len(),
                c.kernel.max_prefixes
            ),
        ));
    }
}

fn ports(c: &PollerConfig, p: &mut Vec<Problem>) {
    let ports = &c.ports;
    if ports.trap == ports.syslog {
        p.push(Problem::new(
            "ports.syslog",
            format!(
                "{} is also ports.trap: traps and syslog need different ports",
                ports.syslog
            ),
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, port) in ports.tcp_checks.iter().enumerate() {
        if !seen.insert(port.0) {
            p.push(Problem::new(
                format!("ports.tcp_checks[{i}]"),
                format!("{} is listed twice", port.0),
            ));
        }
    }
    if ports.snap_len == 0 || ports.snap_len as usize > SNAP_LEN {
        p.push(Problem::new(
            "ports.snap_len",
            format!("{} is outside 1-{SNAP_LEN}", ports.snap_len),
        ));
    }
}

fn range(p: &mut Vec<Problem>, key: &str, v: Duration, min: Duration, max: Duration) -> bool {
    if v < min || v > max {
        p.push(Problem::new(
            key,
            format!(
                "{} is outside {}-{}",
                super::units::format_duration(v),
                super::units::format_duration(min),
                super::units::format_duration(max)
            ),
        ));
        false
    } else {
        true
    }
}

fn intervals(c: &PollerConfig, p: &mut Vec<Problem>) {
    let i = &c.intervals;
    let s = Duration::from_secs;
    let ms = Duration::from_millis;
    let metrics_ok = range(p, "intervals.metrics", i.metrics, s(1), s(3600));
    if metrics_ok && i.metrics.subsec_millis() != 0 {
        p.push(Problem::new(
            "intervals.metrics",
            "use whole seconds, so intervals line up across pollers",
        ));
    }
    let timeout_ok = range(p, "intervals.poll_timeout", i.poll_timeout, ms(10), s(600));
    if metrics_ok && timeout_ok && i.poll_timeout >= i.metrics {
        p.push(Problem::new(
            "intervals.poll_timeout",
            format!(
                "{} must be shorter than intervals.metrics ({}): a poll must time out within the interval it belongs to",
                super::units::format_duration(i.poll_timeout),
                super::units::format_duration(i.metrics)
            ),
        ));
    }
    let sweep_ok = range(p, "intervals.sweep", i.sweep, ms(10), s(600));
    if sweep_ok && timeout_ok && i.sweep > i.poll_timeout {
        p.push(Problem::new(
            "intervals.sweep",
            format!(
                "{} is longer than intervals.poll_timeout ({}): timeouts would be seen late",
                super::units::format_duration(i.sweep),
                super::units::format_duration(i.poll_timeout)
            ),
        ));
    }
    range(p, "intervals.heartbeat", i.heartbeat, ms(100), s(300));
}

fn count(p: &mut Vec<Problem>, key: &str, v: u32, max: u32) {
    if v == 0 || v > max {
        p.push(Problem::new(key, format!("{v} is outside 1-{max}")));
    }
}

fn thresholds(c: &PollerConfig, p: &mut Vec<Problem>) {
    let t = &c.thresholds;
    count(p, "thresholds.down_after", t.down_after, 1000);
    count(p, "thresholds.up_after", t.up_after, 1000);
    for ((name, class), default_rtt) in [("icmp", &t.icmp), ("snmp", &t.snmp), ("tcp", &t.tcp)]
        .into_iter()
        .zip(super::DEFAULT_RTT)
    {
        let key = |k: &str| format!("thresholds.{name}.{k}");
        let rtt = class.rtt_or(default_rtt);
        if let Some(rtt) = rtt {
            range(
                p,
                &key("rtt"),
                rtt,
                Duration::from_millis(1),
                Duration::from_secs(600),
            );
        }
        match (rtt, class.rtt_clear) {
            (None, Some(_)) => p.push(Problem::new(
                key("rtt_clear"),
                "is set but the rtt alarm is off",
            )),
            (Some(above), Some(clear)) if clear > above => p.push(Problem::new(
                key("rtt_clear"),
                format!(
                    "{} is above rtt ({}): the alarm would clear while still raised",
                    super::units::format_duration(clear),
                    super::units::format_duration(above)
                ),
            )),
            _ => {}
        }
        let loss = class.loss_ppm();
        if loss == Some(0) {
            p.push(Problem::new(
                key("loss"),
                "0% would raise an alarm on every interval with any loss: use more than 0, or \"off\"",
            ));
        }
        match (loss, class.loss_clear) {
            (None, Some(_)) => p.push(Problem::new(
                key("loss_clear"),
                "is set but the loss alarm is off",
            )),
            (Some(above), Some(clear)) if clear > above => p.push(Problem::new(
                key("loss_clear"),
                format!(
                    "{} is above loss ({})",
                    super::units::format_ppm(clear),
                    super::units::format_ppm(above)
                ),
            )),
            _ => {}
        }
        if class.loss_min_requests == Some(0) {
            p.push(Problem::new(key("loss_min_requests"), "use 1 or more"));
        }
    }
}

fn daemons(c: &PollerConfig, p: &mut Vec<Problem>) {
    let h = &c.daemon_health;
    let interval_ok = range(
        p,
        "daemon_health.interval",
        h.interval,
        Duration::from_millis(100),
        Duration::from_secs(3600),
    );
    count(p, "daemon_health.down_after", h.down_after, 100);
    count(p, "daemon_health.up_after", h.up_after, 100);
    let check_timeout = |p: &mut Vec<Problem>, key: &str, t: Duration| {
        if range(
            p,
            key,
            t,
            Duration::from_millis(10),
            Duration::from_secs(600),
        ) && interval_ok
            && t > h.interval
        {
            p.push(Problem::new(
                key,
                format!(
                    "{} is longer than daemon_health.interval ({}): checks would overlap",
                    super::units::format_duration(t),
                    super::units::format_duration(h.interval)
                ),
            ));
        }
    };
    check_timeout(p, "daemon_health.timeout", h.timeout);
    if !h.proc_root.is_absolute() {
        p.push(Problem::new(
            "daemon_health.proc_root",
            "must be an absolute path",
        ));
    }
    let Some(list) = &c.daemons else { return };
    let mut names = BTreeMap::new();
    for (i, d) in list.iter().enumerate() {
        let key = format!("daemon[{i}]");
        if let Some(first) = names.insert(d.name.as_str(), i) {
            p.push(Problem::new(
                format!("{key}.name"),
                format!("{:?} is already daemon[{first}]", d.name),
            ));
            names.insert(d.name.as_str(), first);
        }
        daemon(d, &key, p);
        if let Some(t) = d.timeout {
            check_timeout(p, &format!("{key}.timeout"), t);
        }
    }
}

fn daemon(d: &DaemonConfig, key: &str, p: &mut Vec<Problem>) {
    let n = &d.name;
    if n.is_empty()
        || n.len() > 64
        || !n
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@'))
    {
        p.push(Problem::new(
            format!("{key}.name"),
            format!("{n:?}: use 1-64 characters from A-Z a-z 0-9 _ - . @"),
        ));
    }
    let keys = d.check_keys();
    if keys.len() > 1 {
        p.push(Problem::new(
            key,
            format!(
                "set only one of process, cmdline, systemd, command, shell (found {})",
                keys.join(" and ")
            ),
        ));
    }
    let blank = |s: &str| s.trim().is_empty();
    for (set, sub) in [
        (d.process.as_deref(), "process"),
        (d.cmdline.as_deref(), "cmdline"),
        (d.systemd.as_deref(), "systemd"),
        (d.shell.as_deref(), "shell"),
    ] {
        if let Some(v) = set {
            if blank(v) {
                p.push(Problem::new(format!("{key}.{sub}"), "is empty"));
            } else if sub != "shell" && v.contains('\0') {
                p.push(Problem::new(format!("{key}.{sub}"), "contains a NUL byte"));
            }
        }
    }
    if let Some(u) = &d.systemd
        && u.bytes().any(|b| b.is_ascii_whitespace() || b == b'/')
    {
        p.push(Problem::new(
            format!("{key}.systemd"),
            format!("{u:?} is not a unit name (no spaces or '/')"),
        ));
    }
    if let Some(argv) = &d.command {
        match argv.first() {
            None => p.push(Problem::new(
                format!("{key}.command"),
                "is empty: give the program and its arguments, e.g. [\"/usr/bin/pgrep\", \"-x\", \"omkd\"]",
            )),
            Some(prog) if blank(prog) => p.push(Problem::new(
                format!("{key}.command[0]"),
                "the program is empty",
            )),
            Some(prog) if prog.contains(' ') && argv.len() == 1 => p.push(Problem::new(
                format!("{key}.command"),
                format!(
                    "{prog:?} is one string with spaces: commands run without a shell, so give each argument separately, or use `shell` to run it with /bin/sh -c"
                ),
            )),
            _ => {}
        }
        if argv.iter().any(|a| a.contains('\0')) {
            p.push(Problem::new(
                format!("{key}.command"),
                "an argument contains a NUL byte",
            ));
        }
    }
}

fn log(c: &PollerConfig, p: &mut Vec<Problem>) {
    let l = &c.log;
    if l.segment < MIN_SEGMENT {
        p.push(Problem::new(
            "log.segment",
            format!(
                "{} is below the minimum {}",
                format_bytes(l.segment),
                format_bytes(MIN_SEGMENT)
            ),
        ));
    }
    // The log frees space a whole segment at a time and never the one being written, so a
    // budget of less than two segments could never be kept.
    if l.budget < l.segment.saturating_mul(2) {
        p.push(Problem::new(
            "log.budget",
            format!(
                "{} must be at least twice log.segment ({}): space is freed a whole segment at a time",
                format_bytes(l.budget),
                format_bytes(l.segment)
            ),
        ));
    }
    if !(1..=99).contains(&l.warn_percent) {
        p.push(Problem::new(
            "log.warn_percent",
            format!("{} is outside 1-99", l.warn_percent),
        ));
    }
    if l.thin_keep_every < 2 {
        p.push(Problem::new(
            "log.thin_keep_every",
            format!(
                "{} would not thin anything: use 2 or more",
                l.thin_keep_every
            ),
        ));
    }
    if l.commit_window > Duration::from_millis(100) {
        p.push(Problem::new(
            "log.commit_window",
            format!(
                "{} is above 100ms: every acknowledgement would wait that long",
                super::units::format_duration(l.commit_window)
            ),
        ));
    }
    if let Some(dir) = &l.dir {
        absolute(p, "log.dir", dir);
    }
}

fn absolute(p: &mut Vec<Problem>, key: &str, path: &Path) {
    if !path.is_absolute() {
        p.push(Problem::new(
            key,
            format!("{} is not an absolute path", path.display()),
        ));
    }
}

fn loopback_rule(
    p: &mut Vec<Problem>,
    key: &str,
    addr: &Option<SocketAddr>,
    allow: bool,
    allow_key: &str,
    why: &str,
) {
    if let Some(a) = addr
        && !a.ip().is_loopback()
        && !allow
    {
        p.push(Problem::new(
            key,
            format!(
                "{a} is not a loopback address; {why}, so binding beyond localhost needs {allow_key} = true"
            ),
        ));
    }
}

fn listeners(c: &PollerConfig, p: &mut Vec<Problem>) {
    loopback_rule(
        p,
        "ingest.http",
        &c.ingest.http,
        c.ingest.allow_remote,
        "ingest.allow_remote",
        "local ingest has no authentication and stores what it is sent",
    );
    loopback_rule(
        p,
        "metrics.listen",
        &c.metrics.listen,
        c.metrics.allow_remote,
        "metrics.allow_remote",
        "the metrics endpoint has no authentication",
    );
    if let (Some(a), Some(b)) = (c.ingest.http, c.metrics.listen)
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
    {
        p.push(Problem::new(
            "metrics.listen",
            format!("{b} clashes with ingest.http ({a})"),
        ));
    }
    if !(1024..=64 << 20).contains(&c.ingest.max_body) {
        p.push(Problem::new(
            "ingest.max_body",
            format!("{} is outside 1KiB-64MiB", format_bytes(c.ingest.max_body)),
        ));
    }
    if let Some(SocketSetting::At(path)) = &c.ingest.unix {
        absolute(p, "ingest.unix", path);
        // sun_path holds 108 bytes including the NUL.
        if path.as_os_str().len() > 107 {
            p.push(Problem::new(
                "ingest.unix",
                format!(
                    "{} is {} bytes, longer than a Unix socket path may be (107)",
                    path.display(),
                    path.as_os_str().len()
                ),
            ));
        }
    }
    if let Some(inv) = &c.inventory {
        absolute(p, "inventory", inv);
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v > 0 { v as u64 } else { 4096 }
}

fn kernel(c: &PollerConfig, p: &mut Vec<Problem>) {
    let k = &c.kernel;
    count(p, "kernel.max_nodes", k.max_nodes, 1 << 24);
    count(p, "kernel.max_inflight", k.max_inflight, 1 << 24);
    count(p, "kernel.max_prefixes", k.max_prefixes, 1 << 20);
    let page = page_size();
    if !k.ringbuf.is_power_of_two() || k.ringbuf < page || k.ringbuf > MAX_RINGBUF {
        p.push(Problem::new(
            "kernel.ringbuf",
            format!(
                "{} must be a power of two from {} to {}",
                format_bytes(k.ringbuf),
                format_bytes(page),
                format_bytes(MAX_RINGBUF)
            ),
        ));
    }
    absolute(p, "kernel.pin_root", &k.pin_root);
}
