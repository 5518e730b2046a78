//! `cargo xtask bench`: setup, then the benchmarks in release mode: `lb bench xdp`, then
//! `lb bench l7`, each also drawing its charts in `target/bench-charts` (`--svg`), then
//! `lb bench scale`.
//!
//! `cargo xtask bench xdp ARGS...`, `cargo xtask bench l7 ARGS...` or `cargo xtask bench scale
//! ARGS...` runs one of them, with its arguments passed on. The first benchmark that fails
//! ends the run; its exit status is xtask's. `cargo xtask bench compare --base REV` runs
//! `lb bench xdp` of REV and of this tree side by side ([`crate::compare`]); with `--l7`,
//! `lb bench l7 --base` with REV's build.

use std::{ffi::OsString, process::ExitCode};

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::{compare, lb, process::Runner, setup};

/// Options of `cargo xtask bench`.
#[derive(Debug, Args)]
pub struct Options {
    /// One benchmark only (default: all three, with their default settings).
    #[command(subcommand)]
    only: Option<Only>,
}

#[derive(Debug, Subcommand)]
enum Only {
    /// `lb bench xdp`: the XDP balancer against a trivial XDP_TX program.
    Xdp {
        /// Passed on to `lb bench xdp`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// `lb bench l7`: the L7 listeners against HAProxy, and direct HTTP to the backend.
    L7 {
        /// Passed on to `lb bench l7`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// `lb bench scale`: the control plane's costs as the work grows.
    Scale {
        /// Passed on to `lb bench scale`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// `lb bench xdp` of an earlier commit and of this tree, in paired rounds; with `--l7`,
    /// `lb bench l7` with the earlier commit's build beside this tree's in every round.
    Compare {
        /// The earlier commit (any revision git understands).
        #[arg(long, default_value = "HEAD")]
        base: String,
        /// Paired rounds (each runs both binaries once).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Compare the L7 request path (`lb bench l7 --base`) instead of the packet path.
        #[arg(long)]
        l7: bool,
        /// Passed on to both `lb bench xdp` runs (for example `--calls 20000`), or to
        /// `lb bench l7`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

/// Runs setup, then the chosen benchmarks.
pub fn run(runner: &Runner, options: &Options) -> Result<ExitCode> {
    setup::run(runner)?;
    match &options.only {
        Some(Only::Xdp { args }) => lb::run(runner, &["bench", "xdp"], args),
        Some(Only::L7 { args }) => lb::run(runner, &["bench", "l7"], args),
        Some(Only::Scale { args }) => lb::run(runner, &["bench", "scale"], args),
        Some(Only::Compare {
            base,
            rounds,
            l7,
            args,
        }) => {
            if *l7 {
                compare::run_l7(runner, base, *rounds, args)
            } else {
                compare::run(runner, base, *rounds, args)
            }
        }
        None => {
            // The charts of both go to target/bench-charts.
            let charts = [
                OsString::from("--svg"),
                runner.target_dir().join("bench-charts").into_os_string(),
            ];
            let xdp = lb::run(runner, &["bench", "xdp"], &charts)?;
            if xdp != ExitCode::SUCCESS {
                return Ok(xdp);
            }
            let l7 = lb::run(runner, &["bench", "l7"], &charts)?;
            if l7 != ExitCode::SUCCESS {
                return Ok(l7);
            }
            lb::run(runner, &["bench", "scale"], &[])
        }
    }
}
