//! Running other programs: each command is printed before it runs, and a failure names it.

use std::{
    ffi::{OsStr, OsString},
    fmt,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::process::ExitStatusExt as _,
    path::PathBuf,
    process::{Command, ExitStatus, Stdio},
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context as _, Result};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C reaches the whole foreground process group, so the child xtask waits on gets it too
/// and can clean up (the lab removes its namespaces); xtask only notes it and stops once the
/// child has exited. A handler rather than SIG_IGN because an ignored signal stays ignored across
/// exec, while a handler is reset to the default in the child.
pub fn install_interrupt_handler() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// SIGINT or SIGTERM arrived; xtask exits with 130 like a shell after Ctrl-C.
#[derive(Debug)]
pub struct Interrupted;

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// Fails when SIGINT or SIGTERM arrived since xtask started.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        return Err(Interrupted.into());
    }
    Ok(())
}

/// A command that ran and did not succeed. Its exit code becomes xtask's.
#[derive(Debug)]
pub struct Failed {
    pub command: String,
    pub status: ExitStatus,
}

impl Failed {
    /// The child's exit code, or 128 + signal like a shell when a signal ended it.
    pub fn exit_code(&self) -> u8 {
        match (self.status.code(), self.status.signal()) {
            (Some(code), _) => u8::try_from(code).ok().filter(|&c| c != 0).unwrap_or(1),
            (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(1),
            (None, None) => 1,
        }
    }
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.status.code(), self.status.signal()) {
            (Some(code), _) => write!(f, "`{}` exited with status {code}", self.command),
            (None, Some(sig)) => write!(f, "`{}` was killed by signal {sig}", self.command),
            (None, None) => write!(f, "`{}` failed ({})", self.command, self.status),
        }
    }
}

impl std::error::Error for Failed {}

/// The workspace root: cargo commands run there, whatever directory xtask was started from.
pub fn workspace_root() -> PathBuf {
    // Set at run time by `cargo run`; the compile-time value covers running the binary directly.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or(manifest_dir)
}

fn cargo_program() -> OsString {
    // The cargo that runs xtask, so nested builds use the same toolchain.
    std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"))
}

/// `cargo` in the workspace root.
pub fn cargo() -> Command {
    let mut c = Command::new(cargo_program());
    c.current_dir(workspace_root());
    c
}

/// The command line as a user would type it (`cargo` instead of the toolchain's full path).
pub fn display(cmd: &Command) -> String {
    let mut parts = Vec::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            parts.push(format!(
                "{}={}",
                key.to_string_lossy(),
                quote(&value.to_string_lossy())
            ));
        }
    }
    let program = cmd.get_program();
    if program == cargo_program() {
        parts.push("cargo".to_string());
    } else {
        parts.push(quote(&program.to_string_lossy()));
    }
    parts.extend(cmd.get_args().map(|a| quote(&a.to_string_lossy())));
    parts.join(" ")
}

fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%^".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Prints `$ COMMAND`, runs it with the terminal attached, and fails unless it succeeds.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = display(cmd);
    println!("$ {line}");
    flush();
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    check_interrupted()?;
    if !status.success() {
        return Err(Failed {
            command: line,
            status,
        }
        .into());
    }
    Ok(())
}

/// Like [`run`], but also keeps what the command wrote to stderr (still shown as it arrives),
/// so the caller can tell why it failed.
pub fn run_keep_stderr(cmd: &mut Command) -> Result<(ExitStatus, String)> {
    let line = display(cmd);
    println!("$ {line}");
    flush();
    let mut child = cmd
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    let mut kept = String::new();
    if let Some(stderr) = child.stderr.take() {
        let mut out = std::io::stderr().lock();
        for chunk in BufReader::new(stderr).split(b'\n') {
            let Ok(chunk) = chunk else { break };
            // Best effort: a closed terminal must not stop the command.
            let _ = out.write_all(&chunk);
            let _ = out.write_all(b"\n");
            kept.push_str(&String::from_utf8_lossy(&chunk));
            kept.push('\n');
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("could not wait for `{line}`"))?;
    check_interrupted()?;
    Ok((status, kept))
}

/// Runs a command without showing anything; true when it started and succeeded.
pub fn succeeds<I, S>(program: &str, args: I) -> bool
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a command without showing anything and returns its stdout; `None` when it cannot be
/// started or fails.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Where `program` is found on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

pub fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

pub fn flush() {
    let _ = std::io::stdout().flush();
}
