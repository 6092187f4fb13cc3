//! The checks: a scan of the process table, `systemctl show`, and bounded commands.
//!
//! Every probe turns into a [`ProbeResult`]; a check that cannot be made (no `/proc`, no
//! systemd, a command that cannot start or does not finish in time) is `Unknown` with the
//! reason, never `Down`: a broken check must not page anyone about a healthy daemon, and must
//! not show green either.

use std::{
    fs,
    io::{self, Read},
    os::unix::process::{CommandExt, ExitStatusExt},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use opha_common::wire::DaemonState;

/// What one check saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeResult {
    pub state: DaemonState,
    pub pid: Option<u32>,
    /// For people: what was checked and seen.
    pub detail: String,
}

impl ProbeResult {
    pub fn up(pid: Option<u32>, detail: impl Into<String>) -> Self {
        Self {
            state: DaemonState::Up,
            pid,
            detail: detail.into(),
        }
    }

    pub fn down(detail: impl Into<String>) -> Self {
        Self {
            state: DaemonState::Down,
            pid: None,
            detail: detail.into(),
        }
    }

    pub fn unknown(detail: impl Into<String>) -> Self {
        Self {
            state: DaemonState::Unknown,
            pid: None,
            detail: detail.into(),
        }
    }
}

// ---- the process table ----

/// One process, as read from `/proc/<pid>/stat` and `/proc/<pid>/cmdline`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    /// The kernel's name (at most 15 bytes).
    pub comm: String,
    pub argv: Vec<String>,
    /// R, S, D, Z, ...
    pub state: char,
    /// Start time in clock ticks since boot: the oldest matching process is the one reported.
    pub start_ticks: u64,
}

/// Reads every process under `proc_root` (normally `/proc`). Processes that exit during the
/// scan are skipped.
pub fn scan_processes(proc_root: &Path) -> io::Result<Vec<ProcessInfo>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(proc_root)? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        let Ok(stat) = fs::read(dir.join("stat")) else {
            continue;
        };
        let Some((comm, state, start_ticks)) = parse_stat(&String::from_utf8_lossy(&stat)) else {
            continue;
        };
        let argv = fs::read(dir.join("cmdline"))
            .map(|b| parse_cmdline(&b))
            .unwrap_or_default();
        out.push(ProcessInfo {
            pid,
            comm,
            argv,
            state,
            start_ticks,
        });
    }
    Ok(out)
}

/// `pid (comm) state ppid ... starttime ...`: comm may hold spaces and parentheses, so it is
/// everything between the first '(' and the last ')'.
pub fn parse_stat(stat: &str) -> Option<(String, char, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let mut rest = stat.get(close + 1..)?.split_ascii_whitespace();
    let state = rest.next()?.chars().next()?;
    // starttime is field 22; the state is field 3.
    let start_ticks = rest.nth(18)?.parse().ok()?;
    Some((comm, state, start_ticks))
}

