//! Project automation, run as `cargo xtask <command>` (alias in `.cargo/config.toml`).
//!
//! One module per command: [`setup`] installs the toolchain and tools, [`clippy`] lints host and
//! eBPF crates, [`test`] runs everything CI checks, [`bench`] and [`demo`] run the `lb` binary
//! (through [`lb`]; [`compare`] runs an earlier commit's beside it), [`fuzz`] runs the
//! packet-path fuzzer and [`fuzz_parsers`] the parsers' libFuzzer targets. [`process`] is the one place that spawns commands. This crate depends
//! on no other workspace crate, so it builds fast and works while the eBPF build is broken.

mod bench;
mod clippy;
mod compare;
mod demo;
mod deny;
mod fuzz;
mod fuzz_parsers;
mod lb;
mod package;
mod process;
mod setup;
mod test;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::process::Runner;

/// Project automation for the lb load balancer.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    /// Print the commands that would change or build something instead of running them
    /// (read-only probes still run).
    #[arg(long, global = true)]
    dry_run: bool,
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what building and testing need (apt packages, rust-src, bpf-linker, bpffs).
    Setup,
    /// Lint host crates, then the eBPF crate for the BPF target; warnings are errors.
    Clippy,
    /// Run setup, fmt, clippy, unit tests and privileged tests, stopping at the first failure.
    Test(test::Options),
    /// Run setup, then the benchmarks (`lb bench xdp`, `lb bench l7`, then `lb bench scale`).
    Bench(bench::Options),
    /// Run setup, then the demo (`lb demo`).
    Demo(demo::Options),
    /// Run setup, then the packet-path fuzzer: 10 million frames through each XDP program.
    FuzzXdp(fuzz::Options),
    /// cargo-deny's checks of the workspace's and the fuzz crate's dependencies (advisories
    /// from the committed RustSec snapshot, licences, duplicate versions, sources).
    Deny(deny::Options),
    /// Run setup, then the parsers' libFuzzer targets (config, cookies, session tickets,
    /// certificates, headers), 60 s each unless told otherwise.
    Fuzz(fuzz_parsers::Options),
    /// Build the Debian package (target/package/lb_VERSION_ARCH.deb: lb without the `lab`
    /// feature); `--check` also installs, tries and purges it.
    Package(package::Options),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<ExitCode> {
    let runner = Runner::new(cli.dry_run)?;
    match &cli.command {
        Task::Setup => setup::run(&runner).map(|()| ExitCode::SUCCESS),
        Task::Clippy => clippy::run(&runner).map(|()| ExitCode::SUCCESS),
        Task::Test(options) => test::run(&runner, options).map(|()| ExitCode::SUCCESS),
        Task::Bench(options) => bench::run(&runner, options),
        Task::Demo(options) => demo::run(&runner, options),
        Task::FuzzXdp(options) => fuzz::run(&runner, options),
        Task::Fuzz(options) => fuzz_parsers::run(&runner, options),
        Task::Deny(options) => deny::run(&runner, options).map(|()| ExitCode::SUCCESS),
        Task::Package(options) => package::run(&runner, options).map(|()| ExitCode::SUCCESS),
    }
}
