//! `lb`: the load balancer's one binary. A thin layer over the `lb` library: parse the command
//! line, set up logging, call the library, turn errors into a message and an exit status.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "lb", version, about = "An XDP and TLS load balancer")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a configuration file without touching the system.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Benchmarks.
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// The XDP balancer against a trivial XDP_TX program (needs root).
    Xdp {
        /// Rounds per measurement, alternating balancer and baseline.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Single test runs per round for the per-packet cost.
        #[arg(long, default_value_t = 100_000)]
        calls: usize,
        /// Frames per round for the forwarding rate.
        #[arg(long, default_value_t = 2_000_000)]
        frames: u32,
        /// Distinct flows for the forwarding rate (a power of two up to 65536).
        #[arg(long, default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(1..=65_536))]
        flows: u32,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("lb: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Check { config } => {
            let config = lb::config::Config::from_file(&config)?;
            println!(
                "{}: ok ({} listeners, {} pools)",
                config_name(&config),
                config.listeners.len(),
                config.pools.len()
            );
            Ok(())
        }
        Command::Bench(Bench::Xdp {
            rounds,
            calls,
            frames,
            flows,
        }) => {
            let options = lb::bench::xdp::Options {
                rounds,
                calls,
                frames,
                flows,
            };
            let report = lb::bench::xdp::run(options).context("the XDP benchmark failed")?;
            println!("{report}");
            Ok(())
        }
    }
}

fn config_name(_config: &lb::config::Config) -> &'static str {
    "configuration"
}
