//! `cargo xtask test`: what CI runs (`.ci/run`), in order, stopping at the first failure.

use std::time::Instant;

use anyhow::{Context as _, Result};

use crate::{cmd, setup};

/// opha-ebpf is `no_std`/`no_main` for the BPF target and does not build for the host;
/// opha-sidecar's build script builds it (and so clippy and the tests cover its build).
const HOST_ONLY: [&str; 3] = ["--workspace", "--exclude", "opha-ebpf"];

const STEPS: usize = 4;

fn step(n: usize, what: &str) {
    println!("==> test step {n}/{STEPS}: {what}");
    cmd::flush();
}

/// `cargo xtask test [-- CARGO_TEST_ARGS...]`.
pub fn run(cargo_test_args: &[String]) -> Result<()> {
    let started = Instant::now();

    step(1, "setup");
    setup::run().context("test step 1/4 (setup) failed")?;

    step(2, "formatting (cargo fmt --check)");
    cmd::run(cmd::cargo().args(["fmt", "--all", "--", "--check"]))
        .context("test step 2/4 (formatting) failed (run `cargo fmt --all` to fix)")?;

    step(3, "lints (cargo clippy -D warnings)");
    cmd::run(cmd::cargo().arg("clippy").args(HOST_ONLY).args([
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
    .context("test step 3/4 (clippy) failed")?;

    step(4, "tests (cargo test)");
    let mut test = cmd::cargo();
    test.arg("test");
    // `-p` picks packages itself, and cargo refuses `--exclude` without `--workspace`.
    if !names_packages(cargo_test_args) {
        test.args(HOST_ONLY);
    }
    test.args(cargo_test_args);
    cmd::run(&mut test).context("test step 4/4 (tests) failed")?;

    println!(
        "==> test: all {STEPS} steps passed in {:.0?}",
        started.elapsed()
    );
    Ok(())
}

/// True when the arguments meant for cargo (before a `--`) select packages.
fn names_packages(args: &[String]) -> bool {
    args.iter()
        .take_while(|a| *a != "--")
        .any(|a| a == "-p" || a == "--package" || a.starts_with("--package=") || is_short_p(a))
}

/// `-pNAME`, cargo's short form with the value attached.
fn is_short_p(arg: &str) -> bool {
    arg.strip_prefix("-p")
        .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('-'))
}

#[cfg(test)]
mod tests {
    use super::names_packages;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn package_selection_is_recognised() {
        assert!(names_packages(&args(&["-p", "opha-tests"])));
        assert!(names_packages(&args(&["-popha-tests", "--test", "x"])));
        assert!(names_packages(&args(&["--package=opha-tests"])));
        assert!(names_packages(&args(&["--package", "opha-tests"])));
    }

    #[test]
    fn other_arguments_keep_the_whole_workspace() {
        assert!(!names_packages(&args(&[])));
        assert!(!names_packages(&args(&["snmp_v2c"])));
        assert!(!names_packages(&args(&["--release", "--", "-p"])));
        assert!(!names_packages(&args(&["--", "--package", "x"])));
    }
}