/// NUL-separated arguments. A process that rewrote its title (Perl's `$0 = ...`) may have one
/// argument holding spaces.
pub fn parse_cmdline(raw: &[u8]) -> Vec<String> {
    raw.split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The kernel keeps 15 bytes of a process name.
const COMM_LEN: usize = 15;

fn strip_pl(s: &str) -> &str {
    s.strip_suffix(".pl").unwrap_or(s)
}

fn basename(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

/// True when `p` is the process named `name`: its comm, or the file name of its argv[0],
/// equals `name`, ignoring a trailing ".pl" on either side of the comparison.
pub fn name_matches(p: &ProcessInfo, name: &str) -> bool {
    let want = strip_pl(name);
    if strip_pl(&p.comm) == want {
        return true;
    }
    // A name longer than 15 bytes appears cut in comm.
    if name.len() > COMM_LEN && name.is_char_boundary(COMM_LEN) && p.comm == name[..COMM_LEN] {
        return true;
    }
    let argv0 = p
        .argv
        .first()
        .and_then(|a| a.split_ascii_whitespace().next())
        .unwrap_or("");
    !argv0.is_empty() && strip_pl(basename(argv0)) == want
}

/// True when the command line (arguments joined by spaces) contains `text`.
pub fn cmdline_matches(p: &ProcessInfo, text: &str) -> bool {
    !p.argv.is_empty() && p.argv.join(" ").contains(text)
}

/// Finds the daemon among `procs`: up with the oldest matching live process's pid, or down.
/// `own_pid` (the sidecar) never matches.
pub fn match_processes(
    procs: &[ProcessInfo],
    own_pid: u32,
    what: &str,
    matches: impl Fn(&ProcessInfo) -> bool,
) -> ProbeResult {
    let mut live: Vec<&ProcessInfo> = Vec::new();
    let mut zombies = 0;
    for p in procs.iter().filter(|p| p.pid != own_pid && matches(p)) {
        if matches!(p.state, 'Z' | 'X' | 'x') {
            zombies += 1;
        } else {
            live.push(p);
        }
    }
    let Some(oldest) = live.iter().min_by_key(|p| (p.start_ticks, p.pid)) else {
        return ProbeResult::down(if zombies > 0 {
            format!("no live {what} ({zombies} exited, not yet reaped)")
        } else {
            format!("no {what} running")
        });
    };
    let others = match live.len() {
        1 => String::new(),
        n => format!(", {n} processes"),
    };
    ProbeResult::up(
        Some(oldest.pid),
        format!("{what} running (pid {}{others})", oldest.pid),
    )
}

// ---- commands ----

/// How a bounded command ended.
#[derive(Debug)]
pub enum CommandOutcome {
    Exited { code: i32, output: String },
    Signalled { signal: i32, output: String },
    TimedOut { output: String },
    SpawnFailed(io::Error),
}

/// Output kept from a command, per stream.
const OUTPUT_CAP: usize = 4096;

/// Runs `argv` directly (no shell), stdin from /dev/null, in its own process group. After
/// `timeout` the whole group is killed with SIGKILL and reaped. The result has at most 4 KiB
/// of stdout followed by stderr.
pub fn run_bounded(argv: &[String], timeout: Duration) -> CommandOutcome {
    let Some((prog, args)) = argv.split_first() else {
        return CommandOutcome::SpawnFailed(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty command",
        ));
    };
    let mut child = match Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so that a timeout kills what it started too.
        .process_group(0)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return CommandOutcome::SpawnFailed(e),
    };
    let (tx, rx) = mpsc::channel::<(usize, Vec<u8>)>();
    for (i, pipe) in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .enumerate()
    {
        if let Some(pipe) = pipe {
            let tx = tx.clone();
            // Readers drain the pipes so the command never blocks on a full one; they end
            // when every holder of the pipe has exited.
            thread::spawn(move || {
                let _ = tx.send((i, read_capped(pipe)));
            });
        }
    }
    drop(tx);
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => break None,
            Ok(None) => {
                thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(_) => break None,
        }
    };
    if status.is_none() {
        // SAFETY: kill(2) on the child's own process group (pgid = its pid).
        unsafe {
            libc::kill(-(child.id() as i32), libc::SIGKILL);
        }
        let _ = child.wait();
    }
    // Give readers a moment; a grandchild that left the group may hold a pipe open forever,
    // and must not hold up the check.
    let mut parts: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let grace = Instant::now() + Duration::from_millis(200);
    for _ in 0..2 {
        match rx.recv_timeout(grace.saturating_duration_since(Instant::now())) {
            Ok((i, b)) => parts[i] = b,
            Err(_) => break,
        }
    }
    let mut output = String::from_utf8_lossy(&parts[0]).into_owned();
    let err = String::from_utf8_lossy(&parts[1]);
    if !err.trim().is_empty() {
        if !output.is_empty() && !output.ends_with('\n') {
            output.push('\n');
        }
        output.push_str(&err);
    }
    match status {
        None => CommandOutcome::TimedOut { output },
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => CommandOutcome::Exited { code, output },
            (None, Some(signal)) => CommandOutcome::Signalled { signal, output },
            (None, None) => CommandOutcome::Signalled { signal: 0, output },
        },
    }
}

