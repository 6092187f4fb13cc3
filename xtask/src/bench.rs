//! `cargo xtask bench [NAME...] [-- OPTIONS]`: builds the benchmark program (opha-benches'
//! `opha-bench`) in release mode and runs `opha-bench NAME OPTIONS` once per benchmark. Results go to `target/bench/NAME.json`; the
//! figures are reported in `docs/benchmarks.md`.

use std::process::ExitStatus;

use anyhow::{Context as _, Result, bail};
use clap::ValueEnum;

use crate::{cmd, setup};

/// The benchmarks, in the order `cargo xtask bench` runs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Bench {
    /// Kernel programs: ns per packet per packet class (BPF_PROG_TEST_RUN), instruction counts.
    Ebpf,
    /// The replay log: durable records/s, append-to-durable p99, ratio to redb.
    Log,
    /// The message bus: durable records/s (1 and 50 pollers) against NATS JetStream,
    /// latency, failover, wire bytes, goodput and catch-up over an emulated WAN.
    Bus,
    /// Operations (a later issue).
    Ops,
    /// A whole site (a later issue).
    Site,
}

impl Bench {
    fn name(self) -> &'static str {
        match self {
            Bench::Ebpf => "ebpf",
            Bench::Log => "log",
            Bench::Bus => "bus",
            Bench::Ops => "ops",
            Bench::Site => "site",
        }
    }
}

const ALL: [Bench; 5] = [Bench::Ebpf, Bench::Log, Bench::Bus, Bench::Ops, Bench::Site];

const PACKAGE: &str = "opha-benches";
const BIN: &str = "opha-bench";

enum Outcome {
    Done,
    NotImplemented,
    Failed(cmd::Failed),
}

/// `cargo xtask bench`: no names runs every benchmark that exists so far.
pub fn run(names: &[Bench], options: &[String]) -> Result<()> {
    let explicit = !names.is_empty();
    let mut selected: Vec<Bench> = Vec::new();
    for &b in if explicit { names } else { &ALL[..] } {
        if !selected.contains(&b) {
            selected.push(b);
        }
    }

    setup::run().context("setup failed, so the benchmarks were not run")?;

    // Built once up front, so a build error is reported as one and not as a failed benchmark.
    println!("==> bench: building {BIN} (release)");
    cmd::run(
        cmd::cargo()
            .args(["build", "--release", "--package", PACKAGE])
            .args(["--bin", BIN]),
    )
    .context("building the benchmarks failed")?;
    if selected.contains(&Bench::Bus) {
        // The bus benchmark runs real primaries (`opha-sidecar primary`) of the same profile.
        println!("==> bench: building opha-sidecar (release), for the bus benchmark");
        cmd::run(
            cmd::cargo()
                .args(["build", "--release", "--package", "opha-sidecar"])
                .args(["--bin", "opha-sidecar"]),
        )
        .context("building opha-sidecar failed")?;
    }

    let mut outcomes = Vec::new();
    for bench in selected {
        println!("==> bench: {}", bench.name());
        cmd::flush();
        let mut c = cmd::cargo();
        c.args(["run", "--quiet", "--release", "--package", PACKAGE])
            .args(["--bin", BIN, "--", bench.name()])
            .args(options);
        let command = cmd::display(&c);
        let (status, stderr) = cmd::run_keep_stderr(&mut c)?;
        let outcome = if status.success() {
            Outcome::Done
        } else if reports_unknown(bench.name(), status, &stderr) {
            println!("bench {}: not implemented yet", bench.name());
            Outcome::NotImplemented
        } else {
            Outcome::Failed(cmd::Failed { command, status })
        };
        outcomes.push((bench, outcome));
    }

    println!("==> bench: summary");
    let mut errors = Vec::new();
    for (bench, outcome) in &outcomes {
        let name = bench.name();
        match outcome {
            Outcome::Done => println!("  {name:<5} done (target/bench/{name}.json)"),
            Outcome::NotImplemented => {
                println!("  {name:<5} not implemented yet");
                if explicit {
                    errors.push(format!("benchmark `{name}` is not implemented yet"));
                }
            }
            Outcome::Failed(f) => {
                println!("  {name:<5} FAILED: {f}");
                errors.push(format!("benchmark `{name}` failed: {f}"));
            }
        }
    }
    if !errors.is_empty() {
        bail!(errors.join("; "));
    }
    Ok(())
}

/// Whether opha-bench refused the name as unknown, rather than failing while running it.
/// It parses its arguments with clap, whose messages for an unknown subcommand or value are
/// matched here, as are the program's own "unknown benchmark" / "not implemented" messages.
fn reports_unknown(name: &str, status: ExitStatus, stderr: &str) -> bool {
    if status.code().is_none() {
        // Killed by a signal: it ran.
        return false;
    }
    let err = stderr.to_lowercase();
    err.contains(&format!("unrecognized subcommand '{name}'"))
        || err.contains(&format!("invalid value '{name}'"))
        || err.contains("unknown benchmark")
        || err.contains("unknown bench")
        || err.contains("not implemented")
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt as _;
    use std::process::ExitStatus;

    use super::reports_unknown;

    #[test]
    fn clap_and_own_unknown_messages_count_as_not_implemented() {
        let exit2 = ExitStatus::from_raw(2 << 8);
        assert!(reports_unknown(
            "log",
            exit2,
            "error: unrecognized subcommand 'log'\n\nUsage: opha-bench <COMMAND>\n"
        ));
        assert!(reports_unknown(
            "bus",
            exit2,
            "error: invalid value 'bus' for '<NAME>'\n"
        ));
        assert!(reports_unknown(
            "ops",
            exit2,
            "opha-bench: unknown benchmark ops\n"
        ));
    }

    #[test]
    fn real_failures_are_failures() {
        let exit1 = ExitStatus::from_raw(1 << 8);
        assert!(!reports_unknown(
            "ebpf",
            exit1,
            "Error: loading the programs: permission denied\n"
        ));
        // SIGKILL: the benchmark ran and was killed.
        assert!(!reports_unknown(
            "ebpf",
            ExitStatus::from_raw(9),
            "unknown benchmark"
        ));
    }
}
