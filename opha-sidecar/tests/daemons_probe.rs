//! The probes against real processes: a copy of `sleep` named `opeventsd` is found in /proc,
//! killed and reported down; commands are run without a shell and bounded by their timeout.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use opha_common::wire::{DaemonState, EventKind, PeerId, Record, Severity};
use opha_sidecar::daemons::{
    DaemonCheck, DaemonMonitor, DaemonSpec, TrackerConfig,
    monitor::probe_all,
    probe::{self, probe_command, probe_systemd, systemd_running},
};

/// A child process killed and reaped on drop, also when the test fails.
struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A temp dir holding a copy of /bin/sleep under `name`.
fn fake_daemon(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    fs::copy("/bin/sleep", &path).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    (dir, path)
}

/// The process state letter from /proc/PID/stat, None once it is gone.
fn proc_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    probe::parse_stat(&stat).map(|(_, s, _)| s)
}

fn spec(name: &str, check: DaemonCheck, timeout: Duration) -> DaemonSpec {
    DaemonSpec {
        name: name.to_string(),
        check,
        timeout,
        severity: Severity::Major,
    }
}

fn events(m: &mut DaemonMonitor) -> Vec<EventKind> {
    let mut out = Vec::new();
    while let Some(r) = m.poll() {
        if let Record::Event(e) = r {
            out.push(e.kind);
        }
    }
    out
}

#[test]
fn proc_probe_sees_a_named_process_come_and_go() {
    let (_dir, path) = fake_daemon("opeventsd");
    // A unique argument, so that a cmdline check finds this process only.
    let marker = format!("3600.{}", std::process::id());
    let spawn = || ChildGuard(Some(Command::new(&path).arg(&marker).spawn().unwrap()));
    let mut child = spawn();
    let specs = vec![
        spec(
            "opeventsd",
            DaemonCheck::Process("opeventsd".into()),
            Duration::from_secs(1),
        ),
        spec(
            "marker",
            DaemonCheck::Cmdline(format!("opeventsd {marker}")),
            Duration::from_secs(1),
        ),
    ];
    let cfg = TrackerConfig {
        down_after: 2,
        up_after: 1,
        heartbeat_ms: 5000,
    };
    let mut m = DaemonMonitor::new(specs, "/proc", cfg, PeerId::new("p1").unwrap(), 1, 0);
    m.check(0);
    let h = m.tracker().health();
    assert_eq!(h[0].state, DaemonState::Up, "{}", h[0].detail);
    assert_eq!(h[0].pid, Some(child.pid()));
    assert_eq!(h[1].state, DaemonState::Up, "{}", h[1].detail);
    assert_eq!(h[1].pid, Some(child.pid()));
    assert_eq!(
        events(&mut m),
        [
            EventKind::DaemonUp {
                daemon: "opeventsd".into()
            },
            EventKind::DaemonUp {
                daemon: "marker".into()
            },
        ]
    );

    // Killed but not reaped: a zombie is not a running daemon.
    let pid = child.pid();
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while proc_state(pid) != Some('Z') {
        assert!(Instant::now() < deadline, "pid {pid} did not die");
        std::thread::sleep(Duration::from_millis(5));
    }
    m.check(5000);
    assert!(events(&mut m).is_empty(), "one failed check is not enough");
    // A zombie keeps its name (but loses its command line).
    let h = m.tracker().health();
    assert!(h[0].detail.contains("not yet reaped"), "{}", h[0].detail);
    // Reaped: gone from /proc.
    drop(child);
    m.check(10_000);
    assert_eq!(
        events(&mut m),
        [
            EventKind::DaemonDown {
                daemon: "opeventsd".into()
            },
            EventKind::DaemonDown {
                daemon: "marker".into()
            },
        ]
    );
    let h = m.tracker().health();
    assert_eq!((h[0].state, h[0].pid), (DaemonState::Down, None));
    assert_eq!(h[0].since_ms, 5000);
    assert!(
        h[0].detail.contains("no process opeventsd running"),
        "{}",
        h[0].detail
    );

    // Started again: up, with the new pid.
    child = spawn();
    m.check(15_000);
    assert_eq!(
        events(&mut m),
        [
            EventKind::DaemonUp {
                daemon: "opeventsd".into()
            },
            EventKind::DaemonUp {
                daemon: "marker".into()
            },
        ]
    );
    assert_eq!(m.tracker().health()[1].pid, Some(child.pid()));
}