fn read_capped(mut r: impl Read) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let room = OUTPUT_CAP.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    kept
}

/// The first non-empty line of a command's output, cut to 200 characters.
fn first_line(output: &str) -> String {
    let line = output
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    line.chars().take(200).collect()
}

/// A command check: exit 0 is up, another exit status is down; a command that cannot start,
/// times out or is killed by a signal is unknown.
pub fn probe_command(argv: &[String], timeout: Duration, what: &str) -> ProbeResult {
    let with = |s: String, output: &str| {
        let line = first_line(output);
        if line.is_empty() {
            s
        } else {
            format!("{s}: {line}")
        }
    };
    match run_bounded(argv, timeout) {
        CommandOutcome::Exited { code: 0, output } => {
            ProbeResult::up(None, with(format!("{what} exited 0"), &output))
        }
        CommandOutcome::Exited { code, output } => {
            ProbeResult::down(with(format!("{what} exited {code}"), &output))
        }
        CommandOutcome::Signalled { signal, output } => ProbeResult::unknown(with(
            format!("{what} was killed by signal {signal}"),
            &output,
        )),
        CommandOutcome::TimedOut { output } => ProbeResult::unknown(with(
            format!("{what} did not finish within {} ms", timeout.as_millis()),
            &output,
        )),
        CommandOutcome::SpawnFailed(e) => {
            ProbeResult::unknown(format!("{what} could not run: {e}"))
        }
    }
}

// ---- systemd ----

