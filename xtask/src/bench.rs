//! `cargo xtask bench`: setup, then the XDP benchmarks (`lb bench xdp`) in release mode.
//!
//! Arguments after `bench` are passed on to `lb bench xdp`; its exit status is xtask's.

use std::{ffi::OsString, process::ExitCode};

use anyhow::Result;
use clap::Args;

use crate::{lb, process::Runner, setup};

/// Options of `cargo xtask bench`.
#[derive(Debug, Args)]
pub struct Options {
    /// Passed on to `lb bench xdp`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

/// Runs setup, then `lb bench xdp` with the extra arguments.
pub fn run(runner: &Runner, options: &Options) -> Result<ExitCode> {
    setup::run(runner)?;
    lb::run(runner, &["bench", "xdp"], &options.args)
}
