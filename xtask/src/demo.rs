//! `cargo xtask demo`: setup, then the demo (`lb demo`) in release mode.
//!
//! Arguments after `demo` are passed on to `lb demo`; its exit status is xtask's.

use std::{ffi::OsString, process::ExitCode};

use anyhow::Result;
use clap::Args;

use crate::{lb, process::Runner, setup};

/// Options of `cargo xtask demo`.
#[derive(Debug, Args)]
pub struct Options {
    /// Passed on to `lb demo`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

/// Runs setup, then `lb demo` with the extra arguments.
pub fn run(runner: &Runner, options: &Options) -> Result<ExitCode> {
    setup::run(runner)?;
    lb::run(runner, &["demo"], &options.args)
}