/// True where systemd is the init system (the test `sd_booted()` makes).
pub fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// A systemd unit's state through `systemctl show`. Unknown where systemd does not run or
/// `systemctl` cannot answer.
pub fn probe_systemd(unit: &str, timeout: Duration) -> ProbeResult {
    if !systemd_running() {
        return ProbeResult::unknown(format!(
            "systemd unit {unit}: systemd is not running on this host (/run/systemd/system is missing)"
        ));
    }
    let argv: Vec<String> = [
        "systemctl",
        "show",
        "--property=LoadState,ActiveState,SubState,MainPID",
        "--",
        unit,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    match run_bounded(&argv, timeout) {
        CommandOutcome::Exited { code: 0, output } => parse_systemctl_show(unit, &output),
        CommandOutcome::Exited { code, output } => ProbeResult::unknown(format!(
            "systemd unit {unit}: systemctl exited {code}: {}",
            first_line(&output)
        )),
        CommandOutcome::Signalled { signal, .. } => ProbeResult::unknown(format!(
            "systemd unit {unit}: systemctl was killed by signal {signal}"
        )),
        CommandOutcome::TimedOut { .. } => ProbeResult::unknown(format!(
            "systemd unit {unit}: systemctl did not answer within {} ms",
            timeout.as_millis()
        )),
        CommandOutcome::SpawnFailed(e) => {
            ProbeResult::unknown(format!("systemd unit {unit}: systemctl could not run: {e}"))
        }
    }
}

/// Reads `KEY=VALUE` lines of `systemctl show`. active and reloading are up; inactive,
/// failed, activating, deactivating and a unit that does not exist are down.
pub fn parse_systemctl_show(unit: &str, text: &str) -> ProbeResult {
    let get = |key: &str| {
        text.lines()
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let (load, active, sub) = (get("LoadState"), get("ActiveState"), get("SubState"));
    let pid = get("MainPID").parse::<u32>().ok().filter(|&p| p != 0);
    let what = format!("systemd unit {unit}");
    if load == "not-found" {
        return ProbeResult::down(format!("{what} does not exist (LoadState=not-found)"));
    }
    match active.as_str() {
        "active" | "reloading" => ProbeResult::up(pid, format!("{what} is {active} ({sub})")),
        "inactive" | "failed" | "activating" | "deactivating" | "maintenance" => {
            ProbeResult::down(format!("{what} is {active} ({sub})"))
        }
        "" => ProbeResult::unknown(format!("{what}: systemctl reported no ActiveState")),
        other => ProbeResult::unknown(format!("{what} is in state {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_names() {
        let line =
            "123 (my (odd) name) S 1 123 123 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        let (comm, state, start) = parse_stat(line).unwrap();
        assert_eq!(comm, "my (odd) name");
        assert_eq!(state, 'S');
        assert_eq!(start, 98765);
        assert!(parse_stat("123 (x").is_none());
        assert!(parse_stat("123 (x) S 1 2").is_none());
    }

    fn proc(pid: u32, comm: &str, argv: &[&str], state: char, start: u64) -> ProcessInfo {
        ProcessInfo {
            pid,
            comm: comm.to_string(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            state,
            start_ticks: start,
        }
    }

    #[test]
    fn names_match_comm_argv0_and_perl_scripts() {
        let perl = proc(
            10,
            "perl",
            &["/usr/bin/perl", "/usr/local/omk/bin/opeventsd.pl"],
            'S',
            5,
        );
        assert!(!name_matches(&perl, "opeventsd"));
        assert!(cmdline_matches(&perl, "opeventsd.pl"));
        let script = proc(
            11,
            "opeventsd.pl",
            &["/usr/local/omk/bin/opeventsd.pl"],
            'S',
            5,
        );
        assert!(name_matches(&script, "opeventsd"));
        let titled = proc(12, "perl", &["nmis9d worker 3"], 'S', 5);
        assert!(name_matches(&titled, "nmis9d"));
        let long = proc(13, "a-very-long-dae", &["x"], 'S', 5);
        assert!(name_matches(&long, "a-very-long-daemon-name"));
        assert!(!name_matches(&long, "a-very-long-da"));
        let other = proc(14, "opeventsd2", &["/bin/opeventsd2"], 'S', 5);
        assert!(!name_matches(&other, "opeventsd"));
    }

    #[test]
    fn oldest_live_process_is_reported_and_zombies_are_not_up() {
        let procs = vec![
            proc(30, "omkd", &["omkd"], 'S', 200),
            proc(20, "omkd", &["omkd"], 'S', 100),
            proc(40, "omkd", &[], 'Z', 50),
            proc(50, "omkd", &["omkd"], 'R', 10),
        ];
        let r = match_processes(&procs, 50, "process omkd", |p| name_matches(p, "omkd"));
        assert_eq!(r.state, DaemonState::Up);
        assert_eq!(r.pid, Some(20), "own pid 50 excluded, zombie excluded");
        assert!(r.detail.contains("2 processes"), "{}", r.detail);
        let z = match_processes(&procs[2..3], 1, "process omkd", |p| name_matches(p, "omkd"));
        assert_eq!(z.state, DaemonState::Down);
        assert!(z.detail.contains("not yet reaped"), "{}", z.detail);
    }

    #[test]
    fn systemctl_show_states() {
        let r = parse_systemctl_show(
            "omkd.service",
            "LoadState=loaded\nActiveState=active\nSubState=running\nMainPID=812\n",
        );
        assert_eq!((r.state, r.pid), (DaemonState::Up, Some(812)));
        let r = parse_systemctl_show(
            "omkd.service",
            "MainPID=0\nLoadState=loaded\nActiveState=failed\nSubState=failed\n",
        );
        assert_eq!((r.state, r.pid), (DaemonState::Down, None));
        assert!(r.detail.contains("failed"));
        let r = parse_systemctl_show(
            "nope.service",
            "LoadState=not-found\nActiveState=inactive\nSubState=dead\nMainPID=0\n",
        );
        assert_eq!(r.state, DaemonState::Down);
        assert!(r.detail.contains("does not exist"));
        assert_eq!(parse_systemctl_show("x", "").state, DaemonState::Unknown);
    }
}
