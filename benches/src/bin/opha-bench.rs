//! `opha-bench NAME [OPTIONS]`: runs one benchmark (what `cargo xtask bench NAME` calls).

use std::process::ExitCode;

use opha_benches::ebpf;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((name, rest)) = args.split_first() else {
        eprintln!("usage: opha-bench NAME [OPTIONS]; benchmarks: ebpf, log, bus");
        return ExitCode::from(2);
    };
    match name.as_str() {
        "ebpf" => {
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                eprintln!("opha-bench ebpf: needs root (BPF_PROG_TEST_RUN, bpffs pins)");
                return ExitCode::FAILURE;
            }
            let result = ebpf::Options::parse(rest).and_then(|o| ebpf::run(&o));
            match result {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("opha-bench ebpf: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        "log" => match opha_benches::log::run() {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("opha-bench log: {e:#}");
                ExitCode::FAILURE
            }
        },
        "bus" => match opha_benches::bus::run(rest) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("opha-bench bus: {e:#}");
                ExitCode::FAILURE
            }
        },
        other => {
            eprintln!("unknown benchmark {other} (not implemented yet)");
            ExitCode::from(2)
        }
    }
}