#[test]
fn unreadable_proc_is_unknown() {
    let specs = vec![spec(
        "omkd",
        DaemonCheck::Process("omkd".into()),
        Duration::from_secs(1),
    )];
    let r = probe_all(&specs, Path::new("/nonexistent-proc"));
    assert_eq!(r[0].state, DaemonState::Unknown);
    assert!(
        r[0].detail
            .starts_with("cannot read the process table at /nonexistent-proc"),
        "{}",
        r[0].detail
    );
}

#[test]
fn command_exit_status_decides() {
    let t = Duration::from_secs(5);
    let r = probe_command(&["/bin/true".to_string()], t, "check");
    assert_eq!(r.state, DaemonState::Up);
    let r = probe_command(&["/bin/false".to_string()], t, "check");
    assert_eq!(r.state, DaemonState::Down);
    assert_eq!(r.detail, "check exited 1");
    let argv: Vec<String> = ["/bin/sh", "-c", "echo 'omkd is not running' >&2; exit 3"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let r = probe_command(&argv, t, "check");
    assert_eq!(r.state, DaemonState::Down);
    assert_eq!(r.detail, "check exited 3: omkd is not running");
}

#[test]
fn commands_never_go_through_a_shell() {
    let t = Duration::from_secs(5);
    // Shell syntax is passed through as a plain argument...
    let argv = vec!["/bin/echo".to_string(), "$HOME; exit 1".to_string()];
    let r = probe_command(&argv, t, "check");
    assert_eq!(r.state, DaemonState::Up);
    assert_eq!(r.detail, "check exited 0: $HOME; exit 1");
    // ...and a command line in one string is a program name that does not exist.
    let r = probe_command(&["/bin/true && /bin/false".to_string()], t, "check");
    assert_eq!(r.state, DaemonState::Unknown);
    assert!(
        r.detail.starts_with("check could not run: "),
        "{}",
        r.detail
    );
    // The explicit shell check does use /bin/sh.
    let specs = vec![spec(
        "sh",
        DaemonCheck::Shell("test -n \"$HOME\" && exit 4".into()),
        t,
    )];
    let r = probe_all(&specs, Path::new("/proc"));
    assert_eq!(r[0].state, DaemonState::Down);
    assert_eq!(r[0].detail, "check shell command exited 4");
}

#[test]
fn a_hung_command_times_out_and_its_group_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("bg.pid");
    // The check starts a background sleeper, records its pid, and hangs.
    let script = format!("sleep 60 & echo $! > {}; wait", pidfile.display());
    let argv: Vec<String> = ["/bin/sh", "-c", &script]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let started = Instant::now();
    let r = probe_command(&argv, Duration::from_millis(300), "check");
    let took = started.elapsed();
    assert_eq!(r.state, DaemonState::Unknown);
    assert_eq!(r.detail, "check did not finish within 300 ms");
    // Bounded: well under the sleeper's 60 s.
    assert!(took < Duration::from_secs(30), "{took:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let bg: u32 = loop {
        if let Some(pid) = fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "no pid file");
        std::thread::sleep(Duration::from_millis(10));
    };
    // The background sleeper was in the check's process group: killed too (gone, or a zombie
    // waiting for whoever inherited it).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match proc_state(bg) {
            None | Some('Z') => break,
            Some(s) => {
                assert!(Instant::now() < deadline, "background pid {bg} still {s}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

#[test]
fn a_missing_program_is_unknown_not_down() {
    let r = probe_command(
        &["/nonexistent/omkd-check".to_string()],
        Duration::from_secs(1),
        "check",
    );
    assert_eq!(r.state, DaemonState::Unknown);
    assert!(r.detail.contains("could not run"), "{}", r.detail);
}

#[test]
fn lots_of_output_does_not_block_the_check() {
    let argv: Vec<String> = [
        "/bin/sh",
        "-c",
        "head -c 4000000 /dev/zero | tr '\\0' x; exit 0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let r = probe_command(&argv, Duration::from_secs(30), "check");
    assert_eq!(r.state, DaemonState::Up, "{}", r.detail);
    // Only the first line, cut, makes it into the detail.
    assert!(r.detail.len() < 300, "{}", r.detail.len());
}

#[test]
fn systemd_probe_is_unknown_without_systemd() {
    let r = probe_systemd("opha-test-no-such-unit.service", Duration::from_secs(5));
    if systemd_running() {
        assert_eq!(r.state, DaemonState::Down, "{}", r.detail);
        assert!(r.detail.contains("does not exist"), "{}", r.detail);
    } else {
        assert_eq!(r.state, DaemonState::Unknown);
        assert!(
            r.detail.contains("systemd is not running on this host"),
            "{}",
            r.detail
        );
    }
}
