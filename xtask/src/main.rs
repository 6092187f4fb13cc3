//! `cargo xtask`: opha's developer commands.
//!
//! `setup` installs what the build and the tests need on a fresh Debian machine, `test` runs what
//! CI runs, `bench` runs the benchmarks, `lab` runs a small site in network namespaces.

mod bench;
mod cmd;
mod lab;
mod setup;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "opha's developer commands"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the build and the tests need (as root on a fresh Debian machine); idempotent.
    Setup,
    /// Run what CI runs: setup, cargo fmt --check, clippy -D warnings, and every test.
    ///
    /// Arguments after `--` go to `cargo test`, e.g.
    /// `cargo xtask test -- -p opha-tests --test NAME -- --nocapture`.
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        cargo_test_args: Vec<String>,
    },
    /// Build and run benchmarks in release mode (all of them when none is named).
    ///
    /// Options after `--` go to each benchmark, e.g. `cargo xtask bench ebpf -- --runs 7`.
    Bench {
        /// Benchmarks to run.
        #[arg(value_enum)]
        names: Vec<bench::Bench>,
        /// Options for the benchmark program (after `--`).
        #[arg(last = true)]
        options: Vec<String>,
    },
    /// Run the lab (needs root): a small site in network namespaces with real snmpd and the
    /// poller sidecar. Arguments go to the lab; `cargo xtask lab -- --help` lists them.
    Lab {
        /// Arguments for the lab program (opha-lab).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cmd::install_interrupt_handler();
    let result = match cli.command {
        Command::Setup => setup::run(),
        Command::Test { cargo_test_args } => test::run(&cargo_test_args),
        Command::Bench { names, options } => bench::run(&names, &options),
        Command::Lab { args } => lab::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// 130 after Ctrl-C, a failed child's own exit code (the lab's, for example), 1 otherwise.
fn exit_code(e: &anyhow::Error) -> u8 {
    if e.chain().any(|c| c.is::<cmd::Interrupted>()) {
        return 130;
    }
    e.chain()
        .find_map(|c| c.downcast_ref::<cmd::Failed>())
        .map_or(1, cmd::Failed::exit_code)
}
